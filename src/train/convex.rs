//! The convex fit of a linear head: multinomial logistic regression with an L2 penalty on
//! standardised features, solved to convergence by L-BFGS, along a warm-started path of
//! penalties. The standardisation is folded into the returned weights, so the head serves
//! (and exports) as one dense layer on the raw features.
//!
//! Objective, for weights W (features × classes) and biases b, rows xᵢ with labels yᵢ and
//! weights wᵢ (class weights; 1 without them):
//! `Σᵢ wᵢ·CE(softmax(xᵢW + b), yᵢ) / Σᵢ wᵢ + (λ/2)·‖W‖²` (the biases are not penalised).

use std::ops::ControlFlow;

use half::f16;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::data::{TrainData, balanced_class_weights};
use super::error::TrainError;
use super::head::{Dense, Head, HeadError, softmax_rows};
use super::lbfgs::{LbfgsOptions, LbfgsOutcome, minimize};
use super::metrics::{evaluate, log_loss};
use super::softmax_pass::{Element, Rows, loss_and_gradient};
use super::standardize::{Scaling, Standardization};

/// How a job trains its head.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Mini-batch epochs with graft's optimisers (`train::train`): any head.
    #[default]
    Minibatch,
    /// The convex fit of a linear head along a penalty path, the penalty chosen on the
    /// validation split ([`fit_linear`]).
    Convex,
}

/// The penalties the path walks, strongest first so each fit starts from its neighbour:
/// 10 down to 10⁻⁵ in half decades. The strong end is cheap and warm-starts the rest: a path
/// from 1 took longer (4.5 s against 3.7 s on 2,800 rows of digits features).
pub const L2_PATH: [f32; 13] = [10.0, 3.16, 1.0, 0.316, 0.1, 0.0316, 0.01, 3.16e-3, 1e-3, 3.16e-4, 1e-4, 3.16e-5, 1e-5];

/// When a fit on the path has converged: the largest gradient component of the mean loss at
/// most 10⁻⁴, scikit-learn's own default for its L-BFGS on the same (sample-weight
/// normalised) objective; 20 curvature pairs. On 3,000 × 1,280 real features (10 classes)
/// tighter tolerances took 1.5× (3·10⁻⁵) and 2.1× (10⁻⁵) the evaluations and moved test
/// accuracy on the three benchmark sets by at most two images either way: the path only
/// ranks penalties, and the head is the final fit's ([`FINAL_TOLERANCE`]). 20 pairs instead
/// of 10 saved a sixth of the evaluations.
pub const PATH_TOLERANCE: LbfgsOptions =
    LbfgsOptions { memory: 20, max_iterations: 500, gradient_tolerance: 1e-4, relative_decrease: 1e-10 };

/// The tolerance of the final fit ([`final_fit`]), whose weights are served: the largest
/// gradient component 3·10⁻⁵, in f32 rows. On the benchmark's tiles, 10⁻⁵ took half again
/// the final fit's iterations and changed one of 314 test predictions.
pub const FINAL_TOLERANCE: LbfgsOptions =
    LbfgsOptions { memory: 20, max_iterations: 1000, gradient_tolerance: 3e-5, relative_decrease: 1e-12 };

/// The scalings walked, in order.
const SCALINGS: [Scaling; 2] = [Scaling::PerFeature, Scaling::Shared];

/// A path stops once this many penalties in a row have not beaten its best validation loss:
/// past the best penalty the loss rises as the fits overfit, and the weakest penalties are
/// the slowest to solve.
const PATH_PATIENCE: usize = 2;

/// One step of the path: the penalty, how its fit validates, and how the solver did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PathStep {
    pub scaling: Scaling,
    pub l2: f32,
    /// Mean cross-entropy on the validation split; `None` without one.
    pub valid_loss: Option<f32>,
    pub valid_accuracy: Option<f32>,
    pub iterations: usize,
    pub converged: bool,
}

impl PathStep {
    /// Higher validation accuracy, or the same with lower validation loss.
    fn validates_better_than(&self, other: &PathStep) -> bool {
        match (self.valid_accuracy, other.valid_accuracy, self.valid_loss, other.valid_loss) {
            (Some(a), Some(b), Some(loss), Some(other_loss)) => a > b || (a == b && loss < other_loss),
            _ => false,
        }
    }
}

/// The chosen head (scaling folded in) and the path that chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearFit {
    pub head: Head,
    pub scaling: Scaling,
    pub l2: f32,
    pub path: Vec<PathStep>,
    /// Index of the chosen step in `path`.
    pub chosen: usize,
    /// The fit that became the head.
    pub refit: Refit,
}

/// The served head: the chosen scaling and penalty fitted on the training and validation rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Refit {
    /// Rows fitted on: every training variant's, then the validation split's.
    pub rows: usize,
    /// The penalty against the mean loss over those rows (the chosen one, scaled to them).
    pub l2: f32,
    pub iterations: usize,
    pub converged: bool,
}

/// Fits a linear head by the convex solver: every training row of every feature variant,
/// scaled from those rows; class weights when configured. For each [`Scaling`], a fit per
/// penalty of [`L2_PATH`], each starting from the one before and each validated, until
/// [`PATH_PATIENCE`] penalties in a row fail to beat its best validation log loss (smooth in
/// the penalty, so a path's minimum is found without noise); the fit with the highest
/// validation accuracy over both paths is chosen, ties going to the lower log loss. Accuracy
/// decides because it is what the user is judged on: on the benchmark's photos, the lowest
/// log loss chose a fit 0.8 points less accurate on the test split. Without a
/// validation split nothing can choose: per-feature standardisation and the penalty 1/rows,
/// the equivalent of scikit-learn's default `C = 1`. The head is the chosen scaling and
/// penalty fitted once more on the training and validation rows together ([`final_fit`]).
///
/// After each step `on_step(step, steps, best_step, report)` is called (1-based; `steps` is
/// the most the path can take); `ControlFlow::Break(())` cancels the run. `hidden_units` and
/// `dropout` are refused.
pub fn fit_linear(
    config: &TrainConfig,
    data: &TrainData,
    on_step: &mut dyn FnMut(usize, usize, usize, &PathStep) -> ControlFlow<()>,
) -> Result<LinearFit, TrainError> {
    config.validate().map_err(TrainError::InvalidConfig)?;
    data.validate().map_err(TrainError::InvalidData)?;
    if !config.is_linear() {
        return Err(TrainError::InvalidConfig(
            "the convex solver fits a linear head: leave hidden_units and dropout unset".into(),
        ));
    }
    let labels: Vec<usize> = data.train.iter().flat_map(|_| data.train_labels.iter().copied()).collect();
    let row_weights: Option<Vec<f32>> = config.class_weights.then(|| {
        let weights = balanced_class_weights(&labels, data.classes);
        labels.iter().map(|&l| weights[l]).collect()
    });
    let validated = !data.valid_labels.is_empty();
    let (scalings, penalties): (&[Scaling], Vec<f32>) = match validated {
        true => (&SCALINGS, L2_PATH.to_vec()),
        false => (&SCALINGS[..1], vec![1.0 / labels.len() as f32]),
    };
    let steps = scalings.len() * penalties.len();
    let invalid = |e: &dyn std::fmt::Display| TrainError::InvalidData(e.to_string());

    let mut path: Vec<PathStep> = Vec::with_capacity(steps);
    // The best fit so far (with its scaling) and the previous one (the next one's start):
    // two fits held, not the path.
    let mut best: Option<ConvexFit> = None;
    let mut chosen = 0;
    for &scaling in scalings {
        let (x, valid) = half_rows(data, scaling);
        let valid = validated.then_some(valid);
        let problem = SoftmaxRegression::new(x.view(), &labels, data.classes, row_weights.as_deref());
        let mut previous: Option<ConvexFit> = None;
        let mut path_best: Option<f32> = None;
        let mut since_best = 0;
        for &l2 in &penalties {
            let step_number = path.len() + 1;
            let fit = problem
                .fit(l2, previous.as_ref(), PATH_TOLERANCE)
                .map_err(|_| TrainError::Diverged { epoch: step_number })?;
            let scores = match &valid {
                Some(vx) => {
                    let mut p = fit.layer.apply(vx.view());
                    softmax_rows(&mut p);
                    let loss = log_loss(p.view(), &data.valid_labels).map_err(|e| invalid(&e))?;
                    let accuracy = evaluate(p.view(), &data.valid_labels, 1).map_err(|e| invalid(&e))?.accuracy;
                    Some((loss, accuracy))
                }
                None => None,
            };
            let step = PathStep {
                scaling,
                l2,
                valid_loss: scores.map(|s| s.0),
                valid_accuracy: scores.map(|s| s.1),
                iterations: fit.iterations,
                converged: fit.converged,
            };
            let beats = |reference: Option<f32>| match (step.valid_loss, reference) {
                (Some(loss), Some(reference)) => loss < reference,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            if path.get(chosen).is_none_or(|kept| step.validates_better_than(kept)) {
                chosen = path.len();
                best = Some(fit.clone());
            }
            if beats(path_best) {
                path_best = step.valid_loss;
                since_best = 0;
            } else {
                since_best += 1;
            }
            path.push(step);
            previous = Some(fit);
            if on_step(path.len(), steps, chosen + 1, &step).is_break() {
                return Err(TrainError::Cancelled { epoch: path.len() });
            }
            if since_best >= PATH_PATIENCE {
                break;
            }
        }
    }
    let best = best.expect("the path has at least one step");
    let step = path[chosen];
    let (head, refit) = final_fit(data, config.class_weights, step, &best)?;
    Ok(LinearFit { head, scaling: step.scaling, l2: step.l2, path, chosen, refit })
}

/// The chosen scaling and penalty fitted once more, to [`FINAL_TOLERANCE`], on every row the
/// job may learn from: the training rows of every variant and the validation rows, with the
/// scaling fitted on them all. The penalty keeps its weight against the summed loss (as
/// scikit-learn's `C` does), so on more rows it is `l2 · rows_train / rows_all` against the
/// mean. Once the path has chosen, the validation split has nothing left to judge, and a
/// quarter more data is worth more than any penalty: on the benchmark's three sets this
/// added 0.5, 0.4 and 1.0 points of test accuracy to the fit on the training rows alone.
/// The path's fit at the chosen step is the start. The test split stays unseen.
fn final_fit(
    data: &TrainData,
    class_weights: bool,
    step: PathStep,
    start: &ConvexFit,
) -> Result<(Head, Refit), TrainError> {
    let invalid = |e: &dyn std::fmt::Display| TrainError::InvalidData(e.to_string());
    let mut parts: Vec<ArrayView2<f32>> = data.train.iter().map(|x| x.view()).collect();
    let mut labels: Vec<usize> = data.train.iter().flat_map(|_| data.train_labels.iter().copied()).collect();
    let training_rows = labels.len();
    if !data.valid_labels.is_empty() {
        parts.push(data.valid.view());
        labels.extend_from_slice(&data.valid_labels);
    }
    let standard = step.scaling.fit(&parts);
    let x = stacked(&parts, &standard, |v| v);
    let row_weights: Option<Vec<f32>> = class_weights.then(|| {
        let weights = balanced_class_weights(&labels, data.classes);
        labels.iter().map(|&l| weights[l]).collect()
    });
    let l2 = step.l2 * training_rows as f32 / labels.len() as f32;
    let problem = SoftmaxRegression::new(x.view(), &labels, data.classes, row_weights.as_deref());
    let fit = problem.fit(l2, Some(start), FINAL_TOLERANCE).map_err(|_| TrainError::Diverged { epoch: 1 })?;
    let head = Head::new(None, standard.fold(&fit.layer).map_err(|e| invalid(&e))?).map_err(|e| invalid(&e))?;
    Ok((head, Refit { rows: labels.len(), l2, iterations: fit.iterations, converged: fit.converged }))
}

/// `data`'s training rows of every variant, one after another, scaled by `scaling` fitted on
/// them and stored in f16 (the path only ranks penalties, and reads these rows at every
/// evaluation: half the bytes); and the validation rows scaled, in f32.
fn half_rows(data: &TrainData, scaling: Scaling) -> (Array2<f16>, Array2<f32>) {
    let views: Vec<_> = data.train.iter().map(|x| x.view()).collect();
    let standard = scaling.fit(&views);
    (stacked(&views, &standard, f16::from_f32), standard.apply(data.valid.view()))
}

/// The rows of `parts`, one after another, each value scaled by `standard` and stored by
/// `store`: one copy, written once.
fn stacked<E: Element>(parts: &[ArrayView2<f32>], standard: &Standardization, store: impl Fn(f32) -> E) -> Array2<E> {
    let width = standard.mean.len();
    let rows = parts.iter().map(|x| x.nrows()).sum();
    let mut x = Array2::from_elem((rows, width), store(0.0));
    for (mut out, row) in x.rows_mut().into_iter().zip(parts.iter().flat_map(|p| p.rows())) {
        for (((o, &v), &mean), &scale) in out.iter_mut().zip(row).zip(&standard.mean).zip(&standard.inverse_scale) {
            *o = store((v - mean) * scale);
        }
    }
    x
}

/// A softmax regression problem on (already scaled) rows. Its parameters are W class by
/// class (`params[c·d + j]` for class c, feature j), then b: the layout of the pass.
pub struct SoftmaxRegression<'a, E: Element = f32> {
    rows: Rows<'a, E>,
    classes: usize,
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

impl<'a, E: Element> SoftmaxRegression<'a, E> {
    /// `x` in standard layout, a label per row and optionally a weight per row (class weights
    /// looked up per row; `None`: all 1).
    pub fn new(x: ArrayView2<'a, E>, labels: &'a [usize], classes: usize, row_weights: Option<&'a [f32]>) -> Self {
        Self { rows: Rows::new(x, labels, row_weights), classes }
    }

    fn parameters(&self) -> usize {
        (self.rows.features() + 1) * self.classes
    }

    /// The objective at `params`, its gradient written to `gradient`.
    pub fn objective(&self, l2: f64, params: &[f64], gradient: &mut [f64]) -> f64 {
        let weights = self.rows.features() * self.classes;
        let as_f32 = |values: &[f64]| values.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (loss, pass) = loss_and_gradient(&self.rows, &as_f32(&params[..weights]), &as_f32(&params[weights..]));
        let mut penalty = 0f64;
        for ((out, &w), &g) in gradient.iter_mut().zip(&params[..weights]).zip(&pass.weights) {
            penalty += w * w;
            *out = f64::from(g) + l2 * w;
        }
        gradient[weights..].copy_from_slice(&pass.bias);
        loss + 0.5 * l2 * penalty
    }

    /// Solves for penalty `l2`, starting from `start` (a neighbour on the path) or zeros.
    pub fn fit(&self, l2: f32, start: Option<&ConvexFit>, options: LbfgsOptions) -> Result<ConvexFit, HeadError> {
        let (d, k) = (self.rows.features(), self.classes);
        let x0 = match start {
            Some(fit) => {
                let (w, b) = (fit.layer.weights(), fit.layer.bias());
                w.t().iter().chain(b).map(|&v| f64::from(v)).collect()
            }
            None => vec![0.0; self.parameters()],
        };
        let LbfgsOutcome { x, value, iterations, evaluations, converged } =
            minimize(&mut |p, g| self.objective(f64::from(l2), p, g), x0, options);
        let weights = Array2::from_shape_fn((d, k), |(j, c)| x[c * d + j] as f32);
        let bias: Array1<f32> = x[d * k..].iter().map(|&v| v as f32).collect();
        Ok(ConvexFit { l2, layer: Dense::new(weights, bias)?, iterations, evaluations, converged, objective: value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Axis, array};
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
        let row_weights: Vec<f32> = (0..12).map(|i| 0.5 + (i % 3) as f32).collect();
        let problem = SoftmaxRegression::new(x.view(), &labels, 3, Some(&row_weights));
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
        let problem = SoftmaxRegression::new(x.view(), &labels, 4, None);
        let cold = problem.fit(0.01, None, LbfgsOptions::default()).unwrap();
        assert!(cold.converged, "{cold:?}");
        // At the minimum the gradient vanishes (computed here from the returned weights, which
        // the problem takes class by class).
        let (w, b) = (cold.layer.weights(), cold.layer.bias());
        let params: Vec<f64> = w.t().iter().chain(b).map(|&v| f64::from(v)).collect();
        let mut gradient = vec![0.0; params.len()];
        problem.objective(0.01, &params, &mut gradient);
        assert!(gradient.iter().all(|g| g.abs() < 1e-3), "{gradient:?}");

        let near = problem.fit(0.012, Some(&cold), LbfgsOptions::default()).unwrap();
        let fresh = problem.fit(0.012, None, LbfgsOptions::default()).unwrap();
        assert!(near.evaluations < fresh.evaluations, "{} vs {}", near.evaluations, fresh.evaluations);
        assert!((near.objective - fresh.objective).abs() < 1e-5, "{} vs {}", near.objective, fresh.objective);
    }

    #[test]
    fn the_path_keeps_the_penalty_that_validates_best() {
        let (raw, labels) = blobs(240, 6, 3, 5);
        let (train, valid) =
            (raw.slice(ndarray::s![..180, ..]).to_owned(), raw.slice(ndarray::s![180.., ..]).to_owned());
        let data = TrainData {
            train: vec![train],
            train_labels: labels[..180].to_vec(),
            valid,
            valid_labels: labels[180..].to_vec(),
            classes: 3,
        };
        let mut steps = Vec::new();
        let fit = fit_linear(&TrainConfig::default(), &data, &mut |step, steps_total, best, report| {
            steps.push((step, steps_total, best, *report));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(steps.len(), fit.path.len());
        assert!(steps.iter().all(|&(_, total, _, _)| total == 2 * L2_PATH.len()));
        // Both scalings, in order; each path walks the penalties strongest first and stops
        // at the end or once PATH_PATIENCE steps in a row have not beaten its best.
        for scaling in SCALINGS {
            let walked: Vec<&PathStep> = fit.path.iter().filter(|s| s.scaling == scaling).collect();
            assert!(!walked.is_empty(), "{scaling:?}");
            assert!(walked.iter().zip(L2_PATH).all(|(s, l2)| s.l2 == l2));
            let losses: Vec<f32> = walked.iter().map(|s| s.valid_loss.unwrap()).collect();
            let best = losses
                .iter()
                .cloned()
                .enumerate()
                .fold((0, f32::INFINITY), |b, (i, l)| if l < b.1 { (i, l) } else { b });
            assert!(walked.len() == L2_PATH.len() || walked.len() == best.0 + 1 + PATH_PATIENCE, "{losses:?}");
        }
        // The kept step has the highest validation accuracy and, among those, the lowest loss.
        let chosen = fit.path[fit.chosen];
        let top = fit.path.iter().map(|s| s.valid_accuracy.unwrap()).fold(0.0, f32::max);
        let lowest = fit
            .path
            .iter()
            .filter(|s| s.valid_accuracy == Some(top))
            .map(|s| s.valid_loss.unwrap())
            .fold(f32::INFINITY, f32::min);
        assert_eq!((chosen.valid_accuracy, chosen.valid_loss), (Some(top), Some(lowest)), "{:?}", fit.path);
        assert_eq!((fit.l2, fit.scaling, steps.last().unwrap().2), (chosen.l2, chosen.scaling, fit.chosen + 1));
        // The head serves raw features. It is the chosen scaling and penalty fitted on the
        // training and validation rows together (the penalty against their mean loss scaled
        // by 180/240 rows): unfolded back onto those rows scaled, a point where that
        // objective's gradient vanishes.
        assert!(fit.refit.converged, "{:?}", fit.refit);
        assert_eq!(fit.refit.rows, 240);
        assert!((fit.refit.l2 - fit.l2 * 0.75).abs() < 1e-9, "{:?}", fit.refit);
        let all = ndarray::concatenate(Axis(0), &[data.train[0].view(), data.valid.view()]).unwrap();
        let standard = fit.scaling.fit(&[all.view()]);
        let x = standard.apply(all.view());
        let (w, b) = (fit.head.output.weights(), fit.head.output.bias());
        // W' = diag(1/σ)·W and b' = b − (μ/σ)·W, undone: W = σ·W', b = b' + μ·W'.
        let unfolded_w = w / &standard.inverse_scale.view().insert_axis(Axis(1));
        let unfolded_b = b + &standard.mean.dot(w);
        let params: Vec<f64> = unfolded_w.t().iter().chain(&unfolded_b).map(|&v| f64::from(v)).collect();
        let mut gradient = vec![0.0; params.len()];
        SoftmaxRegression::new(x.view(), &labels, 3, None).objective(f64::from(fit.refit.l2), &params, &mut gradient);
        let largest = gradient.iter().fold(0f64, |m, g| m.max(g.abs()));
        assert!(largest < 5e-5, "largest gradient component {largest}");

        let cancelled = fit_linear(&TrainConfig::default(), &data, &mut |step, _, _, _| {
            if step == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert_eq!(cancelled, Err(TrainError::Cancelled { epoch: 2 }));
        let hidden = TrainConfig { hidden_units: Some(8), ..TrainConfig::default() };
        assert!(matches!(
            fit_linear(&hidden, &data, &mut |_, _, _, _| ControlFlow::Continue(())),
            Err(TrainError::InvalidConfig(_))
        ));
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

    /// The size the defaults must handle: 3,000 training rows of 1,280 features, 10 classes,
    /// the whole default path (both scalings, the penalty chosen on 750 validation rows).
    /// Random features converge faster than real ones: `make bench-train` times real ones.
    /// `cargo test --release --lib -- --ignored timing_convex --nocapture`.
    #[test]
    #[ignore = "timing only"]
    fn timing_convex_path_3000_by_1280() {
        let (n, valid, d, k) = (3000, 750, 1280, 10);
        let mut rng = StdRng::seed_from_u64(7);
        let labels: Vec<usize> = (0..n + valid).map(|i| i % k).collect();
        let centres = Array2::from_shape_fn((k, d), |_| rng.random_range(-1.0f32..1.0));
        let raw = Array2::from_shape_fn((n + valid, d), |(i, j)| {
            (centres[[labels[i], j]] + rng.random_range(-3.0f32..3.0)).max(0.0)
        });
        let data = TrainData {
            train: vec![raw.slice(ndarray::s![..n, ..]).to_owned()],
            train_labels: labels[..n].to_vec(),
            valid: raw.slice(ndarray::s![n.., ..]).to_owned(),
            valid_labels: labels[n..].to_vec(),
            classes: k,
        };
        let started = std::time::Instant::now();
        let fit = fit_linear(&TrainConfig::default(), &data, &mut |_, _, _, _| ControlFlow::Continue(())).unwrap();
        let iterations: usize = fit.path.iter().map(|s| s.iterations).sum();
        println!(
            "{} steps, {iterations} iterations on {n}×{d}, {k} classes: {:.2} s",
            fit.path.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
