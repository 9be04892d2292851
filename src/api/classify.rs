//! `POST /v1/models/{model}/classify`: images in, top-k ImageNet-style labels out.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::images::{BodyLimitHint, EncodedImage, read_images};
use crate::error::Error;
use crate::vision::{DecodeLimits, decode_image, preprocess_into};
use crate::zoo::{LoadedModel, ModelState, OutputKind};

#[derive(Deserialize)]
pub struct ClassifyParams {
    top_k: Option<usize>,
}

#[derive(Serialize)]
pub struct Prediction {
    pub index: usize,
    pub class_id: String,
    pub label: String,
    pub score: f32,
}

#[derive(Serialize)]
pub struct ClassifyResponse {
    pub model: String,
    /// One list per image, in request order, best first.
    pub predictions: Vec<Vec<Prediction>>,
}

pub async fn classify(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ClassifyParams>, QueryRejection>,
    mut request: Request,
) -> Result<Json<ClassifyResponse>, Error> {
    let model = ready_model(&state, &name)?;
    let Query(params) = params.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let classes = model.labels.len();
    let top_k = params.top_k.unwrap_or(5.min(classes));
    if top_k == 0 || top_k > classes {
        return Err(Error::BadRequest(format!(
            "top_k must be between 1 and {classes} (the model's class count); got {top_k}"
        )));
    }
    request.extensions_mut().insert(BodyLimitHint(state.limits.max_body_bytes));
    let images = read_images(request, state.limits.max_images_per_request).await?;
    let decode_limits = DecodeLimits { max_pixels: state.limits.max_pixels };
    let max_batch = model.runner.config().max_batch_size;

    let batches = {
        let model = model.clone();
        tokio::task::spawn_blocking(move || preprocess_batches(&model, &images, &decode_limits, max_batch))
            .await
            .map_err(|e| Error::Internal(format!("preprocessing stopped: {e}")))??
    };
    let outputs = try_join_all(batches.into_iter().map(|(pixels, count)| model.runner.infer(pixels, count))).await?;
    let predictions =
        outputs.into_iter().flatten().map(|mut image| top_predictions(&model, image.swap_remove(0), top_k)).collect();
    Ok(Json(ClassifyResponse { model: name, predictions }))
}

pub(super) fn ready_model(state: &AppState, name: &str) -> Result<std::sync::Arc<LoadedModel>, Error> {
    match state.registry.get(name) {
        None => Err(Error::UnknownModel(name.to_owned())),
        Some((_, ModelState::Loading)) => Err(Error::ModelLoading { name: name.to_owned() }),
        Some((_, ModelState::Failed(reason))) => Err(Error::ModelFailed { name: name.to_owned(), reason }),
        Some((_, ModelState::Ready(model))) => Ok(model),
    }
}

/// Decodes and preprocesses every image into batches of at most `max_batch` images.
fn preprocess_batches(
    model: &LoadedModel,
    images: &[EncodedImage],
    limits: &DecodeLimits,
    max_batch: usize,
) -> Result<Vec<(Vec<f32>, usize)>, Error> {
    let image_len = model.runner.image_len();
    images
        .chunks(max_batch)
        .map(|chunk| {
            let mut pixels = vec![0.0f32; image_len * chunk.len()];
            for (image, slot) in chunk.iter().zip(pixels.chunks_mut(image_len)) {
                let rgb = decode_image(&image.bytes, limits)
                    .map_err(|error| Error::Image { source_name: image.source.clone(), error })?;
                preprocess_into(&rgb, &model.manifest.preprocessing, slot);
            }
            Ok((pixels, chunk.len()))
        })
        .collect()
}

fn top_predictions(model: &LoadedModel, mut scores: Vec<f32>, top_k: usize) -> Vec<Prediction> {
    if model.manifest.output_kind == OutputKind::Logits {
        softmax_in_place(&mut scores);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(top_k)
        .filter_map(|index| {
            model.labels.get(index).map(|label| Prediction {
                index,
                class_id: label.class_id.clone(),
                label: label.label.clone(),
                score: scores[index],
            })
        })
        .collect()
}

/// Numerically stable softmax (max subtracted first, sums in f64).
fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    for v in values.iter_mut() {
        *v = (f64::from(*v) / sum) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::softmax_in_place;

    #[test]
    fn softmax_matches_hand_calculation() {
        // e^0, e^1, e^2 over their sum 1 + 2.71828 + 7.38906 = 11.10734.
        let mut v = [1000.0, 1001.0, 1002.0];
        softmax_in_place(&mut v);
        for (got, want) in v.iter().zip([0.090031, 0.244728, 0.665241]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
