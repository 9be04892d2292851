//! The Open Inference Protocol (KServe v2) beside graft's own `/v1`, over HTTP (`rest`) and
//! gRPC (`grpc`): health, server and model metadata, model readiness, Triton's model
//! configuration, and inference (`infer`), with the binary tensor and classification
//! extensions. Every pretrained and trained model is a v2 model (version `1`). Inference
//! shares `/v1`'s runner, batcher, limits and keys; errors are the protocol's
//! `{"error": "…"}` or a gRPC status (`protocol_errors` rewrites graft's problem answers).

pub mod grpc;
mod infer;
mod protocol;
mod rest;
mod tensors;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::classify::{Target, resolve};
use super::models::trained_model;
use super::problem::ProblemType;
use crate::error::Error;
use crate::serving::{ModelState, TrainedHead};
use crate::vision::Layout;
use crate::zoo::Manifest;
use protocol::{
    ConfigInput, ConfigOutput, DynamicBatching, ErrorResponse, ModelConfig, ModelMetadata, ModelReady, ServerLive,
    ServerMetadata, ServerReady, TensorMetadata,
};

/// The one version of every model.
pub const MODEL_VERSION: &str = "1";
/// A trained model's outputs: its class probabilities, and a localizer's box.
const PROBABILITIES: &str = "probabilities";
const BOX: &str = "box";
/// The base's pooled features, answered only when a request names this output.
const FEATURES: &str = "features";
/// What `GET /v2` lists.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "classification", "model_configuration"];
/// The longest problem body `protocol_errors` reads back (a problem is a few hundred bytes).
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// The v2 routes: the health checks and server metadata (open, not rate limited, like
/// `/healthz`), and the model routes, which take `/v1`'s body limit, deadline and rate limit
/// (`super::routes`). The gRPC service is one more model route: it has no OpenAPI
/// description (proto/grpc_service.proto is its description), so it is added with `route`.
pub(super) fn routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let health = OpenApiRouter::new()
        .routes(routes!(server_live))
        .routes(routes!(server_ready))
        .routes(routes!(server_metadata));
    let models = OpenApiRouter::new()
        .routes(routes!(model_metadata))
        .routes(routes!(model_version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(model_version_ready))
        .routes(routes!(model_config))
        .routes(routes!(model_version_config))
        .routes(routes!(rest::infer))
        .routes(routes!(rest::infer_version))
        .route(grpc::ROUTE, axum::routing::post(grpc::serve));
    (health, models)
}

#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "The server answers", body = ServerLive)))]
pub async fn server_live() -> Json<ServerLive> {
    Json(ServerLive { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "v2",
    responses(
        (status = 200, description = "Every configured model is ready", body = ServerReady),
        (status = 503, description = "A configured model is loading or failed", body = ServerReady),
    ))]
pub async fn server_ready(State(state): State<AppState>) -> (StatusCode, Json<ServerReady>) {
    let ready = state.registry.all_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(ServerReady { ready }))
}

#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "The server's name, version and protocol extensions", body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "graft".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.map(String::from).to_vec(),
    })
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model")),
    responses(
        (status = 200, description = "The model's inputs and outputs", body = ModelMetadata),
        (status = 404, description = "No model has this name (or, under `/versions/{version}`, no such version)", body = ErrorResponse),
        (status = 503, description = "The model is loading, failed or unloaded", body = ErrorResponse),
    ))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, Error> {
    let target = resolve(&state, &name).await?;
    Ok(Json(metadata(&name, &target)))
}

/// Described as the unversioned route is (`openapi::describe_versions` copies its answers).
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model"),
        ("version" = String, Path, description = "`1`, the only version")))]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, Error> {
    check_version(&name, &version)?;
    model_metadata(State(state), Path(name)).await
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model")),
    responses(
        (status = 200, description = "The model serves (one in standby under `--max-model-memory` too: it loads on its first inference)", body = ModelReady),
        (status = 404, description = "No model has this name (or, under `/versions/{version}`, no such version)", body = ErrorResponse),
        (status = 503, description = "The model is loading, failed or unloaded", body = ModelReady),
    ))]
pub async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, Error> {
    // Read from the states, loading nothing: asking is no reason to load a model (and unload
    // another to make room), nor to wait for one.
    let serves = |state: Option<ModelState>| matches!(state, Some(ModelState::Ready(_) | ModelState::Standby));
    let ready = match state.registry.get(&name) {
        Some((_, model)) => serves(Some(model)),
        None => {
            let model = trained_model(&state, &name).await?.ok_or_else(|| Error::UnknownModel(name.clone()))?;
            serves(state.registry.get(&model.record.base_model).map(|(_, base)| base))
        }
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(ModelReady { name, ready })).into_response())
}

/// Described as the unversioned route is (`openapi::describe_versions` copies its answers).
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model"),
        ("version" = String, Path, description = "`1`, the only version")))]
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Error> {
    check_version(&name, &version)?;
    model_ready(State(state), Path(name)).await
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model")),
    responses(
        (status = 200, description = "The model's configuration as Triton describes one (its model configuration \
            extension): batching, inputs and outputs", body = ModelConfig),
        (status = 404, description = "No model has this name (or, under `/versions/{version}`, no such version)", body = ErrorResponse),
        (status = 503, description = "The model is loading, failed or unloaded", body = ErrorResponse),
    ))]
pub async fn model_config(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelConfig>, Error> {
    let target = resolve(&state, &name).await?;
    Ok(Json(config(&state, &name, &target)))
}

/// Described as the unversioned route is (`openapi::describe_versions` copies its answers).
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "v2",
    params(("model" = String, Path, description = "A pretrained or trained model"),
        ("version" = String, Path, description = "`1`, the only version")))]
pub async fn model_version_config(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelConfig>, Error> {
    check_version(&name, &version)?;
    model_config(State(state), Path(name)).await
}

fn check_version(name: &str, version: &str) -> Result<(), Error> {
    if version == MODEL_VERSION {
        return Ok(());
    }
    Err(Error::NotFound(format!("model {name} has no version {version:?}; graft serves each model as version 1")))
}

/// The preprocessed input's shape: the batch (`-1`), then the manifest's layout and size.
fn input_shape(manifest: &Manifest) -> Vec<i64> {
    let pre = &manifest.preprocessing;
    let (h, w) = (i64::from(pre.height), i64::from(pre.width));
    match pre.layout {
        Layout::Nchw => vec![-1, 3, h, w],
        Layout::Nhwc => vec![-1, h, w, 3],
    }
}

/// The outputs a model answers with, in the order `infer::output_values` produces them: its
/// own, then the base's pooled features when it has them (sent only when asked for).
fn output_tensors(target: &Target) -> Vec<TensorMetadata> {
    let fp32 = |name: &str, width: usize| TensorMetadata {
        name: name.to_owned(),
        datatype: "FP32".into(),
        shape: vec![-1, width as i64],
    };
    let mut outputs = match target {
        Target::Pretrained(model) => vec![fp32(&model.manifest.output_name, model.labels.len())],
        Target::Trained { model, .. } => {
            let mut outputs = vec![fp32(PROBABILITIES, model.record.classes.len())];
            if matches!(model.head, TrainedHead::Localizer(_)) {
                outputs.push(fp32(BOX, 4));
            }
            outputs
        }
    };
    if let Ok(width) = target.base().features {
        outputs.push(fp32(FEATURES, width));
    }
    outputs
}

fn metadata(name: &str, target: &Target) -> ModelMetadata {
    let manifest = &target.base().manifest;
    ModelMetadata {
        name: name.to_owned(),
        versions: vec![MODEL_VERSION.to_owned()],
        platform: "onnxruntime_onnx".into(),
        inputs: vec![TensorMetadata {
            name: manifest.input_name.clone(),
            datatype: "FP32".into(),
            shape: input_shape(manifest),
        }],
        outputs: output_tensors(target),
    }
}

/// The model as a Triton model configuration: a request holds up to
/// `--max-images-per-request` images (the batch dimension, left out of `dims`), and the
/// dynamic batcher runs up to `--max-batch-size` at once.
fn config(state: &AppState, name: &str, target: &Target) -> ModelConfig {
    let manifest = &target.base().manifest;
    let format = match manifest.preprocessing.layout {
        Layout::Nchw => "FORMAT_NCHW",
        Layout::Nhwc => "FORMAT_NHWC",
    };
    let limits = &state.limits;
    ModelConfig {
        name: name.to_owned(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: i32::try_from(limits.max_images_per_request).unwrap_or(i32::MAX),
        input: vec![ConfigInput {
            name: manifest.input_name.clone(),
            data_type: "TYPE_FP32".into(),
            format: format.into(),
            dims: input_shape(manifest)[1..].to_vec(),
        }],
        output: output_tensors(target)
            .into_iter()
            .map(|t| ConfigOutput { name: t.name, data_type: "TYPE_FP32".into(), dims: t.shape[1..].to_vec() })
            .collect(),
        dynamic_batching: DynamicBatching {
            preferred_batch_size: vec![i32::try_from(limits.max_batch_size).unwrap_or(i32::MAX)],
            max_queue_delay_microseconds: limits.max_delay_ms.saturating_mul(1000),
        },
    }
}

/// Under `/v2`, graft's problem answers (from the handlers, the key check, the rate limit,
/// the body limits, the deadline) become the protocol's `{"error": "…"}` with the same status
/// and headers; on the gRPC service, a gRPC status with the code of the same meaning.
pub async fn protocol_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let rest = path == "/v2" || path.starts_with("/v2/");
    let grpc = path.starts_with(grpc::SERVICE_PATH);
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(rest || grpc) || !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, MAX_PROBLEM_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => parts.status.canonical_reason().unwrap_or("error").to_owned(),
    };
    if grpc {
        let kind = parts.extensions.get::<ProblemType>().map_or("", |k| k.0.as_str());
        let mut answer = tonic::Status::new(grpc::code(parts.status, kind), detail).into_http::<Body>();
        // The metrics layer reads the refusal's type from here.
        answer.extensions_mut().extend(parts.extensions);
        return answer;
    }
    let body = serde_json::to_vec(&ErrorResponse { error: detail }).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
