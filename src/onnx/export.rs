//! One ONNX file for a trained model: the base graph (with its tuned tail weights written
//! back into the initializers, when the job tuned the base) and the head appended as ONNX
//! nodes, answering `probabilities` over the dataset's classes — and, for a localizer,
//! `box` (`[cx, cy, w, h]` as fractions of the model input).
//!
//! The appended nodes use only operators whose attributes have not changed across opsets
//! (Flatten, Gemm, MatMul, Reshape, Relu, Sigmoid, Softplus, Softmax on 2-D, Conv, MaxPool,
//! Transpose, Concat and element-wise arithmetic), so the head fits a base of any opset.

use prost::Message;

use super::cut::float_output;
use super::proto::{AttributeProto, GraphProto, ModelProto, StringStringEntryProto, TensorProto, attribute_proto};
use super::tensor::{float_tensor, int_tensor, node};
use crate::train::{BoxParts, CENTROID_EPSILON, Dense, Head, LocalizerHead};
use crate::vision::Layout;

/// The exported model's class output.
pub const PROBABILITIES: &str = "probabilities";
/// A localizer's box output.
pub const BOX: &str = "box";
/// Names graft adds start with this, so they cannot meet the base's own.
const PREFIX: &str = "graft_head";

/// Replaces the initializers named in `tuned` (same names, same shapes) in a base model.
pub fn with_initializers(base: &[u8], tuned: &[TensorProto]) -> Result<Vec<u8>, String> {
    let mut model = decode(base)?;
    replace_initializers(&mut model, tuned)?;
    Ok(model.encode_to_vec())
}

/// The base (tuned or not) with `head` on its `features` tensor: Flatten → Gemm (→ Relu →
/// Gemm) → Softmax, the graph's only output being [`PROBABILITIES`]. `metadata` is written
/// into the model's `metadata_props` (what ONNX Runtime shows as custom metadata).
pub fn export_classifier(
    base: &[u8],
    features: &str,
    head: &Head,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, String> {
    let mut model = decode(base)?;
    set_metadata(&mut model, metadata);
    let mut graph = Appender::new(&mut model)?;
    let flat = graph.node("Flatten", &[features], "features", vec![int("axis", 1)]);
    let layers: Vec<&Dense> = head.layers().collect();
    let mut x = flat;
    for (i, dense) in layers.iter().enumerate() {
        x = graph.dense(&x, dense, &format!("layer{i}"));
        if i + 1 < layers.len() {
            x = graph.node("Relu", &[&x], &format!("layer{i}_relu"), vec![]);
        }
    }
    graph.output("Softmax", &[&x], PROBABILITIES, vec![int("axis", 1)]);
    graph.finish(&[PROBABILITIES]);
    Ok(model.encode_to_vec())
}

/// A localizer on a base: [`PROBABILITIES`] from the pooled `features`, and [`BOX`] from the
/// pooled features (sigmoid of a dense layer) or from the `spatial` map (the objectness
/// profiles of `LocalizerHead`'s spatial head, written with Conv and MaxPool).
pub fn export_localizer(
    base: &[u8],
    features: &str,
    spatial: Option<(&str, Layout)>,
    head: &LocalizerHead,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, String> {
    let mut model = decode(base)?;
    set_metadata(&mut model, metadata);
    let mut graph = Appender::new(&mut model)?;
    let flat = graph.node("Flatten", &[features], "features", vec![int("axis", 1)]);
    let (class, boxes) = head.parts();
    if let BoxParts::Cells { grid, hidden, output } = boxes {
        let (map, layout) = spatial.ok_or("the spatial box head needs the base's spatial feature map")?;
        graph.cells(map, layout, &flat, class, grid, (hidden, output));
        graph.finish(&[PROBABILITIES, BOX]);
        return Ok(model.encode_to_vec());
    }
    let logits = graph.dense(&flat, class, "class");
    graph.output("Softmax", &[&logits], PROBABILITIES, vec![int("axis", 1)]);
    match boxes {
        BoxParts::Pooled(dense) => {
            let z = graph.dense(&flat, dense, "box");
            graph.output("Sigmoid", &[&z], BOX, vec![]);
        }
        BoxParts::Spatial { shape: (height, width, channels), weights, bias, scale, shift } => {
            let (map, layout) = spatial.ok_or("the spatial box head needs the base's spatial feature map")?;
            let map = match layout {
                Layout::Nchw => map.to_owned(),
                Layout::Nhwc => graph.node("Transpose", &[map], "spatial_nchw", vec![ints("perm", &[0, 3, 1, 2])]),
            };
            // Objectness per cell: a 1×1 convolution to one channel, then the sigmoid.
            let w = graph.constant("objectness_w", &[1, channels, 1, 1], weights);
            let b = graph.constant("objectness_b", &[1], &[bias]);
            let z = graph.node("Conv", &[&map, &w, &b], "objectness_z", vec![ints("kernel_shape", &[1, 1])]);
            let o = graph.node("Sigmoid", &[&z], "objectness", vec![]);
            // Column profile [N,1,1,W] (max over rows) and row profile [N,1,H,1] (max over columns).
            let columns = graph.node("MaxPool", &[&o], "columns", vec![ints("kernel_shape", &[height as i64, 1])]);
            let rows = graph.node("MaxPool", &[&o], "rows", vec![ints("kernel_shape", &[1, width as i64])]);
            let (cx, w_extent) = graph.profile(&columns, width, [1, 1, 1, width], "x");
            let (cy, h_extent) = graph.profile(&rows, height, [1, 1, height, 1], "y");
            let raw = graph.node("Concat", &[&cx, &cy, &w_extent, &h_extent], "raw_box", vec![int("axis", 1)]);
            let raw = graph.node("Flatten", &[&raw], "raw_box_flat", vec![int("axis", 1)]);
            let scale = graph.constant("box_scale", &[1, 4], &scale);
            let shift = graph.constant("box_shift", &[1, 4], &shift);
            let scaled = graph.node("Mul", &[&raw, &scale], "box_scaled", vec![]);
            graph.output("Add", &[&scaled, &shift], BOX, vec![]);
        }
        BoxParts::Cells { .. } => unreachable!("written by Appender::cells above"),
    }
    graph.finish(&[PROBABILITIES, BOX]);
    Ok(model.encode_to_vec())
}

/// Appends named nodes and constants to a base graph.
struct Appender<'a> {
    graph: &'a mut GraphProto,
}

impl<'a> Appender<'a> {
    fn new(model: &'a mut ModelProto) -> Result<Self, String> {
        let graph = model.graph.as_mut().ok_or("the base model has no graph")?;
        let names = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .chain(graph.initializer.iter().map(|t| t.name()))
            .chain(graph.input.iter().map(|i| i.name()));
        if let Some(name) = names.into_iter().find(|n| n.starts_with(PREFIX) || [PROBABILITIES, BOX].contains(n)) {
            return Err(format!("the base already has a tensor named `{name}`, which the exported head needs"));
        }
        Ok(Self { graph })
    }

    fn constant(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        let name = format!("{PREFIX}_{name}");
        self.graph.initializer.push(float_tensor(&name, shape, values));
        name
    }

    /// Adds a node whose output is `{PREFIX}_{output}`; returns that name.
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> String {
        let name = format!("{PREFIX}_{output}");
        self.output(op, inputs, &name, attribute);
        name
    }

    /// Adds a node whose output is named exactly `output`.
    fn output(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.graph.node.push(node(op, inputs, output, attribute));
    }

    /// x·W + b for a dense layer (`inputs × outputs` weights).
    fn dense(&mut self, x: &str, dense: &Dense, name: &str) -> String {
        let [weights, bias] = dense.values();
        let w = self.constant(&format!("{name}_weights"), &[dense.inputs(), dense.outputs()], weights);
        let b = self.constant(&format!("{name}_bias"), &[dense.outputs()], bias);
        self.node("Gemm", &[x, &w, &b], &format!("{name}_logits"), vec![])
    }

    /// The cell head (see `LocalizerHead`) on the map `map`: 1×1 convolutions for the per-cell
    /// layers, a softmax over the cells, and the weighing of the cells' corners and features
    /// as batched MatMuls; then [`BOX`] and, from the weighed features beside the pooled
    /// `flat` ones, [`PROBABILITIES`].
    fn cells(
        &mut self,
        map: &str,
        layout: Layout,
        flat: &str,
        class: &Dense,
        (height, width): (usize, usize),
        (hidden, output): (&Dense, &Dense),
    ) {
        let map = match layout {
            Layout::Nchw => map.to_owned(),
            Layout::Nhwc => self.node("Transpose", &[map], "spatial_nchw", vec![ints("perm", &[0, 3, 1, 2])]),
        };
        let (channels, units, cells) = (hidden.inputs(), hidden.outputs(), height * width);
        // A dense layer over every cell is a 1×1 convolution with its weights transposed.
        let conv = |graph: &mut Self, x: &str, layer: &Dense, columns: std::ops::Range<usize>, name: &str| {
            let [weights, bias] = layer.values();
            let rows = layer.inputs();
            let kernel: Vec<f32> =
                columns.clone().flat_map(|o| (0..rows).map(move |i| weights[i * layer.outputs() + o])).collect();
            let w = graph.constant(&format!("{name}_w"), &[columns.len(), rows, 1, 1], &kernel);
            let b = graph.constant(&format!("{name}_b"), &[columns.len()], &bias[columns]);
            graph.node("Conv", &[x, &w, &b], name, vec![ints("kernel_shape", &[1, 1])])
        };
        let z = conv(self, &map, hidden, 0..units, "cells_hidden");
        let z = self.node("Relu", &[&z], "cells_hidden_relu", vec![]);
        let objectness = conv(self, &z, output, 0..1, "cells_objectness");
        let distances = conv(self, &z, output, 1..5, "cells_distances");
        let objectness = self.reshape(&objectness, &[0, -1], "cells_objectness_flat");
        let attention = self.node("Softmax", &[&objectness], "cells_attention", vec![int("axis", 1)]);
        let attention = self.reshape(&attention, &[0, -1, 1], "cells_attention_column");
        // Corners of every cell's box: centre + distance·[−1/W, −1/H, 1/W, 1/H], as [N, 4, cells].
        let distances = self.node("Softplus", &[&distances], "cells_distances_soft", vec![]);
        let distances = self.reshape(&distances, &[0, 4, -1], "cells_distances_flat");
        let (w, h) = (width as f32, height as f32);
        let factors = self.constant("cells_factors", &[1, 4, 1], &[-1.0 / w, -1.0 / h, 1.0 / w, 1.0 / h]);
        let centres: Vec<f32> = (0..4)
            .flat_map(|k| {
                (0..cells).map(move |cell| match k % 2 {
                    0 => ((cell % width) as f32 + 0.5) / w,
                    _ => ((cell / width) as f32 + 0.5) / h,
                })
            })
            .collect();
        let centres = self.constant("cells_centres", &[1, 4, cells], &centres);
        let offsets = self.node("Mul", &[&distances, &factors], "cells_offsets", vec![]);
        let corners = self.node("Add", &[&offsets, &centres], "cells_corners", vec![]);
        let corners = self.node("MatMul", &[&corners, &attention], "corners", vec![]);
        let corners = self.node("Flatten", &[&corners], "corners_flat", vec![int("axis", 1)]);
        // [x0, y0, x1, y1] · M = [cx, cy, w, h].
        let to_box = self.constant(
            "corners_to_box",
            &[4, 4],
            &[0.5, 0.0, -1.0, 0.0, 0.0, 0.5, 0.0, -1.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.5, 0.0, 1.0],
        );
        self.output("MatMul", &[&corners, &to_box], BOX, vec![]);
        // The class reads the weighed map features beside the pooled ones.
        let map = self.reshape(&map, &[0, channels as i64, -1], "cells_map_flat");
        let attended = self.node("MatMul", &[&map, &attention], "attended", vec![]);
        let attended = self.node("Flatten", &[&attended], "attended_flat", vec![int("axis", 1)]);
        let inputs = self.node("Concat", &[&attended, flat], "class_inputs", vec![int("axis", 1)]);
        let logits = self.dense(&inputs, class, "class");
        self.output("Softmax", &[&logits], PROBABILITIES, vec![int("axis", 1)]);
    }

    /// `x` reshaped to `shape` (0 keeps a dimension, −1 infers one).
    fn reshape(&mut self, x: &str, shape: &[i64], name: &str) -> String {
        let shape_name = format!("{PREFIX}_{name}_shape");
        self.graph.initializer.push(int_tensor(&shape_name, shape));
        self.node("Reshape", &[x, &shape_name], name, vec![])
    }

    /// The centre Σ pos·m / (Σ m + ε) and extent mean(m) of a profile `m` of `len` cells (a
    /// [N,1,1,len] or [N,1,len,1] map), as [N,1,1,1] tensors, by 1×len convolutions.
    fn profile(&mut self, profile: &str, len: usize, kernel: [usize; 4], axis: &str) -> (String, String) {
        let positions: Vec<f32> = (0..len).map(|k| (k as f32 + 0.5) / len as f32).collect();
        let conv = |graph: &mut Self, weights: &[f32], what: &str| {
            let w = graph.constant(&format!("{axis}_{what}_kernel"), &kernel, weights);
            graph.node("Conv", &[profile, &w], &format!("{axis}_{what}"), vec![])
        };
        let weighted = conv(self, &positions, "weighted");
        let total = conv(self, &vec![1.0; len], "total");
        let extent = conv(self, &vec![1.0 / len as f32; len], "extent");
        let epsilon = self.constant(&format!("{axis}_epsilon"), &[1], &[CENTROID_EPSILON]);
        let denominator = self.node("Add", &[&total, &epsilon], &format!("{axis}_denominator"), vec![]);
        let centre = self.node("Div", &[&weighted, &denominator], &format!("{axis}_centre"), vec![]);
        (centre, extent)
    }

    /// Makes `outputs` the graph's only outputs.
    fn finish(self, outputs: &[&str]) {
        self.graph.output = outputs.iter().map(|name| float_output(name)).collect();
    }
}

/// Sets each `(key, value)` in the model's metadata, replacing an entry of the same key.
fn set_metadata(model: &mut ModelProto, metadata: &[(&str, String)]) {
    for (key, value) in metadata {
        model.metadata_props.retain(|entry| entry.key() != *key);
        model.metadata_props.push(StringStringEntryProto { key: Some((*key).to_owned()), value: Some(value.clone()) });
    }
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

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}
