//! Teacher-forced comparison of the JIT with the reference interpreter (see
//! `per_node.rs`), shared by the per-node test and the graph fuzzer.

use dropjit_codegen::{step_keys, CompileOptions, CompiledGraph, ConvIsa, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::random_batch;
use dropjit_graph::init::generic_point;
use dropjit_graph::interp::{run_observed, Inputs, State};
use dropjit_graph::{DropoutMode, Graph, NodeId, Op};

use crate::{rel_err, JitStep};

/// Relative tolerance (against the reference tensor's largest magnitude).
pub const TOL: f64 = 1e-4;
const SEED: u64 = 17;
const LR: f32 = 0.05;
const STEPS: u64 = 3;
const THREADS: usize = 2;

pub const MODES: [(DropoutMode, f64, f64); 5] = [
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
    fn new(model: Graph, batch: usize, dropout: DropoutConfig, isa: ConvIsa) -> Self {
        let opts = CompileOptions {
            keep_values: true,
            isa: Some(isa),
            ..Default::default()
        };
        let s = JitStep::from_graph(model, batch, dropout, opts);
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
        let g = &self.step_graph;
        // What each reduction adds up, in magnitude (see `node_err`): per node
        // read by one, the sum and the largest of its |values|.
        let reductions = |op: &Op| {
            matches!(
                op,
                Op::BiasGrad
                    | Op::BnGradGamma { .. }
                    | Op::BnGradInput { .. }
                    | Op::LinearGradWeight
                    | Op::Conv2dGradWeight(_)
            )
        };
        let read: Vec<NodeId> = g
            .nodes
            .iter()
            .filter(|n| reductions(&n.op))
            .flat_map(|n| n.inputs.iter().copied())
            .collect();
        // (sum, largest, smallest) of |values|.
        let mut mags: std::collections::HashMap<NodeId, (f64, f64, f64)> = Default::default();
        let magnitude = |v: &[f32]| {
            v.iter()
                .fold((0.0f64, 0.0f64, f64::INFINITY), |(s, hi, lo), x| {
                    let a = x.abs() as f64;
                    (s + a, hi.max(a), lo.min(a))
                })
        };
        run_observed(g, state, inputs, &mut |id, value| {
            let node = g.node(id);
            let mag = |i: usize| {
                mags.get(&node.inputs[i])
                    .copied()
                    .unwrap_or((0.0, 0.0, 0.0))
            };
            // Σ|dy| times the largest factor each term multiplies dy by.
            let terms = match &node.op {
                Op::BiasGrad => mag(0).0,
                Op::LinearGradWeight | Op::Conv2dGradWeight(_) => mag(0).0 * mag(1).1,
                // x̂ = (x - mean) / sqrt(var + eps): bounded by (|x| + |mean|) / sqrt(min var + eps).
                Op::BnGradGamma { eps } => {
                    mag(0).0 * (mag(1).1 + mag(2).1) / (mag(3).2 + *eps as f64).sqrt()
                }
                // γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂)): each of the three
                // terms is at most |γ|/σ·|dy| (times x̂² for the last); they
                // cancel exactly when dy is constant over a channel (a global
                // average pool after the batch norm).
                Op::BnGradInput { eps } => {
                    let inv_sd = 1.0 / (mag(3).2 + *eps as f64).sqrt();
                    let xhat = (mag(1).1 + mag(2).1) * inv_sd;
                    mag(4).1 * inv_sd * mag(0).1 * (2.0 + xhat * xhat)
                }
                _ => 0.0,
            };
            let Some(jit_value) = self.jit.node_value(id) else {
                if read.contains(&id) {
                    mags.insert(id, magnitude(value));
                }
                return;
            };
            let name = &node.name;
            assert_eq!(jit_value.len(), value.len(), "step {step}: size of {name}");
            let e = node_err(jit_value, value, terms);
            diffs.nodes.push((format!("step {step} {name}"), e));
            value.copy_from_slice(jit_value);
            if read.contains(&id) {
                mags.insert(id, magnitude(value));
            }
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
pub fn check(path: &str, batch: usize, mode: (DropoutMode, f64, f64), isa: ConvIsa) {
    check_graph(crate::model(path), path, batch, mode, isa);
}

/// [`check`] on a graph in memory; `label` names it in messages.
pub fn check_graph(
    model: Graph,
    label: &str,
    batch: usize,
    (mode, fwd, bwd): (DropoutMode, f64, f64),
    isa: ConvIsa,
) {
    let path = label;
    let mut pair = StepPair::new(model, batch, DropoutConfig { mode, fwd, bwd }, isa);
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

/// [`rel_err`] for a node's value. A reduction that cancels (the gradient of
/// a bias just before batch norm is exactly zero, so is that of a batch norm's
/// scale before another batch norm) is rounding residue of its terms in either
/// executor: such a node is held to 1e-4 of a bound on the magnitude of what
/// it adds up (`terms`; zero for other nodes) rather than of its own value.
fn node_err(a: &[f32], b: &[f32], terms: f64) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-3);
    rel_err(a, b) * scale / scale.max(terms)
}
