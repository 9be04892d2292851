//! Several replicas on one database and blob store: a model trained through one API replica
//! is served by the other, and a model deleted through one stops being served by the other
//! (PostgreSQL's notifications; polling on SQLite); replicas that start together on an empty
//! PostgreSQL database apply each migration once.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use graft::config::Limits;

/// Two API servers on `database_url` and one blob store, each following the trained models;
/// a worker beside the first.
async fn two_replicas(database_url: &str) -> (TestServer, TestServer, tokio::sync::watch::Sender<bool>) {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let first = start_server_on(&fixture_models(), Limits::default(), database_url, data_dir.clone()).await;
    let second = start_server_on(&fixture_models(), Limits::default(), database_url, data_dir).await;
    for server in [&first, &second] {
        let state = &server.state;
        tokio::spawn(graft::serving::follow_trained_models(
            state.db.clone(),
            state.blobs.clone(),
            server.registry.clone(),
        ));
    }
    let worker = spawn_worker(&first, Duration::from_secs(30));
    (first, second, worker)
}

async fn trained_models_follow_across_replicas(database_url: &str, deletion_bound: Duration) {
    let (first, second, _worker) = two_replicas(database_url).await;
    let dataset = upload_dataset(&first.url, common::datasets::class_folder_zip("shapes", 8, 2), "shapes").await;
    let body = serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "shared", "epochs": 3});
    let job = submit_job(&second.url, body).await;
    let done = wait_for_job(&second.url, job["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Trained by the first replica's worker, submitted through the second: both serve it.
    for server in [&first, &second] {
        let waited = until_classify_status(&server.url, "shared", 200, Duration::from_secs(1)).await;
        println!("served by {} {:?} after the job was seen to succeed", server.url, waited);
    }
    // Deleted through the second, the first stops serving it.
    let deleted = client().delete(format!("{}/v1/models/shared", second.url)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = until_classify_status(&first.url, "shared", 404, deletion_bound).await;
    println!("the other replica answered 404 {gone:?} after the deletion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_deleted_model_leaves_every_replica_at_once() {
    let url = common::db::fresh_postgres_url().await;
    // Announced: well inside the 1 s poll of the table.
    trained_models_follow_across_replicas(&url, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_deleted_model_leaves_every_replica_within_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::db::sqlite_url(dir.path());
    let bound = graft::serving::POLL_WITHOUT_NOTIFICATIONS + Duration::from_millis(500);
    trained_models_follow_across_replicas(&url, bound).await;
}

/// Five `graft serve --role api` processes started at once on an empty database: all come
/// up, and each migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let url = common::db::fresh_postgres_url().await;
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> =
        (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let mut children: Vec<std::process::Child> = ports
        .iter()
        .map(|port| {
            Command::new(env!("CARGO_BIN_EXE_graft"))
                .args(["serve", "--role", "api", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &url])
                .arg("--model-dir")
                .arg(fixture_models())
                .arg("--models")
                .arg("tiny_nchw")
                .arg("--data-dir")
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in &ports {
        loop {
            if let Ok(response) = client().get(format!("http://127.0.0.1:{port}/healthz")).send().await
                && response.status() == 200
            {
                break;
            }
            for child in &mut children {
                assert!(child.try_wait().unwrap().is_none(), "a replica exited while starting");
            }
            assert!(Instant::now() < deadline, "replica on {port} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count();
    let db = graft::store::Db::connect(&url).await.unwrap();
    let (recorded, versions): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((recorded as usize, versions as usize), (migrations, migrations));
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A `--role worker` process answers the probes and the metrics, and nothing of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_replica_serves_only_probes() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["serve", "--role", "worker", "--listen", &format!("127.0.0.1:{port}"), "--models", "tiny_nchw"])
        .arg("--model-dir")
        .arg(fixture_models())
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client().get(format!("{base}/readyz")).send().await.map(|r| r.status()).ok() != Some(200.try_into().unwrap())
    {
        assert!(child.try_wait().unwrap().is_none(), "the worker exited");
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("graft_jobs"));
    for path in ["/v1/models", "/v1/jobs", "/v2/models/tiny_nchw", "/openapi.json"] {
        let response = client().get(format!("{base}{path}")).send().await.unwrap();
        let problem = expect_problem(response, 404).await;
        assert!(problem["type"].as_str().unwrap().ends_with("not-found"), "{path}: {problem}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
