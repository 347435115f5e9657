//! The portable path: each image unfolded into a column matrix (im2col) in
//! per-thread scratch and multiplied with matrixmultiply; the input gradient
//! folds the product back (col2im).

use super::{for_each_image, with_scratch, ConvLaunch, ConvPass, MaskArgs};
use crate::kernels::gemm::{col2im_image, dropjit_sgemm, im2col_image, GemmDesc};

/// # Safety
/// As [`ConvLaunch::run`].
pub(super) unsafe fn run(l: &ConvLaunch, ptrs: &[*mut f32], threads: usize) {
    let (g, co) = (&l.geom, l.out_channels);
    let (kk, hw) = (g.col_rows(), g.col_cols());
    let (a, w, out) = (ptrs[0] as usize, ptrs[1] as usize, ptrs[2] as usize);
    let scratch = ptrs[3] as usize;
    let bias = if l.bias {
        ptrs[l.bias_arg()] as usize
    } else {
        0
    };
    match l.pass {
        ConvPass::Forward => for_each_image(l.images, threads, &|n| {
            with_scratch(kk * hw, |col| {
                im2col_image(g, (a as *const f32).add(n * g.image_len()), col);
                let d = GemmDesc::row_major(co, kk, hw, 1.0, 0.0);
                dropjit_sgemm(
                    &d,
                    w as *const f32,
                    col,
                    (out as *mut f32).add(n * co * hw),
                    1,
                );
            });
            if l.bias {
                let bias = std::slice::from_raw_parts(bias as *const f32, co);
                let y = std::slice::from_raw_parts_mut((out as *mut f32).add(n * co * hw), co * hw);
                for (plane, &b) in y.chunks_exact_mut(hw).zip(bias) {
                    plane.iter_mut().for_each(|v| *v += b);
                }
            }
            l.after_image(out, scratch, n, MaskArgs::keys(std::ptr::null()));
        }),
        ConvPass::GradInput => for_each_image(l.images, threads, &|n| {
            with_scratch(kk * hw, |col| {
                // dcol = Wᵀ · dy_n
                let mut d = GemmDesc::row_major(kk, co, hw, 1.0, 0.0);
                d.rsa = 1;
                d.csa = kk as isize;
                dropjit_sgemm(
                    &d,
                    w as *const f32,
                    (a as *const f32).add(n * co * hw),
                    col,
                    1,
                );
                let dx = (out as *mut f32).add(n * g.image_len());
                std::ptr::write_bytes(dx, 0, g.image_len());
                col2im_image(g, col, dx);
            })
        }),
        ConvPass::GradWeight => {
            // `w` is x here: [dy, x, dw, scratch].
            let x = w;
            l.weight_grad_groups(ptrs, threads, &|first, last, partial| {
                with_scratch(kk * hw, |col| {
                    for n in first..last {
                        im2col_image(g, (x as *const f32).add(n * g.image_len()), col);
                        // partial[Co, K] += dy_n[Co, HW] · colᵀ[HW, K]
                        let mut d = GemmDesc::row_major(co, hw, kk, 1.0, 1.0);
                        d.rsb = 1;
                        d.csb = hw as isize;
                        dropjit_sgemm(&d, (a as *const f32).add(n * co * hw), col, partial, 1);
                    }
                })
            });
        }
    }
}
