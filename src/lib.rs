//! graft: serve and fine-tune ImageNet ONNX models over HTTP.
//!
//! The rooms: `vision` (bytes → tensor), `runtime` (ONNX Runtime), `zoo` (manifests
//! and the model registry), `api` (HTTP). This file wires them into a server.

pub mod api;
pub mod config;
pub mod data;
pub mod error;
pub mod runtime;
pub mod store;
pub mod train;
pub mod vision;
pub mod zoo;

use std::sync::Arc;

use anyhow::Context;

pub use api::{AppState, app};
use config::ServeSettings;
use zoo::{Manifest, ModelRegistry, load_manifest_dir};

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

/// Runs the HTTP server until SIGINT or SIGTERM, loading models in the background.
pub async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    let library = runtime::find_library(settings.runtime.ort_library.as_deref())?;
    let env = runtime::init_runtime(&library)?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    let manifests = load_manifest_dir(&settings.models.model_dir)?;
    let selected = select_models(manifests, &settings.serve_models)?;
    if selected.is_empty() {
        tracing::warn!(
            "no model files are present in {}; `make models` fetches the default ones",
            settings.models.model_dir.display()
        );
    }
    let registry = Arc::new(ModelRegistry::new(selected));
    let state = AppState { registry: registry.clone(), limits: settings.limits.clone() };

    let mut session_options = settings.runtime.session_options();
    session_options.device = runtime::resolve_device(&env, session_options.device)?;
    let limits = settings.limits.clone();
    tokio::task::spawn_blocking(move || {
        registry.load_all(&env, &session_options, limits.max_batch_size, limits.queue_capacity);
    });

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!("graft listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("graft stopped");
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
    tracing::info!("shutting down: finishing requests in flight");
}
