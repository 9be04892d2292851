//! One ONNX file for a trained model: the base graph (with its tuned tail weights written
//! back into the initializers, when the job tuned the base) and the head appended as ONNX
//! nodes, answering `probabilities` over the dataset's classes.

use prost::Message;

use super::graph::float_output;
use super::tensor::float_tensor;
use crate::runtime::graph::onnx::{AttributeProto, ModelProto, NodeProto, TensorProto, attribute_proto};
use crate::train::Head;

/// The exported model's one output.
pub const PROBABILITIES: &str = "probabilities";
/// Names graft adds start with this, so they cannot meet the base's own.
const PREFIX: &str = "graft_head";

/// Replaces the initializers named in `tuned` (same names, same shapes) in a base model.
pub fn with_initializers(base: &[u8], tuned: &[TensorProto]) -> Result<Vec<u8>, String> {
    let mut model = decode(base)?;
    replace_initializers(&mut model, tuned)?;
    Ok(model.encode_to_vec())
}

/// The base (tuned or not) with `head` on its `features` tensor: Flatten → Gemm (→ Relu →
/// Gemm) → Softmax, the graph's only output being [`PROBABILITIES`].
pub fn export_classifier(base: &[u8], features: &str, tuned: &[TensorProto], head: &Head) -> Result<Vec<u8>, String> {
    let mut model = decode(base)?;
    replace_initializers(&mut model, tuned)?;
    let graph = model.graph.as_mut().ok_or("the base model has no graph")?;
    let taken = |name: &str| {
        graph.node.iter().any(|n| n.output.iter().any(|o| o.starts_with(name)))
            || graph.initializer.iter().any(|t| t.name().starts_with(name))
    };
    if taken(PREFIX) || taken(PROBABILITIES) {
        return Err(format!("the base already has tensors named {PREFIX}… or {PROBABILITIES}"));
    }
    let flat = format!("{PREFIX}_features");
    graph.node.push(node("Flatten", &[features], &flat, vec![int_attribute("axis", 1)]));
    let mut x = flat;
    let layers: Vec<_> = head.layers().collect();
    for (i, dense) in layers.iter().enumerate() {
        let (w, b) = (format!("{PREFIX}_{i}_weights"), format!("{PREFIX}_{i}_bias"));
        let [weights, bias] = dense.values();
        graph.initializer.push(float_tensor(&w, &[dense.inputs(), dense.outputs()], weights));
        graph.initializer.push(float_tensor(&b, &[dense.outputs()], bias));
        let y = format!("{PREFIX}_{i}_logits");
        graph.node.push(node("Gemm", &[&x, &w, &b], &y, vec![]));
        x = y;
        if i + 1 < layers.len() {
            let activated = format!("{PREFIX}_{i}_relu");
            graph.node.push(node("Relu", &[&x], &activated, vec![]));
            x = activated;
        }
    }
    graph.node.push(node("Softmax", &[&x], PROBABILITIES, vec![int_attribute("axis", 1)]));
    graph.output = vec![float_output(PROBABILITIES)];
    Ok(model.encode_to_vec())
}

fn decode(bytes: &[u8]) -> Result<ModelProto, String> {
    ModelProto::decode(bytes).map_err(|e| format!("the base model is not readable ONNX: {e}"))
}

fn replace_initializers(model: &mut ModelProto, tuned: &[TensorProto]) -> Result<(), String> {
    let graph = model.graph.as_mut().ok_or("the base model has no graph")?;
    for tensor in tuned {
        let slot = graph
            .initializer
            .iter_mut()
            .find(|t| t.name() == tensor.name())
            .ok_or_else(|| format!("the base has no initializer `{}`", tensor.name()))?;
        if slot.dims != tensor.dims {
            return Err(format!(
                "initializer `{}` has shape {:?}, the tuned one {:?}",
                tensor.name(),
                slot.dims,
                tensor.dims
            ));
        }
        *slot = tensor.clone();
    }
    Ok(())
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(output.to_owned()),
        op_type: Some(op.to_owned()),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        attribute,
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}
