//! The training loop: mini-batch epochs over frozen features, a report and checkpoint after each
//! epoch, early stopping, cancellation and exact resumption.
//!
//! Reproducibility: the head is initialised from `StdRng::seed_from_u64(seed)`, and epoch e's
//! shuffle and dropout masks come from a generator seeded by `seed` mixed with e alone. Nothing
//! random carries across epochs, so a run resumed from a checkpoint after epoch e continues
//! exactly as an uninterrupted run would.

use std::ops::ControlFlow;
use std::time::Instant;

use ndarray::Axis;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::backprop::{Dropout, apply_gradients, batch_gradients, evaluate_split};
use super::checkpoint::{Checkpoint, EpochReport};
use super::config::{EarlyStopping, StopMetric, TrainConfig};
use super::data::TrainData;
use super::head::Head;
use super::optim::{OptimError, Optimizer};

/// The result of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The best epoch's head (the last epoch's when nothing was monitored).
    pub head: Head,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub history: Vec<EpochReport>,
    /// True when early stopping ended the run before the configured epochs.
    pub stopped_early: bool,
}

/// Why training did not produce a head.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid training data: {0}")]
    InvalidData(String),
    #[error("cannot resume from this checkpoint: {0}")]
    InvalidCheckpoint(String),
    #[error("training diverged in epoch {epoch}: the loss is no longer a finite number (try a lower learning rate)")]
    Diverged { epoch: usize },
    #[error("training was cancelled after epoch {epoch}")]
    Cancelled { epoch: usize },
}

impl From<OptimError> for TrainError {
    fn from(error: OptimError) -> Self {
        TrainError::InvalidCheckpoint(error.to_string())
    }
}

/// Trains a head on `data`, from scratch or from `resume`.
///
/// After each epoch `on_epoch` gets the report and the checkpoint; returning
/// `ControlFlow::Break(())` cancels the run (`TrainError::Cancelled`). With a validation split
/// and early stopping, the run stops once the metric has not improved for `patience` epochs and
/// returns the best epoch's head; otherwise it runs every epoch and returns the last head.
pub fn train(
    config: &TrainConfig,
    data: &TrainData,
    resume: Option<Checkpoint>,
    on_epoch: &mut dyn FnMut(&EpochReport, &Checkpoint) -> ControlFlow<()>,
) -> Result<TrainOutcome, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    data.validate().map_err(TrainError::InvalidData)?;
    let run = Run::new(config, data);
    let mut checkpoint = match resume {
        Some(checkpoint) => {
            checkpoint.check_resumable(config, data, &run.optimizer).map_err(TrainError::InvalidCheckpoint)?;
            checkpoint
        }
        None => run.fresh_checkpoint()?,
    };
    let started = Instant::now();
    let earlier_seconds = checkpoint.history.last().map_or(0.0, |r| r.elapsed_seconds);

    while checkpoint.epoch < config.epochs && !checkpoint.patience_exhausted(run.patience()) {
        let epoch = checkpoint.epoch + 1;
        let (train_loss, train_accuracy) = run.epoch(&mut checkpoint)?;
        if !(train_loss.is_finite() && checkpoint.head.is_finite()) {
            return Err(TrainError::Diverged { epoch });
        }
        let valid = run.validate(&checkpoint.head);
        let monitored = run.monitor.map(|m| m.metric);
        let value = valid.map(|(loss, accuracy)| match monitored {
            Some(StopMetric::ValLoss) => loss,
            _ => accuracy,
        });
        checkpoint.record(epoch, monitored, value);
        checkpoint.epoch = epoch;
        let report = EpochReport {
            epoch,
            epochs: config.epochs,
            train_loss,
            train_accuracy,
            valid_loss: valid.map(|v| v.0),
            valid_accuracy: valid.map(|v| v.1),
            best_epoch: checkpoint.best_epoch,
            elapsed_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        };
        checkpoint.history.push(report.clone());
        if on_epoch(&report, &checkpoint).is_break() {
            return Err(TrainError::Cancelled { epoch });
        }
    }

    Ok(TrainOutcome {
        stopped_early: checkpoint.epoch < config.epochs,
        head: checkpoint.best_head,
        best_epoch: checkpoint.best_epoch,
        epochs_run: checkpoint.epoch,
        history: checkpoint.history,
    })
}

/// What stays fixed over a run.
struct Run<'a> {
    config: &'a TrainConfig,
    data: &'a TrainData,
    optimizer: Optimizer,
    class_weights: Option<Vec<f32>>,
    /// Early stopping, when there is a validation split to watch.
    monitor: Option<EarlyStopping>,
}

impl<'a> Run<'a> {
    fn new(config: &'a TrainConfig, data: &'a TrainData) -> Self {
        let has_validation = !data.valid_labels.is_empty();
        Self {
            config,
            data,
            optimizer: config.optimizer(),
            class_weights: config.class_weights.then(|| data.balanced_class_weights()),
            monitor: config.early_stopping.filter(|_| has_validation),
        }
    }

    fn patience(&self) -> Option<usize> {
        self.monitor.map(|m| m.patience)
    }

    fn fresh_checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        let head = Head::init(self.data.input_dim(), self.config.hidden_units, self.data.classes, &mut rng)
            .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        let state = self.optimizer.init_state(&head.param_sizes());
        Ok(Checkpoint::fresh(head, state))
    }

    /// One pass over the training set; returns the epoch's running loss and accuracy.
    fn epoch(&self, checkpoint: &mut Checkpoint) -> Result<(f32, f32), TrainError> {
        let epoch_index = checkpoint.epoch;
        let mut rng = epoch_rng(self.config.seed, epoch_index);
        let x = self.data.variant(epoch_index);
        let labels = &self.data.train_labels;
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(&mut rng);

        let mut loss_sum = 0f64;
        let mut correct = 0usize;
        for batch in order.chunks(self.config.batch_size) {
            let batch_x = x.select(Axis(0), batch);
            let batch_labels: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let dropout = Some(Dropout { rate: self.config.dropout, rng: &mut rng });
            let (grads, stats) = batch_gradients(
                &checkpoint.head,
                batch_x.view(),
                &batch_labels,
                self.class_weights.as_deref(),
                dropout,
            );
            apply_gradients(&self.optimizer, &mut checkpoint.optimizer, &mut checkpoint.head, &grads)?;
            loss_sum += stats.weighted_loss_sum;
            correct += stats.correct;
        }
        let n = labels.len() as f64;
        Ok(((loss_sum / n) as f32, (correct as f64 / n) as f32))
    }

    /// Validation loss and accuracy, if there is a validation split.
    fn validate(&self, head: &Head) -> Option<(f32, f32)> {
        let labels = &self.data.valid_labels;
        (!labels.is_empty()).then(|| evaluate_split(head, self.data.valid.view(), labels))
    }
}

/// The generator for epoch `epoch_index` (0-based): the seed mixed with a SplitMix64 hash of
/// the epoch, so neighbouring epochs (and the initialisation, seeded by `seed` itself) get
/// unrelated streams, and a resumed run shuffles as an uninterrupted one.
pub(crate) fn epoch_rng(seed: u64, epoch_index: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ splitmix64(epoch_index as u64 + 1))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
