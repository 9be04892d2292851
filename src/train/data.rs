//! The features and labels a head trains on, and the checks that make training them safe.
//!
//! Augmentation is paid for once: `train` holds one or more feature *variants* of the same
//! images in the same row order (variant 0 un-augmented), and epoch e reads variant e % len.

use ndarray::{Array2, ArrayView2};

/// Features (rows = images) and labels for training and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainData {
    /// Feature variants of the training images, all `n × D`, rows in the order of `train_labels`.
    pub train: Vec<Array2<f32>>,
    pub train_labels: Vec<usize>,
    /// `m × D` validation features; `m` may be 0 (no validation split).
    pub valid: Array2<f32>,
    pub valid_labels: Vec<usize>,
    /// Number of classes; labels are `0..classes`.
    pub classes: usize,
}

impl TrainData {
    /// Checks shapes, label ranges and that every feature is a finite number.
    pub fn validate(&self) -> Result<(), String> {
        if self.classes < 2 {
            return Err(format!("a classifier needs at least 2 classes, not {}", self.classes));
        }
        let first = self.train.first().ok_or("no training features")?;
        let (rows, dim) = first.dim();
        if rows == 0 || dim == 0 {
            return Err(format!("training features are {rows}×{dim}; need at least one row and one column"));
        }
        if rows != self.train_labels.len() {
            return Err(format!("{rows} training rows but {} labels", self.train_labels.len()));
        }
        if let Some((i, variant)) = self.train.iter().enumerate().find(|(_, v)| v.dim() != (rows, dim)) {
            return Err(format!("feature variant {i} is {:?}, variant 0 is {rows}×{dim}", variant.dim()));
        }
        let (valid_rows, valid_dim) = self.valid.dim();
        if valid_rows != self.valid_labels.len() {
            return Err(format!("{valid_rows} validation rows but {} labels", self.valid_labels.len()));
        }
        if valid_rows > 0 && valid_dim != dim {
            return Err(format!("validation features have {valid_dim} columns, training features {dim}"));
        }
        self.check_labels("training", &self.train_labels)?;
        self.check_labels("validation", &self.valid_labels)?;
        if self.train.iter().chain([&self.valid]).any(|x| x.iter().any(|v| !v.is_finite())) {
            return Err("features contain NaN or infinite values".into());
        }
        Ok(())
    }

    fn check_labels(&self, split: &str, labels: &[usize]) -> Result<(), String> {
        match labels.iter().find(|&&label| label >= self.classes) {
            Some(label) => Err(format!("{split} label {label} is out of range for {} classes", self.classes)),
            None => Ok(()),
        }
    }

    /// Width of the feature vectors (0 if there are none; `validate` refuses that).
    pub fn input_dim(&self) -> usize {
        self.train.first().map_or(0, Array2::ncols)
    }

    /// The feature variant epoch `epoch_index` (0-based) trains on.
    pub(crate) fn variant(&self, epoch_index: usize) -> ArrayView2<'_, f32> {
        self.train[epoch_index % self.train.len()].view()
    }

    /// "Balanced" class weights n/(C·n_c) of the training labels.
    pub fn balanced_class_weights(&self) -> Vec<f32> {
        balanced_class_weights(&self.train_labels, self.classes)
    }
}

/// "Balanced" class weights n/(C·n_c); a class absent from `labels` gets 0 (it is never used).
pub(crate) fn balanced_class_weights(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for &label in labels {
        counts[label] += 1;
    }
    let n = labels.len() as f64;
    let c = classes as f64;
    counts.iter().map(|&count| if count == 0 { 0.0 } else { (n / (c * count as f64)) as f32 }).collect()
}

/// Feature vectors as the rows of one matrix, as wide as the first (0×0 for none).
pub fn stack_rows<'a>(rows: impl ExactSizeIterator<Item = &'a [f32]>) -> Result<Array2<f32>, String> {
    let count = rows.len();
    let mut rows = rows.peekable();
    let width = rows.peek().map_or(0, |row| row.len());
    let mut flat = Vec::with_capacity(count * width);
    for row in rows {
        if row.len() != width {
            return Err(format!("feature vectors of uneven width: {} and {width}", row.len()));
        }
        flat.extend_from_slice(row);
    }
    Ok(Array2::from_shape_vec((count, width), flat).expect("count rows of `width` values each"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn data() -> TrainData {
        TrainData {
            train: vec![Array2::zeros((6, 4)), Array2::ones((6, 4))],
            train_labels: vec![0, 0, 0, 1, 2, 2],
            valid: Array2::zeros((2, 4)),
            valid_labels: vec![1, 2],
            classes: 4,
        }
    }

    #[test]
    fn valid_data_passes() {
        assert_eq!(data().validate(), Ok(()));
        let empty_valid = TrainData { valid: Array2::zeros((0, 0)), valid_labels: vec![], ..data() };
        assert_eq!(empty_valid.validate(), Ok(()));
        assert_eq!(data().input_dim(), 4);
        assert_eq!(data().variant(3)[[0, 0]], 1.0);
    }

    #[test]
    fn each_defect_is_reported() {
        type Spoil = fn(&mut TrainData);
        let cases: Vec<(&str, Spoil)> = vec![
            ("2 classes", |d| d.classes = 1),
            ("no training features", |d| d.train.clear()),
            ("at least one row", |d| {
                d.train = vec![Array2::zeros((0, 4))];
                d.train_labels.clear();
            }),
            ("labels", |d| d.train_labels.truncate(5)),
            ("variant 1", |d| d.train[1] = Array2::zeros((6, 3))),
            ("validation rows", |d| d.valid_labels.push(0)),
            ("columns", |d| d.valid = Array2::zeros((2, 5))),
            ("training label 4", |d| d.train_labels[0] = 4),
            ("validation label 9", |d| d.valid_labels[1] = 9),
            ("NaN", |d| d.train[1][[2, 2]] = f32::NAN),
            ("NaN", |d| d.valid[[0, 0]] = f32::INFINITY),
        ];
        for (needle, spoil) in cases {
            let mut d = data();
            spoil(&mut d);
            let error = d.validate().unwrap_err();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn balanced_weights_follow_the_formula() {
        // numpy: y = [0,0,0,1,2,2]; n / (C * np.bincount(y, minlength=4)) with C = 4
        //        → [0.5, 1.5, 0.75, inf]; the absent class 3 gets 0 instead of inf.
        assert_eq!(data().balanced_class_weights(), vec![0.5, 1.5, 0.75, 0.0]);
    }
}
