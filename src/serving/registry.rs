//! The live registry: the configured models and their state (standby, loading, ready with a
//! warm session runner, failed with the reason, or unloaded on request), the trained models
//! served on them, and the memory they all take under `--max-model-memory`: models not pinned
//! load on their first request, and the least recently used make room for a new one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::loader::{LoadedModel, ModelRuntime, load_model};
use super::memory::{FIRST_LOAD_ESTIMATE, Resident, make_room, retained_by};
use super::trained::{TrainedHead, TrainedModel};
use crate::runtime::{ModelSession, ModelSource, open_session};
use crate::store::{BlobStore, TrainedModelRecord};
use crate::zoo::Manifest;

#[derive(Clone)]
pub enum ModelState {
    /// Not in memory: it loads on its first request (not pinned, or unloaded to make room).
    Standby,
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
    /// Unloaded on request: its sessions are freed once the requests in flight end, and it
    /// stays unloaded until `POST /v1/models/{name}/load`.
    Unloaded,
}

impl ModelState {
    pub const NAMES: [&'static str; 5] = ["standby", "loading", "ready", "failed", "unloaded"];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Standby => "standby",
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
    #[error("model {0} cannot load within the memory budget: {1}")]
    NoMemory(String, String),
}

/// How models share memory: which stay loaded, the budget the others load under, and how
/// long a request waits for a model to load.
#[derive(Debug, Clone)]
pub struct MemoryPolicy {
    /// Bytes all loaded models together may take (`--max-model-memory`); none: no limit.
    pub budget: Option<u64>,
    /// Models loaded at start and never unloaded to make room; the others load on their
    /// first request. `None`: every model (the default without a budget).
    pub preload: Option<Vec<String>>,
    /// How long a request waits for its model to load before a 503 with `Retry-After`.
    pub load_wait: Duration,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        Self { budget: None, preload: None, load_wait: Duration::from_secs(30) }
    }
}

/// A configured model's memory as `/v1/models` and the metrics show it.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ModelMemory {
    /// Loaded at start and never unloaded to make room (`--preload`, manifest `preload`).
    pub pinned: bool,
    /// Bytes its sessions hold now (weights, prepacked weights, arenas when kept); 0 when
    /// not loaded.
    pub bytes: u64,
    /// Of `bytes`, the optimised graph with the weights that all its sessions share (absent
    /// when not loaded, or when each session holds its own copy); the rest is per session:
    /// prepacked weights, kernels, and the arena when `--ort-arena` keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_weights_bytes: Option<u64>,
    /// What its last load measured (or, before any, the estimate the budget plans with).
    pub expected_bytes: u64,
    /// Loads since the server started (reloads and loads after an unload included).
    pub loads: u64,
    /// Times it was unloaded to make room for another model.
    pub evictions: u64,
}

struct Entry {
    manifest: Arc<Manifest>,
    state: ModelState,
    pinned: bool,
    /// Bytes its last load left allocated; kept while it is unloaded, to plan the next load.
    measured: Option<u64>,
    last_used: Instant,
    loads: u64,
    evictions: u64,
}

impl Entry {
    /// A model just registered: loading, never loaded.
    fn new(manifest: Arc<Manifest>, pinned: bool) -> Self {
        Self {
            manifest,
            state: ModelState::Loading,
            pinned,
            measured: None,
            last_used: Instant::now(),
            loads: 0,
            evictions: 0,
        }
    }

    /// Puts the model `name` (this entry's) in `state`, as `graft_model_state` says too.
    fn enter(&mut self, name: &str, state: ModelState) {
        record_state(name, &state);
        self.state = state;
    }

    fn expected_bytes(&self) -> u64 {
        self.measured.unwrap_or_else(|| first_load_estimate(&self.manifest))
    }

    fn memory(&self) -> ModelMemory {
        let loaded = match &self.state {
            ModelState::Ready(model) => Some(model),
            _ => None,
        };
        ModelMemory {
            pinned: self.pinned,
            bytes: if loaded.is_some() { self.expected_bytes() } else { 0 },
            shared_weights_bytes: loaded.and_then(|m| m.shared_weights_bytes),
            expected_bytes: self.expected_bytes(),
            loads: self.loads,
            evictions: self.evictions,
        }
    }
}

/// Whether `policy` keeps `manifest`'s model loaded: named by its `preload` (every model
/// when that is `None`, as without a budget), or `preload = true` in the manifest.
fn pins(policy: &MemoryPolicy, manifest: &Manifest) -> bool {
    manifest.preload || policy.preload.as_ref().is_none_or(|names| names.contains(&manifest.name))
}

fn first_load_estimate(manifest: &Manifest) -> u64 {
    let file = std::fs::metadata(&manifest.file).map_or(0, |m| m.len());
    (file as f64 * FIRST_LOAD_ESTIMATE) as u64
}

pub struct ModelRegistry {
    entries: RwLock<BTreeMap<String, Entry>>,
    trained: RwLock<BTreeMap<String, Arc<TrainedModel>>>,
    /// How every model loads: the configured ones, tuned bases and the prefixes jobs open.
    runtime: ModelRuntime,
    /// Where `POST /v1/models/{name}/load` reads `{name}.toml` (none: only reloads).
    model_dir: Option<PathBuf>,
    policy: MemoryPolicy,
    /// One load at a time: each measures what it leaves allocated, makes room first, and
    /// loads would only race for the cores.
    loading: Mutex<()>,
    /// Woken whenever a model's state changes, for the requests waiting on a load.
    changed: tokio::sync::Notify,
    /// Why the last load on demand of a model did not fit the budget, for its waiters.
    refusals: Mutex<BTreeMap<String, String>>,
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
    #[error("its tuned base cannot load within the memory budget: {0}")]
    NoMemory(String),
}

/// `graft_model_state{model, state}`: 1 for the model's state, 0 for the others.
fn record_state(name: &str, state: &ModelState) {
    for candidate in ModelState::NAMES {
        let value = if candidate == state.name() { 1.0 } else { 0.0 };
        metrics::gauge!("graft_model_state", "model" => name.to_owned(), "state" => candidate).set(value);
    }
}

/// `graft_model_memory_bytes{model}`: what a model (or a trained model's tuned base) holds.
fn record_bytes(name: &str, bytes: u64) {
    metrics::gauge!("graft_model_memory_bytes", "model" => name.to_owned()).set(bytes as f64);
}

impl ModelRegistry {
    /// Registers the models to serve, all in the loading state, to be loaded with `runtime`.
    pub fn new(manifests: impl IntoIterator<Item = Manifest>, runtime: ModelRuntime) -> Self {
        crate::telemetry::install();
        let entries: BTreeMap<String, Entry> = manifests
            .into_iter()
            .map(|m| {
                let entry = Entry::new(Arc::new(m), true);
                (entry.manifest.name.clone(), entry)
            })
            .collect();
        for name in entries.keys() {
            record_state(name, &ModelState::Loading);
        }
        Self {
            entries: RwLock::new(entries),
            trained: RwLock::default(),
            runtime,
            model_dir: None,
            policy: MemoryPolicy::default(),
            loading: Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            refusals: Mutex::default(),
        }
    }

    /// The registry that loads new manifests from `dir` on request.
    pub fn with_model_dir(self, dir: PathBuf) -> Self {
        Self { model_dir: Some(dir), ..self }
    }

    /// The registry that keeps its models within `policy`: those it does not pin wait in
    /// standby for their first request. Err names a `--preload` model that is not configured.
    pub fn with_memory_policy(self, policy: MemoryPolicy) -> Result<Self, String> {
        {
            let mut entries = self.entries.write().expect("registry lock");
            if let Some(names) = &policy.preload
                && let Some(unknown) = names.iter().find(|n| !entries.contains_key(n.as_str()))
            {
                return Err(format!("--preload names {unknown}, which is not among the models served"));
            }
            for (name, entry) in entries.iter_mut() {
                entry.pinned = pins(&policy, &entry.manifest);
                if !entry.pinned {
                    // Requests for it start its load from the first moment.
                    entry.enter(name, ModelState::Standby);
                }
            }
        }
        Ok(Self { policy, ..self })
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
        self.entries.read().expect("registry lock").get(name).map(|e| (e.manifest.clone(), e.state.clone()))
    }

    pub fn list(&self) -> Vec<(Arc<Manifest>, ModelState)> {
        self.entries.read().expect("registry lock").values().map(|e| (e.manifest.clone(), e.state.clone())).collect()
    }

    /// The memory of the configured model `name`.
    pub fn memory(&self, name: &str) -> Option<ModelMemory> {
        self.entries.read().expect("registry lock").get(name).map(Entry::memory)
    }

    /// The `--max-model-memory` budget in bytes, if there is one.
    pub fn memory_budget(&self) -> Option<u64> {
        self.policy.budget
    }

    pub fn set_state(&self, name: &str, state: ModelState) {
        if let Some(entry) = self.entries.write().expect("registry lock").get_mut(name) {
            entry.enter(name, state);
        }
        self.changed.notify_waiters();
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
        let removed = self.trained.write().expect("registry lock").remove(name);
        if removed.as_ref().is_some_and(|m| m.tuned_base.take().is_some()) {
            record_bytes(&tuned_base_name(name), 0);
        }
        removed
    }

    /// The loaded model `name`, or why it cannot be used now (one in standby is not loaded:
    /// `acquire` loads it).
    pub fn ready(&self, name: &str) -> Result<Arc<LoadedModel>, Unavailable> {
        match self.get(name) {
            None => Err(Unavailable::Unknown(name.to_owned())),
            Some((_, ModelState::Loading | ModelState::Standby)) => Err(Unavailable::Loading(name.to_owned())),
            Some((_, ModelState::Failed(reason))) => Err(Unavailable::Failed(name.to_owned(), reason)),
            Some((_, ModelState::Unloaded)) => Err(Unavailable::Unloaded(name.to_owned())),
            Some((_, ModelState::Ready(model))) => Ok(model),
        }
    }

    /// The model `name` for a request: at once when it is loaded (it becomes the most
    /// recently used), else once its load — started here when it is in standby — is done,
    /// waiting at most the policy's `load_wait`.
    pub async fn acquire(self: &Arc<Self>, name: &str) -> Result<Arc<LoadedModel>, Unavailable> {
        self.acquire_waiting(name, self.policy.load_wait).await
    }

    /// As `acquire`, waiting at most `wait` for a load (a training job waits longer than a
    /// request).
    pub async fn acquire_waiting(
        self: &Arc<Self>,
        name: &str,
        wait: Duration,
    ) -> Result<Arc<LoadedModel>, Unavailable> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited_on_a_load = false;
        loop {
            // Registered before the state is read, so a change in between still wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(model) = self.touch_or_start_load(name, waited_on_a_load)? {
                return Ok(model);
            }
            waited_on_a_load = true;
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Unavailable::Loading(name.to_owned()));
            }
        }
    }

    /// A ready model, marked used now; `None` while it loads (its load started here when it
    /// was in standby). A model back in standby after a load this request waited on did not
    /// fit the budget: the reason is the answer.
    fn touch_or_start_load(
        self: &Arc<Self>,
        name: &str,
        waited_on_a_load: bool,
    ) -> Result<Option<Arc<LoadedModel>>, Unavailable> {
        let refusal = lock(&self.refusals).get(name).cloned();
        if waited_on_a_load
            && let Some(reason) = refusal
            && matches!(self.get(name), Some((_, ModelState::Standby)))
        {
            return Err(Unavailable::NoMemory(name.to_owned(), reason));
        }
        let mut entries = self.entries.write().expect("registry lock");
        let entry = entries.get_mut(name).ok_or_else(|| Unavailable::Unknown(name.to_owned()))?;
        match &entry.state {
            ModelState::Ready(model) => {
                entry.last_used = Instant::now();
                Ok(Some(model.clone()))
            }
            ModelState::Loading => Ok(None),
            ModelState::Failed(reason) => Err(Unavailable::Failed(name.to_owned(), reason.clone())),
            ModelState::Unloaded => Err(Unavailable::Unloaded(name.to_owned())),
            ModelState::Standby => {
                entry.enter(name, ModelState::Loading);
                let (registry, manifest) = (self.clone(), (*entry.manifest).clone());
                tokio::task::spawn_blocking(move || registry.load_on_demand(manifest));
                Ok(None)
            }
        }
    }

    /// Loads a model a request found in standby; the requests waiting on it learn the
    /// outcome from its state (and, when it cannot fit, from `refusals`).
    fn load_on_demand(&self, manifest: Manifest) {
        let _ = self.load_within_budget(manifest, true);
    }

    /// Ready when every registered model is ready, those unloaded on request or waiting in
    /// standby for their first request aside.
    pub fn all_ready(&self) -> bool {
        self.entries
            .read()
            .expect("registry lock")
            .values()
            .all(|e| matches!(e.state, ModelState::Ready(_) | ModelState::Unloaded | ModelState::Standby))
    }

    /// Loads (or reloads) `manifest`'s model, registering it when it is new. A model that is
    /// ready keeps serving while its new version loads, and is replaced only once that one
    /// is ready: a reload that fails to load leaves it serving. Any other model shows
    /// `loading` meanwhile. Under a memory budget, the least recently used models that are
    /// not pinned are unloaded first to make room; a model that cannot fit is refused (and,
    /// when its new version turns out too large once loaded, goes to standby). Err is why.
    pub fn load(&self, manifest: Manifest) -> Result<Arc<LoadedModel>, String> {
        self.load_within_budget(manifest, false).map_err(|e| match e {
            LoadRefusal::NoMemory(reason) | LoadRefusal::Failed(reason) => reason,
        })
    }

    /// `--watch-models`' answer to a new or changed manifest: a model in memory is reloaded;
    /// one in standby only takes the new manifest, and loads it on its next request.
    pub fn refresh(&self, manifest: Manifest) -> Result<(), String> {
        {
            let mut entries = self.entries.write().expect("registry lock");
            if let Some(entry) = entries.get_mut(&manifest.name)
                && matches!(entry.state, ModelState::Standby)
                && !pins(&self.policy, &manifest)
            {
                entry.manifest = Arc::new(manifest);
                entry.measured = None;
                return Ok(());
            }
        }
        self.load(manifest).map(drop)
    }

    fn load_within_budget(&self, manifest: Manifest, on_demand: bool) -> Result<Arc<LoadedModel>, LoadRefusal> {
        let _turn = lock(&self.loading);
        let name = manifest.name.clone();
        let manifest = Arc::new(manifest);
        let (serving, expected, pinned) = {
            let mut entries = self.entries.write().expect("registry lock");
            if on_demand && let Some(Entry { state: ModelState::Ready(model), .. }) = entries.get(&name) {
                // Loaded while this load waited its turn.
                return Ok(model.clone());
            }
            let serving = entries.get(&name).is_some_and(|e| matches!(e.state, ModelState::Ready(_)));
            let entry = entries
                .entry(name.clone())
                .or_insert_with(|| Entry::new(manifest.clone(), pins(&self.policy, &manifest)));
            if !serving {
                entry.enter(&name, ModelState::Loading);
            }
            let expected = entry.measured.unwrap_or_else(|| first_load_estimate(&manifest));
            (serving, expected, entry.pinned)
        };
        self.changed.notify_waiters();
        let itself = Holder::Model(name.clone());
        if let Err(reason) = self.make_room_for(&itself, expected, true) {
            if !pinned {
                return Err(self.refuse(&name, serving, reason));
            }
            tracing::warn!(model = %name, "a pinned model loads over the memory budget: {reason}");
        }
        lock(&self.refusals).remove(&name);
        let started = Instant::now();
        let (loaded, bytes) = retained_by(|| load_model_unwinding(&self.runtime, manifest.clone()));
        metrics::gauge!("graft_model_load_seconds", "model" => name.clone()).set(started.elapsed().as_secs_f64());
        let outcome = match loaded {
            Ok(model) => {
                let model = Arc::new(model);
                let bytes = bytes.unwrap_or(expected);
                tracing::info!(model = %name, provider = model.provider, mb = bytes / 1_000_000, "model ready");
                metrics::counter!("graft_model_loads_total", "model" => name.clone()).increment(1);
                record_bytes(&name, bytes);
                if let Some(entry) = self.entries.write().expect("registry lock").get_mut(&name) {
                    entry.manifest = manifest;
                    entry.enter(&name, ModelState::Ready(model.clone()));
                    entry.measured = Some(bytes);
                    entry.last_used = Instant::now();
                    entry.loads += 1;
                }
                // A first load is planned from the file's size; what it measured may not fit.
                match self.make_room_for(&itself, bytes, false) {
                    Ok(()) => Ok(model),
                    Err(reason) if pinned => {
                        tracing::warn!(model = %name, "a pinned model is over the memory budget: {reason}");
                        Ok(model)
                    }
                    Err(reason) => Err(self.refuse(&name, false, reason)),
                }
            }
            Err(reason) if serving => {
                tracing::error!(model = %name, "reload refused, the loaded version keeps serving: {reason}");
                Err(LoadRefusal::Failed(reason))
            }
            Err(reason) => {
                tracing::error!(model = %name, "model refused: {reason}");
                self.set_state(&name, ModelState::Failed(reason.clone()));
                Err(LoadRefusal::Failed(reason))
            }
        };
        self.changed.notify_waiters();
        outcome
    }

    /// Records why `name` cannot load within the budget, for the requests waiting on it, and
    /// puts it in standby — before waking them, so none of them starts the load again; a
    /// version that serves (`serving`) keeps serving.
    fn refuse(&self, name: &str, serving: bool, reason: String) -> LoadRefusal {
        tracing::warn!(model = %name, "not loaded: {reason}");
        lock(&self.refusals).insert(name.to_owned(), reason.clone());
        if !serving && let Some(entry) = self.entries.write().expect("registry lock").get_mut(name) {
            entry.enter(name, ModelState::Standby);
            record_bytes(name, 0);
        }
        self.changed.notify_waiters();
        LoadRefusal::NoMemory(reason)
    }

    /// Unloads the least recently used models that are not pinned (tuned bases included)
    /// until `needed` more bytes for `loading` fit the budget. Err when even that is not
    /// enough. `loading` itself stays; its loaded version counts only when `count_itself`
    /// (before a reload, the old version serves until the new one is ready).
    fn make_room_for(&self, loading: &Holder, needed: u64, count_itself: bool) -> Result<(), String> {
        let Some(budget) = self.policy.budget else { return Ok(()) };
        let (mut holders, mut residents) = self.residents();
        for (holder, resident) in holders.iter().zip(residents.iter_mut()) {
            // A reload's old version serves until the new one is ready: it cannot go.
            resident.pinned |= holder == loading;
        }
        if !count_itself && let Some(at) = holders.iter().position(|h| h == loading) {
            holders.remove(at);
            residents.remove(at);
        }
        for victim in make_room(&residents, needed, budget)? {
            tracing::info!(model = %residents[victim].name, for_model = %loading.name(), "unloaded to make room within --max-model-memory");
            self.evict(&holders[victim]);
        }
        Ok(())
    }

    /// Everything that holds model memory now: configured models and tuned bases.
    fn residents(&self) -> (Vec<Holder>, Vec<Resident>) {
        let entries = self.entries.read().expect("registry lock");
        let configured = entries.iter().filter(|(_, e)| matches!(e.state, ModelState::Ready(_))).map(|(name, e)| {
            let resident =
                Resident { name: name.clone(), bytes: e.expected_bytes(), last_used: e.last_used, pinned: e.pinned };
            (Holder::Model(name.clone()), resident)
        });
        let trained = self.trained.read().expect("registry lock");
        let tuned = trained.iter().filter_map(|(name, model)| {
            let (bytes, last_used) = model.tuned_base.resident()?;
            let resident = Resident { name: tuned_base_name(name), bytes, last_used, pinned: false };
            Some((Holder::TunedBase(name.clone()), resident))
        });
        configured.chain(tuned).unzip()
    }

    /// Unloads `holder` to make room: a configured model goes to standby and loads again on
    /// its next request; a tuned base loads again on its model's next request.
    fn evict(&self, holder: &Holder) {
        match holder {
            Holder::TunedBase(model) => {
                if let Some(trained) = self.trained(model) {
                    trained.tuned_base.take();
                }
            }
            Holder::Model(name) => {
                if let Some(entry) = self.entries.write().expect("registry lock").get_mut(name) {
                    entry.enter(name, ModelState::Standby);
                    entry.evictions += 1;
                }
            }
        }
        record_bytes(&holder.name(), 0);
        metrics::counter!("graft_model_evictions_total", "model" => holder.name()).increment(1);
        self.changed.notify_waiters();
    }

    /// Unloads the configured model `name`: new requests get 503, the requests in flight
    /// finish, and its sessions are freed with the last of them. False when no such model
    /// is configured.
    pub fn unload(&self, name: &str) -> bool {
        let unloaded = match self.entries.write().expect("registry lock").get_mut(name) {
            Some(entry) => std::mem::replace(&mut entry.state, ModelState::Unloaded),
            None => return false,
        };
        record_state(name, &ModelState::Unloaded);
        record_bytes(name, 0);
        drop(unloaded);
        self.changed.notify_waiters();
        tracing::info!(model = %name, "model unloaded");
        true
    }

    /// Loads every pinned model in turn, recording each outcome; the others wait in standby
    /// for their first request.
    pub fn load_all(&self) {
        if let Some(budget) = self.policy.budget {
            metrics::gauge!("graft_model_memory_budget_bytes").set(budget as f64);
        }
        for (manifest, _) in self.list() {
            match self.memory(&manifest.name) {
                Some(memory) if memory.pinned => drop(self.load((*manifest).clone())),
                _ => record_bytes(&manifest.name, 0),
            }
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
}

/// A trained model's tuned base is budgeted as `{model}.tuned-base`.
fn tuned_base_name(model: &str) -> String {
    format!("{model}.tuned-base")
}

/// What holds model memory: a configured model, or the tuned base of a trained one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Model(String),
    TunedBase(String),
}

impl Holder {
    /// As the metrics and the logs name it.
    fn name(&self) -> String {
        match self {
            Self::Model(name) => name.clone(),
            Self::TunedBase(model) => tuned_base_name(model),
        }
    }
}

enum LoadRefusal {
    NoMemory(String),
    Failed(String),
}

/// The registry's mutexes guard bookkeeping that a panicking load leaves consistent (`()`,
/// or a map written in one call): a panic elsewhere must not stop every later load.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `load_model`, with a panic inside ONNX Runtime's bindings or the warm-up turned into a
/// failed load instead of a model left loading for good.
fn load_model_unwinding(runtime: &ModelRuntime, manifest: Arc<Manifest>) -> Result<LoadedModel, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_model(runtime, manifest))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(format!("loading stopped with a panic: {message}"))
    })
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
    /// runtime on its first request (and after it was unloaded to make room), within the
    /// memory budget like any model, waiting at most the policy's `load_wait`.
    pub async fn tuned_base(
        self: &Arc<Self>,
        model: &Arc<TrainedModel>,
        blobs: &BlobStore,
        key: &str,
    ) -> Result<Arc<LoadedModel>, TrainedModelError> {
        let load = || async {
            // The tuned copy stands in for the base: only the base's manifest is needed.
            let (base, _) = self
                .get(&model.record.base_model)
                .ok_or_else(|| Unavailable::Unknown(model.record.base_model.clone()))?;
            let path = blobs.local_path(key).map_err(|e| TrainedModelError::TunedBase(e.to_string()))?;
            let (registry, trained) = (self.clone(), model.clone());
            tokio::task::spawn_blocking(move || registry.load_tuned_base(&base, &trained, path))
                .await
                .map_err(|e| TrainedModelError::TunedBase(e.to_string()))?
        };
        let name = model.record.name.clone();
        tokio::time::timeout(self.policy.load_wait, model.tuned_base.get_or_load(load))
            .await
            .unwrap_or(Err(TrainedModelError::BaseUnavailable(Unavailable::Loading(tuned_base_name(&name)))))
    }

    /// Loads `file`, a tuned copy of the base `base`, as the base `model` is served on, after
    /// making room for it, and puts it in the model's slot (a load that outlives the request
    /// that started it still serves the next); returns it with the bytes it took.
    fn load_tuned_base(
        &self,
        base: &Manifest,
        model: &TrainedModel,
        file: PathBuf,
    ) -> Result<(Arc<LoadedModel>, u64), TrainedModelError> {
        let _turn = lock(&self.loading);
        if let Some(loaded) = model.tuned_base.loaded() {
            return Ok(loaded);
        }
        let itself = Holder::TunedBase(model.record.name.clone());
        let manifest = Manifest { name: itself.name(), file, sha256: None, url: None, ..base.clone() };
        let expected = model.tuned_base.measured().unwrap_or_else(|| first_load_estimate(&manifest));
        self.make_room_for(&itself, expected, true).map_err(TrainedModelError::NoMemory)?;
        let (loaded, bytes) = retained_by(|| load_model_unwinding(&self.runtime, Arc::new(manifest.clone())));
        let tuned = Arc::new(loaded.map_err(TrainedModelError::TunedBase)?);
        let bytes = bytes.unwrap_or(expected);
        model.tuned_base.store(tuned.clone(), bytes);
        if let Err(reason) = self.make_room_for(&itself, bytes, false) {
            model.tuned_base.take();
            return Err(TrainedModelError::NoMemory(reason));
        }
        record_bytes(&itself.name(), bytes);
        metrics::counter!("graft_model_loads_total", "model" => itself.name()).increment(1);
        Ok((tuned, bytes))
    }
}
