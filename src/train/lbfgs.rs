//! Limited-memory BFGS for smooth convex objectives: the two-loop recursion over the last
//! `memory` steps, with a backtracking line search. Used to solve a linear head's regularised
//! logistic regression to convergence.

use std::collections::VecDeque;

use super::vector::{axpy, dot};

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    /// Pairs of (step, gradient change) kept.
    pub memory: usize,
    pub max_iterations: usize,
    /// Converged when the largest gradient component is at most this.
    pub gradient_tolerance: f64,
    /// Or when an iteration lowers the value by less than this fraction of it.
    pub relative_decrease: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self { memory: 10, max_iterations: 500, gradient_tolerance: 1e-5, relative_decrease: 1e-10 }
    }
}

/// Where the search ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsOutcome {
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: usize,
    /// Objective evaluations, line search included.
    pub evaluations: usize,
    pub converged: bool,
}

/// The sufficient decrease a step must show: this fraction of what the slope promises.
const ARMIJO: f64 = 1e-4;

/// Halvings of a step before the search gives up on a direction.
const MAX_BACKTRACKS: usize = 40;

/// Minimises `objective` from `x0`. `objective(x, gradient)` returns the value at `x` and
/// writes the gradient there.
pub fn minimize(
    objective: &mut dyn FnMut(&[f64], &mut [f64]) -> f64,
    x0: Vec<f64>,
    options: LbfgsOptions,
) -> LbfgsOutcome {
    let n = x0.len();
    let mut x = x0;
    let mut gradient = vec![0.0; n];
    let mut value = objective(&x, &mut gradient);
    let mut evaluations = 1;
    let mut curvature = Curvature::new(options.memory);
    let (mut candidate, mut candidate_gradient, mut direction) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let outcome =
        |x, value, iterations, evaluations, converged| LbfgsOutcome { x, value, iterations, evaluations, converged };

    for iteration in 0..options.max_iterations {
        if max_abs(&gradient) <= options.gradient_tolerance {
            return outcome(x, value, iteration, evaluations, true);
        }
        curvature.direction(&gradient, &mut direction);
        let mut slope = dot64(&gradient, &direction);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from steepest descent.
            curvature.forget();
            direction.iter_mut().zip(&gradient).for_each(|(d, g)| *d = -g);
            slope = -dot64(&gradient, &gradient);
        }
        // Without curvature to scale it, the first step has unit length.
        let mut step = if curvature.is_empty() { 1.0 / dot64(&direction, &direction).sqrt().max(1e-12) } else { 1.0 };
        let mut accepted = None;
        for _ in 0..MAX_BACKTRACKS {
            for ((c, xi), di) in candidate.iter_mut().zip(&x).zip(&direction) {
                *c = xi + step * di;
            }
            let new_value = objective(&candidate, &mut candidate_gradient);
            evaluations += 1;
            let armijo = new_value <= value + ARMIJO * step * slope;
            if new_value.is_finite()
                && (armijo || approximately_wolfe(value, new_value, slope, &candidate_gradient, &direction))
            {
                accepted = Some((new_value, armijo));
                break;
            }
            step *= 0.5;
        }
        // No step lowers the value: as close to the minimum as arithmetic allows.
        let Some((new_value, armijo)) = accepted else { return outcome(x, value, iteration + 1, evaluations, true) };
        curvature.remember(&candidate, &x, &candidate_gradient, &gradient);
        let decrease = value - new_value;
        std::mem::swap(&mut x, &mut candidate);
        std::mem::swap(&mut gradient, &mut candidate_gradient);
        value = new_value;
        if armijo && decrease <= options.relative_decrease * value.abs().max(1e-12) {
            return outcome(x, value, iteration + 1, evaluations, true);
        }
    }
    outcome(x, value, options.max_iterations, evaluations, false)
}

/// Whether a step that does not show a sufficient decrease is still a good one, by the
/// approximate Wolfe conditions of Hager and Zhang (2005): the value has not risen by more
/// than rounding can explain, and the slope along the direction has flattened
/// (`(2δ − 1)·φ'(0) ≥ φ'(α) ≥ σ·φ'(0)`, δ = 0.1, σ = 0.9). Near a minimum the value of an
/// objective computed with f32 products moves by less than its own rounding (about 10⁻⁷ of
/// it) while the gradient is still exact enough to descend on; without this test every fit
/// ended with a line search halving its step to nothing, a tenth of all evaluations.
fn approximately_wolfe(value: f64, new_value: f64, slope: f64, new_gradient: &[f64], direction: &[f64]) -> bool {
    let new_slope = dot64(new_gradient, direction);
    new_value <= value + 1e-6 * value.abs() && -0.8 * slope >= new_slope && new_slope >= 0.9 * slope
}

/// The newest (step, gradient change, 1 / stepᵀ·change) pairs: what the search has learnt of
/// the objective's curvature. The pairs are kept in f32: they only shape the search direction,
/// which the line search then checks, and the recursion streams all of them every step (20
/// pairs of a 41,000-parameter head are 13 MB in f64, past any core's cache). The oldest
/// pair's buffers are reused for the newest.
struct Curvature {
    pairs: VecDeque<(Vec<f32>, Vec<f32>, f64)>,
    memory: usize,
    /// Scratch for the recursion's coefficients.
    alphas: Vec<f64>,
}

impl Curvature {
    fn new(memory: usize) -> Self {
        Self { pairs: VecDeque::with_capacity(memory.max(1)), memory: memory.max(1), alphas: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn forget(&mut self) {
        self.pairs.clear();
    }

    /// Keeps the pair of the step from `x` to `next`, unless it shows no positive curvature.
    fn remember(&mut self, next: &[f64], x: &[f64], next_gradient: &[f64], gradient: &[f64]) {
        let (mut s, mut y) = match self.pairs.len() == self.memory {
            true => self.pairs.pop_front().map(|(s, y, _)| (s, y)).expect("memory ≥ 1"),
            false => (vec![0.0; x.len()], vec![0.0; x.len()]),
        };
        s.iter_mut().zip(next).zip(x).for_each(|((si, a), b)| *si = (a - b) as f32);
        y.iter_mut().zip(next_gradient).zip(gradient).for_each(|((yi, a), b)| *yi = (a - b) as f32);
        let sy = stored_dot(&s, &y);
        if sy > 1e-12 {
            self.pairs.push_back((s, y, 1.0 / sy));
        }
    }

    /// `direction` = −H·g, H the inverse-Hessian estimate grown from γ·I by the pairs,
    /// γ = sᵀy / yᵀy of the newest pair (the two-loop recursion).
    fn direction(&mut self, gradient: &[f64], direction: &mut [f64]) {
        let q = direction;
        q.copy_from_slice(gradient);
        self.alphas.clear();
        for (s, y, rho) in self.pairs.iter().rev() {
            let alpha = rho * dot(s, q);
            axpy(-alpha, y, q);
            self.alphas.push(alpha);
        }
        if let Some((s, y, _)) = self.pairs.back() {
            let gamma = stored_dot(s, y) / stored_dot(y, y).max(1e-300);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), alpha) in self.pairs.iter().zip(self.alphas.iter().rev()) {
            let beta = rho * dot(y, q);
            axpy(alpha - beta, s, q);
        }
        q.iter_mut().for_each(|v| *v = -*v);
    }
}

/// aᵀb of two stored vectors, summed in f64 (once or twice a step).
fn stored_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// aᵀb of two f64 vectors (the gradient and the direction, a few times a step).
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_rosenbrock() {
        let mut rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let options = LbfgsOptions { relative_decrease: 0.0, gradient_tolerance: 1e-8, ..LbfgsOptions::default() };
        let out = minimize(&mut rosenbrock, vec![-1.2, 1.0], options);
        assert!(out.converged, "{out:?}");
        assert!((out.x[0] - 1.0).abs() < 1e-6 && (out.x[1] - 1.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn solves_a_quadratic_exactly() {
        // ½ xᵀAx − bᵀx with A = diag(1, 10, 100): the minimum is A⁻¹b.
        let diag = [1.0, 10.0, 100.0];
        let b = [1.0, -2.0, 3.0];
        let mut quadratic = |x: &[f64], g: &mut [f64]| {
            let mut value = 0.0;
            for i in 0..3 {
                g[i] = diag[i] * x[i] - b[i];
                value += 0.5 * diag[i] * x[i] * x[i] - b[i] * x[i];
            }
            value
        };
        let options = LbfgsOptions { relative_decrease: 0.0, gradient_tolerance: 1e-10, ..LbfgsOptions::default() };
        let out = minimize(&mut quadratic, vec![0.0; 3], options);
        for i in 0..3 {
            assert!((out.x[i] - b[i] / diag[i]).abs() < 1e-9, "{out:?}");
        }
        assert!(out.iterations < 20, "{out:?}");
    }
}
