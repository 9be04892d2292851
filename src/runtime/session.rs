//! Opening an ONNX Runtime session on the requested execution provider.

use std::path::Path;
use std::sync::Arc;

use ort::environment::Environment;
use ort::ep;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorElementType, ValueType};

use super::Device;

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub device: Device,
    /// Threads ONNX Runtime uses inside one operator; 0 lets it choose (one per core).
    pub intra_threads: usize,
    /// Let idle intra-op threads spin (lower latency alone, less CPU left for everything else).
    pub spin: bool,
    /// Keep ONNX Runtime's CPU memory arena: each session holds on to the largest activations
    /// it has needed (every batch size of the warm-up) instead of returning them after a run.
    pub arena: bool,
}

impl SessionOptions {
    /// The options of each of `instances` sessions of one model that run side by side,
    /// and of the session for batches that run alone. On the CPU the instances share
    /// the threads (all cores when `intra_threads` is 0) equally, so that busy instances
    /// do not oversubscribe the machine, and the lone-batch session has them all.
    pub fn for_instances(&self, instances: usize) -> (Self, Option<Self>) {
        if instances <= 1 || self.device != Device::Cpu {
            return (self.clone(), None);
        }
        let total = if self.intra_threads == 0 { super::cores() } else { self.intra_threads };
        let each = Self { intra_threads: (total / instances).max(1), ..self.clone() };
        let whole = (each.intra_threads < total).then(|| Self { intra_threads: total, ..self.clone() });
        (each, whole)
    }
}

/// Name, element type and shape (−1 for a dynamic dimension) of a graph input or output.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: String,
    pub shape: Vec<i64>,
    #[serde(skip)]
    pub is_float32: bool,
}

pub struct ModelSession {
    pub session: Session,
    /// The execution provider the session runs on, e.g. `CPUExecutionProvider`.
    pub provider: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The serialised graph a shared session reads its weights from in place. Declared
    /// after `session`, so it is dropped after it: ONNX Runtime holds pointers into it. For
    /// the same reason neither the session nor a value it returns may outlive this struct:
    /// callers copy outputs out (`OrtExecutor` does) and never clone the session's handle.
    _graph: Option<Arc<[u8]>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "CUDA could not be started on device {device}: {reason} (CUDA needs the GPU build of ONNX Runtime, `make ort ORT_VARIANT=gpu`, with the CUDA 13 runtime, cuBLAS and cuDNN 9 libraries)"
    )]
    Cuda { device: i32, reason: String },
    #[error("ONNX Runtime could not load {path}: {reason}")]
    Load { path: String, reason: String },
}

/// Starts the requested execution provider once, before any model loads, so that
/// `--device cuda` on a machine without a working CUDA stack fails at start-up.
/// Returns the device sessions will use (`auto` resolves to CUDA or CPU, logged).
pub fn resolve_device(env: &Environment, device: Device) -> Result<Device, SessionError> {
    let cuda_starts = |id: i32| -> Result<(), SessionError> {
        let builder = Session::builder(env).map_err(|e| SessionError::Cuda { device: id, reason: e.to_string() })?;
        with_cuda(builder, id).map(drop)
    };
    match device {
        Device::Cpu => Ok(Device::Cpu),
        Device::Cuda(id) => cuda_starts(id).map(|()| device),
        Device::Auto => match cuda_starts(0) {
            Ok(()) => {
                tracing::info!("--device auto: using CUDA device 0");
                Ok(Device::Cuda(0))
            }
            Err(err) => {
                tracing::info!("--device auto: {err}; using the CPU");
                Ok(Device::Cpu)
            }
        },
    }
}

/// Registers CUDA on `device`; failing to start it is an error, never a silent CPU fallback.
fn with_cuda(builder: SessionBuilder, device: i32) -> Result<SessionBuilder, SessionError> {
    builder
        .with_execution_providers([ep::CUDA::default().with_device_id(device).build().error_on_failure()])
        .map_err(|e| SessionError::Cuda { device, reason: e.to_string() })
}

/// Where a session's graph comes from: the file as it is, edited bytes of it, or a graph
/// optimised once and shared by every session of a model.
#[derive(Clone, Copy)]
pub enum ModelSource<'a> {
    File(&'a Path),
    Edited { path: &'a Path, bytes: &'a [u8] },
    Shared { path: &'a Path, graph: &'a SharedGraph },
}

/// A model's graph after ONNX Runtime's optimiser (constant folding, fusions, the CPU's
/// blocked layouts), serialised once in ONNX Runtime's own format. Every session opened on
/// it reads its weights in place from this one buffer, so a model's weights are not copied
/// per session. CPU only: the blocked layouts are this machine's, and the buffer is never
/// written anywhere else.
#[derive(Clone)]
pub struct SharedGraph {
    bytes: Arc<[u8]>,
}

impl SharedGraph {
    /// The size of the optimised graph, weights included: what the sessions share.
    pub fn bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Optimises `source` as graft's sessions do (`options`) and keeps the result.
    pub fn optimise(
        env: &Environment,
        source: ModelSource<'_>,
        options: &SessionOptions,
    ) -> Result<Self, SessionError> {
        let load_error = |reason: String| SessionError::Load { path: source.path().display().to_string(), reason };
        let out = tempfile::Builder::new().suffix(".ort").tempfile().map_err(|e| load_error(e.to_string()))?;
        write_optimized(env, source, options, out.path(), SavedFormat::Ort)?;
        let bytes = fs_err::read(out.path()).map_err(|e| load_error(e.to_string()))?;
        Ok(Self { bytes: bytes.into() })
    }
}

impl ModelSource<'_> {
    fn path(&self) -> &Path {
        match self {
            Self::File(path) | Self::Edited { path, .. } | Self::Shared { path, .. } => path,
        }
    }
}

pub fn open_session(
    env: &Environment,
    source: ModelSource<'_>,
    options: &SessionOptions,
) -> Result<ModelSession, SessionError> {
    let model = source.path();
    let load_error = |reason: String| SessionError::Load { path: model.display().to_string(), reason };
    let base = || builder(env, options).map_err(|e| load_error(e.to_string()));
    // Callers normally pass the device resolve_device chose at start-up; Auto is resolved here otherwise.
    let device = if options.device == Device::Auto { resolve_device(env, Device::Auto)? } else { options.device };
    let (mut builder, provider) = match device {
        Device::Cuda(device) => (with_cuda(base()?, device)?, "CUDAExecutionProvider"),
        Device::Cpu | Device::Auto => (base()?, "CPUExecutionProvider"),
    };
    let session = match source {
        ModelSource::File(path) => builder.commit_from_file(path),
        ModelSource::Edited { bytes, .. } => builder.commit_from_memory(bytes),
        ModelSource::Shared { graph, .. } => shared(builder).and_then(|mut b| b.commit_from_memory(&graph.bytes)),
    }
    .map_err(|e| load_error(e.to_string()))?;
    let graph = match source {
        ModelSource::Shared { graph, .. } => Some(graph.bytes.clone()),
        _ => None,
    };
    let describe = |outlets: &[ort::value::Outlet]| outlets.iter().map(tensor_spec).collect::<Vec<_>>();
    let inputs = describe(session.inputs());
    let outputs = describe(session.outputs());
    tracing::info!(model = %model.display(), provider, "session ready");
    Ok(ModelSession { session, provider, inputs, outputs, _graph: graph })
}

/// A builder that reads a shared graph in place: already optimised (running the optimiser
/// again would copy the weights it touches), weights pointing into the buffer.
fn shared(builder: SessionBuilder) -> ort::Result<SessionBuilder> {
    builder
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(Into::into)
        .and_then(|b| b.with_config_entry("session.use_ort_model_bytes_directly", "1").map_err(Into::into))
        .and_then(|b| b.with_config_entry("session.use_ort_model_bytes_for_initializers", "1").map_err(Into::into))
}

/// A CPU session builder with graft's settings: full optimisation, the intra-op threads,
/// and spinning as asked.
fn builder(env: &Environment, options: &SessionOptions) -> ort::Result<SessionBuilder> {
    Session::builder(env)
        // Without the arena (and the memory pattern planned over it), a run's activations are
        // allocated and freed with the run: a model's idle sessions hold their weights only.
        .and_then(|b| match options.arena {
            true => Ok(b),
            false => b.with_memory_pattern(false).map_err(Into::into).and_then(|b| {
                b.with_execution_providers([ep::CPU::default().with_arena_allocator(false).build()]).map_err(Into::into)
            }),
        })
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
        .and_then(|b| b.with_intra_threads(options.intra_threads).map_err(Into::into))
        // Spinning intra-op threads burn the cores that decoding and HTTP need between runs.
        .and_then(|b| {
            b.with_config_entry("session.intra_op.allow_spinning", if options.spin { "1" } else { "0" })
                .map_err(Into::into)
        })
}

/// Writes the graph ONNX Runtime runs for `bytes` — after its optimiser, as graft's
/// sessions optimise — to `out` as ONNX, on the CPU.
pub fn save_optimized(
    env: &Environment,
    path: &Path,
    bytes: &[u8],
    options: &SessionOptions,
    out: &Path,
) -> Result<(), SessionError> {
    write_optimized(env, ModelSource::Edited { path, bytes }, options, out, SavedFormat::Onnx)
}

/// The format ONNX Runtime writes an optimised graph in.
#[derive(Clone, Copy, PartialEq)]
enum SavedFormat {
    Onnx,
    /// ONNX Runtime's own, which sessions can read their weights from in place.
    Ort,
}

/// Optimises `source` as graft's sessions do (`options`) and writes the result to `out`.
fn write_optimized(
    env: &Environment,
    source: ModelSource<'_>,
    options: &SessionOptions,
    out: &Path,
    format: SavedFormat,
) -> Result<(), SessionError> {
    let save = |mut b: SessionBuilder| match source {
        ModelSource::File(path) => b.commit_from_file(path),
        ModelSource::Edited { bytes, .. } => b.commit_from_memory(bytes),
        ModelSource::Shared { graph, .. } => b.commit_from_memory(&graph.bytes),
    };
    builder(env, options)
        .and_then(|b| b.with_optimized_model_path(out).map_err(Into::into))
        .and_then(|b| match format {
            SavedFormat::Onnx => Ok(b),
            SavedFormat::Ort => b.with_config_entry("session.save_model_format", "ORT").map_err(Into::into),
        })
        // The blocked layouts draw a warning that the file suits this machine only; it is
        // read back on this machine and nowhere else.
        .and_then(|b| b.with_log_level(LogLevel::Error).map_err(Into::into))
        .and_then(save)
        .map(drop)
        .map_err(|e| SessionError::Load { path: source.path().display().to_string(), reason: e.to_string() })
}

fn tensor_spec(outlet: &ort::value::Outlet) -> TensorSpec {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => TensorSpec {
            name: outlet.name().to_owned(),
            element_type: format!("{ty:?}").to_lowercase(),
            shape: shape.to_vec(),
            is_float32: *ty == TensorElementType::Float32,
        },
        other => TensorSpec {
            name: outlet.name().to_owned(),
            element_type: format!("{other:?}"),
            shape: vec![],
            is_float32: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(intra_threads: usize) -> SessionOptions {
        SessionOptions { device: Device::Cpu, intra_threads, spin: false, arena: false }
    }

    #[test]
    fn instances_share_the_threads_and_a_lone_batch_gets_them_all() {
        let (each, whole) = cpu(8).for_instances(2);
        assert_eq!(each.intra_threads, 4);
        assert_eq!(whole.map(|w| w.intra_threads), Some(8));
        let (each, whole) = cpu(6).for_instances(4);
        assert_eq!(each.intra_threads, 1);
        assert_eq!(whole.map(|w| w.intra_threads), Some(6));
    }

    #[test]
    fn threads_left_to_the_runtime_are_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (each, whole) = cpu(0).for_instances(2);
        assert_eq!(each.intra_threads, (cores / 2).max(1));
        assert_eq!(whole.map(|w| w.intra_threads), (cores >= 2).then_some(cores));
    }

    #[test]
    fn no_whole_machine_session_when_it_would_not_be_wider() {
        let (each, whole) = cpu(1).for_instances(2);
        assert_eq!(each.intra_threads, 1);
        assert!(whole.is_none());
    }

    #[test]
    fn one_instance_or_a_gpu_keeps_the_options_as_they_are() {
        let (each, whole) = cpu(0).for_instances(1);
        assert_eq!((each.intra_threads, whole.is_none()), (0, true));
        let gpu = SessionOptions { device: Device::Cuda(0), intra_threads: 4, spin: false, arena: false };
        let (each, whole) = gpu.for_instances(2);
        assert_eq!((each.intra_threads, whole.is_none()), (4, true));
    }
}
