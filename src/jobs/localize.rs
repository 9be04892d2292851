//! A `task: "localize"` job: features of a box dataset (pooled, and the spatial map for
//! the spatial box head), box targets moved with each augmented variant and mapped
//! through the model's resize, the class and box heads trained together, and class
//! accuracy and IoU on the test split.

use std::ops::ControlFlow;
use std::time::Instant;

use ndarray::Array2;
use serde_json::json;

use super::features::{FeatureError, FeatureRequest, ImageFeatures, extract_features, variant_seed};
use super::run::{Failure, JobContext, Progress, Trained, stats_json, stop_reason};
use super::spec::JobSpec;
use crate::data::Split;
use crate::store::{DatasetRecord, ItemRecord};
use crate::train::{LocalizeData, LocalizeHeadKind, LocalizeSplit, TrainError, box_metrics, evaluate, train_localizer};
use crate::vision::{Augmentation, InputBox, PixelBox, Preprocessing, ResizePlan, box_to_input};
use crate::zoo::{LoadedModel, TrainedHead};

use super::run::Control;

pub(super) fn execute_localize(
    ctx: &JobContext,
    spec: &JobSpec,
    dataset: &DatasetRecord,
    items: &[ItemRecord],
    model: &LoadedModel,
    control: &Control,
    progress: &Progress<'_>,
) -> Result<Trained, Failure> {
    let failed = |reason: String| Failure::Failed(reason);
    if let Some(item) = items.iter().find(|i| i.bbox.is_none()) {
        return Err(failed(format!(
            "task \"localize\" needs a box for every image; dataset {} has none for {} (upload it with box \
             annotations)",
            dataset.id, item.path
        )));
    }
    let kind = match (spec.box_head, &model.spatial) {
        (Some(kind), _) => kind,
        (None, Ok(_)) => LocalizeHeadKind::Spatial,
        (None, Err(_)) => LocalizeHeadKind::Pooled,
    };
    let with_spatial = kind == LocalizeHeadKind::Spatial;
    if let (true, Err(reason)) = (with_spatial, &model.spatial) {
        return Err(failed(format!("box_head \"spatial\" needs the base's spatial feature map: {reason}")));
    }
    progress.event("box_head", json!({"box_head": kind}));

    let of_split = |split: Split| items.iter().filter(move |i| i.split == split.as_str()).collect::<Vec<_>>();
    let (train_items, valid_items, test_items) =
        (of_split(Split::Train), of_split(Split::Valid), of_split(Split::Test));
    if train_items.is_empty() {
        return Err(failed("the dataset's train split is empty".into()));
    }
    let variants = spec.feature_variants();
    let mut requests = Vec::new();
    for variant in 0..variants {
        requests.extend(train_items.iter().map(|i| FeatureRequest { sha256: i.sha256.clone(), variant }));
    }
    for item in valid_items.iter().chain(&test_items) {
        requests.push(FeatureRequest { sha256: item.sha256.clone(), variant: 0 });
    }

    let started = Instant::now();
    let (features, stats) = extract_features(
        model,
        &ctx.blobs,
        &requests,
        spec.augment.as_ref(),
        &ctx.decode_limits,
        with_spatial,
        &mut |done, total| {
            progress.features(done, total, started);
            !control.should_stop()
        },
    )
    .map_err(|e| match e {
        FeatureError::Stopped => stop_reason(control),
        FeatureError::Failed(reason) => failed(reason),
    })?;
    let features_seconds = started.elapsed().as_secs_f64();

    let pre = &model.manifest.preprocessing;
    let mut rows = features.into_iter();
    let mut split_of = |items: &[&ItemRecord], variant: usize| -> Result<LocalizeSplit, Failure> {
        let features: Vec<ImageFeatures> = rows.by_ref().take(items.len()).collect();
        let boxes = items.iter().map(|item| input_box(item, variant, spec.augment.as_ref(), pre)).collect();
        localize_split(features, items, boxes).map_err(failed)
    };
    let train: Vec<LocalizeSplit> =
        (0..variants).map(|variant| split_of(&train_items, variant)).collect::<Result<_, _>>()?;
    let valid = split_of(&valid_items, 0)?;
    let test = split_of(&test_items, 0)?;
    let spatial_shape = model.spatial.as_ref().ok().filter(|_| with_spatial).map(|s| (s.height, s.width, s.channels));
    let data = LocalizeData { classes: dataset.classes.len(), spatial_shape, train, valid: Some(valid) };

    let training_started = Instant::now();
    let outcome = train_localizer(&spec.train, spec.loss_weights, kind, &data, &mut |report| {
        let per_epoch = report.elapsed_seconds / report.epoch.max(1) as f64;
        progress.write(
            json!({
                "phase": "training",
                "epoch": report.epoch,
                "epochs": report.epochs,
                "best_epoch": report.best_epoch,
                "eta_seconds": per_epoch * report.epochs.saturating_sub(report.epoch) as f64,
                "last": report,
            }),
            "epoch",
            false,
        );
        if control.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .map_err(|e| match e {
        TrainError::Cancelled { .. } => stop_reason(control),
        other => failed(other.to_string()),
    })?;
    let training_seconds = training_started.elapsed().as_secs_f64();

    progress.phase("evaluating");
    let (probabilities, boxes) = outcome
        .head
        .predict(test.pooled.view(), test.spatial.as_ref().map(|s| s.view()))
        .map_err(|e| failed(e.to_string()))?;
    let test_metrics = evaluate(probabilities.view(), &test.labels, 5).map_err(|e| failed(e.to_string()))?;
    let test_boxes = box_metrics(&boxes, &test.boxes);
    let evaluation = json!({
        "task": "localize",
        "box_head": kind,
        "loss_weights": spec.loss_weights,
        "test": test_metrics,
        "test_boxes": test_boxes,
        "classes": dataset.classes,
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "stopped_early": outcome.stopped_early,
        "features": stats_json(stats, test.pooled.ncols()),
        "timings": {"features_seconds": features_seconds, "training_seconds": training_seconds},
    });
    progress.event("evaluation", evaluation.clone());
    Ok(Trained { head: TrainedHead::Localizer(outcome.head), classes: dataset.classes.clone(), evaluation })
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
    features: Vec<ImageFeatures>,
    items: &[&ItemRecord],
    boxes: Vec<InputBox>,
) -> Result<LocalizeSplit, String> {
    let rows = features.len();
    let pooled_width = features.first().map_or(0, |f| f.pooled.len());
    let spatial_width = features.first().and_then(|f| f.spatial.as_ref()).map(Vec::len);
    let mut pooled = Vec::with_capacity(rows * pooled_width);
    let mut spatial = Vec::with_capacity(rows * spatial_width.unwrap_or(0));
    for image in features {
        pooled.extend(image.pooled);
        spatial.extend(image.spatial.unwrap_or_default());
    }
    let shape_error = |e: ndarray::ShapeError| format!("features of uneven width: {e}");
    let pooled = Array2::from_shape_vec((rows, pooled_width), pooled).map_err(shape_error)?;
    let spatial =
        spatial_width.map(|width| Array2::from_shape_vec((rows, width), spatial).map_err(shape_error)).transpose()?;
    let labels = items.iter().map(|i| i.class_idx as usize).collect();
    Ok(LocalizeSplit { pooled, spatial, labels, boxes })
}
