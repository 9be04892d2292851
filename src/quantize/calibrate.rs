//! Calibration: the FP32 model run by ONNX Runtime on calibration images with every tensor
//! the plan quantises exposed as an output, and each tensor's range read from what it held —
//! its minimum and maximum, or the percentile bounds of a histogram over them.

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
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minmax => "minmax",
            Self::Percentile => "percentile",
        }
    }
}

/// The share of values `Percentile` leaves out, both ends together.
const PERCENTILE_TAIL: f64 = 1e-4;
/// Histogram bins per tensor for `Percentile`.
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
    // Pass 2: a histogram over each tensor's extremes, and its percentile bounds.
    let mut histograms: HashMap<String, Vec<u64>> = HashMap::new();
    each_batch(&mut |name, values| {
        let Some(range) = extremes.get(name) else { return };
        let bins = histograms.entry(name.to_owned()).or_insert_with(|| vec![0; BINS]);
        let width = (range.max - range.min).max(f32::MIN_POSITIVE);
        for &v in values {
            let bin = (((v - range.min) / width) * BINS as f32) as usize;
            bins[bin.min(BINS - 1)] += 1;
        }
    })?;
    Ok(extremes
        .into_iter()
        .map(|(name, range)| {
            let bounded = histograms.get(&name).map_or(range, |bins| percentile_bounds(range, bins));
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
}
