//! Loading one model: its sessions opened from the manifest (with the pooled features and the
//! spatial map exposed as outputs), checked against the manifest, warmed up at every batch
//! size, and the runner started; and what a loaded model hands the heads that read it.

use std::sync::Arc;

use ort::environment::Environment;

use crate::onnx::expose_outputs;
use crate::runtime::{
    BatchExecutor, Batching, Device, ImageOutputs, ModelRunner, ModelSession, ModelSource, OrtExecutor, RunnerConfig,
    SessionOptions, SharedGraph, TensorSpec, open_session,
};
use crate::vision::Layout;
use crate::zoo::{Labels, Manifest};

/// ONNX Runtime's environment and the session and batching settings models load with.
#[derive(Clone)]
pub struct ModelRuntime {
    pub env: Environment,
    pub options: SessionOptions,
    pub batching: Batching,
    /// On the CPU, optimise each model once and let all its sessions read that one graph
    /// (one copy of the weights) instead of each optimising and holding its own.
    pub share_weights: bool,
}

/// A model that answered its warm-up run and can serve.
pub struct LoadedModel {
    pub manifest: Arc<Manifest>,
    pub labels: Labels,
    /// Returns per image the scores, then (when `features` is `Ok`) the pooled features.
    pub runner: ModelRunner,
    pub provider: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The width of the pooled-feature vector heads train on, or why there is none.
    pub features: Result<usize, String>,
    /// The grid of the spatial feature map (manifest `spatial_features`), or why there is none.
    pub spatial: Result<SpatialShape, String>,
    pub sessions: ServingLayout,
    /// The bytes of the optimised graph all its sessions read their weights from, when they
    /// share one (`--share-weights`, on the CPU).
    pub shared_weights_bytes: Option<u64>,
}

/// How a model's sessions run: `instances` side by side with `threads_each` ONNX Runtime
/// threads each, and the threads of the session for batches that run alone, if there is
/// one (0 threads: ONNX Runtime's default, one per core).
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServingLayout {
    pub instances: usize,
    pub threads_each: usize,
    pub threads_when_alone: Option<usize>,
}

impl LoadedModel {
    /// Index of the pooled features in each image's outputs.
    pub const FEATURES_OUTPUT: usize = 1;
    /// Index of the spatial feature map in each image's outputs, when the model has one.
    pub const SPATIAL_OUTPUT: usize = 2;

    /// How many of the runner's outputs (`infer`'s `outputs`) a caller reads: the scores;
    /// also the pooled features when `features`; also the spatial map when `spatial`.
    pub fn outputs_needed(&self, features: bool, spatial: bool) -> usize {
        let needed = match (features, spatial) {
            (_, true) => Self::SPATIAL_OUTPUT + 1,
            (true, false) => Self::FEATURES_OUTPUT + 1,
            (false, false) => 1,
        };
        needed.min(self.runner.config().output_names.len())
    }

    /// What heads read from one image's outputs: the pooled vector and, `with_spatial`, the
    /// spatial map in (row, column, channel) order.
    pub fn image_features(&self, mut outputs: ImageOutputs, with_spatial: bool) -> Result<ImageFeatures, String> {
        let spatial = if with_spatial {
            let shape = self.spatial.as_ref().map_err(Clone::clone)?;
            if outputs.len() <= Self::SPATIAL_OUTPUT {
                return Err("the base model returned no spatial feature map".to_owned());
            }
            Some(shape.to_hwc(outputs.swap_remove(Self::SPATIAL_OUTPUT)))
        } else {
            None
        };
        if outputs.len() <= Self::FEATURES_OUTPUT {
            return Err("the base model returned no pooled features".to_owned());
        }
        Ok(ImageFeatures { pooled: outputs.swap_remove(Self::FEATURES_OUTPUT), spatial })
    }
}

/// The features of one image (or augmented variant) that heads train on and read.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFeatures {
    pub pooled: Vec<f32>,
    /// The spatial map in (row, column, channel) order, when asked for.
    pub spatial: Option<Vec<f32>>,
}

/// A spatial feature map's grid, learned at warm-up from the shape ONNX Runtime gives the
/// tensor: any number of channels (the map may come from an earlier block than the pooled
/// features) on any grid.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpatialShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// How the runtime lays the values out (NCHW: channel planes; NHWC: per cell).
    pub layout: Layout,
}

impl SpatialShape {
    /// The grid of a map whose batch has `shape` (batch first, then NCHW or NHWC as `layout`).
    fn from_output(shape: &[usize], layout: Layout) -> Result<Self, String> {
        let [_, a, b, c] = shape[..] else {
            return Err(format!("the map has shape {shape:?}; a spatial map is rank 4 (batch, and three more)"));
        };
        let (height, width, channels) = match layout {
            Layout::Nchw => (b, c, a),
            Layout::Nhwc => (a, b, c),
        };
        if height == 0 || width == 0 || channels == 0 {
            return Err(format!("the map has shape {shape:?}, with an empty dimension"));
        }
        Ok(Self { height, width, channels, layout })
    }

    /// The map reordered to (row, column, channel), the order the localization head reads.
    pub fn to_hwc(&self, values: Vec<f32>) -> Vec<f32> {
        match self.layout {
            Layout::Nhwc => values,
            Layout::Nchw => {
                let plane = self.height * self.width;
                let mut out = vec![0.0; values.len()];
                for (c, channel) in values.chunks_exact(plane).enumerate() {
                    for (cell, &v) in channel.iter().enumerate() {
                        out[cell * self.channels + c] = v;
                    }
                }
                out
            }
        }
    }
}

/// Opens the model's sessions (one per instance), checks them against the manifest,
/// warms each up with one image and with the largest batch, so no request pays for a
/// first run, and starts the runner.
pub fn load_model(runtime: &ModelRuntime, manifest: Arc<Manifest>) -> Result<LoadedModel, String> {
    let ModelRuntime { env, options, batching, share_weights } = runtime;
    if !manifest.file.is_file() {
        return Err(format!(
            "the model file {} is missing; run `graft models pull {}` to fetch it",
            manifest.file.display(),
            manifest.name
        ));
    }
    let labels = Labels::read(&manifest.labels_file)?;
    // Expose the pooled-feature tensor (and the spatial map before pooling) as further
    // outputs, so that one session serves both ImageNet scores and every head trained on this base.
    let spatial_tensor = manifest.spatial_features.as_ref().map(|s| s.tensor.as_str());
    let edited = match &manifest.features {
        None => Err(format!("the manifest of {} names no `features` tensor", manifest.name)),
        Some(tensor) => fs_err::read(&manifest.file).map_err(|e| e.to_string()).and_then(|bytes| {
            let tensors: Vec<&str> = std::iter::once(tensor.as_str()).chain(spatial_tensor).collect();
            expose_outputs(&bytes, &tensors).map_err(|e| e.to_string())
        }),
    };
    // Whether the feature tensors are outputs, kept apart from the edited bytes, which go
    // as soon as a shared graph holds the model.
    let exposed: Result<(), String> = edited.as_ref().map(drop).map_err(Clone::clone);
    let mut source = match &edited {
        Ok(bytes) => ModelSource::Edited { path: &manifest.file, bytes },
        Err(reason) => {
            tracing::warn!(model = %manifest.name, "serving without pooled features: {reason}");
            ModelSource::File(&manifest.file)
        }
    };
    let instances = batching.instances_on(options.device);
    let (instance_options, whole_options) = options.for_instances(instances);
    let shared = match *share_weights && options.device == Device::Cpu {
        true => SharedGraph::optimise(env, source, &instance_options)
            .inspect_err(|e| tracing::warn!(model = %manifest.name, "each session keeps its own weights: {e}"))
            .ok(),
        false => None,
    };
    if let Some(graph) = &shared {
        source = ModelSource::Shared { path: &manifest.file, graph };
        drop(edited);
    }
    let open = |options: &SessionOptions| open_session(env, source, options).map_err(|e| e.to_string());
    let mut sessions = (0..instances).map(|_| open(&instance_options)).collect::<Result<Vec<_>, _>>()?;
    let whole = whole_options.as_ref().map(open).transpose()?;
    let layout = ServingLayout {
        instances,
        threads_each: instance_options.intra_threads,
        threads_when_alone: whole_options.as_ref().map(|o| o.intra_threads),
    };
    tracing::info!(model = %manifest.name, ?layout, "sessions open");
    let (image_dims, batch_limit) = check_io(&manifest, &sessions[0], labels.len())?;
    let max_batch_size = batch_limit.map_or(batching.max_batch_size, |fixed| fixed.min(batching.max_batch_size)).max(1);
    let provider = sessions[0].provider;
    let (inputs, outputs) = (sessions[0].inputs.clone(), sessions[0].outputs.clone());
    let mut output_names = vec![manifest.output_name.clone()];
    if exposed.is_ok() {
        output_names.extend(manifest.features.clone());
        output_names.extend(spatial_tensor.map(str::to_owned));
    }
    let config = RunnerConfig {
        input_name: manifest.input_name.clone(),
        output_names,
        image_dims,
        max_batch_size,
        max_delay: batching.max_delay,
        queue_capacity: batching.queue_capacity,
    };
    let mut executors: Vec<_> = sessions.drain(..).map(|session| OrtExecutor::new(session, &config)).collect();
    let mut whole = whole.map(|session| OrtExecutor::new(session, &config));
    let image_len: usize = image_dims.iter().product();
    let mut features = exposed.as_ref().map(|()| 0).map_err(Clone::clone);
    let mut spatial_dims = None;
    // Every session runs a lone image and the largest batch once, before the runner takes
    // requests, with every output (their shapes are learned here). On the CPU the sizes
    // between cost a first run no more than a later one (no arena to grow by default), and
    // warming each of them made a model's load — which a request may wait on — several times
    // longer; on a GPU, cuDNN picks its algorithms per shape on the first run: every size.
    let every_output = config.output_names.len();
    let warm_up_batches: Vec<usize> = match options.device {
        Device::Cpu if max_batch_size > 1 => vec![1, max_batch_size],
        _ => (1..=max_batch_size).collect(),
    };
    for executor in executors.iter_mut().chain(whole.as_mut()) {
        for &batch in &warm_up_batches {
            let images = executor
                .run(vec![0.0; image_len * batch], batch, every_output)
                .map_err(|e| format!("warm-up failed: {e}"))?;
            let scores = &images[0][0];
            if scores.len() != labels.len() {
                return Err(format!(
                    "output `{}` has {} values per image but the labels file has {} classes",
                    manifest.output_name,
                    scores.len(),
                    labels.len()
                ));
            }
            if let Ok(width) = features.as_mut() {
                *width = images[0][LoadedModel::FEATURES_OUTPUT].len();
                spatial_dims = executor.last_shapes().get(LoadedModel::SPATIAL_OUTPUT).cloned();
            }
        }
    }
    let runner = ModelRunner::spawn(&manifest.name, executors, whole, config).map_err(|e| e.to_string())?;
    let spatial = match (&manifest.spatial_features, &features, spatial_dims) {
        (None, _, _) => Err(format!("the manifest of {} names no `spatial_features` tensor", manifest.name)),
        (Some(_), Err(reason), _) => Err(reason.clone()),
        (Some(map), Ok(_), Some(dims)) => {
            SpatialShape::from_output(&dims, map.layout).map_err(|e| format!("spatial_features `{}`: {e}", map.tensor))
        }
        (Some(map), Ok(_), None) => Err(format!("spatial_features `{}` produced no values", map.tensor)),
    };
    if let (Some(map), Err(reason)) = (&manifest.spatial_features, &spatial) {
        tracing::warn!(model = %manifest.name, tensor = %map.tensor, "no spatial features: {reason}");
    }
    Ok(LoadedModel {
        manifest,
        labels,
        runner,
        provider,
        inputs,
        outputs,
        features,
        spatial,
        sessions: layout,
        shared_weights_bytes: shared.as_ref().map(SharedGraph::bytes),
    })
}

/// Compares the session's graph inputs/outputs with the manifest. Returns the
/// per-image input dimensions and the batch size when the graph fixes it.
fn check_io(
    manifest: &Manifest,
    session: &ModelSession,
    classes: usize,
) -> Result<([usize; 3], Option<usize>), String> {
    let names = |specs: &[TensorSpec]| specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    let input = session.inputs.iter().find(|s| s.name == manifest.input_name).ok_or_else(|| {
        format!(
            "the manifest's input `{}` is not an input of the model (it has: {})",
            manifest.input_name,
            names(&session.inputs)
        )
    })?;
    if !input.is_float32 {
        return Err(format!("input `{}` is {}, graft feeds float32", input.name, input.element_type));
    }
    let pre = &manifest.preprocessing;
    let (h, w) = (pre.height as i64, pre.width as i64);
    let expected: [i64; 3] = match pre.layout {
        Layout::Nchw => [3, h, w],
        Layout::Nhwc => [h, w, 3],
    };
    if input.shape.len() != 4 {
        return Err(format!("input `{}` has rank {}, an image input has rank 4", input.name, input.shape.len()));
    }
    for (axis, (&got, &want)) in input.shape[1..].iter().zip(&expected).enumerate() {
        if got >= 0 && got != want {
            return Err(format!(
                "input `{}` has shape {:?} but the manifest ({:?}, {}×{}) needs {:?} after the batch axis (axis {} differs)",
                input.name,
                input.shape,
                pre.layout,
                pre.height,
                pre.width,
                expected,
                axis + 1
            ));
        }
    }
    let output = session.outputs.iter().find(|s| s.name == manifest.output_name).ok_or_else(|| {
        format!(
            "the manifest's output `{}` is not an output of the model (it has: {})",
            manifest.output_name,
            names(&session.outputs)
        )
    })?;
    if !output.is_float32 {
        return Err(format!("output `{}` is {}, graft reads float32", output.name, output.element_type));
    }
    if let Some(&last) = output.shape.last()
        && last >= 0
        && last as usize != classes
    {
        return Err(format!(
            "output `{}` has {last} classes but the labels file {} has {classes}",
            output.name,
            manifest.labels_file.display()
        ));
    }
    let batch = input.shape[0];
    let image_dims = expected.map(|d| d as usize);
    Ok((image_dims, (batch > 0).then_some(batch as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_and_channels_come_from_the_maps_shape() {
        // EfficientNet-Lite0's 14 × 14 map of 672 channels, NCHW as ONNX Runtime gives it.
        let map = SpatialShape::from_output(&[2, 672, 14, 14], Layout::Nchw).unwrap();
        assert_eq!((map.height, map.width, map.channels), (14, 14, 672));
        // A Keras export's NHWC map on a 2:1 grid.
        let wide = SpatialShape::from_output(&[1, 4, 8, 5], Layout::Nhwc).unwrap();
        assert_eq!((wide.height, wide.width, wide.channels), (4, 8, 5));
        assert!(SpatialShape::from_output(&[1, 1280], Layout::Nchw).is_err(), "a pooled vector is no map");
        assert!(SpatialShape::from_output(&[1, 0, 7, 7], Layout::Nchw).is_err(), "no channels");
    }

    #[test]
    fn nchw_maps_are_reordered_per_cell() {
        // 2 channels on a 1×3 grid: planes [a0 a1 a2] [b0 b1 b2] → a0 b0 a1 b1 a2 b2.
        let shape = SpatialShape { height: 1, width: 3, channels: 2, layout: Layout::Nchw };
        assert_eq!(shape.to_hwc(vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), [1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        let hwc = SpatialShape { layout: Layout::Nhwc, ..shape };
        assert_eq!(hwc.to_hwc(vec![1.0, 2.0, 3.0]), [1.0, 2.0, 3.0]);
    }
}
