//! `graft models pull` against a local HTTP server and file:// URLs: checksum verified,
//! the file appears whole or not at all.

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use graft::zoo::{Manifest, PullError, PullOutcome, pull_model};
use sha2::{Digest, Sha256};

const PAYLOAD_LEN: usize = 3 * 1024 * 1024 + 17;

fn payload() -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| (i * 31 % 251) as u8).collect()
}

fn manifest(dir: &Path, sha256: &str, url: Option<&str>) -> Manifest {
    std::fs::write(dir.join("labels.tsv"), "index\tid\tname\n0\ta\tcat\n").unwrap();
    let url = url.map(|u| format!("url = {u:?}\n")).unwrap_or_default();
    let text = format!(
        "file = \"model.onnx\"\n{url}sha256 = \"{sha256}\"\n[input]\nname = \"x\"\nlayout = \"NCHW\"\nheight = 8\nwidth = 8\nresize = \"stretch\"\nnormalize = \"tf\"\n[output]\nname = \"y\"\nkind = \"logits\"\nlabels = \"labels.tsv\"\n"
    );
    std::fs::write(dir.join("m.toml"), text).unwrap();
    Manifest::load(&dir.join("m.toml")).unwrap()
}

/// Serves the payload, a 404, and a body that breaks off half-way.
async fn serve() -> String {
    let app = Router::new().route("/model.onnx", get(|| async { payload() })).route(
        "/broken.onnx",
        get(|| async {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                vec![Ok(payload()[..1024 * 1024].to_vec()), Err(std::io::Error::other("connection reset"))];
            Body::from_stream(futures_util::stream::iter(chunks))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "m.toml" && n != "labels.tsv")
        .collect()
}

fn sha_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn http_pull_verifies_and_is_atomic() {
    let base = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let good = sha_of(&payload());

    let m = manifest(dir.path(), &good, Some(&format!("{base}/model.onnx")));
    let (path, outcome) = pull_model(&m, None, false, false).await.unwrap();
    assert_eq!(outcome, PullOutcome::Downloaded { bytes: PAYLOAD_LEN as u64, sha256: good.clone() });
    assert_eq!(std::fs::read(&path).unwrap(), payload());
    assert_eq!(leftovers(dir.path()), ["model.onnx"]);
    // A second pull finds the file with the right checksum and downloads nothing.
    assert_eq!(pull_model(&m, None, false, false).await.unwrap().1, PullOutcome::AlreadyPresent);

    // A wrong checksum writes nothing.
    let other = tempfile::tempdir().unwrap();
    let bad = manifest(other.path(), &"0".repeat(64), Some(&format!("{base}/model.onnx")));
    let err = pull_model(&bad, None, false, false).await.unwrap_err();
    assert!(matches!(err, PullError::Checksum { ref actual, .. } if *actual == good), "{err}");
    assert!(leftovers(other.path()).is_empty(), "{:?}", leftovers(other.path()));

    // A 404 and a body that breaks off write nothing either.
    for path in ["missing.onnx", "broken.onnx"] {
        let err = pull_model(&bad, Some(&format!("{base}/{path}")), false, false).await.unwrap_err();
        assert!(matches!(err, PullError::Download { .. }), "{path}: {err}");
        assert!(leftovers(other.path()).is_empty(), "{path}: {:?}", leftovers(other.path()));
    }
}

#[tokio::test]
async fn file_urls_and_missing_urls() {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("weights.onnx");
    std::fs::write(&file, payload()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &sha_of(&payload()), None);

    let err = pull_model(&m, None, false, false).await.unwrap_err();
    assert!(err.to_string().contains("--url"), "{err}");
    let err = pull_model(&m, Some("ftp://example/x"), false, false).await.unwrap_err();
    assert!(matches!(err, PullError::Scheme(_)), "{err}");

    let url = format!("file://{}", file.display());
    let (path, _) = pull_model(&m, Some(&url), false, false).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), payload());
}

#[test]
fn the_cli_pulls_from_a_file_url() {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("weights.onnx");
    std::fs::write(&file, payload()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &sha_of(&payload()), None);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["models", "pull", "m", "--url", &format!("file://{}", file.display())])
        .arg("--model-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("{PAYLOAD_LEN} bytes")), "{stdout}");
    assert_eq!(std::fs::read(dir.path().join("model.onnx")).unwrap(), payload());
}
