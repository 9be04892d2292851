//! The training forward pass in candle: the head's parameters as `Var`s, a mini-batch as
//! tensors, and the weighted loss whose `backward()` gives the gradients graft's optimiser
//! applies. Every step is a tensor op over the whole batch.

use candle_core::{Device, Result, Tensor, Var};

use super::localizer::{BoxHead, CENTROID_EPSILON, LocalizerHead};
use super::{LocalizeSplit, LossWeights};

/// The head's parameters as candle variables, in the order of `LocalizerHead::params`.
pub(super) struct Graph {
    class_w: Var,
    class_b: Var,
    boxes: BoxVars,
}

enum BoxVars {
    Pooled {
        w: Var,
        b: Var,
    },
    Spatial {
        shape: (usize, usize, usize),
        /// The 1×1 convolution as a (channels × 1) matrix.
        u: Var,
        a: Var,
        scale: Var,
        shift: Var,
        /// Cell-centre positions (j + 0.5)/W and (i + 0.5)/H.
        xs: Tensor,
        ys: Tensor,
    },
}

/// One mini-batch on the CPU device.
pub(super) struct Batch {
    pooled: Tensor,
    spatial: Option<Tensor>,
    /// (n × classes) one-hot labels.
    onehot: Tensor,
    /// Class weight of each row's label, when the loss is class-weighted.
    row_weights: Option<Tensor>,
    /// (n × 4) true boxes.
    boxes: Tensor,
}

impl Batch {
    /// A batch of features computed elsewhere (and differentiated through): `pooled` (n ×
    /// width), `spatial` (n × h·w·c, row-major cells), with their labels and boxes.
    pub(super) fn from_tensors(
        pooled: Tensor,
        spatial: Option<Tensor>,
        labels: &[usize],
        boxes: &[[f32; 4]],
        classes: usize,
        class_weights: Option<&[f32]>,
    ) -> Result<Self> {
        let n = labels.len();
        let (onehot, row_weights) = label_tensors(labels, classes, class_weights)?;
        Ok(Self {
            pooled,
            spatial,
            onehot,
            row_weights,
            boxes: Tensor::from_vec(boxes.iter().flatten().copied().collect::<Vec<f32>>(), (n, 4), &Device::Cpu)?,
        })
    }

    /// Rows `rows` of `split`; `spatial` says whether the spatial map is needed.
    pub(super) fn new(
        split: &LocalizeSplit,
        rows: &[usize],
        classes: usize,
        class_weights: Option<&[f32]>,
        spatial: bool,
    ) -> Result<Self> {
        let n = rows.len();
        // The picked rows go straight into the tensor's buffer: one copy per batch.
        let matrix = |x: &ndarray::Array2<f32>| {
            let mut values = Vec::with_capacity(n * x.ncols());
            for &row in rows {
                values.extend(x.row(row).iter().copied());
            }
            Tensor::from_vec(values, (n, x.ncols()), &Device::Cpu)
        };
        let labels: Vec<usize> = rows.iter().map(|&r| split.labels[r]).collect();
        let boxes: Vec<[f32; 4]> = rows.iter().map(|&r| split.boxes[r]).collect();
        let spatial = match (&split.spatial, spatial) {
            (Some(map), true) => Some(matrix(map)?),
            _ => None,
        };
        Self::from_tensors(matrix(&split.pooled)?, spatial, &labels, &boxes, classes, class_weights)
    }
}

/// One-hot labels (n × classes) and, when the loss is class-weighted, each row's class weight.
pub(crate) fn label_tensors(
    labels: &[usize],
    classes: usize,
    class_weights: Option<&[f32]>,
) -> Result<(Tensor, Option<Tensor>)> {
    let n = labels.len();
    let mut onehot = vec![0f32; n * classes];
    for (k, &label) in labels.iter().enumerate() {
        onehot[k * classes + label] = 1.0;
    }
    let row_weights = class_weights
        .map(|w| Tensor::from_vec(labels.iter().map(|&l| w[l]).collect::<Vec<f32>>(), n, &Device::Cpu))
        .transpose()?;
    Ok((Tensor::from_vec(onehot, (n, classes), &Device::Cpu)?, row_weights))
}

/// Mean cross-entropy of `logits` against one-hot labels, each row weighted when
/// `row_weights` are given (Σ wᵢℓᵢ/n, as Keras weights classes).
pub(crate) fn cross_entropy(logits: &Tensor, onehot: &Tensor, row_weights: Option<&Tensor>) -> Result<Tensor> {
    let mut losses = (logits.log_sum_exp(1)? - logits.mul(onehot)?.sum(1)?)?;
    if let Some(row_weights) = row_weights {
        losses = losses.mul(row_weights)?;
    }
    losses.mean_all()
}

/// 1/(1 + e^−x) as (tanh(x/2) + 1)/2: its gradient stays finite where e^−x overflows.
pub(crate) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    x.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)
}

fn var(values: &[f32], shape: &[usize]) -> Result<Var> {
    Var::from_vec(values.to_vec(), shape, &Device::Cpu)
}

/// (k + 0.5)/len for k in 0..len.
fn centres(len: usize) -> Result<Tensor> {
    let values: Vec<f32> = (0..len).map(|k| (k as f32 + 0.5) / len as f32).collect();
    Tensor::from_vec(values, len, &Device::Cpu)
}

impl Graph {
    /// Variables holding `head`'s current values.
    pub(super) fn new(head: &LocalizerHead) -> Result<Self> {
        let (dim, classes) = head.class.weights.dim();
        let values = head.params();
        let boxes = match &head.boxes {
            BoxHead::Pooled { .. } => BoxVars::Pooled { w: var(values[2], &[dim, 4])?, b: var(values[3], &[4])? },
            BoxHead::Spatial(s) => BoxVars::Spatial {
                shape: (s.height, s.width, s.channels),
                u: var(values[2], &[s.channels, 1])?,
                a: var(values[3], &[1])?,
                scale: var(values[4], &[4])?,
                shift: var(values[5], &[4])?,
                xs: centres(s.width)?,
                ys: centres(s.height)?,
            },
        };
        Ok(Self { class_w: var(values[0], &[dim, classes])?, class_b: var(values[1], &[classes])?, boxes })
    }

    /// The variables in the order of `LocalizerHead::params`.
    pub(super) fn vars(&self) -> Vec<&Var> {
        let mut vars = vec![&self.class_w, &self.class_b];
        match &self.boxes {
            BoxVars::Pooled { w, b } => vars.extend([w, b]),
            BoxVars::Spatial { u, a, scale, shift, .. } => vars.extend([u, a, scale, shift]),
        }
        vars
    }

    /// Copies `head`'s values into the variables (after an optimiser step).
    pub(super) fn load(&self, head: &LocalizerHead) -> Result<()> {
        for (var, values) in self.vars().into_iter().zip(head.params()) {
            var.set(&Tensor::from_slice(values, var.shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }

    /// (n × classes) class logits.
    pub(super) fn class_logits(&self, batch: &Batch) -> Result<Tensor> {
        batch.pooled.matmul(&self.class_w)?.broadcast_add(&self.class_b)
    }

    /// (n × 4) predicted `[cx, cy, w, h]`.
    pub(super) fn boxes(&self, batch: &Batch) -> Result<Tensor> {
        match &self.boxes {
            BoxVars::Pooled { w, b } => sigmoid(&batch.pooled.matmul(w)?.broadcast_add(b)?),
            BoxVars::Spatial { shape: (h, w, c), u, a, scale, shift, xs, ys } => {
                let map =
                    batch.spatial.as_ref().ok_or_else(|| candle_core::Error::Msg("no spatial features".into()))?;
                let n = map.dim(0)?;
                // Objectness of every cell: a 1×1 convolution to one channel, then a sigmoid.
                let o = sigmoid(&map.reshape((n * h * w, *c))?.matmul(u)?.broadcast_add(a)?)?.reshape((n, *h, *w))?;
                // Hard maxima: candle routes the gradient to the maximal cell of each profile.
                let columns = o.max(1)?; // (n, W): max over rows
                let rows = o.max(2)?; // (n, H): max over columns
                let centroid = |profile: &Tensor, positions: &Tensor| -> Result<Tensor> {
                    let mass = profile.sum(1)?.affine(1.0, f64::from(CENTROID_EPSILON))?;
                    profile.broadcast_mul(positions)?.sum(1)?.div(&mass)
                };
                let raw = Tensor::stack(
                    &[centroid(&columns, xs)?, centroid(&rows, ys)?, columns.mean(1)?, rows.mean(1)?],
                    1,
                )?;
                raw.broadcast_mul(scale)?.broadcast_add(shift)
            }
        }
    }

    /// class·mean cross-entropy (class-weighted as Keras does: Σ wᵢℓᵢ/n) + box·MSE over the
    /// 4 numbers; a term with weight 0 is left out, so its parameters get no gradient.
    pub(super) fn loss(&self, batch: &Batch, weights: LossWeights) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        let mut add = |term: Tensor| -> Result<()> {
            total = Some(match total.take() {
                Some(sum) => (sum + term)?,
                None => term,
            });
            Ok(())
        };
        if weights.class > 0.0 {
            let logits = self.class_logits(batch)?;
            let loss = cross_entropy(&logits, &batch.onehot, batch.row_weights.as_ref())?;
            add(loss.affine(f64::from(weights.class), 0.0)?)?;
        }
        if weights.box_ > 0.0 {
            let error = self.boxes(batch)?.sub(&batch.boxes)?.sqr()?.mean_all()?;
            add(error.affine(f64::from(weights.box_), 0.0)?)?;
        }
        total.ok_or_else(|| candle_core::Error::Msg("both loss weights are 0".into()))
    }
}
