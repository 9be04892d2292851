//! What a job will hold in memory, estimated before it is queued (and again when a
//! worker starts it) against `--max-job-memory-bytes`: the feature rows of every image
//! and augmentation variant (twice for a frozen classifier with `quantize`), the head's
//! parameters with their optimiser copies, and the checkpoint written after each epoch. A job over the budget is refused with the figure
//! rather than left to be killed for memory half-way. Phase 2's cut activations have
//! their own bound (`--max-activation-bytes`), checked when the tail is planned.

use serde::Serialize;

use super::spec::JobSpec;
use crate::data::Split;
use crate::serving::LoadedModel;
use crate::serving::Task;
use crate::store::ClassCount;
use crate::train::Solver;

/// Copies of every head parameter while training: the weights, their gradients, Adam's
/// two moments and the best epoch's copy, and the checkpoint's own copy of the four it
/// saves (weights, moments, best). Measured on EfficientNet-Lite0 heads of 5–84 M
/// parameters, a job grows by 58–65 bytes a parameter; this and the checkpoint text
/// below make 68.
const PARAMETER_COPIES: u64 = 9;
/// A feature row is held twice: as computed (per image) and stacked into the training matrix.
const FEATURE_COPIES: u64 = 2;
/// Bytes of checkpoint text per parameter: four JSON arrays of decimal f32s (weights,
/// the two moments, the best head), about 8 bytes a value with its separator.
const CHECKPOINT_BYTES_PER_PARAMETER: u64 = 32;

/// Bytes per parameter of the convex solver: L-BFGS keeps 20 pairs of f32 vectors (160) and
/// five f64 vectors (the point, its gradient, the trial point and its gradient, the
/// direction: 40); the objective builds the weights and their gradient in f32 (8); the path
/// keeps the previous fit and the best one (8). Each thread of the pass adds its own f32
/// gradient ([`convex_bytes_per_parameter`]).
const CONVEX_BYTES_PER_PARAMETER: u64 = 216;

/// [`CONVEX_BYTES_PER_PARAMETER`] and a gradient share per thread of this machine.
fn convex_bytes_per_parameter() -> u64 {
    CONVEX_BYTES_PER_PARAMETER + 4 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The dataset and base facts an estimate needs.
#[derive(Debug, Clone, Copy)]
pub struct JobShape {
    pub train_images: u64,
    pub other_images: u64,
    pub classes: u64,
    /// Width of the pooled feature vector.
    pub feature_width: u64,
    /// Values in one spatial feature map (height × width × channels), when the base has one.
    pub spatial_values: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Footprint {
    pub features_bytes: u64,
    pub head_bytes: u64,
    pub checkpoint_bytes: u64,
    pub total_bytes: u64,
}

impl JobShape {
    /// The shape of a job on `model` over a dataset of `counts` and `classes` classes;
    /// `None` when the model has no feature vector to train on.
    pub fn of(model: &LoadedModel, counts: &[ClassCount], classes: usize) -> Option<Self> {
        let feature_width = *model.features.as_ref().ok()? as u64;
        let in_split = |train: bool| -> u64 {
            counts.iter().filter(|c| (c.split == Split::Train.as_str()) == train).map(|c| c.count.max(0) as u64).sum()
        };
        Some(Self {
            train_images: in_split(true),
            other_images: in_split(false),
            classes: classes as u64,
            feature_width,
            spatial_values: model.spatial.as_ref().ok().map(|s| (s.height * s.width * s.channels) as u64),
        })
    }
}

pub fn estimate(spec: &JobSpec, shape: &JobShape) -> Footprint {
    let rows = shape.train_images.saturating_mul(spec.feature_variants() as u64).saturating_add(shape.other_images);
    let spatial = spec.needs_spatial(shape.spatial_values.is_some());
    let per_row = shape.feature_width + if spatial { shape.spatial_values.unwrap_or(0) } else { 0 };
    let convex = spec.solver == Solver::Convex;
    // The convex solver, and a standardising mini-batch run, also hold the rows standardised,
    // once more: the convex path in f16 (half a copy of the training rows), then its final fit
    // in f32 (a copy of the training and validation rows; `rows` also counts the test split).
    let copies = FEATURE_COPIES + u64::from(convex || spec.train.scaling.is_some());
    // A frozen classifier with `quantize` computes every row again on the INT8 base and
    // trains on those while the FP32 rows are kept for the verdict.
    let bases = if spec.quantize && spec.task == Task::Classify && spec.unfreeze.is_none() { 2 } else { 1 };
    let features_bytes = rows.saturating_mul(per_row).saturating_mul(4 * copies * bases);

    let dense = |inputs: u64, outputs: u64| -> u64 {
        match spec.train.hidden_units {
            Some(hidden) => {
                let hidden = hidden as u64;
                inputs.saturating_mul(hidden) + hidden + hidden.saturating_mul(outputs) + outputs
            }
            None => inputs.saturating_mul(outputs) + outputs,
        }
    };
    let mut parameters = dense(shape.feature_width, shape.classes);
    if spec.task == Task::Localize {
        // The box head: four numbers from the pooled vector, or from the map (counted as a
        // dense layer over all of it: an upper bound).
        let box_inputs =
            if spatial { shape.spatial_values.unwrap_or(shape.feature_width) } else { shape.feature_width };
        parameters = parameters.saturating_add(dense(box_inputs, 4));
    }
    // The convex path keeps no checkpoint: a job that loses its worker walks it again.
    let (per_parameter, checkpoint) =
        if convex { (convex_bytes_per_parameter(), 0) } else { (4 * PARAMETER_COPIES, CHECKPOINT_BYTES_PER_PARAMETER) };
    let head_bytes = parameters.saturating_mul(per_parameter);
    let checkpoint_bytes = parameters.saturating_mul(checkpoint);
    let total_bytes = features_bytes.saturating_add(head_bytes).saturating_add(checkpoint_bytes);
    Footprint { features_bytes, head_bytes, checkpoint_bytes, total_bytes }
}

/// The refusal of a job over `budget`, with its figures and what to change.
pub fn check(footprint: &Footprint, budget: u64) -> Result<(), String> {
    if footprint.total_bytes <= budget {
        return Ok(());
    }
    let gb = |bytes: u64| bytes as f64 / 1e9;
    Err(format!(
        "this job would hold about {:.2} GB in memory (features {:.2} GB, head {:.2} GB, checkpoint {:.2} GB), \
         over the budget of {:.2} GB (--max-job-memory-bytes): use fewer augment.variants, fewer \
         hidden_units, or a smaller dataset",
        gb(footprint.total_bytes),
        gb(footprint.features_bytes),
        gb(footprint.head_bytes),
        gb(footprint.checkpoint_bytes),
        gb(budget)
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(body: serde_json::Value) -> JobSpec {
        let mut full = json!({"dataset": "d", "base_model": "b"});
        full.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        JobSpec::parse(&full).unwrap()
    }

    const SHAPE: JobShape = JobShape {
        train_images: 1000,
        other_images: 200,
        classes: 10,
        feature_width: 1280,
        spatial_values: Some(62_720),
    };

    #[test]
    fn a_linear_head_counts_features_and_parameters() {
        let footprint = estimate(&spec(json!({"epochs": 20})), &SHAPE);
        // 1,200 rows × 1,280 floats × 4 bytes × 2 copies; 12,810 parameters.
        assert_eq!(footprint.features_bytes, 1200 * 1280 * 8);
        assert_eq!(footprint.head_bytes, (1280 * 10 + 10) * 36);
        assert_eq!(footprint.checkpoint_bytes, (1280 * 10 + 10) * 32);
        assert_eq!(footprint.total_bytes, footprint.features_bytes + footprint.head_bytes + footprint.checkpoint_bytes);
        assert!(check(&footprint, footprint.total_bytes).is_ok());
        assert!(check(&footprint, footprint.total_bytes - 1).unwrap_err().contains("--max-job-memory-bytes"));
    }

    #[test]
    fn variants_hidden_units_and_spatial_maps_grow_it() {
        let augmented = estimate(&spec(json!({"augment": {"variants": 4}, "epochs": 20})), &SHAPE);
        assert_eq!(augmented.features_bytes, (1000 * 5 + 200) * 1280 * 8);
        // A scaled run holds a third copy of the rows.
        let scaled = estimate(&spec(json!({"scaling": "per_feature"})), &SHAPE);
        assert_eq!(scaled.features_bytes, 1200 * 1280 * 12);
        let hidden = estimate(&spec(json!({"hidden_units": 65536})), &SHAPE);
        assert_eq!(hidden.head_bytes, (1280 * 65536 + 65536 + 65536 * 10 + 10) * 36);
        let spatial = estimate(&spec(json!({"task": "localize"})), &SHAPE);
        assert_eq!(spatial.features_bytes, 1200 * (1280 + 62_720) * 8);
        let pooled = estimate(&spec(json!({"task": "localize", "box_head": "pooled"})), &SHAPE);
        assert_eq!(pooled.features_bytes, 1200 * 1280 * 8);
        assert_eq!(pooled.head_bytes, (1280 * 10 + 10 + 1280 * 4 + 4) * 36);
    }

    #[test]
    fn a_convex_fit_counts_the_standardised_copy_and_the_solver_state() {
        let footprint = estimate(&spec(json!({})), &SHAPE);
        // Three copies of the rows; 216 bytes a parameter and 4 more per thread; no checkpoint.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        assert_eq!(footprint.features_bytes, 1200 * 1280 * 12);
        assert_eq!(footprint.head_bytes, (1280 * 10 + 10) * (216 + 4 * threads));
        assert_eq!(footprint.checkpoint_bytes, 0);
    }

    #[test]
    fn absurd_numbers_saturate_instead_of_wrapping() {
        let shape = JobShape { train_images: u64::MAX / 2, ..SHAPE };
        let footprint = estimate(&spec(json!({"augment": {"variants": 8}})), &shape);
        assert_eq!(footprint.total_bytes, u64::MAX);
        assert!(check(&footprint, 8 << 30).is_err());
    }
}
