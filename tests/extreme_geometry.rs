//! Extreme aspect ratios over HTTP, on every resize mode: a 1,000,000×1 and a
//! 1×1,000,000 PNG (18 KB and 1.2 MB) are classified, and the process's peak memory
//! grows by far less than a buffer sized from the aspect ratio would take (the crop of
//! 1,000,000×1 to 32×32 once resized the whole image to 37,000,000×37, 4.1 GB). A
//! progressive JPEG with more scans than the cap is refused with 422.

mod common;

use common::hostile::{models_in_every_mode, progressive_jpeg};
use common::*;
use graft::config::Limits;

/// The process's peak resident memory so far, in bytes (VmHWM of /proc/self/status).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([if (x / 1000 + y / 1000) % 2 == 0 { 40 } else { 220 }, 128, 90])
    });
    common::datasets::encode(&image, image::ImageFormat::Png)
}

async fn classify(url: &str, model: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{url}/v1/models/{model}/classify"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn extreme_aspect_ratios_are_classified_in_bounded_memory() {
    let models = tempfile::tempdir().unwrap();
    models_in_every_mode(models.path());
    let limits = Limits { max_jpeg_scans: 50, ..Limits::default() };
    let server = start_server(models.path(), limits).await;
    let (wide, tall) = (png(1_000_000, 1), png(1, 1_000_000));
    assert!(wide.len() < 2 << 20 && tall.len() < 2 << 20, "{} and {} bytes", wide.len(), tall.len());

    let before = peak_rss();
    for mode in ["pad", "crop", "stretch"] {
        let model = format!("tiny_{mode}");
        for (name, body) in [("1000000×1", &wide), ("1×1000000", &tall)] {
            let started = std::time::Instant::now();
            let response = classify(&server.url, &model, "image/png", body.clone()).await;
            assert_eq!(response.status(), 200, "{model} {name}: {}", response.text().await.unwrap());
            let answer: serde_json::Value = response.json().await.unwrap();
            assert!(answer["predictions"].as_array().is_some_and(|p| !p.is_empty()), "{model} {name}: {answer}");
            println!("{model} {name}: {:?}", started.elapsed());
        }
    }
    let growth = peak_rss().saturating_sub(before);
    println!("peak RSS growth over the six requests: {} MiB", growth >> 20);
    assert!(growth < 200 << 20, "peak RSS grew by {} MiB", growth >> 20);

    // Within the cap (1 + 49 scans) it is an ordinary image; one scan more and it is refused.
    let response = classify(&server.url, "tiny_crop", "image/jpeg", progressive_jpeg(49)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let response = classify(&server.url, "tiny_crop", "image/jpeg", progressive_jpeg(50)).await;
    let problem = expect_problem(response, 422).await;
    assert_eq!(problem["type"], "urn:graft:problem:too-many-jpeg-scans", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("50 scans"), "{problem}");
}
