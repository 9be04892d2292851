//! The protocol's gRPC binding: `inference.GRPCInferenceService` (proto/grpc_service.proto),
//! served on `--grpc-listen`. It is mounted in the same router as the REST API, so a call
//! passes the same key check, rate limit, deadline, admission and metrics; a refusal from
//! those layers becomes a gRPC status (`protocol_errors`). Tensor data travels as
//! `raw_input_contents` / `raw_output_contents`, or as typed `contents`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use prost::Message;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::super::AppState;
use super::super::admission::Admission;
use super::super::classify::{Target, resolve};
use super::super::problem::Problem;
use super::infer::{self, Answer, AnswerData, Input, Kind, Requested, Values};
use super::{EXTENSIONS, MODEL_VERSION, check_version, tensors};
use crate::error::Error;
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::InferRequestedOutputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;

/// The generated messages, service and client.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

/// Every method of the service, as one route (the generated server dispatches on the path).
pub const ROUTE: &str = "/inference.GRPCInferenceService/{method}";
/// The path prefix of the service's methods.
pub const SERVICE_PATH: &str = "/inference.GRPCInferenceService/";

/// Hands a call to the generated server, which decodes it (at most `--max-body-bytes`,
/// where tonic's own default is 4 MiB) and calls `Inference`.
pub async fn serve(State(state): State<AppState>, request: Request) -> Response {
    let limit = state.limits.max_body_bytes;
    let server = GrpcInferenceServiceServer::new(Inference { state }).max_decoding_message_size(limit);
    match server.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// The gRPC code for a refusal, from graft's HTTP status and problem type for it.
pub fn code(status: StatusCode, problem_type: &str) -> Code {
    match status.as_u16() {
        _ if problem_type == "timeout" => Code::DeadlineExceeded,
        400 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        409 => Code::FailedPrecondition,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

fn status(error: Error) -> Status {
    let problem = Problem::from(&error);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = problem.kind.strip_prefix("urn:graft:problem:").unwrap_or(&problem.kind);
    Status::new(code(status, kind), problem.detail)
}

/// An empty version is the protocol's "the server chooses".
fn check_requested_version(name: &str, version: &str) -> Result<(), Status> {
    if version.is_empty() { Ok(()) } else { check_version(name, version).map_err(status) }
}

pub struct Inference {
    state: AppState,
}

impl Inference {
    async fn target(&self, name: &str, version: &str) -> Result<Target, Status> {
        check_requested_version(name, version)?;
        resolve(&self.state, name).await.map_err(status)
    }
}

type Answered<T> = Result<tonic::Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: tonic::Request<proto::ServerLiveRequest>) -> Answered<proto::ServerLiveResponse> {
        Ok(tonic::Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: tonic::Request<proto::ServerReadyRequest>) -> Answered<proto::ServerReadyResponse> {
        Ok(tonic::Response::new(proto::ServerReadyResponse { ready: self.state.registry.all_ready() }))
    }

    async fn model_ready(
        &self,
        request: tonic::Request<proto::ModelReadyRequest>,
    ) -> Answered<proto::ModelReadyResponse> {
        // As Triton answers: a model or version that is not there is not ready (REST says 404).
        let request = request.into_inner();
        let ready = self.target(&request.name, &request.version).await.is_ok();
        Ok(tonic::Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: tonic::Request<proto::ServerMetadataRequest>,
    ) -> Answered<proto::ServerMetadataResponse> {
        Ok(tonic::Response::new(proto::ServerMetadataResponse {
            name: "graft".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: tonic::Request<proto::ModelMetadataRequest>,
    ) -> Answered<proto::ModelMetadataResponse> {
        let request = request.into_inner();
        let target = self.target(&request.name, &request.version).await?;
        let metadata = super::metadata(&request.name, &target);
        let tensor =
            |t: super::protocol::TensorMetadata| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape };
        Ok(tonic::Response::new(proto::ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform,
            inputs: metadata.inputs.into_iter().map(tensor).collect(),
            outputs: metadata.outputs.into_iter().map(tensor).collect(),
        }))
    }

    async fn model_config(
        &self,
        request: tonic::Request<proto::ModelConfigRequest>,
    ) -> Answered<proto::ModelConfigResponse> {
        let request = request.into_inner();
        let target = self.target(&request.name, &request.version).await?;
        let config = super::config(&self.state, &request.name, &target);
        Ok(tonic::Response::new(proto::ModelConfigResponse { config: Some(config.into()) }))
    }

    async fn model_infer(
        &self,
        request: tonic::Request<proto::ModelInferRequest>,
    ) -> Answered<proto::ModelInferResponse> {
        let admission = request.extensions().get::<Admission>().cloned();
        let mut request = request.into_inner();
        // The decoded message, held until the answer, counts against the inference bytes in flight.
        let _room = admission.map(|a| a.inference(request.encoded_len())).transpose().map_err(status)?;
        let name = request.model_name.clone();
        let target = self.target(&name, &request.model_version).await?;
        let id = std::mem::take(&mut request.id);
        let outputs = std::mem::take(&mut request.outputs);
        let requested = outputs.iter().map(requested).collect::<Result<Vec<_>, Error>>().map_err(status)?;
        let requested = if requested.is_empty() { None } else { Some(requested) };
        let with_features = infer::wants_features(requested.as_deref());
        let tensors = self.run(&target, &request, with_features).await.map_err(status)?;
        let answers = infer::select(&name, &tensors, requested).map_err(status)?;
        Ok(tonic::Response::new(response(name, id, answers)))
    }
}

impl Inference {
    async fn run<'t>(
        &self,
        target: &'t Target,
        request: &proto::ModelInferRequest,
        with_features: bool,
    ) -> Result<Vec<infer::OutputValues<'t>>, Error> {
        let name = &request.model_name;
        let input = infer::only_input(name, &request.inputs)?;
        let described = Input { name: &input.name, datatype: &input.datatype, shape: &input.shape };
        let kind = described.kind()?;
        let images = described.batch(self.state.limits.max_images_per_request)?;
        let raw = match request.raw_input_contents.as_slice() {
            [] => None,
            [raw] => Some(raw),
            more => {
                return Err(Error::BadRequest(format!(
                    "raw_input_contents holds {} tensors; it must hold one per input, and there is one input",
                    more.len()
                )));
            }
        };
        let values = match (kind, raw, &input.contents) {
            (Kind::Fp32, Some(raw), _) => {
                Values::Fp32(tensors::fp32_from_bytes(raw, &input.name).map_err(Error::BadRequest)?)
            }
            (Kind::Fp32, None, Some(contents)) => Values::Fp32(contents.fp32_contents.clone()),
            (Kind::Images, Some(raw), _) => {
                let elements = tensors::bytes_elements(raw, &input.name, images).map_err(Error::BadRequest)?;
                Values::Images(elements.into_iter().map(|e| raw.slice_ref(e)).collect())
            }
            (Kind::Images, None, Some(contents)) => Values::Images(contents.bytes_contents.clone()),
            (_, None, None) => {
                return Err(Error::BadRequest(format!(
                    "input {} has no contents and raw_input_contents is empty",
                    input.name
                )));
            }
        };
        infer::run(&self.state, target, &described, images, values, with_features).await
    }
}

/// An output the request names, with the classification extension's k (an integer parameter).
fn requested(output: &InferRequestedOutputTensor) -> Result<Requested<'_>, Error> {
    let classification = match output.parameters.get("classification").and_then(|p| p.parameter_choice.as_ref()) {
        None => None,
        Some(ParameterChoice::Int64Param(k)) => Some(*k),
        Some(ParameterChoice::Uint64Param(k)) => Some(i64::try_from(*k).unwrap_or(i64::MAX)),
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "output {}: classification must be an integer count ≥ 1, not {other:?}",
                output.name
            )));
        }
    };
    Ok(Requested { name: &output.name, classification })
}

/// Every output's data in `raw_output_contents`, in the order of `outputs`, as Triton sends it.
fn response(model_name: String, id: String, answers: Vec<Answer>) -> proto::ModelInferResponse {
    let mut outputs = Vec::with_capacity(answers.len());
    let mut raw = Vec::with_capacity(answers.len());
    for answer in answers {
        outputs.push(InferOutputTensor {
            name: answer.name.to_owned(),
            datatype: answer.datatype().to_owned(),
            shape: answer.shape.to_vec(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(Bytes::from(match &answer.data {
            AnswerData::Fp32(values) => tensors::fp32_to_bytes(values),
            AnswerData::Strings(strings) => tensors::encode_bytes_elements(strings),
        }));
    }
    proto::ModelInferResponse {
        model_name,
        model_version: MODEL_VERSION.to_owned(),
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

impl From<super::protocol::ModelConfig> for proto::ModelConfig {
    fn from(config: super::protocol::ModelConfig) -> Self {
        let data_type = |name: &str| proto::DataType::from_str_name(name).unwrap_or_default() as i32;
        Self {
            name: config.name,
            platform: config.platform,
            backend: config.backend,
            max_batch_size: config.max_batch_size,
            input: config
                .input
                .into_iter()
                .map(|input| proto::ModelInput {
                    data_type: data_type(&input.data_type),
                    format: proto::model_input::Format::from_str_name(&input.format).unwrap_or_default() as i32,
                    name: input.name,
                    dims: input.dims,
                })
                .collect(),
            output: config
                .output
                .into_iter()
                .map(|output| proto::ModelOutput {
                    data_type: data_type(&output.data_type),
                    name: output.name,
                    dims: output.dims,
                })
                .collect(),
            dynamic_batching: Some(proto::ModelDynamicBatching {
                preferred_batch_size: config.dynamic_batching.preferred_batch_size,
                max_queue_delay_microseconds: config.dynamic_batching.max_queue_delay_microseconds,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_meaning_as_grpc_codes() {
        assert_eq!(code(StatusCode::TOO_MANY_REQUESTS, "overloaded"), Code::ResourceExhausted);
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE, "model-loading"), Code::Unavailable);
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE, "timeout"), Code::DeadlineExceeded);
        assert_eq!(code(StatusCode::NOT_FOUND, "unknown-model"), Code::NotFound);
        assert_eq!(code(StatusCode::UNPROCESSABLE_ENTITY, "not-an-image"), Code::InvalidArgument);
        assert_eq!(code(StatusCode::UNAUTHORIZED, "unauthorized"), Code::Unauthenticated);
        assert_eq!(code(StatusCode::INTERNAL_SERVER_ERROR, "internal"), Code::Internal);
    }

    #[test]
    fn classification_takes_an_integer() {
        let output = |choice| InferRequestedOutputTensor {
            name: "out".into(),
            parameters: [("classification".to_owned(), proto::InferParameter { parameter_choice: Some(choice) })]
                .into(),
        };
        assert_eq!(requested(&output(ParameterChoice::Int64Param(3))).unwrap().classification, Some(3));
        assert_eq!(requested(&output(ParameterChoice::Uint64Param(2))).unwrap().classification, Some(2));
        assert!(requested(&output(ParameterChoice::StringParam("3".into()))).is_err());
    }
}
