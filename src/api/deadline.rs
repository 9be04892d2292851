//! The request deadline: a handler still working after `--request-timeout-seconds` is
//! dropped (with the work it awaits: a dropped inference request leaves its batch) and
//! the client gets a 503 problem. Uploads and event streams are long by nature and have
//! their own bounds (size and body timeout; stream lifetime).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

pub async fn enforce_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s (--request-timeout-seconds); send fewer or smaller images, \
                 or try again when the server is less busy",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_handler_past_the_deadline_is_dropped_and_answered_503() {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finished.clone();
        let slow = move || async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            "late"
        };
        let router = Router::new()
            .route("/slow", get(slow))
            .route("/quick", get(|| async { "quick" }))
            .route_layer(axum::middleware::from_fn_with_state(Duration::from_millis(100), enforce_deadline));
        let request = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();

        let response = router.clone().oneshot(request("/slow")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!finished.load(std::sync::atomic::Ordering::SeqCst), "the handler was dropped, not left running");

        let response = router.oneshot(request("/quick")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
