//! Epoch orders and the seeding scheme: every random draw is a pure function of
//! (seed, epoch, position), so a killed-and-resumed run is bit-identical without saved RNG state.

use rand_core::Rng;
use rand_pcg::Pcg64;

/// Stream tag of the epoch shuffle.
pub(crate) const ORDER_STREAM: u64 = 0x6f72_6465_7200_0001;
/// Stream tag of the per-image augmentation draws.
pub(crate) const AUGMENT_STREAM: u64 = 0x6175_676d_0000_0002;

/// SplitMix64 finaliser: a bijection on u64 with good avalanche.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A PCG64 generator determined by (stream, seed, epoch, index) alone.
pub(crate) fn derive_rng(stream: u64, seed: u64, epoch: u64, index: u64) -> Pcg64 {
    let mut h = splitmix64(stream);
    for x in [seed, epoch, index] {
        h = splitmix64(h ^ x);
    }
    let lo = splitmix64(h ^ 0x5851_f42d_4c95_7f2d);
    Pcg64::new((u128::from(h) << 64) | u128::from(lo), u128::from(stream))
}

/// Uniform integer in `0..bound` (Lemire's multiply-and-reject; unbiased). `bound` must be > 0.
pub(crate) fn below(rng: &mut Pcg64, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    let mut m = u128::from(rng.next_u64()) * u128::from(bound);
    if (m as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(bound);
        }
    }
    (m >> 64) as u64
}

/// The order in which epoch `epoch` visits `n` images: a Fisher-Yates permutation drawn from a
/// PCG64 seeded from (seed, epoch), or the identity when `shuffle` is false.
pub fn epoch_order(seed: u64, epoch: u64, n: usize, shuffle: bool) -> Vec<u32> {
    assert!(
        n <= u32::MAX as usize,
        "epoch_order: {n} images do not fit u32 indices"
    );
    let mut order: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        let mut rng = derive_rng(ORDER_STREAM, seed, epoch, 0);
        for i in (1..n).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}
