//! The classification head: one or two dense layers on frozen features, ending in a softmax.
//!
//! `Head` is what training produces and what serving runs: logits = X·W + b, or, with a hidden
//! layer, logits = relu(X·W1 + b1)·W2 + b2. It serialises two ways: serde (for checkpoints,
//! validated on the way in) and a compact versioned binary blob (`to_bytes`/`from_bytes`) for
//! the stored artefact.

mod blob;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Why a head could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Layer shapes that do not fit together, or an input of the wrong width.
    #[error("invalid head shape: {0}")]
    Shape(String),
    /// A parameter that is NaN or infinite.
    #[error("a head parameter is NaN or infinite")]
    NotFinite,
    /// Bytes that are not a head blob, or a damaged one.
    #[error("malformed head blob: {0}")]
    Malformed(String),
    /// A head blob written by a newer (or unknown) format version.
    #[error("unsupported head blob version {0} (this build reads versions 1 to {current})", current = blob::VERSION)]
    UnsupportedVersion(u32),
}

/// A fully connected layer: `inputs × outputs` weights and `outputs` biases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DenseRepr", into = "DenseRepr")]
pub struct Dense {
    pub(crate) weights: Array2<f32>,
    pub(crate) bias: Array1<f32>,
}

impl Dense {
    /// A layer from its weights (`inputs × outputs`) and biases (`outputs`).
    pub fn new(weights: Array2<f32>, bias: Array1<f32>) -> Result<Self, HeadError> {
        let (inputs, outputs) = weights.dim();
        if inputs == 0 || outputs == 0 {
            return Err(HeadError::Shape(format!(
                "a layer needs at least one input and output, got {inputs}×{outputs}"
            )));
        }
        if bias.len() != outputs {
            return Err(HeadError::Shape(format!("{outputs} outputs but {} biases", bias.len())));
        }
        if weights.iter().chain(bias.iter()).any(|v| !v.is_finite()) {
            return Err(HeadError::NotFinite);
        }
        // Owned standard layout keeps serialisation and the blob in row-major order.
        Ok(Self { weights: weights.as_standard_layout().into_owned(), bias })
    }

    /// Glorot/Xavier uniform weights in ±√(6/(inputs+outputs)), zero biases.
    fn glorot(inputs: usize, outputs: usize, rng: &mut impl Rng) -> Self {
        let limit = (6.0 / (inputs + outputs) as f64).sqrt() as f32;
        let weights = Array2::from_shape_simple_fn((inputs, outputs), || (rng.random::<f32>() * 2.0 - 1.0) * limit);
        Self { weights, bias: Array1::zeros(outputs) }
    }

    /// Weights and biases as flat row-major slices: what the optimiser updates.
    pub(crate) fn values(&self) -> [&[f32]; 2] {
        // `new` and `glorot` keep both arrays owned and in standard layout.
        let weights = self.weights.as_slice().expect("dense weights are in standard layout");
        [weights, self.bias.as_slice().expect("a 1-D owned array is contiguous")]
    }

    /// [`Dense::values`], writable.
    pub(crate) fn values_mut(&mut self) -> [&mut [f32]; 2] {
        let weights = self.weights.as_slice_mut().expect("dense weights are in standard layout");
        [weights, self.bias.as_slice_mut().expect("a 1-D owned array is contiguous")]
    }

    /// The weights, `inputs × outputs`.
    pub fn weights(&self) -> &Array2<f32> {
        &self.weights
    }

    /// The biases, one per output.
    pub fn bias(&self) -> &Array1<f32> {
        &self.bias
    }

    /// Number of inputs (rows of the weight matrix).
    pub fn inputs(&self) -> usize {
        self.weights.nrows()
    }

    /// Number of outputs (columns of the weight matrix).
    pub fn outputs(&self) -> usize {
        self.weights.ncols()
    }

    /// x·W + b.
    pub(crate) fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        x.dot(&self.weights) + &self.bias
    }

    fn is_finite(&self) -> bool {
        self.weights.iter().chain(self.bias.iter()).all(|v| v.is_finite())
    }
}

/// A dense softmax head, optionally with one ReLU hidden layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HeadRepr", into = "HeadRepr")]
pub struct Head {
    pub(crate) hidden: Option<Dense>,
    pub(crate) output: Dense,
}

impl Head {
    /// A head from its layers; the hidden layer's outputs must match the output layer's inputs.
    pub fn new(hidden: Option<Dense>, output: Dense) -> Result<Self, HeadError> {
        if let Some(hidden) = &hidden
            && hidden.outputs() != output.inputs()
        {
            return Err(HeadError::Shape(format!(
                "the hidden layer has {} outputs but the output layer takes {} inputs",
                hidden.outputs(),
                output.inputs()
            )));
        }
        Ok(Self { hidden, output })
    }

    /// A freshly initialised head (Glorot uniform weights, zero biases) drawn from `rng`.
    pub fn init(
        input_dim: usize,
        hidden_units: Option<usize>,
        classes: usize,
        rng: &mut impl Rng,
    ) -> Result<Self, HeadError> {
        if input_dim == 0 || classes == 0 || hidden_units == Some(0) {
            return Err(HeadError::Shape(format!(
                "input_dim, classes and hidden_units must be positive (got {input_dim}, {classes}, {hidden_units:?})"
            )));
        }
        let hidden = hidden_units.map(|units| Dense::glorot(input_dim, units, rng));
        let output = Dense::glorot(hidden_units.unwrap_or(input_dim), classes, rng);
        Ok(Self { hidden, output })
    }

    /// Width of the feature vectors the head takes.
    pub fn input_dim(&self) -> usize {
        self.hidden.as_ref().unwrap_or(&self.output).inputs()
    }

    /// Number of classes the head predicts.
    pub fn classes(&self) -> usize {
        self.output.outputs()
    }

    /// Units in the hidden layer, if there is one.
    pub fn hidden_units(&self) -> Option<usize> {
        self.hidden.as_ref().map(Dense::outputs)
    }

    /// The hidden layer, if any.
    pub fn hidden(&self) -> Option<&Dense> {
        self.hidden.as_ref()
    }

    /// The output (softmax) layer.
    pub fn output(&self) -> &Dense {
        &self.output
    }

    /// Class probabilities for each row of `x` (inference: no dropout).
    ///
    /// # Panics
    /// If `x` does not have `input_dim()` columns; `try_forward` checks instead.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut logits = self.logits(x);
        softmax_rows(&mut logits);
        logits
    }

    /// `forward`, with an error rather than a panic when `x` has the wrong width.
    pub fn try_forward(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, HeadError> {
        if x.ncols() != self.input_dim() {
            return Err(HeadError::Shape(format!(
                "features have {} columns but the head takes {}",
                x.ncols(),
                self.input_dim()
            )));
        }
        Ok(self.forward(x))
    }

    /// Pre-softmax scores for each row of `x` (inference: no dropout).
    pub fn logits(&self, x: ArrayView2<f32>) -> Array2<f32> {
        match &self.hidden {
            Some(hidden) => self.output.apply(relu(hidden.apply(x)).view()),
            None => self.output.apply(x),
        }
    }

    /// The layers in order, input side first, for in-place updates.
    pub(crate) fn layers_mut(&mut self) -> impl Iterator<Item = &mut Dense> {
        self.hidden.iter_mut().chain(std::iter::once(&mut self.output))
    }

    /// Element counts of the parameter tensors in optimiser order: per layer, weights then biases.
    pub(crate) fn param_sizes(&self) -> Vec<usize> {
        self.layers().flat_map(|d| [d.weights.len(), d.bias.len()]).collect()
    }

    /// True when every parameter is a finite number.
    pub(crate) fn is_finite(&self) -> bool {
        self.hidden.as_ref().is_none_or(Dense::is_finite) && self.output.is_finite()
    }

    /// True when `other` has the same layer shapes.
    pub(crate) fn same_shape(&self, other: &Head) -> bool {
        self.layers().map(|d| d.weights.dim()).eq(other.layers().map(|d| d.weights.dim()))
    }

    /// The layers in order, input side first.
    pub(crate) fn layers(&self) -> impl Iterator<Item = &Dense> {
        self.hidden.iter().chain(std::iter::once(&self.output))
    }

    /// The head as a self-describing, versioned binary blob: magic, a JSON header with the
    /// layer shapes, then little-endian f32 weights and biases.
    pub fn to_bytes(&self) -> Vec<u8> {
        blob::encode(self)
    }

    /// Reads a blob written by `to_bytes`, rejecting anything malformed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeadError> {
        blob::decode(bytes)
    }
}

/// In place, max(0, v).
pub(crate) fn relu(mut z: Array2<f32>) -> Array2<f32> {
    z.mapv_inplace(|v| v.max(0.0));
    z
}

/// Replaces each row of logits by its softmax; subtracting the row maximum keeps exp() finite.
pub(crate) fn softmax_rows(logits: &mut Array2<f32>) {
    for mut row in logits.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
}

/// Serde shape of a layer: flat row-major data plus its dimensions, checked when read.
#[derive(Serialize, Deserialize)]
struct DenseRepr {
    inputs: usize,
    outputs: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl From<Dense> for DenseRepr {
    fn from(dense: Dense) -> Self {
        let (inputs, outputs) = dense.weights.dim();
        Self { inputs, outputs, weights: dense.weights.iter().copied().collect(), bias: dense.bias.to_vec() }
    }
}

impl TryFrom<DenseRepr> for Dense {
    type Error = HeadError;

    fn try_from(repr: DenseRepr) -> Result<Self, HeadError> {
        let weights = Array2::from_shape_vec((repr.inputs, repr.outputs), repr.weights).map_err(|_| {
            HeadError::Shape(format!("weight data does not hold {}×{} values", repr.inputs, repr.outputs))
        })?;
        Dense::new(weights, Array1::from(repr.bias))
    }
}

#[derive(Serialize, Deserialize)]
struct HeadRepr {
    hidden: Option<Dense>,
    output: Dense,
}

impl From<Head> for HeadRepr {
    fn from(head: Head) -> Self {
        Self { hidden: head.hidden, output: head.output }
    }
}

impl TryFrom<HeadRepr> for Head {
    type Error = HeadError;

    fn try_from(repr: HeadRepr) -> Result<Self, HeadError> {
        Head::new(repr.hidden, repr.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn close(a: &Array2<f32>, b: &Array2<f64>, tol: f64) -> bool {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (f64::from(*x) - y).abs() <= tol)
    }

    #[test]
    fn init_is_glorot_uniform_with_zero_biases_and_seeded() {
        let head = Head::init(20, Some(12), 4, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!((head.input_dim(), head.hidden_units(), head.classes()), (20, Some(12), 4));
        let hidden = head.hidden().unwrap();
        let limit1 = (6.0f32 / 32.0).sqrt();
        let limit2 = (6.0f32 / 16.0).sqrt();
        assert!(hidden.weights().iter().all(|w| w.abs() <= limit1));
        assert!(head.output().weights().iter().all(|w| w.abs() <= limit2));
        // Spread: a uniform sample of 240 values uses most of the interval.
        let max = hidden.weights().iter().fold(0f32, |m, w| m.max(w.abs()));
        assert!(max > 0.8 * limit1);
        assert!(hidden.bias().iter().chain(head.output().bias()).all(|&b| b == 0.0));
        assert_eq!(head, Head::init(20, Some(12), 4, &mut StdRng::seed_from_u64(7)).unwrap());
        assert_ne!(head, Head::init(20, Some(12), 4, &mut StdRng::seed_from_u64(8)).unwrap());
    }

    #[test]
    fn init_rejects_zero_sizes() {
        let rng = &mut StdRng::seed_from_u64(0);
        assert!(Head::init(0, None, 3, rng).is_err());
        assert!(Head::init(3, None, 0, rng).is_err());
        assert!(Head::init(3, Some(0), 2, rng).is_err());
    }

    #[test]
    fn new_checks_shapes() {
        assert!(Dense::new(Array2::zeros((3, 2)), Array1::zeros(3)).is_err());
        assert_eq!(Dense::new(array![[f32::NAN]], array![0.0]), Err(HeadError::NotFinite));
        let hidden = Dense::new(Array2::zeros((3, 4)), Array1::zeros(4)).unwrap();
        let output = Dense::new(Array2::zeros((5, 2)), Array1::zeros(2)).unwrap();
        assert!(Head::new(Some(hidden), output).is_err());
    }

    #[test]
    fn forward_is_a_stable_softmax() {
        let w = array![[1.0f32, -1.0, 0.5], [2.0, 0.0, -0.5]];
        let head = Head::new(None, Dense::new(w, array![0.1, 0.2, 0.3]).unwrap()).unwrap();
        let x = array![[1.0f32, 2.0], [1000.0, -1000.0]];
        // numpy: z = x @ w + b; e = np.exp(z - z.max(1, keepdims=True)); e / e.sum(1, keepdims=True)
        // z row 0 = [5.1, -0.8, -0.2]; row 1 = [-999.9, -999.8, 1000.3] → [0, 0, 1]
        let expected = array![[0.9923282717f64, 0.0027184285, 0.0049532998], [0.0, 0.0, 1.0]];
        let p = head.forward(x.view());
        assert!(close(&p, &expected, 1e-6), "{p}");
        assert!(head.try_forward(Array2::zeros((1, 3)).view()).is_err());
    }

    #[test]
    fn forward_with_hidden_layer_matches_numpy() {
        let hidden = Dense::new(array![[1.0f32, -1.0], [0.5, 2.0]], array![0.0, -0.5]).unwrap();
        let output = Dense::new(array![[1.0f32, 0.0], [-1.0, 1.0]], array![0.0, 0.25]).unwrap();
        let head = Head::new(Some(hidden), output).unwrap();
        // numpy: h = np.maximum(x @ w1 + b1, 0); z = h @ w2 + b2; softmax(z)
        // x = [[1, 1], [-1, 0.5]]: h = [[1.5, 0.5], [0, 1.5]]; z = [[1.0, 0.75], [-1.5, 1.75]]
        let x = array![[1.0f32, 1.0], [-1.0, 0.5]];
        let expected = array![[0.5621765009f64, 0.4378234991], [0.0373268873, 0.9626731127]];
        assert!(close(&head.forward(x.view()), &expected, 1e-6));
    }

    #[test]
    fn serde_round_trip_is_exact_and_validated() {
        let head = Head::init(7, Some(5), 3, &mut StdRng::seed_from_u64(1)).unwrap();
        let json = serde_json::to_string(&head).unwrap();
        assert_eq!(serde_json::from_str::<Head>(&json).unwrap(), head);
        let bad = r#"{"hidden":null,"output":{"inputs":2,"outputs":2,"weights":[1,2,3],"bias":[0,0]}}"#;
        assert!(serde_json::from_str::<Head>(bad).is_err());
    }
}
