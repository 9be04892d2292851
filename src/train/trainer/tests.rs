//! Tests of the training loop on synthetic data.

use super::*;
use std::time::Instant;

use crate::train::config::{EarlyStopping, OptimizerKind, StopMetric};
use crate::train::metrics::evaluate;
use crate::train::standardize::Scaling;
use ndarray::Array2;
use rand::Rng;

/// `per_class` points per class around `classes` random centres in `dim` dimensions: centres
/// uniform in ±`spread`, unit Gaussian noise (Box–Muller). Rows are interleaved by class.
fn blobs(classes: usize, per_class: usize, dim: usize, spread: f32, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = Array2::from_shape_simple_fn((classes, dim), || (rng.random::<f32>() * 2.0 - 1.0) * spread);
    let labels: Vec<usize> = (0..classes * per_class).map(|i| i % classes).collect();
    let mut x = Array2::zeros((labels.len(), dim));
    for (mut row, &label) in x.axis_iter_mut(Axis(0)).zip(&labels) {
        for (v, c) in row.iter_mut().zip(centres.row(label)) {
            *v = c + gaussian(&mut rng);
        }
    }
    (x, labels)
}

fn gaussian(rng: &mut StdRng) -> f32 {
    let u1 = 1.0 - rng.random::<f32>(); // (0, 1]: keeps ln finite
    let u2 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Three separable blobs in 16-D: 300 training rows, 150 validation rows from the same centres.
fn blob_data() -> TrainData {
    sized_blob_data(150)
}

/// The blobs with `per_class` rows of each class, two thirds of them for training.
fn sized_blob_data(per_class: usize) -> TrainData {
    let (x, y) = blobs(3, per_class, 16, 2.0, 42);
    let train = 2 * y.len() / 3;
    let train_rows: Vec<usize> = (0..train).collect();
    let valid_rows: Vec<usize> = (train..y.len()).collect();
    TrainData {
        train: vec![x.select(Axis(0), &train_rows)],
        train_labels: y[..train].to_vec(),
        valid: x.select(Axis(0), &valid_rows),
        valid_labels: y[train..].to_vec(),
        classes: 3,
    }
}

fn quiet(_: &EpochReport, _: &Checkpoint) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn valid_accuracy(head: &Head, data: &TrainData) -> f32 {
    evaluate(head.forward(data.valid.view()).view(), &data.valid_labels, 1).unwrap().accuracy
}

/// The history without wall-clock times, which differ between any two runs.
fn timeless(history: &[EpochReport]) -> Vec<EpochReport> {
    history.iter().map(|r| EpochReport { elapsed_seconds: 0.0, ..r.clone() }).collect()
}

#[test]
fn separable_blobs_are_learned_by_every_optimiser() {
    let data = blob_data();
    for (optimizer, learning_rate) in
        [(OptimizerKind::Adam, 0.01), (OptimizerKind::Nadam, 0.01), (OptimizerKind::Sgd, 0.05)]
    {
        let config = TrainConfig { optimizer, learning_rate, ..TrainConfig::default() };
        let outcome = train(&config, &data, None, &mut quiet).unwrap();
        let accuracy = valid_accuracy(&outcome.head, &data);
        assert!(accuracy >= 0.95, "{optimizer:?}: {accuracy}");
        assert_eq!(outcome.history.len(), outcome.epochs_run);
        let best = &outcome.history[outcome.best_epoch - 1];
        assert_eq!(best.valid_accuracy, Some(accuracy));
    }
}

#[test]
fn separable_blobs_are_learned_with_a_hidden_layer_and_dropout() {
    let data = blob_data();
    let config = TrainConfig {
        hidden_units: Some(32),
        dropout: 0.3,
        learning_rate: 0.01,
        weight_decay: 1e-4,
        class_weights: true,
        ..TrainConfig::default()
    };
    let outcome = train(&config, &data, None, &mut quiet).unwrap();
    assert_eq!(outcome.head.hidden_units(), Some(32));
    let accuracy = valid_accuracy(&outcome.head, &data);
    assert!(accuracy >= 0.95, "{accuracy}");
    let last = outcome.history.last().unwrap();
    assert!(last.train_loss < outcome.history[0].train_loss);
}

/// Few noisy examples in many dimensions: the head first learns the centres, then memorises the
/// flipped labels, so the validation loss falls and then rises.
fn overfitting_data() -> TrainData {
    let (x, mut y) = blobs(3, 20, 40, 0.6, 7);
    let mut rng = StdRng::seed_from_u64(8);
    for label in y.iter_mut() {
        if rng.random::<f32>() < 0.3 {
            *label = (*label + 1) % 3;
        }
    }
    // The validation split: the same centres (same seed), more points, clean labels.
    let (valid, valid_labels) = blobs(3, 100, 40, 0.6, 7);
    TrainData { train: vec![x], train_labels: y, valid, valid_labels, classes: 3 }
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let data = overfitting_data();
    let config = TrainConfig {
        epochs: 300,
        learning_rate: 0.02,
        batch_size: 16,
        early_stopping: Some(EarlyStopping { patience: 4, metric: StopMetric::ValLoss }),
        ..TrainConfig::default()
    };
    let mut last_head = None;
    let outcome = train(&config, &data, None, &mut |_, checkpoint| {
        last_head = Some(checkpoint.head.clone());
        ControlFlow::Continue(())
    })
    .unwrap();

    assert!(outcome.stopped_early);
    assert!(outcome.best_epoch > 1, "the validation loss should improve at first: {:?}", outcome.history);
    assert_eq!(outcome.epochs_run, outcome.best_epoch + 4);
    let losses: Vec<f32> = outcome.history.iter().map(|r| r.valid_loss.unwrap()).collect();
    let best = losses[outcome.best_epoch - 1];
    assert!(losses.iter().all(|&l| l >= best));
    assert!(losses[outcome.epochs_run - 1] > best);
    // The returned head is the best epoch's, not the last one.
    let (loss, _) = evaluate_split(&outcome.head, data.valid.view(), &data.valid_labels);
    assert_eq!(loss, best);
    assert_ne!(Some(&outcome.head), last_head.as_ref());
    assert!(outcome.history.iter().skip(outcome.best_epoch - 1).all(|r| r.best_epoch == outcome.best_epoch));
}

#[test]
fn early_stopping_on_accuracy_keeps_the_first_best_epoch() {
    let data = overfitting_data();
    let config = TrainConfig {
        epochs: 300,
        learning_rate: 0.02,
        early_stopping: Some(EarlyStopping { patience: 3, metric: StopMetric::ValAccuracy }),
        ..TrainConfig::default()
    };
    let outcome = train(&config, &data, None, &mut quiet).unwrap();
    assert!(outcome.stopped_early);
    let accuracies: Vec<f32> = outcome.history.iter().map(|r| r.valid_accuracy.unwrap()).collect();
    let best = accuracies[outcome.best_epoch - 1];
    // Strictly better than every earlier epoch, at least as good as every later one.
    assert!(accuracies[..outcome.best_epoch - 1].iter().all(|&a| a < best));
    assert!(accuracies.iter().all(|&a| a <= best));
    assert_eq!(valid_accuracy(&outcome.head, &data), best);
}

/// Trains `config` straight through, then again stopped after `split` epochs, with the
/// checkpoint sent through JSON and resumed; both runs must agree exactly.
fn check_resume(config: &TrainConfig, data: &TrainData, split: usize) {
    let mut straight_checkpoints = Vec::new();
    let straight = train(config, data, None, &mut |_, c| {
        straight_checkpoints.push(c.clone());
        ControlFlow::Continue(())
    })
    .unwrap();

    let mut saved = None;
    let stopped = train(config, data, None, &mut |report, checkpoint| {
        if report.epoch == split {
            saved = Some((checkpoint.clone(), serde_json::to_string(checkpoint).unwrap()));
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(stopped, Err(TrainError::Cancelled { epoch: split }));
    let (original, json) = saved.unwrap();
    let checkpoint: Checkpoint = serde_json::from_str(&json).unwrap();
    assert_eq!(checkpoint, original, "the JSON round trip is exact");
    let straight_at_split = &straight_checkpoints[split - 1];
    assert_eq!((&checkpoint.head, &checkpoint.optimizer), (&straight_at_split.head, &straight_at_split.optimizer));

    let mut resumed_checkpoints = Vec::new();
    let resumed = train(config, data, Some(checkpoint), &mut |_, c| {
        resumed_checkpoints.push(c.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(resumed.head, straight.head, "{:?}", config.optimizer);
    assert_eq!((resumed.best_epoch, resumed.epochs_run), (straight.best_epoch, straight.epochs_run));
    assert_eq!(resumed.stopped_early, straight.stopped_early);
    assert_eq!(timeless(&resumed.history), timeless(&straight.history));
    let last = |checkpoints: &[Checkpoint]| {
        let c = checkpoints.last().unwrap();
        (c.head.clone(), c.optimizer.clone())
    };
    assert_eq!(last(&resumed_checkpoints), last(&straight_checkpoints));
}

#[test]
fn a_resumed_run_continues_exactly() {
    let mut data = blob_data();
    // A second, "augmented" variant: epochs alternate between the two.
    data.train.push(data.train[0].mapv(|v| v * 0.9 + 0.1));
    for optimizer in [OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::Nadam] {
        let config = TrainConfig {
            epochs: 6,
            optimizer,
            hidden_units: Some(8),
            dropout: 0.25,
            weight_decay: 1e-3,
            class_weights: true,
            batch_size: 20,
            seed: 11,
            ..TrainConfig::default()
        };
        check_resume(&config, &data, 3);
    }
}

#[test]
fn a_resumed_run_keeps_its_early_stopping_state() {
    let data = overfitting_data();
    let config = TrainConfig {
        epochs: 60,
        learning_rate: 0.02,
        batch_size: 16,
        early_stopping: Some(EarlyStopping { patience: 4, metric: StopMetric::ValLoss }),
        ..TrainConfig::default()
    };
    let straight = train(&config, &data, None, &mut quiet).unwrap();
    assert!(straight.stopped_early);
    // Interrupt two epochs after the best one, while patience is running.
    check_resume(&config, &data, straight.best_epoch + 2);
}

#[test]
fn variants_alternate_by_epoch() {
    let mut data = blob_data();
    let config = TrainConfig { epochs: 2, early_stopping: None, ..TrainConfig::default() };
    let one = train(&config, &data, None, &mut quiet).unwrap();
    data.train.push(data.train[0].mapv(|v| -v));
    let two = train(&config, &data, None, &mut quiet).unwrap();
    // Epoch 1 reads variant 0 in both runs; epoch 2 differs.
    assert_eq!(one.history[0].train_loss, two.history[0].train_loss);
    assert_ne!(one.history[1].train_loss, two.history[1].train_loss);
}

#[test]
fn the_seed_decides_everything() {
    let data = blob_data();
    let config = TrainConfig { epochs: 3, hidden_units: Some(4), dropout: 0.5, ..TrainConfig::default() };
    let a = train(&config, &data, None, &mut quiet).unwrap();
    let b = train(&config, &data, None, &mut quiet).unwrap();
    assert_eq!(a.head, b.head);
    let c = train(&TrainConfig { seed: 1, ..config }, &data, None, &mut quiet).unwrap();
    assert_ne!(a.head, c.head);
}

#[test]
fn cancelling_stops_after_that_epoch() {
    let data = blob_data();
    let mut seen = Vec::new();
    let result = train(&TrainConfig::default(), &data, None, &mut |report, checkpoint| {
        seen.push((report.epoch, checkpoint.fit.epoch, report.epochs));
        if report.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    assert_eq!(result, Err(TrainError::Cancelled { epoch: 2 }));
    assert_eq!(seen, [(1, 1, 20), (2, 2, 20)]);
}

#[test]
fn without_validation_every_epoch_runs_and_the_last_is_kept() {
    let mut data = blob_data();
    data.valid = Array2::zeros((0, 16));
    data.valid_labels.clear();
    let config = TrainConfig { epochs: 4, ..TrainConfig::default() };
    let mut last = None;
    let outcome = train(&config, &data, None, &mut |_, c| {
        last = Some(c.head.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((outcome.epochs_run, outcome.best_epoch, outcome.stopped_early), (4, 4, false));
    assert_eq!(Some(outcome.head), last);
    assert!(outcome.history.iter().all(|r| r.valid_loss.is_none() && r.valid_accuracy.is_none()));
    assert!(outcome.history.windows(2).all(|w| w[0].elapsed_seconds <= w[1].elapsed_seconds));
}

#[test]
fn bad_input_is_refused_before_training() {
    let data = blob_data();
    let config = TrainConfig { epochs: 0, ..TrainConfig::default() };
    assert!(matches!(train(&config, &data, None, &mut quiet), Err(TrainError::InvalidConfig(_))));
    let mut bad = blob_data();
    bad.train_labels[5] = 3;
    assert!(matches!(train(&TrainConfig::default(), &bad, None, &mut quiet), Err(TrainError::InvalidData(_))));
}

#[test]
fn a_checkpoint_from_another_run_is_refused() {
    let data = blob_data();
    let config = TrainConfig { epochs: 2, hidden_units: Some(4), ..TrainConfig::default() };
    let mut saved = None;
    train(&config, &data, None, &mut |_, c| {
        saved = Some(c.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let saved = saved.unwrap();
    let refuse = |config: &TrainConfig, checkpoint: &Checkpoint| {
        matches!(train(config, &data, Some(checkpoint.clone()), &mut quiet), Err(TrainError::InvalidCheckpoint(_)))
    };
    assert!(refuse(&TrainConfig { hidden_units: Some(5), ..config.clone() }, &saved));
    assert!(refuse(&TrainConfig { hidden_units: None, ..config.clone() }, &saved));
    assert!(refuse(&TrainConfig { optimizer: OptimizerKind::Sgd, ..config.clone() }, &saved));
    let mut broken = saved.clone();
    broken.history.pop();
    assert!(refuse(&config, &broken));
    let mut broken = saved.clone();
    broken.optimizer.first[0].pop();
    assert!(refuse(&config, &broken));
    // The same configuration with more epochs continues from it.
    let more = TrainConfig { epochs: 3, early_stopping: None, ..config.clone() };
    assert_eq!(train(&more, &data, Some(saved), &mut quiet).unwrap().epochs_run, 3);
}

#[test]
fn a_finished_checkpoint_returns_at_once() {
    let data = blob_data();
    let config = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let mut saved = None;
    let first = train(&config, &data, None, &mut |_, c| {
        saved = Some(c.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut calls = 0;
    let again = train(&config, &data, saved, &mut |_, _| {
        calls += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(calls, 0);
    assert_eq!(again, first);
}

#[test]
fn divergence_is_an_error_not_a_nan_head() {
    let mut data = blob_data();
    data.train[0].mapv_inplace(|v| v * 1e18);
    let config = TrainConfig { optimizer: OptimizerKind::Sgd, learning_rate: 1e10, ..TrainConfig::default() };
    assert_eq!(train(&config, &data, None, &mut quiet), Err(TrainError::Diverged { epoch: 1 }));
}

/// The brief's speed target: 3,000 × 2,048 features, 5 classes, 50 epochs, "well under a few
/// seconds" in release. Run with `cargo test --release --lib train:: -- --ignored`.
#[test]
#[ignore = "timing; meaningful in release builds only"]
fn fifty_epochs_of_a_realistic_head_are_fast() {
    let (x, y) = blobs(5, 700, 2048, 0.2, 1);
    let rows: Vec<usize> = (0..3000).collect();
    let valid_rows: Vec<usize> = (3000..3500).collect();
    let data = TrainData {
        train: vec![x.select(Axis(0), &rows)],
        train_labels: y[..3000].to_vec(),
        valid: x.select(Axis(0), &valid_rows),
        valid_labels: y[3000..].to_vec(),
        classes: 5,
    };
    let config = TrainConfig { epochs: 50, early_stopping: None, ..TrainConfig::default() };
    let started = Instant::now();
    let outcome = train(&config, &data, None, &mut quiet).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("50 epochs: {seconds:.2} s, valid accuracy {:?}", outcome.history.last().unwrap().valid_accuracy);
    assert!(seconds < 3.0, "{seconds} s");
}

#[test]
fn a_tuned_run_resumes_exactly_mid_schedule() {
    let config = TrainConfig { epochs: 8, hidden_units: Some(8), seed: 5, ..TrainConfig::default() }.tuned();
    check_resume(&config, &blob_data(), 4);
    // A scaled run resumes on the same scaled rows, recomputed from the data.
    check_resume(&TrainConfig { scaling: Some(Scaling::Shared), ..config }, &badly_scaled_data(150), 4);
}

/// The blobs with every feature moved far from zero and scaled unevenly, as pooled features
/// of a real base often are (post-activation means of several units, spreads from 0.01 to 10).
fn badly_scaled_data(per_class: usize) -> TrainData {
    let mut data = sized_blob_data(per_class);
    let scale: Vec<f32> = (0..16).map(|j| 10f32.powf(j as f32 / 5.0 - 2.0)).collect();
    let skew = |x: &Array2<f32>| {
        let mut x = x.clone();
        for mut row in x.rows_mut() {
            for (v, s) in row.iter_mut().zip(&scale) {
                *v = *v * s + 30.0;
            }
        }
        x
    };
    data.train = data.train.iter().map(skew).collect();
    data.valid = skew(&data.valid);
    data
}

#[test]
fn a_standardising_run_returns_a_head_on_raw_features() {
    let data = badly_scaled_data(150);
    let config = TrainConfig {
        learning_rate: 0.01,
        scaling: Some(Scaling::PerFeature),
        early_stopping: None,
        seed: 2,
        ..TrainConfig::default()
    };
    let outcome = train(&config, &data, None, &mut quiet).unwrap();
    // The history was measured on standardised validation rows; the folded head on the raw
    // rows must score the same.
    let reported = outcome.history.last().unwrap().valid_accuracy.unwrap();
    assert_eq!(valid_accuracy(&outcome.head, &data), reported);
    assert!(reported > 0.95, "{reported}");
}

#[test]
fn per_feature_scaling_learns_what_raw_features_miss_when_badly_scaled() {
    let data = badly_scaled_data(600);
    let raw = train(&TrainConfig::default(), &data, None, &mut quiet).unwrap();
    let scaled_config = TrainConfig { scaling: Some(Scaling::PerFeature), ..TrainConfig::default() };
    let scaled = train(&scaled_config, &data, None, &mut quiet).unwrap();
    let (raw, scaled) = (valid_accuracy(&raw.head, &data), valid_accuracy(&scaled.head, &data));
    assert!(scaled > 0.95 && scaled > raw + 0.1, "scaled {scaled}, raw {raw}");
}

#[test]
fn the_tuned_recipe_converges_where_twenty_keras_epochs_stop_short() {
    let data = sized_blob_data(600);
    let keras =
        train(&TrainConfig { early_stopping: None, ..TrainConfig::default() }, &data, None, &mut quiet).unwrap();
    let tuned = train(&TrainConfig::default().tuned(), &data, None, &mut quiet).unwrap();
    let loss = |outcome: &TrainOutcome| outcome.history[outcome.best_epoch - 1].valid_loss.unwrap();
    assert!(loss(&tuned) < 0.8 * loss(&keras), "tuned {}, keras {}", loss(&tuned), loss(&keras));
    assert!(valid_accuracy(&tuned.head, &data) >= valid_accuracy(&keras.head, &data));
}

/// An explicit Keras-style job (Adam 1e-3, a hidden layer with dropout, batch 16) trains
/// exactly as it did before the convex solver and the tuned recipe existed: the losses of
/// each epoch, bit for bit, and the kept head's outputs, as the trainer at 8020cb8 gave them.
#[test]
fn an_explicit_keras_recipe_trains_bit_for_bit_as_before() {
    let data = blob_data();
    let config = TrainConfig {
        optimizer: OptimizerKind::Adam,
        learning_rate: 1e-3,
        epochs: 4,
        batch_size: 16,
        hidden_units: Some(8),
        dropout: 0.1,
        seed: 3,
        ..TrainConfig::default()
    };
    let outcome = train(&config, &data, None, &mut quiet).unwrap();
    let losses: Vec<(u32, u32)> =
        outcome.history.iter().map(|r| (r.train_loss.to_bits(), r.valid_loss.unwrap().to_bits())).collect();
    let pinned =
        [(1066692433, 1064683531), (1065345036, 1062057065), (1062180085, 1059984884), (1060880550, 1058285429)];
    assert_eq!(losses, pinned);
    assert_eq!(outcome.best_epoch, 4);
    let probabilities = outcome.head.forward(data.valid.view());
    let probe: f64 = probabilities.iter().enumerate().map(|(i, &p)| f64::from(p) * (i % 7) as f64).sum();
    assert_eq!(probe, 446.724468574856);
}
