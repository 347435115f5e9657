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
                let windows = Windows::new(&rows, &cols, &self.pool, x.w);
                let mut args = vec![0u32; y.w];
                let vector = avx2_gathers();
                for plane in planes {
                    let dy = std::slice::from_raw_parts((p[0] as *const f32).add(plane * yp), yp);
                    let xs = std::slice::from_raw_parts((p[1] as *const f32).add(plane * xp), xp);
                    let dx = std::slice::from_raw_parts_mut((p[2] as *mut f32).add(plane * xp), xp);
                    grad_plane(dy, xs, dx, &windows, &mut args, vector);
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

/// The windows of one plane, and the run of output columns whose windows are
/// whole (`kernel` wide, inside the input): the vector path's columns.
struct Windows<'a> {
    rows: &'a [(usize, usize)],
    cols: &'a [(usize, usize)],
    w: usize,
    kernel: usize,
    stride: usize,
    whole: std::ops::Range<usize>,
}

impl<'a> Windows<'a> {
    fn new(
        rows: &'a [(usize, usize)],
        cols: &'a [(usize, usize)],
        pool: &PoolAttrs,
        w: usize,
    ) -> Self {
        let k = pool.kernel;
        let first = cols
            .iter()
            .position(|&(a, b)| b - a == k)
            .unwrap_or(cols.len());
        let len = cols[first..]
            .iter()
            .take_while(|&&(a, b)| b - a == k)
            .count();
        Windows {
            rows,
            cols,
            w,
            kernel: k,
            stride: pool.stride,
            whole: first..first + len,
        }
    }
}

/// Whether the gradient's vector path runs here (AVX2 gathers).
fn avx2_gathers() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The first maximum of window `(h0..h1) x (w0..w1)` in row-major order
/// (strict `>`, the interpreter's scan): its index in the plane.
fn first_max(x: &[f32], w: usize, (h0, h1): (usize, usize), (w0, w1): (usize, usize)) -> usize {
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
    arg
}

/// Adds each `dy` to its window's first maximum, outputs in row-major order.
/// With `vector`, windows of whole rows and columns find their maximum eight
/// at a time (the same scan per lane); the additions stay in output order.
fn grad_plane(
    dy: &[f32],
    x: &[f32],
    dx: &mut [f32],
    win: &Windows,
    args: &mut [u32],
    vector: bool,
) {
    dx.fill(0.0);
    let (w, ow) = (win.w, win.cols.len());
    for (oy, &(h0, h1)) in win.rows.iter().enumerate() {
        let mut vectored = 0..0;
        #[cfg(target_arch = "x86_64")]
        if vector && h1 - h0 == win.kernel {
            let (start, lanes) = (win.whole.start, win.whole.len() / 8 * 8);
            // SAFETY: whole windows lie inside the plane; AVX2 was detected.
            unsafe { x86::first_max_8(x, win, h0, start, &mut args[start..start + lanes]) };
            vectored = start..start + lanes;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vector;
        for (ox, &col) in win.cols.iter().enumerate() {
            let arg = if vectored.contains(&ox) {
                args[ox] as usize
            } else {
                first_max(x, w, (h0, h1), col)
            };
            dx[arg] += dy[oy * ow + ox];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Windows;

    /// [`super::first_max`] of the whole windows of output columns
    /// `first..first + args.len()` (a multiple of 8) on rows from `h0`, eight
    /// windows per vector: the taps in row-major order, gathered, a strict
    /// ordered `>` per lane.
    ///
    /// # Safety
    /// AVX2 runs here; those windows lie inside `x`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn first_max_8(x: &[f32], win: &Windows, h0: usize, first: usize, args: &mut [u32]) {
        let (w, k, s) = (win.w as i32, win.kernel as i32, win.stride as i32);
        let lane = _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(s),
        );
        for (v, out) in args.chunks_exact_mut(8).enumerate() {
            let w0 = win.cols[first + v * 8].0 as i32;
            let corner = _mm256_add_epi32(lane, _mm256_set1_epi32(h0 as i32 * w + w0));
            let mut arg = corner;
            let mut best = _mm256_i32gather_ps::<4>(x.as_ptr(), corner);
            for r in 0..k {
                for j in 0..k {
                    if r == 0 && j == 0 {
                        continue;
                    }
                    let idx = _mm256_add_epi32(corner, _mm256_set1_epi32(r * w + j));
                    let val = _mm256_i32gather_ps::<4>(x.as_ptr(), idx);
                    let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(val, best);
                    best = _mm256_blendv_ps(best, val, gt);
                    arg = _mm256_castps_si256(_mm256_blendv_ps(
                        _mm256_castsi256_ps(arg),
                        _mm256_castsi256_ps(idx),
                        gt,
                    ));
                }
            }
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, arg);
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
            // Rows wide enough for the gradient's eight-window vectors.
            (2, 6, 21, 3, 1, 1, false),
            (1, 9, 40, 2, 2, 0, true),
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
                let rows2: Vec<_> = rows.iter().map(|&(a, b, _)| (a, b)).collect();
                let cols2: Vec<_> = cols.iter().map(|&(a, b, _)| (a, b)).collect();
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
                // Each path of the gradient on its own, plane by plane.
                let windows = Windows::new(&rows2, &cols2, &pool, w);
                for vector in [false, avx2_gathers()] {
                    let mut args = vec![0u32; y.w];
                    let mut dx = vec![f32::NAN; x.len()];
                    let (xp, yp) = (h * w, y.h * y.w);
                    for plane in 0..n * c {
                        grad_plane(
                            &dys[plane * yp..(plane + 1) * yp],
                            &xs[plane * xp..(plane + 1) * xp],
                            &mut dx[plane * xp..(plane + 1) * xp],
                            &windows,
                            &mut args,
                            vector,
                        );
                    }
                    let first = dx
                        .iter()
                        .zip(&want_dx)
                        .position(|(g, w)| g.to_bits() != w.to_bits());
                    assert!(
                        first.is_none(),
                        "gradient (vector path {vector}) {x:?} {pool:?}: element {first:?}"
                    );
                }
            }
        }
    }
}
