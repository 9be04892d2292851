//! Classification over real HTTP with the fixture models: every input mode gives the
//! top-k that Python onnxruntime computed from an independent numpy/Pillow pipeline.

mod common;

use base64::Engine;
use common::*;
use graft::config::Limits;
use serde_json::{Value, json};

/// Images at the model's size in a lossless format reach the graph bit-identical to the
/// reference: 1e-5 absolute covers float32 summation order. JPEG goes through another
/// decoder than Pillow's libjpeg, and `wide.png` through another resampler than Pillow's
/// (both ±1–2 levels on some pixels), so those scores get 2e-3.
const PNG_TOLERANCE: f64 = 1e-5;
const APPROX_TOLERANCE: f64 = 2e-3;

fn tolerance(image: &str) -> f64 {
    if image.ends_with(".jpg") || image == "wide.png" { APPROX_TOLERANCE } else { PNG_TOLERANCE }
}

fn expected(model: &str, image: &str) -> Vec<Value> {
    json(&fixture_models().join("expected.json"))[model][image].as_array().unwrap().clone()
}

fn assert_top_k(got: &Value, want: &[Value], k: usize, tolerance: f64) {
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), k);
    let labels = std::fs::read_to_string(fixture_models().join("fixture_labels.tsv")).unwrap();
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["index"], w["index"], "top-k order differs: got {got:?}, want {want:?}");
        let diff = (g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs();
        assert!(diff <= tolerance, "score differs by {diff}: {g} vs {w}");
        let index = g["index"].as_u64().unwrap() as usize;
        let row: Vec<&str> = labels.lines().nth(index + 1).unwrap().split('\t').collect();
        assert_eq!(g["class_id"], row[1]);
        assert_eq!(g["label"], row[2]);
    }
}

async fn classify(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn every_input_mode_matches_the_python_reference() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let http = client();
    for model in ["tiny_nchw", "tiny_nhwc"] {
        let url = format!("{}/v1/models/{model}/classify", server.url);

        // Raw PNG, default top_k = 5.
        let body = classify(http.post(&url).header("content-type", "image/png").body(image("img1.png"))).await;
        assert_eq!(body["model"], model);
        assert_eq!(body["predictions"].as_array().unwrap().len(), 1);
        assert_top_k(&body["predictions"][0], &expected(model, "img1.png"), 5, PNG_TOLERANCE);

        // Raw JPEG with top_k = 3.
        let body =
            classify(http.post(format!("{url}?top_k=3")).header("content-type", "image/jpeg").body(image("img0.jpg")))
                .await;
        assert_top_k(&body["predictions"][0], &expected(model, "img0.jpg"), 3, tolerance("img0.jpg"));

        // Multipart with three files, answered in order; the landscape one is padded for tiny_nhwc.
        let form = ["img2.png", "wide.png", "img3.png"].iter().fold(reqwest::multipart::Form::new(), |form, name| {
            form.part("file", reqwest::multipart::Part::bytes(image(name)).file_name(name.to_string()))
        });
        let body = classify(http.post(format!("{url}?top_k=10")).multipart(form)).await;
        for (i, name) in ["img2.png", "wide.png", "img3.png"].iter().enumerate() {
            assert_top_k(&body["predictions"][i], &expected(model, name), 10, tolerance(name));
        }

        // JSON with base64 images (one as a data URL).
        let b64 = |name: &str| base64::engine::general_purpose::STANDARD.encode(image(name));
        let payload = json!({ "images": [ { "b64": b64("img0.png") }, { "b64": format!("data:image/png;base64,{}", b64("img3.png")) } ] });
        let body = classify(http.post(&url).json(&payload)).await;
        assert_top_k(&body["predictions"][0], &expected(model, "img0.png"), 5, PNG_TOLERANCE);
        assert_top_k(&body["predictions"][1], &expected(model, "img3.png"), 5, PNG_TOLERANCE);
    }
}

#[tokio::test]
async fn requests_larger_than_a_batch_are_split_and_answered_in_order() {
    let limits = Limits { max_batch_size: 2, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let names = ["img0.png", "img1.png", "img2.png", "img3.png", "wide.png"];
    let form = names.iter().fold(reqwest::multipart::Form::new(), |form, name| {
        form.part("file", reqwest::multipart::Part::bytes(image(name)).file_name(name.to_string()))
    });
    let response = client()
        .post(format!("{}/v1/models/tiny_nchw/classify?top_k=2", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_top_k(&body["predictions"][i], &expected("tiny_nchw", name), 2, tolerance(name));
    }
}

#[tokio::test]
async fn model_listing_health_and_readiness() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let http = client();
    let health: Value = http.get(format!("{}/healthz", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");

    let ready = http.get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["models"]["tiny_nchw"], "ready");

    let list: Value = http.get(format!("{}/v1/models", server.url)).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tiny_nchw", "tiny_nhwc"]);

    let model: Value =
        http.get(format!("{}/v1/models/tiny_nhwc", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(model["status"], "ready");
    assert_eq!(model["provider"], "CPUExecutionProvider");
    // The default layout on a CPU: two instances when there are two cores or more. The test
    // server gives ONNX Runtime one thread, so there is no wider session for lone batches.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let instances = if cores >= 2 { 2 } else { 1 };
    assert_eq!(model["sessions"], json!({"instances": instances, "threads_each": 1, "threads_when_alone": null}));
    assert_eq!(model["classes"], 10);
    assert_eq!(model["input"]["layout"], "NHWC");
    assert_eq!(model["input"]["color"], "bgr");
    assert_eq!(model["input"]["resize"]["mode"], "pad");
    assert_eq!(model["output"]["kind"], "probabilities");
    assert_eq!(model["graph"]["inputs"][0]["shape"], json!([-1, 32, 32, 3]));
}
