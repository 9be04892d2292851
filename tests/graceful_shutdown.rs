//! SIGTERM during a training job: the server ends its event streams with a `shutdown` event,
//! its worker checkpoints the job and hands the lease back, and a worker in another process
//! resumes the job at once (well inside the 30 s lease), with every epoch run once. And
//! SIGTERM during an upload: the upload is finished and answered, new connections refused.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::datasets::class_folder_zip;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::Row;

/// Kills the process (SIGKILL) if the test ends first.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn graft(args: &[&str], data: &std::path::Path) -> Process {
    let child = quiet_graft(args)
        .args(["--lease-seconds", "30", "--shutdown-grace", "20"])
        .arg("--model-dir")
        .arg(fixture_models())
        .arg("--data-dir")
        .arg(data)
        .spawn()
        .unwrap();
    Process(child)
}

/// `graft serve` with `extra` arguments on `data`, once `/readyz` answers 200; its URL.
async fn ready_server(data: &std::path::Path, extra: &[&str]) -> (Process, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let server = graft(&[&["serve", "--listen", listen.as_str()], extra].concat(), data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client().get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "graft did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, url)
}

async fn job_row(pool: &sqlx::AnyPool, id: &str) -> (String, Option<String>, i64) {
    let row =
        sqlx::query("SELECT state, worker, attempts FROM jobs WHERE id = $1").bind(id).fetch_one(pool).await.unwrap();
    (row.get("state"), row.get("worker"), row.get("attempts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_job_to_another_worker_at_once() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = ready_server(data.path(), &["--workers", "1"]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let dataset = upload_dataset(&url, class_folder_zip("shapes", 20, 2), "shapes").await;
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "relay", "epochs": 120,
                      "batch_size": 1, "hidden_units": 256, "early_stopping": null, "seed": 5});
    let id = submit_job(&url, body).await["id"].as_str().unwrap().to_owned();
    let epochs = |url: String, id: String| async move {
        let job: Value = client().get(format!("{url}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        job["epochs"].as_array().map_or(0, Vec::len)
    };
    while epochs(url.clone(), id.clone()).await < 3 {
        assert!(Instant::now() < deadline, "the job made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = client().get(format!("{url}/v1/jobs/{id}/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    sqlx::any::install_default_drivers();
    let database = common::db::sqlite_url(data.path());
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&database).await.unwrap();
    let (_, first_worker, _) = job_row(&pool, &id).await;
    // The other process's worker waits for work.
    let _other = graft(&["worker"], data.path());

    let stopped_at = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    // The event stream's last event says the server stopped.
    let mut body = String::new();
    let mut stream = events.bytes_stream();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let last_event = body.lines().rev().find(|l| l.starts_with("event:")).unwrap_or_default().to_owned();
    assert_eq!(last_event, "event: shutdown", "{body}");
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(25), "the server did not stop within its grace");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exit_seconds = stopped_at.elapsed().as_secs_f64();
    assert!(status.success(), "{status}");

    // Taken over by the other worker long before the 30 s lease could have run out.
    let taken = loop {
        let (state, worker, _) = job_row(&pool, &id).await;
        if state == "running" && worker.is_some() && worker != first_worker {
            break stopped_at.elapsed().as_secs_f64();
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(15), "no other worker took the job: {state} {worker:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("SIGTERM → server exited in {exit_seconds:.2} s; job resumed by the other worker after {taken:.2} s");
    assert!(taken < 10.0, "{taken} s");

    let finished = Instant::now() + Duration::from_secs(240);
    loop {
        let (state, _, attempts) = job_row(&pool, &id).await;
        if state == "succeeded" {
            // The hand-over is not counted as a failed attempt.
            assert_eq!(attempts, 1);
            break;
        }
        assert!(matches!(state.as_str(), "running" | "queued"), "{state}");
        assert!(Instant::now() < finished, "the job did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = sqlx::query("SELECT epoch FROM job_epochs WHERE job_id = $1 ORDER BY epoch").bind(&id).fetch_all(&pool);
    let epochs: Vec<i64> = rows.await.unwrap().iter().map(|r| r.get("epoch")).collect();
    assert_eq!(epochs, (1..=120).collect::<Vec<_>>(), "every epoch once");
}

/// A request in flight when SIGTERM arrives (an upload whose body is still coming) is
/// finished and answered; new connections are refused; then the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_requests_in_flight() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = ready_server(data.path(), &["--workers", "0"]).await;
    let zip = class_folder_zip("late", 3, 7);
    let mut body = b"--xyz\r\ncontent-disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\n\r\n".to_vec();
    body.extend_from_slice(&zip);
    body.extend_from_slice(b"\r\n--xyz--\r\n");
    let (first, rest) = body.split_at(body.len() / 2);
    let (feed, stream) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    feed.send(Ok(first.to_vec())).await.unwrap();
    let upload = tokio::spawn(
        client()
            .post(format!("{url}/v1/datasets"))
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body(reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(stream)))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client().get(format!("{url}/healthz")).send().await.is_err(), "a new connection after the signal");
    feed.send(Ok(rest.to_vec())).await.unwrap();
    drop(feed);
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!(dataset["images"], 12, "{dataset}");
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(status.await.expect("the server did not stop").success());
}
