//! The store room: the database (sqlx; SQLite by default, PostgreSQL when the URL
//! says so) with its repositories, and the blob store for images, features and weights.

mod blob;
mod datasets;
mod db;
mod jobs;
mod models;

pub use blob::{BlobError, BlobStore};
pub use datasets::{ClassCount, DatasetRecord, ItemRecord, NewDataset};
pub use db::{Backend, Db, StoreError, now_ms};
pub use jobs::{EpochRow, JobEvent, JobRecord, JobState, Lease};
pub use models::TrainedModelRecord;
