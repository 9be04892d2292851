//! Exposing intermediate tensors — the pooled features a head trains on, the spatial map a
//! box head reads — as graph outputs, so that users need no second model file.

use prost::Message;

use super::proto as onnx;

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("the file is not a readable ONNX model: {0}")]
    Decode(String),
    #[error("the model has no graph")]
    NoGraph,
    #[error("no tensor named `{name}` in the graph{hint}")]
    NoSuchTensor { name: String, hint: String },
}

/// Returns the model with each of `names` added as a float graph output (names that
/// already are outputs are left alone).
pub fn expose_outputs(model_bytes: &[u8], names: &[&str]) -> Result<Vec<u8>, GraphError> {
    let mut model = onnx::ModelProto::decode(model_bytes).map_err(|e| GraphError::Decode(e.to_string()))?;
    let graph = model.graph.as_mut().ok_or(GraphError::NoGraph)?;
    for &name in names {
        if graph.output.iter().any(|o| o.name() == name) {
            continue;
        }
        let produced = graph.node.iter().any(|n| n.output.iter().any(|o| o == name))
            || graph.input.iter().any(|i| i.name() == name);
        if !produced {
            return Err(GraphError::NoSuchTensor { name: name.to_owned(), hint: suggestion(graph, name) });
        }
        graph.output.push(onnx::ValueInfoProto {
            name: Some(name.to_owned()),
            r#type: Some(onnx::TypeProto {
                value: Some(onnx::type_proto::Value::TensorType(onnx::type_proto::Tensor {
                    elem_type: Some(FLOAT),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok(model.encode_to_vec())
}

/// Names of pooling-like node outputs, to help a user fix a manifest's `features`.
fn suggestion(graph: &onnx::GraphProto, wanted: &str) -> String {
    let pools: Vec<&str> = graph
        .node
        .iter()
        .filter(|n| matches!(n.op_type(), "GlobalAveragePool" | "ReduceMean" | "Flatten"))
        .flat_map(|n| n.output.iter().map(String::as_str))
        .take(5)
        .collect();
    if pools.is_empty() {
        String::new()
    } else {
        format!(" (pooling outputs near `{wanted}`'s role: {})", pools.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_graph() -> Vec<u8> {
        let node = onnx::NodeProto {
            input: vec!["x".into()],
            output: vec!["pooled".into()],
            op_type: Some("GlobalAveragePool".into()),
            ..Default::default()
        };
        let model = onnx::ModelProto {
            graph: Some(onnx::GraphProto {
                node: vec![node],
                input: vec![onnx::ValueInfoProto { name: Some("x".into()), ..Default::default() }],
                output: vec![onnx::ValueInfoProto { name: Some("y".into()), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }

    #[test]
    fn exposes_an_intermediate_tensor_once() {
        let bytes = expose_outputs(&tiny_graph(), &["pooled", "y"]).unwrap();
        let model = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
        let outputs: Vec<&str> = model.graph.as_ref().unwrap().output.iter().map(|o| o.name()).collect();
        assert_eq!(outputs, ["y", "pooled"]);
    }

    #[test]
    fn unknown_tensors_and_garbage_are_errors() {
        let err = expose_outputs(&tiny_graph(), &["nope"]).unwrap_err();
        assert!(err.to_string().contains("`nope`") && err.to_string().contains("pooled"), "{err}");
        assert!(matches!(expose_outputs(b"\xff\xff\xff", &["x"]), Err(GraphError::Decode(_))));
    }
}
