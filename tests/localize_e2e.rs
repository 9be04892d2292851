//! Localization end to end over HTTP: a generated box dataset (red squares and blue discs
//! on varied backgrounds, portrait and landscape, Pascal VOC XML beside each image) is
//! uploaded, a `task: "localize"` job trains class and box heads on the fixture base whose
//! spatial features keep position (tests/fixtures/generated/spatial), and `localize`
//! answers boxes in pixels of the original image. The pooled head is trained on the same
//! data for comparison.

mod common;

use std::io::{Cursor, Write};
use std::time::Duration;

use common::datasets::{encode, voc_xml};
use common::*;
use graft::config::Limits;
use image::{ImageFormat, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const PER_CLASS: usize = 100;
const CLASSES: [&str; 2] = ["blue", "red"];

/// An object of `class` (0: blue disc, 1: red square) on a greenish-grey textured
/// background; returns the image and the object's box `[x_min, y_min, x_max, y_max]`.
fn scene(class: usize, seed: u64) -> (RgbImage, [u32; 4]) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, h) = if seed.is_multiple_of(2) { (96, 72) } else { (72, 96) };
    // Green dominates the background, so neither object colour appears there.
    let green = rng.random_range(90..200);
    let (red, blue) = (green * rng.random_range(50..95) / 100, green * rng.random_range(40..95) / 100);
    let mut image = RgbImage::from_fn(w, h, |x, y| {
        let ripple = ((x / 6 + y / 5) % 3) as i32 * 8;
        Rgb([red, green, blue].map(|c: u32| (c as i32 - ripple + rng.random_range(-8..=8)).clamp(0, 255) as u8))
    });
    let side = rng.random_range(22..40);
    let (x0, y0) = (rng.random_range(0..w - side), rng.random_range(0..h - side));
    let colour = if class == 0 { [40, 60, 210] } else { [210, 40, 40] };
    let r = side as f32 / 2.0;
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            let (dx, dy) = (x as f32 + 0.5 - x0 as f32 - r, y as f32 + 0.5 - y0 as f32 - r);
            if class == 1 || dx * dx + dy * dy <= r * r {
                image.put_pixel(x, y, Rgb(colour.map(|c: i32| (c + rng.random_range(-10..=10)).clamp(0, 255) as u8)));
            }
        }
    }
    (image, [x0, y0, x0 + side, y0 + side])
}

/// `PER_CLASS` scenes per class as PNG + LabelImg XML pairs under `photos/`.
fn box_dataset_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (class, label) in CLASSES.iter().enumerate() {
        for i in 0..PER_CLASS {
            let (image, bbox) = scene(class, (class * 10_000 + i) as u64);
            let file = format!("{label}_{i:03}.png");
            zip.start_file(format!("photos/{file}"), options).unwrap();
            zip.write_all(&encode(&image, ImageFormat::Png)).unwrap();
            zip.start_file(format!("photos/{label}_{i:03}.xml"), options).unwrap();
            zip.write_all(&voc_xml(&file, image.dimensions(), &[(label, bbox)])).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let overlap = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    overlap / (area(a) + area(b) - overlap)
}

fn corners(value: &Value) -> [f64; 4] {
    ["x_min", "y_min", "x_max", "y_max"].map(|k| value[k].as_f64().unwrap())
}

async fn train(url: &str, dataset: &str, name: &str, box_head: Option<&str>) -> Value {
    train_with(url, dataset, name, box_head, json!({})).await
}

/// [`train`] with further job fields.
async fn train_with(url: &str, dataset: &str, name: &str, box_head: Option<&str>, extra: Value) -> Value {
    let mut body = json!({"dataset": dataset, "base_model": "tiny_spatial", "name": name, "task": "localize",
                          "epochs": 200, "learning_rate": 0.02, "batch_size": 16, "seed": 5,
                          "early_stopping": {"patience": 40}});
    if let Some(kind) = box_head {
        body["box_head"] = json!(kind);
    }
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let job = submit_job(url, body).await;
    let done = wait_for_job(url, job["id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    done["evaluation"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localize_job_trains_and_serves_boxes_in_original_pixels() {
    let server = start_server(&fixtures().join("spatial"), Limits::default()).await;
    let _worker = spawn_worker(&server, Duration::from_secs(30));
    let url = &server.url;

    let dataset = upload_dataset(url, box_dataset_zip(), "scenes").await;
    assert_eq!(dataset["task"], "localize", "{}", dataset["report"]);
    assert_eq!(dataset["images"], 2 * PER_CLASS);
    assert_eq!(dataset["report"]["annotations"], "voc");
    let dataset_id = dataset["id"].as_str().unwrap();

    // The spatial head is the default on a base with a spatial map.
    let spatial = train(url, dataset_id, "scenes-spatial", None).await;
    assert_eq!(spatial["box_head"], "spatial");
    // The pooled head with the image stretched to the input: the geometry is the job's.
    let pooled = train_with(url, dataset_id, "scenes-pooled", Some("pooled"), json!({"geometry": "stretch"})).await;
    assert_eq!(pooled["box_head"], "pooled");
    for (head, evaluation) in [("spatial", &spatial), ("pooled", &pooled)] {
        println!(
            "{head} head: test mean IoU {:.3}, IoU ≥ 0.5 {:.3}, class accuracy {:.3} on {} images ({} epochs, {:.2} s)",
            evaluation["test_boxes"]["mean_iou"].as_f64().unwrap(),
            evaluation["test_boxes"]["iou_at_least_half"].as_f64().unwrap(),
            evaluation["test"]["accuracy"].as_f64().unwrap(),
            evaluation["test"]["count"],
            evaluation["epochs_run"],
            evaluation["timings"]["training_seconds"].as_f64().unwrap(),
        );
    }
    assert!(spatial["test"]["count"].as_u64().unwrap() >= 10, "{spatial}");
    assert!(spatial["test_boxes"]["mean_iou"].as_f64().unwrap() >= 0.6, "{}", spatial["test_boxes"]);
    assert!(spatial["test"]["accuracy"].as_f64().unwrap() >= 0.9, "{}", spatial["test"]);
    assert!(
        spatial["test_boxes"]["mean_iou"].as_f64().unwrap() > pooled["test_boxes"]["mean_iou"].as_f64().unwrap(),
        "position survives in the spatial map, not in the pooled vector"
    );

    // Serving: new scenes, portrait and landscape, answered in their own pixels.
    let mut ious = Vec::new();
    for seed in [900_001u64, 900_002, 900_003, 900_004] {
        let class = (seed % 2) as usize;
        let (image, truth) = scene(class, seed);
        let response = post_png(url, "/v1/models/scenes-spatial/localize?top_k=2", &image).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let found = &body["localizations"][0];
        assert_eq!(found["image_size"], json!([image.width(), image.height()]));
        assert_eq!(found["classes"][0]["label"], CLASSES[class], "{found}");
        assert_eq!(found["classes"].as_array().unwrap().len(), 2);
        let bbox = corners(&found["box"]);
        let normalized = corners(&found["box_normalized"]);
        let size = [image.width(), image.height(), image.width(), image.height()].map(f64::from);
        for k in 0..4 {
            assert!((normalized[k] - bbox[k] / size[k]).abs() < 1e-4, "{found}");
            assert!(bbox[k] >= 0.0 && bbox[k] <= size[k], "inside the image: {found}");
        }
        let truth = truth.map(f64::from);
        ious.push(iou(bbox, truth));
        println!("{}×{}: truth {truth:?}, answer {bbox:?}, IoU {:.3}", image.width(), image.height(), iou(bbox, truth));
    }
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    assert!(mean >= 0.5, "served boxes in original pixels: IoUs {ious:?}");

    // The same model classifies; a classification-only model refuses to localize.
    let response = post_image(url, "scenes-spatial", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);
    let refused = client()
        .post(format!("{url}/v1/models/tiny_spatial/localize"))
        .header("content-type", "image/png")
        .body(image("img0.png"))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(refused, 400).await;
    assert!(problem["detail"].as_str().unwrap().contains("no box head"), "{problem}");

    // The spatial box head reads its map inside the tuned tail: a cut above the map is refused.
    let body =
        json!({"dataset": dataset_id, "base_model": "tiny_spatial", "task": "localize", "unfreeze": {"tensor": "gap"}});
    let response = client().post(format!("{url}/v1/jobs")).json(&body).send().await.unwrap();
    let problem = expect_problem(response, 422).await;
    assert!(problem["detail"].as_str().unwrap().contains("lies below the cut `gap`"), "{problem}");

    // Phase 2 for a localizer: the base's patch convolution tuned with the class and spatial
    // box heads; the map the box head reads is computed inside the tuned tail.
    let tuned =
        train_with(url, dataset_id, "scenes-tuned", None, json!({"epochs": 60, "fine_tune": {"epochs": 15}})).await;
    let phase1_iou = tuned["phase1"]["test_boxes"]["mean_iou"].as_f64().unwrap();
    let phase2_iou = tuned["test_boxes"]["mean_iou"].as_f64().unwrap();
    println!(
        "localizer tuned above {}: test mean IoU {phase1_iou:.3} (phase 1) → {phase2_iou:.3}, accuracy {:.3} → {:.3}, \
         best phase-2 epoch {} of {} (0: phase 1's model kept), {:.2} s per epoch",
        tuned["fine_tune"]["cut"],
        tuned["phase1"]["test"]["accuracy"].as_f64().unwrap(),
        tuned["test"]["accuracy"].as_f64().unwrap(),
        tuned["fine_tune"]["best_epoch"],
        tuned["fine_tune"]["epochs_run"],
        tuned["fine_tune"]["seconds_per_epoch"].as_f64().unwrap(),
    );
    assert!(phase2_iou >= 0.5 && tuned["test"]["accuracy"].as_f64().unwrap() >= 0.9, "{tuned}");
    let (image, _) = scene(1, 900_005);
    let response = post_png(url, "/v1/models/scenes-tuned/localize", &image).await;
    assert_eq!(response.status(), 200);

    // With `quantize`, the base in INT8 under the trained class and box heads: the verdict
    // has both precisions' class accuracy and mean IoU, and the served INT8 model localizes.
    let extra = json!({"quantize": true, "max_accuracy_drop": 100});
    let int8 = train_with(url, dataset_id, "scenes-int8", Some("spatial"), extra).await;
    let verdict = &int8["quantization"];
    assert_eq!(verdict["served"], "int8", "{verdict}");
    let fp32_iou = verdict["fp32_test_mean_iou"].as_f64().unwrap();
    let int8_iou = verdict["int8_test_mean_iou"].as_f64().unwrap();
    println!("localizer in INT8: {verdict}");
    assert!((int8["test_boxes"]["mean_iou"].as_f64().unwrap() - int8_iou).abs() < 1e-6, "{int8}");
    assert!(int8_iou >= fp32_iou - 0.1 && int8_iou >= 0.4, "{verdict}");
    let (image, _) = scene(1, 900_005);
    assert_eq!(post_png(url, "/v1/models/scenes-int8/localize", &image).await.status(), 200);

    // The download is one ONNX file answering class probabilities and the box (its numbers
    // are checked against the head in tests/tune_tail.rs).
    for model in ["scenes-spatial", "scenes-pooled", "scenes-tuned", "scenes-int8"] {
        let response = client().get(format!("{url}/v1/models/{model}/onnx")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        let env = runtime();
        let source = graft::runtime::ModelSource::Edited { path: std::path::Path::new("download.onnx"), bytes: &bytes };
        let session = graft::runtime::open_session(&env, source, &cpu()).unwrap();
        let outputs: Vec<&str> = session.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["probabilities", "box"], "{model}");
        // Its metadata says how to prepare an image: the whole image padded (a localizer's
        // default geometry) or stretched (as the pooled job asked), 64 × 64, NCHW.
        let mode = if model == "scenes-pooled" { "stretch" } else { "pad" };
        let proto = <graft::onnx::proto::ModelProto as prost::Message>::decode(bytes.as_ref()).unwrap();
        let meta = |key: &str| {
            let entry = proto.metadata_props.iter().find(|e| e.key() == key);
            entry.unwrap_or_else(|| panic!("{model}: no {key}")).value().to_owned()
        };
        assert_eq!(meta("graft.task"), "localize");
        assert_eq!(meta("graft.base_model"), "tiny_spatial");
        let classes: Value = serde_json::from_str(&meta("graft.classes")).unwrap();
        assert_eq!(classes, spatial["classes"], "{model}");
        let preprocessing: Value = serde_json::from_str(&meta("graft.preprocessing")).unwrap();
        assert_eq!(
            (&preprocessing["resize"]["mode"], &preprocessing["width"], &preprocessing["height"]),
            (&json!(mode), &json!(64), &json!(64)),
            "{preprocessing}"
        );
        assert_eq!(preprocessing["layout"], "NCHW");
        assert!(meta("graft.box").starts_with("[cx, cy, w, h]"));
    }
}
