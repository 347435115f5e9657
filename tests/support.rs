//! Shared helpers for the integration tests.

#[path = "forced.rs"]
pub mod forced;

use std::path::{Path, PathBuf};

use dropjit_codegen::{compile, CompileOptions, CompiledGraph, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{Graph, GraphLoadOptions};

/// The workspace root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A model file, by its path from the workspace root.
pub fn model(path: &str) -> Graph {
    dropjit_graph::load(&repo_root().join(path), GraphLoadOptions::default()).expect("model loads")
}

/// The tests' SGD settings: momentum 0.9, weight decay 5e-4.
pub const TEST_SGD: SgdConfig = SgdConfig {
    momentum: 0.9,
    weight_decay: 5e-4,
};

/// A model's training step (with [`TEST_SGD`]), its state layout, and the
/// JIT's compilation of the step at `batch`.
pub struct JitStep {
    pub model: Graph,
    pub step_graph: Graph,
    pub layout: StateLayout,
    pub jit: CompiledGraph,
}

impl JitStep {
    pub fn new(path: &str, batch: usize, dropout: DropoutConfig, opts: CompileOptions) -> Self {
        Self::from_graph(model(path), batch, dropout, opts)
    }

    pub fn from_graph(
        model: Graph,
        batch: usize,
        dropout: DropoutConfig,
        opts: CompileOptions,
    ) -> Self {
        let step_graph = training_step(&model, &dropout, &TEST_SGD).expect("step graph");
        let layout = StateLayout::new(&model);
        let jit = compile(&step_graph, batch, &layout, opts).expect("compiles");
        JitStep {
            model,
            step_graph,
            layout,
            jit,
        }
    }
}

/// Normwise relative difference of `a` from the reference `b`: the largest
/// element difference over `b`'s largest magnitude (at least 1e-3, so values
/// near zero are held to an absolute 1e-3 scale). `+∞`, a failure at every
/// tolerance, when the lengths differ or either holds a NaN or an infinity;
/// two empty buffers are equal (0).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || !a.iter().chain(b).all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-3);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

#[cfg(test)]
mod tests {
    use super::rel_err;

    #[test]
    fn rel_err_measures_the_difference() {
        assert_eq!(rel_err(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(rel_err(&[], &[]), 0.0);
        let e = rel_err(&[1.0, 2.0, 3.3], &[1.0, 2.0, 3.0]);
        assert!((e - 0.1).abs() < 1e-6, "{e}");
        // Near zero the scale is an absolute 1e-3.
        let e = rel_err(&[1e-4], &[0.0]);
        assert!((e - 0.1).abs() < 1e-6, "{e}");
    }

    #[test]
    fn rel_err_fails_on_nan() {
        assert_eq!(rel_err(&[f32::NAN], &[2.3]), f64::INFINITY);
        assert_eq!(rel_err(&[2.3], &[f32::NAN]), f64::INFINITY);
        assert_eq!(
            rel_err(&[1.0, f32::NAN, 3.0], &[1.0, 2.0, 3.0]),
            f64::INFINITY
        );
        assert_eq!(
            rel_err(&[1.0, 2.0, 3.0], &[1.0, f32::NAN, 3.0]),
            f64::INFINITY
        );
        assert_eq!(rel_err(&[f32::NAN], &[f32::NAN]), f64::INFINITY);
    }

    #[test]
    fn rel_err_fails_on_infinity() {
        assert_eq!(rel_err(&[f32::INFINITY], &[1.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0], &[f32::NEG_INFINITY]), f64::INFINITY);
        // Equal infinities are still not a result to accept.
        assert_eq!(rel_err(&[f32::INFINITY], &[f32::INFINITY]), f64::INFINITY);
    }

    #[test]
    fn rel_err_fails_on_length_mismatch() {
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0, 3.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0, 2.0, 3.0], &[1.0]), f64::INFINITY);
        assert_eq!(rel_err(&[], &[1.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0], &[]), f64::INFINITY);
    }
}
