//! A closed-loop load generator: `concurrency` clients each send the next request as soon
//! as their previous one is answered, until `requests` are done or `duration` passes. The
//! request is an HTTP post (`run_load`) or any call (`run_closed_loop`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

/// What a serving benchmark sends: one model's requests with one image, at each concurrency.
#[derive(Debug, Clone, clap::Args)]
pub struct Workload {
    /// The model to measure (a manifest in --model-dir).
    #[arg(long, default_value = "efficientnet_lite0")]
    pub model: String,
    #[arg(long, env = "GRAFT_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,
    /// The image every request sends.
    #[arg(long, default_value = "tests/fixtures/generated/images/china.jpg")]
    pub image: PathBuf,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub concurrency: usize,
    pub images_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

/// One request of a closed loop: true when it was answered with success.
pub type Call = Pin<Box<dyn Future<Output = bool> + Send>>;

/// `concurrency` clients posting `image` to `url` (one image per request).
pub async fn run_load(
    url: &str,
    image: &[u8],
    content_type: &str,
    concurrency: usize,
    requests: usize,
    duration: Option<Duration>,
) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type)?);
    let send = post(&client, url, bytes::Bytes::copy_from_slice(image), headers);
    run_closed_loop(concurrency, requests, duration, send).await
}

/// A post of `body` with `headers`, whose whole answer is read.
pub fn post(
    client: &reqwest::Client,
    url: &str,
    body: bytes::Bytes,
    headers: HeaderMap,
) -> impl Fn() -> Call + Clone + Send + 'static {
    let (client, url) = (client.clone(), Arc::<str>::from(url));
    move || {
        let request = client.post(&*url).headers(headers.clone()).body(body.clone());
        Box::pin(async move {
            match request.send().await {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            }
        })
    }
}

/// `concurrency` clients each calling `send` (one image per call, true when answered)
/// as soon as their previous call is answered.
pub async fn run_closed_loop<F, Call>(
    concurrency: usize,
    requests: usize,
    duration: Option<Duration>,
    send: F,
) -> anyhow::Result<LoadResult>
where
    F: Fn() -> Call + Clone + Send + 'static,
    Call: Future<Output = bool> + Send,
{
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (send, issued) = (send.clone(), issued.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                while issued.fetch_add(1, Ordering::Relaxed) < requests && deadline.is_none_or(|d| Instant::now() < d) {
                    let sent = Instant::now();
                    if send().await {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mine, failed) = task.await?;
        latencies.extend(mine);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LoadResult {
        concurrency,
        images_per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        errors,
    })
}
