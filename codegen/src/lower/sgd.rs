//! The SGD updates, deferred to the end of the step: one fused elementwise
//! loop per run of parameters that share their hyper-parameters and lie back
//! to back in the state, over a slab their gradients become views into.

use dropjit_graph::op::Op;
use dropjit_graph::NodeId;

use super::{KernelDef, Lower};
use crate::kernels::elementwise::ElementwiseKernel;
use crate::kernels::expr::{BufId, Dims, ExprGraph};
use crate::schedule::{BufKind, BufRef, LaunchKind};
use crate::CodegenError;

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

impl Lower<'_> {
    /// The deferred SGD updates as one elementwise loop per run of parameters
    /// that share `(lr_mult, weight_decay, momentum)` and lie back to back in
    /// the state, momentum alike (`StateLayout` arranges that per class).
    /// The run's gradients become views into one arena slab in the same
    /// order, so the loop streams gradients, parameters and momentum.
    /// Deferring is sound: nothing in a step reads a parameter after its update.
    pub(super) fn sgd_updates(&mut self) -> Result<(), CodegenError> {
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
}
