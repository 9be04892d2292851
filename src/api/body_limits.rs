//! Bodies that cannot be accepted are refused from the request head: a `Content-Length`
//! over the route's limit is a 413 before a byte of the body is read, so a client does
//! not upload gigabytes to learn the answer. Chunked bodies are cut off by axum's
//! `DefaultBodyLimit` as they stream.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// A route's body limits: `json` for `application/json` bodies when it has its own.
#[derive(Debug, Clone, Copy)]
pub struct AnnouncedLimit {
    pub any: usize,
    pub json: Option<usize>,
}

impl AnnouncedLimit {
    /// The limit a request with this head is held to.
    fn for_request(&self, request: &Request) -> usize {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        match self.json {
            Some(json) if is_json => json,
            _ => self.any,
        }
    }
}

/// The body length a request announces in `Content-Length`, if it gives a valid one.
pub fn announced_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

pub async fn refuse_announced_oversize(State(limit): State<AnnouncedLimit>, request: Request, next: Next) -> Response {
    let limit = limit.for_request(&request);
    match announced_length(request.headers()) {
        Some(length) if length > limit as u64 => Error::PayloadTooLarge { limit }.into_response(),
        _ => next.run(request).await,
    }
}
