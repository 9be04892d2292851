//! Trained-model rows: a head on a base model, its classes and its evaluation.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Backend, Db, StoreError, from_json};

#[derive(Debug, Clone, Serialize)]
pub struct TrainedModelRecord {
    pub name: String,
    pub job_id: String,
    pub base_model: String,
    pub dataset_id: String,
    pub classes: Vec<String>,
    pub head_blob: String,
    pub evaluation: serde_json::Value,
    pub created_at: i64,
    /// "classify" or "localize".
    pub task: String,
    /// The base with its tuned top blocks (an ONNX file), when the job unfroze them.
    pub tuned_base_blob: Option<String>,
    /// How images reach the base's input size for this model ("pad", "stretch"), when not
    /// as the base's own manifest says.
    pub geometry: Option<String>,
}

fn from_row(row: &AnyRow) -> Result<TrainedModelRecord, StoreError> {
    Ok(TrainedModelRecord {
        name: row.try_get("name")?,
        job_id: row.try_get("job_id")?,
        base_model: row.try_get("base_model")?,
        dataset_id: row.try_get("dataset_id")?,
        classes: from_json(&row.try_get::<String, _>("classes")?)?,
        head_blob: row.try_get("head_blob")?,
        evaluation: from_json(&row.try_get::<String, _>("evaluation")?)?,
        created_at: row.try_get("created_at")?,
        task: row.try_get("task")?,
        tuned_base_blob: row.try_get("tuned_base_blob")?,
        geometry: row.try_get("geometry")?,
    })
}

/// The PostgreSQL channel a trained model's name is announced on when it is committed or
/// deleted, so that every API replica sees it at once.
pub const TRAINED_MODELS_CHANNEL: &str = "graft_trained_models";

impl Db {
    pub(super) async fn insert_trained_model(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        model: &TrainedModelRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO trained_models \
             (name, job_id, base_model, dataset_id, classes, head_blob, evaluation, created_at, task, tuned_base_blob, \
             geometry) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&model.name)
        .bind(&model.job_id)
        .bind(&model.base_model)
        .bind(&model.dataset_id)
        .bind(serde_json::to_string(&model.classes).map_err(|e| StoreError::Malformed(e.to_string()))?)
        .bind(&model.head_blob)
        .bind(model.evaluation.to_string())
        .bind(model.created_at)
        .bind(&model.task)
        .bind(&model.tuned_base_blob)
        .bind(&model.geometry)
        .execute(&mut **tx)
        .await?;
        self.announce(tx, &model.name).await
    }

    /// Announces `name` on `TRAINED_MODELS_CHANNEL` (PostgreSQL), delivered when `tx`
    /// commits and not before.
    async fn announce(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)").bind(TRAINED_MODELS_CHANNEL).bind(name).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Each trained model's name and the job that made it: what replicas compare their
    /// registries with, without reading the rows' evaluations.
    pub async fn trained_model_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, job_id FROM trained_models").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("name")?, row.try_get("job_id")?))).collect()
    }

    pub async fn trained_models(&self) -> Result<Vec<TrainedModelRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM trained_models ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn trained_model(&self, name: &str) -> Result<Option<TrainedModelRecord>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM trained_models WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Removes the row; returns it so the caller can delete its blob.
    pub async fn delete_trained_model(&self, name: &str) -> Result<Option<TrainedModelRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("DELETE FROM trained_models WHERE name = $1 RETURNING *")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if row.is_some() {
            self.announce(&mut tx, name).await?;
        }
        tx.commit().await?;
        row.as_ref().map(from_row).transpose()
    }
}
