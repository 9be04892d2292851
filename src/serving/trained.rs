//! Trained models: what a job trained (a classifier, or class and box heads), the task it
//! serves, and loading both from the blob store on first use — the head when a model trained
//! elsewhere is first asked for, the tuned copy of its base on its first request.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::loader::LoadedModel;
use crate::store::TrainedModelRecord;
use crate::train::{Head, LocalizeHeadKind, LocalizerHead};
use crate::vision::{Geometry, Preprocessing};

/// What a trained model does.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class head (class-folder or box datasets).
    #[default]
    Classify,
    /// Class and box heads trained together (box datasets).
    Localize,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classify => "classify",
            Self::Localize => "localize",
        }
    }
}

impl FromStr for Task {
    type Err = String;

    fn from_str(task: &str) -> Result<Self, String> {
        match task {
            "classify" => Ok(Self::Classify),
            "localize" => Ok(Self::Localize),
            other => Err(format!("unknown task {other:?}")),
        }
    }
}

/// A head trained by a job, served on its base model's features — or, when the job tuned
/// the top of the base, on the features of its own tuned copy of the base.
pub struct TrainedModel {
    pub record: TrainedModelRecord,
    pub head: TrainedHead,
    /// The tuned copy of the base (`record.tuned_base_blob`), loaded on the model's first
    /// request, so that listing models or training them loads no extra session.
    pub tuned_base: TunedBaseSlot,
}

impl TrainedModel {
    pub fn new(record: TrainedModelRecord, head: TrainedHead) -> Self {
        Self { record, head, tuned_base: TunedBaseSlot::default() }
    }

    /// How images reach the base's input for this model: the base's own way (`base`), or
    /// the geometry the job trained with (a localizer sees the whole image).
    pub fn preprocessing(&self, base: &Preprocessing) -> Preprocessing {
        self.record.geometry.as_deref().and_then(Geometry::parse).unwrap_or_default().apply(base)
    }
}

/// Where a trained model keeps its tuned base while loaded: loaded once by the first request
/// that needs it (the others wait for that load), and emptied to make room for other models.
#[derive(Default)]
pub struct TunedBaseSlot {
    loaded: Mutex<Option<Loaded>>,
    /// Held by the one load in progress.
    loading: tokio::sync::Mutex<()>,
    /// What its last load measured (0: never loaded), kept to plan the next load.
    measured: AtomicU64,
}

struct Loaded {
    model: Arc<LoadedModel>,
    bytes: u64,
    last_used: Instant,
}

impl TunedBaseSlot {
    /// The loaded base, marked used now; or the one `load` returns (with its bytes), kept.
    pub async fn get_or_load<E, F: Future<Output = Result<(Arc<LoadedModel>, u64), E>>>(
        &self,
        load: impl FnOnce() -> F,
    ) -> Result<Arc<LoadedModel>, E> {
        if let Some(model) = self.touch() {
            return Ok(model);
        }
        let _turn = self.loading.lock().await;
        if let Some(model) = self.touch() {
            return Ok(model);
        }
        let (model, bytes) = load().await?;
        self.store(model.clone(), bytes);
        Ok(model)
    }

    /// Keeps `model`, which took `bytes`, as the loaded base.
    pub fn store(&self, model: Arc<LoadedModel>, bytes: u64) {
        self.measured.store(bytes, Ordering::Relaxed);
        *self.loaded.lock().expect("tuned base lock") = Some(Loaded { model, bytes, last_used: Instant::now() });
    }

    /// The loaded base with its bytes, not marked used.
    pub fn loaded(&self) -> Option<(Arc<LoadedModel>, u64)> {
        self.loaded.lock().expect("tuned base lock").as_ref().map(|l| (l.model.clone(), l.bytes))
    }

    /// What its last load measured, also after it was unloaded.
    pub fn measured(&self) -> Option<u64> {
        Some(self.measured.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
    }

    fn touch(&self) -> Option<Arc<LoadedModel>> {
        let mut loaded = self.loaded.lock().expect("tuned base lock");
        let loaded = loaded.as_mut()?;
        loaded.last_used = Instant::now();
        Some(loaded.model.clone())
    }

    /// Its bytes and last use while it is loaded.
    pub fn resident(&self) -> Option<(u64, Instant)> {
        self.loaded.lock().expect("tuned base lock").as_ref().map(|l| (l.bytes, l.last_used))
    }

    /// Empties the slot; the sessions go with the last request that holds them.
    pub fn take(&self) -> Option<Arc<LoadedModel>> {
        self.loaded.lock().expect("tuned base lock").take().map(|l| l.model)
    }
}

/// What a job trained: a classifier, or class and box heads together.
pub enum TrainedHead {
    Classifier(Head),
    Localizer(LocalizerHead),
}

impl TrainedHead {
    /// The head as stored in its blob; `task` is the record's.
    pub fn from_bytes(task: &str, bytes: &[u8]) -> Result<Self, String> {
        match task.parse::<Task>()? {
            Task::Localize => LocalizerHead::from_bytes(bytes).map(Self::Localizer).map_err(|e| e.to_string()),
            Task::Classify => Head::from_bytes(bytes).map(Self::Classifier).map_err(|e| e.to_string()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Classifier(head) => head.to_bytes(),
            Self::Localizer(head) => head.to_bytes(),
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Self::Classifier(_) => Task::Classify,
            Self::Localizer(_) => Task::Localize,
        }
    }

    /// Whether serving it needs the base's spatial feature map.
    pub fn needs_spatial(&self) -> bool {
        matches!(self, Self::Localizer(head) if head.kind() == LocalizeHeadKind::Spatial)
    }
}
