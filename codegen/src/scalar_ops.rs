//! Ops lowered to scalar loop nests rather than fused elementwise loops:
//! average-pooling windows, the option-A shortcut and softmax cross-entropy. This is
//! their description in the schedule (name, operand extents, split range);
//! the loops themselves are emitted by `kernels::{avg_pool, shortcut, softmax}`.

pub use dropjit_graph::interp::Nchw;
use dropjit_graph::op::PoolAttrs;

use crate::kernels::avg_pool::{AvgPoolKernel, PoolGeom};
use crate::kernels::shortcut::{ShortcutGeom, ShortcutKernel};
use crate::kernels::softmax::SoftmaxXentKernel;
use crate::lower::KernelDef;

#[derive(Clone, Debug, PartialEq)]
pub enum ScalarOp {
    AvgPool {
        pool: PoolAttrs,
        x: Nchw,
        y: Nchw,
    },
    AvgPoolGrad {
        pool: PoolAttrs,
        x: Nchw,
        y: Nchw,
    },
    ShortcutA {
        stride: usize,
        x: Nchw,
        y: Nchw,
    },
    ShortcutAGrad {
        stride: usize,
        x: Nchw,
        y: Nchw,
    },
    /// inputs `[logits, labels]`, output the mean loss (one value).
    SoftmaxCrossEntropy {
        n: usize,
        k: usize,
    },
    SoftmaxCrossEntropyGrad {
        n: usize,
        k: usize,
    },
}

impl ScalarOp {
    pub fn name(&self) -> &'static str {
        match self {
            ScalarOp::AvgPool { .. } => "avg_pool2d",
            ScalarOp::AvgPoolGrad { .. } => "avg_pool2d_grad",
            ScalarOp::ShortcutA { .. } => "shortcut_a",
            ScalarOp::ShortcutAGrad { .. } => "shortcut_a_grad",
            ScalarOp::SoftmaxCrossEntropy { .. } => "softmax_cross_entropy",
            ScalarOp::SoftmaxCrossEntropyGrad { .. } => "softmax_cross_entropy_grad",
        }
    }

    /// Elements each operand must hold (inputs first, then the output), so the
    /// plan can check every access before anything runs.
    pub fn extents(&self) -> (Vec<usize>, usize) {
        match self {
            ScalarOp::AvgPool { x, y, .. } => (vec![x.len()], y.len()),
            ScalarOp::AvgPoolGrad { x, y, .. } => (vec![y.len()], x.len()),
            ScalarOp::ShortcutA { x, y, .. } => (vec![x.len()], y.len()),
            ScalarOp::ShortcutAGrad { x, y, .. } => (vec![y.len()], x.len()),
            ScalarOp::SoftmaxCrossEntropy { n, k } => (vec![n * k, *n], 1),
            ScalarOp::SoftmaxCrossEntropyGrad { n, k } => (vec![n * k, *n], n * k),
        }
    }

    /// Length of the range the launch is split over: planes for pooling and
    /// the shortcut, rows for the loss gradient, one for the loss (a single
    /// in-order sum over the batch).
    pub fn range(&self) -> usize {
        match self {
            ScalarOp::AvgPool { y, .. } | ScalarOp::ShortcutA { y, .. } => y.n * y.c,
            ScalarOp::AvgPoolGrad { x, .. } | ScalarOp::ShortcutAGrad { x, .. } => x.n * x.c,
            ScalarOp::SoftmaxCrossEntropy { .. } => 1,
            ScalarOp::SoftmaxCrossEntropyGrad { n, .. } => *n,
        }
    }

    /// The loop nest that implements the op.
    pub fn kernel(&self, symbol: &str, comment: &str) -> KernelDef {
        let (symbol, comment) = (symbol.to_string(), comment.to_string());
        match *self {
            ScalarOp::AvgPool { pool, x, y } | ScalarOp::AvgPoolGrad { pool, x, y } => {
                KernelDef::AvgPool(AvgPoolKernel {
                    symbol,
                    comment,
                    grad: matches!(self, ScalarOp::AvgPoolGrad { .. }),
                    planes: x.n * x.c,
                    geom: PoolGeom {
                        in_h: x.h,
                        in_w: x.w,
                        out_h: y.h,
                        out_w: y.w,
                        kernel: pool.kernel,
                        stride: pool.stride,
                        padding: pool.padding,
                    },
                })
            }
            ScalarOp::ShortcutA { stride, x, y } | ScalarOp::ShortcutAGrad { stride, x, y } => {
                KernelDef::Shortcut(ShortcutKernel {
                    symbol,
                    comment,
                    grad: matches!(self, ScalarOp::ShortcutAGrad { .. }),
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
                    grad: matches!(self, ScalarOp::SoftmaxCrossEntropyGrad { .. }),
                    rows: n,
                    k,
                })
            }
        }
    }
}
