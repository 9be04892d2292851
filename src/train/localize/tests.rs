//! Tests of the localizer: IoU by hand, a synthetic localisation task, and the training loop's
//! contracts (forward = predict, loss weights, validation, early stopping, cancellation).

use super::graph::{Batch, Graph};
use super::localizer::{BoxHead, CellsBox, SpatialBox};
use super::*;
use std::time::Instant;

use crate::train::config::{EarlyStopping, OptimizerKind, StopMetric};
use crate::train::head::{Dense, HeadError};
use ndarray::{Array1, Axis, array};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H: usize = 8;
const W: usize = 8;
const C: usize = 4;
const CLASSES: usize = 3;

fn gaussian(rng: &mut StdRng) -> f32 {
    let u1 = 1.0 - rng.random::<f32>(); // (0, 1]: keeps ln finite
    let u2 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Length of the overlap of [a0, a1] and [b0, b1].
fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

/// `n` synthetic 8×8×4 feature maps. Each holds one box (w, h uniform in [0.25, 0.6], placed
/// uniformly inside the image). Channel 0 is the share of each cell the box covers (1 inside,
/// fractional on its border) plus noise of sd 0.1; channel 1 is label − 1 plus noise of sd 0.3
/// (the class signal); channels 2 and 3 are unit noise. Pooled = the per-channel mean.
fn synthetic(n: usize, seed: u64) -> LocalizeSplit {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut spatial = Array2::<f32>::zeros((n, H * W * C));
    let mut labels = Vec::with_capacity(n);
    let mut boxes = Vec::with_capacity(n);
    for r in 0..n {
        let label = r % CLASSES;
        let (w, h) = (rng.random_range(0.25..0.6f32), rng.random_range(0.25..0.6f32));
        let (cx, cy) = (rng.random_range(w / 2.0..1.0 - w / 2.0), rng.random_range(h / 2.0..1.0 - h / 2.0));
        for i in 0..H {
            for j in 0..W {
                let (x0, y0) = (j as f32 / W as f32, i as f32 / H as f32);
                let coverage = overlap(x0, x0 + 1.0 / W as f32, cx - w / 2.0, cx + w / 2.0)
                    * overlap(y0, y0 + 1.0 / H as f32, cy - h / 2.0, cy + h / 2.0)
                    * (W * H) as f32;
                let base = (i * W + j) * C;
                spatial[[r, base]] = coverage + 0.1 * gaussian(&mut rng);
                spatial[[r, base + 1]] = label as f32 - 1.0 + 0.3 * gaussian(&mut rng);
                spatial[[r, base + 2]] = gaussian(&mut rng);
                spatial[[r, base + 3]] = gaussian(&mut rng);
            }
        }
        labels.push(label);
        boxes.push([cx, cy, w, h]);
    }
    let pooled = spatial.to_shape((n, H * W, C)).unwrap().mean_axis(Axis(1)).unwrap();
    LocalizeSplit { pooled, spatial: Some(spatial), labels, boxes }
}

fn data(train_rows: usize, valid_rows: usize) -> LocalizeData {
    LocalizeData {
        classes: CLASSES,
        spatial_shape: Some((H, W, C)),
        train: vec![synthetic(train_rows, 1)],
        valid: (valid_rows > 0).then(|| synthetic(valid_rows, 2)),
    }
}

fn quiet(_: &LocalizeEpochReport, _: &LocalizeCheckpoint) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn predict(head: &LocalizerHead, split: &LocalizeSplit) -> (Array2<f32>, Vec<[f32; 4]>) {
    head.predict(split.pooled.view(), split.spatial.as_ref().map(|s| s.view())).unwrap()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn iou_matches_hand_calculations() {
    // 2×2 boxes spanning [0, 2]² and [1, 3]²: they share a 1×1 square; union 4 + 4 − 1 = 7.
    assert!(close(iou([1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]), 1.0 / 7.0));
    // Apart, and merely touching along x = 0.5: no area in common.
    assert_eq!(iou([0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]), 0.0);
    assert_eq!(iou([0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.5, 1.0]), 0.0);
    assert!(close(iou([0.3, 0.6, 0.2, 0.5], [0.3, 0.6, 0.2, 0.5]), 1.0));
    // A 0.4² box inside a 0.8² one with the same centre: 0.16 / 0.64.
    assert!(close(iou([0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.8, 0.8]), 0.25));
    // x ∈ [0.1, 0.5] and [0.3, 0.7], both y ∈ [0.4, 0.6]: 0.04 / (0.08 + 0.08 − 0.04) = 1/3.
    assert!(close(iou([0.3, 0.5, 0.4, 0.2], [0.5, 0.5, 0.4, 0.2]), 1.0 / 3.0));
    assert_eq!(iou([0.5, 0.5, 0.0, 0.4], [0.5, 0.5, 0.4, 0.4]), 0.0);
    assert_eq!(iou([0.5, 0.5, -0.4, 0.4], [0.5, 0.5, 0.4, 0.4]), 0.0);
    assert_eq!(iou([f32::NAN, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]), 0.0);
}

#[test]
fn box_metrics_summarise_the_pairs() {
    let predicted = [[0.3, 0.6, 0.2, 0.5], [1.0, 1.0, 2.0, 2.0], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]];
    let truth = [[0.3, 0.6, 0.2, 0.5], [2.0, 2.0, 2.0, 2.0], [0.8, 0.8, 0.2, 0.2], [0.5, 0.5, 0.8, 0.8]];
    // IoUs 1, 1/7, 0, 1/4 (see above): mean (1 + 1/7 + 1/4)/4 = 39/112; one of four ≥ 0.5.
    let m = box_metrics(&predicted, &truth);
    assert_eq!(m.count, 4);
    assert!(close(m.mean_iou, 39.0 / 112.0), "{m:?}");
    assert_eq!(m.iou_at_least_half, 0.25);
    assert_eq!(box_metrics(&[], &[]), BoxMetrics { count: 0, mean_iou: 0.0, iou_at_least_half: 0.0 });
    assert_eq!(box_metrics(&predicted[..2], &truth).count, 2);
}

#[test]
fn spatial_box_follows_the_formula() {
    // A 2×2 map with one channel, u = 1, a = 0: objectness sigmoid(f) with f = 0, ln 3, −ln 3,
    // −ln 3 in (row, column) order, i.e. o = [[1/2, 3/4], [1/4, 1/4]].
    // Column maxima Mx = [1/2, 3/4]; row maxima My = [3/4, 1/4]; centres 1/4 and 3/4.
    // w = 5/8, h = 1/2, cx = (1/8 + 9/16)/(5/4) = 0.55, cy = (3/16 + 3/16)/1 = 0.375.
    // Scale [2, 1, 1, 1] and shift [0, 0, 0.1, 0] give [1.1, 0.375, 0.725, 0.5].
    let spatial = SpatialBox {
        height: 2,
        width: 2,
        channels: 1,
        weights: vec![1.0],
        bias: 0.0,
        scale: [2.0, 1.0, 1.0, 1.0],
        shift: [0.0, 0.0, 0.1, 0.0],
    };
    let class = Dense::new(array![[0.0f32, 0.0]], array![0.0, 0.0]).unwrap();
    let head = LocalizerHead::new(class, BoxHead::Spatial(spatial)).unwrap();
    let ln3 = 3f32.ln();
    let map = array![[0.0f32, ln3, -ln3, -ln3]];
    let (p, boxes) = head.predict(array![[1.0f32]].view(), Some(map.view())).unwrap();
    assert_eq!(p, array![[0.5f32, 0.5]]);
    for (got, want) in boxes[0].iter().zip([1.1, 0.375, 0.725, 0.5]) {
        assert!((got - want).abs() < 1e-5, "{:?}", boxes[0]);
    }
}

#[test]
fn cell_head_follows_the_formula() {
    // A 1×2 grid of one channel, f = [0, ln 3]. The hidden layer passes f through (ReLU of
    // f ≥ 0); the output layer gives objectness f and raw distances from its bias: ln(e − 1)
    // left and right (softplus 1 cell = 0.5 of the width), 0 up and down (ln 2 cells = ln 2 of
    // the height). Softmax of [0, ln 3] = [1/4, 3/4]. Cell centres x = 0.25, 0.75; y = 0.5.
    // x0 = 1/4·(0.25 − 0.5) + 3/4·(0.75 − 0.5) = 0.125; x1 = 1/4·0.75 + 3/4·1.25 = 1.125:
    // cx = 0.625, w = 1. y0, y1 = 0.5 ∓ ln 2: cy = 0.5, h = 2 ln 2. The class layer reads the
    // attended feature 3/4·ln 3 (weight 1) beside the pooled one (weight 0): p₀ = σ(3/4·ln 3).
    let ln3 = 3f32.ln();
    let raw_one = (std::f32::consts::E - 1.0).ln();
    let cells = CellsBox {
        height: 1,
        width: 2,
        hidden: Dense::new(array![[1.0f32]], array![0.0]).unwrap(),
        output: Dense::new(array![[1.0f32, 0.0, 0.0, 0.0, 0.0]], array![0.0, raw_one, 0.0, raw_one, 0.0]).unwrap(),
    };
    let class = Dense::new(array![[1.0f32, 0.0], [0.0, 0.0]], array![0.0, 0.0]).unwrap();
    let head = LocalizerHead::new(class, BoxHead::Cells(cells)).unwrap();
    assert_eq!((head.kind(), head.pooled_dim(), head.spatial_shape()), (LocalizeHeadKind::Spatial, 1, Some((1, 2, 1))));
    let (p, boxes) = head.predict(array![[5.0f32]].view(), Some(array![[0.0f32, ln3]].view())).unwrap();
    let p0 = 1.0 / (1.0 + (-0.75 * ln3).exp());
    assert!((p[[0, 0]] - p0).abs() < 1e-6 && (p[[0, 1]] - (1.0 - p0)).abs() < 1e-6, "{p:?}");
    for (got, want) in boxes[0].iter().zip([0.625, 0.5, 1.0, 2.0 * 2f32.ln()]) {
        assert!((got - want).abs() < 1e-5, "{:?}", boxes[0]);
    }
    // The training graph computes the same numbers.
    let split = LocalizeSplit {
        pooled: array![[5.0f32]],
        spatial: Some(array![[0.0f32, ln3]]),
        labels: vec![0],
        boxes: vec![[0.5, 0.5, 0.5, 0.5]],
    };
    let batch = Batch::new(&split, &[0], 2, None, true).unwrap();
    let (logits, forward) = Graph::new(&head).unwrap().forward(&batch).unwrap();
    let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    assert!((logits[0] - 0.75 * ln3).abs() < 1e-6 && logits[1].abs() < 1e-6, "{logits:?}");
    let forward: Vec<f32> = forward.flatten_all().unwrap().to_vec1().unwrap();
    for (got, want) in forward.iter().zip(boxes[0]) {
        assert!((got - want).abs() < 1e-6, "{forward:?}");
    }
}

#[test]
fn giou_matches_hand_calculations() {
    // [0, 2]² and [1, 3]²: IoU 1/7; the enclosing [0, 3]² (9) less the union (7) is 2/9 of it.
    assert!(close(giou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]), 1.0 / 7.0 - 2.0 / 9.0));
    // Apart: [0, 1]² and [2, 3]×[0, 1]: IoU 0, enclosing 3, union 2: −1/3.
    assert!(close(giou([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]), -1.0 / 3.0));
    assert!(close(giou([0.1, 0.2, 0.5, 0.9], [0.1, 0.2, 0.5, 0.9]), 1.0));
}

#[test]
fn spatial_head_localises_and_beats_the_pooled_head() {
    let data = data(480, 120);
    let test = synthetic(200, 3);
    let config = TrainConfig::default().tuned();
    let mut results = Vec::new();
    for kind in [LocalizeHeadKind::Pooled, LocalizeHeadKind::Spatial] {
        let started = Instant::now();
        let outcome = train_localizer(&config, LocalizeLoss::default_for(kind), kind, &data, None, &mut quiet).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let (p, boxes) = predict(&outcome.head, &test);
        let accuracy = evaluate(p.view(), &test.labels, 1).unwrap().accuracy;
        let metrics = box_metrics(&boxes, &test.boxes);
        println!(
            "{kind:?}: test mean IoU {:.3}, IoU ≥ 0.5 {:.3}, accuracy {accuracy:.3}; best epoch {} of {} run, {seconds:.1} s",
            metrics.mean_iou, metrics.iou_at_least_half, outcome.best_epoch, outcome.epochs_run
        );
        results.push((metrics.mean_iou, metrics.iou_at_least_half, accuracy));
    }
    let [(pooled_iou, ..), (spatial_iou, spatial_at_half, spatial_accuracy)] = results[..] else { unreachable!() };
    // Each cell here knows only its own coverage, where a CNN's cell sees the object around
    // it; the cell head still places nine boxes in ten to IoU ≥ 0.5 (pooled: about one in ten).
    assert!(spatial_iou >= 0.6, "spatial mean IoU {spatial_iou}");
    assert!(spatial_at_half >= 0.85, "spatial IoU ≥ 0.5 share {spatial_at_half}");
    assert!(spatial_accuracy >= 0.9, "spatial accuracy {spatial_accuracy}");
    assert!(spatial_iou > pooled_iou, "spatial {spatial_iou} vs pooled {pooled_iou}");
}

#[test]
fn predict_equals_the_training_forward_and_survives_bytes() {
    let data = data(96, 0);
    let split = &data.train[0];
    let config = TrainConfig { epochs: 3, learning_rate: 0.05, batch_size: 16, ..TrainConfig::default() };
    for kind in [LocalizeHeadKind::Pooled, LocalizeHeadKind::Spatial] {
        let head = train_localizer(&config, LossWeights::default(), kind, &data, None, &mut quiet).unwrap().head;
        let (p, boxes) = predict(&head, split);

        let rows: Vec<usize> = (0..split.rows()).collect();
        let batch = Batch::new(split, &rows, CLASSES, None, kind == LocalizeHeadKind::Spatial).unwrap();
        let graph = Graph::new(&head).unwrap();
        let (logits, forward_boxes) = graph.forward(&batch).unwrap();
        let logits: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        let forward_boxes: Vec<Vec<f32>> = forward_boxes.to_vec2().unwrap();
        let mut worst = 0f32;
        for (r, z) in logits.iter().enumerate() {
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
            for (k, v) in z.iter().enumerate() {
                worst = worst.max(((v - max).exp() / sum - p[[r, k]]).abs());
            }
            for k in 0..4 {
                worst = worst.max((forward_boxes[r][k] - boxes[r][k]).abs());
            }
        }
        assert!(worst <= 1e-5, "{kind:?}: max abs difference {worst}");
        assert!(p.rows().into_iter().all(|row| (row.sum() - 1.0).abs() < 1e-5));

        let bytes = head.to_bytes();
        let back = LocalizerHead::from_bytes(&bytes).unwrap();
        assert_eq!(back, head);
        assert_eq!(predict(&back, split), (p, boxes));
        assert_eq!(back.kind(), kind);
        assert_eq!((back.classes(), back.pooled_dim()), (CLASSES, C));
        let shape = (kind == LocalizeHeadKind::Spatial).then_some((H, W, C));
        assert_eq!(back.spatial_shape(), shape);
    }
}

#[test]
fn bytes_and_inputs_are_checked() {
    assert!(matches!(LocalizerHead::from_bytes(b"not json"), Err(HeadError::Malformed(_))));
    assert!(matches!(LocalizerHead::from_bytes(b"{not json"), Err(HeadError::Malformed(_))));
    let head = LocalizerHead::init(LocalizeHeadKind::Spatial, C, CLASSES, Some((H, W, C)), 0).unwrap();
    // Version 1, JSON, as heads were stored before: still read.
    let json = serde_json::to_string(&head).unwrap();
    assert_eq!(LocalizerHead::from_bytes(json.as_bytes()).unwrap(), head);
    // An output layer of four columns where the cell head needs five.
    let BoxHead::Cells(cells) = &head.boxes else { unreachable!("a spatial head is a cell head") };
    let output = serde_json::to_string(&cells.output).unwrap();
    let four = Dense::new(Array2::zeros((cells.output.inputs(), 4)), Array1::zeros(4)).unwrap();
    let spoiled = json.replace(&output, &serde_json::to_string(&four).unwrap());
    assert_ne!(spoiled, json);
    assert!(LocalizerHead::from_bytes(spoiled.as_bytes()).is_err());
    // The safetensors form: cut short, lengthened, or with a tensor of the wrong length.
    let bytes = head.to_bytes();
    assert!(LocalizerHead::from_bytes(&bytes[..bytes.len() - 4]).is_err());
    assert!(LocalizerHead::from_bytes(&[bytes.as_slice(), &[0; 4]].concat()).is_err());
    let three = crate::codec::tensors::write(
        &[crate::codec::tensors::Named { name: "box.weight".into(), shape: vec![3], values: &[0.1, 0.2, 0.3] }],
        &[("format", "graft.localizer".into()), ("version", "2".into()), ("box", "spatial".into())],
    );
    assert!(LocalizerHead::from_bytes(&three).is_err());

    let split = synthetic(4, 9);
    assert!(head.predict(split.pooled.view(), None).is_err());
    assert!(head.predict(Array2::zeros((4, C + 1)).view(), split.spatial.as_ref().map(|s| s.view())).is_err());
    assert!(head.predict(split.pooled.view(), Some(Array2::zeros((4, 7)).view())).is_err());
    assert!(head.predict(split.pooled.view(), Some(Array2::zeros((3, H * W * C)).view())).is_err());
    let pooled = LocalizerHead::init(LocalizeHeadKind::Pooled, C, CLASSES, None, 0).unwrap();
    assert!(pooled.predict(split.pooled.view(), None).is_ok());
}

#[test]
fn a_zero_loss_weight_leaves_its_parameters_unchanged() {
    let data = data(64, 0);
    let config =
        TrainConfig { epochs: 3, batch_size: 16, weight_decay: 0.01, learning_rate: 0.05, ..TrainConfig::default() };
    for kind in [LocalizeHeadKind::Pooled, LocalizeHeadKind::Spatial] {
        let initial = LocalizerHead::init(kind, C, CLASSES, Some((H, W, C)), config.seed).unwrap();
        for optimizer in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let config = TrainConfig { optimizer, ..config.clone() };
            let box_only = LossWeights { class: 0.0, box_: 1.0 };
            let class_only = LossWeights { class: 1.0, box_: 0.0 };
            let trained = train_localizer(&config, class_only, kind, &data, None, &mut quiet).unwrap().head;
            assert_eq!(trained.boxes, initial.boxes, "{kind:?} {optimizer:?}");
            assert_ne!(trained.class, initial.class);
            let trained = train_localizer(&config, box_only, kind, &data, None, &mut quiet).unwrap().head;
            assert_eq!(trained.class, initial.class, "{kind:?} {optimizer:?}");
            assert_ne!(trained.boxes, initial.boxes);
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    type Spoil = fn(&mut LocalizeData);
    let cases: Vec<(&str, Spoil)> = vec![
        ("at least 1 class", |d| d.classes = 0),
        ("no training features", |d| d.train.clear()),
        ("labels", |d| {
            d.train[0].labels.pop();
        }),
        ("boxes", |d| d.train[0].boxes.truncate(3)),
        ("label 3", |d| d.train[0].labels[0] = 3),
        ("box holds NaN", |d| d.train[0].boxes[2][1] = f32::NAN),
        ("pooled features contain NaN", |d| d.train[0].pooled[[1, 1]] = f32::INFINITY),
        ("spatial features contain NaN", |d| d.valid.as_mut().unwrap().spatial.as_mut().unwrap()[[0, 0]] = f32::NAN),
        ("needs spatial features", |d| d.train[0].spatial = None),
        ("spatial_shape", |d| d.spatial_shape = None),
        ("spatial features are", |d| d.spatial_shape = Some((H, W, C + 1))),
        ("columns", |d| d.valid.as_mut().unwrap().pooled = Array2::zeros((8, C + 1))),
        ("variant 1", |d| {
            let mut second = d.train[0].clone();
            second.labels.push(0);
            d.train.push(second);
        }),
    ];
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    for (needle, spoil) in cases {
        let mut d = data(12, 8);
        spoil(&mut d);
        match train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Spatial, &d, None, &mut quiet) {
            Err(TrainError::InvalidData(message)) => assert!(message.contains(needle), "{needle}: {message}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    // The pooled head does not need the spatial map.
    let mut no_map = data(12, 8);
    no_map.spatial_shape = None;
    no_map.train[0].spatial = None;
    no_map.valid.as_mut().unwrap().spatial = None;
    assert!(
        train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Pooled, &no_map, None, &mut quiet).is_ok()
    );

    let d = data(12, 0);
    for weights in [
        LossWeights { class: 0.0, box_: 0.0 },
        LossWeights { class: -1.0, box_: 1.0 },
        LossWeights { class: 1.0, box_: f32::NAN },
    ] {
        let result = train_localizer(&config, weights, LocalizeHeadKind::Pooled, &d, None, &mut quiet);
        assert!(matches!(result, Err(TrainError::InvalidConfig(_))), "{weights:?}: {result:?}");
    }
    for spoiled in [
        TrainConfig { hidden_units: Some(8), ..config.clone() },
        TrainConfig { dropout: 0.5, ..config.clone() },
        TrainConfig { epochs: 0, ..config.clone() },
    ] {
        let result = train_localizer(&spoiled, LossWeights::default(), LocalizeHeadKind::Pooled, &d, None, &mut quiet);
        assert!(matches!(result, Err(TrainError::InvalidConfig(_))), "{result:?}");
    }
}

#[test]
fn loss_weights_and_kind_serialise_as_documented() {
    assert_eq!(LossWeights::default(), LossWeights { class: 0.8, box_: 0.2 });
    assert_eq!(serde_json::from_str::<LossWeights>("{}").unwrap(), LossWeights::default());
    let weights: LossWeights = serde_json::from_str(r#"{"class": 0.5, "box": 2}"#).unwrap();
    assert_eq!(weights, LossWeights { class: 0.5, box_: 2.0 });
    assert_eq!(serde_json::to_string(&weights).unwrap(), r#"{"class":0.5,"box":2.0}"#);
    assert!(serde_json::from_str::<LossWeights>(r#"{"box_": 1}"#).is_err());
    assert!(LossWeights { class: 0.0, box_: 1.0 }.validate().is_ok());
    assert_eq!(serde_json::to_string(&LocalizeHeadKind::Spatial).unwrap(), r#""spatial""#);
    assert_eq!(serde_json::from_str::<LocalizeHeadKind>(r#""pooled""#).unwrap(), LocalizeHeadKind::Pooled);
}

/// A validation split whose labels are shifted by one class and whose boxes belong to other
/// images: the better the head learns the training set, the worse it does there, so the first
/// epoch is the best one and the run stops after `patience` more.
fn misleading() -> LocalizeData {
    let mut d = data(120, 60);
    let valid = d.valid.as_mut().unwrap();
    valid.labels.iter_mut().for_each(|label| *label = (*label + 1) % CLASSES);
    valid.boxes.reverse();
    d
}

#[test]
fn early_stopping_returns_the_best_epochs_head() {
    let data = misleading();
    let valid = data.valid.clone().unwrap();
    for metric in [StopMetric::ValLoss, StopMetric::ValAccuracy] {
        let config = TrainConfig {
            epochs: 40,
            learning_rate: 0.05,
            early_stopping: Some(EarlyStopping { patience: 3, metric }),
            ..TrainConfig::default()
        };
        let mut reports = Vec::new();
        let outcome =
            train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Spatial, &data, None, &mut |r, _| {
                reports.push(r.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(outcome.stopped_early, "{metric:?}");
        assert_eq!(outcome.epochs_run, outcome.best_epoch + 3, "{metric:?}");
        assert_eq!(reports.len(), outcome.epochs_run);
        assert!(reports.iter().all(|r| r.best_epoch <= r.epoch && r.epochs == 40));

        // The head returned is the best epoch's, not the last one's.
        let (p, boxes) = predict(&outcome.head, &valid);
        let best = &reports[outcome.best_epoch - 1];
        let accuracy = evaluate(p.view(), &valid.labels, 1).unwrap().accuracy;
        let mean_iou = box_metrics(&boxes, &valid.boxes).mean_iou;
        assert_eq!((Some(accuracy), Some(mean_iou)), (best.valid_accuracy, best.valid_mean_iou));
        let last = reports.last().unwrap();
        let value = |r: &LocalizeEpochReport| match metric {
            StopMetric::ValLoss => r.valid_loss.unwrap(),
            StopMetric::ValAccuracy => r.valid_accuracy.unwrap() + r.valid_mean_iou.unwrap(),
        };
        assert!(reports[outcome.best_epoch..].iter().all(|r| !metric.improves(value(r), value(best))));
        assert_ne!(value(last), value(best));
    }
}

#[test]
fn without_validation_the_last_epoch_is_kept() {
    let config = TrainConfig { epochs: 4, ..TrainConfig::default() };
    let mut reports = Vec::new();
    let outcome =
        train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Pooled, &data(40, 0), None, &mut |r, _| {
            reports.push(r.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!((outcome.epochs_run, outcome.best_epoch, outcome.stopped_early), (4, 4, false));
    assert!(reports.iter().all(|r| r.valid_loss.is_none() && r.valid_mean_iou.is_none() && r.best_epoch == r.epoch));
}

#[test]
fn break_cancels_the_run() {
    let config = TrainConfig { epochs: 10, ..TrainConfig::default() };
    let result = train_localizer(
        &config,
        LossWeights::default(),
        LocalizeHeadKind::Spatial,
        &data(40, 20),
        None,
        &mut |r, _| {
            if r.epoch == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        },
    );
    assert_eq!(result, Err(TrainError::Cancelled { epoch: 2 }));
}

#[test]
fn runs_repeat_for_a_seed_and_use_every_variant() {
    let mut d = data(48, 16);
    let mut flipped = d.train[0].clone();
    // A second variant: the maps mirrored left–right, with their boxes.
    let spatial = flipped.spatial.as_mut().unwrap();
    for mut row in spatial.rows_mut() {
        let cells: Vec<Array1<f32>> = row.exact_chunks(C).into_iter().map(|c| c.to_owned()).collect();
        for i in 0..H {
            for j in 0..W {
                let source = &cells[i * W + (W - 1 - j)];
                row.slice_mut(ndarray::s![(i * W + j) * C..(i * W + j + 1) * C]).assign(source);
            }
        }
    }
    flipped.boxes.iter_mut().for_each(|b| b[0] = 1.0 - b[0]);
    d.train.push(flipped);
    let config = TrainConfig { epochs: 4, early_stopping: None, ..TrainConfig::default() };
    let run = |seed| {
        let config = TrainConfig { seed, ..config.clone() };
        train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Spatial, &d, None, &mut quiet).unwrap().head
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    // Only the first variant for every epoch gives a different head.
    let single = LocalizeData { train: vec![d.train[0].clone()], ..d.clone() };
    let config = TrainConfig { seed: 7, ..config };
    let head = train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Spatial, &single, None, &mut quiet)
        .unwrap()
        .head;
    assert_ne!(head, run(7));
}

#[test]
fn class_weights_are_neutral_when_balanced_and_count_otherwise() {
    let config = TrainConfig { epochs: 3, early_stopping: None, ..TrainConfig::default() };
    let weighted = TrainConfig { class_weights: true, ..config.clone() };
    let train = |config: &TrainConfig, data: &LocalizeData| {
        train_localizer(config, LossWeights::default(), LocalizeHeadKind::Pooled, data, None, &mut quiet).unwrap().head
    };
    // Labels cycle 0, 1, 2: every balanced weight n/(C·n_c) is exactly 1.
    let balanced = data(48, 0);
    assert_eq!(train(&weighted, &balanced), train(&config, &balanced));
    // Class 2 relabelled as 0: weights 48/(3·32) = 0.5, 48/(3·16) = 1 and 0 (absent class).
    let mut skewed = balanced;
    skewed.train[0].labels.iter_mut().filter(|l| **l == 2).for_each(|l| *l = 0);
    assert_ne!(train(&weighted, &skewed), train(&config, &skewed));
}

#[test]
fn a_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_does() {
    let config = TrainConfig { epochs: 6, batch_size: 8, early_stopping: None, ..TrainConfig::default() };
    let d = data(40, 16);
    let kind = LocalizeHeadKind::Spatial;
    let whole = train_localizer(&config, LossWeights::default(), kind, &d, None, &mut quiet).unwrap();

    let mut saved = None;
    let stopped = train_localizer(&config, LossWeights::default(), kind, &d, None, &mut |report, checkpoint| {
        saved = Some(serde_json::from_slice::<LocalizeCheckpoint>(&serde_json::to_vec(checkpoint).unwrap()).unwrap());
        if report.epoch == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    assert_eq!(stopped, Err(TrainError::Cancelled { epoch: 3 }));
    let mut epochs = Vec::new();
    let resumed = train_localizer(&config, LossWeights::default(), kind, &d, saved.clone(), &mut |report, _| {
        epochs.push(report.epoch);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((epochs, resumed.epochs_run), (vec![4, 5, 6], 6), "only the epochs after the checkpoint run");
    assert_eq!(resumed.head, whole.head, "bit for bit");

    // A checkpoint of another head kind is refused, not trained on.
    let other = train_localizer(&config, LossWeights::default(), LocalizeHeadKind::Pooled, &d, saved, &mut quiet);
    assert!(matches!(other, Err(TrainError::InvalidCheckpoint(_))), "{other:?}");
}

#[test]
fn constant_map_gradients_equal_full_autograd() {
    let split = synthetic(24, 4);
    let mut head = LocalizerHead::init(LocalizeHeadKind::Spatial, C, CLASSES, Some((H, W, C)), 3).unwrap();
    // Some training first, so that no gradient is trivially zero.
    let data = LocalizeData { train: vec![split.clone()], ..data(24, 0) };
    let config = TrainConfig { epochs: 2, early_stopping: None, ..TrainConfig::default() };
    head = train_localizer(
        &config,
        LocalizeLoss::default_for(LocalizeHeadKind::Spatial),
        LocalizeHeadKind::Spatial,
        &data,
        None,
        &mut quiet,
    )
    .map(|o| o.head)
    .unwrap_or(head);
    let rows: Vec<usize> = (0..24).collect();
    for loss in [
        LocalizeLoss::default_for(LocalizeHeadKind::Spatial),
        LocalizeLoss { weights: LossWeights { class: 0.0, box_: 1.0 }, box_loss: BoxLoss::Giou },
        LocalizeLoss { weights: LossWeights { class: 1.0, box_: 0.0 }, box_loss: BoxLoss::Mse },
    ] {
        let batch = Batch::new(&split, &rows, CLASSES, Some(&[1.0, 2.0, 0.5]), true).unwrap();
        let graph = Graph::new(&head).unwrap();
        let (full, _) = graph.loss(&batch, loss).unwrap();
        let expected = graph.gradients(&full.backward().unwrap(), None).unwrap();
        let (fast, leaves) = graph.loss_on_constant_map(&batch, loss).unwrap();
        assert!(leaves.is_some());
        let got = graph.gradients(&fast.backward().unwrap(), leaves.as_ref()).unwrap();
        let (a, b) = (full.to_scalar::<f32>().unwrap(), fast.to_scalar::<f32>().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{loss:?}: loss {a} vs {b}");
        for (k, (e, g)) in expected.iter().zip(&got).enumerate() {
            let values = |t: &Option<candle_core::Tensor>| -> Vec<f32> {
                t.as_ref().map(|t| t.flatten_all().unwrap().to_vec1().unwrap()).unwrap_or_default()
            };
            let (e, g) = (values(e), values(g));
            let scale = e.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            // A variable the loss does not reach has no gradient, or zeros.
            let (e, g) = match (e.is_empty(), g.is_empty()) {
                (true, true) => continue,
                (true, false) => (vec![0.0; g.len()], g),
                (false, true) => (e.clone(), vec![0.0; e.len()]),
                (false, false) => (e, g),
            };
            let worst = e.iter().zip(&g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-4 * scale, "{loss:?}: variable {k}: max difference {worst} (scale {scale})");
        }
    }
}
