//! RFC 9457 problem details: every error answer is `application/problem+json`
//! with a status, a short title and a human sentence in `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;
use crate::jobs::JobRefusal;
use crate::vision::VisionError;

/// An error answer (RFC 9457), served as `application/problem+json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:graft:problem:<name>`; each operation lists the names it can answer with.
    #[serde(rename = "type")]
    #[schema(example = "urn:graft:problem:unknown-model")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong and what to do about it, in a sentence.
    #[schema(example = "there is no model named \"pets\"")]
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:graft:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

/// A problem answer's type, left on the response for the metrics layer (its refusals by reason).
#[derive(Debug, Clone)]
pub struct ProblemType(pub String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        let slug = self.kind.strip_prefix("urn:graft:problem:").unwrap_or(&self.kind);
        response.extensions_mut().insert(ProblemType(slug.to_owned()));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<&Error> for Problem {
    fn from(err: &Error) -> Self {
        let (status, slug) = match err {
            Error::UnknownModel(_) => (StatusCode::NOT_FOUND, "unknown-model"),
            Error::ModelLoading { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model-loading"),
            Error::ModelFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model-failed"),
            Error::ModelUnloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model-unloaded"),
            Error::ModelNoMemory { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model-memory"),
            Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            Error::Image { error: VisionError::UnsupportedFormat(_), .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-image-format")
            }
            Error::Image { error: VisionError::NotAnImage, .. } => (StatusCode::UNPROCESSABLE_ENTITY, "not-an-image"),
            Error::Image { error: VisionError::TooManyPixels { .. }, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "image-too-large")
            }
            Error::Image { error: VisionError::TooManyScans { .. }, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "too-many-jpeg-scans")
            }
            Error::Image { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-image"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Error::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Error::PayloadTooLarge { .. } | Error::FieldTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
            }
            Error::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::InsufficientStorage(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage"),
            Error::DatasetRefused(refusal) => (StatusCode::UNPROCESSABLE_ENTITY, refusal.kind()),
            Error::JobRefused(refusal @ JobRefusal::NameTaken(_)) => (StatusCode::CONFLICT, refusal.kind()),
            Error::JobRefused(refusal) => (StatusCode::UNPROCESSABLE_ENTITY, refusal.kind()),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if matches!(err, Error::Internal(_)) {
            tracing::error!("{err}");
        } else if matches!(err, Error::Unavailable(_) | Error::InsufficientStorage(_)) {
            tracing::warn!("{err}");
        }
        Problem::new(status, slug, err.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from(&self).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", format!("there is no resource at {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A query string's values, or a `bad-request` problem saying what was wrong with it.
pub fn read_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    query
        .map(|axum::extract::Query(values)| values)
        .map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))
}

pub fn panic_to_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "graft hit an internal error; the request was not completed",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::InferenceError;

    /// A database that cannot be reached is a 503 the client may retry; a malformed row
    /// stays a 500.
    #[test]
    fn an_unreachable_database_is_503_with_retry_after() {
        let down = crate::store::StoreError::Database(sqlx::Error::PoolTimedOut);
        let response = Error::from(down).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let response = Error::from(crate::store::StoreError::Database(sqlx::Error::Io(refused))).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let malformed = crate::store::StoreError::Malformed("job state \"x\"".into());
        assert_eq!(Error::from(malformed).into_response().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// The runner refuses work when its queue is full (tested in runtime::runner); here the
    /// refusal becomes 429 with Retry-After and a problem body.
    #[test]
    fn a_full_queue_is_429_with_retry_after() {
        let response = Error::from(InferenceError::Overloaded).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        let problem = Problem::from(&Error::from(InferenceError::Overloaded));
        assert_eq!(problem.kind, "urn:graft:problem:overloaded");
        assert!(problem.detail.contains("queue is full"));
    }
}
