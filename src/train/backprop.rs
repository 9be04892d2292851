//! The training maths: softmax cross-entropy on a head's logits, and its gradient with respect
//! to every parameter of the head for one mini-batch.
//!
//! Batch loss L = (1/n)·Σᵢ wᵢ·(−log softmax(zᵢ)[yᵢ]) where wᵢ is the class weight of yᵢ (1
//! without class weights): Keras' convention of averaging weighted losses over the batch size.
//! Dropout, when asked for, is applied to the input of the output layer (the hidden
//! activations, or the features themselves for a head without a hidden layer).

use ndarray::{Array1, Array2, ArrayView2, Axis, CowArray, Ix2};
use rand::Rng;
use rand::rngs::StdRng;

use super::head::{Head, relu};
use super::optim::{OptimError, Optimizer, OptimizerState, Param};

/// Dropout for one batch: the rate and where the mask comes from.
pub(crate) struct Dropout<'a> {
    pub rate: f32,
    pub rng: &'a mut StdRng,
}

/// ∂L/∂W and ∂L/∂b for each layer, input side first (the order of `Head::layers`).
#[derive(Debug)]
pub(crate) struct Gradients {
    pub layers: Vec<(Array2<f32>, Array1<f32>)>,
}

/// Loss and hits of one batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BatchStats {
    /// Σᵢ wᵢ·ℓᵢ over the batch (not yet divided by its size).
    pub weighted_loss_sum: f64,
    /// Rows whose arg-max class is the label.
    pub correct: usize,
}

/// Replaces each row of `logits` by its softmax and returns each row's cross-entropy against
/// its label (computed as logsumexp − z_y, which stays finite where log(p) would not), and the
/// number of rows whose first arg-max is the label.
pub(crate) fn softmax_cross_entropy(logits: &mut Array2<f32>, labels: &[usize]) -> (Vec<f32>, usize) {
    let mut losses = Vec::with_capacity(labels.len());
    let mut correct = 0;
    for (mut row, &label) in logits.axis_iter_mut(Axis(0)).zip(labels) {
        let (argmax, max) =
            row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (j, &v)| if v > best.1 { (j, v) } else { best });
        correct += usize::from(argmax == label);
        let target = row[label] - max;
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        losses.push(sum.ln() - target);
        row /= sum;
    }
    (losses, correct)
}

/// Mean cross-entropy and accuracy of a head on a labelled split, without dropout.
/// Rows go through in chunks so a wide hidden layer never holds the whole split at once.
pub(crate) fn evaluate_split(head: &Head, x: ArrayView2<f32>, labels: &[usize]) -> (f32, f32) {
    const CHUNK: usize = 1024;
    let mut loss_sum = 0f64;
    let mut correct = 0;
    for (rows, labels) in x.axis_chunks_iter(Axis(0), CHUNK).zip(labels.chunks(CHUNK)) {
        let (losses, hits) = softmax_cross_entropy(&mut head.logits(rows), labels);
        loss_sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
        correct += hits;
    }
    let n = labels.len().max(1) as f64;
    ((loss_sum / n) as f32, (correct as f64 / n) as f32)
}

/// Forward and backward pass of one mini-batch.
pub(crate) fn batch_gradients(
    head: &Head,
    x: ArrayView2<f32>,
    labels: &[usize],
    class_weights: Option<&[f32]>,
    dropout: Option<Dropout<'_>>,
) -> (Gradients, BatchStats) {
    // Forward: `inputs` is what the output layer sees, after dropout.
    let mut inputs: CowArray<f32, Ix2> = match &head.hidden {
        Some(hidden) => relu(hidden.apply(x)).into(),
        None => x.into(),
    };
    let mut scale = 1.0;
    if let Some(dropout) = dropout.filter(|d| d.rate > 0.0) {
        let mut owned = inputs.into_owned();
        scale = drop_units(&mut owned, dropout);
        inputs = owned.into();
    }
    let mut delta = head.output.apply(inputs.view());
    let (losses, correct) = softmax_cross_entropy(&mut delta, labels);

    // ∂L/∂z = wᵢ·(p − onehot(y))/n.
    let n = labels.len().max(1) as f32;
    let weight = |label: usize| class_weights.map_or(1.0, |w| w[label]);
    let mut weighted_loss_sum = 0f64;
    for ((mut row, &label), loss) in delta.axis_iter_mut(Axis(0)).zip(labels).zip(losses) {
        let w = weight(label);
        weighted_loss_sum += f64::from(w * loss);
        row[label] -= 1.0;
        row *= w / n;
    }

    let output_grads = (inputs.t().dot(&delta), delta.sum_axis(Axis(0)));
    let mut layers = Vec::with_capacity(2);
    if head.hidden.is_some() {
        // Back through dropout and the ReLU. A unit passed gradient iff its value after both
        // is positive (kept by dropout and active), and then scaled by dropout's factor.
        let mut back = delta.dot(&head.output.weights.t());
        back.zip_mut_with(&inputs, |g, &h| *g = if h > 0.0 { *g * scale } else { 0.0 });
        layers.push((x.t().dot(&back), back.sum_axis(Axis(0))));
    }
    layers.push(output_grads);
    (Gradients { layers }, BatchStats { weighted_loss_sum, correct })
}

/// One optimiser step on every parameter of `head` from `grads`.
pub(crate) fn apply_gradients(
    optimizer: &Optimizer,
    state: &mut OptimizerState,
    head: &mut Head,
    grads: &Gradients,
) -> Result<(), OptimError> {
    // The optimiser pairs values and gradients element by element, so both must be row-major;
    // matrix products can return column-major results, which this copies (rarely) into order.
    let grads: Vec<_> = grads.layers.iter().map(|(w, b)| (w.as_standard_layout(), b.as_standard_layout())).collect();
    let mut params = Vec::with_capacity(2 * grads.len());
    for (dense, (grad_w, grad_b)) in head.layers_mut().zip(&grads) {
        let [weights, bias] = dense.values_mut();
        params.push(Param { value: weights, grad: slice(grad_w.as_slice())?, decay: true });
        params.push(Param { value: bias, grad: slice(grad_b.as_slice())?, decay: false });
    }
    optimizer.step(state, &mut params)
}

fn slice(s: Option<&[f32]>) -> Result<&[f32], OptimError> {
    s.ok_or_else(|| OptimError("a gradient is not contiguous".into()))
}

/// Inverted dropout in place: each unit is zeroed with probability `rate` and the survivors
/// are scaled by 1/(1 − rate), so inference needs no rescaling. Returns that scale.
///
/// Each unit takes 16 random bits, drawn in bulk: with dropout on thousands of input features
/// per row, one `f32` draw per unit would cost more than the matrix products. The rate is thus
/// rounded to a multiple of 2⁻¹⁶, and the scale uses the rounded rate so the mask stays unbiased.
fn drop_units(values: &mut Array2<f32>, dropout: Dropout<'_>) -> f32 {
    let threshold = (f64::from(dropout.rate) * 65536.0).round().min(65535.0) as u16;
    let scale = (65536.0 / (65536.0 - f64::from(threshold))) as f32;
    let mut bits = vec![0u16; values.len()];
    dropout.rng.fill(bits.as_mut_slice());
    for (v, &b) in values.iter_mut().zip(&bits) {
        *v = if b < threshold { 0.0 } else { *v * scale };
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::head::Dense;
    use crate::train::optim::Rule;
    use ndarray::array;
    use rand::SeedableRng;

    fn assert_close(actual: &Array2<f32>, expected: &Array2<f64>, tol: f64) {
        assert_eq!(actual.shape(), expected.shape());
        for (a, e) in actual.iter().zip(expected) {
            assert!((f64::from(*a) - e).abs() < tol, "\n{actual}\nvs\n{expected}");
        }
    }

    fn linear_head() -> Head {
        let w = array![[0.2f32, -0.1, 0.0], [0.5, 0.3, -0.4]];
        Head::new(None, Dense::new(w, array![0.1, 0.0, -0.1]).unwrap()).unwrap()
    }

    fn xs() -> (Array2<f32>, Vec<usize>) {
        (array![[1.0f32, 2.0], [-1.0, 0.5], [0.0, -1.5]], vec![0, 2, 1])
    }

    /// Applies one plain-SGD step to `head` from `grads`.
    fn sgd_step(head: &mut Head, grads: &Gradients, lr: f32) {
        let optimizer = Optimizer { rule: Rule::Sgd { momentum: 0.0 }, learning_rate: lr, weight_decay: 0.0 };
        let mut state = optimizer.init_state(&head.param_sizes());
        apply_gradients(&optimizer, &mut state, head, grads).unwrap();
    }

    #[test]
    fn one_softmax_regression_sgd_step_matches_numpy() {
        // numpy (float64):
        //   X = [[1,2],[-1,.5],[0,-1.5]]; y = [0,2,1]; W = [[.2,-.1,0],[.5,.3,-.4]]; b = [.1,0,-.1]
        //   Z = X@W + b; P = softmax(Z); Y = np.eye(3)[y]
        //   loss = -np.log(P[range(3), y]).mean()
        //   dZ = (P - Y)/3; W1 = W - 0.1 * X.T@dZ; b1 = b - 0.1 * dZ.sum(0)
        let mut head = linear_head();
        let (x, y) = xs();
        let (grads, stats) = batch_gradients(&head, x.view(), &y, None, None);
        assert!((stats.weighted_loss_sum / 3.0 - 1.1287875618).abs() < 1e-6, "{}", stats.weighted_loss_sum / 3.0);
        // argmax(Z) = [0, 1, 2] → only row 0 right.
        assert_eq!(stats.correct, 1);
        sgd_step(&mut head, &grads, 0.1);
        let w1 = array![[0.2241206566, -0.0961690522, -0.0279516044], [0.5271531043, 0.2354361231, -0.3625892274]];
        assert_close(&head.output.weights, &w1, 1e-6);
        let b1 = array![0.0936183339, 0.0027337993, -0.0963521332];
        assert_close(&head.output.bias.clone().insert_axis(Axis(0)), &b1.insert_axis(Axis(0)), 1e-6);
    }

    #[test]
    fn class_weights_scale_each_row_of_the_loss() {
        // numpy: w = np.array([2.0, 0.5, 1.5]); loss = (w[y] * -np.log(P[range(3), y])).sum() / 3
        //        dZ = (P - Y) * w[y][:, None] / 3; gW = X.T @ dZ
        let head = linear_head();
        let (x, y) = xs();
        let weights = [2.0f32, 0.5, 1.5];
        let (grads, stats) = batch_gradients(&head, x.view(), &y, Some(&weights), None);
        assert!((stats.weighted_loss_sum / 3.0 - 1.2731053558).abs() < 1e-6, "{}", stats.weighted_loss_sum / 3.0);
        let gw = array![[-0.4216479565, -0.0094630510, 0.4311110075], [-0.4340289914, 0.6779822839, -0.2439532926]];
        assert_close(&grads.layers[0].0, &gw, 1e-6);
    }

    #[test]
    fn hidden_layer_gradients_match_numpy() {
        // numpy: Z1 = X@W1 + b1; H = np.maximum(Z1, 0); Z = H@W2 + b2; P = softmax(Z)
        //        dZ = (P - Y)/3; gW2 = H.T@dZ; gb2 = dZ.sum(0)
        //        dH = dZ@W2.T * (Z1 > 0); gW1 = X.T@dH; gb1 = dH.sum(0)
        let hidden = Dense::new(array![[1.0f32, -0.5], [0.25, 0.75]], array![0.0, 0.1]).unwrap();
        let output = Dense::new(array![[0.3f32, -0.2, 0.1], [-0.4, 0.6, 0.2]], array![0.0, 0.05, -0.05]).unwrap();
        let head = Head::new(Some(hidden), output).unwrap();
        let (x, y) = xs();
        let (grads, stats) = batch_gradients(&head, x.view(), &y, None, None);
        assert!((stats.weighted_loss_sum / 3.0 - 1.1892122671).abs() < 1e-6, "{}", stats.weighted_loss_sum / 3.0);
        let gw1 = array![[-0.0880701573, 0.1684839589], [-0.1761403145, 0.4150511660]];
        let gb1 = array![[-0.0880701573, 0.2309505575]];
        let gw2 = array![[-0.3703067183, 0.1934796408, 0.1768270775], [-0.2124086714, 0.3067406200, -0.0943319486]];
        let gb2 = array![[-0.0751863244, 0.0814463298, -0.0062600055]];
        assert_close(&grads.layers[0].0, &gw1, 1e-6);
        assert_close(&grads.layers[0].1.clone().insert_axis(Axis(0)), &gb1, 1e-6);
        assert_close(&grads.layers[1].0, &gw2, 1e-6);
        assert_close(&grads.layers[1].1.clone().insert_axis(Axis(0)), &gb2, 1e-6);
    }

    #[test]
    fn dropout_is_inverted_and_seeded() {
        let mut mask = Array2::<f32>::ones((100, 100));
        let scale = drop_units(&mut mask, Dropout { rate: 0.25, rng: &mut StdRng::seed_from_u64(9) });
        assert_eq!(scale, 1.0 / 0.75);
        assert!(mask.iter().all(|&m| m == 0.0 || m == scale));
        let dropped = mask.iter().filter(|&&m| m == 0.0).count();
        assert!((2300..2700).contains(&dropped), "{dropped}");
        let mut again = Array2::<f32>::ones((100, 100));
        drop_units(&mut again, Dropout { rate: 0.25, rng: &mut StdRng::seed_from_u64(9) });
        assert_eq!(mask, again);
    }

    #[test]
    fn hidden_layer_gradients_with_dropout_match_numpy() {
        // The mask is random, so the reference re-derives the gradients from the formulas with
        // the same mask M (drawn again from the same seed), written out independently here:
        //   Hd = relu(Z1) ∘ M; P = softmax(Hd·W2 + b2); dZ = (P − Y)/n
        //   gW2 = Hdᵀ·dZ; dH = dZ·W2ᵀ ∘ M ∘ [Z1 > 0]; gW1 = Xᵀ·dH
        let hidden = Dense::new(array![[1.0f32, -0.5], [0.25, 0.75]], array![0.0, 0.1]).unwrap();
        let output = Dense::new(array![[0.3f32, -0.2, 0.1], [-0.4, 0.6, 0.2]], array![0.0, 0.05, -0.05]).unwrap();
        let head = Head::new(Some(hidden.clone()), output.clone()).unwrap();
        let x = array![[1.0f32, 2.0], [-1.0, 0.5], [0.5, 1.5], [2.0, 0.0]];
        let y = [0, 2, 1, 1];
        let (grads, _) =
            batch_gradients(&head, x.view(), &y, None, Some(Dropout { rate: 0.5, rng: &mut StdRng::seed_from_u64(4) }));
        let mut mask = Array2::<f32>::ones((4, 2));
        drop_units(&mut mask, Dropout { rate: 0.5, rng: &mut StdRng::seed_from_u64(4) });
        assert!(mask.iter().any(|&m| m == 0.0) && mask.iter().any(|&m| m == 2.0), "{mask}");

        let z1 = x.dot(&hidden.weights) + &hidden.bias;
        let hd = z1.mapv(|v| v.max(0.0)) * &mask;
        let mut p = hd.dot(&output.weights) + &output.bias;
        crate::train::head::softmax_rows(&mut p);
        let mut dz = p;
        for (i, &label) in y.iter().enumerate() {
            dz[[i, label]] -= 1.0;
        }
        dz /= 4.0;
        let gw2 = hd.t().dot(&dz);
        let gate = z1.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
        let dh = dz.dot(&output.weights.t()) * &mask * &gate;
        let gw1 = x.t().dot(&dh);
        let near = |a: &Array2<f32>, b: &Array2<f32>| a.iter().zip(b).all(|(u, v)| (u - v).abs() < 1e-6);
        assert!(near(&grads.layers[1].0, &gw2), "{}\n{gw2}", grads.layers[1].0);
        assert!(near(&grads.layers[0].0, &gw1), "{}\n{gw1}", grads.layers[0].0);
    }

    #[test]
    fn dropout_changes_the_gradient_only_when_asked() {
        let head = linear_head();
        let (x, y) = xs();
        let (plain, _) = batch_gradients(&head, x.view(), &y, None, None);
        let mut rng = StdRng::seed_from_u64(1);
        let (zero_rate, _) = batch_gradients(&head, x.view(), &y, None, Some(Dropout { rate: 0.0, rng: &mut rng }));
        assert_eq!(plain.layers[0].0, zero_rate.layers[0].0);
        let (dropped, _) = batch_gradients(&head, x.view(), &y, None, Some(Dropout { rate: 0.5, rng: &mut rng }));
        assert_ne!(plain.layers[0].0, dropped.layers[0].0);
    }

    #[test]
    fn evaluate_split_is_mean_cross_entropy_and_accuracy() {
        let head = linear_head();
        let (x, y) = xs();
        let (loss, accuracy) = evaluate_split(&head, x.view(), &y);
        assert!((f64::from(loss) - 1.1287875618).abs() < 1e-6);
        assert!((accuracy - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(evaluate_split(&head, Array2::zeros((0, 2)).view(), &[]), (0.0, 0.0));
    }

    #[test]
    fn cross_entropy_is_finite_for_extreme_logits() {
        let mut logits = array![[0.0f32, 200.0, -200.0]];
        let (losses, correct) = softmax_cross_entropy(&mut logits, &[2]);
        // −log softmax = logsumexp − z = (200 + log(1 + e^-200 + e^-400)) + 200 = 400
        assert!((losses[0] - 400.0).abs() < 1e-3);
        assert_eq!(correct, 0);
    }
}
