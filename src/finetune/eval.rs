//! The tail evaluator: a base's top nodes run with candle, their weights as `Var`s so
//! that candle's autodiff gives their gradients.
//!
//! Each ONNX node maps to candle operations (or to [`super::ops`] where candle's own op has
//! no usable backward). Attributes and constant inputs (shapes, axes, pads) are read once,
//! when the tail is built; an operator outside the supported list is refused there, by name.

use std::collections::HashMap;

use candle_core::{DType, Device, Result as CandleResult, Tensor, Var};

use super::ops::{depthwise_conv2d, max_pool2d};
use crate::onnx::cut::Tail;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{Attributes, dims, floats, ints};

/// The operators the evaluator runs (forward and backward).
pub const SUPPORTED_OPERATORS: [&str; 26] = [
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
];

/// One trainable initializer: its name in the graph, its shape and its variable.
pub struct TailParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub var: Var,
    /// Weights decay; biases and batch-norm scale/shift do not.
    pub decay: bool,
}

/// A tail ready to run: parsed steps, trainable parameters and constants.
pub struct TailModel {
    input: String,
    output: String,
    steps: Vec<Step>,
    params: Vec<TailParam>,
    constants: HashMap<String, Tensor>,
}

struct Step {
    op: Op,
    inputs: Vec<String>,
    output: String,
}

/// A Conv's window takes its kernel size from its weights at run time.
const KERNEL_FROM_WEIGHTS: (usize, usize) = (0, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AutoPad {
    NotSet,
    Valid,
    SameUpper,
    SameLower,
}

#[derive(Debug, Clone)]
struct Window {
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    pads: [usize; 4],
    auto_pad: AutoPad,
}

#[derive(Debug, Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
enum Op {
    Conv {
        window: Window,
        group: usize,
    },
    BatchNorm {
        epsilon: f32,
    },
    Relu,
    Sigmoid,
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Identity,
    Binary(Binary),
    MaxPool(Window),
    AveragePool {
        window: Window,
        count_pad: bool,
    },
    GlobalAveragePool,
    ReduceMean {
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Flatten {
        axis: i64,
    },
    Reshape {
        shape: Vec<i64>,
        allow_zero: bool,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Concat {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<usize>>,
    },
    Pad {
        pads: Vec<i64>,
        value: f32,
    },
    /// `flatten`: before opset 13, over everything from `axis` on (the input seen as 2-D).
    Softmax {
        axis: i64,
        flatten: bool,
    },
}

impl TailModel {
    /// Builds the evaluator for `tail`, or says which node it cannot run and why.
    pub fn new(tail: &Tail) -> Result<Self, String> {
        let int_constants = int_constants(tail)?;
        let trainable = trainable_roles(tail);
        let mut params = Vec::new();
        let mut constants = HashMap::new();
        for (name, tensor) in &tail.initializers {
            if tensor.data_type() != 1 {
                continue;
            }
            let values = floats(tensor)?;
            let shape = dims(tensor);
            let as_tensor = Tensor::from_vec(values, shape.clone(), &Device::Cpu).map_err(|e| e.to_string())?;
            match trainable.get(name.as_str()) {
                Some(&decay) => params.push(TailParam {
                    name: name.clone(),
                    shape,
                    var: Var::from_tensor(&as_tensor).map_err(|e| e.to_string())?,
                    decay,
                }),
                None => {
                    constants.insert(name.clone(), as_tensor);
                }
            }
        }
        params.sort_by(|a, b| a.name.cmp(&b.name));
        let mut steps = Vec::new();
        for node in &tail.nodes {
            let describe = |e: String| format!("node `{}` ({}): {e}", node.name(), node.op_type());
            if node.op_type() == "Constant" {
                if let ConstantValue::Floats(values, shape) = constant_value(node).map_err(describe)? {
                    let tensor = Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| describe(e.to_string()))?;
                    constants.insert(node.output[0].clone(), tensor);
                }
                continue;
            }
            let op = parse(node, tail.opset, &int_constants).map_err(describe)?;
            let output = node.output.first().cloned().ok_or_else(|| describe("it has no output".into()))?;
            steps.push(Step { op, inputs: node.input.clone(), output });
        }
        Ok(Self { input: tail.input.clone(), output: tail.output.clone(), steps, params, constants })
    }

    /// The trainable parameters, sorted by name.
    pub fn params(&self) -> &[TailParam] {
        &self.params
    }

    /// The tail's output for a batch of cut activations, flattened to (batch, features).
    pub fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        Ok(self.forward_tapped(x, None)?.0)
    }

    /// [`TailModel::forward`], and the tensor `tap` (computed on the way) as it is.
    pub fn forward_tapped(&self, x: &Tensor, tap: Option<&str>) -> CandleResult<(Tensor, Option<Tensor>)> {
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(self.input.as_str(), x.clone());
        for step in &self.steps {
            let input = |i: usize| -> CandleResult<Option<Tensor>> {
                let Some(name) = step.inputs.get(i).filter(|n| !n.is_empty()) else { return Ok(None) };
                if let Some(v) = values.get(name.as_str()) {
                    return Ok(Some(v.clone()));
                }
                if let Some(p) = self.params.iter().find(|p| &p.name == name) {
                    return Ok(Some(p.var.as_tensor().clone()));
                }
                // Only an empty name means "absent"; anything else must resolve.
                self.constants.get(name).cloned().map(Some).ok_or_else(|| {
                    candle_core::Error::Msg(format!("`{name}` (input {i} of `{}`) is not available", step.output))
                })
            };
            let required = |i: usize| -> CandleResult<Tensor> {
                input(i)?
                    .ok_or_else(|| candle_core::Error::Msg(format!("input {i} of `{}` is not available", step.output)))
            };
            let y = run(&step.op, &required, &input, step.inputs.len())
                .map_err(|e| candle_core::Error::Msg(format!("computing `{}`: {e}", step.output)))?;
            values.insert(step.output.as_str(), y);
        }
        let tapped = match tap {
            Some(name) => Some(values.get(name).cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("`{name}` is not computed by the tail above `{}`", self.input))
            })?),
            None => None,
        };
        let y = values
            .remove(self.output.as_str())
            .ok_or_else(|| candle_core::Error::Msg(format!("the tail did not compute `{}`", self.output)))?;
        // The batch is the input's: a Squeeze without axes may have dropped a batch axis of 1.
        let batch = x.dim(0)?;
        Ok((y.reshape((batch, y.elem_count() / batch.max(1)))?, tapped))
    }

    /// The parameters' current values as initializers, for writing back into the graph.
    pub fn initializers(&self) -> CandleResult<Vec<TensorProto>> {
        self.params
            .iter()
            .map(|p| {
                let values = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                Ok(crate::onnx::tensor::float_tensor(&p.name, &p.shape, &values))
            })
            .collect()
    }
}

/// What a Constant node holds.
enum ConstantValue {
    Floats(Vec<f32>, Vec<usize>),
    Ints(Vec<i64>),
}

/// A Constant node's value, from whichever of its value attributes it sets.
fn constant_value(node: &NodeProto) -> Result<ConstantValue, String> {
    let attrs = Attributes(node);
    if let Some(value) = attrs.tensor("value") {
        return match value.data_type() {
            1 => Ok(ConstantValue::Floats(floats(value)?, dims(value))),
            6 | 7 => Ok(ConstantValue::Ints(ints(value)?)),
            other => Err(format!("a Constant of data type {other} is not supported")),
        };
    }
    if let Some(value) = attrs.float_opt("value_float") {
        return Ok(ConstantValue::Floats(vec![value], vec![]));
    }
    if let Some(values) = attrs.floats("value_floats") {
        let len = values.len();
        return Ok(ConstantValue::Floats(values, vec![len]));
    }
    if let Some(value) = attrs.int_opt("value_int") {
        return Ok(ConstantValue::Ints(vec![value]));
    }
    if let Some(values) = attrs.ints("value_ints") {
        return Ok(ConstantValue::Ints(values));
    }
    Err("a Constant without a float or integer value is not supported".into())
}

/// Integer constants (shapes, axes, pads) from initializers and Constant nodes.
fn int_constants(tail: &Tail) -> Result<HashMap<String, Vec<i64>>, String> {
    let mut out = HashMap::new();
    for (name, tensor) in &tail.initializers {
        if matches!(tensor.data_type(), 6 | 7) {
            out.insert(name.clone(), ints(tensor)?);
        }
    }
    for node in tail.nodes.iter().filter(|n| n.op_type() == "Constant") {
        if let ConstantValue::Ints(values) = constant_value(node)? {
            out.insert(node.output[0].clone(), values);
        }
    }
    Ok(out)
}

/// Initializers the tail trains, with whether weight decay applies: convolution and dense
/// weights (decay) and biases, batch-norm scale and shift, and the bias Add after a MatMul
/// or Conv. Everything else (running statistics, shapes, other constants, and initializers
/// the prefix reads too) stays frozen.
fn trainable_roles(tail: &Tail) -> HashMap<&str, bool> {
    let producer: HashMap<&str, &str> =
        tail.nodes.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.op_type()))).collect();
    let mut roles = HashMap::new();
    let is_init =
        |name: &str| tail.initializers.get(name).is_some_and(|t| t.data_type() == 1) && !tail.shared.contains(name);
    for node in &tail.nodes {
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|n| is_init(n));
        match node.op_type() {
            "Conv" | "Gemm" | "MatMul" => {
                if let Some(w) = input(1) {
                    roles.insert(w, true);
                }
                if let Some(b) = input(2) {
                    roles.insert(b, false);
                }
            }
            "BatchNormalization" => {
                for i in [1, 2] {
                    if let Some(p) = input(i) {
                        roles.insert(p, false);
                    }
                }
            }
            "Add" => {
                let from_linear =
                    node.input.iter().any(|i| matches!(producer.get(i.as_str()), Some(&("MatMul" | "Conv"))));
                if from_linear {
                    for i in [0, 1] {
                        if let Some(b) = input(i) {
                            roles.insert(b, false);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    roles
}

/// A pooling or convolution window from the node's attributes; `default_kernel` stands in
/// when the node has no `kernel_shape` (a Conv's comes from its weights at run time).
fn window(node: &NodeProto, default_kernel: Option<(usize, usize)>) -> Result<Window, String> {
    let attrs = Attributes(node);
    let pair = |name: &str, default: usize| -> Result<(usize, usize), String> {
        match attrs.ints(name) {
            None => Ok((default, default)),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => Ok((v[0] as usize, v[1] as usize)),
            Some(v) => Err(format!("{name} {v:?} is not two positive values (only 2-D windows are supported)")),
        }
    };
    let kernel = match (attrs.ints("kernel_shape"), default_kernel) {
        (Some(k), _) if k.len() == 2 && k.iter().all(|&x| x >= 1) => (k[0] as usize, k[1] as usize),
        (Some(k), _) => return Err(format!("kernel_shape {k:?} is not 2-D")),
        (None, Some(k)) => k,
        (None, None) => return Err("kernel_shape is missing".into()),
    };
    let pads = match attrs.ints("pads") {
        None => [0; 4],
        Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        Some(p) => return Err(format!("pads {p:?} are not four non-negative values")),
    };
    let auto_pad = match attrs.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => AutoPad::NotSet,
        Some("VALID") => AutoPad::Valid,
        Some("SAME_UPPER") => AutoPad::SameUpper,
        Some("SAME_LOWER") => AutoPad::SameLower,
        Some(other) => return Err(format!("auto_pad {other} is unknown")),
    };
    Ok(Window { kernel, stride: pair("strides", 1)?, dilation: pair("dilations", 1)?, pads, auto_pad })
}

impl Window {
    /// The pads in effect for an input of `size` (auto_pad resolved).
    fn pads_for(&self, size: (usize, usize)) -> [usize; 4] {
        let same = |input: usize, k: usize, s: usize, d: usize| {
            let out = input.div_ceil(s);
            (out.saturating_sub(1) * s + (k - 1) * d + 1).saturating_sub(input)
        };
        match self.auto_pad {
            AutoPad::NotSet => self.pads,
            AutoPad::Valid => [0; 4],
            AutoPad::SameUpper | AutoPad::SameLower => {
                let th = same(size.0, self.kernel.0, self.stride.0, self.dilation.0);
                let tw = same(size.1, self.kernel.1, self.stride.1, self.dilation.1);
                let (small_h, small_w) = (th / 2, tw / 2);
                if self.auto_pad == AutoPad::SameUpper {
                    [small_h, small_w, th - small_h, tw - small_w]
                } else {
                    [th - small_h, tw - small_w, small_h, small_w]
                }
            }
        }
    }
}

/// Axes given as an attribute (older opsets) or as a constant second input (newer ones).
fn axes(node: &NodeProto, ints: &HashMap<String, Vec<i64>>) -> Result<Option<Vec<i64>>, String> {
    if let Some(axes) = Attributes(node).ints("axes") {
        return Ok(Some(axes));
    }
    match node.input.get(1).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(name) => ints.get(name).cloned().map(Some).ok_or_else(|| format!("axes `{name}` are not a constant")),
    }
}

fn parse(node: &NodeProto, opset: i64, ints: &HashMap<String, Vec<i64>>) -> Result<Op, String> {
    let attrs = Attributes(node);
    let constant = |i: usize, what: &str| -> Result<Vec<i64>, String> {
        let name = node.input.get(i).ok_or_else(|| format!("{what} input is missing"))?;
        ints.get(name).cloned().ok_or_else(|| format!("{what} `{name}` is not a constant"))
    };
    Ok(match node.op_type() {
        "Conv" => {
            Op::Conv { window: window(node, Some(KERNEL_FROM_WEIGHTS))?, group: attrs.int("group", 1).max(1) as usize }
        }
        "BatchNormalization" => {
            if attrs.int("training_mode", 0) != 0 || node.output.len() > 1 {
                return Err("batch normalisation in training mode is not supported (it stays in inference mode)".into());
            }
            Op::BatchNorm { epsilon: attrs.float("epsilon", 1e-5) }
        }
        "Relu" => Op::Relu,
        "Sigmoid" => Op::Sigmoid,
        // Before opset 11 the bounds are attributes; later they are inputs, read at run time.
        "Clip" if opset < 11 => Op::Clip { min: attrs.float_opt("min"), max: attrs.float_opt("max") },
        "Clip" => Op::Clip { min: None, max: None },
        "Identity" | "Dropout" => Op::Identity,
        "Add" => Op::Binary(Binary::Add),
        "Sub" => Op::Binary(Binary::Sub),
        "Mul" => Op::Binary(Binary::Mul),
        "Div" => Op::Binary(Binary::Div),
        "MaxPool" => {
            if attrs.int("ceil_mode", 0) != 0 {
                return Err("ceil_mode 1 is not supported".into());
            }
            if node.output.len() > 1 && !node.output[1].is_empty() {
                return Err("the indices output is not supported".into());
            }
            Op::MaxPool(window(node, None)?)
        }
        "AveragePool" => {
            if attrs.int("ceil_mode", 0) != 0 {
                return Err("ceil_mode 1 is not supported".into());
            }
            Op::AveragePool { window: window(node, None)?, count_pad: attrs.int("count_include_pad", 0) != 0 }
        }
        "GlobalAveragePool" => Op::GlobalAveragePool,
        "ReduceMean" => {
            let axes = axes(node, ints)?;
            if axes.as_ref().is_none_or(Vec::is_empty) && attrs.int("noop_with_empty_axes", 0) != 0 {
                Op::Identity
            } else {
                Op::ReduceMean { axes, keepdims: attrs.int("keepdims", 1) != 0 }
            }
        }
        "Gemm" => Op::Gemm {
            alpha: attrs.float("alpha", 1.0),
            beta: attrs.float("beta", 1.0),
            trans_a: attrs.int("transA", 0) != 0,
            trans_b: attrs.int("transB", 0) != 0,
        },
        "MatMul" => Op::MatMul,
        "Flatten" => Op::Flatten { axis: attrs.int("axis", 1) },
        "Reshape" => Op::Reshape { shape: constant(1, "shape")?, allow_zero: attrs.int("allowzero", 0) != 0 },
        "Squeeze" => Op::Squeeze { axes: axes(node, ints)? },
        "Unsqueeze" => Op::Unsqueeze { axes: axes(node, ints)?.ok_or("Unsqueeze needs axes")? },
        "Concat" => Op::Concat { axis: attrs.int("axis", 1) },
        "Transpose" => {
            Op::Transpose { perm: attrs.ints("perm").map(|p| p.into_iter().map(|v| v.max(0) as usize).collect()) }
        }
        "Pad" => {
            let mode = attrs.string("mode").unwrap_or_else(|| "constant".into());
            if mode != "constant" {
                return Err(format!("Pad mode {mode} is not supported (only constant)"));
            }
            let pads = match attrs.ints("pads") {
                Some(p) if opset < 11 => p,
                _ => constant(1, "pads")?,
            };
            if pads.iter().any(|&p| p < 0) {
                return Err("negative pads are not supported".into());
            }
            if node.input.len() > 3 && !node.input[3].is_empty() {
                return Err("Pad with axes is not supported".into());
            }
            Op::Pad { pads, value: attrs.float("value", 0.0) }
        }
        "Softmax" => Op::Softmax { axis: attrs.int("axis", if opset >= 13 { -1 } else { 1 }), flatten: opset < 13 },
        other => {
            return Err(format!(
                "operator {other} is not supported for tuning (supported: {})",
                SUPPORTED_OPERATORS.join(", ")
            ));
        }
    })
}

fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

fn axis_index(axis: i64, rank: usize) -> CandleResult<usize> {
    let index = if axis < 0 { axis + rank as i64 } else { axis };
    if index < 0 || index >= rank as i64 {
        return Err(msg(format!("axis {axis} is outside rank {rank}")));
    }
    Ok(index as usize)
}

fn run(
    op: &Op,
    required: &dyn Fn(usize) -> CandleResult<Tensor>,
    optional: &dyn Fn(usize) -> CandleResult<Option<Tensor>>,
    inputs: usize,
) -> CandleResult<Tensor> {
    let x = required(0)?;
    match op {
        Op::Conv { window, group } => conv(&x, &required(1)?, optional(2)?.as_ref(), window, *group),
        Op::BatchNorm { epsilon } => batch_norm(&x, [required(1)?, required(2)?, required(3)?, required(4)?], *epsilon),
        Op::Relu => x.relu(),
        Op::Sigmoid => crate::train::sigmoid_tensor(&x),
        Op::Clip { min, max } => {
            let scalar = |i: usize, fallback: Option<f32>| -> CandleResult<Option<f32>> {
                match optional(i)? {
                    // An empty bound tensor means no bound.
                    Some(t) => Ok(t.flatten_all()?.to_vec1::<f32>()?.first().copied()),
                    None => Ok(fallback),
                }
            };
            let (min, max) = (scalar(1, *min)?, scalar(2, *max)?);
            let mut y = x;
            if let Some(min) = min {
                y = y.maximum(min)?;
            }
            if let Some(max) = max {
                y = y.minimum(max)?;
            }
            Ok(y)
        }
        Op::Identity => Ok(x),
        Op::Binary(kind) => {
            let other = required(1)?;
            match kind {
                Binary::Add => x.broadcast_add(&other),
                Binary::Sub => x.broadcast_sub(&other),
                Binary::Mul => x.broadcast_mul(&other),
                Binary::Div => x.broadcast_div(&other),
            }
        }
        Op::MaxPool(window) => {
            let (_, _, h, w) = x.dims4()?;
            if window.dilation != (1, 1) {
                return Err(msg("MaxPool with dilations is not supported".into()));
            }
            max_pool2d(&x, window.kernel, window.stride, window.pads_for((h, w)))
        }
        Op::AveragePool { window, count_pad } => average_pool(&x, window, *count_pad),
        Op::GlobalAveragePool => {
            let rank = x.rank();
            if rank < 3 {
                return Err(msg(format!("GlobalAveragePool needs rank ≥ 3, got {rank}")));
            }
            let mut y = x;
            for axis in (2..rank).rev() {
                y = y.mean_keepdim(axis)?;
            }
            Ok(y)
        }
        Op::ReduceMean { axes, keepdims } => {
            let rank = x.rank();
            // No axes (or an empty list) reduces every axis.
            let mut axes: Vec<usize> = match axes {
                Some(a) if !a.is_empty() => a.iter().map(|&a| axis_index(a, rank)).collect::<CandleResult<_>>()?,
                _ => (0..rank).collect(),
            };
            axes.sort_unstable();
            axes.dedup();
            let mut y = x;
            for &axis in axes.iter().rev() {
                y = if *keepdims { y.mean_keepdim(axis)? } else { y.mean(axis)? };
            }
            Ok(y)
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let a = if *trans_a { x.t()?.contiguous()? } else { x };
            let b = required(1)?;
            let b = if *trans_b { b.t()?.contiguous()? } else { b };
            let mut y = a.matmul(&b)?;
            if *alpha != 1.0 {
                y = (y * f64::from(*alpha))?;
            }
            if let Some(c) = optional(2)? {
                let c = if *beta != 1.0 { (c * f64::from(*beta))? } else { c };
                y = y.broadcast_add(&c)?;
            }
            Ok(y)
        }
        Op::MatMul => {
            let b = required(1)?;
            if x.rank() == 2 && b.rank() == 2 { x.matmul(&b) } else { x.broadcast_matmul(&b) }
        }
        Op::Flatten { axis } => {
            let d = x.dims().to_vec();
            let axis = if *axis < 0 { (*axis + d.len() as i64).max(0) as usize } else { (*axis as usize).min(d.len()) };
            let outer: usize = d[..axis].iter().product();
            x.reshape((outer, d[axis..].iter().product::<usize>()))
        }
        Op::Reshape { shape, allow_zero } => x.reshape(reshape_dims(x.dims(), shape, *allow_zero)?),
        Op::Squeeze { axes } => {
            let rank = x.rank();
            let mut axes: Vec<usize> = match axes {
                Some(a) => a.iter().map(|&a| axis_index(a, rank)).collect::<CandleResult<_>>()?,
                None => (0..rank).filter(|&i| x.dims()[i] == 1).collect(),
            };
            axes.sort_unstable();
            let mut y = x;
            for &axis in axes.iter().rev() {
                y = y.squeeze(axis)?;
            }
            Ok(y)
        }
        Op::Unsqueeze { axes } => {
            let rank = x.rank() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&a| axis_index(a, rank)).collect::<CandleResult<_>>()?;
            axes.sort_unstable();
            let mut y = x;
            for &axis in &axes {
                y = y.unsqueeze(axis)?;
            }
            Ok(y)
        }
        Op::Concat { axis } => {
            let parts = (0..inputs).map(required).collect::<CandleResult<Vec<_>>>()?;
            Tensor::cat(&parts, axis_index(*axis, x.rank())?)
        }
        Op::Transpose { perm } => {
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..x.rank()).rev().collect());
            x.permute(perm)?.contiguous()
        }
        Op::Pad { pads, value } => {
            let value = match optional(2)? {
                Some(t) => t.flatten_all()?.to_vec1::<f32>()?.first().copied().unwrap_or(0.0),
                None => *value,
            };
            pad(&x, pads, value)
        }
        Op::Softmax { axis, flatten } => {
            let axis = axis_index(*axis, x.rank())?;
            if *flatten {
                let dims = x.dims().to_vec();
                let outer: usize = dims[..axis].iter().product();
                softmax(&x.reshape((outer, x.elem_count() / outer.max(1)))?, 1)?.reshape(dims)
            } else {
                softmax(&x, axis)
            }
        }
    }
}

/// Softmax along `axis`; the max is subtracted (outside the gradient) for stability.
fn softmax(x: &Tensor, axis: usize) -> CandleResult<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(axis)?.detach())?;
    let e = shifted.exp()?;
    e.broadcast_div(&e.sum_keepdim(axis)?)
}

fn reshape_dims(input: &[usize], shape: &[i64], allow_zero: bool) -> CandleResult<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => {
                out.push(*input.get(i).ok_or_else(|| msg(format!("shape {shape:?}: no dim {i} to copy")))?)
            }
            d if d >= 0 => out.push(d as usize),
            _ => return Err(msg(format!("shape {shape:?} is invalid"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(msg(format!("cannot reshape {input:?} to {shape:?}")));
        }
        out[i] = total / known;
    }
    Ok(out)
}

fn pad(x: &Tensor, pads: &[i64], value: f32) -> CandleResult<Tensor> {
    let rank = x.rank();
    if pads.len() != 2 * rank {
        return Err(msg(format!("{} pads for rank {rank}", pads.len())));
    }
    let mut y = x.clone();
    for axis in 0..rank {
        let (before, after) = (pads[axis] as usize, pads[axis + rank] as usize);
        if before == 0 && after == 0 {
            continue;
        }
        y = if value == 0.0 {
            y.pad_with_zeros(axis, before, after)?
        } else {
            let block = |n: usize| -> CandleResult<Tensor> {
                let mut shape = y.dims().to_vec();
                shape[axis] = n;
                Tensor::full(value, shape, y.device())
            };
            let mut parts = Vec::new();
            if before > 0 {
                parts.push(block(before)?);
            }
            parts.push(y.clone());
            if after > 0 {
                parts.push(block(after)?);
            }
            Tensor::cat(&parts, axis)?
        };
    }
    Ok(y)
}

fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, window: &Window, group: usize) -> CandleResult<Tensor> {
    let (_, c_in, h, wd) = x.dims4()?;
    let (c_out, per_group, kh, kw) = w.dims4()?;
    if window.kernel != KERNEL_FROM_WEIGHTS && window.kernel != (kh, kw) {
        return Err(msg(format!("kernel_shape {:?} disagrees with the {kh}×{kw} weights", window.kernel)));
    }
    let window = Window { kernel: (kh, kw), ..window.clone() };
    let pads = window.pads_for((h, wd));
    let y = if group > 1 && group == c_in && per_group == 1 {
        depthwise_conv2d(x, w, window.stride, pads, window.dilation)?
    } else if (kh, kw) == (1, 1) && group == 1 && pads == [0; 4] {
        pointwise(x, w, window.stride)?
    } else {
        let (stride, dilation) = (window.stride, window.dilation);
        if stride.0 != stride.1 || dilation.0 != dilation.1 {
            return Err(msg(format!("Conv strides {stride:?} / dilations {dilation:?} must be equal in both axes")));
        }
        let (s, d) = (stride.0, dilation.0);
        // Rows and columns after the last window that a strided convolution never reads.
        let unread = |padded: usize, k: usize| (padded.saturating_sub(d * (k - 1) + 1)) % s;
        let (unread_h, unread_w) = (unread(h + pads[0] + pads[2], kh), unread(wd + pads[1] + pads[3], kw));
        if pads.iter().all(|&p| p == pads[0]) && unread_h == 0 && unread_w == 0 {
            x.conv2d(w, pads[0], s, d, group)?
        } else {
            // Padded explicitly, without the unread margin: candle's backward infers the input
            // size from the output and stride alike in both axes, which needs exact division.
            let padded = x.pad_with_zeros(2, pads[0], pads[2])?.pad_with_zeros(3, pads[1], pads[3])?;
            let (ph, pw) = (padded.dim(2)?, padded.dim(3)?);
            padded.narrow(2, 0, ph - unread_h)?.narrow(3, 0, pw - unread_w)?.conv2d(w, 0, s, d, group)?
        }
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
        None => Ok(y),
    }
}

/// A 1×1 convolution as one matrix product over every output cell of the batch, channels
/// last: (cells × in) · (in × out). Its backward is two more products, where candle's
/// convolution backward runs a direct loop for the input's gradient. (Larger kernels stay on
/// candle's convolution: the same product over their taps measured slower on `graft
/// bench-tune`, its forward pass losing more than the backward gained.)
fn pointwise(x: &Tensor, w: &Tensor, (sh, sw): (usize, usize)) -> CandleResult<Tensor> {
    let (n, c_in, h, wd) = x.dims4()?;
    let c_out = w.dim(0)?;
    let (out_h, out_w) = (h.div_ceil(sh), wd.div_ceil(sw));
    let channels_last = every_nth(&every_nth(&x.permute((0, 2, 3, 1))?, 1, sh, out_h)?, 2, sw, out_w)?;
    let cells = channels_last.reshape((n * out_h * out_w, c_in))?;
    let y = cells.matmul(&w.reshape((c_out, c_in))?.t()?)?;
    y.reshape((n, out_h, out_w, c_out))?.permute((0, 3, 1, 2))?.contiguous()
}

/// Elements 0, step, 2·step, … (`count` of them) along `axis`: the axis padded to a multiple
/// of `step`, split into (count, step), and the first of each kept.
fn every_nth(x: &Tensor, axis: usize, step: usize, count: usize) -> CandleResult<Tensor> {
    if step == 1 {
        return Ok(x.clone());
    }
    let len = x.dim(axis)?;
    let padded = x.pad_with_zeros(axis, 0, (count * step).saturating_sub(len))?.narrow(axis, 0, count * step)?;
    let mut split = padded.dims().to_vec();
    split.splice(axis..=axis, [count, step]);
    padded.reshape(split)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)
}

/// Inference-mode batch normalisation: running statistics fixed, scale and shift trainable.
fn batch_norm(x: &Tensor, [scale, bias, mean, var]: [Tensor; 4], epsilon: f32) -> CandleResult<Tensor> {
    let channels = scale.elem_count();
    let mut shape = vec![1; x.rank()];
    shape[1] = channels;
    let inv_std = (var + f64::from(epsilon))?.sqrt()?.recip()?;
    let a = (scale * inv_std)?;
    let shift = (bias - (mean * &a)?)?;
    x.broadcast_mul(&a.reshape(shape.clone())?)?.broadcast_add(&shift.reshape(shape)?)
}

/// Average pooling as a depthwise convolution with a constant kernel (differentiable for
/// any stride), divided by the window's count of real cells unless padding counts.
fn average_pool(x: &Tensor, window: &Window, count_pad: bool) -> CandleResult<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (kh, kw) = window.kernel;
    let pads = window.pads_for((h, w));
    let ones = Tensor::ones((c, 1, kh, kw), DType::F32, x.device())?;
    let sums = depthwise_conv2d(x, &ones, window.stride, pads, window.dilation)?;
    if count_pad || pads == [0; 4] {
        return sums * (1.0 / (kh * kw) as f64);
    }
    let counts = depthwise_conv2d(
        &Tensor::ones((1, 1, h, w), DType::F32, x.device())?,
        &ones.narrow(0, 0, 1)?,
        window.stride,
        pads,
        window.dilation,
    )?;
    sums.broadcast_div(&counts)
}
