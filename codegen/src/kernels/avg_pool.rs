//! Average pooling and its gradient as scalar Cranelift loops, split by
//! planes (`N·C`); each plane is read and written by one range only. (Max
//! pooling is a Rust launch: `crate::maxpool`.)
//!
//! ```text
//! for p in begin..end
//!   for oh, ow                        window rows h0..h1, cols w0..w1 (clipped),
//!                                     divisor = window size inside the padding
//!     forward:  y = (Σ window, row-major) / divisor
//!     gradient: dx[every tap] += dy / divisor     (dx zeroed per plane first)
//! ```
//! Window bounds are computed in the loop from `(oh, ow)` with `smin`/`smax`,
//! exactly as `dropjit_graph::interp::window`; `validate` checks at plan time
//! that every window is non-empty and inside its plane.

use cranelift_codegen::ir::types::F32;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

use super::jit::{FuncEnv, KernelSpec, Result};
use super::scalar::{arg_ptr, counted_loop, int, load_f32, mul_add, store_f32, zero_fill};

/// One plane's pooling geometry (square window, same stride and padding on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolGeom {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl PoolGeom {
    pub fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Outputs `lo..hi` along an axis of length `len` whose windows lie wholly
    /// inside it (a contiguous run; empty as `(0, 0)`).
    fn interior(&self, len: usize, outs: usize) -> (usize, usize) {
        let inside = |o: usize| {
            let start = (o * self.stride) as isize - self.padding as isize;
            start >= 0 && start as usize + self.kernel <= len
        };
        match (0..outs).find(|&o| inside(o)) {
            Some(lo) => (lo, (lo..outs).find(|&o| !inside(o)).unwrap_or(outs)),
            None => (0, 0),
        }
    }

    /// `(first, end)` of the clipped window of output index `o` along an axis
    /// of length `len`, or `None` when it would be empty.
    fn window(&self, o: usize, len: usize) -> Option<(usize, usize)> {
        let start = (o * self.stride) as isize - self.padding as isize;
        let end = (start + self.kernel as isize).min(len as isize);
        let first = start.max(0);
        (first < end).then_some((first as usize, end as usize))
    }
}

/// An average-pooling pass over `planes` planes. Arguments: forward
/// `[x, y]`, gradient `[dy, dx]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AvgPoolKernel {
    pub symbol: String,
    pub comment: String,
    pub grad: bool,
    pub planes: usize,
    pub geom: PoolGeom,
}

/// Window bounds along one axis for output index `o` (an i64 value):
/// `(first, end, count)` as in `interp::window`.
fn window(b: &mut FunctionBuilder, o: Value, g: &PoolGeom, len: usize) -> (Value, Value, Value) {
    let start = b.ins().imul_imm_s(o, g.stride as i64);
    let start = b.ins().iadd_imm_s(start, -(g.padding as i64));
    let reach = b.ins().iadd_imm_s(start, g.kernel as i64);
    let padded_len = int(b, len + g.padding);
    let end_in_padding = b.ins().smin(reach, padded_len);
    let count = b.ins().isub(end_in_padding, start);
    let zero = int(b, 0);
    let first = b.ins().smax(start, zero);
    let len = int(b, len);
    let end = b.ins().smin(end_in_padding, len);
    (first, end, count)
}

/// Emits a callback on the element index of every tap of a window.
type TapFn<'a> = dyn FnMut(&mut FunctionBuilder, Value) + 'a;
type WindowVisitor<'a> = dyn FnMut(&mut FunctionBuilder, &mut TapFn) + 'a;

/// The buffers and the element offsets of the current plane in `x`/`dx` and `y`/`dy`.
struct Plane<'a> {
    bufs: &'a [Value],
    x: Value,
    y: Value,
}

impl AvgPoolKernel {
    /// One output of a window that lies inside the plane: the k×k taps at
    /// compile-time offsets from the window's corner, in row-major order.
    fn interior_window(&self, b: &mut FunctionBuilder, at: &Plane, oh: Value, ow: Value) {
        let g = self.geom;
        let row = b.ins().imul_imm_s(oh, (g.stride * g.in_w) as i64);
        let col = b.ins().imul_imm_s(ow, g.stride as i64);
        let corner = b.ins().iadd(row, col);
        let corner = b
            .ins()
            .iadd_imm_s(corner, -((g.padding * g.in_w + g.padding) as i64));
        let corner = b.ins().iadd(at.x, corner);
        let taps: Vec<i64> = (0..g.kernel)
            .flat_map(|kh| (0..g.kernel).map(move |kw| (kh * g.in_w + kw) as i64))
            .collect();
        let yi = mul_add(b, oh, g.out_w, ow);
        let yi = b.ins().iadd(at.y, yi);
        let count = b.ins().f32const((g.kernel * g.kernel) as f32);
        self.window_op(b, at, yi, count, &mut |b, tap| {
            for &t in &taps {
                let i = b.ins().iadd_imm_s(corner, t);
                tap(b, i);
            }
        });
    }

    /// One output of a window clipped by the plane's border (or the padding):
    /// bounds computed in the loop, as `interp::window` does.
    fn clipped_window(&self, b: &mut FunctionBuilder, at: &Plane, oh: Value, ow: Value) {
        let g = self.geom;
        let (h0, h1, hc) = window(b, oh, &g, g.in_h);
        let (w0, w1, wc) = window(b, ow, &g, g.in_w);
        let yi = mul_add(b, oh, g.out_w, ow);
        let yi = b.ins().iadd(at.y, yi);
        let count = b.ins().imul(hc, wc);
        let count = b.ins().fcvt_from_sint(F32, count);
        let x0 = at.x;
        self.window_op(b, at, yi, count, &mut |b, tap| {
            counted_loop(b, h0, h1, 1, true, &mut |b, ih| {
                counted_loop(b, w0, w1, 1, true, &mut |b, iw| {
                    let i = mul_add(b, ih, g.in_w, iw);
                    let i = b.ins().iadd(x0, i);
                    tap(b, i)
                })
            });
        });
    }

    /// The op on one window: `visit(b, tap)` emits `tap` on the element
    /// index of every element of the window in row-major order; `yi` is the
    /// output's element index and `count` the divisor (f32).
    fn window_op(
        &self,
        b: &mut FunctionBuilder,
        at: &Plane,
        yi: Value,
        count: Value,
        visit: &mut WindowVisitor,
    ) {
        let bufs = at.bufs;
        if self.grad {
            let (dy, dx) = (bufs[0], bufs[1]);
            let d = load_f32(b, dy, yi);
            let share = b.ins().fdiv(d, count);
            visit(b, &mut |b, i| {
                let old = load_f32(b, dx, i);
                let new = b.ins().fadd(old, share);
                store_f32(b, dx, i, new);
            });
        } else {
            let (x, y) = (bufs[0], bufs[1]);
            let acc = b.declare_var(F32);
            let z = b.ins().f32const(0.0);
            b.def_var(acc, z);
            visit(b, &mut |b, i| {
                let v = load_f32(b, x, i);
                let cur = b.use_var(acc);
                let next = b.ins().fadd(cur, v);
                b.def_var(acc, next);
            });
            let s = b.use_var(acc);
            let v = b.ins().fdiv(s, count);
            store_f32(b, y, yi, v);
        }
    }
}

impl KernelSpec for AvgPoolKernel {
    fn symbol(&self) -> &str {
        &self.symbol
    }

    fn comment(&self) -> &str {
        &self.comment
    }

    fn validate(&self) -> Result<()> {
        let g = &self.geom;
        if self.planes == 0 || g.out_h == 0 || g.out_w == 0 || g.kernel == 0 || g.stride == 0 {
            return Err(self.invalid(format!("empty pooling {g:?} over {} planes", self.planes)));
        }
        if self.planes.saturating_mul(g.in_plane().max(g.out_plane())) > u32::MAX as usize {
            return Err(self.invalid("more than 2^32 elements".into()));
        }
        // Every window must hold at least one element of its plane, so the
        // bounds stay inside the plane.
        for (len, outs) in [(g.in_h, g.out_h), (g.in_w, g.out_w)] {
            if let Some(o) = (0..outs).find(|&o| g.window(o, len).is_none()) {
                return Err(self.invalid(format!("window {o} of {g:?} is empty")));
            }
        }
        Ok(())
    }

    fn emit_body(&self, b: &mut FunctionBuilder, env: &mut FuncEnv, p: [Value; 4]) -> Result<()> {
        let [args, _keys, begin, end] = p;
        let g = self.geom;
        let ptr = env.ptr_ty();
        let bufs: Vec<Value> = (0..2).map(|i| arg_ptr(b, ptr, args, i)).collect();
        let (h_lo, h_hi) = g.interior(g.in_h, g.out_h);
        let (w_lo, w_hi) = g.interior(g.in_w, g.out_w);
        counted_loop(b, begin, end, 1, true, &mut |b, plane| {
            let base = Plane {
                bufs: &bufs,
                x: b.ins().imul_imm_s(plane, g.in_plane() as i64),
                y: b.ins().imul_imm_s(plane, g.out_plane() as i64),
            };
            if self.grad {
                zero_fill(b, bufs[1], base.x, g.in_plane());
            }
            // Rows and columns whose windows lie wholly inside the plane take
            // the unrolled path; the clipped border keeps the general loops.
            for (rows, interior_row) in
                [(0, h_lo, false), (h_lo, h_hi, true), (h_hi, g.out_h, false)]
                    .map(|(a, z, i)| ((a, z), i))
            {
                if rows.0 >= rows.1 {
                    continue;
                }
                let (r0, r1) = (int(b, rows.0), int(b, rows.1));
                counted_loop(b, r0, r1, 1, false, &mut |b, oh| {
                    let cols: &[(usize, usize, bool)] = if interior_row {
                        &[(0, w_lo, false), (w_lo, w_hi, true), (w_hi, g.out_w, false)]
                    } else {
                        &[(0, g.out_w, false)]
                    };
                    for &(c0, c1, interior) in cols {
                        if c0 >= c1 {
                            continue;
                        }
                        let (c0, c1) = (int(b, c0), int(b, c1));
                        counted_loop(b, c0, c1, 1, false, &mut |b, ow| {
                            if interior {
                                self.interior_window(b, &base, oh, ow)
                            } else {
                                self.clipped_window(b, &base, oh, ow)
                            }
                        });
                    }
                });
            }
        });
        b.ins().return_(&[]);
        Ok(())
    }
}
