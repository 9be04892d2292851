//! The OTLP span exporter (the `otlp` cargo feature): `graft --otlp-endpoint` sends the
//! request span, with the client's request id, to a collector over OTLP/HTTP, and flushes
//! what it still holds when it stops on SIGTERM. The collector here is a stand-in that
//! keeps what it receives; span names and attribute values travel as plain strings in the
//! protobuf, so they are looked for as bytes.
#![cfg(feature = "otlp")]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use common::*;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A collector on a free loopback port that answers every export with success.
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let keep = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: Bytes| async move {
            let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            keep.lock().unwrap().push((kind, body));
            ([("content-type", "application/x-protobuf")], Bytes::new())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_and_are_flushed_at_exit() {
    let (endpoint, received) = collector().await;
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = quiet_graft(&["--otlp-endpoint", &endpoint, "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--model-dir")
        .arg(fixture_models())
        .arg("--data-dir")
        .arg(data.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(client().get(format!("{url}/readyz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "graft did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = client()
        .post(format!("{url}/v1/models/tiny_nchw/classify"))
        .header("content-type", "image/jpeg")
        .header("x-request-id", "otlp-trace-me-7")
        .body(image("img0.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The batch is sent every few seconds, or at exit: SIGTERM makes graft stop and flush.
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "no export reached the collector");
    assert!(received.iter().all(|(kind, _)| kind == "application/x-protobuf"), "{:?}", received[0].0);
    let all: Vec<u8> = received.iter().flat_map(|(_, body)| body.to_vec()).collect();
    assert!(contains(&all, b"graft"), "the service name");
    assert!(contains(&all, b"request"), "the request span");
    assert!(contains(&all, b"otlp-trace-me-7"), "the client's request id on its span");
    assert!(contains(&all, b"/v1/models/tiny_nchw/classify"), "the request's path on its span");
}
