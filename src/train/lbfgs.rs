//! Limited-memory BFGS for smooth convex objectives: the two-loop recursion over the last
//! `memory` steps, with a backtracking (Armijo) line search. Used to solve a linear head's
//! regularised logistic regression to convergence.

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
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    let (mut candidate, mut candidate_gradient) = (vec![0.0; n], vec![0.0; n]);

    for iteration in 0..options.max_iterations {
        if max_abs(&gradient) <= options.gradient_tolerance {
            return LbfgsOutcome { x, value, iterations: iteration, evaluations, converged: true };
        }
        let direction = two_loop(&gradient, &history);
        let mut slope = dot(&gradient, &direction);
        let direction = if slope < 0.0 {
            direction
        } else {
            // Not a descent direction (rounding): restart from steepest descent.
            history.clear();
            slope = -dot(&gradient, &gradient);
            gradient.iter().map(|g| -g).collect()
        };
        // The first step has no curvature to scale it: take a unit-length one.
        let mut step = if history.is_empty() { 1.0 / norm(&direction).max(1e-12) } else { 1.0 };
        let mut accepted = false;
        for _ in 0..40 {
            for ((c, xi), di) in candidate.iter_mut().zip(&x).zip(&direction) {
                *c = xi + step * di;
            }
            let new_value = objective(&candidate, &mut candidate_gradient);
            evaluations += 1;
            if new_value.is_finite() && new_value <= value + 1e-4 * step * slope {
                let s: Vec<f64> = candidate.iter().zip(&x).map(|(c, xi)| c - xi).collect();
                let y: Vec<f64> = candidate_gradient.iter().zip(&gradient).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-12 {
                    if history.len() == options.memory {
                        history.pop_front();
                    }
                    history.push_back((s, y, 1.0 / sy));
                }
                let decrease = value - new_value;
                std::mem::swap(&mut x, &mut candidate);
                std::mem::swap(&mut gradient, &mut candidate_gradient);
                value = new_value;
                accepted = true;
                if decrease <= options.relative_decrease * value.abs().max(1e-12) {
                    return LbfgsOutcome { x, value, iterations: iteration + 1, evaluations, converged: true };
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No step lowers the value: as close to the minimum as arithmetic allows.
            return LbfgsOutcome { x, value, iterations: iteration + 1, evaluations, converged: true };
        }
    }
    LbfgsOutcome { x, value, iterations: options.max_iterations, evaluations, converged: false }
}

/// −H·g from the stored pairs (H the inverse-Hessian estimate).
fn two_loop(gradient: &[f64], history: &std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q = gradient.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let alpha = rho * dot(s, &q);
        axpy(-alpha, y, &mut q);
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = history.back() {
        let gamma = dot(s, y) / dot(y, y).max(1e-300);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for ((s, y, rho), alpha) in history.iter().zip(alphas.into_iter().rev()) {
        let beta = rho * dot(y, &q);
        axpy(alpha - beta, s, &mut q);
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(yi, xi)| *yi += alpha * xi);
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
