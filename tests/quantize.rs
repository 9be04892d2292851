//! INT8 (QDQ) quantisation of a fixture model: ONNX Runtime fuses every quantised operator
//! into its 8-bit kernel, the INT8 outputs stay within a tolerance of the FP32 outputs on the
//! fixture images, the scales in the graph are the ones the calibrated ranges give, the
//! written manifest loads with its provenance, and graft serves the model like any other.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use graft::config::Limits;
use graft::onnx::proto::ModelProto;
use graft::onnx::quantize::{ActivationType, QuantizeOptions, Range, activation_params, plan, quantize};
use graft::quantize::calibrate::{Method, calibrate, run_batch};
use graft::quantize::{CalibrationImages, QuantizeSettings, quantize_model};
use graft::runtime::{ModelSource, open_session};
use graft::zoo::Manifest;
use prost::Message;

/// The fixture model `name`, its labels and manifest, copied into `dir` (quantising writes beside them).
fn copy_fixture(name: &str, dir: &Path) -> Manifest {
    for file in [format!("{name}.toml"), format!("{name}.onnx"), "fixture_labels.tsv".to_owned()] {
        std::fs::copy(fixture_models().join(&file), dir.join(&file)).unwrap();
    }
    Manifest::load(&dir.join(format!("{name}.toml"))).unwrap()
}

fn settings(options: QuantizeOptions) -> QuantizeSettings {
    QuantizeSettings { method: Method::Minmax, options, keep_sensitive: 0, session: cpu() }
}

#[test]
fn every_quantised_operator_is_fused_and_the_outputs_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_fixture("tiny_nchw", dir.path());
    // 10 to calibrate, the other fixture images (up to 10) held out.
    let folder = CalibrationImages::from_folder(&fixtures().join("images"), &manifest, 10).unwrap();
    assert_eq!(folder.calibration.len(), 10);
    assert!(folder.held_out.len() >= 5, "{} held out", folder.held_out.len());
    let options = QuantizeOptions { keep_first: Some(0), ..QuantizeOptions::default() };
    let env = runtime();
    let outcome = quantize_model(&env, &manifest, &folder, &settings(options)).unwrap();
    let images = [&folder.calibration[..], &folder.held_out[..]].concat();

    // ONNX Runtime runs every quantised Conv, Gemm and Add as an 8-bit kernel.
    let report = &outcome.report;
    let convs = report.nodes.get("Conv").copied().unwrap_or(0);
    assert!(convs > 0, "{report:?}");
    assert_eq!(outcome.fused_nodes.get("QLinearConv").copied().unwrap_or(0), convs, "{:?}", outcome.fused_nodes);
    let gemms = report.nodes.get("Gemm").copied().unwrap_or(0) + report.nodes.get("MatMul").copied().unwrap_or(0);
    let fused_gemms: usize =
        outcome.fused_nodes.iter().filter(|(op, _)| *op == "QGemm" || op.contains("MatMul")).map(|(_, n)| n).sum();
    assert_eq!(fused_gemms, gemms, "{:?} for {report:?}", outcome.fused_nodes);

    // The INT8 scores stay near the FP32 ones on every fixture image.
    let fp32_bytes = std::fs::read(&manifest.file).unwrap();
    let int8_bytes = std::fs::read(&outcome.model_path).unwrap();
    let mut fp32 =
        open_session(&env, ModelSource::Edited { path: &manifest.file, bytes: &fp32_bytes }, &cpu()).unwrap();
    let mut int8 =
        open_session(&env, ModelSource::Edited { path: &outcome.model_path, bytes: &int8_bytes }, &cpu()).unwrap();
    let output = [manifest.output_name.as_str()];
    let pixels = images.concat();
    let a = run_batch(&mut fp32, &manifest, pixels.clone(), images.len(), &output).unwrap().remove(0);
    let b = run_batch(&mut int8, &manifest, pixels, images.len(), &output).unwrap().remove(0);
    // On average over every image (some of them, such as the 16-bit and palette ones, lie
    // outside what the 10 calibration images show, and clamp).
    let spread = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean <= 0.01 * spread, "INT8 differs from FP32 by {mean} on average where the logits reach {spread}");
    assert!(mean > 0.0, "the INT8 graph computes exactly the FP32 one: nothing was quantised");

    // Both files are readable by other users, as model files are (a server in a container
    // runs as its own user).
    use std::os::unix::fs::PermissionsExt;
    for file in [&outcome.model_path, &outcome.manifest_path] {
        assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o044, 0o044, "{}", file.display());
    }
    // The manifest written beside it loads, with the file's checksum and the provenance.
    let written = Manifest::load(&outcome.manifest_path).unwrap();
    assert_eq!(written.name, "tiny_nchw_int8");
    assert_eq!(written.file, outcome.model_path);
    let sha = graft::zoo::sha256_file(&outcome.model_path).unwrap();
    assert_eq!(written.sha256.as_deref(), Some(sha.as_str()));
    let quantization = written.quantization.unwrap();
    assert_eq!((quantization.source.as_str(), quantization.method.as_str()), ("tiny_nchw", "minmax"));
    assert_eq!(quantization.calibration_images, 10);
    assert_eq!(quantization.agreement_images, folder.held_out.len());
    assert!((0.0..=1.0).contains(&quantization.top1_agreement));
    assert!(quantization.confident_images <= quantization.agreement_images);
    assert!((0.0..=1.0).contains(&quantization.confident_agreement));
    assert!(quantization.speedup_batch1 > 0.0 && quantization.speedup_batch8 > 0.0);
}

/// The graph's activation scales and zero points are the calibrated ranges' (computed here
/// from the FP32 model's own outputs), and every original tensor name is still produced.
#[test]
fn scales_come_from_the_calibrated_ranges_and_names_survive() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_fixture("tiny_nchw", dir.path());
    let images = CalibrationImages::from_folder(&fixtures().join("images"), &manifest, 16).unwrap().calibration;
    let model_bytes = std::fs::read(&manifest.file).unwrap();
    let options = QuantizeOptions { keep_first: Some(0), ..QuantizeOptions::default() };
    let planned = plan(&model_bytes, &options).unwrap();
    let env = runtime();
    let ranges = calibrate(&env, &manifest, &model_bytes, &images, &planned.tensors, Method::Minmax, &cpu()).unwrap();
    assert_eq!(ranges.len(), planned.tensors.len());
    assert!(planned.tensors.contains(&manifest.input_name), "the first Conv reads the input: {:?}", planned.tensors);
    // The input's range, independently: the preprocessed pixels themselves.
    let pixels = images.concat();
    let low = pixels.iter().copied().fold(f32::INFINITY, f32::min);
    let high = pixels.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(ranges[&manifest.input_name], Range { min: low, max: high });

    let (quantized, _) = quantize(&model_bytes, &ranges, &options).unwrap();
    let model = ModelProto::decode(quantized.as_slice()).unwrap();
    let graph = model.graph.unwrap();
    let initializer = |name: &str| graph.initializer.iter().find(|t| t.name() == name).unwrap().clone();
    for tensor in &planned.tensors {
        let (scale, zero_point) = activation_params(ranges[tensor], ActivationType::U8);
        let stored = initializer(&format!("{tensor}__scale"));
        assert_eq!(stored.raw_data.as_deref(), Some(&scale.to_le_bytes()[..]), "{tensor}");
        let stored = initializer(&format!("{tensor}__zero_point"));
        assert_eq!(stored.raw_data.as_deref(), Some(&[zero_point as u8][..]), "{tensor}");
    }
    let original = ModelProto::decode(model_bytes.as_slice()).unwrap().graph.unwrap();
    let produced: std::collections::HashSet<&str> =
        graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    for n in &original.node {
        for output in &n.output {
            let folded = planned.folded.values().any(|a| a == output) || planned.output_of.contains_key(output);
            assert!(produced.contains(output.as_str()) || folded, "{output} is no longer produced");
        }
    }
    // Every Q/DQ pair reads and writes names that exist.
    let known: HashMap<&str, ()> = graph
        .initializer
        .iter()
        .map(|t| (t.name(), ()))
        .chain(graph.input.iter().map(|i| (i.name(), ())))
        .chain(produced.iter().map(|p| (*p, ())))
        .collect();
    for n in &graph.node {
        for input in n.input.iter().filter(|i| !i.is_empty()) {
            assert!(known.contains_key(input.as_str()), "{} reads {input}, which nothing provides", n.name());
        }
    }
}

/// An INT8 model is served like any other, and `/v1/models` shows its precision and provenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_model_is_served_with_its_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_fixture("tiny_nchw", dir.path());
    let images = CalibrationImages::from_folder(&fixtures().join("images"), &manifest, 8).unwrap();
    let env = runtime();
    quantize_model(&env, &manifest, &images, &settings(QuantizeOptions::default())).unwrap();
    let server = start_server(dir.path(), Limits::default()).await;
    let view: serde_json::Value =
        client().get(format!("{}/v1/models/tiny_nchw_int8", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["status"], "ready", "{view}");
    assert_eq!(view["precision"], "int8");
    assert_eq!(view["quantization"]["source"], "tiny_nchw");
    let fp32: serde_json::Value =
        client().get(format!("{}/v1/models/tiny_nchw", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((fp32["precision"].as_str(), fp32.get("quantization")), (Some("fp32"), None));
    for model in ["tiny_nchw", "tiny_nchw_int8"] {
        let response = post_image(&server.url, model, "image/png", "img0.png").await;
        assert_eq!(response.status(), 200, "{model}");
    }
}

/// A job with `quantize: true` trains the head on the INT8 base too and serves INT8 exactly
/// when the test accuracy drop is within `max_accuracy_drop`; the served INT8 model is its
/// tuned base, and its ONNX download is the QDQ graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_quantises_its_base_and_serves_int8_only_within_the_allowed_drop() {
    let server = start_server(&fixture_models(), Limits::default()).await;
    let url = &server.url;
    let _worker = spawn_worker(&server, std::time::Duration::from_secs(30));
    let dataset = upload_dataset(url, common::datasets::class_folder_zip("shapes", 12, 2), "shapes").await;
    let job = |name: &str, drop: f64| {
        serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "name": name,
                           "quantize": true, "max_accuracy_drop": drop})
    };
    for (name, max_drop) in [("lenient", 100.0), ("strict", 0.0)] {
        let submitted = submit_job(url, job(name, max_drop)).await;
        let done = wait_for_job(url, submitted["id"].as_str().unwrap(), std::time::Duration::from_secs(180)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        let verdict = &done["evaluation"]["quantization"];
        let (fp32, int8) =
            (verdict["fp32_test_accuracy"].as_f64().unwrap(), verdict["int8_test_accuracy"].as_f64().unwrap());
        let drop = verdict["accuracy_drop"].as_f64().unwrap();
        assert!(((fp32 - int8) * 100.0 - drop).abs() < 1e-3, "{verdict}");
        let served_int8 = drop <= max_drop;
        assert_eq!(verdict["served"], if served_int8 { "int8" } else { "fp32" }, "{verdict}");
        assert_eq!(verdict["reason"].is_string(), !served_int8, "{verdict}");
        assert!(verdict["calibration_images"].as_u64().unwrap() > 0);
        // The served test figures are the served precision's.
        let served_accuracy = done["evaluation"]["test"]["accuracy"].as_f64().unwrap();
        assert!((served_accuracy - if served_int8 { int8 } else { fp32 }).abs() < 1e-6);

        let view: serde_json::Value =
            client().get(format!("{url}/v1/models/{name}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(view["tuned_base"], served_int8, "{view}");
        assert_eq!(post_image(url, name, "image/png", "img0.png").await.status(), 200);
        let onnx = client().get(format!("{url}/v1/models/{name}/onnx")).send().await.unwrap().bytes().await.unwrap();
        let exported = ModelProto::decode(onnx.as_ref()).unwrap();
        let qdq = exported.graph.unwrap().node.iter().filter(|n| n.op_type() == "QuantizeLinear").count();
        assert_eq!(qdq > 0, served_int8, "{name}: {qdq} QuantizeLinear nodes in the export");
    }
    // A drop bound without quantize, or past 100 points, is refused before anything runs.
    let refusals = [
        serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "max_accuracy_drop": 2}),
        serde_json::json!({"dataset": dataset["id"], "base_model": "tiny_nchw", "quantize": true, "max_accuracy_drop": 101}),
    ];
    for body in refusals {
        let response = client().post(format!("{url}/v1/jobs")).json(&body).send().await.unwrap();
        let problem = expect_problem(response, 422).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("quantize")
                || problem["detail"].as_str().unwrap().contains("max_accuracy_drop"),
            "{problem}"
        );
    }
}

/// `graft models quantize NAME --calibration DATASET` calibrates on a stored dataset's train
/// split and checks agreement on its valid and test images; a name that is neither a folder
/// nor a dataset is refused, naming where it looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_calibrates_on_an_uploaded_dataset() {
    let models = tempfile::tempdir().unwrap();
    copy_fixture("tiny_nchw", models.path());
    let server = start_server(&fixture_models(), Limits::default()).await;
    let dataset = upload_dataset(&server.url, common::datasets::class_folder_zip("shapes", 12, 2), "shapes").await;
    let split = |key: &str| -> usize {
        dataset["classes"].as_array().unwrap().iter().map(|c| c[key].as_u64().unwrap() as usize).sum()
    };
    let (train, held_out) = (split("train"), split("valid") + split("test"));
    assert!(train > 8 && held_out > 0, "{dataset}");
    let quantize = |calibration: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["models", "quantize", "tiny_nchw", "--images", "8", "--calibration", calibration, "--model-dir"])
            .arg(models.path())
            .arg("--data-dir")
            .arg(server.data_dir.path())
            .output()
            .unwrap()
    };
    let output = quantize(dataset["id"].as_str().unwrap());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let written = Manifest::load(&models.path().join("tiny_nchw_int8.toml")).unwrap();
    let quantization = written.quantization.unwrap();
    assert_eq!(quantization.calibration_images, 8);
    assert_eq!(quantization.agreement_images, held_out.min(8));

    let output = quantize("no-such-dataset");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("neither a folder nor a dataset"), "{stderr}");
}

/// Each quantised weighted layer's sensitivity is the output error with that layer alone
/// kept in FP32, over the whole quantised model's: recomputed here for the most sensitive
/// one with sessions of its own, and `keep_sensitive` keeps exactly the first ones.
#[test]
fn the_most_sensitive_layers_are_the_ones_whose_fp32_copy_helps_most() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = copy_fixture("tiny_nchw", dir.path());
    let images = CalibrationImages::from_folder(&fixtures().join("images"), &manifest, 8).unwrap();
    let model_bytes = std::fs::read(&manifest.file).unwrap();
    let options = QuantizeOptions { keep_first: Some(0), ..QuantizeOptions::default() };
    let env = runtime();
    let tensors = plan(&model_bytes, &options).unwrap().tensors;
    let ranges =
        calibrate(&env, &manifest, &model_bytes, &images.calibration, &tensors, Method::Minmax, &cpu()).unwrap();
    let found = graft::quantize::sensitivity::most_sensitive(
        &env,
        &manifest,
        &model_bytes,
        &ranges,
        &options,
        &images.calibration,
        &cpu(),
    )
    .unwrap();
    let candidates = graft::onnx::quantize::quantized_weighted_nodes(&model_bytes, &options).unwrap();
    assert_eq!(found.len(), candidates.len());
    assert!(found.windows(2).all(|w| w[0].error_ratio <= w[1].error_ratio), "{found:?}");

    // The first one's ratio, independently: squared output errors summed over the images.
    let output = [manifest.output_name.as_str()];
    let pixels = images.calibration.concat();
    let count = images.calibration.len();
    let run = |bytes: &[u8]| {
        let mut session = open_session(&env, ModelSource::Edited { path: &manifest.file, bytes }, &cpu()).unwrap();
        run_batch(&mut session, &manifest, pixels.clone(), count, &output).unwrap().remove(0)
    };
    let reference = run(&model_bytes);
    let squared =
        |bytes: &[u8]| -> f64 { run(bytes).iter().zip(&reference).map(|(a, b)| f64::from(a - b).powi(2)).sum() };
    let whole = squared(&quantize(&model_bytes, &ranges, &options).unwrap().0);
    let kept = QuantizeOptions { keep_nodes: vec![found[0].node.clone()], ..options.clone() };
    let (kept_bytes, report) = quantize(&model_bytes, &ranges, &kept).unwrap();
    assert_eq!(report.kept_fp32, [found[0].node.clone()]);
    let ratio = squared(&kept_bytes) / whole;
    assert!((ratio - found[0].error_ratio).abs() <= 1e-6 * ratio.max(1.0), "{ratio} vs {:?}", found[0]);
    assert!(found[0].error_ratio < 1.0, "keeping some layer in FP32 brings the output closer: {found:?}");

    // quantize_model with keep_sensitive 1 keeps that layer (and records it).
    let settings = QuantizeSettings { keep_sensitive: 1, ..settings(options) };
    let outcome = quantize_model(&env, &manifest, &images, &settings).unwrap();
    assert_eq!(outcome.quantization.kept_fp32, [found[0].node.clone()]);
}
