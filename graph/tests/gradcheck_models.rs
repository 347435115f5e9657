//! Finite-difference checks (f64) of whole networks on a batch of two: both
//! shipped models in plain and standard dropout, and the shapes whose
//! finite-difference noise a fixed step and floor misjudged (a VGG-style net
//! with BatchNorm after biased convolutions, option-B shortcuts, ResNet-20
//! with 100 classes), plus dropout before max pooling and BatchNorm. Planted
//! gradient bugs must fail the same check.

use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::{
    derived_gradients, grad_check, grad_check_with, GradCheckOptions, GradCheckReport,
};
use dropjit_graph::init::generic_point;
use dropjit_graph::{DropoutMode, Graph, GraphLoadOptions};

fn path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load(rel: &str) -> Graph {
    dropjit_graph::load(&path(rel), GraphLoadOptions::default()).expect("graph loads")
}

/// ResNet-20 with `classes` classes and `size`² images.
fn resnet20(classes: u64, size: u64) -> Graph {
    let text = std::fs::read_to_string(path("../models/resnet20.json")).expect("model file");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for input in v["inputs"].as_array_mut().expect("inputs") {
        match input["kind"].as_str() {
            Some("label") => input["classes"] = classes.into(),
            Some("image") => {
                input["shape"][1] = size.into();
                input["shape"][2] = size.into();
            }
            _ => {}
        }
    }
    for node in v["nodes"].as_array_mut().expect("nodes") {
        if node["op"] == "linear" {
            node["out_features"] = classes.into();
        }
    }
    dropjit_graph::parse(
        &v.to_string(),
        "resnet20 variant",
        GraphLoadOptions::default(),
    )
    .expect("variant parses")
}

const STANDARD: DropoutConfig = DropoutConfig {
    mode: DropoutMode::Standard,
    fwd: 0.3,
    bwd: 0.0,
};

fn opts(samples: usize, dropout: DropoutConfig) -> GradCheckOptions {
    GradCheckOptions {
        batch: 2,
        seed: 1,
        samples,
        dropout,
        ..GradCheckOptions::default()
    }
}

/// The check passes, and is not vacuous: every trainable parameter was
/// checked on `samples` elements (all of a smaller tensor).
fn check(g: &Graph, samples: usize, dropout: DropoutConfig) -> GradCheckReport {
    let report = grad_check(g, &generic_point(g, 1), &opts(samples, dropout)).expect("runs");
    let table = report.table();
    eprintln!(
        "{} {}: worst {:.2e}\n{table}",
        g.name,
        dropout.describe(),
        report.worst()
    );
    assert_eq!(report.params.len(), g.trainable_params().count());
    for p in &report.params {
        assert_eq!(p.samples.len(), samples.min(p.elems), "{}\n{table}", p.name);
    }
    assert!(report.passed(), "{table}");
    report
}

#[test]
fn convnet_quick_plain() {
    check(
        &load("../models/convnet_quick.json"),
        3,
        DropoutConfig::PLAIN,
    );
}

#[test]
fn convnet_quick_standard_dropout() {
    check(&load("../models/convnet_quick.json"), 3, STANDARD);
}

#[test]
fn resnet20_plain() {
    check(&load("../models/resnet20.json"), 1, DropoutConfig::PLAIN);
}

#[test]
fn resnet20_standard_dropout() {
    // 16×16 images: the same 59 tensors and 9 sites at a quarter of the cost.
    check(&resnet20(10, 16), 1, STANDARD);
}

#[test]
fn resnet20_with_100_classes() {
    // Small gradients at the 100-way head, against rounding noise that a
    // fixed step of 1e-6 amplified to ~1e-9. 16×16 images, as above.
    check(&resnet20(100, 16), 1, DropoutConfig::PLAIN);
}

#[test]
fn vgg_with_batch_norm_after_biased_convolutions() {
    let report = check(&load("tests/nets/vgg_bn.json"), 4, DropoutConfig::PLAIN);
    // The conv biases before BatchNorm have a true gradient of zero: their
    // quotients are rounding noise, judged against their own estimate.
    let biases: Vec<_> = report
        .params
        .iter()
        .filter(|p| p.name.starts_with("conv") && p.name.ends_with(".bias"))
        .collect();
    assert_eq!(biases.len(), 6);
    for p in biases {
        assert!(p.max_abs_grad < 1e-12, "{}: {:e}", p.name, p.max_abs_grad);
    }
}

#[test]
fn resnet_with_option_b_shortcuts() {
    check(
        &load("tests/nets/resnet_option_b.json"),
        4,
        DropoutConfig::PLAIN,
    );
}

#[test]
fn dropout_before_max_pool_and_batch_norm() {
    let g = load("tests/nets/dropout_pool_bn.json");
    check(&g, 4, DropoutConfig::PLAIN);
    check(&g, 4, STANDARD);
}

/// The VGG net's derived gradients with `corrupt` applied, checked.
fn planted(corrupt: impl Fn(&Graph, &mut [Vec<f64>])) -> GradCheckReport {
    let g = load("tests/nets/vgg_bn.json");
    let params = generic_point(&g, 1);
    let o = opts(4, DropoutConfig::PLAIN);
    let (_, mut grads) = derived_gradients(&g, &params, &o).expect("gradients");
    corrupt(&g, &mut grads);
    grad_check_with(&g, &params, &o, &grads).expect("runs")
}

fn index(g: &Graph, name: &str) -> usize {
    g.trainable_params()
        .position(|p| g.param(p).name == name)
        .expect("parameter")
}

/// Only `name` fails.
fn fails_only(report: &GradCheckReport, name: &str) {
    let table = report.table();
    assert!(!report.passed(), "{table}");
    for p in &report.params {
        assert_eq!(
            p.error >= report.tolerance,
            p.name == name,
            "{}\n{table}",
            p.name
        );
    }
}

#[test]
fn planted_bug_scaled_gradient_fails() {
    for scale in [1.01, 1.0 + 1e-5] {
        let r = planted(|g, grads| {
            for v in &mut grads[index(g, "conv2_1.weight")] {
                *v *= scale;
            }
        });
        fails_only(&r, "conv2_1.weight");
    }
}

#[test]
fn planted_bug_offset_on_a_zero_gradient_fails() {
    // The bias's true gradient is zero: an offset of 1e-7 is far above the noise.
    let r = planted(|g, grads| {
        for v in &mut grads[index(g, "conv1_2.bias")] {
            *v += 1e-7;
        }
    });
    fails_only(&r, "conv1_2.bias");
}

#[test]
fn planted_bug_wrong_gradient_vector_fails() {
    // BatchNorm's gamma gradient where beta's belongs (same shape).
    let r = planted(|g, grads| {
        let w = grads[index(g, "bn2_1.weight")].clone();
        grads[index(g, "bn2_1.bias")] = w;
    });
    fails_only(&r, "bn2_1.bias");
}

#[test]
fn planted_bug_one_wrong_element_fails() {
    // Uncorrupted, the same harness passes.
    let clean = planted(|_, _| {});
    assert!(clean.passed(), "{}", clean.table());
    // One sampled element of fc.weight off by 0.1 %.
    let fc = clean.params.iter().find(|p| p.name == "fc.weight");
    let i = fc.expect("fc.weight").samples[0].index;
    let r = planted(|g, grads| grads[index(g, "fc.weight")][i] *= 1.001);
    fails_only(&r, "fc.weight");
}

#[test]
fn modes_with_f_not_b_are_refused_with_the_checks_that_cover_them() {
    let g = load("tests/nets/dropout_pool_bn.json");
    for (mode, fwd, bwd) in [
        (DropoutMode::Forward, 0.3, 0.0),
        (DropoutMode::Backward, 0.0, 0.3),
        (DropoutMode::Augmented, 0.2, 0.1),
    ] {
        let o = opts(1, DropoutConfig { mode, fwd, bwd });
        let e = grad_check(&g, &generic_point(&g, 1), &o)
            .expect_err("F != B has no loss to differentiate")
            .to_string();
        assert!(
            e.contains("not the derivative of any loss")
                && e.contains("tools/torch_check.py")
                && e.contains("dropout_modes.rs"),
            "{mode:?}: {e}"
        );
    }
}
