//! The request surface under attack, over real HTTP against the real `graft serve` binary:
//! corrupt, truncated and empty images of every format, headers that claim giant
//! dimensions, extreme aspect ratios on every resize mode, bodies over each limit,
//! malformed multipart, JSON and base64, absurd job numbers, and archive attacks. Each
//! is answered with its 4xx problem+json; afterwards the server is still up, its peak
//! RSS stayed under a bound, and its database and storage root hold exactly what they
//! held before the attacks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::client;
use common::datasets::{class_folder_zip, encode};
use common::hostile::*;
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};

/// The server's limits in this test, small so that each can be crossed cheaply.
const MAX_BODY: usize = 1 << 20;
const MAX_UPLOAD: usize = 16 << 20;
const MAX_ENTRY: usize = 16 << 20;
const MAX_ARCHIVE: usize = 64 << 20;
const MAX_ENTRIES: usize = 20_000;
const MAX_ANNOTATION: usize = 1 << 20;
/// Peak resident memory the server may reach over the whole test.
const PEAK_RSS_BOUND: u64 = 256 << 20;

struct Graft {
    child: Child,
    url: String,
    data: tempfile::TempDir,
    _models: tempfile::TempDir,
}

impl Drop for Graft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Graft {
    async fn start() -> Self {
        let models = tempfile::tempdir().unwrap();
        models_in_every_mode(models.path());
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_graft"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "0"])
            .arg("--model-dir")
            .arg(models.path())
            .arg("--data-dir")
            .arg(data.path())
            .args(["--max-body-bytes", &MAX_BODY.to_string()])
            .args(["--max-upload-bytes", &MAX_UPLOAD.to_string()])
            .args(["--max-archive-entry-bytes", &MAX_ENTRY.to_string()])
            .args(["--max-archive-bytes", &MAX_ARCHIVE.to_string()])
            .args(["--max-archive-entries", &MAX_ENTRIES.to_string()])
            .args(["--max-annotation-bytes", &MAX_ANNOTATION.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let graft = Self { child, url: format!("http://127.0.0.1:{port}"), data, _models: models };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client().get(format!("{}/readyz", graft.url)).send().await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "graft did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        graft
    }

    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Every row count and every file under the data folder (the blob store and its
    /// staging folder included), to compare before and after the attacks.
    async fn snapshot(&self) -> (Vec<(String, i64)>, Vec<PathBuf>) {
        sqlx::any::install_default_drivers();
        let url = common::db::sqlite_url(self.data.path());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let mut counts = Vec::new();
        for table in [
            "datasets",
            "dataset_classes",
            "dataset_items",
            "jobs",
            "job_epochs",
            "job_events",
            "trained_models",
            "ingestions",
        ] {
            let row: (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&pool).await.unwrap();
            counts.push((table.to_owned(), row.0));
        }
        pool.close().await;
        let mut files = Vec::new();
        list_files(&self.data.path().join("blobs"), &mut files);
        files.sort();
        (counts, files)
    }
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { list_files(&path, out) } else { out.push(path) }
    }
}

/// Sends only the head of a request that announces a `content_length`-byte body, and
/// reads the answer: a limit known from the head must be applied before any body is read.
async fn head_only(url: &str, path: &str, content_type: &str, content_length: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\n\
         content-length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0
                || text.split_once("\r\n\r\n").is_some_and(|(_, body)| serde_json::from_str::<Value>(body).is_ok())
            {
                break;
            }
        }
    })
    .await;
    if read.is_err() {
        return (0, json!({"detail": "no answer within 5 s"}));
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, body)
}

/// A request of the attack table, the statuses that are right for it, and its name.
struct Attack {
    name: String,
    request: reqwest::RequestBuilder,
    statuses: &'static [u16],
}

fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128]))
}

/// Stripes a thousand pixels wide: a 1,000,000×1 PNG of them is a few KB.
fn stripes(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| Rgb([((x / 1000) % 256) as u8, ((y / 1000) % 256) as u8, 90]))
}

/// A BMP header claiming `width × height` 24-bit pixels, with no pixel data.
fn bmp_header_only(width: i32, height: i32) -> Vec<u8> {
    let mut bmp = b"BM".to_vec();
    bmp.extend(54u32.to_le_bytes()); // file size (a lie, as the rest)
    bmp.extend([0; 4]);
    bmp.extend(54u32.to_le_bytes());
    bmp.extend(40u32.to_le_bytes());
    bmp.extend(width.to_le_bytes());
    bmp.extend(height.to_le_bytes());
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0; 24]);
    bmp
}

/// A GIF whose logical screen and one frame are 65,535 × 65,535, with no image data.
fn gif_header_only() -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0, 0]);
    gif.extend([0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x08]);
    gif
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_a_problem_and_changes_nothing() {
    let mut graft = Graft::start().await;
    let http = client();
    let url = graft.url.clone();
    let classify = |model: &str| format!("{url}/v1/models/{model}/classify");
    let datasets = format!("{url}/v1/datasets");
    let jobs = format!("{url}/v1/jobs");

    // What a job may refer to: one good dataset, uploaded before the snapshot.
    let upload = |archive: Vec<u8>, name: String| {
        let part = reqwest::multipart::Part::bytes(archive).file_name("upload.zip");
        http.post(&datasets).multipart(reqwest::multipart::Form::new().part("archive", part).text("name", name))
    };
    let response = upload(class_folder_zip("flowers", 3, 1), "flowers".into()).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let dataset: Value = response.json().await.unwrap();
    let dataset_id = dataset["id"].as_str().unwrap().to_owned();
    let before = graft.snapshot().await;

    let mut attacks: Vec<Attack> = Vec::new();
    let mut add = |name: String, request: reqwest::RequestBuilder, statuses: &'static [u16]| {
        attacks.push(Attack { name, request, statuses })
    };
    let image_body = |model: &str, content_type: &str, body: Vec<u8>| {
        http.post(classify(model)).header("content-type", content_type).body(body)
    };

    // Images of every format: truncated, empty, and with their header overwritten.
    let formats = [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Png, "image/png"),
        (ImageFormat::WebP, "image/webp"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::Bmp, "image/bmp"),
    ];
    for (format, content_type) in formats {
        let good = encode(&gradient(64, 48), format);
        let response = image_body("tiny_stretch", content_type, good.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "a good {format:?} is classified");
        let mut corrupt = good.clone();
        let header = corrupt.len().min(40);
        corrupt[6..header].fill(0xFF);
        add(
            format!("{format:?} truncated"),
            image_body("tiny_stretch", content_type, good[..good.len() / 2].into()),
            &[422],
        );
        add(format!("{format:?} of zero bytes"), image_body("tiny_stretch", content_type, Vec::new()), &[415, 422]);
        add(
            format!("{format:?} with a corrupt header"),
            image_body("tiny_stretch", content_type, corrupt),
            &[415, 422],
        );
    }
    // Headers that claim giant dimensions, and a progressive JPEG of too many scans.
    add(
        "PNG header of 100,000²".into(),
        image_body("tiny_crop", "image/png", png_header_only(100_000, 100_000)),
        &[422],
    );
    add("BMP header of 60,000²".into(), image_body("tiny_pad", "image/bmp", bmp_header_only(60_000, 60_000)), &[422]);
    add("GIF header of 65,535²".into(), image_body("tiny_pad", "image/gif", gif_header_only()), &[422]);
    add("JPEG of 1 + 150 scans".into(), image_body("tiny_crop", "image/jpeg", progressive_jpeg(150)), &[422]);

    // Bodies over each limit.
    add("a 201-character dataset name".into(), upload(class_folder_zip("flowers", 3, 5), "n".repeat(201)), &[422]);
    add("a 100 KB dataset name".into(), upload(class_folder_zip("flowers", 3, 2), "n".repeat(100 << 10)), &[413, 422]);

    // Malformed multipart, JSON and base64.
    add(
        "multipart without a boundary".into(),
        http.post(&datasets).header("content-type", "multipart/form-data").body("--x\r\n"),
        &[400, 415, 422],
    );
    add(
        "multipart cut short".into(),
        http.post(&datasets)
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body("--xyz\r\ncontent-disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\n\r\nPK\x03\x04"),
        &[400, 422],
    );
    add(
        "multipart image cut short".into(),
        http.post(classify("tiny_pad"))
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body(&b"--xyz\r\ncontent-disposition: form-data; name=\"file\"\r\n\r\n\x89PNG"[..]),
        &[400, 422],
    );
    add(
        "JSON cut short".into(),
        http.post(classify("tiny_pad")).header("content-type", "application/json").body("{\"images\":[{\"b64\""),
        &[400, 422],
    );
    add(
        "job JSON cut short".into(),
        http.post(&jobs).header("content-type", "application/json").body("{\"dataset\":"),
        &[400, 422],
    );
    add(
        "base64 with bad characters".into(),
        http.post(classify("tiny_pad")).json(&json!({"images": [{"b64": "@@@@"}]})),
        &[422],
    );
    add(
        "a data URL without data".into(),
        http.post(classify("tiny_pad")).json(&json!({"images": [{"b64": "data:image/png;base64,"}]})),
        &[422],
    );
    add(
        "base64 of a non-image".into(),
        http.post(classify("tiny_pad")).json(&json!({"images": [{"b64": "aGVsbG8gd29ybGQ="}]})),
        &[422],
    );

    // Absurd job numbers.
    let job = |extra: Value| {
        let mut body = json!({"dataset": dataset_id, "base_model": "tiny_pad"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        http.post(&jobs).json(&body)
    };
    for (name, extra) in [
        ("epochs 10⁹", json!({"epochs": 1_000_000_000u64})),
        ("epochs 0", json!({"epochs": 0})),
        ("batch_size 0", json!({"batch_size": 0})),
        ("batch_size 10⁹", json!({"batch_size": 1_000_000_000u64})),
        ("negative learning rate", json!({"learning_rate": -1.0})),
        ("learning rate 10³⁰⁰", json!({"learning_rate": 1e300})),
        ("hidden_units 10⁹", json!({"hidden_units": 1_000_000_000u64})),
        ("dropout 2", json!({"dropout": 2.0})),
        ("augment variants 10⁶", json!({"augment": {"flip": true, "variants": 1_000_000}})),
        ("fine_tune epochs 10⁹", json!({"fine_tune": {"epochs": 1_000_000_000u64}})),
        ("a 1,000-character name", json!({"name": "m".repeat(1000)})),
        ("an unknown field", json!({"epoch": 3})),
    ] {
        add(format!("job with {name}"), job(extra), &[422]);
    }
    add("a job that is an array".into(), http.post(&jobs).json(&json!([1, 2, 3])), &[422]);

    // Archive attacks: nothing usable is left in any of them, so each is refused.
    let png = encode(&gradient(40, 40), ImageFormat::Png);
    add(
        "zip slip".into(),
        upload(zip_of(&[("../../evil/cat/a.png", &png), ("flowers/../../../b.png", &png)]), "slip".into()),
        &[422],
    );
    add(
        "absolute paths".into(),
        upload(zip_of(&[("/etc/cron.d/cat/a.png", &png), ("/tmp/dog/b.png", &png)]), "abs".into()),
        &[422],
    );
    add(
        "tar of links".into(),
        upload(tar_of(&[], &[("top/cat/a.png", "/etc/passwd"), ("top/dog/b.png", "../../secret")]), "links".into()),
        &[422],
    );
    add("zip bomb of 128 MiB".into(), upload(zip_bomb(128 << 20), "bomb".into()), &[413, 422]);
    add("100,000 tiny entries".into(), upload(zip_of_tiny_entries(100_000), "tiny".into()), &[413, 422]);
    add(
        "end record claiming 2 entries".into(),
        upload(forge_entry_count(class_folder_zip("flowers", 3, 3), 2), "forged-down".into()),
        &[422],
    );
    add(
        "end record claiming 65,535 entries".into(),
        upload(forge_entry_count(class_folder_zip("flowers", 3, 4), 65_535), "forged-up".into()),
        &[422],
    );
    let invalid_rows: String = (0..60_000).map(|i| format!("img_{i}.png,cat,not,a,box,{i}\n")).collect();
    assert!(invalid_rows.len() > MAX_ANNOTATION);
    add(
        "annotation bomb".into(),
        upload(
            zip_of(&[("photos/a.png", &png), ("photos/b.png", &png), ("photos/boxes.csv", invalid_rows.as_bytes())]),
            "annotation-bomb".into(),
        ),
        &[413, 422],
    );

    let mut failures = Vec::new();
    // Bodies whose announced size is over the route's limit: refused from the head alone.
    for (path, content_type, length, statuses) in [
        ("/v1/models/tiny_pad/classify", "image/png", MAX_BODY + 1, &[413][..]),
        ("/v1/models/tiny_crop/classify", "multipart/form-data; boundary=xyz", MAX_BODY + 1, &[413]),
        ("/v1/datasets", "multipart/form-data; boundary=xyz", MAX_UPLOAD + 1, &[413]),
        ("/v1/jobs", "application/json", 2 << 20, &[413]),
        ("/v1/datasets", "application/json", 2 << 20, &[413, 422]),
    ] {
        let (status, body) = head_only(&url, path, content_type, length).await;
        println!("{:<44} {status}  {}", format!("{path}: {length}-byte {content_type} head"), body["detail"]);
        if !statuses.contains(&status) || body["status"] != status {
            failures.push(format!("{path} with a {length}-byte body announced: {status} {body}"));
        }
    }
    for attack in attacks {
        let started = Instant::now();
        let response = attack.request.send().await.unwrap_or_else(|e| panic!("{}: {e}", attack.name));
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        println!("{:<44} {status} in {:>6.0?}  {}", attack.name, started.elapsed(), body["detail"]);
        let problem = content_type.as_deref() == Some("application/problem+json")
            && body["status"] == status
            && body["detail"].as_str().is_some_and(|d| d.len() > 10);
        if !attack.statuses.contains(&status) || !problem {
            failures.push(format!("{}: {status} {content_type:?} {body}", attack.name));
        }
        assert!(graft.is_running(), "graft stopped after {}", attack.name);
    }
    assert!(failures.is_empty(), "answers that are not the right problem:\n{}", failures.join("\n"));

    // Still up, still right, nothing changed, memory bounded.
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for model in ["tiny_pad", "tiny_crop", "tiny_stretch"] {
        let response =
            image_body(model, "image/png", encode(&stripes(1_000_000, 1), ImageFormat::Png)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{model} classifies a 1,000,000×1 image");
    }
    let after = graft.snapshot().await;
    assert_eq!(after.0, before.0, "row counts changed");
    assert_eq!(after.1, before.1, "files under the storage root changed");
    let peak = graft.peak_rss();
    println!("graft's peak RSS over the test: {} MiB", peak >> 20);
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB over the bound of {} MiB", peak >> 20, PEAK_RSS_BOUND >> 20);
}
