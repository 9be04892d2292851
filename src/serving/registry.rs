//! The live registry: the configured models and their state (loading, ready with a warm
//! session runner, or failed with the reason), the trained models served on them, and the
//! ONNX Runtime settings every model loads with, given when the registry is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::loader::{LoadedModel, ModelRuntime, load_model};
use super::trained::{TrainedHead, TrainedModel};
use crate::runtime::{ModelSession, ModelSource, open_session};
use crate::store::{BlobStore, TrainedModelRecord};
use crate::zoo::Manifest;

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
    /// Unloaded on request: its sessions are freed once the requests in flight end.
    Unloaded,
}

impl ModelState {
    pub const NAMES: [&'static str; 4] = ["loading", "ready", "failed", "unloaded"];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Ready(_) => "ready",
            Self::Failed(_) => "failed",
            Self::Unloaded => "unloaded",
        }
    }
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
    #[error("model {0} is unloaded; POST /v1/models/{0}/load loads it")]
    Unloaded(String),
}

pub struct ModelRegistry {
    entries: RwLock<BTreeMap<String, (Arc<Manifest>, ModelState)>>,
    trained: RwLock<BTreeMap<String, Arc<TrainedModel>>>,
    /// How every model loads: the configured ones, tuned bases and the prefixes jobs open.
    runtime: ModelRuntime,
    /// Where `POST /v1/models/{name}/load` reads `{name}.toml` (none: only reloads).
    model_dir: Option<PathBuf>,
}

/// Why a trained model cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TrainedModelError {
    #[error("the head of {name} is unreadable: {reason}")]
    UnreadableHead { name: String, reason: String },
    #[error("{0} was removed while loading")]
    Removed(String),
    #[error("its base model is not available: {0}")]
    BaseUnavailable(#[from] Unavailable),
    #[error("its tuned base does not load: {0}")]
    TunedBase(String),
}

/// `graft_model_state{model, state}`: 1 for the model's state, 0 for the others.
fn record_state(name: &str, state: &ModelState) {
    for candidate in ModelState::NAMES {
        let value = if candidate == state.name() { 1.0 } else { 0.0 };
        metrics::gauge!("graft_model_state", "model" => name.to_owned(), "state" => candidate).set(value);
    }
}

impl ModelRegistry {
    /// Registers the models to serve, all in the loading state, to be loaded with `runtime`.
    pub fn new(manifests: impl IntoIterator<Item = Manifest>, runtime: ModelRuntime) -> Self {
        crate::telemetry::install();
        let entries: BTreeMap<String, (Arc<Manifest>, ModelState)> =
            manifests.into_iter().map(|m| (m.name.clone(), (Arc::new(m), ModelState::Loading))).collect();
        for name in entries.keys() {
            record_state(name, &ModelState::Loading);
        }
        Self { entries: RwLock::new(entries), trained: RwLock::default(), runtime, model_dir: None }
    }

    /// The registry that loads new manifests from `dir` on request.
    pub fn with_model_dir(self, dir: PathBuf) -> Self {
        Self { model_dir: Some(dir), ..self }
    }

    /// The manifest to load `name` with: `{name}.toml` read afresh from the model folder
    /// (a changed manifest is picked up), else the registered one. `None` when neither exists.
    pub fn manifest_to_load(&self, name: &str) -> Result<Option<Manifest>, String> {
        if !crate::zoo::is_valid_model_name(name) {
            return Ok(None);
        }
        if let Some(path) = self.model_dir.as_ref().map(|dir| dir.join(format!("{name}.toml")))
            && path.is_file()
        {
            let manifest = Manifest::load(&path).map_err(|e| e.to_string())?;
            return Ok((manifest.name == name).then_some(manifest));
        }
        Ok(self.get(name).map(|(manifest, _)| (*manifest).clone()))
    }

    pub fn get(&self, name: &str) -> Option<(Arc<Manifest>, ModelState)> {
        self.entries.read().expect("registry lock").get(name).cloned()
    }

    pub fn list(&self) -> Vec<(Arc<Manifest>, ModelState)> {
        self.entries.read().expect("registry lock").values().cloned().collect()
    }

    pub fn set_state(&self, name: &str, state: ModelState) {
        if let Some(entry) = self.entries.write().expect("registry lock").get_mut(name) {
            record_state(name, &state);
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
            Some((_, ModelState::Unloaded)) => Err(Unavailable::Unloaded(name.to_owned())),
            Some((_, ModelState::Ready(model))) => Ok(model),
        }
    }

    /// Ready when every registered model is ready, those unloaded on request aside.
    pub fn all_ready(&self) -> bool {
        self.entries
            .read()
            .expect("registry lock")
            .values()
            .all(|(_, state)| matches!(state, ModelState::Ready(_) | ModelState::Unloaded))
    }

    /// Loads (or reloads) `manifest`'s model, registering it when it is new. A model that is
    /// ready keeps serving while its new version loads, and is replaced only once that one
    /// is ready: a reload that fails leaves it serving. Any other model shows `loading`
    /// meanwhile. Err is the reason the load failed.
    pub fn load(&self, manifest: Manifest) -> Result<Arc<LoadedModel>, String> {
        let name = manifest.name.clone();
        let manifest = Arc::new(manifest);
        let serving = matches!(self.get(&name), Some((_, ModelState::Ready(_))));
        if !serving {
            self.entries.write().expect("registry lock").insert(name.clone(), (manifest.clone(), ModelState::Loading));
            record_state(&name, &ModelState::Loading);
        }
        let started = std::time::Instant::now();
        let loaded = load_model(&self.runtime, manifest.clone());
        metrics::gauge!("graft_model_load_seconds", "model" => name.clone()).set(started.elapsed().as_secs_f64());
        match loaded {
            Ok(model) => {
                let model = Arc::new(model);
                tracing::info!(model = %name, provider = model.provider, "model ready");
                let state = ModelState::Ready(model.clone());
                record_state(&name, &state);
                self.entries.write().expect("registry lock").insert(name, (manifest, state));
                Ok(model)
            }
            Err(reason) if serving => {
                tracing::error!(model = %name, "reload refused, the loaded version keeps serving: {reason}");
                Err(reason)
            }
            Err(reason) => {
                tracing::error!(model = %name, "model refused: {reason}");
                self.set_state(&name, ModelState::Failed(reason.clone()));
                Err(reason)
            }
        }
    }

    /// Unloads the configured model `name`: new requests get 503, the requests in flight
    /// finish, and its sessions are freed with the last of them. False when no such model
    /// is configured.
    pub fn unload(&self, name: &str) -> bool {
        let unloaded = match self.entries.write().expect("registry lock").get_mut(name) {
            Some(entry) => std::mem::replace(&mut entry.1, ModelState::Unloaded),
            None => return false,
        };
        record_state(name, &ModelState::Unloaded);
        drop(unloaded);
        tracing::info!(model = %name, "model unloaded");
        true
    }

    /// Loads every registered model in turn, recording each outcome.
    pub fn load_all(&self) {
        for (manifest, _) in self.list() {
            let started = std::time::Instant::now();
            let loaded = load_model(&self.runtime, manifest.clone());
            metrics::gauge!("graft_model_load_seconds", "model" => manifest.name.clone())
                .set(started.elapsed().as_secs_f64());
            let state = match loaded {
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

    /// A session for an edited graph (a base's prefix, say), with the registry's settings.
    pub fn open_graph(&self, label: &str, bytes: &[u8]) -> Result<ModelSession, String> {
        let path = PathBuf::from(label);
        open_session(&self.runtime.env, ModelSource::Edited { path: &path, bytes }, &self.runtime.options)
            .map_err(|e| e.to_string())
    }

    /// ONNX Runtime's environment and the session settings models load with.
    pub fn runtime(&self) -> &ModelRuntime {
        &self.runtime
    }

    /// Loads `file`, an edited copy of the base `base` (same input, outputs and
    /// preprocessing; an INT8 one, say), as `name`; `sha256`, when given, is its identity in
    /// the feature cache.
    pub fn load_variant(
        &self,
        base: &Manifest,
        name: &str,
        file: PathBuf,
        sha256: Option<String>,
    ) -> Result<LoadedModel, String> {
        let manifest = Manifest { name: name.to_owned(), file, sha256, url: None, ..base.clone() };
        load_model(&self.runtime, Arc::new(manifest))
    }

    /// Loads `file`, a tuned copy of the base `base`, as the base the trained model `name`
    /// is served on.
    pub fn load_tuned_base(&self, base: &Manifest, name: &str, file: PathBuf) -> Result<LoadedModel, String> {
        self.load_variant(base, &format!("{name}.tuned-base"), file, None)
    }
}

impl ModelRegistry {
    /// The registry's copy of the trained model `record` describes, or its head read from
    /// `blobs` and registered (a model trained by a worker in another process).
    pub fn trained_or_load(
        &self,
        record: TrainedModelRecord,
        blobs: &BlobStore,
    ) -> Result<Arc<TrainedModel>, TrainedModelError> {
        if let Some(model) = self.trained(&record.name) {
            return Ok(model);
        }
        let name = record.name.clone();
        let unreadable = |reason: String| TrainedModelError::UnreadableHead { name: name.clone(), reason };
        let bytes = blobs.get(&record.head_blob).map_err(|e| unreadable(e.to_string()))?;
        let head = TrainedHead::from_bytes(&record.task, &bytes).map_err(unreadable)?;
        self.insert_trained(TrainedModel::new(record, head));
        self.trained(&name).ok_or(TrainedModelError::Removed(name))
    }

    /// The tuned copy of the base `model` was trained with (blob `key`), loaded off the async
    /// runtime on its first request and kept with the model.
    pub async fn tuned_base(
        self: &Arc<Self>,
        model: &TrainedModel,
        blobs: &BlobStore,
        key: &str,
    ) -> Result<Arc<LoadedModel>, TrainedModelError> {
        let load = || async {
            let base = self.ready(&model.record.base_model)?;
            let path = blobs.local_path(key).map_err(|e| TrainedModelError::TunedBase(e.to_string()))?;
            let (registry, name) = (self.clone(), model.record.name.clone());
            tokio::task::spawn_blocking(move || registry.load_tuned_base(&base.manifest, &name, path))
                .await
                .map_err(|e| TrainedModelError::TunedBase(e.to_string()))?
                .map(Arc::new)
                .map_err(TrainedModelError::TunedBase)
        };
        model.tuned_base.get_or_try_init(load).await.cloned()
    }
}
