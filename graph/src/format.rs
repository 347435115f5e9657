//! The JSON model format (see `docs/graph-format.md`): parsing, name resolution,
//! topological ordering and lowering of layers into IR nodes with their parameters.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{GraphError, Result};
use crate::fields::Fields;
use crate::graph::{DropoutMode, Graph, Init, Layer, Param, Site, SiteOverride};
use crate::ids::{NodeId, ParamId, SiteId};
use crate::op::{Conv2dAttrs, Op, PoolAttrs};
use crate::recipe::Recipe;
use crate::shape::{DType, TensorType};

/// The `format` value this version reads.
pub const FORMAT: &str = "dropjit-graph/1";

/// Layer ops of the model format.
pub const LAYER_OPS: [&str; 12] = [
    "conv2d",
    "linear",
    "max_pool2d",
    "avg_pool2d",
    "relu",
    "batch_norm",
    "add",
    "shortcut_a",
    "global_avg_pool",
    "flatten",
    "dropout",
    "softmax_cross_entropy",
];

/// How to load a model file ([`load`], [`parse`]).
#[derive(Clone, Copy, Debug)]
pub struct GraphLoadOptions {
    /// Reject a graph whose training buffers at the recipe's batch size would
    /// exceed this many bytes, before anything is allocated.
    pub memory_limit_bytes: u64,
}

impl Default for GraphLoadOptions {
    fn default() -> Self {
        GraphLoadOptions {
            memory_limit_bytes: 8 << 30,
        }
    }
}

/// Reads and validates a model file.
pub fn load(path: &Path, opts: GraphLoadOptions) -> Result<Graph> {
    let text = std::fs::read_to_string(path).map_err(|source| GraphError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string(), opts)
}

/// Parses and validates a model from JSON text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str, opts: GraphLoadOptions) -> Result<Graph> {
    let value: Value = serde_json::from_str(text).map_err(|e| GraphError::Json {
        path: origin.to_string(),
        line: e.line(),
        column: e.column(),
        // serde_json appends " at line L column C"; the path prefix says it already.
        message: {
            let m = e.to_string();
            match m.rfind(" at line ") {
                Some(i) => m[..i].to_string(),
                None => m,
            }
        },
    })?;
    let top = Fields::new(None, "", &value)?;
    match top.str("format")? {
        FORMAT => {}
        other => {
            return Err(top.error(
                "format",
                format!("unsupported format '{other}', this dropjit reads '{FORMAT}'"),
            ))
        }
    }
    let name = top.str("name")?.to_string();
    top.opt_str("description")?;
    let recipe = match top.get("recipe") {
        Some(v) => Recipe::parse(v)?,
        None => Recipe::default(),
    };
    let mut b = Builder {
        graph: Graph {
            name,
            nodes: Vec::new(),
            params: Vec::new(),
            sites: Vec::new(),
            layers: Vec::new(),
            outputs: Vec::new(),
            recipe,
            memory_limit_bytes: opts.memory_limit_bytes,
        },
        by_name: HashMap::new(),
        node_names: std::collections::HashSet::new(),
        layer: String::new(),
    };
    b.inputs(top.array("inputs")?)?;
    let decls = top.array("nodes")?;
    b.layers(decls)?;
    b.outputs(&top)?;
    top.finish()?;
    check_memory_at(&b.graph, b.graph.recipe.batch_size)?;
    Ok(b.graph)
}

struct Builder {
    graph: Graph,
    /// Model-file name (input or layer) -> the node holding its value.
    by_name: HashMap<String, NodeId>,
    /// Every IR node name so far (layers make several nodes each).
    node_names: std::collections::HashSet<String>,
    /// The layer being lowered, for error messages.
    layer: String,
}

fn checked_elems(dims: &[usize]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= u32::MAX as u64)
}

impl Builder {
    fn inputs(&mut self, items: &[Value]) -> Result<()> {
        let (mut image, mut label) = (false, false);
        for (i, item) in items.iter().enumerate() {
            let f = Fields::new(None, &format!("inputs[{i}]"), item)?;
            let name = f.str("name")?;
            if self.by_name.contains_key(name) {
                return Err(f.error("name", format!("duplicate name '{name}'")));
            }
            let id = match f.str("kind")? {
                "image" => {
                    if image {
                        return Err(
                            f.error("kind", "a second image input (exactly one is allowed)")
                        );
                    }
                    image = true;
                    let dims = f
                        .positive_list("shape")?
                        .ok_or_else(|| f.error("shape", "missing required field"))?;
                    if dims.len() != 3 {
                        return Err(f.error("shape", format!("expected [C, H, W], got {dims:?}")));
                    }
                    if checked_elems(&dims).is_none() {
                        return Err(f.error(
                            "shape",
                            format!("image {dims:?} has more than 2^32 elements"),
                        ));
                    }
                    self.graph.push_typed(
                        name,
                        Op::Image,
                        vec![],
                        TensorType::batched(dims),
                        None,
                    )?
                }
                "label" => {
                    if label {
                        return Err(
                            f.error("kind", "a second label input (exactly one is allowed)")
                        );
                    }
                    label = true;
                    let classes = f.positive("classes")?;
                    if classes < 2 {
                        return Err(f.error("classes", "needs at least 2 classes"));
                    }
                    self.graph.push_typed(
                        name,
                        Op::Labels { classes },
                        vec![],
                        TensorType::labels(),
                        None,
                    )?
                }
                other => {
                    return Err(f.error(
                        "kind",
                        format!("unknown input kind '{other}' (image, label)"),
                    ))
                }
            };
            f.finish()?;
            self.by_name.insert(name.to_string(), id);
            self.node_names.insert(name.to_string());
        }
        if !image || !label {
            return Err(GraphError::field(
                None,
                "inputs",
                "needs one image input and one label input",
            ));
        }
        Ok(())
    }

    /// Orders the declared layers so that every input comes first (depth-first,
    /// in declaration order among independent layers), then lowers each.
    fn layers(&mut self, decls: &[Value]) -> Result<()> {
        let mut parsed = Vec::with_capacity(decls.len());
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, d) in decls.iter().enumerate() {
            let probe = Fields::new(None, &format!("nodes[{i}]"), d)?;
            let name = probe.str("name")?;
            let f = Fields::new(Some(name), "", d)?;
            f.str("name")?;
            let op = f.str("op")?;
            if !LAYER_OPS.contains(&op) {
                return Err(f.error(
                    "op",
                    format!("unknown op '{op}' (known: {})", LAYER_OPS.join(", ")),
                ));
            }
            if self.by_name.contains_key(name) || index.insert(name, i).is_some() {
                return Err(f.error("name", format!("duplicate name '{name}'")));
            }
            let inputs: Vec<&str> = f
                .array("inputs")?
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    v.as_str().ok_or_else(|| {
                        f.error(&format!("inputs[{k}]"), "expected a node or input name")
                    })
                })
                .collect::<Result<_>>()?;
            parsed.push((name, op, inputs, f));
        }
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; parsed.len()];
        let mut order = Vec::with_capacity(parsed.len());
        for start in 0..parsed.len() {
            let mut stack = vec![(start, 0usize)];
            while let Some(&mut (i, ref mut next)) = stack.last_mut() {
                if state[i] == 2 {
                    stack.pop();
                    continue;
                }
                state[i] = 1;
                let (name, _, inputs, f) = &parsed[i];
                if *next < inputs.len() {
                    let input = inputs[*next];
                    *next += 1;
                    if self.by_name.contains_key(input) {
                        continue;
                    }
                    let Some(&j) = index.get(input) else {
                        return Err(f.error(
                            "inputs",
                            format!("unknown input '{input}' (no node or input has that name)"),
                        ));
                    };
                    match state[j] {
                        0 => stack.push((j, 0)),
                        1 => {
                            // The stack runs from a node to its input; data flows the other way.
                            let mut cycle: Vec<&str> = stack
                                .iter()
                                .skip_while(|(k, _)| *k != j)
                                .map(|(k, _)| parsed[*k].0)
                                .collect();
                            cycle.reverse();
                            return Err(GraphError::node(
                                name,
                                format!("cycle: {} -> {}", cycle.join(" -> "), cycle[0]),
                            ));
                        }
                        _ => {}
                    }
                } else {
                    state[i] = 2;
                    order.push(i);
                    stack.pop();
                }
            }
        }
        for i in order {
            let (name, op, inputs, f) = &parsed[i];
            let ins: Vec<NodeId> = inputs.iter().map(|n| self.by_name[*n]).collect();
            let out = self.build_layer(name, op, &ins, f)?;
            f.finish()?;
            self.by_name.insert(name.to_string(), out);
        }
        Ok(())
    }

    fn ty(&self, id: NodeId) -> &TensorType {
        &self.graph.node(id).ty
    }

    fn arity(f: &Fields, op: &str, ins: &[NodeId], n: usize) -> Result<()> {
        if ins.len() != n {
            return Err(f.error(
                "inputs",
                format!(
                    "{op} takes {n} input{}, got {}",
                    if n == 1 { "" } else { "s" },
                    ins.len()
                ),
            ));
        }
        Ok(())
    }

    /// Adds IR node `name` for the layer being lowered; errors name the layer,
    /// which is what the model file calls it.
    fn push(&mut self, name: &str, op: Op, inputs: Vec<NodeId>) -> Result<NodeId> {
        let layer = self.layer.clone();
        if !self.node_names.insert(name.to_string()) {
            return Err(GraphError::node(
                &layer,
                format!("internal node name '{name}' is taken: rename the node"),
            ));
        }
        let id = self
            .graph
            .push(name, op, inputs, None)
            .map_err(|e| match e {
                GraphError::Invalid { at, message } => GraphError::Invalid {
                    at: crate::error::Location {
                        node: Some(layer.clone()),
                        ..at
                    },
                    message,
                },
                e => e,
            })?;
        if checked_elems(&self.graph.node(id).ty.dims).is_none() {
            return Err(GraphError::node(
                &layer,
                "output tensor has more than 2^32 elements",
            ));
        }
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn param(
        &mut self,
        f: &Fields,
        layer: &str,
        tensor: &str,
        dims: Vec<usize>,
        default_init: Init,
        trainable: bool,
        fans: (usize, usize),
    ) -> Result<(ParamId, NodeId)> {
        if checked_elems(&dims).is_none() {
            return Err(f.error(
                tensor,
                format!("parameter {dims:?} has more than 2^32 elements"),
            ));
        }
        let init = match f.opt_object("init")? {
            Some(inits) => match inits.opt_object(tensor)? {
                Some(spec) => parse_init(&spec)?,
                None => default_init,
            },
            None => default_init,
        };
        let mult = |key: &str| -> Result<f32> {
            let Some(m) = f.opt_object(key)? else {
                return Ok(1.0);
            };
            match m.opt_f64(tensor)? {
                Some(x) if x < 0.0 => Err(m.error(tensor, format!("must be >= 0, got {x}"))),
                x => Ok(x.unwrap_or(1.0) as f32),
            }
        };
        let param = Param {
            name: format!("{layer}.{tensor}"),
            dims,
            init,
            trainable,
            lr_mult: mult("lr_mult")?,
            decay_mult: mult("decay_mult")?,
            fan_in: fans.0,
            fan_out: fans.1,
        };
        if !self.node_names.insert(param.name.clone()) {
            return Err(f.error(
                tensor,
                format!(
                    "internal node name '{}' is taken: rename the node",
                    param.name
                ),
            ));
        }
        let id = ParamId::from_index(self.graph.params.len());
        self.graph.params.push(param);
        Ok((id, self.graph.param_node(id)))
    }

    /// Checks that the init / lr_mult / decay_mult objects name only this layer's tensors.
    fn check_tensor_keys(f: &Fields, tensors: &[&str]) -> Result<()> {
        for key in ["init", "lr_mult", "decay_mult"] {
            if let Some(obj) = f.opt_object(key)? {
                for t in tensors {
                    obj.get(t);
                }
                obj.finish()?;
            }
        }
        Ok(())
    }

    /// Adds the IR nodes and parameters of layer `name` (`op` over the nodes
    /// `ins`) and returns the node holding its output.
    fn build_layer(&mut self, name: &str, op: &str, ins: &[NodeId], f: &Fields) -> Result<NodeId> {
        self.layer = name.to_string();
        let start = self.graph.params.len();
        let mut macs = 0u64;
        let out = match op {
            "conv2d" => {
                Self::arity(f, op, ins, 1)?;
                let Some((ci, _, _)) = self.ty(ins[0]).chw() else {
                    return Err(f.error(
                        "inputs",
                        format!(
                            "conv2d needs an image batch [N,C,H,W], got {}",
                            self.ty(ins[0])
                        ),
                    ));
                };
                let co = f.positive("out_channels")?;
                let attrs = Conv2dAttrs {
                    kernel: f.positive("kernel")?,
                    stride: f.opt_positive("stride")?.unwrap_or(1),
                    padding: f.opt_count("padding")?.unwrap_or(0),
                };
                let bias = f.opt_bool("bias")?.unwrap_or(true);
                let k2 = attrs.kernel.saturating_mul(attrs.kernel);
                let fans = (ci.saturating_mul(k2), co.saturating_mul(k2));
                let (_, w) = self.param(
                    f,
                    name,
                    "weight",
                    vec![co, ci, attrs.kernel, attrs.kernel],
                    Init::HeNormal { fan_out: false },
                    true,
                    fans,
                )?;
                let conv_name = if bias {
                    format!("{name}.conv")
                } else {
                    name.to_string()
                };
                let conv = self.push(&conv_name, Op::Conv2d(attrs), vec![ins[0], w])?;
                let (_, ho, wo) = self.ty(conv).chw().expect("conv output is an image");
                macs = (co * ho * wo) as u64 * (ci * k2) as u64; // bounded: weight and output passed the 2^32 check
                if bias {
                    let (_, b) =
                        self.param(f, name, "bias", vec![co], Init::UniformFanIn, true, fans)?;
                    self.push(name, Op::BiasAdd, vec![conv, b])?
                } else {
                    conv
                }
            }
            "linear" => {
                Self::arity(f, op, ins, 1)?;
                let in_f = match (self.ty(ins[0]).batched, self.ty(ins[0]).dims.as_slice()) {
                    (true, &[n]) if self.ty(ins[0]).dtype == DType::F32 => n,
                    _ => {
                        return Err(f.error(
                            "inputs",
                            format!(
                                "linear needs a matrix [N,F] (add a flatten node), got {}",
                                self.ty(ins[0])
                            ),
                        ))
                    }
                };
                let out_f = f.positive("out_features")?;
                let bias = f.opt_bool("bias")?.unwrap_or(true);
                let fans = (in_f, out_f);
                let (_, w) = self.param(
                    f,
                    name,
                    "weight",
                    vec![out_f, in_f],
                    Init::UniformFanIn,
                    true,
                    fans,
                )?;
                macs = (in_f * out_f) as u64;
                let lin_name = if bias {
                    format!("{name}.linear")
                } else {
                    name.to_string()
                };
                let lin = self.push(&lin_name, Op::Linear, vec![ins[0], w])?;
                if bias {
                    let (_, b) =
                        self.param(f, name, "bias", vec![out_f], Init::UniformFanIn, true, fans)?;
                    self.push(name, Op::BiasAdd, vec![lin, b])?
                } else {
                    lin
                }
            }
            "max_pool2d" | "avg_pool2d" => {
                Self::arity(f, op, ins, 1)?;
                let kernel = f.positive("kernel")?;
                let attrs = PoolAttrs {
                    kernel,
                    stride: f.opt_positive("stride")?.unwrap_or(kernel),
                    padding: f.opt_count("padding")?.unwrap_or(0),
                    ceil_mode: f.opt_bool("ceil_mode")?.unwrap_or(false),
                };
                let op = if op == "max_pool2d" {
                    Op::MaxPool2d(attrs)
                } else {
                    Op::AvgPool2d(attrs)
                };
                self.push(name, op, vec![ins[0]])?
            }
            "relu" => {
                Self::arity(f, op, ins, 1)?;
                self.push(name, Op::Relu, vec![ins[0]])?
            }
            "batch_norm" => {
                Self::arity(f, op, ins, 1)?;
                let Some((c, _, _)) = self.ty(ins[0]).chw() else {
                    return Err(f.error(
                        "inputs",
                        format!(
                            "batch_norm needs an image batch [N,C,H,W], got {}",
                            self.ty(ins[0])
                        ),
                    ));
                };
                let eps = f.opt_f64("eps")?.unwrap_or(1e-5);
                if eps <= 0.0 {
                    return Err(f.error("eps", format!("must be positive, got {eps}")));
                }
                let momentum = f.opt_f64("momentum")?.unwrap_or(0.1);
                if !(momentum > 0.0 && momentum <= 1.0) {
                    return Err(f.error("momentum", format!("must be in (0, 1], got {momentum}")));
                }
                let (_, gamma) = self.param(
                    f,
                    name,
                    "weight",
                    vec![c],
                    Init::Constant(1.0),
                    true,
                    (c, c),
                )?;
                let (_, beta) =
                    self.param(f, name, "bias", vec![c], Init::Constant(0.0), true, (c, c))?;
                let (rm, _) = self.param(
                    f,
                    name,
                    "running_mean",
                    vec![c],
                    Init::Constant(0.0),
                    false,
                    (c, c),
                )?;
                let (rv, _) = self.param(
                    f,
                    name,
                    "running_var",
                    vec![c],
                    Init::Constant(1.0),
                    false,
                    (c, c),
                )?;
                let mean = self.push(
                    &format!("{name}.mean"),
                    Op::BnMean {
                        running: rm,
                        momentum: momentum as f32,
                    },
                    vec![ins[0]],
                )?;
                let var = self.push(
                    &format!("{name}.var"),
                    Op::BnVar {
                        running: rv,
                        momentum: momentum as f32,
                    },
                    vec![ins[0], mean],
                )?;
                self.push(
                    name,
                    Op::BnApply { eps: eps as f32 },
                    vec![ins[0], mean, var, gamma, beta],
                )?
            }
            "add" => {
                Self::arity(f, op, ins, 2)?;
                self.push(name, Op::Add, vec![ins[0], ins[1]])?
            }
            "shortcut_a" => {
                Self::arity(f, op, ins, 1)?;
                let out_channels = f.positive("out_channels")?;
                let stride = f.opt_positive("stride")?.unwrap_or(2);
                self.push(
                    name,
                    Op::ShortcutA {
                        stride,
                        out_channels,
                    },
                    vec![ins[0]],
                )?
            }
            "global_avg_pool" => {
                Self::arity(f, op, ins, 1)?;
                self.push(name, Op::GlobalAvgPool, vec![ins[0]])?
            }
            "flatten" => {
                Self::arity(f, op, ins, 1)?;
                let n = self.ty(ins[0]).elems_per_item();
                self.push(name, Op::Reshape { dims: vec![n] }, vec![ins[0]])?
            }
            "dropout" => {
                Self::arity(f, op, ins, 1)?;
                let mode = match f.opt_str("mode")? {
                    None => None,
                    Some(m) => Some(DropoutMode::parse(m).ok_or_else(|| {
                        f.error("mode", format!("unknown dropout mode '{m}' (plain, standard, forward, backward, augmented)"))
                    })?),
                };
                let ratio = |key: &str| -> Result<Option<f64>> {
                    match f.get(key) {
                        None => Ok(None),
                        Some(v) => match v.as_f64() {
                            Some(p) if (0.0..1.0).contains(&p) => Ok(Some(p)),
                            _ => Err(
                                f.error(key, format!("dropout ratio must be in [0, 1), got {v}"))
                            ),
                        },
                    }
                };
                let over = SiteOverride {
                    mode,
                    fwd: ratio("fwd")?,
                    bwd: ratio("bwd")?,
                };
                let site = SiteId::from_index(self.graph.sites.len());
                self.graph.sites.push(Site {
                    name: name.to_string(),
                    over,
                });
                self.push(name, Op::Dropout(site), vec![ins[0]])?
            }
            "softmax_cross_entropy" => {
                Self::arity(f, op, ins, 2)?;
                let classes = match self.graph.node(ins[1]).op {
                    Op::Labels { classes } => classes,
                    _ => return Err(f.error("inputs", "the second input must be the label input")),
                };
                let logits = self.ty(ins[0]);
                if logits.dtype == DType::F32
                    && logits.batched
                    && logits.dims.len() == 1
                    && logits.dims[0] != classes
                {
                    return Err(f.error(
                        "inputs",
                        format!("logits {logits} do not match the label's {classes} classes"),
                    ));
                }
                self.push(name, Op::SoftmaxCrossEntropy, vec![ins[0], ins[1]])?
            }
            _ => unreachable!("op names are checked against LAYER_OPS"),
        };
        let tensors: Vec<String> = self.graph.params[start..]
            .iter()
            .map(|p| p.name.rsplit('.').next().unwrap_or_default().to_string())
            .collect();
        Self::check_tensor_keys(f, &tensors.iter().map(String::as_str).collect::<Vec<_>>())?;
        self.graph.layers.push(Layer {
            name: name.to_string(),
            op: op.to_string(),
            params: (start..self.graph.params.len())
                .map(ParamId::from_index)
                .collect(),
            output: out,
            macs,
        });
        Ok(out)
    }

    fn outputs(&mut self, top: &Fields) -> Result<()> {
        let outs = top.opt_object("outputs")?.ok_or_else(|| {
            top.error("outputs", "missing required field (needs loss and logits)")
        })?;
        for key in ["loss", "logits"] {
            let name = outs.opt_str(key)?.ok_or_else(|| {
                outs.error(
                    key,
                    format!("no {key} output: name the node that computes it"),
                )
            })?;
            let id = *self
                .by_name
                .get(name)
                .ok_or_else(|| outs.error(key, format!("unknown node '{name}'")))?;
            let node = self.graph.node(id);
            let layer_op = self
                .graph
                .layers
                .iter()
                .find(|l| l.name == name)
                .map_or("input", |l| l.op.as_str());
            match key {
                "loss" if node.op != Op::SoftmaxCrossEntropy => {
                    return Err(outs.error(
                        key,
                        format!("'{name}' is a {layer_op}, not a softmax_cross_entropy"),
                    ))
                }
                "logits" if !(node.ty.batched && node.ty.dims.len() == 1) => {
                    return Err(outs.error(
                        key,
                        format!("'{name}' is {}, not a matrix [N, classes]", node.ty),
                    ))
                }
                _ => {}
            }
            self.graph.outputs.push((key.to_string(), id));
        }
        outs.finish()?;
        let classes = self.graph.classes().unwrap_or(0);
        let logits = self.graph.output("logits").expect("set above");
        if self.graph.node(logits).ty.dims != [classes] {
            return Err(GraphError::field(
                None,
                "outputs.logits",
                format!(
                    "logits {} do not match the label's {classes} classes",
                    self.graph.node(logits).ty
                ),
            ));
        }
        Ok(())
    }
}

fn parse_init(f: &Fields) -> Result<Init> {
    let init = match f.str("kind")? {
        "constant" => Init::Constant(f.f64("value")? as f32),
        "gaussian" => {
            let std = f.f64("std")?;
            if std < 0.0 {
                return Err(f.error("std", format!("must be >= 0, got {std}")));
            }
            Init::Gaussian { std: std as f32 }
        }
        "he_normal" => match f.opt_str("mode")?.unwrap_or("fan_in") {
            "fan_in" => Init::HeNormal { fan_out: false },
            "fan_out" => Init::HeNormal { fan_out: true },
            other => {
                return Err(f.error("mode", format!("unknown mode '{other}' (fan_in, fan_out)")))
            }
        },
        "uniform_fan_in" => Init::UniformFanIn,
        other => {
            return Err(f.error(
                "kind",
                format!("unknown init '{other}' (constant, gaussian, he_normal, uniform_fan_in)"),
            ))
        }
    };
    f.finish()?;
    Ok(init)
}

/// Rough bytes of a training step at the recipe's batch size: every batched
/// value about three times (forward value, its gradient, a saved copy) plus
/// parameters, gradients and momentum.
pub fn training_bytes_estimate(g: &Graph, batch: usize) -> u128 {
    let acts: u128 = g
        .nodes
        .iter()
        .filter(|n| n.ty.batched)
        .map(|n| n.ty.elems_per_item() as u128)
        .sum();
    let params: u128 = g.params.iter().map(|p| p.elems() as u128).sum();
    4 * (3 * acts * batch as u128 + 3 * params)
}

/// Checks that every tensor of `g` at `batch` fits the memory limit on its
/// own, so that no size computed from it later can overflow. Every place that
/// picks a batch (load at the recipe's, the compiler, the interpreter) calls
/// it before anything else, so `--batch` cannot slip past the limit.
pub fn check_tensor_sizes(g: &Graph, batch: usize) -> Result<()> {
    let limit = g.memory_limit_bytes as u128;
    for n in &g.nodes {
        let per_item =
            n.ty.dims
                .iter()
                .try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let bytes = per_item
            .and_then(|e| e.checked_mul(if n.ty.batched { batch as u128 } else { 1 }))
            .and_then(|e| e.checked_mul(4));
        if bytes.is_none_or(|b| b > limit) {
            return Err(GraphError::node(
                &n.name,
                format!(
                    "{} at batch {batch} alone exceeds the memory limit of {:.2} GiB",
                    n.ty,
                    limit as f64 / (1u64 << 30) as f64
                ),
            ));
        }
    }
    Ok(())
}

/// [`check_tensor_sizes`], then the estimate of a training step on the
/// forward graph `g` at `batch` against the limit.
pub fn check_memory_at(g: &Graph, batch: usize) -> Result<()> {
    check_tensor_sizes(g, batch)?;
    let limit = g.memory_limit_bytes as u128;
    let need = training_bytes_estimate(g, batch);
    if need > limit {
        let biggest = g
            .nodes
            .iter()
            .filter(|n| n.ty.batched)
            .fold(None, |best: Option<&crate::graph::Node>, n| match best {
                Some(b) if b.ty.elems_per_item() >= n.ty.elems_per_item() => Some(b),
                _ => Some(n),
            })
            .map(|n| format!(" (largest: node '{}' {})", n.name, n.ty))
            .unwrap_or_default();
        return Err(GraphError::graph(format!(
            "training buffers would need about {:.2} GiB at batch {batch}, over the memory limit of {:.2} GiB{biggest}",
            need as f64 / (1u64 << 30) as f64,
            limit as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}
