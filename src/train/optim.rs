//! Optimisers: update parameter tensors in place from their gradients.
//!
//! The rule and its hyperparameters (`Optimizer`) are kept apart from the moving state
//! (`OptimizerState`: step count and moment buffers), so a checkpoint stores only the state and
//! a resumed run rebuilds the rule from its configuration.
//!
//! - SGD with momentum: v = μ·v − lr·g; w += v (μ = 0 is plain SGD).
//! - Adam (Kingma & Ba 2015, Algorithm 1): bias-corrected moments, w −= lr·m̂/(√v̂ + ε).
//! - Nadam (Dozat 2016, constant β1): m̂ = β1·m/(1−β1^{t+1}) + (1−β1)·g/(1−β1^t).
//!
//! L2 weight decay is added to the gradient of weights only (g += wd·w), never to biases.

use serde::{Deserialize, Serialize};

/// Adam/Nadam first-moment decay.
pub const BETA1: f32 = 0.9;
/// Adam/Nadam second-moment decay.
pub const BETA2: f32 = 0.999;
/// Adam/Nadam denominator guard; Keras' default.
pub const EPSILON: f32 = 1e-7;

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Stochastic gradient descent with (heavy-ball) momentum in [0, 1).
    Sgd { momentum: f32 },
    /// Adam with β1 = 0.9, β2 = 0.999, ε = 1e-7.
    Adam,
    /// Nesterov-accelerated Adam with the same constants.
    Nadam,
}

/// A rule with its learning rate and L2 weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizer {
    pub rule: Rule,
    pub learning_rate: f32,
    pub weight_decay: f32,
}

/// What an optimiser carries from step to step, one buffer per parameter tensor, in the
/// order the parameters are passed to [`Optimizer::step`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Steps taken so far (Adam's t after the last update).
    pub step: u64,
    /// SGD velocity, or Adam's first moment m.
    pub first: Vec<Vec<f32>>,
    /// Adam's second moment v; empty for SGD.
    pub second: Vec<Vec<f32>>,
}

/// One parameter tensor with its gradient, both flattened in the same (row-major) order.
/// Plain slices keep the update loops simple enough for the compiler to vectorise.
pub struct Param<'a> {
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
    /// Whether weight decay applies (weights yes, biases no).
    pub decay: bool,
}

/// A state that does not fit the parameters it is asked to update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("optimizer state does not match the parameters: {0}")]
pub struct OptimError(pub String);

impl Optimizer {
    /// Zeroed state for parameters of the given element counts.
    pub fn init_state(&self, sizes: &[usize]) -> OptimizerState {
        let zeros = || sizes.iter().map(|&n| vec![0.0; n]).collect();
        let second = if self.uses_second_moment() { zeros() } else { Vec::new() };
        OptimizerState { step: 0, first: zeros(), second }
    }

    /// Checks that `state` (say, from a checkpoint) belongs to this rule and these parameter sizes.
    pub fn check_state(&self, state: &OptimizerState, sizes: &[usize]) -> Result<(), OptimError> {
        let fits = |buffers: &[Vec<f32>]| buffers.iter().map(Vec::len).eq(sizes.iter().copied());
        if !fits(&state.first) {
            return Err(OptimError("first-moment buffers have the wrong sizes".into()));
        }
        match (self.uses_second_moment(), state.second.is_empty()) {
            (true, _) if !fits(&state.second) => Err(OptimError("second-moment buffers have the wrong sizes".into())),
            (false, false) => Err(OptimError("SGD keeps no second moment, but the state has one".into())),
            _ => Ok(()),
        }
    }

    /// Applies one update to every parameter, advancing the step count.
    pub fn step(&self, state: &mut OptimizerState, params: &mut [Param<'_>]) -> Result<(), OptimError> {
        let sizes: Vec<usize> = params.iter().map(|p| p.value.len()).collect();
        self.check_state(state, &sizes)?;
        if let Some(p) = params.iter().find(|p| p.value.len() != p.grad.len()) {
            return Err(OptimError(format!("{} gradients for {} parameters", p.grad.len(), p.value.len())));
        }
        state.step += 1;
        let step = Step::new(self, state.step);
        for (i, param) in params.iter_mut().enumerate() {
            let second = state.second.get_mut(i).map(Vec::as_mut_slice).unwrap_or_default();
            step.apply(param, &mut state.first[i], second);
        }
        Ok(())
    }

    fn uses_second_moment(&self) -> bool {
        !matches!(self.rule, Rule::Sgd { .. })
    }
}

/// The per-step constants of one update (bias corrections computed once, in f64).
struct Step {
    rule: Rule,
    lr: f32,
    wd: f32,
    /// 1/(1 − β1^t)
    c1: f32,
    /// 1/(1 − β1^{t+1}), Nadam's look-ahead correction
    c1_next: f32,
    /// 1/(1 − β2^t)
    c2: f32,
}

impl Step {
    fn new(optimizer: &Optimizer, t: u64) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let correction = |beta: f32, t: i32| (1.0 / (1.0 - f64::from(beta).powi(t))) as f32;
        Self {
            rule: optimizer.rule,
            lr: optimizer.learning_rate,
            wd: optimizer.weight_decay,
            c1: correction(BETA1, t),
            c1_next: correction(BETA1, t.saturating_add(1)),
            c2: correction(BETA2, t),
        }
    }

    fn apply(&self, param: &mut Param<'_>, first: &mut [f32], second: &mut [f32]) {
        let wd = if param.decay { self.wd } else { 0.0 };
        let lr = self.lr;
        let elements = param.value.iter_mut().zip(param.grad).zip(first.iter_mut());
        // One loop per rule, with no branch inside, so each one vectorises.
        match self.rule {
            Rule::Sgd { momentum } => {
                for ((w, &g), v) in elements {
                    let g = g + wd * *w;
                    *v = momentum * *v - lr * g;
                    *w += *v;
                }
            }
            Rule::Adam => {
                for (((w, &g), m), v) in elements.zip(second.iter_mut()) {
                    let g = g + wd * *w;
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    *w -= lr * (*m * self.c1) / ((*v * self.c2).sqrt() + EPSILON);
                }
            }
            Rule::Nadam => {
                for (((w, &g), m), v) in elements.zip(second.iter_mut()) {
                    let g = g + wd * *w;
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    let m_hat = BETA1 * *m * self.c1_next + (1.0 - BETA1) * g * self.c1;
                    *w -= lr * m_hat / ((*v * self.c2).sqrt() + EPSILON);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, array};

    /// Runs three steps of `optimizer` on a weight vector (decayed) and a bias vector (not),
    /// with the fixed gradients used in the numpy reference below.
    fn three_steps(optimizer: Optimizer) -> (Array1<f32>, Array1<f32>) {
        let mut w = array![0.5f32, -1.0, 2.0];
        let mut b = array![0.1f32, -0.2];
        let grads_w = [array![0.1f32, -0.2, 0.3], array![-0.05f32, 0.4, 0.1], array![0.2f32, 0.0, -0.3]];
        let grads_b = [array![1.0f32, -0.5], array![0.5f32, 0.5], array![-1.0f32, 0.25]];
        let mut state = optimizer.init_state(&[3, 2]);
        for (gw, gb) in grads_w.iter().zip(&grads_b) {
            let mut params = [
                Param { value: w.as_slice_mut().unwrap(), grad: gw.as_slice().unwrap(), decay: true },
                Param { value: b.as_slice_mut().unwrap(), grad: gb.as_slice().unwrap(), decay: false },
            ];
            optimizer.step(&mut state, &mut params).unwrap();
        }
        assert_eq!(state.step, 3);
        (w, b)
    }

    fn assert_close(actual: &Array1<f32>, expected: &[f64]) {
        for (a, e) in actual.iter().zip(expected) {
            assert!((f64::from(*a) - e).abs() < 2e-6, "{actual} vs {expected:?}");
        }
    }

    // The numpy reference for all rules (float64):
    //   w = [0.5, -1, 2]; b = [0.1, -0.2]; wd = 0.01 on w only
    //   gw = [[0.1,-0.2,0.3],[-0.05,0.4,0.1],[0.2,0,-0.3]]; gb = [[1,-0.5],[0.5,0.5],[-1,0.25]]
    //   for t in 1..3: g = gw[t-1] + wd*w (b: gb[t-1]) then
    //   sgd:   v = mu*v - lr*g; p += v                              (lr 0.1, mu 0.9)
    //   adam:  m = b1*m+(1-b1)*g; v = b2*v+(1-b2)*g**2
    //          p -= lr*(m/(1-b1**t)) / (np.sqrt(v/(1-b2**t)) + 1e-7)  (lr 0.01)
    //   nadam: mh = b1*m/(1-b1**(t+1)) + (1-b1)*g/(1-b1**t)
    //          p -= lr*mh / (np.sqrt(v/(1-b2**t)) + 1e-7)               (lr 0.01)

    #[test]
    fn sgd_with_momentum_matches_formula() {
        let (w, b) =
            three_steps(Optimizer { rule: Rule::Sgd { momentum: 0.9 }, learning_rate: 0.1, weight_decay: 0.01 });
        assert_close(&w, &[0.4596303895, -1.016230779, 1.918613568]);
        assert_close(&b, &[-0.166, -0.1845]);
    }

    #[test]
    fn plain_sgd_is_momentum_zero() {
        let (w, b) =
            three_steps(Optimizer { rule: Rule::Sgd { momentum: 0.0 }, learning_rate: 0.1, weight_decay: 0.0 });
        // numpy: w - 0.1*sum(gw), b - 0.1*sum(gb)
        assert_close(&w, &[0.475, -1.02, 1.99]);
        assert_close(&b, &[0.05, -0.225]);
    }

    #[test]
    fn adam_matches_formula() {
        let (w, b) = three_steps(Optimizer { rule: Rule::Adam, learning_rate: 0.01, weight_decay: 0.01 });
        assert_close(&w, &[0.479990745, -0.9958455125, 1.9798565002]);
        assert_close(&b, &[0.0795703752, -0.1930406602]);
    }

    #[test]
    fn nadam_matches_formula() {
        let (w, b) = three_steps(Optimizer { rule: Rule::Nadam, learning_rate: 0.01, weight_decay: 0.01 });
        assert_close(&w, &[0.4757802271, -0.995555017, 1.980207504]);
        assert_close(&b, &[0.0795271221, -0.1947724361]);
    }

    #[test]
    fn state_must_fit_the_parameters() {
        let adam = Optimizer { rule: Rule::Adam, learning_rate: 0.01, weight_decay: 0.0 };
        let sgd = Optimizer { rule: Rule::Sgd { momentum: 0.0 }, learning_rate: 0.01, weight_decay: 0.0 };
        let state = adam.init_state(&[3, 2]);
        assert!(adam.check_state(&state, &[3, 2]).is_ok());
        assert!(adam.check_state(&state, &[3, 3]).is_err());
        assert!(adam.check_state(&state, &[3]).is_err());
        assert!(sgd.check_state(&state, &[3, 2]).is_err());
        assert!(adam.check_state(&sgd.init_state(&[3, 2]), &[3, 2]).is_err());

        let mut w = [1.0f32, 2.0];
        let g = [1.0f32, 2.0, 3.0];
        let mut state = adam.init_state(&[2]);
        let mut params = [Param { value: &mut w, grad: &g, decay: false }];
        assert!(adam.step(&mut state, &mut params).is_err());
        assert_eq!(state.step, 0);
    }

    #[test]
    fn state_survives_json() {
        let adam = Optimizer { rule: Rule::Adam, learning_rate: 0.01, weight_decay: 0.0 };
        let mut state = adam.init_state(&[2]);
        state.first[0] = vec![0.1, -3.5e-9];
        state.step = 7;
        let back: OptimizerState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }
}
