//! What a user submits to `POST /v1/jobs`: the dataset and base model, the model name
//! to register, augmentation, and the trainer's settings (every one optional).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::onnx::Unfreeze;
use crate::serving::Task;
use crate::train::{BoxLoss, LocalizeHeadKind, LocalizeLoss, LossWeights, Schedule, Solver, TrainConfig};
use crate::vision::{Augmentation, Geometry, Preprocessing};
use crate::zoo::is_valid_model_name;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    pub dataset: String,
    pub base_model: String,
    /// The model name to register; generated from the dataset and base when absent.
    pub name: Option<String>,
    /// False when the job also tunes the top of the base (phase 2).
    pub freeze_base: bool,
    /// Which top blocks phase 2 tunes; `Some` exactly when `freeze_base` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfreeze: Option<UnfreezeSpec>,
    /// Phase 2's epochs and learning rate; `Some` exactly when `freeze_base` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
    pub augment: Option<Augmentation>,
    pub task: Task,
    /// Localization only: the box head's input; `None` lets the base decide (spatial when
    /// its manifest names a spatial feature map, else pooled).
    pub box_head: Option<LocalizeHeadKind>,
    /// Localization only: the weights of the class and box losses, as named; the defaults
    /// depend on the box head ([`Self::localize_loss`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<LossWeights>,
    /// Localization only: the box term of the loss, as named ([`Self::localize_loss`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub box_loss: Option<BoxLoss>,
    /// How images are brought to the base's input size for this job's head, as named; see
    /// [`Self::geometry`] for the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geometry: Option<Geometry>,
    /// How the head is trained: the convex fit of a linear head with its penalty chosen on
    /// the validation split (a classifier's default when no mini-batch setting is named), or
    /// mini-batch epochs.
    pub solver: Solver,
    /// Also make and judge an INT8 base (`JobFields::quantize`).
    #[serde(default)]
    pub quantize: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_accuracy_drop: Option<f64>,
    #[serde(flatten)]
    pub train: TrainConfig,
}

/// `unfreeze`: the top `blocks` of the base, or everything above the cut `tensor`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnfreezeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
}

impl UnfreezeSpec {
    pub fn to_unfreeze(&self) -> Unfreeze {
        match (&self.tensor, self.blocks) {
            (Some(tensor), _) => Unfreeze::Tensor(tensor.clone()),
            (None, blocks) => Unfreeze::Blocks(blocks.unwrap_or(1)),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match (&self.blocks, &self.tensor) {
            (Some(_), Some(_)) => Err("unfreeze takes `blocks` or `tensor`, not both".into()),
            (Some(0), None) => Err("unfreeze.blocks must be at least 1".into()),
            (_, Some(t)) if t.is_empty() => Err("unfreeze.tensor must name a tensor".into()),
            _ => Ok(()),
        }
    }
}

/// Phase 2 (the tail unfrozen): its epochs, learning rate (default: phase 1's ÷ 10) and
/// batch size (default: phase 1's, at most [`FINE_TUNE_MAX_BATCH`]).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    #[serde(default = "fine_tune_epochs")]
    pub epochs: usize,
    pub learning_rate: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// Phase 2 keeps every intermediate tensor of the tail for the backward pass: its batches
/// stay small enough for that to fit.
pub const FINE_TUNE_MAX_BATCH: usize = 256;

fn fine_tune_epochs() -> usize {
    10
}

impl Default for FineTune {
    fn default() -> Self {
        Self { epochs: fine_tune_epochs(), learning_rate: None, batch_size: None }
    }
}

/// The job-level fields; everything else in the body belongs to [`TrainConfig`].
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFields {
    dataset: String,
    base_model: String,
    name: Option<String>,
    freeze_base: Option<bool>,
    unfreeze: Option<UnfreezeSpec>,
    fine_tune: Option<FineTune>,
    augment: Option<Augmentation>,
    #[serde(default)]
    task: Task,
    box_head: Option<LocalizeHeadKind>,
    loss_weights: Option<LossWeights>,
    box_loss: Option<BoxLoss>,
    geometry: Option<Geometry>,
    solver: Option<Solver>,
    /// Also quantise the served base (the base, or the tuned base after phase 2) to INT8 on
    /// up to 256 train images and serve INT8 when its test accuracy is at most
    /// `max_accuracy_drop` points under FP32's. A classifier on a frozen base trains its head
    /// again on the INT8 base's features; a tuned base or a localizer keeps its trained head.
    quantize: Option<bool>,
    /// With `quantize`: the test accuracy INT8 may lose, in percentage points (0–100, default 1).
    max_accuracy_drop: Option<f64>,
}

/// Settings of the mini-batch recipe. A job that names one of them trains by mini-batch
/// epochs with the Keras-style defaults for the rest, exactly as it did before the convex
/// solver existed.
const RECIPE_FIELDS: [&str; 9] = [
    "epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "early_stopping",
    "scaling",
    "schedule",
];

/// Settings of the head's shape that only the mini-batch solver can train. A classifier job
/// that names one of them but nothing of [`RECIPE_FIELDS`] gets the tuned recipe
/// ([`TrainConfig::tuned`]); one that names nothing of either gets the convex fit.
const MINIBATCH_SHAPE_FIELDS: [&str; 2] = ["hidden_units", "dropout"];

const JOB_FIELDS: [&str; 15] = [
    "dataset",
    "base_model",
    "name",
    "freeze_base",
    "unfreeze",
    "fine_tune",
    "augment",
    "task",
    "box_head",
    "loss_weights",
    "box_loss",
    "geometry",
    "solver",
    "quantize",
    "max_accuracy_drop",
];

/// `max_accuracy_drop`'s default: one point of test accuracy.
pub const DEFAULT_MAX_ACCURACY_DROP: f64 = 1.0;

impl JobSpec {
    /// Parses and checks a submitted body; the error is a sentence for the user.
    pub fn parse(body: &Value) -> Result<Self, String> {
        let object = body.as_object().ok_or("the job must be a JSON object")?;
        let (job, train): (Map<String, Value>, Map<String, Value>) =
            object.clone().into_iter().partition(|(key, _)| JOB_FIELDS.contains(&key.as_str()));
        let names = |fields: &[&str]| train.keys().any(|key| fields.contains(&key.as_str()));
        let (names_recipe, names_shape) = (names(&RECIPE_FIELDS), names(&MINIBATCH_SHAPE_FIELDS));
        let job: JobFields = serde_json::from_value(Value::Object(job)).map_err(|e| format!("invalid job: {e}"))?;
        let train: TrainConfig =
            serde_json::from_value(Value::Object(train)).map_err(|e| format!("invalid training settings: {e}"))?;
        let solver = job.solver.unwrap_or(if job.task == Task::Classify && !names_recipe && !names_shape {
            Solver::Convex
        } else {
            Solver::Minibatch
        });
        // A mini-batch run that names no recipe field gets the tuned recipe, localizers too:
        // on `make bench-localize` the cell head reached 0.80 mean IoU with it, 0.78 with
        // Keras' 20 epochs at a constant rate.
        let train = match solver == Solver::Minibatch && !names_recipe {
            true => train.tuned(),
            false => train,
        };
        let tuning = match job.freeze_base {
            Some(true) if job.unfreeze.is_some() || job.fine_tune.is_some() => {
                return Err(
                    "unfreeze and fine_tune tune the base: they need freeze_base: false (or no freeze_base)".into()
                );
            }
            Some(true) => false,
            Some(false) => true,
            None => job.unfreeze.is_some() || job.fine_tune.is_some(),
        };
        let spec = Self {
            dataset: job.dataset,
            base_model: job.base_model,
            name: job.name,
            freeze_base: !tuning,
            unfreeze: tuning.then(|| job.unfreeze.unwrap_or(UnfreezeSpec { blocks: Some(1), tensor: None })),
            fine_tune: tuning.then(|| job.fine_tune.unwrap_or_default()),
            augment: job.augment,
            task: job.task,
            box_head: job.box_head,
            loss_weights: job.loss_weights,
            box_loss: job.box_loss,
            geometry: job.geometry,
            solver,
            quantize: job.quantize.unwrap_or(false),
            max_accuracy_drop: job.max_accuracy_drop,
            train,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(unfreeze) = &self.unfreeze {
            unfreeze.validate()?;
            if self.fine_tune.as_ref().and_then(|f| f.batch_size).is_some_and(|b| b > FINE_TUNE_MAX_BATCH) {
                return Err(format!("fine_tune.batch_size must be at most {FINE_TUNE_MAX_BATCH}"));
            }
            self.fine_tune_config().validate().map_err(|e| format!("fine_tune: {e}"))?;
        }
        if let Some(name) = &self.name
            && !is_valid_model_name(name)
        {
            return Err(format!("name {name:?} must be 1–128 characters of letters, digits, '-', '_' or '.'"));
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        if self.task == Task::Classify
            && (self.box_head.is_some() || self.loss_weights.is_some() || self.box_loss.is_some())
        {
            return Err("box_head, loss_weights and box_loss apply to task \"localize\" only".into());
        }
        if self.max_accuracy_drop.is_some() && !self.quantize {
            return Err("max_accuracy_drop applies with quantize: true".into());
        }
        if let Some(drop) = self.max_accuracy_drop
            && !(0.0..=100.0).contains(&drop)
        {
            return Err(format!("max_accuracy_drop must be 0 to 100 points of accuracy, not {drop}"));
        }
        if let Some(weights) = &self.loss_weights {
            weights.validate().map_err(|e| format!("loss_weights: {e}"))?;
        }
        if self.solver == Solver::Convex && (self.task != Task::Classify || !self.train.is_linear()) {
            return Err(
                "solver \"convex\" fits a linear classifier: task \"classify\", no hidden_units, no dropout".into()
            );
        }
        self.train.validate()
    }

    /// Phase 2's training settings: phase 1's with fine_tune's epochs and learning rate.
    pub fn fine_tune_config(&self) -> TrainConfig {
        let fine_tune = self.fine_tune.clone().unwrap_or_default();
        // Phase 2 tunes the folded (raw-feature) head at its own steady rate.
        TrainConfig {
            scaling: None,
            schedule: Schedule::Constant,
            epochs: fine_tune.epochs,
            learning_rate: fine_tune.learning_rate.unwrap_or(self.train.learning_rate / 10.0),
            batch_size: fine_tune.batch_size.unwrap_or(self.train.batch_size.min(FINE_TUNE_MAX_BATCH)),
            ..self.train.clone()
        }
    }

    /// How this job's images reach the base's input size: as named, else the whole image,
    /// padded, for a localizer (a crop would cut objects at the edges off; padding measured
    /// 0.82 mean IoU against 0.79 stretched on `make bench-localize`), and the base's own
    /// resize for a classifier.
    pub fn geometry(&self) -> Geometry {
        self.geometry.unwrap_or(match self.task {
            Task::Localize => Geometry::Pad,
            Task::Classify => Geometry::Model,
        })
    }

    /// A localizer's loss with `kind`'s box head: the weights and box term the job names,
    /// else [`LocalizeLoss::default_for`] the head.
    pub fn localize_loss(&self, kind: LocalizeHeadKind) -> LocalizeLoss {
        let default = LocalizeLoss::default_for(kind);
        LocalizeLoss {
            weights: self.loss_weights.unwrap_or(default.weights),
            box_loss: self.box_loss.unwrap_or(default.box_loss),
        }
    }

    /// The base's preprocessing with this job's geometry.
    pub fn preprocessing(&self, base: &Preprocessing) -> Preprocessing {
        self.geometry().apply(base)
    }

    /// Feature variants per training image: the original plus the augmented ones.
    pub fn feature_variants(&self) -> usize {
        1 + self.augment.map_or(0, |a| a.variants)
    }

    /// The box head a localize job trains (`None` for a classifier): the one asked for, else
    /// the spatial head when the base has a spatial map, else the pooled one. Submission, the
    /// memory estimate and the pipeline all decide with this.
    pub fn box_head_for(&self, base_has_map: bool) -> Option<LocalizeHeadKind> {
        let default = if base_has_map { LocalizeHeadKind::Spatial } else { LocalizeHeadKind::Pooled };
        (self.task == Task::Localize).then(|| self.box_head.unwrap_or(default))
    }

    /// Whether the job reads the base's spatial map.
    pub fn needs_spatial(&self, base_has_map: bool) -> bool {
        self.box_head_for(base_has_map) == Some(LocalizeHeadKind::Spatial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{EarlyStopping, StopMetric};
    use serde_json::json;

    #[test]
    fn a_classifier_naming_no_minibatch_setting_gets_the_convex_solver() {
        let solver = |body: Value| JobSpec::parse(&body).map(|s| s.solver);
        assert_eq!(solver(json!({"dataset": "d", "base_model": "m"})), Ok(Solver::Convex));
        let kept =
            json!({"dataset": "d", "base_model": "m", "augment": {"variants": 2}, "class_weights": true, "seed": 4});
        assert_eq!(solver(kept), Ok(Solver::Convex));
        for field in RECIPE_FIELDS.iter().chain(&MINIBATCH_SHAPE_FIELDS).copied() {
            let value = match field {
                "optimizer" => json!("sgd"),
                "early_stopping" => Value::Null,
                "scaling" => json!("per_feature"),
                "schedule" => json!("warmup_cosine"),
                "hidden_units" | "epochs" | "batch_size" => json!(8),
                _ => json!(0.01),
            };
            let mut body = json!({"dataset": "d", "base_model": "m"});
            body[field] = value;
            assert_eq!(solver(body), Ok(Solver::Minibatch), "{field}");
        }
        let localize = json!({"dataset": "d", "base_model": "m", "task": "localize"});
        assert_eq!(solver(localize), Ok(Solver::Minibatch));
        assert_eq!(solver(json!({"dataset": "d", "base_model": "m", "solver": "minibatch"})), Ok(Solver::Minibatch));
        assert!(solver(json!({"dataset": "d", "base_model": "m", "solver": "convex", "hidden_units": 4})).is_err());
        // The stored spec names its solver, so the worker reads the same decision back.
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m"})).unwrap();
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["solver"], "convex");
        assert_eq!(JobSpec::parse(&stored).unwrap(), spec);
    }

    #[test]
    fn a_minibatch_classifier_naming_no_recipe_setting_gets_the_tuned_recipe() {
        let train = |body: Value| JobSpec::parse(&body).unwrap().train;
        let hidden = train(json!({"dataset": "d", "base_model": "m", "hidden_units": 64, "dropout": 0.2}));
        assert_eq!(hidden, TrainConfig { hidden_units: Some(64), dropout: 0.2, ..TrainConfig::default() }.tuned());
        assert_eq!((hidden.epochs, hidden.scaling, hidden.schedule), (60, None, Schedule::WarmupCosine));
        assert_eq!(hidden.early_stopping, Some(EarlyStopping { patience: 10, metric: StopMetric::ValLoss }));
        assert_eq!(
            train(json!({"dataset": "d", "base_model": "m", "solver": "minibatch"})),
            TrainConfig::default().tuned()
        );
        // Naming any recipe setting keeps the Keras-style defaults for the rest, unchanged.
        for field in RECIPE_FIELDS {
            let mut body = json!({"dataset": "d", "base_model": "m", "hidden_units": 64});
            body[field] = serde_json::to_value(TrainConfig::default()).unwrap()[field].clone();
            assert_eq!(train(body), TrainConfig { hidden_units: Some(64), ..TrainConfig::default() }, "{field}");
        }
        // Localization gets it too, unless a recipe field is named.
        let localize = json!({"dataset": "d", "base_model": "m", "task": "localize"});
        assert_eq!(train(localize), TrainConfig::default().tuned());
        let named = json!({"dataset": "d", "base_model": "m", "task": "localize", "epochs": 20});
        assert_eq!(train(named), TrainConfig { epochs: 20, ..TrainConfig::default() });
        // A stored tuned spec reads back as itself.
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "hidden_units": 8})).unwrap();
        assert_eq!(JobSpec::parse(&serde_json::to_value(&spec).unwrap()).unwrap(), spec);
    }

    #[test]
    fn defaults_work_and_fields_are_checked() {
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m"})).unwrap();
        assert!(spec.freeze_base);
        assert_eq!((spec.unfreeze.as_ref(), spec.fine_tune.as_ref()), (None, None));
        assert_eq!(spec.train, TrainConfig::default());
        // Tuning: one block and phase 1's learning rate ÷ 10 unless said otherwise.
        let spec =
            JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "freeze_base": false, "learning_rate": 0.01}))
                .unwrap();
        assert_eq!(spec.unfreeze.as_ref().map(UnfreezeSpec::to_unfreeze), Some(Unfreeze::Blocks(1)));
        let phase2 = spec.fine_tune_config();
        assert_eq!((phase2.epochs, phase2.learning_rate), (10, 0.01 / 10.0));
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "unfreeze": {"tensor": "t"},
            "fine_tune": {"epochs": 3, "learning_rate": 0.5}}))
        .unwrap();
        assert!(!spec.freeze_base);
        assert_eq!(spec.unfreeze.as_ref().map(UnfreezeSpec::to_unfreeze), Some(Unfreeze::Tensor("t".into())));
        assert_eq!((spec.fine_tune_config().epochs, spec.fine_tune_config().learning_rate), (3, 0.5));
        // What is stored is read back the same (workers re-parse the stored spec).
        assert_eq!(JobSpec::parse(&serde_json::to_value(&spec).unwrap()).unwrap(), spec);
        let spec =
            JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "epochs": 3, "optimizer": "sgd"})).unwrap();
        assert_eq!(spec.train.epochs, 3);
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "task": "localize"})).unwrap();
        assert_eq!((spec.task, spec.box_head), (Task::Localize, None));
        let (pooled, spatial) =
            (spec.localize_loss(LocalizeHeadKind::Pooled), spec.localize_loss(LocalizeHeadKind::Spatial));
        assert_eq!((pooled.weights.class, pooled.weights.box_, pooled.box_loss), (0.8, 0.2, BoxLoss::Mse));
        assert_eq!((spatial.weights.class, spatial.weights.box_, spatial.box_loss), (0.5, 1.0, BoxLoss::L1Giou));
        for (body, needle) in [
            (json!({"base_model": "m"}), "dataset"),
            (json!({"dataset": "d", "base_model": "m", "epoch": 3}), "epoch"),
            (json!({"dataset": "d", "base_model": "m", "freeze_base": true, "unfreeze": {"blocks": 1}}), "freeze_base"),
            (json!({"dataset": "d", "base_model": "m", "unfreeze": {"blocks": 0}}), "at least 1"),
            (json!({"dataset": "d", "base_model": "m", "unfreeze": {"blocks": 1, "tensor": "t"}}), "not both"),
            (json!({"dataset": "d", "base_model": "m", "unfreeze": {"layers": 1}}), "unknown field `layers`"),
            (json!({"dataset": "d", "base_model": "m", "fine_tune": {"learning_rate": -1.0}}), "fine_tune"),
            (json!({"dataset": "d", "base_model": "m", "fine_tune": {"batch_size": 1000}}), "at most 256"),
            (json!({"dataset": "d", "base_model": "m", "learning_rate": -1.0}), "learning_rate"),
            (json!({"dataset": "d", "base_model": "m", "name": "../x"}), "name"),
            (json!({"dataset": "d", "base_model": "m", "augment": {"crop": 2.0}}), "augment"),
            (json!([1, 2]), "object"),
            (json!({"dataset": "d", "base_model": "m", "task": "segment"}), "expected `classify` or `localize`"),
            (json!({"dataset": "d", "base_model": "m", "box_head": "spatial"}), "localize"),
            (
                json!({"dataset": "d", "base_model": "m", "task": "localize", "box_head": "grid"}),
                "expected `pooled` or `spatial`",
            ),
            (
                json!({"dataset": "d", "base_model": "m", "task": "localize", "loss_weights": {"class": -1, "box": 1}}),
                "loss_weights",
            ),
        ] {
            let err = JobSpec::parse(&body).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
