//! `/v1/models`: pretrained models (manifest facts, provider, status) and trained
//! models (base, classes, evaluation); deleting a trained model; loading and unloading a
//! pretrained one while the server runs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::problem::Problem;
use crate::error::Error;
use crate::runtime::TensorSpec;
use crate::serving::{
    LoadedModel, ModelMemory, ModelState, ServingLayout, SpatialShape, TrainedHead, TrainedModel, TrainedModelError,
    Unavailable,
};
use crate::store::TrainedModelRecord;
use crate::train::LocalizeHeadKind;
use crate::vision::{ColorOrder, Layout, Normalization, ResizeMode};
use crate::zoo::{Manifest, OutputKind, Quantization, SpatialFeatures};

#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Every pretrained model (with its state) and every trained model", body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, Error> {
    let mut models: Vec<ModelView> =
        state.registry.list().iter().map(|(manifest, model)| describe(&state, manifest, model)).collect();
    // Models trained by workers in other processes appear once they are in the database.
    for record in state.db.trained_models().await? {
        let name = record.name.clone();
        match cached_or_load(&state, record).await {
            Ok(model) => models.push(describe_trained(&model)),
            // One unreadable head must not hide every other model.
            Err(e) => models.push(ModelView::Unreadable(UnreadableView {
                name,
                kind: TrainedKind::Trained,
                status: FailedStatus::Failed,
                reason: e.to_string(),
            })),
        }
    }
    Ok(Json(ModelList { models }))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "A model's name")),
    responses(
        (status = 200, description = "The model", body = ModelView),
        (status = 404, description = "`unknown-model`: no model has this name", body = Problem),
        (status = 503, description = "`model-failed`: the trained model's head cannot be read", body = Problem),
    ))]
pub async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelView>, Error> {
    if let Some((manifest, model)) = state.registry.get(&name) {
        return Ok(Json(describe(&state, &manifest, &model)));
    }
    let model = trained_model(&state, &name).await?.ok_or(Error::UnknownModel(name))?;
    Ok(Json(describe_trained(&model)))
}

/// One load at a time: each holds a model's sessions, and loads would only race for the cores.
static LOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `POST /v1/models/{name}/load`: loads (or reloads) a pretrained model from its manifest in
/// the model folder, read afresh; answers once it is ready, with its description.
#[utoipa::path(post, path = "/v1/models/{model}/load", tag = "models",
    params(("model" = String, Path, description = "A pretrained model's name: its manifest `<model>.toml` in the model folder")),
    responses(
        (status = 200, description = "Loaded and warmed up; until then the version loaded before (if any) kept serving", body = ModelView),
        (status = 404, description = "`not-found`: the model folder has no manifest of this name", body = Problem),
        (status = 422, description = "`unprocessable`: the manifest is invalid, or the model did not load", body = Problem),
    ))]
pub async fn load_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelView>, Error> {
    let manifest = state
        .registry
        .manifest_to_load(&name)
        .map_err(|reason| Error::Unprocessable(format!("the manifest of {name} is invalid: {reason}")))?
        .ok_or_else(|| not_pretrained(&name))?;
    let _turn = LOADS.acquire().await.map_err(|e| Error::Internal(e.to_string()))?;
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || registry.load(manifest))
        .await
        .map_err(|e| Error::Internal(format!("loading stopped: {e}")))?
        .map_err(|reason| Error::Unprocessable(format!("{name} did not load: {reason}")))?;
    let (manifest, model) = state.registry.get(&name).ok_or_else(|| Error::UnknownModel(name.clone()))?;
    Ok(Json(describe(&state, &manifest, &model)))
}

/// `POST /v1/models/{name}/unload`: new requests to the model get 503, those in flight
/// finish, and its sessions' memory is freed with the last of them.
#[utoipa::path(post, path = "/v1/models/{model}/unload", tag = "models",
    params(("model" = String, Path, description = "A pretrained model's name")),
    responses(
        (status = 200, description = "Unloaded: new requests to it get 503 `model-unloaded`", body = ModelView),
        (status = 404, description = "`not-found`: no pretrained model has this name", body = Problem),
    ))]
pub async fn unload_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelView>, Error> {
    if !state.registry.unload(&name) {
        return Err(not_pretrained(&name));
    }
    let (manifest, model) = state.registry.get(&name).ok_or_else(|| Error::UnknownModel(name.clone()))?;
    Ok(Json(describe(&state, &manifest, &model)))
}

fn not_pretrained(name: &str) -> Error {
    Error::NotFound(format!(
        "there is no manifest {name}.toml in the model folder: only pretrained models load and unload \
         (a trained model is served on its base)"
    ))
}

#[utoipa::path(delete, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "A trained model's name")),
    responses(
        (status = 204, description = "Deleted, with its head and tuned base"),
        (status = 404, description = "`unknown-model`: no model has this name", body = Problem),
        (status = 409, description = "`conflict`: a pretrained model is configured by its manifest and cannot be deleted", body = Problem),
    ))]
pub async fn delete_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, Error> {
    if state.registry.get(&name).is_some() {
        return Err(Error::Conflict(format!(
            "{name} is a pretrained model configured by its manifest; only trained models can be deleted"
        )));
    }
    let record = state.db.delete_trained_model(&name).await?.ok_or(Error::UnknownModel(name.clone()))?;
    state.registry.remove_trained(&name);
    let _ = state.blobs.delete(&record.head_blob);
    if let Some(key) = &record.tuned_base_blob {
        let _ = state.blobs.delete(key);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The trained model `name` from the registry, or from the database (a model trained by
/// a worker in another process), loading its head on first use.
pub(super) async fn trained_model(state: &AppState, name: &str) -> Result<Option<Arc<TrainedModel>>, Error> {
    if let Some(model) = state.registry.trained(name) {
        return Ok(Some(model));
    }
    let Some(record) = state.db.trained_model(name).await? else { return Ok(None) };
    cached_or_load(state, record).await.map(Some)
}

/// The registry's copy of the model `record` describes, loading its head on first use.
async fn cached_or_load(state: &AppState, record: TrainedModelRecord) -> Result<Arc<TrainedModel>, Error> {
    let (registry, blobs) = (state.registry.clone(), state.blobs.clone());
    tokio::task::spawn_blocking(move || registry.trained_or_load(record, &blobs))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(Error::from)
}

/// The tuned copy of the base a model was trained with, loaded on its first request.
pub(super) async fn tuned_base(
    state: &AppState,
    model: &Arc<TrainedModel>,
    key: &str,
) -> Result<Arc<LoadedModel>, Error> {
    state.registry.tuned_base(model, &state.blobs, key).await.map_err(|e| match e {
        TrainedModelError::NoMemory(reason) => Error::ModelNoMemory { name: model.record.name.clone(), reason },
        TrainedModelError::BaseUnavailable(Unavailable::Loading(_)) => {
            Error::ModelLoading { name: model.record.name.clone() }
        }
        TrainedModelError::BaseUnavailable(_) | TrainedModelError::TunedBase(_) => {
            Error::ModelFailed { name: model.record.name.clone(), reason: e.to_string() }
        }
        other => Error::from(other),
    })
}

fn describe_trained(model: &TrainedModel) -> ModelView {
    let record = &model.record;
    let head = match &model.head {
        TrainedHead::Classifier(head) => HeadView::Classifier { hidden_units: head.hidden_units() },
        TrainedHead::Localizer(head) => {
            HeadView::Localizer { box_head: head.kind(), spatial_shape: head.spatial_shape() }
        }
    };
    ModelView::Trained(TrainedView {
        name: record.name.clone(),
        kind: TrainedKind::Trained,
        status: ReadyStatus::Ready,
        base_model: record.base_model.clone(),
        job: record.job_id.clone(),
        dataset: record.dataset_id.clone(),
        task: record.task.clone(),
        classes: record.classes.clone(),
        head,
        tuned_base: record.tuned_base_blob.is_some(),
        tuned_base_bytes: model.tuned_base.resident().map(|(bytes, _)| bytes),
        created_at: record.created_at,
        evaluation: record.evaluation.clone(),
    })
}

fn describe(app: &AppState, manifest: &Arc<Manifest>, state: &ModelState) -> ModelView {
    let pre = &manifest.preprocessing;
    let memory = app.registry.memory(&manifest.name);
    let loaded = match state {
        ModelState::Ready(model) => Some(model.as_ref()),
        _ => None,
    };
    ModelView::Pretrained(Box::new(PretrainedView {
        name: manifest.name.clone(),
        kind: PretrainedKind::Pretrained,
        description: manifest.description.clone(),
        precision: if manifest.quantization.is_some() { "int8" } else { "fp32" },
        quantization: manifest.quantization.clone(),
        status: state.name(),
        input: InputView {
            name: manifest.input_name.clone(),
            layout: pre.layout,
            height: pre.height,
            width: pre.width,
            color: pre.color,
            resize: pre.resize,
            normalization: pre.normalization,
        },
        output: OutputView {
            name: manifest.output_name.clone(),
            kind: manifest.output_kind,
            features: manifest.features.clone(),
            spatial_features: manifest.spatial_features.clone(),
            feature_width: loaded.and_then(|m| m.features.as_ref().ok().copied()),
            features_unavailable: loaded.and_then(|m| m.features.as_ref().err().cloned()),
            spatial_shape: loaded.and_then(|m| m.spatial.as_ref().ok().copied()),
        },
        provider: loaded.map(|m| m.provider),
        classes: loaded.map(|m| m.labels.len()),
        max_batch_size: loaded.map(|m| m.runner.config().max_batch_size),
        sessions: loaded.map(|m| m.sessions),
        graph: loaded.map(|m| GraphView { inputs: m.inputs.clone(), outputs: m.outputs.clone() }),
        memory,
        reason: match state {
            ModelState::Failed(reason) => Some(reason.clone()),
            _ => None,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// A model as `/v1/models` shows it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ModelView {
    Pretrained(Box<PretrainedView>),
    Trained(TrainedView),
    /// A trained model whose head cannot be read; the others are listed all the same.
    Unreadable(UnreadableView),
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PretrainedKind {
    Pretrained,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainedKind {
    Trained,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailedStatus {
    Failed,
}

/// A pretrained model: its manifest's facts, and once loaded what the loaded graph says.
#[derive(Serialize, ToSchema)]
pub struct PretrainedView {
    name: String,
    kind: PretrainedKind,
    description: String,
    /// `ready`; `standby` (not in memory: it loads on its first request), `loading`,
    /// `failed` or `unloaded` (on request; `POST …/load` loads it again).
    #[schema(example = "ready")]
    status: &'static str,
    input: InputView,
    output: OutputView,
    /// `fp32`, or `int8` for a model `graft models quantize` made (QDQ).
    #[schema(example = "fp32")]
    precision: &'static str,
    /// An INT8 model's source, calibration and measured agreement and speed-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    quantization: Option<Quantization>,
    /// The ONNX Runtime execution provider: `cpu` or `cuda`.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'static str>,
    /// How many labels the model's output has.
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<ServingLayout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<GraphView>,
    /// What it holds in memory, and whether it is pinned there.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<ModelMemory>,
    /// Why it failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// How images reach the model's input.
#[derive(Serialize, ToSchema)]
struct InputView {
    name: String,
    layout: Layout,
    height: u32,
    width: u32,
    color: ColorOrder,
    resize: ResizeMode,
    normalization: Normalization,
}

#[derive(Serialize, ToSchema)]
struct OutputView {
    name: String,
    kind: OutputKind,
    /// The pooled feature tensor a trained head reads.
    features: Option<String>,
    /// The spatial feature map a localizer's cell head reads.
    spatial_features: Option<SpatialFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature_width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features_unavailable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spatial_shape: Option<SpatialShape>,
}

#[derive(Serialize, ToSchema)]
struct GraphView {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// A trained model: where it came from and how it did.
#[derive(Serialize, ToSchema)]
pub struct TrainedView {
    name: String,
    kind: TrainedKind,
    status: ReadyStatus,
    base_model: String,
    /// The job that trained it.
    job: String,
    dataset: String,
    /// `classify` or `localize`.
    task: String,
    /// Class names in output order.
    classes: Vec<String>,
    head: HeadView,
    /// Whether the job tuned the top of the base (the model serves on its own copy).
    tuned_base: bool,
    /// Bytes its tuned base holds while loaded (it loads on the model's first request and
    /// may be unloaded to make room under `--max-model-memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    tuned_base_bytes: Option<u64>,
    /// Unix time in milliseconds.
    created_at: i64,
    /// The held-out metrics the job measured (accuracy, per-class precision and recall,
    /// the confusion matrix; mean IoU for a localizer).
    #[schema(value_type = Object)]
    evaluation: Value,
}

#[derive(Serialize, ToSchema)]
pub struct UnreadableView {
    name: String,
    kind: TrainedKind,
    status: FailedStatus,
    reason: String,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum HeadView {
    Classifier {
        /// Units in the head's hidden layer; `null` for a linear head.
        #[schema(required = true)]
        hidden_units: Option<usize>,
    },
    Localizer {
        box_head: LocalizeHeadKind,
        /// The spatial map the cell head reads: height, width, channels.
        spatial_shape: Option<(usize, usize, usize)>,
    },
}
