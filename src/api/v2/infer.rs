//! `POST /v2/models/{m}[/versions/{v}]/infer`: one input, either the model's preprocessed
//! FP32 tensor or a `BYTES` tensor of encoded images (decoded and preprocessed as `/v1`
//! does), through the same runner and dynamic batcher as `/v1`; the outputs as JSON or as
//! binary tensor data, and the classification extension's top k.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::super::AppState;
use super::super::admission::Admission;
use super::super::body_limits::announced_length;
use super::super::classify::{Target, ranked, resolve, run_base, run_head};
use super::super::images::{EncodedImage, read_body};
use super::protocol::{
    ErrorResponse, InferenceRequest, InferenceResponse, RequestInput, RequestOutput, ResponseOutput,
};
use super::tensors;
use super::{BOX, MODEL_VERSION, PROBABILITIES, check_version};
use crate::error::Error;
use crate::runtime::ImageOutputs;
use crate::serving::TrainedHead;
use crate::vision::DecodeLimits;
use crate::zoo::Labels;

/// The header that says how much of the body is JSON (the binary tensor extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model")),
    request_body(content(
        (InferenceRequest = "application/json"),
        (String = "application/octet-stream"),
    ), description = "The request as JSON; with the binary tensor extension, the JSON (its length in \
        Inference-Header-Content-Length) followed by the inputs' bytes"),
    responses(
        (status = 200, description = "The outputs as JSON, or (binary tensor extension) the JSON, its length in \
            Inference-Header-Content-Length, followed by the outputs' bytes", content(
            (InferenceResponse = "application/json"),
            (String = "application/octet-stream"),
        )),
        (status = 400, description = "The request does not fit the model: its JSON, inputs, shape, datatype, data or outputs", body = ErrorResponse),
        (status = 404, description = "No model has this name (or, under `/versions/{version}`, no such version)", body = ErrorResponse),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorResponse),
        (status = 415, description = "An image of a format graft does not decode", body = ErrorResponse),
        (status = 422, description = "An element that is not an image, or over --max-pixels", body = ErrorResponse),
        (status = 429, description = "The model's queue is full, or too many bytes are in flight", body = ErrorResponse),
        (status = 503, description = "The model is loading, failed or unloaded", body = ErrorResponse),
    ))]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, Error> {
    infer_version(State(state), Path((name, MODEL_VERSION.to_owned())), request).await
}

/// Described as `infer` is (`openapi::describe_versions` copies its body and answers).
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model"),
        ("version" = String, Path, description = "`1`, the only version")))]
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Error> {
    check_version(&name, &version)?;
    let target = resolve(&state, &name).await?;
    // Held until the answer, as on /v1: the body counts against the inference bytes in flight.
    let limit = state.limits.max_body_bytes;
    let declared = announced_length(request.headers()).map_or(limit, |n| n as usize);
    let _room = match request.extensions().get::<Admission>() {
        Some(admission) => Some(admission.inference(declared.min(limit))?),
        None => None,
    };
    let header_length = request.headers().get(HEADER_LENGTH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = read_body(request, limit).await?;
    let (json, mut binary) = tensors::split_body(&body, header_length.as_deref()).map_err(Error::BadRequest)?;
    let request: InferenceRequest = serde_json::from_slice(json)
        .map_err(|e| Error::BadRequest(format!("the inference request is not valid: {e}")))?;
    let [input] = request.inputs.as_slice() else {
        return Err(Error::BadRequest(format!(
            "{name} takes one input (its FP32 tensor or a BYTES tensor of encoded images); the request has {}",
            request.inputs.len()
        )));
    };
    let images = checked_batch(input, state.limits.max_images_per_request)?;
    let binary_input = binary_size(input)?.map(|size| tensors::take(&mut binary, size, &input.name)).transpose();
    let binary_input = binary_input.map_err(Error::BadRequest)?;
    let outputs = match input.datatype.as_str() {
        "FP32" => run_tensor(&target, input, images, binary_input).await?,
        "BYTES" => run_images(&state, &target, input, images, binary_input).await?,
        other => {
            return Err(Error::BadRequest(format!(
                "input {}: datatype {other} is not accepted; send FP32 (the preprocessed tensor) or BYTES (encoded images)",
                input.name
            )));
        }
    };
    let tensors = output_values(&target, outputs)?;
    respond(&name, request, tensors)
}

/// The batch a request's input holds: its first dimension, within 1..=`max`.
fn checked_batch(input: &RequestInput, max: usize) -> Result<usize, Error> {
    let batch = input.shape.first().copied().unwrap_or(0);
    if batch < 1 || batch as usize > max {
        return Err(Error::BadRequest(format!(
            "input {}: the first dimension is the batch, 1 to {max} (--max-images-per-request); the shape is {:?}",
            input.name, input.shape
        )));
    }
    Ok(batch as usize)
}

fn binary_size(input: &RequestInput) -> Result<Option<usize>, Error> {
    match input.parameters.get("binary_data_size") {
        None => Ok(None),
        Some(size) => size.as_u64().map(|s| Some(s as usize)).ok_or_else(|| {
            Error::BadRequest(format!("input {}: binary_data_size must be a byte count, not {size}", input.name))
        }),
    }
}

/// The model's own input, preprocessed by the client: its shape must be the batch and then
/// the manifest's layout and size.
async fn run_tensor(
    target: &Target,
    input: &RequestInput,
    images: usize,
    binary: Option<&[u8]>,
) -> Result<Vec<ImageOutputs>, Error> {
    let base = target.base();
    let expected = super::input_shape(&base.manifest);
    if input.name != base.manifest.input_name {
        return Err(Error::BadRequest(format!(
            "the FP32 input is named {:?}, not {:?}",
            base.manifest.input_name, input.name
        )));
    }
    if input.shape[1..] != expected[1..] {
        return Err(Error::BadRequest(format!(
            "input {}: the shape must be {expected:?} with the batch first; got {:?}",
            input.name, input.shape
        )));
    }
    let image_len = base.runner.image_len();
    let total = images * image_len;
    let values = match (binary, &input.data) {
        (Some(bytes), _) => tensors::fp32_from_bytes(bytes, &input.name),
        (None, Some(data)) => tensors::fp32_from_json(data, &input.name, total),
        (None, None) => Err(format!("input {} has no data and no binary_data_size", input.name)),
    }
    .map_err(Error::BadRequest)?;
    if values.len() != total {
        return Err(Error::BadRequest(format!(
            "input {}: the shape {:?} holds {total} elements; the data has {}",
            input.name,
            input.shape,
            values.len()
        )));
    }
    let mut parts = base.runner.part_buffers(images);
    let mut from = 0;
    for part in &mut parts {
        let len = part.len();
        part.copy_from_slice(&values[from..from + len]);
        from += len;
    }
    Ok(base.runner.infer_parts(parts, target.outputs_needed()).await?)
}

/// Encoded images, decoded and preprocessed as `/v1` does for the same model.
async fn run_images(
    state: &AppState,
    target: &Target,
    input: &RequestInput,
    images: usize,
    binary: Option<&[u8]>,
) -> Result<Vec<ImageOutputs>, Error> {
    if input.shape.len() > 2 || input.shape.get(1).is_some_and(|&d| d != 1) {
        return Err(Error::BadRequest(format!(
            "input {}: a BYTES input is one encoded image per element, shape [N] or [N, 1]; got {:?}",
            input.name, input.shape
        )));
    }
    let elements = match (binary, &input.data) {
        (Some(bytes), _) => tensors::bytes_elements(bytes, &input.name, images),
        (None, Some(data)) => tensors::bytes_from_json(data, &input.name, images),
        (None, None) => Err(format!("input {} has no data and no binary_data_size", input.name)),
    }
    .map_err(Error::BadRequest)?;
    if elements.len() != images {
        return Err(Error::BadRequest(format!(
            "input {}: the shape {:?} holds {images} images; the data has {}",
            input.name,
            input.shape,
            elements.len()
        )));
    }
    let encoded: Vec<EncodedImage> = elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| EncodedImage { source: format!("{}[{i}]", input.name), bytes: Bytes::from(bytes) })
        .collect();
    let limits = DecodeLimits { max_pixels: state.limits.max_pixels, max_jpeg_scans: state.limits.max_jpeg_scans };
    let (outputs, _) =
        run_base(target.base(), target.preprocessing(), target.outputs_needed(), encoded, limits).await?;
    Ok(outputs)
}

/// One output's values, image after image, and the names of its classes for the
/// classification extension (read only when it is asked for).
pub struct OutputValues<'a> {
    pub name: &'a str,
    pub per_image: usize,
    pub values: Vec<f32>,
    pub classes: ClassNames<'a>,
}

/// Where an output's class names come from.
#[derive(Clone, Copy)]
pub enum ClassNames<'a> {
    /// A pretrained model's labels file.
    Labels(&'a Labels),
    /// A trained model's dataset classes.
    Dataset(&'a [String]),
    None,
}

impl ClassNames<'_> {
    fn get(&self, index: usize) -> Option<&str> {
        match self {
            Self::Labels(labels) => labels.get(index).map(|l| l.label.as_str()),
            Self::Dataset(classes) => classes.get(index).map(String::as_str),
            Self::None => None,
        }
    }
}

/// What the model answers: a pretrained model its output (probabilities or logits, as the
/// graph gives them); a trained one its probabilities, and a localizer its box.
fn output_values(target: &Target, outputs: Vec<ImageOutputs>) -> Result<Vec<OutputValues<'_>>, Error> {
    match target {
        Target::Pretrained(model) => {
            let values: Vec<f32> = outputs.into_iter().flat_map(|mut image| image.swap_remove(0)).collect();
            Ok(vec![OutputValues {
                name: &model.manifest.output_name,
                per_image: model.labels.len(),
                values,
                classes: ClassNames::Labels(&model.labels),
            }])
        }
        Target::Trained { model, base } => {
            let (probabilities, boxes) = run_head(model, base, outputs)?;
            let mut tensors = vec![OutputValues {
                name: PROBABILITIES,
                per_image: probabilities.ncols(),
                values: probabilities.iter().copied().collect(),
                classes: ClassNames::Dataset(&model.record.classes),
            }];
            if let (TrainedHead::Localizer(_), Some(boxes)) = (&model.head, boxes) {
                tensors.push(OutputValues {
                    name: BOX,
                    per_image: 4,
                    values: boxes.into_iter().flatten().collect(),
                    classes: ClassNames::None,
                });
            }
            Ok(tensors)
        }
    }
}

/// The answer: the outputs asked for (all when none are named), each as JSON data or binary
/// data, or as the classification extension's top k.
fn respond(name: &str, request: InferenceRequest, tensors: Vec<OutputValues>) -> Result<Response, Error> {
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let asked: Vec<RequestOutput> = match request.outputs {
        Some(outputs) => outputs,
        None => tensors.iter().map(|t| RequestOutput { name: t.name.to_owned(), parameters: Map::new() }).collect(),
    };
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for output in &asked {
        let tensor = tensors.iter().find(|t| t.name == output.name).ok_or_else(|| {
            let known: Vec<&str> = tensors.iter().map(|t| t.name).collect();
            Error::BadRequest(format!("{name} has no output {:?}; its outputs are {known:?}", output.name))
        })?;
        let as_binary = output.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary);
        let images = tensor.values.len() / tensor.per_image.max(1);
        let (shape, datatype, data) = match output.parameters.get("classification") {
            Some(k) => {
                let k = k.as_u64().filter(|&k| k >= 1).ok_or_else(|| {
                    Error::BadRequest(format!("output {}: classification must be a count ≥ 1, not {k}", tensor.name))
                })?;
                let k = (k as usize).min(tensor.per_image);
                let strings = classification(tensor, k);
                let data = match as_binary {
                    true => Err(tensors::encode_bytes_elements(&strings)),
                    false => Ok(json!(strings)),
                };
                (vec![images as i64, k as i64], "BYTES", data)
            }
            None => {
                let data = match as_binary {
                    true => Err(tensors::fp32_to_bytes(&tensor.values)),
                    false => Ok(json!(tensor.values)),
                };
                (vec![images as i64, tensor.per_image as i64], "FP32", data)
            }
        };
        // JSON data, or (Err) bytes that follow the JSON.
        let mut parameters = Map::new();
        let data = match data {
            Ok(json) => Some(json),
            Err(bytes) => {
                parameters.insert("binary_data_size".into(), json!(bytes.len()));
                binary.extend_from_slice(&bytes);
                None
            }
        };
        outputs.push(ResponseOutput {
            name: tensor.name.to_owned(),
            shape,
            datatype: datatype.into(),
            parameters,
            data,
        });
    }
    let answer = InferenceResponse {
        model_name: name.to_owned(),
        model_version: MODEL_VERSION.to_owned(),
        id: request.id,
        parameters: Map::new(),
        outputs,
    };
    let json = serde_json::to_vec(&answer).map_err(|e| Error::Internal(e.to_string()))?;
    if binary.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    let json_length = json.len();
    let mut body = json;
    body.extend_from_slice(&binary);
    let mut response = Body::from(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
    Ok(response)
}

/// The top `k` of each image as `"score:index:label"` (or `"score:index"` without labels),
/// best first; the score as the output has it, in Rust's shortest exact form.
fn classification(tensor: &OutputValues, k: usize) -> Vec<String> {
    tensor
        .values
        .chunks(tensor.per_image.max(1))
        .flat_map(|scores| {
            ranked(scores, k).into_iter().map(|i| match tensor.classes.get(i) {
                Some(label) if !label.is_empty() => format!("{}:{i}:{label}", scores[i]),
                _ => format!("{}:{i}", scores[i]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_the_top_k_per_image_best_first() {
        let classes = ["cat".to_owned(), "dog".to_owned(), String::new()];
        let tensor = OutputValues {
            name: "probs",
            per_image: 3,
            values: vec![0.2, 0.5, 0.3, 0.9, 0.05, 0.05],
            classes: ClassNames::Dataset(&classes),
        };
        assert_eq!(classification(&tensor, 2), ["0.5:1:dog", "0.3:2", "0.9:0:cat", "0.05:1:dog"]);
    }

    /// Kept for the logits case: the extension ranks the raw output, as Triton does.
    #[test]
    fn classification_ranks_logits_as_they_are() {
        let tensor = OutputValues { name: "logits", per_image: 2, values: vec![-1.0, 3.5], classes: ClassNames::None };
        assert_eq!(classification(&tensor, 1), ["3.5:1"]);
    }
}
