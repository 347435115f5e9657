//! Fusion: runs of consecutive elementwise nodes over the same iteration
//! space become one Cranelift loop nest (a [`Group`]); only values read
//! outside the run are written to memory, and dropout masks are generated
//! inside the loop from the shared hash.

use std::collections::HashMap;

use dropjit_graph::op::{MaskSpec, Op};
use dropjit_graph::NodeId;

use super::{dims_of, KernelDef, Lower};
use crate::kernels::elementwise::ElementwiseKernel;
use crate::kernels::expr::{BufId, Dims, ExprGraph, ExprId, KeySlot, MaskFactor};
use crate::layout::key_slot;
use crate::schedule::{BufKind, BufRef, LaunchKind};
use crate::CodegenError;

/// An open run of fusable elementwise nodes.
pub(super) struct Group {
    pub(super) dims: Dims,
    pub(super) graph: ExprGraph,
    pub(super) members: Vec<NodeId>,
    pub(super) expr: HashMap<NodeId, ExprId>,
    /// Kernel argument slots: buffer and the extent the kernel touches.
    pub(super) args: Vec<(BufRef, usize)>,
    pub(super) loads: HashMap<(BufRef, bool), ExprId>,
    /// Outputs written in place into an argument (SGD, running statistics).
    pub(super) in_place: Vec<(usize, ExprId)>,
}

impl Group {
    pub(super) fn new(dims: Dims) -> Self {
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

    pub(super) fn slot(&mut self, buf: BufRef, extent: usize) -> BufId {
        if let Some(i) = self.args.iter().position(|(b, _)| *b == buf) {
            self.args[i].1 = self.args[i].1.max(extent);
            return BufId(i as u32);
        }
        self.args.push((buf, extent));
        BufId(self.args.len() as u32 - 1)
    }
}

impl Lower<'_> {
    /// Whether node `id` can join an elementwise run (and which space it iterates).
    pub(super) fn fusable(&self, id: NodeId) -> bool {
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

    pub(super) fn fuse(&mut self, id: NodeId) -> Result<(), CodegenError> {
        if let Some(m) = self.masked_input(id) {
            // Applied by the convolutions that read it; see `masked_input`.
            self.masked_inputs.insert(id, m);
            return Ok(());
        }
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

    fn gr(&mut self) -> &mut ExprGraph {
        &mut self.group.as_mut().expect("open group").graph
    }

    /// Closes the open run: one kernel writing every member that is read
    /// outside the run (or is a graph output), plus in-place state updates.
    pub(super) fn flush(&mut self) -> Result<(), CodegenError> {
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
}
