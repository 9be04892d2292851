//! What a finished job reports: its test metrics (and boxes), how training went, where its
//! features came from and how long it took; after phase 2, phase 1's figures beside the tuned
//! model's. Stored with the job and the trained model as JSON.

use serde::Serialize;
use serde_json::Value;

use super::features::FeatureStats;
use crate::train::{BoxMetrics, Evaluation, LocalizeHeadKind, LossWeights, PathStep, Solver};

#[derive(Debug, Clone, Serialize)]
pub struct JobEvaluation {
    /// Set for a localizer (a classifier's evaluation has no `task` key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub box_head: Option<LocalizeHeadKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<LossWeights>,
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
    /// Phase 1's figures, after phase 2 replaced them at the top.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase1: Option<Phase1>,
    /// What phase 2 did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<Value>,
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
    /// The penalty kept.
    pub l2: f32,
    /// What chose it: the lowest validation log loss (or, with no validation split, the
    /// default penalty).
    pub selected_by: &'static str,
    pub path: Vec<PathStep>,
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

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub features_seconds: f64,
    pub training_seconds: f64,
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
