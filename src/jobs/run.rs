//! Running one claimed job: features (cached), the head, the evaluation on the test
//! split, then — in one transaction, only if this worker still holds the job — the
//! job's success and its model's registration. Progress goes to the job row and its
//! events; a checkpoint after every epoch lets another worker resume a job whose
//! worker died.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Handle;

use super::estimate::{JobShape, check as check_footprint, estimate as estimate_footprint};
use super::features::{FeatureError, FeatureRequest, FeatureStats, extract_features};
use super::localize::execute_localize;
use super::spec::{JobSpec, Task};
use super::tune::fine_tune;
use crate::data::Split;
use crate::store::{
    BlobStore, DatasetRecord, Db, EpochRow, ItemRecord, JobRecord, JobState, TrainedModelRecord, now_ms,
};
use crate::train::{Checkpoint, EpochReport, TrainData, TrainError, evaluate, stack_rows, train};
use crate::tune::TuneHead;
use crate::vision::DecodeLimits;
use crate::zoo::{ImageFeatures, LoadedModel, ModelRegistry, TrainedHead, TrainedModel};

/// What every job run needs.
#[derive(Clone)]
pub struct JobContext {
    pub db: Db,
    pub blobs: BlobStore,
    pub registry: Arc<ModelRegistry>,
    pub worker_id: String,
    pub lease: Duration,
    /// Claims a job may have before a lease that runs out fails it (`--max-job-attempts`).
    pub max_attempts: u32,
    /// Wall-clock seconds a job may run, all attempts together (`--max-job-seconds`).
    pub max_job_seconds: u64,
    pub decode_limits: DecodeLimits,
    /// The most memory a job may hold by its estimate (`--max-job-memory-bytes`).
    pub max_job_memory_bytes: u64,
    /// The most memory a tuning job's cut activations may take.
    pub max_activation_bytes: u64,
}

/// Flags the heartbeat sets and the work checks between batches and epochs.
#[derive(Default)]
pub(super) struct Control {
    cancel: AtomicBool,
    lease_lost: AtomicBool,
    /// Set when the job has run past `--max-job-seconds` (all its attempts together).
    overtime: AtomicBool,
}

impl Control {
    pub(super) fn should_stop(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.overtime.load(Ordering::Relaxed)
    }

    /// What a trainer's epoch callback answers: stop when cancelled or taken over.
    pub(super) fn flow(&self) -> ControlFlow<()> {
        if self.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

pub(super) enum Failure {
    Cancelled,
    LeaseLost,
    Failed(String),
}

/// The result of a successful run, before it is committed.
pub(super) struct Trained {
    pub head: TrainedHead,
    pub classes: Vec<String>,
    pub evaluation: Value,
    /// The base with its tuned top blocks (ONNX), when the job tuned them.
    pub tuned_base: Option<Vec<u8>>,
}

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

/// Runs `job` (already claimed by this worker) to its end.
pub async fn run_job(ctx: &JobContext, job: JobRecord) {
    let control = Arc::new(Control::default());
    let done = Arc::new(tokio::sync::Notify::new());
    let started_at = job.started_at.unwrap_or_else(now_ms);
    let heartbeat = tokio::spawn(heartbeat(ctx.clone(), job.id.clone(), started_at, control.clone(), done.clone()));
    let _ = ctx
        .db
        .append_event(&job.id, "state", &json!({"state": "running", "attempt": job.attempts, "worker": ctx.worker_id}))
        .await;

    let outcome = {
        let (ctx, job, control) = (ctx.clone(), job.clone(), control.clone());
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || execute(&ctx, &job, &control, &handle)).await
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
        Err(Failure::Failed(reason)) => (JobState::Failed, Some(reason)),
    };
    done.notify_one();
    let _ = heartbeat.await;
    match state {
        JobState::Failed | JobState::Cancelled => {
            if let Ok(true) = ctx.db.end_job(&job.id, &ctx.worker_id, state, detail.as_deref()).await {
                let _ = ctx.blobs.delete(&checkpoint_key(&job.id));
                let _ = ctx.blobs.delete(&fine_tune_checkpoint_key(&job.id));
                let _ = ctx.db.append_event(&job.id, "state", &json!({"state": state, "failure": detail})).await;
            }
            tracing::info!(job = %job.id, state = state.as_str(), "job ended: {}", detail.as_deref().unwrap_or(""));
        }
        JobState::Succeeded => tracing::info!(job = %job.id, model = %job.model_name, "job succeeded"),
        _ => {
            tracing::warn!(job = %job.id, "left to the worker that took the job over ({})", detail.unwrap_or_default())
        }
    }
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

fn execute(ctx: &JobContext, job: &JobRecord, control: &Control, handle: &Handle) -> Result<Trained, Failure> {
    let failed = |reason: String| Failure::Failed(reason);
    let db = |reason: crate::store::StoreError| Failure::Failed(reason.to_string());
    let spec = JobSpec::parse(&job.spec).map_err(failed)?;
    let dataset = handle
        .block_on(ctx.db.dataset(&job.dataset_id))
        .map_err(db)?
        .ok_or_else(|| failed("the dataset was deleted".into()))?;
    let items = handle.block_on(ctx.db.dataset_items(&job.dataset_id)).map_err(db)?;
    let model = ctx.registry.ready(&job.base_model).map_err(|e| failed(format!("base {e}")))?;
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
    match spec.task {
        Task::Classify => execute_classify(ctx, job, &spec, dataset, &splits, &model, control, &progress),
        Task::Localize => execute_localize(ctx, &spec, &dataset, &splits, &model, control, &progress),
    }
}

/// A dataset's items by split, in the stored order.
pub(super) struct Splits<'a> {
    pub train: Vec<&'a ItemRecord>,
    pub valid: Vec<&'a ItemRecord>,
    pub test: Vec<&'a ItemRecord>,
}

impl<'a> Splits<'a> {
    fn of(items: &'a [ItemRecord]) -> Self {
        let of_split = |split: Split| items.iter().filter(|i| i.split == split.as_str()).collect();
        Self { train: of_split(Split::Train), valid: of_split(Split::Valid), test: of_split(Split::Test) }
    }

    /// Every train image once per variant (variant 0 as is), then the valid and test images
    /// as they are: the order of the feature rows [`Splits::cut`] takes apart.
    pub(super) fn feature_requests(&self, variants: usize) -> Vec<FeatureRequest> {
        let request = |item: &&ItemRecord, variant| FeatureRequest { sha256: item.sha256.clone(), variant };
        let mut requests = Vec::new();
        for variant in 0..variants {
            requests.extend(self.train.iter().map(|item| request(item, variant)));
        }
        requests.extend(self.valid.iter().chain(&self.test).map(|item| request(item, 0)));
        requests
    }

    /// The rows answering [`Splits::feature_requests`]: one block of train rows per variant,
    /// then the valid rows, then the test rows.
    pub(super) fn cut<'f, T>(&self, rows: &'f [T], variants: usize) -> (Vec<&'f [T]>, &'f [T], &'f [T]) {
        let n = self.train.len();
        let (train, rest) = rows.split_at(n * variants);
        let (valid, test) = rest.split_at(self.valid.len());
        (train.chunks(n.max(1)).collect(), valid, test)
    }
}

/// The labels of `items`, in their order.
pub(super) fn labels(items: &[&ItemRecord]) -> Vec<usize> {
    items.iter().map(|i| i.class_idx as usize).collect()
}

/// The features of every request, read from the cache or computed, with progress and
/// stop checks; also how many seconds it took.
pub(super) fn compute_features(
    ctx: &JobContext,
    spec: &JobSpec,
    model: &LoadedModel,
    requests: &[FeatureRequest],
    with_spatial: bool,
    control: &Control,
    progress: &Progress<'_>,
) -> Result<(Vec<ImageFeatures>, FeatureStats, f64), Failure> {
    let started = Instant::now();
    let (features, stats) = extract_features(
        model,
        &ctx.blobs,
        requests,
        spec.augment.as_ref(),
        &ctx.decode_limits,
        with_spatial,
        &mut |done, total| {
            progress.counted("features", done, total, started);
            !control.should_stop()
        },
    )
    .map_err(|e| feature_failure(control, e))?;
    Ok((features, stats, started.elapsed().as_secs_f64()))
}

/// A trainer's error as the job's failure: a cancelled run is the stop that caused it.
pub(super) fn train_failure(control: &Control, error: TrainError) -> Failure {
    match error {
        TrainError::Cancelled { .. } => stop_reason(control),
        other => Failure::Failed(other.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_classify(
    ctx: &JobContext,
    job: &JobRecord,
    spec: &JobSpec,
    dataset: DatasetRecord,
    splits: &Splits<'_>,
    model: &LoadedModel,
    control: &Control,
    progress: &Progress<'_>,
) -> Result<Trained, Failure> {
    let failed = |reason: String| Failure::Failed(reason);
    let variants = spec.feature_variants();
    let requests = splits.feature_requests(variants);
    let (features, stats, features_seconds) = compute_features(ctx, spec, model, &requests, false, control, progress)?;

    let width = features.first().map_or(0, |f| f.pooled.len());
    let pooled = |rows: &[ImageFeatures]| stack_rows(rows.iter().map(|f| f.pooled.as_slice())).map_err(failed);
    let (train_rows, valid_rows, test_rows) = splits.cut(&features, variants);
    let train_variants = train_rows.into_iter().map(pooled).collect::<Result<Vec<_>, _>>()?;
    let (valid, test) = (pooled(valid_rows)?, pooled(test_rows)?);
    let test_labels = labels(&splits.test);
    let data = TrainData {
        train: train_variants,
        train_labels: labels(&splits.train),
        valid,
        valid_labels: labels(&splits.valid),
        classes: dataset.classes.len(),
    };

    let resume = ctx
        .blobs
        .try_get(&checkpoint_key(&job.id))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok());
    if let Some(checkpoint) = &resume {
        progress.event("resumed", json!({"after_epoch": checkpoint.epoch}));
    }
    let training_started = Instant::now();
    let outcome = train(&spec.train, &data, resume, &mut |report, checkpoint| {
        // The checkpoint is durable before the epoch is reported: a reported epoch is never redone.
        if let Ok(bytes) = serde_json::to_vec(checkpoint) {
            let _ = ctx.blobs.replace(&checkpoint_key(&job.id), &bytes);
        }
        progress.epoch(report);
        control.flow()
    })
    .map_err(|e| train_failure(control, e))?;
    let training_seconds = training_started.elapsed().as_secs_f64();

    progress.phase("evaluating");
    let probabilities = outcome.head.forward(test.view());
    let test_metrics = evaluate(probabilities.view(), &test_labels, 5).map_err(|e| failed(e.to_string()))?;
    let mut evaluation = json!({
        "test": test_metrics,
        "classes": dataset.classes,
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "stopped_early": outcome.stopped_early,
        "features": stats_json(stats, width),
        "timings": {"features_seconds": features_seconds, "training_seconds": training_seconds},
    });
    let (head, tuned_base) = if spec.unfreeze.is_some() {
        let head = TuneHead::Classifier(outcome.head);
        let tuned = fine_tune(ctx, spec, splits, dataset.classes.len(), model, head, None, control, progress)?;
        let test = evaluate(tuned.test.probabilities.view(), &test_labels, 5).map_err(|e| failed(e.to_string()))?;
        record_phase2(&mut evaluation, json!({"test": test}), tuned.report);
        let TuneHead::Classifier(head) = tuned.head else { unreachable!("phase 2 keeps the head's kind") };
        (head, tuned.tuned_base)
    } else {
        (outcome.head, None)
    };
    progress.event("evaluation", evaluation.clone());
    Ok(Trained { head: TrainedHead::Classifier(head), classes: dataset.classes, evaluation, tuned_base })
}

/// Phase 2's numbers in a job's evaluation: the test metrics so far become phase 1's, the
/// tuned model's (`test`, and any other keys of `tuned`) replace them, and `fine_tune`
/// reports what phase 2 did.
pub(super) fn record_phase2(evaluation: &mut Value, tuned: Value, report: Value) {
    let mut phase1 = json!({"best_epoch": evaluation["best_epoch"], "epochs_run": evaluation["epochs_run"]});
    if let (Value::Object(tuned), Some(summary)) = (tuned, evaluation.as_object_mut()) {
        for (key, value) in tuned {
            let before = summary.insert(key.clone(), value).unwrap_or(Value::Null);
            phase1[key] = before;
        }
    }
    evaluation["phase1"] = phase1;
    evaluation["fine_tune"] = report;
}

/// A feature or activation pass's error as the job's failure.
pub(super) fn feature_failure(control: &Control, error: FeatureError) -> Failure {
    match error {
        FeatureError::Stopped => stop_reason(control),
        FeatureError::Failed(reason) => Failure::Failed(reason),
    }
}

pub(super) fn stop_reason(control: &Control) -> Failure {
    if control.lease_lost.load(Ordering::Relaxed) {
        Failure::LeaseLost
    } else if control.overtime.load(Ordering::Relaxed) {
        Failure::Failed("the job ran longer than its time limit (--max-job-seconds)".into())
    } else {
        Failure::Cancelled
    }
}

pub(super) fn stats_json(stats: FeatureStats, width: usize) -> Value {
    json!({"images": stats.total, "cached": stats.cached, "computed": stats.computed, "width": width})
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
        task: trained.head.task().to_owned(),
        tuned_base_blob: trained.tuned_base.as_ref().map(|_| tuned_key.clone()),
    };
    match ctx.db.complete_job(&job.id, &ctx.worker_id, &trained.evaluation, &record).await {
        Ok(true) => {
            let _ = ctx.blobs.delete(&checkpoint_key(&job.id));
            let _ = ctx.blobs.delete(&fine_tune_checkpoint_key(&job.id));
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

/// Writes progress to the job row and its events, at most a few times a second.
pub(super) struct Progress<'a> {
    ctx: &'a JobContext,
    job: &'a JobRecord,
    handle: &'a Handle,
    last_write: std::cell::Cell<Option<Instant>>,
}

impl<'a> Progress<'a> {
    fn new(ctx: &'a JobContext, job: &'a JobRecord, handle: &'a Handle) -> Self {
        Self { ctx, job, handle, last_write: std::cell::Cell::new(None) }
    }

    fn write(&self, progress: Value, kind: &str, throttle: bool) {
        let now = Instant::now();
        if throttle && self.last_write.get().is_some_and(|t| now.duration_since(t) < Duration::from_millis(250)) {
            return;
        }
        self.last_write.set(Some(now));
        let _ = self.handle.block_on(self.ctx.db.set_progress(&self.job.id, &self.ctx.worker_id, &progress));
        let _ = self.handle.block_on(self.ctx.db.append_event(&self.job.id, kind, &progress));
    }

    pub(super) fn job_id(&self) -> &str {
        &self.job.id
    }

    pub(super) fn event(&self, kind: &str, data: Value) {
        let _ = self.handle.block_on(self.ctx.db.append_event(&self.job.id, kind, &data));
    }

    pub(super) fn phase(&self, phase: &str) {
        self.write(json!({"phase": phase}), "progress", false);
    }

    /// A counting phase (`features`, `activations`): done of total, with an ETA.
    pub(super) fn counted(&self, phase: &str, done: usize, total: usize, started: Instant) {
        let elapsed = started.elapsed().as_secs_f64();
        let eta = (done > 0 && done < total).then(|| elapsed / done as f64 * (total - done) as f64);
        let mut progress = json!({"phase": phase, "eta_seconds": eta});
        progress[phase] = json!({"done": done, "total": total});
        self.write(progress, "progress", done < total);
    }

    fn epoch(&self, report: &EpochReport) {
        let row = EpochRow {
            epoch: report.epoch as i64,
            train_loss: f64::from(report.train_loss),
            train_accuracy: f64::from(report.train_accuracy),
            valid_loss: report.valid_loss.map(f64::from),
            valid_accuracy: report.valid_accuracy.map(f64::from),
        };
        let _ = self.handle.block_on(self.ctx.db.record_epoch(&self.job.id, &row));
        self.training("training", report.epoch, report.epochs, report.best_epoch, report.elapsed_seconds, report);
    }

    /// A training phase (`training`, or `fine-tuning` for phase 2) after an epoch, with an
    /// ETA from the time per epoch so far; `last` is the trainer's own report of the epoch.
    pub(super) fn training(
        &self,
        phase: &str,
        epoch: usize,
        epochs: usize,
        best_epoch: usize,
        elapsed_seconds: f64,
        last: &impl Serialize,
    ) {
        let per_epoch = elapsed_seconds / epoch.max(1) as f64;
        let progress = json!({
            "phase": phase,
            "epoch": epoch,
            "epochs": epochs,
            "best_epoch": best_epoch,
            "eta_seconds": per_epoch * epochs.saturating_sub(epoch) as f64,
            "last": last,
        });
        self.write(progress, "epoch", false);
    }
}
