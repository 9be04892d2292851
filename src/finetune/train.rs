//! Phase 2 of fine-tuning: the tail of the base and the phase-1 head (a classifier, or a
//! localizer's class and box heads) trained together on cached cut activations, with
//! graft's optimisers, early stopping on the validation split and the best epoch's weights
//! kept.

use std::ops::ControlFlow;

use candle_core::{Device, Tensor, Var};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::checkpoint::TuneCheckpoint;
use super::eval::TailModel;
use crate::train::{
    BestEpoch, EpochTraining, FitState, Head, LocalizeLoss, LocalizerHead, LocalizerLoss, Param, TrainConfig,
    TrainError, Trainable, Validation, cross_entropy, evaluate, fit, label_tensors, localizer_scores, log_loss,
    tensor_error,
};
use crate::vision::Layout;

/// Cut activations of one split, image after image, with their labels (and boxes, for a
/// localizer).
#[derive(Debug, Clone, Default)]
pub struct TuneSplit {
    pub activations: Vec<f32>,
    pub labels: Vec<usize>,
    /// `[cx, cy, w, h]` per image; empty for a classifier.
    pub boxes: Vec<[f32; 4]>,
}

impl TuneSplit {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }
}

/// What phase 2 trains on: one train split per feature variant (epoch e uses e mod n).
pub struct TuneData {
    /// The shape of one image's activations at the cut (e.g. channels, height, width).
    pub shape: Vec<usize>,
    pub classes: usize,
    pub train: Vec<TuneSplit>,
    pub valid: Option<TuneSplit>,
}

/// The spatial feature map a spatial box head reads, computed inside the tail.
#[derive(Debug, Clone)]
pub struct SpatialTap {
    pub tensor: String,
    pub layout: Layout,
}

/// The head phase 2 trains with the tail, as phase 1 left it.
#[derive(Debug, Clone)]
pub enum TuneHead {
    Classifier(Head),
    Localizer { head: LocalizerHead, loss: LocalizeLoss, spatial: Option<SpatialTap> },
}

impl TuneHead {
    fn spatial(&self) -> Option<&SpatialTap> {
        match self {
            Self::Localizer { spatial, .. } => spatial.as_ref(),
            Self::Classifier(_) => None,
        }
    }

    /// Probabilities (and a localizer's boxes) for tail features.
    pub fn predict(&self, pooled: &Array2<f32>, spatial: Option<&Array2<f32>>) -> Result<Predictions, String> {
        match self {
            Self::Classifier(head) => Ok(Predictions {
                probabilities: head.try_forward(pooled.view()).map_err(|e| e.to_string())?,
                boxes: None,
            }),
            Self::Localizer { head, .. } => {
                let (probabilities, boxes) =
                    head.predict(pooled.view(), spatial.map(|s| s.view())).map_err(|e| e.to_string())?;
                Ok(Predictions { probabilities, boxes: Some(boxes) })
            }
        }
    }
}

/// A head's answers for a split: class probabilities and, for a localizer, `[cx, cy, w, h]` boxes.
pub struct Predictions {
    pub probabilities: Array2<f32>,
    pub boxes: Option<Vec<[f32; 4]>>,
}

/// One epoch of phase 2, as a user watching the job sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub valid_loss: Option<f32>,
    pub valid_accuracy: Option<f32>,
    /// A localizer's mean IoU on the validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_mean_iou: Option<f32>,
    pub best_epoch: usize,
    /// Seconds this epoch took (training and validation).
    pub epoch_seconds: f64,
    pub elapsed_seconds: f64,
}

/// The tuned head; the tail's variables hold the same (best) epoch's weights.
pub struct TuneOutcome {
    pub head: TuneHead,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
}

/// The head's trainable side: candle variables and the batch loss.
enum HeadTrainer {
    /// (weights inputs×outputs, bias) per dense layer.
    Classifier(Vec<(Var, Var)>),
    Localizer(LocalizerLoss),
}

impl HeadTrainer {
    fn new(head: &TuneHead) -> candle_core::Result<Self> {
        match head {
            TuneHead::Classifier(head) => Ok(Self::Classifier(
                head.layers()
                    .map(|dense| {
                        let [w, b] = dense.values();
                        Ok((
                            Var::from_slice(w, (dense.inputs(), dense.outputs()), &Device::Cpu)?,
                            Var::from_slice(b, dense.outputs(), &Device::Cpu)?,
                        ))
                    })
                    .collect::<candle_core::Result<_>>()?,
            )),
            TuneHead::Localizer { head, loss, .. } => {
                Ok(Self::Localizer(LocalizerLoss::new(&mut head.clone(), *loss)?))
            }
        }
    }

    fn vars(&self) -> Vec<(&Var, bool)> {
        match self {
            Self::Classifier(layers) => layers.iter().flat_map(|(w, b)| [(w, true), (b, false)]).collect(),
            Self::Localizer(loss) => loss.vars(),
        }
    }

    /// The batch's loss (class-weighted when `weights` are given) and its logits.
    fn loss(
        &self,
        pooled: Tensor,
        spatial: Option<Tensor>,
        labels: &[usize],
        boxes: &[[f32; 4]],
        weights: Option<&[f32]>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Self::Classifier(layers) => {
                let mut x = pooled;
                for (i, (w, b)) in layers.iter().enumerate() {
                    if i > 0 {
                        x = x.relu()?;
                    }
                    x = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
                }
                let (onehot, row_weights) = label_tensors(labels, x.dim(1)?, weights)?;
                Ok((cross_entropy(&x, &onehot, row_weights.as_ref())?, x))
            }
            Self::Localizer(loss) => loss.loss(pooled, spatial, labels, boxes, weights),
        }
    }

    /// Copies the head's part of `values` into `head`.
    fn write_back(values: &[Vec<f32>], head: &mut TuneHead) {
        match head {
            TuneHead::Classifier(head) => {
                for (dense, pair) in head.layers_mut().zip(values.chunks(2)) {
                    let [w, b] = dense.values_mut();
                    w.copy_from_slice(&pair[0]);
                    b.copy_from_slice(&pair[1]);
                }
            }
            TuneHead::Localizer { head, .. } => LocalizerLoss::write_back(values, head),
        }
    }
}

fn correct(logits: &Tensor, labels: &[usize]) -> candle_core::Result<usize> {
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).filter(|(p, l)| **p as usize == **l).count())
}

/// The rows `rows` of `activations` (images of `shape`) as one (batch, …shape) tensor.
fn batch(activations: &[f32], rows: &[usize], shape: &[usize]) -> candle_core::Result<Tensor> {
    let per_image: usize = shape.iter().product();
    let mut values = Vec::with_capacity(per_image * rows.len());
    for &row in rows {
        values.extend_from_slice(&activations[row * per_image..(row + 1) * per_image]);
    }
    Tensor::from_vec(values, [&[rows.len()][..], shape].concat(), &Device::Cpu)
}

/// A tapped spatial map as rows of (row, column, channel) values, the order the localizer reads.
fn spatial_rows(map: Tensor, layout: Layout) -> candle_core::Result<Tensor> {
    let n = map.dim(0)?;
    let cells = match layout {
        Layout::Nchw => map.permute((0, 2, 3, 1))?.contiguous()?,
        Layout::Nhwc => map,
    };
    let len = cells.elem_count() / n.max(1);
    cells.reshape((n, len))
}

/// The tail's outputs for `rows` of `activations`: pooled (n × width) and, with `tap`, the
/// spatial map's rows.
fn tail_outputs(
    tail: &TailModel,
    activations: &[f32],
    rows: &[usize],
    shape: &[usize],
    tap: Option<&SpatialTap>,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let x = batch(activations, rows, shape)?;
    let (pooled, map) = tail.forward_tapped(&x, tap.map(|t| t.tensor.as_str()))?;
    let spatial = match (map, tap) {
        (Some(map), Some(tap)) => Some(spatial_rows(map, tap.layout)?),
        _ => None,
    };
    Ok((pooled, spatial))
}

/// The tail's pooled features (and tapped spatial rows) of every image in `activations`,
/// without gradients, in batches of `batch_size`.
pub fn tail_features(
    tail: &TailModel,
    activations: &[f32],
    shape: &[usize],
    batch_size: usize,
    tap: Option<&SpatialTap>,
) -> candle_core::Result<(Array2<f32>, Option<Array2<f32>>)> {
    let per_image: usize = shape.iter().product();
    let images = activations.len() / per_image.max(1);
    let (mut pooled, mut spatial) = (Vec::new(), Vec::new());
    let (mut width, mut spatial_width) = (0, 0);
    let order: Vec<usize> = (0..images).collect();
    for rows in order.chunks(batch_size.max(1)) {
        let (p, s) = tail_outputs(tail, activations, rows, shape, tap)?;
        width = p.dim(1)?;
        pooled.extend(p.detach().flatten_all()?.to_vec1::<f32>()?);
        if let Some(s) = s {
            spatial_width = s.dim(1)?;
            spatial.extend(s.detach().flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let shape_error = |e: ndarray::ShapeError| candle_core::Error::Msg(e.to_string());
    let pooled = Array2::from_shape_vec((images, width), pooled).map_err(shape_error)?;
    let spatial = match tap {
        Some(_) => Some(Array2::from_shape_vec((images, spatial_width), spatial).map_err(shape_error)?),
        None => None,
    };
    Ok((pooled, spatial))
}

/// Validation of the head as it stands: loss, accuracy and (a localizer's) mean IoU.
fn score(
    head: &TuneHead,
    tail: &TailModel,
    split: &TuneSplit,
    data: &TuneData,
    batch_size: usize,
) -> Result<Validation, TrainError> {
    let invalid = |e: String| TrainError::InvalidData(format!("validation split: {e}"));
    let (pooled, spatial) =
        tail_features(tail, &split.activations, &data.shape, batch_size, head.spatial()).map_err(tensor_error)?;
    let Predictions { probabilities, boxes } = head.predict(&pooled, spatial.as_ref()).map_err(invalid)?;
    match (head, boxes) {
        (TuneHead::Localizer { loss, .. }, Some(boxes)) => {
            let s = localizer_scores(&probabilities, &boxes, &split.labels, &split.boxes, *loss)?;
            Ok(Validation { loss: s.loss, accuracy: s.accuracy, mean_iou: Some(s.mean_iou) })
        }
        _ => Ok(Validation {
            loss: log_loss(probabilities.view(), &split.labels).map_err(|e| invalid(e.to_string()))?,
            accuracy: evaluate(probabilities.view(), &split.labels, 1).map_err(|e| invalid(e.to_string()))?.accuracy,
            mean_iou: None,
        }),
    }
}

fn load(vars: &[(&Var, bool)], values: &[Vec<f32>]) -> candle_core::Result<()> {
    for ((var, _), values) in vars.iter().zip(values) {
        var.set(&Tensor::from_slice(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

/// Every trained variable, the tail's then the head's, with whether weight decay applies.
fn all_vars<'v>(tail: &'v TailModel, trainer: &'v HeadTrainer) -> Vec<(&'v Var, bool)> {
    tail.params().iter().map(|p| (&p.var, p.decay)).chain(trainer.vars()).collect()
}

/// Trains `tail` and `head` together on `data` (phase 2). `config` is phase 2's own (its
/// learning rate already lowered). On return the tail's variables hold the best epoch's
/// weights, and the outcome's head is that epoch's.
///
/// After each epoch `on_epoch` gets the report and the checkpoint to store; `resume` (a
/// checkpoint of the same job) continues from it, exactly as the uninterrupted run would.
pub fn tune(
    config: &TrainConfig,
    tail: &TailModel,
    head: &TuneHead,
    data: &TuneData,
    resume: Option<TuneCheckpoint>,
    on_epoch: &mut dyn FnMut(&TuneEpochReport, &TuneCheckpoint) -> ControlFlow<()>,
) -> Result<TuneOutcome, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    if data.train.is_empty() || data.train[0].rows() == 0 {
        return Err(TrainError::InvalidData("no training activations".into()));
    }
    let trainer = HeadTrainer::new(head).map_err(tensor_error)?;
    let optimizer = config.optimizer();
    let sizes: Vec<usize> = all_vars(tail, &trainer).iter().map(|(v, _)| v.elem_count()).collect();
    let valid = data.valid.as_ref().filter(|v| v.rows() > 0);
    let resume = resume.filter(|c| c.fits(&sizes) && optimizer.check_state(&c.optimizer, &sizes).is_ok());
    let mut run = TuneRun {
        config,
        tail,
        data,
        valid,
        class_weights: config
            .class_weights
            .then(|| crate::train::balanced_class_weights(&data.train[0].labels, data.classes)),
        tail_count: tail.params().len(),
        current: head.clone(),
        checkpoint: TuneCheckpoint::default(),
        trainer,
    };
    run.checkpoint = match resume {
        Some(checkpoint) => {
            load(&all_vars(tail, &run.trainer), &checkpoint.values).map_err(tensor_error)?;
            HeadTrainer::write_back(&checkpoint.values[run.tail_count..], &mut run.current);
            checkpoint
        }
        None => {
            let values = all_vars(tail, &run.trainer)
                .iter()
                .map(|(v, _)| v.as_tensor().flatten_all()?.to_vec1::<f32>())
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(tensor_error)?;
            // With early stopping, epoch 0 is phase 1's model as it is: phase 2 must beat it on
            // the validation split to replace it, so tuning never leaves a model that validates
            // worse than the frozen one. Without early stopping the last epoch is kept, as in phase 1.
            let baseline = match config.early_stopping.filter(|_| valid.is_some()) {
                Some(monitor) => run.validate()?.map(|v| v.monitored(Some(monitor.metric))),
                None => None,
            };
            TuneCheckpoint {
                fit: FitState { epoch: 0, best: BestEpoch::starting_at(baseline) },
                best_values: values.clone(),
                values,
                optimizer: optimizer.init_state(&sizes),
                elapsed_seconds: 0.0,
            }
        }
    };
    let earlier_seconds = run.checkpoint.elapsed_seconds;
    let fitted = fit(&mut run, config, earlier_seconds, &mut |run, outcome| {
        run.checkpoint.elapsed_seconds = outcome.elapsed_seconds;
        let report = TuneEpochReport {
            epoch: outcome.epoch,
            epochs: outcome.epochs,
            train_loss: outcome.train.loss,
            train_accuracy: outcome.train.accuracy.unwrap_or_default(),
            valid_loss: outcome.valid.map(|v| v.loss),
            valid_accuracy: outcome.valid.map(|v| v.accuracy),
            valid_mean_iou: outcome.valid.and_then(|v| v.mean_iou),
            best_epoch: outcome.best_epoch,
            epoch_seconds: outcome.epoch_seconds,
            elapsed_seconds: outcome.elapsed_seconds,
        };
        on_epoch(&report, &run.checkpoint)
    })?;
    Ok(TuneOutcome {
        head: run.current,
        best_epoch: fitted.best_epoch,
        epochs_run: fitted.epochs_run,
        stopped_early: fitted.stopped_early,
    })
}

/// Phase 2 as a [`Trainable`]: the tail and head variables, and the checkpoint holding their
/// values, the optimiser's moments and the best epoch's values.
struct TuneRun<'a> {
    config: &'a TrainConfig,
    tail: &'a TailModel,
    data: &'a TuneData,
    valid: Option<&'a TuneSplit>,
    class_weights: Option<Vec<f32>>,
    trainer: HeadTrainer,
    /// Variables before this index are the tail's.
    tail_count: usize,
    /// The head as the current values leave it, for scoring.
    current: TuneHead,
    checkpoint: TuneCheckpoint,
}

impl Trainable for TuneRun<'_> {
    fn has_validation(&self) -> bool {
        self.valid.is_some()
    }

    fn fit_state(&mut self) -> &mut FitState {
        &mut self.checkpoint.fit
    }

    fn train_epoch(&mut self, epoch_index: usize) -> Result<EpochTraining, TrainError> {
        let Self { config, tail, data, trainer, checkpoint, .. } = self;
        let vars = all_vars(tail, trainer);
        let optimizer = config.optimizer();
        let split = &data.train[epoch_index % data.train.len()];
        let order = crate::train::epoch_order(config.seed, epoch_index, split.rows());
        let (mut loss_sum, mut right) = (0f64, 0usize);
        for rows in order.chunks(config.batch_size) {
            let labels: Vec<usize> = rows.iter().map(|&r| split.labels[r]).collect();
            let boxes: Vec<[f32; 4]> = rows.iter().filter_map(|&r| split.boxes.get(r).copied()).collect();
            let (pooled, spatial) = tail_outputs(tail, &split.activations, rows, &data.shape, self.current.spatial())
                .map_err(tensor_error)?;
            let (loss, logits) =
                trainer.loss(pooled, spatial, &labels, &boxes, self.class_weights.as_deref()).map_err(tensor_error)?;
            let grads = loss.backward().map_err(tensor_error)?;
            let gradients = vars
                .iter()
                .map(|(var, _)| match grads.get(var.as_tensor()) {
                    Some(g) => g.flatten_all().and_then(|g| g.to_vec1::<f32>()),
                    None => Ok(vec![0.0; var.elem_count()]),
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(tensor_error)?;
            let mut params: Vec<Param<'_>> = checkpoint
                .values
                .iter_mut()
                .zip(&gradients)
                .zip(&vars)
                .map(|((value, grad), (_, decay))| Param { value, grad, decay: *decay })
                .collect();
            optimizer.step(&mut checkpoint.optimizer, &mut params)?;
            load(&vars, &checkpoint.values).map_err(tensor_error)?;
            loss_sum += f64::from(loss.to_scalar::<f32>().map_err(tensor_error)?) * rows.len() as f64;
            right += correct(&logits, &labels).map_err(tensor_error)?;
        }
        let rows = split.rows() as f64;
        HeadTrainer::write_back(&checkpoint.values[self.tail_count..], &mut self.current);
        Ok(EpochTraining { loss: (loss_sum / rows) as f32, accuracy: Some((right as f64 / rows) as f32) })
    }

    fn is_finite(&self) -> bool {
        self.checkpoint.values.iter().flatten().all(|v| v.is_finite())
    }

    fn validate(&mut self) -> Result<Option<Validation>, TrainError> {
        self.valid.map(|v| score(&self.current, self.tail, v, self.data, self.config.batch_size)).transpose()
    }

    fn keep_best(&mut self) {
        self.checkpoint.best_values.clone_from(&self.checkpoint.values);
    }

    /// The best epoch's values go back into the variables and the head.
    fn finish(&mut self) -> Result<(), TrainError> {
        load(&all_vars(self.tail, &self.trainer), &self.checkpoint.best_values).map_err(tensor_error)?;
        HeadTrainer::write_back(&self.checkpoint.best_values[self.tail_count..], &mut self.current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::onnx::cut::BaseGraph;
    use crate::onnx::proto::{GraphProto, ModelProto, ValueInfoProto};
    use crate::onnx::tensor::{float_tensor, node};

    /// A tail x [N,2,3,3] → Conv 1×1 (2→3) → Relu → GlobalAveragePool → Flatten → `pooled`.
    fn small_tail() -> TailModel {
        let plain = |op: &str, inputs: &[&str], output: &str| node(op, inputs, output, vec![]);
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    plain("Conv", &["x", "w", "b"], "c"),
                    plain("Relu", &["c"], "r"),
                    plain("GlobalAveragePool", &["r"], "g"),
                    plain("Flatten", &["g"], "pooled"),
                ],
                input: vec![ValueInfoProto { name: Some("x".into()), ..Default::default() }],
                output: vec![ValueInfoProto { name: Some("pooled".into()), ..Default::default() }],
                initializer: vec![
                    float_tensor("w", &[3, 2, 1, 1], &[0.5, -0.3, 0.2, 0.8, -0.6, 0.4]),
                    float_tensor("b", &[3], &[0.1, 0.0, -0.1]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let base = BaseGraph::decode(&model.encode_to_vec()).unwrap();
        TailModel::new(&base.tail("x", "pooled").unwrap()).unwrap()
    }

    fn data() -> TuneData {
        let mut rng = StdRng::seed_from_u64(9);
        let split = |n: usize, rng: &mut StdRng| {
            let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
            let activations = labels
                .iter()
                .flat_map(|&l| {
                    (0..18)
                        .map(|k| rng.random_range(-1.0..1.0) + if k < 9 { l as f32 } else { 0.0 })
                        .collect::<Vec<f32>>()
                })
                .collect();
            TuneSplit { activations, labels, boxes: Vec::new() }
        };
        TuneData { shape: vec![2, 3, 3], classes: 2, train: vec![split(24, &mut rng)], valid: Some(split(8, &mut rng)) }
    }

    fn values(tail: &TailModel, head: &TuneHead) -> Vec<f32> {
        let mut out: Vec<f32> = tail
            .params()
            .iter()
            .flat_map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        if let TuneHead::Classifier(head) = head {
            out.extend(head.layers().flat_map(|d| d.values().concat()));
        }
        out
    }

    #[test]
    fn a_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_does() {
        let config = TrainConfig { epochs: 6, batch_size: 5, early_stopping: None, ..TrainConfig::default() };
        let head = TuneHead::Classifier(Head::init(3, None, 2, &mut StdRng::seed_from_u64(1)).unwrap());
        let data = data();

        let whole_tail = small_tail();
        let whole = tune(&config, &whole_tail, &head, &data, None, &mut |_, _| ControlFlow::Continue(())).unwrap();

        let first_tail = small_tail();
        let mut saved = None;
        let stopped = tune(&config, &first_tail, &head, &data, None, &mut |report, checkpoint| {
            saved = Some(TuneCheckpoint::from_bytes(&checkpoint.to_bytes()).unwrap());
            if report.epoch == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert!(matches!(stopped, Err(TrainError::Cancelled { epoch: 3 })));
        let resumed_tail = small_tail();
        let mut epochs = Vec::new();
        let resumed = tune(&config, &resumed_tail, &head, &data, saved, &mut |report, _| {
            epochs.push(report.epoch);
            ControlFlow::Continue(())
        })
        .unwrap();

        assert_eq!((epochs, resumed.epochs_run), (vec![4, 5, 6], 6), "only the epochs after the checkpoint run");
        assert_eq!(values(&resumed_tail, &resumed.head), values(&whole_tail, &whole.head), "bit for bit");
        assert_ne!(values(&whole_tail, &whole.head), values(&small_tail(), &head), "training changed the weights");
    }
}
