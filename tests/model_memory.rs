//! Models under `--max-model-memory`: loaded on their first request, the least recently used
//! unloaded to make room, pinned ones kept; and one copy of a model's weights for all its
//! sessions (the real EfficientNet-Lite0 from ../shared/models, when present).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use graft::config::Limits;
use graft::serving::{MemoryPolicy, ModelRegistry, ModelRuntime};
use graft::zoo::load_manifest_dir;
use serde_json::Value;

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// Three models (copies of the tiny NCHW fixture under three names).
fn three_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixture_models();
    std::fs::copy(fixtures.join("tiny_nchw.onnx"), dir.path().join("tiny_nchw.onnx")).unwrap();
    std::fs::copy(fixtures.join("fixture_labels.tsv"), dir.path().join("fixture_labels.tsv")).unwrap();
    let manifest = std::fs::read_to_string(fixtures.join("tiny_nchw.toml")).unwrap();
    for name in NAMES {
        std::fs::write(dir.path().join(format!("{name}.toml")), &manifest).unwrap();
    }
    dir
}

fn registry(dir: &Path, policy: Option<MemoryPolicy>, share_weights: bool) -> Arc<ModelRegistry> {
    registry_with(dir, policy, share_weights, Limits::default())
}

fn registry_with(dir: &Path, policy: Option<MemoryPolicy>, share_weights: bool, limits: Limits) -> Arc<ModelRegistry> {
    let runtime = ModelRuntime { env: runtime(), options: cpu(), batching: limits.batching(), share_weights };
    let registry = ModelRegistry::new(load_manifest_dir(dir).unwrap(), runtime);
    let registry = match policy {
        Some(policy) => registry.with_memory_policy(policy).unwrap(),
        None => registry,
    };
    let registry = Arc::new(registry);
    registry.load_all();
    registry
}

/// What one of the three models takes once loaded, measured on a registry without a budget
/// (the least of the three: the first load of a process may also make ONNX Runtime's
/// one-time state).
fn bytes_per_model(dir: &Path) -> u64 {
    let every = registry(dir, None, true);
    let sizes: Vec<u64> = NAMES.iter().map(|n| every.memory(n).unwrap().bytes).collect();
    assert!(sizes.iter().all(|&b| b > 0), "every loaded model holds memory: {sizes:?}");
    *sizes.iter().min().unwrap()
}

async fn serve(registry: Arc<ModelRegistry>) -> TestServer {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let url = common::db::sqlite_url(data_dir.path());
    serve_registry(registry, Limits::default(), &url, data_dir).await
}

/// A registry with `policy` over the models in `dir`, loaded as the policy says, and served.
async fn serve_under(dir: &Path, policy: MemoryPolicy) -> (Arc<ModelRegistry>, TestServer) {
    let dir = dir.to_owned();
    let registry = tokio::task::spawn_blocking(move || registry(&dir, Some(policy), true)).await.unwrap();
    (registry.clone(), serve(registry).await)
}

async fn classify(client: &reqwest::Client, url: &str, model: &str) -> reqwest::Response {
    client
        .post(format!("{url}/v1/models/{model}/classify?top_k=3"))
        .header("content-type", "image/png")
        .body(image("img0.png"))
        .send()
        .await
        .unwrap()
}

fn top_index(answer: &Value) -> u64 {
    answer["predictions"][0][0]["index"].as_u64().unwrap()
}

fn loaded_bytes(registry: &ModelRegistry) -> u64 {
    NAMES.iter().map(|n| registry.memory(n).unwrap().bytes).sum()
}

#[tokio::test]
async fn round_robin_over_three_models_under_a_budget_for_two() {
    let dir = three_models();
    let each = bytes_per_model(dir.path());
    // Room for two of them, not three.
    let budget = 2 * each + each / 2;
    let policy = MemoryPolicy { budget: Some(budget), preload: Some(vec![]), load_wait: Duration::from_secs(30) };
    let (registry, server) = serve_under(dir.path(), policy).await;
    let client = reqwest::Client::new();
    // Nothing is loaded before the first request, and the server is ready all the same.
    let listed: Value = client.get(format!("{}/v1/models", server.url)).send().await.unwrap().json().await.unwrap();
    for model in listed["models"].as_array().unwrap() {
        assert_eq!(model["status"], "standby", "{model}");
        assert_eq!(model["memory"]["bytes"], 0);
        assert_eq!(model["memory"]["pinned"], false);
    }
    assert_eq!(client.get(format!("{}/readyz", server.url)).send().await.unwrap().status(), 200);
    // The answer the fixture script computed for img0.png.
    let want = json(&fixture_models().join("expected.json"))["tiny_nchw"]["img0.png"][0]["index"].as_u64().unwrap();

    // Sequential round robin: the first two requests load alpha and beta; from then on each
    // request loads its model and unloads the least recently used one, the model the next
    // request asks for. 12 requests: 12 loads, 10 unloads.
    for round in 0..4 {
        for name in NAMES {
            let answer = classify(&client, &server.url, name).await;
            assert_eq!(answer.status(), 200, "round {round}, {name}");
            assert_eq!(top_index(&answer.json().await.unwrap()), want);
            assert!(loaded_bytes(&registry) <= budget, "{} > {budget}", loaded_bytes(&registry));
        }
    }
    let loads: u64 = NAMES.iter().map(|n| registry.memory(n).unwrap().loads).sum();
    let evictions: u64 = NAMES.iter().map(|n| registry.memory(n).unwrap().evictions).sum();
    assert_eq!((loads, evictions), (12, 10));
    // The last two asked for are loaded; the one before them waits in standby.
    let listed: Value = client.get(format!("{}/v1/models", server.url)).send().await.unwrap().json().await.unwrap();
    let status = |name: &str| {
        let model = listed["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
        (model["status"].as_str().unwrap().to_owned(), model["memory"]["bytes"].as_u64().unwrap())
    };
    assert_eq!(status("alpha").0, "standby");
    assert_eq!(status("alpha").1, 0);
    assert_eq!(status("beta").0, "ready");
    assert!(status("beta").1 > 0);
    assert_eq!(status("gamma").0, "ready");

    // Three clients at once, each going round: every request is answered, some after
    // waiting on a load, and the budget holds throughout.
    let clients = (0..3).map(|offset| {
        let (client, url) = (client.clone(), server.url.clone());
        tokio::spawn(async move {
            for i in 0..9 {
                let name = NAMES[(i + offset) % 3];
                let answer = classify(&client, &url, name).await;
                assert_eq!(answer.status(), 200, "{name}: {:?}", answer.text().await);
            }
        })
    });
    let watch = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..400 {
                most = most.max(loaded_bytes(&registry));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    for client in clients {
        client.await.unwrap();
    }
    assert!(watch.await.unwrap() <= budget, "the loaded models passed the budget");
    let metrics = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let evicted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("graft_model_evictions_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let evictions: u64 = NAMES.iter().map(|n| registry.memory(n).unwrap().evictions).sum();
    assert_eq!(evicted as u64, evictions, "the metric counts every unload to make room");
    assert!(
        metrics.contains("graft_model_memory_bytes{model=\"gamma\"}")
            || metrics.contains("graft_model_memory_bytes{model=\"beta\"}")
    );
}

#[tokio::test]
async fn a_pinned_model_stays_and_a_model_that_cannot_fit_beside_it_is_refused() {
    let dir = three_models();
    let each = bytes_per_model(dir.path());
    // alpha is pinned; the budget leaves less than a model beside it.
    let budget = each + each / 2;
    let policy =
        MemoryPolicy { budget: Some(budget), preload: Some(vec!["alpha".into()]), load_wait: Duration::from_secs(30) };
    let (registry, server) = serve_under(dir.path(), policy).await;
    let client = reqwest::Client::new();
    assert_eq!(registry.memory("alpha").unwrap().loads, 1, "the pinned model loads at start");
    let refused = classify(&client, &server.url, "beta").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:graft:problem:model-memory");
    assert!(problem["detail"].as_str().unwrap().contains("pinned"), "{problem}");
    // The pinned model was not unloaded for it, and still answers.
    assert_eq!(registry.memory("alpha").unwrap().evictions, 0);
    assert_eq!(classify(&client, &server.url, "alpha").await.status(), 200);
    // Its first load was planned from its file; it measured too much and was dropped. Now its
    // size is known: the next request is refused without loading it again.
    assert_eq!(registry.memory("beta").unwrap().bytes, 0);
    assert_eq!(classify(&client, &server.url, "beta").await.status(), 503);
    let beta = registry.memory("beta").unwrap();
    assert_eq!((beta.loads, beta.bytes), (1, 0));
    // Asked for by name, it is refused the same way and stays in standby (not loading for
    // good): the server stays ready.
    let load = client.post(format!("{}/v1/models/beta/load", server.url)).send().await.unwrap();
    assert_eq!(load.status(), 422);
    assert!(load.text().await.unwrap().contains("pinned"));
    assert_eq!(server.registry.get("beta").unwrap().1.name(), "standby");
    assert_eq!(client.get(format!("{}/readyz", server.url)).send().await.unwrap().status(), 200);
}

/// Every session of a model reads one optimised copy of its weights: with the real
/// EfficientNet-Lite0, a second instance adds far less than the model file when they share
/// it, and about a file's worth when each holds its own; the answers are the same.
#[tokio::test]
async fn sessions_of_a_model_share_one_copy_of_its_weights() {
    let shared_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/efficientnet_lite0.onnx");
    if !shared_model.is_file() {
        eprintln!("../shared/models/efficientnet_lite0.onnx is absent: nothing to measure");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let manifest = std::fs::read_to_string(models.join("efficientnet_lite0.toml")).unwrap().replace(
        "file = \"efficientnet_lite0.onnx\"",
        &format!("file = {:?}", shared_model.canonicalize().unwrap().display().to_string()),
    );
    std::fs::write(dir.path().join("efficientnet_lite0.toml"), manifest).unwrap();
    std::fs::copy(models.join("imagenet_classes.tsv"), dir.path().join("imagenet_classes.tsv")).unwrap();
    let file = std::fs::metadata(&shared_model).unwrap().len();

    let load = |share: bool, instances: usize| {
        let dir = dir.path().to_owned();
        let limits = Limits { model_instances: instances, ..Limits::default() };
        move || registry_with(&dir, None, share, limits)
    };
    let bytes = |registry: &ModelRegistry| registry.memory("efficientnet_lite0").unwrap().bytes;
    let shared_one = tokio::task::spawn_blocking(load(true, 1)).await.unwrap();
    let shared_two = tokio::task::spawn_blocking(load(true, 2)).await.unwrap();
    let copies_one = tokio::task::spawn_blocking(load(false, 1)).await.unwrap();
    let copies_two = tokio::task::spawn_blocking(load(false, 2)).await.unwrap();
    assert_eq!(shared_two.ready("efficientnet_lite0").unwrap().sessions.instances, 2);
    let shared_extra = bytes(&shared_two) as i64 - bytes(&shared_one) as i64;
    let copies_extra = bytes(&copies_two) as i64 - bytes(&copies_one) as i64;
    let file = file as i64;
    assert!(shared_extra < file / 2, "a second shared session took {shared_extra} bytes (file: {file})");
    assert!(copies_extra > file * 4 / 5, "a second session with its own weights took {copies_extra} bytes");
    assert!((bytes(&shared_one) as i64) < file * 5 / 2, "one shared session: {} bytes", bytes(&shared_one));
    // The shared graph is the model's weights, once: about the file (optimised, with the
    // CPU's blocked layouts), and part of what the model holds.
    let weights = shared_two.memory("efficientnet_lite0").unwrap().shared_weights_bytes.expect("shared") as i64;
    assert!((file * 4 / 5..file * 3 / 2).contains(&weights), "shared graph {weights} bytes, file {file}");
    assert!(weights < bytes(&shared_two) as i64);
    assert_eq!(copies_two.memory("efficientnet_lite0").unwrap().shared_weights_bytes, None);

    // Same answers either way.
    let (a, b) = (serve(shared_two).await, serve(copies_two).await);
    let client = reqwest::Client::new();
    let ask = |url: String| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{url}/v1/models/efficientnet_lite0/classify?top_k=5"))
                .header("content-type", "image/jpeg")
                .body(image("china.jpg"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["predictions"][0].clone()
        }
    };
    let (one, other) = (ask(a.url.clone()).await, ask(b.url.clone()).await);
    for (x, y) in one.as_array().unwrap().iter().zip(other.as_array().unwrap()) {
        assert_eq!(x["index"], y["index"]);
        assert!((x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
}

/// A request waits for its model's load at most `load_wait`: past it, 503 `model-loading`
/// with Retry-After, while the load goes on and serves the next request.
#[tokio::test]
async fn a_load_longer_than_the_wait_is_a_503_and_the_load_goes_on() {
    let dir = three_models();
    // No model loads in a millisecond (each is opened, checked and warmed up).
    let policy = MemoryPolicy { budget: None, preload: Some(vec![]), load_wait: Duration::from_millis(1) };
    let (registry, server) = serve_under(dir.path(), policy).await;
    let client = reqwest::Client::new();
    let first = classify(&client, &server.url, "alpha").await;
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["type"], "urn:graft:problem:model-loading");
    // The load started by that request finishes on its own; the model then answers at once.
    let started = std::time::Instant::now();
    while registry.memory("alpha").unwrap().loads == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "alpha never finished loading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(classify(&client, &server.url, "alpha").await.status(), 200);
    assert_eq!(registry.memory("alpha").unwrap().loads, 1, "one load, not one per request");
}
