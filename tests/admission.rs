//! Long-lived work is admitted against a count: a second ingestion while one runs, and an
//! event stream over the cap, are 429 problem+json at once; an event stream ends when its
//! job row is final even if no final event was ever written.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use graft::config::Limits;
use graft::store::JobRecord;
use serde_json::json;

#[tokio::test]
async fn a_second_ingestion_while_one_runs_is_429() {
    let limits = Limits { max_concurrent_ingestions: 1, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    // An upload whose body starts and then waits: its ingestion holds the one place.
    let (feed, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    feed.send(Ok(b"--xyz\r\ncontent-disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\n\r\nPK".to_vec()))
        .await
        .unwrap();
    let slow = client()
        .post(format!("{}/v1/datasets", server.url))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(body)))
        .send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let form = reqwest::multipart::Form::new()
        .part("archive", reqwest::multipart::Part::bytes(datasets::class_folder_zip("f", 3, 1)).file_name("a.zip"));
    let response = client().post(format!("{}/v1/datasets", server.url)).multipart(form).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let problem = expect_problem(response, 429).await;
    assert!(problem["detail"].as_str().unwrap().contains("--max-concurrent-ingestions"), "{problem}");

    // The slow upload ends (its client gives up); the place is free again.
    drop(feed);
    let _ = slow.await;
    let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 3, 1), "after").await;
    assert_eq!(dataset["images"], 12);
}

#[tokio::test]
async fn event_streams_are_capped_and_end_with_their_job_row() {
    let limits = Limits { max_event_streams: 1, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 3, 1), "f").await;
    let job = JobRecord::queued("job-1", dataset["id"].as_str().unwrap(), "tiny_nchw", "m1", serde_json::json!({}));
    server.state.db.insert_job(&job).await.unwrap();
    let events = format!("{}/v1/jobs/job-1/events", server.url);

    let open = client().get(&events).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let mut stream = open.bytes_stream();
    let second = client().get(&events).send().await.unwrap();
    let problem = expect_problem(second, 429).await;
    assert!(problem["detail"].as_str().unwrap().contains("--max-event-streams"), "{problem}");

    // Cancelled in the database alone, as a worker's end or the attempts rule would leave
    // it: no "state" event is written, and the stream must end all the same.
    server.state.db.cancel_job("job-1").await.unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while stream.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the stream did not end after the job row became final");
    println!("the stream ended {:?} after the row did", started.elapsed());

    // Its place is free again.
    let again = client().get(&events).send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_job_over_the_memory_budget_is_refused_with_its_figure() {
    let limits = Limits { max_job_memory_bytes: 4 << 20, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 3, 2), "f").await;
    let images = dataset["images"].as_u64().unwrap();
    let train: u64 = dataset["classes"].as_array().unwrap().iter().map(|c| c["train"].as_u64().unwrap()).sum();
    let width = *server.registry.ready("tiny_nchw").unwrap().features.as_ref().unwrap() as u64;
    let jobs = format!("{}/v1/jobs", server.url);

    // A linear head on a few images is far under 4 MiB.
    let small = serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "epochs": 1});
    assert_eq!(client().post(&jobs).json(&small).send().await.unwrap().status(), 202);

    // 65,536 hidden units and 16 variants: the head alone is width × 65,536 parameters.
    let big = serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "too-big",
                                 "hidden_units": 65536, "augment": {"variants": 16}});
    let problem = expect_problem(client().post(&jobs).json(&big).send().await.unwrap(), 422).await;
    assert_eq!(problem["type"], "urn:graft:problem:job-over-memory-budget");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("--max-job-memory-bytes"), "{detail}");
    let classes = dataset["classes"].as_array().unwrap().len() as u64;
    let parameters = width * 65536 + 65536 + 65536 * classes + classes;
    let features = (train * 17 + (images - train)) * width * 8;
    // Nine in-memory copies of 4 bytes and 32 bytes of checkpoint text per parameter.
    let total = parameters * 36 + parameters * 32 + features;
    assert!(detail.contains(&format!("about {:.2} GB", total as f64 / 1e9)), "{detail} vs {total}");
    let listed: serde_json::Value = client().get(&jobs).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "only the small job was queued: {listed}");
}

#[tokio::test]
async fn each_kind_of_job_refusal_has_its_own_problem_type() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 3, 2), "f").await;
    let jobs = format!("{}/v1/jobs", server.url);
    let id = dataset["id"].as_str().unwrap();
    let queued = json!({"dataset": id, "base_model": "tiny_nchw", "epochs": 1, "name": "taken"});
    assert_eq!(client().post(&jobs).json(&queued).send().await.unwrap().status(), 202);

    let cases = [
        (json!({"dataset": id, "base_model": "tiny_nchw", "epochs": 0}), 422, "invalid-job-spec", "epochs"),
        (json!({"dataset": id, "base_model": "tiny_nchw", "epoch": 3}), 422, "invalid-job-spec", "epoch"),
        (json!({"dataset": "nope", "base_model": "tiny_nchw"}), 422, "unknown-dataset", "nope"),
        (json!({"dataset": id, "base_model": "resnet1000"}), 422, "unknown-base-model", "resnet1000"),
        (
            json!({"dataset": id, "base_model": "tiny_nchw", "unfreeze": {"blocks": 999}}),
            422,
            "invalid-unfreeze",
            "unfreeze",
        ),
        (json!({"dataset": id, "base_model": "tiny_nchw", "name": "taken"}), 409, "model-name-taken", "taken"),
    ];
    for (body, status, kind, named) in cases {
        let problem = expect_problem(client().post(&jobs).json(&body).send().await.unwrap(), status).await;
        assert_eq!(problem["type"], format!("urn:graft:problem:{kind}"), "{body}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains(named), "{body}: {problem}");
    }
    let not_json = client().post(&jobs).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(expect_problem(not_json, 422).await["type"], "urn:graft:problem:invalid-job-spec");

    let listed: serde_json::Value = client().get(&jobs).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "no refused job was queued: {listed}");
    let job = &listed["jobs"][0];
    assert_eq!((job["model"].as_str(), job["state"].as_str()), (Some("taken"), Some("queued")), "{job}");
    assert!(job.get("worker").is_none() && job.get("lease_until").is_none() && job.get("epochs").is_none(), "{job}");
}

#[tokio::test]
async fn lists_come_in_bounded_pages() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let mut ids = Vec::new();
    for seed in 0..3 {
        let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 3, seed), "f").await;
        ids.push(dataset["id"].as_str().unwrap().to_owned());
    }
    let list = |query: &str| {
        let url = format!("{}/v1/datasets{query}", server.url);
        async move { client().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let first = list("?limit=2").await;
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["datasets"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&first), ids[..2], "oldest first");
    assert_eq!(first["next_offset"], 2);
    let second = list("?limit=2&offset=2").await;
    assert_eq!(names(&second), ids[2..]);
    assert!(second["next_offset"].is_null(), "{second}");
    assert_eq!(names(&list("").await), ids, "the default page holds all three");
    for bad in ["?limit=0", "?limit=201", "?offset=-1", "?limit=many"] {
        let response = client().get(format!("{}/v1/datasets{bad}", server.url)).send().await.unwrap();
        expect_problem(response, 400).await;
    }

    // Job lists too, newest first, without each job's epoch history.
    for seed in 0..2 {
        let job = JobRecord::queued(&format!("job-{seed}"), &ids[0], "tiny_nchw", &format!("m{seed}"), json!({}));
        server.state.db.insert_job(&JobRecord { created_at: seed, ..job }).await.unwrap();
    }
    let jobs: serde_json::Value =
        client().get(format!("{}/v1/jobs?limit=1", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(jobs["jobs"][0]["id"], "job-1");
    assert!(jobs["jobs"][0].get("epochs").is_none(), "{jobs}");
    assert_eq!(jobs["next_offset"], 1);
}

#[tokio::test]
async fn an_ingestion_stops_when_its_client_goes_away() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let form = reqwest::multipart::Form::new().part(
        "archive",
        reqwest::multipart::Part::bytes(datasets::class_folder_zip("many", 300, 3)).file_name("a.zip"),
    );
    let upload = tokio::spawn(client().post(format!("{}/v1/datasets", server.url)).multipart(form).send());
    let stored = || server.state.blobs.list("images").unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored() == 0 {
        assert!(Instant::now() < deadline && !upload.is_finished(), "the ingestion never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client gives up: its connection closes.
    upload.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_stop = stored();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stored(), after_stop, "nothing more is stored once the client is gone");
    assert!(after_stop < 1200, "it stopped before the end: {after_stop}");
    let list: serde_json::Value =
        client().get(format!("{}/v1/datasets", server.url)).send().await.unwrap().json().await.unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(server.state.db.live_ingestions(None).await.unwrap(), 0, "its registration is gone");
}

#[tokio::test]
async fn a_job_past_its_time_limit_fails_with_the_reason() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let _worker = spawn_worker_with(&server, Duration::from_millis(600), |ctx| ctx.max_job_seconds = 1);
    let dataset = upload_dataset(&server.url, datasets::class_folder_zip("f", 10, 1), "f").await;
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "epochs": 10000, "batch_size": 1,
                      "hidden_units": 256, "early_stopping": null});
    let id = submit_job(&server.url, body).await["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let done = wait_for_job(&server.url, &id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["failure"].as_str().unwrap().contains("--max-job-seconds"), "{done}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped soon after the limit: {:?}", started.elapsed());
    assert!(done["epochs"].as_array().unwrap().len() < 10000);
}
