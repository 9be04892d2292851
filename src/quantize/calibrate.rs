//! Calibration: the FP32 model run by ONNX Runtime on calibration images with every tensor
//! the plan quantises exposed as an output, and each tensor's range read from what it held —
//! its minimum and maximum, the percentile bounds of a histogram over them, or the clipped
//! range whose 256-level quantisation loses the least information (entropy).

use std::collections::HashMap;

use ort::value::Tensor;

use crate::onnx::expose_outputs;
use crate::onnx::quantize::Range;
use crate::runtime::{ModelSession, ModelSource, SessionOptions, open_session};
use crate::vision::Layout;
use crate::zoo::Manifest;

/// How a tensor's range is read from what it held.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The smallest and largest value seen.
    Minmax,
    /// The bounds that leave out the rarest 0.01 % of values (half at each end): a few
    /// outliers no longer stretch the scale for everything else.
    Percentile,
    /// The range, shrunk from the extremes towards zero, whose 256-level quantisation of the
    /// histogram diverges least from it (Kullback–Leibler): clipping trades rare large values
    /// for finer steps where most values are.
    Entropy,
}

impl Method {
    /// What `graft models quantize` and jobs use unless told otherwise: it measured best on
    /// EfficientNet-Lite0 (README, "Quantisation").
    pub const DEFAULT: Method = Method::Minmax;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minmax => "minmax",
            Self::Percentile => "percentile",
            Self::Entropy => "entropy",
        }
    }
}

/// The share of values `Percentile` leaves out, both ends together.
const PERCENTILE_TAIL: f64 = 1e-4;
/// Histogram bins per tensor for `Percentile` and `Entropy`.
const BINS: usize = 2048;
/// Images per calibration run: every quantised tensor of a batch is held at once.
const BATCH: usize = 4;

/// One image's dimensions after the batch, in the manifest's layout.
pub fn image_dims(manifest: &Manifest) -> [usize; 3] {
    let (h, w) = (manifest.preprocessing.height as usize, manifest.preprocessing.width as usize);
    match manifest.preprocessing.layout {
        Layout::Nchw => [3, h, w],
        Layout::Nhwc => [h, w, 3],
    }
}

/// Runs `count` images of `pixels` and returns the named outputs' values.
pub fn run_batch(
    session: &mut ModelSession,
    manifest: &Manifest,
    pixels: Vec<f32>,
    count: usize,
    outputs: &[&str],
) -> Result<Vec<Vec<f32>>, String> {
    let [a, b, c] = image_dims(manifest);
    let input = Tensor::from_array(([count, a, b, c], pixels)).map_err(|e| e.to_string())?;
    let answer = session
        .session
        .run(ort::inputs![manifest.input_name.as_str() => input])
        .map_err(|e| format!("ONNX Runtime failed: {e}"))?;
    outputs
        .iter()
        .map(|name| {
            let value = answer.get(*name).ok_or_else(|| format!("the model produced no output named {name}"))?;
            let (_, values) = value.try_extract_tensor::<f32>().map_err(|e| format!("output {name}: {e}"))?;
            Ok(values.to_vec())
        })
        .collect()
}

/// The calibrated range of every tensor in `tensors`, from `images` (preprocessed, one
/// `Vec` each). The graph's input is read from the images themselves.
pub fn calibrate(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    model_bytes: &[u8],
    images: &[Vec<f32>],
    tensors: &[String],
    method: Method,
    options: &SessionOptions,
) -> Result<HashMap<String, Range>, String> {
    if images.is_empty() {
        return Err("calibration needs at least one image".into());
    }
    let exposed: Vec<&str> = tensors.iter().map(String::as_str).filter(|t| *t != manifest.input_name).collect();
    let edited = expose_outputs(model_bytes, &exposed).map_err(|e| e.to_string())?;
    let mut session = open_session(env, ModelSource::Edited { path: &manifest.file, bytes: &edited }, options)
        .map_err(|e| e.to_string())?;
    let mut each_batch = |visit: &mut dyn FnMut(&str, &[f32])| -> Result<(), String> {
        for batch in images.chunks(BATCH) {
            let pixels: Vec<f32> = batch.concat();
            for (name, values) in
                exposed.iter().zip(run_batch(&mut session, manifest, pixels.clone(), batch.len(), &exposed)?)
            {
                visit(name, &values);
            }
            if tensors.contains(&manifest.input_name) {
                visit(&manifest.input_name, &pixels);
            }
        }
        Ok(())
    };
    // Pass 1: the extremes.
    let mut extremes: HashMap<String, Range> = HashMap::new();
    each_batch(&mut |name, values| {
        let range = extremes.entry(name.to_owned()).or_insert(Range { min: f32::INFINITY, max: f32::NEG_INFINITY });
        for &v in values {
            range.min = range.min.min(v);
            range.max = range.max.max(v);
        }
    })?;
    if method == Method::Minmax {
        return Ok(extremes);
    }
    // Pass 2: a histogram over each tensor's extremes, and the bounds the method reads from it.
    let mut histograms: HashMap<String, Vec<u64>> = HashMap::new();
    each_batch(&mut |name, values| {
        let Some(range) = extremes.get(name) else { return };
        let bins = histograms.entry(name.to_owned()).or_insert_with(|| vec![0; BINS]);
        let width = (range.max - range.min).max(f32::MIN_POSITIVE);
        // Exact zeros (a Relu's floor, most of its values) are exact at any scale, since zero
        // is always a level: counted, they would make every merge of their bin look costly.
        for &v in values.iter().filter(|&&v| v != 0.0 || method == Method::Percentile) {
            let bin = (((v - range.min) / width) * BINS as f32) as usize;
            bins[bin.min(BINS - 1)] += 1;
        }
    })?;
    Ok(extremes
        .into_iter()
        .map(|(name, range)| {
            let bounded = histograms.get(&name).map_or(range, |bins| match method {
                Method::Entropy => entropy_bounds(range, bins),
                _ => percentile_bounds(range, bins),
            });
            (name, bounded)
        })
        .collect())
}

/// The range whose ends leave out `PERCENTILE_TAIL / 2` of the values each.
fn percentile_bounds(range: Range, bins: &[u64]) -> Range {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return range;
    }
    let tail = (total as f64 * PERCENTILE_TAIL / 2.0) as u64;
    let width = (range.max - range.min) / bins.len() as f32;
    let mut seen = 0;
    let low = bins.iter().position(|&count| {
        seen += count;
        seen > tail
    });
    let mut seen = 0;
    let high = bins.iter().rposition(|&count| {
        seen += count;
        seen > tail
    });
    match (low, high) {
        (Some(low), Some(high)) => {
            Range { min: range.min + low as f32 * width, max: range.min + (high + 1) as f32 * width }
        }
        _ => range,
    }
}

/// Quantisation levels of an 8-bit tensor.
const LEVELS: usize = 256;
/// Candidate ranges `entropy_bounds` compares.
const ENTROPY_CANDIDATES: usize = 128;

/// The range `[min·s, max·s]` (0 < s ≤ 1: zero stays where it is, so a Relu's output keeps
/// its floor) whose quantisation to `LEVELS` steps loses the least of the histogram: values
/// past the range are clipped into its end bins, and the divergence KL(P ‖ Q) of the
/// clipped histogram P from Q, P spread evenly over the occupied bins of each step, is the
/// loss. The widest candidate is the observed range itself.
fn entropy_bounds(range: Range, bins: &[u64]) -> Range {
    let n = bins.len();
    if n < LEVELS || bins.iter().sum::<u64>() == 0 || range.max <= range.min {
        return range;
    }
    let width = (range.max - range.min) / n as f32;
    // The bin position of zero (clamped: a range that does not hold zero shrinks towards
    // its end nearest to zero).
    let zero = (-range.min / width).clamp(0.0, n as f32);
    let mut best = (f64::INFINITY, range);
    for candidate in 0..ENTROPY_CANDIDATES {
        // s from LEVELS / n (each step one bin) to 1, evenly.
        let smallest = LEVELS as f32 / n as f32;
        let s = smallest + (1.0 - smallest) * candidate as f32 / (ENTROPY_CANDIDATES - 1) as f32;
        let start = (zero * (1.0 - s)).round() as usize;
        let end = ((zero + (n as f32 - zero) * s).round() as usize).min(n);
        if end < start + LEVELS {
            continue;
        }
        let divergence = clipped_divergence(bins, start, end);
        if divergence < best.0 {
            let bounds = Range { min: range.min + start as f32 * width, max: range.min + end as f32 * width };
            best = (divergence, bounds);
        }
    }
    best.1
}

/// KL(P ‖ Q) between P, the histogram clipped to `bins[start..end]` (the mass outside added
/// to the end bins), and Q, the same slice without that mass quantised to `LEVELS` steps
/// (each step's count spread evenly over the bins P occupies): what clipping moves to the
/// ends and what merging bins blurs both count.
fn clipped_divergence(bins: &[u64], start: usize, end: usize) -> f64 {
    let sliced: Vec<f64> = bins[start..end].iter().map(|&c| c as f64).collect();
    let mut p = sliced.clone();
    let last = p.len() - 1;
    p[0] += bins[..start].iter().sum::<u64>() as f64;
    p[last] += bins[end..].iter().sum::<u64>() as f64;
    let mut q = vec![0.0; p.len()];
    for level in 0..LEVELS {
        let (from, to) = (level * p.len() / LEVELS, (level + 1) * p.len() / LEVELS);
        let occupied = p[from..to].iter().filter(|&&c| c > 0.0).count();
        if occupied == 0 {
            continue;
        }
        let share = sliced[from..to].iter().sum::<f64>() / occupied as f64;
        for (q, _) in q[from..to].iter_mut().zip(&p[from..to]).filter(|(_, p)| **p > 0.0) {
            *q = share;
        }
    }
    let (p_total, q_total) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if q_total == 0.0 {
        return f64::INFINITY;
    }
    // A bin P holds and Q does not (clipped mass in an empty end bin) costs as if Q held a
    // ten-thousandth of an even share there, instead of an infinite divergence.
    let floor = 1e-4 / p.len() as f64;
    p.iter()
        .zip(&q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| {
            let (p, q) = (p / p_total, (q / q_total).max(floor));
            p * (p / q).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_bounds_leave_out_the_rare_extremes() {
        // 1,000,000 values over [0, 2048): one outlier bin at each end of 10 values.
        let mut bins = vec![0u64; 2048];
        bins[0] = 10;
        bins[2047] = 10;
        for bin in &mut bins[100..200] {
            *bin = 9_999;
        }
        let range = Range { min: 0.0, max: 2048.0 };
        let bounded = percentile_bounds(range, &bins);
        assert_eq!(bounded, Range { min: 100.0, max: 200.0 }, "each end drops 50 values");
        // With no rare tail, the extremes stay.
        assert_eq!(percentile_bounds(range, &[5; 2048]), range);
    }

    #[test]
    fn entropy_clips_a_rare_far_tail_and_keeps_a_dense_range() {
        // Values of a Relu output: dense over [0, 256) bins, a few outliers far out at 2040.
        let mut bins = vec![0u64; 2048];
        for (i, bin) in bins[..256].iter_mut().enumerate() {
            *bin = 1_000 + (i as u64 % 7) * 100;
        }
        bins[2040] = 3;
        let range = Range { min: 0.0, max: 2048.0 };
        let bounded = entropy_bounds(range, &bins);
        assert_eq!(bounded.min, 0.0, "a Relu's floor stays at zero");
        assert!(bounded.max < 400.0, "the far outliers are clipped: {bounded:?}");
        assert!(bounded.max >= 256.0, "the dense part is kept whole: {bounded:?}");
        // A histogram spread evenly to its extremes keeps them.
        let even = entropy_bounds(range, &[5; 2048]);
        assert!(even.max > 2000.0 && even.min == 0.0, "{even:?}");
    }

    #[test]
    fn entropy_shrinks_both_ends_around_zero() {
        // Symmetric around zero (bin 1024), dense in the middle quarter, rare far tails.
        let mut bins = vec![0u64; 2048];
        for bin in &mut bins[896..1152] {
            *bin = 10_000;
        }
        bins[0] = 2;
        bins[2047] = 2;
        let bounded = entropy_bounds(Range { min: -1024.0, max: 1024.0 }, &bins);
        assert!(bounded.min <= -128.0 && bounded.min > -400.0, "{bounded:?}");
        assert!((bounded.min + bounded.max).abs() <= 2.0, "zero stays in the middle: {bounded:?}");
    }

    #[test]
    fn divergence_is_zero_when_each_step_holds_one_bin() {
        let bins: Vec<u64> = (0..256).map(|i| i as u64 + 1).collect();
        assert!(clipped_divergence(&bins, 0, 256).abs() < 1e-12);
        // Merging two unequal bins into one step loses information.
        let pairs: Vec<u64> = (0..512).map(|i| if i % 2 == 0 { 1 } else { 3 }).collect();
        assert!(clipped_divergence(&pairs, 0, 512) > 0.1);
    }
}
