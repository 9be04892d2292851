//! Evaluation of predicted class probabilities against true labels: accuracy, top-k accuracy,
//! per-class precision/recall/F1, the confusion matrix and log loss.
//!
//! Conventions: the predicted class is the first arg-max (as in numpy), ties in top-k are
//! broken the same way (lower class index first, so top-1 accuracy equals accuracy), and a
//! ratio with a zero denominator is 0.0 rather than NaN (scikit-learn's `zero_division=0`).

use ndarray::{ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Probabilities are clipped below at this before taking the log (Keras' epsilon).
pub const LOG_LOSS_EPSILON: f32 = 1e-7;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Of the rows predicted as this class, the share that truly are.
    pub precision: f32,
    /// Of the rows truly of this class, the share predicted as it.
    pub recall: f32,
    /// Harmonic mean of precision and recall.
    pub f1: f32,
    /// Rows truly of this class.
    pub support: u64,
}

/// Metrics of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub count: usize,
    pub accuracy: f32,
    /// The k actually used: the one asked for, limited to 1..=classes.
    pub top_k: usize,
    pub top_k_accuracy: f32,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Each row's predicted class and its probability, in row order: what names the
    /// misclassified rows. Not part of the reported figures.
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// One row's predicted class (the first arg-max) and its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub class: usize,
    pub score: f32,
}

/// Predictions and labels that do not belong together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("{rows} rows of probabilities but {labels} labels")]
    CountMismatch { rows: usize, labels: usize },
    #[error("label {label} is out of range for {classes} classes")]
    LabelOutOfRange { label: usize, classes: usize },
}

/// Evaluates `probabilities` (rows = samples, columns = classes) against `labels`.
pub fn evaluate(probabilities: ArrayView2<f32>, labels: &[usize], k: usize) -> Result<Evaluation, MetricsError> {
    check(probabilities, labels)?;
    let classes = probabilities.ncols();
    let top_k = k.clamp(1, classes.max(1)).min(classes);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut in_top_k = 0usize;
    let mut predictions = Vec::with_capacity(labels.len());
    for (row, &label) in probabilities.axis_iter(Axis(0)).zip(labels) {
        let class = argmax(row);
        confusion[label][class] += 1;
        in_top_k += usize::from(rank(row, label) < top_k);
        predictions.push(Prediction { class, score: row[class] });
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(Evaluation {
        count: labels.len(),
        accuracy: ratio(correct, labels.len() as u64),
        top_k,
        top_k_accuracy: ratio(in_top_k as u64, labels.len() as u64),
        per_class: (0..classes).map(|c| class_metrics(&confusion, c)).collect(),
        confusion,
        predictions,
    })
}

/// Mean cross-entropy −log p[label], with p clipped below at [`LOG_LOSS_EPSILON`]; 0 for no labels.
pub fn log_loss(probabilities: ArrayView2<f32>, labels: &[usize]) -> Result<f32, MetricsError> {
    check(probabilities, labels)?;
    let total: f64 = labels
        .iter()
        .enumerate()
        .map(|(i, &label)| -f64::from(probabilities[[i, label]].max(LOG_LOSS_EPSILON)).ln())
        .sum();
    Ok((total / labels.len().max(1) as f64) as f32)
}

fn check(probabilities: ArrayView2<f32>, labels: &[usize]) -> Result<(), MetricsError> {
    let (rows, classes) = probabilities.dim();
    if rows != labels.len() {
        return Err(MetricsError::CountMismatch { rows, labels: labels.len() });
    }
    match labels.iter().find(|&&label| label >= classes) {
        Some(&label) => Err(MetricsError::LabelOutOfRange { label, classes }),
        None => Ok(()),
    }
}

/// The first index of the largest value.
fn argmax(row: ArrayView1<f32>) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (j, &p)| if p > best.1 { (j, p) } else { best }).0
}

/// How many classes rank above `label`: higher probability, or equal with a lower index.
fn rank(row: ArrayView1<f32>, label: usize) -> usize {
    let p = row[label];
    row.iter().enumerate().filter(|&(j, &q)| q > p || (q == p && j < label)).count()
}

fn class_metrics(confusion: &[Vec<u64>], class: usize) -> ClassMetrics {
    let true_positive = confusion[class][class];
    let support: u64 = confusion[class].iter().sum();
    let predicted: u64 = confusion.iter().map(|row| row[class]).sum();
    let precision = ratio(true_positive, predicted);
    let recall = ratio(true_positive, support);
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    ClassMetrics { precision, recall, f1, support }
}

fn ratio(numerator: u64, denominator: u64) -> f32 {
    if denominator == 0 { 0.0 } else { (numerator as f64 / denominator as f64) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    /// Six samples, three classes. Predicted (arg-max) classes: [0, 0, 1, 1, 2, 0].
    fn example() -> (Array2<f32>, Vec<usize>) {
        let p = array![
            [0.7f32, 0.2, 0.1], // true 0, predicted 0
            [0.5, 0.4, 0.1],    // true 0, predicted 0
            [0.3, 0.6, 0.1],    // true 0, predicted 1 (0 is second: in top 2)
            [0.1, 0.8, 0.1],    // true 1, predicted 1
            [0.2, 0.3, 0.5],    // true 1, predicted 2 (1 is second: in top 2)
            [0.6, 0.1, 0.3],    // true 2, predicted 0 (2 is second: in top 2)
        ];
        (p, vec![0, 0, 0, 1, 1, 2])
    }

    #[test]
    fn hand_computed_three_class_example() {
        // By hand from the rows above:
        //   confusion (row = true, column = predicted): [[2,1,0],[0,1,1],[1,0,0]]
        //   accuracy = (2 + 1 + 0) / 6 = 0.5; top-2: all six labels are first or second → 1.0
        //   class 0: TP 2, predicted 3 (col 0), support 3 → P = 2/3, R = 2/3, F1 = 2/3
        //   class 1: TP 1, predicted 2 (col 1), support 2 → P = 1/2, R = 1/2, F1 = 1/2
        //   class 2: TP 0, predicted 1 (col 2), support 1 → P = 0, R = 0, F1 = 0 (0/0 → 0)
        let (p, y) = example();
        let e = evaluate(p.view(), &y, 2).unwrap();
        assert_eq!(e.count, 6);
        assert_eq!(e.confusion, vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 0]]);
        assert_eq!(e.accuracy, 0.5);
        assert_eq!((e.top_k, e.top_k_accuracy), (2, 1.0));
        let expected = [(2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3), (0.5, 0.5, 0.5, 2), (0.0, 0.0, 0.0, 1)];
        for (m, (precision, recall, f1, support)) in e.per_class.iter().zip(expected) {
            assert!((m.precision - precision).abs() < 1e-6, "{m:?}");
            assert!((m.recall - recall).abs() < 1e-6, "{m:?}");
            assert!((m.f1 - f1).abs() < 1e-6, "{m:?}");
            assert_eq!(m.support, support);
        }
        // top-1 equals accuracy; k beyond the class count is limited to it.
        assert_eq!(evaluate(p.view(), &y, 1).unwrap().top_k_accuracy, 0.5);
        let all = evaluate(p.view(), &y, 10).unwrap();
        assert_eq!((all.top_k, all.top_k_accuracy), (3, 1.0));
        assert_eq!(evaluate(p.view(), &y, 0).unwrap().top_k, 1);
    }

    #[test]
    fn unpredicted_and_absent_classes_give_zero_not_nan() {
        // Everything predicted as class 0; class 2 never occurs.
        let p = array![[0.9f32, 0.1, 0.0], [0.8, 0.2, 0.0]];
        let e = evaluate(p.view(), &[0, 1], 1).unwrap();
        // class 0: TP 1, predicted 2, support 1 → P 0.5, R 1, F1 = 2·0.5·1/1.5 = 2/3
        assert!((e.per_class[0].f1 - 2.0 / 3.0).abs() < 1e-6);
        // class 1: predicted 0 times → P = 0/0 → 0; class 2: support 0 → R = 0/0 → 0
        assert_eq!((e.per_class[1].precision, e.per_class[1].recall, e.per_class[1].f1), (0.0, 0.0, 0.0));
        assert_eq!((e.per_class[2].precision, e.per_class[2].recall, e.per_class[2].support), (0.0, 0.0, 0));
    }

    #[test]
    fn ties_go_to_the_lower_class() {
        let p = array![[0.4f32, 0.4, 0.2]];
        assert_eq!(evaluate(p.view(), &[0], 1).unwrap().accuracy, 1.0);
        assert_eq!(evaluate(p.view(), &[1], 1).unwrap().top_k_accuracy, 0.0);
        assert_eq!(evaluate(p.view(), &[1], 2).unwrap().top_k_accuracy, 1.0);
    }

    #[test]
    fn empty_labels_give_zero_counts() {
        let p = Array2::<f32>::zeros((0, 3));
        let e = evaluate(p.view(), &[], 5).unwrap();
        assert_eq!((e.count, e.accuracy, e.top_k_accuracy), (0, 0.0, 0.0));
        assert_eq!(e.confusion, vec![vec![0; 3]; 3]);
        assert_eq!(log_loss(p.view(), &[]).unwrap(), 0.0);
        let none = Array2::<f32>::zeros((0, 0));
        assert_eq!(evaluate(none.view(), &[], 1).unwrap().top_k, 0);
    }

    #[test]
    fn mismatched_input_is_an_error() {
        let (p, _) = example();
        assert_eq!(evaluate(p.view(), &[0, 1], 1), Err(MetricsError::CountMismatch { rows: 6, labels: 2 }));
        let y = [0, 0, 0, 1, 1, 3];
        assert_eq!(evaluate(p.view(), &y, 1), Err(MetricsError::LabelOutOfRange { label: 3, classes: 3 }));
        assert!(log_loss(p.view(), &y).is_err());
    }

    #[test]
    fn log_loss_matches_numpy() {
        // numpy: P = <example>; y = [0,0,0,1,1,2]
        //        -np.log(np.maximum(P.astype(np.float32)[range(6), y], 1e-7)).mean()
        let (p, y) = example();
        assert!((f64::from(log_loss(p.view(), &y).unwrap()) - 0.8141473286).abs() < 1e-6);
        // A zero probability is clipped to 1e-7: -log(1e-7) = 16.1180956510
        let zero = array![[1.0f32, 0.0]];
        assert!((f64::from(log_loss(zero.view(), &[1]).unwrap()) - 16.118095651).abs() < 1e-5);
    }

    #[test]
    fn evaluation_serialises() {
        let (p, y) = example();
        let e = evaluate(p.view(), &y, 2).unwrap();
        let text = serde_json::to_string(&e).unwrap();
        let back: Evaluation = serde_json::from_str(&text).unwrap();
        // The figures come back; the row-by-row predictions are not reported.
        assert!(!text.contains("predictions"), "{text}");
        assert_eq!(back, Evaluation { predictions: Vec::new(), ..e });
    }

    #[test]
    fn each_row_keeps_its_predicted_class_and_probability() {
        let p = array![[0.2f32, 0.7, 0.1], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]];
        let e = evaluate(p.view(), &[1, 1, 0], 1).unwrap();
        let got: Vec<(usize, f32)> = e.predictions.iter().map(|p| (p.class, p.score)).collect();
        // The tie goes to the lower index, as the confusion matrix counts it.
        assert_eq!(got, [(1, 0.7), (0, 0.5), (2, 0.8)]);
        assert_eq!(e.confusion[1][0], 1);
    }
}
