//! Features for training: the base model's pooled-feature vector of every image (and
//! of each augmented variant) and, for localization heads, its spatial feature map,
//! computed with ONNX Runtime through the model's runner and cached in the blob store
//! under (model, preprocessing, image hash, variant), so a second job on the same images
//! computes none again.

use sha2::{Digest, Sha256};

use crate::store::BlobStore;
use crate::vision::{Augmentation, DecodeLimits, Preprocessing, decode_for, preprocess_into};
use crate::zoo::{ImageFeatures, LoadedModel};

/// The cache namespace of a base model: its name, file identity, preprocessing and feature tensor.
pub fn feature_fingerprint(model: &LoadedModel) -> String {
    let manifest = &model.manifest;
    let file_identity = manifest.sha256.clone().unwrap_or_else(|| {
        let meta = std::fs::metadata(&manifest.file).ok();
        let modified =
            meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        format!("{}:{:?}", meta.map_or(0, |m| m.len()), modified)
    });
    let mut hasher = Sha256::new();
    hasher.update(manifest.name.as_bytes());
    hasher.update(file_identity.as_bytes());
    hasher.update(serde_json::to_vec(&manifest.preprocessing).unwrap_or_default());
    hasher.update(manifest.features.as_deref().unwrap_or("").as_bytes());
    if let Some(spatial) = &manifest.spatial_features {
        hasher.update(spatial.tensor.as_bytes());
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// One image to featurise: its stored content and the variant (0 = as is).
#[derive(Debug, Clone)]
pub struct FeatureRequest {
    pub sha256: String,
    pub variant: usize,
}

pub fn image_key(sha256: &str) -> String {
    format!("images/{}/{sha256}", &sha256[..2])
}

fn feature_key(
    model: &str,
    fingerprint: &str,
    request: &FeatureRequest,
    augmentation: Option<&Augmentation>,
) -> String {
    let variant = variant_suffix(request, augmentation);
    format!("features/{model}/{fingerprint}/{}/{}{variant}.f32", &request.sha256[..2], request.sha256)
}

/// What tells a variant's cached values from the original's in a key ("" for variant 0).
pub(super) fn variant_suffix(request: &FeatureRequest, augmentation: Option<&Augmentation>) -> String {
    match (request.variant, augmentation) {
        (0, _) | (_, None) => String::new(),
        (k, Some(aug)) => {
            let params = hex::encode(Sha256::digest(serde_json::to_vec(aug).unwrap_or_default()));
            // "aug2": variants drawn with the seed-only geometry (`Augmentation::geometry`).
            format!("-aug2{}-{k}", &params[..8])
        }
    }
}

/// Decodes the stored image of `request`, applies its augmentation variant and writes the
/// model input into `slot`.
pub(super) fn request_pixels(
    blobs: &BlobStore,
    request: &FeatureRequest,
    augmentation: Option<&Augmentation>,
    decode_limits: &DecodeLimits,
    preprocessing: &Preprocessing,
    slot: &mut [f32],
) -> Result<(), String> {
    let bytes = blobs.get(&image_key(&request.sha256)).map_err(|e| e.to_string())?;
    let mut image =
        decode_for(&bytes, decode_limits, preprocessing).map_err(|e| format!("image {}: {e}", request.sha256))?.image;
    if let (Some(aug), k) = (augmentation, request.variant)
        && k > 0
    {
        image = aug.apply(&image, variant_seed(&request.sha256, k));
    }
    preprocess_into(&image, preprocessing, slot);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped")]
    Stopped,
}

/// Counts for progress and for the cache speed-up report.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FeatureStats {
    pub total: usize,
    pub cached: usize,
    pub computed: usize,
}

/// Returns the features of every request (same order): the pooled vector, and the
/// spatial map too when `with_spatial`. `on_progress(done, total)` is called after
/// every batch; returning false stops the work.
pub fn extract_features(
    model: &LoadedModel,
    blobs: &BlobStore,
    requests: &[FeatureRequest],
    augmentation: Option<&Augmentation>,
    decode_limits: &DecodeLimits,
    with_spatial: bool,
    on_progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Vec<ImageFeatures>, FeatureStats), FeatureError> {
    let width = *model
        .features
        .as_ref()
        .map_err(|reason| FeatureError::Failed(format!("the base model has no pooled features: {reason}")))?;
    let spatial_shape = match (with_spatial, &model.spatial) {
        (false, _) => None,
        (true, Ok(shape)) => Some(*shape),
        (true, Err(reason)) => {
            return Err(FeatureError::Failed(format!("the base model has no spatial features: {reason}")));
        }
    };
    let spatial_len = spatial_shape.map(|s| s.height * s.width * s.channels);
    let fingerprint = feature_fingerprint(model);
    let name = &model.manifest.name;
    let failed = |e: String| FeatureError::Failed(e);
    let read = |key: &str, len: usize| -> Result<Option<Vec<f32>>, FeatureError> {
        Ok(blobs
            .try_get(key)
            .map_err(|e| failed(e.to_string()))?
            .filter(|b| b.len() == len * 4)
            .map(|b| decode_f32(&b)))
    };
    let mut out: Vec<Option<ImageFeatures>> = vec![None; requests.len()];
    let mut missing = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let key = feature_key(name, &fingerprint, request, augmentation);
        let pooled = read(&key, width)?;
        let spatial = match spatial_len {
            Some(len) => read(&spatial_key(&key), len)?.map(Some),
            None => Some(None),
        };
        match (pooled, spatial) {
            (Some(pooled), Some(spatial)) => out[i] = Some(ImageFeatures { pooled, spatial }),
            _ => missing.push((i, key)),
        }
    }
    let mut stats = FeatureStats { total: requests.len(), cached: requests.len() - missing.len(), computed: 0 };
    if !on_progress(stats.cached, stats.total) {
        return Err(FeatureError::Stopped);
    }
    let batch = model.runner.config().max_batch_size;
    let image_len = model.runner.image_len();
    for chunk in missing.chunks(batch) {
        let mut pixels = vec![0.0f32; image_len * chunk.len()];
        for ((i, _), slot) in chunk.iter().zip(pixels.chunks_mut(image_len)) {
            request_pixels(blobs, &requests[*i], augmentation, decode_limits, &model.manifest.preprocessing, slot)
                .map_err(failed)?;
        }
        let outputs = model.runner.infer_blocking(pixels, chunk.len()).map_err(|e| failed(e.to_string()))?;
        for ((i, key), image_outputs) in chunk.iter().zip(outputs) {
            let features = model.image_features(image_outputs, with_spatial).map_err(failed)?;
            if let Some(map) = &features.spatial {
                blobs.replace(&spatial_key(key), &encode_f32(map)).map_err(|e| failed(e.to_string()))?;
            }
            blobs.replace(key, &encode_f32(&features.pooled)).map_err(|e| failed(e.to_string()))?;
            out[*i] = Some(features);
        }
        stats.computed += chunk.len();
        if !on_progress(stats.cached + stats.computed, stats.total) {
            return Err(FeatureError::Stopped);
        }
    }
    let features = out.into_iter().map(|f| f.expect("every request was read from the cache or computed")).collect();
    Ok((features, stats))
}

/// Where the spatial map of the image whose pooled features are at `pooled_key` is kept.
fn spatial_key(pooled_key: &str) -> String {
    pooled_key.replace(".f32", ".spatial.f32")
}

/// The augmentation seed of variant `k` of an image: fixed by its content.
pub fn variant_seed(sha256: &str, k: usize) -> u64 {
    let digest = Sha256::digest(format!("{sha256}:{k}"));
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}

pub(super) fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(super) fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}
