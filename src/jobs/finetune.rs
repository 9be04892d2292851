//! Phase 2 of a job that tunes the top of its base (classification or localization): the
//! cut activations of every image (ONNX Runtime on the base's prefix, cached in the blob
//! store like features), the tail and the phase-1 head trained together at a lower learning
//! rate, the test evaluation, and the tuned base as an ONNX file.

use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::context::{Control, Failure, JobContext, Progress, Run, feature_failure, labels, train_failure};
use super::features::{
    FeatureError, FeatureRequest, FeatureStats, PixelSource, Synchronous, cached_or_computed, feature_fingerprint,
    read_f32, variant_suffix,
};
use super::keys::{activation_key, activation_shape_key, activations_namespace, fine_tune_checkpoint_key};
use super::spec::JobSpec;
use crate::finetune::{Predictions, TailModel, TuneCheckpoint, TuneData, TuneHead, TuneSplit, tail_features, tune};
use crate::onnx::{BaseGraph, Unfreeze, choose_cut, with_initializers};
use crate::serving::LoadedModel;
use crate::zoo::Manifest;

/// The spatial-map tap of a localizer's spatial head on `model`, for phase 2.
pub(super) fn spatial_tap(model: &LoadedModel) -> Option<crate::finetune::SpatialTap> {
    model
        .manifest
        .spatial_features
        .as_ref()
        .map(|map| crate::finetune::SpatialTap { tensor: map.tensor.clone(), layout: map.layout })
}

/// Where a job cuts its base and what it will train there.
pub struct TunePlan {
    pub graph: BaseGraph,
    pub base_bytes: Vec<u8>,
    pub cut: String,
    pub tail: TailModel,
}

/// Reads the base and finds the cut `unfreeze` asks for; every error is a sentence for
/// the user (an unknown tensor, a cut inside a block, an operator the tail cannot train,
/// a spatial map the tail does not compute when `needs_spatial`).
pub fn plan_tuning(manifest: &Manifest, unfreeze: &Unfreeze, needs_spatial: bool) -> Result<TunePlan, String> {
    let features =
        manifest.features.as_deref().ok_or_else(|| format!("the manifest of {} names no `features`", manifest.name))?;
    let base_bytes = fs_err::read(&manifest.file).map_err(|e| e.to_string())?;
    let graph = BaseGraph::decode(&base_bytes).map_err(|e| e.to_string())?;
    let cut = choose_cut(&graph, features, &manifest.cut_points, unfreeze).map_err(|e| e.to_string())?;
    let tail = graph.tail(&cut, features).map_err(|e| e.to_string())?;
    if let (true, Some(map)) = (needs_spatial, &manifest.spatial_features) {
        let computes_map = |cut: &str| -> bool {
            map.tensor == cut
                || graph.tail(cut, features).is_ok_and(|t| t.nodes.iter().any(|n| n.output.contains(&map.tensor)))
        };
        if !computes_map(&cut) {
            // The fewest blocks whose tail computes the map, for the message.
            const MOST_BLOCKS: usize = 64;
            let fewest = (1..=MOST_BLOCKS).find(|&n| {
                choose_cut(&graph, features, &manifest.cut_points, &Unfreeze::Blocks(n))
                    .is_ok_and(|candidate| computes_map(&candidate))
            });
            let hint = fewest
                .map(|n| format!(" (`unfreeze: {{\"blocks\": {n}}}` is the least that does)"))
                .unwrap_or_default();
            return Err(format!(
                "the spatial box head reads `{}`, which lies below the cut `{cut}`; unfreeze more of the base{hint}",
                map.tensor
            ));
        }
    }
    let tail = TailModel::new(&tail).map_err(|e| format!("the tail above `{cut}` cannot be tuned: {e}"))?;
    Ok(TunePlan { graph, base_bytes, cut, tail })
}

/// The outcome of phase 2.
pub(super) struct Tuned {
    pub head: TuneHead,
    /// `None` when phase 1's model was kept (no epoch of phase 2 validated better).
    pub tuned_base: Option<Vec<u8>>,
    /// The tuned model's predictions on the test split.
    pub test: Predictions,
    /// What phase 2 did, for the job's evaluation.
    pub report: Value,
}

/// Box targets of a localization job, per split (train: one list per feature variant).
pub(super) struct SplitBoxes {
    pub train: Vec<Vec<[f32; 4]>>,
    pub valid: Vec<[f32; 4]>,
    pub test: Vec<[f32; 4]>,
}

/// Phase 2 of `run`: tunes the tail with the phase-1 `head` (and a localizer's `boxes`).
pub(super) fn fine_tune(
    run: Run<'_>,
    classes: usize,
    head: TuneHead,
    boxes: Option<SplitBoxes>,
) -> Result<Tuned, Failure> {
    let Run { ctx, spec, splits, model, control, progress, .. } = run;
    let failed = |reason: String| Failure::Failed(reason);
    let unfreeze = spec.unfreeze.as_ref().map_or(Unfreeze::Blocks(1), |u| u.to_unfreeze());
    let needs_spatial = matches!(&head, TuneHead::Localizer { spatial: Some(_), .. });
    let plan = plan_tuning(&model.manifest, &unfreeze, needs_spatial).map_err(failed)?;
    let variants = spec.feature_variants();
    let requests = splits.feature_requests(variants);
    let started = Instant::now();
    let Activations { rows, shape, stats } = activations(ctx, spec, model, &plan, &requests, control, progress)?;
    let activation_seconds = started.elapsed().as_secs_f64();

    // The rows come in the order of `Splits::feature_requests`: each train variant, valid, test.
    // Each is moved into its split's buffer and freed, so the activations are held once.
    let mut rows = rows.into_iter();
    let mut split = |count: usize, labels: Vec<usize>, boxes: Option<&Vec<[f32; 4]>>| {
        let mut activations = Vec::with_capacity(count * shape.iter().product::<usize>());
        for row in rows.by_ref().take(count) {
            activations.extend_from_slice(&row);
        }
        TuneSplit { activations, labels, boxes: boxes.cloned().unwrap_or_default() }
    };
    let train = (0..variants)
        .map(|v| split(splits.train.len(), labels(&splits.train), boxes.as_ref().map(|b| &b.train[v])))
        .collect();
    let valid = split(splits.valid.len(), labels(&splits.valid), boxes.as_ref().map(|b| &b.valid));
    let test = split(splits.test.len(), labels(&splits.test), boxes.as_ref().map(|b| &b.test));
    let data = TuneData { shape: shape.clone(), classes, train, valid: Some(valid) };

    let config = spec.fine_tune_config();
    let trained_started = Instant::now();
    let mut epoch_seconds = Vec::new();
    let key = fine_tune_checkpoint_key(progress.job_id());
    let resume = ctx.blobs.try_get(&key).ok().flatten().and_then(|bytes| TuneCheckpoint::from_bytes(&bytes));
    if let Some(checkpoint) = &resume {
        progress.event("resumed", json!({"phase": "fine-tuning", "after_epoch": checkpoint.fit.epoch}));
    }
    let outcome = tune(&config, &plan.tail, &head, &data, resume, &mut |report, checkpoint| {
        // The checkpoint is durable before the epoch is reported: a reported epoch is never redone.
        let _ = ctx.blobs.replace(&key, &checkpoint.to_bytes());
        epoch_seconds.push(report.epoch_seconds);
        progress.training(
            "fine-tuning",
            report.epoch,
            report.epochs,
            report.best_epoch,
            report.elapsed_seconds,
            report,
        );
        control.flow()
    })
    .map_err(|e| train_failure(control, e))?;
    let training_seconds = trained_started.elapsed().as_secs_f64();

    progress.phase("evaluating");
    let tap = match &outcome.head {
        TuneHead::Localizer { spatial, .. } => spatial.as_ref(),
        TuneHead::Classifier(_) => None,
    };
    let evaluating = |e: String| failed(format!("evaluating the tuned model: {e}"));
    let (pooled, spatial) = tail_features(&plan.tail, &test.activations, &shape, config.batch_size, tap)
        .map_err(|e| evaluating(e.to_string()))?;
    let predictions = outcome.head.predict(&pooled, spatial.as_ref()).map_err(evaluating)?;
    // Best epoch 0: phase 1's model was kept, and the base is served as it is.
    let tuned_base = match outcome.best_epoch {
        0 => None,
        _ => {
            let tuned = plan.tail.initializers().map_err(|e| failed(e.to_string()))?;
            Some(with_initializers(&plan.base_bytes, &tuned).map_err(failed)?)
        }
    };
    let per_image: usize = shape.iter().product();
    let report = json!({
        "cut": plan.cut,
        "unfreeze": spec.unfreeze,
        "learning_rate": config.learning_rate,
        "trainable_tensors": plan.tail.params().len(),
        "trainable_parameters": plan.tail.params().iter().map(|p| p.shape.iter().product::<usize>()).sum::<usize>(),
        "activation_shape": shape,
        "activation_bytes_per_image": per_image * 4,
        "activations": {"images": stats.total, "cached": stats.cached, "computed": stats.computed, "seconds": activation_seconds},
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "stopped_early": outcome.stopped_early,
        "training_seconds": training_seconds,
        "seconds_per_epoch": epoch_seconds.iter().sum::<f64>() / epoch_seconds.len().max(1) as f64,
    });
    Ok(Tuned { head: outcome.head, tuned_base, test: predictions, report })
}

/// What computes the activations at the cut: ONNX Runtime on the base's prefix, or nothing
/// when the cut is the model input itself (the whole base is tuned).
enum Prefix {
    Input,
    Session(Box<crate::runtime::ModelSession>),
}

impl Prefix {
    fn open(ctx: &JobContext, model: &LoadedModel, plan: &TunePlan) -> Result<Self, String> {
        if plan.cut == model.manifest.input_name {
            return Ok(Self::Input);
        }
        let prefix = plan.graph.prefix(&plan.cut).map_err(|e| e.to_string())?;
        let session = ctx.registry.open_graph(&format!("{} prefix", model.manifest.name), &prefix)?;
        Ok(Self::Session(Box::new(session)))
    }

    /// One image's activation shape and the batch's values, for `count` images of `pixels`.
    fn run(
        &mut self,
        model: &LoadedModel,
        cut: &str,
        pixels: Vec<f32>,
        count: usize,
    ) -> Result<(Vec<usize>, Vec<f32>), String> {
        let [a, b, c] = model.runner.config().image_dims;
        let session = match self {
            Self::Input => return Ok((vec![a, b, c], pixels)),
            Self::Session(session) => session,
        };
        let input = ort::value::Tensor::from_array(([count, a, b, c], pixels)).map_err(|e| e.to_string())?;
        let outputs = session
            .session
            .run(ort::inputs![model.manifest.input_name.as_str() => input])
            .map_err(|e| format!("the base's prefix failed: {e}"))?;
        let (dims, values) = outputs[cut].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        Ok((dims.iter().skip(1).map(|&d| d.max(0) as usize).collect(), values.to_vec()))
    }
}

/// Refuses activations that would take more memory than the worker allows.
fn within_budget(ctx: &JobContext, cut: &str, shape: &[usize], images: usize) -> Result<(), String> {
    let per_image = shape.iter().product::<usize>() * 4;
    let needed = (per_image * images) as u64;
    if needed <= ctx.max_activation_bytes {
        return Ok(());
    }
    Err(format!(
        "the activations at `{cut}` ({shape:?}, {per_image} bytes per image) take {:.2} GB for {images} images and \
         variants, over the limit of {:.2} GB (--max-activation-bytes); unfreeze fewer blocks or use fewer \
         augmentation variants",
        needed as f64 / 1e9,
        ctx.max_activation_bytes as f64 / 1e9
    ))
}

/// Cut activations: one row per request, each of `shape`.
struct Activations {
    rows: Vec<Vec<f32>>,
    shape: Vec<usize>,
    stats: FeatureStats,
}

/// The cut activations of every request (same order) and the shape of one image's, read from
/// the cache or computed by ONNX Runtime on the base's prefix.
fn activations(
    ctx: &JobContext,
    spec: &JobSpec,
    model: &LoadedModel,
    plan: &TunePlan,
    requests: &[FeatureRequest],
    control: &Control,
    progress: &Progress<'_>,
) -> Result<Activations, Failure> {
    let failed = |reason: String| FeatureError::Failed(reason);
    let cut_id = &hex::encode(Sha256::digest(plan.cut.as_bytes()))[..12];
    let preprocessing = spec.preprocessing(&model.manifest.preprocessing);
    let namespace = activations_namespace(&model.manifest.name, &feature_fingerprint(model, &preprocessing), cut_id);
    let shape_key = activation_shape_key(&namespace);
    let key = |request: &FeatureRequest| {
        activation_key(&namespace, &request.sha256, &variant_suffix(request, spec.augment.as_ref()))
    };
    let cached_shape: Option<Vec<usize>> = ctx
        .blobs
        .try_get(&shape_key)
        .map_err(|e| Failure::Failed(e.to_string()))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(shape) = &cached_shape {
        within_budget(ctx, &plan.cut, shape, requests.len()).map_err(Failure::Failed)?;
    }
    let mut shape = cached_shape.clone();
    let mut read = |request: &FeatureRequest| match &cached_shape {
        Some(shape) => read_f32(&ctx.blobs, &key(request), shape.iter().product()),
        None => Ok(None),
    };
    let mut prefix = None;
    let compute = |pixels: Vec<f32>, batch: &[&FeatureRequest]| -> Result<Vec<Vec<f32>>, FeatureError> {
        if prefix.is_none() {
            prefix = Some(Prefix::open(ctx, model, plan).map_err(failed)?);
        }
        let prefix = prefix.as_mut().expect("opened above");
        let (image_shape, values) = prefix.run(model, &plan.cut, pixels, batch.len()).map_err(failed)?;
        let per_image: usize = image_shape.iter().product();
        if per_image == 0 || values.len() != per_image * batch.len() {
            return Err(failed(format!(
                "the cut `{}` gives {} values for {} images of shape {image_shape:?}: its first axis is not the batch",
                plan.cut,
                values.len(),
                batch.len()
            )));
        }
        within_budget(ctx, &plan.cut, &image_shape, requests.len()).map_err(failed)?;
        if shape.as_ref() != Some(&image_shape) {
            ctx.blobs
                .replace(&shape_key, &serde_json::to_vec(&image_shape).unwrap_or_default())
                .map_err(|e| failed(e.to_string()))?;
            shape = Some(image_shape);
        }
        batch
            .iter()
            .zip(values.chunks_exact(per_image))
            .map(|(request, values)| {
                ctx.blobs.replace(&key(request), crate::codec::to_bytes(values)).map_err(|e| failed(e.to_string()))?;
                Ok(values.to_vec())
            })
            .collect()
    };
    let pixels = PixelSource {
        blobs: &ctx.blobs,
        augmentation: spec.augment.as_ref(),
        decode_limits: &ctx.decode_limits,
        preprocessing: &preprocessing,
    };
    let started = Instant::now();
    let (rows, stats) = cached_or_computed(
        requests,
        model.runner.config().max_batch_size,
        model.runner.image_len(),
        &pixels,
        &mut read,
        &mut Synchronous(compute),
        &mut |done, total| {
            progress.counted("activations", done, total, started);
            !control.should_stop()
        },
    )
    .map_err(|e| feature_failure(control, e))?;
    let shape = shape.ok_or_else(|| Failure::Failed("no activations were computed".into()))?;
    Ok(Activations { rows, shape, stats })
}
