//! Finite-difference checks (f64) of every op's derived gradient, on small
//! random shapes with odd sizes. Each graph routes the op's input gradient into a
//! parameter upstream, so `dx` rules are checked as well as `dW` rules.

mod common;

use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::{grad_check, GradCheckOptions};
use dropjit_graph::init::generic_point;
use dropjit_graph::{DropoutMode, Graph};

const TOL: f64 = 1e-6;

fn check(g: &Graph, dropout: DropoutConfig) {
    let opts = GradCheckOptions {
        batch: 3,
        seed: 7,
        samples: 12,
        dropout,
        ..GradCheckOptions::default()
    };
    let report = grad_check(g, &generic_point(g, 7), &opts).expect("gradcheck runs");
    let worst = report.worst();
    assert!(
        worst < TOL,
        "worst relative error {worst:e}\n{}",
        report.table()
    );
    // Not vacuous: every parameter was sampled and has a non-zero gradient.
    for p in &report.params {
        assert!(
            !p.samples.is_empty() && p.max_abs_grad > 1e-3,
            "{}\n{}",
            p.name,
            report.table()
        );
    }
}

fn plain(g: &Graph) {
    check(g, DropoutConfig::PLAIN)
}

const CONV: &str = r#"{"name": "c", "op": "conv2d", "inputs": ["image"], "out_channels": 3, "kernel": 3, "stride": 2, "padding": 1}"#;

/// flatten + linear to 4 classes after node `after`.
fn head(after: &str) -> String {
    format!(
        r#"{{"name": "f", "op": "flatten", "inputs": ["{after}"]}},
           {{"name": "fc", "op": "linear", "inputs": ["f"], "out_features": 4}}"#
    )
}

#[test]
fn conv2d_stride_padding_bias() {
    plain(&common::graph(
        [2, 7, 5],
        4,
        &format!("{CONV}, {}", head("c")),
        "fc",
    ));
}

#[test]
fn conv2d_without_bias_stride_one() {
    let conv = r#"{"name": "c", "op": "conv2d", "inputs": ["image"], "out_channels": 2, "kernel": 2, "bias": false}"#;
    plain(&common::graph(
        [3, 5, 6],
        4,
        &format!("{conv}, {}", head("c")),
        "fc",
    ));
}

#[test]
fn linear_chain() {
    let nodes = r#"{"name": "f", "op": "flatten", "inputs": ["image"]},
        {"name": "a", "op": "linear", "inputs": ["f"], "out_features": 5},
        {"name": "fc", "op": "linear", "inputs": ["a"], "out_features": 3, "bias": false}"#;
    plain(&common::graph([2, 3, 1], 3, nodes, "fc"));
}

#[test]
fn max_pool_ceil_mode_edges() {
    let pool = r#"{"name": "p", "op": "max_pool2d", "inputs": ["c"], "kernel": 3, "stride": 2, "ceil_mode": true}"#;
    plain(&common::graph(
        [2, 9, 8],
        4,
        &format!("{CONV}, {pool}, {}", head("p")),
        "fc",
    ));
}

#[test]
fn avg_pool_ceil_mode_clipped_windows_and_padding() {
    let pool = r#"{"name": "p", "op": "avg_pool2d", "inputs": ["c"], "kernel": 3, "stride": 2, "padding": 1, "ceil_mode": true}"#;
    plain(&common::graph(
        [2, 11, 9],
        4,
        &format!("{CONV}, {pool}, {}", head("p")),
        "fc",
    ));
}

#[test]
fn relu() {
    let r = r#"{"name": "r", "op": "relu", "inputs": ["c"]}"#;
    plain(&common::graph(
        [2, 7, 7],
        4,
        &format!("{CONV}, {r}, {}", head("r")),
        "fc",
    ));
}

#[test]
fn batch_norm_training() {
    // No conv bias before BatchNorm: its true gradient is zero (the mean absorbs it).
    let conv = CONV.replace(r#""padding": 1}"#, r#""padding": 1, "bias": false}"#);
    let bn = r#"{"name": "bn", "op": "batch_norm", "inputs": ["c"]}"#;
    plain(&common::graph(
        [2, 7, 5],
        4,
        &format!("{conv}, {bn}, {}", head("bn")),
        "fc",
    ));
}

#[test]
fn add_with_fan_out() {
    // `c` feeds both the add and the relu: its gradient is a sum of two.
    let nodes = format!(
        r#"{CONV}, {{"name": "r", "op": "relu", "inputs": ["c"]}},
        {{"name": "s", "op": "add", "inputs": ["c", "r"]}}, {}"#,
        head("s")
    );
    plain(&common::graph([2, 6, 6], 4, &nodes, "fc"));
}

#[test]
fn option_a_shortcut() {
    let nodes = format!(
        r#"{CONV}, {{"name": "s", "op": "shortcut_a", "inputs": ["c"], "out_channels": 7, "stride": 2}}, {}"#,
        head("s")
    );
    plain(&common::graph([2, 9, 7], 4, &nodes, "fc"));
}

#[test]
fn global_average_pool() {
    let nodes = format!(
        r#"{CONV}, {{"name": "g", "op": "global_avg_pool", "inputs": ["c"]}},
        {{"name": "fc", "op": "linear", "inputs": ["g"], "out_features": 4}}"#
    );
    plain(&common::graph([2, 7, 5], 4, &nodes, "fc"));
}

#[test]
fn standard_dropout_is_a_true_gradient() {
    // With F = B the derived update is the gradient of the masked loss.
    let nodes = format!(
        r#"{CONV}, {{"name": "d", "op": "dropout", "inputs": ["c"]}}, {}"#,
        head("d")
    );
    let g = common::graph([2, 7, 7], 4, &nodes, "fc");
    check(
        &g,
        DropoutConfig {
            mode: DropoutMode::Standard,
            fwd: 0.3,
            bwd: 0.0,
        },
    );
}

#[test]
fn softmax_cross_entropy_many_classes() {
    let nodes = r#"{"name": "f", "op": "flatten", "inputs": ["image"]},
        {"name": "fc", "op": "linear", "inputs": ["f"], "out_features": 13}"#;
    plain(&common::graph([1, 2, 3], 13, nodes, "fc"));
}

#[test]
fn convnet_quick_whole_model() {
    let g = dropjit_graph::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/convnet_quick.json"),
        Default::default(),
    )
    .expect("model loads");
    let opts = GradCheckOptions {
        batch: 2,
        samples: 3,
        ..GradCheckOptions::default()
    };
    let report = grad_check(&g, &generic_point(&g, 0), &opts).expect("gradcheck runs");
    assert!(report.worst() < TOL, "{}", report.table());
}
