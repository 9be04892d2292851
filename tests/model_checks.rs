//! A model whose ONNX inputs/outputs do not match its manifest is refused with the reason;
//! a model served by several instances answers as one served by a single session.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use graft::serving::load_model;
use graft::zoo::Manifest;

/// Writes a variant of the fixture manifest `base` into `dir`, edited by `edit`.
fn variant(dir: &Path, base: &str, edit: impl Fn(String) -> String) -> Manifest {
    let models = fixture_models();
    let text = std::fs::read_to_string(models.join(format!("{base}.toml"))).unwrap();
    let text =
        text.replace(&format!("file = \"{base}.onnx\""), &format!("file = {:?}", models.join(format!("{base}.onnx"))));
    let path = dir.join(format!("{base}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    if !dir.join("fixture_labels.tsv").exists() {
        std::fs::copy(models.join("fixture_labels.tsv"), dir.join("fixture_labels.tsv")).unwrap();
    }
    Manifest::load(&path).unwrap()
}

fn batching() -> graft::runtime::Batching {
    graft::runtime::Batching {
        max_batch_size: 4,
        max_delay: std::time::Duration::ZERO,
        queue_capacity: 4,
        instances: 2,
    }
}

fn refusal(manifest: Manifest) -> String {
    match load_model(&model_runtime(cpu(), batching()), Arc::new(manifest)) {
        Ok(_) => panic!("the model was accepted"),
        Err(reason) => reason,
    }
}

#[test]
fn the_fixture_manifests_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for base in ["tiny_nchw", "tiny_nhwc"] {
        let model = load_model(&model_runtime(cpu(), batching()), Arc::new(variant(dir.path(), base, |t| t))).unwrap();
        assert_eq!(model.labels.len(), 10);
        assert_eq!(model.runner.config().max_batch_size, 4);
        // The pooled features (GlobalAveragePool of an 8-channel conv) are exposed by graph surgery.
        assert_eq!(model.features, Ok(8));
    }
}

#[test]
fn a_run_returns_the_outputs_asked_for_and_the_same_values() {
    // tiny_spatial: scores, pooled features (5) and the 8 × 8 × 5 map.
    let manifest = Manifest::load(&fixtures().join("spatial/tiny_spatial.toml")).unwrap();
    let model = load_model(&model_runtime(cpu(), batching()), Arc::new(manifest)).unwrap();
    assert_eq!(model.runner.config().output_names.len(), 3);
    assert_eq!((model.outputs_needed(false, false), model.outputs_needed(true, false)), (1, 2));
    assert_eq!(model.outputs_needed(true, true), 3);
    let image_len = model.runner.image_len();
    let pixels: Vec<f32> = (0..2 * image_len).map(|j| (j * 7919 % 1000) as f32 / 1000.0).collect();
    let all = model.runner.infer_blocking(pixels.clone(), 2, 3).unwrap();
    assert_eq!(
        all.iter().map(|image| image.iter().map(Vec::len).collect::<Vec<_>>()).collect::<Vec<_>>(),
        [[10, 5, 320], [10, 5, 320]]
    );
    for wanted in [1, 2] {
        let some = model.runner.infer_blocking(pixels.clone(), 2, wanted).unwrap();
        let prefix: Vec<Vec<Vec<f32>>> = all.iter().map(|image| image[..wanted].to_vec()).collect();
        assert_eq!(some, prefix, "{wanted} outputs");
    }
}

#[test]
fn a_wrong_feature_tensor_still_serves_scores_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = variant(dir.path(), "tiny_nchw", |t| t.replace("features = \"pooled\"", "features = \"pooling\""));
    let model = load_model(&model_runtime(cpu(), batching()), Arc::new(manifest)).unwrap();
    let reason = model.features.unwrap_err();
    assert!(reason.contains("`pooling`") && reason.contains("pooled"), "{reason}");
}

#[test]
fn mismatches_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let reason = refusal(variant(dir.path(), "tiny_nchw", |t| t.replace("layout = \"NCHW\"", "layout = \"NHWC\"")));
    assert!(
        reason.contains("pixels") && reason.contains("[-1, 3, 32, 32]") && reason.contains("[32, 32, 3]"),
        "{reason}"
    );

    let reason = refusal(variant(dir.path(), "tiny_nchw", |t| t.replace("height = 32", "height = 64")));
    assert!(reason.contains("[3, 64, 32]"), "{reason}");

    let reason = refusal(variant(dir.path(), "tiny_nchw", |t| t.replace("name = \"pixels\"", "name = \"image\"")));
    assert!(reason.contains("`image` is not an input") && reason.contains("pixels"), "{reason}");

    let reason = refusal(variant(dir.path(), "tiny_nhwc", |t| t.replace("name = \"probs\"", "name = \"scores\"")));
    assert!(reason.contains("`scores` is not an output") && reason.contains("probs"), "{reason}");

    let nine = tempfile::tempdir().unwrap();
    let labels: String = std::fs::read_to_string(fixture_models().join("fixture_labels.tsv"))
        .unwrap()
        .lines()
        .take(10)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(nine.path().join("fixture_labels.tsv"), labels).unwrap();
    let reason = refusal(variant(nine.path(), "tiny_nchw", |t| t));
    assert!(reason.contains("10 classes") && reason.contains("has 9"), "{reason}");

    let reason =
        refusal(variant(dir.path(), "tiny_nhwc", |t| t.replace("file = ", "file = \"/nonexistent/x.onnx\"\n#")));
    assert!(reason.contains("missing") && reason.contains("graft models pull tiny_nhwc"), "{reason}");
}

#[test]
fn several_instances_answer_every_request_as_one_session_does() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Arc::new(variant(dir.path(), "tiny_nchw", |t| t));
    let one = graft::runtime::Batching { instances: 1, ..batching() };
    let single = load_model(&model_runtime(cpu(), one), manifest.clone()).unwrap();
    // Three instances of one thread each, plus a three-thread session for lone batches.
    let three = graft::runtime::Batching { instances: 3, queue_capacity: 32, ..batching() };
    let options = graft::runtime::SessionOptions { intra_threads: 3, ..cpu() };
    let shared = load_model(&model_runtime(options, three), manifest).unwrap();
    let image_len = single.runner.image_len();
    let inputs: Vec<Vec<f32>> =
        (0..24).map(|i| (0..image_len).map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0).collect()).collect();
    let expected: Vec<_> =
        inputs.iter().map(|pixels| single.runner.infer_blocking(pixels.clone(), 1, 2).unwrap()).collect();
    // Six clients at once, so that batches run side by side and some run alone.
    let answers: Vec<_> = std::thread::scope(|scope| {
        let clients: Vec<_> = inputs
            .chunks(4)
            .map(|chunk| {
                let runner = &shared.runner;
                scope.spawn(move || {
                    chunk.iter().map(|p| runner.infer_blocking(p.clone(), 1, 2).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    for (i, (got, want)) in answers.iter().zip(&expected).enumerate() {
        for (g, w) in got[0].iter().zip(&want[0]) {
            assert_eq!(g.len(), w.len());
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "input {i}: max |Δ| {worst}");
        }
    }
    // The inputs differ, so a mixed-up answer would show.
    assert_ne!(expected[0][0][0], expected[1][0][0]);
}
