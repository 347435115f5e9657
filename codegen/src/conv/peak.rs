//! A probe of the machine's single-core FMA peak, the yardstick for the
//! convolution GFLOP/s in `docs/performance.md`: independent chains of
//! vector FMAs, enough of them to cover the FMA latency.

use std::time::Instant;

use super::simd::Simd;
use super::ConvIsa;

#[inline(always)]
unsafe fn fma_chains<S: Simd>(iters: usize) -> f32 {
    let mut acc = [S::zero(); 12];
    let (a, b) = (S::splat(0.999_999), S::splat(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = S::fma(*v, a, b);
        }
    }
    acc.iter().map(|&v| S::hsum(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn chains_avx512(iters: usize) -> f32 {
    fma_chains::<super::simd::Avx512>(iters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: usize) -> f32 {
    fma_chains::<super::simd::Avx2>(iters)
}

/// Single-thread GFLOP/s of vector FMAs on `isa` (best of five runs of about
/// 20 ms), or `None` for the portable path, which has no vector kernel.
pub fn fma_peak_gflops(isa: ConvIsa) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (f, lanes): (unsafe fn(usize) -> f32, usize) = match isa {
            ConvIsa::Avx512 if isa.available() => (chains_avx512, 16),
            ConvIsa::Avx2 if isa.available() => (chains_avx2, 8),
            _ => return None,
        };
        let iters = 2_000_000;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t0 = Instant::now();
            // SAFETY: the CPU runs `isa` (checked above).
            std::hint::black_box(unsafe { f(std::hint::black_box(iters)) });
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Some((iters * 12 * lanes * 2) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        None
    }
}
