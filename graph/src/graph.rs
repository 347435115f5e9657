//! The graph: nodes in topological order, parameters, dropout sites, outputs.
//!
//! One type carries every stage (forward, backward, training step, evaluation),
//! so every pass is a `Graph -> Graph` function and every stage prints the same way.

use crate::error::{GraphError, Result};
use crate::ids::{NodeId, ParamId, SiteId};
use crate::op::{infer_type, Op};
use crate::recipe::Recipe;
use crate::shape::TensorType;

/// How a parameter's initial value is drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Constant(f32),
    /// Normal with mean 0 and the given standard deviation (Caffe's `gaussian`).
    Gaussian {
        std: f32,
    },
    /// He/Kaiming normal, std `sqrt(2 / fan)` (PyTorch `kaiming_normal_`).
    HeNormal {
        fan_out: bool,
    },
    /// Uniform in `±1/sqrt(fan_in)`: PyTorch's default for linear and conv biases.
    UniformFanIn,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// PyTorch-style name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    pub dims: Vec<usize>,
    pub init: Init,
    /// Trained by SGD (weights, biases, BatchNorm affine); false for running statistics.
    pub trainable: bool,
    pub lr_mult: f32,
    pub decay_mult: f32,
    /// Fan-in of the layer's weight, for fan-based initialisers.
    pub fan_in: usize,
    /// Fan-out of the layer's weight.
    pub fan_out: usize,
}

impl Param {
    pub fn elems(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Dropout mode of the paper, for the whole graph or one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropoutMode {
    Plain,
    Standard,
    Forward,
    Backward,
    Augmented,
}

impl DropoutMode {
    pub const ALL: [DropoutMode; 5] = [
        DropoutMode::Plain,
        DropoutMode::Standard,
        DropoutMode::Forward,
        DropoutMode::Backward,
        DropoutMode::Augmented,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropoutMode::Plain => "plain",
            DropoutMode::Standard => "standard",
            DropoutMode::Forward => "forward",
            DropoutMode::Backward => "backward",
            DropoutMode::Augmented => "augmented",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A site's own settings from the model file; unset fields follow the global ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteOverride {
    pub mode: Option<DropoutMode>,
    pub fwd: Option<f64>,
    pub bwd: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// The dropout node's name in the model file.
    pub name: String,
    pub over: SiteOverride,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub ty: TensorType,
    /// For derived nodes, the forward node whose gradient rule made them.
    pub origin: Option<String>,
}

/// A layer of the model file (one JSON node), kept for `info` and per-layer reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op: String,
    pub params: Vec<ParamId>,
    /// The node holding the layer's output.
    pub output: NodeId,
    /// Multiply-adds per image (convolutions and linear layers only).
    pub macs: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub params: Vec<Param>,
    pub sites: Vec<Site>,
    pub layers: Vec<Layer>,
    /// Named outputs: `loss` and `logits` in a forward graph, plus `grad:<param>`
    /// in a backward graph.
    pub outputs: Vec<(String, NodeId)>,
    pub recipe: Recipe,
    /// The memory limit the graph was loaded with (`GraphLoadOptions`); derived
    /// graphs inherit it, and compiling or interpreting at any batch checks it.
    pub memory_limit_bytes: u64,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.index()]
    }

    pub fn site(&self, id: SiteId) -> &Site {
        &self.sites[id.index()]
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId::from_index)
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.ids().find(|&id| self.node(id).name == name)
    }

    pub fn param_by_name(&self, name: &str) -> Option<ParamId> {
        (0..self.params.len())
            .map(ParamId::from_index)
            .find(|&p| self.param(p).name == name)
    }

    pub fn trainable_params(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.params.len())
            .map(ParamId::from_index)
            .filter(|&p| self.param(p).trainable)
    }

    /// Trainable parameter count (what papers report).
    pub fn trainable_param_count(&self) -> usize {
        self.trainable_params().map(|p| self.param(p).elems()).sum()
    }

    /// Multiply-adds per image of the forward pass.
    pub fn macs_per_image(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }

    /// The image input's per-item dims, `[C, H, W]`.
    pub fn image_dims(&self) -> Option<&[usize]> {
        self.nodes
            .iter()
            .find(|n| n.op == Op::Image)
            .map(|n| n.ty.dims.as_slice())
    }

    /// Number of classes of the label input.
    pub fn classes(&self) -> Option<usize> {
        self.nodes.iter().find_map(|n| match n.op {
            Op::Labels { classes } => Some(classes),
            _ => None,
        })
    }

    /// Appends a node, typing it by the op's shape rule. Inputs must already exist,
    /// which keeps `nodes` in topological order by construction.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<NodeId>,
        origin: Option<String>,
    ) -> Result<NodeId> {
        let name = name.into();
        let ty = {
            let ins: Vec<&TensorType> = inputs.iter().map(|&i| &self.node(i).ty).collect();
            infer_type(&op, &ins)
                .map_err(|m| GraphError::node(&name, format!("{}: {m}", op.name())))?
        };
        self.push_typed(name, op, inputs, ty, origin)
    }

    /// Appends a node whose type is given (leaves).
    pub fn push_typed(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<NodeId>,
        ty: TensorType,
        origin: Option<String>,
    ) -> Result<NodeId> {
        let id = NodeId::from_index(self.nodes.len());
        debug_assert!(inputs.iter().all(|&i| i < id));
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
            ty,
            origin,
        });
        Ok(id)
    }

    /// The node reading `param`, adding one if the graph has none.
    pub fn param_node(&mut self, param: ParamId) -> NodeId {
        if let Some(id) = self.ids().find(|&id| self.node(id).op == Op::Param(param)) {
            return id;
        }
        let p = self.param(param);
        let (name, ty) = (p.name.clone(), TensorType::fixed(p.dims.clone()));
        self.push_typed(name, Op::Param(param), vec![], ty, None)
            .expect("leaf push cannot fail")
    }

    /// A copy with the same parameters, sites, layers and recipe but no nodes.
    pub fn empty_like(&self) -> Graph {
        Graph {
            name: self.name.clone(),
            nodes: Vec::new(),
            params: self.params.clone(),
            sites: self.sites.clone(),
            layers: Vec::new(),
            outputs: Vec::new(),
            recipe: self.recipe.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
        }
    }

    /// Users of each node, in order.
    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for id in self.ids() {
            for &i in &self.node(id).inputs {
                users[i.index()].push(id);
            }
        }
        users
    }
}
