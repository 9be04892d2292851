//! Cutting a base model's graph into a frozen prefix (ONNX Runtime computes it once per
//! image) and a trainable tail (from the cut tensor to the pooled features, evaluated by
//! `finetune::eval`).
//!
//! A tensor is a valid cut when everything the tail needs comes from it or from constants:
//! cutting inside a residual block would leave its skip connection on the prefix side.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::proto::{GraphProto, ModelProto, NodeProto, TensorProto};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CutError {
    #[error("the file is not a readable ONNX model: {0}")]
    Decode(String),
    #[error("the model has no graph")]
    NoGraph,
    #[error("no tensor named `{0}` in the graph")]
    NoSuchTensor(String),
    #[error("`{cut}` cannot be a cut point: the tail to `{features}` also reads `{other}`, computed before it{hint}")]
    NotACut { cut: String, features: String, other: String, hint: String },
    #[error("`{features}` does not depend on `{cut}`")]
    NotUpstream { cut: String, features: String },
    #[error("the base has {available} tunable block(s) above its cut points; asked to unfreeze {asked}")]
    TooManyBlocks { asked: usize, available: usize },
    #[error("unfreeze needs at least one block")]
    NoBlocks,
}

/// The decoded model with name lookups over its graph.
pub struct BaseGraph {
    pub model: ModelProto,
}

/// The trainable part of a base: the nodes from `input` (the cut tensor) to `output` (the
/// pooled features), in graph order, and the constants they read.
#[derive(Debug, Clone)]
pub struct Tail {
    pub input: String,
    pub output: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: HashMap<String, TensorProto>,
    /// Initializers that nodes outside the tail read too: they stay frozen, since the cached
    /// activations (and the rest of the base) depend on their values.
    pub shared: HashSet<String>,
    pub opset: i64,
}

impl BaseGraph {
    pub fn decode(bytes: &[u8]) -> Result<Self, CutError> {
        let model = ModelProto::decode(bytes).map_err(|e| CutError::Decode(e.to_string()))?;
        if model.graph.is_none() {
            return Err(CutError::NoGraph);
        }
        Ok(Self { model })
    }

    pub fn graph(&self) -> &GraphProto {
        self.model.graph.as_ref().expect("decode checked the graph")
    }

    /// The default-domain opset the graph was written for.
    pub fn opset(&self) -> i64 {
        self.model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map_or(1, |o| o.version())
    }

    fn constants(&self) -> HashSet<&str> {
        let graph = self.graph();
        let mut constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        constants.extend(
            graph.node.iter().filter(|n| n.op_type() == "Constant").flat_map(|n| n.output.iter().map(String::as_str)),
        );
        constants
    }

    fn produced(&self, name: &str) -> bool {
        let graph = self.graph();
        graph.node.iter().any(|n| n.output.iter().any(|o| o == name)) || graph.input.iter().any(|i| i.name() == name)
    }

    /// Indices of the nodes that `targets` need, walking back from them and stopping at
    /// `stop` and at constants, in graph order.
    fn ancestors(&self, targets: &[&str], stop: Option<&str>) -> Vec<usize> {
        let graph = self.graph();
        let constants = self.constants();
        let mut needed: HashSet<&str> = targets.iter().copied().collect();
        let mut chosen = Vec::new();
        for (index, node) in graph.node.iter().enumerate().rev() {
            if !node.output.iter().any(|o| needed.contains(o.as_str())) {
                continue;
            }
            chosen.push(index);
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if Some(input.as_str()) != stop && !constants.contains(input.as_str()) {
                    needed.insert(input);
                }
            }
        }
        chosen.reverse();
        chosen
    }

    /// The tail from `cut` to `features`, or why `cut` does not split the graph there (with
    /// the base's cut points as a hint).
    pub fn tail(&self, cut: &str, features: &str) -> Result<Tail, CutError> {
        self.split(cut, features).map_err(|e| match e {
            CutError::NotACut { cut, features, other, .. } => {
                let hint = self.hint(&features);
                CutError::NotACut { cut, features, other, hint }
            }
            other => other,
        })
    }

    fn split(&self, cut: &str, features: &str) -> Result<Tail, CutError> {
        for name in [cut, features] {
            if !self.produced(name) {
                return Err(CutError::NoSuchTensor(name.to_owned()));
            }
        }
        let graph = self.graph();
        let chosen = self.ancestors(&[features], Some(cut));
        let reads = |i: &usize| graph.node[*i].input.iter().any(|input| input == cut);
        if cut == features || !chosen.iter().any(reads) {
            return Err(CutError::NotUpstream { cut: cut.to_owned(), features: features.to_owned() });
        }
        // The walk crossed into the prefix when it reached a node the cut itself needs, or a
        // graph input: name the first tensor that crosses.
        let before: HashSet<usize> = self.ancestors(&[cut], None).into_iter().collect();
        let before_made: HashSet<&str> =
            before.iter().flat_map(|&i| graph.node[i].output.iter().map(String::as_str)).collect();
        let graph_inputs: HashSet<&str> = graph.input.iter().map(|i| i.name()).collect();
        let constants = self.constants();
        let crossing =
            chosen.iter().filter(|i| !before.contains(i)).flat_map(|&i| graph.node[i].input.iter()).find(|input| {
                input.as_str() != cut
                    && !constants.contains(input.as_str())
                    && (before_made.contains(input.as_str()) || graph_inputs.contains(input.as_str()))
            });
        if let Some(other) = crossing {
            return Err(CutError::NotACut {
                cut: cut.to_owned(),
                features: features.to_owned(),
                other: other.clone(),
                hint: String::new(),
            });
        }
        let used: HashSet<&str> = chosen.iter().flat_map(|&i| graph.node[i].input.iter().map(String::as_str)).collect();
        // Constant nodes the tail reads come first: they need nothing.
        let constant_nodes = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "Constant" && n.output.iter().any(|o| used.contains(o.as_str())));
        let nodes: Vec<NodeProto> = constant_nodes.chain(chosen.iter().map(|&i| &graph.node[i])).cloned().collect();
        let initializers: HashMap<String, TensorProto> = graph
            .initializer
            .iter()
            .filter(|t| used.contains(t.name()))
            .map(|t| (t.name().to_owned(), t.clone()))
            .collect();
        let in_tail: HashSet<usize> = chosen.iter().copied().collect();
        let shared = graph
            .node
            .iter()
            .enumerate()
            .filter(|(i, _)| !in_tail.contains(i))
            .flat_map(|(_, n)| n.input.iter())
            .filter(|name| initializers.contains_key(name.as_str()))
            .cloned()
            .collect();
        Ok(Tail {
            input: cut.to_owned(),
            output: features.to_owned(),
            nodes,
            initializers,
            shared,
            opset: self.opset(),
        })
    }

    /// The valid cut points that start a tunable block, nearest the input first.
    ///
    /// Every valid cut is a candidate; a block starts at one made by an operator that ends a
    /// block in the usual architectures (an activation, a residual Add, a pool, a concat, or
    /// the graph input) when the stretch up to the next such cut holds trainable weights.
    pub fn block_starts(&self, features: &str) -> Vec<String> {
        let graph = self.graph();
        let mut candidates: Vec<(String, &str)> = graph.input.iter().map(|i| (i.name().to_owned(), "input")).collect();
        for node in &graph.node {
            for output in &node.output {
                candidates.push((output.clone(), node.op_type()));
            }
        }
        let ends_block = |op: &str| {
            matches!(
                op,
                "input" | "Relu" | "Clip" | "Add" | "Sum" | "MaxPool" | "Concat" | "Mul" | "Sigmoid" | "HardSwish"
            )
        };
        let valid: Vec<(String, usize)> = candidates
            .into_iter()
            .filter(|(name, op)| ends_block(op) && name != features)
            .filter_map(|(name, _)| {
                let tail = self.split(&name, features).ok()?;
                Some((name, tail.nodes.iter().filter(|n| has_weights(n)).count()))
            })
            .collect();
        // A cut starts a block when the weighted nodes above it exceed those above the next cut.
        valid
            .iter()
            .enumerate()
            .filter(|(i, (_, weighted))| valid.get(i + 1).is_none_or(|(_, next)| next < weighted))
            .filter(|(_, (_, weighted))| *weighted > 0)
            .map(|(_, (name, _))| name.clone())
            .collect()
    }

    /// The base graph cut at `cut`: only the nodes it needs, with `cut` as its one output.
    pub fn prefix(&self, cut: &str) -> Result<Vec<u8>, CutError> {
        if !self.produced(cut) {
            return Err(CutError::NoSuchTensor(cut.to_owned()));
        }
        let mut model = self.model.clone();
        let graph = model.graph.as_mut().expect("decode checked the graph");
        let mut needed: HashSet<String> = HashSet::from([cut.to_owned()]);
        let mut kept = Vec::new();
        for node in graph.node.iter().rev() {
            if node.output.iter().any(|o| needed.contains(o)) {
                needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
                kept.push(node.clone());
            }
        }
        kept.reverse();
        graph.node = kept;
        graph.initializer.retain(|t| needed.contains(t.name()));
        graph.input.retain(|i| needed.contains(i.name()));
        graph.value_info.clear();
        graph.output = vec![float_output(cut)];
        Ok(model.encode_to_vec())
    }

    fn hint(&self, features: &str) -> String {
        let starts = self.block_starts(features);
        if starts.is_empty() {
            String::new()
        } else {
            let last: Vec<&str> = starts.iter().rev().take(4).map(String::as_str).collect();
            format!(" (cut points of this base, from the top: {})", last.join(", "))
        }
    }
}

/// Whether a node carries weights the tail trains.
pub fn has_weights(node: &NodeProto) -> bool {
    matches!(node.op_type(), "Conv" | "Gemm" | "MatMul" | "BatchNormalization")
}

/// A float graph output named `name` with no stated shape.
pub fn float_output(name: &str) -> super::proto::ValueInfoProto {
    use super::proto::{TypeProto, ValueInfoProto, type_proto};
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(1), shape: None })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Which tensor to cut at: `blocks` counted from the top among the base's block starts
/// (its manifest's `cut_points` when it names them), or a tensor named outright.
pub fn choose_cut(
    base: &BaseGraph,
    features: &str,
    declared: &[String],
    unfreeze: &Unfreeze,
) -> Result<String, CutError> {
    match unfreeze {
        Unfreeze::Tensor(name) => {
            base.tail(name, features)?;
            Ok(name.clone())
        }
        Unfreeze::Blocks(0) => Err(CutError::NoBlocks),
        Unfreeze::Blocks(n) => {
            let starts = if declared.is_empty() { base.block_starts(features) } else { declared.to_vec() };
            let cut = starts
                .len()
                .checked_sub(*n)
                .map(|i| starts[i].clone())
                .ok_or(CutError::TooManyBlocks { asked: *n, available: starts.len() })?;
            base.tail(&cut, features)?;
            Ok(cut)
        }
    }
}

/// How much of the base a job unfreezes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfreeze {
    /// The top `n` blocks.
    Blocks(usize),
    /// Everything above this tensor.
    Tensor(String),
}
