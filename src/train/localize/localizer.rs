//! The trained localizer: a softmax class head and a box head, with plain-f32 inference, so
//! serving needs neither candle nor a gradient graph.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::LocalizeHeadKind;
use crate::codec::tensors::{self, Named, Reader};
use crate::train::head::{Dense, Head, HeadError, softmax_rows};

/// A dense layer's two tensors to store.
fn dense<'a>(prefix: &str, d: &'a Dense) -> [Named<'a>; 2] {
    let [w, b] = d.values();
    [
        Named { name: format!("{prefix}.weight"), shape: vec![d.inputs(), d.outputs()], values: w },
        Named { name: format!("{prefix}.bias"), shape: vec![d.outputs()], values: b },
    ]
}

/// A 1-D tensor to store.
fn vector<'a>(name: &str, values: &'a [f32]) -> Named<'a> {
    Named { name: name.into(), shape: vec![values.len()], values }
}

/// The stored form's `format` and `version` metadata.
const LOCALIZER_FORMAT: &str = "graft.localizer";
const LOCALIZER_VERSION: &str = "2";

/// Added to the centroid's denominator so an all-zero objectness profile gives 0, not NaN.
pub const CENTROID_EPSILON: f32 = 1e-6;

/// Class head plus box head, trained together on frozen features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LocalizerRepr", into = "LocalizerRepr")]
pub struct LocalizerHead {
    /// Pooled features → class logits (softmax).
    pub(super) class: Dense,
    pub(super) boxes: BoxHead,
}

/// The box head of any kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum BoxHead {
    /// sigmoid(pooled · W + b): one `[cx, cy, w, h]` per row.
    Pooled { dense: Dense },
    /// The objectness-profile head of earlier releases: still read and served, no longer trained.
    Spatial(SpatialBox),
    /// Every cell of the map votes for a box (what `box_head: "spatial"` trains).
    Cells(CellsBox),
}

/// Hidden units of the cell head's per-cell layer: 32, 64 and 128 measured within 0.01 mean
/// IoU of each other on `make bench-localize`.
pub const CELL_HIDDEN: usize = 64;

/// The cell head. Each cell of the (height × width × channels) map goes through one hidden
/// layer (ReLU) to five numbers: an objectness logit and the distances from the cell's centre
/// to the box's left, top, right and bottom edges (softplus, in cells). The cells' objectness
/// softmax weighs their boxes' corners into one box, and their features into one vector that
/// the class layer reads beside the pooled features: the class is read where the box is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct CellsBox {
    pub height: usize,
    pub width: usize,
    /// channels → hidden units, applied to every cell.
    pub hidden: Dense,
    /// hidden units → objectness logit and the four raw distances.
    pub output: Dense,
}

/// The objectness-map box head (see the module documentation for the formula).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SpatialBox {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// The 1×1 convolution to one channel: one weight per feature channel.
    pub weights: Vec<f32>,
    pub bias: f32,
    /// Per-coordinate correction of the raw box, `raw ⊙ scale + shift`.
    pub scale: [f32; 4],
    pub shift: [f32; 4],
}

/// A box head's parameters as [`LocalizerHead::parts`] shows them.
pub enum BoxParts<'a> {
    /// sigmoid(pooled · W + b).
    Pooled(&'a Dense),
    /// The objectness-map head on a (height, width, channels) map: the 1×1 projection's
    /// `weights` and `bias`, then `raw ⊙ scale + shift` of the profile centres and extents.
    Spatial { shape: (usize, usize, usize), weights: &'a [f32], bias: f32, scale: [f32; 4], shift: [f32; 4] },
    /// The cell head on a (height, width) grid: its per-cell hidden and output layers.
    Cells { grid: (usize, usize), hidden: &'a Dense, output: &'a Dense },
}

/// Which loss term trains a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Class,
    Box,
}

/// One parameter tensor, flattened row-major, for the optimiser.
pub(super) struct ParamMut<'a> {
    pub part: Part,
    /// Weights decay (L2); biases, scales and shifts do not.
    pub decay: bool,
    pub values: &'a mut [f32],
}

/// The logistic function, written through tanh so that it never overflows; training uses the
/// same form so both give the same numbers.
pub(super) fn sigmoid(x: f32) -> f32 {
    0.5 * ((0.5 * x).tanh() + 1.0)
}

/// Σ pos(k)·m[k] / (Σ m[k] + ε) with pos(k) = (k + 0.5)/len: the centre of a profile.
fn centroid(profile: &[f32]) -> f32 {
    let len = profile.len() as f32;
    let weighted: f32 = profile.iter().enumerate().map(|(k, &m)| (k as f32 + 0.5) / len * m).sum();
    weighted / (profile.iter().sum::<f32>() + CENTROID_EPSILON)
}

fn mean(profile: &[f32]) -> f32 {
    profile.iter().sum::<f32>() / profile.len() as f32
}

/// ln(1 + eˣ), without overflow.
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl CellsBox {
    pub(super) fn channels(&self) -> usize {
        self.hidden.inputs()
    }

    /// Values per spatial row: height·width·channels.
    pub(super) fn row_len(&self) -> usize {
        self.height * self.width * self.channels()
    }

    fn check(&self) -> Result<(), HeadError> {
        let (h, w) = (self.height, self.width);
        if h == 0 || w == 0 || h.checked_mul(w).and_then(|hw| hw.checked_mul(self.channels())).is_none() {
            return Err(HeadError::Shape(format!("the cell grid {h}×{w} must be non-empty and not overflow")));
        }
        if self.output.inputs() != self.hidden.outputs() || self.output.outputs() != 5 {
            return Err(HeadError::Shape(format!(
                "the cell head's output layer maps {} inputs to {}; it must map the hidden layer's {} to 5",
                self.output.inputs(),
                self.output.outputs(),
                self.hidden.outputs()
            )));
        }
        Ok(())
    }

    /// The box (`[cx, cy, w, h]`) of one spatial row laid out (row, column, channel), and the
    /// cells' features weighed by their objectness.
    fn locate(&self, row: ArrayView2<f32>) -> ([f32; 4], Vec<f32>) {
        let hidden = self.hidden.apply(row).mapv(|v| v.max(0.0));
        let out = self.output.apply(hidden.view());
        let logits = out.column(0);
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let weights: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        let (h, w) = (self.height as f32, self.width as f32);
        let mut corners = [0f32; 4];
        for (cell, (&weight, raw)) in weights.iter().zip(out.rows()).enumerate() {
            let a = weight / total;
            let (cx, cy) = (((cell % self.width) as f32 + 0.5) / w, ((cell / self.width) as f32 + 0.5) / h);
            corners[0] += a * (cx - softplus(raw[1]) / w);
            corners[1] += a * (cy - softplus(raw[2]) / h);
            corners[2] += a * (cx + softplus(raw[3]) / w);
            corners[3] += a * (cy + softplus(raw[4]) / h);
        }
        let attended: Vec<f32> = (0..self.channels())
            .map(|c| weights.iter().zip(row.column(c)).map(|(&weight, &v)| weight / total * v).sum())
            .collect();
        let [x0, y0, x1, y1] = corners;
        ([(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0], attended)
    }
}

impl SpatialBox {
    /// Values per spatial row: height·width·channels.
    pub(super) fn row_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    fn check(&self) -> Result<(), HeadError> {
        let (h, w, c) = (self.height, self.width, self.channels);
        let len = h.checked_mul(w).and_then(|hw| hw.checked_mul(c));
        if h == 0 || w == 0 || c == 0 || len.is_none() {
            return Err(HeadError::Shape(format!("the spatial map {h}×{w}×{c} must be non-empty and not overflow")));
        }
        if self.weights.len() != c {
            return Err(HeadError::Shape(format!("{c} channels but {} convolution weights", self.weights.len())));
        }
        let values = self.weights.iter().chain(&self.scale).chain(&self.shift).chain([&self.bias]);
        if values.into_iter().any(|v| !v.is_finite()) {
            return Err(HeadError::NotFinite);
        }
        Ok(())
    }

    /// The box of one spatial row, laid out (row, column, channel).
    fn locate(&self, row: ArrayView1<f32>) -> [f32; 4] {
        let owned;
        let values = match row.as_slice() {
            Some(values) => values,
            None => {
                owned = row.to_vec();
                &owned
            }
        };
        let mut columns = vec![f32::NEG_INFINITY; self.width];
        let mut rows = vec![f32::NEG_INFINITY; self.height];
        for (cell, features) in values.chunks_exact(self.channels).enumerate() {
            let z: f32 = features.iter().zip(&self.weights).map(|(f, u)| f * u).sum::<f32>() + self.bias;
            let o = sigmoid(z);
            let (i, j) = (cell / self.width, cell % self.width);
            columns[j] = columns[j].max(o);
            rows[i] = rows[i].max(o);
        }
        let raw = [centroid(&columns), centroid(&rows), mean(&columns), mean(&rows)];
        std::array::from_fn(|k| raw[k] * self.scale[k] + self.shift[k])
    }
}

impl LocalizerHead {
    /// A head from its parts, checking that they fit together.
    pub(super) fn new(class: Dense, boxes: BoxHead) -> Result<Self, HeadError> {
        match &boxes {
            BoxHead::Pooled { dense } if dense.inputs() != class.inputs() || dense.outputs() != 4 => {
                return Err(HeadError::Shape(format!(
                    "the box layer maps {} inputs to {} outputs; it must map the class layer's {} to 4",
                    dense.inputs(),
                    dense.outputs(),
                    class.inputs()
                )));
            }
            BoxHead::Spatial(spatial) => spatial.check()?,
            BoxHead::Cells(cells) => {
                cells.check()?;
                if class.inputs() <= cells.channels() {
                    return Err(HeadError::Shape(format!(
                        "the class layer of a cell head reads the {} map channels and the pooled features; it \
                         has {} inputs",
                        cells.channels(),
                        class.inputs()
                    )));
                }
            }
            BoxHead::Pooled { .. } => {}
        }
        Ok(Self { class, boxes })
    }

    /// A fresh head drawn from `seed`: Glorot dense layers with zero biases. The spatial kind is
    /// the cell head: its objectness starts equal on every cell, each cell's box about a cell
    /// wide.
    pub(super) fn init(
        kind: LocalizeHeadKind,
        pooled_dim: usize,
        classes: usize,
        spatial_shape: Option<(usize, usize, usize)>,
        seed: u64,
    ) -> Result<Self, HeadError> {
        let mut rng = StdRng::seed_from_u64(seed);
        match kind {
            LocalizeHeadKind::Pooled => {
                let class = Head::init(pooled_dim, None, classes, &mut rng)?.output;
                Self::new(class, BoxHead::Pooled { dense: Head::init(pooled_dim, None, 4, &mut rng)?.output })
            }
            LocalizeHeadKind::Spatial => {
                let (height, width, channels) = spatial_shape
                    .ok_or_else(|| HeadError::Shape("the spatial head needs the spatial map's shape".into()))?;
                let class = Head::init(channels + pooled_dim, None, classes, &mut rng)?.output;
                let hidden = Head::init(channels, None, CELL_HIDDEN, &mut rng)?.output;
                let output = Head::init(CELL_HIDDEN, None, 5, &mut rng)?.output;
                Self::new(class, BoxHead::Cells(CellsBox { height, width, hidden, output }))
            }
        }
    }

    pub fn kind(&self) -> LocalizeHeadKind {
        match self.boxes {
            BoxHead::Pooled { .. } => LocalizeHeadKind::Pooled,
            BoxHead::Spatial(_) | BoxHead::Cells(_) => LocalizeHeadKind::Spatial,
        }
    }

    pub fn classes(&self) -> usize {
        self.class.outputs()
    }

    /// Width of the pooled feature vectors (every kind classifies from them; the cell head
    /// also from the map's channels).
    pub fn pooled_dim(&self) -> usize {
        match &self.boxes {
            BoxHead::Cells(cells) => self.class.inputs() - cells.channels(),
            _ => self.class.inputs(),
        }
    }

    /// (height, width, channels) of the spatial map the box head reads; `None` for `Pooled`.
    pub fn spatial_shape(&self) -> Option<(usize, usize, usize)> {
        match &self.boxes {
            BoxHead::Pooled { .. } => None,
            BoxHead::Spatial(s) => Some((s.height, s.width, s.channels)),
            BoxHead::Cells(c) => Some((c.height, c.width, c.channels())),
        }
    }

    /// The class layer and the box head's parameters, read-only (for export).
    pub fn parts(&self) -> (&Dense, BoxParts<'_>) {
        let boxes = match &self.boxes {
            BoxHead::Pooled { dense } => BoxParts::Pooled(dense),
            BoxHead::Spatial(s) => BoxParts::Spatial {
                shape: (s.height, s.width, s.channels),
                weights: &s.weights,
                bias: s.bias,
                scale: s.scale,
                shift: s.shift,
            },
            BoxHead::Cells(c) => BoxParts::Cells { grid: (c.height, c.width), hidden: &c.hidden, output: &c.output },
        };
        (&self.class, boxes)
    }

    /// Class probabilities (rows sum to 1) and one `[cx, cy, w, h]` box per row.
    ///
    /// `spatial` (rows of height·width·channels values in (row, column, channel) order) is
    /// required by the spatial head and ignored by the pooled one.
    pub fn predict(
        &self,
        pooled: ArrayView2<f32>,
        spatial: Option<ArrayView2<f32>>,
    ) -> Result<(Array2<f32>, Vec<[f32; 4]>), HeadError> {
        if pooled.ncols() != self.pooled_dim() {
            return Err(HeadError::Shape(format!(
                "pooled features have {} columns but the head takes {}",
                pooled.ncols(),
                self.pooled_dim()
            )));
        }
        if let BoxHead::Cells(cells) = &self.boxes {
            return self.predict_cells(cells, pooled, spatial);
        }
        let mut probabilities = self.class.apply(pooled);
        softmax_rows(&mut probabilities);
        let boxes = match &self.boxes {
            BoxHead::Pooled { dense } => {
                dense.apply(pooled).rows().into_iter().map(|r| std::array::from_fn(|k| sigmoid(r[k]))).collect()
            }
            BoxHead::Spatial(head) => {
                let spatial = spatial.ok_or_else(|| {
                    HeadError::Shape(
                        "the spatial box head needs the spatial feature map, not only pooled features".into(),
                    )
                })?;
                if spatial.dim() != (pooled.nrows(), head.row_len()) {
                    return Err(HeadError::Shape(format!(
                        "spatial features are {}×{}; expected {} rows of {}×{}×{} = {} values",
                        spatial.nrows(),
                        spatial.ncols(),
                        pooled.nrows(),
                        head.height,
                        head.width,
                        head.channels,
                        head.row_len()
                    )));
                }
                spatial.axis_iter(Axis(0)).map(|row| head.locate(row)).collect()
            }
            BoxHead::Cells(_) => unreachable!("answered by predict_cells above"),
        };
        Ok((probabilities, boxes))
    }

    /// [`Self::predict`] for the cell head: the class layer reads each row's objectness-weighed
    /// map features and its pooled features side by side.
    fn predict_cells(
        &self,
        cells: &CellsBox,
        pooled: ArrayView2<f32>,
        spatial: Option<ArrayView2<f32>>,
    ) -> Result<(Array2<f32>, Vec<[f32; 4]>), HeadError> {
        let spatial = spatial.ok_or_else(|| {
            HeadError::Shape("the spatial box head needs the spatial feature map, not only pooled features".into())
        })?;
        if spatial.dim() != (pooled.nrows(), cells.row_len()) {
            return Err(HeadError::Shape(format!(
                "spatial features are {}×{}; expected {} rows of {}×{}×{} = {} values",
                spatial.nrows(),
                spatial.ncols(),
                pooled.nrows(),
                cells.height,
                cells.width,
                cells.channels(),
                cells.row_len()
            )));
        }
        let channels = cells.channels();
        let mut inputs = Array2::<f32>::zeros((pooled.nrows(), channels + pooled.ncols()));
        let mut boxes = Vec::with_capacity(pooled.nrows());
        for ((row, pooled_row), mut input) in spatial.rows().into_iter().zip(pooled.rows()).zip(inputs.rows_mut()) {
            let map = row
                .into_shape_with_order((cells.height * cells.width, channels))
                .map_err(|e| HeadError::Shape(e.to_string()))?;
            let (bbox, attended) = cells.locate(map);
            boxes.push(bbox);
            input.iter_mut().zip(attended.iter().chain(pooled_row)).for_each(|(o, &v)| *o = v);
        }
        let mut probabilities = self.class.apply(inputs.view());
        softmax_rows(&mut probabilities);
        Ok((probabilities, boxes))
    }

    /// The stored form: a safetensors file (version 2) with `class.weight` (`inputs ×
    /// classes`), `class.bias` and the box head's tensors — `box.weight` (`inputs × 4`) and
    /// `box.bias` for the pooled head; `box.weight` (one per channel), `box.bias`, `box.scale`
    /// and `box.shift` for the spatial one, whose grid is in the metadata (`height`, `width`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut named = Vec::from(dense("class", &self.class));
        let mut metadata = vec![("format", LOCALIZER_FORMAT.to_owned()), ("version", LOCALIZER_VERSION.to_owned())];
        match &self.boxes {
            BoxHead::Pooled { dense: d } => {
                named.extend(dense("box", d));
                metadata.push(("box", "pooled".into()));
            }
            BoxHead::Spatial(s) => {
                named.extend([
                    vector("box.weight", &s.weights),
                    vector("box.bias", std::slice::from_ref(&s.bias)),
                    vector("box.scale", &s.scale),
                    vector("box.shift", &s.shift),
                ]);
                metadata.extend([
                    ("box", "spatial".into()),
                    ("height", s.height.to_string()),
                    ("width", s.width.to_string()),
                ]);
            }
            BoxHead::Cells(c) => {
                named.extend(dense("box.hidden", &c.hidden));
                named.extend(dense("box.output", &c.output));
                metadata.extend([
                    ("box", "cells".into()),
                    ("height", c.height.to_string()),
                    ("width", c.width.to_string()),
                ]);
            }
        }
        tensors::write(&named, &metadata)
    }

    /// Reads bytes written by `to_bytes` — or the JSON form of version 1, so stored heads keep
    /// working — rejecting anything malformed or inconsistent.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeadError> {
        let malformed = |e: String| HeadError::Malformed(e);
        let file = match Reader::open(bytes) {
            Ok(file) => file,
            Err(_) if bytes.first() == Some(&b'{') => {
                return serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()));
            }
            Err(e) => return Err(malformed(format!("not a localizer head: {e}"))),
        };
        if file.meta("format") != Ok(LOCALIZER_FORMAT) {
            return Err(malformed("not a localizer head (its metadata names another format)".into()));
        }
        match file.meta("version").map_err(malformed)? {
            LOCALIZER_VERSION => {}
            other => return Err(HeadError::UnsupportedVersion(other.parse().unwrap_or(0))),
        }
        let dense = |prefix: &str| -> Result<Dense, HeadError> {
            let weight = format!("{prefix}.weight");
            let shape = file.shape(&weight).map_err(malformed)?;
            let [inputs, outputs] = shape[..] else { return Err(malformed(format!("{weight} is not a matrix"))) };
            let weights = file.f32s(&weight, &shape).map_err(malformed)?;
            let bias = file.f32s(&format!("{prefix}.bias"), &[outputs]).map_err(malformed)?;
            let weights = Array2::from_shape_vec((inputs, outputs), weights).map_err(|e| malformed(e.to_string()))?;
            Dense::new(weights, bias.into())
        };
        let class = dense("class")?;
        let size = |key: &str| -> Result<usize, HeadError> {
            file.meta(key).map_err(malformed)?.parse().map_err(|_| malformed(format!("{key} is not a number")))
        };
        let (boxes, tensors) = match file.meta("box").map_err(malformed)? {
            "pooled" => (BoxHead::Pooled { dense: dense("box")? }, 4),
            "cells" => {
                let cells = CellsBox {
                    height: size("height")?,
                    width: size("width")?,
                    hidden: dense("box.hidden")?,
                    output: dense("box.output")?,
                };
                (BoxHead::Cells(cells), 6)
            }
            "spatial" => {
                let channels = match file.shape("box.weight").map_err(malformed)?[..] {
                    [channels] => channels,
                    _ => return Err(malformed("box.weight of a spatial head is one weight per channel".into())),
                };
                let four = |name: &str| -> Result<[f32; 4], HeadError> {
                    let values = file.f32s(name, &[4]).map_err(malformed)?;
                    values.try_into().map_err(|_| malformed(format!("{name} needs 4 values")))
                };
                let spatial = SpatialBox {
                    height: size("height")?,
                    width: size("width")?,
                    channels,
                    weights: file.f32s("box.weight", &[channels]).map_err(malformed)?,
                    bias: file.f32s("box.bias", &[1]).map_err(malformed)?[0],
                    scale: four("box.scale")?,
                    shift: four("box.shift")?,
                };
                (BoxHead::Spatial(spatial), 6)
            }
            other => return Err(malformed(format!("unknown box head {other:?}"))),
        };
        if file.tensor_count() != tensors {
            return Err(malformed(format!("{} tensors, expected {tensors}", file.tensor_count())));
        }
        LocalizerHead::new(class, boxes)
    }

    /// Every parameter tensor in a fixed order: class weights and biases, then the box head's.
    pub(super) fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let [class_w, class_b] = self.class.values_mut();
        let mut params = vec![
            ParamMut { part: Part::Class, decay: true, values: class_w },
            ParamMut { part: Part::Class, decay: false, values: class_b },
        ];
        match &mut self.boxes {
            BoxHead::Pooled { dense } => {
                let [w, b] = dense.values_mut();
                params.push(ParamMut { part: Part::Box, decay: true, values: w });
                params.push(ParamMut { part: Part::Box, decay: false, values: b });
            }
            BoxHead::Cells(c) => {
                for layer in [&mut c.hidden, &mut c.output] {
                    let [w, b] = layer.values_mut();
                    params.push(ParamMut { part: Part::Box, decay: true, values: w });
                    params.push(ParamMut { part: Part::Box, decay: false, values: b });
                }
            }
            BoxHead::Spatial(s) => {
                params.push(ParamMut { part: Part::Box, decay: true, values: &mut s.weights });
                params.push(ParamMut { part: Part::Box, decay: false, values: std::slice::from_mut(&mut s.bias) });
                params.push(ParamMut { part: Part::Box, decay: false, values: &mut s.scale });
                params.push(ParamMut { part: Part::Box, decay: false, values: &mut s.shift });
            }
        }
        params
    }

    /// The values of every parameter tensor, in the order of `params_mut`.
    pub(super) fn params(&self) -> Vec<&[f32]> {
        let mut params = self.class.values().to_vec();
        match &self.boxes {
            BoxHead::Pooled { dense } => params.extend(dense.values()),
            BoxHead::Spatial(s) => {
                params.extend([&s.weights[..], std::slice::from_ref(&s.bias), &s.scale, &s.shift]);
            }
            BoxHead::Cells(c) => {
                params.extend(c.hidden.values());
                params.extend(c.output.values());
            }
        }
        params
    }

    /// True when every parameter is a finite number.
    pub(super) fn is_finite(&self) -> bool {
        self.params().iter().all(|p| p.iter().all(|v| v.is_finite()))
    }
}

/// Serde shape: the class layer, and the box head tagged by its kind.
#[derive(Serialize, Deserialize)]
struct LocalizerRepr {
    class: Dense,
    #[serde(rename = "box")]
    boxes: BoxHead,
}

impl From<LocalizerHead> for LocalizerRepr {
    fn from(head: LocalizerHead) -> Self {
        Self { class: head.class, boxes: head.boxes }
    }
}

impl TryFrom<LocalizerRepr> for LocalizerHead {
    type Error = HeadError;

    fn try_from(repr: LocalizerRepr) -> Result<Self, HeadError> {
        LocalizerHead::new(repr.class, repr.boxes)
    }
}
