//! Liveness, readiness and the Prometheus metrics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `not ready` while a configured model is loading or has failed.
    #[schema(example = "ready")]
    status: &'static str,
    /// Each configured model's state: `loading`, `ready`, `failed` or `unloaded`.
    models: BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Liveness)))]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// 200 only when every configured model is loaded and has answered its warm-up run.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every configured model is loaded and warmed up (unloaded ones are not counted)", body = Readiness),
        (status = 503, description = "A configured model is loading or failed to load", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let models = state
        .registry
        .list()
        .into_iter()
        .map(|(manifest, model)| (manifest.name.clone(), model.name().to_owned()))
        .collect();
    if state.registry.all_ready() {
        (StatusCode::OK, Json(Readiness { status: "ready", models }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status: "not ready", models }))
    }
}

/// The process's metrics in Prometheus' text format (`crate::telemetry`; README.md lists
/// them). Open like the health checks: scrapers carry no key. The jobs by state are read
/// from the database at each scrape, so every replica reports the whole queue.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format (README.md lists every metric)",
        body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")))]
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
