//! Phase 2's checkpoint: after every epoch, everything the next epoch needs — the variables,
//! the optimiser's moments and the best epoch so far — so that a job taken over by another
//! worker continues phase 2 where it stopped, exactly as an uninterrupted run would.
//!
//! The tail of a large base has millions of parameters (15 M for ResNet-50's last stage, so
//! four copies are 240 MB), too many for JSON: the file is safetensors, one 1-D tensor per
//! buffer (`values.{i}`, `first.{i}`, `second.{i}`, `best.{i}`) and the counters in the
//! metadata. A checkpoint of the earlier form (a JSON header line, then the buffers) is still
//! read, so a job resumes across an upgrade.

use serde::Deserialize;

use crate::codec::tensors::{self, Named, Reader};
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

/// The earlier form's header line.
#[derive(Deserialize)]
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

const FORMAT: &str = "graft.fine-tune-checkpoint";
const VERSION: &str = "2";
/// The buffer groups: the variables, the optimiser's two moments, the best epoch's variables.
const GROUPS: [&str; 4] = ["values", "first", "second", "best"];

impl TuneCheckpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let groups = [&self.values, &self.optimizer.first, &self.optimizer.second, &self.best_values];
        let named: Vec<Named<'_>> = GROUPS
            .iter()
            .zip(groups)
            .flat_map(|(group, buffers)| {
                buffers.iter().enumerate().map(move |(i, values)| Named {
                    name: format!("{group}.{i}"),
                    shape: vec![values.len()],
                    values,
                })
            })
            .collect();
        let counts = groups.map(|g| g.len().to_string()).join(",");
        let best = self.fit.best;
        let metadata = [
            ("format", FORMAT.to_owned()),
            ("version", VERSION.to_owned()),
            ("counts", counts),
            ("epoch", self.fit.epoch.to_string()),
            ("step", self.optimizer.step.to_string()),
            ("best_epoch", best.best_epoch.to_string()),
            ("best_metric", serde_json::to_string(&best.best_metric).expect("a number or null")),
            ("since", best.epochs_since_best.to_string()),
            ("elapsed_seconds", serde_json::to_string(&self.elapsed_seconds).expect("a number")),
        ];
        tensors::write(&named, &metadata)
    }

    /// Reads [`TuneCheckpoint::to_bytes`] (or the earlier form); `None` for anything else or a
    /// damaged file.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match Reader::open(bytes) {
            Ok(file) => Self::from_safetensors(&file),
            Err(_) => Self::from_legacy(bytes),
        }
    }

    fn from_safetensors(file: &Reader<'_>) -> Option<Self> {
        if file.meta("format").ok()? != FORMAT || file.meta("version").ok()? != VERSION {
            return None;
        }
        let count = |key: &str| file.meta(key).ok().and_then(|v| v.parse::<usize>().ok());
        let counts: Vec<usize> = file.meta("counts").ok()?.split(',').map(|c| c.parse().ok()).collect::<Option<_>>()?;
        if counts.len() != GROUPS.len() || counts.iter().sum::<usize>() != file.tensor_count() {
            return None;
        }
        let read_group = |group: &str, n: usize| -> Option<Vec<Vec<f32>>> {
            (0..n)
                .map(|i| {
                    let name = format!("{group}.{i}");
                    file.f32s(&name, &file.shape(&name).ok()?).ok()
                })
                .collect()
        };
        let values = read_group(GROUPS[0], counts[0])?;
        let first = read_group(GROUPS[1], counts[1])?;
        let second = read_group(GROUPS[2], counts[2])?;
        let best_values = read_group(GROUPS[3], counts[3])?;
        let best_metric: Option<f32> = serde_json::from_str(file.meta("best_metric").ok()?).ok()?;
        let best = BestEpoch { best_epoch: count("best_epoch")?, best_metric, epochs_since_best: count("since")? };
        Some(Self {
            fit: FitState { epoch: count("epoch")?, best },
            values,
            optimizer: OptimizerState { step: file.meta("step").ok()?.parse().ok()?, first, second },
            best_values,
            elapsed_seconds: serde_json::from_str(file.meta("elapsed_seconds").ok()?).ok()?,
        })
    }

    /// The earlier form: a JSON header line, then every buffer's f32s in the header's order.
    fn from_legacy(bytes: &[u8]) -> Option<Self> {
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

    #[test]
    fn a_checkpoint_of_the_earlier_form_still_loads() {
        let header = serde_json::json!({
            "epoch": 3, "step": 12, "best_epoch": 2, "best_metric": 0.75, "since": 1, "elapsed_seconds": 4.5,
            "values": [2, 1], "first": [2, 1], "second": [2, 1], "best": [2, 1],
        });
        let mut bytes = serde_json::to_vec(&header).unwrap();
        bytes.push(b'\n');
        for v in [1.0f32, -2.5, 3.25, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0, 1.0, 2.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let read = TuneCheckpoint::from_bytes(&bytes).unwrap();
        assert_eq!(
            read.fit,
            FitState { epoch: 3, best: BestEpoch { best_epoch: 2, best_metric: Some(0.75), epochs_since_best: 1 } }
        );
        assert_eq!(read.values, vec![vec![1.0, -2.5], vec![3.25]]);
        assert_eq!((read.optimizer.step, &read.optimizer.second), (12, &vec![vec![0.4, 0.5], vec![0.6]]));
        assert_eq!((read.best_values, read.elapsed_seconds), (vec![vec![0.0, 1.0], vec![2.0]], 4.5));
        assert_eq!(TuneCheckpoint::from_bytes(&bytes[..bytes.len() - 1]), None);
    }
}
