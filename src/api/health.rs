//! Liveness, readiness and the Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 only when every configured model is loaded and has answered its warm-up run.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let models: serde_json::Map<String, Value> = state
        .registry
        .list()
        .into_iter()
        .map(|(manifest, model)| (manifest.name.clone(), json!(model.name())))
        .collect();
    if state.registry.all_ready() {
        (StatusCode::OK, Json(json!({ "status": "ready", "models": models })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "models": models })))
    }
}

/// The process's metrics in Prometheus' text format (`crate::telemetry`; README.md lists
/// them). Open like the health checks: scrapers carry no key.
pub async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::telemetry::render())
}
