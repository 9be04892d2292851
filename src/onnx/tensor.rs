//! Reading and writing ONNX `TensorProto` values and node attributes.

use super::proto::{AttributeProto, NodeProto, TensorProto, tensor_proto};
use crate::codec;

/// `TensorProto.DataType` codes graft reads.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;

pub fn dims(tensor: &TensorProto) -> Vec<usize> {
    tensor.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// The values of a float tensor, from `raw_data` (little-endian) or `float_data`.
pub fn floats(tensor: &TensorProto) -> Result<Vec<f32>, String> {
    check_inline(tensor)?;
    if tensor.data_type() != FLOAT {
        return Err(format!("tensor `{}` is not float32 (data type {})", tensor.name(), tensor.data_type()));
    }
    let values: Vec<f32> = match &tensor.raw_data {
        Some(raw) if !raw.is_empty() => codec::from_bytes::<f32>(raw)
            .ok_or_else(|| format!("tensor `{}` has {} raw bytes, not whole floats", tensor.name(), raw.len()))?,
        _ => tensor.float_data.clone(),
    };
    let expected: usize = dims(tensor).iter().product();
    if values.len() != expected {
        return Err(format!("tensor `{}` holds {} values for shape {:?}", tensor.name(), values.len(), tensor.dims));
    }
    Ok(values)
}

/// The values of an int64 or int32 tensor, as i64.
pub fn ints(tensor: &TensorProto) -> Result<Vec<i64>, String> {
    check_inline(tensor)?;
    let raw = tensor.raw_data.as_deref().filter(|r| !r.is_empty());
    let partial = || format!("tensor `{}` has raw bytes that are not whole integers", tensor.name());
    match tensor.data_type() {
        INT64 => match raw {
            Some(raw) => codec::from_bytes::<i64>(raw).ok_or_else(partial),
            None => Ok(tensor.int64_data.clone()),
        },
        INT32 => match raw {
            Some(raw) => Ok(codec::from_bytes::<i32>(raw).ok_or_else(partial)?.into_iter().map(i64::from).collect()),
            None => Ok(tensor.int32_data.iter().map(|&v| i64::from(v)).collect()),
        },
        other => Err(format!("tensor `{}` is not an integer tensor (data type {other})", tensor.name())),
    }
}

/// A float tensor `name` of `shape` holding `values` (as `raw_data`).
pub fn float_tensor(name: &str, shape: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(FLOAT),
        raw_data: Some(codec::to_bytes(values).to_vec().into()),
        ..Default::default()
    }
}

/// A node named after its one output.
pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(output.to_owned()),
        op_type: Some(op.to_owned()),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        attribute,
        ..Default::default()
    }
}

/// An int64 tensor `name` holding `values` as a vector.
pub fn int_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        dims: vec![values.len() as i64],
        data_type: Some(INT64),
        raw_data: Some(codec::to_bytes(values).to_vec().into()),
        ..Default::default()
    }
}

fn check_inline(tensor: &TensorProto) -> Result<(), String> {
    if tensor.data_location() == tensor_proto::DataLocation::External {
        return Err(format!(
            "tensor `{}` keeps its data in an external file, which graft does not read",
            tensor.name()
        ));
    }
    Ok(())
}

/// Attribute access on a node, with ONNX's defaults supplied by the caller.
pub struct Attributes<'a>(pub &'a NodeProto);

impl Attributes<'_> {
    fn find(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name() == name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.int_opt(name).unwrap_or(default)
    }

    pub fn int_opt(&self, name: &str) -> Option<i64> {
        self.find(name).and_then(|a| a.i)
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.find(name).map(|a| a.floats.clone())
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.float_opt(name).unwrap_or(default)
    }

    pub fn float_opt(&self, name: &str) -> Option<f32> {
        self.find(name).and_then(|a| a.f)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.find(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.find(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorProto> {
        self.find(name).and_then(|a| a.t.as_ref())
    }
}
