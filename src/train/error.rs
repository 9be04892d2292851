//! Why training did not produce a head: the one error type of every training run.

use super::optim::OptimError;

/// Why training did not produce a head.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid training data: {0}")]
    InvalidData(String),
    #[error("cannot resume from this checkpoint: {0}")]
    InvalidCheckpoint(String),
    #[error("training diverged in epoch {epoch}: the loss is no longer a finite number (try a lower learning rate)")]
    Diverged { epoch: usize },
    #[error("training was cancelled after epoch {epoch}")]
    Cancelled { epoch: usize },
}

impl From<OptimError> for TrainError {
    fn from(error: OptimError) -> Self {
        TrainError::InvalidCheckpoint(error.to_string())
    }
}
