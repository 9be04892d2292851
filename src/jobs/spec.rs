//! What a user submits to `POST /v1/jobs`: the dataset and base model, the model name
//! to register, augmentation, and the trainer's settings (every one optional).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::train::{LocalizeHeadKind, LossWeights, TrainConfig};
use crate::vision::Augmentation;
use crate::zoo::is_valid_model_name;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    pub dataset: String,
    pub base_model: String,
    /// The model name to register; generated from the dataset and base when absent.
    pub name: Option<String>,
    /// Only the frozen base is trained on for now.
    pub freeze_base: bool,
    pub augment: Option<Augmentation>,
    pub task: Task,
    /// Localization only: the box head's input; `None` lets the base decide (spatial when
    /// its manifest names a spatial feature map, else pooled).
    pub box_head: Option<LocalizeHeadKind>,
    /// Localization only: the weights of the class and box losses.
    pub loss_weights: LossWeights,
    #[serde(flatten)]
    pub train: TrainConfig,
}

/// What the trained model does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class head (class-folder or box datasets).
    #[default]
    Classify,
    /// Class and box heads trained together (box datasets).
    Localize,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classify => "classify",
            Self::Localize => "localize",
        }
    }
}

/// The job-level fields; everything else in the body belongs to [`TrainConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFields {
    dataset: String,
    base_model: String,
    name: Option<String>,
    #[serde(default = "yes")]
    freeze_base: bool,
    augment: Option<Augmentation>,
    #[serde(default)]
    task: Task,
    box_head: Option<LocalizeHeadKind>,
    loss_weights: Option<LossWeights>,
}

fn yes() -> bool {
    true
}

const JOB_FIELDS: [&str; 8] =
    ["dataset", "base_model", "name", "freeze_base", "augment", "task", "box_head", "loss_weights"];

impl JobSpec {
    /// Parses and checks a submitted body; the error is a sentence for the user.
    pub fn parse(body: &Value) -> Result<Self, String> {
        let object = body.as_object().ok_or("the job must be a JSON object")?;
        let (job, train): (Map<String, Value>, Map<String, Value>) =
            object.clone().into_iter().partition(|(key, _)| JOB_FIELDS.contains(&key.as_str()));
        let job: JobFields = serde_json::from_value(Value::Object(job)).map_err(|e| format!("invalid job: {e}"))?;
        let train: TrainConfig =
            serde_json::from_value(Value::Object(train)).map_err(|e| format!("invalid training settings: {e}"))?;
        let spec = Self {
            dataset: job.dataset,
            base_model: job.base_model,
            name: job.name,
            freeze_base: job.freeze_base,
            augment: job.augment,
            task: job.task,
            box_head: job.box_head,
            loss_weights: job.loss_weights.unwrap_or_default(),
            train,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.freeze_base {
            return Err(
                "freeze_base: false (tuning the top of the base) is not available yet; submit with freeze_base: true"
                    .into(),
            );
        }
        if let Some(name) = &self.name
            && !is_valid_model_name(name)
        {
            return Err(format!("name {name:?} must be 1–128 characters of letters, digits, '-', '_' or '.'"));
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        if self.task == Task::Classify && (self.box_head.is_some() || self.loss_weights != LossWeights::default()) {
            return Err("box_head and loss_weights apply to task \"localize\" only".into());
        }
        self.loss_weights.validate().map_err(|e| format!("loss_weights: {e}"))?;
        self.train.validate()
    }

    /// Feature variants per training image: the original plus the augmented ones.
    pub fn feature_variants(&self) -> usize {
        1 + self.augment.map_or(0, |a| a.variants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_work_and_fields_are_checked() {
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m"})).unwrap();
        assert!(spec.freeze_base);
        assert_eq!(spec.train, TrainConfig::default());
        let spec =
            JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "epochs": 3, "optimizer": "sgd"})).unwrap();
        assert_eq!(spec.train.epochs, 3);
        let spec = JobSpec::parse(&json!({"dataset": "d", "base_model": "m", "task": "localize"})).unwrap();
        assert_eq!((spec.task, spec.box_head), (Task::Localize, None));
        assert_eq!((spec.loss_weights.class, spec.loss_weights.box_), (0.8, 0.2));
        for (body, needle) in [
            (json!({"base_model": "m"}), "dataset"),
            (json!({"dataset": "d", "base_model": "m", "epoch": 3}), "epoch"),
            (json!({"dataset": "d", "base_model": "m", "freeze_base": false}), "freeze_base"),
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
