//! The heart of graft end to end over HTTP, on SQLite and on PostgreSQL: upload a
//! class-folder zip, train a head on the fixture base, follow it, evaluate it, classify
//! with it, train again from the feature cache, delete it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::datasets::{CLASSES, class_folder_zip, class_image, encode};
use common::*;
use graft::config::Limits;
use serde_json::{Value, json};

const PER_CLASS: usize = 60;

async fn train_and_serve(server: &TestServer) {
    let _worker = spawn_worker(server, Duration::from_secs(30));
    let url = &server.url;

    // The dataset: four classes, a text file rejected, a duplicate stored once.
    let dataset = upload_dataset(url, class_folder_zip("shapes", PER_CLASS, 1), "shapes").await;
    assert_eq!(dataset["images"], 4 * PER_CLASS);
    let names: Vec<&str> = dataset["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["blue", "green", "red", "yellow"]);
    assert_eq!(dataset["report"]["top_folder"], "shapes");
    let rejected = dataset["report"]["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["path"], "shapes/LICENSE.txt");
    assert_eq!(dataset["report"]["duplicates"][0]["same_as"], "shapes/red/img_000.png");
    for class in dataset["classes"].as_array().unwrap() {
        let splits = ["train", "valid", "test"].map(|s| class[s].as_i64().unwrap());
        assert_eq!(splits.iter().sum::<i64>(), PER_CLASS as i64);
        assert!(splits[0] > splits[1] && splits[0] > splits[2], "{class}");
    }
    let dataset_id = dataset["id"].as_str().unwrap();
    let fetched: Value =
        client().get(format!("{url}/v1/datasets/{dataset_id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched["images"], dataset["images"]);

    // Train a head on the frozen fixture base.
    let body = json!({"dataset": dataset_id, "base_model": "tiny_nchw", "name": "colours", "epochs": 80,
                      "learning_rate": 0.05, "early_stopping": {"patience": 20}, "seed": 3});
    let job = submit_job(url, body).await;
    assert_eq!(job["state"], "queued");
    let id = job["id"].as_str().unwrap();
    let done = wait_for_job(url, id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"]["phase"], "succeeded");
    let epochs = done["epochs"].as_array().unwrap();
    assert!(!epochs.is_empty() && epochs.len() <= 80);
    assert!(epochs.iter().all(|e| e["train_loss"].as_f64().unwrap().is_finite()));
    let test = &done["evaluation"]["test"];
    let accuracy = test["accuracy"].as_f64().unwrap();
    println!("test accuracy {accuracy} on {} images after {} epochs", test["count"], epochs.len());
    assert!(test["count"].as_u64().unwrap() >= 12, "a test split of a reasonable size: {test}");
    assert!(accuracy >= 0.95, "{test}");
    assert_eq!(test["confusion"].as_array().unwrap().len(), 4);
    assert_eq!(test["per_class"].as_array().unwrap().len(), 4);
    assert_eq!(done["evaluation"]["features"]["computed"], done["evaluation"]["features"]["images"]);

    // The event stream replays the whole run and ends with the final state.
    let events = client().get(format!("{url}/v1/jobs/{id}/events")).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(10), events.text()).await.expect("the stream ends").unwrap();
    for needle in
        ["event: state\ndata: {\"state\":\"queued\"}", "event: progress", "event: epoch", "\"state\":\"succeeded\""]
    {
        assert!(text.contains(needle), "{needle} missing from the event stream");
    }

    // The model serves at once, with the dataset's class names.
    let model: Value = client().get(format!("{url}/v1/models/colours")).send().await.unwrap().json().await.unwrap();
    assert_eq!(model["kind"], "trained");
    assert_eq!(model["base_model"], "tiny_nchw");
    assert_eq!(model["evaluation"]["test"]["accuracy"], test["accuracy"]);
    let mut right = 0;
    for (class, (name, _)) in CLASSES.iter().enumerate() {
        for seed in 5000..5005 {
            let png = encode(&class_image(class, seed), image::ImageFormat::Png);
            let response = client()
                .post(format!("{url}/v1/models/colours/classify?top_k=2"))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            let top = &body["predictions"][0];
            assert_eq!(top.as_array().unwrap().len(), 2);
            right += usize::from(top[0]["label"] == *name);
        }
    }
    assert!(right >= 19, "{right} of 20 new images classified right");

    // A second job on the same images computes no features again.
    let again = submit_job(url, json!({"dataset": dataset_id, "base_model": "tiny_nchw", "epochs": 5})).await;
    let again = wait_for_job(url, again["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["evaluation"]["features"]["computed"], 0);
    assert_eq!(again["evaluation"]["features"]["cached"], again["evaluation"]["features"]["images"]);
    assert!(again["model"].as_str().unwrap().starts_with("shapes-tiny_nchw-"), "{again}");

    // Names are unique; the dataset cannot go while jobs are queued on it; models can.
    let conflict = client()
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"dataset": dataset_id, "base_model": "tiny_nchw", "name": "colours"}))
        .send()
        .await
        .unwrap();
    expect_problem(conflict, 409).await;
    let deleted = client().delete(format!("{url}/v1/models/colours")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = post_image(url, "colours", "image/png", "img0.png").await;
    expect_problem(gone, 404).await;
    let deleted = client().delete(format!("{url}/v1/datasets/{dataset_id}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    expect_problem(client().get(format!("{url}/v1/datasets/{dataset_id}")).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn train_on_sqlite() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    train_and_serve(&server).await;
}

#[tokio::test]
async fn train_on_postgres() {
    let url = common::db::fresh_postgres_url().await;
    let server =
        start_server_on(&fixture_models(), Limits::default(), &url, Arc::new(tempfile::tempdir().unwrap())).await;
    train_and_serve(&server).await;
}

#[tokio::test]
async fn cancelling_queued_and_running_jobs() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let dataset = upload_dataset(url, class_folder_zip("shapes", 12, 4), "shapes").await;
    let long = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "never", "epochs": 10000,
                      "batch_size": 1, "early_stopping": null});

    // Queued (no worker yet): cancelled at once.
    let queued = submit_job(url, long.clone()).await;
    let id = queued["id"].as_str().unwrap();
    let response = client().post(format!("{url}/v1/jobs/{id}/cancel")).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    expect_problem(client().post(format!("{url}/v1/jobs/{id}/cancel")).send().await.unwrap(), 409).await;

    // Running: the worker stops at the next epoch and registers nothing.
    let _worker = spawn_worker(&server, Duration::from_secs(2));
    let running = submit_job(url, long).await;
    let id = running["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = client().get(format!("{url}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if !job["epochs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job did not start training");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client().post(format!("{url}/v1/jobs/{id}/cancel")).send().await.unwrap().status(), 202);
    let ended = wait_for_job(url, id, Duration::from_secs(30)).await;
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(ended["epochs"].as_array().unwrap().len() < 10000);
    expect_problem(client().get(format!("{url}/v1/models/never")).send().await.unwrap(), 404).await;
    expect_problem(client().get(format!("{url}/v1/jobs/nope")).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn a_convex_job_chooses_its_penalty_on_the_validation_split() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let _worker = spawn_worker(&server, Duration::from_secs(30));
    let url = &server.url;
    let dataset = upload_dataset(url, class_folder_zip("shapes", PER_CLASS, 2), "shapes").await;
    let id = dataset["id"].as_str().unwrap();

    let refused = client()
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"dataset": id, "base_model": "tiny_nchw", "solver": "convex", "hidden_units": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(refused, 422).await["type"], "urn:graft:problem:invalid-job-spec");

    let job =
        submit_job(url, json!({"dataset": id, "base_model": "tiny_nchw", "name": "convex", "solver": "convex"})).await;
    let done = wait_for_job(url, job["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let evaluation = &done["evaluation"];
    let solver = &evaluation["solver"];
    let selected_by = solver["selected_by"].as_str();
    assert_eq!((solver["solver"].as_str(), selected_by), (Some("convex"), Some("valid_accuracy, then valid_loss")));
    // Both scalings were walked; the kept step has the highest validation accuracy and, among
    // those, the lowest validation loss; the reported penalty and scaling are that step's.
    let path = solver["path"].as_array().unwrap();
    let scalings: std::collections::BTreeSet<&str> = path.iter().map(|s| s["scaling"].as_str().unwrap()).collect();
    assert_eq!(scalings.into_iter().collect::<Vec<_>>(), ["per_feature", "shared"]);
    assert!(path.len() <= 2 * graft::train::L2_PATH.len());
    let score = |s: &serde_json::Value| (s["valid_accuracy"].as_f64().unwrap(), s["valid_loss"].as_f64().unwrap());
    let top = path.iter().map(|s| score(s).0).fold(0.0, f64::max);
    let lowest = path.iter().map(score).filter(|s| s.0 == top).map(|s| s.1).fold(f64::INFINITY, f64::min);
    let chosen = &path[evaluation["best_epoch"].as_u64().unwrap() as usize - 1];
    assert_eq!(score(chosen), (top, lowest), "{path:?}");
    assert_eq!((&solver["l2"], &solver["scaling"]), (&chosen["l2"], &chosen["scaling"]));
    let accuracy = evaluation["test"]["accuracy"].as_f64().unwrap();
    println!("convex: l2 {} test accuracy {accuracy}", solver["l2"]);
    assert!(accuracy >= 0.95, "{evaluation}");
    // Progress walked the path: its last report is the last step.
    assert_eq!(done["progress"]["phase"], "succeeded");
    let response = post_image(url, "convex", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);
}
