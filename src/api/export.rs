//! `GET /v1/models/{name}/onnx`: a model as one ONNX file. A pretrained model is its own
//! file; a trained one is its base (tuned, when the job tuned it) with the head appended,
//! answering `probabilities` over the dataset's classes (and a localizer's `box`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};

use super::AppState;
use super::models::trained_model;
use crate::error::Error;
use crate::tune::{export_classifier, export_localizer};
use crate::zoo::TrainedHead;

pub async fn download_onnx(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Vec<u8>), Error> {
    let bytes = if let Some((manifest, _)) = state.registry.get(&name) {
        tokio::fs::read(&manifest.file).await.map_err(|e| Error::ModelFailed {
            name: name.clone(),
            reason: format!("{}: {e}", manifest.file.display()),
        })?
    } else {
        let model = trained_model(&state, &name).await?.ok_or_else(|| Error::UnknownModel(name.clone()))?;
        let base = state.registry.get(&model.record.base_model).map(|(manifest, _)| manifest).ok_or_else(|| {
            Error::ModelFailed {
                name: name.clone(),
                reason: format!("its base {} is not configured", model.record.base_model),
            }
        })?;
        let features = base.features.clone().ok_or_else(|| Error::Internal("the base names no features".into()))?;
        let base_file = match &model.record.tuned_base_blob {
            Some(key) => state.blobs.root().join(key),
            None => base.file.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let bytes = fs_err::read(&base_file).map_err(|e| e.to_string())?;
            match &model.head {
                TrainedHead::Classifier(head) => export_classifier(&bytes, &features, head),
                TrainedHead::Localizer(head) => {
                    let spatial = base.spatial_features.as_ref().map(|s| (s.tensor.as_str(), s.layout));
                    export_localizer(&bytes, &features, spatial, head)
                }
            }
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|reason| Error::Internal(format!("exporting {name}: {reason}")))?
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.onnx\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok((headers, bytes))
}
