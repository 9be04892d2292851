//! INT8 bases: a model calibrated on the user's images and rewritten in QDQ form
//! (`onnx::quantize`), checked against its FP32 self on held-out images — top-1 agreement
//! and the speed-up measured at load — and written beside it as `NAME_int8` (manifest and
//! ONNX file, with where it came from). ONNX Runtime fuses the QDQ graph into 8-bit kernels;
//! `fused_nodes` counts them in the optimised graph.

pub mod calibrate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::onnx::proto::ModelProto;
use crate::onnx::quantize::{QuantizeOptions, QuantizeReport, plan, quantize};
use crate::runtime::{ModelSession, ModelSource, SessionOptions, open_session};
use crate::vision::{DecodeLimits, decode_for, preprocess_into, tensor_len};
use crate::zoo::{Manifest, Quantization};
pub use calibrate::Method;

/// What `quantize_model` was asked for.
pub struct QuantizeSettings {
    /// Images used for calibration; the rest of the folder (at most as many) checks agreement.
    pub calibration_images: usize,
    pub method: Method,
    pub options: QuantizeOptions,
    pub session: SessionOptions,
}

/// What `quantize_model` wrote and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeOutcome {
    pub manifest_path: PathBuf,
    pub model_path: PathBuf,
    pub quantization: Quantization,
    pub report: QuantizeReport,
    /// 8-bit operators in the graph ONNX Runtime optimised, by type.
    pub fused_nodes: BTreeMap<String, usize>,
}

/// Decodes and preprocesses every image file in `dir` for `manifest` (files that are not
/// images are skipped), in name order, at most `limit`.
pub fn load_images(dir: &Path, manifest: &Manifest, limit: usize) -> Result<Vec<Vec<f32>>, String> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { folders.push(path) } else { paths.push(path) }
        }
    }
    paths.sort();
    let spec = &manifest.preprocessing;
    let mut images = Vec::new();
    for path in paths {
        if images.len() == limit {
            break;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let Ok(decoded) = decode_for(&bytes, &DecodeLimits::default(), spec) else { continue };
        let mut out = vec![0.0; tensor_len(spec)];
        preprocess_into(&decoded.image, spec, &mut out);
        images.push(out);
    }
    if images.is_empty() {
        return Err(format!("{} holds no image graft can decode", dir.display()));
    }
    Ok(images)
}

/// Quantises `manifest`'s model on `images` (preprocessed), writes `NAME_int8`, and measures it.
pub fn quantize_model(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    images: &[Vec<f32>],
    settings: &QuantizeSettings,
) -> Result<QuantizeOutcome, String> {
    let model_bytes = std::fs::read(&manifest.file).map_err(|e| format!("{}: {e}", manifest.file.display()))?;
    // Calibration on the first images; agreement on the rest (a fifth when there are few).
    let calibration = match images.len() > settings.calibration_images {
        true => settings.calibration_images,
        false => images.len() - images.len() / 5,
    };
    let (calibration_set, held_out) = images.split_at(calibration.clamp(1, images.len()));
    let held_out = if held_out.is_empty() { calibration_set } else { held_out };
    let planned = plan(&model_bytes, &settings.options).map_err(|e| e.to_string())?;
    let ranges = calibrate::calibrate(
        env,
        manifest,
        &model_bytes,
        calibration_set,
        &planned.tensors,
        settings.method,
        &settings.session,
    )?;
    let (quantized, report) = quantize(&model_bytes, &ranges, &settings.options).map_err(|e| e.to_string())?;

    let name = format!("{}_int8", manifest.name);
    let model_path = manifest.file.with_file_name(format!("{name}.onnx"));
    let mut fp32 =
        open_session(env, ModelSource::Edited { path: &manifest.file, bytes: &model_bytes }, &settings.session)
            .map_err(|e| e.to_string())?;
    let mut int8 = open_session(env, ModelSource::Edited { path: &model_path, bytes: &quantized }, &settings.session)
        .map_err(|e| e.to_string())?;
    let (same, checked) = agreement(&mut fp32, &mut int8, manifest, held_out)?;
    let mut speedup = |batch: usize| -> Result<f64, String> {
        let sample: Vec<Vec<f32>> = images.iter().cycle().take(batch).cloned().collect();
        Ok(images_per_second(&mut int8, manifest, &sample)? / images_per_second(&mut fp32, manifest, &sample)?)
    };
    let quantization = Quantization {
        source: manifest.name.clone(),
        method: settings.method.as_str().to_owned(),
        activations: settings.options.activations.as_str().to_owned(),
        calibration_images: calibration_set.len(),
        agreement_images: checked,
        top1_agreement: same as f64 / checked.max(1) as f64,
        speedup_batch1: speedup(1)?,
        speedup_batch8: speedup(8)?,
    };
    let fused_nodes = fused_nodes(env, &model_path, &quantized, &settings.session)?;
    std::fs::write(&model_path, &quantized).map_err(|e| format!("{}: {e}", model_path.display()))?;
    let manifest_path = manifest.manifest_path.with_file_name(format!("{name}.toml"));
    let text = int8_manifest(manifest, &model_path, &quantized, &quantization)?;
    std::fs::write(&manifest_path, text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    Ok(QuantizeOutcome { manifest_path, model_path, quantization, report, fused_nodes })
}

/// How many held-out images get the same top-1 class from both models, of how many.
fn agreement(
    fp32: &mut ModelSession,
    int8: &mut ModelSession,
    manifest: &Manifest,
    images: &[Vec<f32>],
) -> Result<(usize, usize), String> {
    let top1 = |scores: &[f32]| scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let mut same = 0;
    for batch in images.chunks(8) {
        let pixels = batch.concat();
        let output = [manifest.output_name.as_str()];
        let a = calibrate::run_batch(fp32, manifest, pixels.clone(), batch.len(), &output)?.remove(0);
        let b = calibrate::run_batch(int8, manifest, pixels, batch.len(), &output)?.remove(0);
        let classes = a.len() / batch.len();
        same += a.chunks(classes).zip(b.chunks(classes)).filter(|(x, y)| top1(x) == top1(y)).count();
    }
    Ok((same, images.len()))
}

/// Images a second at `images.len()` per run, over about two seconds after a warm-up run.
fn images_per_second(session: &mut ModelSession, manifest: &Manifest, images: &[Vec<f32>]) -> Result<f64, String> {
    let pixels = images.concat();
    let output = [manifest.output_name.as_str()];
    calibrate::run_batch(session, manifest, pixels.clone(), images.len(), &output)?;
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(2) || runs < 3 {
        calibrate::run_batch(session, manifest, pixels.clone(), images.len(), &output)?;
        runs += 1;
    }
    Ok((runs * images.len()) as f64 / started.elapsed().as_secs_f64())
}

/// The 8-bit operators (QLinear…, QGemm, MatMulInteger…) in the graph ONNX Runtime runs.
pub fn fused_nodes(
    env: &ort::environment::Environment,
    path: &Path,
    quantized: &[u8],
    options: &SessionOptions,
) -> Result<BTreeMap<String, usize>, String> {
    let folder = tempfile::tempdir().map_err(|e| e.to_string())?;
    let optimized = folder.path().join("optimized.onnx");
    crate::runtime::save_optimized(env, path, quantized, options, &optimized).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&optimized).map_err(|e| e.to_string())?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let mut counts = BTreeMap::new();
    for node in model.graph.iter().flat_map(|g| &g.node) {
        let op = node.op_type();
        if op.starts_with("QLinear") || op == "QGemm" || op.contains("Integer") {
            *counts.entry(op.to_owned()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// The FP32 manifest with the INT8 file, its checksum, and the `[quantization]` table.
fn int8_manifest(
    manifest: &Manifest,
    model_path: &Path,
    quantized: &[u8],
    quantization: &Quantization,
) -> Result<String, String> {
    let text = std::fs::read_to_string(&manifest.manifest_path).map_err(|e| e.to_string())?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
    let file = model_path.file_name().and_then(|f| f.to_str()).ok_or("the model file name is not UTF-8")?;
    table.insert("file".into(), file.into());
    table.insert("sha256".into(), hex::encode(Sha256::digest(quantized)).into());
    table.remove("url");
    table.insert(
        "description".into(),
        format!(
            "{} — INT8 (QDQ), calibrated on {} images ({}), top-1 agreement {:.1} % on {} held-out",
            manifest.description,
            quantization.calibration_images,
            quantization.method,
            quantization.top1_agreement * 100.0,
            quantization.agreement_images
        )
        .into(),
    );
    let value = toml::Value::try_from(quantization).map_err(|e| e.to_string())?;
    table.insert("quantization".into(), value);
    toml::to_string(&table).map_err(|e| e.to_string())
}
