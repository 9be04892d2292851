//! The runtime room: ONNX Runtime — finding and loading its shared library, the one
//! environment of the process, sessions on execution providers, and the per-model
//! runner thread that batches requests. Knows nothing of HTTP or datasets.

mod device;
mod library;
mod runner;
mod session;

pub use device::{Device, cores};
pub use library::{LibraryError, find_library, init_runtime};
pub use runner::{BatchExecutor, Batching, ImageOutputs, InferenceError, ModelRunner, OrtExecutor, RunnerConfig};
pub use session::{ModelSession, ModelSource, SessionError, SessionOptions, TensorSpec, open_session, resolve_device};
