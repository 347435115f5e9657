//! Lowering a step or evaluation graph to a [`Schedule`] plus the JIT kernels it
//! launches.
//!
//! - Each convolution pass is one launch of the convolution engine
//!   ([`crate::conv`]); linear layers are batched SGEMMs.
//! - Runs of consecutive elementwise nodes over the same iteration space
//!   (bias, BatchNorm-apply, ReLU, dropout masks, add, ReLU gradient, the SGD
//!   and running-statistics updates) fuse into one Cranelift loop nest; only
//!   values read outside the run are written to memory. Masks are generated
//!   inside the loops from the shared hash, never stored.
//! - Per-channel statistics (BatchNorm, bias gradients) are Cranelift
//!   reductions split by channel, so results do not depend on the thread count.
//! - Global average pooling is a Cranelift reduction over each plane.
//! - Pooling windows, the option-A shortcut and the loss are scalar Cranelift
//!   loop nests (`scalar_ops`, `kernels::{pool, shortcut, softmax}`).

use std::collections::HashMap;

use dropjit_graph::op::{MaskSpec, Op};
use dropjit_graph::{Graph, NodeId, TensorType};

use crate::conv::{ConvIsa, ConvLaunch, ConvPass};
use crate::kernels::elementwise::ElementwiseKernel;
use crate::kernels::expr::{BufId, Dims, ExprGraph, ExprId, KeySlot, MaskFactor};
use crate::kernels::gemm::{ConvGeom, GemmDesc};
use crate::kernels::pool::PoolKernel;
use crate::kernels::reduce::ReduceKernel;
use crate::kernels::shortcut::ShortcutKernel;
use crate::kernels::softmax::SoftmaxXentKernel;
use crate::layout::{key_slot, StateLayout};
use crate::maxpool::MaxPoolLaunch;
use crate::scalar_ops::{Nchw, ScalarOp};
use crate::schedule::{BufKind, BufRef, Buffer, Launch, LaunchKind, NativeOp, Schedule};
use crate::CodegenError;

/// A JIT kernel to compile, in launch order of first use.
pub enum KernelDef {
    Elementwise(ElementwiseKernel),
    Reduce(ReduceKernel),
    Pool(PoolKernel),
    Shortcut(ShortcutKernel),
    SoftmaxXent(SoftmaxXentKernel),
}

impl KernelDef {
    /// See [`ExprGraph::rebase_keys`]; kernels without masks return 0.
    fn rebase_keys(&mut self) -> u32 {
        match self {
            KernelDef::Elementwise(k) => k.graph.rebase_keys(),
            KernelDef::Reduce(k) => k.graph.rebase_keys(),
            _ => 0,
        }
    }

    /// One past the largest key slot the kernel reads, relative to its base.
    pub fn key_slots(&self) -> u32 {
        match self {
            KernelDef::Elementwise(k) => k.graph.key_slots(),
            KernelDef::Reduce(k) => k.graph.key_slots(),
            _ => 0,
        }
    }
}

pub struct Lowered {
    pub schedule: Schedule,
    pub kernels: Vec<KernelDef>,
    /// Buffers of the graph's named outputs (`loss`, `logits`).
    pub outputs: Vec<(String, BufRef)>,
    /// The buffer of every node given one, in node order. A reshape shares its
    /// input's buffer; nodes fused into a loop and effect nodes have none.
    pub node_buffers: Vec<(NodeId, BufRef)>,
}

/// Iteration space of a value: `[N, C, H, W]` as (N, C, H·W); `[N, F]` as (N, F, 1);
/// a parameter-shaped value as (1, 1, elems).
fn dims_of(ty: &TensorType, n: usize) -> Dims {
    match (ty.batched, ty.dims.as_slice()) {
        (true, [c, rest @ ..]) => Dims::new(n, *c, rest.iter().product()),
        _ => Dims::new(1, 1, ty.elems_per_item()),
    }
}

/// An open run of fusable elementwise nodes.
struct Group {
    dims: Dims,
    graph: ExprGraph,
    members: Vec<NodeId>,
    expr: HashMap<NodeId, ExprId>,
    /// Kernel argument slots: buffer and the extent the kernel touches.
    args: Vec<(BufRef, usize)>,
    loads: HashMap<(BufRef, bool), ExprId>,
    /// Outputs written in place into an argument (SGD, running statistics).
    in_place: Vec<(usize, ExprId)>,
}

impl Group {
    fn new(dims: Dims) -> Self {
        Group {
            dims,
            graph: ExprGraph::new(),
            members: Vec::new(),
            expr: HashMap::new(),
            args: Vec::new(),
            loads: HashMap::new(),
            in_place: Vec::new(),
        }
    }

    fn slot(&mut self, buf: BufRef, extent: usize) -> BufId {
        if let Some(i) = self.args.iter().position(|(b, _)| *b == buf) {
            self.args[i].1 = self.args[i].1.max(extent);
            return BufId(i as u32);
        }
        self.args.push((buf, extent));
        BufId(self.args.len() as u32 - 1)
    }
}

/// One deferred SGD update: its gradient buffer and where its parameter
/// (`w`, `len` elements) and momentum (`v`) live in the state.
struct SgdMember {
    id: NodeId,
    grad: BufRef,
    w: usize,
    v: usize,
    len: usize,
    /// `lr_mult`, `weight_decay`, `momentum` as bits (equal bits fuse).
    hyper: [u32; 3],
}

struct Lower<'g> {
    g: &'g Graph,
    n: usize,
    layout: &'g StateLayout,
    sched: Schedule,
    kernels: Vec<KernelDef>,
    value: Vec<Option<BufRef>>,
    users: Vec<Vec<NodeId>>,
    outputs: Vec<NodeId>,
    group: Option<Group>,
    /// SGD update nodes, emitted together at the end.
    sgd: Vec<NodeId>,
    /// Instruction set of the convolution passes.
    isa: ConvIsa,
}

pub fn lower(
    g: &Graph,
    batch: usize,
    layout: &StateLayout,
    isa: ConvIsa,
) -> Result<Lowered, CodegenError> {
    let mut l = Lower {
        g,
        n: batch,
        layout,
        sched: Schedule::default(),
        kernels: Vec::new(),
        value: vec![None; g.nodes.len()],
        users: g.users(),
        outputs: g.outputs.iter().map(|(_, id)| *id).collect(),
        group: None,
        sgd: Vec::new(),
        isa,
    };
    for id in g.ids() {
        l.node(id)?;
    }
    l.flush()?;
    l.sgd_updates()?;
    let outputs = g
        .outputs
        .iter()
        .map(|(name, id)| {
            let b = l.value[id.index()].expect("outputs are materialised");
            l.sched.buffers[b.0 as usize].pinned = true;
            (name.clone(), b)
        })
        .collect();
    let node_buffers = g
        .ids()
        .filter_map(|id| Some((id, l.value[id.index()]?)))
        .collect();
    Ok(Lowered {
        schedule: l.sched,
        kernels: l.kernels,
        outputs,
        node_buffers,
    })
}

impl Lower<'_> {
    fn ty(&self, id: NodeId) -> &TensorType {
        &self.g.node(id).ty
    }

    fn elems(&self, id: NodeId) -> usize {
        self.ty(id).elems(self.n)
    }

    fn nchw(&self, id: NodeId) -> Nchw {
        let (c, h, w) = self.ty(id).chw().expect("image-shaped by the shape rules");
        Nchw { n: self.n, c, h, w }
    }

    fn buffer(&mut self, name: &str, kind: BufKind, elems: usize) -> BufRef {
        self.sched.buffers.push(Buffer {
            name: name.to_string(),
            kind,
            elems,
            pinned: false,
            offset: 0,
        });
        BufRef(self.sched.buffers.len() as u32 - 1)
    }

    fn temp(&mut self, name: &str, elems: usize) -> BufRef {
        self.buffer(name, BufKind::Temp, elems)
    }

    /// The buffer holding node `id`'s value (it must be materialised).
    fn buf(&self, id: NodeId) -> BufRef {
        self.value[id.index()].unwrap_or_else(|| {
            panic!(
                "node {} used before it is materialised",
                self.g.node(id).name
            )
        })
    }

    fn launch(&mut self, kind: LaunchKind, args: Vec<BufRef>, nodes: &[NodeId]) {
        let nodes = nodes.iter().map(|&i| self.g.node(i).name.clone()).collect();
        let key_base = match kind {
            LaunchKind::Elementwise { func, .. } | LaunchKind::Reduce { func, .. } => {
                self.kernels[func].rebase_keys()
            }
            _ => 0,
        };
        self.sched.launches.push(Launch {
            kind,
            args,
            nodes,
            key_base,
        });
    }

    fn node(&mut self, id: NodeId) -> Result<(), CodegenError> {
        if self.value[id.index()].is_some() {
            // Computed already, as a by-product of an earlier launch.
            return Ok(());
        }
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        // Leaves are bound, not computed.
        match &node.op {
            Op::Param(p) => {
                let (offset, elems) = self.layout.params[p.index()];
                let b = self.buffer(&node.name, BufKind::State { offset }, elems);
                self.value[id.index()] = Some(b);
                return Ok(());
            }
            Op::Image => {
                let b = self.buffer("image", BufKind::Image, self.elems(id));
                self.value[id.index()] = Some(b);
                return Ok(());
            }
            Op::Labels { .. } => {
                let b = self.buffer("labels", BufKind::Labels, self.n);
                self.value[id.index()] = Some(b);
                return Ok(());
            }
            _ => {}
        }
        if matches!(node.op, Op::SgdUpdate { .. }) {
            // Deferred to the end of the step: see `sgd_updates`.
            self.sgd.push(id);
            return Ok(());
        }
        if self.fusable(id) {
            return self.fuse(id);
        }
        self.flush()?;
        let out_elems = self.elems(id);
        match &node.op {
            Op::Reshape { .. } => {
                self.value[id.index()] = Some(self.buf(ins[0]));
            }
            Op::Conv2d(a) => {
                let (x, y) = (self.nchw(ins[0]), self.nchw(id));
                let yb = self.temp(&node.name, out_elems);
                let args = [self.buf(ins[0]), self.buf(ins[1]), yb];
                let mut launch =
                    ConvLaunch::new(ConvPass::Forward, conv_geom(x, a), self.n, y.c, self.isa);
                let mut nodes = vec![id];
                let mut extra = Vec::new();
                // A bias that only this convolution's output receives is added
                // as the output is stored (one pass less over it); the
                // convolution's own, bias-free value is then never stored.
                let out_node = match self.bias_of(id) {
                    Some((add, bias)) => {
                        // Parameters are bound where they are first used.
                        self.node(bias)?;
                        launch = launch.with_bias();
                        nodes.push(add);
                        extra.push(self.buf(bias));
                        add
                    }
                    None => id,
                };
                // BatchNorm's statistics taken while the output is written.
                if let Some((mean, var)) = self.bn_stats_of(out_node) {
                    let (mb, vb) = (
                        self.temp(&self.g.node(mean).name.clone(), y.c),
                        self.temp(&self.g.node(var).name.clone(), y.c),
                    );
                    launch = launch.with_stats();
                    nodes.extend([mean, var]);
                    extra.extend([mb, vb]);
                    self.value[mean.index()] = Some(mb);
                    self.value[var.index()] = Some(vb);
                }
                self.conv_launch(&nodes, launch, args, &extra);
                self.value[out_node.index()] = Some(yb);
            }
            Op::Conv2dGradInput { conv: a, .. } => {
                let (dy, x) = (self.nchw(ins[0]), self.nchw(id));
                let dx = self.temp(&node.name, out_elems);
                let args = [self.buf(ins[0]), self.buf(ins[1]), dx];
                self.conv(id, ConvPass::GradInput, conv_geom(x, a), dy.c, args);
                self.value[id.index()] = Some(dx);
            }
            Op::Conv2dGradWeight(a) => {
                let (dy, x) = (self.nchw(ins[0]), self.nchw(ins[1]));
                let dw = self.temp(&node.name, out_elems);
                let args = [self.buf(ins[0]), self.buf(ins[1]), dw];
                self.conv(id, ConvPass::GradWeight, conv_geom(x, a), dy.c, args);
                self.value[id.index()] = Some(dw);
            }
            Op::Linear => {
                // y[N, O] = x[N, I] · Wᵀ[I, O]
                let (i, o) = (self.ty(ins[0]).dims[0], self.ty(id).dims[0]);
                let mut d = GemmDesc::row_major(self.n, i, o, 1.0, 0.0);
                d.rsb = 1;
                d.csb = i as isize;
                self.gemm(id, d, ins[0], ins[1]);
            }
            Op::LinearGradInput => {
                // dx[N, I] = dy[N, O] · W[O, I]
                let (o, i) = (self.ty(ins[0]).dims[0], self.ty(id).dims[0]);
                let d = GemmDesc::row_major(self.n, o, i, 1.0, 0.0);
                self.gemm(id, d, ins[0], ins[1]);
            }
            Op::LinearGradWeight => {
                // dW[O, I] = dyᵀ[O, N] · x[N, I]
                let (o, i) = (self.ty(ins[0]).dims[0], self.ty(ins[1]).dims[0]);
                let mut d = GemmDesc::row_major(o, self.n, i, 1.0, 0.0);
                d.rsa = 1;
                d.csa = o as isize;
                self.gemm(id, d, ins[0], ins[1]);
            }
            Op::MaxPool2d(p) => {
                let (x, y) = (self.nchw(ins[0]), self.nchw(id));
                let launch = MaxPoolLaunch {
                    grad: false,
                    pool: *p,
                    x,
                    y,
                };
                self.max_pool(id, launch, &[ins[0]]);
            }
            Op::AvgPool2d(p) => {
                let (x, y) = (self.nchw(ins[0]), self.nchw(id));
                self.scalar(id, ScalarOp::AvgPool { pool: *p, x, y }, &[ins[0]])
            }
            Op::MaxPool2dGrad(p) => {
                let (x, y) = (self.nchw(ins[1]), self.nchw(ins[0]));
                let launch = MaxPoolLaunch {
                    grad: true,
                    pool: *p,
                    x,
                    y,
                };
                self.max_pool(id, launch, &[ins[0], ins[1]]);
            }
            Op::AvgPool2dGrad { pool, .. } => {
                let (x, y) = (self.nchw(id), self.nchw(ins[0]));
                self.scalar(id, ScalarOp::AvgPoolGrad { pool: *pool, x, y }, &[ins[0]])
            }
            Op::ShortcutA { stride, .. } => {
                let (x, y) = (self.nchw(ins[0]), self.nchw(id));
                self.scalar(
                    id,
                    ScalarOp::ShortcutA {
                        stride: *stride,
                        x,
                        y,
                    },
                    &[ins[0]],
                )
            }
            Op::ShortcutAGrad { stride, .. } => {
                let (x, y) = (self.nchw(id), self.nchw(ins[0]));
                self.scalar(
                    id,
                    ScalarOp::ShortcutAGrad {
                        stride: *stride,
                        x,
                        y,
                    },
                    &[ins[0]],
                )
            }
            Op::GlobalAvgPool => {
                // A per-(n, c) mean over H·W: a reduction whose "channels" are
                // the N·C planes.
                let x = self.nchw(ins[0]);
                let dims = Dims::new(1, x.n * x.c, x.h * x.w);
                let mut gr = ExprGraph::new();
                let v = gr.load(BufId(0));
                let out = self.temp(&node.name, dims.chans);
                let func = self.kernels.len();
                let k = ReduceKernel::new(&format!("k{func}"), &node.name, dims, gr).sum(
                    BufId(1),
                    v,
                    1.0 / dims.inner as f64,
                );
                self.kernels.push(KernelDef::Reduce(k));
                self.launch(
                    LaunchKind::Reduce { func, dims },
                    vec![self.buf(ins[0]), out],
                    &[id],
                );
                self.value[id.index()] = Some(out);
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                let k = self.ty(ins[0]).dims[0];
                let op = if node.op == Op::SoftmaxCrossEntropy {
                    ScalarOp::SoftmaxCrossEntropy { n: self.n, k }
                } else {
                    ScalarOp::SoftmaxCrossEntropyGrad { n: self.n, k }
                };
                self.scalar(id, op, &[ins[0], ins[1]])
            }
            Op::BnMean { .. } | Op::BnVar { .. } | Op::BiasGrad | Op::BnGradGamma { .. } => {
                self.reduction(id)?
            }
            Op::BnGradInput { eps } => self.bn_grad_input(id, *eps)?,
            Op::Dropout(_) => {
                return Err(CodegenError::Unsupported(format!(
                    "node '{}': raw dropout site; compile the step or evaluation graph",
                    node.name
                )))
            }
            Op::Image | Op::Labels { .. } | Op::Param(_) => unreachable!("bound above"),
            op => {
                return Err(CodegenError::Unsupported(format!(
                    "node '{}': {} is not lowered outside a fused loop",
                    node.name,
                    op.name()
                )))
            }
        }
        Ok(())
    }

    /// `node = A · B` through one GEMM launch.
    fn gemm(&mut self, id: NodeId, d: GemmDesc, a: NodeId, b: NodeId) {
        let out = self.temp(&self.g.node(id).name.clone(), self.elems(id));
        self.launch(
            LaunchKind::Gemm(d),
            vec![self.buf(a), self.buf(b), out],
            &[id],
        );
        self.value[id.index()] = Some(out);
    }

    fn conv(
        &mut self,
        id: NodeId,
        pass: ConvPass,
        geom: ConvGeom,
        out_channels: usize,
        args: [BufRef; 3],
    ) {
        let launch = ConvLaunch::new(pass, geom, self.n, out_channels, self.isa);
        self.conv_launch(&[id], launch, args, &[]);
    }

    /// One convolution launch for `nodes` (the pass first): its three
    /// buffers, a scratch, then `extra` (the statistics).
    fn conv_launch(
        &mut self,
        nodes: &[NodeId],
        launch: ConvLaunch,
        args: [BufRef; 3],
        extra: &[BufRef],
    ) {
        let scratch = self.temp(
            &format!("{}.scratch", self.g.node(nodes[0]).name),
            launch.scratch(),
        );
        let mut all = vec![args[0], args[1], args[2], scratch];
        all.extend(extra);
        self.launch(LaunchKind::Native(NativeOp::Conv(launch)), all, nodes);
    }

    /// The bias-add node and its bias parameter when that node is the only
    /// reader of convolution `id`'s output.
    fn bias_of(&self, id: NodeId) -> Option<(NodeId, NodeId)> {
        let [add] = self.users[id.index()][..] else {
            return None;
        };
        let node = self.g.node(add);
        let bias = *node.inputs.get(1)?;
        (node.op == Op::BiasAdd
            && node.inputs[0] == id
            && matches!(self.g.node(bias).op, Op::Param(_))
            && !self.outputs.contains(&id))
        .then_some((add, bias))
    }

    /// The BatchNorm mean and variance nodes that read convolution `id`'s
    /// output directly, if both do.
    fn bn_stats_of(&self, id: NodeId) -> Option<(NodeId, NodeId)> {
        let users = &self.users[id.index()];
        let mean = *users.iter().find(|&&u| {
            matches!(self.g.node(u).op, Op::BnMean { .. }) && self.g.node(u).inputs[0] == id
        })?;
        let var = *users.iter().find(|&&u| {
            matches!(self.g.node(u).op, Op::BnVar { .. }) && self.g.node(u).inputs == [id, mean]
        })?;
        Some((mean, var))
    }

    /// Max pooling or its gradient as a Rust launch (`crate::maxpool`).
    fn max_pool(&mut self, id: NodeId, launch: MaxPoolLaunch, ins: &[NodeId]) {
        let out_elems = *launch.extents().last().expect("an output");
        let out = self.temp(&self.g.node(id).name.clone(), out_elems);
        let mut args: Vec<BufRef> = ins.iter().map(|&i| self.buf(i)).collect();
        args.push(out);
        self.launch(LaunchKind::Native(NativeOp::MaxPool(launch)), args, &[id]);
        self.value[id.index()] = Some(out);
    }

    fn scalar(&mut self, id: NodeId, op: ScalarOp, ins: &[NodeId]) {
        let name = self.g.node(id).name.clone();
        let (_, out_elems) = op.extents();
        let out = self.temp(&name, out_elems);
        let mut args: Vec<BufRef> = ins.iter().map(|&i| self.buf(i)).collect();
        args.push(out);
        let func = self.kernels.len();
        self.kernels.push(op.kernel(&format!("k{func}"), &name));
        self.launch(LaunchKind::Scalar { func, op }, args, &[id]);
        self.value[id.index()] = Some(out);
    }

    /// Whether node `id` can join an elementwise run (and which space it iterates).
    fn fusable(&self, id: NodeId) -> bool {
        matches!(
            self.g.node(id).op,
            Op::BiasAdd
                | Op::Relu
                | Op::BnApply { .. }
                | Op::Add
                | Op::Mask(_)
                | Op::ReluGrad
                | Op::GlobalAvgPoolGrad { .. }
                | Op::BnRunningUpdate { .. }
        )
    }

    fn space(&self, id: NodeId) -> Dims {
        let node = self.g.node(id);
        match node.op {
            Op::GlobalAvgPoolGrad { h, w } => Dims::new(1, self.n * node.ty.dims[0], h * w),
            Op::BnRunningUpdate { running, .. } => {
                Dims::new(1, 1, self.layout.params[running.index()].1)
            }
            _ => dims_of(&node.ty, self.n),
        }
    }

    /// An operand of the open group: its expression if it is a member, else a
    /// load of its buffer (per element, or per channel for `[C]` vectors).
    fn operand(&mut self, id: NodeId, per_channel: bool) -> ExprId {
        let g = self.group.as_mut().expect("open group");
        if let Some(&e) = g.expr.get(&id) {
            return e;
        }
        let buf = self.value[id.index()].expect("operands outside the group are materialised");
        if let Some(&e) = g.loads.get(&(buf, per_channel)) {
            return e;
        }
        let extent = if per_channel {
            g.dims.chans
        } else {
            g.dims.len()
        };
        let slot = g.slot(buf, extent);
        let e = if per_channel {
            g.graph.chan_load(slot)
        } else {
            g.graph.load(slot)
        };
        g.loads.insert((buf, per_channel), e);
        e
    }

    fn mask_factors(spec: &MaskSpec) -> Vec<MaskFactor> {
        spec.factors
            .iter()
            .map(|f| MaskFactor {
                key: KeySlot(key_slot(spec.site.0, f.stream)),
                threshold: dropjit_graph::mask::keep_threshold(f.ratio),
            })
            .collect()
    }

    fn fuse(&mut self, id: NodeId) -> Result<(), CodegenError> {
        let dims = self.space(id);
        if self.group.as_ref().is_some_and(|g| g.dims != dims) {
            self.flush()?;
        }
        if self.group.is_none() {
            self.group = Some(Group::new(dims));
        }
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let e = match &node.op {
            Op::BiasAdd => {
                let x = self.operand(ins[0], false);
                let b = self.operand(ins[1], true);
                self.gr().add(x, b)
            }
            Op::Relu => {
                let x = self.operand(ins[0], false);
                self.gr().relu(x)
            }
            // gamma (x - mean) / sqrt(var + eps) + beta, in the interpreter's order.
            Op::BnApply { eps } => {
                let x = self.operand(ins[0], false);
                let [m, v, ga, be] = [1, 2, 3, 4].map(|i| self.operand(ins[i], true));
                let gr = self.gr();
                let eps = gr.constant(*eps);
                let centred = gr.sub(x, m);
                let scaled = gr.mul(ga, centred);
                let ve = gr.add(v, eps);
                let sd = gr.sqrt(ve);
                let norm = gr.div(scaled, sd);
                gr.add(norm, be)
            }
            Op::Add => {
                let (a, b) = (self.operand(ins[0], false), self.operand(ins[1], false));
                self.gr().add(a, b)
            }
            Op::Mask(spec) => {
                let x = self.operand(ins[0], false);
                let factors = Self::mask_factors(spec);
                let scale = spec.scale() as f32;
                self.gr().drop_mask(&factors, 0, scale, x)
            }
            Op::ReluGrad => {
                let (dy, y) = (self.operand(ins[0], false), self.operand(ins[1], false));
                self.gr().positive_mask(y, dy)
            }
            Op::GlobalAvgPoolGrad { h, w } => {
                // dx[n, c, :] = dy[n, c] / HW, with (n, c) as the channel index.
                let dy = self.operand(ins[0], true);
                let gr = self.gr();
                let hw = gr.constant((h * w) as f32);
                gr.div(dy, hw)
            }
            Op::BnRunningUpdate {
                running,
                momentum,
                unbiased,
            } => {
                let (off, len) = self.layout.params[running.index()];
                let rb = self.buffer(
                    &self.g.param(*running).name.clone(),
                    BufKind::State { offset: off },
                    len,
                );
                let src = self.g.node(ins[0]);
                let m = self.n * self.g.node(src.inputs[0]).ty.elems_per_item() / src.ty.dims[0];
                let corr = if *unbiased && m > 1 {
                    m as f64 / (m - 1) as f64
                } else {
                    1.0
                };
                let s = self.operand(ins[0], false);
                let g = self.group.as_mut().expect("open group");
                let rs = g.slot(rb, len);
                let gr = &mut g.graph;
                let r = gr.load(rs);
                // r' = (1 − m)·r + m·(s·corr)
                let keep = gr.constant(1.0 - *momentum);
                let kr = gr.mul(keep, r);
                let c = gr.constant(corr as f32);
                let sc = gr.mul(s, c);
                let mo = gr.constant(*momentum);
                let ms = gr.mul(mo, sc);
                let r2 = gr.add(kr, ms);
                g.in_place.push((rs.0 as usize, r2));
                r2
            }
            _ => unreachable!("fusable() lists the ops handled here"),
        };
        let g = self.group.as_mut().expect("open group");
        g.members.push(id);
        g.expr.insert(id, e);
        Ok(())
    }

    /// The deferred SGD updates as one elementwise loop per run of parameters
    /// that share `(lr_mult, weight_decay, momentum)` and lie back to back in
    /// the state, momentum alike (`StateLayout` arranges that per class).
    /// The run's gradients become views into one arena slab in the same
    /// order, so the loop streams gradients, parameters and momentum.
    /// Deferring is sound: nothing in a step reads a parameter after its update.
    fn sgd_updates(&mut self) -> Result<(), CodegenError> {
        let mut updates: Vec<SgdMember> = Vec::new();
        for &id in &self.sgd {
            let node = self.g.node(id);
            let Op::SgdUpdate {
                param,
                lr_mult,
                weight_decay,
                momentum,
            } = node.op
            else {
                unreachable!("only SGD updates are deferred")
            };
            let (w, len) = self.layout.params[param.index()];
            let (v, _) = self.layout.momentum[param.index()].ok_or_else(|| {
                CodegenError::Unsupported(format!(
                    "node '{}': parameter '{}' has no momentum slot",
                    node.name,
                    self.g.param(param).name
                ))
            })?;
            updates.push(SgdMember {
                id,
                grad: self.buf(node.inputs[0]),
                w,
                v,
                len,
                hyper: [lr_mult, weight_decay, momentum].map(f32::to_bits),
            });
        }
        updates.sort_by_key(|u| u.w);
        let mut runs: Vec<Vec<SgdMember>> = Vec::new();
        for u in updates {
            let joins = runs.last().and_then(|r| r.last()).is_some_and(|last| {
                last.hyper == u.hyper
                    && last.w + last.len == u.w
                    && last.v + last.len == u.v
                    && self.viewable(last.grad, last.len)
                    && self.viewable(u.grad, u.len)
            });
            if joins {
                runs.last_mut().expect("checked").push(u);
            } else {
                runs.push(vec![u]);
            }
        }
        for run in runs {
            self.sgd_run(&run);
        }
        Ok(())
    }

    /// Whether a gradient buffer can move into a slab: an arena temporary of
    /// exactly the parameter's size, not already a view.
    fn viewable(&self, grad: BufRef, len: usize) -> bool {
        let b = self.sched.buffer(grad);
        b.kind == BufKind::Temp && b.elems == len
    }

    fn sgd_run(&mut self, run: &[SgdMember]) {
        let first = &run[0];
        let len: usize = run.iter().map(|u| u.len).sum();
        let names: Vec<String> = run.iter().map(|u| self.g.node(u.id).name.clone()).collect();
        let label = if run.len() == 1 {
            names[0].trim_end_matches(".sgd").to_string()
        } else {
            format!(
                "{}..{}",
                names[0].trim_end_matches(".sgd"),
                names[run.len() - 1].trim_end_matches(".sgd")
            )
        };
        let grads = if run.len() == 1 {
            first.grad
        } else {
            let slab = self.temp(&format!("{label}.grads"), len);
            for u in run {
                self.sched.buffers[u.grad.0 as usize].kind = BufKind::View {
                    of: slab,
                    at: u.w - first.w,
                };
            }
            slab
        };
        let wb = self.buffer(&label, BufKind::State { offset: first.w }, len);
        let vb = self.buffer(
            &format!("{label}.momentum"),
            BufKind::State { offset: first.v },
            len,
        );
        let lrb = self.buffer(
            "lr",
            BufKind::State {
                offset: self.layout.lr,
            },
            1,
        );
        // Disjoint chunks of the run for the two cores (same bits either way).
        let outer = [8, 4, 2]
            .into_iter()
            .find(|k| len.is_multiple_of(*k) && len / k >= 4096)
            .unwrap_or(1);
        let dims = Dims::new(outer, 1, len / outer);
        let [lr_mult, weight_decay, momentum] = first.hyper.map(f32::from_bits);
        let mut gr = ExprGraph::new();
        let (grad, w, v) = (gr.load(BufId(0)), gr.load(BufId(1)), gr.load(BufId(2)));
        let lr = gr.chan_load(BufId(3));
        // g' = grad + wd·w; v' = μ·v + g'; w' = w − (lr·lr_mult)·v'
        let wd = gr.constant(weight_decay);
        let decay = gr.mul(wd, w);
        let g2 = gr.add(grad, decay);
        let mu = gr.constant(momentum);
        let mv = gr.mul(mu, v);
        let v2 = gr.add(mv, g2);
        let mult = gr.constant(lr_mult);
        let lr_eff = gr.mul(lr, mult);
        let step = gr.mul(lr_eff, v2);
        let w2 = gr.sub(w, step);
        let func = self.kernels.len();
        let k = ElementwiseKernel::new(&format!("k{func}"), &names.join(" "), dims, gr)
            .output(BufId(1), w2)
            .output(BufId(2), v2);
        self.kernels.push(KernelDef::Elementwise(k));
        let ids: Vec<NodeId> = run.iter().map(|u| u.id).collect();
        self.launch(
            LaunchKind::Elementwise { func, dims },
            vec![grads, wb, vb, lrb],
            &ids,
        );
    }

    fn gr(&mut self) -> &mut ExprGraph {
        &mut self.group.as_mut().expect("open group").graph
    }

    /// Closes the open run: one kernel writing every member that is read
    /// outside the run (or is a graph output), plus in-place state updates.
    fn flush(&mut self) -> Result<(), CodegenError> {
        let Some(mut g) = self.group.take() else {
            return Ok(());
        };
        let mut outputs: Vec<(BufId, ExprId)> = g
            .in_place
            .iter()
            .map(|&(s, e)| (BufId(s as u32), e))
            .collect();
        for m in g.members.clone() {
            let node = self.g.node(m);
            if node.op.is_effect() {
                continue;
            }
            let needed = self.outputs.contains(&m)
                || self.users[m.index()].iter().any(|u| !g.members.contains(u));
            if needed {
                let b = self.temp(&node.name.clone(), g.dims.len());
                let slot = g.slot(b, g.dims.len());
                outputs.push((slot, g.expr[&m]));
                self.value[m.index()] = Some(b);
            }
        }
        if outputs.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = g
            .members
            .iter()
            .map(|&m| self.g.node(m).name.clone())
            .collect();
        let func = self.kernels.len();
        let mut k = ElementwiseKernel::new(&format!("k{func}"), &names.join(" "), g.dims, g.graph);
        for (slot, e) in outputs {
            k = k.output(slot, e);
        }
        self.kernels.push(KernelDef::Elementwise(k));
        let args = g.args.iter().map(|(b, _)| *b).collect();
        self.launch(
            LaunchKind::Elementwise { func, dims: g.dims },
            args,
            &g.members,
        );
        Ok(())
    }

    /// A per-channel statistic as a Cranelift reduction over `(N, H·W)`.
    fn reduction(&mut self, id: NodeId) -> Result<(), CodegenError> {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let dims = dims_of(self.ty(ins[0]), self.n);
        let count = (dims.outer * dims.inner) as f64;
        let mut gr = ExprGraph::new();
        let mut args: Vec<BufRef> = Vec::new();
        let mut slot = |b: BufRef| -> BufId {
            if let Some(i) = args.iter().position(|&a| a == b) {
                return BufId(i as u32);
            }
            args.push(b);
            BufId(args.len() as u32 - 1)
        };
        let (value, scale) = match &node.op {
            Op::BnMean { .. } => (gr.load(slot(self.buf(ins[0]))), 1.0 / count),
            Op::BnVar { .. } => {
                let x = gr.load(slot(self.buf(ins[0])));
                let m = gr.chan_load(slot(self.buf(ins[1])));
                let d = gr.sub(x, m);
                (gr.mul(d, d), 1.0 / count)
            }
            Op::BiasGrad => (gr.load(slot(self.buf(ins[0]))), 1.0),
            Op::BnGradGamma { eps } => {
                let dy = gr.load(slot(self.buf(ins[0])));
                let xhat = xhat(
                    &mut gr,
                    &mut slot,
                    [self.buf(ins[1]), self.buf(ins[2]), self.buf(ins[3])],
                    *eps,
                );
                (gr.mul(dy, xhat), 1.0)
            }
            _ => unreachable!("reduction ops only"),
        };
        let out = self.temp(&node.name, dims.chans);
        let o = slot(out);
        let func = self.kernels.len();
        let k = ReduceKernel::new(&format!("k{func}"), &node.name, dims, gr).sum(o, value, scale);
        self.kernels.push(KernelDef::Reduce(k));
        self.launch(LaunchKind::Reduce { func, dims }, args, &[id]);
        self.value[id.index()] = Some(out);
        Ok(())
    }

    /// dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)): one reduction for the two
    /// means, then an elementwise node that may fuse with what follows.
    fn bn_grad_input(&mut self, id: NodeId, eps: f32) -> Result<(), CodegenError> {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let dims = dims_of(self.ty(ins[0]), self.n);
        let count = (dims.outer * dims.inner) as f64;
        let stats = [self.buf(ins[1]), self.buf(ins[2]), self.buf(ins[3])];
        let (dyb, gamma) = (self.buf(ins[0]), self.buf(ins[4]));
        let mut gr = ExprGraph::new();
        let mut args: Vec<BufRef> = Vec::new();
        let mut slot = |b: BufRef| -> BufId {
            if let Some(i) = args.iter().position(|&a| a == b) {
                return BufId(i as u32);
            }
            args.push(b);
            BufId(args.len() as u32 - 1)
        };
        let dy = gr.load(slot(dyb));
        let xh = xhat(&mut gr, &mut slot, stats, eps);
        let dyx = gr.mul(dy, xh);
        let mean_dy = self.temp(&format!("{}.mean_dy", node.name), dims.chans);
        let mean_dyx = self.temp(&format!("{}.mean_dy_xhat", node.name), dims.chans);
        let (s1, s2) = (slot(mean_dy), slot(mean_dyx));
        // The same pass yields BatchNorm's dγ = Σ dy·x̂ and dβ = Σ dy, when the
        // graph asks for them with the same operands: one read of dy, not three.
        let mut extra: Vec<(NodeId, BufRef, ExprId)> = Vec::new();
        for u in self.users[ins[0].index()].clone() {
            let un = self.g.node(u);
            let value = match un.op {
                Op::BnGradGamma { eps: e } if e == eps && un.inputs[1..] == ins[1..4] => dyx,
                Op::BiasGrad => dy,
                _ => continue,
            };
            let b = self.temp(&un.name.clone(), dims.chans);
            extra.push((u, b, value));
        }
        let mut k = ReduceKernel::new(&format!("k{}", self.kernels.len()), "", dims, gr)
            .sum(s1, dy, 1.0 / count)
            .sum(s2, dyx, 1.0 / count);
        let mut covered = vec![id];
        for &(u, b, value) in &extra {
            k = k.sum(slot(b), value, 1.0);
            self.value[u.index()] = Some(b);
            covered.push(u);
        }
        k.comment = covered
            .iter()
            .map(|&c| self.g.node(c).name.clone())
            .collect::<Vec<_>>()
            .join(" ")
            + " (sums)";
        let func = self.kernels.len();
        self.kernels.push(KernelDef::Reduce(k));
        self.launch(LaunchKind::Reduce { func, dims }, args, &covered);

        // The elementwise half, as a fused node.
        self.group = Some(Group::new(dims));
        let g = self.group.as_mut().expect("just opened");
        let len = dims.len();
        let (dys, xs) = (g.slot(dyb, len), g.slot(stats[0], len));
        let (ms, vs, gs) = (
            g.slot(stats[1], dims.chans),
            g.slot(stats[2], dims.chans),
            g.slot(gamma, dims.chans),
        );
        let (s1, s2) = (g.slot(mean_dy, dims.chans), g.slot(mean_dyx, dims.chans));
        let gr = &mut g.graph;
        let dy = gr.load(dys);
        let x = gr.load(xs);
        let (m, v, ga) = (gr.chan_load(ms), gr.chan_load(vs), gr.chan_load(gs));
        let (mdy, mdyx) = (gr.chan_load(s1), gr.chan_load(s2));
        let e = gr.constant(eps);
        let ve = gr.add(v, e);
        let sd = gr.sqrt(ve);
        let one = gr.constant(1.0);
        let inv = gr.div(one, sd);
        let c = gr.sub(x, m);
        let xh = gr.mul(c, inv);
        let t1 = gr.sub(dy, mdy);
        let t2 = gr.mul(xh, mdyx);
        let t3 = gr.sub(t1, t2);
        let gi = gr.mul(ga, inv);
        let dx = gr.mul(gi, t3);
        g.members.push(id);
        g.expr.insert(id, dx);
        Ok(())
    }
}

/// x̂ = (x − mean) · (1 / sqrt(var + eps)), as the interpreter computes it.
fn xhat(
    gr: &mut ExprGraph,
    slot: &mut dyn FnMut(BufRef) -> BufId,
    [x, mean, var]: [BufRef; 3],
    eps: f32,
) -> ExprId {
    let x = gr.load(slot(x));
    let m = gr.chan_load(slot(mean));
    let v = gr.chan_load(slot(var));
    let e = gr.constant(eps);
    let ve = gr.add(v, e);
    let sd = gr.sqrt(ve);
    let one = gr.constant(1.0);
    let inv = gr.div(one, sd);
    let c = gr.sub(x, m);
    gr.mul(c, inv)
}

fn conv_geom(x: Nchw, a: &dropjit_graph::op::Conv2dAttrs) -> ConvGeom {
    ConvGeom::new(
        x.c,
        x.h,
        x.w,
        a.kernel,
        a.kernel,
        (a.stride, a.stride),
        (a.padding, a.padding),
    )
}
