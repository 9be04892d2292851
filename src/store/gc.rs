//! Blob collection. Rows reference blobs; nothing deletes a blob a row may still need.
//! Instead this pass removes what no row references and nothing has written for a grace
//! period: images no dataset holds, features and activations cached for such images,
//! heads and tuned bases no model points at, checkpoints of finished jobs, and old
//! temporary files. It runs at start-up, every `--gc-interval-seconds`, and as `graft gc`.
//!
//! Images are the one kind a request may rely on before it references them (an upload
//! that finds an image already stored). They are removed only while no ingestion is live,
//! and through [`remove_unreferenced_image`], which sets the blob aside before it checks a
//! last time, so an upload that starts meanwhile writes its own copy.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::blob::{BlobEntry, BlobStore};
use super::db::{Db, StoreError};

/// The blob key of a stored image: content-addressed, two-character fan-out.
pub fn image_key(sha256: &str) -> String {
    format!("images/{}/{sha256}", &sha256[..2.min(sha256.len())])
}

/// The image hash a cached feature or activation belongs to: the first 64 characters
/// of its file name (`…/ab/<sha256>[-variant].f32`), if they are a hash.
fn cached_image(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let sha = name.get(..64)?;
    sha.bytes().all(|b| b.is_ascii_hexdigit()).then_some(sha)
}

/// The job a checkpoint key belongs to (`checkpoints/<job>.json`, `…/<job>.fine-tune.bin`).
fn checkpoint_job(key: &str) -> Option<&str> {
    let name = key.strip_prefix("checkpoints/")?;
    name.strip_suffix(".fine-tune.bin").or_else(|| name.strip_suffix(".json"))
}

/// What one pass removed.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub images: u64,
    pub cached: u64,
    pub weights: u64,
    pub checkpoints: u64,
    pub temporary: u64,
    pub bytes: u64,
    /// True when images were left for the next pass because an ingestion was live.
    pub images_deferred: bool,
}

/// Removes the image blob `sha256` if no dataset holds it and no ingestion other than
/// `ingestion` is live. Returns the bytes removed (0 when it was kept or absent). When the
/// database cannot answer, the image is kept.
pub async fn remove_unreferenced_image(
    db: &Db,
    blobs: &BlobStore,
    sha256: &str,
    ingestion: Option<&str>,
) -> Result<u64, StoreError> {
    let key = image_key(sha256);
    let Ok(Some(aside)) = blobs.set_aside(&key) else { return Ok(0) };
    let in_use =
        async { Ok::<_, StoreError>(db.image_in_use(sha256).await? || db.live_ingestions(ingestion).await? > 0) };
    match in_use.await {
        Ok(false) => Ok(blobs.discard(aside).unwrap_or(0)),
        other => {
            let _ = blobs.restore(aside);
            other.map(|_| 0)
        }
    }
}

/// One collection pass over the whole store; blobs written within `grace` are kept.
pub async fn collect(db: &Db, blobs: &BlobStore, grace: Duration) -> Result<GcReport, StoreError> {
    let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let old =
        |entries: Vec<BlobEntry>| -> Vec<BlobEntry> { entries.into_iter().filter(|e| e.modified < cutoff).collect() };
    let listed = |prefix: &str| old(blobs.entries(prefix).unwrap_or_default());
    let mut report = GcReport::default();

    let (files, bytes) = blobs.sweep_temporary(cutoff);
    report.temporary = files;
    report.bytes += bytes;

    db.purge_dead_ingestions().await?;
    let images = db.referenced_images().await?;
    if db.live_ingestions(None).await? > 0 {
        report.images_deferred = true;
    } else {
        for entry in listed("images") {
            let sha = entry.key.rsplit('/').next().unwrap_or_default();
            if !images.contains(sha) {
                let removed = remove_unreferenced_image(db, blobs, sha, None).await?;
                report.images += u64::from(removed > 0);
                report.bytes += removed;
            }
        }
    }

    // Caches are only read for images a dataset holds, so an unheld image's are dead.
    for entry in listed("features").into_iter().chain(listed("activations")) {
        if cached_image(&entry.key).is_some_and(|sha| !images.contains(sha)) {
            report.cached += remove(blobs, &entry, &mut report.bytes);
        }
    }

    // A head or tuned base is written just before its job commits; the grace covers that.
    let weights: HashSet<String> = db.referenced_model_blobs().await?;
    for entry in listed("heads").into_iter().chain(listed("tuned")) {
        if !weights.contains(&entry.key) {
            report.weights += remove(blobs, &entry, &mut report.bytes);
        }
    }

    let unfinished = db.unfinished_jobs().await?;
    for entry in listed("checkpoints") {
        if checkpoint_job(&entry.key).is_some_and(|job| !unfinished.contains(job)) {
            report.checkpoints += remove(blobs, &entry, &mut report.bytes);
        }
    }
    Ok(report)
}

fn remove(blobs: &BlobStore, entry: &BlobEntry, bytes: &mut u64) -> u64 {
    match blobs.delete(&entry.key) {
        Ok(()) => {
            *bytes += entry.size;
            1
        }
        Err(e) => {
            tracing::warn!("collecting {}: {e}", entry.key);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_and_checkpoint_keys_name_their_owner() {
        let sha = "ab".repeat(32);
        assert_eq!(cached_image(&format!("features/m/fp/ab/{sha}.f32")), Some(sha.as_str()));
        assert_eq!(cached_image(&format!("activations/m/fp/cut/ab/{sha}-aug2ff-1.f32")), Some(sha.as_str()));
        assert_eq!(cached_image("activations/m/fp/cut/shape.json"), None);
        assert_eq!(checkpoint_job("checkpoints/j1.json"), Some("j1"));
        assert_eq!(checkpoint_job("checkpoints/j1.fine-tune.bin"), Some("j1"));
        assert_eq!(checkpoint_job("heads/j1.bin"), None);
    }
}
