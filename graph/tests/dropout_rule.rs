//! Rule 2 of the dropout contract beyond a site's direct consumers: the
//! backward pass reads `B ⊙ x` in place of `F ⊙ x` through the parameter-free
//! ops after a site, up to and including the first layer with parameters
//! (`docs/dropout-semantics.md`). One test per way the old rule (direct
//! consumers only) went wrong.

mod common;

use dropjit_graph::autodiff::{backward, grad_output};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::init::generic_point;
use dropjit_graph::interp::{run, Inputs, State};
use dropjit_graph::mask::Stream;
use dropjit_graph::op::{MaskSpec, Op};
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{DropoutMode, Graph, NodeId};

const MODES: [(DropoutMode, f64, f64); 5] = [
    (DropoutMode::Plain, 0.0, 0.0),
    (DropoutMode::Standard, 0.3, 0.0),
    (DropoutMode::Forward, 0.3, 0.0),
    (DropoutMode::Backward, 0.0, 0.3),
    (DropoutMode::Augmented, 0.3, 0.2),
];

fn cfg(mode: DropoutMode, fwd: f64, bwd: f64) -> DropoutConfig {
    DropoutConfig { mode, fwd, bwd }
}

fn load(path: &str) -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    dropjit_graph::load(&path, Default::default()).expect("graph loads")
}

fn node(g: &Graph, name: &str) -> NodeId {
    g.find(name)
        .unwrap_or_else(|| panic!("no node {name} in the derived graph"))
}

/// The masks met walking from `id` back through masks and parameter-free ops
/// (first input each) to the value they were computed from: what a weight
/// gradient reading `id` sees of the dropout sites before it.
fn masks_on_path(g: &Graph, mut id: NodeId) -> (Vec<MaskSpec>, String) {
    let mut masks = Vec::new();
    loop {
        let n = g.node(id);
        match &n.op {
            Op::Mask(spec) => masks.push(spec.clone()),
            Op::AvgPool2d(_) | Op::MaxPool2d(_) | Op::Reshape { .. } => {}
            _ => return (masks, n.name.clone()),
        }
        id = n.inputs[0];
    }
}

fn streams(spec: &MaskSpec) -> Vec<Stream> {
    spec.factors.iter().map(|f| f.stream).collect()
}

/// ConvNet-Quick's sites 2 and 3 feed an average pool (then conv3, resp.
/// flatten -> ip1). Forward mode: those weight gradients read the unmasked
/// ReLU outputs; backward mode: the ReLU outputs under `G`; standard: under `F`.
#[test]
fn convnet_quick_weight_gradients_read_substituted_features() {
    let g = load("models/convnet_quick.json");
    for (layer, relu) in [
        ("conv3.conv.grad_weight", "relu2"),
        ("ip1.linear.grad_weight", "relu3"),
    ] {
        for (mode, fwd, bwd, want) in [
            (DropoutMode::Forward, 0.3, 0.0, vec![]),
            (DropoutMode::Backward, 0.0, 0.3, vec![vec![Stream::G]]),
            (DropoutMode::Standard, 0.3, 0.0, vec![vec![Stream::F]]),
            (
                DropoutMode::Augmented,
                0.3,
                0.2,
                vec![vec![Stream::F, Stream::G]],
            ),
        ] {
            let bwd_graph = backward(&g, &cfg(mode, fwd, bwd)).expect("derives");
            let dw = bwd_graph.node(node(&bwd_graph, layer));
            let (masks, source) = masks_on_path(&bwd_graph, dw.inputs[1]);
            let got: Vec<Vec<Stream>> = masks.iter().map(streams).collect();
            assert_eq!(got, want, "{layer} in {mode:?} mode");
            assert_eq!(source, relu, "{layer} in {mode:?} mode");
        }
    }
}

/// The same network written `dropout -> linear` and `dropout -> flatten ->
/// linear` derives the same update in every mode (flatten keeps the element
/// order, so the masks are the same too).
#[test]
fn dropout_before_or_after_flatten_gives_the_same_gradients() {
    let net = |order: &str| {
        common::graph(
            [4, 3, 3],
            5,
            &format!(
                r#"{{"name": "conv", "op": "conv2d", "inputs": ["image"], "out_channels": 6, "kernel": 3, "padding": 1}},
                   {{"name": "relu", "op": "relu", "inputs": ["conv"]}},
                   {order},
                   {{"name": "fc", "op": "linear", "inputs": ["b"], "out_features": 5}}"#
            ),
            "fc",
        )
    };
    let drop_then_flatten = net(r#"{"name": "a", "op": "dropout", "inputs": ["relu"]},
           {"name": "b", "op": "flatten", "inputs": ["a"]}"#);
    let flatten_then_drop = net(r#"{"name": "a", "op": "flatten", "inputs": ["relu"]},
           {"name": "b", "op": "dropout", "inputs": ["a"]}"#);
    let params = generic_point(&drop_then_flatten, 2);
    let images: Vec<f64> = (0..3 * 36)
        .map(|i| ((i * 5 % 13) as f64 - 6.0) / 5.0)
        .collect();
    let labels = [0u32, 4, 2];
    let grads = |g: &Graph, c: &DropoutConfig| -> Vec<Vec<f64>> {
        let bwd = backward(g, c).expect("derives");
        let mut state = State::<f64>::new(g, &params);
        let inputs = Inputs {
            images: &images,
            labels: &labels,
            batch: 3,
            seed: 9,
            step: 4,
            lr: 0.0,
        };
        let values = run(&bwd, &mut state, &inputs).expect("runs");
        g.trainable_params()
            .map(|p| {
                let name = grad_output(&g.param(p).name);
                values.output(&bwd, &name).expect("gradient").to_vec()
            })
            .collect()
    };
    for (mode, fwd, bwd) in MODES {
        let c = cfg(mode, fwd, bwd);
        let (a, b) = (grads(&drop_then_flatten, &c), grads(&flatten_then_drop, &c));
        assert_eq!(a.len(), 4);
        assert_eq!(a, b, "{mode:?}");
    }
}

/// Dropout before a max pool: the pool's gradient routes by the argmax of the
/// substituted input `B ⊙ x`, not of the forward pool's input `F ⊙ x`.
#[test]
fn max_pool_gradient_routes_by_substituted_input() {
    let g = load("tests/fixtures/drop_pool_bn_add.json");
    for (mode, fwd, bwd, want) in [
        (DropoutMode::Forward, 0.3, 0.0, vec![]),
        (DropoutMode::Backward, 0.0, 0.3, vec![vec![Stream::G]]),
        (
            DropoutMode::Augmented,
            0.3,
            0.2,
            vec![vec![Stream::F, Stream::G]],
        ),
    ] {
        let d = backward(&g, &cfg(mode, fwd, bwd)).expect("derives");
        let grad = d.node(node(&d, "pool1.grad_input"));
        assert!(matches!(grad.op, Op::MaxPool2dGrad(_)));
        let (masks, source) = masks_on_path(&d, grad.inputs[1]);
        let got: Vec<Vec<Stream>> = masks.iter().map(streams).collect();
        assert_eq!((got, source.as_str()), (want, "relu1"), "{mode:?}");
    }
}

/// Dropout before batch norm: x̂ is rebuilt from the substituted input with
/// that input's own mean and variance, not the forward statistics.
#[test]
fn batch_norm_differentiates_with_statistics_of_substituted_input() {
    let g = load("tests/fixtures/drop_pool_bn_add.json");
    for (mode, fwd, bwd) in &MODES[2..] {
        let d = backward(&g, &cfg(*mode, *fwd, *bwd)).expect("derives");
        for grad_name in ["bn2.grad_input", "bn2.grad_weight"] {
            let grad = d.node(node(&d, grad_name));
            let (x, mean, var) = (grad.inputs[1], grad.inputs[2], grad.inputs[3]);
            let forward_mean = node(&d, "bn2.mean");
            let forward_x = d.node(forward_mean).inputs[0];
            assert_ne!(x, forward_x, "{grad_name} {mode:?}: forward input");
            assert_ne!(mean, forward_mean, "{grad_name} {mode:?}: forward mean");
            assert_eq!(d.node(mean).inputs, [x], "{grad_name} {mode:?}: mean of x");
            assert_eq!(
                d.node(var).inputs,
                [x, mean],
                "{grad_name} {mode:?}: var of x"
            );
        }
    }
}

/// On a residual path the substitution goes through `add`; the other input
/// keeps its forward value.
#[test]
fn residual_add_substitutes_only_the_dropout_side() {
    let g = load("tests/fixtures/drop_pool_bn_add.json");
    let d = backward(&g, &cfg(DropoutMode::Backward, 0.0, 0.3)).expect("derives");
    let add = d.node(node(&d, "add.saved"));
    assert_eq!(
        add.inputs[0],
        node(&d, "bn2"),
        "the BN side keeps its forward value"
    );
    assert_eq!(add.inputs[1], node(&d, "short.saved"));
    // ReLU's derivative is taken at the substituted sum.
    let relu_grad = d.node(node(&d, "relu3.grad_input"));
    assert_eq!(relu_grad.inputs[1], node(&d, "relu3.saved"));
}

/// `B = F` (standard) and `B = F = 1` (plain) substitute nothing: the derived
/// graph is the plain autodiff one, so the update is the true gradient.
#[test]
fn standard_and_plain_modes_substitute_nothing() {
    for path in [
        "tests/fixtures/drop_pool_bn_add.json",
        "models/convnet_quick.json",
        "models/resnet20.json",
    ] {
        let g = load(path);
        for (mode, fwd, bwd) in &MODES[..2] {
            let d = backward(&g, &cfg(*mode, *fwd, *bwd)).expect("derives");
            let saved: Vec<&str> = d
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| n.ends_with(".saved"))
                .collect();
            assert!(saved.is_empty(), "{path} {mode:?}: {saved:?}");
        }
    }
}

/// Running statistics follow the forward pass: the statistics the backward pass
/// recomputes on a substituted input update nothing. In backward mode (F = 1)
/// the forward pass is plain, so one step leaves the same running mean and
/// variance as a plain step, bit for bit.
#[test]
fn running_statistics_follow_the_forward_pass_only() {
    let g = load("tests/fixtures/drop_pool_bn_add.json");
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let params = generic_point(&g, 4);
    let images: Vec<f64> = (0..2 * 3 * 64)
        .map(|i| ((i * 7 % 17) as f64 - 8.0) / 6.0)
        .collect();
    let labels = [3u32, 8];
    let after_step = |c: DropoutConfig| {
        let step = training_step(&g, &c, &sgd).expect("step graph");
        let updates = step
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BnRunningUpdate { .. }))
            .count();
        assert_eq!(updates, 2, "{c:?}: one update per running statistic");
        let mut state = State::<f64>::new(&g, &params);
        let inputs = Inputs {
            images: &images,
            labels: &labels,
            batch: 2,
            seed: 1,
            step: 0,
            lr: 0.1,
        };
        run(&step, &mut state, &inputs).expect("runs");
        let running = |name: &str| state.params[g.param_by_name(name).unwrap().index()].clone();
        (running("bn2.running_mean"), running("bn2.running_var"))
    };
    let plain = after_step(DropoutConfig::PLAIN);
    let backward_mode = after_step(cfg(DropoutMode::Backward, 0.0, 0.3));
    assert_eq!(plain, backward_mode);
    assert_ne!(
        plain.0,
        generic_point(&g, 4)[g.param_by_name("bn2.running_mean").unwrap().index()]
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>()
    );
}
