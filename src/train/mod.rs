//! The train room: the native trainer for heads on frozen features (ndarray). Knows
//! nothing of HTTP, SQL or ONNX Runtime: features and labels in, weights and metrics out.

mod backprop;
mod checkpoint;
mod config;
mod convex;
mod data;
mod error;
mod fit;
mod head;
mod lbfgs;
mod localize;
mod metrics;
mod optim;
mod softmax_pass;
mod standardize;
mod trainer;
mod vector;

pub use checkpoint::{Checkpoint, EpochReport};
pub use config::{EarlyStopping, OptimizerKind, Schedule, StopMetric, TUNED_EPOCHS, TUNED_PATIENCE, TrainConfig};
pub use convex::{ConvexFit, L2_PATH, LinearFit, PathStep, Refit, SoftmaxRegression, Solver, fit_linear};
pub(crate) use data::balanced_class_weights;
pub use data::{TrainData, stack_rows};
pub use error::TrainError;
pub(crate) use fit::epoch_order;
pub use fit::{BestEpoch, EpochOutcome, EpochTraining, FitState, Fitted, Trainable, Validation, fit};
pub use head::{Dense, Head, HeadError};
pub use lbfgs::{LbfgsOptions, LbfgsOutcome, minimize};
pub use localize::{
    BoxLoss, BoxMetrics, BoxParts, CENTROID_EPSILON, LocalizeCheckpoint, LocalizeData, LocalizeEpochReport,
    LocalizeHeadKind, LocalizeLoss, LocalizeOutcome, LocalizeSplit, LocalizerHead, LocalizerLoss, LocalizerScores,
    LossWeights, box_metrics, iou, localizer_scores, softplus, train_localizer,
};
pub(crate) use localize::{cross_entropy, label_tensors, sigmoid_tensor, tensor_error};
pub use metrics::{ClassMetrics, Evaluation, LOG_LOSS_EPSILON, MetricsError, Prediction, evaluate, log_loss};
pub use optim::{BETA1, BETA2, EPSILON, OptimError, Optimizer, OptimizerState, Param, Rule};
pub use standardize::{Scaling, Standardization};
pub use trainer::{TrainOutcome, train};
