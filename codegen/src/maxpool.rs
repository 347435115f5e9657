//! Max pooling and its gradient as Rust loops the step calls, like the
//! convolution passes, split by plane over the pool's threads.
//!
//! Forward, per output row: the column-wise maximum over the window's rows
//! (contiguous, so it vectorises), then the maximum of each window's columns.
//! The result is the window's maximum, the value the interpreter's row-major
//! scan finds (for a maximum of zero possibly +0 where the scan kept a -0; a
//! NaN is not propagated the same way). The gradient scans each window in row-major order with strict
//! `>`, as the interpreter does, and adds `dy` to the first maximum, outputs
//! in row-major order: the same sums in the same order, bit for bit. On
//! AVX-512, 3-wide stride-2 windows (ConvNet-Quick's) are scanned 16 outputs
//! at a time (`x86::grad_plane_avx512`).

use dropjit_graph::interp::{window, Nchw};
use dropjit_graph::op::PoolAttrs;

use crate::conv::ConvIsa;
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
    /// The step's instruction set: the gradient's vector scan runs on
    /// AVX-512 only (`DROPJIT_ISA` forces the scalar scan like the rest).
    pub isa: ConvIsa,
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
        pool_text("max_pool2d", self.grad, &self.pool, self.x)
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
                    self.grad_plane(dy, xs, dx, &rows, &cols);
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

/// What `--emit plan` says of a Rust pooling launch over input `x`:
/// `max_pool2d_grad 32x32x32 k3 s2 p0 x100 (rust)`.
pub(crate) fn pool_text(op: &str, grad: bool, pool: &PoolAttrs, x: Nchw) -> String {
    format!(
        "{op}{} {}x{}x{} k{} s{} p{} x{} (rust)",
        if grad { "_grad" } else { "" },
        x.c,
        x.h,
        x.w,
        pool.kernel,
        pool.stride,
        pool.padding,
        x.n
    )
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

impl MaxPoolLaunch {
    /// One plane's gradient: the AVX-512 scan ([`x86::grad_plane_avx512`])
    /// for 3-wide windows at stride 2 on the AVX-512 path, else the scalar
    /// scan.
    fn grad_plane(
        &self,
        dy: &[f32],
        x: &[f32],
        dx: &mut [f32],
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
    ) {
        let (w, pool) = (self.x.w, &self.pool);
        #[cfg(target_arch = "x86_64")]
        if self.isa == ConvIsa::Avx512 && pool.kernel == 3 && pool.stride == 2 {
            // SAFETY: a launch on the AVX-512 path runs where the CPU has it
            // (`ConvIsa::selected` refuses it otherwise).
            return unsafe { x86::grad_plane_avx512(dy, x, dx, w, rows, cols, pool.padding) };
        }
        let _ = pool;
        grad_plane(dy, x, dx, w, rows, cols)
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
    for (oy, &rows) in rows.iter().enumerate() {
        grad_outputs(&dy[oy * ow..(oy + 1) * ow], x, dx, w, rows, cols, 0);
    }
}

/// The scalar scan for the outputs `first..` of one output row (`cols` their
/// column windows, `dy_row` the row's gradient): each window in row-major
/// order with strict `>`, `dy` added to its first maximum.
fn grad_outputs(
    dy_row: &[f32],
    x: &[f32],
    dx: &mut [f32],
    w: usize,
    (h0, h1): (usize, usize),
    cols: &[(usize, usize)],
    first: usize,
) {
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
        dx[arg] += dy_row[first + ox];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The gradient of 3-wide, stride-2 windows with 16 outputs of a row per
    /// vector: each input row's even and odd columns split by a permute, the
    /// row-major scan with a strict `>` per lane (the scalar scan's rule, and
    /// its NaN behaviour), then `dx[arg] += dy` scalar in output order, so
    /// the sums are the scalar path's, bit for bit. Windows cut by the
    /// plane's edge or the padding take the scalar scan.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_plane_avx512(
        dy: &[f32],
        x: &[f32],
        dx: &mut [f32],
        w: usize,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        pad: usize,
    ) {
        dx.fill(0.0);
        let ow = cols.len();
        // Outputs whose window is whole: start 2·ox - pad >= 0, end <= w.
        let full = |ox: usize| 2 * ox >= pad && 2 * ox - pad + 3 <= w;
        let first = (0..ow).find(|&ox| full(ox)).unwrap_or(ow);
        let last = (first..ow)
            .take_while(|&ox| full(ox))
            .last()
            .map_or(first, |l| l + 1);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let twice = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut args = [0i32; 16];
        for (oy, &(h0, h1)) in rows.iter().enumerate() {
            let dy_row = &dy[oy * ow..(oy + 1) * ow];
            super::grad_outputs(dy_row, x, dx, w, (h0, h1), &cols[..first], 0);
            let mut ox0 = first;
            while ox0 < last {
                let lanes = (last - ox0).min(16);
                // Columns start0 + 2l + c of the lanes l < `lanes`, c < 3.
                let start0 = 2 * ox0 - pad;
                let need = 2 * lanes + 1;
                let load = |at: usize, off: usize| {
                    let valid = need.saturating_sub(off).min(16);
                    _mm512_maskz_loadu_ps(((1u32 << valid) - 1) as u16, x.as_ptr().add(at + off))
                };
                let taps = |r: usize| {
                    let at = r * w + start0;
                    let (a, b) = (load(at, 0), load(at, 16));
                    let (c, d) = (load(at, 2), load(at, 18));
                    [
                        _mm512_permutex2var_ps(a, even, b),
                        _mm512_permutex2var_ps(a, odd, b),
                        _mm512_permutex2var_ps(c, even, d),
                    ]
                };
                let first_row = taps(h0);
                let mut best = first_row[0];
                let mut arg = _mm512_add_epi32(_mm512_set1_epi32((h0 * w + start0) as i32), twice);
                for r in h0..h1 {
                    let row = if r == h0 { first_row } else { taps(r) };
                    for (c, &v) in row.iter().enumerate() {
                        if r == h0 && c == 0 {
                            continue;
                        }
                        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                        best = _mm512_mask_mov_ps(best, gt, v);
                        let at =
                            _mm512_add_epi32(_mm512_set1_epi32((r * w + start0 + c) as i32), twice);
                        arg = _mm512_mask_mov_epi32(arg, gt, at);
                    }
                }
                _mm512_storeu_si512(args.as_mut_ptr() as *mut _, arg);
                for (l, &a) in args.iter().enumerate().take(lanes) {
                    dx[a as usize] += dy_row[ox0 + l];
                }
                ox0 += lanes;
            }
            super::grad_outputs(dy_row, x, dx, w, (h0, h1), &cols[last..], last);
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
            // Rows of 35 outputs: two whole vectors and a tail on AVX-512,
            // edge windows on both sides.
            (2, 9, 70, 3, 2, 1, true),
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
                // Both gradient scans where the CPU runs AVX-512.
                let isas = ConvIsa::ALL.into_iter().filter(|i| i.available());
                for (isa, threads) in isas.flat_map(|i| [(i, 1), (i, 3)]) {
                    let fwd = MaxPoolLaunch {
                        grad: false,
                        pool,
                        x,
                        y,
                        isa,
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
                        isa,
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
                        "gradient {x:?} {pool:?} {isa}: element {first:?}"
                    );
                }
            }
        }
    }
}
