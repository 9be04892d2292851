//! The `graft` command line: `serve` (the default), and `models list|pull|check`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// jemalloc keeps the server's memory flat under sustained load. Measured with `graft bench
/// --soak-seconds 240` at c=32 (RSS after 40 s → after 240 s): jemalloc 197,648 → 194,824 KiB,
/// the system allocator 234,016 → 240,140 KiB, mimalloc 424,284 → 466,852 KiB.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc is the process's malloc, ONNX Runtime's included. A background thread returns
/// pages freed for a second (a model unloaded, a large batch's activations) to the system,
/// so memory follows the models loaded; `MALLOC_CONF` in the environment adds to or
/// overrides this.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
use graft::config::{EngineSettings, ModelSettings, RuntimeSettings, ServeSettings};
use graft::onnx::quantize::{ActivationType, QuantizeOptions};
use graft::quantize::Method;
use graft::zoo::{Manifest, PullOutcome, load_manifest_dir, pull_model};

#[derive(Parser)]
#[command(name = "graft", version, about = "Serve and fine-tune ImageNet ONNX models over HTTP")]
struct Cli {
    /// Log lines as human-readable text or as one JSON object each (with the request id and
    /// job id of their span).
    #[arg(long, global = true, env = "GRAFT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export spans (each request's, each job's and its phases') to this OpenTelemetry
    /// collector over OTLP/HTTP, e.g. http://localhost:4318 (a build with the `otlp` feature).
    #[cfg(feature = "otlp")]
    #[arg(long, global = true, env = "GRAFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default command).
    Serve(Box<ServeSettings>),
    /// Run training workers only (no HTTP), against the same database and blob store.
    Worker(Box<EngineSettings>),
    /// Remove blobs no row references and nothing wrote for the grace period, and old temporary files.
    Gc {
        #[command(flatten)]
        storage: graft::config::StorageSettings,
        #[command(flatten)]
        gc: graft::config::GcSettings,
    },
    /// Model manifests and files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Print the OpenAPI 3.1 description of the HTTP API (as served at /openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the manifests and whether each model file is present.
    List(ModelSettings),
    /// Download a model file from its manifest's URL and verify its sha256.
    Pull {
        name: String,
        /// Fetch from this URL instead of the manifest's (http://, https:// or file://).
        #[arg(long)]
        url: Option<String>,
        /// Download even if a file with the right checksum is present.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        models: ModelSettings,
    },
    /// Calibrate a model on your images and write NAME_int8 beside it: an INT8 (QDQ) ONNX
    /// file and its manifest, with the top-1 agreement with FP32 and the speed-up measured.
    Quantize {
        name: String,
        /// A folder of images (searched recursively, in name order), or the id of an uploaded
        /// dataset (its train split calibrates, its valid and test images check agreement).
        #[arg(long)]
        calibration: String,
        /// Images to calibrate on (1 to 1000); as many more (from the folder, or a fifth of
        /// it when it has no more; from a dataset's valid and test splits) check the top-1
        /// agreement.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1_000))]
        images: u16,
        /// How ranges are read (the default measured best on EfficientNet-Lite0; README).
        #[arg(long, value_enum, default_value_t = Method::DEFAULT)]
        method: Method,
        /// The activations' 8-bit type (weights are int8 per channel either way).
        #[arg(long, value_enum, default_value_t = ActivationType::U8)]
        activations: ActivationType,
        /// Keep the first this many weighted layers (from the image) in FP32 (default 3, and at
        /// most one in eight of the model's weighted layers).
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1000))]
        keep_first: Option<u16>,
        /// Keep the classifier (the last Gemm or MatMul) in FP32.
        #[arg(long)]
        keep_classifier: bool,
        /// Also keep this many of the most sensitive weighted layers in FP32: each layer is
        /// kept alone in turn and the ones that bring the output closest to FP32's on 32
        /// calibration images are kept (one ONNX Runtime session per layer).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
        keep_sensitive: u16,
        #[command(flatten)]
        models: ModelSettings,
        #[command(flatten)]
        runtime: RuntimeSettings,
        /// Where datasets are stored, for `--calibration DATASET`.
        #[command(flatten)]
        storage: graft::config::StorageSettings,
    },
    /// Load a model with ONNX Runtime and check it against its manifest.
    Check {
        name: String,
        #[command(flatten)]
        models: ModelSettings,
        #[command(flatten)]
        runtime: RuntimeSettings,
    },
}

fn main() -> ExitCode {
    graft::runtime::pin_candle_threads();
    let cli = Cli::parse();
    #[cfg(feature = "otlp")]
    let _export = match init_logs(&cli) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(not(feature = "otlp"))]
    init_logs(&cli);
    let command = cli.command.unwrap_or_else(|| match Cli::parse_from(["graft", "serve"]).command {
        Some(command) => command,
        None => unreachable!("`serve` parses to the serve command"),
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, as text or JSON, filtered by `RUST_LOG`.
fn log_lines<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => Box::new(lines),
        LogFormat::Json => Box::new(lines.json().with_current_span(true).with_span_list(false)),
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into())
}

#[cfg(not(feature = "otlp"))]
fn init_logs(cli: &Cli) {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry().with(log_lines(cli.log_format).with_filter(log_filter())).init();
}

/// As without the feature, plus the span exporter when `--otlp-endpoint` names a collector;
/// the guard flushes it at exit. The exporter has its own filter: every span at INFO and
/// above, whatever `RUST_LOG` lets through to the log lines.
#[cfg(feature = "otlp")]
fn init_logs(cli: &Cli) -> anyhow::Result<Option<graft::otlp::ExportGuard>> {
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry().with(log_lines(cli.log_format).with_filter(log_filter()));
    match &cli.otlp_endpoint {
        Some(endpoint) => {
            let (export, guard) = graft::otlp::layer(endpoint)?;
            registry.with(export.with_filter(tracing_subscriber::filter::LevelFilter::INFO)).init();
            Ok(Some(guard))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => graft::serve(*settings).await,
        Command::Worker(settings) => graft::run_workers(*settings).await,
        Command::Gc { storage, gc } => graft::collect_garbage(storage, gc).await,
        Command::Openapi => {
            print!("{}", graft::api::openapi::spec_json());
            Ok(())
        }
        Command::Models(ModelsCommand::List(models)) => {
            for manifest in load_manifest_dir(&models.model_dir)? {
                let present = if manifest.file.is_file() { "present" } else { "missing" };
                println!("{:<24} {:<8} {}", manifest.name, present, manifest.file.display());
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Pull { name, url, force, models }) => {
            let manifest = find_manifest(&models, &name)?;
            let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let (path, outcome) = pull_model(&manifest, url.as_deref(), force, show_progress).await?;
            match outcome {
                PullOutcome::AlreadyPresent => println!("{name}: {} is present and its sha256 matches", path.display()),
                PullOutcome::Downloaded { bytes, sha256 } => {
                    println!("{name}: wrote {} ({bytes} bytes, sha256 {sha256})", path.display())
                }
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Quantize {
            name,
            calibration,
            images,
            method,
            activations,
            keep_first,
            keep_classifier,
            keep_sensitive,
            models,
            runtime,
            storage,
        }) => {
            let manifest = find_manifest(&models, &name)?;
            let env = graft::runtime::init_runtime(&graft::runtime::find_library(runtime.ort_library.as_deref())?)?;
            let settings = graft::quantize::QuantizeSettings {
                method,
                options: QuantizeOptions {
                    activations,
                    keep_first: keep_first.map(usize::from),
                    keep_classifier,
                    keep_nodes: Vec::new(),
                },
                keep_sensitive: usize::from(keep_sensitive),
                session: graft::runtime::SessionOptions {
                    device: graft::runtime::Device::Cpu,
                    ..runtime.session_options()
                },
            };
            let count = usize::from(images);
            let folder = std::path::PathBuf::from(&calibration);
            let dataset = match folder.is_dir() {
                true => None,
                false => {
                    Some(graft::quantize::dataset_items(&storage, &calibration).await.map_err(anyhow::Error::msg)?)
                }
            };
            let outcome = tokio::task::spawn_blocking(move || {
                let images = match dataset {
                    None => graft::quantize::CalibrationImages::from_folder(&folder, &manifest, count)?,
                    Some((blobs, items)) => {
                        graft::quantize::CalibrationImages::from_dataset(&blobs, &items, &manifest, count)?
                    }
                };
                if images.skipped > 0 {
                    eprintln!(
                        "{calibration}: {} entries skipped (not images, links, hidden or too large)",
                        images.skipped
                    );
                }
                graft::quantize::quantize_model(&env, &manifest, &images, &settings)
            })
            .await?
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let q = &outcome.quantization;
            println!("{name}: wrote {} and {}", outcome.manifest_path.display(), outcome.model_path.display());
            println!(
                "  quantised {:?}; {} weights, {} activations ({} Clip/Relu folded); kept in FP32: {:?}",
                outcome.report.nodes,
                outcome.report.weights,
                outcome.report.activations,
                outcome.report.folded_activations,
                outcome.report.kept_fp32
            );
            println!("  ONNX Runtime runs it with {:?}", outcome.fused_nodes);
            println!(
                "  calibrated on {} images ({}); top-1 agreement with FP32 {:.1} % on {} held-out images, \
                 {:.1} % on the {} that FP32 classifies with at least 50 %",
                q.calibration_images,
                q.method,
                q.top1_agreement * 100.0,
                q.agreement_images,
                q.confident_agreement * 100.0,
                q.confident_images
            );
            println!(
                "  speed-up over FP32 in ONNX Runtime: {:.2}× at batch 1, {:.2}× at batch 8",
                q.speedup_batch1, q.speedup_batch8
            );
            Ok(())
        }
        Command::Models(ModelsCommand::Check { name, models, runtime }) => {
            let manifest = Arc::new(find_manifest(&models, &name)?);
            let library = graft::runtime::find_library(runtime.ort_library.as_deref())?;
            let env = graft::runtime::init_runtime(&library)?;
            let mut options = runtime.session_options();
            options.device = graft::runtime::resolve_device(&env, options.device)?;
            let share_weights = runtime.share_weights;
            let model = tokio::task::spawn_blocking(move || {
                let batching = graft::config::Limits::default().batching();
                let runtime = graft::serving::ModelRuntime { env, options, batching, share_weights };
                graft::serving::load_model(&runtime, manifest)
            })
            .await?
            .map_err(|reason| anyhow::anyhow!("{name} does not match its manifest: {reason}"))?;
            // A manifest's feature tensors are only served with a warning when they fail, so
            // that ImageNet scores still work; the check names the failure instead.
            let features = match (&model.manifest.features, &model.features) {
                (None, _) => "no pooled features (heads cannot be trained)".to_owned(),
                (Some(tensor), Ok(width)) => format!("features {tensor} ({width})"),
                (Some(_), Err(reason)) => anyhow::bail!("{name}: features: {reason}"),
            };
            let map = match (&model.manifest.spatial_features, &model.spatial) {
                (None, _) => "no spatial map (localizers use the pooled box head)".to_owned(),
                (Some(map), Ok(shape)) => format!(
                    "spatial map {} ({}×{}×{}, {})",
                    map.tensor,
                    shape.height,
                    shape.width,
                    shape.channels,
                    map.layout.as_str()
                ),
                (Some(_), Err(reason)) => anyhow::bail!("{name}: {reason}"),
            };
            println!("{name}: ok ({} classes, {}; {features}; {map})", model.labels.len(), model.provider);
            Ok(())
        }
    }
}

fn find_manifest(models: &ModelSettings, name: &str) -> anyhow::Result<Manifest> {
    let path = models.model_dir.join(format!("{name}.toml"));
    if !path.is_file() {
        anyhow::bail!("no manifest {} (GET /v1/models or `graft models list` shows the known models)", path.display());
    }
    Ok(Manifest::load(&path)?)
}
