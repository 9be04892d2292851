//! The training forward pass in candle: the head's parameters as `Var`s, a mini-batch as
//! tensors, and the weighted loss whose `backward()` gives the gradients graft's optimiser
//! applies. Every step is a tensor op over the whole batch.

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

use super::localizer::{BoxHead, CENTROID_EPSILON, LocalizerHead};
use super::{BoxLoss, LocalizeLoss, LocalizeSplit};

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
    Cells {
        /// (height, width, channels) of the map.
        shape: (usize, usize, usize),
        hidden_w: Var,
        hidden_b: Var,
        output_w: Var,
        output_b: Var,
        /// Each cell's centre as corners `[cx, cy, cx, cy]` (cells × 4), and the factors that
        /// turn the distances (in cells) into corner offsets: `[−1/W, −1/H, 1/W, 1/H]`.
        centres: Tensor,
        offsets: Tensor,
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
            BoxHead::Cells(c) => {
                let (h, w) = (c.height, c.width);
                let grid: Vec<f32> = (0..h * w)
                    .flat_map(|cell| {
                        let (x, y) = (((cell % w) as f32 + 0.5) / w as f32, ((cell / w) as f32 + 0.5) / h as f32);
                        [x, y, x, y]
                    })
                    .collect();
                let (wf, hf) = (w as f32, h as f32);
                BoxVars::Cells {
                    shape: (h, w, c.hidden.inputs()),
                    hidden_w: var(values[2], &[c.hidden.inputs(), c.hidden.outputs()])?,
                    hidden_b: var(values[3], &[c.hidden.outputs()])?,
                    output_w: var(values[4], &[c.output.inputs(), 5])?,
                    output_b: var(values[5], &[5])?,
                    centres: Tensor::from_vec(grid, (h * w, 4), &Device::Cpu)?,
                    offsets: Tensor::from_vec(vec![-1.0 / wf, -1.0 / hf, 1.0 / wf, 1.0 / hf], 4, &Device::Cpu)?,
                }
            }
        };
        Ok(Self { class_w: var(values[0], &[dim, classes])?, class_b: var(values[1], &[classes])?, boxes })
    }

    /// The variables in the order of `LocalizerHead::params`.
    pub(super) fn vars(&self) -> Vec<&Var> {
        let mut vars = vec![&self.class_w, &self.class_b];
        match &self.boxes {
            BoxVars::Pooled { w, b } => vars.extend([w, b]),
            BoxVars::Spatial { u, a, scale, shift, .. } => vars.extend([u, a, scale, shift]),
            BoxVars::Cells { hidden_w, hidden_b, output_w, output_b, .. } => {
                vars.extend([hidden_w, hidden_b, output_w, output_b])
            }
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

    /// (n × classes) class logits and (n × 4) predicted `[cx, cy, w, h]`.
    pub(super) fn forward(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let logits = |features: &Tensor| features.matmul(&self.class_w)?.broadcast_add(&self.class_b);
        match &self.boxes {
            BoxVars::Cells { .. } => {
                let (attended, corners) = self.cells(batch)?;
                let features = Tensor::cat(&[&attended, &batch.pooled], 1)?;
                Ok((logits(&features)?, from_corners(&corners)?))
            }
            _ => Ok((logits(&batch.pooled)?, self.boxes(batch)?)),
        }
    }

    /// The cell head on `batch`: the objectness-weighed map features (n × channels) and the box
    /// corners `[x0, y0, x1, y1]` (n × 4).
    fn cells(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let BoxVars::Cells { shape: (h, w, c), hidden_w, hidden_b, .. } = &self.boxes else {
            return Err(candle_core::Error::Msg("not a cell head".into()));
        };
        let map = batch.spatial.as_ref().ok_or_else(|| candle_core::Error::Msg("no spatial features".into()))?;
        let (n, cells) = (map.dim(0)?, h * w);
        let pre = map.reshape((n * cells, *c))?.matmul(hidden_w)?.broadcast_add(hidden_b)?;
        let (attention, corners) = self.cell_boxes(&pre, n)?;
        let attended = attention.unsqueeze(1)?.matmul(&map.reshape((n, cells, *c))?)?.squeeze(1)?;
        Ok((attended, corners))
    }

    /// From the cells' hidden pre-activations (n·cells × hidden): each row's attention over its
    /// cells (n × cells) and its box corners (n × 4).
    fn cell_boxes(&self, pre: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
        let BoxVars::Cells { shape: (h, w, _), output_w, output_b, centres, offsets, .. } = &self.boxes else {
            return Err(candle_core::Error::Msg("not a cell head".into()));
        };
        let out = pre.relu()?.matmul(output_w)?.broadcast_add(output_b)?.reshape((n, h * w, 5))?;
        let attention = softmax_cells(&out.narrow(2, 0, 1)?.squeeze(2)?)?; // (n, cells)
        let distances = softplus(&out.narrow(2, 1, 4)?)?; // (n, cells, 4), in cells
        let cell_corners = distances.broadcast_mul(offsets)?.broadcast_add(centres)?;
        let corners = cell_corners.broadcast_mul(&attention.unsqueeze(2)?)?.sum(1)?;
        Ok((attention, corners))
    }

    /// [`Self::loss`] on features that are not differentiated (phase 1's cached map). candle
    /// differentiates both operands of a product, and the map's gradient (the size of the map,
    /// several times over) is most of a step's work; here the map's two products with
    /// parameters — the hidden layer, and the class weights of the attended features, which
    /// are summed after the product — are computed outside the graph as leaves, and
    /// [`Self::gradients`] finishes their parameters' gradients with one product.
    pub(super) fn loss_on_constant_map(
        &self,
        batch: &Batch,
        loss: LocalizeLoss,
    ) -> Result<(Tensor, Option<MapLeaves>)> {
        let (BoxVars::Cells { shape: (h, w, c), hidden_w, hidden_b, .. }, Some(map)) = (&self.boxes, &batch.spatial)
        else {
            return Ok((self.loss(batch, loss)?.0, None));
        };
        let (n, cells, hidden, classes) = (map.dim(0)?, h * w, hidden_w.dim(1)?, self.class_b.dim(0)?);
        let map = map.reshape((n * cells, *c))?;
        let weights = Tensor::cat(&[hidden_w.as_tensor(), &self.class_w.narrow(0, 0, *c)?], 1)?.detach();
        let products = map.matmul(&weights)?;
        let pre = Var::from_tensor(&products.narrow(1, 0, hidden)?.broadcast_add(&hidden_b.as_tensor().detach())?)?;
        let scores = Var::from_tensor(&products.narrow(1, hidden, classes)?)?;
        let (attention, corners) = self.cell_boxes(pre.as_tensor(), n)?;
        let attended = attention.unsqueeze(1)?.matmul(&scores.as_tensor().reshape((n, cells, classes))?)?.squeeze(1)?;
        let pooled_w = self.class_w.narrow(0, *c, self.class_w.dim(0)? - c)?;
        let logits = attended.add(&batch.pooled.matmul(&pooled_w)?)?.broadcast_add(&self.class_b)?;
        let total = self.weighted_loss(batch, loss, &logits, &from_corners(&corners)?)?;
        Ok((total, Some(MapLeaves { map, pre, scores })))
    }

    /// Each variable's gradient (in [`Self::vars`]' order; `None` where the loss does not
    /// reach it), with the products [`Self::loss_on_constant_map`] left to it.
    pub(super) fn gradients(&self, grads: &GradStore, leaves: Option<&MapLeaves>) -> Result<Vec<Option<Tensor>>> {
        let mut out: Vec<Option<Tensor>> = self.vars().iter().map(|var| grads.get(var.as_tensor()).cloned()).collect();
        let (Some(leaves), BoxVars::Cells { shape: (_, _, c), .. }) = (leaves, &self.boxes) else {
            return Ok(out);
        };
        let zeros = |var: &Var| Tensor::zeros(var.shape(), var.dtype(), var.device());
        let d_pre = grads.get(leaves.pre.as_tensor()).cloned().map_or_else(|| zeros(&leaves.pre), Ok)?;
        let d_scores = grads.get(leaves.scores.as_tensor()).cloned().map_or_else(|| zeros(&leaves.scores), Ok)?;
        let hidden = d_pre.dim(1)?;
        let products = leaves.map.t()?.matmul(&Tensor::cat(&[&d_pre, &d_scores], 1)?)?;
        // vars(): class_w, class_b, hidden_w, hidden_b, output_w, output_b.
        out[2] = Some(products.narrow(1, 0, hidden)?);
        out[3] = Some(d_pre.sum(0)?);
        let d_attended = products.narrow(1, hidden, d_scores.dim(1)?)?;
        let class_w = match out[0].take() {
            Some(g) => Tensor::cat(&[&g.narrow(0, 0, *c)?.add(&d_attended)?, &g.narrow(0, *c, g.dim(0)? - c)?], 0)?,
            None => Tensor::cat(&[&d_attended, &zeros(&self.class_w)?.narrow(0, *c, self.class_w.dim(0)? - c)?], 0)?,
        };
        out[0] = Some(class_w);
        Ok(out)
    }

    /// (n × 4) predicted `[cx, cy, w, h]` of the pooled and profile heads.
    fn boxes(&self, batch: &Batch) -> Result<Tensor> {
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
            BoxVars::Cells { .. } => from_corners(&self.cells(batch)?.1),
        }
    }

    /// class·mean cross-entropy (class-weighted as Keras does: Σ wᵢℓᵢ/n) + box·the box loss;
    /// a term with weight 0 is left out, so its parameters get no gradient. Also the logits.
    pub(super) fn loss(&self, batch: &Batch, loss: LocalizeLoss) -> Result<(Tensor, Tensor)> {
        let (logits, predicted) = self.forward(batch)?;
        Ok((self.weighted_loss(batch, loss, &logits, &predicted)?, logits))
    }

    fn weighted_loss(&self, batch: &Batch, loss: LocalizeLoss, logits: &Tensor, predicted: &Tensor) -> Result<Tensor> {
        let weights = loss.weights;
        let mut total: Option<Tensor> = None;
        let mut add = |term: Tensor| -> Result<()> {
            total = Some(match total.take() {
                Some(sum) => (sum + term)?,
                None => term,
            });
            Ok(())
        };
        if weights.class > 0.0 {
            let loss = cross_entropy(logits, &batch.onehot, batch.row_weights.as_ref())?;
            add(loss.affine(f64::from(weights.class), 0.0)?)?;
        }
        if weights.box_ > 0.0 {
            let term = box_loss(loss.box_loss, predicted, &batch.boxes)?;
            add(term.affine(f64::from(weights.box_), 0.0)?)?;
        }
        total.ok_or_else(|| candle_core::Error::Msg("both loss weights are 0".into()))
    }
}

/// What [`Graph::loss_on_constant_map`] computed outside the graph: the map (n·cells ×
/// channels) and the leaves its products became.
pub(super) struct MapLeaves {
    map: Tensor,
    /// The cells' hidden pre-activations.
    pre: Var,
    /// The cells' class scores (map · the attended features' class weights).
    scores: Var,
}

/// The box term: MSE over `[cx, cy, w, h]`, or the mean L1 distance of the corners plus
/// 1 − GIoU, or 1 − GIoU alone.
fn box_loss(kind: BoxLoss, predicted: &Tensor, truth: &Tensor) -> Result<Tensor> {
    match kind {
        BoxLoss::Mse => predicted.sub(truth)?.sqr()?.mean_all(),
        BoxLoss::Giou => generalized_iou(&to_corners(predicted)?, &to_corners(truth)?)?.affine(-1.0, 1.0)?.mean_all(),
        BoxLoss::L1Giou => {
            let (p, t) = (to_corners(predicted)?, to_corners(truth)?);
            let l1 = p.sub(&t)?.abs()?.mean_all()?;
            l1 + generalized_iou(&p, &t)?.affine(-1.0, 1.0)?.mean_all()?
        }
    }
}

/// GIoU (Rezatofighi et al., 2019) of corner boxes row by row: IoU minus the share of the
/// smallest enclosing box that neither covers. Unlike IoU it still has a gradient when the
/// boxes do not overlap.
pub(super) fn generalized_iou(p: &Tensor, t: &Tensor) -> Result<Tensor> {
    let col = |x: &Tensor, k: usize| x.narrow(1, k, 1);
    let (p0, p1, p2, p3) = (col(p, 0)?, col(p, 1)?, col(p, 2)?, col(p, 3)?);
    let (t0, t1, t2, t3) = (col(t, 0)?, col(t, 1)?, col(t, 2)?, col(t, 3)?);
    let inter_w = p2.minimum(&t2)?.sub(&p0.maximum(&t0)?)?.relu()?;
    let inter_h = p3.minimum(&t3)?.sub(&p1.maximum(&t1)?)?.relu()?;
    let inter = inter_w.mul(&inter_h)?;
    let area = |x0: &Tensor, y0: &Tensor, x1: &Tensor, y1: &Tensor| x1.sub(x0)?.relu()?.mul(&y1.sub(y0)?.relu()?);
    let union = area(&p0, &p1, &p2, &p3)?.add(&area(&t0, &t1, &t2, &t3)?)?.sub(&inter)?;
    let enclosing = p2.maximum(&t2)?.sub(&p0.minimum(&t0)?)?.mul(&p3.maximum(&t3)?.sub(&p1.minimum(&t1)?)?)?;
    let iou = inter.div(&union.affine(1.0, 1e-7)?)?;
    let outside = enclosing.sub(&union)?.div(&enclosing.affine(1.0, 1e-7)?)?;
    iou.sub(&outside)?.squeeze(1)
}

/// `[cx, cy, w, h]` rows as corners `[x0, y0, x1, y1]`.
fn to_corners(b: &Tensor) -> Result<Tensor> {
    let (centre, size) = (b.narrow(1, 0, 2)?, b.narrow(1, 2, 2)?.affine(0.5, 0.0)?);
    Tensor::cat(&[centre.sub(&size)?, centre.add(&size)?], 1)
}

/// Corner rows as `[cx, cy, w, h]`.
fn from_corners(c: &Tensor) -> Result<Tensor> {
    let (low, high) = (c.narrow(1, 0, 2)?, c.narrow(1, 2, 2)?);
    Tensor::cat(&[low.add(&high)?.affine(0.5, 0.0)?, high.sub(&low)?], 1)
}

/// Softmax over the cells (dimension 1); the max is subtracted outside the gradient.
fn softmax_cells(logits: &Tensor) -> Result<Tensor> {
    let e = logits.broadcast_sub(&logits.max_keepdim(1)?.detach())?.exp()?;
    e.broadcast_div(&e.sum_keepdim(1)?)
}

/// ln(1 + eˣ) as max(x, 0) + ln(1 + e^−|x|): finite for any x.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?
}
