//! Models loaded and unloaded while the server runs: an unloaded model answers 503 and
//! leaves readiness alone, requests in flight when it is unloaded finish (200) or are refused
//! (503) but never fail otherwise, a reload serves again, and a manifest added to the model
//! folder loads by name; names that are not manifests are 404.

mod common;

use common::*;
use graft::config::Limits;
use serde_json::Value;

async fn post(url: &str, path: &str) -> reqwest::Response {
    client().post(format!("{url}{path}")).send().await.unwrap()
}

async fn status_of(url: &str, name: &str) -> Value {
    let models: Value = client().get(format!("{url}/v1/models")).send().await.unwrap().json().await.unwrap();
    let entry = models["models"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned();
    entry.map_or(Value::Null, |m| m["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_and_unload_while_serving() {
    // A model folder of our own, so that a manifest can be added to it.
    let models = tempfile::tempdir().unwrap();
    for file in ["tiny_nchw.onnx", "tiny_nchw.toml", "tiny_nhwc.onnx", "tiny_nhwc.toml", "fixture_labels.tsv"] {
        std::fs::copy(fixture_models().join(file), models.path().join(file)).unwrap();
    }
    let server = start_server(models.path(), Limits::default()).await;
    let url = &server.url;
    assert_eq!(post_image(url, "tiny_nchw", "image/png", "img0.png").await.status(), 200);

    // Requests in flight while the model is unloaded: each is answered or refused cleanly.
    let flight: Vec<_> = (0..24)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move {
                    let response = post_image(&url, "tiny_nchw", "image/png", "img0.png").await;
                    let status = response.status().as_u16();
                    (status, response.json::<Value>().await.unwrap())
                }
            })
        })
        .collect();
    let unloaded = post(url, "/v1/models/tiny_nchw/unload").await;
    assert_eq!(unloaded.status(), 200);
    assert_eq!(unloaded.json::<Value>().await.unwrap()["status"], "unloaded");
    for request in flight {
        let (status, body) = request.await.unwrap();
        assert!(
            status == 200 || (status == 503 && body["type"] == "urn:graft:problem:model-unloaded"),
            "{status} {body}"
        );
    }
    let refused = post_image(url, "tiny_nchw", "image/png", "img0.png").await;
    let problem = expect_problem(refused, 503).await;
    assert!(problem["detail"].as_str().unwrap().contains("/v1/models/tiny_nchw/load"), "{problem}");
    assert_eq!(status_of(url, "tiny_nchw").await, "unloaded");
    // The other model still serves, and readiness counts only the models meant to be loaded.
    assert_eq!(post_image(url, "tiny_nhwc", "image/png", "img0.png").await.status(), 200);
    assert_eq!(client().get(format!("{url}/readyz")).send().await.unwrap().status(), 200);

    let loaded = post(url, "/v1/models/tiny_nchw/load").await;
    assert_eq!(loaded.status(), 200);
    assert_eq!(loaded.json::<Value>().await.unwrap()["status"], "ready");
    assert_eq!(post_image(url, "tiny_nchw", "image/png", "img0.png").await.status(), 200);

    // A manifest added to the folder loads by its name.
    let manifest = std::fs::read_to_string(models.path().join("tiny_nchw.toml")).unwrap();
    std::fs::write(models.path().join("tiny_copy.toml"), manifest).unwrap();
    assert_eq!(status_of(url, "tiny_copy").await, Value::Null);
    assert_eq!(post(url, "/v1/models/tiny_copy/load").await.status(), 200);
    assert_eq!(status_of(url, "tiny_copy").await, "ready");
    assert_eq!(post_image(url, "tiny_copy", "image/png", "img0.png").await.status(), 200);

    // Nothing else loads or unloads: unknown names, paths out of the folder.
    for path in ["/v1/models/nope/load", "/v1/models/nope/unload", "/v1/models/..%2Ftiny_nchw/load"] {
        let problem = expect_problem(post(url, path).await, 404).await;
        assert!(problem["detail"].as_str().unwrap().contains("only pretrained models"), "{path}: {problem}");
    }
    // A manifest that no longer describes a loadable model is refused with the reason.
    std::fs::write(models.path().join("tiny_copy.toml"), "file = 3\n").unwrap();
    let problem = expect_problem(post(url, "/v1/models/tiny_copy/load").await, 422).await;
    assert!(problem["detail"].as_str().unwrap().contains("tiny_copy"), "{problem}");
    assert_eq!(status_of(url, "tiny_copy").await, "ready", "a refused manifest leaves the model as it was");
}
