//! The few vector operations the direct convolution kernels need, once per
//! instruction set. Every method is `#[inline(always)]`: the kernels are
//! generic over [`Simd`] and instantiated inside one `#[target_feature]`
//! function per instruction set, where these inline into real vector code.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub trait Simd: Copy {
    type V: Copy;
    /// Lanes per vector.
    const L: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn loadu(p: *const f32) -> Self::V;
    unsafe fn storeu(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Sum of the lanes in a fixed order.
    unsafe fn hsum(v: Self::V) -> f32;
    /// `v` with lane `i` taken from lane `idx[i]` (`idx` holds `L` entries).
    unsafe fn permute(v: Self::V, idx: *const i32) -> Self::V;
    /// Stores lanes `from..to` of `v` at `base + lane`; the other lanes'
    /// addresses are not touched (so `base` itself may lie outside the buffer).
    unsafe fn store_lanes(base: *mut f32, v: Self::V, from: usize, to: usize);
    /// Lanes `from..to` loaded from `base + lane`, the others zero; the
    /// other lanes' addresses are not read.
    unsafe fn load_lanes(base: *const f32, from: usize, to: usize) -> Self::V;
    /// The even and the odd elements of the `2L` elements `a ‖ b`.
    unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// `a0 b0 a1 b1 …`: the first `L` elements, then the next `L`.
    unsafe fn interleave(a: Self::V, b: Self::V) -> (Self::V, Self::V);
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    type V = __m512;
    const L: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        // AVX-512F alone has no 8 x f32 extract: move the upper half as f64s.
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        Avx2::hsum(_mm256_add_ps(lo, hi))
    }
    #[inline(always)]
    unsafe fn permute(v: __m512, idx: *const i32) -> __m512 {
        _mm512_permutexvar_ps(_mm512_loadu_si512(idx as *const _), v)
    }
    #[inline(always)]
    unsafe fn store_lanes(base: *mut f32, v: __m512, from: usize, to: usize) {
        let mask = ((1u32 << to) - (1u32 << from)) as u16;
        _mm512_mask_storeu_ps(base, mask, v)
    }
    #[inline(always)]
    unsafe fn load_lanes(base: *const f32, from: usize, to: usize) -> __m512 {
        let mask = ((1u32 << to) - (1u32 << from)) as u16;
        _mm512_maskz_loadu_ps(mask, base)
    }
    #[inline(always)]
    unsafe fn deinterleave(a: __m512, b: __m512) -> (__m512, __m512) {
        // Index bit 4 picks `b`.
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
        )
    }
    #[inline(always)]
    unsafe fn interleave(a: __m512, b: __m512) -> (__m512, __m512) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        (
            _mm512_permutex2var_ps(a, lo, b),
            _mm512_permutex2var_ps(a, hi, b),
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = __m256;
    const L: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn permute(v: __m256, idx: *const i32) -> __m256 {
        _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(idx as *const __m256i))
    }
    #[inline(always)]
    unsafe fn store_lanes(base: *mut f32, v: __m256, from: usize, to: usize) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let lo = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(from as i32 - 1));
        let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(to as i32), lane);
        _mm256_maskstore_ps(base, _mm256_and_si256(lo, hi), v)
    }
    #[inline(always)]
    unsafe fn load_lanes(base: *const f32, from: usize, to: usize) -> __m256 {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let lo = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(from as i32 - 1));
        let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(to as i32), lane);
        _mm256_maskload_ps(base, _mm256_and_si256(lo, hi))
    }
    #[inline(always)]
    unsafe fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // Per 128-bit half `a0 a2 b0 b2 | a4 a6 b4 b6`, then the 64-bit
        // pairs put in order.
        let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (order(e), order(o))
    }
    #[inline(always)]
    unsafe fn interleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // `a0 b0 a1 b1 | a4 b4 a5 b5` and `a2 b2 a3 b3 | a6 b6 a7 b7`.
        let u = _mm256_unpacklo_ps(a, b);
        let v = _mm256_unpackhi_ps(a, b);
        (
            _mm256_permute2f128_ps::<0x20>(u, v),
            _mm256_permute2f128_ps::<0x31>(u, v),
        )
    }
}
