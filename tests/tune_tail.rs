//! The tail evaluator against ONNX Runtime: every supported operator's forward pass on
//! random inputs, its gradients against finite differences, whole ResNet- and
//! Xception-shaped tails, cut-point discovery, and the exported ONNX file of a tuned model.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use graft::finetune::TailModel;
use graft::onnx::expose_outputs;
use graft::onnx::{BaseGraph, export_classifier, with_initializers};
use graft::runtime::{ModelSource, open_session};
use graft::train::{Dense, Head};
use ndarray::{Array1, Array2};
use ort::value::Tensor as OrtTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tune_dir() -> PathBuf {
    common::fixtures().join("tune")
}

/// Runs `bytes` (an ONNX model) in ONNX Runtime on one float input; returns each output's values.
fn ort_run(
    env: &ort::environment::Environment,
    bytes: &[u8],
    input: &str,
    shape: &[usize],
    x: &[f32],
    outputs: &[&str],
) -> Vec<Vec<f32>> {
    let mut session =
        open_session(env, ModelSource::Edited { path: Path::new("test.onnx"), bytes }, &common::cpu()).unwrap();
    let tensor = OrtTensor::from_array((shape.to_vec(), x.to_vec())).unwrap();
    let results = session.session.run(ort::inputs![input => tensor]).unwrap();
    outputs.iter().map(|name| results.get(name).unwrap().try_extract_tensor::<f32>().unwrap().1.to_vec()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Distinct values spread over [−1, 1] in random order: no ties for max-pooling and none
/// within a finite-difference step of a ReLU's kink at 0.
fn spread_values(n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut values: Vec<f32> = (0..n).map(|k| -1.0 + 2.0 * (k as f32 + 0.5) / n as f32).collect();
    for i in (1..n).rev() {
        values.swap(i, rng.random_range(0..=i));
    }
    values
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    input_shape: Vec<usize>,
}

fn cases() -> Vec<Case> {
    let dir = tune_dir().join("ops");
    let list = common::json(&dir.join("cases.json"));
    list.as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_owned(),
            bytes: std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap(),
            input_shape: case["input_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
        })
        .collect()
}

fn tail_of(bytes: &[u8], cut: &str, features: &str) -> TailModel {
    let base = BaseGraph::decode(bytes).unwrap();
    TailModel::new(&base.tail(cut, features).unwrap()).unwrap()
}

fn forward(tail: &TailModel, shape: &[usize], x: &[f32]) -> Vec<f32> {
    let x = Tensor::from_slice(x, shape, &Device::Cpu).unwrap();
    tail.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn every_operator_matches_onnx_runtime() {
    let env = common::runtime();
    let mut rng = StdRng::seed_from_u64(1);
    let cases = cases();
    // Every operator the evaluator accepts is exercised by at least one case.
    let covered: std::collections::HashSet<String> = cases
        .iter()
        .flat_map(|case| {
            BaseGraph::decode(&case.bytes)
                .unwrap()
                .graph()
                .node
                .iter()
                .map(|n| n.op_type().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for op in graft::finetune::SUPPORTED_OPERATORS {
        assert!(covered.contains(op), "no operator case uses {op}");
    }
    for case in cases {
        let tail = tail_of(&case.bytes, "x", "y");
        let n: usize = case.input_shape.iter().product();
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let ours = forward(&tail, &case.input_shape, &x);
        let theirs = &ort_run(&env, &case.bytes, "x", &case.input_shape, &x, &["y"])[0];
        let diff = max_abs_diff(&ours, theirs);
        println!("{:<24} forward vs ONNX Runtime: max |Δ| {diff:.2e} over {} values", case.name, ours.len());
        assert!(diff <= 1e-4, "{}: max |Δ| {diff}", case.name);
    }
}

/// L = Σ y ⊙ r in f64, for finite differences.
fn weighted_sum(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()
}

#[test]
fn gradients_match_finite_differences() {
    const STEP: f32 = 1e-3;
    let mut rng = StdRng::seed_from_u64(2);
    for case in cases() {
        let tail = tail_of(&case.bytes, "x", "y");
        let n: usize = case.input_shape.iter().product();
        let x0 = spread_values(n, &mut rng);
        let out_len = forward(&tail, &case.input_shape, &x0).len();
        let r: Vec<f32> = (0..out_len).map(|_| rng.random_range(-1.0..1.0)).collect();
        let r_tensor = Tensor::from_slice(&r, out_len, &Device::Cpu).unwrap();

        let x_var = Var::from_slice(&x0, case.input_shape.as_slice(), &Device::Cpu).unwrap();
        let y = tail.forward(x_var.as_tensor()).unwrap().flatten_all().unwrap();
        let grads = (y * &r_tensor).unwrap().sum_all().unwrap().backward().unwrap();

        let loss_at = |x: &[f32]| weighted_sum(&forward(&tail, &case.input_shape, x), &r);
        let mut worst = 0f64;
        let mut check = |analytic: &[f32], perturb: &mut dyn FnMut(usize, f32) -> f64, len: usize, what: &str| {
            for _ in 0..12.min(len) {
                let i = rng.random_range(0..len);
                let numeric = (perturb(i, STEP) - perturb(i, -STEP)) / (2.0 * f64::from(STEP));
                let error = (numeric - f64::from(analytic[i])).abs() / (1.0 + numeric.abs());
                worst = worst.max(error);
                assert!(
                    error < 2e-2,
                    "{} {what}[{i}]: autodiff {} vs finite difference {numeric}",
                    case.name,
                    analytic[i]
                );
            }
        };
        let dx: Vec<f32> = grads.get(x_var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        check(
            &dx,
            &mut |i, delta| {
                let mut x = x0.clone();
                x[i] += delta;
                loss_at(&x)
            },
            n,
            "x",
        );
        for param in tail.params() {
            let original: Vec<f32> = param.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let analytic: Vec<f32> = match grads.get(param.var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
                None => panic!("{}: no gradient for {}", case.name, param.name),
            };
            check(
                &analytic,
                &mut |i, delta| {
                    let mut values = original.clone();
                    values[i] += delta;
                    param.var.set(&Tensor::from_slice(&values, param.shape.as_slice(), &Device::Cpu).unwrap()).unwrap();
                    let loss = loss_at(&x0);
                    param
                        .var
                        .set(&Tensor::from_slice(&original, param.shape.as_slice(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss
                },
                original.len(),
                &param.name,
            );
        }
        println!(
            "{:<24} gradients of x and {} parameter(s) vs finite differences: worst relative error {worst:.1e}",
            case.name,
            tail.params().len()
        );
    }
}

#[test]
fn cut_points_are_found_at_block_boundaries() {
    let resnet = BaseGraph::decode(&std::fs::read(tune_dir().join("tune_resnet.onnx")).unwrap()).unwrap();
    // The graph input is a cut too: unfreezing every block tunes the whole network.
    assert_eq!(resnet.block_starts("pooled"), ["pixels", "block_a_in", "block_a_out"]);
    // Inside block B, its skip connection from block_a_out crosses any cut.
    let inner = resnet
        .graph()
        .node
        .iter()
        .find(|n| n.op_type() == "Relu" && n.input.iter().any(|i| i.starts_with("block_b")))
        .map(|n| n.output[0].clone())
        .expect("block B has a ReLU inside");
    let err = resnet.tail(&inner, "pooled").unwrap_err().to_string();
    assert!(err.contains("block_a_out") && err.contains("cut points of this base"), "{err}");
    assert!(resnet.tail("nope", "pooled").unwrap_err().to_string().contains("`nope`"));

    let xception = BaseGraph::decode(&std::fs::read(tune_dir().join("tune_xception.onnx")).unwrap()).unwrap();
    assert_eq!(xception.block_starts("pooled"), ["pixels", "exit_in", "block13_out", "block14_sepconv1_act"]);
}

/// Whole tails: ONNX Runtime's prefix output through graft's tail equals ONNX Runtime's
/// own pooled features.
#[test]
fn resnet_and_xception_shaped_tails_match_onnx_runtime() {
    let env = common::runtime();
    let mut rng = StdRng::seed_from_u64(3);
    for (file, cuts) in [
        ("tune_resnet.onnx", vec!["block_a_in", "block_a_out"]),
        ("tune_xception.onnx", vec!["exit_in", "block13_out", "block14_sepconv1_act"]),
    ] {
        let bytes = std::fs::read(tune_dir().join(file)).unwrap();
        let base = BaseGraph::decode(&bytes).unwrap();
        let pixels: Vec<f32> = (0..3 * 3 * 32 * 32).map(|_| rng.random_range(0.0..1.0)).collect();
        let full = expose_outputs(&bytes, &["pooled"]).unwrap();
        let expected = &ort_run(&env, &full, "pixels", &[3, 3, 32, 32], &pixels, &["pooled"])[0];
        for cut in cuts {
            let prefix = base.prefix(cut).unwrap();
            let activations = &ort_run(&env, &prefix, "pixels", &[3, 3, 32, 32], &pixels, &[cut])[0];
            let tail = TailModel::new(&base.tail(cut, "pooled").unwrap()).unwrap();
            let per_image = activations.len() / 3;
            let shape = activation_shape(&base, cut, per_image);
            let ours = forward(&tail, &[&[3][..], &shape].concat(), activations);
            let diff = max_abs_diff(&ours, expected);
            println!(
                "{file} cut at {cut}: {} trainable tensors, pooled features max |Δ| {diff:.2e}",
                tail.params().len()
            );
            assert!(diff <= 1e-4, "{file} at {cut}: {diff}");
        }
    }
}

/// (channels, side, side) of a square activation of `values` values whose channel count the
/// tail's first convolution reveals.
fn activation_shape(base: &BaseGraph, cut: &str, values: usize) -> Vec<usize> {
    let tail = base.tail(cut, "pooled").unwrap();
    let first_conv = tail
        .nodes
        .iter()
        .find(|n| n.op_type() == "Conv" && n.input[0] == cut)
        .or_else(|| tail.nodes.iter().find(|n| n.op_type() == "Conv"))
        .unwrap();
    let weights = &tail.initializers[&first_conv.input[1]];
    let group = first_conv.attribute.iter().find(|a| a.name() == "group").and_then(|a| a.i).unwrap_or(1) as usize;
    let channels = weights.dims[1] as usize * group;
    let side = ((values / channels) as f64).sqrt().round() as usize;
    assert_eq!(channels * side * side, values);
    vec![channels, side, side]
}

fn random_head(inputs: usize, hidden: Option<usize>, classes: usize, rng: &mut StdRng) -> Head {
    let mut dense = |i: usize, o: usize| {
        Dense::new(
            Array2::from_shape_fn((i, o), |_| rng.random_range(-0.5..0.5)),
            Array1::from_shape_fn(o, |_| rng.random_range(-0.1..0.1)),
        )
        .unwrap()
    };
    match hidden {
        Some(h) => {
            let first = dense(inputs, h);
            Head::new(Some(first), dense(h, classes)).unwrap()
        }
        None => Head::new(None, dense(inputs, classes)).unwrap(),
    }
}

/// The exported ONNX file of a tuned model, run by ONNX Runtime on images, equals the
/// trainer's forward pass (prefix in ONNX Runtime, tail and head in graft).
#[test]
fn exported_tuned_models_equal_the_trainers_forward_pass() {
    let env = common::runtime();
    let mut rng = StdRng::seed_from_u64(4);
    for (file, cut, hidden) in [("tune_resnet.onnx", "block_a_in", None), ("tune_xception.onnx", "exit_in", Some(7))] {
        let bytes = std::fs::read(tune_dir().join(file)).unwrap();
        let base = BaseGraph::decode(&bytes).unwrap();
        let tail = TailModel::new(&base.tail(cut, "pooled").unwrap()).unwrap();
        // Stand-in for tuning: every trainable tensor moved by noise of 10 % of its scale.
        for param in tail.params() {
            let values: Vec<f32> = param.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let scale = values.iter().map(|v| v.abs()).fold(0.0, f32::max).max(1e-3);
            let moved: Vec<f32> = values.iter().map(|v| v + 0.1 * scale * rng.random_range(-1.0..1.0)).collect();
            param.var.set(&Tensor::from_slice(&moved, param.shape.as_slice(), &Device::Cpu).unwrap()).unwrap();
        }
        let pixels: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| rng.random_range(0.0..1.0)).collect();
        let prefix = base.prefix(cut).unwrap();
        let activations = &ort_run(&env, &prefix, "pixels", &[4, 3, 32, 32], &pixels, &[cut])[0];
        let shape = activation_shape(&base, cut, activations.len() / 4);
        let width = forward(&tail, &[&[4][..], &shape].concat(), activations).len() / 4;
        let head = random_head(width, hidden, 5, &mut rng);
        let (pooled, _) = graft::finetune::tail_features(&tail, activations, &shape, 3, None).unwrap();
        let ours = head.forward(pooled.view());

        let tuned = with_initializers(&bytes, &tail.initializers().unwrap()).unwrap();
        let exported = export_classifier(&tuned, "pooled", &head, &[]).unwrap();
        let theirs = &ort_run(&env, &exported, "pixels", &[4, 3, 32, 32], &pixels, &["probabilities"])[0];
        let diff = max_abs_diff(ours.as_slice().unwrap(), theirs);
        println!("{file} tuned above {cut}, exported: probabilities max |Δ| {diff:.2e} (ONNX Runtime vs trainer)");
        assert!(diff <= 1e-4, "{file}: {diff}");
        // The tuning changed the model: the untuned base gives other probabilities.
        let untuned = export_classifier(&bytes, "pooled", &head, &[]).unwrap();
        let before = &ort_run(&env, &untuned, "pixels", &[4, 3, 32, 32], &pixels, &["probabilities"])[0];
        assert!(max_abs_diff(before, theirs) > 1e-3, "{file}: the tuned weights were not written back");
    }
}

#[test]
fn operators_outside_the_list_are_refused_by_name() {
    use prost::Message;
    let case = cases().into_iter().find(|c| c.name == "sigmoid_mul").unwrap();
    let mut model = graft::onnx::proto::ModelProto::decode(case.bytes.as_slice()).unwrap();
    model.graph.as_mut().unwrap().node[0].op_type = Some("LpNormalization".into());
    let base = BaseGraph::decode(&model.encode_to_vec()).unwrap();
    let err = TailModel::new(&base.tail("x", "y").unwrap()).err().expect("an unsupported operator is refused");
    assert!(err.contains("LpNormalization") && err.contains("not supported") && err.contains("Conv"), "{err}");
}

/// The localizer's exported ONNX file (both box heads) equals its own prediction on the
/// base's pooled features and spatial map.
#[test]
fn exported_localizers_equal_their_heads() {
    use graft::onnx::export_localizer;
    use graft::train::{LocalizeData, LocalizeHeadKind, LocalizeSplit, LossWeights, TrainConfig, train_localizer};
    use graft::vision::Layout;
    let env = common::runtime();
    let mut rng = StdRng::seed_from_u64(5);
    let bytes = std::fs::read(common::fixtures().join("spatial/tiny_spatial.onnx")).unwrap();
    let images = 6;
    let pixels: Vec<f32> = (0..images * 3 * 64 * 64).map(|_| rng.random_range(0.0..1.0)).collect();
    let exposed = expose_outputs(&bytes, &["pooled", "spatial"]).unwrap();
    let outputs = ort_run(&env, &exposed, "pixels", &[images, 3, 64, 64], &pixels, &["pooled", "spatial"]);
    let pooled = Array2::from_shape_vec((images, 5), outputs[0].clone()).unwrap();
    // NCHW [N, 5, 8, 8] → rows of (row, column, channel), the order the head reads.
    let spatial = Array2::from_shape_fn((images, 8 * 8 * 5), |(n, k)| {
        let (cell, c) = (k / 5, k % 5);
        outputs[1][n * 320 + c * 64 + cell]
    });
    let split = LocalizeSplit {
        pooled: pooled.clone(),
        spatial: Some(spatial.clone()),
        labels: (0..images).map(|i| i % 3).collect(),
        boxes: (0..images).map(|_| std::array::from_fn(|_| rng.random_range(0.2..0.8))).collect(),
    };
    let data = LocalizeData { classes: 3, spatial_shape: Some((8, 8, 5)), train: vec![split], valid: None };
    let config =
        TrainConfig { epochs: 5, batch_size: 3, learning_rate: 0.05, early_stopping: None, ..TrainConfig::default() };
    for kind in [LocalizeHeadKind::Pooled, LocalizeHeadKind::Spatial] {
        let head = train_localizer(&config, LossWeights::default(), kind, &data, None, &mut |_, _| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap()
        .head;
        let (probabilities, boxes) = head.predict(pooled.view(), Some(spatial.view())).unwrap();
        let exported = export_localizer(&bytes, "pooled", Some(("spatial", Layout::Nchw)), &head, &[]).unwrap();
        let theirs = ort_run(&env, &exported, "pixels", &[images, 3, 64, 64], &pixels, &["probabilities", "box"]);
        let box_values: Vec<f32> = boxes.iter().flatten().copied().collect();
        let (dp, db) =
            (max_abs_diff(probabilities.as_slice().unwrap(), &theirs[0]), max_abs_diff(&box_values, &theirs[1]));
        println!("{kind:?} localizer exported: probabilities max |Δ| {dp:.2e}, box max |Δ| {db:.2e}");
        assert!(dp <= 1e-5 && db <= 1e-5, "{kind:?}: {dp} {db}");
        // The boxes are not trivial: they differ between images.
        assert!(max_abs_diff(&box_values[..4], &box_values[4..8]) > 1e-4, "{kind:?}: {box_values:?}");
    }
}

/// The real EfficientNet-Lite0 (../shared/models, when present): graft finds its block
/// starts, and its top blocks, run by graft from ONNX Runtime's activations at each of the
/// last three cuts, give ONNX Runtime's pooled features on a real photo.
#[test]
fn efficientnet_lite0_tails_match_onnx_runtime() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/efficientnet_lite0.onnx");
    if !path.is_file() {
        eprintln!("../shared/models/efficientnet_lite0.onnx is absent: nothing to compare");
        return;
    }
    let env = common::runtime();
    let bytes = std::fs::read(&path).unwrap();
    let base = BaseGraph::decode(&bytes).unwrap();
    let starts = base.block_starts("mean");
    println!("EfficientNet-Lite0: {} block starts, the last three: {:?}", starts.len(), &starts[starts.len() - 3..]);
    assert!(starts.len() >= 10, "{starts:?}");
    let photo = image::load_from_memory(&common::image("china.jpg")).unwrap().to_rgb8();
    let photo = image::imageops::resize(&photo, 224, 224, image::imageops::FilterType::Triangle);
    let mut pixels = vec![0f32; 3 * 224 * 224];
    for (x, y, p) in photo.enumerate_pixels() {
        for c in 0..3 {
            pixels[c * 224 * 224 + (y * 224 + x) as usize] = (f32::from(p.0[c]) - 127.0) / 128.0;
        }
    }
    let full = expose_outputs(&bytes, &["mean"]).unwrap();
    let expected = &ort_run(&env, &full, "input", &[1, 3, 224, 224], &pixels, &["mean"])[0];
    for cut in &starts[starts.len() - 3..] {
        let tail = TailModel::new(&base.tail(cut, "mean").unwrap()).unwrap();
        let prefix = base.prefix(cut).unwrap();
        let session =
            open_session(&env, ModelSource::Edited { path: Path::new("prefix.onnx"), bytes: &prefix }, &common::cpu())
                .unwrap();
        let shape: Vec<usize> = session.outputs[0].shape.iter().map(|&d| d.max(1) as usize).collect();
        drop(session);
        let activations = &ort_run(&env, &prefix, "input", &[1, 3, 224, 224], &pixels, &[cut])[0];
        let ours = forward(&tail, &shape, activations);
        let scale = expected.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let diff = max_abs_diff(&ours, expected);
        println!(
            "cut at {cut} {shape:?}: {} trainable tensors; pooled features max |Δ| {diff:.2e} (largest value {scale:.2})",
            tail.params().len()
        );
        assert!(diff <= 1e-4 * scale.max(1.0), "{cut}: {diff}");
    }
}

/// An initializer the prefix also reads stays frozen: training it would change the cached
/// activations' meaning and the layers below the cut.
#[test]
fn initializers_shared_with_the_prefix_stay_frozen() {
    use graft::onnx::proto::{GraphProto, ModelProto, ValueInfoProto};
    use graft::onnx::tensor::{float_tensor, node};
    use prost::Message;
    let plain = |op: &str, inputs: &[&str], output: &str| node(op, inputs, output, vec![]);
    let model = ModelProto {
        graph: Some(GraphProto {
            node: vec![plain("Add", &["x", "b"], "cut"), plain("Conv", &["cut", "w", "b"], "y")],
            input: vec![ValueInfoProto { name: Some("x".into()), ..Default::default() }],
            output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
            initializer: vec![float_tensor("b", &[1], &[0.5]), float_tensor("w", &[1, 1, 1, 1], &[2.0])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let base = BaseGraph::decode(&model.encode_to_vec()).unwrap();
    let tail = base.tail("cut", "y").unwrap();
    assert!(tail.shared.contains("b"), "{:?}", tail.shared);
    let model = TailModel::new(&tail).unwrap();
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["w"], "the shared bias is not trained");
}
