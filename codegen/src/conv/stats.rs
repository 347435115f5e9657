//! BatchNorm's batch statistics of a convolution's output, taken while the
//! pass writes it: per image, each channel's mean and sum of squared
//! deviations from the plane just written (still in cache); across images,
//! combined in image order in f64 (Chan et al.'s pairwise update), so the
//! result does not depend on which thread computed which image.

/// `(mean, Σ (y - mean)²)` of one plane, in f32 lanes summed in a fixed order.
fn plane_stats(y: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let lanes_sum = |f: &dyn Fn(f32) -> f32| -> f64 {
        let mut acc = [0f32; LANES];
        let mut chunks = y.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
    };
    let mean = (lanes_sum(&|v| v) / y.len() as f64) as f32;
    let m2 = lanes_sum(&|v| (v - mean) * (v - mean)) as f32;
    (mean, m2)
}

/// Writes `(mean, m2)` of each of the `channels` planes of `y` to `out`
/// (`2 · channels` elements).
///
/// # Safety
/// `y` holds `channels · plane` elements, `out` `2 · channels`.
pub unsafe fn image_stats(y: *const f32, channels: usize, plane: usize, out: *mut f32) {
    for c in 0..channels {
        let (m, m2) = plane_stats(std::slice::from_raw_parts(y.add(c * plane), plane));
        *out.add(2 * c) = m;
        *out.add(2 * c + 1) = m2;
    }
}

/// Batch mean and biased variance per channel from `images` per-image
/// `(mean, m2)` records (`[image][channel][2]`), each over `plane` values.
///
/// # Safety
/// `per_image` holds `2 · images · channels`, `mean` and `var` `channels`.
pub unsafe fn combine(
    per_image: *const f32,
    images: usize,
    channels: usize,
    plane: usize,
    mean: *mut f32,
    var: *mut f32,
) {
    let rec = |n: usize, c: usize| {
        let p = per_image.add(2 * (n * channels + c));
        (*p as f64, *p.add(1) as f64)
    };
    for c in 0..channels {
        let m = (0..images).map(|n| rec(n, c).0).sum::<f64>() / images as f64;
        let m2: f64 = (0..images)
            .map(|n| {
                let (mn, m2n) = rec(n, c);
                m2n + plane as f64 * (mn - m) * (mn - m)
            })
            .sum();
        *mean.add(c) = m as f32;
        *var.add(c) = (m2 / (images * plane) as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_statistics_match_two_passes_in_f64() {
        let (images, channels, plane) = (5, 3, 37);
        // An offset far larger than the spread: one-pass E[y²] - E[y]² in
        // f32 would lose most digits here.
        let y: Vec<f32> = (0..images * channels * plane)
            .map(|i| 1000.0 + ((i * 7919) % 101) as f32 * 0.01)
            .collect();
        let mut rec = vec![0f32; 2 * images * channels];
        for n in 0..images {
            unsafe {
                image_stats(
                    y.as_ptr().add(n * channels * plane),
                    channels,
                    plane,
                    rec.as_mut_ptr().add(2 * n * channels),
                )
            };
        }
        let (mut mean, mut var) = (vec![0f32; channels], vec![0f32; channels]);
        unsafe {
            combine(
                rec.as_ptr(),
                images,
                channels,
                plane,
                mean.as_mut_ptr(),
                var.as_mut_ptr(),
            )
        };
        for c in 0..channels {
            let vals: Vec<f64> = (0..images)
                .flat_map(|n| y[(n * channels + c) * plane..][..plane].to_vec())
                .map(|v| v as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
            assert!(
                (mean[c] as f64 - m).abs() <= 1e-6 * m.abs(),
                "mean {c}: {} vs {m}",
                mean[c]
            );
            assert!(
                (var[c] as f64 - v).abs() <= 1e-3 * v,
                "var {c}: {} vs {v}",
                var[c]
            );
        }
    }
}
