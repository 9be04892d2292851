//! `/metrics` after real traffic: requests by route, model and status, refusals by problem
//! type, the runner's batches and stages, model state, a job's phases, epochs and feature
//! cache, and the ingestion's counts — each checked as the change across the traffic (the
//! recorder is the process's, shared by every test in this binary).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use graft::config::Limits;
use serde_json::json;

/// Every sample of the scrape, keyed by its series as printed (`name{label="value",…}`).
async fn scrape(url: &str) -> HashMap<String, f64> {
    let response = client().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// How much `series` grew from `before` to `after` (absent counts as 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let before = scrape(url).await;
    assert_eq!(before.get(r#"graft_model_state{model="tiny_nchw",state="ready"}"#), Some(&1.0), "{before:?}");
    assert_eq!(before.get(r#"graft_model_state{model="tiny_nchw",state="loading"}"#), Some(&0.0));

    // Three images answered, one unknown model, one body that is not an image.
    for _ in 0..3 {
        assert_eq!(post_image(url, "tiny_nchw", "image/jpeg", "img0.jpg").await.status(), 200);
    }
    let unknown = client().post(format!("{url}/v1/models/no-such-model/classify")).body(image("img0.jpg"));
    assert_eq!(unknown.send().await.unwrap().status(), 404);
    let garbage = client().post(format!("{url}/v1/models/tiny_nchw/classify")).body(b"not an image".to_vec());
    let garbage = garbage.header("content-type", "image/jpeg").send().await.unwrap();
    let garbage_status = garbage.status().as_u16();
    let garbage_type = expect_problem(garbage, garbage_status).await["type"].as_str().unwrap().to_owned();
    let after = scrape(url).await;

    let classify = r#"route="/v1/models/{model}/classify""#;
    let requests = |model: &str, status: u16| {
        format!(r#"graft_http_requests_total{{{classify},model="{model}",status="{status}"}}"#)
    };
    assert_eq!(delta(&before, &after, &requests("tiny_nchw", 200)), 3.0, "{after:?}");
    // Unknown and refused requests carry no model name: a client cannot add series.
    assert_eq!(delta(&before, &after, &requests("-", 404)), 1.0);
    assert_eq!(delta(&before, &after, &requests("-", garbage_status)), 1.0);
    assert!(after.keys().all(|series| !series.contains("no-such-model")));
    assert_eq!(delta(&before, &after, r#"graft_refusals_total{reason="unknown-model"}"#), 1.0);
    let reason = garbage_type.strip_prefix("urn:graft:problem:").unwrap();
    assert_eq!(delta(&before, &after, &format!(r#"graft_refusals_total{{reason="{reason}"}}"#)), 1.0);
    let duration = format!(r#"graft_http_request_duration_seconds_count{{{classify},model="tiny_nchw"}}"#);
    assert_eq!(delta(&before, &after, &duration), 3.0);
    // The runner: three single-image batches (nothing else ran), each decoded and preprocessed.
    assert_eq!(delta(&before, &after, r#"graft_batch_size_sum{model="tiny_nchw"}"#), 3.0);
    assert_eq!(delta(&before, &after, r#"graft_batch_size_count{model="tiny_nchw"}"#), 3.0);
    for stage in ["decode", "preprocess", "queue", "inference"] {
        let series = format!(r#"graft_inference_stage_seconds_count{{model="tiny_nchw",stage="{stage}"}}"#);
        assert_eq!(delta(&before, &after, &series), 3.0, "{stage}");
    }
    assert_eq!(after.get(r#"graft_queue_depth{model="tiny_nchw"}"#), Some(&0.0));

    // A dataset and a two-epoch job on it.
    let _worker = spawn_worker(&server, Duration::from_secs(30));
    let dataset = upload_dataset(url, common::datasets::class_folder_zip("f", 3, 1), "f").await;
    let images = dataset["images"].as_f64().unwrap();
    let rejected = dataset["report"]["rejected_total"].as_f64().unwrap();
    let body = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "epochs": 2, "early_stopping": null});
    let job = submit_job(url, body).await;
    let done = wait_for_job(url, job["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let end = scrape(url).await;
    // Jobs by state are counted in the database at each scrape: this server's one job.
    assert_eq!(end.get(r#"graft_jobs{state="succeeded"}"#), Some(&1.0), "{end:?}");
    assert_eq!(end.get(r#"graft_jobs{state="queued"}"#), Some(&0.0));
    assert_eq!(end.get(r#"graft_jobs{state="running"}"#), Some(&0.0));
    assert_eq!(delta(&after, &end, r#"graft_datasets_total{result="ingested"}"#), 1.0);
    assert_eq!(delta(&after, &end, "graft_ingested_images_total"), images);
    assert_eq!(delta(&after, &end, "graft_ingest_rejected_files_total"), rejected);
    assert!(rejected >= 1.0, "the archive's text file is rejected: {}", dataset["report"]);
    assert_eq!(delta(&after, &end, "graft_jobs_submitted_total"), 1.0);
    assert_eq!(delta(&after, &end, r#"graft_jobs_finished_total{state="succeeded"}"#), 1.0);
    assert_eq!(delta(&after, &end, r#"graft_job_epochs_total{phase="training"}"#), 2.0);
    assert_eq!(delta(&after, &end, r#"graft_feature_cache_total{result="miss"}"#), images);
    assert_eq!(delta(&after, &end, r#"graft_feature_cache_total{result="hit"}"#), 0.0);
    for phase in ["features", "training"] {
        let series = format!(r#"graft_job_phase_seconds_count{{phase="{phase}"}}"#);
        assert_eq!(delta(&after, &end, &series), 1.0, "{phase}: {end:?}");
    }
}
