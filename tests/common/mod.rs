//! Shared test plumbing: fixture paths and a real graft server on an ephemeral port.
#![allow(dead_code)]

pub mod datasets;
pub mod db;
pub mod hostile;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft::config::{DatasetSettings, Limits};
use graft::runtime::{Device, SessionOptions, find_library, init_runtime};
use graft::serving::{ModelRegistry, ModelRuntime};
use graft::store::{BlobStore, Db};
use graft::zoo::load_manifest_dir;
use graft::{AppState, app};

pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generated");
    assert!(dir.join(".done").is_file() || dir.join("models").is_dir(), "fixtures are missing: run `make fixtures`");
    dir
}

pub fn fixture_models() -> PathBuf {
    fixtures().join("models")
}

pub fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The ONNX Runtime environment, from ORT_DYLIB_PATH (set by .cargo/config.toml).
/// ONNX Runtime on the CPU with these session and batching settings.
pub fn model_runtime(options: SessionOptions, batching: graft::runtime::Batching) -> ModelRuntime {
    ModelRuntime { env: runtime(), options, batching, share_weights: true }
}

pub fn runtime() -> ort::environment::Environment {
    let explicit = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let library = find_library(explicit.as_deref()).expect("run `make ort`");
    init_runtime(&library).unwrap()
}

pub fn cpu() -> SessionOptions {
    SessionOptions { device: Device::Cpu, intra_threads: 1, spin: false, arena: false }
}

pub struct TestServer {
    pub url: String,
    pub registry: Arc<ModelRegistry>,
    pub state: AppState,
    /// Holds the SQLite database and blob store of the server.
    pub data_dir: Arc<tempfile::TempDir>,
}

/// Starts graft with every manifest in `model_dir`, loaded and warm, on 127.0.0.1:0,
/// with a fresh SQLite database and blob store and no training workers.
pub async fn start_server(model_dir: &Path, limits: Limits) -> TestServer {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let url = db::sqlite_url(data_dir.path());
    start_server_on(model_dir, limits, &url, data_dir).await
}

/// As [`start_server`], on the database at `database_url`.
pub async fn start_server_on(
    model_dir: &Path,
    limits: Limits,
    database_url: &str,
    data_dir: Arc<tempfile::TempDir>,
) -> TestServer {
    let registry = loaded_registry(model_dir, &limits).await;
    serve_registry(registry, limits, database_url, data_dir).await
}

/// Serves `registry` (loaded as the caller wants) as [`start_server_on`] does.
pub async fn serve_registry(
    registry: Arc<ModelRegistry>,
    limits: Limits,
    database_url: &str,
    data_dir: Arc<tempfile::TempDir>,
) -> TestServer {
    let state = AppState {
        registry: registry.clone(),
        limits,
        db: Db::connect(database_url).await.unwrap(),
        blobs: BlobStore::open(data_dir.path().join("blobs")).unwrap(),
        datasets: DatasetSettings::default(),
        wake_workers: Arc::new(tokio::sync::Notify::new()),
        auth: Default::default(),
        stopping: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
    };
    let url = serve_app(state.clone()).await;
    TestServer { url, registry, state, data_dir }
}

/// Every manifest in `model_dir`, loaded and warmed up.
pub async fn loaded_registry(model_dir: &Path, limits: &Limits) -> Arc<ModelRegistry> {
    let env = runtime();
    let runtime = ModelRuntime { env, options: cpu(), batching: limits.batching(), share_weights: true };
    let registry =
        Arc::new(ModelRegistry::new(load_manifest_dir(model_dir).unwrap(), runtime).with_model_dir(model_dir.into()));
    let loading = registry.clone();
    tokio::task::spawn_blocking(move || loading.load_all()).await.unwrap();
    registry
}

/// Serves `state` on 127.0.0.1:0 in the background; returns the base URL.
pub async fn serve_app(state: AppState) -> String {
    serve_wire(state, graft::api::Wire::Http1).await
}

/// Serves `state` over HTTP/2 (as `--grpc-listen` does) on 127.0.0.1:0 in the background;
/// returns the URL a gRPC channel connects to.
pub async fn serve_grpc(state: AppState) -> String {
    serve_wire(state, graft::api::Wire::Http2).await
}

async fn serve_wire(state: AppState, wire: graft::api::Wire) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = graft::api::ConnectionLimits::of(&state.limits);
    let grace = std::time::Duration::from_secs(30);
    tokio::spawn(graft::api::serve(listener, app(state), connections, wire, std::future::pending(), grace));
    url
}

/// Sends the fixture image `name` as a raw body to `model`'s classify endpoint.
pub async fn post_image(base_url: &str, model: &str, content_type: &str, name: &str) -> reqwest::Response {
    client()
        .post(format!("{base_url}/v1/models/{model}/classify"))
        .header("content-type", content_type)
        .body(image(name))
        .send()
        .await
        .unwrap()
}

/// POSTs `image` as a PNG body to `path` (e.g. `/v1/models/m/localize?top_k=2`).
pub async fn post_png(base_url: &str, path: &str, image: &image::RgbImage) -> reqwest::Response {
    client()
        .post(format!("{base_url}{path}"))
        .header("content-type", "image/png")
        .body(datasets::encode(image, image::ImageFormat::Png))
        .send()
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Asserts a problem+json answer with `status`, and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| d.len() > 10), "a human sentence: {body}");
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("urn:graft:problem:")), "{body}");
    body
}

/// Runs one in-process training worker on the server's database, blobs and models.
pub fn spawn_worker(server: &TestServer, lease: std::time::Duration) -> tokio::sync::watch::Sender<bool> {
    spawn_worker_with(server, lease, |_| {})
}

/// As [`spawn_worker`], with the worker's settings changed by `adjust`.
pub fn spawn_worker_with(
    server: &TestServer,
    lease: std::time::Duration,
    adjust: impl FnOnce(&mut graft::jobs::JobContext),
) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut ctx = graft::jobs::JobContext {
        db: server.state.db.clone(),
        blobs: server.state.blobs.clone(),
        registry: server.registry.clone(),
        worker_id: format!("test-worker-{}", uuid::Uuid::new_v4().simple()),
        lease,
        max_attempts: 3,
        max_job_seconds: 24 * 3600,
        decode_limits: graft::vision::DecodeLimits::default(),
        max_activation_bytes: 1 << 30,
        max_job_memory_bytes: 8 << 30,
    };
    adjust(&mut ctx);
    tokio::spawn(graft::jobs::worker_loop(ctx, server.state.wake_workers.clone(), stopped));
    stop
}

/// Uploads a class-folder archive; returns the created dataset's description.
pub async fn upload_dataset(base_url: &str, archive: Vec<u8>, name: &str) -> serde_json::Value {
    let form = reqwest::multipart::Form::new()
        .part("archive", reqwest::multipart::Part::bytes(archive).file_name("dataset.zip"))
        .text("name", name.to_owned())
        .text("seed", "7");
    let response = client().post(format!("{base_url}/v1/datasets")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// Submits a job; returns its description.
pub async fn submit_job(base_url: &str, body: serde_json::Value) -> serde_json::Value {
    let response = client().post(format!("{base_url}/v1/jobs")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// Polls the job until it has ended (or `timeout` passes); returns its final description.
pub async fn wait_for_job(base_url: &str, id: &str, timeout: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let job: serde_json::Value =
            client().get(format!("{base_url}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} did not finish: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The `graft` binary with `args`, logging warnings only, its output discarded.
pub fn quiet_graft(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_graft"));
    command.args(args).env("RUST_LOG", "warn").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    command
}

/// Classifies `img0.png` with `model` on `base_url` every 20 ms until it answers `status`
/// (fails past `limit`); how long that took.
pub async fn until_classify_status(
    base_url: &str,
    model: &str,
    status: u16,
    limit: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        let answered = post_image(base_url, model, "image/png", "img0.png").await.status();
        if answered == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{base_url}: {model} still answers {answered} after {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
