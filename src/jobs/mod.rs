//! The jobs room: the durable training queue — job specs, the worker loop, running a
//! job (features → head → evaluation → registration) with progress and checkpoints.
//! It orchestrates data/, runtime/, train/ and store/.

mod features;
mod localize;
mod run;
mod spec;
mod worker;

pub use features::{FeatureRequest, FeatureStats, extract_features, feature_fingerprint, image_key};
pub use run::{JobContext, checkpoint_key, head_key, run_job};
pub use spec::{JobSpec, Task};
pub use worker::{IDLE_POLL, worker_loop};
