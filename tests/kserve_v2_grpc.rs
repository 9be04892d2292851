//! The Open Inference Protocol over gRPC (`--grpc-listen`), with the generated client on a
//! real HTTP/2 connection: health, metadata, Triton's model configuration, inference with
//! raw and typed contents for FP32 tensors and encoded images (equal to the REST answers,
//! which `kserve_v2` checks against `/v1` and the Python reference), the classification
//! extension, and the refusals as gRPC codes: unknown models, bad shapes, a message over
//! `--max-body-bytes`, a full queue (RESOURCE_EXHAUSTED) and a missing key.

mod common;

use std::sync::Arc;

use common::*;
use graft::api::grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use graft::api::grpc_proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use graft::api::grpc_proto::*;
use graft::config::Limits;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const IMAGES: [&str; 2] = ["img0.png", "img1.png"];

async fn connect(url: &str) -> GrpcInferenceServiceClient<Channel> {
    let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    // Larger than tonic's 4 MiB default, as graft's answers can be.
    GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

/// A server on both wires: its REST URL and its gRPC client.
async fn start(limits: Limits) -> (TestServer, GrpcInferenceServiceClient<Channel>) {
    let server = start_server(&fixture_models(), limits).await;
    let grpc = connect(&serve_grpc(server.state.clone()).await).await;
    (server, grpc)
}

fn length_prefixed(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    out
}

fn le_floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn input(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape, ..Default::default() }
}

fn request(model: &str, input: InferInputTensor, raw: Option<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: "call-1".into(),
        inputs: vec![input],
        raw_input_contents: raw.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

fn classification(output: &str, k: i64) -> InferRequestedOutputTensor {
    let parameter = InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(k)) };
    InferRequestedOutputTensor { name: output.into(), parameters: [("classification".to_owned(), parameter)].into() }
}

/// The REST answer's first output values for the same request, as JSON.
async fn rest_values(url: &str, model: &str, body: Value) -> Vec<f32> {
    let response = client().post(format!("{url}/v2/models/{model}/infer")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_configuration() {
    let (_server, mut grpc) = start(Limits::default()).await;
    assert!(grpc.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(grpc.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta = grpc.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "graft");
    assert_eq!(meta.extensions, ["binary_tensor_data", "classification", "model_configuration"]);

    let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(grpc.model_ready(ready("tiny_nchw", "")).await.unwrap().into_inner().ready);
    assert!(grpc.model_ready(ready("tiny_nchw", "1")).await.unwrap().into_inner().ready);
    // As Triton answers: a model or version that is not there is not ready.
    assert!(!grpc.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);
    assert!(!grpc.model_ready(ready("tiny_nchw", "2")).await.unwrap().into_inner().ready);

    let metadata = ModelMetadataRequest { name: "tiny_nhwc".into(), version: String::new() };
    let meta = grpc.model_metadata(metadata).await.unwrap().into_inner();
    assert_eq!((meta.name.as_str(), meta.platform.as_str()), ("tiny_nhwc", "onnxruntime_onnx"));
    assert_eq!(meta.versions, ["1"]);
    let input = &meta.inputs[0];
    assert_eq!(
        (input.name.as_str(), input.datatype.as_str(), input.shape.as_slice()),
        ("input_1", "FP32", &[-1, 32, 32, 3][..])
    );
    assert_eq!((meta.outputs[0].name.as_str(), meta.outputs[0].shape.as_slice()), ("probs", &[-1, 10][..]));

    let config = ModelConfigRequest { name: "tiny_nchw".into(), version: String::new() };
    let config = grpc.model_config(config).await.unwrap().into_inner().config.unwrap();
    assert_eq!(config.max_batch_size as usize, Limits::default().max_images_per_request);
    assert_eq!(config.input[0].dims, [3, 32, 32], "without the batch dimension");
    assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(config.input[0].format, model_input::Format::Nchw as i32);
    assert_eq!((config.output[0].name.as_str(), config.output[0].dims.as_slice()), ("logits", &[10][..]));
    let batching = config.dynamic_batching.unwrap();
    assert_eq!(batching.preferred_batch_size, [Limits::default().max_batch_size as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_answers_as_the_rest_binding() {
    let (server, mut grpc) = start(Limits::default()).await;
    let url = &server.url;
    let photos: Vec<Vec<u8>> = IMAGES.iter().map(|name| image(name)).collect();
    let b64: Vec<String> =
        photos.iter().map(|p| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, p)).collect();
    for model in ["tiny_nchw", "tiny_nhwc"] {
        let rest = rest_values(
            url,
            model,
            json!({"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": b64}]}),
        )
        .await;

        // Encoded images, raw: one length-prefixed element per image.
        let raw = request(model, input("images", "BYTES", vec![2]), Some(length_prefixed(&photos)));
        let answer = grpc.model_infer(raw).await.unwrap().into_inner();
        assert_eq!(
            (answer.model_name.as_str(), answer.model_version.as_str(), answer.id.as_str()),
            (model, "1", "call-1")
        );
        let output = &answer.outputs[0];
        assert_eq!((output.datatype.as_str(), output.shape.as_slice()), ("FP32", &[2, 10][..]));
        assert_eq!(answer.raw_output_contents.len(), 1, "one raw tensor per output");
        assert_eq!(le_floats(&answer.raw_output_contents[0]), rest, "{model}");

        // Encoded images as typed contents.
        let mut typed = input("images", "BYTES", vec![2, 1]);
        typed.contents = Some(InferTensorContents {
            bytes_contents: photos.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        });
        let answer = grpc.model_infer(request(model, typed, None)).await.unwrap().into_inner();
        assert_eq!(le_floats(&answer.raw_output_contents[0]), rest);
    }

    // The preprocessed tensor, raw and typed, equals the REST answer for the same values.
    let values: Vec<f32> = (0..2 * 3072).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
    let rest = rest_values(
        url,
        "tiny_nchw",
        json!({"inputs": [{"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": values}]}),
    )
    .await;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let raw = request("tiny_nchw", input("pixels", "FP32", vec![2, 3, 32, 32]), Some(bytes.clone()));
    let answer = grpc.model_infer(raw).await.unwrap().into_inner();
    assert_eq!(le_floats(&answer.raw_output_contents[0]), rest);
    // The pooled features when asked for, as REST answers them.
    let rest_features = {
        let body = json!({"inputs": [{"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": values}],
                          "outputs": [{"name": "features"}]});
        rest_values(url, "tiny_nchw", body).await
    };
    let mut call = request("tiny_nchw", input("pixels", "FP32", vec![2, 3, 32, 32]), Some(bytes.clone()));
    call.outputs = vec![InferRequestedOutputTensor { name: "features".into(), parameters: Default::default() }];
    let answer = grpc.model_infer(call).await.unwrap().into_inner();
    assert_eq!(answer.outputs[0].name, "features");
    assert_eq!(le_floats(&answer.raw_output_contents[0]), rest_features);
    assert!(!rest_features.is_empty());
    let mut typed = input("pixels", "FP32", vec![2, 3, 32, 32]);
    typed.contents = Some(InferTensorContents { fp32_contents: values.clone(), ..Default::default() });
    let mut call = request("tiny_nchw", typed, None);
    call.outputs = vec![classification("logits", 3)];
    let answer = grpc.model_infer(call).await.unwrap().into_inner();
    let output = &answer.outputs[0];
    assert_eq!((output.datatype.as_str(), output.shape.as_slice()), ("BYTES", &[2, 3][..]));

    // The classification strings: each image's top 3 of the REST values, best first.
    let raw = &answer.raw_output_contents[0];
    let mut strings = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let length = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(raw[at + 4..at + 4 + length].to_vec()).unwrap());
        at += 4 + length;
    }
    assert_eq!(strings.len(), 6);
    for (image, scores) in rest.chunks(10).enumerate() {
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        for (rank, &class) in order[..3].iter().enumerate() {
            let fields: Vec<&str> = strings[image * 3 + rank].splitn(3, ':').collect();
            assert_eq!(fields[1], class.to_string(), "image {image} rank {rank}: {strings:?}");
            assert!((fields[0].parse::<f32>().unwrap() - scores[class]).abs() < 1e-6);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_grpc_codes_and_change_nothing() {
    let limits = Limits { max_body_bytes: 64 * 1024, ..Limits::default() };
    let (server, mut grpc) = start(limits).await;
    let tensor = |shape: Vec<i64>, floats: usize| {
        request("tiny_nchw", input("pixels", "FP32", shape), Some(vec![0; floats * 4]))
    };
    let cases = [
        (
            "an unknown model",
            request("nope", input("pixels", "FP32", vec![1, 3, 32, 32]), Some(vec![0; 3072 * 4])),
            Code::NotFound,
        ),
        ("a wrong shape", tensor(vec![1, 3, 16, 16], 768), Code::InvalidArgument),
        ("too little data", tensor(vec![1, 3, 32, 32], 10), Code::InvalidArgument),
        ("a batch over the limit", tensor(vec![65, 3, 32, 32], 0), Code::InvalidArgument),
        (
            "an unknown datatype",
            request("tiny_nchw", input("pixels", "INT8", vec![1]), Some(vec![0])),
            Code::InvalidArgument,
        ),
        ("no data", request("tiny_nchw", input("pixels", "FP32", vec![1, 3, 32, 32]), None), Code::InvalidArgument),
        (
            "BYTES that are no image",
            request("tiny_nchw", input("i", "BYTES", vec![1]), Some(length_prefixed(&[b"hello".to_vec()]))),
            Code::InvalidArgument,
        ),
        ("a message over --max-body-bytes", tensor(vec![8, 3, 32, 32], 8 * 3072), Code::OutOfRange),
    ];
    for (what, call, want) in cases {
        let refused = grpc.model_infer(call).await.unwrap_err();
        assert_eq!(refused.code(), want, "{what}: {refused:?}");
        assert!(!refused.message().is_empty(), "{what}");
    }
    let mut unknown_output = tensor(vec![1, 3, 32, 32], 3072);
    unknown_output.outputs = vec![InferRequestedOutputTensor { name: "nope".into(), parameters: Default::default() }];
    let refused = grpc.model_infer(unknown_output).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("logits"), "names the outputs: {}", refused.message());
    // An unloaded model is UNAVAILABLE, and not ready.
    assert_eq!(client().post(format!("{}/v1/models/tiny_nchw/unload", server.url)).send().await.unwrap().status(), 200);
    let refused = grpc.model_infer(tensor(vec![1, 3, 32, 32], 3072)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let ready = ModelReadyRequest { name: "tiny_nchw".into(), version: String::new() };
    assert!(!grpc.model_ready(ready).await.unwrap().into_inner().ready);
    // Still serving.
    let ok = request("tiny_nhwc", input("images", "BYTES", vec![1]), Some(length_prefixed(&[image("img0.png")])));
    assert!(grpc.model_infer(ok).await.is_ok());
}

/// A full queue refuses with RESOURCE_EXHAUSTED at once, and the calls it admits are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted() {
    let limits = Limits { queue_capacity: 2, max_batch_size: 1, model_instances: 1, ..Limits::default() };
    let (_server, grpc) = start(limits).await;
    let photo = length_prefixed(&[image("img0.png")]);
    let calls = (0..32).map(|_| {
        let (mut grpc, photo) = (grpc.clone(), photo.clone());
        tokio::spawn(async move {
            grpc.model_infer(request("tiny_nchw", input("images", "BYTES", vec![1]), Some(photo))).await
        })
    });
    let answers = futures_util::future::join_all(calls).await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let codes: Vec<Code> = answers.iter().map(|a| a.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)).collect();
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(refused.message().contains("queue is full"), "{refused:?}");
    }
    assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)), "{codes:?}");
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
}

/// With `--private-inference`, the model methods need the key (UNAUTHENTICATED without it);
/// the server's health and metadata stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_inference_needs_the_key() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let mut state = server.state.clone();
    state.auth = Arc::new(graft::api::auth::ApiKeys::new(["s3cret".to_owned()], true));
    let mut grpc = connect(&serve_grpc(state).await).await;
    assert!(grpc.server_live(ServerLiveRequest {}).await.is_ok());
    assert!(grpc.server_metadata(ServerMetadataRequest {}).await.is_ok());
    let metadata = || ModelMetadataRequest { name: "tiny_nchw".into(), version: String::new() };
    assert_eq!(grpc.model_metadata(metadata()).await.unwrap_err().code(), Code::Unauthenticated);
    let mut with_key = tonic::Request::new(metadata());
    with_key.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(grpc.model_metadata(with_key).await.unwrap().into_inner().name, "tiny_nchw");
    let mut wrong = tonic::Request::new(metadata());
    wrong.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(grpc.model_metadata(wrong).await.unwrap_err().code(), Code::Unauthenticated);
}
