//! Job rows: the durable queue. A worker claims a job by taking its lease (a row
//! update, `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers), keeps
//! it with heartbeats, and a job whose lease ran out is claimed again by the next
//! worker. Every write a worker makes is conditional on still holding the lease.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Backend, Db, StoreError, from_json, now_ms};
use super::models::TrainedModelRecord;

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(StoreError::Malformed(format!("job state {other:?}"))),
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub dataset_id: String,
    pub base_model: String,
    pub model_name: String,
    pub spec: serde_json::Value,
    pub state: JobState,
    pub failure: Option<String>,
    pub progress: serde_json::Value,
    pub evaluation: Option<serde_json::Value>,
    pub cancel_requested: bool,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRecord {
    /// A new job waiting in the queue.
    pub fn queued(id: &str, dataset_id: &str, base_model: &str, model_name: &str, spec: serde_json::Value) -> Self {
        Self {
            id: id.to_owned(),
            dataset_id: dataset_id.to_owned(),
            base_model: base_model.to_owned(),
            model_name: model_name.to_owned(),
            spec,
            state: JobState::Queued,
            failure: None,
            progress: serde_json::json!({"phase": "queued"}),
            evaluation: None,
            cancel_requested: false,
            worker: None,
            lease_until: None,
            attempts: 0,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
        }
    }
}

#[derive(utoipa::ToSchema, Debug, Clone, Serialize, PartialEq)]
pub struct EpochRow {
    pub epoch: i64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// `None` when the dataset has no validation split.
    pub valid_loss: Option<f64>,
    pub valid_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        dataset_id: row.try_get("dataset_id")?,
        base_model: row.try_get("base_model")?,
        model_name: row.try_get("model_name")?,
        spec: from_json(&row.try_get::<String, _>("spec")?)?,
        state: JobState::parse(&row.try_get::<String, _>("state")?)?,
        failure: row.try_get("failure")?,
        progress: from_json(&row.try_get::<String, _>("progress")?)?,
        evaluation: row.try_get::<Option<String>, _>("evaluation")?.as_deref().map(from_json).transpose()?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        worker: row.try_get("worker")?,
        lease_until: row.try_get("lease_until")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// False when another worker has taken the job over (this one must stop).
    pub held: bool,
    pub cancel_requested: bool,
}

/// What a succeeded job stores beside its model: the evaluation, and the misclassified test
/// images (kept out of the evaluation, which every job view carries, and read a page at a time).
#[derive(Debug, Clone, Copy)]
pub struct JobOutcome<'a> {
    pub evaluation: &'a serde_json::Value,
    pub misclassified: &'a serde_json::Value,
}

impl Db {
    pub async fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (id, dataset_id, base_model, model_name, spec, state, progress, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&job.id)
        .bind(&job.dataset_id)
        .bind(&job.base_model)
        .bind(&job.model_name)
        .bind(job.spec.to_string())
        .bind(job.state.as_str())
        .bind(job.progress.to_string())
        .bind(job.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    pub async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_page(i64::MAX, 0).await
    }

    /// At most `limit` jobs after the first `offset`, newest first.
    pub async fn jobs_page(&self, limit: i64, offset: i64) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs are in each state (states without jobs are left out).
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get::<String, _>("state")?, row.try_get::<i64, _>("n")?))).collect()
    }

    /// Jobs not yet finished that use `dataset_id`.
    pub async fn active_jobs_on_dataset(&self, dataset_id: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE dataset_id = $1 AND state IN ('queued', 'running')")
                .bind(dataset_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("n")?)
    }

    /// Whether a queued or running job will register `model_name`.
    pub async fn model_name_pending(&self, model_name: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE model_name = $1 AND state IN ('queued', 'running')")
                .bind(model_name)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Fails every running job whose lease expired after `max_attempts` claims: its worker
    /// died that often (killed for memory, say), so another try would likely die too.
    /// Returns the jobs it failed.
    pub async fn fail_abandoned_jobs(&self, max_attempts: i64) -> Result<Vec<JobRecord>, StoreError> {
        let now = now_ms();
        let failure = format!(
            "its worker stopped without finishing it {max_attempts} times (--max-job-attempts); the server \
             log says why, often a memory limit"
        );
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'failed', progress = '{\"phase\": \"failed\"}', finished_at = $1, \
             lease_until = NULL, failure = $2 \
             WHERE state = 'running' AND lease_until < $3 AND attempts >= $4 RETURNING *",
        )
        .bind(now)
        .bind(failure)
        .bind(now)
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Takes the oldest queued job, or a running one whose lease has expired and which has
    /// had fewer than `max_attempts` claims, for `worker`.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', worker = $1, lease_until = $2, attempts = attempts + 1, \
             started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' \
                         OR (state = 'running' AND lease_until < $4 AND attempts < $5) \
                         ORDER BY created_at, id LIMIT 1 {lock}) \
             RETURNING *"
        );
        let row = sqlx::query(&sql)
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .bind(now)
            .bind(max_attempts)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Extends the lease if `worker` still holds it.
    pub async fn heartbeat(&self, id: &str, worker: &str, lease_ms: i64) -> Result<Lease, StoreError> {
        let updated =
            sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND worker = $3 AND state = 'running'")
                .bind(now_ms() + lease_ms)
                .bind(id)
                .bind(worker)
                .execute(&self.pool)
                .await?;
        let row =
            sqlx::query("SELECT cancel_requested FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let cancel_requested = match row {
            Some(row) => row.try_get::<i64, _>("cancel_requested")? != 0,
            None => true,
        };
        Ok(Lease { held: updated.rows_affected() == 1, cancel_requested })
    }

    /// Writes the job's progress document if `worker` holds it.
    pub async fn set_progress(&self, id: &str, worker: &str, progress: &serde_json::Value) -> Result<bool, StoreError> {
        let updated = sqlx::query("UPDATE jobs SET progress = $1 WHERE id = $2 AND worker = $3 AND state = 'running'")
            .bind(progress.to_string())
            .bind(id)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Records an epoch's metrics; a resumed job overwrites the epoch it repeats.
    pub async fn record_epoch(&self, id: &str, row: &EpochRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO job_epochs (job_id, epoch, train_loss, train_accuracy, valid_loss, valid_accuracy) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (job_id, epoch) DO UPDATE SET train_loss = excluded.train_loss, \
             train_accuracy = excluded.train_accuracy, valid_loss = excluded.valid_loss, \
             valid_accuracy = excluded.valid_accuracy",
        )
        .bind(id)
        .bind(row.epoch)
        .bind(row.train_loss)
        .bind(row.train_accuracy)
        .bind(row.valid_loss)
        .bind(row.valid_accuracy)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn epochs(&self, id: &str) -> Result<Vec<EpochRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM job_epochs WHERE job_id = $1 ORDER BY epoch")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EpochRow {
                    epoch: r.try_get("epoch")?,
                    train_loss: r.try_get("train_loss")?,
                    train_accuracy: r.try_get("train_accuracy")?,
                    valid_loss: r.try_get("valid_loss")?,
                    valid_accuracy: r.try_get("valid_accuracy")?,
                })
            })
            .collect()
    }

    /// Appends an event with the next sequence number of the job.
    pub async fn append_event(&self, id: &str, kind: &str, data: &serde_json::Value) -> Result<(), StoreError> {
        // Two writers (the worker and a cancel request) may race for a number: retry once.
        for attempt in 0..3 {
            let result = sqlx::query(
                "INSERT INTO job_events (job_id, seq, at, kind, data) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM job_events WHERE job_id = $5",
            )
            .bind(id)
            .bind(now_ms())
            .bind(kind)
            .bind(data.to_string())
            .bind(id)
            .execute(&self.pool)
            .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 2 && is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    pub async fn events_after(&self, id: &str, seq: i64) -> Result<Vec<JobEvent>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, at, kind, data FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq")
                .bind(id)
                .bind(seq)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(JobEvent {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    data: from_json(&r.try_get::<String, _>("data")?)?,
                })
            })
            .collect()
    }

    /// Puts a job this worker holds back in the queue, its checkpoints kept, for another
    /// worker to claim at once (this process is stopping). The claim is not counted as an
    /// attempt: attempts count workers that died. False if the lease was lost.
    pub async fn release_job(&self, id: &str, worker: &str) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, progress = $1 \
             WHERE id = $2 AND worker = $3 AND state = 'running'",
        )
        .bind(serde_json::json!({"phase": "queued", "released": true}).to_string())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Ends a job this worker holds as failed or cancelled. False if the lease was lost.
    pub async fn end_job(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        failure: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET state = $1, failure = $2, progress = $3, finished_at = $4, lease_until = NULL \
             WHERE id = $5 AND worker = $6 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(failure)
        .bind(serde_json::json!({"phase": state.as_str()}).to_string())
        .bind(now_ms())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// The misclassified test images a succeeded job stored (a JSON array); `None` when the
    /// job does not exist, has not succeeded, or succeeded before they were stored.
    pub async fn job_misclassified(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let row =
            sqlx::query("SELECT misclassified FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let text = row.map(|r| r.try_get::<Option<String>, _>("misclassified")).transpose()?.flatten();
        text.as_deref().map(from_json).transpose()
    }

    /// Marks the job succeeded and registers its model in one transaction. False (and
    /// nothing written) if this worker no longer holds the job.
    pub async fn complete_job(
        &self,
        id: &str,
        worker: &str,
        outcome: JobOutcome<'_>,
        model: &TrainedModelRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', evaluation = $1, progress = '{\"phase\": \"succeeded\"}', \
             finished_at = $2, lease_until = NULL, misclassified = $5 \
             WHERE id = $3 AND worker = $4 AND state = 'running'",
        )
        .bind(outcome.evaluation.to_string())
        .bind(now_ms())
        .bind(id)
        .bind(worker)
        .bind(outcome.misclassified.to_string())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        self.insert_trained_model(&mut tx, model).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Cancels a queued job at once; asks a running one to stop. Returns the state after.
    pub async fn cancel_job(&self, id: &str) -> Result<Option<JobState>, StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', progress = '{\"phase\": \"cancelled\"}', finished_at = $1 \
             WHERE id = $2 AND state = 'queued'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND state = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(self.job(id).await?.map(|job| job.state))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
