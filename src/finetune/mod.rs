//! Fine-tuning the top of a base natively: the tail of the base (cut by `onnx::cut`) as a
//! candle model — its ONNX operators with autodiff — trained with the head on cached cut
//! activations through `train::fit`, and phase 2's checkpoint.

pub mod checkpoint;
pub mod eval;
pub mod ops;
pub mod train;

pub use checkpoint::TuneCheckpoint;
pub use eval::{SUPPORTED_OPERATORS, TailModel, TailParam};
pub use train::{
    Predictions, SpatialTap, TuneData, TuneEpochReport, TuneHead, TuneOutcome, TuneSplit, tail_features, tune,
};
