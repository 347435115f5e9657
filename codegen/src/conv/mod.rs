//! Convolution passes — forward, input gradient, weight gradient — as one
//! launch each over the whole batch.
//!
//! On AVX-512F or AVX2 + FMA CPUs a pass is a direct convolution on NCHW
//! activations: each image is first prepared (zero-padded, dilated, split into
//! stride phases: [`prep`]) into a per-thread buffer, then register-blocked
//! micro-kernels ([`direct`]) read every tap as one contiguous run. Elsewhere,
//! or when asked for, the portable path unfolds each image (im2col) and
//! multiplies with matrixmultiply ([`im2col`]).
//!
//! Threads split the forward and input-gradient passes by image (each image's
//! output is computed the same way on any thread). The weight gradient is
//! summed per fixed group of images ([`WEIGHT_GRAD_GROUPS`]) into its own
//! partial, and the partials are added in group order, so a step's bits do not
//! depend on the thread count.

mod direct;
mod direct_pass;
mod im2col;
mod input_mask;
mod isa;
mod peak;
pub mod prep;
mod simd;
mod stats;
mod wgrad_lanes;
mod winograd;

use std::cell::RefCell;

pub use input_mask::{key_slots_of, recording_of, InputMask, KeptBytes, MaskArgs};
pub use isa::{ConvIsa, ISA_ENV};
pub use peak::fma_peak_gflops;
use prep::Prep;
pub use winograd::WINOGRAD_ENV;

use crate::kernels::gemm::ConvGeom;
use crate::kernels::parallel::global_pool;

/// The weight gradient is summed in at most this many groups of images, each
/// into its own partial; fixed, so the sums do not depend on the thread count.
pub const WEIGHT_GRAD_GROUPS: usize = 16;

/// Bytes of prepared images a weight-gradient task works on at once (they are
/// re-read once per tile, so they should stay in the L2 cache).
const WEIGHT_GRAD_BATCH_BYTES: usize = 384 << 10;

/// Which product a convolution launch computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// `[x, w, y, scratch]`: `y = conv(x, W)`.
    Forward,
    /// `[dy, w, dx, scratch]`: `dx = conv_transpose(dy, W)`.
    GradInput,
    /// `[dy, x, dw, scratch]`: `dW = Σ_n dy_n ⋆ x_n`, per group of images,
    /// then across groups in order.
    GradWeight,
}

/// How a launch computes its pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// Direct convolution with the micro-kernels of this instruction set.
    Direct(ConvIsa),
    /// Winograd F(2×2, 3×3) ([`winograd`]) with this instruction set's
    /// kernels: 3 × 3 stride-1 padding-1 forward and input-gradient passes
    /// on even plane sizes.
    Winograd(ConvIsa),
    /// im2col / col2im + matrixmultiply SGEMM.
    Im2col,
}

/// One convolution pass over `images` images of `geom` with `out_channels`
/// output channels.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLaunch {
    pub pass: ConvPass,
    pub geom: ConvGeom,
    pub images: usize,
    pub out_channels: usize,
    pub algo: ConvAlgo,
    /// Forward only: add a per-channel bias (the next argument after the
    /// scratch) to the output as it is stored.
    pub bias: bool,
    /// Forward only: also write BatchNorm's batch mean and biased variance
    /// of the output, per channel (the last two arguments).
    pub stats: bool,
    /// Direct weight gradient only: output channels in the vector lanes
    /// ([`wgrad_lanes`]) rather than output positions.
    pub weight_grad_lanes: bool,
    /// Direct forward and weight-gradient passes only: a dropout mask
    /// applied to the image input as each image is prepared.
    pub input_mask: Option<InputMask>,
    /// Direct or Winograd input gradient only: a dropout mask applied to
    /// each image of the output as it is finished (the mask's gradient
    /// `B ⊙ dx`, on the launch's vectors instead of a separate loop).
    pub output_mask: Option<InputMask>,
}

impl ConvLaunch {
    /// The launch on `isa`: direct where its kernels cover the geometry
    /// (square strides; for the input gradient, stride 1 and padding below
    /// the kernel size), else im2col. (A strided input gradient as a direct
    /// convolution over the dilated gradient does `stride²` times the work
    /// and measured slower than im2col.)
    pub fn new(
        pass: ConvPass,
        geom: ConvGeom,
        images: usize,
        out_channels: usize,
        isa: ConvIsa,
    ) -> Self {
        let g = &geom;
        let direct = direct::kernels(isa).is_some()
            && g.stride_h == g.stride_w
            && (pass != ConvPass::GradInput
                || (g.stride_h == 1 && g.pad_h < g.kh && g.pad_w < g.kw));
        let lanes = direct::kernels(isa).map_or(1, |k| k.lanes);
        let algo = if !direct {
            ConvAlgo::Im2col
        } else if winograd::enabled()
            && winograd::Tiles::new(pass, &geom, out_channels, lanes).is_some()
        {
            ConvAlgo::Winograd(isa)
        } else {
            ConvAlgo::Direct(isa)
        };
        let mut launch = ConvLaunch {
            pass,
            geom,
            images,
            out_channels,
            algo,
            bias: false,
            stats: false,
            weight_grad_lanes: false,
            input_mask: None,
            output_mask: None,
        };
        launch.weight_grad_lanes = match algo {
            ConvAlgo::Direct(isa) => direct::kernels(isa).is_some_and(|k| launch.lanes_pay_off(&k)),
            ConvAlgo::Winograd(_) | ConvAlgo::Im2col => false,
        };
        launch
    }

    /// The forward pass that adds a per-channel bias to its output.
    pub fn with_bias(mut self) -> Self {
        assert_eq!(self.pass, ConvPass::Forward, "bias of a forward pass");
        self.bias = true;
        self
    }

    /// Whether the launch can mask its image input as it prepares it: direct
    /// and Winograd forward passes, direct weight-gradient passes.
    pub fn can_mask_input(&self) -> bool {
        matches!(self.algo, ConvAlgo::Direct(_) | ConvAlgo::Winograd(_))
            && self.pass != ConvPass::GradInput
    }

    /// The pass that masks its image input (see [`InputMask`]).
    pub fn with_input_mask(mut self, mask: InputMask) -> Self {
        assert!(
            self.can_mask_input(),
            "only direct or Winograd forward and direct weight-gradient passes mask their input"
        );
        self.input_mask = Some(mask);
        self
    }

    /// Whether the launch can mask its output as it finishes each image:
    /// direct and Winograd input gradients.
    pub fn can_mask_output(&self) -> bool {
        matches!(self.algo, ConvAlgo::Direct(_) | ConvAlgo::Winograd(_))
            && self.pass == ConvPass::GradInput
    }

    /// The pass that masks its output (see [`ConvLaunch::output_mask`]).
    pub fn with_output_mask(mut self, mask: InputMask) -> Self {
        assert!(
            self.can_mask_output(),
            "only direct or Winograd input gradients mask their output"
        );
        self.output_mask = Some(mask);
        self
    }

    /// One past the largest mask key slot the launch reads.
    pub fn key_slots(&self) -> u32 {
        key_slots_of([&self.input_mask, &self.output_mask])
    }

    /// Index of the bias argument.
    pub(super) fn bias_arg(&self) -> usize {
        4
    }

    /// Index of the mean argument (the variance follows).
    fn stats_arg(&self) -> usize {
        4 + self.bias as usize
    }

    /// The forward pass that also writes BatchNorm's statistics of its output.
    pub fn with_stats(mut self) -> Self {
        assert_eq!(self.pass, ConvPass::Forward, "statistics of a forward pass");
        self.stats = true;
        self
    }

    /// Buffers the launch takes: `[in, in, out, scratch]`, then `bias` with
    /// a bias, then `mean, var` with statistics.
    pub fn args(&self) -> usize {
        4 + self.bias as usize + 2 * self.stats as usize
    }

    fn groups(&self) -> usize {
        self.images.clamp(1, WEIGHT_GRAD_GROUPS)
    }

    /// Weights in OIHW order.
    fn weight_len(&self) -> usize {
        self.out_channels * self.geom.col_rows()
    }

    /// Elements of the launch's arena scratch: the weight-gradient partials,
    /// or the packed weights of a direct pass; then the per-image statistics.
    pub fn scratch(&self) -> usize {
        self.main_scratch() + self.stats_scratch()
    }

    fn stats_scratch(&self) -> usize {
        if self.stats {
            2 * self.images * self.out_channels
        } else {
            0
        }
    }

    fn main_scratch(&self) -> usize {
        match (self.pass, self.algo) {
            (ConvPass::GradWeight, _) => self.groups() * self.weight_len(),
            (_, ConvAlgo::Winograd(_)) => {
                let (t, k) = self.winograd_tiles();
                t.packed_len(k.forward_block)
            }
            (pass, ConvAlgo::Direct(isa)) => {
                let block = direct::kernels(isa).map_or(1, |k| k.forward_block);
                let (outs, taps) = self.packed_shape(pass);
                outs.next_multiple_of(block) * taps
            }
            (_, ConvAlgo::Im2col) => 1,
        }
    }

    /// Output channels and taps of a forward-style direct pass.
    fn packed_shape(&self, pass: ConvPass) -> (usize, usize) {
        let (g, co) = (&self.geom, self.out_channels);
        if pass == ConvPass::GradInput {
            (g.c, co * g.kh * g.kw)
        } else {
            (co, g.col_rows())
        }
    }

    /// Elements each argument must hold: `[in, in, out, scratch]` in the
    /// order of [`ConvPass`], then `bias`, `mean, var` (see [`ConvLaunch::args`]).
    pub fn extents(&self) -> Vec<usize> {
        let g = &self.geom;
        let x = self.images * g.image_len();
        let y = self.images * self.out_channels * g.col_cols();
        let w = self.weight_len();
        let [a, b, c] = match self.pass {
            ConvPass::Forward => [x, w, y],
            ConvPass::GradInput => [y, w, x],
            ConvPass::GradWeight => [y, x, w],
        };
        let mut e = vec![a, b, c, self.scratch()];
        if self.bias {
            e.push(self.out_channels);
        }
        if self.stats {
            e.extend([self.out_channels; 2]);
        }
        if self.kept_arg().is_some() {
            // One byte per element of the masked (image-shaped) tensor.
            e.push((self.images * g.image_len()).div_ceil(4));
        }
        e
    }

    /// Index of the argument holding the mask's record, when it has one
    /// (after the bias and the statistics).
    pub fn kept_arg(&self) -> Option<usize> {
        recording_of([&self.input_mask, &self.output_mask])?;
        Some(4 + self.bias as usize + 2 * self.stats as usize)
    }

    /// The pass and its geometry: `Forward 16x32x32 -> 16 k3 s1 p1`.
    pub fn shape(&self) -> String {
        let g = &self.geom;
        format!(
            "{:?} {}x{}x{} -> {} k{} s{} p{}",
            self.pass, g.c, g.h, g.w, self.out_channels, g.kh, g.stride_h, g.pad_h
        )
    }

    /// What `--emit plan` shows: algorithm, instruction set, layout.
    pub fn describe(&self) -> String {
        match self.algo {
            ConvAlgo::Direct(isa) => {
                let p = self.prep();
                format!(
                    "direct {isa}, NCHW rows of {} in {} phase(s){}{}",
                    p.row,
                    p.stride * p.stride,
                    if self.weight_grad_lanes {
                        ", output channels in lanes"
                    } else {
                        ""
                    },
                    self.mask_text()
                )
            }
            ConvAlgo::Winograd(isa) => {
                let (t, _) = self.winograd_tiles();
                let r = t.n - 1;
                format!(
                    "winograd F(2x2,{r}x{r}) {isa}, NCHW, {} image(s) per task{}",
                    t.images,
                    self.mask_text()
                )
            }
            ConvAlgo::Im2col => "im2col+sgemm portable".to_string(),
        }
    }

    fn mask_text(&self) -> String {
        let text = |m: &Option<InputMask>, what: &str| {
            m.as_ref().map_or(String::new(), |m| m.plan_text(what))
        };
        text(&self.input_mask, "input masked as prepared")
            + &text(&self.output_mask, "output masked as stored")
    }

    /// A Winograd launch's tiling and kernels.
    fn winograd_tiles(&self) -> (winograd::Tiles, direct::Kernels) {
        let ConvAlgo::Winograd(isa) = self.algo else {
            panic!("winograd_tiles of a {:?} launch", self.algo)
        };
        let k = direct::kernels(isa).expect("Winograd launches have kernels");
        let t = winograd::Tiles::new(self.pass, &self.geom, self.out_channels, k.lanes)
            .expect("Winograd launches have a tiling");
        (t, k)
    }

    /// Whether a direct weight gradient puts output channels in the lanes
    /// ([`wgrad_lanes`]) rather than output positions: where positions
    /// waste a tenth of the lanes or more, and channels waste fewer.
    /// Positions waste the junk columns of each prepared row and the last
    /// vector's tail (80 % of lanes used on an 8 × 8 plane, 89 % on 16 × 16
    /// with a 5-wide kernel); channels waste the padding up to whole tiles.
    /// Measured on Zen 4 (AVX-512): those two 50 → 62 % and 53–64 → 70 % of
    /// peak; at 94 % use positions were as fast (16-channel inputs) or faster
    /// (3 input channels: 40–60 % against 25–43 %).
    fn lanes_pay_off(&self, k: &direct::Kernels) -> bool {
        if self.pass != ConvPass::GradWeight {
            return false;
        }
        let p = self.prep();
        let positions_used = self.geom.col_cols() as f64 / (p.vectors(k.lanes) * k.lanes) as f64;
        let channels_used = self.out_channels as f64 / self.channel_tile(k).1 as f64;
        positions_used < 0.9 && channels_used > positions_used
    }

    /// A channel-lane tile's output-channel vectors, and the output channels
    /// padded to whole tiles.
    fn channel_tile(&self, k: &direct::Kernels) -> (usize, usize) {
        let co = self.out_channels;
        let ov = wgrad_lanes::vectors_per_tile(co, k.lanes, k.max_channel_vectors);
        (ov, co.next_multiple_of(ov * k.lanes))
    }

    /// The prepared layout the direct kernels read for this pass.
    fn prep(&self) -> Prep {
        let g = &self.geom;
        match self.pass {
            ConvPass::GradInput => Prep::new(
                (self.out_channels, g.out_h, g.out_w),
                g.stride_h,
                (g.kh - 1 - g.pad_h, g.kw - 1 - g.pad_w),
                1,
                (g.kh, g.kw),
                (g.h, g.w),
            ),
            _ => Prep::new(
                (g.c, g.h, g.w),
                1,
                (g.pad_h, g.pad_w),
                g.stride_h,
                (g.kh, g.kw),
                (g.out_h, g.out_w),
            ),
        }
    }

    /// Runs the pass on `ptrs` (`[in, in, out, scratch]`, see [`ConvPass`])
    /// with up to `threads` threads; `keys` is the step's mask key table.
    ///
    /// # Safety
    /// Each pointer holds the elements [`ConvLaunch::extents`] gives; the
    /// output and scratch overlap nothing else; for [`ConvAlgo::Direct`] the
    /// CPU runs its instruction set; `keys` holds [`ConvLaunch::key_slots`]
    /// keys.
    pub unsafe fn run(&self, ptrs: &[*mut f32], keys: *const u64, threads: usize) {
        self.run_pass(ptrs, keys, threads);
        if self.stats {
            let (co, plane) = (self.out_channels, self.geom.col_cols());
            stats::combine(
                ptrs[3].add(self.main_scratch()),
                self.images,
                co,
                plane,
                ptrs[self.stats_arg()],
                ptrs[self.stats_arg() + 1],
            );
        }
    }

    /// Called once an image's output is written: its output mask and its
    /// statistics, if asked for.
    ///
    /// # Safety
    /// As [`ConvLaunch::run`]; `n` is an image of the batch.
    pub(super) unsafe fn after_image(&self, out: usize, scratch: usize, n: usize, masks: MaskArgs) {
        if let (Some(m), ConvAlgo::Direct(isa) | ConvAlgo::Winograd(isa)) =
            (&self.output_mask, self.algo)
        {
            let len = self.geom.image_len();
            m.apply_in_place(isa, masks, (out as *mut f32).add(n * len), n * len, len);
        }
        if self.stats {
            let (co, plane) = (self.out_channels, self.geom.col_cols());
            stats::image_stats(
                (out as *const f32).add(n * co * plane),
                co,
                plane,
                (scratch as *mut f32).add(self.main_scratch() + 2 * n * co),
            );
        }
    }

    unsafe fn run_pass(&self, ptrs: &[*mut f32], keys: *const u64, threads: usize) {
        let masks = MaskArgs {
            keys,
            kept: match self.kept_arg() {
                Some(k) => ptrs[k] as *mut u8,
                None => std::ptr::null_mut(),
            },
        };
        match self.algo {
            ConvAlgo::Im2col => im2col::run(self, ptrs, threads),
            ConvAlgo::Winograd(_) => self.winograd_pass(ptrs, masks, threads),
            ConvAlgo::Direct(isa) => {
                let k = direct::kernels(isa).expect("Direct launches have kernels");
                match self.pass {
                    ConvPass::GradWeight if self.weight_grad_lanes => {
                        self.direct_weight_grad_lanes(&k, ptrs, masks, threads)
                    }
                    ConvPass::GradWeight => self.direct_weight_grad(&k, ptrs, masks, threads),
                    pass => self.direct_forward(&k, pass, ptrs, masks, threads),
                }
            }
        }
    }

    /// Prepares image `n` of the image input `x` into `dst`, masking it
    /// first where the launch has an [`InputMask`].
    ///
    /// # Safety
    /// As [`ConvLaunch::run`]; `x` is the pass's image input, `dst` holds
    /// `p.len(lanes)` elements.
    pub(super) unsafe fn prepare_image(
        &self,
        p: &Prep,
        x: usize,
        n: usize,
        masks: MaskArgs,
        dst: *mut f32,
        lanes: usize,
    ) {
        self.with_image(x, n, masks, |img| p.fill(img, dst, lanes))
    }

    /// Runs `f` on image `n` of the image input `x`, masked first into a
    /// per-thread buffer where the launch has an [`InputMask`].
    ///
    /// # Safety
    /// As [`ConvLaunch::prepare_image`].
    pub(super) unsafe fn with_image(
        &self,
        x: usize,
        n: usize,
        masks: MaskArgs,
        f: impl FnOnce(*const f32),
    ) {
        let len = self.geom.image_len();
        let img = (x as *const f32).add(n * len);
        let (Some(m), ConvAlgo::Direct(isa) | ConvAlgo::Winograd(isa)) =
            (&self.input_mask, self.algo)
        else {
            return f(img);
        };
        m.with_masked(isa, masks, img, n * len, len, |v| f(v.as_ptr()))
    }

    /// Runs `group(first_image, end_image, partial)` for each fixed group of
    /// images with its zeroed partial in the scratch, then writes
    /// `dw = Σ partials` in group order.
    unsafe fn weight_grad_groups(
        &self,
        ptrs: &[*mut f32],
        threads: usize,
        group: &(dyn Fn(usize, usize, *mut f32) + Sync),
    ) {
        let (groups, wl, n) = (self.groups(), self.weight_len(), self.images);
        let scratch = ptrs[3] as usize;
        for_each_image(groups, threads, &|gi| {
            let partial = (scratch as *mut f32).add(gi * wl);
            std::ptr::write_bytes(partial, 0, wl);
            group(gi * n / groups, (gi + 1) * n / groups, partial);
        });
        let dw = std::slice::from_raw_parts_mut(ptrs[2], wl);
        let partials = std::slice::from_raw_parts(ptrs[3], groups * wl);
        dw.copy_from_slice(&partials[..wl]);
        for part in partials.chunks_exact(wl).skip(1) {
            for (d, s) in dw.iter_mut().zip(part) {
                *d += s;
            }
        }
    }
}

/// `f(0..n)` on up to `threads` threads of the global pool, each claiming
/// the next index when it is free (a thread the VM or the OS slows down
/// takes fewer); each `f(i)` must write only its own outputs.
fn for_each_image(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    global_pool().parallel_for_on(n, threads, f)
}

thread_local! {
    /// Per-thread working memory of the convolution passes (prepared images,
    /// column matrices); grows to the largest request and stays.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` elements of this thread's scratch (contents undefined).
fn with_scratch<R>(len: usize, f: impl FnOnce(*mut f32) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        f(v.as_mut_ptr())
    })
}

#[cfg(test)]
mod tests;
