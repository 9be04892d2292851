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
/// them). Open like the health checks: scrapers carry no key. The jobs by state are read
/// from the database at each scrape, so every replica reports the whole queue.
pub async fn metrics(State(state): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    match state.db.job_counts().await {
        Ok(counts) => {
            for name in crate::store::JobState::ALL.map(crate::store::JobState::as_str) {
                let n = counts.iter().find(|(state, _)| state == name).map_or(0, |(_, n)| *n);
                metrics::gauge!("graft_jobs", "state" => name).set(n as f64);
            }
        }
        Err(e) => tracing::warn!("counting jobs for /metrics failed: {e}"),
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::telemetry::render())
}
