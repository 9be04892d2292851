//! A job's `"quantize": true`: the served base (the base, or the base phase 2 tuned)
//! quantised to INT8 (QDQ) with ranges calibrated on the job's own train split, loaded beside
//! the FP32 base so that the head can be tested (a frozen classifier's also trained) on its
//! features, and the verdict that decides which precision is served.

use sha2::{Digest, Sha256};

use super::context::{Failure, Run, compute_features};
use super::evaluation::{JobEvaluation, QuantizationVerdict, TestFigures};
use super::features::{FeatureRequest, PixelSource};
use super::spec::DEFAULT_MAX_ACCURACY_DROP;
use crate::onnx::quantize::{QuantizeOptions, plan, quantize};
use crate::quantize::MAX_IMAGE_BYTES;
use crate::quantize::calibrate::{Method, calibrate};
use crate::serving::{ImageFeatures, LoadedModel};
use crate::vision::tensor_len;

/// Train images calibration reads at most (`graft models quantize`'s default too).
const CALIBRATION_IMAGES: usize = 256;
/// The calibration method jobs use.
const METHOD: Method = Method::DEFAULT;

/// The INT8 base of a job: its QDQ graph (stored as the model's tuned base when served) and
/// the loaded model that computes its features.
pub(super) struct Int8Base {
    pub bytes: Vec<u8>,
    pub model: LoadedModel,
    pub calibration_images: usize,
    /// Holds the graph's file while the job runs.
    _file: tempfile::NamedTempFile,
}

/// Quantises the FP32 base `graph` (the job's base file when `None`) on up to
/// `CALIBRATION_IMAGES` of its train images (as they are, with the job's geometry; fewer for
/// inputs so large that they would pass `MAX_IMAGE_BYTES`) and loads the result.
pub(super) fn int8_base(run: &Run<'_>, graph: Option<&[u8]>) -> Result<Int8Base, Failure> {
    let failed = |reason: String| Failure::Failed(format!("quantize: {reason}"));
    let Run { ctx, job, spec, splits, model, .. } = run;
    let preprocessing = spec.preprocessing(&model.manifest.preprocessing);
    let pixels = PixelSource {
        blobs: &ctx.blobs,
        augmentation: None,
        decode_limits: &ctx.decode_limits,
        preprocessing: &preprocessing,
    };
    // As `graft models quantize`, the preprocessed images held at once stay within its bound.
    let image_bytes = tensor_len(&preprocessing) * 4;
    let count = CALIBRATION_IMAGES.min(MAX_IMAGE_BYTES / image_bytes.max(1)).max(1);
    let mut images = Vec::new();
    for item in splits.train.iter().take(count) {
        let mut slot = vec![0.0; tensor_len(&preprocessing)];
        let request = FeatureRequest { sha256: item.sha256.clone(), variant: 0 };
        pixels.write(&request, &mut slot).map_err(failed)?;
        images.push(slot);
    }
    let fp32 = match graph {
        Some(bytes) => bytes.to_vec(),
        None => std::fs::read(&model.manifest.file).map_err(|e| failed(e.to_string()))?,
    };
    let options = QuantizeOptions::default();
    let tensors = plan(&fp32, &options).map_err(|e| failed(e.to_string()))?.tensors;
    let runtime = ctx.registry.runtime();
    let ranges =
        calibrate(&runtime.env, &model.manifest, &fp32, &images, &tensors, METHOD, &runtime.options).map_err(failed)?;
    let (bytes, _) = quantize(&fp32, &ranges, &options).map_err(|e| failed(e.to_string()))?;
    let mut file = tempfile::Builder::new().suffix(".onnx").tempfile().map_err(|e| failed(e.to_string()))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(|e| failed(e.to_string()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let name = format!("{}.int8-base", job.model_name);
    let model =
        ctx.registry.load_variant(&model.manifest, &name, file.path().to_owned(), Some(sha256)).map_err(failed)?;
    Ok(Int8Base { bytes, model, calibration_images: images.len(), _file: file })
}

/// Judges the INT8 copy of the served base `graph` (the tuned base; the job's base when
/// `None`) with the head as it was trained: `figures` computes the test figures from the
/// test split's features (pooled, and the spatial map when `with_spatial`), and the INT8
/// accuracy is held against `evaluation`'s. The evaluation gets the verdict, and the INT8
/// figures when INT8 is served; the INT8 graph is returned then, to be stored as the tuned base.
pub(super) fn judge_trained_head(
    run: Run<'_>,
    graph: Option<&[u8]>,
    with_spatial: bool,
    figures: impl Fn(&[ImageFeatures]) -> Result<TestFigures, String>,
    evaluation: &mut JobEvaluation,
) -> Result<Option<Vec<u8>>, Failure> {
    run.progress.phase("quantizing");
    let int8 = int8_base(&run, graph)?;
    let run8 = Run { model: &int8.model, ..run };
    let (features, _, _) = compute_features(run8, &run.splits.test_requests(), with_spatial)?;
    let int8_figures = figures(&features).map_err(|e| Failure::Failed(format!("quantize: {e}")))?;
    let fp32_accuracy = evaluation.test.test.accuracy;
    let mut verdict =
        verdict(fp32_accuracy, int8_figures.test.accuracy, run.spec.max_accuracy_drop, int8.calibration_images);
    // A localizer's boxes, for the record: the verdict is on class accuracy.
    verdict.fp32_test_mean_iou = evaluation.test.test_boxes.as_ref().map(|b| b.mean_iou);
    verdict.int8_test_mean_iou = int8_figures.test_boxes.as_ref().map(|b| b.mean_iou);
    let served = verdict.served == "int8";
    evaluation.quantization = Some(verdict);
    Ok(served.then(|| {
        evaluation.test = int8_figures;
        int8.bytes
    }))
}

/// INT8 is served when it loses at most `max_drop` points of test accuracy.
pub(super) fn verdict(fp32: f32, int8: f32, max_drop: Option<f64>, calibration_images: usize) -> QuantizationVerdict {
    let max_accuracy_drop = max_drop.unwrap_or(DEFAULT_MAX_ACCURACY_DROP);
    let accuracy_drop = (f64::from(fp32) - f64::from(int8)) * 100.0;
    let served = if accuracy_drop <= max_accuracy_drop + 1e-9 { "int8" } else { "fp32" };
    let reason = (served == "fp32").then(|| {
        format!(
            "the INT8 base's test accuracy is {accuracy_drop:.2} points under FP32's, more than max_accuracy_drop \
             ({max_accuracy_drop}): the FP32 base is served"
        )
    });
    QuantizationVerdict {
        served,
        fp32_test_accuracy: fp32,
        int8_test_accuracy: int8,
        accuracy_drop,
        max_accuracy_drop,
        calibration_images,
        method: METHOD.as_str(),
        fp32_test_mean_iou: None,
        int8_test_mean_iou: None,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_is_served_within_the_allowed_drop_only() {
        let within = verdict(0.90, 0.895, None, 100);
        assert_eq!((within.served, within.reason.is_none()), ("int8", true));
        assert!((within.accuracy_drop - 0.5).abs() < 1e-4, "{}", within.accuracy_drop);
        let over = verdict(0.90, 0.88, None, 100);
        assert_eq!(over.served, "fp32");
        assert!(over.reason.unwrap().contains("2.00 points"));
        assert_eq!(verdict(0.90, 0.88, Some(2.5), 100).served, "int8");
        assert_eq!(verdict(0.80, 0.85, Some(0.0), 100).served, "int8", "a gain is no drop");
    }
}
