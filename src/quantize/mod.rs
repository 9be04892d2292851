//! INT8 bases: a model calibrated on the user's images and rewritten in QDQ form
//! (`onnx::quantize`), checked against its FP32 self on held-out images — top-1 agreement
//! and the speed-up measured at load — and written beside it as `NAME_int8` (manifest and
//! ONNX file, with where it came from). ONNX Runtime fuses the QDQ graph into 8-bit kernels;
//! `fused_nodes` counts them in the optimised graph.

pub mod calibrate;
pub mod sensitivity;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::config::StorageSettings;
use crate::data::archive::{ArchiveEntry, ArchiveLimits};
use crate::data::{Split, read_folder};
use crate::onnx::proto::ModelProto;
use crate::onnx::quantize::{QuantizeOptions, QuantizeReport, plan, quantize};
use crate::runtime::{ModelSession, ModelSource, SessionOptions, open_session};
use crate::store::{BlobStore, Db, ItemRecord, image_key, redact};
use crate::vision::{DecodeLimits, image_tensor, tensor_len};
use crate::zoo::{Manifest, OutputKind, Quantization, is_valid_model_name};
pub use calibrate::Method;

/// What `quantize_model` was asked for.
pub struct QuantizeSettings {
    pub method: Method,
    pub options: QuantizeOptions,
    /// Also keep this many of the most sensitive weighted operators in FP32 (`sensitivity`).
    pub keep_sensitive: usize,
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

/// The most bytes of preprocessed images `CalibrationImages` holds (about 3,500 images at 224 ×
/// 224): calibration and the agreement check keep them all in memory.
pub const MAX_IMAGE_BYTES: usize = 2 << 30;

/// The preprocessed images a quantisation calibrates on, and those it checks agreement on.
pub struct CalibrationImages {
    pub calibration: Vec<Vec<f32>>,
    pub held_out: Vec<Vec<f32>>,
    /// Entries passed over: not images, links, hidden or too large files.
    pub skipped: usize,
}

impl CalibrationImages {
    /// The image files in `dir`, in name order: the first `count` calibrate, as many more
    /// (or a fifth of them, at least one, when the folder has no more) are held out. The
    /// folder is read as dataset folders are (no links followed, hidden and oversized files
    /// skipped, bounded in entries and bytes); files that are not images are skipped and
    /// counted.
    pub fn from_folder(dir: &Path, manifest: &Manifest, count: usize) -> Result<Self, String> {
        check_image_bytes(manifest, 2 * count)?;
        // The first `2 × count` by path: the walk's order is not the names' order.
        let mut images: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut skipped = 0;
        let mut visit = |entry: ArchiveEntry| {
            let ArchiveEntry::File(file) = entry else {
                skipped += 1;
                return Ok(());
            };
            match image_tensor(&file.bytes, &DecodeLimits::default(), &manifest.preprocessing) {
                Ok(tensor) => {
                    images.insert(file.path, tensor);
                    if images.len() > 2 * count {
                        images.pop_last();
                    }
                }
                Err(_) => skipped += 1,
            }
            Ok(())
        };
        read_folder(dir, &ArchiveLimits::default(), &mut visit).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut calibration: Vec<Vec<f32>> = images.into_values().collect();
        if calibration.len() < 2 {
            return Err(format!(
                "{} holds {} image(s) graft can decode; calibration and the agreement check need at least 2",
                dir.display(),
                calibration.len()
            ));
        }
        let kept = match calibration.len() > count {
            true => count,
            false => calibration.len() - (calibration.len() / 5).max(1),
        };
        let held_out = calibration.split_off(kept);
        Ok(Self { calibration, held_out, skipped })
    }

    /// A stored dataset's images: the first `count` of its train split calibrate, and up to
    /// as many of its valid and test images are held out.
    pub fn from_dataset(
        blobs: &BlobStore,
        items: &[ItemRecord],
        manifest: &Manifest,
        count: usize,
    ) -> Result<Self, String> {
        check_image_bytes(manifest, 2 * count)?;
        let (train, rest): (Vec<&ItemRecord>, Vec<&ItemRecord>) =
            items.iter().partition(|item| item.split == Split::Train.as_str());
        let mut skipped = 0;
        let mut read = |items: Vec<&ItemRecord>| -> Vec<Vec<f32>> {
            let mut images = Vec::new();
            for item in items {
                if images.len() == count {
                    break;
                }
                let bytes = blobs.get(&image_key(&item.sha256));
                match bytes.map_err(|e| e.to_string()).and_then(|bytes| {
                    image_tensor(&bytes, &DecodeLimits::default(), &manifest.preprocessing).map_err(|e| e.to_string())
                }) {
                    Ok(tensor) => images.push(tensor),
                    Err(_) => skipped += 1,
                }
            }
            images
        };
        let (calibration, held_out) = (read(train), read(rest));
        if calibration.is_empty() || held_out.is_empty() {
            return Err(format!(
                "the dataset has {} train and {} valid or test image(s) graft can read; calibration and the \
                 agreement check need at least one of each",
                calibration.len(),
                held_out.len()
            ));
        }
        Ok(Self { calibration, held_out, skipped })
    }
}

/// The blob store and the items of the dataset `id` in `storage`, for
/// [`CalibrationImages::from_dataset`]; an error names both places looked in when `id` is
/// neither a folder nor a dataset there.
pub async fn dataset_items(storage: &StorageSettings, id: &str) -> Result<(BlobStore, Vec<ItemRecord>), String> {
    let missing = || {
        format!(
            "{id} is neither a folder nor a dataset in {} (--data-dir / DATABASE_URL)",
            redact(&storage.database_url())
        )
    };
    let database = storage.database_url.is_some() || storage.data_dir.join("graft.db").is_file();
    if !database {
        return Err(missing());
    }
    let db = Db::connect(&storage.database_url()).await.map_err(|e| e.to_string())?;
    let blobs = storage.blob_store().map_err(|e| e.to_string())?;
    if db.dataset(id).await.map_err(|e| e.to_string())?.is_none() {
        return Err(missing());
    }
    let items = db.dataset_items(id).await.map_err(|e| e.to_string())?;
    Ok((blobs, items))
}

/// Refuses to hold more than `MAX_IMAGE_BYTES` of `manifest`'s preprocessed images.
fn check_image_bytes(manifest: &Manifest, images: usize) -> Result<(), String> {
    let image_bytes = tensor_len(&manifest.preprocessing) * 4;
    if images.saturating_mul(image_bytes) > MAX_IMAGE_BYTES {
        return Err(format!(
            "{images} images of {image_bytes} bytes each (preprocessed) are more than the {MAX_IMAGE_BYTES} bytes \
             calibration may hold; use fewer --images"
        ));
    }
    Ok(())
}

/// Quantises `manifest`'s model on `images.calibration`, writes `NAME_int8`, and measures it
/// (agreement on `images.held_out`).
pub fn quantize_model(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    images: &CalibrationImages,
    settings: &QuantizeSettings,
) -> Result<QuantizeOutcome, String> {
    if manifest.quantization.is_some() {
        return Err(format!("{} is already an INT8 model (quantise its source, {0}'s FP32 model)", manifest.name));
    }
    let name = format!("{}_int8", manifest.name);
    if !is_valid_model_name(&name) {
        return Err(format!("{name} is not a valid model name (at most 128 characters)"));
    }
    let (calibration_set, held_out) = (&images.calibration[..], &images.held_out[..]);
    if calibration_set.is_empty() || held_out.is_empty() {
        return Err("calibration and the agreement check need at least one image each".into());
    }
    let model_bytes = std::fs::read(&manifest.file).map_err(|e| format!("{}: {e}", manifest.file.display()))?;
    // With `keep_sensitive`, ranges for every tensor any choice of kept layers could need.
    let widest =
        QuantizeOptions { keep_first: Some(0), keep_classifier: false, keep_nodes: Vec::new(), ..settings.options };
    let calibrated = if settings.keep_sensitive > 0 { &widest } else { &settings.options };
    let planned = plan(&model_bytes, calibrated).map_err(|e| e.to_string())?;
    let ranges = calibrate::calibrate(
        env,
        manifest,
        &model_bytes,
        calibration_set,
        &planned.tensors,
        settings.method,
        &settings.session,
    )?;
    let mut options = settings.options.clone();
    if settings.keep_sensitive > 0 {
        let sensitive = sensitivity::most_sensitive(
            env,
            manifest,
            &model_bytes,
            &ranges,
            &options,
            calibration_set,
            &settings.session,
        )?;
        options.keep_nodes.extend(sensitive.into_iter().take(settings.keep_sensitive).map(|layer| layer.node));
    }
    let (quantized, report) = quantize(&model_bytes, &ranges, &options).map_err(|e| e.to_string())?;

    let model_path = manifest.file.with_file_name(format!("{name}.onnx"));
    let mut fp32 =
        open_session(env, ModelSource::Edited { path: &manifest.file, bytes: &model_bytes }, &settings.session)
            .map_err(|e| e.to_string())?;
    let mut int8 = open_session(env, ModelSource::Edited { path: &model_path, bytes: &quantized }, &settings.session)
        .map_err(|e| e.to_string())?;
    let agreed = agreement(&mut fp32, &mut int8, manifest, held_out)?;
    let mut speedup = |batch: usize| -> Result<f64, String> {
        let sample: Vec<Vec<f32>> = calibration_set.iter().cycle().take(batch).cloned().collect();
        Ok(images_per_second(&mut int8, manifest, &sample)? / images_per_second(&mut fp32, manifest, &sample)?)
    };
    let quantization = Quantization {
        source: manifest.name.clone(),
        method: settings.method.as_str().to_owned(),
        activations: settings.options.activations.as_str().to_owned(),
        calibration_images: calibration_set.len(),
        agreement_images: agreed.images,
        top1_agreement: agreed.same as f64 / agreed.images.max(1) as f64,
        confident_images: agreed.confident,
        confident_agreement: agreed.confident_same as f64 / agreed.confident.max(1) as f64,
        speedup_batch1: speedup(1)?,
        speedup_batch8: speedup(8)?,
        kept_fp32: report.kept_fp32.clone(),
    };
    let fused_nodes = fused_nodes(env, &model_path, &quantized, &settings.session)?;
    let manifest_path = manifest.manifest_path.with_file_name(format!("{name}.toml"));
    let text = int8_manifest(manifest, &model_path, &quantized, &quantization)?;
    // The model first, then its manifest, each whole or not at all (--watch-models may look).
    write_whole(&model_path, &quantized)?;
    write_whole(&manifest_path, text.as_bytes())?;
    Manifest::load(&manifest_path).map_err(|e| format!("the written manifest does not load: {e}"))?;
    Ok(QuantizeOutcome { manifest_path, model_path, quantization, report, fused_nodes })
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, readable by
/// everyone as a model file is (a temporary file is created owner-only, and a server running
/// as another user, such as the container's, could not read it).
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let readable = std::fs::Permissions::from_mode(0o644);
    let mut file = tempfile::Builder::new().permissions(readable).tempfile_in(dir).map_err(failed)?;
    std::io::Write::write_all(&mut file, bytes).map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// The FP32 top-1 probability from which an image counts as confidently classified.
const CONFIDENT: f32 = 0.5;

/// Top-1 agreement of the two models on held-out images: on all of them, and on those the
/// FP32 model classifies confidently (its top class at least `CONFIDENT`), where a flip is
/// not a near-tie changing sides.
#[derive(Debug, Default, PartialEq)]
struct Agreement {
    same: usize,
    images: usize,
    confident_same: usize,
    confident: usize,
}

fn agreement(
    fp32: &mut ModelSession,
    int8: &mut ModelSession,
    manifest: &Manifest,
    images: &[Vec<f32>],
) -> Result<Agreement, String> {
    let top1 = |scores: &[f32]| scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    // The top class's probability: the output itself, or the softmax of logits at the top,
    // 1 / Σ exp(x − max).
    let confidence = |scores: &[f32]| {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match manifest.output_kind {
            OutputKind::Probabilities => max,
            OutputKind::Logits => 1.0 / scores.iter().map(|s| (s - max).exp()).sum::<f32>(),
        }
    };
    let mut found = Agreement { images: images.len(), ..Agreement::default() };
    for batch in images.chunks(8) {
        let pixels = batch.concat();
        let output = [manifest.output_name.as_str()];
        let a = calibrate::run_batch(fp32, manifest, pixels.clone(), batch.len(), &output)?.remove(0);
        let b = calibrate::run_batch(int8, manifest, pixels, batch.len(), &output)?.remove(0);
        if a.is_empty() || a.len() != b.len() || !a.len().is_multiple_of(batch.len()) {
            return Err(format!("the outputs have {} and {} values for {} images", a.len(), b.len(), batch.len()));
        }
        let classes = a.len() / batch.len();
        for (x, y) in a.chunks(classes).zip(b.chunks(classes)) {
            let same = top1(x) == top1(y);
            found.same += usize::from(same);
            if confidence(x) >= CONFIDENT {
                found.confident += 1;
                found.confident_same += usize::from(same);
            }
        }
    }
    Ok(found)
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
    // Beside the FP32 file, wherever the manifest keeps it (`file` may name a subfolder).
    let file_name = model_path.file_name().and_then(|f| f.to_str()).ok_or("the model file name is not UTF-8")?;
    let fp32_file = table.get("file").and_then(|f| f.as_str()).ok_or("the manifest has no file")?;
    let file = Path::new(fp32_file).with_file_name(file_name);
    table.insert("file".into(), file.to_str().ok_or("the model path is not UTF-8")?.into());
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
