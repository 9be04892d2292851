//! `POST /v1/models/{model}/classify`: images in, top-k ImageNet-style labels out.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use ndarray::Array2;

use super::AppState;
use super::admission::Admission;
use super::body_limits::announced_length;
use super::images::{EncodedImage, read_images};
use super::models::{trained_model, tuned_base};
use super::problem::Problem;
use crate::error::Error;
use crate::runtime::ImageOutputs;
use crate::serving::{LoadedModel, TrainedHead, TrainedModel, Unavailable};
use crate::train::stack_rows;
use crate::vision::{DecodeLimits, InputBox, Preprocessing, ResizePlan, decode_for, preprocess_into};
use crate::zoo::OutputKind;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassifyParams {
    /// Labels per image, best first (default 5; at most the model's classes).
    #[param(minimum = 1)]
    top_k: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// The class's index in the model's output.
    pub index: usize,
    /// The class's id: an ImageNet WordNet id (`n02123045`), or a trained model's class name.
    pub class_id: String,
    pub label: String,
    /// The class's probability.
    pub score: f32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClassifyResponse {
    pub model: String,
    /// One list per image, in request order, best first.
    pub predictions: Vec<Vec<Prediction>>,
}

/// What a name serves: a pretrained classifier, or a trained head on a base model.
pub(super) enum Target {
    Pretrained(Arc<LoadedModel>),
    Trained { base: Arc<LoadedModel>, model: Arc<TrainedModel> },
}

impl Target {
    pub(super) fn base(&self) -> &Arc<LoadedModel> {
        match self {
            Self::Pretrained(model) | Self::Trained { base: model, .. } => model,
        }
    }

    pub(super) fn classes(&self) -> usize {
        match self {
            Self::Pretrained(model) => model.labels.len(),
            Self::Trained { model, .. } => model.record.classes.len(),
        }
    }

    /// How many of the base's outputs the answer reads: the scores for the base itself; the
    /// pooled features, and the map for a head that reads it, for a trained model.
    pub(super) fn outputs_needed(&self) -> usize {
        match self {
            Self::Pretrained(model) => model.outputs_needed(false, false),
            Self::Trained { base, model } => base.outputs_needed(true, model.head.needs_spatial()),
        }
    }

    /// How images reach the base's input: the base's own way, or the geometry the model was
    /// trained with (a localizer sees the whole image).
    pub(super) fn preprocessing(&self) -> Preprocessing {
        let base = &self.base().manifest.preprocessing;
        match self {
            Self::Pretrained(_) => base.clone(),
            Self::Trained { model, .. } => model.preprocessing(base),
        }
    }
}

pub(super) async fn resolve(state: &AppState, name: &str) -> Result<Target, Error> {
    if state.registry.get(name).is_some() {
        return Ok(Target::Pretrained(state.registry.acquire(name).await?));
    }
    let model = trained_model(state, name).await?.ok_or_else(|| Error::UnknownModel(name.to_owned()))?;
    if let Some(key) = &model.record.tuned_base_blob {
        let base = tuned_base(state, &model, key).await?;
        return Ok(Target::Trained { base, model });
    }
    let base = state.registry.acquire(&model.record.base_model).await.map_err(|e| match e {
        Unavailable::Unknown(base) => {
            Error::ModelFailed { name: name.to_owned(), reason: format!("its base model {base} is not served here") }
        }
        other => other.into(),
    })?;
    Ok(Target::Trained { base, model })
}

/// Its request body (one image, or several as form parts or JSON) and the refusals of the
/// images are described for both inference operations by `openapi::describe_inference`.
#[utoipa::path(method(post, put), path = "/v1/models/{model}/classify", tag = "inference",
    params(("model" = String, Path, description = "A pretrained classifier or a trained model"), ClassifyParams),
    responses(
        (status = 200, description = "The top-k labels of each image", body = ClassifyResponse),
        (status = 400, description = "`bad-request`: `top_k` is not between 1 and the model's classes, or the body cannot be read", body = Problem),
        (status = 404, description = "`unknown-model`: no model has this name", body = Problem),
    ))]
pub async fn classify(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ClassifyParams>, QueryRejection>,
    request: Request,
) -> Result<Json<ClassifyResponse>, Error> {
    let target = resolve(&state, &name).await?;
    let (top_k, outputs, _) = run_request(&state, &target, params, request).await?;
    let predictions = match &target {
        Target::Pretrained(model) => {
            outputs.into_iter().map(|mut image| top_predictions(model, image.swap_remove(0), top_k)).collect()
        }
        Target::Trained { model, base } => {
            let (probabilities, _) = run_head(model, base, outputs)?;
            class_predictions(model, &probabilities, top_k)
        }
    };
    Ok(Json(ClassifyResponse { model: name, predictions }))
}

/// What classify and localize share: checks `top_k` against the target's classes, reads
/// the request's images and runs them through its base, prepared as the target wants.
/// Returns `top_k`, each image's outputs and how each reached the model input.
pub(super) async fn run_request(
    state: &AppState,
    target: &Target,
    params: Result<Query<ClassifyParams>, QueryRejection>,
    request: Request,
) -> Result<(usize, Vec<ImageOutputs>, Vec<ImageGeometry>), Error> {
    let params = super::problem::read_query(params)?;
    let top_k = checked_top_k(params.top_k, target.classes())?;
    // Held until the answer: what the body announces (or the most it may be) counts
    // against the bytes all inference requests may have in reading and decoding.
    let declared = announced_length(request.headers()).map_or(state.limits.max_body_bytes, |n| n as usize);
    let _room = match request.extensions().get::<Admission>() {
        Some(admission) => Some(admission.inference(declared.min(state.limits.max_body_bytes))?),
        None => None,
    };
    let images = read_images(request, state.limits.max_images_per_request, state.limits.max_body_bytes).await?;
    let decode_limits = state.limits.decode_limits();
    let (outputs, geometry) =
        run_base(target.base(), target.preprocessing(), target.outputs_needed(), images, decode_limits).await?;
    Ok((top_k, outputs, geometry))
}

/// `top_k` as asked (5 or the class count by default), within 1..=classes.
fn checked_top_k(asked: Option<usize>, classes: usize) -> Result<usize, Error> {
    let top_k = asked.unwrap_or(5.min(classes));
    if top_k == 0 || top_k > classes {
        return Err(Error::BadRequest(format!(
            "top_k must be between 1 and {classes} (the model's class count); got {top_k}"
        )));
    }
    Ok(top_k)
}

/// Preprocesses the images off the async runtime, then runs them through the base model.
pub(super) async fn run_base(
    base: &Arc<LoadedModel>,
    preprocessing: Preprocessing,
    outputs: usize,
    images: Vec<EncodedImage>,
    decode_limits: DecodeLimits,
) -> Result<(Vec<ImageOutputs>, Vec<ImageGeometry>), Error> {
    let (parts, geometry) = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || preprocess_all(&base, &preprocessing, &images, &decode_limits))
            .await
            .map_err(|e| Error::Internal(format!("preprocessing stopped: {e}")))??
    };
    Ok((base.runner.infer_parts(parts, outputs).await?, geometry))
}

/// A trained head on the base's features: probabilities over the dataset's classes, and
/// for a localizer one box per image (`[cx, cy, w, h]` of the model input).
pub(super) fn run_head(
    model: &TrainedModel,
    base: &LoadedModel,
    outputs: Vec<ImageOutputs>,
) -> Result<(Array2<f32>, Option<Vec<InputBox>>), Error> {
    let unfit = |e: String| Error::Internal(format!("the head of {} does not fit its base: {e}", model.record.name));
    let features = outputs
        .into_iter()
        .map(|image| base.image_features(image, model.head.needs_spatial()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unfit)?;
    let pooled = stack_rows(features.iter().map(|f| f.pooled.as_slice())).map_err(unfit)?;
    match &model.head {
        TrainedHead::Classifier(head) => Ok((head.try_forward(pooled.view()).map_err(|e| unfit(e.to_string()))?, None)),
        TrainedHead::Localizer(head) => {
            let spatial = match model.head.needs_spatial() {
                true => {
                    Some(stack_rows(features.iter().map(|f| f.spatial.as_deref().unwrap_or_default())).map_err(unfit)?)
                }
                false => None,
            };
            let (probabilities, boxes) =
                head.predict(pooled.view(), spatial.as_ref().map(|s| s.view())).map_err(|e| unfit(e.to_string()))?;
            Ok((probabilities, Some(boxes)))
        }
    }
}

/// The `top_k` classes of each row of a trained head's probabilities, named by the dataset.
pub(super) fn class_predictions(
    model: &TrainedModel,
    probabilities: &Array2<f32>,
    top_k: usize,
) -> Vec<Vec<Prediction>> {
    probabilities
        .rows()
        .into_iter()
        .map(|row| {
            let row = row.to_vec();
            ranked(&row, top_k)
                .into_iter()
                .map(|index| Prediction {
                    index,
                    class_id: model.record.classes[index].clone(),
                    label: model.record.classes[index].clone(),
                    score: row[index],
                })
                .collect()
        })
        .collect()
}

/// Indices of the `k` highest scores, best first (ties by index).
pub(super) fn ranked(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// How one image reached the model input: the resize plan its decoded pixels went
/// through, and its full upright size (the decoder may have reduced it).
#[derive(Debug, Clone, Copy)]
pub(super) struct ImageGeometry {
    pub plan: ResizePlan,
    pub original: (u32, u32),
}

/// Decodes and preprocesses every image, in parallel on the preprocessing pool, straight
/// into the buffers the runner takes: laid out as the model's input, image after image, in
/// parts of at most one batch.
pub(super) fn preprocess_all(
    model: &LoadedModel,
    spec: &Preprocessing,
    images: &[EncodedImage],
    limits: &DecodeLimits,
) -> Result<(Vec<Vec<f32>>, Vec<ImageGeometry>), Error> {
    let image_len = model.runner.image_len();
    let mut parts = model.runner.part_buffers(images.len());
    let slots: Vec<&mut [f32]> = parts.iter_mut().flat_map(|part| part.chunks_mut(image_len)).collect();
    let name = model.manifest.name.clone();
    let decoding = metrics::histogram!("graft_inference_stage_seconds", "model" => name.clone(), "stage" => "decode");
    let preprocessing = metrics::histogram!("graft_inference_stage_seconds", "model" => name, "stage" => "preprocess");
    let geometry = slots
        .into_par_iter()
        .zip(images.par_iter())
        .map(|(slot, image)| {
            let started = std::time::Instant::now();
            let decoded = decode_for(&image.bytes, limits, spec)
                .map_err(|error| Error::Image { source_name: image.source.clone(), error })?;
            let decoded_at = std::time::Instant::now();
            decoding.record(decoded_at.duration_since(started).as_secs_f64());
            let plan = preprocess_into(&decoded.image, spec, slot);
            preprocessing.record(decoded_at.elapsed().as_secs_f64());
            Ok::<_, Error>(ImageGeometry { plan, original: decoded.original })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok((parts, geometry))
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
