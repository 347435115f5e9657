//! Parameter initialisation from a seed, with `rand_pcg` (deterministic on every
//! machine). Each parameter draws from its own stream, so adding a layer does
//! not change the initial values of the others.

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::graph::{Graph, Init, Param};

/// A uniform draw in (0, 1), never exactly 0 (safe for `ln`).
fn uniform01(rng: &mut Pcg64) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal draw (Box–Muller; one value per call keeps it simple).
fn normal(rng: &mut Pcg64) -> f64 {
    let (u1, u2) = (uniform01(rng), uniform01(rng));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub fn init_param(p: &Param, seed: u64, index: usize) -> Vec<f32> {
    let mut rng = Pcg64::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let n = p.elems();
    match p.init {
        Init::Constant(c) => vec![c; n],
        Init::Gaussian { std } => (0..n)
            .map(|_| (normal(&mut rng) * std as f64) as f32)
            .collect(),
        Init::HeNormal { fan_out } => {
            let fan = if fan_out { p.fan_out } else { p.fan_in };
            let std = (2.0 / fan.max(1) as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        }
        Init::UniformFanIn => {
            let bound = 1.0 / (p.fan_in.max(1) as f64).sqrt();
            (0..n)
                .map(|_| ((2.0 * uniform01(&mut rng) - 1.0) * bound) as f32)
                .collect()
        }
    }
}

/// Initial values of every parameter and state tensor of `g`, by `ParamId`.
pub fn init_params(g: &Graph, seed: u64) -> Vec<Vec<f32>> {
    g.params
        .iter()
        .enumerate()
        .map(|(i, p)| init_param(p, seed, i))
        .collect()
}

/// A generic point for gradient checks: He-normal weights and biases, BatchNorm
/// affine terms spread around their defaults. Published initialisations (Caffe's
/// std 1e-4, zero biases) put every ReLU input near zero, where a finite
/// difference straddles the kink and says nothing about the derived gradient.
pub fn generic_point(g: &Graph, seed: u64) -> Vec<Vec<f32>> {
    g.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if !p.trainable {
                return init_param(p, seed, i);
            }
            let mut rng =
                Pcg64::seed_from_u64(seed ^ 0x6E6E ^ (i as u64).wrapping_mul(0x9E37_79B9));
            let centre = match p.init {
                Init::Constant(c) => c as f64,
                _ => 0.0,
            };
            let std = if p.dims.len() >= 2 {
                (2.0 / p.fan_in.max(1) as f64).sqrt()
            } else {
                0.3
            };
            (0..p.elems())
                .map(|_| (centre + normal(&mut rng) * std) as f32)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_its_std() {
        let p = Param {
            name: "w".into(),
            dims: vec![20000],
            init: Init::Gaussian { std: 0.01 },
            trainable: true,
            lr_mult: 1.0,
            decay_mult: 1.0,
            fan_in: 1,
            fan_out: 1,
        };
        let v = init_param(&p, 1, 0);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 3e-4, "mean {mean}");
        assert!((var.sqrt() - 0.01).abs() < 3e-4, "std {}", var.sqrt());
        assert_eq!(v, init_param(&p, 1, 0));
        assert_ne!(v, init_param(&p, 2, 0));
    }
}
