//! The OTLP span exporter (the `otlp` cargo feature): `graft --otlp-endpoint` sends the
//! request span, with the client's request id, and a job's span with one span per phase,
//! to a collector over OTLP/HTTP, and flushes
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
use common::datasets::class_folder_zip;
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

/// The parts of opentelemetry-proto's `ExportTraceServiceRequest` this test reads, with
/// their field numbers (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto).
mod otlp_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
}

use otlp_proto::{ExportTraceServiceRequest, KeyValue, Span};

/// The string value of `key` among `attributes`.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).map(|v| v.string_value.as_str())
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
    // A job: its span and one span per phase.
    let dataset = upload_dataset(&url, class_folder_zip("shapes", 12, 3), "shapes").await;
    let job = submit_job(&url, serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw"})).await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_for_job(&url, &job_id, Duration::from_secs(120)).await["state"], "succeeded");
    // The batch is sent every few seconds, or at exit: SIGTERM makes graft stop and flush.
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "no export reached the collector");
    assert!(received.iter().all(|(kind, _)| kind == "application/x-protobuf"), "{:?}", received[0].0);
    let exports: Vec<ExportTraceServiceRequest> =
        received.iter().map(|(_, body)| prost::Message::decode(body.as_ref()).unwrap()).collect();
    let service = exports[0].resource_spans[0].resource.as_ref().map(|r| attribute(&r.attributes, "service.name"));
    assert_eq!(service, Some(Some("graft")));
    let spans: Vec<&Span> =
        exports.iter().flat_map(|e| &e.resource_spans).flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();

    let request = spans
        .iter()
        .find(|s| s.name == "request" && attribute(&s.attributes, "id") == Some("otlp-trace-me-7"))
        .expect("the classify request's span, with the client's request id");
    assert_eq!(attribute(&request.attributes, "path"), Some("/v1/models/tiny_nchw/classify"));
    assert_eq!(attribute(&request.attributes, "method"), Some("POST"));

    let job = spans
        .iter()
        .find(|s| s.name == "job" && attribute(&s.attributes, "id") == Some(job_id.as_str()))
        .expect("the job's span");
    let phases: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "phase" && s.parent_span_id == job.span_id && s.trace_id == job.trace_id)
        .map(|s| {
            assert_eq!(attribute(&s.attributes, "job"), Some(job_id.as_str()));
            attribute(&s.attributes, "name").unwrap()
        })
        .collect();
    for phase in ["features", "training", "evaluating"] {
        assert!(phases.contains(&phase), "a {phase} span within the job's: {phases:?}");
    }
}
