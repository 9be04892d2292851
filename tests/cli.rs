//! The `graft` binary: start-up errors that say what to do, the device choice, and a
//! graceful shutdown on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn graft() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_graft"));
    command.env("RUST_LOG", "info");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_missing_runtime_library_names_the_fix() {
    let output = graft().args(["serve", "--ort-library", "/nonexistent/libonnxruntime.so.1.31.1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `make ort`") && stderr.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{stderr}");
}

#[test]
fn cuda_that_cannot_start_is_a_start_up_error_and_auto_falls_back() {
    // The CPU build of ONNX Runtime has no CUDA provider.
    let dir = fixture_models();
    let output = graft()
        .args(["serve", "--device", "cuda", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--model-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CUDA could not be started on device 0"), "{stderr}");

    let output = graft()
        .args(["models", "check", "tiny_nchw", "--device", "auto"])
        .arg("--model-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("using the CPU"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("tiny_nchw: ok (10 classes, CPUExecutionProvider; "));
}

#[test]
fn models_check_validates_the_feature_tensors_and_the_spatial_map() {
    // tiny_spatial: 64×64 pixels, an 8×8 stride-8 convolution to 5 channels (NCHW) = the map.
    let dir = fixtures().join("spatial");
    let output = graft().args(["models", "check", "tiny_spatial"]).arg("--model-dir").arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("features pooled (5); spatial map spatial (8×8×5, NCHW))"), "{stdout}");

    // The same model with a manifest naming a map the graph does not have.
    let copy = tempfile::tempdir().unwrap();
    for name in ["tiny_spatial.onnx", "fixture_labels.tsv"] {
        std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
    }
    let manifest = std::fs::read_to_string(dir.join("tiny_spatial.toml")).unwrap();
    let spoiled = manifest.replace("spatial_features = \"spatial\"", "spatial_features = \"no_such_map\"");
    assert_ne!(spoiled, manifest);
    std::fs::write(copy.path().join("tiny_spatial.toml"), spoiled).unwrap();
    let output =
        graft().args(["models", "check", "tiny_spatial"]).arg("--model-dir").arg(copy.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no_such_map"), "{stderr}");
}

#[test]
fn a_bad_manifest_stops_start_up_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.tsv"), "index\tid\tname\n0\ta\tcat\n").unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "file = \"m.onnx\"\n[input]\nname = \"x\"\nlayout = \"NCHW\"\nheight = 8\nwidth = 8\nresize = \"crop\"\ncrop_fraction = 1.5\nnormalize = \"tf\"\n[output]\nname = \"y\"\nkind = \"logits\"\nlabels = \"labels.tsv\"\n",
    )
    .unwrap();
    let output = graft()
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--model-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.toml") && stderr.contains("input.crop_fraction"), "{stderr}");
}

#[tokio::test]
async fn serves_until_sigterm_then_exits_cleanly() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--model-dir")
        .arg(fixture_models())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client().get(format!("{url}/readyz")).send().await
            && response.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "graft did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = post_image(&url, "tiny_nhwc", "image/png", "img1.png").await;
    assert_eq!(response.status(), 200);

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("graft did not stop").unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains("shutting down") && stderr.contains("graft stopped"), "{stderr}");
}

/// `--log-format json`: one JSON object per line, and a line logged while a request is
/// handled names the request's id (the client's `x-request-id`, echoed in the answer; a new
/// UUID when the client sends none).
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["--log-format", "json", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--model-dir")
        .arg(fixture_models())
        // tower-http logs each answer at debug level, inside the request's span.
        .env("RUST_LOG", "warn,graft=info,tower_http=debug")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read as it comes, so that a full pipe never stops the server.
    let mut pipe = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await.unwrap();
        text
    });
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(client().get(format!("{url}/readyz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "graft did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = client()
        .post(format!("{url}/v1/models/tiny_nhwc/classify"))
        .header("content-type", "image/png")
        .header("x-request-id", "trace-me-42")
        .body(image("img1.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-request-id"], "trace-me-42");
    let fresh = client().get(format!("{url}/v1/models")).send().await.unwrap();
    let generated = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&generated).map(|u| u.get_version_num()), Ok(4), "{generated}");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("graft did not stop").unwrap();
    let stderr = reader.await.unwrap();
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let ours: Vec<&serde_json::Value> = lines.iter().filter(|l| l["span"]["id"] == "trace-me-42").collect();
    assert!(!ours.is_empty(), "{stderr}");
    assert!(ours.iter().all(|l| l["span"]["path"] == "/v1/models/tiny_nhwc/classify"), "{ours:?}");
    assert!(lines.iter().any(|l| l["span"]["id"] == generated.as_str()), "{stderr}");
}
