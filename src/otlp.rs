//! Spans to an OpenTelemetry collector over OTLP/HTTP (protobuf), behind the `otlp` cargo
//! feature: the `request` span of every HTTP request (with its id) and the `job` span and
//! phases of every job, as the log lines name them, batched from a thread of their own.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Flushes the spans still batched when the process ends.
pub struct ExportGuard(SdkTracerProvider);

impl Drop for ExportGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: the last spans were not exported to the OTLP collector: {e}");
        }
    }
}

/// A layer exporting spans to the collector at `endpoint` (its base URL, such as
/// `http://localhost:4318`; spans go to `{endpoint}/v1/traces`).
pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl Layer<S>, ExportGuard)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_secs(10))
        .with_headers(Default::default())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export spans to {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("graft").build())
        .build();
    let tracer = provider.tracer("graft");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), ExportGuard(provider)))
}
