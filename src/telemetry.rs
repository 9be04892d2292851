//! Prometheus metrics: one recorder per process, installed on first use, and what `/metrics`
//! renders. The metrics themselves are recorded where they happen, with the `metrics` crate's
//! macros; README.md's metrics table lists every name and label.
//!
//! Labels take values from bounded sets only (routes, loaded or stored model names, problem
//! types, job states and phases), so no request can grow the recorder: a request for a model
//! that does not exist, or that is refused before its model is known, is labelled `-`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of durations, in seconds: a millisecond up to an hour (jobs' phases).
const SECONDS: [f64; 18] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

/// Histogram buckets of batch sizes.
const BATCH_SIZES: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder, once; later calls do nothing. `None` when another
/// recorder was installed first (an embedding program's own): graft then records into it.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Full("graft_batch_size".into()), &BATCH_SIZES)
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(error) => {
                    tracing::warn!("metrics go to the recorder already installed: {error}");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics in Prometheus' text format (empty when another recorder is installed).
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// The label for a model name that may not exist: see the module documentation.
pub const UNKNOWN: &str = "-";
