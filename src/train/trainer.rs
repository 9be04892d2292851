//! The dense head on frozen features: mini-batch epochs of hand-written backprop, run by
//! [`fit`] (early stopping, the best epoch, a report and checkpoint after each epoch, exact
//! resumption).
//!
//! Reproducibility: the head is initialised from `StdRng::seed_from_u64(seed)`; epoch e's
//! shuffle and dropout masks come from [`epoch_rng`].

use std::ops::ControlFlow;

use ndarray::Axis;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::backprop::{Dropout, apply_gradients, batch_gradients, evaluate_split};
use super::checkpoint::{Checkpoint, EpochReport};
use super::config::TrainConfig;
use super::data::TrainData;
use super::error::TrainError;
use super::fit::{EpochOutcome, EpochTraining, FitState, Trainable, Validation, epoch_rng, fit};
use super::head::Head;
use super::optim::Optimizer;
use super::standardize::scaled;

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

/// Trains a head on `data`, from scratch or from `resume`.
///
/// After each epoch `on_epoch` gets the report and the checkpoint; returning
/// `ControlFlow::Break(())` cancels the run (`TrainError::Cancelled`). With a validation split
/// and early stopping, the run stops once the metric has not improved for `patience` epochs and
/// returns the best epoch's head; otherwise it runs every epoch and returns the last head.
///
/// With a `scaling`, the run (and its checkpoints) works on scaled features, which a
/// resumed run recomputes identically from the same rows; the returned head has the
/// scaling folded in and takes raw features.
pub fn train(
    config: &TrainConfig,
    data: &TrainData,
    resume: Option<Checkpoint>,
    on_epoch: &mut dyn FnMut(&EpochReport, &Checkpoint) -> ControlFlow<()>,
) -> Result<TrainOutcome, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    data.validate().map_err(TrainError::InvalidData)?;
    let Some(scaling) = config.scaling else {
        return train_on(config, data, resume, on_epoch);
    };
    let (standard, scaled_data) = scaled(data, scaling);
    let mut outcome = train_on(config, &scaled_data, resume, on_epoch)?;
    outcome.head = standard.fold_head(&outcome.head).map_err(|e| TrainError::InvalidData(e.to_string()))?;
    Ok(outcome)
}

fn train_on(
    config: &TrainConfig,
    data: &TrainData,
    resume: Option<Checkpoint>,
    on_epoch: &mut dyn FnMut(&EpochReport, &Checkpoint) -> ControlFlow<()>,
) -> Result<TrainOutcome, TrainError> {
    let run = Run::new(config, data);
    let checkpoint = match resume {
        Some(checkpoint) => {
            checkpoint.check_resumable(config, data, &run.optimizer).map_err(TrainError::InvalidCheckpoint)?;
            checkpoint
        }
        None => run.fresh_checkpoint()?,
    };
    let earlier_seconds = checkpoint.history.last().map_or(0.0, |r| r.elapsed_seconds);
    let mut model = DenseRun { run, checkpoint };
    let fitted = fit(&mut model, config, earlier_seconds, &mut |model, outcome| {
        let report = epoch_report(outcome);
        model.checkpoint.history.push(report.clone());
        on_epoch(&report, &model.checkpoint)
    })?;
    Ok(TrainOutcome {
        stopped_early: fitted.stopped_early,
        head: model.checkpoint.best_head,
        best_epoch: fitted.best_epoch,
        epochs_run: fitted.epochs_run,
        history: model.checkpoint.history,
    })
}

fn epoch_report(outcome: &EpochOutcome) -> EpochReport {
    EpochReport {
        epoch: outcome.epoch,
        epochs: outcome.epochs,
        train_loss: outcome.train.loss,
        train_accuracy: outcome.train.accuracy.unwrap_or_default(),
        valid_loss: outcome.valid.map(|v| v.loss),
        valid_accuracy: outcome.valid.map(|v| v.accuracy),
        best_epoch: outcome.best_epoch,
        elapsed_seconds: outcome.elapsed_seconds,
    }
}

/// The dense head as a [`Trainable`]: the run's fixed parts and the checkpoint it updates.
struct DenseRun<'a> {
    run: Run<'a>,
    checkpoint: Checkpoint,
}

impl Trainable for DenseRun<'_> {
    fn has_validation(&self) -> bool {
        !self.run.data.valid_labels.is_empty()
    }

    fn fit_state(&mut self) -> &mut FitState {
        &mut self.checkpoint.fit
    }

    fn train_epoch(&mut self, epoch_index: usize) -> Result<EpochTraining, TrainError> {
        let (loss, accuracy) = self.run.epoch(epoch_index, &mut self.checkpoint)?;
        Ok(EpochTraining { loss, accuracy: Some(accuracy) })
    }

    fn is_finite(&self) -> bool {
        self.checkpoint.head.is_finite()
    }

    fn validate(&mut self) -> Result<Option<Validation>, TrainError> {
        let valid = self.run.validate(&self.checkpoint.head);
        Ok(valid.map(|(loss, accuracy)| Validation { loss, accuracy, mean_iou: None }))
    }

    fn keep_best(&mut self) {
        self.checkpoint.best_head.clone_from(&self.checkpoint.head);
    }

    /// The caller takes `best_head`: nothing to move.
    fn finish(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// What stays fixed over a run.
struct Run<'a> {
    config: &'a TrainConfig,
    data: &'a TrainData,
    optimizer: Optimizer,
    class_weights: Option<Vec<f32>>,
}

impl<'a> Run<'a> {
    fn new(config: &'a TrainConfig, data: &'a TrainData) -> Self {
        Self {
            config,
            data,
            optimizer: config.optimizer(),
            class_weights: config.class_weights.then(|| data.balanced_class_weights()),
        }
    }

    fn fresh_checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        let head = Head::init(self.data.input_dim(), self.config.hidden_units, self.data.classes, &mut rng)
            .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        let state = self.optimizer.init_state(&head.param_sizes());
        Ok(Checkpoint::fresh(head, state))
    }

    /// One pass over the training set; returns the epoch's running loss and accuracy.
    fn epoch(&self, epoch_index: usize, checkpoint: &mut Checkpoint) -> Result<(f32, f32), TrainError> {
        let mut rng = epoch_rng(self.config.seed, epoch_index);
        let x = self.data.variant(epoch_index);
        let labels = &self.data.train_labels;
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(&mut rng);

        let steps = self.config.epochs as u64 * labels.len().div_ceil(self.config.batch_size) as u64;
        let mut loss_sum = 0f64;
        let mut correct = 0usize;
        for batch in order.chunks(self.config.batch_size) {
            let rate = self.config.schedule.rate(self.config.learning_rate, checkpoint.optimizer.step, steps);
            let optimizer = Optimizer { learning_rate: rate, ..self.optimizer };
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
            apply_gradients(&optimizer, &mut checkpoint.optimizer, &mut checkpoint.head, &grads)?;
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

#[cfg(test)]
mod tests;
