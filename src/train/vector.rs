//! The vector arithmetic of L-BFGS's two-loop recursion: dot products and `y += α·x` over
//! every parameter, 2·memory of each a step, against stored pairs kept in f32 (`x` and `a`
//! below: half the bytes to stream, which is what the recursion waits on once the pairs
//! outgrow the cache) with the iterate in f64. The crate is built for any x86-64; on a CPU
//! with AVX2 (checked at run time) the same loops are compiled for eight-wide vectors.

/// aᵀb, summed in f64.
pub fn dot(a: &[f32], b: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// y += α·x.
pub fn axpy(alpha: f64, x: &[f32], y: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { axpy_avx2(alpha, x, y) };
    }
    axpy_plain(alpha, x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f64]) -> f64 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2(alpha: f64, x: &[f32], y: &mut [f64]) {
    axpy_plain(alpha, x, y)
}

/// aᵀb summed in eight independent lanes: a single running sum is a chain of dependent
/// additions that no compiler may reorder, so it neither vectorises nor pipelines.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (whole_a, whole_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = whole_a.remainder().iter().zip(whole_b.remainder()).map(|(&x, y)| f64::from(x) * y).sum();
    for (x, y) in whole_a.zip(whole_b) {
        for lane in 0..8 {
            lanes[lane] += f64::from(x[lane]) * y[lane];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[inline(always)]
fn axpy_plain(alpha: f64, x: &[f32], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(yi, &xi)| *yi += alpha * f64::from(xi));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_their_definitions_at_every_length() {
        for n in [0, 1, 7, 8, 9, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
            let expected: f64 = (0..n).map(|i| f64::from(a[i]) * b[i]).sum();
            assert!((dot(&a, &b) - expected).abs() < 1e-12, "n = {n}");
            assert!((dot_lanes(&a, &b) - expected).abs() < 1e-12, "n = {n}");
            let mut y = b.clone();
            axpy(2.0, &a, &mut y);
            assert!(y.iter().enumerate().all(|(i, v)| (v - (b[i] + 2.0 * f64::from(a[i]))).abs() < 1e-12), "n = {n}");
        }
    }
}
