//! Winograd F(2×2, 3×3) and F(2×2, 5×5) (Lavin & Gray, CVPR 2016) for the
//! stride-1 "same" convolutions (3 × 3 padding 1, 5 × 5 padding 2) of the
//! forward and input-gradient passes: each 2 × 2 output tile comes from its
//! n × n input tile (n = 4 or 6) with n² products per channel pair instead of
//! 4 r², 2.25× (3 × 3) or 2.78× (5 × 5) fewer multiplications than the direct
//! kernels.
//!
//! Per group of images (one task, one thread):
//! 1. input transform `V = Bᵀ d B` of every tile, tiles in the vector lanes:
//!    per input row, the row transform on its even and odd columns (a vector
//!    deinterleave), kept by row parity so that the rows `2ty … 2ty + n - 1`
//!    of consecutive tiles are consecutive; then the column transform. Stored
//!    `V[ξ][channel][tile]` for the n² positions ξ of a tile.
//! 2. per position ξ and block of output channels, the products
//!    `M[ξ] = U[ξ] · V[ξ]` with the direct kernels' register tile; the
//!    weights' transform `U = G g Gᵀ` is packed once per launch.
//! 3. output transform `Y = Aᵀ M A`; a tile's two columns are interleaved back
//!    into output rows.
//!
//! The matrices are the Toom-Cook ones for the points 0, ±1 (and ±2 for 5 ×
//! 5), and ∞, with `Bᵀ` scaled to integers. Every output element is the same
//! sequence of operations whichever group or thread computes it, so steps
//! stay bit-identical at any thread count.

use super::direct::forward_tile;
use super::simd::Simd;
use super::ConvPass;
use crate::kernels::gemm::ConvGeom;

/// Environment variable that turns the Winograd passes off (`off` or `0`),
/// for measuring them against the direct kernels.
pub const WINOGRAD_ENV: &str = "DROPJIT_WINOGRAD";

/// `G` of F(2×2, 3×3) (n = 4, in the corner of the array both variants
/// share) and of F(2×2, 5×5) (n = 6: points 0, 1, -1, 2, -2, ∞). `Bᵀ` and
/// `Aᵀ` are written out in [`bt`] and [`at`].
const G4: [[f64; 5]; 6] = [
    [1.0, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.0, 0.0],
    [0.5, -0.5, 0.5, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0],
    [0.0; 5],
    [0.0; 5],
];
const G6: [[f64; 5]; 6] = [
    [1.0 / 4.0, 0.0, 0.0, 0.0, 0.0],
    [1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0],
    [1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];

/// `out = Bᵀ d` for one row or column of a tile (`d.len()` is n).
/// n = 4: `Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]`;
/// n = 6: `[[4,0,-5,0,1,0], [0,4,4,-1,-1,0], [0,-4,4,1,-1,0],
/// [0,-2,-1,2,1,0], [0,2,-1,-2,1,0], [0,4,0,-5,0,1]]`.
#[inline(always)]
unsafe fn bt<S: Simd>(d: &[S::V], out: &mut [S::V]) {
    if d.len() == 4 {
        out[0] = S::sub(d[0], d[2]);
        out[1] = S::add(d[1], d[2]);
        out[2] = S::sub(d[2], d[1]);
        out[3] = S::sub(d[1], d[3]);
        return;
    }
    let (two, four, minus5) = (S::splat(2.0), S::splat(4.0), S::splat(-5.0));
    out[0] = S::fma(four, d[0], S::fma(minus5, d[2], d[4]));
    out[1] = S::sub(S::mul(four, S::add(d[1], d[2])), S::add(d[3], d[4]));
    out[2] = S::fma(four, S::sub(d[2], d[1]), S::sub(d[3], d[4]));
    out[3] = S::fma(two, S::sub(d[3], d[1]), S::sub(d[4], d[2]));
    out[4] = S::fma(two, S::sub(d[1], d[3]), S::sub(d[4], d[2]));
    out[5] = S::fma(four, d[1], S::fma(minus5, d[3], d[5]));
}

/// `Aᵀ m` for one row or column of a tile's products (`m.len()` is n).
/// n = 4: `Aᵀ = [[1,1,1,0], [0,1,-1,-1]]`; n = 6: `[[1,1,1,1,1,0],
/// [0,1,-1,2,-2,1]]`.
#[inline(always)]
unsafe fn at<S: Simd>(m: &[S::V]) -> [S::V; 2] {
    if m.len() == 4 {
        return [
            S::add(S::add(m[0], m[1]), m[2]),
            S::sub(S::sub(m[1], m[2]), m[3]),
        ];
    }
    [
        S::add(S::add(S::add(m[1], m[2]), S::add(m[3], m[4])), m[0]),
        S::fma(
            S::splat(2.0),
            S::sub(m[3], m[4]),
            S::add(S::sub(m[1], m[2]), m[5]),
        ),
    ]
}

/// Bytes of transformed inputs and products a task may hold (Zen 4 has
/// 1 MiB of L2 per core).
const TASK_BYTES: usize = 1 << 20;

/// Fewer output channels than this stay direct: every input channel is
/// transformed once and feeds all outputs, so with few outputs the input
/// transform outweighs the products (measured on 32 → 3 channels, 5 × 5:
/// 98 against 130 GFLOP/s direct; 3 → 32 gains, 172 against 151).
const MIN_OUTPUT_CHANNELS: usize = 8;

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
    /// Input tile size: 4 for 3 × 3 kernels, 6 for 5 × 5.
    pub n: usize,
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
    /// The tiling of `pass` on `geom`, or `None` where neither variant
    /// applies: other kernels, strides or paddings; odd plane sizes; rows of
    /// tiles that do not split evenly into vectors; few output channels.
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
        let r = g.kh;
        let same = (r == 3 || r == 5) && g.kw == r && g.pad_h == r / 2 && g.pad_w == r / 2;
        if !same
            || g.stride_h != 1
            || g.stride_w != 1
            || !g.h.is_multiple_of(2)
            || !g.w.is_multiple_of(2)
        {
            return None;
        }
        let (per_row, per_image) = (g.w / 2, g.h / 2 * (g.w / 2));
        let rows_fit = per_row.is_multiple_of(lanes) || lanes.is_multiple_of(per_row);
        if !rows_fit || !per_image.is_multiple_of(lanes) || cout < MIN_OUTPUT_CHANNELS {
            return None;
        }
        let (n, vectors) = (r + 1, per_image / lanes);
        // Images per task: whole register tiles of 6 vectors where one
        // image has fewer, as long as V and M stay within the L2 cache.
        let for_vectors = if vectors >= 6 {
            1
        } else {
            6usize.div_ceil(vectors)
        };
        let image_bytes = 4 * n * n * (cin + cout.next_multiple_of(4)) * per_image;
        let images = for_vectors.min((TASK_BYTES / image_bytes).max(1));
        Some(Tiles {
            n,
            cin,
            cout,
            h: g.h,
            w: g.w,
            per_row,
            per_image,
            images,
            lanes,
        })
    }

    /// Tiles of a task's worth of images (the stride of `V` and `M` rows).
    fn tpad(&self) -> usize {
        self.images * self.per_image
    }

    /// Positions per tile (16 or 36).
    pub fn positions(&self) -> usize {
        self.n * self.n
    }

    /// Zero rows (and columns) around the plane.
    fn pad(&self) -> usize {
        (self.n - 2) / 2
    }

    /// One row-transform array: the padded rows of one parity (`h/2 + n/2 -
    /// 1`), a row of tiles each, and a vector of slack.
    fn r_len(&self) -> usize {
        (self.h / 2 + self.n / 2 - 1) * self.per_row + self.lanes
    }

    /// Distance between the positions ξ of `V`: one cache line more than
    /// its rows, because the transforms touch all positions at once and
    /// 16 streams a power of two apart (16 KiB on ResNet-20's planes) fall
    /// into one set of the L1 cache (measured: the input transform took
    /// 29 µs an image instead of 6–11).
    fn v_stride(&self) -> usize {
        self.cin * self.tpad() + 16
    }

    /// Distance between the positions ξ of `M` (see [`Tiles::v_stride`]).
    fn m_stride(&self, cb: usize) -> usize {
        self.cout.next_multiple_of(cb) * self.tpad() + 16
    }

    fn v_len(&self) -> usize {
        self.positions() * self.v_stride()
    }

    /// Per-thread scratch of a task with `cb` output channels per block.
    pub fn scratch(&self, cb: usize) -> usize {
        2 * self.n * self.r_len() + self.v_len() + self.positions() * self.m_stride(cb)
    }

    /// Elements of the packed transformed weights.
    pub fn packed_len(&self, cb: usize) -> usize {
        self.cout.next_multiple_of(cb) * self.positions() * self.cin
    }

    /// Offsets of the input channels' rows in `V[ξ]`.
    pub fn channel_offsets(&self) -> Vec<usize> {
        (0..self.cin).map(|c| c * self.tpad()).collect()
    }
}

/// `U = G g Gᵀ` of every (output, input) channel pair, packed
/// `[block of cb outputs][ξ][input][cb]` into `dst`, zero past the last
/// output; `weight(o, i, ki, kj)` reads the r × r kernel of the pair. In f64,
/// rounded once (G holds sixths and 24ths for 5 × 5).
pub fn pack_weights(
    t: &Tiles,
    cb: usize,
    weight: impl Fn(usize, usize, usize, usize) -> f32,
    dst: &mut [f32],
) {
    assert_eq!(dst.len(), t.packed_len(cb));
    let (n, r) = (t.n, t.n - 1);
    let g = if n == 4 { &G4 } else { &G6 };
    let positions = t.positions();
    for (block, packed) in dst.chunks_exact_mut(positions * t.cin * cb).enumerate() {
        for c in 0..cb {
            let o = block * cb + c;
            for i in 0..t.cin {
                let mut u = [[0f64; 6]; 6];
                if o < t.cout {
                    // G g (n × r), then (G g) Gᵀ.
                    let mut gg = [[0f64; 5]; 6];
                    for (a, row) in gg.iter_mut().enumerate().take(n) {
                        for (kj, v) in row.iter_mut().enumerate().take(r) {
                            *v = (0..r)
                                .map(|ki| g[a][ki] * weight(o, i, ki, kj) as f64)
                                .sum();
                        }
                    }
                    for a in 0..n {
                        for b in 0..n {
                            u[a][b] = (0..r).map(|kj| gg[a][kj] * g[b][kj]).sum();
                        }
                    }
                }
                for a in 0..n {
                    for b in 0..n {
                        packed[((a * n + b) * t.cin + i) * cb + c] = u[a][b] as f32;
                    }
                }
            }
        }
    }
}

/// Scratch layout of a task: `[R: 2n arrays][V][M]`.
fn regions(t: &Tiles, scratch: *mut f32) -> (*mut f32, *mut f32, *mut f32) {
    let v = scratch.wrapping_add(2 * t.n * t.r_len());
    (scratch, v, v.wrapping_add(t.v_len()))
}

/// Elements `i … i + L` of a row `src` of `w` elements padded by `pad`
/// zeros on each side (`padded[i] = src[i - pad]`), the padding's lanes
/// masked off rather than read.
#[inline(always)]
unsafe fn padded_row<S: Simd>(src: *const f32, w: usize, pad: usize, i: usize) -> S::V {
    let from = pad.saturating_sub(i).min(S::L);
    let to = (w + pad).saturating_sub(i).min(S::L);
    S::load_lanes(src.wrapping_add(i).wrapping_sub(pad), from, to.max(from))
}

/// Input transform of one image (`cin` planes of `h × w`) into slot `slot`
/// of the task's `V`.
///
/// # Safety
/// `img` holds `cin · h · w` elements; `scratch` holds [`Tiles::scratch`]
/// elements; the CPU runs `S`.
#[inline(always)]
pub unsafe fn input_image<S: Simd>(t: &Tiles, img: *const f32, slot: usize, scratch: *mut f32) {
    if t.n == 4 {
        input_tiles::<S, 4>(t, img, slot, scratch)
    } else {
        input_tiles::<S, 6>(t, img, slot, scratch)
    }
}

#[inline(always)]
unsafe fn input_tiles<S: Simd, const N: usize>(
    t: &Tiles,
    img: *const f32,
    slot: usize,
    scratch: *mut f32,
) {
    let (h, w, tpr, pad) = (t.h, t.w, t.per_row, t.pad());
    let (tpad, r_len, v_stride) = (t.tpad(), t.r_len(), t.v_stride());
    let (r, v, _) = regions(t, scratch);
    let row_vectors = tpr.div_ceil(S::L);
    for ci in 0..t.cin {
        let plane = img.add(ci * h * w);
        // Padded row y (the first and last `pad` rows are zero): its row
        // transform, kept by parity, at row y / 2 of `R[parity][j]`. With fewer
        // tiles per row than lanes, a store spills into the next row of the
        // same parity, which is written after it (or into the slack).
        for y in 0..h + 2 * pad {
            let at = |j: usize| r.add(((y % 2) * N + j) * r_len + y / 2 * tpr);
            if y < pad || y >= h + pad {
                for j in 0..N {
                    for k in 0..row_vectors {
                        S::storeu(at(j).add(k * S::L), S::zero());
                    }
                }
                continue;
            }
            // padded[i] = src[i - pad] for pad <= i < w + pad, else zero:
            // loaded straight from the plane with the padding's lanes masked
            // off (a copy into a padded row stalled every load on the store
            // it overlaps).
            let src = plane.add((y - pad) * w);
            for k in 0..row_vectors {
                // d_j = padded[2 tx + j] for the tiles tx of this vector.
                let i = 2 * k * S::L;
                let mut d = [S::zero(); N];
                for pair in 0..N / 2 {
                    let at = i + 2 * pair;
                    let (even, odd) = S::deinterleave(
                        padded_row::<S>(src, w, pad, at),
                        padded_row::<S>(src, w, pad, at + S::L),
                    );
                    d[2 * pair] = even;
                    d[2 * pair + 1] = odd;
                }
                let mut rows = [S::zero(); N];
                bt::<S>(&d, &mut rows);
                for (j, &row) in rows.iter().enumerate() {
                    S::storeu(at(j).add(k * S::L), row);
                }
            }
        }
        // Column transform: row 2ty + k of tile ty·tpr + tx sits at
        // R[k % 2][tile] plus k / 2 rows of tiles.
        let dst = v.add(ci * tpad + slot * t.per_image);
        for q in (0..t.per_image).step_by(S::L) {
            for j in 0..N {
                let mut col = [S::zero(); N];
                for (k, c) in col.iter_mut().enumerate() {
                    *c = S::loadu(r.add(((k % 2) * N + j) * r_len + q + k / 2 * tpr));
                }
                let mut out = [S::zero(); N];
                bt::<S>(&col, &mut out);
                for (i, &o) in out.iter().enumerate() {
                    S::storeu(dst.add((i * N + j) * v_stride + q), o);
                }
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
    let positions = t.positions();
    for xi in 0..positions {
        let vx = v.add(xi * t.v_stride());
        for o0 in (0..t.cout).step_by(CB) {
            let w = u.add((o0 / CB * positions + xi) * t.cin * CB);
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
                if t.n == 4 {
                    output_vector::<S, 4>(t, mo.add(q), t.m_stride(CB), b, dst, q);
                } else {
                    output_vector::<S, 6>(t, mo.add(q), t.m_stride(CB), b, dst, q);
                }
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
unsafe fn output_vector<S: Simd, const N: usize>(
    t: &Tiles,
    m: *const f32,
    xi_stride: usize,
    bias: Option<S::V>,
    dst: *mut f32,
    q: usize,
) {
    // Aᵀ over the rows i of each column j, then over the columns. Plain
    // loops, no closures: a closure is not compiled for the caller's
    // instruction set, and where it is not inlined (n = 6) every vector
    // operation in it became a call.
    let (mut first, mut second) = ([S::zero(); N], [S::zero(); N]);
    for (j, (c0, c1)) in first.iter_mut().zip(second.iter_mut()).enumerate() {
        let mut col = [S::zero(); N];
        for (i, c) in col.iter_mut().enumerate() {
            *c = S::loadu(m.add((i * N + j) * xi_stride));
        }
        [*c0, *c1] = at::<S>(&col);
    }
    let cols = [first, second];
    let (ty, tx) = (q / t.per_row, q % t.per_row);
    for (a, row) in cols.iter().enumerate() {
        let [mut y0, mut y1] = at::<S>(row);
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
