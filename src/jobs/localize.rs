//! A `task: "localize"` job: features of a box dataset (pooled, and the spatial map for
//! the spatial box head), box targets moved with each augmented variant and mapped
//! through the model's resize, the class and box heads trained together, and class
//! accuracy and IoU on the test split.

use std::time::Instant;

use serde_json::json;

use super::context::{Failure, Run, Trained, compute_features, labels, train_failure};
use super::evaluation::{
    FeatureSummary, JobEvaluation, TestFigures, Timings, TrainingFacts, misclassified, per_class, warnings,
};
use super::features::variant_seed;
use super::finetune::{SplitBoxes, fine_tune, spatial_tap};
use super::quantize::judge_trained_head;
use crate::finetune::TuneHead;
use crate::serving::{ImageFeatures, TrainedHead};
use crate::store::{DatasetRecord, ItemRecord};
use crate::train::{
    LocalizeCheckpoint, LocalizeData, LocalizeHeadKind, LocalizeSplit, box_metrics, evaluate, stack_rows,
    train_localizer,
};
use crate::vision::{Augmentation, InputBox, PixelBox, Preprocessing, ResizePlan, box_to_input};

pub(super) fn execute_localize(run: Run<'_>, dataset: &DatasetRecord) -> Result<Trained, Failure> {
    let Run { spec, splits, model, control, progress, .. } = run;
    let failed = |reason: String| Failure::Failed(reason);
    let mut items = splits.train.iter().chain(&splits.valid).chain(&splits.test);
    if let Some(item) = items.find(|i| i.bbox.is_none()) {
        return Err(failed(format!(
            "task \"localize\" needs a box for every image; dataset {} has none for {} (upload it with box \
             annotations)",
            dataset.id, item.path
        )));
    }
    let kind = spec.box_head_for(model.spatial.is_ok()).unwrap_or(LocalizeHeadKind::Pooled);
    let with_spatial = kind == LocalizeHeadKind::Spatial;
    if let (true, Err(reason)) = (with_spatial, &model.spatial) {
        return Err(failed(format!("box_head \"spatial\" needs the base's spatial feature map: {reason}")));
    }
    progress.event("box_head", json!({"box_head": kind}));

    let variants = spec.feature_variants();
    let requests = splits.feature_requests(variants);
    let (features, stats, features_seconds) = compute_features(run, &requests, with_spatial)?;

    let pre = &spec.preprocessing(&model.manifest.preprocessing);
    let split_of = |rows: &[ImageFeatures], items: &[&ItemRecord], variant: usize| {
        let boxes = items.iter().map(|item| input_box(item, variant, spec.augment.as_ref(), pre)).collect();
        localize_split(rows, items, boxes).map_err(failed)
    };
    let (train_rows, valid_rows, test_rows) = splits.cut(&features, variants);
    let train = train_rows
        .into_iter()
        .enumerate()
        .map(|(variant, rows)| split_of(rows, &splits.train, variant))
        .collect::<Result<Vec<_>, _>>()?;
    let valid = split_of(valid_rows, &splits.valid, 0)?;
    let test = split_of(test_rows, &splits.test, 0)?;
    let spatial_shape = model.spatial.as_ref().ok().filter(|_| with_spatial).map(|s| (s.height, s.width, s.channels));
    let data = LocalizeData { classes: dataset.classes.len(), spatial_shape, train, valid: Some(valid) };

    let training_started = Instant::now();
    let resume = run.stored_checkpoint(|c: &LocalizeCheckpoint| c.fit.epoch);
    let loss = spec.localize_loss(kind);
    let outcome = train_localizer(&spec.train, loss, kind, &data, resume, &mut |report, checkpoint| {
        run.store_checkpoint(checkpoint);
        progress.training("training", report.epoch, report.epochs, report.best_epoch, report.elapsed_seconds, report);
        control.flow()
    })
    .map_err(|e| train_failure(control, e))?;
    let training_seconds = training_started.elapsed().as_secs_f64();

    progress.phase("evaluating");
    let (probabilities, boxes) = outcome
        .head
        .predict(test.pooled.view(), test.spatial.as_ref().map(|s| s.view()))
        .map_err(|e| failed(e.to_string()))?;
    let test_metrics = evaluate(probabilities.view(), &test.labels, 5).map_err(|e| failed(e.to_string()))?;
    let test_boxes = box_metrics(&boxes, &test.boxes);
    let evaluation = JobEvaluation {
        task: Some("localize"),
        box_head: Some(kind),
        loss: Some(loss),
        test: TestFigures { test: test_metrics, test_boxes: Some(test_boxes) },
        classes: dataset.classes.clone(),
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.epochs_run,
        stopped_early: outcome.stopped_early,
        features: FeatureSummary::new(stats, test.pooled.ncols()),
        timings: Timings::new(&stats, features_seconds, training_seconds),
        solver: None,
        // The localizer's report has no train accuracy, so overfitting is not judged here.
        warnings: warnings(&TrainingFacts {
            epochs: Some((outcome.best_epoch, outcome.epochs_run, spec.train.epochs)),
            accuracies: None,
            valid_per_class: per_class(&dataset.classes, data.valid.as_ref().map_or(&[][..], |v| &v.labels[..])),
            convex_possible: false,
        }),
        phase1: None,
        fine_tune: None,
        quantization: None,
    };
    let (head, tuned_base, mut evaluation) = if spec.unfreeze.is_some() {
        let tap = with_spatial.then(|| spatial_tap(model)).flatten();
        let head = TuneHead::Localizer { head: outcome.head, loss, spatial: tap };
        let boxes = SplitBoxes {
            train: data.train.iter().map(|s| s.boxes.clone()).collect(),
            valid: data.valid.as_ref().map(|v| v.boxes.clone()).unwrap_or_default(),
            test: test.boxes.clone(),
        };
        let tuned = fine_tune(run, dataset.classes.len(), head, Some(boxes))?;
        let boxes = tuned.test.boxes.unwrap_or_default();
        let test_metrics =
            evaluate(tuned.test.probabilities.view(), &test.labels, 5).map_err(|e| failed(e.to_string()))?;
        let figures = TestFigures { test: test_metrics, test_boxes: Some(box_metrics(&boxes, &test.boxes)) };
        let evaluation = evaluation.with_phase2(figures, tuned.report);
        let TuneHead::Localizer { head, .. } = tuned.head else { unreachable!("phase 2 keeps the head's kind") };
        (head, tuned.tuned_base, evaluation)
    } else {
        (outcome.head, None, evaluation)
    };
    // With `quantize`, the served base (tuned or not) in INT8 under the trained head.
    let tuned_base = match spec.quantize {
        false => tuned_base,
        true => {
            let figures = |rows: &[ImageFeatures]| -> Result<TestFigures, String> {
                let split = localize_split(rows, &splits.test, test.boxes.clone())?;
                let (probabilities, boxes) = head
                    .predict(split.pooled.view(), split.spatial.as_ref().map(|s| s.view()))
                    .map_err(|e| e.to_string())?;
                let test = evaluate(probabilities.view(), &split.labels, 5).map_err(|e| e.to_string())?;
                Ok(TestFigures { test, test_boxes: Some(box_metrics(&boxes, &split.boxes)) })
            };
            judge_trained_head(run, tuned_base.as_deref(), with_spatial, figures, &mut evaluation)?.or(tuned_base)
        }
    };
    let misclassified = misclassified(&splits.test, &evaluation.test.test);
    let evaluation = evaluation.to_json();
    progress.event("evaluation", evaluation.clone());
    let (classes, geometry) = (dataset.classes.clone(), spec.geometry());
    Ok(Trained { head: TrainedHead::Localizer(head), classes, evaluation, tuned_base, geometry, misclassified })
}

/// The training target of `item`'s variant: its box moved with the variant's crop and
/// mirror, then mapped through the model's resize to `[cx, cy, w, h]` of the input.
///
/// The crop window is taken on the stored (full-size) image here, while the pixels may
/// have been decoded reduced; the two windows agree to within one decoded pixel.
fn input_box(item: &ItemRecord, variant: usize, augment: Option<&Augmentation>, pre: &Preprocessing) -> InputBox {
    let [x_min, y_min, x_max, y_max] = item.bbox.unwrap_or_default().map(|v| v as f32);
    let bbox = PixelBox { x_min, y_min, x_max, y_max };
    let size = (item.width.max(1) as u32, item.height.max(1) as u32);
    let (bbox, size) = match augment {
        Some(augment) if variant > 0 => augment.geometry(variant_seed(&item.sha256, variant)).map_box(bbox, size),
        _ => (bbox, size),
    };
    let target = (pre.width, pre.height);
    box_to_input(bbox, &ResizePlan::new(size, target, pre.resize), target)
}

/// Stacks one split's features, labels and box targets.
fn localize_split(
    rows: &[ImageFeatures],
    items: &[&ItemRecord],
    boxes: Vec<InputBox>,
) -> Result<LocalizeSplit, String> {
    let pooled = stack_rows(rows.iter().map(|f| f.pooled.as_slice()))?;
    let spatial = match rows.first().is_some_and(|f| f.spatial.is_some()) {
        true => Some(stack_rows(rows.iter().map(|f| f.spatial.as_deref().unwrap_or_default()))?),
        false => None,
    };
    Ok(LocalizeSplit { pooled, spatial, labels: labels(items), boxes })
}
