//! `POST /v1/models/{model}/classify`: images in, top-k ImageNet-style labels out.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use ndarray::Array2;

use super::AppState;
use super::images::{EncodedImage, read_images};
use super::models::trained_model;
use crate::error::Error;
use crate::vision::{DecodeLimits, decode_for, preprocess_into};
use crate::zoo::{LoadedModel, OutputKind, TrainedModel, Unavailable};

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

/// What a name serves: a pretrained classifier, or a trained head on a base model.
enum Target {
    Pretrained(Arc<LoadedModel>),
    Trained { base: Arc<LoadedModel>, model: Arc<TrainedModel> },
}

impl Target {
    fn base(&self) -> &Arc<LoadedModel> {
        match self {
            Self::Pretrained(model) | Self::Trained { base: model, .. } => model,
        }
    }

    fn classes(&self) -> usize {
        match self {
            Self::Pretrained(model) => model.labels.len(),
            Self::Trained { model, .. } => model.record.classes.len(),
        }
    }
}

async fn resolve(state: &AppState, name: &str) -> Result<Target, Error> {
    if state.registry.get(name).is_some() {
        return Ok(Target::Pretrained(state.registry.ready(name)?));
    }
    let model = trained_model(state, name).await?.ok_or_else(|| Error::UnknownModel(name.to_owned()))?;
    let base = state.registry.ready(&model.record.base_model).map_err(|e| match e {
        Unavailable::Unknown(base) => {
            Error::ModelFailed { name: name.to_owned(), reason: format!("its base model {base} is not served here") }
        }
        other => other.into(),
    })?;
    Ok(Target::Trained { base, model })
}

pub async fn classify(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ClassifyParams>, QueryRejection>,
    request: Request,
) -> Result<Json<ClassifyResponse>, Error> {
    let target = resolve(&state, &name).await?;
    let Query(params) = params.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let classes = target.classes();
    let top_k = params.top_k.unwrap_or(5.min(classes));
    if top_k == 0 || top_k > classes {
        return Err(Error::BadRequest(format!(
            "top_k must be between 1 and {classes} (the model's class count); got {top_k}"
        )));
    }
    let images = read_images(request, state.limits.max_images_per_request, state.limits.max_body_bytes).await?;
    let decode_limits = DecodeLimits { max_pixels: state.limits.max_pixels };
    let base = target.base().clone();
    let count = images.len();
    let pixels = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || preprocess_all(&base, &images, &decode_limits))
            .await
            .map_err(|e| Error::Internal(format!("preprocessing stopped: {e}")))??
    };
    let outputs = base.runner.infer_all(pixels, count).await?;
    let images = outputs.into_iter();
    let predictions = match &target {
        Target::Pretrained(model) => {
            images.map(|mut image| top_predictions(model, image.swap_remove(0), top_k)).collect()
        }
        Target::Trained { model, .. } => {
            let features: Vec<Vec<f32>> =
                images.map(|mut image| image.swap_remove(LoadedModel::FEATURES_OUTPUT)).collect();
            head_predictions(model, &features, top_k)?
        }
    };
    Ok(Json(ClassifyResponse { model: name, predictions }))
}

/// A trained head on the base's pooled features: probabilities over the dataset's classes.
fn head_predictions(model: &TrainedModel, features: &[Vec<f32>], top_k: usize) -> Result<Vec<Vec<Prediction>>, Error> {
    let width = features.first().map_or(0, Vec::len);
    let flat: Vec<f32> = features.iter().flatten().copied().collect();
    let x = Array2::from_shape_vec((features.len(), width), flat).map_err(|e| Error::Internal(e.to_string()))?;
    let probabilities = model
        .head
        .try_forward(x.view())
        .map_err(|e| Error::Internal(format!("the head of {} does not fit its base: {e}", model.record.name)))?;
    Ok(probabilities
        .rows()
        .into_iter()
        .map(|row| {
            ranked(row.as_slice().unwrap_or(&row.to_vec()), top_k)
                .into_iter()
                .map(|index| Prediction {
                    index,
                    class_id: model.record.classes[index].clone(),
                    label: model.record.classes[index].clone(),
                    score: row[index],
                })
                .collect()
        })
        .collect())
}

/// Indices of the `k` highest scores, best first (ties by index).
fn ranked(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Decodes and preprocesses every image, in parallel on the preprocessing pool, into
/// one buffer laid out as the model's input (image after image).
fn preprocess_all(model: &LoadedModel, images: &[EncodedImage], limits: &DecodeLimits) -> Result<Vec<f32>, Error> {
    let image_len = model.runner.image_len();
    let mut pixels = vec![0.0f32; image_len * images.len()];
    pixels.par_chunks_mut(image_len).zip(images.par_iter()).try_for_each(|(slot, image)| {
        let rgb = decode_for(&image.bytes, limits, &model.manifest.preprocessing)
            .map_err(|error| Error::Image { source_name: image.source.clone(), error })?;
        preprocess_into(&rgb, &model.manifest.preprocessing, slot);
        Ok::<(), Error>(())
    })?;
    Ok(pixels)
}

fn top_predictions(model: &LoadedModel, mut scores: Vec<f32>, top_k: usize) -> Vec<Prediction> {
    if model.manifest.output_kind == OutputKind::Logits {
        softmax_in_place(&mut scores);
    }
    ranked(&scores, top_k)
        .into_iter()
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
