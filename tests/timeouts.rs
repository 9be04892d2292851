//! Time bounds over real sockets: a client that is slow to send its headers or its body
//! is cut off, and connections past --max-connections wait for a free place.

mod common;

use std::time::{Duration, Instant};

use common::*;
use graft::config::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept the connection open past {within:?}");
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test]
async fn slow_headers_and_stalled_bodies_are_cut_off() {
    let limits = Limits { header_read_timeout_seconds: 1, body_read_timeout_seconds: 1, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;

    // Headers that never end: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(host(&server.url)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: graft\r\nX-Slow: ").await.unwrap();
    let (_, took) = read_to_close(&mut slow, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "closed after the timeout, not before: {took:?}");

    // A body that stops half-way: the request fails with a problem, and the connection ends.
    let mut stalled = TcpStream::connect(host(&server.url)).await.unwrap();
    let head = "POST /v1/models/tiny_nchw/classify HTTP/1.1\r\nHost: graft\r\nContent-Type: image/png\r\n\
                Content-Length: 100000\r\n\r\n";
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[0x89, b'P', b'N', b'G']).await.unwrap();
    let (answer, took) = read_to_close(&mut stalled, Duration::from_secs(5)).await;
    let status_line = answer.lines().next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/1.1 4"), "a client error: {answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "{took:?}");

    // The server is fine afterwards.
    let response = post_image(&server.url, "tiny_nchw", "image/png", "img0.png").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_place() {
    let limits = Limits { max_connections: 2, header_read_timeout_seconds: 30, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    // Two idle connections take both places.
    let first = TcpStream::connect(host(&server.url)).await.unwrap();
    let _second = TcpStream::connect(host(&server.url)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let waiting = tokio::spawn({
        let url = server.url.clone();
        async move { client().get(format!("{url}/healthz")).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection is not served while two hold the places");
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once a place frees");
    assert_eq!(status.unwrap().unwrap(), 200);
}
