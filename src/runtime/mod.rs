//! The runtime room: ONNX Runtime — finding and loading its shared library, the one
//! environment of the process, sessions on execution providers, and the per-model
//! runner thread that batches requests. Knows nothing of HTTP or datasets.

mod device;
mod library;
mod runner;
mod session;

pub use device::{Device, cores};
pub use library::{LibraryError, find_library, init_runtime};
pub use runner::{
    BatchExecutor, Batching, ImageOutputs, InferenceError, ModelRunner, OrtExecutor, PendingInference, RunnerConfig,
};
pub use session::{
    ModelSession, ModelSource, SessionError, SessionOptions, SharedGraph, TensorSpec, open_session, resolve_device,
    save_optimized,
};

/// candle asks for its thread count before every matrix product and, unless
/// `RAYON_NUM_THREADS` is set, counts physical cores by parsing /proc/cpuinfo each time (about
/// 8 % of a tuning step, measured with perf on `graft-bench tune`). Setting it once, before any
/// thread starts (first thing in `main`), makes that a lookup; it also sizes rayon's pool, to the same count it picks.
pub fn pin_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = cores();
        // SAFETY: the caller runs this first thing in main, while it is the only thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}
