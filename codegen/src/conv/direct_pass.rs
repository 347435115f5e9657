//! The direct passes of a [`ConvLaunch`]: weights packed once, then each
//! image prepared into per-thread scratch and handed to the micro-kernels of
//! the launch's instruction set.

use super::input_mask::MaskArgs;
use super::prep;
use super::wgrad_lanes;
use super::winograd;
use super::{direct, for_each_image, with_scratch, ConvLaunch, ConvPass, WEIGHT_GRAD_BATCH_BYTES};

impl ConvLaunch {
    /// Forward or input gradient: pack the weights, then each image.
    pub(super) unsafe fn direct_forward(
        &self,
        k: &direct::Kernels,
        pass: ConvPass,
        ptrs: &[*mut f32],
        masks: MaskArgs,
        threads: usize,
    ) {
        let (g, co) = (&self.geom, self.out_channels);
        let p = self.prep();
        let (n_out, n_taps) = self.packed_shape(pass);
        let (kh, kw) = (g.kh, g.kw);
        let taps = p.tap_offsets();
        debug_assert_eq!(taps.len(), n_taps);
        // Packed `[block][tap][CB]`, zero past the last output channel; filled
        // by nested loops (an index split by division per element cost up to
        // a millisecond per launch, every step).
        let cb = k.forward_block;
        let wpack = std::slice::from_raw_parts_mut(ptrs[3], n_out.next_multiple_of(cb) * n_taps);
        let w = ptrs[1] as *const f32;
        // Where tap t's weight of output channel 0 sits in W, and the step
        // between output channels. Input gradient: tap (co, ki, kj) reads
        // W[co, o, kh-1-ki, kw-1-kj].
        let (srcs, o_step): (Vec<usize>, usize) = match pass {
            ConvPass::Forward => ((0..n_taps).collect(), n_taps),
            _ => {
                let flipped = (0..n_taps).map(|t| {
                    let (src_o, tap) = (t / (kh * kw), t % (kh * kw));
                    (src_o * g.c * kh + kh - 1 - tap / kw) * kw + kw - 1 - tap % kw
                });
                (flipped.collect(), kh * kw)
            }
        };
        for (block, packed) in wpack.chunks_exact_mut(n_taps * cb).enumerate() {
            for (lanes, &src) in packed.chunks_exact_mut(cb).zip(&srcs) {
                for (c, dst) in lanes.iter_mut().enumerate() {
                    let o = block * cb + c;
                    *dst = if o < n_out {
                        *w.add(src + o * o_step)
                    } else {
                        0.0
                    };
                }
            }
        }
        let (in_len, out_len) = if pass == ConvPass::Forward {
            (g.image_len(), co * g.col_cols())
        } else {
            (co * g.col_cols(), g.image_len())
        };
        // Stride 1 with a 3- or 5-wide kernel: one run of `kw` taps per row.
        let (rows, run) = p.tap_groups();
        let (src, dst, wpack) = (ptrs[0] as usize, ptrs[2] as usize, wpack.as_ptr() as usize);
        let len = p.len(k.lanes);
        let scratch = ptrs[3] as usize;
        let bias = if self.bias {
            ptrs[self.bias_arg()] as usize
        } else {
            0
        };
        for_each_image(self.images, threads, &|n| {
            with_scratch(len, |buf| {
                if pass == ConvPass::Forward {
                    self.prepare_image(&p, src, n, masks, buf, k.lanes);
                } else {
                    p.fill((src as *const f32).add(n * in_len), buf, k.lanes);
                }
                (k.forward)(
                    &p,
                    buf,
                    &rows,
                    run,
                    wpack as *const f32,
                    (n_out, bias as *const f32),
                    (dst as *mut f32).add(n * out_len),
                );
            });
            self.after_image(dst, scratch, n, masks);
        });
    }

    /// A Winograd forward or input-gradient pass: the transformed weights
    /// packed once, then each group of images ([`winograd::Tiles::images`])
    /// transformed, multiplied and transformed back on one thread.
    pub(super) unsafe fn winograd_pass(&self, ptrs: &[*mut f32], masks: MaskArgs, threads: usize) {
        let (t, k) = self.winograd_tiles();
        let (g, cb) = (&self.geom, k.forward_block);
        let packed = std::slice::from_raw_parts_mut(ptrs[3], t.packed_len(cb));
        let w = ptrs[1] as *const f32;
        // OIHW; the input gradient convolves with W[o, i] flipped, so its
        // pair (output i, input o) reads W[o, i, r - 1 - ki, r - 1 - kj].
        let r = g.kh;
        if self.pass == ConvPass::Forward {
            winograd::pack_weights(
                &t,
                cb,
                |o, i, ki, kj| *w.add(((o * g.c + i) * r + ki) * r + kj),
                packed,
            );
        } else {
            winograd::pack_weights(
                &t,
                cb,
                |o, i, ki, kj| *w.add(((i * g.c + o) * r + r - 1 - ki) * r + r - 1 - kj),
                packed,
            );
        }
        let chans = t.channel_offsets();
        let plane = t.h * t.w;
        let (src, dst, u) = (ptrs[0] as usize, ptrs[2] as usize, packed.as_ptr() as usize);
        let scratch = ptrs[3] as usize;
        let bias = if self.bias {
            ptrs[self.bias_arg()] as usize
        } else {
            0
        };
        let in_len = t.cin * plane;
        for_each_image(self.images.div_ceil(t.images), threads, &|task| {
            let first = task * t.images;
            let count = t.images.min(self.images - first);
            with_scratch(t.scratch(cb), |buf| {
                for i in 0..count {
                    if self.pass == ConvPass::Forward {
                        self.with_image(src, first + i, masks, |img| {
                            (k.winograd_input)(&t, img, i, buf)
                        });
                    } else {
                        let img = (src as *const f32).add((first + i) * in_len);
                        (k.winograd_input)(&t, img, i, buf);
                    }
                }
                (k.winograd_output)(
                    &t,
                    &chans,
                    count,
                    u as *const f32,
                    bias as *const f32,
                    (dst as *mut f32).add(first * t.cout * plane),
                    buf,
                );
            });
            for n in first..first + count {
                self.after_image(dst, scratch, n, masks);
            }
        });
    }

    pub(super) unsafe fn direct_weight_grad(
        &self,
        k: &direct::Kernels,
        ptrs: &[*mut f32],
        masks: MaskArgs,
        threads: usize,
    ) {
        let (g, co) = (&self.geom, self.out_channels);
        let p = self.prep();
        let taps = p.tap_offsets();
        let nvec = p.vectors(k.lanes);
        let dy_row = nvec * k.lanes;
        let dy_len = co * dy_row;
        let (dy, y_len) = (ptrs[0] as usize, co * g.col_cols());
        self.weight_grad_batches(
            k,
            ptrs,
            masks,
            threads,
            dy_len,
            &|img, dst| {
                let src = (dy as *const f32).add(img * y_len);
                prep::fill_rows(src, (co, g.out_h, g.out_w), p.row, dy_row, dst);
            },
            &|images, x, x_len, dyq, partial| {
                (k.weight_grad)(
                    nvec, images, x, x_len, &taps, dyq, dy_len, dy_row, co, partial,
                )
            },
        );
    }

    /// The weight gradient with output channels in the lanes
    /// ([`wgrad_lanes`]): each image's gradient transposed beside its
    /// prepared input, a batch of them per kernel call.
    pub(super) unsafe fn direct_weight_grad_lanes(
        &self,
        k: &direct::Kernels,
        ptrs: &[*mut f32],
        masks: MaskArgs,
        threads: usize,
    ) {
        let (g, co) = (&self.geom, self.out_channels);
        let p = self.prep();
        let (ov, o_pad) = self.channel_tile(k);
        let (groups, run) = p.tap_groups();
        let positions = g.col_cols();
        let dy_len = positions * o_pad;
        let dy = ptrs[0] as usize;
        self.weight_grad_batches(
            k,
            ptrs,
            masks,
            threads,
            dy_len,
            &|img, dst| {
                let src = (dy as *const f32).add(img * co * positions);
                wgrad_lanes::transpose(src, co, positions, o_pad, dst);
            },
            &|images, x, x_len, dyt, partial| {
                let batch = wgrad_lanes::Batch {
                    images,
                    x,
                    x_stride: x_len,
                    groups: &groups,
                    run,
                    out_h: g.out_h,
                    out_w: g.out_w,
                    row: p.row,
                    dy: dyt,
                    dy_stride: dy_len,
                    n_out: co,
                    o_pad,
                    partial,
                };
                (k.weight_grad_lanes)(&batch, ov)
            },
        );
    }

    /// Each fixed group of images ([`ConvLaunch::weight_grad_groups`]) in
    /// batches that fit `WEIGHT_GRAD_BATCH_BYTES` of per-thread scratch:
    /// every image's prepared input, then every image's gradient as
    /// `fill_dy(image, dst)` lays it out (`dy_len` each), then
    /// `kernel(images, inputs, input length, gradients, partial)`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    unsafe fn weight_grad_batches(
        &self,
        k: &direct::Kernels,
        ptrs: &[*mut f32],
        masks: MaskArgs,
        threads: usize,
        dy_len: usize,
        fill_dy: &(dyn Fn(usize, *mut f32) + Sync),
        kernel: &(dyn Fn(usize, *const f32, usize, *const f32, *mut f32) + Sync),
    ) {
        let p = self.prep();
        let x_len = p.len(k.lanes);
        let per_batch = (WEIGHT_GRAD_BATCH_BYTES / (4 * (x_len + dy_len))).max(1);
        let x = ptrs[1] as usize;
        self.weight_grad_groups(ptrs, threads, &|first, last, partial| {
            let mut n = first;
            while n < last {
                let images = per_batch.min(last - n);
                with_scratch(images * (x_len + dy_len), |buf| {
                    let dys = buf.add(images * x_len);
                    for i in 0..images {
                        self.prepare_image(&p, x, n + i, masks, buf.add(i * x_len), k.lanes);
                        fill_dy(n + i, dys.add(i * dy_len));
                    }
                    kernel(images, buf, x_len, dys, partial);
                });
                n += images;
            }
        });
    }
}
