//! The repositories on both databases: datasets, the job queue's claim/lease/heartbeat
//! rules, events, and the all-or-nothing completion that registers a model.

mod common;

use std::collections::HashSet;

use common::db::{both_databases, fresh_postgres_url};
use graft::store::{Db, ItemRecord, JobOutcome, JobRecord, JobState, NewDataset, TrainedModelRecord, now_ms};
use serde_json::json;

fn item(sha: &str, class_idx: i64, split: &str) -> ItemRecord {
    ItemRecord {
        sha256: sha.into(),
        class_idx,
        split: split.into(),
        path: format!("c{class_idx}/{sha}.jpg"),
        width: 10,
        height: 8,
        bbox: None,
    }
}

fn job(id: &str, created_at: i64) -> JobRecord {
    JobRecord { created_at, ..JobRecord::queued(id, "d1", "tiny", &format!("model-{id}"), json!({"epochs": 3})) }
}

fn model(name: &str, job_id: &str) -> TrainedModelRecord {
    TrainedModelRecord {
        name: name.into(),
        job_id: job_id.into(),
        base_model: "tiny".into(),
        dataset_id: "d1".into(),
        classes: vec!["a".into(), "b".into()],
        head_blob: format!("heads/{job_id}.bin"),
        evaluation: json!({"accuracy": 1.0}),
        created_at: now_ms(),
        task: "classify".into(),
        tuned_base_blob: Some(format!("tuned/{job_id}.onnx")),
        geometry: Some("pad".into()),
    }
}

#[tokio::test]
async fn datasets_round_trip_and_delete_reports_orphans() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        let mut first = NewDataset {
            id: "d1".into(),
            name: "flowers".into(),
            task: "classify".into(),
            seed: 7,
            splits: [0.75, 0.15, 0.10],
            report: json!({"rejected": []}),
            classes: vec!["daisy".into(), "rose".into()],
            items: (0..1200)
                .map(|i| item(&format!("{i:064x}"), i % 2, if i % 10 == 0 { "test" } else { "train" }))
                .collect(),
        };
        db.insert_dataset(&first).await.unwrap();
        first.id = "d2".into();
        first.items.truncate(10); // shares ten images with d1
        db.insert_dataset(&first).await.unwrap();

        let stored = db.dataset("d1").await.unwrap().unwrap();
        assert_eq!(stored.classes, ["daisy", "rose"], "{backend}");
        assert_eq!(stored.splits, [0.75, 0.15, 0.10], "{backend}");
        assert_eq!(db.dataset_items("d1").await.unwrap().len(), 1200, "{backend}");
        let counts = db.dataset_counts("d1").await.unwrap();
        let total: i64 = counts.iter().map(|c| c.count).sum();
        assert_eq!(total, 1200, "{backend}");
        assert_eq!(counts.iter().filter(|c| c.split == "test").map(|c| c.count).sum::<i64>(), 120, "{backend}");

        let orphans = db.delete_dataset("d1").await.unwrap().unwrap();
        assert_eq!(orphans.len(), 1190, "{backend}: the ten shared images stay");
        assert!(db.dataset("d1").await.unwrap().is_none());
        assert!(db.dataset_items("d1").await.unwrap().is_empty());
        assert!(db.delete_dataset("d1").await.unwrap().is_none());
        assert!(db.image_in_use(&format!("{:064x}", 3)).await.unwrap());
    }
}

#[tokio::test]
async fn box_datasets_keep_their_task_and_boxes() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        let mut boxed = item(&format!("{:064x}", 1), 0, "train");
        boxed.bbox = Some([1.5, 2.0, 30.25, 40.0]);
        let dataset = NewDataset {
            id: "boxes".into(),
            name: "pets".into(),
            task: "localize".into(),
            seed: 1,
            splits: [0.75, 0.15, 0.10],
            report: json!({"annotations": "voc"}),
            classes: vec!["cat".into(), "dog".into()],
            items: vec![boxed.clone(), item(&format!("{:064x}", 2), 1, "valid")],
        };
        db.insert_dataset(&dataset).await.unwrap();
        let stored = db.dataset("boxes").await.unwrap().unwrap();
        assert_eq!(stored.task, "localize", "{backend}");
        let items = db.dataset_items("boxes").await.unwrap();
        assert_eq!(items[0], boxed, "{backend}");
        assert_eq!(items[1].bbox, None, "{backend}");
        assert_eq!(db.datasets().await.unwrap()[0].task, "localize", "{backend}");
    }
}

#[tokio::test]
async fn dataset_reports_over_the_bound_are_neither_stored_nor_served() {
    let dir = tempfile::tempdir().unwrap();
    let bound = graft::data::MAX_REPORT_BYTES;
    for (backend, db) in both_databases(dir.path()).await {
        let dataset = |id: &str, report| NewDataset {
            id: id.into(),
            name: "big".into(),
            task: "classify".into(),
            seed: 0,
            splits: [0.75, 0.15, 0.10],
            report,
            classes: vec!["a".into(), "b".into()],
            items: vec![item(&format!("{:064x}", 1), 0, "train")],
        };
        // {"warnings":["xxx…"]} is 17 bytes besides the text.
        let over = json!({"warnings": ["x".repeat(bound - 16)]});
        assert_eq!(over.to_string().len(), bound + 1);
        let err = db.insert_dataset(&dataset("over", over)).await.unwrap_err().to_string();
        assert!(err.contains(&format!("{} bytes, over the limit of {bound}", bound + 1)), "{backend}: {err}");
        assert!(db.dataset("over").await.unwrap().is_none(), "{backend}: nothing stored");
        let at_bound = json!({"warnings": ["x".repeat(bound - 17)]});
        db.insert_dataset(&dataset("at", at_bound.clone())).await.unwrap();
        assert_eq!(db.dataset("at").await.unwrap().unwrap().report, at_bound, "{backend}");

        // A report an older version stored whole is not read back: a note stands in for it.
        db.insert_dataset(&dataset("old", json!({}))).await.unwrap();
        let huge = json!({"rejected": ["y".repeat(3 * bound)]}).to_string();
        sqlx::query("UPDATE datasets SET report = $1 WHERE id = $2")
            .bind(&huge)
            .bind("old")
            .execute(&db.pool)
            .await
            .unwrap();
        let note = json!({"omitted": format!(
            "the stored report has {} bytes, over the limit of {bound}; it is not shown",
            huge.len()
        )});
        assert_eq!(db.dataset("old").await.unwrap().unwrap().report, note, "{backend}");
        let listed = db.datasets().await.unwrap();
        assert_eq!(listed.iter().find(|d| d.id == "old").unwrap().report, note, "{backend}");
        assert_eq!(listed.iter().find(|d| d.id == "at").unwrap().report, at_bound, "{backend}");
    }
}

#[tokio::test]
async fn leases_heartbeats_and_takeover() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        db.insert_job(&job("j1", 1)).await.unwrap();
        let claimed = db.claim_job("w1", 60_000, 3).await.unwrap().unwrap();
        assert_eq!((claimed.id.as_str(), claimed.state, claimed.attempts), ("j1", JobState::Running, 1), "{backend}");
        assert!(db.claim_job("w2", 60_000, 3).await.unwrap().is_none(), "{backend}: a held job is not claimed twice");
        assert!(db.heartbeat("j1", "w1", 60_000).await.unwrap().held);

        // w1 stops heart-beating: a lease in the past lets w2 take the job over.
        assert!(db.heartbeat("j1", "w1", -1).await.unwrap().held);
        let taken = db.claim_job("w2", 60_000, 3).await.unwrap().unwrap();
        assert_eq!((taken.worker.as_deref(), taken.attempts), (Some("w2"), 2), "{backend}");
        assert!(!db.heartbeat("j1", "w1", 60_000).await.unwrap().held, "{backend}: w1 learns it lost the job");
        assert!(!db.end_job("j1", "w1", JobState::Failed, Some("late")).await.unwrap(), "{backend}");
        assert!(!db.set_progress("j1", "w1", &json!({"phase": "x"})).await.unwrap());

        // Completion registers the model once, atomically.
        assert_eq!(db.job_misclassified("j1").await.unwrap(), None, "{backend}: nothing before success");
        let wrong = json!([{"sha256": "ab", "path": "x/1.png", "true_class": 0, "predicted_class": 1, "score": 0.75}]);
        let outcome = JobOutcome { evaluation: &json!({"accuracy": 1.0}), misclassified: &wrong };
        assert!(db.complete_job("j1", "w2", outcome, &model("m", "j1")).await.unwrap(), "{backend}");
        let done = db.job("j1").await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.evaluation, Some(json!({"accuracy": 1.0})), "{backend}");
        assert_eq!(db.job_misclassified("j1").await.unwrap(), Some(wrong), "{backend}");
        let stored = db.trained_model("m").await.unwrap().unwrap();
        assert_eq!(stored.classes, ["a", "b"]);
        assert_eq!(stored.tuned_base_blob.as_deref(), Some("tuned/j1.onnx"), "{backend}");
        assert_eq!(stored.geometry.as_deref(), Some("pad"), "{backend}");
        assert!(
            !db.complete_job(
                "j1",
                "w2",
                JobOutcome { evaluation: &json!({}), misclassified: &json!([]) },
                &model("m2", "j1")
            )
            .await
            .unwrap(),
            "{backend}: only once"
        );
        assert!(db.trained_model("m2").await.unwrap().is_none());

        // A duplicate model name fails the transaction and leaves the job running.
        db.insert_job(&job("j2", 2)).await.unwrap();
        db.claim_job("w3", 60_000, 3).await.unwrap().unwrap();
        assert!(
            db.complete_job(
                "j2",
                "w3",
                JobOutcome { evaluation: &json!({}), misclassified: &json!([]) },
                &model("m", "j2")
            )
            .await
            .is_err(),
            "{backend}"
        );
        assert_eq!(db.job("j2").await.unwrap().unwrap().state, JobState::Running, "{backend}");

        // Handing a job back on a stop: queued again, no worker, the claim not counted; only
        // the holder can.
        assert!(!db.release_job("j2", "w1").await.unwrap(), "{backend}");
        assert!(db.release_job("j2", "w3").await.unwrap(), "{backend}");
        let back = db.job("j2").await.unwrap().unwrap();
        assert_eq!((back.state, back.worker, back.attempts), (JobState::Queued, None, 0), "{backend}");
        let counts = db.job_counts().await.unwrap();
        let count = |state: &str| counts.iter().find(|(s, _)| s == state).map(|(_, n)| *n);
        assert_eq!((count("succeeded"), count("queued"), count("running")), (Some(1), Some(1), None), "{backend}");
    }
}

#[tokio::test]
async fn a_job_whose_worker_dies_on_every_attempt_fails_instead_of_looping() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        db.insert_job(&job("j1", 1)).await.unwrap();
        // Three workers claim it in turn and each dies: its lease runs out (a negative lease).
        for (attempt, worker) in ["w1", "w2", "w3"].into_iter().enumerate() {
            assert!(db.fail_abandoned_jobs(3).await.unwrap().is_empty(), "{backend}: attempt {attempt}");
            let claimed = db.claim_job(worker, -1, 3).await.unwrap().unwrap();
            assert_eq!(claimed.attempts, attempt as i64 + 1, "{backend}");
        }
        // A fourth claim is refused, and the sweep fails the job with the reason.
        assert!(db.claim_job("w4", 60_000, 3).await.unwrap().is_none(), "{backend}: no fourth attempt");
        let failed = db.fail_abandoned_jobs(3).await.unwrap();
        assert_eq!(failed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j1"], "{backend}");
        let stored = db.job("j1").await.unwrap().unwrap();
        assert_eq!(stored.state, JobState::Failed, "{backend}");
        assert!(stored.failure.as_deref().unwrap().contains("3 times"), "{backend}: {:?}", stored.failure);
        assert!(stored.finished_at.is_some() && stored.lease_until.is_none(), "{backend}");
        assert!(db.fail_abandoned_jobs(3).await.unwrap().is_empty(), "{backend}: failed once");

        // A job under the limit whose lease ran out is taken over, not failed; a live one is left alone.
        db.insert_job(&job("j2", 2)).await.unwrap();
        db.claim_job("w1", -1, 3).await.unwrap().unwrap();
        assert!(db.fail_abandoned_jobs(3).await.unwrap().is_empty(), "{backend}");
        let taken = db.claim_job("w2", 60_000, 3).await.unwrap().unwrap();
        assert_eq!((taken.id.as_str(), taken.attempts), ("j2", 2), "{backend}");
        assert!(db.fail_abandoned_jobs(1).await.unwrap().is_empty(), "{backend}: a held lease is never failed");
    }
}
#[tokio::test]
async fn events_epochs_and_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        db.insert_job(&job("j1", 1)).await.unwrap();
        db.insert_job(&job("j2", 2)).await.unwrap();
        for i in 0..3 {
            db.append_event("j1", "progress", &json!({"i": i})).await.unwrap();
        }
        let events = db.events_after("j1", 1).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3], "{backend}");
        assert_eq!(events[1].data["i"], 2);

        let row = graft::store::EpochRow {
            epoch: 1,
            train_loss: 0.5,
            train_accuracy: 0.8,
            valid_loss: Some(0.6),
            valid_accuracy: Some(0.7),
        };
        db.record_epoch("j1", &row).await.unwrap();
        db.record_epoch("j1", &graft::store::EpochRow { valid_accuracy: Some(0.75), ..row.clone() }).await.unwrap();
        let epochs = db.epochs("j1").await.unwrap();
        assert_eq!(epochs.len(), 1, "{backend}: a repeated epoch is overwritten, not duplicated");
        assert_eq!(epochs[0].valid_accuracy, Some(0.75));

        assert_eq!(db.cancel_job("j2").await.unwrap(), Some(JobState::Cancelled), "{backend}: queued → cancelled");
        db.claim_job("w1", 60_000, 3).await.unwrap().unwrap();
        assert_eq!(db.cancel_job("j1").await.unwrap(), Some(JobState::Running), "{backend}");
        assert!(db.heartbeat("j1", "w1", 60_000).await.unwrap().cancel_requested, "{backend}");
        assert!(db.end_job("j1", "w1", JobState::Cancelled, None).await.unwrap());
        assert_eq!(db.cancel_job("nope").await.unwrap(), None);
    }
}

#[tokio::test]
async fn two_workers_on_postgres_claim_distinct_jobs() {
    let url = fresh_postgres_url().await;
    let db = Db::connect(&url).await.unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("job{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        db.insert_job(&job(id, i as i64)).await.unwrap();
    }
    let mut workers = Vec::new();
    for worker in ["w1", "w2"] {
        // Each worker has its own pool, as two processes would.
        let db = Db::connect(&url).await.unwrap();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = db.claim_job(worker, 600_000, 3).await.unwrap() {
                mine.push(job.id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut counts = Vec::new();
    for worker in workers {
        let mine = worker.await.unwrap();
        counts.push(mine.len());
        for id in mine {
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), 40, "every job claimed once");
    assert!(counts.iter().all(|&c| c > 0), "both workers got work: {counts:?}");
}
