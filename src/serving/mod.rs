//! The serving room: the live registry of models (configured bases and trained heads), how a
//! model is loaded and warmed up, and what a trained model serves. Built with its ONNX Runtime
//! settings up front; `api/` and `jobs/` read models from it.

mod follow;
mod loader;
mod memory;
mod registry;
mod trained;
mod watch;

pub use follow::{POLL_WITHOUT_NOTIFICATIONS, follow_trained_models};
pub use loader::{ImageFeatures, LoadedModel, ModelRuntime, ServingLayout, SpatialShape, load_model};
pub use memory::MemoryLimit;
pub use registry::{MemoryPolicy, ModelMemory, ModelRegistry, ModelState, TrainedModelError, Unavailable};
pub use trained::{Task, TrainedHead, TrainedModel, TunedBaseSlot};
pub use watch::watch_models;
