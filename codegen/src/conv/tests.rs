//! Every pass on every instruction set this CPU runs, against the reference
//! interpreter's convolution kernels in f64, on odd shapes; and bit-identical
//! at any thread count.

use super::*;
use crate::kernels::expr::testing::{data, SENTINEL};

/// The three passes by the reference interpreter's kernels, in f64: y, and
/// dx and dW for the gradient `dy`.
fn reference(
    g: &ConvGeom,
    co: usize,
    images: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
) -> [Vec<f64>; 3] {
    use dropjit_graph::interp::{conv2d, conv2d_grad_input, conv2d_grad_weight, Nchw};
    use dropjit_graph::op::Conv2dAttrs;
    assert!(g.kh == g.kw && g.stride_h == g.stride_w && g.pad_h == g.pad_w);
    let a = Conv2dAttrs {
        kernel: g.kh,
        stride: g.stride_h,
        padding: g.pad_h,
    };
    let xs = Nchw {
        n: images,
        c: g.c,
        h: g.h,
        w: g.w,
    };
    let ys = Nchw {
        n: images,
        c: co,
        h: g.out_h,
        w: g.out_w,
    };
    let f = |v: &[f32]| v.iter().map(|&e| e as f64).collect::<Vec<f64>>();
    let (x, w, dy) = (f(x), f(w), f(dy));
    [
        conv2d(&x, xs, &w, ys, &a),
        conv2d_grad_input(&dy, ys, &w, xs, &a),
        conv2d_grad_weight(&dy, ys, &x, xs, &a),
    ]
}

/// Elements after the output and the scratch that a pass must not write
/// (more than the widest vector).
const GUARD: usize = 64;

fn run_pass(l: &ConvLaunch, a: &[f32], b: &[f32], threads: usize) -> Vec<f32> {
    run_pass_keyed(l, a, b, threads, &[])
}

/// [`run_pass`] with the step's mask key table.
fn run_pass_keyed(l: &ConvLaunch, a: &[f32], b: &[f32], threads: usize, keys: &[u64]) -> Vec<f32> {
    run_pass_recorded(l, a, b, threads, keys, &mut [])
}

/// [`run_pass_keyed`] with the mask's record where the launch has one.
fn run_pass_recorded(
    l: &ConvLaunch,
    a: &[f32],
    b: &[f32],
    threads: usize,
    keys: &[u64],
    record: &mut [u8],
) -> Vec<f32> {
    assert!(keys.len() >= l.key_slots() as usize);
    let e = l.extents();
    let mut out = vec![f32::NAN; e[2] + GUARD];
    let mut scratch = vec![f32::NAN; e[3] + GUARD];
    out[e[2]..].fill(SENTINEL);
    scratch[e[3]..].fill(SENTINEL);
    let mut ptrs = vec![
        a.as_ptr() as *mut f32,
        b.as_ptr() as *mut f32,
        out.as_mut_ptr(),
        scratch.as_mut_ptr(),
    ];
    if let Some(k) = l.kept_arg() {
        assert_eq!((k, record.len().div_ceil(4)), (4, e[4]));
        ptrs.push(record.as_mut_ptr() as *mut f32);
    }
    assert!(a.len() >= e[0] && b.len() >= e[1]);
    unsafe { l.run(&ptrs, keys.as_ptr(), threads) };
    assert!(
        out[e[2]..]
            .iter()
            .chain(&scratch[e[3]..])
            .all(|&v| v == SENTINEL),
        "{:?} {:?} wrote past its output or scratch",
        l.pass,
        l.algo
    );
    out.truncate(e[2]);
    out
}

/// `(channels, size, out_channels, kernel, stride, padding, images)`.
const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1, 0, 1),
    (3, 5, 7, 3, 1, 1, 3),
    (7, 9, 17, 3, 1, 1, 1),
    (17, 5, 3, 5, 1, 2, 3),
    (33, 9, 5, 3, 2, 1, 3),
    (3, 9, 33, 5, 2, 2, 1),
    (7, 5, 7, 1, 2, 0, 3),
    (1, 9, 3, 3, 1, 0, 1),
    (3, 5, 4, 5, 1, 0, 1),
    (5, 9, 16, 1, 1, 0, 3),
    (2, 1, 3, 3, 1, 1, 3),
    (4, 5, 6, 3, 2, 2, 1),
    (16, 9, 32, 3, 1, 1, 3),
    (3, 7, 5, 5, 2, 1, 19),
    // Winograd forward and input gradient on x86 (even planes, 3 x 3 s1 p1,
    // 8 or more output channels): one vector of tiles per image and a
    // partial last group; two vectors; whole rows of tiles per vector.
    (8, 8, 9, 3, 1, 1, 7),
    (17, 16, 8, 3, 1, 1, 3),
    (9, 32, 33, 3, 1, 1, 2),
    // And F(2x2, 5x5) (padding 2).
    (8, 8, 9, 5, 1, 2, 5),
    (33, 16, 8, 5, 1, 2, 2),
    // Winograd forward from 3 input channels; its input gradient (3 outputs)
    // stays direct.
    (3, 8, 16, 5, 1, 2, 3),
];

#[test]
fn every_pass_matches_the_interpreter_on_every_isa() {
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        for (s, &(c, size, co, k, stride, pad, images)) in SHAPES.iter().enumerate() {
            let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
            let x = data(images * g.image_len(), 3 * s as u64);
            let w = data(co * g.col_rows(), 3 * s as u64 + 1);
            let dy = data(images * co * g.col_cols(), 3 * s as u64 + 2);
            let want = reference(&g, co, images, &x, &w, &dy);
            let passes = [
                (ConvPass::Forward, &x, &w),
                (ConvPass::GradInput, &dy, &w),
                (ConvPass::GradWeight, &dy, &x),
            ];
            // The weight gradient's two kernels, whichever the rule picks.
            let variants = passes.into_iter().enumerate().flat_map(|(i, p)| {
                let lanes: &[bool] = if p.0 == ConvPass::GradWeight {
                    &[false, true]
                } else {
                    &[false]
                };
                lanes.iter().map(move |&lanes| (i, p, lanes))
            });
            for (i, (pass, a, b), lanes) in variants {
                let mut l = ConvLaunch::new(pass, g, images, co, isa);
                l.weight_grad_lanes = lanes && matches!(l.algo, ConvAlgo::Direct(_));
                let got = run_pass(&l, a, b, 2);
                assert_eq!(got.len(), want[i].len());
                // Sums of up to K products of values in [-1, 1).
                let terms = match pass {
                    ConvPass::GradWeight => images * g.col_cols(),
                    _ => g.col_rows().max(co * k * k),
                } as f64;
                // F(2x2, 5x5)'s transforms (coefficients up to 5, sixths and
                // 24ths) leave ~6x the error of a direct sum: measured in a
                // float64 simulation of 32-channel tiles, mean 2.1e-5 against
                // 3.6e-6 on outputs of magnitude ~9.
                let looser = if matches!(l.algo, ConvAlgo::Winograd(_)) && k == 5 {
                    8.0
                } else {
                    1.0
                };
                for (j, (&gv, &wv)) in got.iter().zip(&want[i]).enumerate() {
                    let tol = 1e-6 * terms.sqrt() * (1.0 + wv.abs()) * 4.0 * looser;
                    assert!(
                        gv.is_finite() && (gv as f64 - wv).abs() <= tol,
                        "{isa} {:?} {pass:?} (channels in lanes: {lanes}) c{c} size {size} co{co} \
                         k{k} s{stride} p{pad} x{images}: element {j} is {gv}, want {wv}",
                        l.algo
                    );
                }
            }
        }
    }
}

/// A launch that masks its image input as it prepares it gives, bit for bit,
/// what the same launch gives on the input masked by the definition
/// (`x · scale` where both factors keep the flat index, else 0), for the
/// forward pass and both weight-gradient kernels, at 1 and 3 threads.
#[test]
fn masked_input_equals_the_pass_on_the_masked_tensor() {
    use dropjit_graph::mask;
    let keys = [
        0,
        mask::mask_key(9, 4, 2, mask::Stream::F),
        mask::mask_key(9, 4, 2, mask::Stream::G),
    ];
    let (pf, pg) = (0.3, 0.25);
    let m = InputMask::new(
        vec![(1, mask::keep_threshold(pf)), (2, mask::keep_threshold(pg))],
        mask::keep_scale(&[pf, pg]) as f32,
    );
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        for (s, &(c, size, co, k, stride, pad, images)) in SHAPES.iter().enumerate() {
            let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
            let x = data(images * g.image_len(), 5 * s as u64);
            let masked = m.masked_by_definition(&x, &keys);
            let w = data(co * g.col_rows(), 5 * s as u64 + 1);
            let dy = data(images * co * g.col_cols(), 5 * s as u64 + 2);
            for (pass, lanes) in [
                (ConvPass::Forward, false),
                (ConvPass::GradWeight, false),
                (ConvPass::GradWeight, true),
            ] {
                let mut plain = ConvLaunch::new(pass, g, images, co, isa);
                if !plain.can_mask_input() {
                    continue;
                }
                plain.weight_grad_lanes = lanes;
                let with_mask = plain.clone().with_input_mask(m.clone());
                assert_eq!(with_mask.key_slots(), 3);
                let (a, b, am, bm) = match pass {
                    ConvPass::Forward => (&masked, &w, &x, &w),
                    _ => (&dy, &masked, &dy, &x),
                };
                let want = run_pass(&plain, a, b, 2);
                let same = |got: &[f32], what: &str| {
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{isa} {pass:?} (lanes {lanes}) shape {s} {what}"
                    );
                };
                let kept = m.kept_by_definition(x.len(), &keys);
                let recording = |mode| {
                    let mut l = with_mask.clone();
                    l.input_mask.as_mut().unwrap().kept = mode;
                    l
                };
                for threads in [1, 3] {
                    same(
                        &run_pass_keyed(&with_mask, am, bm, threads, &keys),
                        "hashed",
                    );
                    // Writing the record: the same values, and the bytes.
                    let mut record = vec![9u8; x.len()];
                    let l = recording(KeptBytes::Write);
                    same(
                        &run_pass_recorded(&l, am, bm, threads, &keys, &mut record),
                        "writing",
                    );
                    assert_eq!(record, kept, "{isa} {pass:?} shape {s}: record");
                    // Reading it (keys that would hash otherwise: unused).
                    let l = recording(KeptBytes::Read);
                    let zeros = [0u64; 3];
                    let got = run_pass_recorded(&l, am, bm, threads, &zeros, &mut kept.clone());
                    same(&got, "reading");
                }
            }
        }
    }
}

/// An input gradient that masks its output gives, bit for bit, the mask's
/// definition applied to the unmasked launch's output (`dx · scale` where
/// both factors keep the flat index, else 0), direct and Winograd, at 1 and
/// 3 threads; only direct and Winograd input gradients take an output mask.
#[test]
fn masked_output_equals_the_mask_on_the_input_gradient() {
    use dropjit_graph::mask;
    let keys = [
        mask::mask_key(5, 3, 1, mask::Stream::F),
        mask::mask_key(5, 3, 1, mask::Stream::G),
    ];
    let (pf, pg) = (0.3, 0.25);
    let m = InputMask::new(
        vec![(0, mask::keep_threshold(pf)), (1, mask::keep_threshold(pg))],
        mask::keep_scale(&[pf, pg]) as f32,
    );
    let mut covered = (false, false);
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        for (s, &(c, size, co, k, stride, pad, images)) in SHAPES.iter().enumerate() {
            let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
            let plain = ConvLaunch::new(ConvPass::GradInput, g, images, co, isa);
            if !plain.can_mask_output() {
                assert!(matches!(plain.algo, ConvAlgo::Im2col));
                continue;
            }
            match plain.algo {
                ConvAlgo::Winograd(_) => covered.1 = true,
                _ => covered.0 = true,
            }
            let dy = data(images * co * g.col_cols(), 7 * s as u64);
            let w = data(co * g.col_rows(), 7 * s as u64 + 1);
            let dx = run_pass(&plain, &dy, &w, 1);
            let want = m.masked_by_definition(&dx, &keys);
            let masked = plain.clone().with_output_mask(m.clone());
            assert_eq!(masked.key_slots(), 2);
            assert!(masked
                .describe()
                .contains("output masked as stored (2 factor(s)"));
            let kept = m.kept_by_definition(dx.len(), &keys);
            let recording = |mode| {
                let mut l = masked.clone();
                l.output_mask.as_mut().unwrap().kept = mode;
                l
            };
            for threads in [1, 3] {
                let same = |got: &[f32], what: &str| {
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa} {:?} shape {s} threads {threads} {what}",
                        masked.algo
                    );
                };
                same(&run_pass_keyed(&masked, &dy, &w, threads, &keys), "hashed");
                let mut record = vec![9u8; dx.len()];
                let l = recording(KeptBytes::Write);
                same(
                    &run_pass_recorded(&l, &dy, &w, threads, &keys, &mut record),
                    "writing",
                );
                assert_eq!(record, kept, "{isa} shape {s}: record");
                let zeros = [0u64; 2];
                let l = recording(KeptBytes::Read);
                same(
                    &run_pass_recorded(&l, &dy, &w, threads, &zeros, &mut kept.clone()),
                    "reading",
                );
            }
        }
    }
    if cfg!(target_arch = "x86_64") && ConvIsa::Avx2.available() {
        assert!(covered.0 && covered.1, "direct and Winograd both covered");
    }
    let g = ConvGeom::new(8, 8, 8, 3, 3, (1, 1), (1, 1));
    for pass in [ConvPass::Forward, ConvPass::GradWeight] {
        assert!(!ConvLaunch::new(pass, g, 2, 8, ConvIsa::Avx512).can_mask_output());
    }
}

#[test]
fn input_masks_only_on_direct_forward_and_weight_gradient_passes() {
    let g = ConvGeom::new(4, 9, 9, 3, 3, (1, 1), (1, 1));
    for isa in ConvIsa::ALL {
        for pass in [ConvPass::Forward, ConvPass::GradInput, ConvPass::GradWeight] {
            let l = ConvLaunch::new(pass, g, 2, 8, isa);
            let direct = matches!(l.algo, ConvAlgo::Direct(_));
            assert_eq!(
                l.can_mask_input(),
                direct && pass != ConvPass::GradInput,
                "{isa} {pass:?}"
            );
        }
    }
}

#[test]
fn passes_are_bit_identical_at_any_thread_count() {
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        // The third is Winograd's on x86 (groups of 6 or 3 images).
        for &(c, size, co, k, stride, pad) in &[
            (16, 9, 32, 3, 1, 1),
            (3, 7, 5, 5, 2, 1),
            (16, 8, 32, 3, 1, 1),
        ] {
            let images = 37;
            let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
            let x = data(images * g.image_len(), 7);
            let w = data(co * g.col_rows(), 8);
            let dy = data(images * co * g.col_cols(), 9);
            for (pass, a, b, lanes) in [
                (ConvPass::Forward, &x, &w, false),
                (ConvPass::GradInput, &dy, &w, false),
                (ConvPass::GradWeight, &dy, &x, false),
                (ConvPass::GradWeight, &dy, &x, true),
            ] {
                let mut l = ConvLaunch::new(pass, g, images, co, isa);
                l.weight_grad_lanes = lanes && matches!(l.algo, ConvAlgo::Direct(_));
                let one = run_pass(&l, a, b, 1);
                for threads in [2, 3, 4, 8] {
                    let more = run_pass(&l, a, b, threads);
                    assert!(
                        one.iter()
                            .zip(&more)
                            .all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{isa} {pass:?}: {threads} threads differ from 1"
                    );
                }
            }
        }
    }
}

#[test]
fn direct_is_chosen_where_the_kernels_cover_the_geometry() {
    let g = ConvGeom::new(16, 9, 9, 3, 3, (1, 1), (1, 1));
    for pass in [ConvPass::Forward, ConvPass::GradInput, ConvPass::GradWeight] {
        for isa in [ConvIsa::Avx512, ConvIsa::Avx2] {
            let want = if cfg!(target_arch = "x86_64") {
                ConvAlgo::Direct(isa)
            } else {
                ConvAlgo::Im2col
            };
            assert_eq!(ConvLaunch::new(pass, g, 2, 16, isa).algo, want);
        }
        assert_eq!(
            ConvLaunch::new(pass, g, 2, 16, ConvIsa::Portable).algo,
            ConvAlgo::Im2col
        );
    }
    // Padding as large as the kernel: the input gradient falls back.
    let g = ConvGeom::new(2, 4, 4, 1, 1, (1, 1), (1, 1));
    assert_eq!(
        ConvLaunch::new(ConvPass::GradInput, g, 1, 2, ConvIsa::Avx2).algo,
        ConvAlgo::Im2col
    );
}

/// Winograd takes the forward and input-gradient passes of 3 x 3 and 5 x 5,
/// stride-1 "same" layers (padding 1 and 2) on even planes whose rows of tiles split evenly into
/// vectors and that have 8 or more output channels; everything else stays
/// direct (or im2col).
#[test]
fn winograd_is_chosen_where_its_tiles_fit() {
    if !cfg!(target_arch = "x86_64") || !winograd::enabled() {
        return;
    }
    let algo = |pass, (c, h, w, k, stride, pad), co, isa| {
        let g = ConvGeom::new(c, h, w, k, k, (stride, stride), (pad, pad));
        ConvLaunch::new(pass, g, 4, co, isa).algo
    };
    for isa in [ConvIsa::Avx512, ConvIsa::Avx2] {
        for shape in [
            (16, 32, 32, 3, 1, 1),
            (32, 16, 16, 3, 1, 1),
            (64, 8, 8, 3, 1, 1),
            (8, 8, 16, 3, 1, 1),
            (32, 16, 16, 5, 1, 2),
            (32, 8, 8, 5, 1, 2),
        ] {
            assert_eq!(
                algo(ConvPass::Forward, shape, 16, isa),
                ConvAlgo::Winograd(isa),
                "{shape:?}"
            );
            assert_eq!(
                algo(ConvPass::GradInput, shape, 16, isa),
                ConvAlgo::Winograd(isa),
                "{shape:?}"
            );
            assert_eq!(
                algo(ConvPass::GradWeight, shape, 16, isa),
                ConvAlgo::Direct(isa),
                "{shape:?}"
            );
        }
        for shape in [
            (16, 9, 9, 3, 1, 1),   // odd plane
            (16, 32, 32, 3, 2, 1), // stride 2
            (16, 32, 32, 5, 1, 1), // 5 x 5 without "same" padding
            (16, 32, 32, 1, 1, 0), // 1 x 1
            (16, 32, 32, 3, 1, 0), // padding 0
            (16, 12, 12, 3, 1, 1), // 6 tiles a row: neither divides the lanes
        ] {
            assert_eq!(
                algo(ConvPass::Forward, shape, 16, isa),
                ConvAlgo::Direct(isa),
                "{shape:?}"
            );
        }
        // Fewer than 8 outputs stay direct: the input gradient's outputs
        // are the layer's input channels.
        assert_eq!(
            algo(ConvPass::Forward, (16, 8, 8, 3, 1, 1), 7, isa),
            ConvAlgo::Direct(isa)
        );
        assert_eq!(
            algo(ConvPass::GradInput, (3, 8, 8, 3, 1, 1), 16, isa),
            ConvAlgo::Direct(isa)
        );
        assert_eq!(
            algo(ConvPass::Forward, (3, 32, 32, 3, 1, 1), 16, isa),
            ConvAlgo::Winograd(isa)
        );
    }
    assert_eq!(
        algo(
            ConvPass::Forward,
            (16, 32, 32, 3, 1, 1),
            16,
            ConvIsa::Portable
        ),
        ConvAlgo::Im2col
    );
}

#[test]
fn weight_gradient_puts_channels_in_lanes_where_positions_waste_lanes() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    // (c, size, co, k, stride): positions use 80 % of the lanes on 8 x 8
    // planes (rows of 9 or 10), 89 % on 16 x 16 with k5 (rows of 18), 94 %
    // with k3 (rows of 17) and on 32 x 32 with k5 (rows of 34), 97 % with k3;
    // 17 channels use 53 % of 32 lanes.
    for (shape, want) in [
        ((64, 8, 64, 3, 1), true),
        ((32, 8, 64, 5, 1), true),
        ((32, 16, 64, 3, 2), true),
        ((32, 16, 32, 5, 1), true),
        ((32, 16, 32, 3, 1), false),
        ((3, 32, 32, 5, 1), false),
        ((16, 32, 16, 3, 1), false),
        ((3, 32, 16, 3, 1), false),
        ((64, 8, 17, 3, 1), false),
    ] {
        let (c, size, co, k, stride) = shape;
        let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (k / 2, k / 2));
        for isa in [ConvIsa::Avx512, ConvIsa::Avx2] {
            let l = ConvLaunch::new(ConvPass::GradWeight, g, 8, co, isa);
            assert_eq!(l.weight_grad_lanes, want, "{isa} {shape:?}");
            assert_eq!(l.describe().contains("channels in lanes"), want);
        }
    }
    let g = ConvGeom::new(64, 8, 8, 3, 3, (1, 1), (1, 1));
    assert!(!ConvLaunch::new(ConvPass::Forward, g, 8, 64, ConvIsa::Avx512).weight_grad_lanes);
    assert!(!ConvLaunch::new(ConvPass::GradWeight, g, 8, 64, ConvIsa::Portable).weight_grad_lanes);
}

#[test]
fn fma_peak_probe_reports_a_positive_rate_where_vectors_run() {
    for isa in ConvIsa::ALL {
        let peak = fma_peak_gflops(isa);
        assert_eq!(
            peak.is_some(),
            isa != ConvIsa::Portable && isa.available(),
            "{isa}"
        );
        if let Some(p) = peak {
            eprintln!("{isa}: {p:.1} GFLOP/s per core");
            assert!(p > 1.0, "{isa}: {p}");
        }
    }
}

/// `cargo test --release -p dropjit-codegen conv_speed -- --ignored --nocapture`
#[test]
#[ignore]
fn conv_speed() {
    let isa = ConvIsa::detected();
    for &(c, size, co, k, stride, pad) in [
        (3, 32, 16, 3, 1, 1),
        (16, 32, 16, 3, 1, 1),
        (32, 16, 32, 3, 1, 1),
        (64, 8, 64, 3, 1, 1),
        (16, 32, 32, 3, 2, 1),
        (3, 32, 32, 5, 1, 2),
        (32, 16, 32, 5, 1, 2),
        (32, 8, 64, 5, 1, 2),
    ]
    .iter()
    .filter(|s| {
        std::env::var("SHAPE").map_or(true, |f| format!("{}x{}k{}s{}", s.0, s.1, s.3, s.4) == f)
    }) {
        let images = 128;
        let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
        let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
        let x = data(images * g.image_len(), 7);
        let w = data(co * g.col_rows(), 8);
        let dy = data(images * co * g.col_cols(), 9);
        let flops = 2.0 * (images * co * g.col_rows() * g.col_cols()) as f64;
        let mut line = format!("{c}x{size}x{size}->{co} k{k} s{stride}:");
        for (pass, a, b) in [
            (ConvPass::Forward, &x, &w),
            (ConvPass::GradInput, &dy, &w),
            (ConvPass::GradWeight, &dy, &x),
        ] {
            let chosen = ConvLaunch::new(pass, g, images, co, isa);
            // Winograd launches are timed against the direct kernels too.
            let mut variants = vec![chosen.clone()];
            if matches!(chosen.algo, ConvAlgo::Winograd(_)) {
                let mut direct = chosen.clone();
                direct.algo = ConvAlgo::Direct(isa);
                variants.push(direct);
            }
            variants.push(ConvLaunch::new(pass, g, images, co, ConvIsa::Portable));
            for l in variants {
                let e = l.extents();
                let (mut out, mut scratch) = (vec![0f32; e[2]], vec![0f32; e[3]]);
                let ptrs = [
                    a.as_ptr() as *mut f32,
                    b.as_ptr() as *mut f32,
                    out.as_mut_ptr(),
                    scratch.as_mut_ptr(),
                ];
                let mut s = f64::INFINITY;
                for _ in 0..8 {
                    let t0 = std::time::Instant::now();
                    unsafe { l.run(&ptrs, std::ptr::null(), threads) };
                    s = s.min(t0.elapsed().as_secs_f64());
                }
                let algo = match l.algo {
                    ConvAlgo::Winograd(isa) => format!("winograd-{isa}"),
                    ConvAlgo::Direct(isa) => isa.to_string(),
                    ConvAlgo::Im2col => "portable".to_string(),
                };
                line += &format!(" {pass:?}/{algo} {:.1}", flops / s / 1e9);
            }
        }
        eprintln!("{line}");
    }
}

/// The forward kernel alone on one prepared image, again and again (in cache).
#[test]
#[ignore]
fn forward_kernel_in_cache() {
    let isa = ConvIsa::selected().expect("DROPJIT_ISA");
    let k = direct::kernels(isa).expect("a vector isa");
    for &(c, size, co) in &[(16, 32, 16), (32, 16, 32), (64, 8, 64)] {
        let g = ConvGeom::new(c, size, size, 3, 3, (1, 1), (1, 1));
        let l = ConvLaunch::new(ConvPass::Forward, g, 1, co, isa);
        let p = l.prep();
        let x = data(g.image_len(), 1);
        let mut xp = vec![0f32; p.len(k.lanes)];
        unsafe { p.fill(x.as_ptr(), xp.as_mut_ptr(), k.lanes) };
        let taps: Vec<usize> = (0..c)
            .flat_map(|ci| (0..9).map(move |t| ci * p.chan_len + p.tap(t / 3, t % 3)))
            .collect();
        let aligned = std::env::var("ALIGNED").is_ok();
        let taps: Vec<usize> = if aligned {
            taps.iter().map(|t| t / 8 * 8).collect()
        } else {
            taps
        };
        let wpack = data(co.next_multiple_of(k.forward_block) * taps.len(), 2);
        let mut y = vec![0f32; co * g.col_cols()];
        let reps = 300;
        let mut s = f64::INFINITY;
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                let rows: Vec<usize> = taps.iter().step_by(3).copied().collect();
                let (rows, run) = if aligned { (&taps, 1) } else { (&rows, 3) };
                unsafe {
                    (k.forward)(
                        &p,
                        xp.as_ptr(),
                        rows,
                        run,
                        wpack.as_ptr(),
                        (co, std::ptr::null()),
                        y.as_mut_ptr(),
                    )
                };
            }
            s = s.min(t0.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (co * g.col_rows() * g.col_cols() * reps) as f64;
        eprintln!(
            "{c}x{size}->{co}: {:.1} GFLOP/s; peak {:.1}",
            flops / s / 1e9,
            fma_peak_gflops(isa).unwrap()
        );
    }
}

#[test]
fn forward_with_bias_and_statistics_matches_its_definition() {
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        for &(c, size, co, k, stride, pad, images) in
            &[(3, 9, 5, 3, 1, 1, 3), (4, 7, 17, 3, 2, 1, 5)]
        {
            let g = ConvGeom::new(c, size, size, k, k, (stride, stride), (pad, pad));
            let x = data(images * g.image_len(), 1);
            let w = data(co * g.col_rows(), 2);
            let bias = data(co, 3);
            let dy = vec![0f32; images * co * g.col_cols()];
            let [want, _, _] = reference(&g, co, images, &x, &w, &dy);
            let hw = g.col_cols();
            for with_bias in [false, true] {
                let mut l = ConvLaunch::new(ConvPass::Forward, g, images, co, isa);
                if with_bias {
                    l = l.with_bias();
                }
                let l = l.with_stats();
                let e = l.extents();
                assert_eq!(e.len(), l.args());
                // [y, scratch, (bias), mean, var]
                let mut bufs: Vec<Vec<f32>> = e[2..].iter().map(|&n| vec![f32::NAN; n]).collect();
                if with_bias {
                    bufs[2].copy_from_slice(&bias);
                }
                let mut ptrs = vec![x.as_ptr() as *mut f32, w.as_ptr() as *mut f32];
                ptrs.extend(bufs.iter_mut().map(|b| b.as_mut_ptr()));
                for threads in [1, 3] {
                    unsafe { l.run(&ptrs, std::ptr::null(), threads) };
                    let (y, mean, var) = (&bufs[0], &bufs[bufs.len() - 2], &bufs[bufs.len() - 1]);
                    for o in 0..co {
                        let b = if with_bias { bias[o] as f64 } else { 0.0 };
                        let vals: Vec<f64> = (0..images)
                            .flat_map(|n| want[(n * co + o) * hw..][..hw].to_vec())
                            .map(|v| v + b)
                            .collect();
                        for n in 0..images {
                            for j in 0..hw {
                                let (got, exp) =
                                    (y[(n * co + o) * hw + j] as f64, vals[n * hw + j]);
                                assert!(
                                    (got - exp).abs() < 1e-4,
                                    "{isa} bias {with_bias} y: {got} vs {exp}"
                                );
                            }
                        }
                        let m = vals.iter().sum::<f64>() / vals.len() as f64;
                        let v =
                            vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
                        assert!(
                            (mean[o] as f64 - m).abs() < 1e-5,
                            "{isa} mean {o}: {} vs {m}",
                            mean[o]
                        );
                        assert!(
                            (var[o] as f64 - v).abs() < 1e-4 * (1.0 + v),
                            "{isa} var {o}: {} vs {v}",
                            var[o]
                        );
                    }
                }
            }
        }
    }
}

/// The Winograd kernels alone on one task's images in cache: the input
/// transform, and the products with the output transform, timed apart.
/// `DROPJIT_ISA=avx512 cargo test --release -p dropjit-codegen
/// winograd_kernels_in_cache -- --ignored --nocapture`
#[test]
#[ignore]
fn winograd_kernels_in_cache() {
    let isa = ConvIsa::selected().expect("DROPJIT_ISA");
    let k = direct::kernels(isa).expect("a vector isa");
    for &(c, size, co, r) in &[
        (16, 32, 16, 3),
        (32, 16, 32, 3),
        (64, 8, 64, 3),
        (32, 16, 32, 5),
        (32, 8, 64, 5),
    ] {
        let g = ConvGeom::new(c, size, size, r, r, (1, 1), (r / 2, r / 2));
        let t = winograd::Tiles::new(ConvPass::Forward, &g, co, k.lanes).expect("tiles");
        // STREAM=1: a different image each time, from 128 (out of cache).
        let stream = std::env::var("STREAM").is_ok();
        let pool = if stream { 128 } else { t.images };
        let x = data(pool * g.image_len(), 1);
        let mut next = 0;
        let mut u = vec![0f32; t.packed_len(k.forward_block)];
        let w = data(co * g.col_rows(), 2);
        winograd::pack_weights(
            &t,
            k.forward_block,
            |o, i, ki, kj| w[((o * c + i) * r + ki) * r + kj],
            &mut u,
        );
        let mut scratch = vec![0f32; t.scratch(k.forward_block)];
        let mut y = vec![0f32; t.images * co * g.col_cols()];
        let chans = t.channel_offsets();
        let reps = 200;
        let (mut ti, mut to) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                for i in 0..t.images {
                    next = (next + 1) % pool;
                    unsafe {
                        (k.winograd_input)(
                            &t,
                            x.as_ptr().add(next * g.image_len()),
                            i,
                            scratch.as_mut_ptr(),
                        )
                    };
                }
            }
            ti = ti.min(t0.elapsed().as_secs_f64());
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                unsafe {
                    (k.winograd_output)(
                        &t,
                        &chans,
                        t.images,
                        u.as_ptr(),
                        std::ptr::null(),
                        y.as_mut_ptr(),
                        scratch.as_mut_ptr(),
                    )
                };
            }
            to = to.min(t0.elapsed().as_secs_f64());
        }
        let per = |s: f64| s / (reps * t.images) as f64 * 1e6;
        let direct_flops = 2.0 * (co * g.col_rows() * g.col_cols() * reps * t.images) as f64;
        eprintln!(
            "{c}x{size}->{co} k{r}: input {:.1} us/image, products+output {:.1} us/image; {:.1} direct-equivalent GFLOP/s",
            per(ti),
            per(to),
            direct_flops / (ti + to) / 1e9
        );
    }
}
