//! Submitting a job: the spec parsed and checked against its dataset, its base model, the
//! memory budget and (when it tunes the base) the tail plan, all before anything is stored.
//! A refusal says which check failed, so a client can tell a typo from a budget.

use std::sync::Arc;

use serde_json::{Value, json};

use super::estimate::{JobShape, check as check_footprint, estimate as estimate_footprint};
use super::finetune::plan_tuning;
use super::spec::JobSpec;
use crate::serving::ModelRegistry;
use crate::store::{Db, JobRecord, StoreError};

/// What submission reads and writes.
pub struct Submission<'a> {
    pub db: &'a Db,
    pub registry: &'a Arc<ModelRegistry>,
    pub max_job_memory_bytes: u64,
}

/// Why a job was not queued. Every kind but the store's is the client's to fix.
#[derive(Debug, thiserror::Error)]
pub enum JobRefusal {
    /// A field missing, unknown, of the wrong type or out of its range.
    #[error("{0}")]
    InvalidSpec(String),
    #[error("there is no dataset {0:?}")]
    UnknownDataset(String),
    #[error("there is no base model {0:?}; GET /v1/models lists them")]
    UnknownBaseModel(String),
    #[error("base model {base} cannot train heads: {reason}")]
    BaseCannotTrain { base: String, reason: String },
    /// The estimate over `--max-job-memory-bytes`, with its figures.
    #[error("{0}")]
    OverMemoryBudget(String),
    /// `unfreeze` names a cut the base does not have, or one over the activation budget.
    #[error("unfreeze: {0}")]
    Unfreeze(String),
    #[error("a model named {0:?} exists or is being trained; choose another `name`")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl JobRefusal {
    /// A stable name for the kind of refusal (the problem type's last part).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid-job-spec",
            Self::UnknownDataset(_) => "unknown-dataset",
            Self::UnknownBaseModel(_) => "unknown-base-model",
            Self::BaseCannotTrain { .. } => "base-cannot-train",
            Self::OverMemoryBudget(_) => "job-over-memory-budget",
            Self::Unfreeze(_) => "invalid-unfreeze",
            Self::NameTaken(_) => "model-name-taken",
            Self::Store(_) => "store",
            Self::Internal(_) => "internal",
        }
    }
}

/// Checks the job `body` describes and queues it; returns its row.
pub async fn submit(submission: &Submission<'_>, body: &Value) -> Result<JobRecord, JobRefusal> {
    let Submission { db, registry, max_job_memory_bytes } = submission;
    let spec = JobSpec::parse(body).map_err(JobRefusal::InvalidSpec)?;
    let dataset = db.dataset(&spec.dataset).await?.ok_or_else(|| JobRefusal::UnknownDataset(spec.dataset.clone()))?;
    let Some((manifest, _)) = registry.get(&spec.base_model) else {
        return Err(JobRefusal::UnknownBaseModel(spec.base_model.clone()));
    };
    // A base still loading is checked by the worker when the job starts.
    let loaded = registry.ready(&spec.base_model).ok();
    if let Some(model) = &loaded {
        if let Err(reason) = &model.features {
            return Err(JobRefusal::BaseCannotTrain { base: spec.base_model.clone(), reason: reason.clone() });
        }
        let counts = db.dataset_counts(&dataset.id).await?;
        if let Some(shape) = JobShape::of(model, &counts, dataset.classes.len()) {
            check_footprint(&estimate_footprint(&spec, &shape), *max_job_memory_bytes)
                .map_err(JobRefusal::OverMemoryBudget)?;
        }
    }
    if let Some(unfreeze) = &spec.unfreeze {
        // While the base loads, its manifest says whether it will have a spatial map.
        let has_map = loaded.as_ref().map_or(manifest.spatial_features.is_some(), |m| m.spatial.is_ok());
        let needs_spatial = spec.needs_spatial(has_map);
        let unfreeze = unfreeze.to_unfreeze();
        // Reading the base and finding the cut costs a model decode: off the async runtime.
        tokio::task::spawn_blocking(move || plan_tuning(&manifest, &unfreeze, needs_spatial).map(drop))
            .await
            .map_err(|e| JobRefusal::Internal(e.to_string()))?
            .map_err(JobRefusal::Unfreeze)?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let model_name = spec.name.clone().unwrap_or_else(|| generated_name(&dataset.name, &spec.base_model, &id));
    if registry.get(&model_name).is_some()
        || registry.trained(&model_name).is_some()
        || db.trained_model(&model_name).await?.is_some()
        || db.model_name_pending(&model_name).await?
    {
        return Err(JobRefusal::NameTaken(model_name));
    }
    let spec_json = serde_json::to_value(&spec).map_err(|e| JobRefusal::Internal(e.to_string()))?;
    let job = JobRecord::queued(&id, &dataset.id, &spec.base_model, &model_name, spec_json);
    db.insert_job(&job).await?;
    db.append_event(&id, "state", &json!({"state": "queued"})).await?;
    metrics::counter!("graft_jobs_submitted_total").increment(1);
    Ok(job)
}

/// `flowers-efficientnet_lite0-1a2b3c4d`: readable and unique.
fn generated_name(dataset: &str, base: &str, id: &str) -> String {
    let slug: String = dataset
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    format!("{}-{base}-{}", slug.trim_matches('-'), &id[..8])
}
