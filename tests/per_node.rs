//! The JIT against the reference interpreter node by node, with teacher
//! forcing: the JIT runs a training step keeping every value it materialises;
//! the interpreter then runs the same step (state, batch, seed, step number)
//! and, at each node the JIT materialised, compares its own value with the
//! JIT's and carries on from the JIT's. Each node is thus checked on the JIT's
//! own inputs, so rounding differences never compound and a ReLU or max-pool
//! decision is taken on the same bits by both: no element sits on a kink for
//! one executor and off it for the other, and every node and state tensor is
//! held to 1e-4 on every step (the end-to-end test in `jit_vs_interp.rs`
//! needs kink-free steps for its parameter bound).
//!
//! Nodes fused inside a JIT loop have no buffer; the interpreter computes them
//! from forced inputs and the loop's stored results are compared. The SGD and
//! running-statistics updates are compared through the state after the step.

use dropjit_codegen::ConvIsa;
use dropjit_tests::forced::{check, MODES};

/// Every mode on every convolution instruction set this CPU runs (the
/// portable path always; the vector paths where the CPU has them).
fn all_modes(path: &str, batch: usize) {
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        for mode in MODES {
            check(path, batch, mode, isa);
        }
    }
}

#[test]
fn fixtures_per_node() {
    for path in [
        "tests/fixtures/tiny.json",
        "tests/fixtures/tiny_bn.json",
        "tests/fixtures/conv_bn_drop_linear.json",
        "tests/fixtures/drop_pool_bn_add.json",
    ] {
        all_modes(path, 3);
    }
}

#[test]
fn convnet_quick_per_node() {
    all_modes("models/convnet_quick.json", 4);
}

#[test]
fn resnet20_per_node() {
    all_modes("models/resnet20.json", 2);
}

#[test]
fn lenet5_per_node() {
    all_modes("models/lenet5.json", 4);
}
