//! What the database says is in use: the facts blob collection needs before it removes
//! anything — the images datasets hold, the weights models point at, the jobs that may
//! still read their checkpoints, and the ingestions in progress.

use std::collections::HashSet;

use sqlx::Row;

use super::db::{Db, StoreError, now_ms};

/// An ingestion whose heartbeat is older than this died with its process.
pub const INGESTION_STALE_MS: i64 = 60_000;

/// How often a live ingestion renews its heartbeat.
pub const INGESTION_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

impl Db {
    /// Registers an ingestion before it stores its first image.
    pub async fn begin_ingestion(&self, id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query("INSERT INTO ingestions (id, started_at, heartbeat_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ingestion_heartbeat(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE ingestions SET heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn end_ingestion(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ingestions WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Live ingestions (a heartbeat within [`INGESTION_STALE_MS`]) other than `except`.
    pub async fn live_ingestions(&self, except: Option<&str>) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM ingestions WHERE id <> $1 AND heartbeat_at >= $2")
            .bind(except.unwrap_or(""))
            .bind(now_ms() - INGESTION_STALE_MS)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Removes the rows of ingestions whose process died (no heartbeat for a minute).
    pub async fn purge_dead_ingestions(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ingestions WHERE heartbeat_at < $1")
            .bind(now_ms() - INGESTION_STALE_MS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The hash of every image some dataset holds.
    pub async fn referenced_images(&self) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT sha256 FROM dataset_items").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("sha256")?)).collect()
    }

    /// Every blob key a trained model points at (heads and tuned bases).
    pub async fn referenced_model_blobs(&self) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query("SELECT head_blob, tuned_base_blob FROM trained_models").fetch_all(&self.pool).await?;
        let mut keys = HashSet::new();
        for row in rows {
            keys.insert(row.try_get::<String, _>("head_blob")?);
            if let Some(tuned) = row.try_get::<Option<String>, _>("tuned_base_blob")? {
                keys.insert(tuned);
            }
        }
        Ok(keys)
    }

    /// Jobs that may still read or write their checkpoints (queued or running).
    pub async fn unfinished_jobs(&self) -> Result<HashSet<String>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM jobs WHERE state IN ('queued', 'running')").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }
}

/// A registered ingestion: its heartbeat runs until the lease is dropped, and then the
/// row is removed (also when the request is abandoned half-way).
pub struct IngestionLease {
    pub id: String,
    db: Db,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl IngestionLease {
    pub async fn begin(db: &Db) -> Result<Self, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        db.begin_ingestion(&id).await?;
        let heartbeat = {
            let (db, id) = (db.clone(), id.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(INGESTION_HEARTBEAT);
                loop {
                    ticker.tick().await;
                    let _ = db.ingestion_heartbeat(&id).await;
                }
            })
        };
        Ok(Self { id, db: db.clone(), heartbeat })
    }

    /// Ends the ingestion now (dropping the lease ends it soon after, in the background).
    pub async fn end(mut self) {
        self.heartbeat.abort();
        let _ = self.db.end_ingestion(&std::mem::take(&mut self.id)).await;
    }
}

impl Drop for IngestionLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.id.is_empty() {
            return;
        }
        let (db, id) = (self.db.clone(), std::mem::take(&mut self.id));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = db.end_ingestion(&id).await;
            });
        }
    }
}
