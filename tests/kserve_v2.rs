//! The Open Inference Protocol (KServe v2) over HTTP: health, metadata and readiness; inference
//! with FP32 tensors (JSON nested and flat, and binary) and with BYTES tensors of encoded images
//! (base64 JSON and binary), whose answers equal `/v1/.../classify` and the Python reference
//! (`expected.json`); the binary and classification extensions; and the protocol's errors.

mod common;

use base64::Engine;
use common::*;
use graft::config::Limits;
use serde_json::{Value, json};

const IMAGES: [&str; 2] = ["img0.png", "img1.png"];

async fn get(url: &str) -> (u16, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn infer(url: &str, model: &str, body: Value) -> (u16, Value) {
    let response = client().post(format!("{url}/v2/models/{model}/infer")).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A body with the binary tensor extension: the JSON, then `binary`.
async fn infer_binary(url: &str, model: &str, header: Value, binary: &[u8]) -> reqwest::Response {
    let json = serde_json::to_vec(&header).unwrap();
    let mut body = json.clone();
    body.extend_from_slice(binary);
    client()
        .post(format!("{url}/v2/models/{model}/infer"))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", json.len().to_string())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The answer of the binary extension: its JSON and the bytes after it.
async fn split_answer(response: reqwest::Response) -> (Value, Vec<u8>) {
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = response.bytes().await.unwrap();
    (serde_json::from_slice(&body[..length]).unwrap(), body[length..].to_vec())
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn softmax(values: &[f32]) -> Vec<f64> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = values.iter().map(|v| f64::from(v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// `/v1`'s scores of `image` in class order (all classes asked for).
async fn v1_scores(url: &str, model: &str, image_name: &str) -> Vec<f32> {
    let response = client()
        .post(format!("{url}/v1/models/{model}/classify?top_k=10"))
        .header("content-type", "image/png")
        .body(image(image_name))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let mut scores = vec![0.0; 10];
    for p in answer["predictions"][0].as_array().unwrap() {
        scores[p["index"].as_u64().unwrap() as usize] = p["score"].as_f64().unwrap() as f32;
    }
    scores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_readiness() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    assert_eq!(get(&format!("{url}/v2/health/live")).await, (200, json!({"live": true})));
    assert_eq!(get(&format!("{url}/v2/health/ready")).await, (200, json!({"ready": true})));
    let (status, server_meta) = get(&format!("{url}/v2")).await;
    assert_eq!(status, 200);
    assert_eq!(server_meta["name"], "graft");
    assert_eq!(server_meta["extensions"], json!(["binary_tensor_data", "classification", "model_configuration"]));

    let (status, meta) = get(&format!("{url}/v2/models/tiny_nchw")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["inputs"], json!([{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]));
    let width = server.registry.ready("tiny_nchw").unwrap().features.clone().unwrap();
    assert_eq!(
        meta["outputs"],
        json!([
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "features", "datatype": "FP32", "shape": [-1, width]},
        ])
    );
    let (_, nhwc) = get(&format!("{url}/v2/models/tiny_nhwc/versions/1")).await;
    assert_eq!(nhwc["inputs"][0]["shape"], json!([-1, 32, 32, 3]));
    assert_eq!(
        get(&format!("{url}/v2/models/tiny_nchw/ready")).await,
        (200, json!({"name": "tiny_nchw", "ready": true}))
    );
    assert_eq!(get(&format!("{url}/v2/models/tiny_nchw/versions/1/ready")).await.0, 200);
    // Triton's model configuration: the batch is left out of `dims`.
    let limits = Limits::default();
    let (status, config) = get(&format!("{url}/v2/models/tiny_nhwc/config")).await;
    assert_eq!(status, 200);
    assert_eq!(config["max_batch_size"], limits.max_images_per_request);
    assert_eq!(
        config["input"],
        json!([{"name": "input_1", "data_type": "TYPE_FP32", "format": "FORMAT_NHWC", "dims": [32, 32, 3]}])
    );
    assert_eq!(
        config["output"],
        json!([
            {"name": "probs", "data_type": "TYPE_FP32", "dims": [10]},
            {"name": "features", "data_type": "TYPE_FP32", "dims": [width]},
        ])
    );
    assert_eq!(config["dynamic_batching"]["preferred_batch_size"], json!([limits.max_batch_size]));
    assert_eq!(get(&format!("{url}/v2/models/tiny_nhwc/versions/1/config")).await.1, config);

    // Errors are the protocol's {"error": …}.
    for path in ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny_nchw/versions/2", "/v2/nothing"] {
        let (status, body) = get(&format!("{url}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
    // An unloaded model is not ready, and the server is ready without it (as /readyz).
    assert_eq!(client().post(format!("{url}/v1/models/tiny_nchw/unload")).send().await.unwrap().status(), 200);
    assert_eq!(
        get(&format!("{url}/v2/models/tiny_nchw/ready")).await,
        (503, json!({"name": "tiny_nchw", "ready": false}))
    );
    let (status, body) = infer(url, "tiny_nchw", json!({"inputs": []})).await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("unloaded"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_images_answer_as_v1_and_the_python_reference() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let expected = json(&fixture_models().join("expected.json"));
    let b64 = |name: &str| base64::engine::general_purpose::STANDARD.encode(image(name));

    for model in ["tiny_nhwc", "tiny_nchw"] {
        let body = json!({
            "id": "req-1",
            "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": [b64(IMAGES[0]), b64(IMAGES[1])]}],
        });
        let (status, answer) = infer(url, model, body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            (&answer["model_name"], &answer["model_version"], &answer["id"]),
            (&json!(model), &json!("1"), &json!("req-1"))
        );
        let output = &answer["outputs"][0];
        assert_eq!((&output["datatype"], &output["shape"]), (&json!("FP32"), &json!([2, 10])));
        let values = floats(&output["data"]);

        // The binary extension: the images raw, the answer raw.
        let mut raw = Vec::new();
        for name in IMAGES {
            let bytes = image(name);
            raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            raw.extend_from_slice(&bytes);
        }
        let header = json!({
            "inputs": [{"name": "images", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}],
            "parameters": {"binary_data_output": true},
        });
        let (json_part, binary) = split_answer(infer_binary(url, model, header, &raw).await).await;
        assert_eq!(json_part["outputs"][0]["parameters"]["binary_data_size"], 80);
        assert!(json_part["outputs"][0].get("data").is_none());
        assert_eq!(from_le(&binary), values, "binary and JSON answers agree");

        for (i, name) in IMAGES.iter().enumerate() {
            let scores = &values[i * 10..(i + 1) * 10];
            // A logits model answers its logits; /v1 and the reference give probabilities.
            let probabilities: Vec<f64> = match model {
                "tiny_nchw" => softmax(scores),
                _ => scores.iter().map(|&s| f64::from(s)).collect(),
            };
            let v1 = v1_scores(url, model, name).await;
            for (class, (&p, &q)) in probabilities.iter().zip(&v1).enumerate() {
                assert!((p - f64::from(q)).abs() < 1e-6, "{model} {name} class {class}: v2 {p} vs v1 {q}");
            }
            for reference in expected[model][name].as_array().unwrap() {
                let class = reference["index"].as_u64().unwrap() as usize;
                let want = reference["score"].as_f64().unwrap();
                assert!((probabilities[class] - want).abs() < 1e-4, "{model} {name} class {class}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fp32_tensors_run_as_given_and_classification_ranks_them() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let model = server.registry.ready("tiny_nchw").unwrap();
    let image_len = 3 * 32 * 32;
    let pixels: Vec<f32> = (0..2 * image_len).map(|j| ((j * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let direct = {
        let (model, pixels) = (model.clone(), pixels.clone());
        tokio::task::spawn_blocking(move || model.runner.infer_blocking(pixels, 2, 1).unwrap()).await.unwrap()
    };
    let want: Vec<f32> = direct.iter().flat_map(|image| image[0].clone()).collect();

    // Flat JSON, nested JSON (as numpy's tolist() gives) and binary: the same answer.
    let nested: Vec<Vec<Vec<Vec<f32>>>> = pixels
        .chunks(image_len)
        .map(|image| image.chunks(32 * 32).map(|plane| plane.chunks(32).map(<[f32]>::to_vec).collect()).collect())
        .collect();
    for data in [json!(pixels), json!(nested)] {
        let body = json!({"inputs": [{"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": data}]});
        let (status, answer) = infer(url, "tiny_nchw", body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["outputs"][0]["name"], "logits");
        assert_eq!(floats(&answer["outputs"][0]["data"]), want);
    }
    let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [
            {"name": "logits", "parameters": {"binary_data": true}},
            {"name": "logits", "parameters": {"classification": 3}},
        ],
    });
    let (answer, binary) = split_answer(infer_binary(url, "tiny_nchw", header, &bytes).await).await;
    assert_eq!(from_le(&binary), want);

    // The classification extension: the top 3 of each image as "score:index:label".
    let classes = &answer["outputs"][1];
    assert_eq!((&classes["datatype"], &classes["shape"]), (&json!("BYTES"), &json!([2, 3])));
    let labels_file = std::fs::read_to_string(fixture_models().join("fixture_labels.tsv")).unwrap();
    let labels: Vec<&str> = labels_file.lines().skip(1).map(|line| line.split('\t').nth(2).unwrap()).collect();
    assert_eq!(labels.len(), 10);
    let strings: Vec<&str> = classes["data"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for (i, image) in want.chunks(10).enumerate() {
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| image[b].total_cmp(&image[a]));
        for (rank, &class) in order[..3].iter().enumerate() {
            let parts: Vec<&str> = strings[i * 3 + rank].splitn(3, ':').collect();
            assert_eq!(parts[0].parse::<f32>().unwrap(), image[class], "the score exactly");
            assert_eq!((parts[1], parts[2]), (class.to_string().as_str(), labels[class]));
        }
    }

    // The pooled features, only when asked for: the base's own, as ONNX Runtime gives them.
    let direct = {
        let (model, pixels) = (model.clone(), pixels.clone());
        tokio::task::spawn_blocking(move || model.runner.infer_blocking(pixels, 2, 2).unwrap()).await.unwrap()
    };
    let features: Vec<f32> = direct.iter().flat_map(|image| image[1].clone()).collect();
    let body = json!({
        "inputs": [{"name": "pixels", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": pixels}],
        "outputs": [{"name": "features"}, {"name": "logits"}],
    });
    let (status, answer) = infer(url, "tiny_nchw", body).await;
    assert_eq!(status, 200, "{answer}");
    let width = model.features.clone().unwrap();
    assert_eq!(
        (&answer["outputs"][0]["name"], &answer["outputs"][0]["shape"]),
        (&json!("features"), &json!([2, width]))
    );
    assert_eq!(floats(&answer["outputs"][0]["data"]), features);
    assert_eq!(floats(&answer["outputs"][1]["data"]), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_fit_get_the_protocols_errors() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let fp32 = |shape: Value, data: Value| json!({"inputs": [{"name": "pixels", "shape": shape, "datatype": "FP32", "data": data}]});
    let cases = [
        ("not JSON", json!("nope"), 400),
        (
            "two inputs",
            json!({"inputs": [fp32(json!([1]), json!([0]))["inputs"][0], fp32(json!([1]), json!([0]))["inputs"][0]]}),
            400,
        ),
        ("a wrong shape", fp32(json!([1, 3, 16, 16]), json!(vec![0.0; 768])), 400),
        ("too little data", fp32(json!([1, 3, 32, 32]), json!([0.0, 1.0])), 400),
        ("too much data", fp32(json!([1, 3, 32, 32]), json!(vec![0.0; 3073])), 400),
        ("a zero batch", fp32(json!([0, 3, 32, 32]), json!([])), 400),
        ("a batch over the limit", fp32(json!([65, 3, 32, 32]), json!([])), 400),
        ("strings as FP32", fp32(json!([1, 3, 32, 32]), json!(["a"])), 400),
        (
            "an unknown datatype",
            json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "INT8", "data": [1]}]}),
            400,
        ),
        (
            "a wrong input name",
            json!({"inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.0; 3072]}]}),
            400,
        ),
        (
            "an unknown output",
            json!({"inputs": fp32(json!([1, 3, 32, 32]), json!(vec![0.0; 3072]))["inputs"], "outputs": [{"name": "nope"}]}),
            400,
        ),
        (
            "BYTES that are no image",
            json!({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}),
            422,
        ),
        (
            "BYTES that are not base64",
            json!({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}),
            400,
        ),
    ];
    for (what, body, want) in cases {
        let (status, answer) = infer(url, "tiny_nchw", body).await;
        assert_eq!(status, want, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {answer}");
    }
    let (status, answer) = infer(url, "nope", json!({"inputs": []})).await;
    assert_eq!((status, answer["error"].as_str().is_some()), (404, true));
    // A binary header longer than the body.
    let response = infer_binary(url, "tiny_nchw", json!({"inputs": []}), b"").await;
    let header_only = response.status().as_u16();
    assert_eq!(header_only, 400);
    let response = client()
        .post(format!("{url}/v2/models/tiny_nchw/infer"))
        .header("inference-header-content-length", "999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("Inference-Header-Content-Length"), "{answer}");
    // Still serving.
    assert_eq!(post_image(url, "tiny_nchw", "image/png", "img0.png").await.status(), 200);
}

/// A trained model is a v2 model too: its probabilities over the dataset's classes, equal to
/// `/v1`'s, and the classification extension names the classes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_answers_its_probabilities() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let _worker = spawn_worker(&server, std::time::Duration::from_secs(30));
    let dataset = upload_dataset(url, common::datasets::class_folder_zip("shapes", 12, 2), "shapes").await;
    let job = submit_job(url, json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "shapes"})).await;
    let done = wait_for_job(url, job["id"].as_str().unwrap(), std::time::Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let classes: Vec<String> =
        dataset["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();

    let (status, meta) = get(&format!("{url}/v2/models/shapes")).await;
    assert_eq!(status, 200);
    let width = server.registry.ready("tiny_nchw").unwrap().features.clone().unwrap();
    assert_eq!(
        meta["outputs"],
        json!([
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes.len()]},
            {"name": "features", "datatype": "FP32", "shape": [-1, width]},
        ])
    );
    assert_eq!(meta["inputs"][0]["name"], "pixels", "the base's input");

    let photo = image("img0.png");
    let body = json!({
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                    "data": [base64::engine::general_purpose::STANDARD.encode(&photo)]}],
        "outputs": [{"name": "probabilities"}, {"name": "probabilities", "parameters": {"classification": 1}}],
    });
    let (status, answer) = infer(url, "shapes", body).await;
    assert_eq!(status, 200, "{answer}");
    let probabilities = floats(&answer["outputs"][0]["data"]);
    assert_eq!(probabilities.len(), classes.len());
    let v1: Value = client()
        .post(format!("{url}/v1/models/shapes/classify?top_k={}", classes.len()))
        .header("content-type", "image/png")
        .body(photo)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in v1["predictions"][0].as_array().unwrap() {
        let class = p["index"].as_u64().unwrap() as usize;
        assert!((f64::from(probabilities[class]) - p["score"].as_f64().unwrap()).abs() < 1e-6, "class {class}");
    }
    let best = &v1["predictions"][0][0];
    let top = answer["outputs"][1]["data"][0].as_str().unwrap();
    assert_eq!(
        top,
        format!(
            "{}:{}:{}",
            probabilities[best["index"].as_u64().unwrap() as usize],
            best["index"],
            best["label"].as_str().unwrap()
        )
    );
}
