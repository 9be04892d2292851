//! The API room: HTTP only. Routes, request extraction, JSON shapes and the
//! mapping of domain errors to problem+json. Everything else is called from here.

mod admission;
pub mod auth;
mod body_limits;
mod classify;
mod dataset_items;
mod datasets;
mod deadline;
mod export;
mod health;
mod images;
mod jobs;
mod localize;
mod models;
mod observe;
pub mod openapi;
mod pagination;
mod problem;
mod rate_limit;
mod server;
mod v2;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{DatasetSettings, Limits};
use crate::serving::ModelRegistry;
use crate::store::{BlobStore, Db};

pub use problem::Problem;
pub use server::{ConnectionLimits, Wire, serve};
/// The Open Inference Protocol's gRPC messages, service and client (proto/grpc_service.proto).
pub use v2::grpc::proto as grpc_proto;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub limits: Limits,
    pub db: Db,
    pub blobs: BlobStore,
    pub datasets: DatasetSettings,
    /// Wakes this process's idle workers when a job is queued.
    pub wake_workers: Arc<Notify>,
    /// API keys; the default has none, and then everything is open.
    pub auth: Arc<auth::ApiKeys>,
    /// Turns true when the process begins to stop: event streams end with a final event,
    /// and workers hand their jobs back.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The whole HTTP surface, ready to serve or to test with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    crate::telemetry::install();
    let body_limit = state.limits.max_body_bytes;
    let (routes, spec) = routes(&state.limits, &state.datasets).split_for_parts();
    routes
        // The description and its browser; open like the health checks.
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::finish(spec)))
        // The web console, a client of the routes above; open like the description.
        .merge(crate::console::router())
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(DefaultBodyLimit::max(body_limit))
        // A body that stops sending for this long fails its request rather than holding it.
        .layer(RequestBodyTimeoutLayer::new(std::time::Duration::from_secs(
            state.limits.body_read_timeout_seconds.max(1),
        )))
        .layer(Extension(admission::Admission::new(&state.limits)))
        .layer(Extension(dataset_items::ThumbnailCache::new(dataset_items::THUMBNAIL_CACHE_BYTES)))
        .layer(CatchPanicLayer::custom(problem::panic_to_problem))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Failures are logged where they are understood (problem.rs logs 500s); a 503 from
        // /readyz while models load is expected and must not read as an error. Every line
        // logged while a request is handled carries its id, through the span.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        // The client's `x-request-id`, or a new UUID; the answer carries it back.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Under /v2 every refusal above is the protocol's `{"error": …}`.
        .layer(axum::middleware::from_fn(v2::protocol_errors))
        // Outermost: it sees every answer, the key check's and the rate limit's included.
        .layer(axum::middleware::from_fn(observe::record_request))
        .with_state(state)
}

/// A worker's HTTP surface: the health checks and the metrics, nothing else.
pub fn probes(state: AppState) -> Router {
    let (routes, _) = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .split_for_parts();
    routes
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(CatchPanicLayer::custom(problem::panic_to_problem))
        .layer(axum::middleware::from_fn(observe::record_request))
        .with_state(state)
}

/// Every route with its own limits, and the description of each (`openapi`): a handler is
/// registered only through `routes!`, which reads its `#[utoipa::path]`.
fn routes(limits: &Limits, datasets: &DatasetSettings) -> OpenApiRouter<AppState> {
    let body_limit = limits.max_body_bytes;
    let upload_limit = usize::try_from(datasets.max_upload_bytes).unwrap_or(usize::MAX);
    let json_limit = limits.max_json_bytes;
    let announced = |any: usize, json: Option<usize>| {
        axum::middleware::from_fn_with_state(
            body_limits::AnnouncedLimit { any, json },
            body_limits::refuse_announced_oversize,
        )
    };
    // Dataset uploads get their own, larger body limit, and job submissions their JSON one
    // (the inner layer wins); a Content-Length over a route's limit is refused unread.
    let uploads = OpenApiRouter::new()
        .routes(routes!(datasets::create_dataset, datasets::list_datasets))
        .layer(DefaultBodyLimit::max(upload_limit))
        .route_layer(announced(upload_limit, Some(json_limit)));
    let deadline = axum::middleware::from_fn_with_state(
        std::time::Duration::from_secs(limits.request_timeout_seconds.max(1)),
        deadline::enforce_deadline,
    );
    let submissions = OpenApiRouter::new()
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .layer(DefaultBodyLimit::max(json_limit))
        .route_layer(announced(json_limit, None))
        .route_layer(deadline.clone());
    // An event stream lives until its job ends (at most an hour): no request deadline.
    let streams = OpenApiRouter::new().routes(routes!(jobs::job_events));
    let (v2_health, v2_models) = v2::routes();
    let api = OpenApiRouter::new()
        .merge(v2_models)
        .routes(routes!(datasets::get_dataset, datasets::delete_dataset))
        .routes(routes!(dataset_items::list_items))
        .routes(routes!(dataset_items::thumbnail))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::misclassified))
        .routes(routes!(models::list_models))
        .routes(routes!(models::get_model, models::delete_model))
        .routes(routes!(export::download_onnx))
        .routes(routes!(models::load_model))
        .routes(routes!(models::unload_model))
        // PUT too, so that `curl -T photo.jpg` (an upload with PUT) works as well as POST.
        .routes(routes!(classify::classify))
        .routes(routes!(localize::localize))
        .route_layer(announced(body_limit, None))
        .route_layer(deadline)
        .merge(uploads)
        .merge(submissions)
        .merge(streams);
    // Inside the key check (it names the caller), outside nothing else: health checks are not limited.
    let api = match rate_limit::config(limits.rate_limit_per_second, limits.rate_limit_burst) {
        Some(config) => {
            if tokio::runtime::Handle::try_current().is_ok() {
                rate_limit::spawn_pruning(config.clone());
            }
            api.layer(rate_limit::layer(&config))
        }
        None => api,
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .merge(v2_health)
        .merge(api)
}

/// The span of one request: its id (see `SetRequestIdLayer`), method and path.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path())
}
