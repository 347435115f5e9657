//! Direct convolution micro-kernels over prepared images (see [`super::prep`]).
//!
//! - [`forward_image`]: `out[o, q] = Σ_t w[o, t] · x[taps[t] + q]` for one
//!   image. A tile holds `CB` output channels × `PV` vectors of output
//!   positions in registers; per tap it loads `PV` input vectors and
//!   broadcasts `CB` weights (packed `[block][tap][CB]`), `CB · PV` FMAs.
//!   The forward pass and the input gradient (taps over a dilated gradient,
//!   weights flipped and transposed) are both this kernel.
//! - [`weight_grad_images`]: `dw[o, t] += Σ_images Σ_q dy[o, q] · x[taps[t] + q]`.
//!   A tile holds `CB` output channels × `TB` taps of lane-wise partial sums,
//!   reduced across lanes once per tile and batch of images.
//!
//! Generic over [`Simd`]; instantiated per instruction set in the
//! `#[target_feature]` functions at the bottom, with the register blocking
//! for that set (AVX-512: 32 registers, AVX2: 16).

use super::prep::Prep;
use super::simd::Simd;

/// Taps come in runs of `RUN` consecutive offsets from each of `rows` (one
/// run per input row of a stride-1 kernel; `RUN = 1` for any other tap list),
/// so within a run the loads differ by constant displacements: measured ~10 %
/// faster than one offset per tap.
#[inline(always)]
pub(super) unsafe fn forward_tile<S: Simd, const CB: usize, const PV: usize, const RUN: usize>(
    x: *const f32,
    rows: &[usize],
    w: *const f32,
) -> [[S::V; PV]; CB] {
    let mut acc = [[S::zero(); PV]; CB];
    for (r, &off) in rows.iter().enumerate() {
        for j in 0..RUN {
            // CB broadcasts, then each input vector is loaded once and used
            // CB times: CB + 1 registers besides the accumulators.
            let xp = x.add(off + j);
            let wt = w.add((r * RUN + j) * CB);
            let wb: [S::V; CB] = std::array::from_fn(|c| S::splat(*wt.add(c)));
            for p in 0..PV {
                let xv = S::loadu(xp.add(p * S::L));
                for (row, &w) in acc.iter_mut().zip(&wb) {
                    row[p] = S::fma(w, xv, row[p]);
                }
            }
        }
    }
    acc
}

/// How one output vector of a tile is stored: its valid lanes (positions
/// `ox < out_w`) moved to the front by `idx`, then written from output index
/// `at`. A store writes all lanes; the ones past the valid count land where
/// the next vectors of the same plane write later, so they are overwritten;
/// near the plane's end, where they would land past it, a lane mask keeps
/// only the valid lanes.
#[derive(Clone, Copy)]
struct VecStore {
    at: usize,
    valid: usize,
    /// Lanes are already in place (`idx` is the identity).
    in_order: bool,
    last: bool,
    idx: [i32; 16],
}

const NO_STORE: VecStore = VecStore {
    at: 0,
    valid: 0,
    in_order: true,
    last: false,
    idx: [0; 16],
};

/// The stores of the `nv` vectors of `lanes` positions from `q0`.
fn vector_stores(p: &Prep, q0: usize, nv: usize, lanes: usize, out: &mut [VecStore; 6]) {
    let positions = p.positions();
    // (oy, ox) of position q, stepped: a division per lane cost a quarter
    // of a 16-channel layer's time.
    let (mut oy, mut ox) = (q0 / p.row, q0 % p.row);
    for (v, st) in out.iter_mut().enumerate().take(nv) {
        let start = q0 + v * lanes;
        *st = NO_STORE;
        for lane in 0..lanes {
            if start + lane < positions && ox < p.out_w {
                if st.valid == 0 {
                    st.at = oy * p.out_w + ox;
                }
                st.in_order &= lane == st.valid;
                st.idx[st.valid] = lane as i32;
                st.valid += 1;
            }
            ox += 1;
            if ox == p.row {
                ox = 0;
                oy += 1;
            }
        }
        // A full-width store would write past the plane.
        st.last = st.at + lanes > p.out_h * p.out_w;
    }
}

#[inline(always)]
unsafe fn forward_block<S: Simd, const CB: usize, const PV: usize, const RUN: usize>(
    p: &Prep,
    xprep: *const f32,
    rows: &[usize],
    wpack: *const f32,
    (n_out, bias): (usize, *const f32),
    out: *mut f32,
    v0: usize,
) {
    let q0 = v0 * S::L;
    let mut stores = [NO_STORE; 6];
    vector_stores(p, q0, PV, S::L, &mut stores);
    let plane = p.out_h * p.out_w;
    for o0 in (0..n_out).step_by(CB) {
        let w = wpack.add(o0 * rows.len() * RUN);
        let acc = forward_tile::<S, CB, PV, RUN>(xprep.add(q0), rows, w);
        for (c, row) in acc.iter().enumerate().take(n_out - o0) {
            let dst = out.add((o0 + c) * plane);
            let b = (!bias.is_null()).then(|| S::splat(*bias.add(o0 + c)));
            for (st, &a) in stores.iter().zip(row) {
                if st.valid == 0 {
                    continue;
                }
                let a = match b {
                    Some(b) => S::add(a, b),
                    None => a,
                };
                let a = if st.in_order {
                    a
                } else {
                    S::permute(a, st.idx.as_ptr())
                };
                if st.last {
                    S::store_lanes(dst.add(st.at), a, 0, st.valid);
                } else {
                    S::storeu(dst.add(st.at), a);
                }
            }
        }
    }
}

/// One image of a forward-style pass over the taps `rows[r] + j`
/// (`j < run`, `run` 1, 3 or 5). `wpack` holds `ceil(n_out / CB)` blocks of
/// `[taps][CB]` weights; `out` is `n_out` planes of `out_h · out_w`, plus
/// `bias[o]` on plane `o` unless `bias` is null.
#[inline(always)]
unsafe fn forward_image<S: Simd, const CB: usize, const PV: usize>(
    p: &Prep,
    xprep: *const f32,
    rows: &[usize],
    run: usize,
    wpack: *const f32,
    n_out: (usize, *const f32),
    out: *mut f32,
) {
    match run {
        3 => forward_runs::<S, CB, PV, 3>(p, xprep, rows, wpack, n_out, out),
        5 => forward_runs::<S, CB, PV, 5>(p, xprep, rows, wpack, n_out, out),
        _ => forward_runs::<S, CB, PV, 1>(p, xprep, rows, wpack, n_out, out),
    }
}

#[inline(always)]
unsafe fn forward_runs<S: Simd, const CB: usize, const PV: usize, const RUN: usize>(
    p: &Prep,
    xprep: *const f32,
    rows: &[usize],
    wpack: *const f32,
    n_out: (usize, *const f32),
    out: *mut f32,
) {
    let nvec = p.vectors(S::L);
    let mut v0 = 0;
    while v0 + PV <= nvec {
        forward_block::<S, CB, PV, RUN>(p, xprep, rows, wpack, n_out, out, v0);
        v0 += PV;
    }
    // The last, shorter tile; arms past PV are never taken.
    let a = (p, xprep, rows, wpack, n_out, out, v0);
    match nvec - v0 {
        0 => {}
        1 => forward_block::<S, CB, 1, RUN>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
        2 => forward_block::<S, CB, 2, RUN>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
        3 => forward_block::<S, CB, 3, RUN>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
        4 => forward_block::<S, CB, 4, RUN>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
        5 => forward_block::<S, CB, 5, RUN>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
        _ => unreachable!("tiles have at most 6 vectors"),
    }
}

/// Weight gradient over `images` prepared images (`x_stride` apart) and their
/// gradients laid out by [`super::prep::fill_rows`] (`n_out` rows of
/// `dy_row` elements per image, `dy_stride` apart): adds
/// `Σ_images Σ_q dy[o, q] · x[taps[t] + q]` to `partial[o · taps.len() + t]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn weight_grad_images<S: Simd, const CB: usize, const TB: usize>(
    nvec: usize,
    images: usize,
    xprep: *const f32,
    x_stride: usize,
    taps: &[usize],
    dyq: *const f32,
    dy_stride: usize,
    dy_row: usize,
    n_out: usize,
    partial: *mut f32,
) {
    let nt = taps.len();
    for o0 in (0..n_out).step_by(CB) {
        // Blocks past the last channel or tap repeat it; their sums are dropped.
        let rows: [usize; CB] = std::array::from_fn(|c| (o0 + c).min(n_out - 1) * dy_row);
        for t0 in (0..nt).step_by(TB) {
            let offs: [usize; TB] = std::array::from_fn(|t| taps[(t0 + t).min(nt - 1)]);
            let mut acc = [[S::zero(); TB]; CB];
            for img in 0..images {
                let x = xprep.add(img * x_stride);
                let dy = dyq.add(img * dy_stride);
                for v in 0..nvec {
                    let q = v * S::L;
                    let dyv: [S::V; CB] = std::array::from_fn(|c| S::loadu(dy.add(rows[c] + q)));
                    for t in 0..TB {
                        let xv = S::loadu(x.add(offs[t] + q));
                        for c in 0..CB {
                            acc[c][t] = S::fma(dyv[c], xv, acc[c][t]);
                        }
                    }
                }
            }
            for (c, row) in acc.iter().enumerate().take(n_out - o0) {
                let dst = partial.add((o0 + c) * nt);
                for (t, &a) in row.iter().enumerate().take(nt - t0) {
                    *dst.add(t0 + t) += S::hsum(a);
                }
            }
        }
    }
}

/// One instruction set's kernels with its register blocking.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub lanes: usize,
    /// Output channels per forward tile (the packing block).
    pub forward_block: usize,
    /// `(prep, image, tap rows, run, packed weights, (outputs, bias or
    /// null), out)`.
    #[allow(clippy::type_complexity)]
    pub forward:
        unsafe fn(&Prep, *const f32, &[usize], usize, *const f32, (usize, *const f32), *mut f32),
    #[allow(clippy::type_complexity)]
    pub weight_grad: unsafe fn(
        usize,
        usize,
        *const f32,
        usize,
        &[usize],
        *const f32,
        usize,
        usize,
        usize,
        *mut f32,
    ),
    /// The weight gradient with output channels in the lanes, and the most
    /// channel vectors its tiles hold.
    pub weight_grad_lanes: super::wgrad_lanes::Kernel,
    pub max_channel_vectors: usize,
    /// Winograd F(2×2, 3×3): the input transform, then the products and the
    /// output transform with the forward register tile.
    pub winograd_input: super::winograd::InputKernel,
    pub winograd_output: super::winograd::OutputKernel,
}

/// One instruction set's entry points: the generic kernels instantiated
/// with its register blocking inside `#[target_feature]` functions, where
/// the [`Simd`] methods inline into real vector code.
#[cfg(target_arch = "x86_64")]
macro_rules! isa_kernels {
    ($forward:ident, $weight_grad:ident, $simd:ty, $features:literal,
     forward $fcb:literal x $fpv:literal, weight_grad $wcb:literal x $wtb:literal) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $forward(
            p: &Prep,
            x: *const f32,
            rows: &[usize],
            run: usize,
            w: *const f32,
            n_out: (usize, *const f32),
            out: *mut f32,
        ) {
            forward_image::<$simd, $fcb, $fpv>(p, x, rows, run, w, n_out, out)
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub unsafe fn $weight_grad(
            nvec: usize,
            images: usize,
            x: *const f32,
            xs: usize,
            taps: &[usize],
            dy: *const f32,
            dys: usize,
            dyr: usize,
            n_out: usize,
            partial: *mut f32,
        ) {
            weight_grad_images::<$simd, $wcb, $wtb>(
                nvec, images, x, xs, taps, dy, dys, dyr, n_out, partial,
            )
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::{Avx2, Avx512};
    use super::*;

    // AVX-512, 32 registers. Forward: 24 accumulators + 4 broadcasts + 1
    // input. Weight gradient: 24 accumulators + 4 gradient rows + 1 input.
    isa_kernels!(forward_avx512, weight_grad_avx512, Avx512, "avx512f,avx2,fma",
        forward 4 x 6, weight_grad 4 x 6);

    // AVX2, 16 registers. Forward: 12 accumulators + 2 broadcasts + 1 input
    // (6 x 2 measured 30 % slower, 4 x 3 spills an accumulator). Weight
    // gradient: 12 accumulators + 3 gradient rows + 1 input.
    isa_kernels!(forward_avx2, weight_grad_avx2, Avx2, "avx2,fma",
        forward 2 x 6, weight_grad 3 x 4);
}

/// The kernels of a vector instruction set (`None` for the portable path or
/// another architecture).
pub fn kernels(isa: super::ConvIsa) -> Option<Kernels> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::ConvIsa::Avx512 => Some(Kernels {
            lanes: 16,
            forward_block: 4,
            forward: x86::forward_avx512,
            weight_grad: x86::weight_grad_avx512,
            weight_grad_lanes: super::wgrad_lanes::x86::avx512,
            max_channel_vectors: 4,
            winograd_input: super::winograd::x86::input_avx512,
            winograd_output: super::winograd::x86::output_avx512,
        }),
        #[cfg(target_arch = "x86_64")]
        super::ConvIsa::Avx2 => Some(Kernels {
            lanes: 8,
            forward_block: 2,
            forward: x86::forward_avx2,
            weight_grad: x86::weight_grad_avx2,
            weight_grad_lanes: super::wgrad_lanes::x86::avx2,
            max_channel_vectors: 2,
            winograd_input: super::winograd::x86::input_avx2,
            winograd_output: super::winograd::x86::output_avx2,
        }),
        _ => None,
    }
}
