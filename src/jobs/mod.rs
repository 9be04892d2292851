//! The jobs room: the durable training queue — job specs and their submission, the worker
//! loop, running a job (features → head → [tuned top blocks] → evaluation → registration)
//! with progress and checkpoints. It orchestrates data/, serving/, train/, finetune/ and store/.

mod classify;
mod context;
mod estimate;
mod evaluation;
mod features;
mod finetune;
mod keys;
mod localize;
mod quantize;
mod run;
mod spec;
mod submit;
mod worker;

pub use context::JobContext;
pub use estimate::{Footprint, JobShape, check as check_footprint, estimate as estimate_footprint};
pub use evaluation::{JobEvaluation, MisclassifiedImage};
pub use features::{FeatureRequest, FeatureStats, extract_features, feature_fingerprint};
pub use finetune::{TunePlan, plan_tuning};
pub use keys::{checkpoint_key, fine_tune_checkpoint_key, head_key, tuned_base_key};
pub use run::run_job;
pub use spec::{JobFields, JobSpec};
pub use submit::{JobRefusal, Submission, submit};
pub use worker::{IDLE_POLL, worker_loop};
