//! What a finished job reports: its test metrics (and boxes), how training went, where its
//! features came from and how long it took; after phase 2, phase 1's figures beside the tuned
//! model's. Stored with the job and the trained model as JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::features::FeatureStats;
use crate::store::ItemRecord;
use crate::train::{BoxMetrics, Evaluation, LocalizeHeadKind, LocalizeLoss, PathStep, Refit, Scaling, Solver};

#[derive(Debug, Clone, Serialize)]
pub struct JobEvaluation {
    /// Set for a localizer (a classifier's evaluation has no `task` key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub box_head: Option<LocalizeHeadKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// A localizer's loss: its weights and box term.
    pub loss: Option<LocalizeLoss>,
    /// The served model's test figures: phase 2's when the job tuned the base.
    #[serde(flatten)]
    pub test: TestFigures,
    pub classes: Vec<String>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub features: FeatureSummary,
    pub timings: Timings,
    /// The convex solver's path, when it trained the head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<SolverReport>,
    /// What the figures do not show: training that was still improving, a validation split
    /// too small to choose with, a head that fits its training rows far better than new ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Phase 1's figures, after phase 2 replaced them at the top.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase1: Option<Phase1>,
    /// What phase 2 did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<Value>,
    /// With `quantize`: both precisions' test accuracy and which one is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationVerdict>,
}

/// What the job found, in its evaluation under `quantization`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuantizationVerdict {
    /// `int8` when the INT8 base is served, else `fp32`.
    pub served: &'static str,
    pub fp32_test_accuracy: f32,
    pub int8_test_accuracy: f32,
    /// FP32 − INT8 test accuracy, in percentage points.
    pub accuracy_drop: f64,
    pub max_accuracy_drop: f64,
    pub calibration_images: usize,
    pub method: &'static str,
    /// A localizer's mean test IoU on each precision (the verdict is on class accuracy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp32_test_mean_iou: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8_test_mean_iou: Option<f32>,
    /// Why FP32 is served, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Test metrics, and a localizer's boxes.
#[derive(Debug, Clone, Serialize)]
pub struct TestFigures {
    pub test: Evaluation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_boxes: Option<BoxMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase1 {
    pub best_epoch: usize,
    pub epochs_run: usize,
    #[serde(flatten)]
    pub test: TestFigures,
}

/// What the convex solver chose and from what.
#[derive(Debug, Clone, Serialize)]
pub struct SolverReport {
    pub solver: Solver,
    /// The feature scaling and penalty kept.
    pub scaling: Scaling,
    pub l2: f32,
    /// What chose it: the highest validation accuracy, ties to the lower log loss (or, with
    /// no validation split, the default penalty).
    pub selected_by: &'static str,
    pub path: Vec<PathStep>,
    /// The kept step's fit finished to the final tolerance.
    pub refit: Refit,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FeatureSummary {
    pub images: usize,
    pub cached: usize,
    pub computed: usize,
    /// Width of the pooled feature vector.
    pub width: usize,
}

impl FeatureSummary {
    pub fn new(stats: FeatureStats, width: usize) -> Self {
        Self { images: stats.total, cached: stats.cached, computed: stats.computed, width }
    }
}

/// Where a job's time went. The feature pass's wall time is about the larger of its decode and
/// inference seconds, which overlap (`jobs::features`), not their sum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub features_seconds: f64,
    /// Decoding and preprocessing the images the pass computed (none for cached ones).
    pub decode_seconds: f64,
    /// The base model's runs (and cache writes) for those images.
    pub inference_seconds: f64,
    pub training_seconds: f64,
}

impl Timings {
    pub fn new(stats: &FeatureStats, features_seconds: f64, training_seconds: f64) -> Self {
        Self {
            features_seconds,
            decode_seconds: stats.decode_seconds,
            inference_seconds: stats.inference_seconds,
            training_seconds,
        }
    }
}

/// Fewer validation images of a class than this cannot choose an epoch or a penalty.
pub const MIN_VALID_PER_CLASS: usize = 5;
/// A best epoch within this many of the last, when every configured epoch ran, was still
/// improving.
const STILL_IMPROVING_WITHIN: usize = 2;
/// Train accuracy this far above validation accuracy (at the kept epoch) is overfitting.
const OVERFIT_GAP: f32 = 0.15;

/// How the kept head trained, for [`warnings`].
pub struct TrainingFacts<'a> {
    /// Mini-batch epochs: (best epoch, epochs run, epochs configured); `None` for the convex fit.
    pub epochs: Option<(usize, usize, usize)>,
    /// Train and validation accuracy of the kept head, when known.
    pub accuracies: Option<(f32, f32)>,
    /// Validation images per class, by class name.
    pub valid_per_class: Vec<(&'a str, usize)>,
    /// Whether the convex solver could have fitted this head (a linear classifier).
    pub convex_possible: bool,
}

/// A test image the served model got wrong: stored with the job, listed by
/// `GET /v1/jobs/{id}/misclassified` (the confusion matrix's off-diagonal cells, image by image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MisclassifiedImage {
    /// The image's SHA-256: its thumbnail is `/v1/datasets/{dataset}/items/{sha256}/thumbnail`.
    pub sha256: String,
    /// Its path in the uploaded archive or folder.
    pub path: String,
    /// The class index it belongs to (a row of the confusion matrix).
    pub true_class: usize,
    /// The class index the model chose (a column of the confusion matrix).
    pub predicted_class: usize,
    /// The probability the model gave its choice.
    pub score: f32,
}

/// The test images whose prediction is not their class, in test order.
pub fn misclassified(test: &[&ItemRecord], evaluation: &Evaluation) -> Vec<MisclassifiedImage> {
    test.iter()
        .zip(&evaluation.predictions)
        .filter(|(item, prediction)| item.class_idx as usize != prediction.class)
        .map(|(item, prediction)| MisclassifiedImage {
            sha256: item.sha256.clone(),
            path: item.path.clone(),
            true_class: item.class_idx as usize,
            predicted_class: prediction.class,
            score: prediction.score,
        })
        .collect()
}

/// Images per class in `labels`, by class name.
pub fn per_class<'a>(classes: &'a [String], labels: &[usize]) -> Vec<(&'a str, usize)> {
    classes.iter().enumerate().map(|(i, name)| (name.as_str(), labels.iter().filter(|&&l| l == i).count())).collect()
}

/// The warnings a job's evaluation carries.
pub fn warnings(facts: &TrainingFacts<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((best, run, configured)) = facts.epochs
        && run == configured
        && best + STILL_IMPROVING_WITHIN >= run
    {
        let remedy = match facts.convex_possible {
            true => "more epochs, or leaving the epoch settings out for the convex solver,",
            false => "more epochs",
        };
        out.push(format!(
            "training was still improving when it ended (best epoch {best} of {run}): {remedy} may give a \
             better head"
        ));
    }
    if let Some((name, count)) = facts.valid_per_class.iter().min_by_key(|(_, count)| *count)
        && *count < MIN_VALID_PER_CLASS
    {
        out.push(format!(
            "the validation split has {count} image(s) of class {name:?}, too few to choose the epoch or \
             penalty reliably: upload more images or give the dataset a larger validation fraction"
        ));
    }
    if let Some((train, valid)) = facts.accuracies
        && train - valid > OVERFIT_GAP
    {
        out.push(format!(
            "train accuracy {train:.3} is far above validation accuracy {valid:.3}: the head overfits \
             (try augment, class_weights, fewer hidden_units or weight_decay)"
        ));
    }
    out
}

impl JobEvaluation {
    /// Phase 2's `tuned` figures become the served ones; phase 1's move under `phase1`.
    pub fn with_phase2(mut self, tuned: TestFigures, report: Value) -> Self {
        let phase1 = std::mem::replace(&mut self.test, tuned);
        self.phase1 = Some(Phase1 { best_epoch: self.best_epoch, epochs_run: self.epochs_run, test: phase1 });
        self.fine_tune = Some(report);
        self
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an evaluation is numbers, strings and lists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        epochs: Option<(usize, usize, usize)>,
        accuracies: Option<(f32, f32)>,
        valid: usize,
    ) -> TrainingFacts<'static> {
        TrainingFacts { epochs, accuracies, valid_per_class: vec![("cat", 12), ("dog", valid)], convex_possible: true }
    }

    #[test]
    fn each_warning_fires_on_its_condition_only() {
        assert!(warnings(&facts(Some((12, 30, 30)), Some((0.95, 0.9)), 12)).is_empty());
        let climbing = warnings(&facts(Some((29, 30, 30)), None, 12));
        assert_eq!(climbing.len(), 1);
        assert!(climbing[0].contains("best epoch 29 of 30"), "{climbing:?}");
        assert!(climbing[0].contains("convex solver"), "{climbing:?}");
        // A head the convex solver cannot fit (a localizer, a hidden layer) is not sent there.
        let deep = warnings(&TrainingFacts { convex_possible: false, ..facts(Some((30, 30, 30)), None, 12) });
        assert!(deep.len() == 1 && !deep[0].contains("convex") && deep[0].contains("more epochs"), "{deep:?}");
        // Early stopping ended it: whatever the best epoch, it was not cut short.
        assert!(warnings(&facts(Some((9, 14, 30)), None, 12)).is_empty());
        let small = warnings(&facts(None, None, 3));
        assert!(small.len() == 1 && small[0].contains("3 image(s) of class \"dog\""), "{small:?}");
        let overfit = warnings(&facts(None, Some((1.0, 0.8)), 12));
        assert!(overfit.len() == 1 && overfit[0].contains("overfits"), "{overfit:?}");
        assert_eq!(warnings(&facts(Some((30, 30, 30)), Some((1.0, 0.5)), 1)).len(), 3);
    }
}
