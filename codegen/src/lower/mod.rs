//! Lowering a step or evaluation graph to a [`Schedule`] plus the JIT kernels it
//! launches ([`lower_graph`]). This file holds the driver: the lowering state,
//! its buffers and launches, and the dispatch of each node.
//!
//! - Each convolution pass is one launch of the convolution engine
//!   ([`crate::conv`]); linear layers are batched SGEMMs; max and average
//!   pooling are Rust launches ([`crate::maxpool`], [`crate::avgpool`])
//!   (`launches`). A dropout mask read only by convolutions or average
//!   pooling as their image input (`F ⊙ x` into the next layer, `B ⊙ x` into
//!   a weight gradient or the backward pass's pooled copy) is applied as they
//!   read each image and never stored (`launches::masked_input`); a mask that
//!   alone reads a convolution's or average pooling's input gradient is
//!   applied as that gradient is stored (`launches::output_mask_of`).
//! - Runs of consecutive elementwise nodes over the same iteration space
//!   (bias, BatchNorm-apply, ReLU, dropout masks, add, ReLU gradient, the
//!   running-statistics updates) fuse into one Cranelift loop nest; only
//!   values read outside the run are written to memory. Masks are generated
//!   inside the loops from the shared hash, never stored (`fusion`).
//! - Per-channel statistics (BatchNorm, bias gradients) are Cranelift
//!   reductions split by channel, so results do not depend on the thread
//!   count; global average pooling is a Cranelift reduction over each plane
//!   (`channel_stats`). BatchNorm's input gradient is a reduction plus an
//!   elementwise node that joins the next fused run (`bn_grad`).
//! - The option-A shortcut and the loss are scalar Cranelift loop nests
//!   (`launches`; `kernels::{shortcut, softmax}`).
//! - The SGD updates are deferred to the end of the step and fused per run of
//!   parameters that share their hyper-parameters (`sgd`).

mod bn_grad;
mod channel_stats;
mod fusion;
mod launches;
mod mask_records;
mod sgd;

use dropjit_graph::interp::Nchw;
use dropjit_graph::op::Op;
use dropjit_graph::{Graph, NodeId, TensorType};

use crate::conv::{ConvIsa, ConvPass, InputMask};
use crate::kernels::elementwise::ElementwiseKernel;
use crate::kernels::expr::{BufId, Dims};
use crate::kernels::reduce::ReduceKernel;
use crate::kernels::shortcut::ShortcutKernel;
use crate::kernels::softmax::SoftmaxXentKernel;
use crate::layout::StateLayout;
use crate::maxpool::MaxPoolLaunch;
use crate::schedule::{BufKind, BufRef, Buffer, Launch, LaunchKind, ScalarOp, Schedule};
use crate::CodegenError;

use fusion::Group;

/// A JIT kernel to compile, in launch order of first use.
pub enum KernelDef {
    Elementwise(ElementwiseKernel),
    Reduce(ReduceKernel),
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
/// The kernel argument that reads `b`: its position in `args`, appended the
/// first time (a buffer read twice is one argument).
fn arg_slot(args: &mut Vec<BufRef>, b: BufRef) -> BufId {
    if let Some(i) = args.iter().position(|&a| a == b) {
        return BufId(i as u32);
    }
    args.push(b);
    BufId(args.len() as u32 - 1)
}

fn dims_of(ty: &TensorType, n: usize) -> Dims {
    match (ty.batched, ty.dims.as_slice()) {
        (true, [c, rest @ ..]) => Dims::new(n, *c, rest.iter().product()),
        _ => Dims::new(1, 1, ty.elems_per_item()),
    }
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
    /// Mask nodes read only by convolutions that apply them as they prepare
    /// each image (never stored): the masked value and the mask (`launches`).
    masked_inputs: std::collections::HashMap<NodeId, (NodeId, InputMask)>,
}

pub fn lower_graph(
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
        masked_inputs: Default::default(),
    };
    for id in g.ids() {
        l.node(id)?;
    }
    l.flush()?;
    l.sgd_updates()?;
    mask_records::share_mask_records(&mut l.sched);
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
        match &node.op {
            Op::Reshape { .. } => {
                self.value[id.index()] = Some(self.buf(ins[0]));
            }
            Op::Conv2d(a) => self.conv_forward(id, a)?,
            Op::Conv2dGradInput { conv: a, .. } => self.conv_grad(id, ConvPass::GradInput, a),
            Op::Conv2dGradWeight(a) => self.conv_grad(id, ConvPass::GradWeight, a),
            Op::Linear | Op::LinearGradInput | Op::LinearGradWeight => self.linear(id),
            Op::MaxPool2d(p) => {
                let (x, y) = (self.nchw(ins[0]), self.nchw(id));
                let launch = MaxPoolLaunch {
                    grad: false,
                    pool: *p,
                    x,
                    y,
                    isa: self.isa,
                };
                self.max_pool(id, launch, &[ins[0]]);
            }
            Op::AvgPool2d(p) => self.avg_pool(id, *p),
            Op::MaxPool2dGrad(p) => {
                let (x, y) = (self.nchw(ins[1]), self.nchw(ins[0]));
                let launch = MaxPoolLaunch {
                    grad: true,
                    pool: *p,
                    x,
                    y,
                    isa: self.isa,
                };
                self.max_pool(id, launch, &[ins[0], ins[1]]);
            }
            Op::AvgPool2dGrad { pool, .. } => self.avg_pool_grad(id, *pool),
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
            Op::GlobalAvgPool => self.global_avg_pool(id),
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
}
