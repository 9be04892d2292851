//! The OpenAPI description: the committed `docs/openapi.json` is what the code describes,
//! the server serves it and Swagger UI from the binary, every described operation is
//! routed, every routed method is described, and every answer the server gives to the
//! requests below is one the description lists for its operation.

mod common;

use common::*;
use graft::config::Limits;
use serde_json::Value;

const REGENERATE: &str = "run `cargo run -- openapi > docs/openapi.json` (or `make openapi`) and commit it";

fn committed() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).expect("docs/openapi.json")
}

#[test]
fn the_committed_description_is_the_codes() {
    let generated = graft::api::openapi::spec_json();
    let committed = committed();
    if generated != committed {
        let first = generated.lines().zip(committed.lines()).position(|(a, b)| a != b);
        panic!("docs/openapi.json differs from the code (first at line {:?}): {REGENERATE}", first.map(|l| l + 1));
    }
    let spec: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
}

/// Handlers are registered only through `utoipa_axum::routes!`, which reads each one's
/// `#[utoipa::path]`: a plain `.route(…)` would serve a path the description does not have.
#[test]
fn every_route_is_registered_with_its_description() {
    let mut folders = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api"))];
    let mut files = Vec::new();
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { folders.push(path) } else { files.push(path) }
        }
    }
    assert!(files.len() > 20, "{files:?}");
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        // Unit tests build routers of their own.
        let source = source.split("#[cfg(test)]").next().unwrap();
        // The one exception: the gRPC service, described by proto/grpc_service.proto.
        let source = source.replace(".route(grpc::ROUTE,", "");
        for forbidden in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !source.contains(forbidden),
                "{} registers a route with {forbidden}…): use `.routes(routes!(handler))` with a #[utoipa::path] \
                 so that the route is described",
                path.display()
            );
        }
    }
}

const METHODS: [&str; 6] = ["get", "put", "post", "delete", "patch", "head"];

/// A concrete URL for a described path: every `{param}` becomes `x`.
fn concrete(path: &str) -> String {
    path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_its_description_and_routes_every_operation() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let served: Value = client().get(format!("{url}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let committed: Value = serde_json::from_str(&committed()).unwrap();
    assert_eq!(served, committed, "/openapi.json is not docs/openapi.json: {REGENERATE}");

    // Swagger UI, from assets compiled in: the page and its script answer without a network.
    let page = client().get(format!("{url}/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let script = client().get(format!("{url}/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000, "the bundle is served whole");

    for (path, item) in served["paths"].as_object().unwrap() {
        for method in METHODS {
            let request = client().request(method.to_uppercase().parse().unwrap(), format!("{url}{}", concrete(path)));
            // An empty body: enough to reach the handler, which refuses it on its own terms.
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let described = item.get(method);
            if method == "head" && item.get("get").is_some() {
                continue; // axum answers HEAD with the GET handler
            }
            match described {
                Some(operation) => {
                    assert_ne!(status, 405, "{method} {path} is described but not routed");
                    if status != 200 || method != "get" {
                        let body = response.text().await.unwrap();
                        assert!(
                            !body.contains("there is no resource at"),
                            "{method} {path} is described but not routed"
                        );
                    }
                    assert!(
                        operation["responses"].get(status.to_string()).is_some(),
                        "{method} {path} answered {status}, which its description does not list"
                    );
                }
                None => assert_eq!(status, 405, "{method} {path} is routed but not described"),
            }
        }
    }
}

/// Each problem answer is described with the problem media type and the Problem schema.
#[test]
fn every_error_answer_is_a_described_problem() {
    let spec: Value = serde_json::from_str(&committed()).unwrap();
    let mut errors = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path} does not list 500");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    errors += 1;
                    if path.starts_with("/v2") {
                        // The protocol's `{"error": …}`, or a readiness body.
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        let schema = schema.as_str().unwrap();
                        assert!(
                            schema.ends_with("/ErrorResponse") || schema.ends_with("Ready"),
                            "{method} {path} {status}: {schema}"
                        );
                        continue;
                    }
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    // /readyz answers 503 with its readiness, not a problem.
                    if path != "/readyz" {
                        assert_eq!(schema, "#/components/schemas/Problem", "{method} {path} {status}");
                        let description = response["description"].as_str().unwrap();
                        assert!(description.contains('`'), "{method} {path} {status} names no problem type");
                    }
                }
            }
        }
    }
    assert!(errors > 50, "{errors}");
}
