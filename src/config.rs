//! Settings: every flag is also an environment variable, and the defaults make
//! `graft serve` work on its own (models from `./models`, CPU, port 8080).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::runtime::{Batching, Device, SessionOptions};
use crate::serving::{MemoryLimit, MemoryPolicy};

/// Where ONNX Runtime comes from and which provider it runs on.
#[derive(Debug, Clone, Args)]
pub struct RuntimeSettings {
    /// Path to libonnxruntime.so (default: .ort/cpu/ from `make ort`, or lib/ next to the binary).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
    /// Execution provider: cpu, cuda, cuda:N, or auto (CUDA when it starts, else CPU).
    #[arg(long, env = "GRAFT_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime threads per model (0: one per core). A model's instances share them
    /// equally; a batch that runs while the other instances are idle gets them all.
    #[arg(long, env = "GRAFT_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Let idle ONNX Runtime threads spin-wait (off: they sleep and leave the cores to decoding and HTTP).
    #[arg(long, env = "GRAFT_ORT_SPIN", default_value_t = false)]
    pub ort_spin: bool,
    /// Keep ONNX Runtime's CPU memory arena per session (off: activations are freed after each
    /// run; about half the idle memory, a few per cent of throughput; see the README's memory section).
    #[arg(long, env = "GRAFT_ORT_ARENA", default_value_t = false)]
    pub ort_arena: bool,
    /// On the CPU, all sessions of a model read one optimised copy of its weights (false:
    /// each session optimises and holds its own, as before; see the README's memory section).
    #[arg(long, env = "GRAFT_SHARE_WEIGHTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_weights: bool,
}

impl RuntimeSettings {
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            device: self.device,
            intra_threads: self.intra_threads,
            spin: self.ort_spin,
            arena: self.ort_arena,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelSettings {
    /// Folder of model manifests (*.toml) and, by default, their model files.
    #[arg(long, env = "GRAFT_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,
}

/// What a process that runs models and training workers needs: `graft worker` is exactly this.
#[derive(Debug, Clone, Args)]
pub struct EngineSettings {
    #[command(flatten)]
    pub models: ModelSettings,
    /// Models to load, comma-separated (default: every manifest whose model file is present).
    #[arg(long = "models", value_name = "NAMES", env = "GRAFT_MODELS", value_delimiter = ',')]
    pub serve_models: Vec<String>,
    #[command(flatten)]
    pub memory: ModelMemorySettings,
    #[command(flatten)]
    pub runtime: RuntimeSettings,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub storage: StorageSettings,
    #[command(flatten)]
    pub workers: WorkerSettings,
    #[command(flatten)]
    pub gc: GcSettings,
}

/// How much memory the models may take, and which of them stay loaded.
#[derive(Debug, Clone, Args)]
pub struct ModelMemorySettings {
    /// Memory all loaded models together may take: bytes (1500000000) or a share of the
    /// memory this process may use (60%: of its cgroup's limit, else of the machine).
    /// Models not pinned by --preload load on their first request, and the least recently
    /// used of them are unloaded to make room. Default: no limit.
    #[arg(long, env = "GRAFT_MAX_MODEL_MEMORY", value_name = "BYTES|PERCENT")]
    pub max_model_memory: Option<MemoryLimit>,
    /// Models loaded at start and never unloaded to make room, comma-separated (`none` for
    /// none; manifests with `preload = true` are pinned too). Default: every model without
    /// --max-model-memory, none with it.
    #[arg(long, env = "GRAFT_PRELOAD", value_name = "NAMES", value_delimiter = ',')]
    pub preload: Option<Vec<String>>,
    /// Seconds a request waits for its model to load (on its first request, or after it was
    /// unloaded to make room) before a 503 with Retry-After (1 to 600; keep it under
    /// --request-timeout-seconds).
    #[arg(long, env = "GRAFT_MODEL_LOAD_WAIT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub model_load_wait: u64,
}

impl ModelMemorySettings {
    /// The registry's policy: Err when the budget cannot be worked out.
    pub fn policy(&self) -> Result<MemoryPolicy, String> {
        let budget = self.max_model_memory.map(MemoryLimit::bytes).transpose()?;
        let preload = match (&self.preload, budget) {
            (Some(names), _) => Some(names.iter().filter(|n| n.as_str() != "none").cloned().collect()),
            (None, Some(_)) => Some(Vec::new()),
            (None, None) => None,
        };
        Ok(MemoryPolicy { budget, preload, load_wait: std::time::Duration::from_secs(self.model_load_wait) })
    }
}

/// What one `graft serve` process does; any number of each share one database and blob store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API and `--workers` training workers.
    All,
    /// The HTTP API only: jobs are queued for workers elsewhere.
    Api,
    /// Training workers only (at least one), with /healthz, /readyz and /metrics on
    /// `--listen` for probes and scrapers.
    Worker,
}

/// `graft serve`: the engine plus HTTP.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, env = "GRAFT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// What this process does: all (API and workers), api, or worker.
    #[arg(long, env = "GRAFT_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Also serve the Open Inference Protocol's gRPC service (KServe v2, as Triton's port
    /// 8001 does) on this address, over HTTP/2 without TLS. Off when unset.
    #[arg(long, env = "GRAFT_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub engine: EngineSettings,
    #[command(flatten)]
    pub datasets: DatasetSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    /// Poll the model folder every this many seconds: load new or changed manifests (and
    /// model files), unload the models whose manifest is removed (0: off).
    #[arg(long = "watch-models", env = "GRAFT_WATCH_MODELS_SECONDS", default_value_t = 0)]
    pub watch_models_seconds: u64,
}

/// Who may call the API: bearer keys and whether inference needs one too.
#[derive(Clone, Default, Args)]
pub struct AuthSettings {
    /// An API key clients send as `Authorization: Bearer <key>` (repeatable; env: comma-separated).
    #[arg(long = "api-key", env = "GRAFT_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "GRAFT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Require a key for classify and localize too.
    #[arg(long, env = "GRAFT_PRIVATE_INFERENCE")]
    pub private_inference: bool,
}

// Keys never reach a log line, not even through `{:?}` of the settings.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("api_keys", &self.api_keys.len())
            .field("api_key_file", &self.api_key_file)
            .field("private_inference", &self.private_inference)
            .finish()
    }
}

/// Where state lives: the database and the blob store.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Folder for the default SQLite database and blob store.
    #[arg(long, env = "GRAFT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// sqlite://… or postgres://… (default: sqlite://<data-dir>/graft.db).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Root of the blob store: images, cached features, trained heads (default: <data-dir>/blobs).
    /// With `--blob-url`, only the spool of uploads and local copies of S3 blobs live here.
    #[arg(long, env = "GRAFT_STORAGE_ROOT")]
    pub storage_root: Option<PathBuf>,
    /// Keep blobs in an S3-compatible store instead: `s3://bucket/prefix`, with the endpoint,
    /// region and credentials from the `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; `AWS_ALLOW_HTTP=true` for a plain-HTTP
    /// endpoint). Every replica must name the same one.
    #[arg(long, env = "GRAFT_BLOB_URL")]
    pub blob_url: Option<String>,
}

impl StorageSettings {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("graft.db").display()))
    }

    pub fn storage_root(&self) -> PathBuf {
        self.storage_root.clone().unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// The blob store these settings name.
    pub fn blob_store(&self) -> Result<crate::store::BlobStore, crate::store::BlobError> {
        match &self.blob_url {
            Some(url) => crate::store::BlobStore::open_s3(url, self.storage_root(), &[]),
            None => crate::store::BlobStore::open(self.storage_root()),
        }
    }
}

/// Blob collection: what no row references and nothing wrote for the grace period.
#[derive(Debug, Clone, Args)]
pub struct GcSettings {
    /// Seconds between collection passes (a pass also runs at start-up; 0: never, use `graft gc`).
    #[arg(long, env = "GRAFT_GC_INTERVAL_SECONDS", default_value_t = 3600)]
    pub gc_interval_seconds: u64,
    /// Blobs and temporary files written this recently are never collected: it covers a
    /// job's head written just before its commit, and an upload still being staged.
    #[arg(long, env = "GRAFT_GC_GRACE_SECONDS", default_value_t = 3600)]
    pub gc_grace_seconds: u64,
}

impl GcSettings {
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.gc_grace_seconds)
    }
}

/// Training workers.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Training workers in this process (0: only queue jobs; run `graft worker` elsewhere).
    #[arg(long, env = "GRAFT_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Seconds a stop (SIGTERM, SIGINT) waits for requests in flight to finish and for
    /// running jobs to checkpoint and hand their leases back; then the process exits.
    #[arg(long = "shutdown-grace", env = "GRAFT_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// Seconds a worker holds a job without a heartbeat before another may take it over.
    #[arg(long, env = "GRAFT_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// Claims a job may have; one whose worker died that many times (a lease that ran out,
    /// as when the kernel kills the process for memory) fails instead of being run again.
    #[arg(long, env = "GRAFT_MAX_JOB_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_job_attempts: u32,
    /// Wall-clock seconds a job may run from its first start, all attempts together; a
    /// job still running then fails with that reason.
    #[arg(long, env = "GRAFT_MAX_JOB_SECONDS", default_value_t = 24 * 3600)]
    pub max_job_seconds: u64,
    /// Most memory a tuning job's cut activations may take, in bytes (all of them are held
    /// while phase 2 trains); a job over it fails, naming the size it needs.
    #[arg(long, env = "GRAFT_MAX_ACTIVATION_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_activation_bytes: u64,
}

/// Dataset uploads and imports.
#[derive(Debug, Clone, Args)]
pub struct DatasetSettings {
    /// Folder under which `{"path": …}` imports may read (imports are off without it).
    #[arg(long, env = "GRAFT_IMPORT_ROOT")]
    pub import_root: Option<PathBuf>,
    /// Largest dataset upload in bytes.
    #[arg(long, env = "GRAFT_MAX_UPLOAD_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest single file inside an archive, in bytes.
    #[arg(long = "max-archive-entry-bytes", env = "GRAFT_MAX_ARCHIVE_ENTRY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_entry_bytes: u64,
    /// Largest total of the files inside an archive, in bytes (a zip bomb stops here).
    #[arg(long = "max-archive-bytes", env = "GRAFT_MAX_ARCHIVE_BYTES", default_value_t = 16 * 1024 * 1024 * 1024)]
    pub max_archive_bytes: u64,
    /// Most entries (files, folders, links) in an archive or imported folder; more fails it.
    /// For zip this is checked from the end-of-central-directory record before the
    /// directory is read.
    #[arg(long = "max-archive-entries", env = "GRAFT_MAX_ARCHIVE_ENTRIES", default_value_t = 200_000)]
    pub max_archive_entries: usize,
    /// Most bytes of all the annotation files (VOC, VIA, COCO, CSV) in one upload together;
    /// more fails the upload.
    #[arg(long = "max-annotation-bytes", env = "GRAFT_MAX_ANNOTATION_BYTES", default_value_t = crate::data::DEFAULT_MAX_ANNOTATION_BYTES)]
    pub max_annotation_bytes: u64,
    /// Free disk space, in bytes, that uploads and imports leave on the storage root: one
    /// that would go below it (its declared length counted up front) is answered 507.
    #[arg(long, env = "GRAFT_MIN_FREE_DISK_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub min_free_disk_bytes: u64,
}

impl Default for DatasetSettings {
    fn default() -> Self {
        Self {
            import_root: None,
            max_upload_bytes: 4 * 1024 * 1024 * 1024,
            max_entry_bytes: 64 * 1024 * 1024,
            max_archive_bytes: 16 * 1024 * 1024 * 1024,
            max_archive_entries: 200_000,
            max_annotation_bytes: crate::data::DEFAULT_MAX_ANNOTATION_BYTES,
            min_free_disk_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest request body in bytes.
    #[arg(long, env = "GRAFT_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest JSON body of a job submission or a dataset import, in bytes.
    #[arg(long, env = "GRAFT_MAX_JSON_BYTES", default_value_t = 1024 * 1024)]
    pub max_json_bytes: usize,
    /// Largest image in pixels (width × height), checked from the header before decoding.
    #[arg(long, env = "GRAFT_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Most scans a JPEG may have (a progressive one has about 10; each is a pass over the image).
    #[arg(long, env = "GRAFT_MAX_JPEG_SCANS", default_value_t = crate::vision::DEFAULT_MAX_JPEG_SCANS)]
    pub max_jpeg_scans: u32,
    /// Most images one request may carry.
    #[arg(long, env = "GRAFT_MAX_IMAGES_PER_REQUEST", default_value_t = 64)]
    pub max_images_per_request: usize,
    /// Most images ONNX Runtime runs in one batch.
    #[arg(long, env = "GRAFT_MAX_BATCH_SIZE", default_value_t = 8)]
    pub max_batch_size: usize,
    /// Milliseconds a batch that is not full waits for more requests (0: run at once).
    #[arg(long, env = "GRAFT_MAX_DELAY_MS", default_value_t = 0)]
    pub max_delay_ms: u64,
    /// Requests that may wait per model before new ones get 429.
    #[arg(long, env = "GRAFT_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Dataset uploads and imports ingested at once; more are answered 429.
    #[arg(long, env = "GRAFT_MAX_CONCURRENT_INGESTIONS", default_value_t = 2)]
    pub max_concurrent_ingestions: usize,
    /// Job event streams (`GET /v1/jobs/{id}/events`) open at once; more are answered 429.
    #[arg(long, env = "GRAFT_MAX_EVENT_STREAMS", default_value_t = 256)]
    pub max_event_streams: usize,
    /// Seconds a connection may take to send a request's headers before it is closed.
    #[arg(long, env = "GRAFT_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may go without sending a byte before the request fails (408).
    #[arg(long, env = "GRAFT_BODY_READ_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_read_timeout_seconds: u64,
    /// Seconds a request may take from its headers to its answer (503 after), except
    /// dataset uploads (bounded by size and the body timeout) and event streams (an hour).
    #[arg(long, env = "GRAFT_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, env = "GRAFT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Bytes of classify and localize bodies read or decoding at once (a body counts its
    /// Content-Length, or --max-body-bytes without one); more are answered 429.
    #[arg(long, env = "GRAFT_MAX_INFERENCE_BYTES_IN_FLIGHT", default_value_t = 512 * 1024 * 1024)]
    pub max_inference_bytes_in_flight: usize,
    /// ONNX exports of trained models built at once (each is built in memory); more get 429.
    #[arg(long, env = "GRAFT_MAX_CONCURRENT_EXPORTS", default_value_t = 2)]
    pub max_concurrent_exports: usize,
    /// Most memory a training job may hold (features of every image and variant, the
    /// head with its optimiser copies, its checkpoint), estimated when it is submitted;
    /// a job over it is refused (422) with the figure.
    #[arg(long, env = "GRAFT_MAX_JOB_MEMORY_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_job_memory_bytes: u64,
    /// Requests per second each caller may make (an API key, or else a peer address),
    /// beyond its burst; over it the answer is 429 with Retry-After (0: no rate limit).
    #[arg(long, env = "GRAFT_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub rate_limit_per_second: u32,
    /// Requests a caller may make at once before its rate applies.
    #[arg(long, env = "GRAFT_RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,
    /// ONNX Runtime sessions per model that run batches side by side, each with its share
    /// of the cores (0: two on a CPU with two or more cores, one on a GPU).
    #[arg(long, env = "GRAFT_MODEL_INSTANCES", default_value_t = 0)]
    pub model_instances: usize,
}

impl Limits {
    pub fn batching(&self) -> Batching {
        Batching {
            max_batch_size: self.max_batch_size,
            max_delay: std::time::Duration::from_millis(self.max_delay_ms),
            queue_capacity: self.queue_capacity,
            instances: self.model_instances,
        }
    }

    /// What an image a request sends, or a stored one, may cost to decode.
    pub fn decode_limits(&self) -> crate::vision::DecodeLimits {
        crate::vision::DecodeLimits { max_pixels: self.max_pixels, max_jpeg_scans: self.max_jpeg_scans }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            max_pixels: 40_000_000,
            max_jpeg_scans: crate::vision::DEFAULT_MAX_JPEG_SCANS,
            max_images_per_request: 64,
            max_batch_size: 8,
            max_delay_ms: 0,
            queue_capacity: 256,
            model_instances: 0,
            max_concurrent_ingestions: 2,
            max_event_streams: 256,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            request_timeout_seconds: 60,
            max_connections: 1024,
            max_inference_bytes_in_flight: 512 * 1024 * 1024,
            max_concurrent_exports: 2,
            rate_limit_per_second: 0,
            rate_limit_burst: 50,
            max_job_memory_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}
