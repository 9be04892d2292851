//! Trained models across replicas: every process that serves keeps its registry's trained
//! models in step with the database, so that a model committed by a worker anywhere is
//! loaded here at once, and a model deleted through any replica stops being served here.
//! On PostgreSQL the commit and the deletion announce the name (`TRAINED_MODELS_CHANNEL`)
//! and the follower reacts to it; a periodic comparison with the table catches anything a
//! dropped connection missed, and is all there is on SQLite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::ModelRegistry;
use crate::store::{BlobStore, Db, TRAINED_MODELS_CHANNEL, TrainedModelRecord};

/// How often the table is compared with the registry when nothing announces changes.
pub const POLL_WITHOUT_NOTIFICATIONS: Duration = Duration::from_secs(1);
/// How often it is compared anyway when notifications arrive (a safety net).
pub const POLL_WITH_NOTIFICATIONS: Duration = Duration::from_secs(30);
/// How long a lost LISTEN connection waits before it is opened again.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// Runs until the process stops.
pub async fn follow_trained_models(db: Db, blobs: BlobStore, registry: Arc<ModelRegistry>) {
    let mut listener = open_listener(&db).await;
    let mut poll = tokio::time::interval(poll_period(listener.is_some()));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconnect = tokio::time::interval(RECONNECT_AFTER);
    loop {
        tokio::select! {
            _ = poll.tick() => reconcile(&db, &registry).await,
            notified = next_name(&mut listener) => match notified {
                Some(name) => refresh(&db, &blobs, &registry, &name).await,
                None => {
                    tracing::warn!("lost the database notifications of trained models; polling until they are back");
                    listener = None;
                    poll = tokio::time::interval(poll_period(false));
                }
            },
            _ = reconnect.tick(), if listener.is_none() && db.backend == crate::store::Backend::Postgres => {
                if let Some(opened) = open_listener(&db).await {
                    listener = Some(opened);
                    poll = tokio::time::interval(poll_period(true));
                    // What was missed while it was down.
                    reconcile(&db, &registry).await;
                }
            }
        }
    }
}

fn poll_period(notified: bool) -> Duration {
    if notified { POLL_WITH_NOTIFICATIONS } else { POLL_WITHOUT_NOTIFICATIONS }
}

async fn open_listener(db: &Db) -> Option<sqlx::postgres::PgListener> {
    match db.listen(TRAINED_MODELS_CHANNEL).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!("cannot listen for trained-model notifications: {e}");
            None
        }
    }
}

/// The next announced name; `None` when the connection failed. Pends forever without a listener.
async fn next_name(listener: &mut Option<sqlx::postgres::PgListener>) -> Option<String> {
    match listener {
        Some(listener) => listener.recv().await.ok().map(|n| n.payload().to_owned()),
        None => std::future::pending().await,
    }
}

/// Drops the registry's copies of models the table no longer has, or has from another job.
async fn reconcile(db: &Db, registry: &ModelRegistry) {
    let rows = match db.trained_model_versions().await {
        Ok(rows) => rows,
        Err(e) => return tracing::debug!("comparing trained models with the database failed: {e}"),
    };
    let current: HashMap<&str, &str> = rows.iter().map(|(name, job)| (name.as_str(), job.as_str())).collect();
    for model in registry.trained_list() {
        let record = &model.record;
        if current.get(record.name.as_str()) != Some(&record.job_id.as_str()) {
            registry.remove_trained(&record.name);
            tracing::info!(model = %record.name, "trained model gone from the database: no longer served here");
        }
    }
}

/// Brings one announced model up to date: removed when its row is gone or replaced, and
/// loaded (head and tuned base) when it exists, so that its first request finds it ready.
async fn refresh(db: &Db, blobs: &BlobStore, registry: &Arc<ModelRegistry>, name: &str) {
    let record = match db.trained_model(name).await {
        Ok(record) => record,
        Err(e) => return tracing::warn!(model = %name, "reading an announced trained model failed: {e}"),
    };
    if registry.trained(name).is_some_and(|cached| Some(&cached.record.job_id) != record.as_ref().map(|r| &r.job_id)) {
        registry.remove_trained(name);
    }
    let Some(record) = record else {
        return tracing::info!(model = %name, "trained model deleted: no longer served here");
    };
    load(registry.clone(), blobs.clone(), record).await;
}

async fn load(registry: Arc<ModelRegistry>, blobs: BlobStore, record: TrainedModelRecord) {
    let name = record.name.clone();
    match tokio::task::spawn_blocking(move || registry.trained_or_load(record, &blobs)).await {
        Ok(Ok(_)) => tracing::info!(model = %name, "trained model loaded"),
        Ok(Err(e)) => tracing::warn!(model = %name, "loading an announced trained model failed: {e}"),
        Err(e) => tracing::warn!(model = %name, "loading an announced trained model panicked: {e}"),
    }
}
