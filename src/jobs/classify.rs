//! A `task: "classify"` job: pooled features of every image and variant, the dense head,
//! the test evaluation, and phase 2 when the job tunes the top of its base.

use std::time::Instant;

use super::context::{Failure, Run, Trained, compute_features, labels, train_failure};
use super::evaluation::{
    FeatureSummary, JobEvaluation, SolverReport, TestFigures, Timings, TrainingFacts, misclassified, per_class,
    warnings,
};
use super::finetune::fine_tune;
use super::quantize::{int8_base, judge_trained_head, verdict};
use crate::finetune::TuneHead;
use crate::serving::{ImageFeatures, TrainedHead};
use crate::store::DatasetRecord;
use crate::train::{Checkpoint, Head, Solver, TrainData, evaluate, fit_linear, stack_rows, train};
use ndarray::Array2;

pub(super) fn execute_classify(run: Run<'_>, dataset: DatasetRecord) -> Result<Trained, Failure> {
    let Run { spec, splits, progress, .. } = run;
    let failed = |reason: String| Failure::Failed(reason);
    let requests = splits.feature_requests(spec.feature_variants());
    let (features, stats, features_seconds) = compute_features(run, &requests, false)?;
    let width = features.first().map_or(0, |f| f.pooled.len());
    let (data, test) = train_data(run, &features, dataset.classes.len())?;
    let test_labels = labels(&splits.test);

    let training_started = Instant::now();
    let trained = fit_head(run, &data, training_started, true)?;
    let training_seconds = training_started.elapsed().as_secs_f64();

    progress.phase("evaluating");
    let probabilities = trained.head.forward(test.view());
    let test_metrics = evaluate(probabilities.view(), &test_labels, 5).map_err(|e| failed(e.to_string()))?;
    // With `quantize` on a frozen base, the same head trained on the INT8 base's features,
    // served when its test accuracy holds (a tuned base is judged after phase 2).
    let (trained, test_metrics, quantization, int8_base) = match spec.quantize && spec.unfreeze.is_none() {
        false => (trained, test_metrics, None, None),
        true => {
            progress.phase("quantizing");
            let int8 = int8_base(&run, None)?;
            let run8 = Run { model: &int8.model, ..run };
            let (features8, _, _) = compute_features(run8, &requests, false)?;
            let (data8, test8) = train_data(run8, &features8, dataset.classes.len())?;
            let trained8 = fit_head(run8, &data8, Instant::now(), false)?;
            let probabilities = trained8.head.forward(test8.view());
            let metrics8 = evaluate(probabilities.view(), &test_labels, 5).map_err(|e| failed(e.to_string()))?;
            let verdict =
                verdict(test_metrics.accuracy, metrics8.accuracy, spec.max_accuracy_drop, int8.calibration_images);
            match verdict.served {
                "int8" => (trained8, metrics8, Some(verdict), Some(int8.bytes)),
                _ => (trained, test_metrics, Some(verdict), None),
            }
        }
    };
    let evaluation = JobEvaluation {
        task: None,
        box_head: None,
        loss: None,
        test: TestFigures { test: test_metrics, test_boxes: None },
        classes: dataset.classes.clone(),
        best_epoch: trained.best_epoch,
        epochs_run: trained.epochs_run,
        stopped_early: trained.stopped_early,
        features: FeatureSummary::new(stats, width),
        timings: Timings::new(&stats, features_seconds, training_seconds),
        solver: trained.solver,
        warnings: warnings(&TrainingFacts {
            epochs: trained.epochs,
            accuracies: trained.accuracies,
            valid_per_class: per_class(&dataset.classes, &data.valid_labels),
            convex_possible: spec.train.is_linear(),
        }),
        phase1: None,
        fine_tune: None,
        quantization,
    };
    let (head, tuned_base, evaluation) = if spec.unfreeze.is_some() {
        let head = TuneHead::Classifier(trained.head);
        let tuned = fine_tune(run, dataset.classes.len(), head, None)?;
        let test = evaluate(tuned.test.probabilities.view(), &test_labels, 5).map_err(|e| failed(e.to_string()))?;
        let mut evaluation = evaluation.with_phase2(TestFigures { test, test_boxes: None }, tuned.report);
        let TuneHead::Classifier(head) = tuned.head else { unreachable!("phase 2 keeps the head's kind") };
        // With `quantize`, the tuned base (or the base, when phase 1's model was kept) in INT8
        // under the head phase 2 left.
        let tuned_base = match spec.quantize {
            false => tuned.tuned_base,
            true => {
                let figures = |features: &[ImageFeatures]| -> Result<TestFigures, String> {
                    let pooled = stack_rows(features.iter().map(|f| f.pooled.as_slice()))?;
                    let probabilities = head.try_forward(pooled.view()).map_err(|e| e.to_string())?;
                    let test = evaluate(probabilities.view(), &test_labels, 5).map_err(|e| e.to_string())?;
                    Ok(TestFigures { test, test_boxes: None })
                };
                let graph = tuned.tuned_base.as_deref();
                judge_trained_head(run, graph, false, figures, &mut evaluation)?.or(tuned.tuned_base)
            }
        };
        (head, tuned_base, evaluation)
    } else {
        // A served INT8 base is the model's tuned base: stored, served and exported as one.
        (trained.head, int8_base, evaluation)
    };
    let misclassified = misclassified(&splits.test, &evaluation.test.test);
    let evaluation = evaluation.to_json();
    progress.event("evaluation", evaluation.clone());
    let geometry = spec.geometry();
    let classes = dataset.classes;
    Ok(Trained { head: TrainedHead::Classifier(head), classes, evaluation, tuned_base, geometry, misclassified })
}

/// The training data (every train variant, the validation rows) and the test rows, from
/// the pooled features of `splits.feature_requests`, in that order.
fn train_data(run: Run<'_>, features: &[ImageFeatures], classes: usize) -> Result<(TrainData, Array2<f32>), Failure> {
    let Run { spec, splits, .. } = run;
    let failed = |reason: String| Failure::Failed(reason);
    let pooled = |rows: &[ImageFeatures]| stack_rows(rows.iter().map(|f| f.pooled.as_slice())).map_err(failed);
    let (train_rows, valid_rows, test_rows) = splits.cut(features, spec.feature_variants());
    let train_variants = train_rows.into_iter().map(pooled).collect::<Result<Vec<_>, _>>()?;
    let (valid, test) = (pooled(valid_rows)?, pooled(test_rows)?);
    let data = TrainData {
        train: train_variants,
        train_labels: labels(&splits.train),
        valid,
        valid_labels: labels(&splits.valid),
        classes,
    };
    Ok((data, test))
}

/// Phase 1: the head, by the job's solver. Only the `resumable` fit (the job's first) stores
/// and resumes checkpoints: they are the job's, one per job.
fn fit_head(
    run: Run<'_>,
    data: &TrainData,
    training_started: Instant,
    resumable: bool,
) -> Result<HeadTrained, Failure> {
    let Run { spec, control, progress, .. } = run;
    Ok(match spec.solver {
        Solver::Minibatch => {
            let resume = if resumable { run.stored_checkpoint(|c: &Checkpoint| c.fit.epoch) } else { None };
            let outcome = train(&spec.train, data, resume, &mut |report, checkpoint| {
                if resumable {
                    run.store_checkpoint(checkpoint);
                }
                progress.epoch(report);
                control.flow()
            })
            .map_err(|e| train_failure(control, e))?;
            let kept = outcome.history.get(outcome.best_epoch.saturating_sub(1));
            HeadTrained {
                head: outcome.head,
                best_epoch: outcome.best_epoch,
                epochs_run: outcome.epochs_run,
                stopped_early: outcome.stopped_early,
                solver: None,
                epochs: Some((outcome.best_epoch, outcome.epochs_run, spec.train.epochs)),
                accuracies: kept.and_then(|r| Some((r.train_accuracy, r.valid_accuracy?))),
            }
        }
        // The path takes seconds: a job that loses its worker walks it again, no checkpoint.
        Solver::Convex => {
            let fit = fit_linear(&spec.train, data, &mut |step, steps, best, report| {
                let elapsed = training_started.elapsed().as_secs_f64();
                progress.training("training", step, steps, best, elapsed, report);
                control.flow()
            })
            .map_err(|e| train_failure(control, e))?;
            let selected_by = if data.valid_labels.is_empty() { "default" } else { "valid_accuracy, then valid_loss" };
            HeadTrained {
                head: fit.head,
                best_epoch: fit.chosen + 1,
                epochs_run: fit.path.len(),
                stopped_early: false,
                solver: Some(SolverReport {
                    solver: Solver::Convex,
                    scaling: fit.scaling,
                    l2: fit.l2,
                    selected_by,
                    path: fit.path,
                    refit: fit.refit,
                }),
                epochs: None,
                accuracies: None,
            }
        }
    })
}

/// Phase 1's head, whichever solver trained it.
struct HeadTrained {
    head: Head,
    /// The best epoch (the minibatch solver) or path step (the convex one), 1-based.
    best_epoch: usize,
    epochs_run: usize,
    stopped_early: bool,
    solver: Option<SolverReport>,
    /// Mini-batch only: (best epoch, epochs run, epochs configured).
    epochs: Option<(usize, usize, usize)>,
    /// Mini-batch only: train and validation accuracy at the kept epoch.
    accuracies: Option<(f32, f32)>,
}
