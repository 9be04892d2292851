//! Box overlap: intersection over union of `[cx, cy, w, h]` boxes, and its summary over a set.

use serde::{Deserialize, Serialize};

/// IoU of two `[cx, cy, w, h]` boxes (0 when they do not overlap or either is empty).
///
/// A box with a width or height that is not positive counts as empty, as does one holding NaN,
/// so a badly predicted box scores 0 rather than poisoning a mean.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let is_box = |x: [f32; 4]| x[2] > 0.0 && x[3] > 0.0 && x.iter().all(|v| v.is_finite());
    if !(is_box(a) && is_box(b)) {
        return 0.0;
    }
    // Overlap of the intervals [c1 ± l1/2] and [c2 ± l2/2], 0 when they are apart.
    let overlap = |c1: f32, l1: f32, c2: f32, l2: f32| {
        ((c1 + l1 / 2.0).min(c2 + l2 / 2.0) - (c1 - l1 / 2.0).max(c2 - l2 / 2.0)).max(0.0)
    };
    let intersection = overlap(a[0], a[2], b[0], b[2]) * overlap(a[1], a[3], b[1], b[3]);
    let union = a[2] * a[3] + b[2] * b[3] - intersection;
    if intersection > 0.0 && union > 0.0 { (intersection / union).min(1.0) } else { 0.0 }
}

/// `[cx, cy, w, h]` as corners `[x0, y0, x1, y1]`.
pub fn corners(b: [f32; 4]) -> [f32; 4] {
    [b[0] - b[2] / 2.0, b[1] - b[3] / 2.0, b[0] + b[2] / 2.0, b[1] + b[3] / 2.0]
}

/// Generalised IoU of two corner boxes: IoU minus the share of the smallest enclosing box
/// that neither covers (−1 to 1). The training graph's loss computes the same.
pub fn giou(p: [f32; 4], t: [f32; 4]) -> f32 {
    let width = |x0: f32, x1: f32| (x1 - x0).max(0.0);
    let inter = width(p[0].max(t[0]), p[2].min(t[2])) * width(p[1].max(t[1]), p[3].min(t[3]));
    let union = width(p[0], p[2]) * width(p[1], p[3]) + width(t[0], t[2]) * width(t[1], t[3]) - inter;
    let enclosing = (p[2].max(t[2]) - p[0].min(t[0])) * (p[3].max(t[3]) - p[1].min(t[1]));
    inter / (union + 1e-7) - (enclosing - union) / (enclosing + 1e-7)
}

/// How well a set of predicted boxes matches the true ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxMetrics {
    /// Pairs compared.
    pub count: usize,
    /// Mean IoU over the pairs (0 for none).
    pub mean_iou: f32,
    /// Share of the pairs with IoU ≥ 0.5 (the usual "correct localisation" threshold).
    pub iou_at_least_half: f32,
}

/// Compares `predicted[i]` with `truth[i]`; pairs beyond the shorter slice are not counted
/// (`count` says how many were).
pub fn box_metrics(predicted: &[[f32; 4]], truth: &[[f32; 4]]) -> BoxMetrics {
    let ious: Vec<f32> = predicted.iter().zip(truth).map(|(&p, &t)| iou(p, t)).collect();
    let count = ious.len();
    if count == 0 {
        return BoxMetrics { count, mean_iou: 0.0, iou_at_least_half: 0.0 };
    }
    let sum: f64 = ious.iter().map(|&v| f64::from(v)).sum();
    let hits = ious.iter().filter(|&&v| v >= 0.5).count();
    BoxMetrics { count, mean_iou: (sum / count as f64) as f32, iou_at_least_half: (hits as f64 / count as f64) as f32 }
}
