//! The metrics of every HTTP request: count and duration by route, model and status, and
//! each problem answer counted by its type (see `crate::telemetry`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use super::problem::ProblemType;
use crate::telemetry::UNKNOWN;

pub async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    // A model's name is a label only once the answer shows it exists: an unknown name, or a
    // request refused before its model was looked up, must not add a series.
    let model = match &route {
        Some(route) if status.is_success() => model_in(route, &path).unwrap_or(UNKNOWN).to_owned(),
        _ => UNKNOWN.to_owned(),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!("graft_http_request_duration_seconds", "route" => route.clone(), "model" => model.clone())
        .record(seconds);
    metrics::counter!(
        "graft_http_requests_total",
        "route" => route,
        "model" => model,
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    if let Some(ProblemType(kind)) = response.extensions().get::<ProblemType>() {
        metrics::counter!("graft_refusals_total", "reason" => kind.clone()).increment(1);
    }
    response
}

/// The path segment where `route` has `{model}`.
fn model_in<'p>(route: &str, path: &'p str) -> Option<&'p str> {
    let at = route.split('/').position(|segment| segment == "{model}")?;
    path.split('/').nth(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_where_the_route_names_it() {
        assert_eq!(model_in("/v1/models/{model}/classify", "/v1/models/pets/classify"), Some("pets"));
        assert_eq!(model_in("/v1/models/{model}", "/v1/models/pets"), Some("pets"));
        assert_eq!(model_in("/v1/jobs/{id}", "/v1/jobs/abc"), None);
    }
}
