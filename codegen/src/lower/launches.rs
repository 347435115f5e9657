//! Nodes that become one launch each: convolution passes (with a bias add
//! and BatchNorm's statistics folded into the forward pass when only they
//! read its output, a dropout mask into the input gradient when only it reads
//! it), GEMMs, max and average pooling in Rust (a dropout mask folded into
//! average pooling's input or gradient the same way), and the scalar loop
//! nests.

use dropjit_graph::interp::Nchw;
use dropjit_graph::op::{Conv2dAttrs, MaskSpec, Op, PoolAttrs};
use dropjit_graph::NodeId;

use super::{KernelDef, Lower};
use crate::avgpool::AvgPoolLaunch;
use crate::conv::{ConvLaunch, ConvPass, InputMask};
use crate::kernels::gemm::{ConvGeom, GemmDesc};
use crate::kernels::shortcut::{ShortcutGeom, ShortcutKernel};
use crate::kernels::softmax::SoftmaxXentKernel;
use crate::layout::key_slot;
use crate::maxpool::MaxPoolLaunch;
use crate::schedule::{BufRef, LaunchKind, NativeOp, ScalarOp};
use crate::CodegenError;

/// A mask node's factors (those that drop something) and scale, as a
/// convolution launch applies them.
fn input_mask(spec: &MaskSpec) -> InputMask {
    let factors = spec
        .factors
        .iter()
        .map(|f| {
            (
                key_slot(spec.site.0, f.stream),
                dropjit_graph::mask::keep_threshold(f.ratio),
            )
        })
        .filter(|&(_, t)| t > 0)
        .collect();
    InputMask::new(factors, spec.scale() as f32)
}

impl Lower<'_> {
    /// A forward convolution, with the bias add and BatchNorm statistics
    /// folded in where they apply.
    pub(super) fn conv_forward(&mut self, id: NodeId, a: &Conv2dAttrs) -> Result<(), CodegenError> {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        let out_elems = self.elems(id);
        let (x, y) = (self.nchw(ins[0]), self.nchw(id));
        let yb = self.temp(&node.name, out_elems);
        let (xb, mask) = self.conv_input(ins[0]);
        let args = [xb, self.buf(ins[1]), yb];
        let mut launch = ConvLaunch::new(ConvPass::Forward, conv_geom(x, a), self.n, y.c, self.isa);
        if let Some(m) = mask {
            launch = launch.with_input_mask(m);
        }
        let mut nodes = vec![id];
        let mut extra = Vec::new();
        // A bias that only this convolution's output receives is added as the
        // output is stored (one pass less over it); the convolution's own,
        // bias-free value is then never stored.
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
        Ok(())
    }

    /// A convolution's input or weight gradient (inputs `[dy, w]` or
    /// `[dy, x]`).
    pub(super) fn conv_grad(&mut self, id: NodeId, pass: ConvPass, a: &Conv2dAttrs) {
        let node = self.g.node(id).clone();
        let ins = &node.inputs;
        // The forward input's shape: dx's own, or that of dW's second input.
        let (dy, x) = match pass {
            ConvPass::GradInput => (self.nchw(ins[0]), self.nchw(id)),
            _ => (self.nchw(ins[0]), self.nchw(ins[1])),
        };
        let out = self.temp(&node.name, self.elems(id));
        let (in1, mask) = match pass {
            ConvPass::GradWeight => self.conv_input(ins[1]),
            _ => (self.buf(ins[1]), None),
        };
        let args = [self.buf(ins[0]), in1, out];
        let mut launch = ConvLaunch::new(pass, conv_geom(x, a), self.n, dy.c, self.isa);
        if let Some(m) = mask {
            launch = launch.with_input_mask(m);
        }
        // A mask that alone reads the input gradient (the dropout's backward
        // `B ⊙ dx`) is applied to each image as the launch finishes it; the
        // unmasked gradient is then never stored.
        if let Some((mask_node, m)) = self.output_mask_of(id, launch.can_mask_output()) {
            self.conv_launch(&[id, mask_node], launch.with_output_mask(m), args, &[]);
            self.value[mask_node.index()] = Some(out);
            return;
        }
        self.conv_launch(&[id], launch, args, &[]);
        self.value[id.index()] = Some(out);
    }

    /// The mask node reading gradient `id` and its mask, when that node is
    /// the only reader and the launch computing `id` can apply it (`can`).
    fn output_mask_of(&self, id: NodeId, can: bool) -> Option<(NodeId, InputMask)> {
        let [user] = self.users[id.index()][..] else {
            return None;
        };
        let node = self.g.node(user);
        let Op::Mask(spec) = &node.op else {
            return None;
        };
        (can && node.inputs[0] == id && !self.outputs.contains(&id))
            .then(|| (user, input_mask(spec)))
    }

    /// The buffer a convolution or average pooling reads as its image input
    /// `id`, and the mask to apply as it reads each image when `id` is a mask
    /// node left to it ([`Lower::masked_input`]).
    fn conv_input(&self, id: NodeId) -> (BufRef, Option<InputMask>) {
        match self.masked_inputs.get(&id) {
            Some((x, m)) => (self.buf(*x), Some(m.clone())),
            None => (self.buf(id), None),
        }
    }

    /// Mask node `id` as an [`InputMask`] when every reader is a direct or
    /// Winograd forward or a direct weight-gradient convolution taking it as
    /// its image input, or average pooling, which then masks each image as it
    /// reads it: the masked tensor is never written and read back (augmented
    /// dropout's `F ⊙ x` and `B ⊙ x`, 8 MB each per site of ResNet-20's
    /// first stage; ConvNet-Quick's sites before average pooling).
    pub(super) fn masked_input(&self, id: NodeId) -> Option<(NodeId, InputMask)> {
        let node = self.g.node(id);
        let Op::Mask(spec) = &node.op else {
            return None;
        };
        let users = &self.users[id.index()];
        if users.is_empty() || self.outputs.contains(&id) {
            return None;
        }
        // Only convolutions' image inputs (hence image-shaped) reach `nchw`.
        let applies = |&u: &NodeId| {
            let un = self.g.node(u);
            let launch = match &un.op {
                Op::Conv2d(a) if un.inputs[0] == id && un.inputs[1] != id => {
                    let (x, co) = (self.nchw(id), self.nchw(u).c);
                    ConvLaunch::new(ConvPass::Forward, conv_geom(x, a), self.n, co, self.isa)
                }
                Op::Conv2dGradWeight(a) if un.inputs[1] == id && un.inputs[0] != id => {
                    let (x, co) = (self.nchw(id), self.nchw(un.inputs[0]).c);
                    ConvLaunch::new(ConvPass::GradWeight, conv_geom(x, a), self.n, co, self.isa)
                }
                Op::AvgPool2d(_) => return true,
                _ => return false,
            };
            launch.can_mask_input()
        };
        if !users.iter().all(applies) {
            return None;
        }
        Some((node.inputs[0], input_mask(spec)))
    }

    /// A linear layer or one of its gradients as one GEMM launch.
    pub(super) fn linear(&mut self, id: NodeId) {
        let ins = self.g.node(id).inputs.clone();
        let d = match self.g.node(id).op {
            Op::Linear => {
                // y[N, O] = x[N, I] · Wᵀ[I, O]
                let (i, o) = (self.ty(ins[0]).dims[0], self.ty(id).dims[0]);
                let mut d = GemmDesc::row_major(self.n, i, o, 1.0, 0.0);
                d.rsb = 1;
                d.csb = i as isize;
                d
            }
            Op::LinearGradInput => {
                // dx[N, I] = dy[N, O] · W[O, I]
                let (o, i) = (self.ty(ins[0]).dims[0], self.ty(id).dims[0]);
                GemmDesc::row_major(self.n, o, i, 1.0, 0.0)
            }
            Op::LinearGradWeight => {
                // dW[O, I] = dyᵀ[O, N] · x[N, I]
                let (o, i) = (self.ty(ins[0]).dims[0], self.ty(ins[1]).dims[0]);
                let mut d = GemmDesc::row_major(o, self.n, i, 1.0, 0.0);
                d.rsa = 1;
                d.csa = o as isize;
                d
            }
            _ => unreachable!("linear ops only"),
        };
        self.gemm(id, d, ins[0], ins[1]);
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
    pub(super) fn max_pool(&mut self, id: NodeId, launch: MaxPoolLaunch, ins: &[NodeId]) {
        let out_elems = *launch.extents().last().expect("an output");
        let out = self.temp(&self.g.node(id).name.clone(), out_elems);
        let mut args: Vec<BufRef> = ins.iter().map(|&i| self.buf(i)).collect();
        args.push(out);
        self.launch(LaunchKind::Native(NativeOp::MaxPool(launch)), args, &[id]);
        self.value[id.index()] = Some(out);
    }

    /// Average pooling as a Rust launch, masking its input where the mask
    /// node is left to it.
    pub(super) fn avg_pool(&mut self, id: NodeId, pool: PoolAttrs) {
        let input = self.g.node(id).inputs[0];
        let (x, y) = (self.nchw(input), self.nchw(id));
        let (xb, mask) = self.conv_input(input);
        let mut launch = AvgPoolLaunch::new(false, pool, x, y, self.isa);
        if let Some(m) = mask {
            launch = launch.with_input_mask(m);
        }
        let out = self.temp(&self.g.node(id).name.clone(), y.len());
        self.launch(
            LaunchKind::Native(NativeOp::AvgPool(launch)),
            vec![xb, out],
            &[id],
        );
        self.value[id.index()] = Some(out);
    }

    /// Average pooling's gradient as a Rust launch, with the dropout mask
    /// that alone reads it applied as each image is stored.
    pub(super) fn avg_pool_grad(&mut self, id: NodeId, pool: PoolAttrs) {
        let dy = self.g.node(id).inputs[0];
        let (x, y) = (self.nchw(id), self.nchw(dy));
        let mut launch = AvgPoolLaunch::new(true, pool, x, y, self.isa);
        let out = self.temp(&self.g.node(id).name.clone(), x.len());
        let args = vec![self.buf(dy), out];
        if let Some((mask_node, m)) = self.output_mask_of(id, true) {
            launch = launch.with_output_mask(m);
            self.launch(
                LaunchKind::Native(NativeOp::AvgPool(launch)),
                args,
                &[id, mask_node],
            );
            self.value[mask_node.index()] = Some(out);
            return;
        }
        self.launch(LaunchKind::Native(NativeOp::AvgPool(launch)), args, &[id]);
        self.value[id.index()] = Some(out);
    }

    /// A scalar Cranelift loop nest (the option-A shortcut, the loss) and its
    /// launch.
    pub(super) fn scalar(&mut self, id: NodeId, op: ScalarOp, ins: &[NodeId]) {
        let name = self.g.node(id).name.clone();
        let (_, out_elems) = op.extents();
        let out = self.temp(&name, out_elems);
        let mut args: Vec<BufRef> = ins.iter().map(|&i| self.buf(i)).collect();
        args.push(out);
        let func = self.kernels.len();
        self.kernels
            .push(scalar_kernel(&op, &format!("k{func}"), &name));
        self.launch(LaunchKind::Scalar { func, op }, args, &[id]);
        self.value[id.index()] = Some(out);
    }
}

fn conv_geom(x: Nchw, a: &Conv2dAttrs) -> ConvGeom {
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

/// The loop nest that implements scalar op `op`.
fn scalar_kernel(op: &ScalarOp, symbol: &str, comment: &str) -> KernelDef {
    let (symbol, comment) = (symbol.to_string(), comment.to_string());
    match *op {
        ScalarOp::ShortcutA { stride, x, y } | ScalarOp::ShortcutAGrad { stride, x, y } => {
            KernelDef::Shortcut(ShortcutKernel {
                symbol,
                comment,
                grad: matches!(op, ScalarOp::ShortcutAGrad { .. }),
                images: x.n,
                geom: ShortcutGeom {
                    c_in: x.c,
                    in_h: x.h,
                    in_w: x.w,
                    c_out: y.c,
                    out_h: y.h,
                    out_w: y.w,
                    stride,
                },
            })
        }
        ScalarOp::SoftmaxCrossEntropy { n, k } | ScalarOp::SoftmaxCrossEntropyGrad { n, k } => {
            KernelDef::SoftmaxXent(SoftmaxXentKernel {
                symbol,
                comment,
                grad: matches!(op, ScalarOp::SoftmaxCrossEntropyGrad { .. }),
                rows: n,
                k,
            })
        }
    }
}
