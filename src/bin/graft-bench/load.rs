//! A closed-loop HTTP load generator: `concurrency` clients each send the next request
//! as soon as their previous one is answered, until `requests` are done or `duration` passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub concurrency: usize,
    pub images_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

pub async fn run_load(
    url: &str,
    image: &[u8],
    content_type: &str,
    concurrency: usize,
    requests: usize,
    duration: Option<Duration>,
) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let body = bytes::Bytes::copy_from_slice(image);
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, body, issued, url, content_type) =
                (client.clone(), body.clone(), issued.clone(), url.to_owned(), content_type.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                while issued.fetch_add(1, Ordering::Relaxed) < requests && deadline.is_none_or(|d| Instant::now() < d) {
                    let sent = Instant::now();
                    let ok =
                        match client.post(&url).header("content-type", &content_type).body(body.clone()).send().await {
                            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                    if ok {
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
