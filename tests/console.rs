//! The web console as served (its page, scripts and policy) and the endpoints it reads
//! beyond the rest of the API: a dataset's items, their thumbnails, and a job's
//! misclassified test images. The browser tests (tests/console/) drive the console itself.

mod common;

use std::io::{Cursor, Write};
use std::time::Duration;

use common::datasets::{class_folder_zip, class_image, encode};
use common::*;
use graft::config::Limits;
use image::ImageFormat;
use serde_json::{Value, json};

const PER_CLASS: usize = 20;

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_policy_that_keeps_them_on_this_server() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let page = get(&format!("{}/", server.url)).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'"] {
        assert!(policy.contains(directive), "{directive} missing from {policy}");
    }
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/app.js"), "{html}");

    let script = get(&format!("{}/console/app.js", server.url)).await;
    assert_eq!(script.status(), 200);
    assert_eq!(script.headers()["content-type"], "text/javascript");
    let etag = script.headers()["etag"].clone();
    assert!(script.text().await.unwrap().contains("hashchange"));
    assert_eq!(get(&format!("{}/console/no-such-file.js", server.url)).await.status(), 404);
    let again = client().get(format!("{}/console/app.js", server.url)).send().await.unwrap();
    assert_eq!(again.headers()["etag"], etag, "the same file keeps its ETag");

    // No file names another host: no fonts, CDNs or analytics. (The SVG namespace is a name,
    // not a request.)
    for (name, bytes) in graft::console::files() {
        let text = String::from_utf8(bytes).unwrap().replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(needle), "{name} contains {needle}");
        }
        // Every module the page imports is embedded.
        for import in text.match_indices("from \"./").map(|(at, _)| &text[at + 8..]) {
            let file = &import[..import.find('"').unwrap()];
            assert!(graft::console::files().any(|(n, _)| n == file), "{name} imports {file}, which is not embedded");
        }
    }
}

#[tokio::test]
async fn items_are_listed_by_class_and_split_and_their_thumbnails_are_cached_jpegs() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let dataset = upload_dataset(url, class_folder_zip("shapes", PER_CLASS, 2), "shapes").await;
    let id = dataset["id"].as_str().unwrap();

    // Paging through every item gives each image once.
    let (mut all, mut offset) = (Vec::<Value>::new(), 0);
    loop {
        let page: Value =
            get(&format!("{url}/v1/datasets/{id}/items?limit=7&offset={offset}")).await.json().await.unwrap();
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_offset"].as_i64() {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(all.len() as i64, dataset["images"].as_i64().unwrap());
    let mut hashes: Vec<&str> = all.iter().map(|i| i["sha256"].as_str().unwrap()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), all.len(), "no image twice");

    // One class and split: as many as the dataset's counts say, all under that class's folder.
    let class = &dataset["classes"][1];
    let page: Value =
        get(&format!("{url}/v1/datasets/{id}/items?class=1&split=train&limit=200")).await.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len() as i64, class["train"].as_i64().unwrap());
    let folder = format!("shapes/{}/", class["name"].as_str().unwrap());
    assert!(items.iter().all(|i| i["path"].as_str().unwrap().starts_with(&folder) && i["split"] == "train"), "{page}");

    expect_problem(get(&format!("{url}/v1/datasets/{id}/items?split=holdout")).await, 400).await;
    expect_problem(get(&format!("{url}/v1/datasets/{id}/items?limit=0")).await, 400).await;
    expect_problem(get(&format!("{url}/v1/datasets/nope/items")).await, 404).await;

    // A thumbnail fits the asked size, keeps the aspect ratio, and shows the image's colour.
    let item = &items[0];
    let sha = item["sha256"].as_str().unwrap();
    let (width, height) = (item["width"].as_f64().unwrap(), item["height"].as_f64().unwrap());
    let thumb_url = format!("{url}/v1/datasets/{id}/items/{sha}/thumbnail?size=24");
    let answer = get(&thumb_url).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "image/jpeg");
    let etag = answer.headers()["etag"].to_str().unwrap().to_owned();
    assert!(answer.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let thumb = image::load_from_memory(&answer.bytes().await.unwrap()).unwrap().to_rgb8();
    let scale = 24.0 / width.max(height);
    assert_eq!(thumb.width().max(thumb.height()), 24);
    assert!(
        (f64::from(thumb.width()) - width * scale).abs() <= 1.0,
        "{}x{} from {width}x{height}",
        thumb.width(),
        thumb.height()
    );
    assert!((f64::from(thumb.height()) - height * scale).abs() <= 1.0);
    let expected = common::datasets::CLASSES[1].1;
    let mean =
        |c: usize| thumb.pixels().map(|p| f64::from(p[c])).sum::<f64>() / f64::from(thumb.width() * thumb.height());
    let dominant = (0..3).max_by(|&a, &b| mean(a).total_cmp(&mean(b))).unwrap();
    assert_eq!(dominant, (0..3).max_by_key(|&c| expected[c]).unwrap(), "the thumbnail shows the class colour");

    // The browser's copy is current: 304 without a body.
    let cached = client().get(&thumb_url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());

    expect_problem(get(&format!("{url}/v1/datasets/{id}/items/{sha}/thumbnail?size=8")).await, 400).await;
    expect_problem(get(&format!("{url}/v1/datasets/{id}/items/{sha}/thumbnail?size=100000")).await, 400).await;
    expect_problem(get(&format!("{url}/v1/datasets/{id}/items/{}/thumbnail", "0".repeat(64))).await, 404).await;
    // An image of another dataset is not reachable through this one.
    let other = upload_dataset(url, class_folder_zip("other", 4, 9), "other").await;
    let other_id = other["id"].as_str().unwrap();
    expect_problem(get(&format!("{url}/v1/datasets/{other_id}/items/{sha}/thumbnail")).await, 404).await;
}

/// Two classes drawn from one distribution: a head cannot tell them apart, so about half
/// the test images are misclassified.
fn indistinguishable_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (class, name) in ["heads", "tails"].iter().enumerate() {
        for i in 0..30 {
            let image = class_image(0, 10_000 + (class * 100 + i) as u64);
            zip.start_file(format!("coins/{name}/{i:03}.png"), options).unwrap();
            zip.write_all(&encode(&image, ImageFormat::Png)).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn misclassified_images_are_the_confusion_matrix_off_its_diagonal() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let dataset = upload_dataset(url, indistinguishable_zip(), "coins").await;
    let dataset_id = dataset["id"].as_str().unwrap();
    let body = json!({"dataset": dataset_id, "base_model": "tiny_nchw", "name": "coin-flip", "epochs": 30,
                      "learning_rate": 0.05, "seed": 1});
    let job = submit_job(url, body).await;
    let id = job["id"].as_str().unwrap();
    // No worker yet: the job is queued, and has no misclassified images to show.
    let early = expect_problem(get(&format!("{url}/v1/jobs/{id}/misclassified")).await, 409).await;
    assert!(early["detail"].as_str().unwrap().contains("has not succeeded"), "{early}");
    let _worker = spawn_worker(&server, Duration::from_secs(30));
    let done = wait_for_job(url, id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["evaluation"].get("misclassified").is_none(), "kept out of the job view");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(done["evaluation"]["test"]["confusion"].clone()).unwrap();

    let list: Value = get(&format!("{url}/v1/jobs/{id}/misclassified?limit=200")).await.json().await.unwrap();
    assert_eq!(list["dataset_id"], dataset_id);
    assert_eq!(list["classes"], json!(["heads", "tails"]));
    let off_diagonal: u64 =
        (0..2).flat_map(|t| (0..2).map(move |p| (t, p))).filter(|(t, p)| t != p).map(|(t, p)| confusion[t][p]).sum();
    assert!(off_diagonal > 0, "a coin flip gets some wrong: {confusion:?}");
    assert_eq!(list["total"].as_u64().unwrap(), off_diagonal);

    // Each listed image is a test image of its true class, in its class folder.
    let test_items: Value =
        get(&format!("{url}/v1/datasets/{dataset_id}/items?split=test&limit=200")).await.json().await.unwrap();
    for image in list["images"].as_array().unwrap() {
        let (t, p) = (image["true_class"].as_u64().unwrap(), image["predicted_class"].as_u64().unwrap());
        assert_ne!(t, p);
        let item = test_items["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["sha256"] == image["sha256"])
            .expect("a test item");
        assert_eq!(item["class"].as_u64().unwrap(), t);
        assert_eq!(item["path"], image["path"]);
        let score = image["score"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&score), "the chosen class of two has at least half: {score}");
    }
    // A cell's filter gives that cell's count.
    for (t, p) in [(0usize, 1usize), (1, 0)] {
        let cell: Value = get(&format!("{url}/v1/jobs/{id}/misclassified?true_class={t}&predicted_class={p}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(cell["total"].as_u64().unwrap(), confusion[t][p], "cell {t},{p}");
        assert!(cell["images"].as_array().unwrap().iter().all(|i| i["true_class"] == t && i["predicted_class"] == p));
    }
    let paged: Value = get(&format!("{url}/v1/jobs/{id}/misclassified?limit=1")).await.json().await.unwrap();
    assert_eq!(paged["images"].as_array().unwrap().len(), 1);
    assert_eq!(paged["next_offset"].as_i64(), (off_diagonal > 1).then_some(1));
    expect_problem(get(&format!("{url}/v1/jobs/{id}/misclassified?limit=500")).await, 400).await;
    expect_problem(get(&format!("{url}/v1/jobs/nope/misclassified")).await, 404).await;
}
