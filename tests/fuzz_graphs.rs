//! Differential fuzzing of the compiler: random valid graphs (chains and
//! residual branches of every op, sizes down to 1, dropout sites in every mode
//! and ratio, batches 1-3) run through the JIT and the reference interpreter,
//! node by node with teacher forcing (`forced.rs`), three training steps each.
//! proptest shrinks a failure to a minimal graph and records its seed in
//! `fuzz_graphs.proptest-regressions` (committed: every failure found stays a
//! regression case).
//!
//! CI runs a fixed set of cases; a long run:
//!   DROPJIT_FUZZ_CASES=2000 DROPJIT_FUZZ_SEED=7 cargo test --release -p dropjit-tests --test fuzz_graphs -- --nocapture

use dropjit_codegen::ConvIsa;
use dropjit_graph::shape::{conv_out_len, pool_out_len};
use dropjit_graph::{parse, DropoutMode, GraphLoadOptions};
use dropjit_tests::forced::check_graph;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

#[derive(Clone, Debug)]
enum Layer {
    Conv {
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    },
    BatchNorm,
    Relu,
    Pool {
        max: bool,
        kernel: usize,
        stride: usize,
        pad: usize,
        ceil: bool,
    },
    Dropout,
    /// `x + conv(x)` (same shape), or with `down`: `shortcut_a(x) + conv_s2(x)`.
    Residual {
        down: bool,
    },
    GlobalPool,
    Flatten,
    Linear {
        out: usize,
        bias: bool,
    },
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        (1..6usize, 0..3usize, 1..3usize, 0..3usize, any::<bool>()).prop_map(
            |(out, k, stride, pad, bias)| Layer::Conv {
                out,
                kernel: [1, 3, 5][k],
                stride,
                pad,
                bias
            }
        ),
        Just(Layer::BatchNorm),
        Just(Layer::Relu),
        (
            any::<bool>(),
            1..4usize,
            1..3usize,
            0..2usize,
            any::<bool>()
        )
            .prop_map(|(max, kernel, stride, pad, ceil)| Layer::Pool {
                max,
                kernel,
                stride,
                pad,
                ceil
            }),
        Just(Layer::Dropout),
        any::<bool>().prop_map(|down| Layer::Residual { down }),
        Just(Layer::GlobalPool),
        Just(Layer::Flatten),
        (1..7usize, any::<bool>()).prop_map(|(out, bias)| Layer::Linear { out, bias }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    channels: usize,
    side: usize,
    classes: usize,
    batch: usize,
    layers: Vec<Layer>,
    mode: usize,
    ratios: (usize, usize),
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..5usize,
        1..10usize,
        2..6usize,
        1..4usize,
        prop::collection::vec(layer(), 0..7),
        0..5usize,
        (0..4usize, 0..4usize),
    )
        .prop_map(
            |(channels, side, classes, batch, layers, mode, ratios)| Case {
                channels,
                side,
                classes,
                batch,
                layers,
                mode,
                ratios,
            },
        )
}

const RATIOS: [f64; 4] = [0.0001, 0.1, 0.3, 0.5];

#[derive(Clone, Copy)]
enum Shape {
    Image(usize, usize, usize),
    Flat,
}

/// The graph of a case, as model-file JSON: each layer applied where it fits
/// the current shape (skipped otherwise), then flatten and a classifier.
fn graph_json(c: &Case) -> String {
    let mut nodes: Vec<String> = Vec::new();
    let mut shape = Shape::Image(c.channels, c.side, c.side);
    let mut last = "image".to_string();
    let mut k = 0;
    let name = |k: &mut usize| {
        *k += 1;
        format!("n{k}")
    };
    for l in &c.layers {
        match (l, shape) {
            (
                Layer::Conv {
                    out,
                    kernel,
                    stride,
                    pad,
                    bias,
                },
                Shape::Image(_, h, w),
            ) => {
                let (Some(oh), Some(ow)) = (
                    conv_out_len(h, *kernel, *stride, *pad),
                    conv_out_len(w, *kernel, *stride, *pad),
                ) else {
                    continue;
                };
                let n = name(&mut k);
                nodes.push(format!(r#"{{"name": "{n}", "op": "conv2d", "inputs": ["{last}"], "out_channels": {out}, "kernel": {kernel}, "stride": {stride}, "padding": {pad}, "bias": {bias}}}"#));
                (last, shape) = (n, Shape::Image(*out, oh, ow));
            }
            (Layer::BatchNorm, Shape::Image(..)) => {
                let n = name(&mut k);
                nodes.push(format!(
                    r#"{{"name": "{n}", "op": "batch_norm", "inputs": ["{last}"]}}"#
                ));
                last = n;
            }
            (Layer::Relu, _) | (Layer::Dropout, _) => {
                let op = if matches!(l, Layer::Relu) {
                    "relu"
                } else {
                    "dropout"
                };
                let n = name(&mut k);
                nodes.push(format!(
                    r#"{{"name": "{n}", "op": "{op}", "inputs": ["{last}"]}}"#
                ));
                last = n;
            }
            (
                Layer::Pool {
                    max,
                    kernel,
                    stride,
                    pad,
                    ceil,
                },
                Shape::Image(ch, h, w),
            ) => {
                if 2 * pad > *kernel {
                    continue;
                }
                let (Some(oh), Some(ow)) = (
                    pool_out_len(h, *kernel, *stride, *pad, *ceil),
                    pool_out_len(w, *kernel, *stride, *pad, *ceil),
                ) else {
                    continue;
                };
                let op = if *max { "max_pool2d" } else { "avg_pool2d" };
                let n = name(&mut k);
                nodes.push(format!(r#"{{"name": "{n}", "op": "{op}", "inputs": ["{last}"], "kernel": {kernel}, "stride": {stride}, "padding": {pad}, "ceil_mode": {ceil}}}"#));
                (last, shape) = (n, Shape::Image(ch, oh, ow));
            }
            (Layer::Residual { down }, Shape::Image(ch, h, w)) => {
                let (branch, short, sum) = (name(&mut k), name(&mut k), name(&mut k));
                if *down {
                    let out = ch + 2;
                    nodes.push(format!(r#"{{"name": "{branch}", "op": "conv2d", "inputs": ["{last}"], "out_channels": {out}, "kernel": 3, "stride": 2, "padding": 1, "bias": false}}"#));
                    nodes.push(format!(r#"{{"name": "{short}", "op": "shortcut_a", "inputs": ["{last}"], "out_channels": {out}, "stride": 2}}"#));
                    nodes.push(format!(
                        r#"{{"name": "{sum}", "op": "add", "inputs": ["{branch}", "{short}"]}}"#
                    ));
                    (last, shape) = (sum, Shape::Image(out, h.div_ceil(2), w.div_ceil(2)));
                } else {
                    nodes.push(format!(r#"{{"name": "{branch}", "op": "conv2d", "inputs": ["{last}"], "out_channels": {ch}, "kernel": 3, "padding": 1}}"#));
                    nodes.push(format!(
                        r#"{{"name": "{sum}", "op": "add", "inputs": ["{last}", "{branch}"]}}"#
                    ));
                    last = sum;
                }
            }
            (Layer::GlobalPool, Shape::Image(..)) => {
                let n = name(&mut k);
                nodes.push(format!(
                    r#"{{"name": "{n}", "op": "global_avg_pool", "inputs": ["{last}"]}}"#
                ));
                (last, shape) = (n, Shape::Flat);
            }
            (Layer::Flatten, Shape::Image(..)) => {
                let n = name(&mut k);
                nodes.push(format!(
                    r#"{{"name": "{n}", "op": "flatten", "inputs": ["{last}"]}}"#
                ));
                (last, shape) = (n, Shape::Flat);
            }
            (Layer::Linear { out, bias }, Shape::Flat) => {
                let n = name(&mut k);
                nodes.push(format!(r#"{{"name": "{n}", "op": "linear", "inputs": ["{last}"], "out_features": {out}, "bias": {bias}}}"#));
                (last, shape) = (n, Shape::Flat);
            }
            _ => {}
        }
    }
    if let Shape::Image(..) = shape {
        nodes.push(format!(
            r#"{{"name": "flat", "op": "flatten", "inputs": ["{last}"]}}"#
        ));
        last = "flat".into();
    }
    nodes.push(format!(
        r#"{{"name": "logits", "op": "linear", "inputs": ["{last}"], "out_features": {}}}"#,
        c.classes
    ));
    nodes.push(
        r#"{"name": "loss", "op": "softmax_cross_entropy", "inputs": ["logits", "label"]}"#.into(),
    );
    format!(
        r#"{{"format": "dropjit-graph/1", "name": "fuzz",
  "inputs": [{{"name": "image", "kind": "image", "shape": [{}, {}, {}]}}, {{"name": "label", "kind": "label", "classes": {}}}],
  "nodes": [
    {}
  ],
  "outputs": {{"loss": "loss", "logits": "logits"}}}}"#,
        c.channels,
        c.side,
        c.side,
        c.classes,
        nodes.join(",\n    ")
    )
}

fn mode(c: &Case) -> (DropoutMode, f64, f64) {
    let (f, b) = (RATIOS[c.ratios.0], RATIOS[c.ratios.1]);
    match c.mode {
        0 => (DropoutMode::Plain, 0.0, 0.0),
        1 => (DropoutMode::Standard, f, 0.0),
        2 => (DropoutMode::Forward, f, 0.0),
        3 => (DropoutMode::Backward, 0.0, b),
        _ => (DropoutMode::Augmented, f, b),
    }
}

fn config() -> Config {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Config {
        cases: env("DROPJIT_FUZZ_CASES", 200) as u32,
        rng_seed: RngSeed::Fixed(env("DROPJIT_FUZZ_SEED", 1)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// A valid random graph: the format accepts it, and the JIT agrees with
    /// the interpreter on every node and every state tensor, on every
    /// convolution instruction set this CPU runs.
    #[test]
    fn jit_agrees_with_the_interpreter_on_random_graphs(c in case()) {
        let text = graph_json(&c);
        let g = parse(&text, "fuzz graph", GraphLoadOptions::default())
            .unwrap_or_else(|e| panic!("a valid graph was rejected: {e}\n{text}"));
        let isas: Vec<ConvIsa> = ConvIsa::ALL.into_iter().filter(|i| i.available()).collect();
        // One instruction set per case, rotating, so all are covered.
        let isa = isas[c.layers.len() % isas.len()];
        check_graph(g, &text, c.batch, mode(&c), isa);
    }
}
