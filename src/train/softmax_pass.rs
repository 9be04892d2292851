//! The pass over the training rows that the convex fit spends nearly all its time in: the
//! softmax-regression loss and its gradient. For each block of rows small enough to stay in
//! the core's cache it computes the class scores X·Wᵀ + b, the loss and the per-row gradient
//! G = w·(softmax − onehot), and adds Gᵀ·X to the gradient while the rows are still in
//! cache, so the rows are read from memory once per evaluation rather than twice. The rows
//! are split into one contiguous share per thread of rayon's pool, each summed into its own
//! gradient and the shares added in order, so a result does not depend on scheduling.
//!
//! Rows are stored as f32, or as f16 ([`half::f16`]) where a fit only has to rank
//! penalties: reading the rows from memory is what an evaluation waits on, and half the
//! bytes is about a third off its time. Sums are always in f32 or wider.
//!
//! Two general matrix products (ndarray on matrixmultiply) took 3.8 ms an evaluation on
//! 3,000 × 1,280 rows and 10 classes on two cores, packing the rows twice; this pass takes
//! about 2 ms in f32. The products have ten columns, too few for a general kernel, so on
//! x86-64 with AVX2, FMA and F16C (checked at run time) the two products are small
//! register-tiled loops over the rows; elsewhere, plain loops compute the same sums.

use half::f16;
use ndarray::ArrayView2;
use rayon::prelude::*;

/// How a row's values are stored: f32, or f16 for half the memory traffic.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// Eight consecutive values from `ptr`, widened to f32.
    ///
    /// # Safety
    /// AVX2 and F16C are available, and `ptr` points at eight readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract (eight readable values, AVX available).
        unsafe { std::arch::x86_64::_mm256_loadu_ps(ptr) }
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps};
        // SAFETY: the caller's contract (eight readable values, F16C available).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast::<__m128i>())) }
    }
}

/// Rows of about this many bytes make a block: with the block's scores they fit in a core's
/// L2 cache (512 KiB here), where the second product finds them.
const BLOCK_BYTES: usize = 256 * 1024;

/// The training rows of a softmax regression, as the pass reads them.
pub struct Rows<'a, E: Element = f32> {
    /// One row per example, in standard (row-major, contiguous) layout.
    x: ArrayView2<'a, E>,
    labels: &'a [usize],
    /// Per-row weights; `None`: all 1.
    weights: Option<&'a [f32]>,
    /// The sum of the row weights: the loss is their weighted mean.
    total: f64,
}

impl<'a, E: Element> Rows<'a, E> {
    /// `x` must be in standard layout (a contiguous row-major array); `labels` and `weights`
    /// have one entry per row.
    pub fn new(x: ArrayView2<'a, E>, labels: &'a [usize], weights: Option<&'a [f32]>) -> Self {
        assert!(x.is_standard_layout(), "the pass reads rows as contiguous slices");
        assert_eq!(labels.len(), x.nrows(), "one label per row");
        assert!(weights.is_none_or(|w| w.len() == x.nrows()), "one weight per row");
        let total = weights.map_or(x.nrows() as f64, |w| w.iter().map(|&v| f64::from(v)).sum());
        Self { x, labels, weights, total }
    }

    pub fn features(&self) -> usize {
        self.x.ncols()
    }
}

/// The gradient of the mean loss: by weight, class-major (`weights[c·d + j]` for class c and
/// feature j), and by bias.
pub struct Gradient {
    pub weights: Vec<f32>,
    pub bias: Vec<f64>,
}

/// The weighted mean cross-entropy of softmax(X·Wᵀ + b) over `rows`, and its gradient.
/// `weights_t` holds W class-major (k × d), `bias` has k entries.
pub fn loss_and_gradient<E: Element>(rows: &Rows<'_, E>, weights_t: &[f32], bias: &[f32]) -> (f64, Gradient) {
    let (n, d, k) = (rows.x.nrows(), rows.x.ncols(), bias.len());
    assert_eq!(weights_t.len(), k * d, "k × d weights");
    let x = rows.x.as_slice().expect("standard layout, checked in Rows::new");
    let block = (BLOCK_BYTES / (std::mem::size_of::<E>() * d.max(1))).clamp(8, 512);
    // One contiguous share of the blocks per thread, summed in order below.
    let blocks = n.div_ceil(block);
    let share = blocks.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let shares: Vec<(f64, Vec<f32>, Vec<f64>)> = (0..blocks.div_ceil(share))
        .into_par_iter()
        .map(|s| {
            let (mut loss, mut grad_w, mut grad_b) = (0f64, vec![0f32; k * d], vec![0f64; k]);
            let mut scores = vec![0f32; block * k];
            for b in s * share..((s + 1) * share).min(blocks) {
                let start = b * block;
                let end = (start + block).min(n);
                let block_x = &x[start * d..end * d];
                let scores = &mut scores[..(end - start) * k];
                scores_into(block_x, d, weights_t, bias, scores);
                loss += softmax_gradient(rows, start, k, scores, &mut grad_b);
                add_gradient(block_x, d, scores, k, &mut grad_w);
            }
            (loss, grad_w, grad_b)
        })
        .collect();
    let (mut loss, mut weights, mut bias_gradient) = (0f64, vec![0f32; k * d], vec![0f64; k]);
    for (share_loss, share_w, share_b) in shares {
        loss += share_loss;
        weights.iter_mut().zip(&share_w).for_each(|(a, b)| *a += b);
        bias_gradient.iter_mut().zip(&share_b).for_each(|(a, b)| *a += b);
    }
    (loss / rows.total, Gradient { weights, bias: bias_gradient })
}

/// Turns each row of `scores` (rows `first..` of `rows`) into its loss gradient
/// wᵢ·(pᵢ − onehot(yᵢ)) / Σw, adds it to `bias_gradient`, and returns the rows' weighted
/// (unnormalised) cross-entropy.
fn softmax_gradient<E: Element>(
    rows: &Rows<'_, E>,
    first: usize,
    k: usize,
    scores: &mut [f32],
    bias_gradient: &mut [f64],
) -> f64 {
    let mut loss = 0f64;
    for (offset, row) in scores.chunks_exact_mut(k).enumerate() {
        let i = first + offset;
        let weight = rows.weights.map_or(1.0, |w| w[i]);
        let label = rows.labels[i];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let label_score = row[label];
        let mut sum = 0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += f64::from(*v);
        }
        loss += f64::from(weight) * (sum.ln() + f64::from(max - label_score));
        let scale = f64::from(weight) / (sum * rows.total);
        for (j, v) in row.iter_mut().enumerate() {
            let onehot = if j == label { f64::from(weight) / rows.total } else { 0.0 };
            let g = f64::from(*v) * scale - onehot;
            *v = g as f32;
            bias_gradient[j] += g;
        }
    }
    loss
}

/// `scores[r·k + c] = x[r]·weights_t[c] + bias[c]` for the rows of `x` (each `d` long).
fn scores_into<E: Element>(x: &[E], d: usize, weights_t: &[f32], bias: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); the slices' lengths are
        // the shapes the kernel indexes (x: rows × d, weights_t: k × d, scores: rows × k).
        unsafe { avx2::scores(x, d, weights_t, bias.len(), scores) };
        add_bias(scores, bias);
        return;
    }
    portable::scores(x, d, weights_t, bias.len(), scores);
    add_bias(scores, bias);
}

fn add_bias(scores: &mut [f32], bias: &[f32]) {
    for row in scores.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
    }
}

/// `gradient[c·d + j] += Σᵣ g[r·k + c]·x[r·d + j]` over the rows of `x`.
fn add_gradient<E: Element>(x: &[E], d: usize, g: &[f32], k: usize, gradient: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in `scores_into`; gradient is k × d.
        unsafe { avx2::add_gradient(x, d, g, k, gradient) };
        return;
    }
    portable::add_gradient(x, d, g, k, gradient);
}

/// The same sums in plain loops: any CPU, and the reference the fast kernels are tested on.
mod portable {
    use super::Element;

    pub fn scores<E: Element>(x: &[E], d: usize, weights_t: &[f32], k: usize, scores: &mut [f32]) {
        for (row, out) in x.chunks_exact(d).zip(scores.chunks_exact_mut(k)) {
            for (c, o) in out.iter_mut().enumerate() {
                *o = row.iter().zip(&weights_t[c * d..(c + 1) * d]).map(|(a, b)| a.to_f32() * b).sum();
            }
        }
    }

    pub fn add_gradient<E: Element>(x: &[E], d: usize, g: &[f32], k: usize, gradient: &mut [f32]) {
        for (row, gr) in x.chunks_exact(d).zip(g.chunks_exact(k)) {
            for (c, &gc) in gr.iter().enumerate() {
                gradient[c * d..(c + 1) * d].iter_mut().zip(row).for_each(|(o, &v)| *o += gc * v.to_f32());
            }
        }
    }
}

/// Register-tiled kernels for x86-64 with AVX2, FMA and F16C. Scores: two rows by up to six
/// classes per tile, 8 features a step (12 accumulators, the rows loaded once per step and
/// each class's weights once for both rows). Gradient: 16 features by up to six classes per
/// tile, accumulated over the block's rows (the block is in cache). Features beyond the last
/// whole step are summed in scalar code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Element;

    /// Classes per tile: 2 × 6 accumulators plus the loaded values fit the 16 registers.
    const TILE_CLASSES: usize = 6;

    /// `f::<E, C>(args)` with `C` the tile's class count (1 to [`TILE_CLASSES`]) as a constant,
    /// so that each tile's accumulators are a fixed set of registers.
    macro_rules! per_tile {
        ($tile:expr, $f:ident::<$e:ty>($($arg:expr),*)) => {
            match $tile {
                6 => $f::<$e, 6>($($arg),*),
                5 => $f::<$e, 5>($($arg),*),
                4 => $f::<$e, 4>($($arg),*),
                3 => $f::<$e, 3>($($arg),*),
                2 => $f::<$e, 2>($($arg),*),
                _ => $f::<$e, 1>($($arg),*),
            }
        };
    }

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// The sum of the 8 lanes.
    #[inline(always)]
    unsafe fn lane_sum(v: __m256) -> f32 {
        // SAFETY (all intrinsics in this module): the caller runs with AVX2, FMA and F16C, and every
        // pointer offset stays inside the slice it came from (the loops' bounds).
        unsafe {
            let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
        }
    }

    /// Scores of rows `first` and `second` (the same row twice for an odd last row) for the
    /// `C` classes whose weights start at `w` (class-major, `d` each), into `out_first` and
    /// `out_second`.
    #[inline(always)]
    unsafe fn scores_tile<E: Element, const C: usize>(
        first: *const E,
        second: *const E,
        w: *const f32,
        d: usize,
        out_first: &mut [f32],
        out_second: &mut [f32],
    ) {
        unsafe {
            let mut a = [_mm256_setzero_ps(); C];
            let mut b = [_mm256_setzero_ps(); C];
            let whole = d - d % 8;
            let mut j = 0;
            while j < whole {
                let x0 = E::load8(first.add(j));
                let x1 = E::load8(second.add(j));
                for c in 0..C {
                    let wc = _mm256_loadu_ps(w.add(c * d + j));
                    a[c] = _mm256_fmadd_ps(x0, wc, a[c]);
                    b[c] = _mm256_fmadd_ps(x1, wc, b[c]);
                }
                j += 8;
            }
            for c in 0..C {
                let (mut s0, mut s1) = (lane_sum(a[c]), lane_sum(b[c]));
                for j in whole..d {
                    let wc = *w.add(c * d + j);
                    s0 += (*first.add(j)).to_f32() * wc;
                    s1 += (*second.add(j)).to_f32() * wc;
                }
                out_first[c] = s0;
                out_second[c] = s1;
            }
        }
    }

    #[inline(always)]
    unsafe fn scores_classes<E: Element, const C: usize>(
        x: &[E],
        d: usize,
        w: &[f32],
        k: usize,
        c0: usize,
        scores: &mut [f32],
    ) {
        let rows = x.len() / d;
        let mut spare = [0f32; TILE_CLASSES];
        let mut r = 0;
        while r < rows {
            let paired = r + 1 < rows;
            let second = if paired { r + 1 } else { r };
            let (head, tail) = scores.split_at_mut((r + 1) * k);
            let out_first = &mut head[r * k + c0..r * k + c0 + C];
            let out_second = if paired { &mut tail[c0..c0 + C] } else { &mut spare[..C] };
            // SAFETY: rows r and `second` are whole rows of x; w holds C classes of d weights.
            unsafe {
                scores_tile::<E, C>(
                    x.as_ptr().add(r * d),
                    x.as_ptr().add(second * d),
                    w.as_ptr(),
                    d,
                    out_first,
                    out_second,
                )
            };
            r += 2;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<E: Element>(x: &[E], d: usize, weights_t: &[f32], k: usize, scores: &mut [f32]) {
        let mut c0 = 0;
        while c0 < k {
            let tile = (k - c0).min(TILE_CLASSES);
            let w = &weights_t[c0 * d..(c0 + tile) * d];
            // SAFETY: this function's own precondition (AVX2, FMA and F16C).
            unsafe { per_tile!(tile, scores_classes::<E>(x, d, w, k, c0, scores)) }
            c0 += tile;
        }
    }

    /// Adds the block's gradient for features `j..j + 16` of classes `c0..c0 + C`.
    #[inline(always)]
    unsafe fn gradient_tile<E: Element, const C: usize>(
        x: &[E],
        d: usize,
        g: &[f32],
        k: usize,
        c0: usize,
        j: usize,
        gradient: &mut [f32],
    ) {
        unsafe {
            let out = gradient.as_mut_ptr();
            let mut a = [_mm256_setzero_ps(); C];
            let mut b = [_mm256_setzero_ps(); C];
            for c in 0..C {
                a[c] = _mm256_loadu_ps(out.add((c0 + c) * d + j));
                b[c] = _mm256_loadu_ps(out.add((c0 + c) * d + j + 8));
            }
            for (row, gr) in x.chunks_exact(d).zip(g.chunks_exact(k)) {
                let x0 = E::load8(row.as_ptr().add(j));
                let x1 = E::load8(row.as_ptr().add(j + 8));
                for c in 0..C {
                    let gc = _mm256_broadcast_ss(&gr[c0 + c]);
                    a[c] = _mm256_fmadd_ps(x0, gc, a[c]);
                    b[c] = _mm256_fmadd_ps(x1, gc, b[c]);
                }
            }
            for c in 0..C {
                _mm256_storeu_ps(out.add((c0 + c) * d + j), a[c]);
                _mm256_storeu_ps(out.add((c0 + c) * d + j + 8), b[c]);
            }
        }
    }

    #[inline(always)]
    unsafe fn gradient_classes<E: Element, const C: usize>(
        x: &[E],
        d: usize,
        g: &[f32],
        k: usize,
        c0: usize,
        gradient: &mut [f32],
    ) {
        let whole = d - d % 16;
        for j in (0..whole).step_by(16) {
            // SAFETY: j + 16 ≤ d, so every load and store stays inside a row and a class.
            unsafe { gradient_tile::<E, C>(x, d, g, k, c0, j, gradient) };
        }
        for (row, gr) in x.chunks_exact(d).zip(g.chunks_exact(k)) {
            for c in c0..c0 + C {
                let out = &mut gradient[c * d + whole..(c + 1) * d];
                out.iter_mut().zip(&row[whole..]).for_each(|(o, &v)| *o += gr[c] * v.to_f32());
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_gradient<E: Element>(x: &[E], d: usize, g: &[f32], k: usize, gradient: &mut [f32]) {
        let mut c0 = 0;
        while c0 < k {
            let tile = (k - c0).min(TILE_CLASSES);
            // SAFETY: this function's own precondition (AVX2, FMA and F16C).
            unsafe { per_tile!(tile, gradient_classes::<E>(x, d, g, k, c0, gradient)) }
            c0 += tile;
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Shapes with odd rows, features that are not a multiple of 8 or 16, and class counts
    /// that are not a multiple of the tile.
    const SHAPES: [(usize, usize, usize); 5] = [(1, 1, 1), (7, 13, 3), (33, 40, 10), (64, 129, 7), (301, 96, 32)];

    #[test]
    fn the_kernels_compute_the_plain_sums() {
        let mut rng = StdRng::seed_from_u64(11);
        for (n, d, k) in SHAPES {
            let (x, w, g) = (random(n * d, &mut rng), random(k * d, &mut rng), random(n * k, &mut rng));
            check_kernels(&x, &w, &g, (n, d, k));
            // Stored in f16: the same sums of the values as stored.
            let half: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            check_kernels(&half, &w, &g, (n, d, k));
        }
    }

    /// Both kernels, portable and (where the CPU has it) AVX2, against sums in f64 straight
    /// from the definitions.
    fn check_kernels<E: Element + std::fmt::Debug>(x: &[E], w: &[f32], g: &[f32], (n, d, k): (usize, usize, usize)) {
        let value = |i: usize| f64::from(x[i].to_f32());
        let expected_scores: Vec<f64> =
            (0..n * k).map(|i| (0..d).map(|j| value((i / k) * d + j) * f64::from(w[(i % k) * d + j])).sum()).collect();
        let expected_gradient: Vec<f64> =
            (0..k * d).map(|i| (0..n).map(|r| f64::from(g[r * k + i / d]) * value(r * d + i % d)).sum()).collect();
        let what = std::any::type_name::<E>();
        let close = |got: &[f32], expected: &[f64], kernel: &str| {
            for (a, b) in got.iter().zip(expected) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{kernel} on {what} {n}×{d}×{k}: {a} vs {b}"
                );
            }
        };
        let mut scores = vec![0f32; n * k];
        portable::scores(x, d, w, k, &mut scores);
        close(&scores, &expected_scores, "portable scores");
        let mut gradient = vec![0f32; k * d];
        portable::add_gradient(x, d, g, k, &mut gradient);
        close(&gradient, &expected_gradient, "portable gradient");
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            let mut scores = vec![0f32; n * k];
            // SAFETY: AVX2, FMA and F16C are available; the shapes match.
            unsafe { avx2::scores(x, d, w, k, &mut scores) };
            close(&scores, &expected_scores, "avx2 scores");
            let mut gradient = vec![0f32; k * d];
            unsafe { avx2::add_gradient(x, d, g, k, &mut gradient) };
            close(&gradient, &expected_gradient, "avx2 gradient");
        }
    }

    #[test]
    fn the_pass_gives_the_weighted_cross_entropy_and_its_gradient() {
        let mut rng = StdRng::seed_from_u64(12);
        // More rows than one block, so blocks and threads are summed.
        let (n, d, k) = (1500, 50, 4);
        let x = Array2::from_shape_vec((n, d), random(n * d, &mut rng)).unwrap();
        let labels: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
        let weights: Vec<f32> = (0..n).map(|i| 0.5 + (i % 3) as f32).collect();
        let (w, b) = (random(k * d, &mut rng), random(k, &mut rng));
        let rows = Rows::new(x.view(), &labels, Some(&weights));
        let (loss, gradient) = loss_and_gradient(&rows, &w, &b);
        // The same in f64, row by row.
        let total: f64 = weights.iter().map(|&v| f64::from(v)).sum();
        let (mut expected_loss, mut expected_w, mut expected_b) = (0.0, vec![0f64; k * d], vec![0f64; k]);
        for i in 0..n {
            let z: Vec<f64> = (0..k)
                .map(|c| f64::from(b[c]) + (0..d).map(|j| f64::from(x[[i, j]]) * f64::from(w[c * d + j])).sum::<f64>())
                .collect();
            let norm: f64 = z.iter().map(|v| v.exp()).sum();
            let wi = f64::from(weights[i]);
            expected_loss += wi * (norm.ln() - z[labels[i]]) / total;
            for c in 0..k {
                let g = wi * (z[c].exp() / norm - if c == labels[i] { 1.0 } else { 0.0 }) / total;
                expected_b[c] += g;
                for j in 0..d {
                    expected_w[c * d + j] += g * f64::from(x[[i, j]]);
                }
            }
        }
        assert!((loss - expected_loss).abs() < 1e-5, "{loss} vs {expected_loss}");
        for (a, e) in gradient.weights.iter().zip(&expected_w) {
            assert!((f64::from(*a) - e).abs() < 1e-5, "{a} vs {e}");
        }
        for (a, e) in gradient.bias.iter().zip(&expected_b) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
    }
}
