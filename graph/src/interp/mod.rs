//! The reference interpreter: executes any graph (forward, backward, training
//! step, evaluation) node by node with the naive kernels of `kernels`. It is the
//! oracle the JIT is tested against, and it shares nothing with the JIT but the
//! graph and the mask function.

mod kernels;
mod real;

pub use kernels::{
    avg_pool, avg_pool_grad, conv2d, conv2d_grad_input, conv2d_grad_weight, window, Nchw,
};
pub use real::Real;

use crate::error::{GraphError, Result};
use crate::graph::Graph;
use crate::ids::{NodeId, ParamId};
use crate::op::kept_by_all;
use crate::op::Op;
use kernels::{channel_of, channel_sum};

/// Parameters and optimiser state, by `ParamId`.
#[derive(Clone, Debug, PartialEq)]
pub struct State<T> {
    pub params: Vec<Vec<T>>,
    /// SGD momentum buffers (empty vectors for non-trainable tensors).
    pub momentum: Vec<Vec<T>>,
}

impl<T: Real> State<T> {
    pub fn new(g: &Graph, params: &[Vec<f32>]) -> Self {
        State {
            params: params
                .iter()
                .map(|p| p.iter().map(|&v| T::of(v as f64)).collect())
                .collect(),
            momentum: g
                .params
                .iter()
                .map(|p| {
                    if p.trainable {
                        vec![T::ZERO; p.elems()]
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
        }
    }
}

/// What one execution reads besides the state.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a, T> {
    /// `[N, C, H, W]` images, flat.
    pub images: &'a [T],
    pub labels: &'a [u32],
    pub batch: usize,
    /// Run seed and step number: the dropout masks are a function of them.
    pub seed: u64,
    pub step: u64,
    /// Learning rate of this step (read by `sgd_update` only).
    pub lr: f64,
}

/// Every node's value after a run (`None` for effect nodes).
pub struct Values<T> {
    pub values: Vec<Option<Vec<T>>>,
}

impl<T: Real> Values<T> {
    pub fn get(&self, id: NodeId) -> &[T] {
        self.values[id.index()].as_deref().unwrap_or(&[])
    }

    pub fn output(&self, g: &Graph, name: &str) -> Option<&[T]> {
        g.output(name).map(|id| self.get(id))
    }
}

fn nchw(g: &Graph, id: NodeId, n: usize) -> Nchw {
    let (c, h, w) = g
        .node(id)
        .ty
        .chw()
        .expect("shape rules guarantee an image here");
    Nchw { n, c, h, w }
}

/// Runs `g` once; effect nodes update `state` in place.
pub fn run<T: Real>(g: &Graph, state: &mut State<T>, inp: &Inputs<T>) -> Result<Values<T>> {
    run_observed(g, state, inp, &mut |_, _| {})
}

/// [`run`], handing each node's value to `observe` as soon as it is computed
/// and before any later node reads it: the caller may inspect it or replace it
/// (teacher forcing, to compare another executor node by node). Effect nodes
/// have no value and are not observed; their updates show in `state`.
pub fn run_observed<T: Real>(
    g: &Graph,
    state: &mut State<T>,
    inp: &Inputs<T>,
    observe: &mut dyn FnMut(NodeId, &mut Vec<T>),
) -> Result<Values<T>> {
    run_core(g, state, inp, observe, None)
}

/// [`run`] again after a change that only the nodes marked in `stale` see
/// (for a changed parameter: its `param` node and everything downstream of
/// it): those are recomputed, every other node's value is read from `base`,
/// an earlier run of `g` with the same inputs, and left out of the result
/// (`get` gives an empty slice). Effect nodes outside `stale` do not run. The
/// recomputed values are bit for bit what [`run`] would give.
pub fn rerun<T: Real>(
    g: &Graph,
    state: &mut State<T>,
    inp: &Inputs<T>,
    base: &Values<T>,
    stale: &[bool],
) -> Result<Values<T>> {
    if base.values.len() != g.nodes.len() || stale.len() != g.nodes.len() {
        return Err(GraphError::graph("rerun: base values of another graph"));
    }
    run_core(g, state, inp, &mut |_, _| {}, Some((base, stale)))
}

fn run_core<T: Real>(
    g: &Graph,
    state: &mut State<T>,
    inp: &Inputs<T>,
    observe: &mut dyn FnMut(NodeId, &mut Vec<T>),
    base: Option<(&Values<T>, &[bool])>,
) -> Result<Values<T>> {
    let n = inp.batch;
    check_inputs(g, state, inp)?;
    check_interpreter_memory::<T>(g, n)?;
    let mut values: Vec<Option<Vec<T>>> = Vec::with_capacity(g.nodes.len());
    for id in g.ids() {
        if base.is_some_and(|(_, stale)| !stale[id.index()]) {
            values.push(None);
            continue;
        }
        let node = g.node(id);
        let x = |i: usize| -> &[T] {
            let i = node.inputs[i].index();
            values[i]
                .as_deref()
                .or_else(|| base.and_then(|(b, _)| b.values[i].as_deref()))
                .unwrap_or(&[])
        };
        let xs = |i: usize| nchw(g, node.inputs[i], n);
        let ys = || nchw(g, id, n);
        let mut out: Option<Vec<T>> = match &node.op {
            Op::Image => Some(inp.images.to_vec()),
            Op::Labels { .. } => Some(inp.labels.iter().map(|&l| T::of(l as f64)).collect()),
            Op::Param(p) => Some(state.params[p.index()].clone()),
            Op::Conv2d(a) => Some(kernels::conv2d(x(0), xs(0), x(1), ys(), a)),
            Op::Conv2dGradInput { conv, .. } => {
                Some(kernels::conv2d_grad_input(x(0), xs(0), x(1), ys(), conv))
            }
            Op::Conv2dGradWeight(a) => {
                Some(kernels::conv2d_grad_weight(x(0), xs(0), x(1), xs(1), a))
            }
            Op::BiasAdd => {
                let (c, inner) = channel_layout(g, id);
                Some(
                    x(0).iter()
                        .enumerate()
                        .map(|(e, &v)| v + x(1)[channel_of(e, c, inner)])
                        .collect(),
                )
            }
            Op::BiasGrad => {
                let (c, _) = channel_layout(g, node.inputs[0]);
                Some(channel_sum(x(0).len(), n, c, |e| x(0)[e]))
            }
            Op::Linear => {
                let (xi, wo) = (g.node(node.inputs[0]).ty.dims[0], g.node(id).ty.dims[0]);
                Some(matmul_nt(x(0), x(1), n, xi, wo))
            }
            Op::LinearGradInput => {
                // dx[n,i] = Σ_o dy[n,o] w[o,i]
                let (o, i) = (g.node(node.inputs[0]).ty.dims[0], g.node(id).ty.dims[0]);
                let mut dx = vec![T::ZERO; n * i];
                for b in 0..n {
                    for k in 0..o {
                        for j in 0..i {
                            dx[b * i + j] += x(0)[b * o + k] * x(1)[k * i + j];
                        }
                    }
                }
                Some(dx)
            }
            Op::LinearGradWeight => {
                // dw[o,i] = Σ_n dy[n,o] x[n,i]
                let (o, i) = (
                    g.node(node.inputs[0]).ty.dims[0],
                    g.node(node.inputs[1]).ty.dims[0],
                );
                let mut dw = vec![T::ZERO; o * i];
                for b in 0..n {
                    for k in 0..o {
                        for j in 0..i {
                            dw[k * i + j] += x(0)[b * o + k] * x(1)[b * i + j];
                        }
                    }
                }
                Some(dw)
            }
            Op::MaxPool2d(a) => Some(kernels::max_pool(x(0), xs(0), ys(), a)),
            Op::AvgPool2d(a) => Some(kernels::avg_pool(x(0), xs(0), ys(), a)),
            Op::MaxPool2dGrad(a) => Some(kernels::max_pool_grad(x(0), x(1), xs(1), xs(0), a)),
            Op::AvgPool2dGrad { pool, .. } => Some(kernels::avg_pool_grad(x(0), ys(), xs(0), pool)),
            Op::Relu => Some(
                x(0).iter()
                    .map(|&v| if v > T::ZERO { v } else { T::ZERO })
                    .collect(),
            ),
            Op::ReluGrad => Some(
                x(0).iter()
                    .zip(x(1))
                    .map(|(&d, &y)| if y > T::ZERO { d } else { T::ZERO })
                    .collect(),
            ),
            Op::BnMean { .. } => {
                let (c, inner) = channel_layout(g, node.inputs[0]);
                let m = T::of((n * inner) as f64);
                Some(
                    channel_sum(x(0).len(), n, c, |e| x(0)[e])
                        .into_iter()
                        .map(|s| s / m)
                        .collect(),
                )
            }
            Op::BnVar { .. } => {
                let (c, inner) = channel_layout(g, node.inputs[0]);
                let m = T::of((n * inner) as f64);
                let mean = x(1);
                let s = channel_sum(x(0).len(), n, c, |e| {
                    let d = x(0)[e] - mean[channel_of(e, c, inner)];
                    d * d
                });
                Some(s.into_iter().map(|s| s / m).collect())
            }
            Op::BnApply { eps } => {
                let (c, inner) = channel_layout(g, id);
                let (mean, var, gamma, beta) = (x(1), x(2), x(3), x(4));
                let eps = T::of(*eps as f64);
                Some(
                    x(0).iter()
                        .enumerate()
                        .map(|(e, &v)| {
                            let ch = channel_of(e, c, inner);
                            gamma[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + beta[ch]
                        })
                        .collect(),
                )
            }
            Op::BnGradInput { eps } | Op::BnGradGamma { eps } => {
                let (c, inner) = channel_layout(g, node.inputs[0]);
                let (dy, xv, mean, var) = (x(0), x(1), x(2), x(3));
                let eps = T::of(*eps as f64);
                let inv: Vec<T> = var.iter().map(|&v| T::ONE / (v + eps).sqrt()).collect();
                let xhat = |e: usize| {
                    let ch = channel_of(e, c, inner);
                    (xv[e] - mean[ch]) * inv[ch]
                };
                let sum_dy_xhat = channel_sum(dy.len(), n, c, |e| dy[e] * xhat(e));
                if matches!(node.op, Op::BnGradGamma { .. }) {
                    Some(sum_dy_xhat)
                } else {
                    let sum_dy = channel_sum(dy.len(), n, c, |e| dy[e]);
                    let m = T::of((n * inner) as f64);
                    let gamma = x(4);
                    Some(
                        (0..dy.len())
                            .map(|e| {
                                let ch = channel_of(e, c, inner);
                                gamma[ch]
                                    * inv[ch]
                                    * (dy[e] - sum_dy[ch] / m - xhat(e) * sum_dy_xhat[ch] / m)
                            })
                            .collect(),
                    )
                }
            }
            Op::Add => Some(x(0).iter().zip(x(1)).map(|(&a, &b)| a + b).collect()),
            Op::ShortcutA { stride, .. } => {
                let (i, o) = (xs(0), ys());
                let pad = (o.c - i.c) / 2;
                let mut y = vec![T::ZERO; o.len()];
                for b in 0..n {
                    for c in 0..i.c {
                        for h in 0..o.h {
                            for w in 0..o.w {
                                y[o.at(b, c + pad, h, w)] =
                                    x(0)[i.at(b, c, h * stride, w * stride)];
                            }
                        }
                    }
                }
                Some(y)
            }
            Op::ShortcutAGrad { stride, .. } => {
                let (o, i) = (xs(0), ys());
                let pad = (o.c - i.c) / 2;
                let mut dx = vec![T::ZERO; i.len()];
                for b in 0..n {
                    for c in 0..i.c {
                        for h in 0..o.h {
                            for w in 0..o.w {
                                dx[i.at(b, c, h * stride, w * stride)] =
                                    x(0)[o.at(b, c + pad, h, w)];
                            }
                        }
                    }
                }
                Some(dx)
            }
            Op::GlobalAvgPool => {
                let i = xs(0);
                let hw = i.h * i.w;
                Some(
                    (0..n * i.c)
                        .map(|nc| {
                            let mut acc = T::ZERO;
                            for k in 0..hw {
                                acc += x(0)[nc * hw + k];
                            }
                            acc / T::of(hw as f64)
                        })
                        .collect(),
                )
            }
            Op::GlobalAvgPoolGrad { h, w } => {
                let hw = h * w;
                Some(
                    (0..x(0).len() * hw)
                        .map(|e| x(0)[e / hw] / T::of(hw as f64))
                        .collect(),
                )
            }
            Op::Reshape { .. } => Some(x(0).to_vec()),
            Op::Dropout(_) => return Err(GraphError::node(
                &node.name,
                "a raw dropout site cannot run: build the backward, step or evaluation graph first",
            )),
            Op::Mask(spec) => {
                let keys = spec.keys(inp.seed, inp.step);
                let scale = T::of(spec.scale());
                Some(
                    x(0).iter()
                        .enumerate()
                        .map(|(e, &v)| {
                            if kept_by_all(&keys, e as u32) {
                                v * scale
                            } else {
                                T::ZERO
                            }
                        })
                        .collect(),
                )
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                let k = g.node(node.inputs[0]).ty.dims[0];
                let z = x(0);
                let mut loss = T::ZERO;
                let mut grad = vec![T::ZERO; n * k];
                for b in 0..n {
                    let row = &z[b * k..(b + 1) * k];
                    let t = inp.labels[b] as usize;
                    let mut max = row[0];
                    for &v in row {
                        if v > max {
                            max = v;
                        }
                    }
                    let mut sum = T::ZERO;
                    for &v in row {
                        sum += (v - max).exp();
                    }
                    loss += sum.ln() + max - row[t];
                    for j in 0..k {
                        let p = (row[j] - max).exp() / sum;
                        let onehot = if j == t { T::ONE } else { T::ZERO };
                        grad[b * k + j] = (p - onehot) / T::of(n as f64);
                    }
                }
                if node.op == Op::SoftmaxCrossEntropy {
                    Some(vec![loss / T::of(n as f64)])
                } else {
                    Some(grad)
                }
            }
            Op::SgdUpdate {
                param,
                lr_mult,
                weight_decay,
                momentum,
            } => {
                sgd(
                    state,
                    *param,
                    x(0),
                    inp.lr * *lr_mult as f64,
                    *weight_decay,
                    *momentum,
                );
                None
            }
            Op::BnRunningUpdate {
                running,
                momentum,
                unbiased,
            } => {
                let src = g.node(node.inputs[0]);
                // M = N·H·W values per channel: the input of the statistic.
                let stat_input = src.inputs[0];
                let m = n * g.node(stat_input).ty.elems_per_item() / src.ty.dims[0];
                let correction = if *unbiased && m > 1 {
                    m as f64 / (m - 1) as f64
                } else {
                    1.0
                };
                let mom = T::of(*momentum as f64);
                let corr = T::of(correction);
                for (r, &s) in state.params[running.index()].iter_mut().zip(x(0)) {
                    *r = (T::ONE - mom) * *r + mom * (s * corr);
                }
                None
            }
        };
        if let Some(v) = out.as_mut() {
            observe(id, v);
        }
        values.push(out);
    }
    Ok(Values { values })
}

/// PyTorch's SGD: `g = grad + wd·w; v = μ·v + g; w -= lr·v`.
fn sgd<T: Real>(state: &mut State<T>, p: ParamId, grad: &[T], lr: f64, wd: f32, mu: f32) {
    let (lr, wd, mu) = (T::of(lr), T::of(wd as f64), T::of(mu as f64));
    let State { params, momentum } = state;
    let (w, v) = (&mut params[p.index()], &mut momentum[p.index()]);
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(grad) {
        let g = g + wd * *w;
        *v = mu * *v + g;
        *w = *w - lr * *v;
    }
}

/// `y[n,o] = Σ_i x[n,i] w[o,i]`.
fn matmul_nt<T: Real>(x: &[T], w: &[T], n: usize, i: usize, o: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; n * o];
    for b in 0..n {
        for k in 0..o {
            let mut acc = T::ZERO;
            for j in 0..i {
                acc += x[b * i + j] * w[k * i + j];
            }
            y[b * o + k] = acc;
        }
    }
    y
}

/// `(channels, elements per channel per item)` of a batched `[C, rest...]` value.
fn channel_layout(g: &Graph, id: NodeId) -> (usize, usize) {
    let ty = &g.node(id).ty;
    let c = ty.dims[0];
    (c, ty.elems_per_item() / c)
}

fn check_inputs<T: Real>(g: &Graph, state: &State<T>, inp: &Inputs<T>) -> Result<()> {
    if inp.batch == 0 {
        return Err(GraphError::graph("batch size must be at least 1"));
    }
    let per_image: usize = g.image_dims().map(|d| d.iter().product()).unwrap_or(0);
    if inp.images.len() != inp.batch * per_image {
        return Err(GraphError::graph(format!(
            "image batch has {} values, expected {} x {per_image}",
            inp.images.len(),
            inp.batch
        )));
    }
    if inp.labels.len() != inp.batch {
        return Err(GraphError::graph(format!(
            "label batch has {} values, expected {}",
            inp.labels.len(),
            inp.batch
        )));
    }
    let classes = g.classes().unwrap_or(0);
    if let Some((i, l)) = inp
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(GraphError::graph(format!(
            "label {l} of item {i} is out of range for {classes} classes"
        )));
    }
    for (i, p) in g.params.iter().enumerate() {
        if state.params[i].len() != p.elems() {
            return Err(GraphError::graph(format!(
                "parameter {} has {} values, expected {}",
                p.name,
                state.params[i].len(),
                p.elems()
            )));
        }
    }
    Ok(())
}

/// The interpreter keeps every value of a run: their total at batch `n` (in
/// `T`) must fit the graph's memory limit. Checked before anything is allocated.
pub(crate) fn check_interpreter_memory<T>(g: &Graph, n: usize) -> Result<()> {
    crate::format::check_tensor_sizes(g, n)?;
    let total: u128 = g
        .nodes
        .iter()
        .map(|node| node.ty.elems_per_item() as u128 * if node.ty.batched { n as u128 } else { 1 })
        .sum::<u128>()
        * std::mem::size_of::<T>() as u128;
    if total > g.memory_limit_bytes as u128 {
        return Err(GraphError::graph(format!(
            "the interpreter would hold {:.2} GiB at batch {n}, over the memory limit of {:.2} GiB",
            total as f64 / (1u64 << 30) as f64,
            g.memory_limit_bytes as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}
