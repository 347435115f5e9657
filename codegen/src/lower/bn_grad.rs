//! BatchNorm's input gradient: one reduction for the two means it needs
//! (taking dγ and dβ in the same pass when the graph asks for them), then an
//! elementwise node that may fuse with what follows.

use dropjit_graph::op::Op;
use dropjit_graph::NodeId;

use super::arg_slot;
use super::fusion::Group;
use super::{dims_of, KernelDef, Lower};
use crate::kernels::expr::{BufId, ExprGraph, ExprId};
use crate::kernels::reduce::ReduceKernel;
use crate::schedule::{BufRef, LaunchKind};
use crate::CodegenError;

impl Lower<'_> {
    /// dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)): one reduction for the two
    /// means, then an elementwise node that may fuse with what follows.
    pub(super) fn bn_grad_input(&mut self, id: NodeId, eps: f32) -> Result<(), CodegenError> {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let dims = dims_of(self.ty(ins[0]), self.n);
        let count = (dims.outer * dims.inner) as f64;
        let stats = [self.buf(ins[1]), self.buf(ins[2]), self.buf(ins[3])];
        let (dyb, gamma) = (self.buf(ins[0]), self.buf(ins[4]));
        let mut gr = ExprGraph::new();
        let mut args: Vec<BufRef> = Vec::new();
        let mut slot = |b: BufRef| arg_slot(&mut args, b);
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
pub(super) fn xhat(
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
