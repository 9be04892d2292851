//! The registry of configured models and their state: loading, ready (with a warm
//! session runner) or failed with the reason. The API serves only ready models.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ort::environment::Environment;

use super::{Labels, Manifest};
use crate::runtime::graph::expose_outputs;
use crate::runtime::{
    Batching, ModelRunner, ModelSession, ModelSource, RunnerConfig, SessionOptions, TensorSpec, open_session,
};
use crate::store::TrainedModelRecord;
use crate::train::Head;
use crate::vision::Layout;

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
}

impl LoadedModel {
    /// Index of the pooled features in each image's outputs.
    pub const FEATURES_OUTPUT: usize = 1;
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
}

impl ModelState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Ready(_) => "ready",
            Self::Failed(_) => "failed",
        }
    }
}

/// A head trained by a job, served on its base model's features.
pub struct TrainedModel {
    pub record: TrainedModelRecord,
    pub head: Head,
}

/// Why a configured model cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no model named {0:?} is configured")]
    Unknown(String),
    #[error("model {0} is still loading")]
    Loading(String),
    #[error("model {0} failed to load: {1}")]
    Failed(String, String),
}

#[derive(Default)]
pub struct ModelRegistry {
    entries: RwLock<BTreeMap<String, (Arc<Manifest>, ModelState)>>,
    trained: RwLock<BTreeMap<String, Arc<TrainedModel>>>,
}

impl ModelRegistry {
    /// Registers the models to serve, all in the loading state.
    pub fn new(manifests: impl IntoIterator<Item = Manifest>) -> Self {
        let entries = manifests.into_iter().map(|m| (m.name.clone(), (Arc::new(m), ModelState::Loading))).collect();
        Self { entries: RwLock::new(entries), trained: RwLock::default() }
    }

    pub fn get(&self, name: &str) -> Option<(Arc<Manifest>, ModelState)> {
        self.entries.read().expect("registry lock").get(name).cloned()
    }

    pub fn list(&self) -> Vec<(Arc<Manifest>, ModelState)> {
        self.entries.read().expect("registry lock").values().cloned().collect()
    }

    pub fn set_state(&self, name: &str, state: ModelState) {
        if let Some(entry) = self.entries.write().expect("registry lock").get_mut(name) {
            entry.1 = state;
        }
    }

    pub fn trained(&self, name: &str) -> Option<Arc<TrainedModel>> {
        self.trained.read().expect("registry lock").get(name).cloned()
    }

    pub fn trained_list(&self) -> Vec<Arc<TrainedModel>> {
        self.trained.read().expect("registry lock").values().cloned().collect()
    }

    pub fn insert_trained(&self, model: TrainedModel) {
        self.trained.write().expect("registry lock").insert(model.record.name.clone(), Arc::new(model));
    }

    pub fn remove_trained(&self, name: &str) -> Option<Arc<TrainedModel>> {
        self.trained.write().expect("registry lock").remove(name)
    }

    /// The loaded model `name`, or why it cannot be used.
    pub fn ready(&self, name: &str) -> Result<Arc<LoadedModel>, Unavailable> {
        match self.get(name) {
            None => Err(Unavailable::Unknown(name.to_owned())),
            Some((_, ModelState::Loading)) => Err(Unavailable::Loading(name.to_owned())),
            Some((_, ModelState::Failed(reason))) => Err(Unavailable::Failed(name.to_owned(), reason)),
            Some((_, ModelState::Ready(model))) => Ok(model),
        }
    }

    /// Ready when every registered model is ready.
    pub fn all_ready(&self) -> bool {
        self.entries.read().expect("registry lock").values().all(|(_, state)| matches!(state, ModelState::Ready(_)))
    }

    /// Loads every registered model in turn, recording each outcome.
    pub fn load_all(&self, env: &Environment, options: &SessionOptions, batching: &Batching) {
        for (manifest, _) in self.list() {
            let state = match load_model(env, manifest.clone(), options, batching) {
                Ok(model) => {
                    tracing::info!(model = %manifest.name, provider = model.provider, "model ready");
                    ModelState::Ready(Arc::new(model))
                }
                Err(reason) => {
                    tracing::error!(model = %manifest.name, "model refused: {reason}");
                    ModelState::Failed(reason)
                }
            };
            self.set_state(&manifest.name, state);
        }
    }
}

/// Opens the model's session, checks it against its manifest, starts its runner and
/// warms it up at every batch size it will run, so no request pays for a first run.
pub fn load_model(
    env: &Environment,
    manifest: Arc<Manifest>,
    options: &SessionOptions,
    batching: &Batching,
) -> Result<LoadedModel, String> {
    if !manifest.file.is_file() {
        return Err(format!(
            "the model file {} is missing; run `graft models pull {}` to fetch it",
            manifest.file.display(),
            manifest.name
        ));
    }
    let labels = Labels::read(&manifest.labels_file)?;
    // Expose the pooled-feature tensor as a second output so that one session serves
    // both ImageNet scores and every head trained on this base.
    let edited = match &manifest.features {
        None => Err(format!("the manifest of {} names no `features` tensor", manifest.name)),
        Some(tensor) => fs_err::read(&manifest.file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| expose_outputs(&bytes, &[tensor]).map_err(|e| e.to_string())),
    };
    let source = match &edited {
        Ok(bytes) => ModelSource::Edited { path: &manifest.file, bytes },
        Err(reason) => {
            tracing::warn!(model = %manifest.name, "serving without pooled features: {reason}");
            ModelSource::File(&manifest.file)
        }
    };
    let session = open_session(env, source, options).map_err(|e| e.to_string())?;
    let (image_dims, batch_limit) = check_io(&manifest, &session, labels.len())?;
    let max_batch_size = batch_limit.map_or(batching.max_batch_size, |fixed| fixed.min(batching.max_batch_size)).max(1);
    let provider = session.provider;
    let (inputs, outputs) = (session.inputs.clone(), session.outputs.clone());
    let mut output_names = vec![manifest.output_name.clone()];
    output_names.extend(edited.is_ok().then(|| manifest.features.clone()).flatten());
    let config = RunnerConfig {
        input_name: manifest.input_name.clone(),
        output_names,
        image_dims,
        max_batch_size,
        max_delay: batching.max_delay,
        queue_capacity: batching.queue_capacity,
    };
    let runner = ModelRunner::spawn(&manifest.name, session, config).map_err(|e| e.to_string())?;
    let image_len = runner.image_len();
    let mut features = edited.map(|_| 0);
    for batch in 1..=max_batch_size {
        let images =
            runner.infer_blocking(vec![0.0; image_len * batch], batch).map_err(|e| format!("warm-up failed: {e}"))?;
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
        }
    }
    Ok(LoadedModel { manifest, labels, runner, provider, inputs, outputs, features })
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
