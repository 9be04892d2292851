//! The model catalogue: manifests that describe models, their label files, and pulling model
//! files with a checksum. The live models are `serving/`'s.

mod labels;
mod manifest;
mod pull;

pub use labels::{Label, Labels};
pub use manifest::{
    Manifest, ManifestError, OutputKind, Quantization, SpatialFeatures, is_valid_model_name, load_manifest_dir,
};
pub use pull::{PullError, PullOutcome, pull_model, sha256_file};
