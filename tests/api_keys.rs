//! API keys over real HTTP: every protected route refuses a missing or wrong key with a
//! 401 problem and `WWW-Authenticate: Bearer`, accepts the right one, and leaves health
//! checks (and inference, unless private) open.

mod common;

use std::sync::Arc;

use common::*;
use graft::api::auth::ApiKeys;
use graft::config::Limits;
use reqwest::Method;

const KEY: &str = "s3cret-key";

/// Every (method, path) that needs a key once keys are configured.
const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/nope"),
    ("DELETE", "/v1/datasets/nope"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/nope"),
    ("GET", "/v1/jobs/nope/events"),
    ("POST", "/v1/jobs/nope/cancel"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/nope"),
    ("DELETE", "/v1/models/nope"),
    ("GET", "/v1/models/nope/onnx"),
];

const INFERENCE: &[(&str, &str)] = &[("POST", "/v1/models/nope/classify"), ("POST", "/v1/models/nope/localize")];

/// A server whose state has `keys`; the `TestServer` is returned to keep its data folder alive.
async fn server_with(keys: ApiKeys) -> (TestServer, String) {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let mut state = server.state.clone();
    state.auth = Arc::new(keys);
    let url = serve_app(state).await;
    (server, url)
}

async fn send(url: &str, method: &str, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client().request(Method::from_bytes(method.as_bytes()).unwrap(), format!("{url}{path}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    request.send().await.unwrap()
}

async fn expect_unauthorized(response: reqwest::Response, what: &str) {
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
    let body = expect_problem(response, 401).await;
    assert_eq!(body["type"], "urn:graft:problem:unauthorized", "{what}");
}

#[tokio::test]
async fn protected_routes_need_the_right_key() {
    let (_server, url) = server_with(ApiKeys::new([KEY.to_owned()], false)).await;
    for &(method, path) in PROTECTED {
        expect_unauthorized(send(&url, method, path, None).await, &format!("{method} {path} no key")).await;
        expect_unauthorized(send(&url, method, path, Some("wrong")).await, &format!("{method} {path} wrong")).await;
        let ok = send(&url, method, path, Some(KEY)).await;
        assert_ne!(ok.status().as_u16(), 401, "{method} {path} with the right key");
    }
    // Malformed: not a bearer scheme.
    let basic = client().get(format!("{url}/v1/models")).header("authorization", "Basic abc").send().await.unwrap();
    expect_unauthorized(basic, "basic auth").await;
    for path in ["/healthz", "/readyz"] {
        assert_ne!(send(&url, "GET", path, None).await.status().as_u16(), 401, "{path}");
    }
    for &(method, path) in INFERENCE {
        assert_ne!(send(&url, method, path, None).await.status().as_u16(), 401, "{path} is open by default");
    }
}

#[tokio::test]
async fn private_inference_needs_a_key() {
    let (_server, url) = server_with(ApiKeys::new([KEY.to_owned()], true)).await;
    for &(method, path) in INFERENCE {
        expect_unauthorized(send(&url, method, path, None).await, path).await;
        assert_ne!(send(&url, method, path, Some(KEY)).await.status().as_u16(), 401, "{path}");
    }
    assert_eq!(send(&url, "GET", "/healthz", None).await.status().as_u16(), 200);
}

#[tokio::test]
async fn no_keys_means_open() {
    let (_server, url) = server_with(ApiKeys::default()).await;
    for &(method, path) in PROTECTED.iter().chain(INFERENCE) {
        assert_ne!(send(&url, method, path, None).await.status().as_u16(), 401, "{method} {path}");
    }
}

#[tokio::test]
async fn each_caller_has_its_own_rate_and_health_checks_have_none() {
    let limits = Limits { rate_limit_per_second: 1, rate_limit_burst: 3, ..Limits::default() };
    let server = start_server(&fixture_models(), limits).await;
    let mut state = server.state.clone();
    state.auth = Arc::new(ApiKeys::new(["k1".to_owned(), "k2".to_owned()], false));
    let url = serve_app(state).await;

    // k1's burst of three, then 429 with a Retry-After of at least a second.
    for i in 0..3 {
        assert_eq!(send(&url, "GET", "/v1/datasets", Some("k1")).await.status(), 200, "request {i}");
    }
    let over = send(&url, "GET", "/v1/datasets", Some("k1")).await;
    let retry: u64 = over.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let body = expect_problem(over, 429).await;
    assert_eq!(body["type"], "urn:graft:problem:rate-limited");

    // Another key has its own bucket; a wrong key is refused by the key check, not counted.
    assert_eq!(send(&url, "GET", "/v1/datasets", Some("k2")).await.status(), 200);
    expect_unauthorized(send(&url, "GET", "/v1/datasets", Some("nope")).await, "a wrong key").await;
    // Open inference is counted by peer address, apart from the keys.
    let classify = post_image(&url, "tiny_nchw", "image/png", "img0.png").await;
    assert_eq!(classify.status(), 200);
    // Health checks are never limited.
    for _ in 0..10 {
        assert_eq!(send(&url, "GET", "/healthz", None).await.status(), 200);
    }
    // A second later k1 has a token again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(send(&url, "GET", "/v1/datasets", Some("k1")).await.status(), 200);
}
