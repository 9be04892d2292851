//! Phase 2's checkpoint: after every epoch, everything the next epoch needs — the variables,
//! the optimiser's moments and the best epoch so far — so that a job taken over by another
//! worker continues phase 2 where it stopped, exactly as an uninterrupted run would.
//!
//! The tail of a large base has millions of parameters (15 M for ResNet-50's last stage, so
//! four copies are 240 MB), too many for JSON: the file is a JSON header line followed by the
//! f32 buffers, little-endian, in the header's order.

use serde::{Deserialize, Serialize};

use crate::train::{BestEpoch, FitState, OptimizerState};

/// The state of phase 2 after `fit.epoch` epochs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TuneCheckpoint {
    pub fit: FitState,
    /// Every variable (tail, then head), flattened.
    pub values: Vec<Vec<f32>>,
    pub optimizer: OptimizerState,
    pub best_values: Vec<Vec<f32>>,
    /// Seconds phase 2 had run, for its reports.
    pub elapsed_seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    epoch: usize,
    step: u64,
    best_epoch: usize,
    best_metric: Option<f32>,
    since: usize,
    elapsed_seconds: f64,
    /// Lengths of the buffers that follow: values, first moments, second moments, best values.
    values: Vec<usize>,
    first: Vec<usize>,
    second: Vec<usize>,
    best: Vec<usize>,
}

impl TuneCheckpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let lengths = |buffers: &[Vec<f32>]| buffers.iter().map(Vec::len).collect();
        let header = Header {
            epoch: self.fit.epoch,
            step: self.optimizer.step,
            best_epoch: self.fit.best.best_epoch,
            best_metric: self.fit.best.best_metric,
            since: self.fit.best.epochs_since_best,
            elapsed_seconds: self.elapsed_seconds,
            values: lengths(&self.values),
            first: lengths(&self.optimizer.first),
            second: lengths(&self.optimizer.second),
            best: lengths(&self.best_values),
        };
        let mut bytes = serde_json::to_vec(&header).expect("a header of numbers serialises");
        bytes.push(b'\n');
        let buffers = [&self.values, &self.optimizer.first, &self.optimizer.second, &self.best_values];
        for buffer in buffers.into_iter().flatten() {
            bytes.extend_from_slice(crate::codec::to_bytes(buffer));
        }
        bytes
    }

    /// Reads [`TuneCheckpoint::to_bytes`]; `None` for anything else or a damaged file.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let header: Header = serde_json::from_slice(&bytes[..newline]).ok()?;
        let mut rest = &bytes[newline + 1..];
        let mut take = |lengths: &[usize]| -> Option<Vec<Vec<f32>>> {
            lengths
                .iter()
                .map(|&len| {
                    let raw = rest.get(..len.checked_mul(4)?)?;
                    rest = &rest[len * 4..];
                    crate::codec::from_bytes(raw)
                })
                .collect()
        };
        let values = take(&header.values)?;
        let first = take(&header.first)?;
        let second = take(&header.second)?;
        let best_values = take(&header.best)?;
        if !rest.is_empty() {
            return None;
        }
        let best = BestEpoch {
            best_epoch: header.best_epoch,
            best_metric: header.best_metric,
            epochs_since_best: header.since,
        };
        Some(Self {
            fit: FitState { epoch: header.epoch, best },
            values,
            optimizer: OptimizerState { step: header.step, first, second },
            best_values,
            elapsed_seconds: header.elapsed_seconds,
        })
    }

    /// Whether it fits variables of these sizes.
    pub fn fits(&self, sizes: &[usize]) -> bool {
        let fit = |buffers: &[Vec<f32>]| buffers.iter().map(Vec::len).eq(sizes.iter().copied());
        fit(&self.values) && fit(&self.best_values) && fit(&self.optimizer.first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let best = BestEpoch { best_epoch: 2, best_metric: Some(0.75), epochs_since_best: 1 };
        let checkpoint = TuneCheckpoint {
            fit: FitState { epoch: 3, best },
            values: vec![vec![1.0, -2.5], vec![3.25]],
            optimizer: OptimizerState {
                step: 12,
                first: vec![vec![0.1, 0.2], vec![0.3]],
                second: vec![vec![0.4, 0.5], vec![0.6]],
            },
            best_values: vec![vec![0.0, 1.0], vec![2.0]],
            elapsed_seconds: 4.5,
        };
        let bytes = checkpoint.to_bytes();
        assert_eq!(TuneCheckpoint::from_bytes(&bytes), Some(checkpoint.clone()));
        assert!(checkpoint.fits(&[2, 1]) && !checkpoint.fits(&[2, 2]));
        for cut in [0, 10, bytes.len() - 1] {
            assert_eq!(TuneCheckpoint::from_bytes(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(TuneCheckpoint::from_bytes(&longer), None);
    }
}
