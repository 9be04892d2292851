//! The state of a training run after an epoch: enough to resume it exactly, and the running
//! record of the best epoch for early stopping.
//!
//! The training loop works on a `Checkpoint` directly and hands it out by reference after each
//! epoch, so checkpointing costs nothing unless the caller serialises it.

use serde::{Deserialize, Serialize};

use super::config::{StopMetric, TrainConfig, becomes_best};
use super::data::TrainData;
use super::head::Head;
use super::optim::{Optimizer, OptimizerState};

/// What happened in one epoch, as shown to a user watching a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Epochs configured.
    pub epochs: usize,
    /// Mean (class-weighted) loss over the epoch's batches, as the head changed during it.
    pub train_loss: f32,
    pub train_accuracy: f32,
    /// Mean cross-entropy on the validation split; `None` without one.
    pub valid_loss: Option<f32>,
    pub valid_accuracy: Option<f32>,
    /// The epoch whose head would be kept if training ended now.
    pub best_epoch: usize,
    /// Seconds since training started, including time before a resume.
    pub elapsed_seconds: f64,
}

/// Everything needed to continue a run after `epoch` completed epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// The head as it stands after `epoch`.
    pub head: Head,
    pub optimizer: OptimizerState,
    /// The head of the best epoch so far (the latest one when nothing is monitored).
    pub best_head: Head,
    /// The monitored metric at `best_epoch`; `None` when nothing is monitored.
    pub best_metric: Option<f32>,
    /// 1-based; 0 before the first epoch.
    pub best_epoch: usize,
    /// Epochs since the best one; early stopping fires when this reaches the patience.
    pub epochs_since_best: usize,
    /// One report per completed epoch.
    pub history: Vec<EpochReport>,
}

impl Checkpoint {
    /// The state before the first epoch.
    pub(crate) fn fresh(head: Head, optimizer: OptimizerState) -> Self {
        Self {
            epoch: 0,
            best_head: head.clone(),
            head,
            optimizer,
            best_metric: None,
            best_epoch: 0,
            epochs_since_best: 0,
            history: Vec::new(),
        }
    }

    /// Checks that this checkpoint can continue a run of `config` on `data`.
    pub(crate) fn check_resumable(
        &self,
        config: &TrainConfig,
        data: &TrainData,
        optimizer: &Optimizer,
    ) -> Result<(), String> {
        let head = &self.head;
        if head.input_dim() != data.input_dim() || head.classes() != data.classes {
            return Err(format!(
                "the checkpoint's head maps {} features to {} classes; the data has {} and {}",
                head.input_dim(),
                head.classes(),
                data.input_dim(),
                data.classes
            ));
        }
        if head.hidden_units() != config.hidden_units {
            return Err(format!(
                "the checkpoint's head has hidden units {:?}, the configuration asks for {:?}",
                head.hidden_units(),
                config.hidden_units
            ));
        }
        if !self.best_head.same_shape(head) {
            return Err("the best head and the current head differ in shape".into());
        }
        if self.history.len() != self.epoch || self.best_epoch > self.epoch || self.epochs_since_best > self.epoch {
            return Err("epoch counters are inconsistent".into());
        }
        if !(head.is_finite() && self.best_head.is_finite()) {
            return Err("the head holds NaN or infinite values".into());
        }
        optimizer.check_state(&self.optimizer, &head.param_sizes()).map_err(|e| e.to_string())
    }

    /// Records epoch `epoch` (1-based): with a metric and a value, keeps the head if it beats
    /// the best so far; without, the latest head is the one kept.
    pub(crate) fn record(&mut self, epoch: usize, metric: Option<StopMetric>, value: Option<f32>) {
        if becomes_best(metric, value, self.best_metric) {
            self.best_metric = metric.and(value);
            self.best_epoch = epoch;
            self.epochs_since_best = 0;
            self.best_head.clone_from(&self.head);
        } else {
            self.epochs_since_best += 1;
        }
    }

    /// True when early stopping with `patience` would stop before another epoch.
    pub(crate) fn patience_exhausted(&self, patience: Option<usize>) -> bool {
        patience.is_some_and(|patience| self.epochs_since_best >= patience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::head::Dense;
    use ndarray::{Array1, Array2};

    fn head(value: f32) -> Head {
        Head::new(None, Dense::new(Array2::from_elem((2, 2), value), Array1::zeros(2)).unwrap()).unwrap()
    }

    fn run(metric: Option<StopMetric>, values: &[f32]) -> Checkpoint {
        let mut checkpoint = Checkpoint::fresh(head(0.0), OptimizerState::default());
        for (i, &value) in values.iter().enumerate() {
            checkpoint.head = head(i as f32 + 1.0);
            checkpoint.record(i + 1, metric, Some(value));
        }
        checkpoint
    }

    #[test]
    fn keeps_the_strictly_best_accuracy() {
        // Epoch 4 ties epoch 2's 0.8: ties do not improve, so epoch 2 stays best.
        let c = run(Some(StopMetric::ValAccuracy), &[0.5, 0.8, 0.7, 0.8, 0.6]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (2, Some(0.8), 3));
        assert_eq!(c.best_head, head(2.0));
        assert!(c.patience_exhausted(Some(3)));
        assert!(!c.patience_exhausted(Some(4)));
        assert!(!c.patience_exhausted(None));
    }

    #[test]
    fn keeps_the_lowest_loss() {
        let c = run(Some(StopMetric::ValLoss), &[1.0, 0.6, 0.7, 0.5, 0.9]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (4, Some(0.5), 1));
        assert_eq!(c.best_head, head(4.0));
    }

    #[test]
    fn without_a_metric_the_latest_head_is_kept() {
        let c = run(None, &[0.5, 0.9, 0.1]);
        assert_eq!((c.best_epoch, c.best_metric, c.epochs_since_best), (3, None, 0));
        assert_eq!(c.best_head, head(3.0));
    }
}
