//! Dataset uploads over HTTP with hostile or broken archives: each ends in a clear
//! error or a clear skip report, a failed upload leaves no rows and no blobs, and
//! nothing is written outside the storage root.

mod common;

use std::io::Write;

use common::datasets::{class_image, encode, voc_xml};
use common::*;
use graft::config::Limits;
use image::ImageFormat;
use serde_json::Value;

fn png(class: usize, seed: u64) -> Vec<u8> {
    encode(&class_image(class, seed), ImageFormat::Png)
}

/// A tar with good images in two classes plus an escaping path, an absolute path, a
/// symlink, a hard link and a non-image.
fn hostile_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, bytes).unwrap();
    };
    for i in 0..6 {
        add(&format!("red/{i}.png"), &png(2, i));
        add(&format!("blue/{i}.png"), &png(0, i));
    }
    add("../evil.png", &png(2, 99));
    add("/tmp/graft-evil.png", &png(2, 98));
    add("red/notes.txt", b"not an image");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder.append_link(&mut link, "red/link.png", "/etc/passwd").unwrap();
    let mut hard = tar::Header::new_gnu();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    builder.append_link(&mut hard, "blue/hard.png", "red/0.png").unwrap();
    builder.into_inner().unwrap()
}

async fn upload(url: &str, bytes: Vec<u8>) -> reqwest::Response {
    let form =
        reqwest::multipart::Form::new().part("archive", reqwest::multipart::Part::bytes(bytes).file_name("upload"));
    client().post(format!("{url}/v1/datasets")).multipart(form).send().await.unwrap()
}

fn files_named(dir: &std::path::Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let path = e.path();
            usize::from(path.file_name().is_some_and(|n| n.to_string_lossy().contains(name)))
                + if path.is_dir() && !path.is_symlink() { files_named(&path, name) } else { 0 }
        })
        .sum()
}

#[tokio::test]
async fn hostile_entries_are_skipped_and_reported() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let response = upload(&server.url, hostile_tar()).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!(dataset["images"], 12);
    let rejected: Vec<(String, String)> = dataset["report"]["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    let paths: Vec<&str> = rejected.iter().map(|(p, _)| p.as_str()).collect();
    for expected in ["../evil.png", "/tmp/graft-evil.png", "red/notes.txt", "red/link.png", "blue/hard.png"] {
        assert!(paths.contains(&expected), "{expected} not reported: {rejected:?}");
    }
    assert!(rejected.iter().all(|(_, reason)| reason.len() > 5));
    // Nothing was written outside the storage root: not beside the data folder, not in /tmp.
    let outside = server.data_dir.path().parent().unwrap();
    // By the entries' file name: the folder may hold unrelated files (build objects) whose
    // generated names happen to contain "evil".
    assert_eq!(files_named(outside, "evil.png"), 0);
    assert!(!std::path::Path::new("/tmp/graft-evil.png").exists());
}

#[tokio::test]
async fn broken_archives_are_refused_and_leave_nothing() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let truncated = {
        let tar = hostile_tar();
        tar[..tar.len() / 2].to_vec()
    };
    let empty_zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new())).finish().unwrap().into_inner();
    let only_text = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("a/readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"hello").unwrap();
        zip.finish().unwrap().into_inner()
    };
    let one_class = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..3 {
            zip.start_file(format!("red/{i}.png"), zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(&png(2, i)).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    for (name, bytes, needle, kind) in [
        ("truncated tar", truncated, "corrupt or truncated", "corrupt-archive"),
        ("empty zip", empty_zip, "no usable files", "empty-archive"),
        ("only a text file", only_text, "rejected", "no-usable-images"),
        ("one class", one_class, "at least two classes", "too-few-classes"),
        ("not an archive", b"just some text".to_vec(), "not a zip, tar or tar.gz", "not-an-archive"),
    ] {
        let body = expect_problem(upload(&server.url, bytes).await, 422).await;
        assert!(body["detail"].as_str().unwrap().contains(needle), "{name}: {body}");
        assert_eq!(body["type"], format!("urn:graft:problem:{kind}"), "{name}: {body}");
    }
    let list: Value = client().get(format!("{}/v1/datasets", server.url)).send().await.unwrap().json().await.unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty(), "no partial rows: {list}");
    assert!(server.state.blobs.list("images").unwrap().is_empty(), "no blobs left by failed uploads");
}

#[tokio::test]
async fn a_zip_bomb_entry_is_skipped_and_an_upload_over_the_limit_is_413() {
    let mut server = start_server(&fixture_models(), Limits::default()).await;
    // 100 MB of zeros compresses to about 100 KB; entries over the per-file limit are skipped.
    let bomb = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for i in 0..3 {
            zip.start_file(format!("red/{i}.png"), options).unwrap();
            zip.write_all(&png(2, i)).unwrap();
            zip.start_file(format!("blue/{i}.png"), options).unwrap();
            zip.write_all(&png(0, i)).unwrap();
        }
        zip.start_file("red/bomb.png", options).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    assert!(bomb.len() < 2 << 20, "the bomb is small: {}", bomb.len());
    let response = upload(&server.url, bomb).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!(dataset["images"], 6);
    let bomb =
        dataset["report"]["rejected"].as_array().unwrap().iter().find(|r| r["path"] == "red/bomb.png").unwrap().clone();
    assert!(bomb["reason"].as_str().unwrap().contains("over the limit"), "{bomb}");

    // Uploads over --max-upload-bytes are 413.
    server.state.datasets.max_upload_bytes = 10_000;
    let small_limit = serve_app(server.state.clone()).await;
    expect_problem(upload(&small_limit, vec![0u8; 50_000]).await, 413).await;
}

#[tokio::test]
async fn an_upload_that_would_fill_the_disk_is_507_and_writes_nothing() {
    let mut server = start_server(&fixture_models(), Limits::default()).await;
    let archive = common::datasets::class_folder_zip("flowers", 3, 5);
    // A reserve over the disk's free space: any upload would cross it.
    let free = fs4::available_space(server.state.blobs.root()).unwrap();
    server.state.datasets.min_free_disk_bytes = free + (1 << 40);
    let tight = serve_app(server.state.clone()).await;
    let body = expect_problem(upload(&tight, archive.clone()).await, 507).await;
    assert_eq!(body["type"], "urn:graft:problem:insufficient-storage");
    assert!(body["detail"].as_str().unwrap().contains("--min-free-disk-bytes"), "{body}");
    let list: Value = client().get(format!("{tight}/v1/datasets")).send().await.unwrap().json().await.unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty(), "{list}");
    assert!(server.state.blobs.list("images").unwrap().is_empty());
    assert_eq!(std::fs::read_dir(server.state.blobs.root().join(".tmp")).unwrap().count(), 0, "nothing staged");

    // With room for it, the same upload goes through.
    server.state.datasets.min_free_disk_bytes = 0;
    let roomy = serve_app(server.state.clone()).await;
    assert_eq!(upload(&roomy, archive).await.status(), 201);
}

/// A `width`×`height` picture whose pixels depend on `seed`, so that each is distinct content.
fn picture(width: u32, height: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([seed.wrapping_mul(37), (x * 5) as u8, ((y * 7) as u8) ^ seed])
    })
}

fn jpeg_of(width: u32, height: u32, seed: u8) -> Vec<u8> {
    encode(&picture(width, height, seed), ImageFormat::Jpeg)
}

fn png_of(width: u32, height: u32, seed: u8) -> Vec<u8> {
    encode(&picture(width, height, seed), ImageFormat::Png)
}

fn zip_of(files: Vec<(&str, Vec<u8>)>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, bytes) in files {
        zip.start_file(path, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A Pascal VOC file as LabelImg writes it.
async fn upload_with_annotations(url: &str, bytes: Vec<u8>, annotations: Option<&str>) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new();
    if let Some(annotations) = annotations {
        form = form.text("annotations", annotations.to_owned());
    }
    form = form.part("archive", reqwest::multipart::Part::bytes(bytes).file_name("upload.zip")).text("seed", "7");
    client().post(format!("{url}/v1/datasets")).multipart(form).send().await.unwrap()
}

/// Each stored item's class index and box, by path.
async fn stored_boxes(server: &TestServer, id: &str) -> std::collections::BTreeMap<String, (i64, Option<[f64; 4]>)> {
    server.state.db.dataset_items(id).await.unwrap().into_iter().map(|i| (i.path, (i.class_idx, i.bbox))).collect()
}

fn class_names(dataset: &Value) -> Vec<&str> {
    dataset["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

fn reasons_for<'a>(report: &'a Value, path: &str) -> Vec<&'a str> {
    report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == path)
        .map(|r| r["reason"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn voc_files_make_a_box_dataset_and_bad_boxes_are_reported() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let archive = zip_of(vec![
        ("pets/images/cat1.jpg", jpeg_of(48, 32, 1)),
        ("pets/images/dog1.png", png_of(40, 40, 2)),
        ("pets/images/dog2.jpg", jpeg_of(64, 48, 3)),
        ("pets/images/far.png", png_of(32, 32, 4)),
        ("pets/images/nobox.png", png_of(32, 32, 5)),
        ("pets/images/size.png", png_of(30, 20, 6)),
        ("pets/annotations/cat1.xml", voc_xml("cat1.jpg", (48, 32), &[("cat", [4, 4, 30, 28])])),
        // Two boxes: the dog's 30×30 beats the cat's 10×10.
        (
            "pets/annotations/dog1.xml",
            voc_xml("dog1.png", (40, 40), &[("cat", [0, 0, 10, 10]), ("dog", [5, 5, 35, 35])]),
        ),
        // Runs 6 pixels past the right edge: clipped to x_max 64.
        ("pets/annotations/dog2.xml", voc_xml("dog2.jpg", (64, 48), &[("dog", [10, 8, 70, 40])])),
        ("pets/annotations/far.xml", voc_xml("far.png", (32, 32), &[("cat", [40, 40, 50, 50])])),
        ("pets/annotations/size.xml", voc_xml("size.png", (20, 30), &[("cat", [1, 1, 10, 10])])),
        ("pets/annotations/ghost.xml", voc_xml("ghost.jpg", (32, 32), &[("dog", [1, 1, 10, 10])])),
    ]);
    let response = upload_with_annotations(&server.url, archive, None).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!(dataset["task"], "localize", "{dataset}");
    assert_eq!(dataset["images"], 3);
    assert_eq!(class_names(&dataset), ["cat", "dog"]);
    let report = &dataset["report"];
    assert_eq!(report["annotations"], "voc");
    assert_eq!(report["boxes_clipped"], 1);
    assert_eq!(report["images_with_several_boxes"], 1);
    assert!(
        report["warnings"].as_array().unwrap().iter().any(|w| w == "1 image has several boxes; the largest is used")
    );
    assert_eq!(report["files_seen"], 12);

    assert_eq!(reasons_for(report, "pets/images/nobox.png"), ["no box annotation for this image"]);
    let far = reasons_for(report, "pets/images/far.png");
    assert!(far.len() == 1 && far[0].contains("entirely outside the 32×32 image"), "{far:?}");
    let size = reasons_for(report, "pets/images/size.png");
    assert!(size.len() == 1 && size[0].contains("20×30") && size[0].contains("30×20"), "{size:?}");
    // Annotation files are not rejected images.
    assert!(report["rejected"].as_array().unwrap().iter().all(|r| !r["path"].as_str().unwrap().ends_with(".xml")));

    let problems = report["annotation_problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["file"] == "pets/annotations/ghost.xml"
            && p["reason"].as_str().unwrap().contains("\"ghost.jpg\", which is not in the upload")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["file"] == "pets/annotations/dog2.xml" && p["reason"].as_str().unwrap().contains("clipped")),
        "{problems:?}"
    );

    let id = dataset["id"].as_str().unwrap();
    let items = stored_boxes(&server, id).await;
    assert_eq!(
        items,
        [
            ("pets/images/cat1.jpg".to_owned(), (0, Some([4.0, 4.0, 30.0, 28.0]))),
            ("pets/images/dog1.png".to_owned(), (1, Some([5.0, 5.0, 35.0, 35.0]))),
            ("pets/images/dog2.jpg".to_owned(), (1, Some([10.0, 8.0, 64.0, 40.0]))),
        ]
        .into_iter()
        .collect()
    );
    // The description reads the same later.
    let again: Value =
        client().get(format!("{}/v1/datasets/{id}", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["task"], "localize");
    assert_eq!(again["report"]["boxes_clipped"], 1);
}

#[tokio::test]
async fn csv_and_coco_boxes_and_class_folders_side_by_side() {
    let server = start_server(&fixture_models(), Limits::default()).await;

    // A TensorFlow-style CSV naming images by archive path, path below the shared
    // folder, and bare file name.
    let csv = "filename,width,height,class,xmin,ymin,xmax,ymax\n\
               photos/red1.png,40,30,red,2,3,20,25\n\
               red2.jpg,36,36,red,0,0,18,18\n\
               blue1.png,50,40,blue,10,10,45,35\n";
    let archive = zip_of(vec![
        ("photos/red1.png", png_of(40, 30, 11)),
        ("photos/red2.jpg", jpeg_of(36, 36, 12)),
        ("photos/blue1.png", png_of(50, 40, 13)),
        ("labels.csv", csv.as_bytes().to_vec()),
    ]);
    let response = upload_with_annotations(&server.url, archive, None).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!((dataset["task"].as_str(), dataset["images"].as_i64()), (Some("localize"), Some(3)), "{dataset}");
    assert_eq!(class_names(&dataset), ["blue", "red"]);
    assert_eq!(dataset["report"]["annotations"], "csv");
    assert_eq!(dataset["report"]["boxes_clipped"], 0);
    assert_eq!(
        stored_boxes(&server, dataset["id"].as_str().unwrap()).await,
        [
            ("photos/blue1.png".to_owned(), (0, Some([10.0, 10.0, 45.0, 35.0]))),
            ("photos/red1.png".to_owned(), (1, Some([2.0, 3.0, 20.0, 25.0]))),
            ("photos/red2.jpg".to_owned(), (1, Some([0.0, 0.0, 18.0, 18.0]))),
        ]
        .into_iter()
        .collect()
    );

    // COCO, named in the form; bbox is [x, y, width, height].
    let coco = r#"{
        "images": [
            {"id": 1, "file_name": "images/a.png", "width": 60, "height": 40},
            {"id": 2, "file_name": "images/b.png", "width": 30, "height": 30},
            {"id": 3, "file_name": "c.jpg", "width": 44, "height": 33}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 15, 30]},
            {"id": 12, "image_id": 3, "category_id": 2, "bbox": [1.5, 2.5, 10, 10]}
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    }"#;
    let archive = zip_of(vec![
        ("coco/images/a.png", png_of(60, 40, 21)),
        ("coco/images/b.png", png_of(30, 30, 22)),
        ("coco/images/c.jpg", jpeg_of(44, 33, 23)),
        ("coco/instances.json", coco.as_bytes().to_vec()),
    ]);
    let response = upload_with_annotations(&server.url, archive, Some("coco")).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!((dataset["task"].as_str(), dataset["images"].as_i64()), (Some("localize"), Some(3)), "{dataset}");
    assert_eq!(class_names(&dataset), ["cat", "dog"]);
    assert_eq!(dataset["report"]["annotations"], "coco");
    assert_eq!(dataset["report"]["top_folder"], "coco");
    assert_eq!(
        stored_boxes(&server, dataset["id"].as_str().unwrap()).await,
        [
            ("coco/images/a.png".to_owned(), (0, Some([5.0, 5.0, 25.0, 15.0]))),
            ("coco/images/b.png".to_owned(), (1, Some([0.0, 0.0, 15.0, 30.0]))),
            ("coco/images/c.jpg".to_owned(), (1, Some([1.5, 2.5, 11.5, 12.5]))),
        ]
        .into_iter()
        .collect()
    );

    // Class folders: as before, with no boxes.
    let dataset = upload_dataset(&server.url, common::datasets::class_folder_zip("flowers", 3, 5), "flowers").await;
    assert_eq!(dataset["task"], "classify");
    assert_eq!(dataset["report"]["annotations"], Value::Null);
    assert_eq!(dataset["report"]["boxes_clipped"], 0);
    assert_eq!(dataset["report"]["images_with_several_boxes"], 0);
    assert!(dataset["report"]["annotation_problems"].as_array().unwrap().is_empty());
    let items = stored_boxes(&server, dataset["id"].as_str().unwrap()).await;
    assert_eq!(items.len(), 12);
    assert!(items.values().all(|(_, bbox)| bbox.is_none()));
}

#[tokio::test]
async fn an_unknown_annotation_format_is_422() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let archive = zip_of(vec![("a/1.png", png_of(8, 8, 1)), ("b/2.png", png_of(8, 8, 2))]);
    let body = expect_problem(upload_with_annotations(&server.url, archive, Some("yolo")).await, 422).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("\"yolo\"") && detail.contains("voc, via-csv, via-json, coco, csv"), "{detail}");
    // With imports off (the default), a JSON import is refused before its body is read.
    let response = client()
        .post(format!("{}/v1/datasets", server.url))
        .json(&serde_json::json!({"path": "somewhere", "annotations": "pascal"}))
        .send()
        .await
        .unwrap();
    let body = expect_problem(response, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("imports from the server's disk are off"), "{body}");
    let list: Value = client().get(format!("{}/v1/datasets", server.url)).send().await.unwrap().json().await.unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty());
}

/// Three images in each of two class folders, and a CSV of `rows` box rows that are all
/// invalid (xmax below xmin), each naming a different image.
fn class_folders_with_bad_csv(rows: usize) -> (Vec<u8>, usize) {
    let csv: String = (0..rows).map(|i| format!("photo_{i:07}.jpg,cat,30,0,10,5\n")).collect();
    let csv_bytes = csv.len();
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    for (i, path) in ["set/red/0.png", "set/red/1.png", "set/red/2.png"].into_iter().enumerate() {
        files.push((path, png(2, i as u64)));
    }
    for (i, path) in ["set/blue/0.png", "set/blue/1.png", "set/blue/2.png"].into_iter().enumerate() {
        files.push((path, png(0, i as u64)));
    }
    // Last, so that the images are stored before the limit is reached.
    files.push(("labels.csv", csv.into_bytes()));
    (zip_of(files), csv_bytes)
}

#[tokio::test]
async fn annotation_files_over_the_upload_limit_are_refused_and_leave_nothing() {
    let mut server = start_server(&fixture_models(), Limits::default()).await;
    // "photo_0000000.jpg,cat,30,0,10,5\n" is 32 bytes: 2 000 rows are 64 000.
    let (archive, csv_bytes) = class_folders_with_bad_csv(2000);
    assert_eq!(csv_bytes, 64_000);
    server.state.datasets.max_annotation_bytes = 63_999;
    let url = serve_app(server.state.clone()).await;
    let body = expect_problem(upload(&url, archive.clone()).await, 422).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("more than 63999 bytes") && detail.contains("--max-annotation-bytes"), "{body}");
    let list: Value = client().get(format!("{url}/v1/datasets")).send().await.unwrap().json().await.unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty(), "no rows: {list}");
    assert!(server.state.blobs.list("images").unwrap().is_empty(), "the images stored before the CSV are removed");

    // At the limit, the same upload is a class-folder dataset with a bounded report.
    server.state.datasets.max_annotation_bytes = 64_000;
    let url = serve_app(server.state.clone()).await;
    let response = upload(&url, archive).await;
    assert_eq!(response.status(), 201);
    let dataset: Value = response.json().await.unwrap();
    assert_eq!((dataset["task"].as_str(), dataset["images"].as_i64()), (Some("classify"), Some(6)));
    let report = &dataset["report"];
    assert_eq!(report["annotation_problems"].as_array().unwrap().len(), 100);
    assert_eq!(report["annotation_problems_total"], 2000);
    assert_eq!(
        report["annotation_problems"][99]["reason"],
        "row 100 (photo_0000099.jpg): xmax 10 is not greater than xmin 30"
    );
}

#[tokio::test]
async fn a_report_of_a_hundred_thousand_problems_stays_small() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let (archive, _) = class_folders_with_bad_csv(100_000);
    let response = upload(&server.url, archive).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let text = client().get(format!("{}/v1/datasets", server.url)).send().await.unwrap().text().await.unwrap();
    // 100 problems of about 110 bytes each, plus the classes: well under the 256 KiB bound.
    assert!(text.len() < 20_000, "{} bytes", text.len());
    let list: Value = serde_json::from_str(&text).unwrap();
    let report = &list["datasets"][0]["report"];
    assert_eq!(list["datasets"][0]["id"], id.as_str());
    assert_eq!(report["annotation_problems_total"], 100_000);
    assert_eq!((report["rejected_total"].as_u64(), report["duplicates_total"].as_u64()), (Some(0), Some(0)));
}
