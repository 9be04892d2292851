//! graft: serve and fine-tune ImageNet ONNX models over HTTP.
//!
//! The rooms (docs/ARCHITECTURE.md maps them): `vision` (bytes → tensor), `runtime` (ONNX
//! Runtime), `onnx` (graph surgery), `serving` (the live model registry), `zoo` (manifests,
//! labels, pull), `data` (datasets), `train` (the one training loop and its heads),
//! `finetune` (the top of a base), `store` (database and blobs), `jobs` (the training queue),
//! `api` (HTTP), and `codec` (stored numbers). This file wires them into a server and a worker.

pub mod api;
pub mod codec;
pub mod config;
pub mod console;
pub mod data;
pub mod error;
pub mod finetune;
pub mod jobs;
pub mod onnx;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod quantize;
pub mod runtime;
pub mod serving;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod vision;
pub mod zoo;

use std::sync::Arc;

use anyhow::Context;

pub use api::{AppState, app};
use config::{EngineSettings, Role, RuntimeSettings, ServeSettings, StorageSettings};
use jobs::JobContext;
use serving::{ModelRegistry, ModelRuntime};
use store::{BlobStore, Db};
use zoo::{Manifest, load_manifest_dir};

/// Chooses the models to serve: the ones named, or else every manifest whose model file is present.
pub fn select_models(manifests: Vec<Manifest>, names: &[String]) -> anyhow::Result<Vec<Manifest>> {
    if names.is_empty() {
        let (present, missing): (Vec<_>, Vec<_>) = manifests.into_iter().partition(|m| m.file.is_file());
        for manifest in missing {
            tracing::info!(
                "not serving {}: {} is missing (`graft models pull {}` fetches it)",
                manifest.name,
                manifest.file.display(),
                manifest.name
            );
        }
        return Ok(present);
    }
    let mut by_name: std::collections::HashMap<String, Manifest> =
        manifests.into_iter().map(|m| (m.name.clone(), m)).collect();
    names
        .iter()
        .map(|name| by_name.remove(name).with_context(|| format!("no manifest for model {name:?} in the model folder")))
        .collect()
}

/// Opens the database (running migrations) and the blob store.
pub async fn open_storage(settings: &StorageSettings) -> anyhow::Result<(Db, BlobStore)> {
    if settings.database_url.is_none() {
        fs_err::create_dir_all(&settings.data_dir)?;
    }
    let url = settings.database_url();
    let db = Db::connect(&url).await.with_context(|| format!("cannot open the database {}", store::redact(&url)))?;
    let blobs = settings.blob_store()?;
    Ok((db, blobs))
}

/// ONNX Runtime, the manifests to serve and the device sessions will use.
fn prepare_models(
    runtime: &RuntimeSettings,
    model_dir: &std::path::Path,
    names: &[String],
) -> anyhow::Result<(ort::environment::Environment, Vec<Manifest>, runtime::SessionOptions)> {
    let library = runtime::find_library(runtime.ort_library.as_deref())?;
    let env = runtime::init_runtime(&library)?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    let selected = select_models(load_manifest_dir(model_dir)?, names)?;
    if selected.is_empty() {
        tracing::warn!("no model files are present in {}; `make models` fetches the default ones", model_dir.display());
    }
    let mut options = runtime.session_options();
    options.device = runtime::resolve_device(&env, options.device)?;
    Ok((env, selected, options))
}

/// What a process that runs models and training workers holds: the database, the blob
/// store, the model registry and how to load it. `serve` adds HTTP; `graft worker` does not.
#[derive(Clone)]
struct Engine {
    db: Db,
    blobs: BlobStore,
    registry: Arc<ModelRegistry>,
    settings: EngineSettings,
    wake_workers: Arc<tokio::sync::Notify>,
}

impl Engine {
    /// Loads ONNX Runtime and the manifests, opens storage; no model is loaded yet.
    async fn open(settings: &EngineSettings) -> anyhow::Result<Self> {
        let (env, selected, options) =
            prepare_models(&settings.runtime, &settings.models.model_dir, &settings.serve_models)?;
        let (db, blobs) = open_storage(&settings.storage).await?;
        let runtime = ModelRuntime {
            env,
            options,
            batching: settings.limits.batching(),
            share_weights: settings.runtime.share_weights,
        };
        Ok(Self {
            db,
            blobs,
            registry: Arc::new(
                ModelRegistry::new(selected, runtime)
                    .with_model_dir(settings.models.model_dir.clone())
                    .with_memory_policy(settings.memory.policy().map_err(anyhow::Error::msg)?)
                    .map_err(anyhow::Error::msg)?,
            ),
            settings: settings.clone(),
            wake_workers: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Loads and warms every pinned model (every model without --max-model-memory), on a
    /// blocking thread.
    async fn load_models(&self) {
        let registry = self.registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.load_all()).await;
    }

    /// Starts `count` training workers; they stop when `shutdown` turns true.
    fn spawn_workers(
        &self,
        count: usize,
        shutdown: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let host = hostname();
        (0..count)
            .map(|i| {
                let ctx = JobContext {
                    db: self.db.clone(),
                    blobs: self.blobs.clone(),
                    registry: self.registry.clone(),
                    worker_id: format!(
                        "{host}:{}:{i}:{}",
                        std::process::id(),
                        &uuid::Uuid::new_v4().simple().to_string()[..8]
                    ),
                    lease: std::time::Duration::from_secs(self.settings.workers.lease_seconds.max(1)),
                    max_attempts: self.settings.workers.max_job_attempts,
                    max_job_seconds: self.settings.workers.max_job_seconds,
                    decode_limits: vision::DecodeLimits {
                        max_pixels: self.settings.limits.max_pixels,
                        max_jpeg_scans: self.settings.limits.max_jpeg_scans,
                    },
                    max_activation_bytes: self.settings.workers.max_activation_bytes,
                    max_job_memory_bytes: self.settings.limits.max_job_memory_bytes,
                };
                tokio::spawn(jobs::worker_loop(ctx, self.wake_workers.clone(), shutdown.clone()))
            })
            .collect()
    }
}

/// Collects unreferenced blobs now and then every `--gc-interval-seconds` (never when 0).
fn spawn_collection(db: Db, blobs: BlobStore, settings: config::GcSettings) {
    if settings.gc_interval_seconds == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(settings.gc_interval_seconds));
        loop {
            ticker.tick().await;
            match store::collect(&db, &blobs, settings.grace()).await {
                Ok(report) => tracing::info!(?report, "blob collection"),
                Err(e) => tracing::warn!("blob collection failed: {e}"),
            }
        }
    });
}

/// `graft gc`: one collection pass; prints what it removed as JSON.
pub async fn collect_garbage(storage: StorageSettings, gc: config::GcSettings) -> anyhow::Result<()> {
    let (db, blobs) = open_storage(&storage).await?;
    let report = store::collect(&db, &blobs, gc.grace()).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "graft".into())
}

/// Runs the HTTP server until SIGINT or SIGTERM, loading models in the background (so
/// `/healthz` answers at once) and then running `--workers` training workers.
pub async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    let engine = Engine::open(&settings.engine).await?;
    let state = AppState {
        registry: engine.registry.clone(),
        limits: settings.engine.limits.clone(),
        db: engine.db.clone(),
        blobs: engine.blobs.clone(),
        datasets: settings.datasets.clone(),
        wake_workers: engine.wake_workers.clone(),
        auth: std::sync::Arc::new(api::auth::ApiKeys::from_settings(&settings.auth)?),
        stopping: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
    };
    if !settings.listen.ip().is_loopback() && state.auth.is_empty() {
        tracing::warn!("listening on {} with no API keys: anyone who can reach it may use the API", settings.listen);
    }
    spawn_collection(engine.db.clone(), engine.blobs.clone(), settings.engine.gc.clone());
    let role = settings.role;
    let worker_count = match role {
        Role::All => settings.engine.workers.workers,
        Role::Api => 0,
        Role::Worker => settings.engine.workers.workers.max(1),
    };
    tracing::info!(?role, workers = worker_count, "role");
    if role != Role::Worker {
        // Models trained or deleted through other replicas appear and disappear here too.
        let (db, blobs, registry) = (engine.db.clone(), engine.blobs.clone(), engine.registry.clone());
        tokio::spawn(serving::follow_trained_models(db, blobs, registry));
    }
    let stopping = state.stopping.clone();
    let workers = {
        let (engine, stopped) = (engine.clone(), stopping.subscribe());
        let watch = settings.watch_models_seconds;
        tokio::spawn(async move {
            engine.load_models().await;
            if watch > 0 {
                let (registry, dir) = (engine.registry.clone(), engine.settings.models.model_dir.clone());
                tokio::spawn(serving::watch_models(registry, dir, std::time::Duration::from_secs(watch)));
            }
            engine.spawn_workers(worker_count, &stopped)
        })
    };

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!("graft listening on http://{}", listener.local_addr()?);
    let connections = api::ConnectionLimits::of(&state.limits);
    let grace = std::time::Duration::from_secs(settings.engine.workers.shutdown_grace_seconds);
    let signal = async {
        shutdown_signal().await;
        // Workers start handing their jobs back while the requests in flight finish.
        stopping.send_replace(true);
    };
    let router = match role {
        Role::Worker => api::probes(state),
        Role::All | Role::Api => app(state),
    };
    // The gRPC listener serves the same router (the same limits, keys and admission) over
    // HTTP/2, and stops when the HTTP one does.
    let grpc = match settings.grpc_listen.filter(|_| role != Role::Worker) {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for gRPC on {address}"))?;
            tracing::info!("graft serving the Open Inference Protocol over gRPC on {}", listener.local_addr()?);
            let (router, mut stopped) = (router.clone(), stopping.subscribe());
            let stop = async move {
                let _ = stopped.wait_for(|stopping| *stopping).await;
            };
            Some(tokio::spawn(api::serve(listener, router, connections, api::Wire::Http2, stop, grace)))
        }
        None => None,
    };
    api::serve(listener, router, connections, api::Wire::Http1, signal, grace).await?;
    stopping.send_replace(true);
    if let Some(grpc) = grpc {
        grpc.await.context("the gRPC server stopped abnormally")??;
    }
    if workers.is_finished() {
        let handles = workers.await.unwrap_or_default();
        if tokio::time::timeout(grace, futures_util::future::join_all(handles)).await.is_err() {
            tracing::warn!("workers still busy after --shutdown-grace: their leases will run out instead");
        }
    }
    tracing::info!("graft stopped");
    Ok(())
}

/// `graft worker`: training workers without the HTTP server, for other machines or processes.
pub async fn run_workers(settings: EngineSettings) -> anyhow::Result<()> {
    let engine = Engine::open(&settings).await?;
    spawn_collection(engine.db.clone(), engine.blobs.clone(), settings.gc.clone());
    engine.load_models().await;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let handles = engine.spawn_workers(settings.workers.workers.max(1), &shutdown_rx);
    shutdown_signal().await;
    let _ = shutdown_tx.send(true);
    let grace = std::time::Duration::from_secs(settings.workers.shutdown_grace_seconds);
    if tokio::time::timeout(grace, futures_util::future::join_all(handles)).await.is_err() {
        tracing::warn!("workers still busy after --shutdown-grace: their leases will run out instead");
    }
    tracing::info!("graft worker stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight, handing running jobs back");
}
