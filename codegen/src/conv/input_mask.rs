//! A dropout mask applied to a convolution's image input while each image is
//! prepared, so the masked tensor (`F ⊙ x` for the forward pass, `B ⊙ x` for
//! the weight gradient) is never written to memory and read back: augmented
//! dropout's extra cost was that traffic, not the hashing.
//!
//! Element `e` of the whole input (`N·C·H·W`, flat) becomes `x[e] · scale`
//! where every factor keeps index `e`, else `+0`: the interpreter's `Mask`
//! node, bit for bit (same hash, same f32 product).

use dropjit_graph::mask;

use super::ConvIsa;

/// The mask a launch applies to its image input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputMask {
    /// Key slot in the step's key table and keep threshold of each factor
    /// (`mask::keep_threshold`; only factors that drop something).
    pub factors: Vec<(u32, i32)>,
    /// `mask::keep_scale` of the factors' ratios, rounded to f32.
    pub scale: f32,
}

impl InputMask {
    /// One past the largest key slot read.
    pub fn key_slots(&self) -> u32 {
        self.factors.iter().map(|&(k, _)| k + 1).max().unwrap_or(0)
    }

    /// Writes the `len` masked elements of `src` starting at flat index
    /// `first` into `dst`, hashing on the widest vectors `isa` has.
    ///
    /// # Safety
    /// `keys` holds [`InputMask::key_slots`] keys, `src` and `dst` `len`
    /// elements; `isa` runs on this CPU.
    pub unsafe fn apply(
        &self,
        isa: ConvIsa,
        keys: *const u64,
        src: *const f32,
        first: usize,
        len: usize,
        dst: *mut f32,
    ) {
        // Called once per image on the training path: no allocation here.
        let keys = std::slice::from_raw_parts(keys, self.key_slots() as usize);
        let (src, dst) = (
            std::slice::from_raw_parts(src, len),
            std::slice::from_raw_parts_mut(dst, len),
        );
        self.dispatch(isa, keys, Some(src), first as u32, dst)
    }

    /// [`InputMask::apply`] on `len` elements in place (the output mask of an
    /// input-gradient pass, applied to each image as it is finished).
    ///
    /// # Safety
    /// As [`InputMask::apply`], `data` holding `len` elements.
    pub unsafe fn apply_in_place(
        &self,
        isa: ConvIsa,
        keys: *const u64,
        data: *mut f32,
        first: usize,
        len: usize,
    ) {
        let keys = std::slice::from_raw_parts(keys, self.key_slots() as usize);
        let data = std::slice::from_raw_parts_mut(data, len);
        self.dispatch(isa, keys, None, first as u32, data)
    }

    /// The interpreter's `Mask` node on a whole tensor, for tests: element
    /// `e` becomes `v · scale` where every factor keeps index `e`, else 0.
    #[cfg(test)]
    pub(crate) fn masked_by_definition(&self, values: &[f32], keys: &[u64]) -> Vec<f32> {
        let kept = |e: usize| {
            self.factors
                .iter()
                .all(|&(key, t)| mask::is_kept(keys[key as usize], e as u32, t))
        };
        values
            .iter()
            .enumerate()
            .map(|(e, &v)| if kept(e) { v * self.scale } else { 0.0 })
            .collect()
    }

    fn dispatch(
        &self,
        isa: ConvIsa,
        keys: &[u64],
        src: Option<&[f32]>,
        first: u32,
        dst: &mut [f32],
    ) {
        let (factors, scale) = (&self.factors, self.scale);
        match isa {
            // SAFETY: the callers' contract: `isa` runs on this CPU.
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx512 => unsafe { apply_avx512(factors, keys, scale, src, first, dst) },
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx2 => unsafe { apply_avx2(factors, keys, scale, src, first, dst) },
            _ => apply_any(factors, keys, scale, src, first, dst),
        }
    }
}

/// The masking loops, written so that they vectorise. One or two factors
/// (dropout's `F`, augmented dropout's `B = F ⊙ G`) take one pass: every
/// factor's keep bit, then one select and one store per element (a pass per
/// factor stored every element again, and the stores were the cost).
#[inline(always)]
fn apply_any(
    factors: &[(u32, i32)],
    keys: &[u64],
    scale: f32,
    src: Option<&[f32]>,
    first: u32,
    dst: &mut [f32],
) {
    let key = |slot: u32| keys[slot as usize];
    match *factors {
        [(k, t)] => return one_pass([key(k)], [t], scale, src, first, dst),
        [(k1, t1), (k2, t2)] => {
            return one_pass([key(k1), key(k2)], [t1, t2], scale, src, first, dst)
        }
        _ => {}
    }
    match src {
        Some(src) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * scale;
            }
        }
        None => {
            for d in dst.iter_mut() {
                *d *= scale;
            }
        }
    }
    for &(slot, threshold) in factors {
        let key = keys[slot as usize];
        for (i, d) in dst.iter_mut().enumerate() {
            let kept = mask::is_kept(key, first.wrapping_add(i as u32), threshold);
            *d = if kept { *d } else { 0.0 };
        }
    }
}

/// `dst[i] = src[i] · scale` (or `dst[i] · scale`) where all `F` factors
/// keep index `first + i`, else `+0`, in one pass.
#[inline(always)]
fn one_pass<const F: usize>(
    keys: [u64; F],
    thresholds: [i32; F],
    scale: f32,
    src: Option<&[f32]>,
    first: u32,
    dst: &mut [f32],
) {
    match src {
        Some(src) => {
            for (i, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                let idx = first.wrapping_add(i as u32);
                *d = if all_keep(&keys, &thresholds, idx) {
                    s * scale
                } else {
                    0.0
                };
            }
        }
        None => {
            for (i, d) in dst.iter_mut().enumerate() {
                let idx = first.wrapping_add(i as u32);
                *d = if all_keep(&keys, &thresholds, idx) {
                    *d * scale
                } else {
                    0.0
                };
            }
        }
    }
}

/// Whether every factor keeps `idx` (no early exit, so it vectorises).
#[inline(always)]
fn all_keep<const F: usize>(keys: &[u64; F], thresholds: &[i32; F], idx: u32) -> bool {
    let mut all = true;
    for f in 0..F {
        all &= mask::is_kept(keys[f], idx, thresholds[f]);
    }
    all
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn apply_avx512(
    factors: &[(u32, i32)],
    keys: &[u64],
    scale: f32,
    src: Option<&[f32]>,
    first: u32,
    dst: &mut [f32],
) {
    apply_any(factors, keys, scale, src, first, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn apply_avx2(
    factors: &[(u32, i32)],
    keys: &[u64],
    scale: f32,
    src: Option<&[f32]>,
    first: u32,
    dst: &mut [f32],
) {
    apply_any(factors, keys, scale, src, first, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU runs gives the definition's values,
    /// bit for bit, at any offset and length (vector bodies and tails).
    #[test]
    fn matches_the_definition_on_every_isa() {
        let keys = [
            mask::mask_key(4, 2, 3, mask::Stream::F),
            mask::mask_key(4, 2, 3, mask::Stream::G),
            mask::mask_key(4, 2, 5, mask::Stream::F),
        ];
        // One factor, two (each a one-pass path) and three (the general loop).
        let ratios = [0.3, 0.6, 0.2];
        let masks = (1..=3).map(|f| InputMask {
            factors: (0..f)
                .map(|k| (k as u32, mask::keep_threshold(ratios[k])))
                .collect(),
            scale: mask::keep_scale(&ratios[..f]) as f32,
        });
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        for (m, isa) in masks.flat_map(|m| {
            ConvIsa::ALL
                .into_iter()
                .filter(|i| i.available())
                .map(move |isa| (m.clone(), isa))
        }) {
            for (first, len) in [(0usize, 1000usize), (17, 1), (4093, 37), (1 << 20, 999)] {
                let len = len.min(src.len());
                let mut got = vec![f32::NAN; len];
                unsafe {
                    m.apply(
                        isa,
                        keys.as_ptr(),
                        src.as_ptr(),
                        first,
                        len,
                        got.as_mut_ptr(),
                    )
                };
                for (i, g) in got.iter().enumerate() {
                    let idx = (first + i) as u32;
                    let kept = m
                        .factors
                        .iter()
                        .all(|&(k, t)| mask::is_kept(keys[k as usize], idx, t));
                    let want = if kept { src[i] * m.scale } else { 0.0 };
                    assert_eq!(g.to_bits(), want.to_bits(), "{isa} first {first} i {i}");
                }
                let mut in_place = src[..len].to_vec();
                unsafe { m.apply_in_place(isa, keys.as_ptr(), in_place.as_mut_ptr(), first, len) };
                assert!(
                    in_place
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} first {first}: in place differs"
                );
            }
        }
    }
}
