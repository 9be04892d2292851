//! What the pipelines of one job run share: the job's context, the stop flags the
//! heartbeat sets, how a run fails, the dataset's splits, the feature pass, progress
//! reporting, and [`Run`], which hands all of it to a pipeline in one value.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Handle;

use super::evaluation::MisclassifiedImage;
use super::features::{FeatureError, FeatureRequest, FeatureStats, PixelSource, extract_features};
use super::keys::checkpoint_key;
use super::spec::JobSpec;
use crate::data::Split;
use crate::serving::{ImageFeatures, LoadedModel, ModelRegistry, TrainedHead};
use crate::store::{BlobStore, Db, EpochRow, ItemRecord, JobRecord};
use crate::train::{EpochReport, TrainError};
use crate::vision::{DecodeLimits, Geometry};

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
    pub(super) cancel: AtomicBool,
    pub(super) lease_lost: AtomicBool,
    /// Set when the job has run past `--max-job-seconds` (all its attempts together).
    pub(super) overtime: AtomicBool,
    /// Set when this process stops: the job checkpoints and its lease is handed back.
    pub(super) released: AtomicBool,
}

impl Control {
    pub(super) fn should_stop(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.overtime.load(Ordering::Relaxed)
            || self.released.load(Ordering::Relaxed)
    }

    /// What a trainer's epoch callback answers: stop when cancelled or taken over.
    pub(super) fn flow(&self) -> ControlFlow<()> {
        if self.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

pub(super) enum Failure {
    Cancelled,
    LeaseLost,
    /// The process is stopping: the job goes back to the queue for another worker.
    Released,
    Failed(String),
}

/// The result of a successful run, before it is committed.
pub(super) struct Trained {
    pub head: TrainedHead,
    pub classes: Vec<String>,
    pub evaluation: Value,
    /// The base with its tuned top blocks (ONNX), when the job tuned them.
    pub tuned_base: Option<Vec<u8>>,
    /// How the head's images reach the base's input size; serving does the same.
    pub geometry: Geometry,
    /// The test images the served model gets wrong.
    pub misclassified: Vec<MisclassifiedImage>,
}

/// One job run as a pipeline sees it: everything but the dataset, which each pipeline
/// takes in its own form.
#[derive(Clone, Copy)]
pub(super) struct Run<'a> {
    pub ctx: &'a JobContext,
    pub job: &'a JobRecord,
    pub spec: &'a JobSpec,
    pub splits: &'a Splits<'a>,
    pub model: &'a LoadedModel,
    pub control: &'a Control,
    pub progress: &'a Progress<'a>,
}

impl Run<'_> {
    /// Phase 1's checkpoint of this job, stored by an earlier attempt; `None` when there is
    /// none or it does not parse (the run then starts afresh). A resume is reported.
    pub fn stored_checkpoint<C: serde::de::DeserializeOwned>(&self, epoch: impl Fn(&C) -> usize) -> Option<C> {
        let bytes = self.ctx.blobs.try_get(&checkpoint_key(&self.job.id)).ok().flatten()?;
        let checkpoint = serde_json::from_slice::<C>(&bytes).ok()?;
        self.progress.event("resumed", json!({"after_epoch": epoch(&checkpoint)}));
        Some(checkpoint)
    }

    /// Stores phase 1's checkpoint after an epoch. It is durable before the epoch is reported,
    /// so a reported epoch is never redone; a failed write only costs the resume.
    pub fn store_checkpoint(&self, checkpoint: &impl Serialize) {
        if let Ok(bytes) = serde_json::to_vec(checkpoint) {
            let _ = self.ctx.blobs.replace(&checkpoint_key(&self.job.id), &bytes);
        }
    }
}

/// A dataset's items by split, in the stored order.
pub(super) struct Splits<'a> {
    pub train: Vec<&'a ItemRecord>,
    pub valid: Vec<&'a ItemRecord>,
    pub test: Vec<&'a ItemRecord>,
}

impl<'a> Splits<'a> {
    pub(super) fn of(items: &'a [ItemRecord]) -> Self {
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

    /// The test images as they are, in order (the last rows of [`Splits::feature_requests`]).
    pub(super) fn test_requests(&self) -> Vec<FeatureRequest> {
        self.test.iter().map(|item| FeatureRequest { sha256: item.sha256.clone(), variant: 0 }).collect()
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
    run: Run<'_>,
    requests: &[FeatureRequest],
    with_spatial: bool,
) -> Result<(Vec<ImageFeatures>, FeatureStats, f64), Failure> {
    let Run { ctx, spec, model, control, progress, .. } = run;
    let started = Instant::now();
    let preprocessing = spec.preprocessing(&model.manifest.preprocessing);
    let pixels = PixelSource {
        blobs: &ctx.blobs,
        augmentation: spec.augment.as_ref(),
        decode_limits: &ctx.decode_limits,
        preprocessing: &preprocessing,
    };
    let (features, stats) = extract_features(model, &pixels, requests, with_spatial, &mut |done, total| {
        progress.counted("features", done, total, started);
        !control.should_stop()
    })
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
    } else if control.released.load(Ordering::Relaxed) {
        Failure::Released
    } else if control.overtime.load(Ordering::Relaxed) {
        Failure::Failed("the job ran longer than its time limit (--max-job-seconds)".into())
    } else {
        Failure::Cancelled
    }
}

/// Writes progress to the job row and its events, at most a few times a second.
pub(super) struct Progress<'a> {
    ctx: &'a JobContext,
    job: &'a JobRecord,
    handle: &'a Handle,
    last_write: std::cell::Cell<Option<Instant>>,
    /// The phase now running, since when, and its span (entered on this thread, a child of
    /// the job's): its duration is a metric, and its span ends, when the next begins.
    phase: std::cell::RefCell<Option<(String, Instant, tracing::span::EnteredSpan)>>,
}

impl Drop for Progress<'_> {
    /// The last phase ends with the job's work.
    fn drop(&mut self) {
        if let Some((name, since, _span)) = self.phase.borrow_mut().take() {
            metrics::histogram!("graft_job_phase_seconds", "phase" => name).record(since.elapsed().as_secs_f64());
        }
    }
}

impl<'a> Progress<'a> {
    pub(super) fn new(ctx: &'a JobContext, job: &'a JobRecord, handle: &'a Handle) -> Self {
        Self { ctx, job, handle, last_write: std::cell::Cell::new(None), phase: std::cell::RefCell::new(None) }
    }

    /// Notes that `phase` runs now; when it differs from the one before, that one's time is
    /// recorded in `graft_job_phase_seconds`.
    fn enter(&self, phase: &str) {
        let mut current = self.phase.borrow_mut();
        if current.as_ref().is_some_and(|(name, _, _)| name == phase) {
            return;
        }
        // The phase before ends (its span exits) before the next one's span is entered.
        if let Some((name, since, span)) = current.take() {
            drop(span);
            metrics::histogram!("graft_job_phase_seconds", "phase" => name).record(since.elapsed().as_secs_f64());
        }
        // It names the job too: a JSON log line shows only its innermost span.
        let span = tracing::info_span!("phase", job = %self.job.id, name = phase).entered();
        tracing::info!(phase, "phase started");
        *current = Some((phase.to_owned(), Instant::now(), span));
    }

    fn write(&self, progress: Value, kind: &str, throttle: bool) {
        if let Some(phase) = progress.get("phase").and_then(Value::as_str) {
            self.enter(phase);
        }
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

    pub(super) fn epoch(&self, report: &EpochReport) {
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
        metrics::counter!("graft_job_epochs_total", "phase" => phase.to_owned()).increment(1);
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
