//! Per-channel statistics as Cranelift reductions split by channel
//! (BatchNorm's mean and variance, the bias and γ gradients), and global
//! average pooling as a reduction over each plane.

use dropjit_graph::op::Op;
use dropjit_graph::NodeId;

use super::arg_slot;
use super::bn_grad::xhat;
use super::{dims_of, KernelDef, Lower};
use crate::kernels::expr::{BufId, Dims, ExprGraph};
use crate::kernels::reduce::ReduceKernel;
use crate::schedule::{BufRef, LaunchKind};
use crate::CodegenError;

impl Lower<'_> {
    /// A per-channel statistic as a Cranelift reduction over `(N, H·W)`.
    pub(super) fn reduction(&mut self, id: NodeId) -> Result<(), CodegenError> {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let dims = dims_of(self.ty(ins[0]), self.n);
        let count = (dims.outer * dims.inner) as f64;
        let mut gr = ExprGraph::new();
        let mut args: Vec<BufRef> = Vec::new();
        let mut slot = |b: BufRef| arg_slot(&mut args, b);
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

    /// Global average pooling: a per-(n, c) mean over H·W, a reduction whose
    /// "channels" are the N·C planes.
    pub(super) fn global_avg_pool(&mut self, id: NodeId) {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
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
}
