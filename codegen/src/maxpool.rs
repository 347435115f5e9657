//! Max pooling and its gradient as Rust loops the step calls, like the
//! convolution passes, split by plane over the pool's threads.
//!
//! Forward, per output row: the column-wise maximum over the window's rows
//! (contiguous, so it vectorises), then the maximum of each window's columns.
//! The result is the window's maximum, the value the interpreter's row-major
//! scan finds (for a maximum of zero possibly +0 where the scan kept a -0; a
//! NaN is not propagated the same way). The gradient scans each window in row-major order with strict
//! `>`, as the interpreter does, and adds `dy` to the first maximum, outputs
//! in row-major order: the same sums in the same order, bit for bit.

use dropjit_graph::interp::{window, Nchw};
use dropjit_graph::op::PoolAttrs;

use crate::kernels::parallel::global_pool;

/// Planes a task handles (tasks are claimed one at a time).
const PLANES_PER_TASK: usize = 8;

/// A max-pooling launch: forward `[x, y]`, gradient `[dy, x, dx]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxPoolLaunch {
    pub grad: bool,
    pub pool: PoolAttrs,
    pub x: Nchw,
    pub y: Nchw,
}

impl MaxPoolLaunch {
    /// Elements each argument must hold.
    pub fn extents(&self) -> Vec<usize> {
        let (x, y) = (self.x.len(), self.y.len());
        if self.grad {
            vec![y, x, x]
        } else {
            vec![x, y]
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "max_pool2d{} {}x{}x{} k{} s{} p{} x{} (rust)",
            if self.grad { "_grad" } else { "" },
            self.x.c,
            self.x.h,
            self.x.w,
            self.pool.kernel,
            self.pool.stride,
            self.pool.padding,
            self.x.n
        )
    }

    /// # Safety
    /// `ptrs` holds one buffer per [`MaxPoolLaunch::extents`] entry; the
    /// output overlaps no input.
    pub unsafe fn run(&self, ptrs: &[*mut f32], threads: usize) {
        let (x, y) = (self.x, self.y);
        let rows: Vec<(usize, usize)> = (0..y.h)
            .map(|o| window(o, &self.pool, x.h))
            .map(|(a, b, _)| (a, b))
            .collect();
        let cols: Vec<(usize, usize)> = (0..y.w)
            .map(|o| window(o, &self.pool, x.w))
            .map(|(a, b, _)| (a, b))
            .collect();
        let planes = x.n * x.c;
        let (xp, yp) = (x.h * x.w, y.h * y.w);
        let p: Vec<usize> = ptrs.iter().map(|&q| q as usize).collect();
        let tasks = planes.div_ceil(PLANES_PER_TASK);
        global_pool().parallel_for_on(tasks, threads, &|t| {
            let planes = t * PLANES_PER_TASK..((t + 1) * PLANES_PER_TASK).min(planes);
            if self.grad {
                for plane in planes {
                    let dy = std::slice::from_raw_parts((p[0] as *const f32).add(plane * yp), yp);
                    let xs = std::slice::from_raw_parts((p[1] as *const f32).add(plane * xp), xp);
                    let dx = std::slice::from_raw_parts_mut((p[2] as *mut f32).add(plane * xp), xp);
                    grad_plane(dy, xs, dx, x.w, &rows, &cols);
                }
            } else {
                let mut colmax = vec![0f32; x.w];
                for plane in planes {
                    let xs = std::slice::from_raw_parts((p[0] as *const f32).add(plane * xp), xp);
                    let ys = std::slice::from_raw_parts_mut((p[1] as *mut f32).add(plane * yp), yp);
                    forward_plane(xs, ys, x.w, &rows, &cols, &mut colmax);
                }
            }
        });
    }
}

fn forward_plane(
    x: &[f32],
    y: &mut [f32],
    w: usize,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    colmax: &mut [f32],
) {
    let ow = cols.len();
    for (oy, &(h0, h1)) in rows.iter().enumerate() {
        colmax.copy_from_slice(&x[h0 * w..(h0 + 1) * w]);
        for r in h0 + 1..h1 {
            for (m, &v) in colmax.iter_mut().zip(&x[r * w..(r + 1) * w]) {
                *m = if v > *m { v } else { *m };
            }
        }
        for (out, &(w0, w1)) in y[oy * ow..(oy + 1) * ow].iter_mut().zip(cols) {
            let mut best = colmax[w0];
            for &v in &colmax[w0 + 1..w1] {
                if v > best {
                    best = v;
                }
            }
            *out = best;
        }
    }
}

fn grad_plane(
    dy: &[f32],
    x: &[f32],
    dx: &mut [f32],
    w: usize,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
) {
    dx.fill(0.0);
    let ow = cols.len();
    for (oy, &(h0, h1)) in rows.iter().enumerate() {
        for (ox, &(w0, w1)) in cols.iter().enumerate() {
            let (mut arg, mut best) = (h0 * w + w0, x[h0 * w + w0]);
            for r in h0..h1 {
                for (i, &v) in x[r * w + w0..r * w + w1].iter().enumerate() {
                    // Selects, not branches: which tap wins is data, and
                    // mispredicted branches made this twice as slow.
                    let gt = v > best;
                    arg = if gt { r * w + w0 + i } else { arg };
                    best = if gt { v } else { best };
                }
            }
            dx[arg] += dy[oy * ow + ox];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::expr::testing::data;

    /// Max pooling (equal values) and its gradient (bit for bit) against the
    /// interpreter's definition, a row-major scan per window, at several
    /// thread counts; edges, padding, ceil-mode windows and tied values
    /// included.
    #[test]
    fn max_pool_and_gradient_match_the_interpreter() {
        for &(c, h, w, k, s, pad, ceil) in &[
            (3, 32, 32, 3, 2, 0, true),
            (2, 7, 9, 3, 2, 1, false),
            (1, 5, 5, 2, 2, 0, true),
            (4, 1, 1, 1, 1, 0, false),
            (2, 6, 5, 3, 1, 1, false),
        ] {
            let pool = PoolAttrs {
                kernel: k,
                stride: s,
                padding: pad,
                ceil_mode: ceil,
            };
            let out = |len: usize| {
                let span = len + 2 * pad - k;
                let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
                // Caffe/PyTorch: the last window must start inside the input or left padding.
                if ceil && (o - 1) * s >= len + pad {
                    o -= 1;
                }
                o
            };
            let n = 3;
            let x = Nchw { n, c, h, w };
            let y = Nchw {
                n,
                c,
                h: out(h),
                w: out(w),
            };
            // Random values, then values from a few levels so that windows
            // hold ties across rows and columns (the first maximum must win).
            let random = data(x.len(), 1);
            let tied: Vec<f32> = random.iter().map(|v| (v * 2.0).round()).collect();
            for (xs, want_ties) in [(random, false), (tied, true)] {
                let dys = data(y.len(), 2);
                let rows: Vec<_> = (0..y.h).map(|o| window(o, &pool, h)).collect();
                let cols: Vec<_> = (0..y.w).map(|o| window(o, &pool, w)).collect();
                // The definition: first maximum in row-major window order.
                let mut want_y = vec![0f32; y.len()];
                let mut want_dx = vec![0f32; x.len()];
                let mut ties = 0;
                for plane in 0..n * c {
                    for (oy, &(h0, h1, _)) in rows.iter().enumerate() {
                        for (ox, &(w0, w1, _)) in cols.iter().enumerate() {
                            let base = plane * h * w;
                            let (mut arg, mut best) = (base + h0 * w + w0, xs[base + h0 * w + w0]);
                            for r in h0..h1 {
                                for col in w0..w1 {
                                    let i = base + r * w + col;
                                    if xs[i] > best {
                                        best = xs[i];
                                        arg = i;
                                    } else if xs[i] == best && i != arg {
                                        ties += 1;
                                    }
                                }
                            }
                            let o = plane * y.h * y.w + oy * y.w + ox;
                            want_y[o] = best;
                            want_dx[arg] += dys[o];
                        }
                    }
                }
                // A 1x1 window cannot tie.
                assert!(!want_ties || ties > 0 || k == 1, "{x:?}: no ties to test");
                for threads in [1, 3] {
                    let fwd = MaxPoolLaunch {
                        grad: false,
                        pool,
                        x,
                        y,
                    };
                    let mut got_y = vec![f32::NAN; y.len()];
                    unsafe { fwd.run(&[xs.as_ptr() as *mut f32, got_y.as_mut_ptr()], threads) };
                    // Equal values; a window whose maximum is a zero may give +0
                    // where the row-major scan keeps the -0 it met first.
                    let first = got_y.iter().zip(&want_y).position(|(g, w)| g != w);
                    assert!(first.is_none(), "forward {x:?} {pool:?}: element {first:?}");
                    let bwd = MaxPoolLaunch {
                        grad: true,
                        pool,
                        x,
                        y,
                    };
                    let mut got_dx = vec![f32::NAN; x.len()];
                    let ptrs = [
                        dys.as_ptr() as *mut f32,
                        xs.as_ptr() as *mut f32,
                        got_dx.as_mut_ptr(),
                    ];
                    unsafe { bwd.run(&ptrs, threads) };
                    let first = got_dx
                        .iter()
                        .zip(&want_dx)
                        .position(|(g, w)| g.to_bits() != w.to_bits());
                    assert!(
                        first.is_none(),
                        "gradient {x:?} {pool:?}: element {first:?}"
                    );
                }
            }
        }
    }
}
