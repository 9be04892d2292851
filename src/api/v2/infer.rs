//! Inference as the protocol defines it, whichever binding carries it (`rest` over HTTP,
//! `grpc`): one input, either the model's preprocessed FP32 tensor or a `BYTES` tensor of
//! encoded images (decoded and preprocessed as `/v1` does), through the same runner and
//! dynamic batcher as `/v1`; then the outputs asked for, as values or as the classification
//! extension's top k. The bindings decode the input's data and encode the answer.

use axum::body::Bytes;

use super::super::AppState;
use super::super::classify::{Target, ranked, run_base, run_head};
use super::super::images::EncodedImage;
use super::{BOX, FEATURES, PROBABILITIES};
use crate::error::Error;
use crate::runtime::ImageOutputs;
use crate::serving::{LoadedModel, TrainedHead};
use crate::zoo::Labels;

/// The input's description, as the request gives it.
pub struct Input<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    pub shape: &'a [i64],
}

/// The input's elements, decoded by the binding from its JSON, binary or protobuf form.
pub enum Values {
    /// The preprocessed tensor, row-major.
    Fp32(Vec<f32>),
    /// One encoded image per element.
    Images(Vec<Bytes>),
}

/// The kinds of input a model takes.
pub enum Kind {
    Fp32,
    Images,
}

impl Input<'_> {
    /// What the datatype asks for, or a refusal naming the two accepted.
    pub fn kind(&self) -> Result<Kind, Error> {
        match self.datatype {
            "FP32" => Ok(Kind::Fp32),
            "BYTES" => Ok(Kind::Images),
            other => Err(Error::BadRequest(format!(
                "input {}: datatype {other} is not accepted; send FP32 (the preprocessed tensor) or BYTES (encoded images)",
                self.name
            ))),
        }
    }

    /// The batch the input holds: its first dimension, within 1..=`max`. Checked before
    /// any data is decoded.
    pub fn batch(&self, max: usize) -> Result<usize, Error> {
        let batch = self.shape.first().copied().unwrap_or(0);
        if batch < 1 || batch as usize > max {
            return Err(Error::BadRequest(format!(
                "input {}: the first dimension is the batch, 1 to {max} (--max-images-per-request); the shape is {:?}",
                self.name, self.shape
            )));
        }
        Ok(batch as usize)
    }
}

/// Refuses a request without exactly one input (graft's models take one).
pub fn only_input<'a, T>(model: &str, inputs: &'a [T]) -> Result<&'a T, Error> {
    match inputs {
        [input] => Ok(input),
        _ => Err(Error::BadRequest(format!(
            "{model} takes one input (its FP32 tensor or a BYTES tensor of encoded images); the request has {}",
            inputs.len()
        ))),
    }
}

/// How many FP32 elements `images` preprocessed images hold for this model.
pub fn fp32_elements(target: &Target, images: usize) -> usize {
    images * target.base().runner.image_len()
}

/// Whether the request names the pooled features among its outputs (they cost an output
/// the model otherwise does not read).
pub fn wants_features(requested: Option<&[Requested]>) -> bool {
    requested.is_some_and(|outputs| outputs.iter().any(|o| o.name == FEATURES))
}

/// Runs the input through the model and returns its outputs (see `output_values`).
pub async fn run<'t>(
    state: &AppState,
    target: &'t Target,
    input: &Input<'_>,
    images: usize,
    values: Values,
    with_features: bool,
) -> Result<Vec<OutputValues<'t>>, Error> {
    let base = target.base();
    let needed = match with_features {
        true => target.outputs_needed().max(base.outputs_needed(true, false)),
        false => target.outputs_needed(),
    };
    let outputs = match values {
        Values::Fp32(values) => run_tensor(target, input, images, values, needed).await?,
        Values::Images(elements) => run_images(state, target, input, images, elements, needed).await?,
    };
    let features = match with_features {
        true => Some(pooled_features(base, &outputs)?),
        false => None,
    };
    let mut tensors = output_values(target, outputs)?;
    if let (Some(values), Ok(width)) = (features, &base.features) {
        tensors.push(OutputValues { name: FEATURES, per_image: *width, values, classes: ClassNames::None });
    }
    Ok(tensors)
}

/// Every image's pooled features, one after the other.
fn pooled_features(base: &LoadedModel, outputs: &[ImageOutputs]) -> Result<Vec<f32>, Error> {
    if let Err(why) = &base.features {
        return Err(Error::BadRequest(format!("{} has no {FEATURES} output: {why}", base.manifest.name)));
    }
    let mut values = Vec::new();
    for image in outputs {
        let pooled = image
            .get(LoadedModel::FEATURES_OUTPUT)
            .ok_or_else(|| Error::Internal(format!("{} returned no pooled features", base.manifest.name)))?;
        values.extend_from_slice(pooled);
    }
    Ok(values)
}

/// The model's own input, preprocessed by the client: its shape must be the batch and then
/// the manifest's layout and size.
async fn run_tensor(
    target: &Target,
    input: &Input<'_>,
    images: usize,
    values: Vec<f32>,
    outputs_needed: usize,
) -> Result<Vec<ImageOutputs>, Error> {
    let base = target.base();
    let expected = super::input_shape(&base.manifest);
    if input.name != base.manifest.input_name {
        return Err(Error::BadRequest(format!(
            "the FP32 input is named {:?}, not {:?}",
            base.manifest.input_name, input.name
        )));
    }
    if input.shape.len() != expected.len() || input.shape[1..] != expected[1..] {
        return Err(Error::BadRequest(format!(
            "input {}: the shape must be {expected:?} with the batch first; got {:?}",
            input.name, input.shape
        )));
    }
    let total = fp32_elements(target, images);
    if values.len() != total {
        return Err(Error::BadRequest(format!(
            "input {}: the shape {:?} holds {total} elements; the data has {}",
            input.name,
            input.shape,
            values.len()
        )));
    }
    let mut parts = base.runner.part_buffers(images);
    if let [only] = parts.as_mut_slice() {
        // One batch: the decoded values are the batch, no copy.
        *only = values;
    } else {
        let mut from = 0;
        for part in &mut parts {
            let len = part.len();
            part.copy_from_slice(&values[from..from + len]);
            from += len;
        }
    }
    Ok(base.runner.infer_parts(parts, outputs_needed).await?)
}

/// Encoded images, decoded and preprocessed as `/v1` does for the same model.
async fn run_images(
    state: &AppState,
    target: &Target,
    input: &Input<'_>,
    images: usize,
    elements: Vec<Bytes>,
    outputs_needed: usize,
) -> Result<Vec<ImageOutputs>, Error> {
    if input.shape.len() > 2 || input.shape.get(1).is_some_and(|&d| d != 1) {
        return Err(Error::BadRequest(format!(
            "input {}: a BYTES input is one encoded image per element, shape [N] or [N, 1]; got {:?}",
            input.name, input.shape
        )));
    }
    if elements.len() != images {
        return Err(Error::BadRequest(format!(
            "input {}: the shape {:?} holds {images} images; the data has {}",
            input.name,
            input.shape,
            elements.len()
        )));
    }
    let encoded: Vec<EncodedImage> = elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| EncodedImage { source: format!("{}[{i}]", input.name), bytes })
        .collect();
    let limits = state.limits.decode_limits();
    let (outputs, _) = run_base(target.base(), target.preprocessing(), outputs_needed, encoded, limits).await?;
    Ok(outputs)
}

/// One output's values, image after image, and the names of its classes for the
/// classification extension (read only when it is asked for).
pub struct OutputValues<'a> {
    pub name: &'a str,
    pub per_image: usize,
    pub values: Vec<f32>,
    pub classes: ClassNames<'a>,
}

/// Where an output's class names come from.
#[derive(Clone, Copy)]
pub enum ClassNames<'a> {
    /// A pretrained model's labels file.
    Labels(&'a Labels),
    /// A trained model's dataset classes.
    Dataset(&'a [String]),
    None,
}

impl ClassNames<'_> {
    fn get(&self, index: usize) -> Option<&str> {
        match self {
            Self::Labels(labels) => labels.get(index).map(|l| l.label.as_str()),
            Self::Dataset(classes) => classes.get(index).map(String::as_str),
            Self::None => None,
        }
    }
}

/// What the model answers: a pretrained model its output (probabilities or logits, as the
/// graph gives them); a trained one its probabilities, and a localizer its box.
fn output_values(target: &Target, outputs: Vec<ImageOutputs>) -> Result<Vec<OutputValues<'_>>, Error> {
    match target {
        Target::Pretrained(model) => {
            let values: Vec<f32> = outputs.into_iter().flat_map(|mut image| image.swap_remove(0)).collect();
            Ok(vec![OutputValues {
                name: &model.manifest.output_name,
                per_image: model.labels.len(),
                values,
                classes: ClassNames::Labels(&model.labels),
            }])
        }
        Target::Trained { model, base } => {
            let (probabilities, boxes) = run_head(model, base, outputs)?;
            let mut tensors = vec![OutputValues {
                name: PROBABILITIES,
                per_image: probabilities.ncols(),
                values: probabilities.iter().copied().collect(),
                classes: ClassNames::Dataset(&model.record.classes),
            }];
            if let (TrainedHead::Localizer(_), Some(boxes)) = (&model.head, boxes) {
                tensors.push(OutputValues {
                    name: BOX,
                    per_image: 4,
                    values: boxes.into_iter().flatten().collect(),
                    classes: ClassNames::None,
                });
            }
            Ok(tensors)
        }
    }
}

/// An output the request names, with the classification extension's k when it asks for it.
pub struct Requested<'r> {
    pub name: &'r str,
    pub classification: Option<i64>,
}

/// One output of the answer: its values, or (classification) its top-k strings.
pub struct Answer<'t> {
    pub name: &'t str,
    pub shape: [i64; 2],
    pub data: AnswerData<'t>,
}

pub enum AnswerData<'t> {
    Fp32(&'t [f32]),
    Strings(Vec<String>),
}

impl Answer<'_> {
    pub fn datatype(&self) -> &'static str {
        match self.data {
            AnswerData::Fp32(_) => "FP32",
            AnswerData::Strings(_) => "BYTES",
        }
    }
}

/// The outputs asked for, in the request's order (every output, as values, when it names none).
pub fn select<'t>(
    model: &str,
    tensors: &'t [OutputValues<'t>],
    requested: Option<Vec<Requested>>,
) -> Result<Vec<Answer<'t>>, Error> {
    let Some(requested) = requested else {
        return Ok(tensors.iter().map(|tensor| answer(tensor, None)).collect());
    };
    requested
        .into_iter()
        .map(|output| {
            let tensor = tensors.iter().find(|t| t.name == output.name).ok_or_else(|| {
                let known: Vec<&str> = tensors.iter().map(|t| t.name).collect();
                Error::BadRequest(format!("{model} has no output {:?}; its outputs are {known:?}", output.name))
            })?;
            let k = match output.classification {
                Some(k) if k < 1 => {
                    return Err(Error::BadRequest(format!(
                        "output {}: classification must be a count ≥ 1, not {k}",
                        tensor.name
                    )));
                }
                Some(k) => Some((k as usize).min(tensor.per_image)),
                None => None,
            };
            Ok(answer(tensor, k))
        })
        .collect()
}

fn answer<'t>(tensor: &'t OutputValues<'t>, classification: Option<usize>) -> Answer<'t> {
    let images = (tensor.values.len() / tensor.per_image.max(1)) as i64;
    match classification {
        Some(k) => Answer {
            name: tensor.name,
            shape: [images, k as i64],
            data: AnswerData::Strings(classification_strings(tensor, k)),
        },
        None => Answer {
            name: tensor.name,
            shape: [images, tensor.per_image as i64],
            data: AnswerData::Fp32(&tensor.values),
        },
    }
}

/// The top `k` of each image as `"score:index:label"` (or `"score:index"` without labels),
/// best first; the score as the output has it, in Rust's shortest exact form.
fn classification_strings(tensor: &OutputValues, k: usize) -> Vec<String> {
    tensor
        .values
        .chunks(tensor.per_image.max(1))
        .flat_map(|scores| {
            ranked(scores, k).into_iter().map(|i| match tensor.classes.get(i) {
                Some(label) if !label.is_empty() => format!("{}:{i}:{label}", scores[i]),
                _ => format!("{}:{i}", scores[i]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_the_top_k_per_image_best_first() {
        let classes = ["cat".to_owned(), "dog".to_owned(), String::new()];
        let tensor = OutputValues {
            name: "probs",
            per_image: 3,
            values: vec![0.2, 0.5, 0.3, 0.9, 0.05, 0.05],
            classes: ClassNames::Dataset(&classes),
        };
        assert_eq!(classification_strings(&tensor, 2), ["0.5:1:dog", "0.3:2", "0.9:0:cat", "0.05:1:dog"]);
    }

    /// Kept for the logits case: the extension ranks the raw output, as Triton does.
    #[test]
    fn classification_ranks_logits_as_they_are() {
        let tensor = OutputValues { name: "logits", per_image: 2, values: vec![-1.0, 3.5], classes: ClassNames::None };
        assert_eq!(classification_strings(&tensor, 1), ["3.5:1"]);
    }

    #[test]
    fn outputs_are_selected_in_the_requested_order_and_k_is_bounded() {
        let tensors = [
            OutputValues { name: "a", per_image: 2, values: vec![0.1, 0.9, 0.8, 0.2], classes: ClassNames::None },
            OutputValues { name: "b", per_image: 1, values: vec![1.0, 2.0], classes: ClassNames::None },
        ];
        let all = select("m", &tensors, None).unwrap();
        assert_eq!(all.iter().map(|a| (a.name, a.shape)).collect::<Vec<_>>(), [("a", [2, 2]), ("b", [2, 1])]);
        let asked =
            vec![Requested { name: "b", classification: None }, Requested { name: "a", classification: Some(5) }];
        let some = select("m", &tensors, Some(asked)).unwrap();
        assert_eq!(some[0].name, "b");
        assert_eq!((some[1].shape, some[1].datatype()), ([2, 2], "BYTES"), "k is at most the classes");
        let AnswerData::Strings(strings) = &some[1].data else { panic!("classification strings") };
        assert_eq!(strings, &["0.9:1", "0.1:0", "0.8:0", "0.2:1"]);
        let unknown = select("m", &tensors, Some(vec![Requested { name: "c", classification: None }]));
        assert!(matches!(unknown, Err(Error::BadRequest(m)) if m.contains("[\"a\", \"b\"]")));
        let zero = select("m", &tensors, Some(vec![Requested { name: "a", classification: Some(0) }]));
        assert!(matches!(zero, Err(Error::BadRequest(m)) if m.contains("≥ 1")));
    }
}
