//! The one training loop. Every trainable model — the dense head on frozen features, the
//! localizer, the tail of a base in phase 2 — runs its epochs through [`fit`], which owns
//! what they share: the epoch count, early stopping on the validation split, the best-epoch
//! rule, divergence and cancellation, and the report handed out after every epoch (where the
//! caller stores its checkpoint).
//!
//! A model keeps its own checkpoint, [`FitState`] inside it, so resuming is building the model
//! from a stored checkpoint: `fit` continues at the epoch the state says.
//!
//! Reproducibility: epoch e's shuffle (and dropout masks) come from [`epoch_rng`], seeded by the
//! run's seed mixed with e alone. Nothing random carries across epochs, so a run resumed after
//! epoch e continues exactly as an uninterrupted one.

use std::ops::ControlFlow;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::{StopMetric, TrainConfig};
use super::error::TrainError;

/// A model [`fit`] can train.
pub trait Trainable {
    /// Whether there is a validation split to score (early stopping needs one).
    fn has_validation(&self) -> bool;
    /// The loop's counters, kept in the model's checkpoint.
    fn fit_state(&mut self) -> &mut FitState;
    /// One pass over the training data; `epoch_index` is 0-based.
    fn train_epoch(&mut self, epoch_index: usize) -> Result<EpochTraining, TrainError>;
    /// Whether every weight is still a finite number.
    fn is_finite(&self) -> bool;
    /// Scores on the validation split, `None` without one.
    fn validate(&mut self) -> Result<Option<Validation>, TrainError>;
    /// Keeps the current weights as the best epoch's.
    fn keep_best(&mut self);
    /// Called once after the last epoch: the best epoch's weights go where the caller reads them.
    fn finish(&mut self) -> Result<(), TrainError>;
}

/// Where a run stands: epochs completed and the best epoch so far.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FitState {
    /// Epochs completed.
    pub epoch: usize,
    #[serde(flatten)]
    pub best: BestEpoch,
}

/// The best epoch so far (ties do not improve, as in Keras).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 1-based; 0 for the weights the run started from.
    pub best_epoch: usize,
    /// The monitored metric at `best_epoch`; `None` when nothing is monitored.
    pub best_metric: Option<f32>,
    /// Epochs since the best one; early stopping fires when this reaches the patience.
    pub epochs_since_best: usize,
}

impl BestEpoch {
    /// Before the first epoch, with the starting weights' score when they must be beaten.
    pub fn starting_at(baseline: Option<f32>) -> Self {
        Self { best_epoch: 0, best_metric: baseline, epochs_since_best: 0 }
    }

    /// Records epoch `epoch` (1-based) and says whether it becomes the best: with a monitored
    /// metric and its value, when it strictly beats the best so far; without either, every
    /// epoch does (the latest is kept).
    pub fn record(&mut self, epoch: usize, metric: Option<StopMetric>, value: Option<f32>) -> bool {
        let improves = match (metric, value) {
            (Some(metric), Some(value)) => self.best_metric.is_none_or(|best| metric.improves(value, best)),
            _ => true,
        };
        if improves {
            *self = Self { best_epoch: epoch, best_metric: metric.and(value), epochs_since_best: 0 };
        } else {
            self.epochs_since_best += 1;
        }
        improves
    }

    /// True when early stopping with `patience` would stop before another epoch.
    pub fn patience_exhausted(&self, patience: Option<usize>) -> bool {
        patience.is_some_and(|patience| self.epochs_since_best >= patience)
    }
}

/// An epoch's mean training loss, and its accuracy where the model counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochTraining {
    pub loss: f32,
    pub accuracy: Option<f32>,
}

/// Validation scores after an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub loss: f32,
    pub accuracy: f32,
    /// A localizer's mean IoU.
    pub mean_iou: Option<f32>,
}

impl Validation {
    /// What early stopping watches: the loss for `ValLoss`; otherwise the accuracy, plus the
    /// mean IoU for a localizer (its box matters as much as its class).
    pub fn monitored(&self, metric: Option<StopMetric>) -> f32 {
        match (metric, self.mean_iou) {
            (Some(StopMetric::ValLoss), _) => self.loss,
            (_, Some(iou)) => self.accuracy + iou,
            (_, None) => self.accuracy,
        }
    }
}

/// What one epoch did, for the caller's report and checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochOutcome {
    /// 1-based.
    pub epoch: usize,
    /// Epochs configured.
    pub epochs: usize,
    pub train: EpochTraining,
    pub valid: Option<Validation>,
    /// The epoch whose weights would be kept if training ended now.
    pub best_epoch: usize,
    /// Seconds this epoch took, training and validation.
    pub epoch_seconds: f64,
    /// Seconds since the run started, including time before a resume.
    pub elapsed_seconds: f64,
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    pub best_epoch: usize,
    pub epochs_run: usize,
    /// True when early stopping ended the run before the configured epochs.
    pub stopped_early: bool,
}

/// Trains `model` from where its [`FitState`] stands to `config.epochs`, or until early
/// stopping (when there is a validation split) sees no improvement for `patience` epochs.
///
/// After each epoch `on_epoch` gets the model and the outcome (the model's checkpoint is
/// current then); returning `ControlFlow::Break(())` cancels the run. `earlier_seconds` is the
/// time the run had taken before a resume.
pub fn fit<T: Trainable>(
    model: &mut T,
    config: &TrainConfig,
    earlier_seconds: f64,
    on_epoch: &mut dyn FnMut(&mut T, &EpochOutcome) -> ControlFlow<()>,
) -> Result<Fitted, TrainError> {
    let monitor = config.early_stopping.filter(|_| model.has_validation());
    let (metric, patience) = (monitor.map(|m| m.metric), monitor.map(|m| m.patience));
    let started = Instant::now();
    loop {
        let state = *model.fit_state();
        if state.epoch >= config.epochs || state.best.patience_exhausted(patience) {
            break;
        }
        let epoch_started = Instant::now();
        let epoch = state.epoch + 1;
        let train = model.train_epoch(state.epoch)?;
        if !(train.loss.is_finite() && model.is_finite()) {
            return Err(TrainError::Diverged { epoch });
        }
        let valid = model.validate()?;
        let state = model.fit_state();
        state.epoch = epoch;
        let becomes_best = state.best.record(epoch, metric, valid.map(|v| v.monitored(metric)));
        let best_epoch = state.best.best_epoch;
        if becomes_best {
            model.keep_best();
        }
        let outcome = EpochOutcome {
            epoch,
            epochs: config.epochs,
            train,
            valid,
            best_epoch,
            epoch_seconds: epoch_started.elapsed().as_secs_f64(),
            elapsed_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        };
        if on_epoch(model, &outcome).is_break() {
            return Err(TrainError::Cancelled { epoch });
        }
    }
    model.finish()?;
    let state = *model.fit_state();
    Ok(Fitted {
        best_epoch: state.best.best_epoch,
        epochs_run: state.epoch,
        stopped_early: state.epoch < config.epochs,
    })
}

/// The generator for epoch `epoch_index` (0-based): the seed mixed with a SplitMix64 hash of
/// the epoch, so neighbouring epochs (and the initialisation, seeded by `seed` itself) get
/// unrelated streams, and a resumed run shuffles as an uninterrupted one.
pub(crate) fn epoch_rng(seed: u64, epoch_index: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ splitmix64(epoch_index as u64 + 1))
}

/// The order epoch `epoch_index` visits `rows` rows in: `0..rows` shuffled by [`epoch_rng`].
/// (The dense head draws its dropout masks from the same generator, so it shuffles itself.)
pub(crate) fn epoch_order(seed: u64, epoch_index: usize, rows: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut epoch_rng(seed, epoch_index));
    order
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `values` epoch after epoch; returns the record and the epoch whose weights were
    /// kept last.
    fn run(metric: Option<StopMetric>, values: &[f32]) -> (BestEpoch, usize) {
        let mut best = BestEpoch::starting_at(None);
        let mut kept = 0;
        for (i, &value) in values.iter().enumerate() {
            if best.record(i + 1, metric, Some(value)) {
                kept = i + 1;
            }
        }
        (best, kept)
    }

    #[test]
    fn keeps_the_strictly_best_accuracy() {
        // Epoch 4 ties epoch 2's 0.8: ties do not improve, so epoch 2 stays best.
        let (c, kept) = run(Some(StopMetric::ValAccuracy), &[0.5, 0.8, 0.7, 0.8, 0.6]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (2, Some(0.8), 3));
        assert_eq!(kept, 2);
        assert!(c.patience_exhausted(Some(3)));
        assert!(!c.patience_exhausted(Some(4)));
        assert!(!c.patience_exhausted(None));
    }

    #[test]
    fn keeps_the_lowest_loss() {
        let (c, kept) = run(Some(StopMetric::ValLoss), &[1.0, 0.6, 0.7, 0.5, 0.9]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (4, Some(0.5), 1));
        assert_eq!(kept, 4);
    }

    #[test]
    fn without_a_metric_the_latest_head_is_kept() {
        let (c, kept) = run(None, &[0.5, 0.9, 0.1]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (3, None, 0));
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_baseline_must_be_beaten() {
        // Phase 2 starts from phase 1's score: an epoch that does not beat it is not kept.
        let mut best = BestEpoch::starting_at(Some(0.9));
        assert!(!best.record(1, Some(StopMetric::ValAccuracy), Some(0.85)));
        assert_eq!((best.best_epoch, best.epochs_since_best), (0, 1));
        assert!(best.record(2, Some(StopMetric::ValAccuracy), Some(0.95)));
        assert_eq!((best.best_epoch, best.best_metric), (2, Some(0.95)));
    }

    #[test]
    fn a_localizer_watches_accuracy_and_iou() {
        let v = Validation { loss: 0.4, accuracy: 0.75, mean_iou: Some(0.5) };
        assert_eq!(v.monitored(Some(StopMetric::ValAccuracy)), 1.25);
        assert_eq!(v.monitored(Some(StopMetric::ValLoss)), 0.4);
        assert_eq!(Validation { mean_iou: None, ..v }.monitored(None), 0.75);
    }
}
