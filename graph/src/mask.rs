//! Dropout masks as a pure function of (seed, step, site, stream, element index).
//!
//! This is the one definition that the reference interpreter and the JIT share
//! (the JIT emits [`mask_bits`] as Cranelift instructions and is tested to agree
//! bit for bit). Nothing here keeps state, so a mask element never depends on the
//! thread count, tiling or fusion, and the backward pass can regenerate a mask
//! instead of storing it.

/// Which independent random stream a mask factor draws from.
///
/// `F` is the forward mask; `G` is the extra backward factor of augmented
/// dropout (`B = F ⊙ G`) and the only factor of backward-only dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    F = 0,
    G = 1,
}

/// SplitMix64 finaliser: a bijective 64-bit mixer with full avalanche.
const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit key of one mask: computed once per (seed, step, site, stream),
/// outside the element loop.
pub const fn mask_key(seed: u64, step: u64, site: u32, stream: Stream) -> u64 {
    let a = splitmix64(seed);
    let b = splitmix64(a ^ step);
    let c = splitmix64(b ^ ((site as u64) << 1 | stream as u64));
    // One more round so that keys of neighbouring sites share no structure.
    splitmix64(c)
}

/// `lowbias32` (Wellons): a 32-bit bijective integer hash with low bias.
/// Two multiplies and three xor-shifts, all of which exist as i32x4 SIMD ops.
#[inline(always)]
pub const fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    x
}

/// 32 random bits for element `index` of the mask with `key`.
/// Two keyed rounds of `lowbias32`, so different keys give unrelated sequences.
#[inline(always)]
pub const fn mask_bits(key: u64, index: u32) -> u32 {
    let lo = key as u32;
    let hi = (key >> 32) as u32;
    lowbias32(lowbias32(index ^ lo) ^ hi)
}

/// Keep-threshold for drop ratio `p` in `[0, 1)`: an element is kept when
/// `(bits >> 1) as i32 >= threshold`, so it is dropped with probability
/// `threshold / 2^31 ≈ p`. Signed 31-bit compare because x86 SIMD has a
/// signed i32x4 compare but no unsigned one.
pub fn keep_threshold(p: f64) -> i32 {
    debug_assert!((0.0..1.0).contains(&p), "drop ratio {p} outside [0, 1)");
    (p * 2_147_483_648.0).round() as i32
}

/// Whether element `index` of the mask with `key` and `threshold` is kept.
#[inline(always)]
pub fn is_kept(key: u64, index: u32, threshold: i32) -> bool {
    ((mask_bits(key, index) >> 1) as i32) >= threshold
}

/// The value of a kept element of a mask with the given drop ratios (inverted
/// dropout: `1 / ((1 - p_f)(1 - p_g))`, so evaluation needs no rescale).
/// Computed once in f64, then rounded, so every executor multiplies by the
/// very same constant.
pub fn keep_scale(ratios: &[f64]) -> f64 {
    1.0 / ratios.iter().map(|p| 1.0 - p).product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowbias32_known_values() {
        // Reference values computed independently (Python, from the definition:
        // x ^= x>>16; x *= 0x7feb352d; x ^= x>>15; x *= 0x846ca68b; x ^= x>>16,
        // all mod 2^32).
        for (x, want) in [
            (1u32, 0x6889_90C0u32),
            (2, 0xD113_2181),
            (3, 0x53F1_E9DD),
            (12345, 0x912E_FCF7),
            (0x8000_0000, 0xCC4B_4124),
            (0xDEAD_BEEF, 0xE628_C683),
            (0xFFFF_FFFF, 0x6768_824A),
        ] {
            assert_eq!(lowbias32(x), want, "lowbias32({x:#x})");
        }
        // Zero is the fixed point of every xor-shift-multiply hash.
        assert_eq!(lowbias32(0), 0);
        // Bijective: no collisions over a window of inputs.
        let mut seen: Vec<u32> = (0..4096).map(lowbias32).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4096);
    }

    #[test]
    fn mask_bits_known_values() {
        // lowbias32(lowbias32(index ^ lo) ^ hi), computed the same way.
        let key = 0x0123_4567_89AB_CDEF;
        assert_eq!(mask_bits(key, 0), 0x1C62_A4A3);
        assert_eq!(mask_bits(key, 1), 0xF529_B166);
        assert_eq!(mask_bits(key, 1000), 0x43AA_A255);
    }

    #[test]
    fn keys_differ_by_every_coordinate() {
        let base = mask_key(7, 3, 2, Stream::F);
        assert_ne!(base, mask_key(8, 3, 2, Stream::F));
        assert_ne!(base, mask_key(7, 4, 2, Stream::F));
        assert_ne!(base, mask_key(7, 3, 3, Stream::F));
        assert_ne!(base, mask_key(7, 3, 2, Stream::G));
        assert_eq!(base, mask_key(7, 3, 2, Stream::F));
    }

    #[test]
    fn threshold_edges() {
        assert_eq!(keep_threshold(0.0), 0);
        assert_eq!(keep_threshold(0.5), 1 << 30);
        // p = 0 keeps everything: (bits >> 1) as i32 is never negative.
        assert!((0..1000).all(|i| is_kept(12345, i, 0)));
    }
}
