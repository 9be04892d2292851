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

fn manifest_of(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap()
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
    // Nor does a valid manifest whose model file does not load: the loaded version serves on.
    std::fs::write(models.path().join("broken.onnx"), b"not onnx").unwrap();
    let broken = manifest_of(models.path(), "tiny_nchw").replace("tiny_nchw.onnx", "broken.onnx");
    let broken: String = broken.lines().filter(|l| !l.starts_with("sha256")).map(|l| format!("{l}\n")).collect();
    std::fs::write(models.path().join("tiny_copy.toml"), broken).unwrap();
    let problem = expect_problem(post(url, "/v1/models/tiny_copy/load").await, 422).await;
    assert!(problem["detail"].as_str().unwrap().contains("did not load"), "{problem}");
    assert_eq!(status_of(url, "tiny_copy").await, "ready");
    assert_eq!(post_image(url, "tiny_copy", "image/png", "img0.png").await.status(), 200);
}

/// `--watch-models`: a manifest added to the folder is loaded, a changed one reloaded, a
/// removed one's model unloaded, each within a few polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_folder_loads_and_unloads_models() {
    let models = tempfile::tempdir().unwrap();
    for file in ["tiny_nchw.onnx", "tiny_nchw.toml", "fixture_labels.tsv"] {
        std::fs::copy(fixture_models().join(file), models.path().join(file)).unwrap();
    }
    let server = start_server(models.path(), Limits::default()).await;
    let url = server.url.clone();
    let watcher = tokio::spawn(graft::serving::watch_models(
        server.registry.clone(),
        models.path().to_owned(),
        std::time::Duration::from_millis(100),
    ));
    let wait_for = |name: &'static str, want: Value| {
        let url = url.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while status_of(&url, name).await != want {
                assert!(std::time::Instant::now() < deadline, "{name} never became {want}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    // The watcher takes the folder as it finds it first; changes after that act.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let manifest = std::fs::read_to_string(models.path().join("tiny_nchw.toml")).unwrap();
    std::fs::write(models.path().join("watched.toml"), &manifest).unwrap();
    wait_for("watched", "ready".into()).await;
    assert_eq!(post_image(&url, "watched", "image/png", "img0.png").await.status(), 200);
    std::fs::remove_file(models.path().join("watched.toml")).unwrap();
    wait_for("watched", "unloaded".into()).await;
    assert_eq!(post_image(&url, "watched", "image/png", "img0.png").await.status(), 503);
    // A changed manifest of a loaded model is loaded again: here it names a missing tensor
    // as its features, which serves scores but says why it has no features.
    let changed = manifest.replace("features = \"pooled\"", "features = \"no_such_tensor\"");
    assert_ne!(changed, manifest);
    std::fs::write(models.path().join("tiny_nchw.toml"), changed).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, state) = server.registry.get("tiny_nchw").unwrap();
        if let graft::serving::ModelState::Ready(model) = state
            && model.features.is_err()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the changed manifest was not loaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    watcher.abort();
}
