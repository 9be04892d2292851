//! The JSON messages of the Open Inference Protocol's REST binding
//! (kserve/open-inference-protocol `specification/protocol/inference_rest.md`), with the
//! binary tensor extension's parameters (`binary_data_size`, `binary_data`,
//! `binary_data_output`) and the classification extension's (`classification`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `POST /v2/models/{m}/infer`'s JSON (the part before any binary tensor data).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferenceRequest {
    /// Echoed in the answer.
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<RequestInput>,
    /// The outputs to return; all of them when absent.
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestInput {
    pub name: String,
    /// `-1` is not allowed in a request: each dimension is the tensor's size.
    pub shape: Vec<i64>,
    /// `FP32` for the model's preprocessed input, `BYTES` for encoded images.
    pub datatype: String,
    /// `binary_data_size`: the tensor's bytes follow the JSON in the body.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// The elements in row-major order (nested arrays are flattened). `BYTES` elements are
    /// base64 strings in JSON; raw with the binary extension.
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestOutput {
    pub name: String,
    /// `binary_data` (bool): this output's bytes follow the JSON; `classification` (k): the
    /// top k as `BYTES` strings `"score:index:label"`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferenceResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<i64>,
    /// `FP32`, or `BYTES` for classification strings.
    pub datatype: String,
    /// `binary_data_size` when the bytes follow the JSON.
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// The elements, flattened; absent when they travel as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerLive {
    pub live: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerReady {
    pub ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// `-1` for a variable dimension (the batch).
    pub shape: Vec<i64>,
}

/// A model as Triton's model configuration describes one (the fields clients read).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    /// The most images one request may hold; `dims` leave this batch dimension out.
    pub max_batch_size: i32,
    pub input: Vec<ConfigInput>,
    pub output: Vec<ConfigOutput>,
    pub dynamic_batching: DynamicBatching,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigInput {
    pub name: String,
    /// `TYPE_FP32`.
    pub data_type: String,
    /// `FORMAT_NCHW` or `FORMAT_NHWC`.
    pub format: String,
    pub dims: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigOutput {
    pub name: String,
    pub data_type: String,
    pub dims: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DynamicBatching {
    /// The batch the batcher runs at most.
    pub preferred_batch_size: Vec<i32>,
    /// How long a batch that is not full waits for more requests (`--max-delay-ms`).
    pub max_queue_delay_microseconds: u64,
}

/// Every error answer of `/v2`, as the protocol has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
}
