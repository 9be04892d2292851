//! Features for training: the base model's pooled-feature vector of every image (and
//! of each augmented variant) and, for localization heads, its spatial feature map,
//! computed with ONNX Runtime through the model's runner and cached in the blob store
//! under (model, preprocessing, image hash, variant), so a second job on the same images
//! computes none again.

use sha2::{Digest, Sha256};

use super::keys::{feature_key, image_key, spatial_key};
use crate::codec;
use crate::serving::{ImageFeatures, LoadedModel};
use crate::store::BlobStore;
use crate::vision::{Augmentation, DecodeLimits, Preprocessing, decode_for, preprocess_into};

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

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped")]
    Stopped,
}

/// Counts for progress and for the cache speed-up report, and where the pass spent its time.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FeatureStats {
    pub total: usize,
    pub cached: usize,
    pub computed: usize,
    /// Seconds spent decoding, augmenting and preprocessing the computed images, on the
    /// thread that prepares batches while the model runs.
    pub decode_seconds: f64,
    /// Seconds spent in the model (and writing its values to the cache), on the job's thread.
    pub inference_seconds: f64,
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
    let key = |request: &FeatureRequest| {
        feature_key(&model.manifest.name, &fingerprint, &request.sha256, &variant_suffix(request, augmentation))
    };
    let failed = |e: String| FeatureError::Failed(e);
    let pixels = PixelSource { blobs, augmentation, decode_limits, preprocessing: &model.manifest.preprocessing };
    let mut read = |request: &FeatureRequest| -> Result<Option<ImageFeatures>, FeatureError> {
        let key = key(request);
        let Some(pooled) = read_f32(blobs, &key, width)? else { return Ok(None) };
        let spatial = match spatial_len {
            Some(len) => match read_f32(blobs, &spatial_key(&key), len)? {
                Some(map) => Some(map),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(ImageFeatures { pooled, spatial }))
    };
    let mut compute = |pixels: Vec<f32>, batch: &[&FeatureRequest]| -> Result<Vec<ImageFeatures>, FeatureError> {
        let outputs = model.runner.infer_blocking(pixels, batch.len()).map_err(|e| failed(e.to_string()))?;
        batch
            .iter()
            .zip(outputs)
            .map(|(request, image_outputs)| {
                let features = model.image_features(image_outputs, with_spatial).map_err(failed)?;
                let key = key(request);
                if let Some(map) = &features.spatial {
                    blobs.replace(&spatial_key(&key), codec::to_bytes(map)).map_err(|e| failed(e.to_string()))?;
                }
                blobs.replace(&key, codec::to_bytes(&features.pooled)).map_err(|e| failed(e.to_string()))?;
                Ok(features)
            })
            .collect()
    };
    let batch = model.runner.config().max_batch_size;
    cached_or_computed(requests, batch, model.runner.image_len(), &pixels, &mut read, &mut compute, on_progress)
}

/// Where a job's model inputs come from: the stored images, augmented and preprocessed.
pub(super) struct PixelSource<'a> {
    pub blobs: &'a BlobStore,
    pub augmentation: Option<&'a Augmentation>,
    pub decode_limits: &'a DecodeLimits,
    pub preprocessing: &'a Preprocessing,
}

impl PixelSource<'_> {
    /// Decodes the stored image of `request`, applies its augmentation variant and writes the
    /// model input into `slot`.
    fn write(&self, request: &FeatureRequest, slot: &mut [f32]) -> Result<(), String> {
        let bytes = self.blobs.get(&image_key(&request.sha256)).map_err(|e| e.to_string())?;
        let mut image = decode_for(&bytes, self.decode_limits, self.preprocessing)
            .map_err(|e| format!("image {}: {e}", request.sha256))?
            .image;
        if let (Some(aug), k) = (self.augmentation, request.variant)
            && k > 0
        {
            image = aug.apply(&image, variant_seed(&request.sha256, k));
        }
        preprocess_into(&image, self.preprocessing, slot);
        Ok(())
    }

    /// The model input of a batch: each request's image written into its slot.
    fn batch<'r>(
        &self,
        requests: impl ExactSizeIterator<Item = &'r FeatureRequest>,
        image_len: usize,
    ) -> Result<Vec<f32>, FeatureError> {
        let mut input = vec![0.0f32; image_len * requests.len()];
        for (request, slot) in requests.zip(input.chunks_mut(image_len)) {
            self.write(request, slot).map_err(FeatureError::Failed)?;
        }
        Ok(input)
    }
}

/// Computes (and stores) one value per image of a batch from its model inputs.
pub(super) type ComputeBatch<'a, T> = dyn FnMut(Vec<f32>, &[&FeatureRequest]) -> Result<Vec<T>, FeatureError> + 'a;

/// Batches prepared ahead of the model: one waiting in the channel while the next is decoded,
/// so memory stays at three batches of inputs whatever the dataset's size.
const BATCHES_AHEAD: usize = 1;

/// The value of every request (same order): `read` from the blob store or, for the ones it
/// does not find, `compute`d (and stored by it) from their model inputs, `batch` images at a
/// time. `on_progress(done, total)` is called after the cache pass and after every batch;
/// returning false stops the work.
///
/// Decoding and inference overlap: a scoped thread decodes and preprocesses the next batch
/// while the model runs the current one, so the pass goes at the speed of the slower of the
/// two rather than of their sum.
pub(super) fn cached_or_computed<T: Clone>(
    requests: &[FeatureRequest],
    batch: usize,
    image_len: usize,
    pixels: &PixelSource<'_>,
    read: &mut dyn FnMut(&FeatureRequest) -> Result<Option<T>, FeatureError>,
    compute: &mut ComputeBatch<'_, T>,
    on_progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Vec<T>, FeatureStats), FeatureError> {
    let mut out: Vec<Option<T>> = requests.iter().map(&mut *read).collect::<Result<_, _>>()?;
    let missing: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
    let mut stats =
        FeatureStats { total: requests.len(), cached: requests.len() - missing.len(), ..FeatureStats::default() };
    if !on_progress(stats.cached, stats.total) {
        return Err(FeatureError::Stopped);
    }
    let chunks: Vec<&[usize]> = missing.chunks(batch.max(1)).collect();
    let chunks = &chunks;
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<Vec<f32>, FeatureError>>(BATCHES_AHEAD);
        let preparing = scope.spawn(move || {
            let mut seconds = 0.0;
            for chunk in chunks {
                let started = std::time::Instant::now();
                let input = pixels.batch(chunk.iter().map(|&i| &requests[i]), image_len);
                seconds += started.elapsed().as_secs_f64();
                let failed = input.is_err();
                // A closed channel means the job's thread stopped: nothing more is wanted.
                if sender.send(input).is_err() || failed {
                    break;
                }
            }
            seconds
        });
        let consumed = (|| {
            for (chunk, input) in chunks.iter().zip(receiver.iter()) {
                let started = std::time::Instant::now();
                let batch_requests: Vec<&FeatureRequest> = chunk.iter().map(|&i| &requests[i]).collect();
                let values = compute(input?, &batch_requests)?;
                stats.inference_seconds += started.elapsed().as_secs_f64();
                if values.len() != chunk.len() {
                    return Err(FeatureError::Failed(format!(
                        "{} values for a batch of {} images",
                        values.len(),
                        chunk.len()
                    )));
                }
                for (&i, value) in chunk.iter().zip(values) {
                    out[i] = Some(value);
                }
                stats.computed += chunk.len();
                if !on_progress(stats.cached + stats.computed, stats.total) {
                    return Err(FeatureError::Stopped);
                }
            }
            match stats.computed == missing.len() {
                true => Ok(()),
                false => Err(FeatureError::Failed("the thread preparing model inputs stopped".into())),
            }
        })();
        drop(receiver);
        stats.decode_seconds = preparing.join().unwrap_or_default();
        consumed
    })?;
    let values = out.into_iter().map(|v| v.expect("every request was read from the cache or computed")).collect();
    Ok((values, stats))
}

/// The f32 values stored under `key`, when there are exactly `len` of them.
pub(super) fn read_f32(blobs: &BlobStore, key: &str, len: usize) -> Result<Option<Vec<f32>>, FeatureError> {
    Ok(blobs
        .try_get(key)
        .map_err(|e| FeatureError::Failed(e.to_string()))?
        .and_then(|b| codec::from_bytes::<f32>(&b))
        .filter(|values| values.len() == len))
}

/// Where the spatial map of the image whose pooled features are at `pooled_key` is kept.
/// The augmentation seed of variant `k` of an image: fixed by its content.
pub fn variant_seed(sha256: &str, k: usize) -> u64 {
    let digest = Sha256::digest(format!("{sha256}:{k}"));
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}
