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

use dropjit_codegen::{step_keys, CompileOptions, CompiledGraph, ConvIsa, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::random_batch;
use dropjit_graph::init::generic_point;
use dropjit_graph::interp::{run_observed, Inputs, State};
use dropjit_graph::{DropoutMode, Graph, NodeId};
use dropjit_tests::{rel_err, JitStep};

/// Relative tolerance (against the reference tensor's largest magnitude).
const TOL: f64 = 1e-4;
const SEED: u64 = 17;
const LR: f32 = 0.05;
const STEPS: u64 = 3;
const THREADS: usize = 2;

const MODES: [(DropoutMode, f64, f64); 5] = [
    (DropoutMode::Plain, 0.0, 0.0),
    (DropoutMode::Standard, 0.3, 0.0),
    (DropoutMode::Forward, 0.3, 0.0),
    (DropoutMode::Backward, 0.0, 0.3),
    (DropoutMode::Augmented, 0.2, 0.1),
];

/// Every comparison of one model and mode: `(what, relative difference)`.
#[derive(Default)]
struct Diffs {
    nodes: Vec<(String, f64)>,
    state: Vec<(String, f64)>,
}

impl Diffs {
    fn failures(&self) -> Vec<String> {
        self.nodes
            .iter()
            .chain(&self.state)
            // `rel_err` is +∞, never NaN, on NaN, infinities and length mismatches.
            .filter(|(_, e)| *e >= TOL)
            .map(|(w, e)| format!("{w}: {e:.2e}"))
            .collect()
    }
}

fn worst(diffs: &[(String, f64)]) -> String {
    diffs
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("none".into(), |(w, e)| format!("{e:.2e} ({w})"))
}

/// The JIT's state vector: parameters, momentum and this step's learning rate.
fn jit_state(layout: &StateLayout, state: &State<f32>) -> Vec<f32> {
    let mut s = layout.pack(&state.params);
    for (m, v) in layout.momentum.iter().zip(&state.momentum) {
        if let Some((o, n)) = *m {
            s[o..o + n].copy_from_slice(v);
        }
    }
    s[layout.lr] = LR;
    s
}

/// A model's training step, and the JIT's compilation of it keeping values.
struct StepPair {
    model: Graph,
    step_graph: Graph,
    layout: StateLayout,
    jit: CompiledGraph,
    batch: usize,
}

impl StepPair {
    fn new(path: &str, batch: usize, dropout: DropoutConfig, isa: ConvIsa) -> Self {
        let opts = CompileOptions {
            keep_values: true,
            isa: Some(isa),
            ..Default::default()
        };
        let s = JitStep::new(path, batch, dropout, opts);
        StepPair {
            model: s.model,
            step_graph: s.step_graph,
            layout: s.layout,
            jit: s.jit,
            batch,
        }
    }

    /// Step `step` of both executors from `state`, which ends as the
    /// interpreter's (teacher-forced) state. Returns how many nodes were compared.
    fn run(&mut self, state: &mut State<f32>, step: u64, diffs: &mut Diffs) -> usize {
        let (images, labels) = random_batch(&self.model, self.batch, 100 + step);
        let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
        let mut jit_state = jit_state(&self.layout, state);
        let keys = step_keys(self.model.sites.len(), SEED, step);
        self.jit
            .run(&mut jit_state, &images, &labels, &keys, THREADS)
            .expect("jit step");
        let inputs = Inputs {
            images: &images,
            labels: &labels,
            batch: self.batch,
            seed: SEED,
            step,
            lr: LR as f64,
        };
        let compared = self.forced_interp(state, &inputs, step, diffs);
        for (p, param) in self.model.params.iter().enumerate() {
            let (o, n) = self.layout.params[p];
            let e = rel_err(&jit_state[o..o + n], &state.params[p]);
            diffs.state.push((format!("step {step} {}", param.name), e));
            if let Some((o, n)) = self.layout.momentum[p] {
                let e = rel_err(&jit_state[o..o + n], &state.momentum[p]);
                diffs
                    .state
                    .push((format!("step {step} momentum of {}", param.name), e));
            }
        }
        compared
    }

    /// The interpreter's step, each value the JIT kept compared and then
    /// replaced by the JIT's. Returns how many nodes were compared.
    fn forced_interp(
        &self,
        state: &mut State<f32>,
        inputs: &Inputs<f32>,
        step: u64,
        diffs: &mut Diffs,
    ) -> usize {
        let mut compared: Vec<NodeId> = Vec::new();
        run_observed(&self.step_graph, state, inputs, &mut |id, value| {
            let Some(jit_value) = self.jit.node_value(id) else {
                return;
            };
            let name = &self.step_graph.node(id).name;
            assert_eq!(jit_value.len(), value.len(), "step {step}: size of {name}");
            let e = rel_err(jit_value, value);
            diffs.nodes.push((format!("step {step} {name}"), e));
            value.copy_from_slice(jit_value);
            compared.push(id);
        })
        .expect("interp step");
        for (name, id) in &self.step_graph.outputs {
            assert!(compared.contains(id), "output {name} not compared");
        }
        compared.len()
    }
}

/// `STEPS` training steps of `path` in one dropout mode, each from the
/// interpreter's state after the last; every node the JIT materialises and
/// every state tensor must agree with the forced interpreter.
fn check(path: &str, batch: usize, (mode, fwd, bwd): (DropoutMode, f64, f64), isa: ConvIsa) {
    let mut pair = StepPair::new(path, batch, DropoutConfig { mode, fwd, bwd }, isa);
    let mut state = State::<f32>::new(&pair.model, &generic_point(&pair.model, 5));
    let mut diffs = Diffs::default();
    let mut compared = 0;
    for step in 0..STEPS {
        compared = pair.run(&mut state, step, &mut diffs);
    }
    eprintln!(
        "{path} {mode:?} {isa}: {compared} of {} nodes compared per step; worst node {}, worst state {}",
        pair.step_graph.nodes.len(),
        worst(&diffs.nodes),
        worst(&diffs.state)
    );
    let failures = diffs.failures();
    assert!(
        failures.is_empty(),
        "{path} {mode:?} {isa}: {} values differ by {TOL:e} or more:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

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
