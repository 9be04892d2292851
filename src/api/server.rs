//! The server loop: hyper with the time bounds `axum::serve` does not set, over HTTP/1.1
//! (`--listen`) or HTTP/2 without TLS (`--grpc-listen`, which gRPC clients speak). An
//! HTTP/1.1 connection must finish its request headers within
//! `--header-read-timeout-seconds` (a slow-headers client holds nothing longer); an HTTP/2
//! one runs at most `MAX_STREAMS` requests at once and is pinged when idle. At most
//! `--max-connections` are served at once per listener (the rest wait in the listen
//! backlog). Stops gracefully: in-flight requests finish, idle connections close.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower::util::MapRequest;

/// The connection-level bounds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn of(limits: &crate::config::Limits) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(limits.header_read_timeout_seconds.max(1)),
            max_connections: limits.max_connections.max(1),
        }
    }
}

/// Requests one HTTP/2 connection runs at once (each is bounded by the request limits).
const MAX_STREAMS: u32 = 128;
/// An idle HTTP/2 connection is pinged this often, and closed when a ping goes unanswered
/// for as long.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// The HTTP version a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), as gRPC clients connect without TLS.
    Http2,
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits up to `grace` for the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    wire: Wire,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (io, service) = (TokioIo::new(stream), TowerToHyperService::new(with_peer(router.clone(), peer)));
        match wire {
            Wire::Http1 => {
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(io, service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(place);
                });
            }
            Wire::Http2 => {
                let connection = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS)
                    .keep_alive_interval(KEEP_ALIVE)
                    .keep_alive_timeout(KEEP_ALIVE)
                    .serve_connection(io, service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(place);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after --shutdown-grace ({} s) are cut", grace.as_secs());
    }
    Ok(())
}

/// The router with the connection's peer address in every request (the rate limit's
/// caller when no API key names one).
fn with_peer(
    router: Router,
    peer: SocketAddr,
) -> MapRequest<Router, impl FnMut(Request<Incoming>) -> Request<Incoming> + Clone> {
    router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    })
}
