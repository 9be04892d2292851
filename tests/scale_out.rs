//! The scale-out layout, for real: two `--role api` and two `--role worker` processes, each
//! with a local folder of its own, sharing one PostgreSQL database and one S3 store
//! (SeaweedFS). A dataset uploaded through one API, jobs submitted through both, each job run
//! exactly once, every model served by both APIs within a second of its commit, a worker
//! killed with SIGKILL mid-job and its job finished by the other with nothing lost, and a
//! model deleted through one API gone from the other.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::datasets::class_folder_zip;
use common::s3::SeaweedS3;
use common::*;
use serde_json::{Value, json};

/// A graft process, killed with SIGKILL when dropped.
struct Replica {
    child: Child,
    url: String,
    _local: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(role: &str, database_url: &str, s3: &SeaweedS3) -> Replica {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let local = tempfile::tempdir().unwrap();
    let mut command = quiet_graft(&["serve", "--role", role, "--listen", &format!("127.0.0.1:{port}")]);
    command
        .args(["--database-url", database_url, "--blob-url", "s3://graft/shared", "--lease-seconds", "2"])
        .args(["--models", "tiny_nchw"])
        .arg("--model-dir")
        .arg(fixture_models())
        .arg("--data-dir")
        .arg(local.path())
        .envs(s3.environment());
    Replica { child: command.spawn().unwrap(), url: format!("http://127.0.0.1:{port}"), _local: local }
}

async fn wait_ready(replica: &mut Replica) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client().get(format!("{}/readyz", replica.url)).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(replica.child.try_wait().unwrap().is_none(), "{} exited while starting", replica.url);
        assert!(Instant::now() < deadline, "{} never became ready", replica.url);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job(url: &str, id: &str) -> Value {
    client().get(format!("{url}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_workers_on_postgres_and_s3() {
    let started = Instant::now();
    let s3 = SeaweedS3::start().await;
    s3.bucket("graft").await;
    let database_url = common::db::fresh_postgres_url().await;
    // The first start migrates the empty database; the others find it done.
    let mut apis = [replica("api", &database_url, &s3), replica("api", &database_url, &s3)];
    let mut workers = vec![replica("worker", &database_url, &s3), replica("worker", &database_url, &s3)];
    for replica in apis.iter_mut().chain(workers.iter_mut()) {
        wait_ready(replica).await;
    }
    println!("SeaweedFS and 4 replicas ready in {:?}", started.elapsed());
    let (api1, api2) = (apis[0].url.clone(), apis[1].url.clone());

    let dataset = upload_dataset(&api1, class_folder_zip("shapes", 20, 2), "shapes").await;
    let images = dataset["images"].as_u64().unwrap() as usize;
    let long = json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": "survivor", "epochs": 150,
                      "batch_size": 1, "hidden_units": 256, "learning_rate": 0.001, "early_stopping": null, "seed": 11});
    let quick = |name: &str| json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": name, "epochs": 5});
    let mut ids = vec![submit_job(&api1, long).await["id"].as_str().unwrap().to_owned()];
    for (api, name) in [(&api1, "quick-1"), (&api2, "quick-2"), (&api2, "quick-3")] {
        ids.push(submit_job(api, quick(name)).await["id"].as_str().unwrap().to_owned());
    }

    // The worker running the long job dies without any clean-up once it is a few epochs in.
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_after = loop {
        let view = job(&api2, &ids[0]).await;
        let epochs = view["epochs"].as_array().map_or(0, Vec::len);
        if epochs >= 3 {
            let db = graft::store::Db::connect(&database_url).await.unwrap();
            let holder = db.job(&ids[0]).await.unwrap().unwrap().worker.unwrap();
            // Worker ids are host:pid:index:nonce.
            let pid: u32 = holder.split(':').nth(1).unwrap().parse().unwrap();
            let index = workers.iter().position(|w| w.child.id() == pid).expect("a worker process holds it");
            drop(workers.remove(index));
            break epochs;
        }
        assert!(Instant::now() < deadline, "the long job made no progress: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("killed the worker of the long job after {killed_after} epochs");

    // Every job finishes; each ran once, the long one twice (the second attempt resumed).
    for (i, id) in ids.iter().enumerate() {
        let done = wait_for_job(&api1, id, Duration::from_secs(240)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["attempts"], if i == 0 { 2 } else { 1 }, "{done}");
        let epochs: Vec<i64> =
            done["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_i64().unwrap()).collect();
        let expected = if i == 0 { 150 } else { epochs.len() as i64 };
        assert_eq!(epochs, (1..=expected).collect::<Vec<_>>(), "every epoch once: {id}");
        // Served by both APIs within a second of the job being seen to succeed.
        let model = done["model"].as_str().unwrap();
        for api in [&api1, &api2] {
            let waited = until_classify_status(api, model, 200, Duration::from_secs(5)).await;
            println!("{model}: served by {api} {waited:?} after its job was seen to succeed");
            assert!(waited < Duration::from_secs(1), "{api} served {model} only after {waited:?}");
        }
    }

    // Everything lives in the bucket: the images once each, one head per model.
    let local = tempfile::tempdir().unwrap();
    let settings = s3.settings();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let blobs = graft::store::BlobStore::open_s3("s3://graft/shared", local.path(), &settings).unwrap();
    assert_eq!(blobs.list("images").unwrap().len(), images);
    let heads = blobs.list("heads").unwrap();
    assert_eq!(heads.len(), 4, "{heads:?}");
    assert!(heads.contains(&format!("heads/{}-a2.bin", ids[0])), "the long job's head is its second attempt's");
    assert!(blobs.list("checkpoints").unwrap().is_empty(), "no checkpoint left behind");

    // Deleted through the second API, gone from the first.
    let deleted = client().delete(format!("{api2}/v1/models/quick-1")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = until_classify_status(&api1, "quick-1", 404, Duration::from_secs(5)).await;
    assert!(gone < Duration::from_secs(1), "{gone:?}");
    println!("deleted through API 2, 404 from API 1 after {gone:?}; whole test {:?}", started.elapsed());
}
