//! The convex fit of a linear head: multinomial logistic regression with an L2 penalty on
//! standardised features, solved to convergence by L-BFGS, along a warm-started path of
//! penalties. The standardisation is folded into the returned weights, so the head serves
//! (and exports) as one dense layer on the raw features.
//!
//! Objective, for weights W (features × classes) and biases b, rows xᵢ with labels yᵢ and
//! weights wᵢ (class weights; 1 without them):
//! `Σᵢ wᵢ·CE(softmax(xᵢW + b), yᵢ) / Σᵢ wᵢ + (λ/2)·‖W‖²` (the biases are not penalised).

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::head::{Dense, HeadError};
use super::lbfgs::{LbfgsOptions, LbfgsOutcome, minimize};

/// Per-feature centring and scaling, fitted on the training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardization {
    pub mean: Array1<f32>,
    /// 1/σ per feature; 1 for a feature that does not vary.
    pub inverse_scale: Array1<f32>,
}

impl Standardization {
    pub fn fit(x: ArrayView2<f32>) -> Self {
        let n = x.nrows().max(1) as f64;
        let d = x.ncols();
        let mut mean = vec![0f64; d];
        let mut square = vec![0f64; d];
        for row in x.rows() {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += f64::from(v);
                square[j] += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|s| s / n).collect();
        let inverse_scale = square
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n - m * m).max(0.0).sqrt();
                if sd > 1e-6 { (1.0 / sd) as f32 } else { 1.0 }
            })
            .collect();
        Self { mean: mean.iter().map(|&m| m as f32).collect(), inverse_scale }
    }

    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        (&x - &self.mean) * &self.inverse_scale
    }

    /// The layer on raw features that equals `layer` on standardised ones:
    /// W' = diag(1/σ)·W, b' = b − (μ/σ)·W.
    pub fn fold(&self, layer: &Dense) -> Result<Dense, HeadError> {
        let scaled = layer.weights() * &self.inverse_scale.view().insert_axis(Axis(1));
        let shift = (&self.mean * &self.inverse_scale).dot(layer.weights());
        Dense::new(scaled, layer.bias() - &shift)
    }
}

/// A softmax regression problem on (already standardised) rows.
pub struct SoftmaxRegression<'a> {
    pub x: ArrayView2<'a, f32>,
    pub labels: &'a [usize],
    pub classes: usize,
    /// Per-row weights (class weights looked up per row); `None`: all 1.
    pub row_weights: Option<Vec<f32>>,
}

/// One point of the regularisation path.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvexFit {
    pub l2: f32,
    /// Weights on the standardised features.
    pub layer: Dense,
    pub iterations: usize,
    pub evaluations: usize,
    pub converged: bool,
    /// The objective at the solution.
    pub objective: f64,
}

impl SoftmaxRegression<'_> {
    fn parameters(&self) -> usize {
        (self.x.ncols() + 1) * self.classes
    }

    /// The objective at `params` (W row-major, then b), its gradient written to `gradient`.
    pub fn objective(&self, l2: f64, params: &[f64], gradient: &mut [f64]) -> f64 {
        let (d, k) = (self.x.ncols(), self.classes);
        let w = Array2::from_shape_fn((d, k), |(i, j)| params[i * k + j] as f32);
        let b: Array1<f32> = params[d * k..].iter().map(|&v| v as f32).collect();
        let mut z = self.x.dot(&w) + &b;
        let total: f64 = match &self.row_weights {
            Some(weights) => weights.iter().map(|&v| f64::from(v)).sum(),
            None => self.labels.len() as f64,
        };
        let mut loss = 0f64;
        for (i, mut row) in z.rows_mut().into_iter().enumerate() {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            let weight = self.row_weights.as_ref().map_or(1.0, |w| f64::from(w[i]));
            let label = self.labels[i];
            loss += weight * (sum.ln() + f64::from(max - row[label]));
            // The row becomes its gradient: wᵢ (p − onehot) / Σw.
            for (j, v) in row.iter_mut().enumerate() {
                let p = f64::from(*v - max).exp() / sum;
                *v = (weight * (p - if j == label { 1.0 } else { 0.0 }) / total) as f32;
            }
        }
        let grad_w = self.x.t().dot(&z);
        let grad_b = z.sum_axis(Axis(0));
        let mut penalty = 0f64;
        for i in 0..d {
            for j in 0..k {
                let wij = params[i * k + j];
                penalty += wij * wij;
                gradient[i * k + j] = f64::from(grad_w[[i, j]]) + l2 * wij;
            }
        }
        for j in 0..k {
            gradient[d * k + j] = f64::from(grad_b[j]);
        }
        loss / total + 0.5 * l2 * penalty
    }

    /// Solves for penalty `l2`, starting from `start` (a neighbour on the path) or zeros.
    pub fn fit(&self, l2: f32, start: Option<&ConvexFit>, options: LbfgsOptions) -> Result<ConvexFit, HeadError> {
        let (d, k) = (self.x.ncols(), self.classes);
        let x0 = match start {
            Some(fit) => {
                let [w, b] = fit.layer.values();
                w.iter().chain(b).map(|&v| f64::from(v)).collect()
            }
            None => vec![0.0; self.parameters()],
        };
        let LbfgsOutcome { x, value, iterations, evaluations, converged } =
            minimize(&mut |p, g| self.objective(f64::from(l2), p, g), x0, options);
        let weights = Array2::from_shape_fn((d, k), |(i, j)| x[i * k + j] as f32);
        let bias: Array1<f32> = x[d * k..].iter().map(|&v| v as f32).collect();
        Ok(ConvexFit { l2, layer: Dense::new(weights, bias)?, iterations, evaluations, converged, objective: value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn blobs(n: usize, d: usize, k: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let x = Array2::from_shape_fn((n, d), |(i, j)| {
            let centre = if j % k == labels[i] { 1.5 } else { 0.0 };
            centre + rng.random_range(-1.0..1.0) * 2.0 + j as f32
        });
        (x, labels)
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (x, labels) = blobs(12, 4, 3, 1);
        let problem = SoftmaxRegression {
            x: x.view(),
            labels: &labels,
            classes: 3,
            row_weights: Some((0..12).map(|i| 0.5 + (i % 3) as f32).collect()),
        };
        let mut rng = StdRng::seed_from_u64(2);
        let params: Vec<f64> = (0..15).map(|_| rng.random_range(-0.3..0.3)).collect();
        let mut gradient = vec![0.0; 15];
        problem.objective(0.1, &params, &mut gradient);
        let mut scratch = vec![0.0; 15];
        for i in 0..15 {
            let (mut up, mut down) = (params.clone(), params.clone());
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let numeric =
                (problem.objective(0.1, &up, &mut scratch) - problem.objective(0.1, &down, &mut scratch)) / 2e-3;
            assert!((numeric - gradient[i]).abs() < 2e-3, "parameter {i}: {numeric} vs {}", gradient[i]);
        }
    }

    #[test]
    fn the_fit_reaches_the_minimum_and_a_warm_start_saves_work() {
        let (raw, labels) = blobs(300, 8, 4, 3);
        let standard = Standardization::fit(raw.view());
        let x = standard.apply(raw.view());
        let problem = SoftmaxRegression { x: x.view(), labels: &labels, classes: 4, row_weights: None };
        let cold = problem.fit(0.01, None, LbfgsOptions::default()).unwrap();
        assert!(cold.converged, "{cold:?}");
        // At the minimum the gradient vanishes (computed here from the returned weights).
        let [w, b] = cold.layer.values();
        let params: Vec<f64> = w.iter().chain(b).map(|&v| f64::from(v)).collect();
        let mut gradient = vec![0.0; params.len()];
        problem.objective(0.01, &params, &mut gradient);
        assert!(gradient.iter().all(|g| g.abs() < 1e-3), "{gradient:?}");

        let near = problem.fit(0.012, Some(&cold), LbfgsOptions::default()).unwrap();
        let fresh = problem.fit(0.012, None, LbfgsOptions::default()).unwrap();
        assert!(near.evaluations < fresh.evaluations, "{} vs {}", near.evaluations, fresh.evaluations);
        assert!((near.objective - fresh.objective).abs() < 1e-5, "{} vs {}", near.objective, fresh.objective);
    }

    #[test]
    fn folding_the_standardisation_gives_the_same_scores_on_raw_features() {
        let raw = array![[1.0f32, 10.0, 3.0], [2.0, 14.0, 3.0], [0.5, 8.0, 3.0], [4.0, 11.0, 3.0]];
        let standard = Standardization::fit(raw.view());
        // The constant column does not vary: it is centred but not scaled.
        assert_eq!(standard.inverse_scale[2], 1.0);
        let layer = Dense::new(array![[0.5f32, -1.0], [0.25, 2.0], [3.0, 1.0]], array![0.1, -0.2]).unwrap();
        let on_standard = standard.apply(raw.view()).dot(layer.weights()) + layer.bias();
        let folded = standard.fold(&layer).unwrap();
        let on_raw = raw.dot(folded.weights()) + folded.bias();
        for (a, b) in on_standard.iter().zip(on_raw.iter()) {
            assert!((a - b).abs() < 1e-4, "{on_standard} vs {on_raw}");
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The size the defaults must handle: 3,000 rows of 1,280 features, 10 classes, a path of
    /// eight penalties warm-started from the strongest. `cargo test --release --lib -- --ignored
    /// timing_convex --nocapture`.
    #[test]
    #[ignore = "timing only"]
    fn timing_convex_path_3000_by_1280() {
        let (n, d, k) = (3000, 1280, 10);
        let mut rng = StdRng::seed_from_u64(7);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let centres = Array2::from_shape_fn((k, d), |_| rng.random_range(-1.0f32..1.0));
        let raw =
            Array2::from_shape_fn((n, d), |(i, j)| (centres[[labels[i], j]] + rng.random_range(-3.0f32..3.0)).max(0.0));
        let started = std::time::Instant::now();
        let standard = Standardization::fit(raw.view());
        let x = standard.apply(raw.view());
        let problem = SoftmaxRegression { x: x.view(), labels: &labels, classes: k, row_weights: None };
        let mut previous: Option<ConvexFit> = None;
        for l2 in [1.0f32, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003] {
            let fit = problem.fit(l2, previous.as_ref(), LbfgsOptions::default()).unwrap();
            println!(
                "l2 {l2}: {} iterations, {} evaluations, converged {}",
                fit.iterations, fit.evaluations, fit.converged
            );
            previous = Some(fit);
        }
        println!("path of 8 on {n}×{d}, {k} classes: {:.2} s", started.elapsed().as_secs_f64());
    }
}
