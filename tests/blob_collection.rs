//! Blob collection on both databases: what no row references and nothing wrote for the
//! grace period goes; everything a row references, anything recent, and any image while
//! an ingestion is live stays.

mod common;

use std::time::{Duration, SystemTime};

use common::db::both_databases;
use graft::store::{
    BlobStore, Db, GcReport, IngestionLease, ItemRecord, JobOutcome, JobRecord, NewDataset, TrainedModelRecord,
    collect, image_key, now_ms, remove_unreferenced_image,
};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Writes a blob and dates its last write `age` ago.
fn put_aged(blobs: &BlobStore, key: &str, bytes: &[u8], age: Duration) {
    blobs.replace(key, bytes).unwrap();
    let path = blobs.root().join(key);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

async fn dataset_holding(db: &Db, id: &str, shas: &[String]) {
    let items = shas
        .iter()
        .map(|sha| ItemRecord {
            sha256: sha.clone(),
            class_idx: 0,
            split: "train".into(),
            path: format!("a/{sha}.png"),
            width: 4,
            height: 4,
            bbox: None,
        })
        .collect();
    let dataset = NewDataset {
        id: id.into(),
        name: id.into(),
        task: "classify".into(),
        seed: 0,
        splits: [0.8, 0.1, 0.1],
        report: json!({}),
        classes: vec!["a".into()],
        items,
    };
    db.insert_dataset(&dataset).await.unwrap();
}

async fn model_with_head(db: &Db, job_id: &str, head: &str) {
    db.insert_job(&JobRecord::queued(job_id, "d1", "tiny", "kept", json!({}))).await.unwrap();
    db.claim_job("w", 60_000, 3).await.unwrap().unwrap();
    let record = TrainedModelRecord {
        name: "kept".into(),
        job_id: job_id.into(),
        base_model: "tiny".into(),
        dataset_id: "d1".into(),
        classes: vec!["a".into()],
        head_blob: head.into(),
        evaluation: json!({}),
        created_at: now_ms(),
        task: "classify".into(),
        tuned_base_blob: None,
        geometry: None,
    };
    assert!(
        db.complete_job(job_id, "w", JobOutcome { evaluation: &json!({}), misclassified: &json!([]) }, &record)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn collection_takes_only_what_nothing_references_and_nothing_wrote_lately() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        let blobs = BlobStore::open(dir.path().join(format!("blobs-{backend}"))).unwrap();
        let (held, dropped, fresh) = (sha(1), sha(2), sha(3));
        dataset_holding(&db, "d1", std::slice::from_ref(&held)).await;
        for image in [&held, &dropped] {
            put_aged(&blobs, &image_key(image), b"image", 2 * HOUR);
            put_aged(&blobs, &format!("features/m/fp/{}/{image}.f32", &image[..2]), b"feat", 2 * HOUR);
            put_aged(&blobs, &format!("activations/m/fp/cut/{}/{image}-aug2ab-1.f32", &image[..2]), b"act", 2 * HOUR);
        }
        put_aged(&blobs, &image_key(&fresh), b"new", Duration::from_secs(60));
        put_aged(&blobs, "activations/m/fp/cut/shape.json", b"{}", 2 * HOUR);

        model_with_head(&db, "j1", "heads/j1-a1.bin").await;
        put_aged(&blobs, "heads/j1-a1.bin", b"head", 2 * HOUR);
        put_aged(&blobs, "heads/j0-a1.bin", b"lost", 2 * HOUR);
        put_aged(&blobs, "tuned/j0-a2.onnx", b"lost-tuned", 2 * HOUR);
        put_aged(&blobs, "heads/j9-a1.bin", b"about to commit", Duration::from_secs(5));
        db.insert_job(&JobRecord::queued("j2", "d1", "tiny", "later", json!({}))).await.unwrap();
        put_aged(&blobs, "checkpoints/j2.json", b"{}", 2 * HOUR);
        put_aged(&blobs, "checkpoints/j1.json", b"{}", 2 * HOUR);
        put_aged(&blobs, "checkpoints/j1.fine-tune.bin", b"ck", 2 * HOUR);
        let temp = blobs.root().join(".tmp");
        std::fs::write(temp.join("stale-upload"), b"0123456789").unwrap();
        std::fs::File::options()
            .write(true)
            .open(temp.join("stale-upload"))
            .unwrap()
            .set_modified(SystemTime::now() - 2 * HOUR)
            .unwrap();
        std::fs::write(temp.join("upload-in-progress"), b"x").unwrap();

        let report = collect(&db, &blobs, HOUR).await.unwrap();
        let bytes = ["image", "feat", "act", "lost", "lost-tuned", "{}", "ck", "0123456789"]
            .iter()
            .map(|s| s.len() as u64)
            .sum();
        let expected =
            GcReport { images: 1, cached: 2, weights: 2, checkpoints: 2, temporary: 1, bytes, images_deferred: false };
        assert_eq!(report, expected, "{backend}");

        let mut left: Vec<String> = ["images", "features", "activations", "heads", "tuned", "checkpoints"]
            .iter()
            .flat_map(|p| blobs.list(p).unwrap())
            .collect();
        left.sort();
        let mut kept = vec![
            image_key(&held),
            image_key(&fresh),
            format!("features/m/fp/01/{held}.f32"),
            format!("activations/m/fp/cut/01/{held}-aug2ab-1.f32"),
            "activations/m/fp/cut/shape.json".to_owned(),
            "heads/j1-a1.bin".to_owned(),
            "heads/j9-a1.bin".to_owned(),
            "checkpoints/j2.json".to_owned(),
        ];
        kept.sort();
        assert_eq!(left, kept, "{backend}");
        assert!(temp.join("upload-in-progress").is_file(), "{backend}: a fresh temporary file stays");

        // A second pass finds nothing more.
        let again = collect(&db, &blobs, HOUR).await.unwrap();
        assert_eq!(again, GcReport::default(), "{backend}");
    }
}

#[tokio::test]
async fn images_stay_while_an_ingestion_is_live() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, db) in both_databases(dir.path()).await {
        let blobs = BlobStore::open(dir.path().join(format!("blobs-{backend}"))).unwrap();
        let image = sha(7);
        put_aged(&blobs, &image_key(&image), b"image", 2 * HOUR);

        // An upload in progress may have found this image stored and rely on it.
        let upload = IngestionLease::begin(&db).await.unwrap();
        let report = collect(&db, &blobs, HOUR).await.unwrap();
        assert!(report.images_deferred && report.images == 0, "{backend}: {report:?}");
        assert!(blobs.exists(&image_key(&image)).unwrap());
        // A failed upload or a dataset deletion keeps it too, but the upload's own lease
        // does not hold back its own clean-up.
        assert_eq!(remove_unreferenced_image(&db, &blobs, &image, None).await.unwrap(), 0, "{backend}");
        assert!(blobs.exists(&image_key(&image)).unwrap(), "{backend}: restored");
        let other = IngestionLease::begin(&db).await.unwrap();
        assert_eq!(remove_unreferenced_image(&db, &blobs, &image, Some(&other.id)).await.unwrap(), 0);
        other.end().await;
        assert_eq!(remove_unreferenced_image(&db, &blobs, &image, Some(&upload.id)).await.unwrap(), 5, "{backend}");
        assert!(!blobs.exists(&image_key(&image)).unwrap());

        // Once the ingestion ends, collection takes unheld images again.
        put_aged(&blobs, &image_key(&image), b"image", 2 * HOUR);
        upload.end().await;
        let report = collect(&db, &blobs, HOUR).await.unwrap();
        assert_eq!((report.images, report.images_deferred), (1, false), "{backend}");

        // A lease whose process died (no heartbeat for a minute) holds nothing back.
        db.begin_ingestion("dead").await.unwrap();
        sqlx::query("UPDATE ingestions SET heartbeat_at = $1 WHERE id = 'dead'")
            .bind(now_ms() - 120_000)
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(db.live_ingestions(None).await.unwrap(), 0, "{backend}");
        // An image a dataset holds is never removed, whatever else is true.
        dataset_holding(&db, "d9", std::slice::from_ref(&image)).await;
        put_aged(&blobs, &image_key(&image), b"image", 2 * HOUR);
        assert_eq!(remove_unreferenced_image(&db, &blobs, &image, None).await.unwrap(), 0);
        assert!(blobs.exists(&image_key(&image)).unwrap(), "{backend}");
    }
}
