//! A dropout mask applied by a native launch as it reads its image input
//! (a convolution preparing each image, average pooling) or stores its
//! output (an input gradient), so the masked tensor (`F ⊙ x` for the forward
//! pass, `B ⊙ x` for a weight gradient, `B ⊙ dx`) is never written to memory
//! and read back: augmented dropout's extra cost was that traffic.
//!
//! Element `e` of the whole tensor (`N·C·H·W`, flat) becomes `x[e] · scale`
//! where every factor keeps index `e`, else `+0`: the interpreter's `Mask`
//! node, bit for bit (same hash, same f32 product). A mask applied by two
//! launches hashes once: the first writes which elements it keeps, one byte
//! each, and the second reads them ([`KeptBytes`]).

use dropjit_graph::mask;

use std::cell::RefCell;

use super::ConvIsa;

thread_local! {
    /// This thread's masked elements ([`InputMask::with_masked`]); grows to
    /// the largest request and stays.
    static MASKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The mask a launch applies to its image input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputMask {
    /// Key slot in the step's key table and keep threshold of each factor
    /// (`mask::keep_threshold`; only factors that drop something).
    pub factors: Vec<(u32, i32)>,
    /// `mask::keep_scale` of the factors' ratios, rounded to f32.
    pub scale: f32,
    /// Whether the launch records which elements it keeps, or reads that
    /// record instead of hashing (see [`KeptBytes`]).
    pub kept: KeptBytes,
}

/// The masks of a native launch, on its input (applied as it reads it) and
/// on its output (as it stores it): one past the largest key slot they read.
pub fn key_slots_of(masks: [&Option<InputMask>; 2]) -> u32 {
    masks
        .into_iter()
        .flatten()
        .map(InputMask::key_slots)
        .max()
        .unwrap_or(0)
}

/// Of a launch's masks (as [`key_slots_of`]), the one that writes or reads
/// a record, if any.
pub fn recording_of(masks: [&Option<InputMask>; 2]) -> Option<&InputMask> {
    masks
        .into_iter()
        .flatten()
        .find(|m| m.kept != KeptBytes::None)
}

/// A record of a mask, one byte per element (1: kept), shared by the
/// launches that apply the same mask to tensors of the same shape (augmented
/// dropout's `B` on `x` for a weight gradient and on `dy` for the input
/// gradient): the first hashes and writes it, the others read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeptBytes {
    #[default]
    None,
    Write,
    Read,
}

/// What a mask reads at run time: the step's key table and, where the mask
/// has [`KeptBytes`], the record's first byte (element 0 of the tensor).
#[derive(Clone, Copy, Debug)]
pub struct MaskArgs {
    pub keys: *const u64,
    pub kept: *mut u8,
}

// SAFETY: the pointers are the step's key table (read only) and a record
// whose bytes each task of a launch writes or reads in its own range.
unsafe impl Send for MaskArgs {}
unsafe impl Sync for MaskArgs {}

impl MaskArgs {
    /// Keys only (a launch without a record).
    pub fn keys(keys: *const u64) -> Self {
        Self {
            keys,
            kept: std::ptr::null_mut(),
        }
    }
}

impl InputMask {
    /// A mask with these factors and scale, hashing every element.
    pub fn new(factors: Vec<(u32, i32)>, scale: f32) -> Self {
        Self {
            factors,
            scale,
            kept: KeptBytes::None,
        }
    }

    /// One past the largest key slot read.
    pub fn key_slots(&self) -> u32 {
        self.factors.iter().map(|&(k, _)| k + 1).max().unwrap_or(0)
    }

    /// Whether the mask can write a record: one or two factors, the cases
    /// with a one-pass loop.
    pub fn can_record(&self) -> bool {
        matches!(self.factors.len(), 1 | 2)
    }

    /// What `--emit plan` says of the mask: `, {what} (N factor(s), scale S)`
    /// and the record's role.
    pub fn plan_text(&self, what: &str) -> String {
        format!(
            ", {what} ({} factor(s), scale {}{})",
            self.factors.len(),
            self.scale,
            self.kept_text()
        )
    }

    /// What `--emit plan` adds about the record.
    pub fn kept_text(&self) -> &'static str {
        match self.kept {
            KeptBytes::None => "",
            KeptBytes::Write => ", kept bytes written",
            KeptBytes::Read => ", kept bytes read",
        }
    }

    /// Writes the `len` masked elements of `src` starting at flat index
    /// `first` into `dst`, hashing on the widest vectors `isa` has (or
    /// reading the record).
    ///
    /// # Safety
    /// `args.keys` holds [`InputMask::key_slots`] keys and, with a record,
    /// `args.kept` bytes up to `first + len`; `src` and `dst` `len`
    /// elements; `isa` runs on this CPU.
    pub unsafe fn apply(
        &self,
        isa: ConvIsa,
        args: MaskArgs,
        src: *const f32,
        first: usize,
        len: usize,
        dst: *mut f32,
    ) {
        // Called once per image on the training path: no allocation here.
        let (src, dst) = (
            std::slice::from_raw_parts(src, len),
            std::slice::from_raw_parts_mut(dst, len),
        );
        self.dispatch(isa, args, Some(src), first, dst)
    }

    /// Runs `f` on the `len` elements of `src` from flat index `first`,
    /// masked into this thread's buffer (a convolution's image as it
    /// prepares it, a pooling task's planes): never stored in the arena.
    ///
    /// # Safety
    /// As [`InputMask::apply`].
    pub unsafe fn with_masked<R>(
        &self,
        isa: ConvIsa,
        args: MaskArgs,
        src: *const f32,
        first: usize,
        len: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        MASKED.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            self.apply(isa, args, src, first, len, buf.as_mut_ptr());
            f(&buf[..len])
        })
    }

    /// [`InputMask::apply`] on `len` elements in place (the output mask of an
    /// input-gradient pass, applied to each image as it is finished).
    ///
    /// # Safety
    /// As [`InputMask::apply`], `data` holding `len` elements.
    pub unsafe fn apply_in_place(
        &self,
        isa: ConvIsa,
        args: MaskArgs,
        data: *mut f32,
        first: usize,
        len: usize,
    ) {
        let data = std::slice::from_raw_parts_mut(data, len);
        self.dispatch(isa, args, None, first, data)
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

    /// The record a mask writes, for tests: 1 where every factor keeps the
    /// flat index, else 0.
    #[cfg(test)]
    pub(crate) fn kept_by_definition(&self, len: usize, keys: &[u64]) -> Vec<u8> {
        (0..len)
            .map(|e| {
                self.factors
                    .iter()
                    .all(|&(key, t)| mask::is_kept(keys[key as usize], e as u32, t))
                    as u8
            })
            .collect()
    }

    unsafe fn dispatch(
        &self,
        isa: ConvIsa,
        args: MaskArgs,
        src: Option<&[f32]>,
        first: usize,
        dst: &mut [f32],
    ) {
        let keys = std::slice::from_raw_parts(args.keys, self.key_slots() as usize);
        let kept: &mut [u8] = match self.kept {
            KeptBytes::None => &mut [],
            _ => std::slice::from_raw_parts_mut(args.kept.add(first), dst.len()),
        };
        let m = Masking {
            factors: &self.factors,
            keys,
            scale: self.scale,
            record: self.kept,
            first: first as u32,
        };
        match isa {
            // SAFETY: the callers' contract: `isa` runs on this CPU.
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx512 => apply_avx512(&m, src, dst, kept),
            #[cfg(target_arch = "x86_64")]
            ConvIsa::Avx2 => apply_avx2(&m, src, dst, kept),
            _ => apply_any(&m, src, dst, kept),
        }
    }
}

/// One application of a mask: its factors' keys and thresholds, the scale,
/// the record's role and the flat index of the first element.
struct Masking<'a> {
    factors: &'a [(u32, i32)],
    keys: &'a [u64],
    scale: f32,
    record: KeptBytes,
    first: u32,
}

const HASH: u8 = 0;
const WRITE: u8 = 1;
const READ: u8 = 2;

/// The masking loops, written so that they vectorise. One or two factors
/// (dropout's `F`, augmented dropout's `B = F ⊙ G`) take one pass: every
/// factor's keep bit (or the record's byte), then one select and one store
/// per element (a pass per factor stored every element again, and the
/// stores were the cost). More factors take the general loop.
#[inline(always)]
fn apply_any(m: &Masking, src: Option<&[f32]>, dst: &mut [f32], kept: &mut [u8]) {
    let key = |slot: u32| m.keys[slot as usize];
    match *m.factors {
        [(k, t)] => by_record([key(k)], [t], m, src, dst, kept),
        [(k1, t1), (k2, t2)] => by_record([key(k1), key(k2)], [t1, t2], m, src, dst, kept),
        _ => {
            assert_eq!(m.record, KeptBytes::None, "only one or two factors record");
            general(m, src, dst)
        }
    }
}

/// [`one_pass`] for the mask's record role and source.
#[inline(always)]
fn by_record<const F: usize>(
    keys: [u64; F],
    ts: [i32; F],
    m: &Masking,
    src: Option<&[f32]>,
    dst: &mut [f32],
    kept: &mut [u8],
) {
    match (m.record, src) {
        (KeptBytes::None, Some(s)) => one_pass::<F, HASH>(keys, ts, m, Other(s), dst, kept),
        (KeptBytes::None, None) => one_pass::<F, HASH>(keys, ts, m, InPlace, dst, kept),
        (KeptBytes::Write, Some(s)) => one_pass::<F, WRITE>(keys, ts, m, Other(s), dst, kept),
        (KeptBytes::Write, None) => one_pass::<F, WRITE>(keys, ts, m, InPlace, dst, kept),
        (KeptBytes::Read, Some(s)) => one_pass::<F, READ>(keys, ts, m, Other(s), dst, kept),
        (KeptBytes::Read, None) => one_pass::<F, READ>(keys, ts, m, InPlace, dst, kept),
    }
}

/// Any number of factors: the scaled copy, then one select per factor.
#[inline(always)]
fn general(m: &Masking, src: Option<&[f32]>, dst: &mut [f32]) {
    match src {
        Some(src) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * m.scale;
            }
        }
        None => {
            for d in dst.iter_mut() {
                *d *= m.scale;
            }
        }
    }
    for &(slot, threshold) in m.factors {
        let key = m.keys[slot as usize];
        for (i, d) in dst.iter_mut().enumerate() {
            let kept = mask::is_kept(key, m.first.wrapping_add(i as u32), threshold);
            *d = if kept { *d } else { 0.0 };
        }
    }
}

/// Where a masking loop reads element `i`: another slice, or `dst` itself.
trait Source {
    fn get(&self, dst: &[f32], i: usize) -> f32;
}

struct Other<'a>(&'a [f32]);
struct InPlace;

impl Source for Other<'_> {
    #[inline(always)]
    fn get(&self, _: &[f32], i: usize) -> f32 {
        self.0[i]
    }
}

impl Source for InPlace {
    #[inline(always)]
    fn get(&self, dst: &[f32], i: usize) -> f32 {
        dst[i]
    }
}

/// `dst[i] = value · scale` where all `F` factors keep index `first + i`
/// (`MODE` `HASH`; `WRITE` also records it; `READ` takes the record's byte
/// instead), else `+0`, in one pass.
#[inline(always)]
fn one_pass<const F: usize, const MODE: u8>(
    keys: [u64; F],
    thresholds: [i32; F],
    m: &Masking,
    src: impl Source,
    dst: &mut [f32],
    kept: &mut [u8],
) {
    let n = dst.len();
    if MODE != HASH {
        assert_eq!(kept.len(), n);
    }
    for i in 0..n {
        let keep = if MODE == READ {
            kept[i] != 0
        } else {
            let idx = m.first.wrapping_add(i as u32);
            let mut all = true;
            for f in 0..F {
                all &= mask::is_kept(keys[f], idx, thresholds[f]);
            }
            if MODE == WRITE {
                kept[i] = all as u8;
            }
            all
        };
        let v = src.get(dst, i);
        dst[i] = if keep { v * m.scale } else { 0.0 };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn apply_avx512(m: &Masking, src: Option<&[f32]>, dst: &mut [f32], kept: &mut [u8]) {
    apply_any(m, src, dst, kept)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn apply_avx2(m: &Masking, src: Option<&[f32]>, dst: &mut [f32], kept: &mut [u8]) {
    apply_any(m, src, dst, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU runs gives the definition's values,
    /// bit for bit, at any offset and length (vector bodies and tails),
    /// copying or in place; a mask that records which elements it keeps
    /// writes the definition's bytes, and a mask reading them gives the same
    /// values without hashing.
    #[test]
    fn matches_the_definition_on_every_isa() {
        let keys = [
            mask::mask_key(4, 2, 3, mask::Stream::F),
            mask::mask_key(4, 2, 3, mask::Stream::G),
            mask::mask_key(4, 2, 5, mask::Stream::F),
        ];
        // One factor, two (each a one-pass path) and three (the general loop).
        let ratios = [0.3, 0.6, 0.2];
        let masks = (1..=3).map(|f| {
            InputMask::new(
                (0..f)
                    .map(|k| (k as u32, mask::keep_threshold(ratios[k])))
                    .collect(),
                mask::keep_scale(&ratios[..f]) as f32,
            )
        });
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        let isas = || ConvIsa::ALL.into_iter().filter(|i| i.available());
        for (m, isa) in masks.flat_map(|m| isas().map(move |isa| (m.clone(), isa))) {
            for (first, len) in [(0usize, 1000usize), (17, 1), (4093, 37), (1 << 20, 999)] {
                let len = len.min(src.len());
                let kept_at = |i: usize| {
                    let idx = (first + i) as u32;
                    m.factors
                        .iter()
                        .all(|&(k, t)| mask::is_kept(keys[k as usize], idx, t))
                };
                let want: Vec<f32> = (0..len)
                    .map(|i| if kept_at(i) { src[i] * m.scale } else { 0.0 })
                    .collect();
                let same = |got: &[f32], what: &str| {
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "{what} {isa} first {first} i {i}");
                    }
                };
                // The record covers the whole tensor; this call its part.
                let mut record = vec![7u8; first + len];
                let modes: &[KeptBytes] = if m.can_record() {
                    &[KeptBytes::None, KeptBytes::Write, KeptBytes::Read]
                } else {
                    &[KeptBytes::None]
                };
                for &mode in modes {
                    let m = InputMask {
                        kept: mode,
                        ..m.clone()
                    };
                    let args = MaskArgs {
                        keys: keys.as_ptr(),
                        kept: record.as_mut_ptr(),
                    };
                    let mut got = vec![f32::NAN; len];
                    let mut in_place = src[..len].to_vec();
                    let saved = record.clone();
                    unsafe {
                        m.apply(isa, args, src.as_ptr(), first, len, got.as_mut_ptr());
                        if mode == KeptBytes::Write {
                            let bytes: Vec<u8> = (0..len).map(|i| kept_at(i) as u8).collect();
                            assert_eq!(record[first..], bytes[..], "{isa} first {first}");
                            assert_eq!(record[..first], saved[..first], "{isa} wrote outside");
                        }
                        m.apply_in_place(isa, args, in_place.as_mut_ptr(), first, len);
                    }
                    same(&got, &format!("{mode:?}"));
                    same(&in_place, &format!("{mode:?} in place"));
                }
            }
        }
    }
}
