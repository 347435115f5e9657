//! The lowered program: buffers and the launches that read and write them, in
//! execution order. Printable (`--emit plan`), checked before it runs.

use std::fmt::Write;

use dropjit_graph::interp::Nchw;

use crate::avgpool::AvgPoolLaunch;
use crate::conv::ConvLaunch;
use crate::kernels::expr::Dims;
use crate::kernels::gemm::GemmDesc;
use crate::maxpool::MaxPoolLaunch;

/// Index into [`Schedule::buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufRef(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufKind {
    /// A value of one step, placed in the arena by the memory plan.
    Temp,
    /// A slice of the persistent state (parameters, momentum, the lr slot).
    State { offset: usize },
    /// Elements `at..at + elems` of another arena buffer (a parameter's
    /// gradient inside the gradient slab its SGD class is updated from).
    /// Its `offset` is set by the memory plan from the slab's.
    View { of: BufRef, at: usize },
    /// The image batch, bound at run time.
    Image,
    /// The label batch (as f32 bit patterns of u32), bound at run time.
    Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub name: String,
    pub kind: BufKind,
    pub elems: usize,
    /// Kept to the end of the step (outputs the runtime reads).
    pub pinned: bool,
    /// Arena offset in f32 elements, set by the memory plan.
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LaunchKind {
    /// A JIT elementwise kernel over `dims`, split by the outer dimension.
    Elementwise { func: usize, dims: Dims },
    /// A JIT per-channel reduction, split by channel.
    Reduce { func: usize, dims: Dims },
    /// `C = alpha·A·B + beta·C` (batched, strided) through matrixmultiply.
    Gemm(GemmDesc),
    /// Rust code over the whole batch, called through `exec::dropjit_run_op`.
    Native(NativeOp),
    /// A JIT scalar loop nest (option-A shortcut, softmax cross-entropy),
    /// split over `op.range()` planes or rows.
    Scalar { func: usize, op: ScalarOp },
}

/// A launch run by Rust code rather than a generated kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum NativeOp {
    /// A whole convolution pass (see [`ConvLaunch`]).
    Conv(ConvLaunch),
    /// Max pooling or its gradient over all planes (see [`MaxPoolLaunch`]).
    MaxPool(MaxPoolLaunch),
    /// Average pooling or its gradient, masked or not (see [`AvgPoolLaunch`]).
    AvgPool(AvgPoolLaunch),
}

impl NativeOp {
    /// Elements each argument must hold.
    pub fn extents(&self) -> Vec<usize> {
        match self {
            NativeOp::Conv(c) => c.extents(),
            NativeOp::MaxPool(m) => m.extents(),
            NativeOp::AvgPool(a) => a.extents(),
        }
    }

    /// The arguments it writes.
    pub fn written(&self) -> std::ops::Range<usize> {
        let n = self.extents().len();
        match self {
            // Output, scratch and the statistics.
            NativeOp::Conv(_) => 2..n,
            NativeOp::MaxPool(_) | NativeOp::AvgPool(_) => n - 1..n,
        }
    }

    /// The launch kind `bench --profile` adds its time to.
    pub fn kind_name(&self) -> String {
        match self {
            NativeOp::Conv(c) => format!("conv {:?}", c.pass),
            NativeOp::MaxPool(m) if m.grad => "max_pool2d_grad".into(),
            NativeOp::MaxPool(_) => "max_pool2d".into(),
            NativeOp::AvgPool(a) if a.grad => "avg_pool2d_grad".into(),
            NativeOp::AvgPool(_) => "avg_pool2d".into(),
        }
    }

    /// One past the largest mask key slot the op reads (0: none).
    pub fn key_slots(&self) -> u32 {
        match self {
            NativeOp::Conv(c) => c.key_slots(),
            NativeOp::MaxPool(_) => 0,
            NativeOp::AvgPool(a) => a.key_slots(),
        }
    }

    /// # Safety
    /// `ptrs` holds the buffers of [`NativeOp::extents`], `keys` the step's
    /// key table ([`NativeOp::key_slots`] at least); see each op's `run`.
    pub unsafe fn run(&self, ptrs: *const *mut f32, keys: *const u64, threads: usize) {
        let args = self.extents().len();
        let ptrs = std::slice::from_raw_parts(ptrs, args);
        match self {
            NativeOp::Conv(c) => c.run(ptrs, keys, threads),
            NativeOp::MaxPool(m) => m.run(ptrs, threads),
            NativeOp::AvgPool(a) => a.run(ptrs, keys, threads),
        }
    }
}

/// A launch of a JIT scalar loop nest rather than a fused elementwise loop:
/// the option-A shortcut and softmax cross-entropy.
/// This is its description (name, operand extents, split range); the lowering
/// builds the loop nest from `kernels::{shortcut, softmax}`.
#[derive(Clone, Debug, PartialEq)]
pub enum ScalarOp {
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
            ScalarOp::ShortcutA { x, y, .. } => (vec![x.len()], y.len()),
            ScalarOp::ShortcutAGrad { x, y, .. } => (vec![y.len()], x.len()),
            ScalarOp::SoftmaxCrossEntropy { n, k } => (vec![n * k, *n], 1),
            ScalarOp::SoftmaxCrossEntropyGrad { n, k } => (vec![n * k, *n], n * k),
        }
    }

    /// Length of the range the launch is split over: planes for the
    /// shortcut, rows for the loss gradient, one for the loss (a single
    /// in-order sum over the batch).
    pub fn range(&self) -> usize {
        match self {
            ScalarOp::ShortcutA { y, .. } => y.n * y.c,
            ScalarOp::ShortcutAGrad { x, .. } => x.n * x.c,
            ScalarOp::SoftmaxCrossEntropy { .. } => 1,
            ScalarOp::SoftmaxCrossEntropyGrad { n, .. } => *n,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kind: LaunchKind,
    /// Buffers in the kernel's argument order (for GEMM: A, B, C; for
    /// conv: see [`ConvPass`]; scalar: inputs then output).
    pub args: Vec<BufRef>,
    /// Graph nodes this launch implements.
    pub nodes: Vec<String>,
    /// First mask key slot of a kernel launch: the kernel reads
    /// `keys[key_base + slot]` (its own slots start at 0).
    pub key_base: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    pub buffers: Vec<Buffer>,
    pub launches: Vec<Launch>,
    /// Arena size in f32 elements after planning.
    pub arena_elems: usize,
    /// What the arena would need without reuse.
    pub unshared_elems: usize,
}

impl Schedule {
    pub fn buffer(&self, b: BufRef) -> &Buffer {
        &self.buffers[b.0 as usize]
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "arena: {} bytes peak ({} bytes without reuse), {} buffers, {} launches",
            self.arena_elems * 4,
            self.unshared_elems * 4,
            self.buffers.len(),
            self.launches.len()
        );
        for (i, b) in self.buffers.iter().enumerate() {
            let place = match b.kind {
                BufKind::Temp => format!("arena+{}", b.offset * 4),
                BufKind::View { of, .. } => format!("arena+{} (in b{})", b.offset * 4, of.0),
                BufKind::State { offset } => format!("state+{}", offset * 4),
                BufKind::Image => "image".into(),
                BufKind::Labels => "labels".into(),
            };
            let _ = writeln!(s, "  b{i:<4} {:>10} B  {place:<16} {}", b.elems * 4, b.name);
        }
        for (i, l) in self.launches.iter().enumerate() {
            let args: Vec<String> = l.args.iter().map(|b| format!("b{}", b.0)).collect();
            let what = match &l.kind {
                LaunchKind::Elementwise { func, dims } => {
                    format!(
                        "elementwise k{func} [{}x{}x{}]",
                        dims.outer, dims.chans, dims.inner
                    )
                }
                LaunchKind::Reduce { func, dims } => {
                    format!(
                        "reduce k{func} [{}x{}x{}]",
                        dims.outer, dims.chans, dims.inner
                    )
                }
                LaunchKind::Gemm(d) => format!("sgemm {}x{}x{} batch {}", d.m, d.k, d.n, d.batch),
                LaunchKind::Native(NativeOp::Conv(c)) => {
                    format!("conv {} x{} {}", c.shape(), c.images, c.describe())
                }
                LaunchKind::Native(NativeOp::MaxPool(m)) => m.describe(),
                LaunchKind::Native(NativeOp::AvgPool(a)) => a.describe(),
                LaunchKind::Scalar { func, op } => format!("{} k{func}", op.name()),
            };
            let keys = match l.key_base {
                0 => String::new(),
                base => format!(" keys+{base}"),
            };
            let _ = writeln!(
                s,
                "{i:>4}: {what}{keys} ({})  ; {}",
                args.join(", "),
                l.nodes.join(" ")
            );
        }
        s
    }
}
