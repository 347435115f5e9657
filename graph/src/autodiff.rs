//! Reverse-mode autodiff as a graph transform: forward graph in, forward +
//! backward graph out, with a gradient output `grad:<param>` for every
//! trainable parameter. Dropout sites become their forward mask `F`, and the
//! backward pass sees their backward mask `B` (two rules, see [`Autodiff::saved`]
//! and the `Dropout` arm of [`Autodiff::rule`]).
//!
//! Rule 2 (the backward pass reads `B ⊙ x` where the forward pass computed
//! `F ⊙ x`) is carried through the parameter-free ops after a site up to and
//! including the first layer with parameters, so `dropout -> pool -> conv` and
//! `dropout -> flatten -> linear` follow the paper's equations like
//! `dropout -> conv` does.

use std::collections::HashMap;

use crate::dropout::{resolve_sites, DropoutConfig, SiteMasks};
use crate::error::{GraphError, Result};
use crate::graph::Graph;
use crate::ids::NodeId;
use crate::op::{MaskSpec, Op};

/// Output name of a parameter's gradient in a backward graph.
pub fn grad_output(param: &str) -> String {
    format!("grad:{param}")
}

/// Builds the backward graph of `fwd` under the dropout setting `cfg`.
pub fn backward(fwd: &Graph, cfg: &DropoutConfig) -> Result<Graph> {
    let masks = resolve_sites(fwd, cfg)?;
    let mut ad = Autodiff {
        fwd,
        g: fwd.empty_like(),
        map: Vec::with_capacity(fwd.nodes.len()),
        substituted: substituted(fwd, &masks),
        masks,
        saved_cache: HashMap::new(),
    };
    ad.copy_forward()?;
    let loss = fwd
        .output("loss")
        .ok_or_else(|| GraphError::graph("no loss output to differentiate"))?;
    let needs = needs_grad(fwd);
    let mut grads: Vec<Option<NodeId>> = vec![None; fwd.nodes.len()];
    for id in fwd.ids().rev() {
        if !needs[id.index()] {
            continue;
        }
        let dy = grads[id.index()];
        if dy.is_none() && id != loss {
            continue;
        }
        for (input, d) in ad.rule(id, dy)? {
            if !needs[input.index()] {
                continue;
            }
            grads[input.index()] = Some(match grads[input.index()] {
                None => d,
                // Fan-out: a value read twice gets the sum of both gradients.
                Some(prev) => {
                    let name = format!("{}.grad_sum", fwd.node(input).name);
                    let origin = Some(fwd.node(input).name.clone());
                    ad.g.push(name, Op::Add, vec![prev, d], origin)?
                }
            });
        }
    }
    let mut g = ad.g;
    g.layers = fwd.layers.clone();
    for (name, id) in &fwd.outputs {
        g.outputs.push((name.clone(), ad.map[id.index()]));
    }
    for id in fwd.ids() {
        if let Op::Param(p) = fwd.node(id).op {
            if fwd.param(p).trainable {
                let grad = grads[id.index()].ok_or_else(|| {
                    GraphError::node(
                        &fwd.node(id).name,
                        "trainable parameter does not affect the loss",
                    )
                })?;
                g.outputs.push((grad_output(&fwd.param(p).name), grad));
            }
        }
    }
    // Layer outputs must point into the new graph.
    for l in &mut g.layers {
        l.output = ad.map[l.output.index()];
    }
    Ok(crate::dce::eliminate_dead(&g))
}

/// Which forward values need a gradient: those depending on a trainable
/// parameter. Batch statistics are excluded: BatchNorm's composite rule
/// differentiates through them in one step.
fn needs_grad(g: &Graph) -> Vec<bool> {
    let mut needs = vec![false; g.nodes.len()];
    for id in g.ids() {
        let n = g.node(id);
        needs[id.index()] = match n.op {
            Op::Param(p) => g.param(p).trainable,
            Op::Image | Op::Labels { .. } | Op::BnMean { .. } | Op::BnVar { .. } => false,
            _ => n.inputs.iter().any(|i| needs[i.index()]),
        };
    }
    needs
}

/// Which forward values the backward pass reads in substituted form: dropout
/// sites whose `B` differs from `F`, and the parameter-free ops that read a
/// substituted value. A layer with parameters (and the loss's inputs beyond
/// it) ends the substitution: its output is read as computed.
fn substituted(g: &Graph, masks: &[SiteMasks]) -> Vec<bool> {
    let mut sub = vec![false; g.nodes.len()];
    for id in g.ids() {
        let n = g.node(id);
        let any_input = || n.inputs.iter().any(|i| sub[i.index()]);
        sub[id.index()] = match n.op {
            Op::Dropout(site) => {
                let m = &masks[site.index()];
                m.forward != m.backward || any_input()
            }
            _ if is_parameter_free(&n.op) => any_input(),
            _ => false,
        };
    }
    sub
}

/// Ops without parameters whose value the substitution passes through. Every
/// other op with a tensor result has parameters (convolution, linear, bias,
/// batch norm) or is the loss.
fn is_parameter_free(op: &Op) -> bool {
    matches!(
        op,
        Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::Relu
            | Op::Add
            | Op::ShortcutA { .. }
            | Op::GlobalAvgPool
            | Op::Reshape { .. }
    )
}

struct Autodiff<'a> {
    fwd: &'a Graph,
    g: Graph,
    /// Forward node -> the node holding its value in the new graph.
    map: Vec<NodeId>,
    masks: Vec<SiteMasks>,
    /// Per forward node: does the backward pass read it substituted?
    substituted: Vec<bool>,
    saved_cache: HashMap<NodeId, NodeId>,
}

impl Autodiff<'_> {
    /// Copies the forward graph; a dropout site becomes `F ⊙ x`, or `x` when `F = 1`.
    fn copy_forward(&mut self) -> Result<()> {
        for id in self.fwd.ids() {
            let n = self.fwd.node(id);
            let inputs: Vec<NodeId> = n.inputs.iter().map(|i| self.map[i.index()]).collect();
            let new = match &n.op {
                Op::Dropout(site) => match &self.masks[site.index()].forward {
                    Some(spec) => self.g.push(&n.name, Op::Mask(spec.clone()), inputs, None)?,
                    None => inputs[0],
                },
                op => {
                    if op.arity() == 0 {
                        self.g
                            .push_typed(&n.name, op.clone(), vec![], n.ty.clone(), None)?
                    } else {
                        self.g.push(&n.name, op.clone(), inputs, n.origin.clone())?
                    }
                }
            };
            self.map.push(new);
        }
        Ok(())
    }

    fn v(&self, id: NodeId) -> NodeId {
        self.map[id.index()]
    }

    /// A forward value as the backward pass reads it (rule 2 of the contract).
    /// For a dropout output `y = F ⊙ x` this is `B ⊙ x`: backward dropout masks
    /// the features in `dW`, forward dropout leaves them unmasked. A
    /// parameter-free op after a site is recomputed on its inputs' substituted
    /// values (built here, next to the gradient that reads it); every other
    /// value is read as the forward pass computed it.
    fn saved(&mut self, id: NodeId) -> Result<NodeId> {
        if !self.substituted[id.index()] {
            return Ok(self.v(id));
        }
        if let Some(&s) = self.saved_cache.get(&id) {
            return Ok(s);
        }
        let n = self.fwd.node(id).clone();
        let inputs = n
            .inputs
            .iter()
            .map(|&i| self.saved(i))
            .collect::<Result<Vec<_>>>()?;
        let name = format!("{}.saved", n.name);
        let s = match &n.op {
            Op::Dropout(site) => match self.masks[site.index()].backward.clone() {
                Some(spec) => self.mask(&name, spec, inputs[0], &n.name)?,
                None => inputs[0],
            },
            op => self
                .g
                .push(name, op.clone(), inputs, Some(n.name.clone()))?,
        };
        self.saved_cache.insert(id, s);
        Ok(s)
    }

    /// Batch mean and variance of `x` as the backward pass reads it: the
    /// forward statistics, or those of the substituted input. The latter feed
    /// no running-statistics update (the step updates from the forward pass).
    fn saved_bn_stats(&mut self, id: NodeId) -> Result<(NodeId, NodeId)> {
        let n = self.fwd.node(id);
        let (x, mean, var) = (n.inputs[0], n.inputs[1], n.inputs[2]);
        if !self.substituted[x.index()] {
            return Ok((self.v(mean), self.v(var)));
        }
        let (mean_op, var_op) = (
            self.fwd.node(mean).op.clone(),
            self.fwd.node(var).op.clone(),
        );
        let (mean_name, var_name) = (
            format!("{}.saved", self.fwd.node(mean).name),
            format!("{}.saved", self.fwd.node(var).name),
        );
        let origin = Some(n.name.clone());
        let xs = self.saved(x)?;
        let m = self.g.push(mean_name, mean_op, vec![xs], origin.clone())?;
        let v = self.g.push(var_name, var_op, vec![xs, m], origin)?;
        Ok((m, v))
    }

    fn mask(&mut self, name: &str, spec: MaskSpec, x: NodeId, origin: &str) -> Result<NodeId> {
        self.g
            .push(name, Op::Mask(spec), vec![x], Some(origin.to_string()))
    }

    fn push(&mut self, id: NodeId, suffix: &str, op: Op, inputs: Vec<NodeId>) -> Result<NodeId> {
        let name = &self.fwd.node(id).name;
        self.g
            .push(format!("{name}.{suffix}"), op, inputs, Some(name.clone()))
    }

    /// The vector-Jacobian product of node `id`: given `dy` (None only for the
    /// loss, whose seed is 1), the gradient contribution to each input.
    fn rule(&mut self, id: NodeId, dy: Option<NodeId>) -> Result<Vec<(NodeId, NodeId)>> {
        let n = self.fwd.node(id).clone();
        let ins = &n.inputs;
        let dy_or_err = |dy: Option<NodeId>| {
            dy.ok_or_else(|| GraphError::node(&n.name, "only the loss may be the gradient seed"))
        };
        let ty = |i: usize| self.fwd.node(ins[i]).ty.clone();
        Ok(match &n.op {
            Op::Image | Op::Labels { .. } | Op::Param(_) => vec![],
            // loss = mean_n -log softmax(z_n)[t_n]   dz = (softmax(z) - onehot(t)) / N
            Op::SoftmaxCrossEntropy => {
                let (z, t) = (self.saved(ins[0])?, self.v(ins[1]));
                vec![(
                    ins[0],
                    self.push(id, "grad_logits", Op::SoftmaxCrossEntropyGrad, vec![z, t])?,
                )]
            }
            // y = x ⋆ w   dx = dy ⋆ᵀ w (full correlation)   dw = dy ⋆ x
            Op::Conv2d(a) => {
                let dy = dy_or_err(dy)?;
                let (_, in_h, in_w) = ty(0).chw().expect("conv input is an image");
                let w = self.v(ins[1]);
                let x = self.saved(ins[0])?;
                let dx = self.push(
                    id,
                    "grad_input",
                    Op::Conv2dGradInput {
                        conv: *a,
                        in_h,
                        in_w,
                    },
                    vec![dy, w],
                )?;
                let dw = self.push(id, "grad_weight", Op::Conv2dGradWeight(*a), vec![dy, x])?;
                vec![(ins[0], dx), (ins[1], dw)]
            }
            // y = x + b[c]   dx = dy   db[c] = Σ_{n,h,w} dy
            Op::BiasAdd => {
                let dy = dy_or_err(dy)?;
                let db = self.push(id, "grad_bias", Op::BiasGrad, vec![dy])?;
                vec![(ins[0], dy), (ins[1], db)]
            }
            // y = x wᵀ   dx = dy w   dw = dyᵀ x
            Op::Linear => {
                let dy = dy_or_err(dy)?;
                let w = self.v(ins[1]);
                let x = self.saved(ins[0])?;
                let dx = self.push(id, "grad_input", Op::LinearGradInput, vec![dy, w])?;
                let dw = self.push(id, "grad_weight", Op::LinearGradWeight, vec![dy, x])?;
                vec![(ins[0], dx), (ins[1], dw)]
            }
            // y = max over window   dx[argmax] += dy
            Op::MaxPool2d(a) => {
                let dy = dy_or_err(dy)?;
                let x = self.saved(ins[0])?;
                vec![(
                    ins[0],
                    self.push(id, "grad_input", Op::MaxPool2dGrad(*a), vec![dy, x])?,
                )]
            }
            // y = Σ window / |window|   dx[i] += dy / |window| for each window holding i
            Op::AvgPool2d(a) => {
                let dy = dy_or_err(dy)?;
                let (_, in_h, in_w) = ty(0).chw().expect("pool input is an image");
                let op = Op::AvgPool2dGrad {
                    pool: *a,
                    in_h,
                    in_w,
                };
                vec![(ins[0], self.push(id, "grad_input", op, vec![dy])?)]
            }
            // y = max(x, 0)   dx = dy · [y > 0]
            Op::Relu => {
                let dy = dy_or_err(dy)?;
                let y = self.saved(id)?;
                vec![(
                    ins[0],
                    self.push(id, "grad_input", Op::ReluGrad, vec![dy, y])?,
                )]
            }
            // Batch statistics are differentiated by BnApply's composite rule.
            Op::BnMean { .. } | Op::BnVar { .. } => vec![],
            // y = γ x̂ + β, x̂ = (x - μ)/σ with batch μ, σ² over M = N·H·W values:
            // dx = γ/σ · (dy - mean(dy) - x̂ · mean(dy · x̂))   dγ = Σ dy x̂   dβ = Σ dy
            Op::BnApply { eps } => {
                let dy = dy_or_err(dy)?;
                let (mean, var) = (ins[1], ins[2]);
                let stats_ok = matches!(self.fwd.node(mean).op, Op::BnMean { .. })
                    && self.fwd.node(mean).inputs == [ins[0]]
                    && matches!(self.fwd.node(var).op, Op::BnVar { .. })
                    && self.fwd.node(var).inputs == [ins[0], mean];
                if !stats_ok {
                    return Err(GraphError::node(
                        &n.name,
                        "bn_apply in training must use bn_mean and bn_var of its own input",
                    ));
                }
                // Differentiated at the substituted input, with its own statistics.
                let x = self.saved(ins[0])?;
                let (m, v) = self.saved_bn_stats(id)?;
                let gamma = self.v(ins[3]);
                let dx = self.push(
                    id,
                    "grad_input",
                    Op::BnGradInput { eps: *eps },
                    vec![dy, x, m, v, gamma],
                )?;
                let dg = self.push(
                    id,
                    "grad_weight",
                    Op::BnGradGamma { eps: *eps },
                    vec![dy, x, m, v],
                )?;
                let db = self.push(id, "grad_bias", Op::BiasGrad, vec![dy])?;
                vec![(ins[0], dx), (ins[3], dg), (ins[4], db)]
            }
            // y = a + b   da = dy   db = dy
            Op::Add => {
                let dy = dy_or_err(dy)?;
                vec![(ins[0], dy), (ins[1], dy)]
            }
            // y = pad_c(x[::s, ::s])   dx[::s, ::s] = dy[channels of x], 0 elsewhere
            Op::ShortcutA { stride, .. } => {
                let dy = dy_or_err(dy)?;
                let (in_channels, in_h, in_w) = ty(0).chw().expect("shortcut input is an image");
                let op = Op::ShortcutAGrad {
                    stride: *stride,
                    in_channels,
                    in_h,
                    in_w,
                };
                vec![(ins[0], self.push(id, "grad_input", op, vec![dy])?)]
            }
            // y[n,c] = mean_{h,w} x   dx = dy / (H·W) everywhere
            Op::GlobalAvgPool => {
                let dy = dy_or_err(dy)?;
                let (_, h, w) = ty(0).chw().expect("pool input is an image");
                vec![(
                    ins[0],
                    self.push(id, "grad_input", Op::GlobalAvgPoolGrad { h, w }, vec![dy])?,
                )]
            }
            // y = reshape(x)   dx = reshape⁻¹(dy)
            Op::Reshape { .. } => {
                let dy = dy_or_err(dy)?;
                let op = Op::Reshape { dims: ty(0).dims };
                vec![(ins[0], self.push(id, "grad_input", op, vec![dy])?)]
            }
            // y = F ⊙ x   dx = B ⊙ dy (rule 1 of the contract)
            Op::Dropout(site) => {
                let dy = dy_or_err(dy)?;
                let dx = match self.masks[site.index()].backward.clone() {
                    Some(spec) => {
                        self.mask(&format!("{}.grad_input", n.name), spec, dy, &n.name)?
                    }
                    None => dy,
                };
                vec![(ins[0], dx)]
            }
            op => {
                return Err(GraphError::node(
                    &n.name,
                    format!(
                        "{} belongs to a derived graph and has no gradient rule",
                        op.name()
                    ),
                ))
            }
        })
    }
}
