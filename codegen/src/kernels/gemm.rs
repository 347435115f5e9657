//! `extern "C"` GEMM and im2col/col2im helpers for JIT code.
//!
//! Shapes are static in a compiled graph, so each call takes a pointer to a
//! `#[repr(C)]` descriptor ([`GemmDesc`], [`ConvGeom`]) that the compiler keeps
//! alive, plus data pointers and a thread count.
//!
//! Determinism: every output element is computed by one `matrixmultiply::sgemm`
//! call whose tiling does not depend on the thread count: batches are split by
//! whole matrices (never when `stride_c == 0`, i.e. when accumulating into one
//! C), single GEMMs by rows or columns at multiples of [`SPLIT_ALIGN`] (a
//! multiple of every matrixmultiply micro-tile), and im2col/col2im by image.

use super::parallel::global_pool;

/// Row/column split points are multiples of this.
pub const SPLIT_ALIGN: usize = 64;
/// GEMMs with fewer multiply-adds than this run on one thread.
pub const SPLIT_MIN_FLOPS: usize = 1 << 18;

/// `C_i = alpha * A_i B_i + beta * C_i` for `i in 0..batch`, A_i `m x k`, B_i
/// `k x n`, C_i `m x n`, with element strides (`rs*` rows, `cs*` columns) and
/// per-matrix strides `stride_*` (in elements; `stride_c = 0` accumulates all
/// products into one C in batch order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmDesc {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub alpha: f32,
    pub beta: f32,
    pub rsa: isize,
    pub csa: isize,
    pub rsb: isize,
    pub csb: isize,
    pub rsc: isize,
    pub csc: isize,
    pub batch: usize,
    pub stride_a: isize,
    pub stride_b: isize,
    pub stride_c: isize,
}

impl GemmDesc {
    /// Row-major contiguous `m x k` times `k x n`, single matrix.
    pub fn row_major(m: usize, k: usize, n: usize, alpha: f32, beta: f32) -> Self {
        Self {
            m,
            k,
            n,
            alpha,
            beta,
            rsa: k as isize,
            csa: 1,
            rsb: n as isize,
            csb: 1,
            rsc: n as isize,
            csc: 1,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }
}

fn chunks(n: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let per = n.div_ceil(parts).div_ceil(align) * align;
    (0..parts)
        .map(|t| ((t * per).min(n), ((t + 1) * per).min(n)))
        .filter(|(b, e)| b < e)
        .collect()
}

unsafe fn gemm_one(d: &GemmDesc, a: *const f32, b: *const f32, c: *mut f32, n_threads: usize) {
    let (m, k, n) = (d.m, d.k, d.n);
    // Pointers travel as addresses so that the pool closure is `Sync`.
    let (a, b, c) = (a as usize, b as usize, c as usize);
    let run = |r0: usize, r1: usize, c0: usize, c1: usize| {
        let a = (a as *const f32).offset(r0 as isize * d.rsa);
        let b = (b as *const f32).offset(c0 as isize * d.csb);
        let c = (c as *mut f32).offset(r0 as isize * d.rsc + c0 as isize * d.csc);
        matrixmultiply::sgemm(
            r1 - r0,
            k,
            c1 - c0,
            d.alpha,
            a,
            d.rsa,
            d.csa,
            b,
            d.rsb,
            d.csb,
            d.beta,
            c,
            d.rsc,
            d.csc,
        );
    };
    if n_threads <= 1 || m * n * k < SPLIT_MIN_FLOPS || m.max(n) < 2 * SPLIT_ALIGN {
        return run(0, m, 0, n);
    }
    let by_rows = m >= n;
    let parts = chunks(if by_rows { m } else { n }, n_threads, SPLIT_ALIGN);
    global_pool().parallel_for(parts.len(), &|t| {
        let (s, e) = parts[t];
        if by_rows {
            run(s, e, 0, n)
        } else {
            run(0, m, s, e)
        }
    });
}

/// Batched strided SGEMM (see [`GemmDesc`]), split over up to `n_threads`.
///
/// # Safety
/// `desc` must be valid and the pointers must cover every addressed element;
/// C must not overlap A or B.
pub unsafe extern "C" fn dropjit_sgemm(
    desc: *const GemmDesc,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    n_threads: usize,
) {
    let d = &*desc;
    if d.m == 0 || d.n == 0 {
        return;
    }
    let (pa, pb, pc) = (a as usize, b as usize, c as usize);
    let mat = |i: usize| {
        (
            (pa as *const f32).offset(i as isize * d.stride_a),
            (pb as *const f32).offset(i as isize * d.stride_b),
            (pc as *mut f32).offset(i as isize * d.stride_c),
        )
    };
    if d.batch >= 2 && d.stride_c != 0 && n_threads > 1 {
        let parts = chunks(d.batch, n_threads.min(d.batch), 1);
        global_pool().parallel_for(parts.len(), &|t| {
            for i in parts[t].0..parts[t].1 {
                let (a, b, c) = mat(i);
                gemm_one(d, a, b, c, 1);
            }
        });
    } else {
        for i in 0..d.batch.max(1) {
            let (a, b, c) = mat(i);
            let mut di = *d;
            if i > 0 && d.stride_c == 0 {
                di.beta = 1.0;
            }
            gemm_one(&di, a, b, c, n_threads);
        }
    }
}

/// NCHW convolution geometry for one image; `out_h/out_w` via [`ConvGeom::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeom {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Self {
        assert!(stride.0 > 0 && stride.1 > 0 && h + 2 * pad.0 >= kh && w + 2 * pad.1 >= kw);
        Self {
            c,
            h,
            w,
            kh,
            kw,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: pad.0,
            pad_w: pad.1,
            out_h: (h + 2 * pad.0 - kh) / stride.0 + 1,
            out_w: (w + 2 * pad.1 - kw) / stride.1 + 1,
        }
    }
    /// Rows of the column matrix: `c * kh * kw`.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of the column matrix: `out_h * out_w`.
    pub fn col_cols(&self) -> usize {
        self.out_h * self.out_w
    }
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Output columns `ox` whose input column `ox*sw + kj - pw` is inside the image.
    fn valid_x(&self, kj: usize) -> (usize, usize) {
        let (s, p) = (self.stride_w, self.pad_w);
        let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
        // ox*s + kj - p <= w - 1  <=>  ox <= (w - 1 + p - kj) / s
        let hi = if self.w + p > kj {
            ((self.w - 1 + p - kj) / s + 1).min(self.out_w)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Column matrix of one image: `col[((ci*kh + ki)*kw + kj) * P + oy*out_w + ox]`
/// `= x[ci, oy*sh + ki - ph, ox*sw + kj - pw]` (0 outside), `P = out_h*out_w`.
///
/// # Safety
/// `x` holds `g.image_len()` floats, `col` holds `col_rows*col_cols`.
pub unsafe fn im2col_image(g: &ConvGeom, x: *const f32, col: *mut f32) {
    let p = g.col_cols();
    for ci in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = col.add(((ci * g.kh + ki) * g.kw + kj) * p);
                let (lo, hi) = g.valid_x(kj);
                for oy in 0..g.out_h {
                    let dst = std::slice::from_raw_parts_mut(row.add(oy * g.out_w), g.out_w);
                    let iy = (oy * g.stride_h + ki) as isize - g.pad_h as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let src = x.add((ci * g.h + iy as usize) * g.w);
                    let x0 = (lo * g.stride_w + kj) as isize - g.pad_w as isize;
                    if g.stride_w == 1 {
                        let s = std::slice::from_raw_parts(src.offset(x0), hi - lo);
                        dst[lo..hi].copy_from_slice(s);
                    } else {
                        for (t, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = *src.offset(x0 + (t * g.stride_w) as isize);
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col_image`]: `dx[...] += col[...]` in the same loop order.
///
/// # Safety
/// As [`im2col_image`].
pub unsafe fn col2im_image(g: &ConvGeom, col: *const f32, dx: *mut f32) {
    let p = g.col_cols();
    for ci in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = col.add(((ci * g.kh + ki) * g.kw + kj) * p);
                let (lo, hi) = g.valid_x(kj);
                for oy in 0..g.out_h {
                    let iy = (oy * g.stride_h + ki) as isize - g.pad_h as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = std::slice::from_raw_parts(row.add(oy * g.out_w + lo), hi - lo);
                    let dst = dx.add((ci * g.h + iy as usize) * g.w);
                    let x0 = (lo * g.stride_w + kj) as isize - g.pad_w as isize;
                    for (t, s) in src.iter().enumerate() {
                        *dst.offset(x0 + (t * g.stride_w) as isize) += *s;
                    }
                }
            }
        }
    }
}

unsafe fn per_image(n_images: usize, n_threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if n_threads <= 1 || n_images <= 1 {
        return (0..n_images).for_each(f);
    }
    let parts = chunks(n_images, n_threads.min(n_images), 1);
    global_pool().parallel_for(parts.len(), &|t| (parts[t].0..parts[t].1).for_each(f));
}

/// im2col of `n_images` consecutive NCHW images into consecutive column
/// matrices, split by image over up to `n_threads`.
///
/// # Safety
/// `geom` valid; `x` holds `n_images * image_len` floats, `col` holds
/// `n_images * col_rows * col_cols`.
pub unsafe extern "C" fn dropjit_im2col(
    geom: *const ConvGeom,
    x: *const f32,
    col: *mut f32,
    n_images: usize,
    n_threads: usize,
) {
    let g = &*geom;
    let (x, col) = (x as usize, col as usize);
    per_image(n_images, n_threads, &|i| {
        let x = (x as *const f32).add(i * g.image_len());
        im2col_image(g, x, (col as *mut f32).add(i * g.col_rows() * g.col_cols()))
    });
}

/// col2im (accumulating into `dx`) of `n_images` consecutive column matrices,
/// split by image over up to `n_threads`.
///
/// # Safety
/// As [`dropjit_im2col`], with `dx` written.
pub unsafe extern "C" fn dropjit_col2im(
    geom: *const ConvGeom,
    col: *const f32,
    dx: *mut f32,
    n_images: usize,
    n_threads: usize,
) {
    let g = &*geom;
    let (col, dx) = (col as usize, dx as usize);
    per_image(n_images, n_threads, &|i| {
        let col = (col as *const f32).add(i * g.col_rows() * g.col_cols());
        col2im_image(g, col, (dx as *mut f32).add(i * g.image_len()))
    });
}

#[cfg(test)]
mod tests {
    use super::super::expr::testing::data;
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn naive(d: &GemmDesc, a: &[f32], b: &[f32], c: &mut [f32]) {
        for bi in 0..d.batch.max(1) {
            let (oa, ob, oc) = (
                bi as isize * d.stride_a,
                bi as isize * d.stride_b,
                bi as isize * d.stride_c,
            );
            let beta = if bi > 0 && d.stride_c == 0 {
                1.0
            } else {
                d.beta
            };
            for i in 0..d.m as isize {
                for j in 0..d.n as isize {
                    let mut s = 0f64;
                    for p in 0..d.k as isize {
                        s += a[(oa + i * d.rsa + p * d.csa) as usize] as f64
                            * b[(ob + p * d.rsb + j * d.csb) as usize] as f64;
                    }
                    let ci = (oc + i * d.rsc + j * d.csc) as usize;
                    let old = if beta == 0.0 {
                        0.0
                    } else {
                        beta as f64 * c[ci] as f64
                    };
                    c[ci] = (d.alpha as f64 * s + old) as f32;
                }
            }
        }
    }

    fn span(d: &GemmDesc) -> (usize, usize, usize) {
        let last = |rows: usize, cols: usize, rs: isize, cs: isize, stride: isize| {
            ((d.batch.max(1) - 1) as isize * stride
                + (rows as isize - 1) * rs
                + (cols as isize - 1) * cs
                + 1) as usize
        };
        (
            last(d.m, d.k, d.rsa, d.csa, d.stride_a),
            last(d.k, d.n, d.rsb, d.csb, d.stride_b),
            last(d.m, d.n, d.rsc, d.csc, d.stride_c),
        )
    }

    fn check(d: &GemmDesc, seed: u64) {
        let (la, lb, lc) = span(d);
        let (a, b, c0) = (data(la, seed), data(lb, seed + 1), data(lc, seed + 2));
        let mut want = c0.clone();
        naive(d, &a, &b, &mut want);
        let mut first: Option<Vec<f32>> = None;
        for t in [1, 2, 3] {
            let mut c = c0.clone();
            unsafe { dropjit_sgemm(d, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), t) };
            for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                let tol = 1e-4 * (1.0 + w.abs()) * (d.k as f32).sqrt() * d.batch.max(1) as f32;
                assert!((g - w).abs() <= tol, "{d:?} t{t} elem {i}: {g} vs {w}");
            }
            match &first {
                None => first = Some(c),
                Some(f) => assert!(
                    f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{d:?}: {t} threads differ from 1 thread"
                ),
            }
        }
    }

    #[test]
    fn sgemm_matches_naive_on_odd_sizes() {
        for (s, &(m, k, n)) in [
            (1, 1, 1),
            (3, 5, 7),
            (17, 13, 19),
            (130, 33, 65),
            (65, 7, 130),
            (200, 64, 150),
            (16, 144, 1000),
        ]
        .iter()
        .enumerate()
        {
            for beta in [0.0f32, 1.0, 0.5] {
                check(&GemmDesc::row_major(m, k, n, 1.5, beta), s as u64);
            }
        }
    }

    #[test]
    fn sgemm_strided_transposed_and_batched() {
        let (m, k, n) = (131, 17, 129);
        // A transposed (column-major), C column-major.
        let mut d = GemmDesc::row_major(m, k, n, 1.0, 0.0);
        d.rsa = 1;
        d.csa = m as isize;
        d.rsc = 1;
        d.csc = m as isize;
        check(&d, 1);
        // B transposed with a padded leading dimension.
        let mut d = GemmDesc::row_major(m, k, n, 0.5, 1.0);
        d.rsb = 1;
        d.csb = k as isize + 3;
        check(&d, 2);
        // Batch of 5 independent products (split by batch).
        let mut d = GemmDesc::row_major(9, 11, 13, 1.0, 0.0);
        d.batch = 5;
        d.stride_a = 9 * 11;
        d.stride_b = 11 * 13;
        d.stride_c = 9 * 13;
        check(&d, 3);
        // Batch accumulated into one C (weight gradient), never split by batch.
        let mut d = GemmDesc::row_major(140, 20, 150, 1.0, 0.0);
        d.batch = 4;
        d.stride_a = 140 * 20;
        d.stride_b = 20 * 150;
        d.stride_c = 0;
        check(&d, 4);
    }

    fn naive_im2col(g: &ConvGeom, x: &[f32]) -> Vec<f32> {
        let mut col = vec![0f32; g.col_rows() * g.col_cols()];
        for ci in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let iy = (oy * g.stride_h + ki) as isize - g.pad_h as isize;
                            let ix = (ox * g.stride_w + kj) as isize - g.pad_w as isize;
                            let v =
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    x[(ci * g.h + iy as usize) * g.w + ix as usize]
                                } else {
                                    0.0
                                };
                            col[((ci * g.kh + ki) * g.kw + kj) * g.col_cols()
                                + oy * g.out_w
                                + ox] = v;
                        }
                    }
                }
            }
        }
        col
    }

    fn geoms() -> Vec<ConvGeom> {
        vec![
            ConvGeom::new(1, 1, 1, 1, 1, (1, 1), (0, 0)),
            ConvGeom::new(3, 7, 5, 3, 3, (1, 1), (1, 1)),
            ConvGeom::new(2, 9, 8, 3, 2, (2, 1), (1, 2)),
            ConvGeom::new(4, 11, 13, 5, 5, (3, 2), (2, 0)),
            ConvGeom::new(2, 6, 6, 1, 1, (2, 2), (0, 0)),
            ConvGeom::new(3, 4, 5, 4, 5, (1, 1), (3, 4)),
        ]
    }

    #[test]
    fn im2col_matches_naive() {
        for (s, g) in geoms().iter().enumerate() {
            let n = 3;
            let x = data(n * g.image_len(), s as u64);
            let per = g.col_rows() * g.col_cols();
            for t in [1, 2] {
                let mut col = vec![f32::NAN; n * per];
                unsafe { dropjit_im2col(g, x.as_ptr(), col.as_mut_ptr(), n, t) };
                for i in 0..n {
                    let want = naive_im2col(g, &x[i * g.image_len()..(i + 1) * g.image_len()]);
                    assert!(
                        col[i * per..(i + 1) * per]
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{g:?} image {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn col2im_accumulates_the_adjoint() {
        for (s, g) in geoms().iter().enumerate() {
            let n = 3;
            let per = g.col_rows() * g.col_cols();
            let col = data(n * per, 100 + s as u64);
            let dx0 = data(n * g.image_len(), 200 + s as u64);
            // Naive: scatter-add in the same loop order.
            let mut want = dx0.clone();
            for i in 0..n {
                for ci in 0..g.c {
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            for oy in 0..g.out_h {
                                for ox in 0..g.out_w {
                                    let iy = (oy * g.stride_h + ki) as isize - g.pad_h as isize;
                                    let ix = (ox * g.stride_w + kj) as isize - g.pad_w as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < g.h
                                        && (ix as usize) < g.w
                                    {
                                        want[i * g.image_len()
                                            + (ci * g.h + iy as usize) * g.w
                                            + ix as usize] += col[i * per
                                            + ((ci * g.kh + ki) * g.kw + kj) * g.col_cols()
                                            + oy * g.out_w
                                            + ox];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for t in [1, 2] {
                let mut dx = dx0.clone();
                unsafe { dropjit_col2im(g, col.as_ptr(), dx.as_mut_ptr(), n, t) };
                assert!(
                    dx.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{g:?} t{t}"
                );
            }
        }
    }

    #[test]
    fn conv_forward_via_im2col_and_sgemm() {
        // y[n, co, p] = sum_r w[co, r] col_n[r, p]; compare with a direct conv.
        let g = ConvGeom::new(3, 9, 7, 3, 3, (2, 1), (1, 1));
        let (nb, co) = (2, 5);
        let x = data(nb * g.image_len(), 1);
        let w = data(co * g.col_rows(), 2);
        let per = g.col_rows() * g.col_cols();
        let mut col = vec![0f32; nb * per];
        let mut y = vec![0f32; nb * co * g.col_cols()];
        let mut d = GemmDesc::row_major(co, g.col_rows(), g.col_cols(), 1.0, 0.0);
        d.batch = nb;
        d.stride_a = 0;
        d.stride_b = per as isize;
        d.stride_c = (co * g.col_cols()) as isize;
        unsafe {
            dropjit_im2col(&g, x.as_ptr(), col.as_mut_ptr(), nb, 2);
            dropjit_sgemm(&d, w.as_ptr(), col.as_ptr(), y.as_mut_ptr(), 2);
        }
        for n in 0..nb {
            for o in 0..co {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut s = 0f64;
                        for ci in 0..g.c {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride_h + ki) as isize - g.pad_h as isize;
                                    let ix = (ox * g.stride_w + kj) as isize - g.pad_w as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < g.h
                                        && (ix as usize) < g.w
                                    {
                                        s += x[n * g.image_len()
                                            + (ci * g.h + iy as usize) * g.w
                                            + ix as usize]
                                            as f64
                                            * w[o * g.col_rows() + (ci * g.kh + ki) * g.kw + kj]
                                                as f64;
                                    }
                                }
                            }
                        }
                        let got = y[(n * co + o) * g.col_cols() + oy * g.out_w + ox];
                        assert!(
                            (got as f64 - s).abs() < 1e-4,
                            "n{n} o{o} ({oy},{ox}): {got} vs {s}"
                        );
                    }
                }
            }
        }
    }
}
