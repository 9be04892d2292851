//! Running one claimed job: features (cached), the head, the evaluation on the test
//! split, then — in one transaction, only if this worker still holds the job — the
//! job's success and its model's registration. Progress goes to the job row and its
//! events; a checkpoint after every epoch lets another worker resume a job whose
//! worker died.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::Instrument;

use super::classify::execute_classify;
use super::context::{Control, Failure, JobContext, Progress, Run, Splits, Trained};
use super::estimate::{JobShape, check as check_footprint, estimate as estimate_footprint};
use super::keys::{head_key, remove_checkpoints, tuned_base_key};
use super::localize::execute_localize;
use super::spec::JobSpec;
use crate::serving::Task;
use crate::serving::TrainedModel;
use crate::store::{JobOutcome, JobRecord, JobState, TrainedModelRecord, now_ms};
use crate::vision::Geometry;

/// Runs `job` (already claimed by this worker) to its end.
pub async fn run_job(ctx: &JobContext, job: JobRecord, stopping: watch::Receiver<bool>) {
    let span = tracing::info_span!("job", id = %job.id);
    run_in_span(ctx, job, stopping).instrument(span).await
}

/// [`run_job`] inside the job's span: every line it logs names the job.
async fn run_in_span(ctx: &JobContext, job: JobRecord, stopping: watch::Receiver<bool>) {
    let control = Arc::new(Control::default());
    let done = Arc::new(tokio::sync::Notify::new());
    let started_at = job.started_at.unwrap_or_else(now_ms);
    let heartbeat = tokio::spawn(heartbeat(ctx.clone(), job.id.clone(), started_at, control.clone(), done.clone()));
    let release = tokio::spawn(release_on_stop(stopping, control.clone()));
    let _ = ctx
        .db
        .append_event(&job.id, "state", &json!({"state": "running", "attempt": job.attempts, "worker": ctx.worker_id}))
        .await;

    let outcome = {
        let (ctx, job, control) = (ctx.clone(), job.clone(), control.clone());
        let handle = Handle::current();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| execute(&ctx, &job, &control, &handle))).await
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(panic) => Err(Failure::Failed(format!("internal error: {panic}"))),
    };
    let (state, detail) = match outcome {
        Ok(trained) => match commit(ctx, &job, trained).await {
            Ok(true) => (JobState::Succeeded, None),
            Ok(false) => (JobState::Running, Some("lease lost before completion".to_owned())),
            Err(reason) => (JobState::Failed, Some(reason)),
        },
        Err(Failure::Cancelled) => (JobState::Cancelled, None),
        Err(Failure::LeaseLost) => (JobState::Running, Some("lease lost".to_owned())),
        Err(Failure::Released) => (JobState::Queued, None),
        Err(Failure::Failed(reason)) => (JobState::Failed, Some(reason)),
    };
    done.notify_one();
    let _ = heartbeat.await;
    release.abort();
    let ended = match state {
        JobState::Running => "taken_over",
        JobState::Queued => "released",
        ended => ended.as_str(),
    };
    metrics::counter!("graft_jobs_finished_total", "state" => ended).increment(1);
    match state {
        JobState::Failed | JobState::Cancelled => {
            if let Ok(true) = ctx.db.end_job(&job.id, &ctx.worker_id, state, detail.as_deref()).await {
                remove_checkpoints(&ctx.blobs, &job.id);
                let _ = ctx.db.append_event(&job.id, "state", &json!({"state": state, "failure": detail})).await;
            }
            tracing::info!(job = %job.id, state = state.as_str(), "job ended: {}", detail.as_deref().unwrap_or(""));
        }
        JobState::Succeeded => tracing::info!(job = %job.id, model = %job.model_name, "job succeeded"),
        JobState::Queued => match ctx.db.release_job(&job.id, &ctx.worker_id).await {
            Ok(true) => {
                let event = json!({"state": "queued", "released_by": ctx.worker_id});
                let _ = ctx.db.append_event(&job.id, "state", &event).await;
                tracing::info!(job = %job.id, "job handed back to the queue at its last checkpoint");
            }
            Ok(false) => tracing::warn!(job = %job.id, "the job was no longer ours to hand back"),
            Err(e) => tracing::warn!(job = %job.id, "handing the job back failed ({e}): its lease will run out"),
        },
        _ => {
            tracing::warn!(job = %job.id, "left to the worker that took the job over ({})", detail.unwrap_or_default())
        }
    }
}

/// Asks the job to stop and hand itself back once `stopping` turns true (aborted when the
/// job ends first).
async fn release_on_stop(mut stopping: watch::Receiver<bool>, control: Arc<Control>) {
    while !*stopping.borrow_and_update() {
        if stopping.changed().await.is_err() {
            return; // nobody can ask any more
        }
    }
    control.released.store(true, Ordering::Relaxed);
}

/// Keeps the lease while the job runs; learns about cancellation and takeover.
async fn heartbeat(
    ctx: JobContext,
    job_id: String,
    started_at: i64,
    control: Arc<Control>,
    done: Arc<tokio::sync::Notify>,
) {
    let lease_ms = ctx.lease.as_millis() as i64;
    let deadline = started_at.saturating_add(ctx.max_job_seconds.saturating_mul(1000) as i64);
    let mut ticker = tokio::time::interval(ctx.lease / 3);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = done.notified() => return,
            _ = ticker.tick() => {}
        }
        if now_ms() > deadline {
            control.overtime.store(true, Ordering::Relaxed);
        }
        match ctx.db.heartbeat(&job_id, &ctx.worker_id, lease_ms).await {
            Ok(lease) => {
                control.cancel.store(lease.cancel_requested, Ordering::Relaxed);
                if !lease.held {
                    control.lease_lost.store(true, Ordering::Relaxed);
                    return;
                }
            }
            Err(e) => tracing::warn!(job = %job_id, "heartbeat failed: {e}"),
        }
    }
}

/// How long a job waits for its base to load (under `--max-model-memory` it may be in
/// standby): longer than a request, which answers 503 instead.
const BASE_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

fn execute(ctx: &JobContext, job: &JobRecord, control: &Control, handle: &Handle) -> Result<Trained, Failure> {
    let failed = |reason: String| Failure::Failed(reason);
    let db = |reason: crate::store::StoreError| Failure::Failed(reason.to_string());
    let spec = JobSpec::parse(&job.spec).map_err(failed)?;
    let dataset = handle
        .block_on(ctx.db.dataset(&job.dataset_id))
        .map_err(db)?
        .ok_or_else(|| failed("the dataset was deleted".into()))?;
    let items = handle.block_on(ctx.db.dataset_items(&job.dataset_id)).map_err(db)?;
    let model = handle
        .block_on(ctx.registry.acquire_waiting(&job.base_model, BASE_LOAD_WAIT))
        .map_err(|e| failed(format!("base {e}")))?;
    let splits = Splits::of(&items);
    if splits.train.is_empty() {
        return Err(failed("the dataset's train split is empty".into()));
    }
    // Checked again here: the base may have been loading at submission, or this worker's
    // budget may differ from the API's.
    let counts = handle.block_on(ctx.db.dataset_counts(&job.dataset_id)).map_err(db)?;
    if let Some(shape) = JobShape::of(&model, &counts, dataset.classes.len()) {
        check_footprint(&estimate_footprint(&spec, &shape), ctx.max_job_memory_bytes).map_err(failed)?;
    }
    let progress = Progress::new(ctx, job, handle);
    let run = Run { ctx, job, spec: &spec, splits: &splits, model: &model, control, progress: &progress };
    match spec.task {
        Task::Classify => execute_classify(run, dataset),
        Task::Localize => execute_localize(run, &dataset),
    }
}

/// Stores the head, then marks the job succeeded and registers the model atomically.
async fn commit(ctx: &JobContext, job: &JobRecord, trained: Trained) -> Result<bool, String> {
    let key = head_key(&job.id, job.attempts);
    ctx.blobs.replace(&key, &trained.head.to_bytes()).map_err(|e| e.to_string())?;
    let tuned_key = tuned_base_key(&job.id, job.attempts);
    if let Some(bytes) = &trained.tuned_base {
        ctx.blobs.replace(&tuned_key, bytes).map_err(|e| e.to_string())?;
    }
    let record = TrainedModelRecord {
        name: job.model_name.clone(),
        job_id: job.id.clone(),
        base_model: job.base_model.clone(),
        dataset_id: job.dataset_id.clone(),
        classes: trained.classes,
        head_blob: key.clone(),
        evaluation: trained.evaluation.clone(),
        created_at: now_ms(),
        task: trained.head.task().as_str().to_owned(),
        tuned_base_blob: trained.tuned_base.as_ref().map(|_| tuned_key.clone()),
        geometry: (trained.geometry != Geometry::Model).then(|| trained.geometry.as_str().to_owned()),
    };
    let misclassified = serde_json::to_value(&trained.misclassified).map_err(|e| e.to_string())?;
    let outcome = JobOutcome { evaluation: &trained.evaluation, misclassified: &misclassified };
    match ctx.db.complete_job(&job.id, &ctx.worker_id, outcome, &record).await {
        Ok(true) => {
            remove_checkpoints(&ctx.blobs, &job.id);
            let _ = ctx.db.append_event(&job.id, "state", &json!({"state": "succeeded", "model": record.name})).await;
            ctx.registry.insert_trained(TrainedModel::new(record, trained.head));
            Ok(true)
        }
        Ok(false) => {
            // Another worker holds the job now and writes its own attempt's keys.
            let _ = ctx.blobs.delete(&key);
            let _ = ctx.blobs.delete(&tuned_key);
            Ok(false)
        }
        Err(e) => {
            let _ = ctx.blobs.delete(&key);
            let _ = ctx.blobs.delete(&tuned_key);
            Err(format!("registering the model failed: {e}"))
        }
    }
}
