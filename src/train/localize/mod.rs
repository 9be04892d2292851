//! Single-object localisation on frozen features: a class and one box per image.
//!
//! Two box heads share a softmax class head on the pooled features:
//!
//! - `Pooled`: Dense(4) + sigmoid on the pooled vector. Global pooling has averaged position
//!   away, so this head can learn little more than the typical box.
//! - `Spatial`: reads the feature map before pooling, where position survives. Each cell gets
//!   an objectness o[i,j] = sigmoid(f[i,j,:]·u + a) (a 1×1 convolution to one channel). The
//!   column profile Mx[j] = maxᵢ o[i,j] and row profile My[i] = maxⱼ o[i,j] give the raw box:
//!   width = meanⱼ Mx[j], height = meanᵢ My[i], cx = Σⱼ xⱼMx[j] / (Σⱼ Mx[j] + 1e-6) with
//!   xⱼ = (j + 0.5)/W, cy likewise. The box is raw ⊙ s + t, a learned per-coordinate scale and
//!   shift that corrects the grid's quantisation. The maxima are hard (candle's max passes
//!   the gradient to the maximal cell).
//!
//! Boxes are `[cx, cy, w, h]` normalised to the model input. Loss = class·cross-entropy +
//! box·MSE. Gradients come from candle's autodiff; updates from graft's own [`Optimizer`], so
//! SGD/Adam/Nadam, the learning rate and L2 of [`TrainConfig`] apply as for classification.
//! Inference ([`LocalizerHead::predict`]) is plain f32 code and needs no candle.
//!
//! Reproducibility: the head is initialised from `config.seed`; epoch e's shuffle comes from a
//! generator seeded by the seed mixed with e alone.

mod boxes;
mod graph;
mod localizer;

use std::ops::ControlFlow;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use boxes::{BoxMetrics, box_metrics, corners, giou, iou};
pub use localizer::{BoxParts, CENTROID_EPSILON, LocalizerHead, softplus};

use super::config::TrainConfig;
use super::data::balanced_class_weights;
use super::error::TrainError;
use super::fit::{EpochTraining, FitState, Trainable, Validation, epoch_order, fit};
use super::metrics::{evaluate, log_loss};
use super::optim::{Optimizer, OptimizerState, Param};
use graph::{Batch, Graph};
pub(crate) use graph::{cross_entropy, label_tensors, sigmoid as sigmoid_tensor};
use localizer::Part;

/// Which box head to train.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalizeHeadKind {
    /// Dense(4) + sigmoid on the pooled feature vector.
    Pooled,
    /// On the spatial feature map before pooling (position survives there).
    Spatial,
}

/// Loss = class·cross-entropy + box·MSE (mean over the 4 box numbers); defaults 0.8 / 0.2.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    pub class: f32,
    #[serde(rename = "box")]
    pub box_: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { class: 0.8, box_: 0.2 }
    }
}

impl LossWeights {
    /// Both finite and ≥ 0, and not both 0 (there would be nothing to train).
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("class", self.class), ("box", self.box_)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("the {name} loss weight must be a number ≥ 0, not {value}"));
            }
        }
        if self.class == 0.0 && self.box_ == 0.0 {
            return Err("the class and box loss weights cannot both be 0".into());
        }
        Ok(())
    }
}

/// The box term of a localizer's loss.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxLoss {
    /// Mean squared error over `[cx, cy, w, h]` (the seed's Keras recipe).
    Mse,
    /// The mean L1 distance of the corners plus 1 − GIoU: the L1 term places the box early on,
    /// GIoU judges it as IoU does and still has a gradient when the boxes do not overlap.
    L1Giou,
    /// 1 − GIoU alone.
    Giou,
}

/// A localizer's loss: `class`·cross-entropy + `box`·the box term.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocalizeLoss {
    pub weights: LossWeights,
    pub box_loss: BoxLoss,
}

impl LocalizeLoss {
    /// The loss a job gets when it names none: for the pooled head the seed's recipe
    /// (0.8 · cross-entropy + 0.2 · MSE); for the spatial head 0.5 · cross-entropy +
    /// 1.0 · (L1 + GIoU). On `make bench-localize` the cell head's test mean IoU was 0.80 with
    /// these, 0.80 with GIoU alone, 0.77 at the weights 0.8 / 0.2, and 0.62 with MSE.
    pub fn default_for(kind: LocalizeHeadKind) -> Self {
        match kind {
            LocalizeHeadKind::Pooled => LossWeights::default().into(),
            LocalizeHeadKind::Spatial => {
                Self { weights: LossWeights { class: 0.5, box_: 1.0 }, box_loss: BoxLoss::L1Giou }
            }
        }
    }
}

impl From<LossWeights> for LocalizeLoss {
    /// The seed's recipe: these weights with the MSE box term.
    fn from(weights: LossWeights) -> Self {
        Self { weights, box_loss: BoxLoss::Mse }
    }
}

/// The features of one split. `spatial` rows are the map flattened in (row, column, channel)
/// order: H·W·C values.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalizeSplit {
    pub pooled: Array2<f32>,
    pub spatial: Option<Array2<f32>>,
    pub labels: Vec<usize>,
    pub boxes: Vec<[f32; 4]>,
}

impl LocalizeSplit {
    fn rows(&self) -> usize {
        self.pooled.nrows()
    }
}

/// Everything a localizer trains on.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalizeData {
    pub classes: usize,
    /// (height, width, channels) of the spatial map; required for Spatial.
    pub spatial_shape: Option<(usize, usize, usize)>,
    /// One split per feature variant (augmented copies of the train images, with their own
    /// boxes); each epoch uses variant `epoch % len`.
    pub train: Vec<LocalizeSplit>,
    /// Empty or `None`: no validation, no early stopping.
    pub valid: Option<LocalizeSplit>,
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeEpochReport {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Mean weighted loss over the epoch's rows, as the head changed during it.
    pub train_loss: f32,
    /// class·log loss + box·MSE on the validation split (without class weights).
    pub valid_loss: Option<f32>,
    pub valid_accuracy: Option<f32>,
    pub valid_mean_iou: Option<f32>,
    /// The epoch whose head would be kept if training ended now.
    pub best_epoch: usize,
    pub elapsed_seconds: f64,
}

/// The result of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalizeOutcome {
    /// The best epoch's head (the last epoch's when nothing was monitored).
    pub head: LocalizerHead,
    pub best_epoch: usize,
    pub epochs_run: usize,
    /// True when early stopping ended the run before the configured epochs.
    pub stopped_early: bool,
}

/// A localizer run after an epoch: enough to resume it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeCheckpoint {
    #[serde(flatten)]
    pub fit: FitState,
    pub head: LocalizerHead,
    pub optimizer: OptimizerState,
    /// The best epoch's head (the latest one when nothing is monitored).
    pub best_head: LocalizerHead,
    /// Seconds training had run, for its reports.
    pub elapsed_seconds: f64,
}

/// Trains a localizer on `data`, from scratch or from `resume` (a checkpoint of the same run).
///
/// After each epoch `on_epoch` gets the report and the checkpoint; `ControlFlow::Break(())`
/// cancels the run (`TrainError::Cancelled`). With a validation split and early stopping, the
/// run stops once the metric (the weighted validation loss for `ValLoss`, mean IoU + accuracy
/// for `ValAccuracy`) has not improved for `patience` epochs, and returns the best epoch's head.
/// `hidden_units` and `dropout` are refused: this head has neither.
pub fn train_localizer(
    config: &TrainConfig,
    loss: impl Into<LocalizeLoss>,
    kind: LocalizeHeadKind,
    data: &LocalizeData,
    resume: Option<LocalizeCheckpoint>,
    on_epoch: &mut dyn FnMut(&LocalizeEpochReport, &LocalizeCheckpoint) -> ControlFlow<()>,
) -> Result<LocalizeOutcome, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    if !config.is_linear() {
        return Err(TrainError::InvalidConfig(
            "the localization head has no hidden layer and no dropout: leave hidden_units and dropout unset".into(),
        ));
    }
    let loss = loss.into();
    loss.weights.validate().map_err(TrainError::InvalidConfig)?;
    validate(data, kind).map_err(TrainError::InvalidData)?;

    let pooled_dim = data.train[0].pooled.ncols();
    let mut head = LocalizerHead::init(kind, pooled_dim, data.classes, data.spatial_shape, config.seed)
        .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
    let stepper = Stepper::new(&mut head, config, loss)?;
    let checkpoint = match resume {
        Some(checkpoint) => {
            check_resumable(&checkpoint, &mut head, &stepper).map_err(TrainError::InvalidCheckpoint)?;
            checkpoint
        }
        None => LocalizeCheckpoint {
            fit: FitState::default(),
            optimizer: stepper.fresh_state(&mut head),
            best_head: head.clone(),
            head,
            elapsed_seconds: 0.0,
        },
    };
    let earlier_seconds = checkpoint.elapsed_seconds;
    let mut model = LocalizeRun {
        stepper,
        checkpoint,
        config,
        data,
        valid: data.valid.as_ref().filter(|v| v.rows() > 0),
        class_weights: config.class_weights.then(|| balanced_class_weights(&data.train[0].labels, data.classes)),
        spatial: kind == LocalizeHeadKind::Spatial,
    };
    model.stepper.graph.load(&model.checkpoint.head).map_err(tensor_error)?;
    let fitted = fit(&mut model, config, earlier_seconds, &mut |model, outcome| {
        model.checkpoint.elapsed_seconds = outcome.elapsed_seconds;
        let report = LocalizeEpochReport {
            epoch: outcome.epoch,
            epochs: outcome.epochs,
            train_loss: outcome.train.loss,
            valid_loss: outcome.valid.map(|v| v.loss),
            valid_accuracy: outcome.valid.map(|v| v.accuracy),
            valid_mean_iou: outcome.valid.and_then(|v| v.mean_iou),
            best_epoch: outcome.best_epoch,
            elapsed_seconds: outcome.elapsed_seconds,
        };
        on_epoch(&report, &model.checkpoint)
    })?;
    Ok(LocalizeOutcome {
        head: model.checkpoint.best_head,
        best_epoch: fitted.best_epoch,
        epochs_run: fitted.epochs_run,
        stopped_early: fitted.stopped_early,
    })
}

/// Checks that `checkpoint` continues a run whose fresh head is `head`.
fn check_resumable(checkpoint: &LocalizeCheckpoint, head: &mut LocalizerHead, stepper: &Stepper) -> Result<(), String> {
    let same = |other: &LocalizerHead| {
        other.kind() == head.kind()
            && other.classes() == head.classes()
            && other.pooled_dim() == head.pooled_dim()
            && other.spatial_shape() == head.spatial_shape()
    };
    if !(same(&checkpoint.head) && same(&checkpoint.best_head)) {
        return Err("the checkpoint's head has another kind or shape than this run's".into());
    }
    let FitState { epoch, best } = checkpoint.fit;
    if best.best_epoch > epoch || best.epochs_since_best > epoch {
        return Err("epoch counters are inconsistent".into());
    }
    if !(checkpoint.head.is_finite() && checkpoint.best_head.is_finite()) {
        return Err("the head holds NaN or infinite values".into());
    }
    let sizes = stepper.trained_sizes(head);
    stepper.optimizer.check_state(&checkpoint.optimizer, &sizes).map_err(|e| e.to_string())
}

/// A localizer as a [`Trainable`].
struct LocalizeRun<'a> {
    stepper: Stepper,
    checkpoint: LocalizeCheckpoint,
    config: &'a TrainConfig,
    data: &'a LocalizeData,
    valid: Option<&'a LocalizeSplit>,
    class_weights: Option<Vec<f32>>,
    spatial: bool,
}

impl Trainable for LocalizeRun<'_> {
    fn has_validation(&self) -> bool {
        self.valid.is_some()
    }

    fn fit_state(&mut self) -> &mut FitState {
        &mut self.checkpoint.fit
    }

    fn train_epoch(&mut self, epoch_index: usize) -> Result<EpochTraining, TrainError> {
        let split = &self.data.train[epoch_index % self.data.train.len()];
        let order = epoch_order(self.config.seed, epoch_index, split.rows());
        let mut loss_sum = 0f64;
        for rows in order.chunks(self.config.batch_size) {
            let batch = Batch::new(split, rows, self.data.classes, self.class_weights.as_deref(), self.spatial)
                .map_err(tensor_error)?;
            let checkpoint = &mut self.checkpoint;
            let loss = self.stepper.step(&mut checkpoint.head, &mut checkpoint.optimizer, &batch)?;
            loss_sum += f64::from(loss) * rows.len() as f64;
        }
        Ok(EpochTraining { loss: (loss_sum / split.rows() as f64) as f32, accuracy: None })
    }

    fn is_finite(&self) -> bool {
        self.checkpoint.head.is_finite()
    }

    fn validate(&mut self) -> Result<Option<Validation>, TrainError> {
        let scores = self.valid.map(|v| score(&self.checkpoint.head, v, self.stepper.loss)).transpose()?;
        Ok(scores.map(|s| Validation { loss: s.loss, accuracy: s.accuracy, mean_iou: Some(s.mean_iou) }))
    }

    fn keep_best(&mut self) {
        self.checkpoint.best_head.clone_from(&self.checkpoint.head);
    }

    /// The caller takes `best_head`: nothing to move.
    fn finish(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The candle graph and the optimiser over a run; the optimiser's state is the checkpoint's.
struct Stepper {
    graph: Graph,
    optimizer: Optimizer,
    loss: LocalizeLoss,
}

impl Stepper {
    fn new(head: &mut LocalizerHead, config: &TrainConfig, loss: LocalizeLoss) -> Result<Self, TrainError> {
        let graph = Graph::new(head).map_err(tensor_error)?;
        Ok(Self { graph, optimizer: config.optimizer(), loss })
    }

    /// The optimiser's state before the first step.
    fn fresh_state(&self, head: &mut LocalizerHead) -> OptimizerState {
        self.optimizer.init_state(&self.trained_sizes(head))
    }

    /// A term with weight 0 trains nothing: its parameters are left out of the update
    /// entirely, so weight decay does not shrink them either.
    fn trains(&self, part: Part) -> bool {
        match part {
            Part::Class => self.loss.weights.class > 0.0,
            Part::Box => self.loss.weights.box_ > 0.0,
        }
    }

    /// The sizes of the parameters the optimiser updates, in its state's order.
    fn trained_sizes(&self, head: &mut LocalizerHead) -> Vec<usize> {
        head.params_mut().iter().filter(|p| self.trains(p.part)).map(|p| p.values.len()).collect()
    }

    /// One optimiser step on `batch`: candle's gradients, graft's update, written back to
    /// both the head and the graph. Returns the batch loss before the step.
    fn step(&self, head: &mut LocalizerHead, state: &mut OptimizerState, batch: &Batch) -> Result<f32, TrainError> {
        let (loss, leaves) = self.graph.loss_on_constant_map(batch, self.loss).map_err(tensor_error)?;
        let grads = loss.backward().map_err(tensor_error)?;
        let all = self.graph.gradients(&grads, leaves.as_ref()).map_err(tensor_error)?;
        let mut gradients = Vec::new();
        for (grad, param) in all.into_iter().zip(head.params_mut()) {
            if self.trains(param.part) {
                let grad = match grad {
                    Some(g) => g.flatten_all().and_then(|g| g.to_vec1::<f32>()).map_err(tensor_error)?,
                    None => vec![0.0; param.values.len()],
                };
                gradients.push(grad);
            }
        }
        let mut params: Vec<Param<'_>> = head
            .params_mut()
            .into_iter()
            .filter(|p| self.trains(p.part))
            .zip(&gradients)
            .map(|(p, g)| Param { value: p.values, grad: g, decay: p.decay })
            .collect();
        self.optimizer.step(state, &mut params)?;
        self.graph.load(head).map_err(tensor_error)?;
        loss.to_scalar::<f32>().map_err(tensor_error)
    }
}

/// A localizer's loss on features a caller computes and differentiates through — phase 2 of
/// tuning, where they come from the base's tuned top blocks.
pub struct LocalizerLoss {
    graph: Graph,
    decays: Vec<bool>,
    loss: LocalizeLoss,
    classes: usize,
}

impl LocalizerLoss {
    pub fn new(head: &mut LocalizerHead, loss: LocalizeLoss) -> candle_core::Result<Self> {
        let graph = Graph::new(head)?;
        let decays = head.params_mut().iter().map(|p| p.decay).collect();
        Ok(Self { graph, decays, loss, classes: head.classes() })
    }

    /// The head's variables with whether weight decay applies, in [`LocalizerLoss::write_back`]'s order.
    pub fn vars(&self) -> Vec<(&candle_core::Var, bool)> {
        self.graph.vars().into_iter().zip(self.decays.iter().copied()).collect()
    }

    /// class·cross-entropy + box·the box term of a batch, and its class logits.
    pub fn loss(
        &self,
        pooled: candle_core::Tensor,
        spatial: Option<candle_core::Tensor>,
        labels: &[usize],
        boxes: &[[f32; 4]],
        class_weights: Option<&[f32]>,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let batch = Batch::from_tensors(pooled, spatial, labels, boxes, self.classes, class_weights)?;
        self.graph.loss(&batch, self.loss)
    }

    /// Copies `values` (one per variable, in [`LocalizerLoss::vars`]'s order) into `head`.
    pub fn write_back(values: &[Vec<f32>], head: &mut LocalizerHead) {
        for (param, values) in head.params_mut().into_iter().zip(values) {
            param.values.copy_from_slice(values);
        }
    }
}

/// Validation numbers of a localizer's predictions against `labels` and `truth` boxes; the
/// loss is the training loss's, without class weights.
pub fn localizer_scores(
    probabilities: &Array2<f32>,
    boxes: &[[f32; 4]],
    labels: &[usize],
    truth: &[[f32; 4]],
    loss: LocalizeLoss,
) -> Result<LocalizerScores, TrainError> {
    let invalid = |e: &dyn std::fmt::Display| TrainError::InvalidData(format!("validation split: {e}"));
    let cross_entropy = log_loss(probabilities.view(), labels).map_err(|e| invalid(&e))?;
    let accuracy = evaluate(probabilities.view(), labels, 1).map_err(|e| invalid(&e))?.accuracy;
    let box_term = mean_box_loss(loss.box_loss, boxes, truth);
    Ok(LocalizerScores {
        loss: loss.weights.class * cross_entropy + loss.weights.box_ * box_term,
        accuracy,
        mean_iou: box_metrics(boxes, truth).mean_iou,
    })
}

/// The box term of the loss over `boxes` against `truth`, in plain f32 (what the training
/// graph computes, for validation).
fn mean_box_loss(kind: BoxLoss, boxes: &[[f32; 4]], truth: &[[f32; 4]]) -> f32 {
    let rows = boxes.len().max(1) as f64;
    let sum: f64 = boxes
        .iter()
        .zip(truth)
        .map(|(p, t)| {
            let (pc, tc) = (corners(*p), corners(*t));
            let l1 = || pc.iter().zip(&tc).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>() / 4.0;
            match kind {
                BoxLoss::Mse => p.iter().zip(t).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / 4.0,
                BoxLoss::Giou => 1.0 - f64::from(giou(pc, tc)),
                BoxLoss::L1Giou => l1() + 1.0 - f64::from(giou(pc, tc)),
            }
        })
        .sum();
    (sum / rows) as f32
}

/// A candle failure; the shapes are checked beforehand, so this means inconsistent data.
pub(crate) fn tensor_error(error: candle_core::Error) -> TrainError {
    TrainError::InvalidData(format!("tensor computation failed: {error}"))
}

/// Validation numbers of one epoch.
#[derive(Debug, Clone, Copy)]
pub struct LocalizerScores {
    /// class·log loss + box·the box term.
    pub loss: f32,
    pub accuracy: f32,
    pub mean_iou: f32,
}

fn score(head: &LocalizerHead, split: &LocalizeSplit, loss: LocalizeLoss) -> Result<LocalizerScores, TrainError> {
    let (probabilities, boxes) = head
        .predict(split.pooled.view(), split.spatial.as_ref().map(|s| s.view()))
        .map_err(|e| TrainError::InvalidData(format!("validation split: {e}")))?;
    localizer_scores(&probabilities, &boxes, &split.labels, &split.boxes, loss)
}

/// Checks shapes, label ranges and that every number is finite, naming the split at fault.
fn validate(data: &LocalizeData, kind: LocalizeHeadKind) -> Result<(), String> {
    if data.classes == 0 {
        return Err("a localizer needs at least 1 class".into());
    }
    let first = data.train.first().ok_or("no training features")?;
    let (rows, dim) = first.pooled.dim();
    if rows == 0 || dim == 0 {
        return Err(format!("training features are {rows}×{dim}; need at least one row and one column"));
    }
    let spatial_len = match kind {
        LocalizeHeadKind::Pooled => None,
        LocalizeHeadKind::Spatial => {
            let (h, w, c) =
                data.spatial_shape.ok_or("the spatial head needs spatial_shape (height, width, channels)")?;
            match h.checked_mul(w).and_then(|hw| hw.checked_mul(c)) {
                Some(len) if len > 0 => Some(len),
                _ => return Err(format!("spatial_shape {h}×{w}×{c} must be non-empty")),
            }
        }
    };
    for (i, split) in data.train.iter().enumerate() {
        check_split(&format!("training variant {i}"), split, dim, spatial_len, data.classes)?;
        if split.rows() == 0 {
            return Err(format!("training variant {i} has no rows"));
        }
    }
    if let Some(valid) = data.valid.as_ref().filter(|v| v.rows() > 0) {
        check_split("validation", valid, dim, spatial_len, data.classes)?;
    }
    Ok(())
}

fn check_split(
    name: &str,
    split: &LocalizeSplit,
    dim: usize,
    spatial_len: Option<usize>,
    classes: usize,
) -> Result<(), String> {
    let (rows, cols) = split.pooled.dim();
    if cols != dim {
        return Err(format!("{name}: pooled features have {cols} columns, expected {dim}"));
    }
    if split.labels.len() != rows || split.boxes.len() != rows {
        return Err(format!(
            "{name}: {rows} feature rows but {} labels and {} boxes",
            split.labels.len(),
            split.boxes.len()
        ));
    }
    if let Some(label) = split.labels.iter().find(|&&label| label >= classes) {
        return Err(format!("{name}: label {label} is out of range for {classes} classes"));
    }
    if split.boxes.iter().flatten().any(|v| !v.is_finite()) {
        return Err(format!("{name}: a box holds NaN or infinite values"));
    }
    if split.pooled.iter().any(|v| !v.is_finite()) {
        return Err(format!("{name}: pooled features contain NaN or infinite values"));
    }
    if let Some(len) = spatial_len {
        let map = split.spatial.as_ref().ok_or_else(|| format!("{name}: the spatial head needs spatial features"))?;
        if map.dim() != (rows, len) {
            return Err(format!("{name}: spatial features are {:?}, expected {rows}×{len}", map.dim()));
        }
        if map.iter().any(|v| !v.is_finite()) {
            return Err(format!("{name}: spatial features contain NaN or infinite values"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
