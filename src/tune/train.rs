//! Phase 2 of fine-tuning: the tail of the base and the phase-1 head trained together on
//! cached cut activations, with graft's optimisers, early stopping on the validation split
//! and the best epoch's weights kept.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use ndarray::Array2;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::eval::{TailModel, softmax};
use crate::train::{
    Head, OptimizerState, Param, StopMetric, TrainConfig, TrainError, becomes_best, evaluate, log_loss,
};

/// Cut activations of one split, image after image, with their labels.
#[derive(Debug, Clone, Default)]
pub struct TuneSplit {
    pub activations: Vec<f32>,
    pub labels: Vec<usize>,
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

/// One epoch of phase 2, as a user watching the job sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub valid_loss: Option<f32>,
    pub valid_accuracy: Option<f32>,
    pub best_epoch: usize,
    /// Seconds this epoch took (training and validation).
    pub epoch_seconds: f64,
    pub elapsed_seconds: f64,
}

/// The tuned tail (best epoch's weights, in place) and head.
pub struct TuneOutcome {
    pub head: Head,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
}

/// The best epoch so far: every variable's values, the epoch, its monitored value, and the
/// epochs since.
struct Best {
    values: Vec<Vec<f32>>,
    epoch: usize,
    metric: Option<f32>,
    since: usize,
}

/// The head's layers as candle variables: (weights inputs×outputs, bias) per layer.
struct HeadVars {
    layers: Vec<(Var, Var)>,
}

impl HeadVars {
    fn new(head: &Head) -> candle_core::Result<Self> {
        let layers = head
            .layers()
            .map(|dense| {
                let [w, b] = dense.values();
                Ok((
                    Var::from_slice(w, (dense.inputs(), dense.outputs()), &Device::Cpu)?,
                    Var::from_slice(b, dense.outputs(), &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = features.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            if i > 0 {
                x = x.relu()?;
            }
            x = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        }
        Ok(x)
    }
}

/// Every trainable variable, tail first, with whether weight decay applies.
fn variables<'a>(tail: &'a TailModel, head: &'a HeadVars) -> Vec<(&'a Var, bool)> {
    let mut vars: Vec<(&Var, bool)> = tail.params().iter().map(|p| (&p.var, p.decay)).collect();
    for (w, b) in &head.layers {
        vars.push((w, true));
        vars.push((b, false));
    }
    vars
}

fn values_of(vars: &[(&Var, bool)]) -> candle_core::Result<Vec<Vec<f32>>> {
    vars.iter().map(|(v, _)| v.as_tensor().flatten_all()?.to_vec1::<f32>()).collect()
}

fn load(vars: &[(&Var, bool)], values: &[Vec<f32>]) -> candle_core::Result<()> {
    for ((var, _), values) in vars.iter().zip(values) {
        var.set(&Tensor::from_slice(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

fn tensor_error(error: candle_core::Error) -> TrainError {
    TrainError::InvalidData(format!("tensor computation failed: {error}"))
}

/// The rows `rows` of `split` as one (batch, …shape) tensor.
fn batch(split: &TuneSplit, rows: &[usize], shape: &[usize]) -> candle_core::Result<Tensor> {
    let per_image: usize = shape.iter().product();
    let mut values = Vec::with_capacity(per_image * rows.len());
    for &row in rows {
        values.extend_from_slice(&split.activations[row * per_image..(row + 1) * per_image]);
    }
    let mut dims = vec![rows.len()];
    dims.extend_from_slice(shape);
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// Probabilities of every row of `split` under the current tail and head, in batches.
pub fn predict(
    tail: &TailModel,
    head: &Head,
    activations: &[f32],
    shape: &[usize],
    batch_size: usize,
) -> candle_core::Result<Array2<f32>> {
    let vars = HeadVars::new(head)?;
    let per_image: usize = shape.iter().product();
    let rows = activations.len() / per_image.max(1);
    let split = TuneSplit { activations: activations.to_vec(), labels: vec![0; rows] };
    probabilities(tail, &vars, &split, shape, batch_size, head.classes())
}

fn probabilities(
    tail: &TailModel,
    head: &HeadVars,
    split: &TuneSplit,
    shape: &[usize],
    batch_size: usize,
    classes: usize,
) -> candle_core::Result<Array2<f32>> {
    let mut out = Vec::with_capacity(split.rows() * classes);
    let order: Vec<usize> = (0..split.rows()).collect();
    for rows in order.chunks(batch_size.max(1)) {
        let x = batch(split, rows, shape)?;
        let p = softmax(&head.logits(&tail.forward(&x)?)?, 1)?.detach();
        out.extend(p.flatten_all()?.to_vec1::<f32>()?);
    }
    Array2::from_shape_vec((split.rows(), classes), out).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Mean cross-entropy of a batch (class-weighted when `weights` are given) and its correct count.
fn batch_loss(logits: &Tensor, labels: &[usize], weights: Option<&[f32]>) -> candle_core::Result<(Tensor, usize)> {
    let (n, classes) = logits.dims2()?;
    let mut onehot = vec![0f32; n * classes];
    for (i, &label) in labels.iter().enumerate() {
        onehot[i * classes + label] = weights.map_or(1.0, |w| w[label]);
    }
    let onehot = Tensor::from_vec(onehot, (n, classes), &Device::Cpu)?;
    let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?.detach())?;
    let log_probs = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(1)?.log()?)?;
    let loss = (log_probs * onehot)?.sum_all()?.neg()?.affine(1.0 / n as f64, 0.0)?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| **p as usize == **l).count();
    Ok((loss, correct))
}

/// Trains `tail` and `head` together on `data` (phase 2). `config` is phase 2's own (its
/// learning rate already lowered). The tail's variables hold the best epoch's weights on
/// return; the returned head is that epoch's.
pub fn tune(
    config: &TrainConfig,
    tail: &TailModel,
    head: &Head,
    data: &TuneData,
    on_epoch: &mut dyn FnMut(&TuneEpochReport) -> ControlFlow<()>,
) -> Result<TuneOutcome, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    if data.train.is_empty() || data.train[0].rows() == 0 {
        return Err(TrainError::InvalidData("no training activations".into()));
    }
    let head_vars = HeadVars::new(head).map_err(tensor_error)?;
    let vars = variables(tail, &head_vars);
    let optimizer = config.optimizer();
    let sizes: Vec<usize> = vars.iter().map(|(v, _)| v.elem_count()).collect();
    let mut state: OptimizerState = optimizer.init_state(&sizes);
    let mut values = values_of(&vars).map_err(tensor_error)?;
    let class_weights =
        config.class_weights.then(|| crate::train::balanced_class_weights(&data.train[0].labels, data.classes));
    let valid = data.valid.as_ref().filter(|v| v.rows() > 0);
    let monitor = config.early_stopping.filter(|_| valid.is_some());

    let started = Instant::now();
    let mut best = Best { values: values.clone(), epoch: 0, metric: None, since: 0 };
    let mut epoch = 0;
    while epoch < config.epochs && monitor.is_none_or(|m| best.since < m.patience) {
        let epoch_started = Instant::now();
        let split = &data.train[epoch % data.train.len()];
        let mut order: Vec<usize> = (0..split.rows()).collect();
        order.shuffle(&mut crate::train::epoch_rng(config.seed, epoch));
        epoch += 1;
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for rows in order.chunks(config.batch_size) {
            let x = batch(split, rows, &data.shape).map_err(tensor_error)?;
            let labels: Vec<usize> = rows.iter().map(|&r| split.labels[r]).collect();
            let logits = tail.forward(&x).and_then(|f| head_vars.logits(&f)).map_err(tensor_error)?;
            let (loss, right) = batch_loss(&logits, &labels, class_weights.as_deref()).map_err(tensor_error)?;
            let grads = loss.backward().map_err(tensor_error)?;
            let gradients = vars
                .iter()
                .map(|(var, _)| match grads.get(var.as_tensor()) {
                    Some(g) => g.flatten_all().and_then(|g| g.to_vec1::<f32>()),
                    None => Ok(vec![0.0; var.elem_count()]),
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(tensor_error)?;
            let mut params: Vec<Param<'_>> = values
                .iter_mut()
                .zip(&gradients)
                .zip(&vars)
                .map(|((value, grad), (_, decay))| Param { value, grad, decay: *decay })
                .collect();
            optimizer.step(&mut state, &mut params)?;
            load(&vars, &values).map_err(tensor_error)?;
            loss_sum += f64::from(loss.to_scalar::<f32>().map_err(tensor_error)?) * rows.len() as f64;
            correct += right;
        }
        let train_loss = (loss_sum / split.rows() as f64) as f32;
        if !train_loss.is_finite() || values.iter().flatten().any(|v| !v.is_finite()) {
            return Err(TrainError::Diverged { epoch });
        }
        let scores = match valid {
            Some(v) => {
                let p = probabilities(tail, &head_vars, v, &data.shape, config.batch_size, data.classes)
                    .map_err(tensor_error)?;
                let invalid = |e: crate::train::MetricsError| TrainError::InvalidData(e.to_string());
                Some((
                    log_loss(p.view(), &v.labels).map_err(invalid)?,
                    evaluate(p.view(), &v.labels, 1).map_err(invalid)?.accuracy,
                ))
            }
            None => None,
        };
        let metric = monitor.map(|m| m.metric);
        let value = scores.map(|(loss, accuracy)| if metric == Some(StopMetric::ValLoss) { loss } else { accuracy });
        if becomes_best(metric, value, best.metric) {
            best = Best { values: values.clone(), epoch, metric: value, since: 0 };
        } else {
            best.since += 1;
        }
        let report = TuneEpochReport {
            epoch,
            epochs: config.epochs,
            train_loss,
            train_accuracy: correct as f32 / split.rows() as f32,
            valid_loss: scores.map(|s| s.0),
            valid_accuracy: scores.map(|s| s.1),
            best_epoch: best.epoch,
            epoch_seconds: epoch_started.elapsed().as_secs_f64(),
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        if on_epoch(&report).is_break() {
            return Err(TrainError::Cancelled { epoch });
        }
    }
    load(&vars, &best.values).map_err(tensor_error)?;
    let mut tuned_head = head.clone();
    let head_values = &best.values[tail.params().len()..];
    for (dense, pair) in tuned_head.layers_mut().zip(head_values.chunks(2)) {
        let [w, b] = dense.values_mut();
        w.copy_from_slice(&pair[0]);
        b.copy_from_slice(&pair[1]);
    }
    Ok(TuneOutcome {
        head: tuned_head,
        best_epoch: best.epoch,
        epochs_run: epoch,
        stopped_early: epoch < config.epochs,
    })
}
