//! Average pooling and its gradient as Rust loops the step calls, split by
//! plane over the pool's threads, with a dropout mask folded in where the
//! lowering leaves one to them:
//!
//! - forward, an *input* mask: `avg_pool(F ⊙ x)` (dropout before pooling, as
//!   in ConvNet-Quick) and `avg_pool(B ⊙ x)` (the backward pass's substituted
//!   input, `../shared/docs/dropout-semantics.md` rule 2). Each task's planes
//!   are masked into a thread-local scratch with the step's vector hashing
//!   (`InputMask`), then pooled, so the masked tensor is never stored;
//! - gradient, an *output* mask: `B ⊙ dx`, applied to each task's planes as
//!   they are finished.
//!
//! The sums are the interpreter's, in its order: a window's taps row-major
//! from `+0`, over the window's size inside the padding; the gradient adds
//! `dy / size` to every tap, outputs in row-major order. On AVX-512 a row of
//! up to 32 inputs (16 outputs) is a vector and each tap column one permute
//! (`x86`); elsewhere scalar loops. Both are bit-identical to
//! `interp::{avg_pool, avg_pool_grad}` followed by the mask node, at any
//! thread count (each plane is one task's alone).

use dropjit_graph::interp::{window, Nchw};
use dropjit_graph::op::PoolAttrs;

use crate::conv::{key_slots_of, recording_of, ConvIsa, InputMask, MaskArgs};
use crate::kernels::parallel::global_pool;
use crate::maxpool::pool_text;

/// A plane's windows: clipped bounds of every output row and column, the
/// divisor of every output and, for the AVX-512 rows, the lane tables.
struct Windows {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
    sizes: Vec<f32>,
    x_plane: usize,
    y_plane: usize,
    w: usize,
    /// Per tap column `j`: which input column each output lane reads, and
    /// which lanes have that tap (forward, `ox` in lanes).
    taps: Vec<([u32; 16], u16)>,
    /// Per tap column `j`, per half of an input row: which output each
    /// input column takes `dy / size` from, and which columns have one
    /// (gradient, input columns in lanes).
    spread: Vec<[([u32; 16], u16); 2]>,
    /// Per input row, the output rows whose windows cover it (a contiguous,
    /// ascending run `lo..hi`; empty for rows no window reads).
    covering: Vec<(usize, usize)>,
}

impl Windows {
    fn new(pool: &PoolAttrs, x: Nchw, y: Nchw) -> Self {
        let rows: Vec<_> = (0..y.h).map(|o| window(o, pool, x.h)).collect();
        let cols: Vec<_> = (0..y.w).map(|o| window(o, pool, x.w)).collect();
        let sizes = rows
            .iter()
            .flat_map(|r| cols.iter().map(move |c| (r.2 * c.2) as f32))
            .collect();
        // Input column of output `ox`'s tap `j`, if inside the row.
        let column = |ox: usize, j: usize| {
            (ox * pool.stride + j)
                .checked_sub(pool.padding)
                .filter(|&c| c < x.w)
        };
        let mut taps = vec![];
        let mut spread = vec![];
        for j in 0..pool.kernel {
            let mut t = ([0u32; 16], 0u16);
            for ox in 0..y.w.min(16) {
                if let Some(c) = column(ox, j) {
                    t.0[ox] = c as u32;
                    t.1 |= 1 << ox;
                }
            }
            taps.push(t);
            let mut halves = [([0u32; 16], 0u16); 2];
            for ox in 0..y.w.min(16) {
                if let Some(c) = column(ox, j).filter(|&c| c < 32) {
                    let half = &mut halves[c / 16];
                    half.0[c % 16] = ox as u32;
                    half.1 |= 1 << (c % 16);
                }
            }
            spread.push(halves);
        }
        let covering = (0..x.h)
            .map(|r| {
                let covers = |oy: usize| rows[oy].0 <= r && r < rows[oy].1;
                let lo = (0..y.h).find(|&oy| covers(oy)).unwrap_or(y.h);
                (lo, (lo..y.h).find(|&oy| !covers(oy)).unwrap_or(y.h))
            })
            .collect();
        Self {
            rows: rows.iter().map(|&(a, b, _)| (a, b)).collect(),
            cols: cols.iter().map(|&(a, b, _)| (a, b)).collect(),
            sizes,
            x_plane: x.h * x.w,
            y_plane: y.h * y.w,
            w: x.w,
            taps,
            spread,
            covering,
        }
    }

    /// Whether a row of inputs fits two AVX-512 vectors and a row of outputs
    /// one.
    fn fits_vectors(&self) -> bool {
        self.w <= 32 && self.cols.len() <= 16
    }
}

/// Elements of input a task covers, at least one plane: 16 KiB, so a task's
/// masked planes stay in L1 between masking and pooling.
const TASK_ELEMS: usize = 4096;

/// An average-pooling launch: forward `[x, y]`, gradient `[dy, dx]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AvgPoolLaunch {
    pub grad: bool,
    pub pool: PoolAttrs,
    pub x: Nchw,
    pub y: Nchw,
    /// Instruction set the masks hash with.
    pub isa: ConvIsa,
    /// Forward only: the mask on `x`.
    pub input_mask: Option<InputMask>,
    /// Gradient only: the mask on `dx`.
    pub output_mask: Option<InputMask>,
}

impl AvgPoolLaunch {
    /// An unmasked pass over `x` (the input) and `y` (the pooled output).
    pub fn new(grad: bool, pool: PoolAttrs, x: Nchw, y: Nchw, isa: ConvIsa) -> Self {
        Self {
            grad,
            pool,
            x,
            y,
            isa,
            input_mask: None,
            output_mask: None,
        }
    }

    /// The forward pass pooling `mask ⊙ x`.
    pub fn with_input_mask(mut self, mask: InputMask) -> Self {
        assert!(!self.grad, "only the forward pass masks its input");
        self.input_mask = Some(mask);
        self
    }

    /// The gradient pass storing `mask ⊙ dx`.
    pub fn with_output_mask(mut self, mask: InputMask) -> Self {
        assert!(self.grad, "only the gradient masks its output");
        self.output_mask = Some(mask);
        self
    }

    /// Elements each argument must hold: input, output, then the mask's
    /// record where it has one (one byte per element of `x`).
    pub fn extents(&self) -> Vec<usize> {
        let (x, y) = (self.x.len(), self.y.len());
        let mut e = if self.grad { vec![y, x] } else { vec![x, y] };
        if self.recording_mask().is_some() {
            e.push(x.div_ceil(4));
        }
        e
    }

    /// The mask that records or reads which elements it keeps, if any.
    fn recording_mask(&self) -> Option<&InputMask> {
        recording_of([&self.input_mask, &self.output_mask])
    }

    /// One past the largest mask key slot the launch reads.
    pub fn key_slots(&self) -> u32 {
        key_slots_of([&self.input_mask, &self.output_mask])
    }

    pub fn describe(&self) -> String {
        let mask = |m: &Option<InputMask>, what: &str| {
            m.as_ref().map_or(String::new(), |m| m.plan_text(what))
        };
        pool_text("avg_pool2d", self.grad, &self.pool, self.x)
            + &mask(&self.input_mask, "input masked as read")
            + &mask(&self.output_mask, "output masked as stored")
    }

    /// # Safety
    /// `ptrs` holds one buffer per [`AvgPoolLaunch::extents`] entry (the
    /// mask's record last, where it has one), `keys`
    /// [`AvgPoolLaunch::key_slots`] keys; the output overlaps no input; the
    /// launch's instruction set runs on this CPU.
    pub unsafe fn run(&self, ptrs: &[*mut f32], keys: *const u64, threads: usize) {
        let (x, y) = (self.x, self.y);
        let win = Windows::new(&self.pool, x, y);
        let (xp, yp) = (x.h * x.w, y.h * y.w);
        let planes = x.n * x.c;
        let per_task = (TASK_ELEMS / xp).max(1);
        let p: Vec<usize> = ptrs.iter().map(|&q| q as usize).collect();
        let masks = MaskArgs {
            keys,
            kept: match self.recording_mask() {
                Some(_) => ptrs[2] as *mut u8,
                None => std::ptr::null_mut(),
            },
        };
        global_pool().parallel_for_on(planes.div_ceil(per_task), threads, &|t| {
            let (first, end) = (t * per_task, ((t + 1) * per_task).min(planes));
            let n = end - first;
            if self.grad {
                let dy = std::slice::from_raw_parts((p[0] as *const f32).add(first * yp), n * yp);
                let dx = std::slice::from_raw_parts_mut((p[1] as *mut f32).add(first * xp), n * xp);
                grad_planes(self.isa, dy, dx, &win);
                if let Some(m) = &self.output_mask {
                    m.apply_in_place(self.isa, masks, dx.as_mut_ptr(), first * xp, n * xp);
                }
                return;
            }
            let src = (p[0] as *const f32).add(first * xp);
            let ys = std::slice::from_raw_parts_mut((p[1] as *mut f32).add(first * yp), n * yp);
            match &self.input_mask {
                Some(m) => m.with_masked(self.isa, masks, src, first * xp, n * xp, |xs| {
                    forward_planes(self.isa, xs, ys, &win)
                }),
                None => forward_planes(self.isa, std::slice::from_raw_parts(src, n * xp), ys, &win),
            }
        });
    }
}

/// Planes `x` pooled into `y`: on AVX-512 whole rows at a time where they
/// fit, else scalar.
fn forward_planes(isa: ConvIsa, x: &[f32], y: &mut [f32], win: &Windows) {
    #[cfg(target_arch = "x86_64")]
    if isa == ConvIsa::Avx512 && win.fits_vectors() {
        // SAFETY: a launch's instruction set runs on this CPU (`run`'s contract).
        return unsafe { x86::forward_avx512(x, y, win) };
    }
    let _ = isa;
    for (xs, ys) in x
        .chunks_exact(win.x_plane)
        .zip(y.chunks_exact_mut(win.y_plane))
    {
        forward_plane(xs, ys, win);
    }
}

/// Gradients `dy` spread into planes `dx`, as [`forward_planes`].
fn grad_planes(isa: ConvIsa, dy: &[f32], dx: &mut [f32], win: &Windows) {
    #[cfg(target_arch = "x86_64")]
    if isa == ConvIsa::Avx512 && win.fits_vectors() {
        // SAFETY: as in `forward_planes`.
        return unsafe { x86::grad_avx512(dy, dx, win) };
    }
    let _ = isa;
    for (dys, dxs) in dy
        .chunks_exact(win.y_plane)
        .zip(dx.chunks_exact_mut(win.x_plane))
    {
        grad_plane(dys, dxs, win);
    }
}

/// One plane: each window's taps summed row-major from `+0`, over its size.
fn forward_plane(x: &[f32], y: &mut [f32], win: &Windows) {
    let (w, ow) = (win.w, win.cols.len());
    for (oy, &(h0, h1)) in win.rows.iter().enumerate() {
        for (ox, &(w0, w1)) in win.cols.iter().enumerate() {
            let mut acc = 0f32;
            for r in h0..h1 {
                for &v in &x[r * w + w0..r * w + w1] {
                    acc += v;
                }
            }
            y[oy * ow + ox] = acc / win.sizes[oy * ow + ox];
        }
    }
}

/// One plane's gradient: `dy / size` added to every tap of each window,
/// outputs in row-major order.
fn grad_plane(dy: &[f32], dx: &mut [f32], win: &Windows) {
    let (w, ow) = (win.w, win.cols.len());
    dx.fill(0.0);
    for (oy, &(h0, h1)) in win.rows.iter().enumerate() {
        for (ox, &(w0, w1)) in win.cols.iter().enumerate() {
            let g = dy[oy * ow + ox] / win.sizes[oy * ow + ox];
            for r in h0..h1 {
                for v in &mut dx[r * w + w0..r * w + w1] {
                    *v += g;
                }
            }
        }
    }
}

/// Whole rows in vectors: outputs (forward) or input columns (gradient) in
/// lanes, taps gathered by a permute per tap column, adds in the scalar
/// paths' order, so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Windows;

    /// Lanes `0..n` set.
    fn first(n: usize) -> u16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// Forward: per output row, `acc += tap` over window rows, then tap
    /// columns (row-major; a lane without the tap adds `+0`, which leaves
    /// a sum that started at `+0` unchanged), then `acc / size`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_avx512(x: &[f32], y: &mut [f32], win: &Windows) {
        let (w, ow) = (win.w, win.cols.len());
        let (lo, hi) = (first(w), first(w.saturating_sub(16)));
        let out = first(ow);
        let taps: Vec<(__m512i, u16)> = win
            .taps
            .iter()
            .map(|(idx, m)| (_mm512_loadu_si512(idx.as_ptr().cast()), *m))
            .collect();
        for (xs, ys) in x
            .chunks_exact(win.x_plane)
            .zip(y.chunks_exact_mut(win.y_plane))
        {
            for (oy, &(h0, h1)) in win.rows.iter().enumerate() {
                let mut acc = _mm512_setzero_ps();
                for r in h0..h1 {
                    let row = xs.as_ptr().add(r * w);
                    let a = _mm512_maskz_loadu_ps(lo, row);
                    let b = match hi {
                        0 => _mm512_setzero_ps(),
                        _ => _mm512_maskz_loadu_ps(hi, row.add(16)),
                    };
                    for &(idx, m) in &taps {
                        acc = _mm512_add_ps(acc, _mm512_maskz_permutex2var_ps(m, a, idx, b));
                    }
                }
                let sizes = _mm512_maskz_loadu_ps(out, win.sizes.as_ptr().add(oy * ow));
                let q = _mm512_div_ps(acc, sizes);
                _mm512_mask_storeu_ps(ys.as_mut_ptr().add(oy * ow), out, q);
            }
        }
    }

    /// Gradient: `g = dy / size` of every output row first; then each
    /// input row, built in registers and stored once, takes `g` of every
    /// output whose window covers it, outputs in ascending order (rows, then
    /// tap columns descending), as the scalar path adds them.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_avx512(dy: &[f32], dx: &mut [f32], win: &Windows) {
        let (w, ow, oh) = (win.w, win.cols.len(), win.rows.len());
        let halves = [(0, first(w)), (16, first(w.saturating_sub(16)))];
        let out = first(ow);
        let spread: Vec<[(__m512i, u16); 2]> = win
            .spread
            .iter()
            .rev()
            .map(|h| h.map(|(idx, m)| (_mm512_loadu_si512(idx.as_ptr().cast()), m)))
            .collect();
        let mut g = vec![_mm512_setzero_ps(); oh];
        for (dys, dxs) in dy
            .chunks_exact(win.y_plane)
            .zip(dx.chunks_exact_mut(win.x_plane))
        {
            for (oy, g) in g.iter_mut().enumerate() {
                let d = _mm512_maskz_loadu_ps(out, dys.as_ptr().add(oy * ow));
                let sizes = _mm512_maskz_loadu_ps(out, win.sizes.as_ptr().add(oy * ow));
                *g = _mm512_maskz_div_ps(out, d, sizes);
            }
            for (r, &(oy0, oy1)) in win.covering.iter().enumerate() {
                for (half, &(at, valid)) in halves.iter().enumerate() {
                    if valid == 0 {
                        continue;
                    }
                    let mut v = _mm512_setzero_ps();
                    for g in &g[oy0..oy1] {
                        for taps in &spread {
                            let (idx, m) = taps[half];
                            v = _mm512_add_ps(v, _mm512_maskz_permutexvar_ps(m, idx, *g));
                        }
                    }
                    _mm512_mask_storeu_ps(dxs.as_mut_ptr().add(r * w + at), valid, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::KeptBytes;
    use crate::kernels::expr::testing::data;
    use dropjit_graph::interp::{avg_pool, avg_pool_grad};
    use dropjit_graph::mask;

    /// Runs `l` on `input`, with the mask's record where it has one.
    fn run(
        l: &AvgPoolLaunch,
        input: &[f32],
        keys: &[u64],
        threads: usize,
        record: &mut [u8],
    ) -> Vec<f32> {
        let e = l.extents();
        let mut out = vec![f32::NAN; e[1]];
        let mut ptrs = vec![input.as_ptr() as *mut f32, out.as_mut_ptr()];
        if e.len() > 2 {
            assert_eq!(record.len().div_ceil(4), e[2]);
            ptrs.push(record.as_mut_ptr() as *mut f32);
        }
        unsafe { l.run(&ptrs, keys.as_ptr(), threads) };
        out
    }

    /// Both passes against the interpreter's, followed by its mask node, bit
    /// for bit, with and without their masks, on every instruction set this
    /// CPU runs and at 1, 2 and 3 threads: edges, padding, ceil-mode windows,
    /// rows in one or two AVX-512 vectors or too wide for them, planes larger
    /// than a task, tasks that do not divide the planes.
    #[test]
    fn both_passes_match_the_interpreter_masked_or_not() {
        let keys = [
            mask::mask_key(9, 4, 2, mask::Stream::F),
            mask::mask_key(9, 4, 2, mask::Stream::G),
        ];
        let m = InputMask::new(
            vec![
                (0, mask::keep_threshold(0.3)),
                (1, mask::keep_threshold(0.4)),
            ],
            mask::keep_scale(&[0.3, 0.4]) as f32,
        );
        for &(n, c, h, w, k, s, pad, ceil) in &[
            (3, 32, 16, 16, 3, 2, 0, true),
            (2, 3, 7, 9, 3, 2, 1, false),
            (3, 2, 5, 5, 2, 2, 0, true),
            (2, 4, 1, 1, 1, 1, 0, false),
            (1, 3, 6, 5, 3, 1, 1, false),
            (2, 2, 70, 66, 5, 3, 2, true),
            (2, 3, 9, 30, 3, 2, 1, true),
            (1, 2, 4, 33, 2, 2, 0, false),
            (1, 2, 3, 20, 3, 1, 1, false),
        ] {
            let pool = PoolAttrs {
                kernel: k,
                stride: s,
                padding: pad,
                ceil_mode: ceil,
            };
            let x = Nchw { n, c, h, w };
            let out = |len: usize| {
                let span = len + 2 * pad - k;
                let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
                if ceil && (o - 1) * s >= len + pad {
                    o -= 1;
                }
                o
            };
            let y = Nchw {
                n,
                c,
                h: out(h),
                w: out(w),
            };
            let (xs, dys) = (data(x.len(), 3), data(y.len(), 4));
            let want_y = avg_pool(&xs, x, y, &pool);
            let masked_y = avg_pool(&m.masked_by_definition(&xs, &keys), x, y, &pool);
            let want_dx = avg_pool_grad(&dys, x, y, &pool);
            let want_masked_dx = m.masked_by_definition(&want_dx, &keys);
            for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
                let fwd = AvgPoolLaunch::new(false, pool, x, y, isa);
                let grad = AvgPoolLaunch::new(true, pool, x, y, isa);
                let cases = [
                    (fwd.clone(), &xs, &want_y, "forward"),
                    (
                        fwd.with_input_mask(m.clone()),
                        &xs,
                        &masked_y,
                        "masked forward",
                    ),
                    (grad.clone(), &dys, &want_dx, "gradient"),
                    (
                        grad.with_output_mask(m.clone()),
                        &dys,
                        &want_masked_dx,
                        "masked gradient",
                    ),
                ];
                let kept = m.kept_by_definition(x.len(), &keys);
                let zeros = [0u64; 2];
                for (launch, input, want, what) in cases {
                    let masked = launch.key_slots() > 0;
                    let modes: &[KeptBytes] = if masked {
                        &[KeptBytes::None, KeptBytes::Write, KeptBytes::Read]
                    } else {
                        &[KeptBytes::None]
                    };
                    for &mode in modes {
                        let mut l = launch.clone();
                        if let Some(m) = l.input_mask.as_mut().or(l.output_mask.as_mut()) {
                            m.kept = mode;
                        }
                        let what = format!("{what} {mode:?} {isa} {x:?} k{k} s{s} p{pad}");
                        for threads in [1, 2, 3] {
                            // Reading the record needs no keys: wrong ones here.
                            let (keys, mut record) = match mode {
                                KeptBytes::Read => (&zeros, kept.clone()),
                                _ => (&keys, vec![9u8; x.len()]),
                            };
                            let got = run(&l, input, keys, threads, &mut record);
                            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{what}, {threads} thread(s): element {i} is {g}, want {w}"
                                );
                            }
                            if mode == KeptBytes::Write {
                                assert_eq!(record, kept, "{what}: record");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Times ConvNet-Quick's pool2 launches (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn avg_pool_speed() {
        let keys = [
            mask::mask_key(1, 1, 1, mask::Stream::F),
            mask::mask_key(1, 1, 1, mask::Stream::G),
        ];
        let m = InputMask::new(
            vec![
                (0, mask::keep_threshold(0.2)),
                (1, mask::keep_threshold(0.0001)),
            ],
            mask::keep_scale(&[0.2, 0.0001]) as f32,
        );
        let pool = PoolAttrs {
            kernel: 3,
            stride: 2,
            padding: 0,
            ceil_mode: true,
        };
        for (c, hw, ohw) in [(32, 16, 8), (64, 8, 4)] {
            let x = Nchw {
                n: 100,
                c,
                h: hw,
                w: hw,
            };
            let y = Nchw {
                n: 100,
                c,
                h: ohw,
                w: ohw,
            };
            let (xs, dys) = (data(x.len(), 1), data(y.len(), 2));
            let isa = ConvIsa::selected().unwrap();
            let fwd = AvgPoolLaunch::new(false, pool, x, y, isa);
            let grad = AvgPoolLaunch::new(true, pool, x, y, isa);
            for (l, input) in [
                (fwd.clone(), &xs),
                (fwd.with_input_mask(m.clone()), &xs),
                (grad.clone(), &dys),
                (grad.with_output_mask(m.clone()), &dys),
            ] {
                let mut out = vec![0f32; l.extents()[1]];
                let ptrs = [input.as_ptr() as *mut f32, out.as_mut_ptr()];
                let reps = 200;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    unsafe { l.run(&ptrs, keys.as_ptr(), 2) };
                }
                println!(
                    "{:8.1} us  {}",
                    t.elapsed().as_secs_f64() * 1e6 / reps as f64,
                    l.describe()
                );
            }
        }
    }
}
