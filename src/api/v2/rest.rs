//! `POST /v2/models/{m}[/versions/{v}]/infer`, the REST binding of `infer`: the request's
//! JSON, with the binary tensor extension's data after it; the outputs as JSON data or as
//! binary tensor data.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::super::AppState;
use super::super::admission::Admission;
use super::super::body_limits::announced_length;
use super::super::classify::{Target, resolve};
use super::super::images::read_body;
use super::infer::{self, Answer, AnswerData, Input, Kind, Requested, Values};
use super::protocol::{ErrorResponse, InferenceRequest, InferenceResponse, RequestInput, ResponseOutput};
use super::tensors;
use super::{MODEL_VERSION, check_version};
use crate::error::Error;

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
    let input = infer::only_input(&name, &request.inputs)?;
    let described = Input { name: &input.name, datatype: &input.datatype, shape: &input.shape };
    let kind = described.kind()?;
    let images = described.batch(state.limits.max_images_per_request)?;
    let binary_input = binary_size(input)?.map(|size| tensors::take(&mut binary, size, &input.name)).transpose();
    let binary_input = binary_input.map_err(Error::BadRequest)?;
    let values = input_values(&body, &target, input, kind, images, binary_input).map_err(Error::BadRequest)?;
    let requested = match &request.outputs {
        None => None,
        Some(outputs) => Some(outputs.iter().map(requested).collect::<Result<Vec<_>, Error>>()?),
    };
    let with_features = infer::wants_features(requested.as_deref());
    let tensors = infer::run(&state, &target, &described, images, values, with_features).await?;
    let answers = infer::select(&name, &tensors, requested)?;
    respond(&name, &request, answers)
}

fn binary_size(input: &RequestInput) -> Result<Option<usize>, Error> {
    match input.parameters.get("binary_data_size") {
        None => Ok(None),
        Some(size) => size.as_u64().map(|s| Some(s as usize)).ok_or_else(|| {
            Error::BadRequest(format!("input {}: binary_data_size must be a byte count, not {size}", input.name))
        }),
    }
}

/// The input's elements from its binary data, or else its JSON `data`, bounded by what
/// its shape holds.
fn input_values(
    body: &Bytes,
    target: &Target,
    input: &RequestInput,
    kind: Kind,
    images: usize,
    binary: Option<&[u8]>,
) -> Result<Values, String> {
    let name = &input.name;
    match (kind, binary, &input.data) {
        (Kind::Fp32, Some(bytes), _) => tensors::fp32_from_bytes(bytes, name).map(Values::Fp32),
        (Kind::Fp32, None, Some(data)) => {
            tensors::fp32_from_json(data, name, infer::fp32_elements(target, images)).map(Values::Fp32)
        }
        (Kind::Images, Some(bytes), _) => {
            let elements = tensors::bytes_elements(bytes, name, images)?;
            Ok(Values::Images(elements.into_iter().map(|e| body.slice_ref(e)).collect()))
        }
        (Kind::Images, None, Some(data)) => {
            let elements = tensors::bytes_from_json(data, name, images)?;
            Ok(Values::Images(elements.into_iter().map(Bytes::from).collect()))
        }
        (_, None, None) => Err(format!("input {name} has no data and no binary_data_size")),
    }
}

/// An output the request names, with the classification extension's k.
fn requested(output: &super::protocol::RequestOutput) -> Result<Requested<'_>, Error> {
    let classification = match output.parameters.get("classification") {
        None => None,
        Some(k) => Some(k.as_i64().ok_or_else(|| {
            Error::BadRequest(format!("output {}: classification must be a count ≥ 1, not {k}", output.name))
        })?),
    };
    Ok(Requested { name: &output.name, classification })
}

/// The answer: each output as JSON data, or as binary data after the JSON when the request
/// asks for it (for all outputs, or for this one).
fn respond(name: &str, request: &InferenceRequest, answers: Vec<Answer>) -> Result<Response, Error> {
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    // The answers are in the order of the outputs asked for (when any are).
    let as_binary = |index: usize| {
        let asked = request.outputs.as_ref().and_then(|outputs| outputs.get(index));
        asked.and_then(|o| o.parameters.get("binary_data")).and_then(Value::as_bool).unwrap_or(all_binary)
    };
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (index, answer) in answers.into_iter().enumerate() {
        let mut parameters = Map::new();
        let data = if as_binary(index) {
            let bytes = match &answer.data {
                AnswerData::Fp32(values) => tensors::fp32_to_bytes(values),
                AnswerData::Strings(strings) => tensors::encode_bytes_elements(strings),
            };
            parameters.insert("binary_data_size".into(), json!(bytes.len()));
            binary.extend_from_slice(&bytes);
            None
        } else {
            Some(match &answer.data {
                AnswerData::Fp32(values) => json!(values),
                AnswerData::Strings(strings) => json!(strings),
            })
        };
        outputs.push(ResponseOutput {
            name: answer.name.to_owned(),
            shape: answer.shape.to_vec(),
            datatype: answer.datatype().into(),
            parameters,
            data,
        });
    }
    let answer = InferenceResponse {
        model_name: name.to_owned(),
        model_version: MODEL_VERSION.to_owned(),
        id: request.id.clone(),
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
