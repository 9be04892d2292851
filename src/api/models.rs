//! `/v1/models`: pretrained models (manifest facts, provider, status) and trained
//! models (base, classes, evaluation); deleting a trained model.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::error::Error;
use crate::serving::{LoadedModel, ModelState, TrainedHead, TrainedModel, TrainedModelError};
use crate::store::TrainedModelRecord;
use crate::zoo::Manifest;

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
    json!({
        "name": record.name,
        "kind": "trained",
        "status": "ready",
        "base_model": record.base_model,
        "job": record.job_id,
        "dataset": record.dataset_id,
        "task": record.task,
        "classes": record.classes,
        "head": match &model.head {
            TrainedHead::Classifier(head) => json!({"hidden_units": head.hidden_units()}),
            TrainedHead::Localizer(head) => json!({"box_head": head.kind(), "spatial_shape": head.spatial_shape()}),
        },
        "tuned_base": record.tuned_base_blob.is_some(),
        "created_at": record.created_at,
        "evaluation": record.evaluation,
    })
}

fn describe(manifest: &Arc<Manifest>, state: &ModelState) -> Value {
    let mut out = json!({
        "name": manifest.name,
        "kind": "pretrained",
        "description": manifest.description,
        "status": state.name(),
        "input": {
            "name": manifest.input_name,
            "layout": manifest.preprocessing.layout,
            "height": manifest.preprocessing.height,
            "width": manifest.preprocessing.width,
            "color": manifest.preprocessing.color,
            "resize": manifest.preprocessing.resize,
            "normalization": manifest.preprocessing.normalization,
        },
        "output": {
            "name": manifest.output_name,
            "kind": manifest.output_kind,
            "features": manifest.features,
            "spatial_features": manifest.spatial_features,
        },
    });
    match state {
        ModelState::Ready(model) => {
            out["provider"] = json!(model.provider);
            out["classes"] = json!(model.labels.len());
            out["max_batch_size"] = json!(model.runner.config().max_batch_size);
            out["sessions"] = json!(model.sessions);
            match &model.features {
                Ok(width) => out["output"]["feature_width"] = json!(width),
                Err(reason) => out["output"]["features_unavailable"] = json!(reason),
            }
            if let Ok(shape) = &model.spatial {
                out["output"]["spatial_shape"] = json!(shape);
            }
            out["graph"] = json!({ "inputs": model.inputs, "outputs": model.outputs });
        }
        ModelState::Failed(reason) => out["reason"] = json!(reason),
        ModelState::Loading => {}
    }
    out
}
