//! The ONNX room: graph surgery on the ONNX protobuf (prost types generated from
//! proto/onnx.proto). Exposing intermediate tensors as outputs, cutting a base into a frozen
//! prefix and a trainable tail, reading and writing initializers, and exporting a base with
//! its trained head as one file. Knows nothing of sessions, HTTP or SQL.

pub mod cut;
pub mod export;
pub mod outputs;
pub mod quantize;
pub mod tensor;

/// The ONNX protobuf types.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use cut::{BaseGraph, CutError, Tail, Unfreeze, choose_cut};
pub use export::{BOX, PROBABILITIES, export_classifier, export_localizer, with_initializers};
pub use outputs::{GraphError, expose_outputs};
