//! Statistics of the counter-based dropout masks.

use dropjit_graph::mask::{is_kept, keep_scale, keep_threshold, mask_key, Stream};

const LEN: u32 = 200_000;

/// The drop ratios the paper uses (`--fwd` and `--bwd`), and 0.5.
const PAPER_RATIOS: [f64; 9] = [0.5, 0.3, 0.2, 0.1, 0.05, 0.01, 0.005, 0.0002, 0.0001];

/// Mask elements per ratio check: ratio 0.0001 expects 400 drops (σ = 20),
/// so dropping none, half or twice as many is far outside five sigmas.
const RATIO_LEN: u32 = 4_000_000;

fn dropped(key: u64, p: f64, len: u32) -> u64 {
    let thr = keep_threshold(p);
    (0..len).filter(|&e| !is_kept(key, e, thr)).count() as u64
}

/// Whether `dropped` of `len` elements is within five binomial standard
/// deviations of ratio `p`'s expectation, on both sides.
fn consistent_with_ratio(dropped: u64, len: u32, p: f64) -> bool {
    let n = len as f64;
    let (mean, sigma) = (n * p, (n * p * (1.0 - p)).sqrt());
    (dropped as f64 - mean).abs() <= 5.0 * sigma
}

#[test]
fn drop_count_within_five_sigma_at_every_paper_ratio() {
    for (i, p) in PAPER_RATIOS.into_iter().enumerate() {
        for site in 0..2 {
            let key = mask_key(42, i as u64, site, Stream::F);
            let d = dropped(key, p, RATIO_LEN);
            assert!(
                consistent_with_ratio(d, RATIO_LEN, p),
                "p={p} site={site}: {d} of {RATIO_LEN} dropped"
            );
        }
        let key = mask_key(42, i as u64, 0, Stream::G);
        let d = dropped(key, p, RATIO_LEN);
        assert!(consistent_with_ratio(d, RATIO_LEN, p), "p={p} G: {d}");
    }
    assert_eq!(dropped(mask_key(1, 1, 1, Stream::F), 0.0, RATIO_LEN), 0);
}

#[test]
fn ratio_bound_rejects_no_dropout_half_and_double() {
    // The bound above is two-sided and tight: the counts of a mask that drops
    // nothing, half as much or twice as much fail it at every paper ratio.
    for (i, p) in PAPER_RATIOS.into_iter().enumerate() {
        let key = mask_key(42, i as u64, 0, Stream::F);
        assert!(!consistent_with_ratio(0, RATIO_LEN, p), "p={p}: none");
        let half = dropped(key, p / 2.0, RATIO_LEN);
        assert!(
            !consistent_with_ratio(half, RATIO_LEN, p),
            "p={p}: {half} dropped at p/2"
        );
        if 2.0 * p < 1.0 {
            let double = dropped(key, 2.0 * p, RATIO_LEN);
            assert!(
                !consistent_with_ratio(double, RATIO_LEN, p),
                "p={p}: {double} dropped at 2p"
            );
        }
        // Dropping everything.
        assert!(
            !consistent_with_ratio(RATIO_LEN as u64, RATIO_LEN, p),
            "p={p}: all"
        );
    }
}

#[test]
fn inverted_scale_is_exact() {
    assert_eq!(keep_scale(&[0.5]), 2.0);
    assert_eq!(keep_scale(&[0.2]), 1.0 / 0.8);
    assert_eq!(keep_scale(&[0.2, 0.0001]), 1.0 / (0.8 * 0.9999));
    assert_eq!(keep_scale(&[]), 1.0);
    // The f32 the JIT multiplies by is the rounding of this very f64.
    assert_eq!(keep_scale(&[0.2]) as f32, 1.25f32);
}

#[test]
fn f_and_g_are_independent() {
    let (pf, pg) = (0.3, 0.4);
    let (kf, kg) = (mask_key(9, 2, 1, Stream::F), mask_key(9, 2, 1, Stream::G));
    let (tf, tg) = (keep_threshold(pf), keep_threshold(pg));
    let both = (0..LEN)
        .filter(|&e| !is_kept(kf, e, tf) && !is_kept(kg, e, tg))
        .count() as u64;
    assert!(
        consistent_with_ratio(both, LEN, pf * pg),
        "{both} of {LEN} dropped by both F and G, expected {}",
        pf * pg
    );
}

#[test]
fn identical_coordinates_identical_masks_otherwise_different() {
    let thr = keep_threshold(0.5);
    let bits = |seed, step, site, stream| -> Vec<bool> {
        let key = mask_key(seed, step, site, stream);
        (0..4096).map(|e| is_kept(key, e, thr)).collect()
    };
    let base = bits(3, 10, 2, Stream::F);
    assert_eq!(base, bits(3, 10, 2, Stream::F));
    for other in [
        bits(4, 10, 2, Stream::F),
        bits(3, 11, 2, Stream::F),
        bits(3, 10, 3, Stream::F),
        bits(3, 10, 2, Stream::G),
    ] {
        let agree = base.iter().zip(&other).filter(|(a, b)| a == b).count();
        // Unrelated masks agree on about half the elements.
        assert!((1800..2300).contains(&agree), "{agree} of 4096 agree");
    }
}
