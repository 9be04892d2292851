//! Features for training: the base model's pooled-feature vector of every image (and
//! of each augmented variant) and, for localization heads, its spatial feature map,
//! computed with ONNX Runtime through the model's runner and cached in the blob store
//! under (model, preprocessing, image hash, variant), so a second job on the same images
//! computes none again.

use sha2::{Digest, Sha256};

use super::keys::{feature_key, image_key, spatial_key};
use crate::codec;
use crate::runtime::PendingInference;
use crate::serving::{ImageFeatures, LoadedModel};
use crate::store::BlobStore;
use crate::vision::{Augmentation, DecodeLimits, Preprocessing, decode_for, preprocess_into};

/// The cache namespace of a base model's features: its name, file identity, the preprocessing
/// the images get (the manifest's, or another geometry's) and the feature tensors.
pub fn feature_fingerprint(model: &LoadedModel, preprocessing: &Preprocessing) -> String {
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
    hasher.update(serde_json::to_vec(preprocessing).unwrap_or_default());
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
/// spatial map too when `with_spatial`. The images come from `pixels` (its preprocessing
/// also names the cache). `on_progress(done, total)` is called after every batch;
/// returning false stops the work.
pub fn extract_features(
    model: &LoadedModel,
    pixels: &PixelSource<'_>,
    requests: &[FeatureRequest],
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
    let (blobs, augmentation) = (pixels.blobs, pixels.augmentation);
    let fingerprint = feature_fingerprint(model, pixels.preprocessing);
    let key = |request: &FeatureRequest| {
        feature_key(&model.manifest.name, &fingerprint, &request.sha256, &variant_suffix(request, augmentation))
    };
    let failed = |e: String| FeatureError::Failed(e);
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
    let store = |request: &FeatureRequest, features: &ImageFeatures| -> Result<(), FeatureError> {
        let key = key(request);
        if let Some(map) = &features.spatial {
            blobs.replace(&spatial_key(&key), codec::to_bytes(map)).map_err(|e| failed(e.to_string()))?;
        }
        blobs.replace(&key, codec::to_bytes(&features.pooled)).map_err(|e| failed(e.to_string()))
    };
    let mut compute = OnRunner { model, with_spatial, store };
    let batch = model.runner.config().max_batch_size;
    cached_or_computed(requests, batch, model.runner.image_len(), pixels, &mut read, &mut compute, on_progress)
}

/// The features of a batch from the model's runner, stored by `store` as they come. Batches
/// are handed over one per instance ahead of the one collected, so every instance has one to
/// run and the next waits in the queue: on two cores two single-threaded instances side by
/// side outrun one session on both (their threads never wait on each other) and the
/// whole-machine session is left alone, which runs a batch only when nothing else waits.
struct OnRunner<'m, S> {
    model: &'m LoadedModel,
    with_spatial: bool,
    store: S,
}

impl<S> BatchCompute<ImageFeatures> for OnRunner<'_, S>
where
    S: FnMut(&FeatureRequest, &ImageFeatures) -> Result<(), FeatureError>,
{
    type Started = PendingInference;

    fn in_flight(&self) -> usize {
        self.model.runner.instances() + 1
    }

    fn start(&mut self, input: Vec<f32>, batch: &[&FeatureRequest]) -> Result<PendingInference, FeatureError> {
        let outputs = self.model.outputs_needed(true, self.with_spatial);
        self.model.runner.start_blocking(input, batch.len(), outputs).map_err(|e| FeatureError::Failed(e.to_string()))
    }

    fn finish(
        &mut self,
        started: PendingInference,
        batch: &[&FeatureRequest],
    ) -> Result<Vec<ImageFeatures>, FeatureError> {
        let outputs = started.wait().map_err(|e| FeatureError::Failed(e.to_string()))?;
        batch
            .iter()
            .zip(outputs)
            .map(|(request, image_outputs)| {
                let features =
                    self.model.image_features(image_outputs, self.with_spatial).map_err(FeatureError::Failed)?;
                (self.store)(request, &features)?;
                Ok(features)
            })
            .collect()
    }
}

/// Where a job's model inputs come from: the stored images, augmented and preprocessed.
pub struct PixelSource<'a> {
    pub blobs: &'a BlobStore,
    pub augmentation: Option<&'a Augmentation>,
    pub decode_limits: &'a DecodeLimits,
    pub preprocessing: &'a Preprocessing,
}

impl PixelSource<'_> {
    /// Decodes the stored image of `request`, applies its augmentation variant and writes the
    /// model input into `slot`.
    pub(super) fn write(&self, request: &FeatureRequest, slot: &mut [f32]) -> Result<(), String> {
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

/// Computes (and stores) one value per image of a batch from its model inputs, in two steps so
/// that several batches can be in the model at once: `start` hands a batch over, `finish`
/// collects its values.
pub(super) trait BatchCompute<T> {
    type Started;

    /// Batches started and not yet finished that keep the model busy.
    fn in_flight(&self) -> usize;

    fn start(&mut self, input: Vec<f32>, batch: &[&FeatureRequest]) -> Result<Self::Started, FeatureError>;

    fn finish(&mut self, started: Self::Started, batch: &[&FeatureRequest]) -> Result<Vec<T>, FeatureError>;
}

/// A computation that runs a batch as it is handed over: one in flight.
pub(super) struct Synchronous<F>(pub F);

impl<T, F> BatchCompute<T> for Synchronous<F>
where
    F: FnMut(Vec<f32>, &[&FeatureRequest]) -> Result<Vec<T>, FeatureError>,
{
    type Started = Vec<T>;

    fn in_flight(&self) -> usize {
        1
    }

    fn start(&mut self, input: Vec<f32>, batch: &[&FeatureRequest]) -> Result<Vec<T>, FeatureError> {
        (self.0)(input, batch)
    }

    fn finish(&mut self, started: Vec<T>, _batch: &[&FeatureRequest]) -> Result<Vec<T>, FeatureError> {
        Ok(started)
    }
}

/// Batches prepared ahead of the model: one waiting in the channel while the next is decoded,
/// so memory stays at three batches of inputs whatever the dataset's size.
const BATCHES_AHEAD: usize = 1;

/// The value of every request (same order): `read` from the blob store or, for the ones it
/// does not find, `compute`d (and stored by it) from their model inputs, `batch` images at a
/// time. `on_progress(done, total)` is called after the cache pass and after every batch;
/// returning false stops the work.
///
/// Decoding and inference overlap: a scoped thread decodes and preprocesses the next batch
/// while the model runs the ones `compute` keeps in flight, so the pass goes at the speed of
/// the slower of the two rather than of their sum.
pub(super) fn cached_or_computed<T: Clone, C: BatchCompute<T>>(
    requests: &[FeatureRequest],
    batch: usize,
    image_len: usize,
    pixels: &PixelSource<'_>,
    read: &mut dyn FnMut(&FeatureRequest) -> Result<Option<T>, FeatureError>,
    compute: &mut C,
    on_progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Vec<T>, FeatureStats), FeatureError> {
    let mut out: Vec<Option<T>> = requests.iter().map(&mut *read).collect::<Result<_, _>>()?;
    let missing: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
    let mut stats =
        FeatureStats { total: requests.len(), cached: requests.len() - missing.len(), ..FeatureStats::default() };
    metrics::counter!("graft_feature_cache_total", "result" => "hit").increment(stats.cached as u64);
    metrics::counter!("graft_feature_cache_total", "result" => "miss").increment(missing.len() as u64);
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
            let depth = compute.in_flight().max(1);
            let mut started = std::collections::VecDeque::new();
            for (chunk, input) in chunks.iter().zip(receiver.iter()) {
                let began = std::time::Instant::now();
                started.push_back((*chunk, compute.start(input?, &requests_of(requests, chunk))?));
                stats.inference_seconds += began.elapsed().as_secs_f64();
                if started.len() >= depth {
                    let (chunk, handle) = started.pop_front().expect("a batch in flight");
                    finish(compute, chunk, handle, requests, &mut out, &mut stats, on_progress)?;
                }
            }
            while let Some((chunk, handle)) = started.pop_front() {
                finish(compute, chunk, handle, requests, &mut out, &mut stats, on_progress)?;
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

fn requests_of<'r>(requests: &'r [FeatureRequest], chunk: &[usize]) -> Vec<&'r FeatureRequest> {
    chunk.iter().map(|&i| &requests[i]).collect()
}

/// Collects a started batch's values into `out` (at the requests' indices in `chunk`),
/// counts them and reports progress.
fn finish<T, C: BatchCompute<T>>(
    compute: &mut C,
    chunk: &[usize],
    handle: C::Started,
    requests: &[FeatureRequest],
    out: &mut [Option<T>],
    stats: &mut FeatureStats,
    on_progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(), FeatureError> {
    let began = std::time::Instant::now();
    let values = compute.finish(handle, &requests_of(requests, chunk))?;
    stats.inference_seconds += began.elapsed().as_secs_f64();
    if values.len() != chunk.len() {
        return Err(FeatureError::Failed(format!("{} values for a batch of {} images", values.len(), chunk.len())));
    }
    for (&i, value) in chunk.iter().zip(values) {
        out[i] = Some(value);
    }
    stats.computed += chunk.len();
    match on_progress(stats.cached + stats.computed, stats.total) {
        true => Ok(()),
        false => Err(FeatureError::Stopped),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use image::{ImageFormat, RgbImage};

    use super::*;
    use crate::vision::{ColorOrder, Layout, Normalization, ResizeMode};

    /// One pixel per image (a 1 × 1 model input), so an image's input is its grey level.
    fn preprocessing() -> Preprocessing {
        Preprocessing {
            width: 1,
            height: 1,
            layout: Layout::Nhwc,
            color: ColorOrder::Rgb,
            resize: ResizeMode::Stretch,
            normalization: Normalization { scale: 1.0, mean: [0.0; 3], std: [1.0; 3] },
        }
    }

    /// Stores `count` one-colour PNGs (grey levels 10, 20, …) and returns their requests.
    fn stored_images(blobs: &BlobStore, count: usize) -> Vec<FeatureRequest> {
        (0..count)
            .map(|i| {
                let level = 10 * (i as u8 + 1);
                let mut png = std::io::Cursor::new(Vec::new());
                RgbImage::from_pixel(4, 4, image::Rgb([level; 3])).write_to(&mut png, ImageFormat::Png).unwrap();
                let sha256 = hex::encode(Sha256::digest(png.get_ref()));
                blobs.replace(&image_key(&sha256), png.get_ref()).unwrap();
                FeatureRequest { sha256, variant: 0 }
            })
            .collect()
    }

    /// Records how many batches were started and not finished at the most, and answers each
    /// image with its model input (three channels of its grey level).
    struct Recorder {
        in_flight: usize,
        open: HashSet<usize>,
        most_open: usize,
        next: usize,
    }

    impl BatchCompute<Vec<f32>> for Recorder {
        type Started = (usize, Vec<f32>);

        fn in_flight(&self) -> usize {
            self.in_flight
        }

        fn start(&mut self, input: Vec<f32>, _batch: &[&FeatureRequest]) -> Result<(usize, Vec<f32>), FeatureError> {
            let id = self.next;
            self.next += 1;
            self.open.insert(id);
            self.most_open = self.most_open.max(self.open.len());
            Ok((id, input))
        }

        fn finish(
            &mut self,
            (id, input): (usize, Vec<f32>),
            batch: &[&FeatureRequest],
        ) -> Result<Vec<Vec<f32>>, FeatureError> {
            assert!(self.open.remove(&id), "finished once, after it started");
            assert_eq!(input.len(), 3 * batch.len());
            Ok(input.chunks(3).map(<[f32]>::to_vec).collect())
        }
    }

    #[test]
    fn batches_in_flight_are_collected_in_order_up_to_the_depth_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let requests = stored_images(&blobs, 7);
        let preprocessing = preprocessing();
        let pixels = PixelSource {
            blobs: &blobs,
            augmentation: None,
            decode_limits: &DecodeLimits::default(),
            preprocessing: &preprocessing,
        };
        // The second image is cached already: only the others are computed, two at a batch.
        let mut read = |request: &FeatureRequest| Ok((request.sha256 == requests[1].sha256).then(|| vec![-1.0; 3]));
        for depth in [1, 3] {
            let mut recorder = Recorder { in_flight: depth, open: HashSet::new(), most_open: 0, next: 0 };
            let mut reported = Vec::new();
            let (values, stats) =
                cached_or_computed(&requests, 2, 3, &pixels, &mut read, &mut recorder, &mut |done, total| {
                    reported.push((done, total));
                    true
                })
                .unwrap();
            let expected: Vec<Vec<f32>> =
                (0..7).map(|i| if i == 1 { vec![-1.0; 3] } else { vec![10.0 * (i + 1) as f32; 3] }).collect();
            assert_eq!(values, expected, "depth {depth}");
            assert_eq!((stats.total, stats.cached, stats.computed), (7, 1, 6));
            assert_eq!(recorder.most_open, depth, "at most `depth` batches in flight, and that many");
            assert!(recorder.open.is_empty());
            assert_eq!(reported, [(1, 7), (3, 7), (5, 7), (7, 7)]);
        }
    }
}
