//! `POST /v1/models/{model}/localize`: images in, per image the top-k classes and one box
//! in pixels of the original image (and normalised), from a model trained with
//! `task: "localize"`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use serde::Serialize;

use super::AppState;
use super::classify::{ClassifyParams, Prediction, Target, class_predictions, resolve, run_head, run_request};
use super::problem::Problem;
use crate::error::Error;
use crate::serving::TrainedHead;
use crate::vision::{PixelBox, box_from_input};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Localization {
    /// Best first.
    pub classes: Vec<Prediction>,
    /// Corners in pixels of the upright original image.
    #[serde(rename = "box")]
    pub bbox: PixelBox,
    /// The same corners as fractions of the original image's width and height.
    pub box_normalized: PixelBox,
    /// What the head predicted: centre and size as fractions of the model input.
    pub box_input: InputBoxJson,
    pub image_size: [u32; 2],
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InputBoxJson {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LocalizeResponse {
    pub model: String,
    /// One entry per image, in request order.
    pub localizations: Vec<Localization>,
}

/// Its request body (one image, or several as form parts or JSON) and the refusals of the
/// images are described for both inference operations by `openapi::describe_inference`.
#[utoipa::path(method(post, put), path = "/v1/models/{model}/localize", tag = "inference",
    params(("model" = String, Path, description = "A model trained with task \"localize\""), ClassifyParams),
    responses(
        (status = 200, description = "The top-k classes and the box of each image", body = LocalizeResponse),
        (status = 400, description = "`bad-request`: the model has no box head, `top_k` is not between 1 and the \
            model's classes, or the body cannot be read", body = Problem),
        (status = 404, description = "`unknown-model`: no model has this name", body = Problem),
    ))]
pub async fn localize(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ClassifyParams>, QueryRejection>,
    request: Request,
) -> Result<Json<LocalizeResponse>, Error> {
    let target = resolve(&state, &name).await?;
    let (model, base) = match &target {
        Target::Trained { model, base } if matches!(model.head, TrainedHead::Localizer(_)) => (model, base),
        _ => {
            return Err(Error::BadRequest(format!(
                "{name} is a classification model with no box head; localize needs a model trained with \
                 task \"localize\" (use /v1/models/{name}/classify)"
            )));
        }
    };
    let (top_k, outputs, geometry) = run_request(&state, &target, params, request).await?;
    let (probabilities, boxes) = run_head(model, base, outputs)?;
    let boxes = boxes.ok_or_else(|| Error::Internal("a localizer returned no boxes".into()))?;
    let target_size = (base.manifest.preprocessing.width, base.manifest.preprocessing.height);
    let localizations = class_predictions(model, &probabilities, top_k)
        .into_iter()
        .zip(boxes)
        .zip(geometry)
        .map(|((classes, input), geometry)| {
            // The plan maps to the decoded pixels; the decoder may have reduced the image.
            let decoded = box_from_input(input, &geometry.plan, target_size);
            let (w, h) = (geometry.original.0 as f32, geometry.original.1 as f32);
            let (sx, sy) = (w / geometry.plan.original.0.max(1) as f32, h / geometry.plan.original.1.max(1) as f32);
            let bbox = PixelBox {
                x_min: decoded.x_min * sx,
                y_min: decoded.y_min * sy,
                x_max: decoded.x_max * sx,
                y_max: decoded.y_max * sy,
            };
            let box_normalized =
                PixelBox { x_min: bbox.x_min / w, y_min: bbox.y_min / h, x_max: bbox.x_max / w, y_max: bbox.y_max / h };
            let [cx, cy, bw, bh] = input;
            Localization {
                classes,
                bbox,
                box_normalized,
                box_input: InputBoxJson { cx, cy, w: bw, h: bh },
                image_size: [geometry.original.0, geometry.original.1],
            }
        })
        .collect();
    Ok(Json(LocalizeResponse { model: name, localizations }))
}
