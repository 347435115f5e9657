//! Statistics of the counter-based dropout masks.

use dropjit_graph::mask::{is_kept, keep_scale, keep_threshold, mask_key, Stream};

const LEN: u32 = 200_000;

fn drop_fraction(key: u64, p: f64) -> f64 {
    let thr = keep_threshold(p);
    (0..LEN).filter(|&e| !is_kept(key, e, thr)).count() as f64 / LEN as f64
}

/// Five binomial standard deviations.
fn tolerance(p: f64) -> f64 {
    5.0 * (p * (1.0 - p) / LEN as f64).sqrt()
}

#[test]
fn drop_fraction_within_binomial_tolerance() {
    for (i, p) in [0.5, 0.3, 0.1, 0.01, 0.0001].into_iter().enumerate() {
        for site in 0..3 {
            let key = mask_key(42, i as u64, site, Stream::F);
            let got = drop_fraction(key, p);
            assert!(
                (got - p).abs() <= tolerance(p).max(2.0 / LEN as f64),
                "p={p} site={site}: {got}"
            );
        }
    }
    assert_eq!(drop_fraction(mask_key(1, 1, 1, Stream::F), 0.0), 0.0);
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
        .count() as f64
        / LEN as f64;
    let expect = pf * pg;
    assert!(
        (both - expect).abs() <= tolerance(expect),
        "P(F and G drop) {both} vs {expect}"
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
