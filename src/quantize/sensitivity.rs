//! Which layers cost the most in INT8: with everything else quantised, each quantised
//! weighted operator is kept in FP32 on its own, and how much closer that brings the model's
//! output to FP32's on a few calibration images is its sensitivity. Keeping the few most
//! sensitive layers in FP32 buys back agreement where it is cheapest to buy.

use std::collections::HashMap;

use crate::onnx::quantize::{QuantizeOptions, Range, quantize, quantized_weighted_nodes};
use crate::runtime::{ModelSource, SessionOptions, open_session};
use crate::zoo::Manifest;

use super::calibrate::run_batch;

/// Calibration images the sensitivity of each layer is measured on.
pub const SENSITIVITY_IMAGES: usize = 32;
/// Images per run.
const BATCH: usize = 8;

/// How far one quantisation's output lies from FP32's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerSensitivity {
    pub node: String,
    /// The mean squared output difference from FP32 with everything else quantised and this
    /// node kept in FP32, over that of the whole quantised model (lower: keeping it helps more).
    pub error_ratio: f64,
}

/// The `count` weighted operators whose FP32 copy brings the quantised model's output
/// closest to FP32's on `images` (at most `SENSITIVITY_IMAGES` are used), most sensitive
/// first, with every candidate's figure. `ranges` must cover every tensor a quantisation with
/// `options` and any one node kept could need (a calibration of the plan with nothing kept).
pub fn most_sensitive(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    model_bytes: &[u8],
    ranges: &HashMap<String, Range>,
    options: &QuantizeOptions,
    images: &[Vec<f32>],
    session: &SessionOptions,
) -> Result<Vec<LayerSensitivity>, String> {
    let images = &images[..images.len().min(SENSITIVITY_IMAGES)];
    let outputs = |bytes: &[u8]| -> Result<Vec<f32>, String> {
        let mut model = open_session(env, ModelSource::Edited { path: &manifest.file, bytes }, session)
            .map_err(|e| e.to_string())?;
        let mut values = Vec::new();
        for batch in images.chunks(BATCH) {
            let output = [manifest.output_name.as_str()];
            values.extend(run_batch(&mut model, manifest, batch.concat(), batch.len(), &output)?.remove(0));
        }
        Ok(values)
    };
    let reference = outputs(model_bytes)?;
    let error = |options: &QuantizeOptions| -> Result<f64, String> {
        let (bytes, _) = quantize(model_bytes, ranges, options).map_err(|e| e.to_string())?;
        let values = outputs(&bytes)?;
        Ok(mean_squared_difference(&reference, &values))
    };
    let whole = error(options)?.max(f64::MIN_POSITIVE);
    let candidates = quantized_weighted_nodes(model_bytes, options).map_err(|e| e.to_string())?;
    let mut found = Vec::with_capacity(candidates.len());
    for node in candidates {
        let mut kept = options.clone();
        kept.keep_nodes.push(node.clone());
        found.push(LayerSensitivity { error_ratio: error(&kept)? / whole, node });
    }
    found.sort_by(|a, b| a.error_ratio.total_cmp(&b.error_ratio));
    Ok(found)
}

fn mean_squared_difference(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    sum / a.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_squared_difference_of_known_vectors() {
        assert_eq!(mean_squared_difference(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0, 3.0, 6.0]), 2.0);
        assert_eq!(mean_squared_difference(&[], &[]), 0.0);
    }
}
