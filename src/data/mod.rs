//! The data room: datasets — archive reading with limits, class-folder layout,
//! validation, deduplication by content hash, deterministic splits.

pub mod annotations;
pub mod archive;
mod capped;
mod folder;
mod ingest;
mod layout;
mod report;
mod split;

pub use folder::{FolderSummary, read_folder, resolve_import};
pub use ingest::{
    DEFAULT_MAX_ANNOTATION_BYTES, DatasetRefusal, Duplicate, IngestError, IngestOptions, IngestOutcome, IngestReport,
    IngestedImage, Ingestor, Rejected,
};
pub use layout::{Placement, place_in_classes};
pub use report::{Capped, LISTED_PER_KIND, MAX_REPORT_BYTES, MAX_TEXT_BYTES};
pub use split::{Split, SplitFractions, assign_split};
