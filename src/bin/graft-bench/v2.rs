//! `graft-bench v2`: the Open Inference Protocol beside `/v1`, on one graft and one model in
//! the same run — the same image sent to `/v1/.../classify`, as a `BYTES` tensor over v2 REST
//! (binary tensor extension) and over gRPC (`raw_input_contents`), and the model's
//! preprocessed FP32 tensor over both — one image per request, printed with each one's ratio
//! to `/v1`.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tonic::transport::Channel;

use crate::load::{Call, LoadResult, Workload, post, run_closed_loop};
use crate::process::Server;
use graft::api::grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use graft::api::grpc_proto::model_infer_request::InferInputTensor;
use graft::api::grpc_proto::{ModelInferRequest, ModelMetadataRequest};
use graft::vision::{DecodeLimits, image_tensor};
use graft::zoo::Manifest;

#[derive(Debug, Clone, Args)]
pub struct V2BenchSettings {
    #[command(flatten)]
    pub workload: Workload,
}

pub async fn run(settings: V2BenchSettings) -> anyhow::Result<()> {
    let manifest = Manifest::load(&settings.workload.model_dir.join(format!("{}.toml", settings.workload.model)))?;
    let image = fs_err::read(&settings.workload.image)?;
    let content_type = if image.starts_with(&[0xFF, 0xD8]) { "image/jpeg" } else { "image/png" };
    let tensor = preprocessed(&manifest, &image)?;
    println!(
        "model {}, image {} ({} bytes; its tensor {} bytes), {} requests per level, one image per request",
        manifest.name,
        settings.workload.image.display(),
        image.len(),
        tensor.len() * 4,
        settings.workload.requests
    );

    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let args: Vec<String> = ["serve", "--models", &manifest.name, "--workers", "0", "--grpc-listen"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("127.0.0.1:{grpc_port}")])
        .collect();
    let data = tempfile::tempdir()?;
    let graft = Server::start_graft(&args, &settings.workload.model_dir, data.path()).await?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?.connect().await?;
    let grpc = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let metadata = ModelMetadataRequest { name: manifest.name.clone(), version: String::new() };
    let input_shape = grpc.clone().model_metadata(metadata).await?.into_inner().inputs[0].shape.clone();

    let v1 = format!("{}/v1/models/{}/classify", graft.base_url, manifest.name);
    let v2 = format!("{}/v2/models/{}/infer", graft.base_url, manifest.name);
    let image_elements = length_prefixed(&image);
    let tensor_bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensor_shape = input_shape.clone();
    tensor_shape[0] = 1;

    let most = settings.workload.concurrency.iter().copied().max().unwrap_or(1);
    let http = reqwest::Client::builder().pool_max_idle_per_host(most).build()?;
    let mut image_headers = HeaderMap::new();
    image_headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let rest_image = binary_body(&http, &v2, "images", "BYTES", &[1], &image_elements);
    let rest_tensor = binary_body(&http, &v2, &manifest.input_name, "FP32", &tensor_shape, &tensor_bytes);
    let grpc_image = infer_request(&manifest.name, "images", "BYTES", vec![1], image_elements);
    let grpc_tensor = infer_request(&manifest.name, &manifest.input_name, "FP32", tensor_shape, tensor_bytes);
    let v1_image = post(&http, &v1, image.clone().into(), image_headers);
    let (grpc_image, grpc_tensor) = (grpc_call(&grpc, grpc_image), grpc_call(&grpc, grpc_tensor));
    // Every way warms up before any is measured, so that the first measured is not also the
    // one that grows ONNX Runtime's arenas and the connection pools.
    for (concurrency, requests) in [(4, 32), (most, 4 * most)] {
        run_closed_loop(concurrency, requests, None, v1_image.clone()).await?;
        run_closed_loop(concurrency, requests, None, rest_image.clone()).await?;
        run_closed_loop(concurrency, requests, None, rest_tensor.clone()).await?;
        run_closed_loop(concurrency, requests, None, grpc_image.clone()).await?;
        run_closed_loop(concurrency, requests, None, grpc_tensor.clone()).await?;
    }
    let modes = [
        ("/v1 classify, the image", levels(&settings, v1_image).await?),
        ("v2 REST, the image (BYTES, binary)", levels(&settings, rest_image).await?),
        ("v2 REST, the tensor (FP32, binary)", levels(&settings, rest_tensor).await?),
        ("v2 gRPC, the image (BYTES, raw)", levels(&settings, grpc_image).await?),
        ("v2 gRPC, the tensor (FP32, raw)", levels(&settings, grpc_tensor).await?),
    ];
    drop(graft);

    for (name, results) in &modes {
        println!("\n{name}");
        for r in results {
            println!(
                "    c={:<3} {:>8.1} images/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
                r.concurrency, r.images_per_second, r.p50_ms, r.p99_ms, r.errors
            );
        }
    }
    println!("\nthroughput / /v1's at the same concurrency");
    let base = &modes[0].1;
    for (name, results) in &modes[1..] {
        let ratios: Vec<String> = results
            .iter()
            .zip(base)
            .map(|(r, b)| format!("c={} {:.2}", r.concurrency, r.images_per_second / b.images_per_second))
            .collect();
        println!("    {name:<38} {}", ratios.join("   "));
    }
    Ok(())
}

/// The image as graft preprocesses it for the model: the tensor a v2 client sends.
fn preprocessed(manifest: &Manifest, image: &[u8]) -> anyhow::Result<Vec<f32>> {
    image_tensor(image, &DecodeLimits::default(), &manifest.preprocessing).context("decoding the image")
}

fn length_prefixed(element: &[u8]) -> Vec<u8> {
    let mut out = (element.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(element);
    out
}

/// A v2 REST post with the binary tensor extension, asking for binary outputs.
fn binary_body(
    client: &reqwest::Client,
    url: &str,
    input: &str,
    datatype: &str,
    shape: &[i64],
    data: &[u8],
) -> impl Fn() -> Call + Clone + Send + 'static {
    let header = serde_json::json!({
        "inputs": [{"name": input, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": data.len()}}],
        "parameters": {"binary_data_output": true},
    });
    let mut body = serde_json::to_vec(&header).expect("JSON");
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert("inference-header-content-length", HeaderValue::from(body.len()));
    body.extend_from_slice(data);
    post(client, url, body.into(), headers)
}

fn infer_request(model: &str, input: &str, datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: input.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// One gRPC call per image, on one HTTP/2 connection (as tritonclient makes them).
fn grpc_call(
    client: &GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
) -> impl Fn() -> Call + Clone + Send + 'static {
    let (client, request) = (client.clone(), Arc::new(request));
    move || {
        let (mut client, request) = (client.clone(), (*request).clone());
        Box::pin(async move { client.model_infer(request).await.is_ok() }) as Call
    }
}

async fn levels(
    settings: &V2BenchSettings,
    send: impl Fn() -> Call + Clone + Send + 'static,
) -> anyhow::Result<Vec<LoadResult>> {
    let mut results = Vec::new();
    for &concurrency in &settings.workload.concurrency {
        results
            .push(run_closed_loop(concurrency, settings.workload.requests.max(concurrency), None, send.clone()).await?);
    }
    Ok(results)
}
