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
