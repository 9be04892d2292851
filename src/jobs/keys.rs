//! Every blob key a job writes, in one place (images are keyed by the store).

pub fn checkpoint_key(job_id: &str) -> String {
    format!("checkpoints/{job_id}.json")
}

/// Phase 2's checkpoint (tuning the base), beside phase 1's.
pub fn fine_tune_checkpoint_key(job_id: &str) -> String {
    format!("checkpoints/{job_id}.fine-tune.bin")
}

/// The head an attempt of a job trains. Each attempt writes its own keys, so a worker
/// that lost its lease never overwrites or removes the weights of the one that took over.
pub fn head_key(job_id: &str, attempt: i64) -> String {
    format!("heads/{job_id}-a{attempt}.bin")
}

pub fn tuned_base_key(job_id: &str, attempt: i64) -> String {
    format!("tuned/{job_id}-a{attempt}.onnx")
}
