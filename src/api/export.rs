//! `GET /v1/models/{name}/onnx`: a model as one ONNX file. A pretrained model is its own
//! file; a trained one is its base (tuned, when the job tuned it) with the head appended,
//! answering `probabilities` over the dataset's classes (and a localizer's `box`).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::admission::Admission;
use super::models::trained_model;
use super::problem::Problem;
use crate::error::Error;
use crate::onnx::{export_classifier, export_localizer};
use crate::serving::{TrainedHead, TrainedModel};
use crate::vision::Preprocessing;

/// What an exported model says about itself in its ONNX metadata (`metadata_props`): the
/// input it expects (size, layout, colour order, resize geometry and normalisation, exactly
/// as graft prepares images for it), its task, and its class names in output order.
fn metadata(model: &TrainedModel, base: &Preprocessing) -> Result<Vec<(&'static str, String)>, Error> {
    let json = |value: serde_json::Result<String>| value.map_err(|e| Error::Internal(e.to_string()));
    let mut entries = vec![
        ("graft.task", model.record.task.clone()),
        ("graft.base_model", model.record.base_model.clone()),
        ("graft.classes", json(serde_json::to_string(&model.record.classes))?),
        ("graft.preprocessing", json(serde_json::to_string(&model.preprocessing(base)))?),
    ];
    if matches!(model.head, TrainedHead::Localizer(_)) {
        entries.push(("graft.box", "[cx, cy, w, h] as fractions of the model input".to_owned()));
    }
    Ok(entries)
}

#[utoipa::path(get, path = "/v1/models/{model}/onnx", tag = "models",
    params(("model" = String, Path, description = "A model's name")),
    responses(
        (status = 200, description = "The model as one ONNX file; a trained one answers `probabilities` (and a \
            localizer's `box`) and says in its metadata how to prepare images", body = String,
            content_type = "application/octet-stream"),
        (status = 404, description = "`unknown-model`: no model has this name", body = Problem),
        (status = 429, description = "`overloaded`: --max-concurrent-exports exports are being built", body = Problem),
        (status = 503, description = "`model-failed`: the model's file or base cannot be read", body = Problem),
    ))]
pub async fn download_onnx(
    State(state): State<AppState>,
    Extension(admission): Extension<Admission>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Body), Error> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.onnx\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    // A pretrained model is its file, streamed from disk: nothing is held in memory.
    if let Some((manifest, _)) = state.registry.get(&name) {
        let file = tokio::fs::File::open(&manifest.file).await.map_err(|e| Error::ModelFailed {
            name: name.clone(),
            reason: format!("{}: {e}", manifest.file.display()),
        })?;
        if let Ok(length) = file.metadata().await.map(|m| m.len()) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        return Ok((headers, Body::from_stream(ReaderStream::new(file))));
    }
    let model = trained_model(&state, &name).await?.ok_or_else(|| Error::UnknownModel(name.clone()))?;
    // A trained model is built in memory (the base's graph with the head appended): a few
    // at once, each about the size of the base.
    let _place = admission.export()?;
    let base = state.registry.get(&model.record.base_model).map(|(manifest, _)| manifest).ok_or_else(|| {
        Error::ModelFailed {
            name: name.clone(),
            reason: format!("its base {} is not configured", model.record.base_model),
        }
    })?;
    let features = base.features.clone().ok_or_else(|| Error::Internal("the base names no features".into()))?;
    let base_file = match &model.record.tuned_base_blob {
        Some(key) => state.blobs.local_path(key).map_err(|e| Error::Internal(e.to_string()))?,
        None => base.file.clone(),
    };
    let metadata = metadata(&model, &base.preprocessing)?;
    let bytes = tokio::task::spawn_blocking(move || {
        let bytes = fs_err::read(&base_file).map_err(|e| e.to_string())?;
        let metadata: Vec<(&str, String)> = metadata.iter().map(|(k, v)| (*k, v.clone())).collect();
        match &model.head {
            TrainedHead::Classifier(head) => export_classifier(&bytes, &features, head, &metadata),
            TrainedHead::Localizer(head) => {
                let spatial = base.spatial_features.as_ref().map(|s| (s.tensor.as_str(), s.layout));
                export_localizer(&bytes, &features, spatial, head, &metadata)
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map_err(|reason| Error::Internal(format!("exporting {name}: {reason}")))?;
    Ok((headers, Body::from(bytes)))
}
