//! The model zoo: manifests that describe models, their label files, pulling model
//! files with a checksum, and the registry of loaded models the API serves from.

mod labels;
mod manifest;
mod pull;
mod registry;

pub use labels::{Label, Labels};
pub use manifest::{Manifest, ManifestError, OutputKind, SpatialFeatures, is_valid_model_name, load_manifest_dir};
pub use pull::{PullError, PullOutcome, pull_model, sha256_file};
pub use registry::{
    ImageFeatures, LoadedModel, ModelRegistry, ModelState, ServingLayout, SpatialShape, TrainedHead, TrainedModel,
    Unavailable, load_model,
};
