//! The tuning room: fine-tuning the top of a base model natively. The base's graph is cut
//! into a frozen prefix (ONNX Runtime) and a trainable tail (candle, with autodiff), the
//! tail is trained with the head on cached cut activations, and the result is written back
//! as one ONNX file.

pub mod checkpoint;
pub mod eval;
pub mod export;
pub mod graph;
pub mod ops;
pub mod tensor;
pub mod train;

pub use checkpoint::TuneCheckpoint;
pub use eval::{SUPPORTED_OPERATORS, TailModel, TailParam};
pub use export::{BOX, PROBABILITIES, export_classifier, export_localizer, with_initializers};
pub use graph::{BaseGraph, CutError, Tail, Unfreeze, choose_cut};
pub use train::{
    Predictions, SpatialTap, TuneData, TuneEpochReport, TuneHead, TuneOutcome, TuneSplit, tail_features, tune,
};
