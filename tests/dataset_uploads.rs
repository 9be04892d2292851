//! Dataset uploads over HTTP with hostile or broken archives: each ends in a clear
//! error or a clear skip report, a failed upload leaves no rows and no blobs, and
//! nothing is written outside the storage root.

mod common;

use std::io::Write;

use common::datasets::{class_image, encode};
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
    assert_eq!(files_named(outside, "evil"), 0);
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
    for (name, bytes, needle) in [
        ("truncated tar", truncated, "corrupt or truncated"),
        ("empty zip", empty_zip, "no usable files"),
        ("only a text file", only_text, "rejected"),
        ("one class", one_class, "at least two classes"),
        ("not an archive", b"just some text".to_vec(), "not a zip, tar or tar.gz"),
    ] {
        let body = expect_problem(upload(&server.url, bytes).await, 422).await;
        assert!(body["detail"].as_str().unwrap().contains(needle), "{name}: {body}");
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
