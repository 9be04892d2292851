//! The data room: datasets — archive reading with limits, class-folder layout,
//! validation, deduplication by content hash, deterministic splits.
