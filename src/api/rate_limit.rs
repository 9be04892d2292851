//! The request rate limit (`--rate-limit-per-second`, `--rate-limit-burst`): a token
//! bucket per caller, from `tower_governor`. A caller is the API key the request was
//! authenticated with, or else its peer address; a key that was not checked (an open
//! route) never names a caller, so made-up keys cannot mint fresh buckets. Over the rate
//! the answer is a 429 problem with `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use super::problem::Problem;

/// Set by the key check on a request whose key it verified (the key's SHA-256).
#[derive(Debug, Clone, Copy)]
pub struct VerifiedKey(pub [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Key([u8; 32]),
    Peer(IpAddr),
    /// No key and no peer address (requests served without a socket, as in tests).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct CallerExtractor;

impl KeyExtractor for CallerExtractor {
    type Key = Caller;

    fn extract<T>(&self, request: &Request<T>) -> Result<Caller, GovernorError> {
        let extensions = request.extensions();
        if let Some(VerifiedKey(digest)) = extensions.get::<VerifiedKey>() {
            return Ok(Caller::Key(*digest));
        }
        Ok(extensions.get::<ConnectInfo<SocketAddr>>().map_or(Caller::Unknown, |info| Caller::Peer(info.0.ip())))
    }
}

pub type RateConfig = Arc<GovernorConfig<CallerExtractor, NoOpMiddleware<governor::clock::QuantaInstant>>>;

/// The shared limiter, `None` when the rate limit is off (a rate of 0).
pub fn config(per_second: u32, burst: u32) -> Option<RateConfig> {
    if per_second == 0 {
        return None;
    }
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / per_second)
        .burst_size(burst.max(1))
        .key_extractor(CallerExtractor)
        .finish()?;
    Some(Arc::new(config))
}

pub fn layer(
    config: &RateConfig,
) -> GovernorLayer<CallerExtractor, NoOpMiddleware<governor::clock::QuantaInstant>, axum::body::Body> {
    GovernorLayer::new(config.clone()).error_handler(too_many)
}

fn too_many(error: GovernorError) -> Response {
    let wait = match &error {
        GovernorError::TooManyRequests { wait_time, .. } => (*wait_time).max(1),
        _ => 1,
    };
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("this caller is over its request rate (--rate-limit-per-second); try again in {wait} s"),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
    response
}

/// Forgets the buckets of callers that have been quiet, so their count stays bounded
/// by the callers of the last minute.
pub fn spawn_pruning(config: RateConfig) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            config.limiter().retain_recent();
        }
    });
}
