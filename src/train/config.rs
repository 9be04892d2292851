//! Training settings: what a user may choose for a head, with defaults and range checks.
//!
//! Every field has a default (`#[serde(default)]`), so `{}` is a valid configuration and a
//! request names only what it changes; unknown fields are refused so a typo is not silently
//! ignored.

use serde::{Deserialize, Serialize};

use super::optim::{Optimizer, Rule};
use super::standardize::Scaling;

/// Which optimiser trains the head.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    #[default]
    Adam,
    Nadam,
}

/// The validation metric early stopping watches.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Lower is better.
    ValLoss,
    /// Higher is better.
    #[default]
    ValAccuracy,
}

impl StopMetric {
    /// True when `candidate` strictly beats `best` (ties do not count, as in Keras).
    pub fn improves(self, candidate: f32, best: f32) -> bool {
        match self {
            StopMetric::ValLoss => candidate < best,
            StopMetric::ValAccuracy => candidate > best,
        }
    }
}

/// Stop when the metric has not improved for `patience` epochs, keeping the best epoch's head.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    pub patience: usize,
    pub metric: StopMetric,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self { patience: 5, metric: StopMetric::ValAccuracy }
    }
}

/// How the learning rate moves over a mini-batch run.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `learning_rate` at every step (Keras' default).
    #[default]
    Constant,
    /// A linear rise over the first 5 % of the run's steps, then a half cosine from
    /// `learning_rate` down to zero at the last configured step (Loshchilov & Hutter 2017,
    /// without restarts): the large early steps cover ground, the small late ones converge.
    WarmupCosine,
}

/// The share of a warm-up-and-cosine run spent warming up.
const WARMUP_SHARE: f64 = 0.05;

impl Schedule {
    /// The learning rate of step `step` (0-based) of `total` steps.
    pub fn rate(self, base: f32, step: u64, total: u64) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::WarmupCosine => {
                let total = total.max(1) as f64;
                let warmup = (total * WARMUP_SHARE).ceil().max(1.0);
                let step = step as f64;
                let factor = if step < warmup {
                    (step + 1.0) / warmup
                } else {
                    let progress = ((step - warmup) / (total - warmup).max(1.0)).min(1.0);
                    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                };
                (f64::from(base) * factor) as f32
            }
        }
    }
}

/// Epochs of the tuned recipe ([`TrainConfig::tuned`]).
pub const TUNED_EPOCHS: usize = 60;
/// Early-stopping patience of the tuned recipe.
pub const TUNED_PATIENCE: usize = 10;

/// How to train a head.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set (1..=10000).
    pub epochs: usize,
    /// Rows per gradient step (1..=65536).
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Step size (> 0).
    pub learning_rate: f32,
    /// SGD momentum in [0, 1); ignored by Adam and Nadam.
    pub momentum: f32,
    /// L2 penalty on weights (not biases), added to their gradient as wd·w.
    pub weight_decay: f32,
    /// Units in an optional ReLU hidden layer (1..=65536).
    pub hidden_units: Option<usize>,
    /// Dropout rate in [0, 1) on the output layer's input, during training only.
    pub dropout: f32,
    /// `null` trains for all epochs and keeps the last one.
    pub early_stopping: Option<EarlyStopping>,
    /// Weight each class by n/(C·n_c) in the loss ("balanced").
    pub class_weights: bool,
    /// Seeds initialisation, shuffling and dropout.
    pub seed: u64,
    /// Train on features scaled from the training split (every variant): `per_feature`
    /// standardisation or one `shared` scale; `null` trains on the raw features. The scaling
    /// is folded into the saved head's first layer, so it serves as before.
    pub scaling: Option<Scaling>,
    pub schedule: Schedule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 32,
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            hidden_units: None,
            dropout: 0.0,
            early_stopping: Some(EarlyStopping::default()),
            class_weights: false,
            seed: 0,
            scaling: None,
            schedule: Schedule::Constant,
        }
    }
}

impl TrainConfig {
    /// Checks every range; the error is a sentence for the person who sent the configuration.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.epochs) {
            return Err(format!("epochs must be between 1 and 10000, not {}", self.epochs));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(format!("batch_size must be between 1 and 65536, not {}", self.batch_size));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!("learning_rate must be a positive number, not {}", self.learning_rate));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum must be at least 0 and below 1, not {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!("weight_decay must be 0 or more, not {}", self.weight_decay));
        }
        if let Some(units) = self.hidden_units
            && !(1..=65_536).contains(&units)
        {
            return Err(format!("hidden_units must be between 1 and 65536, not {units}"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be at least 0 and below 1, not {}", self.dropout));
        }
        if let Some(stopping) = &self.early_stopping
            && stopping.patience == 0
        {
            return Err("early_stopping.patience must be at least 1".into());
        }
        Ok(())
    }

    /// The mini-batch recipe of a job that names none of the recipe's settings: these
    /// settings with a warm-up and cosine schedule over enough epochs to converge on a few
    /// thousand images, and early stopping on validation loss with the patience to sit out a
    /// slow stretch. Validation loss rather than accuracy: it keeps moving while accuracy sits
    /// on a plateau, and on a small split accuracies tie. The features stay unscaled: on
    /// pooled features, a hidden layer trained on per-feature standardised ones lost 4 points
    /// of test accuracy (scikit-learn's digits) and 5 (`make bench-train`'s tiles), and one
    /// shared scale 1–4 points.
    pub fn tuned(self) -> Self {
        Self {
            epochs: TUNED_EPOCHS,
            schedule: Schedule::WarmupCosine,
            early_stopping: Some(EarlyStopping { patience: TUNED_PATIENCE, metric: StopMetric::ValLoss }),
            ..self
        }
    }

    /// Whether these settings describe a linear head (no hidden layer, no dropout): the only
    /// head the convex solver and the localizer fit.
    pub fn is_linear(&self) -> bool {
        self.hidden_units.is_none() && self.dropout == 0.0
    }

    /// The optimiser these settings describe.
    pub fn optimizer(&self) -> Optimizer {
        let rule = match self.optimizer {
            OptimizerKind::Sgd => Rule::Sgd { momentum: self.momentum },
            OptimizerKind::Adam => Rule::Adam,
            OptimizerKind::Nadam => Rule::Nadam,
        };
        Optimizer { rule, learning_rate: self.learning_rate, weight_decay: self.weight_decay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_as_documented() {
        let config = TrainConfig::default();
        assert_eq!((config.epochs, config.batch_size, config.optimizer), (20, 32, OptimizerKind::Adam));
        assert_eq!((config.learning_rate, config.momentum, config.weight_decay), (1e-3, 0.9, 0.0));
        assert_eq!((config.hidden_units, config.dropout, config.class_weights, config.seed), (None, 0.0, false, 0));
        assert_eq!(config.early_stopping, Some(EarlyStopping { patience: 5, metric: StopMetric::ValAccuracy }));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn json_names_only_what_changes() {
        let config: TrainConfig = serde_json::from_str(
            r#"{"optimizer": "nadam", "hidden_units": 128, "early_stopping": {"metric": "val_loss"}}"#,
        )
        .unwrap();
        assert_eq!(config.optimizer, OptimizerKind::Nadam);
        assert_eq!(config.hidden_units, Some(128));
        assert_eq!(config.early_stopping, Some(EarlyStopping { patience: 5, metric: StopMetric::ValLoss }));
        assert_eq!(config.epochs, 20);
        assert_eq!(serde_json::from_str::<TrainConfig>("{}").unwrap(), TrainConfig::default());
        let off: TrainConfig = serde_json::from_str(r#"{"early_stopping": null}"#).unwrap();
        assert_eq!(off.early_stopping, None);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 3}"#).is_err());
        assert!(serde_json::from_str::<TrainConfig>(r#"{"optimizer": "rmsprop"}"#).is_err());
        let round: TrainConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(round, config);
    }

    #[test]
    fn validate_rejects_each_out_of_range_value() {
        type Spoil = fn(&mut TrainConfig);
        let bad: Vec<(&str, Spoil)> = vec![
            ("epochs", |c| c.epochs = 0),
            ("epochs", |c| c.epochs = 10_001),
            ("batch_size", |c| c.batch_size = 0),
            ("batch_size", |c| c.batch_size = 65_537),
            ("learning_rate", |c| c.learning_rate = 0.0),
            ("learning_rate", |c| c.learning_rate = -1.0),
            ("learning_rate", |c| c.learning_rate = f32::NAN),
            ("learning_rate", |c| c.learning_rate = f32::INFINITY),
            ("momentum", |c| c.momentum = 1.0),
            ("momentum", |c| c.momentum = -0.1),
            ("weight_decay", |c| c.weight_decay = -1e-4),
            ("weight_decay", |c| c.weight_decay = f32::NAN),
            ("hidden_units", |c| c.hidden_units = Some(0)),
            ("hidden_units", |c| c.hidden_units = Some(65_537)),
            ("dropout", |c| c.dropout = 1.0),
            ("dropout", |c| c.dropout = -0.5),
            ("dropout", |c| c.dropout = f32::NAN),
            ("patience", |c| c.early_stopping = Some(EarlyStopping { patience: 0, metric: StopMetric::ValLoss })),
        ];
        for (field, spoil) in bad {
            let mut config = TrainConfig::default();
            spoil(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.contains(field), "{error}");
        }
        let edges = TrainConfig {
            epochs: 10_000,
            batch_size: 65_536,
            momentum: 0.0,
            dropout: 0.0,
            hidden_units: Some(65_536),
            ..TrainConfig::default()
        };
        assert!(edges.validate().is_ok());
    }

    #[test]
    fn the_warmup_cosine_schedule_rises_then_falls_to_zero() {
        let rate = |step| Schedule::WarmupCosine.rate(0.1, step, 200);
        // 5 % of 200 steps warm up: 0.1 · (s + 1)/10.
        assert!((rate(0) - 0.01).abs() < 1e-7 && (rate(4) - 0.05).abs() < 1e-7);
        assert!((rate(10) - 0.1).abs() < 1e-7, "{}", rate(10));
        // Half way through the cosine part (step 10 + 95) the factor is 0.5.
        assert!((rate(105) - 0.05).abs() < 1e-6, "{}", rate(105));
        assert!(rate(199) < 1e-4 && rate(250) == 0.0);
        assert!((10..199).all(|s| rate(s + 1) <= rate(s)));
        assert_eq!(Schedule::Constant.rate(0.1, 150, 200), 0.1);
    }

    #[test]
    fn optimizer_follows_the_kind() {
        let sgd = TrainConfig { optimizer: OptimizerKind::Sgd, momentum: 0.5, ..TrainConfig::default() };
        assert_eq!(sgd.optimizer().rule, Rule::Sgd { momentum: 0.5 });
        assert_eq!(TrainConfig::default().optimizer().rule, Rule::Adam);
    }
}
