//! `GET /v1/models` and `GET /v1/models/{model}`: manifest facts, provider, status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use crate::error::Error;
use crate::zoo::{Manifest, ModelState};

pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state.registry.list().iter().map(|(manifest, model)| describe(manifest, model)).collect();
    Json(json!({ "models": models }))
}

pub async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    let (manifest, model) = state.registry.get(&name).ok_or(Error::UnknownModel(name))?;
    Ok(Json(describe(&manifest, &model)))
}

fn describe(manifest: &Arc<Manifest>, state: &ModelState) -> Value {
    let mut out = json!({
        "name": manifest.name,
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
        },
    });
    match state {
        ModelState::Ready(model) => {
            out["provider"] = json!(model.provider);
            out["classes"] = json!(model.labels.len());
            out["max_batch_size"] = json!(model.runner.config().max_batch_size);
            match &model.features {
                Ok(width) => out["output"]["feature_width"] = json!(width),
                Err(reason) => out["output"]["features_unavailable"] = json!(reason),
            }
            out["graph"] = json!({ "inputs": model.inputs, "outputs": model.outputs });
        }
        ModelState::Failed(reason) => out["reason"] = json!(reason),
        ModelState::Loading => {}
    }
    out
}
