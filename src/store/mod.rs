//! The store room: the database (sqlx; SQLite by default, PostgreSQL when the URL
//! says so) with its repositories, and the blob store for images, features and weights.

mod blob;
mod datasets;
mod db;
mod gc;
mod jobs;
mod models;
mod references;

pub use blob::{BlobEntry, BlobError, BlobStore, MULTIPART_FROM, SetAside};
pub use datasets::{ClassCount, DatasetRecord, ItemRecord, NewDataset};
pub use db::{Backend, Db, StoreError, now_ms, redact};
pub use gc::{GcReport, collect, image_key, remove_unreferenced_image};
pub use jobs::{EpochRow, JobEvent, JobOutcome, JobRecord, JobState, Lease};
pub use models::{TRAINED_MODELS_CHANNEL, TrainedModelRecord};
pub use references::{INGESTION_HEARTBEAT, INGESTION_STALE_MS, IngestionLease};
