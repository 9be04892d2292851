//! `/v1/models`: pretrained models (manifest facts, provider, status) and trained
//! models (base, classes, evaluation); deleting a trained model; loading and unloading a
//! pretrained one while the server runs.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::Error;
use crate::runtime::TensorSpec;
use crate::serving::{
    LoadedModel, ModelState, ServingLayout, SpatialShape, TrainedHead, TrainedModel, TrainedModelError,
};
use crate::store::TrainedModelRecord;
use crate::train::LocalizeHeadKind;
use crate::vision::{ColorOrder, Layout, Normalization, ResizeMode};
use crate::zoo::{Manifest, OutputKind, SpatialFeatures};

pub async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    let mut models: Vec<Value> =
        state.registry.list().iter().map(|(manifest, model)| describe(manifest, model)).collect();
    // Models trained by workers in other processes appear once they are in the database.
    for record in state.db.trained_models().await? {
        let name = record.name.clone();
        match cached_or_load(&state, record).await {
            Ok(model) => models.push(describe_trained(&model)),
            // One unreadable head must not hide every other model.
            Err(e) => {
                models.push(json!({"name": name, "kind": "trained", "status": "failed", "reason": e.to_string()}))
            }
        }
    }
    Ok(Json(json!({ "models": models })))
}

pub async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    if let Some((manifest, model)) = state.registry.get(&name) {
        return Ok(Json(describe(&manifest, &model)));
    }
    let model = trained_model(&state, &name).await?.ok_or(Error::UnknownModel(name))?;
    Ok(Json(describe_trained(&model)))
}

/// One load at a time: each holds a model's sessions, and loads would only race for the cores.
static LOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `POST /v1/models/{name}/load`: loads (or reloads) a pretrained model from its manifest in
/// the model folder, read afresh; answers once it is ready, with its description.
pub async fn load_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
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
    Ok(Json(describe(&manifest, &model)))
}

/// `POST /v1/models/{name}/unload`: new requests to the model get 503, those in flight
/// finish, and its sessions' memory is freed with the last of them.
pub async fn unload_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    if !state.registry.unload(&name) {
        return Err(not_pretrained(&name));
    }
    let (manifest, model) = state.registry.get(&name).ok_or_else(|| Error::UnknownModel(name.clone()))?;
    Ok(Json(describe(&manifest, &model)))
}

fn not_pretrained(name: &str) -> Error {
    Error::NotFound(format!(
        "there is no manifest {name}.toml in the model folder: only pretrained models load and unload \
         (a trained model is served on its base)"
    ))
}

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
pub(super) async fn tuned_base(state: &AppState, model: &TrainedModel, key: &str) -> Result<Arc<LoadedModel>, Error> {
    state.registry.tuned_base(model, &state.blobs, key).await.map_err(|e| match e {
        TrainedModelError::BaseUnavailable(_) | TrainedModelError::TunedBase(_) => {
            Error::ModelFailed { name: model.record.name.clone(), reason: e.to_string() }
        }
        other => Error::from(other),
    })
}

fn describe_trained(model: &TrainedModel) -> Value {
    let record = &model.record;
    let head = match &model.head {
        TrainedHead::Classifier(head) => HeadView::Classifier { hidden_units: head.hidden_units() },
        TrainedHead::Localizer(head) => {
            HeadView::Localizer { box_head: head.kind(), spatial_shape: head.spatial_shape() }
        }
    };
    to_json(TrainedView {
        name: &record.name,
        kind: "trained",
        status: "ready",
        base_model: &record.base_model,
        job: &record.job_id,
        dataset: &record.dataset_id,
        task: &record.task,
        classes: &record.classes,
        head,
        tuned_base: record.tuned_base_blob.is_some(),
        created_at: record.created_at,
        evaluation: &record.evaluation,
    })
}

fn describe(manifest: &Arc<Manifest>, state: &ModelState) -> Value {
    let pre = &manifest.preprocessing;
    let loaded = match state {
        ModelState::Ready(model) => Some(model.as_ref()),
        _ => None,
    };
    to_json(PretrainedView {
        name: &manifest.name,
        kind: "pretrained",
        description: &manifest.description,
        status: state.name(),
        input: InputView {
            name: &manifest.input_name,
            layout: pre.layout,
            height: pre.height,
            width: pre.width,
            color: pre.color,
            resize: pre.resize,
            normalization: &pre.normalization,
        },
        output: OutputView {
            name: &manifest.output_name,
            kind: manifest.output_kind,
            features: manifest.features.as_deref(),
            spatial_features: manifest.spatial_features.as_ref(),
            feature_width: loaded.and_then(|m| m.features.as_ref().ok().copied()),
            features_unavailable: loaded.and_then(|m| m.features.as_ref().err().map(String::as_str)),
            spatial_shape: loaded.and_then(|m| m.spatial.as_ref().ok().copied()),
        },
        provider: loaded.map(|m| m.provider),
        classes: loaded.map(|m| m.labels.len()),
        max_batch_size: loaded.map(|m| m.runner.config().max_batch_size),
        sessions: loaded.map(|m| m.sessions),
        graph: loaded.map(|m| GraphView { inputs: &m.inputs, outputs: &m.outputs }),
        reason: match state {
            ModelState::Failed(reason) => Some(reason.as_str()),
            _ => None,
        },
    })
}

fn to_json(view: impl Serialize) -> Value {
    serde_json::to_value(view).expect("a model view is strings, numbers and lists")
}

/// A pretrained model: its manifest's facts, and once loaded what the loaded graph says.
#[derive(Serialize)]
struct PretrainedView<'a> {
    name: &'a str,
    kind: &'static str,
    description: &'a str,
    status: &'static str,
    input: InputView<'a>,
    output: OutputView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<ServingLayout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<GraphView<'a>>,
    /// Why it failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct InputView<'a> {
    name: &'a str,
    layout: Layout,
    height: u32,
    width: u32,
    color: ColorOrder,
    resize: ResizeMode,
    normalization: &'a Normalization,
}

#[derive(Serialize)]
struct OutputView<'a> {
    name: &'a str,
    kind: OutputKind,
    features: Option<&'a str>,
    spatial_features: Option<&'a SpatialFeatures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature_width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features_unavailable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spatial_shape: Option<SpatialShape>,
}

#[derive(Serialize)]
struct GraphView<'a> {
    inputs: &'a [TensorSpec],
    outputs: &'a [TensorSpec],
}

/// A trained model: where it came from and how it did.
#[derive(Serialize)]
struct TrainedView<'a> {
    name: &'a str,
    kind: &'static str,
    status: &'static str,
    base_model: &'a str,
    job: &'a str,
    dataset: &'a str,
    task: &'a str,
    classes: &'a [String],
    head: HeadView,
    tuned_base: bool,
    created_at: i64,
    evaluation: &'a Value,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HeadView {
    Classifier { hidden_units: Option<usize> },
    Localizer { box_head: LocalizeHeadKind, spatial_shape: Option<(usize, usize, usize)> },
}
