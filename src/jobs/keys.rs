//! Every blob key a job reads or writes, in one place. Images are keyed by the store
//! (collection needs their key too); the layouts here are the ones `store::collect` reads
//! back (`…/<sha256>[suffix].f32`, `checkpoints/<job>.…`).

pub use crate::store::image_key;

/// A cached pooled feature vector: the image's variant under a base and its preprocessing
/// (`fingerprint`); `variant` is "" for the image as it is.
pub fn feature_key(model: &str, fingerprint: &str, sha256: &str, variant: &str) -> String {
    format!("features/{model}/{fingerprint}/{}/{sha256}{variant}.f32", &sha256[..2])
}

/// The spatial feature map cached beside a pooled vector's key.
pub fn spatial_key(pooled_key: &str) -> String {
    pooled_key.replace(".f32", ".spatial.f32")
}

/// Where phase 2 caches the activations at one cut of a base.
pub fn activations_namespace(model: &str, fingerprint: &str, cut_id: &str) -> String {
    format!("activations/{model}/{fingerprint}/{cut_id}")
}

pub fn activation_shape_key(namespace: &str) -> String {
    format!("{namespace}/shape.json")
}

pub fn activation_key(namespace: &str, sha256: &str, variant: &str) -> String {
    format!("{namespace}/{}/{sha256}{variant}.f32", &sha256[..2])
}

pub fn checkpoint_key(job_id: &str) -> String {
    format!("checkpoints/{job_id}.json")
}

/// Phase 2's checkpoint (tuning the base), beside phase 1's.
pub fn fine_tune_checkpoint_key(job_id: &str) -> String {
    format!("checkpoints/{job_id}.fine-tune.bin")
}

/// Removes both checkpoints of a job that has ended; a missing one is not an error.
pub(super) fn remove_checkpoints(blobs: &crate::store::BlobStore, job_id: &str) {
    let _ = blobs.delete(&checkpoint_key(job_id));
    let _ = blobs.delete(&fine_tune_checkpoint_key(job_id));
}

/// The head an attempt of a job trains. Each attempt writes its own keys, so a worker
/// that lost its lease never overwrites or removes the weights of the one that took over.
pub fn head_key(job_id: &str, attempt: i64) -> String {
    format!("heads/{job_id}-a{attempt}.bin")
}

pub fn tuned_base_key(job_id: &str, attempt: i64) -> String {
    format!("tuned/{job_id}-a{attempt}.onnx")
}
