//! The dense head's checkpoint: the state of a run after an epoch, enough to resume it exactly.
//!
//! The trainer works on a `Checkpoint` directly and hands it out by reference after each
//! epoch, so checkpointing costs nothing unless the caller serialises it. The loop's counters
//! ([`FitState`]) are flattened into it, so the stored JSON keeps its field names.

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::data::TrainData;
use super::fit::{BestEpoch, FitState};
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
    /// Epochs completed and the best epoch so far.
    #[serde(flatten)]
    pub fit: FitState,
    /// The head as it stands after `fit.epoch`.
    pub head: Head,
    pub optimizer: OptimizerState,
    /// The head of the best epoch so far (the latest one when nothing is monitored).
    pub best_head: Head,
    /// One report per completed epoch.
    pub history: Vec<EpochReport>,
}

impl Checkpoint {
    /// The state before the first epoch.
    pub(crate) fn fresh(head: Head, optimizer: OptimizerState) -> Self {
        let fit = FitState { epoch: 0, best: BestEpoch::starting_at(None) };
        Self { fit, best_head: head.clone(), head, optimizer, history: Vec::new() }
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
        let FitState { epoch, best } = self.fit;
        if self.history.len() != epoch || best.best_epoch > epoch || best.epochs_since_best > epoch {
            return Err("epoch counters are inconsistent".into());
        }
        if !(head.is_finite() && self.best_head.is_finite()) {
            return Err("the head holds NaN or infinite values".into());
        }
        optimizer.check_state(&self.optimizer, &head.param_sizes()).map_err(|e| e.to_string())
    }
}
