//! `kill -9` of the whole server (HTTP and its training worker) during a training job and
//! during an upload, then a restart on the same data folder: the job completes with every
//! epoch once, the upload leaves no row, and what it left on disk is collected; every
//! blob a row references is whole (its content hashes to its key).

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::datasets::class_folder_zip;
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A `graft serve` process on `data`, killed with SIGKILL (no clean-up at all) when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    async fn start(data: &Path) -> Self {
        Self::start_with(data, &[]).await
    }

    async fn start_with(data: &Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = quiet_graft(&["serve", "--listen", &format!("127.0.0.1:{port}"), "--workers", "1"])
            .args(["--lease-seconds", "2"])
            .arg("--model-dir")
            .arg(fixture_models())
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .spawn()
            .unwrap();
        let server = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client().get(format!("{}/readyz", server.url)).send().await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "graft did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn open_db(data: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&common::db::sqlite_url(data)).await.unwrap()
}

async fn count(pool: &sqlx::AnyPool, table: &str) -> i64 {
    sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}")).fetch_one(pool).await.unwrap().get("n")
}

/// Every image a dataset row holds exists and hashes to its key; every head a model row
/// names exists.
async fn assert_rows_whole(data: &Path) {
    let pool = open_db(data).await;
    let blobs = data.join("blobs");
    for row in sqlx::query("SELECT DISTINCT sha256 FROM dataset_items").fetch_all(&pool).await.unwrap() {
        let sha: String = row.get("sha256");
        let bytes = std::fs::read(blobs.join(format!("images/{}/{sha}", &sha[..2]))).expect("a held image exists");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "the stored image is whole");
    }
    for row in sqlx::query("SELECT head_blob FROM trained_models").fetch_all(&pool).await.unwrap() {
        let key: String = row.get("head_blob");
        assert!(blobs.join(&key).is_file(), "{key}");
    }
}

fn files_under(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test]
async fn a_server_killed_during_training_finishes_the_job_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path()).await;
    let dataset = upload_dataset(&server.url, class_folder_zip("shapes", 20, 2), "shapes").await;
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "survivor", "epochs": 120,
                      "batch_size": 1, "hidden_units": 256, "early_stopping": null, "seed": 5});
    let id = submit_job(&server.url, body).await["id"].as_str().unwrap().to_owned();
    let job = |url: String, id: String| async move {
        client().get(format!("{url}/v1/jobs/{id}")).send().await.unwrap().json::<Value>().await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while job(server.url.clone(), id.clone()).await["epochs"].as_array().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the job made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    let server = Server::start(data.path()).await;
    let done = wait_for_job(&server.url, &id, Duration::from_secs(240)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let epochs: Vec<i64> = done["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, (1..=120).collect::<Vec<_>>(), "every epoch once");
    let pool = open_db(data.path()).await;
    assert_eq!(count(&pool, "trained_models").await, 1);
    let checkpoints = data.path().join("blobs/checkpoints");
    assert_eq!(files_under(&checkpoints), 0, "no checkpoint left");
    assert_rows_whole(data.path()).await;
    let response = post_image(&server.url, "survivor", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_job_that_kills_its_server_on_every_attempt_fails_instead_of_looping() {
    let data = tempfile::tempdir().unwrap();
    let attempts = ["--max-job-attempts", "2"];
    let mut server = Server::start_with(data.path(), &attempts).await;
    let dataset = upload_dataset(&server.url, class_folder_zip("shapes", 20, 2), "shapes").await;
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "doomed", "epochs": 500,
                      "batch_size": 1, "hidden_units": 256, "early_stopping": null});
    let id = submit_job(&server.url, body).await["id"].as_str().unwrap().to_owned();
    // Each attempt dies (as one killed for memory would) once it is running.
    for attempt in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job: Value =
                client().get(format!("{}/v1/jobs/{id}", server.url)).send().await.unwrap().json().await.unwrap();
            if job["state"] == "running" && job["attempts"] == attempt {
                break;
            }
            assert!(Instant::now() < deadline, "attempt {attempt} never started: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        server = Server::start_with(data.path(), &attempts).await;
    }
    // The restarted server does not run it a third time: once the lease runs out it fails it.
    let done = wait_for_job(&server.url, &id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let failure = done["failure"].as_str().unwrap();
    assert!(failure.contains("2 times") && failure.contains("--max-job-attempts"), "{failure}");
    assert_eq!(files_under(&data.path().join("blobs/checkpoints")), 0, "its checkpoints are removed");
}

#[tokio::test]
async fn a_server_killed_during_an_upload_leaves_no_row_and_its_leftovers_are_collected() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path()).await;
    let archive = class_folder_zip("many", 300, 9);
    let form = |archive: Vec<u8>| {
        reqwest::multipart::Form::new()
            .part("archive", reqwest::multipart::Part::bytes(archive).file_name("many.zip"))
            .text("name", "many")
    };
    let upload =
        tokio::spawn(client().post(format!("{}/v1/datasets", server.url)).multipart(form(archive.clone())).send());
    // Killed once the ingestion has stored some images but before it answers.
    let images = data.path().join("blobs/images");
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_under(&images) == 0 {
        assert!(Instant::now() < deadline && !upload.is_finished(), "the ingestion never started storing images");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    assert!(upload.await.unwrap().is_err(), "the upload got no answer");
    let orphans = files_under(&images);
    assert!(orphans > 0);

    let pool = open_db(data.path()).await;
    assert_eq!(count(&pool, "datasets").await, 0, "no dataset row");
    assert_eq!(count(&pool, "dataset_items").await, 0, "no item rows");
    // The dead upload's registration holds images back until its heartbeat is a minute old.
    assert_eq!(count(&pool, "ingestions").await, 1);
    sqlx::query("UPDATE ingestions SET heartbeat_at = heartbeat_at - 120000").execute(&pool).await.unwrap();

    let collected = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["gc", "--gc-grace-seconds", "0", "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(collected.status.success(), "{}", String::from_utf8_lossy(&collected.stderr));
    let report: Value = serde_json::from_slice(&collected.stdout).unwrap();
    assert_eq!(report["images"], orphans as u64, "{report}");
    assert_eq!(files_under(&images), 0, "the orphaned images are gone");
    assert_eq!(files_under(&data.path().join("blobs/.tmp")), 0, "the staged upload is gone");
    assert_eq!(count(&pool, "ingestions").await, 0, "the dead registration is gone");

    // After a restart the same upload goes through whole.
    let server = Server::start(data.path()).await;
    let response = client().post(format!("{}/v1/datasets", server.url)).multipart(form(archive)).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!(dataset["images"], 1200);
    assert_rows_whole(data.path()).await;
}
