//! The weight gradient with output channels in the vector lanes:
//! `dw[o, t] += Σ_images Σ_(oy, ox) dy[o, oy, ox] · x[taps[t] + oy · row + ox]`.
//!
//! [`super::direct`]'s weight gradient puts output positions in the lanes:
//! on small planes many lanes hold the junk columns of the prepared rows (an
//! 8 × 8 plane fills 80 lanes for 64 positions), and each tile ends in
//! horizontal sums. Here the gradient is transposed once per image to
//! `[position][output channel]` (zero past the last channel), a tile holds
//! `OV` vectors of output channels × `CG` tap groups × `RUN` taps of
//! accumulators, and per valid position it loads `OV` gradient vectors and
//! broadcasts `CG · RUN` input values: no junk lanes, no horizontal sums.
//! The sums run over images, then positions, in order, so the result does
//! not depend on the thread count.

use super::simd::Simd;

/// One batch of images for [`Kernel`]: prepared inputs and transposed
/// gradients, and where the sums go.
pub struct Batch<'a> {
    pub images: usize,
    /// Prepared images ([`super::prep::Prep`]), `x_stride` apart.
    pub x: *const f32,
    pub x_stride: usize,
    /// Offset of each tap group in a prepared image: its `run` taps follow
    /// one element apart (kernel rows for stride 1; single taps otherwise).
    pub groups: &'a [usize],
    pub run: usize,
    /// Output rows and columns, and the prepared row length.
    pub out_h: usize,
    pub out_w: usize,
    pub row: usize,
    /// Transposed gradients ([`transpose`]), `dy_stride` apart.
    pub dy: *const f32,
    pub dy_stride: usize,
    /// Output channels, and the padded count the transposed rows hold.
    pub n_out: usize,
    pub o_pad: usize,
    /// `n_out × (groups · run)` sums, added to.
    pub partial: *mut f32,
}

/// Output-channel vectors per tile for `n_out` channels of `lanes`, at most
/// `max`: the padded channel count is a multiple of this times `lanes`.
pub fn vectors_per_tile(n_out: usize, lanes: usize, max: usize) -> usize {
    let vecs = n_out.div_ceil(lanes);
    [4, 2, 1]
        .into_iter()
        .find(|&v| v <= max && v <= vecs)
        .unwrap_or(1)
}

/// Writes `chans` planes of `positions` elements (`src`, NCHW) as
/// `positions` rows of `o_pad` (`dst`), zero past `chans`.
///
/// # Safety
/// `src` holds `chans · positions`, `dst` `positions · o_pad` elements.
pub unsafe fn transpose(
    src: *const f32,
    chans: usize,
    positions: usize,
    o_pad: usize,
    dst: *mut f32,
) {
    // Blocks of 16 positions: reads stay contiguous, writes stay in cache.
    const BLOCK: usize = 16;
    for j0 in (0..positions).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(positions);
        for o in 0..chans {
            let s = src.add(o * positions);
            for j in j0..j1 {
                *dst.add(j * o_pad + o) = *s.add(j);
            }
        }
        for j in j0..j1 {
            std::ptr::write_bytes(dst.add(j * o_pad + chans), 0, o_pad - chans);
        }
    }
}

// Plain index loops over the constant tile bounds: the accumulators stay in
// registers once the loops unroll.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tiles<S: Simd, const OV: usize, const CG: usize, const RUN: usize>(b: &Batch) {
    let ng = b.groups.len();
    let nt = ng * RUN;
    for o0 in (0..b.o_pad).step_by(OV * S::L) {
        for g0 in (0..ng).step_by(CG) {
            // Groups past the last repeat it; their sums are dropped.
            let offs: [usize; CG] = std::array::from_fn(|c| b.groups[(g0 + c).min(ng - 1)]);
            let mut acc = [[[S::zero(); RUN]; CG]; OV];
            for img in 0..b.images {
                let x = b.x.add(img * b.x_stride);
                let mut dy = b.dy.add(img * b.dy_stride + o0);
                for oy in 0..b.out_h {
                    let xr = x.add(oy * b.row);
                    for ox in 0..b.out_w {
                        let dyv: [S::V; OV] = std::array::from_fn(|v| S::loadu(dy.add(v * S::L)));
                        for (c, &off) in offs.iter().enumerate() {
                            let xp = xr.add(off + ox);
                            for k in 0..RUN {
                                let xv = S::splat(*xp.add(k));
                                for v in 0..OV {
                                    acc[v][c][k] = S::fma(dyv[v], xv, acc[v][c][k]);
                                }
                            }
                        }
                        dy = dy.add(b.o_pad);
                    }
                }
            }
            let mut lanes = [0f32; 16];
            for (v, per_group) in acc.iter().enumerate() {
                for (c, per_tap) in per_group.iter().enumerate().take(ng - g0) {
                    for (k, &a) in per_tap.iter().enumerate() {
                        S::storeu(lanes.as_mut_ptr(), a);
                        let t = (g0 + c) * RUN + k;
                        let o_first = o0 + v * S::L;
                        for (l, &s) in lanes[..S::L].iter().enumerate() {
                            if o_first + l < b.n_out {
                                *b.partial.add((o_first + l) * nt + t) += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An instruction set's entry point: dispatches on the tile's channel
/// vectors and run to a tile shape that fits its registers.
pub type Kernel = unsafe fn(&Batch, usize);

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::super::simd::{Avx2, Avx512};
    use super::*;

    /// 32 registers: at most 24 accumulators, `OV` gradient vectors and one
    /// broadcast.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn avx512(b: &Batch, ov: usize) {
        match (ov, b.run) {
            (4, 3) => tiles::<Avx512, 4, 2, 3>(b),
            (2, 3) => tiles::<Avx512, 2, 4, 3>(b),
            (1, 3) => tiles::<Avx512, 1, 8, 3>(b),
            (4, 5) => tiles::<Avx512, 4, 1, 5>(b),
            (2, 5) => tiles::<Avx512, 2, 2, 5>(b),
            (1, 5) => tiles::<Avx512, 1, 4, 5>(b),
            (4, _) => tiles::<Avx512, 4, 6, 1>(b),
            (2, _) => tiles::<Avx512, 2, 12, 1>(b),
            _ => tiles::<Avx512, 1, 16, 1>(b),
        }
    }

    /// 16 registers: at most 12 accumulators (`OV` ≤ 2).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(b: &Batch, ov: usize) {
        match (ov, b.run) {
            (2, 3) => tiles::<Avx2, 2, 2, 3>(b),
            (1, 3) => tiles::<Avx2, 1, 4, 3>(b),
            (2, 5) => tiles::<Avx2, 2, 1, 5>(b),
            (1, 5) => tiles::<Avx2, 1, 2, 5>(b),
            (2, _) => tiles::<Avx2, 2, 6, 1>(b),
            _ => tiles::<Avx2, 1, 12, 1>(b),
        }
    }
}
