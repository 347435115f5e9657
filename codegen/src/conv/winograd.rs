//! Winograd F(2×2, 3×3) (Lavin & Gray, CVPR 2016) for the 3 × 3, stride-1,
//! padding-1 convolutions of the forward and input-gradient passes: each
//! 2 × 2 output tile comes from its 4 × 4 input tile with 16 products per
//! channel pair instead of 36, 2.25× fewer multiplications than the direct
//! kernels.
//!
//! Per group of images (one task, one thread):
//! 1. input transform `V = Bᵀ d B` of every tile, tiles in the vector lanes:
//!    per input row, the row transform on its even and odd columns (a vector
//!    deinterleave), kept by row parity so that the rows `2ty … 2ty + 3` of
//!    consecutive tiles are consecutive; then the column transform. Stored
//!    `V[ξ][channel][tile]` for the 16 positions ξ of a tile.
//! 2. per block of output channels, the 16 products `M[ξ] = U[ξ] · V[ξ]` with
//!    the direct kernels' register tile; `U = G g Gᵀ` is packed once per launch.
//! 3. output transform `Y = Aᵀ M A`; a tile's two columns are interleaved back
//!    into output rows.
//!
//! Every output element is the same sequence of operations whichever group or
//! thread computes it, so steps stay bit-identical at any thread count.

use super::direct::forward_tile;
use super::simd::Simd;
use super::ConvPass;
use crate::kernels::gemm::ConvGeom;

/// Environment variable that turns the Winograd passes off (`off` or `0`),
/// for measuring them against the direct kernels.
pub const WINOGRAD_ENV: &str = "DROPJIT_WINOGRAD";

/// Fewer input channels than this stay direct: the products' reduction is
/// over the input channels, and a short one is dominated by the stores.
const MIN_INPUT_CHANNELS: usize = 8;

/// Whether the Winograd passes may be chosen (`DROPJIT_WINOGRAD` is not `off`).
pub fn enabled() -> bool {
    !matches!(
        std::env::var(WINOGRAD_ENV).as_deref(),
        Ok("off") | Ok("0") | Ok("false")
    )
}

/// The tiling of one Winograd pass, seen as a forward convolution of `cin`
/// planes into `cout` planes of `h × w` (the input gradient convolves the
/// output gradient with the flipped, transposed weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub per_row: usize,
    pub per_image: usize,
    /// Images per task: enough tiles for whole register tiles of vectors.
    pub images: usize,
    pub lanes: usize,
}

impl Tiles {
    /// The tiling of `pass` on `geom`, or `None` where F(2×2, 3×3) does not
    /// apply: other kernels, strides or paddings; odd plane sizes; rows of
    /// tiles that do not split evenly into vectors; few input channels.
    pub fn new(
        pass: ConvPass,
        geom: &ConvGeom,
        out_channels: usize,
        lanes: usize,
    ) -> Option<Tiles> {
        let g = geom;
        let (cin, cout) = match pass {
            ConvPass::Forward => (g.c, out_channels),
            ConvPass::GradInput => (out_channels, g.c),
            ConvPass::GradWeight => return None,
        };
        let square3 = g.kh == 3 && g.kw == 3 && g.stride_h == 1 && g.stride_w == 1;
        if !square3
            || g.pad_h != 1
            || g.pad_w != 1
            || !g.h.is_multiple_of(2)
            || !g.w.is_multiple_of(2)
        {
            return None;
        }
        let (per_row, per_image) = (g.w / 2, g.h / 2 * (g.w / 2));
        let rows_fit = per_row.is_multiple_of(lanes) || lanes.is_multiple_of(per_row);
        if !rows_fit || !per_image.is_multiple_of(lanes) || cin < MIN_INPUT_CHANNELS {
            return None;
        }
        let vectors = per_image / lanes;
        Some(Tiles {
            cin,
            cout,
            h: g.h,
            w: g.w,
            per_row,
            per_image,
            images: if vectors >= 6 {
                1
            } else {
                6usize.div_ceil(vectors)
            },
            lanes,
        })
    }

    /// Tiles of a task's worth of images (the stride of `V` and `M` rows).
    fn tpad(&self) -> usize {
        self.images * self.per_image
    }

    /// One row-transform array: `h/2 + 1` rows of tiles, and a vector of slack.
    fn r_len(&self) -> usize {
        (self.h / 2 + 1) * self.per_row + self.lanes
    }

    /// Distance between the positions ξ of `V`: one cache line more than
    /// its rows, because the transforms touch all 16 positions at once and
    /// 16 streams a power of two apart (16 KiB on ResNet-20's planes) fall
    /// into one set of the L1 cache (measured: the input transform took
    /// 29 µs an image instead of ~4).
    fn v_stride(&self) -> usize {
        self.cin * self.tpad() + 16
    }

    /// Distance between the positions ξ of `M` (see [`Tiles::v_stride`]).
    fn m_stride(&self, cb: usize) -> usize {
        self.cout.next_multiple_of(cb) * self.tpad() + 16
    }

    fn v_len(&self) -> usize {
        16 * self.v_stride()
    }

    /// Per-thread scratch of a task with `cb` output channels per block.
    pub fn scratch(&self, cb: usize) -> usize {
        8 * self.r_len() + self.v_len() + 16 * self.m_stride(cb)
    }

    /// Elements of the packed transformed weights.
    pub fn packed_len(&self, cb: usize) -> usize {
        self.cout.next_multiple_of(cb) * 16 * self.cin
    }

    /// Offsets of the input channels' rows in `V[ξ]`.
    pub fn channel_offsets(&self) -> Vec<usize> {
        (0..self.cin).map(|c| c * self.tpad()).collect()
    }
}

/// `G r` for one column of a 3 × 3 kernel.
fn g_rows(r: [f32; 3]) -> [f32; 4] {
    [
        r[0],
        0.5 * (r[0] + r[1] + r[2]),
        0.5 * (r[0] - r[1] + r[2]),
        r[2],
    ]
}

/// Writes `U = G g Gᵀ` of every (output, input) channel pair into `dst`,
/// packed `[block of cb outputs][ξ][input][cb]`, zero past the last output;
/// `weight(o, i, ki, kj)` reads the 3 × 3 kernel of the pair.
pub fn pack_weights(
    t: &Tiles,
    cb: usize,
    weight: impl Fn(usize, usize, usize, usize) -> f32,
    dst: &mut [f32],
) {
    assert_eq!(dst.len(), t.packed_len(cb));
    for (block, packed) in dst.chunks_exact_mut(16 * t.cin * cb).enumerate() {
        for c in 0..cb {
            let o = block * cb + c;
            for i in 0..t.cin {
                let u = if o < t.cout {
                    // G g: the columns' transforms, then each row's.
                    let cols: [[f32; 4]; 3] = std::array::from_fn(|kj| {
                        g_rows(std::array::from_fn(|ki| weight(o, i, ki, kj)))
                    });
                    let u: [[f32; 4]; 4] =
                        std::array::from_fn(|k| g_rows(std::array::from_fn(|kj| cols[kj][k])));
                    u
                } else {
                    [[0.0; 4]; 4]
                };
                for (xi, &v) in u.iter().flatten().enumerate() {
                    packed[(xi * t.cin + i) * cb + c] = v;
                }
            }
        }
    }
}

/// Scratch layout of a task: `[R: 8 arrays][V][M]`.
fn regions(t: &Tiles, scratch: *mut f32) -> (*mut f32, *mut f32, *mut f32) {
    let v = scratch.wrapping_add(8 * t.r_len());
    (scratch, v, v.wrapping_add(t.v_len()))
}

/// Input transform of one image (`cin` planes of `h × w`) into slot `slot`
/// of the task's `V`.
///
/// # Safety
/// `img` holds `cin · h · w` elements; `scratch` holds [`Tiles::scratch`]
/// elements; the CPU runs `S`.
#[inline(always)]
pub unsafe fn input_image<S: Simd>(t: &Tiles, img: *const f32, slot: usize, scratch: *mut f32) {
    let (h, w, tpr) = (t.h, t.w, t.per_row);
    let (tpad, r_len) = (t.tpad(), t.r_len());
    let (r, v, _) = regions(t, scratch);
    let row_vectors = tpr.div_ceil(S::L);
    for ci in 0..t.cin {
        let plane = img.add(ci * h * w);
        // Padded row y (y = 0 and h + 1 are the zero padding): its row
        // transform, kept by parity, at row y / 2 of `R[parity][j]`. With fewer
        // tiles per row than lanes, a store spills into the next row of the
        // same parity, which is written after it (or into the slack).
        for y in 0..h + 2 {
            let at = |j: usize| r.add(((y % 2) * 4 + j) * r_len + y / 2 * tpr);
            if y == 0 || y == h + 1 {
                for j in 0..4 {
                    for k in 0..row_vectors {
                        S::storeu(at(j).add(k * S::L), S::zero());
                    }
                }
                continue;
            }
            // padded[i] = src[i - 1] for 1 <= i <= w, else zero: loaded
            // straight from the plane with the padding's lanes masked off
            // (a copy into a padded row stalled every load on the store
            // it overlaps).
            let src = plane.add((y - 1) * w);
            let padded = |i: usize| {
                let (from, to) = (
                    1usize.saturating_sub(i).min(S::L),
                    (w + 1).saturating_sub(i).min(S::L),
                );
                S::load_lanes(src.wrapping_add(i).wrapping_sub(1), from, to.max(from))
            };
            for k in 0..row_vectors {
                // d_j = padded[2 tx + j] for the tiles tx of this vector.
                let i = 2 * k * S::L;
                let (d0, d1) = S::deinterleave(padded(i), padded(i + S::L));
                let (d2, d3) = S::deinterleave(padded(i + 2), padded(i + 2 + S::L));
                let q = k * S::L;
                S::storeu(at(0).add(q), S::sub(d0, d2));
                S::storeu(at(1).add(q), S::add(d1, d2));
                S::storeu(at(2).add(q), S::sub(d2, d1));
                S::storeu(at(3).add(q), S::sub(d1, d3));
            }
        }
        // Column transform: rows 2ty, 2ty + 1, 2ty + 2, 2ty + 3 of tile
        // ty·tpr + tx sit at R[even][tile], R[odd][tile], and one row of
        // tiles further.
        let dst = v.add(ci * tpad + slot * t.per_image);
        for q in (0..t.per_image).step_by(S::L) {
            for j in 0..4 {
                let (even, odd) = (r.add(j * r_len + q), r.add((4 + j) * r_len + q));
                let (a0, a1) = (S::loadu(even), S::loadu(odd));
                let (a2, a3) = (S::loadu(even.add(tpr)), S::loadu(odd.add(tpr)));
                let at = |i: usize| dst.add((i * 4 + j) * t.v_stride() + q);
                S::storeu(at(0), S::sub(a0, a2));
                S::storeu(at(1), S::add(a1, a2));
                S::storeu(at(2), S::sub(a2, a1));
                S::storeu(at(3), S::sub(a1, a3));
            }
        }
    }
}

/// The products and the output transform of a task of `count` images whose
/// inputs [`input_image`] transformed: `out` is the first image's output
/// (`cout` planes of `h × w` per image), `u` the packed weights, `bias` null
/// or one value per output channel.
///
/// # Safety
/// As [`input_image`]; `u` holds [`Tiles::packed_len`] elements packed for
/// `CB`; `out` holds `count` images; `chans` is [`Tiles::channel_offsets`].
#[inline(always)]
pub unsafe fn products_and_output<S: Simd, const CB: usize, const PV: usize>(
    t: &Tiles,
    chans: &[usize],
    count: usize,
    u: *const f32,
    bias: *const f32,
    out: *mut f32,
    scratch: *mut f32,
) {
    let tpad = t.tpad();
    let nvec = count * t.per_image / S::L;
    let (_, v, m) = regions(t, scratch);
    let plane = t.h * t.w;
    // Position by position, every output block: `V[ξ]` stays in the L1 cache
    // while the blocks read it.
    for xi in 0..16 {
        let vx = v.add(xi * t.v_stride());
        for o0 in (0..t.cout).step_by(CB) {
            let w = u.add((o0 / CB * 16 + xi) * t.cin * CB);
            let mx = m.add(xi * t.m_stride(CB) + o0 * tpad);
            let mut q = 0;
            while q + PV <= nvec {
                product_block::<S, CB, PV>(vx, chans, w, mx, tpad, q);
                q += PV;
            }
            let a = (vx, chans, w, mx, tpad, q);
            match nvec - q {
                0 => {}
                1 => product_block::<S, CB, 1>(a.0, a.1, a.2, a.3, a.4, a.5),
                2 => product_block::<S, CB, 2>(a.0, a.1, a.2, a.3, a.4, a.5),
                3 => product_block::<S, CB, 3>(a.0, a.1, a.2, a.3, a.4, a.5),
                4 => product_block::<S, CB, 4>(a.0, a.1, a.2, a.3, a.4, a.5),
                5 => product_block::<S, CB, 5>(a.0, a.1, a.2, a.3, a.4, a.5),
                _ => unreachable!("register tiles have at most 6 vectors"),
            }
        }
    }
    for o in 0..t.cout {
        let b = (!bias.is_null()).then(|| S::splat(*bias.add(o)));
        for img in 0..count {
            let dst = out.add((img * t.cout + o) * plane);
            let mo = m.add(o * tpad + img * t.per_image);
            for q in (0..t.per_image).step_by(S::L) {
                output_vector::<S>(t, mo.add(q), t.m_stride(CB), b, dst, q);
            }
        }
    }
}

/// `M[ξ][o0 + c][q…]` for the `CB` outputs of the block and `PV` vectors of tiles
/// from vector `q`.
#[inline(always)]
unsafe fn product_block<S: Simd, const CB: usize, const PV: usize>(
    vx: *const f32,
    chans: &[usize],
    w: *const f32,
    mx: *mut f32,
    tpad: usize,
    q: usize,
) {
    let acc = forward_tile::<S, CB, PV, 1>(vx.add(q * S::L), chans, w);
    for (c, row) in acc.iter().enumerate() {
        for (p, &a) in row.iter().enumerate() {
            S::storeu(mx.add(c * tpad + (q + p) * S::L), a);
        }
    }
}

/// `Y = Aᵀ M A` for the vector of tiles from tile `q` of one output plane
/// (`m` at its first product, the 16 products `xi_stride` apart), stored
/// into the plane `dst`.
#[inline(always)]
unsafe fn output_vector<S: Simd>(
    t: &Tiles,
    m: *const f32,
    xi_stride: usize,
    bias: Option<S::V>,
    dst: *mut f32,
    q: usize,
) {
    let at = |i: usize, j: usize| S::loadu(m.add((i * 4 + j) * xi_stride));
    // Aᵀ over the rows i of each column j.
    let col = |j: usize| {
        let (m0, m1, m2, m3) = (at(0, j), at(1, j), at(2, j), at(3, j));
        (S::add(S::add(m0, m1), m2), S::sub(S::sub(m1, m2), m3))
    };
    let cols = [col(0), col(1), col(2), col(3)];
    let s = [cols.map(|c| c.0), cols.map(|c| c.1)];
    let (ty, tx) = (q / t.per_row, q % t.per_row);
    for (a, s) in s.iter().enumerate() {
        let mut y0 = S::add(S::add(s[0], s[1]), s[2]);
        let mut y1 = S::sub(S::sub(s[1], s[2]), s[3]);
        if let Some(b) = bias {
            y0 = S::add(y0, b);
            y1 = S::add(y1, b);
        }
        let (lo, hi) = S::interleave(y0, y1);
        if t.per_row >= S::L {
            let row = dst.add((2 * ty + a) * t.w + 2 * tx);
            S::storeu(row, lo);
            S::storeu(row.add(S::L), hi);
            continue;
        }
        // The vector spans L / per_row rows of tiles; each is one output row
        // of w elements, and w divides L.
        for (half, v) in [lo, hi].into_iter().enumerate() {
            for seg in 0..S::L / t.w {
                let tile_row = ty + (half * S::L) / t.w + seg;
                let row = dst.add((2 * tile_row + a) * t.w);
                S::store_lanes(row.wrapping_sub(seg * t.w), v, seg * t.w, (seg + 1) * t.w);
            }
        }
    }
}

/// [`input_image`] on one instruction set.
pub type InputKernel = unsafe fn(&Tiles, *const f32, usize, *mut f32);
/// [`products_and_output`] on one instruction set with its register tile.
pub type OutputKernel =
    unsafe fn(&Tiles, &[usize], usize, *const f32, *const f32, *mut f32, *mut f32);

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::simd::{Avx2, Avx512};
    use super::*;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn input_avx512(t: &Tiles, img: *const f32, slot: usize, scratch: *mut f32) {
        input_image::<Avx512>(t, img, slot, scratch)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_avx2(t: &Tiles, img: *const f32, slot: usize, scratch: *mut f32) {
        input_image::<Avx2>(t, img, slot, scratch)
    }

    // The register tiles of the direct forward kernels (`direct::kernels`).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn output_avx512(
        t: &Tiles,
        chans: &[usize],
        count: usize,
        u: *const f32,
        bias: *const f32,
        out: *mut f32,
        scratch: *mut f32,
    ) {
        products_and_output::<Avx512, 4, 6>(t, chans, count, u, bias, out, scratch)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_avx2(
        t: &Tiles,
        chans: &[usize],
        count: usize,
        u: *const f32,
        bias: *const f32,
        out: *mut f32,
        scratch: *mut f32,
    ) {
        products_and_output::<Avx2, 2, 6>(t, chans, count, u, bias, out, scratch)
    }
}
