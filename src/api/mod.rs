//! The API room: HTTP only. Routes, request extraction, JSON shapes and the
//! mapping of domain errors to problem+json. Everything else is called from here.

mod classify;
mod health;
mod images;
mod models;
mod problem;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::Limits;
use crate::zoo::ModelRegistry;

pub use problem::Problem;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub limits: Limits,
}

/// The whole HTTP surface, ready to serve or to test with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model}", get(models::get_model))
        // PUT too, so that `curl -T photo.jpg` (an upload with PUT) works as well as POST.
        .route("/v1/models/{model}/classify", post(classify::classify).put(classify::classify))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(problem::panic_to_problem))
        // Failures are logged where they are understood (problem.rs logs 500s); a 503 from
        // /readyz while models load is expected and must not read as an error.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)))
        .with_state(state)
}
