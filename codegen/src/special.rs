//! Ops lowered to Rust helpers rather than generated loops: pooling windows,
//! the option-A shortcut and softmax cross-entropy.
//! They touch little data next to the convolutions, and follow the reference
//! interpreter's arithmetic order, so they agree with it to the bit.

use dropjit_graph::interp::window;
use dropjit_graph::op::PoolAttrs;

use crate::kernels::parallel::global_pool;

/// `[N, C, H, W]` of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SpecialOp {
    MaxPool {
        pool: PoolAttrs,
        x: Nchw,
        y: Nchw,
    },
    AvgPool {
        pool: PoolAttrs,
        x: Nchw,
        y: Nchw,
    },
    /// inputs `[dy, x]`, output dx.
    MaxPoolGrad {
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

impl SpecialOp {
    pub fn name(&self) -> &'static str {
        match self {
            SpecialOp::MaxPool { .. } => "max_pool2d",
            SpecialOp::AvgPool { .. } => "avg_pool2d",
            SpecialOp::MaxPoolGrad { .. } => "max_pool2d_grad",
            SpecialOp::AvgPoolGrad { .. } => "avg_pool2d_grad",
            SpecialOp::ShortcutA { .. } => "shortcut_a",
            SpecialOp::ShortcutAGrad { .. } => "shortcut_a_grad",
            SpecialOp::SoftmaxCrossEntropy { .. } => "softmax_cross_entropy",
            SpecialOp::SoftmaxCrossEntropyGrad { .. } => "softmax_cross_entropy_grad",
        }
    }

    /// Elements each operand must hold (inputs first, then the output), so the
    /// plan can check every access before anything runs.
    pub fn extents(&self) -> (Vec<usize>, usize) {
        match self {
            SpecialOp::MaxPool { x, y, .. } | SpecialOp::AvgPool { x, y, .. } => {
                (vec![x.len()], y.len())
            }
            SpecialOp::MaxPoolGrad { x, y, .. } => (vec![y.len(), x.len()], x.len()),
            SpecialOp::AvgPoolGrad { x, y, .. } => (vec![y.len()], x.len()),
            SpecialOp::ShortcutA { x, y, .. } => (vec![x.len()], y.len()),
            SpecialOp::ShortcutAGrad { x, y, .. } => (vec![y.len()], x.len()),
            SpecialOp::SoftmaxCrossEntropy { n, k } => (vec![n * k, *n], 1),
            SpecialOp::SoftmaxCrossEntropyGrad { n, k } => (vec![n * k, *n], n * k),
        }
    }

    /// Runs the op. `ins` and `out` hold at least `extents()` elements (checked
    /// at plan time); labels are passed as f32 bit patterns of `u32`.
    pub fn run(&self, ins: &[&[f32]], out: &mut [f32], threads: usize) {
        match self {
            SpecialOp::MaxPool { pool, x, y } => per_plane(*y, out, threads, &|p, o| {
                let src = &ins[0][p * x.plane()..(p + 1) * x.plane()];
                windows(pool, *x, *y, &mut |oi, taps| {
                    let mut best = src[taps[0]];
                    for &t in &taps[1..] {
                        if src[t] > best {
                            best = src[t];
                        }
                    }
                    o[oi] = best;
                })
            }),
            SpecialOp::AvgPool { pool, x, y } => per_plane(*y, out, threads, &|p, o| {
                let src = &ins[0][p * x.plane()..(p + 1) * x.plane()];
                windows_counted(pool, *x, *y, &mut |oi, taps, count| {
                    let mut acc = 0.0f32;
                    for &t in taps {
                        acc += src[t];
                    }
                    o[oi] = acc / count as f32;
                })
            }),
            SpecialOp::MaxPoolGrad { pool, x, y } => per_plane(*x, out, threads, &|p, dx| {
                dx.fill(0.0);
                let dy = &ins[0][p * y.plane()..(p + 1) * y.plane()];
                let src = &ins[1][p * x.plane()..(p + 1) * x.plane()];
                windows(pool, *x, *y, &mut |oi, taps| {
                    let mut arg = taps[0];
                    for &t in &taps[1..] {
                        if src[t] > src[arg] {
                            arg = t;
                        }
                    }
                    dx[arg] += dy[oi];
                })
            }),
            SpecialOp::AvgPoolGrad { pool, x, y } => per_plane(*x, out, threads, &|p, dx| {
                dx.fill(0.0);
                let dy = &ins[0][p * y.plane()..(p + 1) * y.plane()];
                windows_counted(pool, *x, *y, &mut |oi, taps, count| {
                    let g = dy[oi] / count as f32;
                    for &t in taps {
                        dx[t] += g;
                    }
                })
            }),
            SpecialOp::ShortcutA { stride, x, y } => {
                out[..y.len()].fill(0.0);
                let pad = (y.c - x.c) / 2;
                for n in 0..x.n {
                    for c in 0..x.c {
                        for h in 0..y.h {
                            for w in 0..y.w {
                                out[((n * y.c + c + pad) * y.h + h) * y.w + w] =
                                    ins[0][((n * x.c + c) * x.h + h * stride) * x.w + w * stride];
                            }
                        }
                    }
                }
            }
            SpecialOp::ShortcutAGrad { stride, x, y } => {
                out[..x.len()].fill(0.0);
                let pad = (y.c - x.c) / 2;
                for n in 0..x.n {
                    for c in 0..x.c {
                        for h in 0..y.h {
                            for w in 0..y.w {
                                out[((n * x.c + c) * x.h + h * stride) * x.w + w * stride] =
                                    ins[0][((n * y.c + c + pad) * y.h + h) * y.w + w];
                            }
                        }
                    }
                }
            }
            SpecialOp::SoftmaxCrossEntropy { n, k }
            | SpecialOp::SoftmaxCrossEntropyGrad { n, k } => {
                let grad = matches!(self, SpecialOp::SoftmaxCrossEntropyGrad { .. });
                let mut loss = 0.0f32;
                for b in 0..*n {
                    let row = &ins[0][b * k..(b + 1) * k];
                    let t = ins[1][b].to_bits() as usize;
                    let max = row
                        .iter()
                        .copied()
                        .fold(row[0], |m, v| if v > m { v } else { m });
                    let mut sum = 0.0f32;
                    for &v in row {
                        sum += (v - max).exp();
                    }
                    loss += sum.ln() + max - row[t];
                    if grad {
                        for j in 0..*k {
                            let p = (row[j] - max).exp() / sum;
                            let onehot = if j == t { 1.0 } else { 0.0 };
                            out[b * k + j] = (p - onehot) / *n as f32;
                        }
                    }
                }
                if !grad {
                    out[0] = loss / *n as f32;
                }
            }
        }
    }
}

/// Runs `f(plane index, output plane)` over the `N·C` planes of `shape`,
/// split across threads by planes (each writes only its own).
fn per_plane(shape: Nchw, out: &mut [f32], threads: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let plane = shape.plane();
    let planes = shape.n * shape.c;
    let ptr = out.as_mut_ptr() as usize;
    let parts = threads.clamp(1, planes.max(1));
    let run = |t: usize| {
        let (b, e) = (planes * t / parts, planes * (t + 1) / parts);
        for p in b..e {
            // SAFETY: planes [b, e) of `out` belong to this task alone.
            let o =
                unsafe { std::slice::from_raw_parts_mut((ptr as *mut f32).add(p * plane), plane) };
            f(p, o);
        }
    };
    if parts == 1 {
        run(0);
    } else {
        global_pool().parallel_for(parts, &run);
    }
}

fn windows(pool: &PoolAttrs, x: Nchw, y: Nchw, f: &mut dyn FnMut(usize, &[usize])) {
    windows_counted(pool, x, y, &mut |o, taps, _| f(o, taps))
}

/// Calls `f(output index in plane, input indices in plane, divisor)` per window.
fn windows_counted(pool: &PoolAttrs, x: Nchw, y: Nchw, f: &mut dyn FnMut(usize, &[usize], usize)) {
    let mut taps = Vec::with_capacity(pool.kernel * pool.kernel);
    for oh in 0..y.h {
        let (h0, h1, hc) = window(oh, pool, x.h);
        for ow in 0..y.w {
            let (w0, w1, wc) = window(ow, pool, x.w);
            taps.clear();
            for ih in h0..h1 {
                for iw in w0..w1 {
                    taps.push(ih * x.w + iw);
                }
            }
            f(oh * y.w + ow, &taps, hc * wc);
        }
    }
}
