//! The serving room: the live registry of models (configured bases and trained heads), how a
//! model is loaded and warmed up, and what a trained model serves. Built with its ONNX Runtime
//! settings up front; `api/` and `jobs/` read models from it.

mod follow;
mod loader;
mod registry;
mod trained;
mod watch;

pub use follow::{POLL_WITHOUT_NOTIFICATIONS, follow_trained_models};
pub use loader::{ImageFeatures, LoadedModel, ModelRuntime, ServingLayout, SpatialShape, load_model};
pub use registry::{ModelRegistry, ModelState, TrainedModelError, Unavailable};
pub use trained::{Task, TrainedHead, TrainedModel};
pub use watch::watch_models;
