//! Crash recovery: a `graft worker` process killed mid-job (SIGKILL, no cleanup) is
//! replaced by another that resumes the job from its last checkpoint; no rows or blobs
//! are lost or duplicated.

mod common;

use std::collections::BTreeSet;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::datasets::class_folder_zip;
use common::*;
use graft::config::Limits;
use serde_json::{Value, json};
use sqlx::Row;

/// A worker process, killed (SIGKILL: no cleanup of any kind) when dropped.
struct Worker(Child);

impl Worker {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn worker(database_url: &str, storage_root: &std::path::Path) -> Worker {
    worker_on(database_url, storage_root, &fixture_models())
}

fn worker_on(database_url: &str, storage_root: &std::path::Path, model_dir: &std::path::Path) -> Worker {
    let child = quiet_graft(&["worker", "--lease-seconds", "2", "--database-url", database_url])
        .arg("--storage-root")
        .arg(storage_root)
        .arg("--model-dir")
        .arg(model_dir)
        .spawn()
        .unwrap();
    Worker(child)
}

async fn job(url: &str, id: &str) -> Value {
    client().get(format!("{url}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_killed_worker_is_replaced_and_nothing_is_lost_or_doubled() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let database_url = common::db::sqlite_url(data.path());
    // This server queues jobs; the two worker processes below run them.
    let server = start_server_on(&fixture_models(), Limits::default(), &database_url, data.clone()).await;
    let url = &server.url;
    let storage_root = data.path().join("blobs");

    let dataset = upload_dataset(url, class_folder_zip("shapes", 20, 2), "shapes").await;
    let images = dataset["images"].as_u64().unwrap();
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "survivor", "epochs": 150,
                      "batch_size": 1, "hidden_units": 256, "learning_rate": 0.001, "early_stopping": null,
                      "augment": {"variants": 2}, "seed": 11});
    let id = submit_job(url, body).await["id"].as_str().unwrap().to_owned();

    // The first worker gets a few epochs in, then dies without any cleanup.
    let mut first = worker(&database_url, &storage_root);
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_after = loop {
        let epochs = job(url, &id).await["epochs"].as_array().unwrap().len();
        if epochs >= 3 {
            first.kill();
            break epochs;
        }
        assert!(Instant::now() < deadline, "the first worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let orphaned = job(url, &id).await;
    assert_eq!(orphaned["state"], "running", "the dead worker's job still looks running: {orphaned}");
    assert!(killed_after < 150, "the job must not have finished before the kill");

    // A new worker takes the job over once the lease runs out, and finishes it.
    let mut second = worker(&database_url, &storage_root);
    let done = wait_for_job(url, &id, Duration::from_secs(180)).await;
    second.kill();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);

    let events: String = client().get(format!("{url}/v1/jobs/{id}/events")).send().await.unwrap().text().await.unwrap();
    let resumed_line = events.lines().skip_while(|l| *l != "event: resumed").nth(1).expect("a resumed event");
    let resumed: Value = serde_json::from_str(resumed_line.trim_start_matches("data: ")).unwrap();
    // Checkpoints are written before epochs are reported: the new worker starts at least
    // where the test saw the first one stop.
    assert!(resumed["after_epoch"].as_u64().unwrap() >= killed_after as u64, "{resumed} vs {killed_after}");

    // Epoch rows: every epoch once.
    let epochs: Vec<i64> = done["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, (1..=150).collect::<Vec<_>>());
    // One model row, one head blob, no checkpoint left.
    let db = &server.state.db;
    let models = sqlx::query("SELECT COUNT(*) AS n FROM trained_models WHERE job_id = $1")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(models.try_get::<i64, _>("n").unwrap(), 1);
    let blobs = &server.state.blobs;
    // The second attempt's head: the first attempt died before it wrote one.
    assert_eq!(blobs.list("heads").unwrap(), [format!("heads/{id}-a2.bin")]);
    assert!(blobs.list("checkpoints").unwrap().is_empty());
    // Images stored once each; features once per (image, variant): 3 variants of the train
    // split, one of valid and test.
    assert_eq!(blobs.list("images").unwrap().len() as u64, images);
    let train = dataset["classes"].as_array().unwrap().iter().map(|c| c["train"].as_u64().unwrap()).sum::<u64>();
    let features = blobs.list("features").unwrap();
    assert_eq!(features.iter().collect::<BTreeSet<_>>().len(), features.len());
    assert_eq!(features.len() as u64, train * 3 + (images - train));
    // The model serves.
    let response = post_image(url, "survivor", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);
}

/// `per_class` images of two colour classes, each with a LabelImg box over its upper-left
/// quarter, as a zip.
fn box_zip(per_class: usize) -> Vec<u8> {
    use std::io::{Cursor, Write};
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (class, (label, _)) in datasets::CLASSES.iter().enumerate().take(2) {
        for i in 0..per_class {
            let image = datasets::class_image(class, i as u64);
            let (w, h) = image.dimensions();
            let file = format!("{label}_{i:03}.png");
            zip.start_file(format!("photos/{file}"), options).unwrap();
            zip.write_all(&datasets::encode(&image, image::ImageFormat::Png)).unwrap();
            zip.start_file(format!("photos/{label}_{i:03}.xml"), options).unwrap();
            zip.write_all(&datasets::voc_xml(&file, (w, h), &[(label, [0, 0, w / 2, h / 2])])).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn a_localize_job_resumes_from_its_checkpoint_after_its_worker_dies() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let database_url = common::db::sqlite_url(data.path());
    let models = fixtures().join("spatial");
    let server = start_server_on(&models, Limits::default(), &database_url, data.clone()).await;
    let url = &server.url;
    let storage_root = data.path().join("blobs");

    let dataset = upload_dataset(url, box_zip(30), "boxes").await;
    let epochs = 120;
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_spatial", "name": "located", "task": "localize",
                      "epochs": epochs, "batch_size": 1, "learning_rate": 0.01, "early_stopping": null, "seed": 3});
    let id = submit_job(url, body).await["id"].as_str().unwrap().to_owned();

    let mut first = worker_on(&database_url, &storage_root, &models);
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_after = loop {
        let progress = job(url, &id).await["progress"].clone();
        let epoch = progress["epoch"].as_u64().filter(|_| progress["phase"] == "training").unwrap_or(0);
        if epoch >= 3 {
            first.kill();
            break epoch;
        }
        assert!(Instant::now() < deadline, "the first worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(killed_after < epochs, "the job must not have finished before the kill");

    let mut second = worker_on(&database_url, &storage_root, &models);
    let done = wait_for_job(url, &id, Duration::from_secs(180)).await;
    second.kill();
    assert_eq!((done["state"].as_str(), done["attempts"].as_i64()), (Some("succeeded"), Some(2)), "{done}");

    // The second attempt continued after the first one's checkpoint, and no epoch ran twice.
    let events: String = client().get(format!("{url}/v1/jobs/{id}/events")).send().await.unwrap().text().await.unwrap();
    let data_of = |kind: &str| -> Vec<Value> {
        let lines: Vec<&str> = events.lines().collect();
        lines
            .windows(2)
            .filter(|pair| pair[0] == format!("event: {kind}"))
            .map(|pair| serde_json::from_str(pair[1].trim_start_matches("data: ")).unwrap())
            .collect()
    };
    let resumed = data_of("resumed");
    assert_eq!(resumed.len(), 1, "{events}");
    assert!(resumed[0]["after_epoch"].as_u64().unwrap() >= killed_after, "{resumed:?} vs {killed_after}");
    let reported: Vec<u64> =
        data_of("epoch").iter().filter(|e| e["phase"] == "training").map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert!(reported.windows(2).all(|w| w[0] < w[1]), "every epoch once, in order: {reported:?}");
    assert_eq!(reported.last(), Some(&epochs));
    assert_eq!(done["evaluation"]["epochs_run"], epochs);

    let blobs = &server.state.blobs;
    assert_eq!(blobs.list("heads").unwrap(), [format!("heads/{id}-a2.bin")]);
    assert!(blobs.list("checkpoints").unwrap().is_empty());
    let image = datasets::encode(&datasets::class_image(0, 999), image::ImageFormat::Png);
    let response = client()
        .post(format!("{url}/v1/models/located/localize"))
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
