//! The interpreter's observation hook: the observer sees each computed value
//! once, in node order, before anything reads it, and a value it replaces is
//! what the rest of the graph computes from.

mod common;

use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::init::generic_point;
use dropjit_graph::interp::{rerun, run, run_observed, Inputs, State};
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{DropoutMode, Graph, Op};

const N: usize = 3;
const LR: f64 = 0.1;
const WD: f32 = 0.01;

/// `image[4] -> linear 6 -> relu -> linear 3`, with biases.
fn mlp() -> Graph {
    common::graph(
        [4, 1, 1],
        3,
        r#"{"name": "f", "op": "flatten", "inputs": ["image"]},
           {"name": "fc1", "op": "linear", "inputs": ["f"], "out_features": 6},
           {"name": "h", "op": "relu", "inputs": ["fc1"]},
           {"name": "fc2", "op": "linear", "inputs": ["h"], "out_features": 3}"#,
        "fc2",
    )
}

fn step_graph(g: &Graph) -> Graph {
    let plain = DropoutConfig {
        mode: DropoutMode::Plain,
        fwd: 0.0,
        bwd: 0.0,
    };
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: WD,
    };
    training_step(g, &plain, &sgd).expect("step graph")
}

fn images() -> Vec<f64> {
    (0..N * 4)
        .map(|i| ((i * 5 % 7) as f64 - 3.0) / 2.0)
        .collect()
}

fn inputs<'a>(images: &'a [f64], labels: &'a [u32]) -> Inputs<'a, f64> {
    Inputs {
        images,
        labels,
        batch: N,
        seed: 1,
        step: 0,
        lr: LR,
    }
}

#[test]
fn observer_sees_every_value_once_in_order() {
    let g = step_graph(&mlp());
    let (x, labels) = (images(), [0u32, 2, 1]);
    let params = generic_point(&g, 3);
    let mut plain_state = State::<f64>::new(&g, &params);
    let plain = run(&g, &mut plain_state, &inputs(&x, &labels)).expect("runs");
    let mut state = State::<f64>::new(&g, &params);
    let mut seen = Vec::new();
    let observed = run_observed(&g, &mut state, &inputs(&x, &labels), &mut |id, v| {
        assert_eq!(v.as_slice(), plain.get(id), "{}", g.node(id).name);
        seen.push(id);
    })
    .expect("runs");
    let valued: Vec<_> = g.ids().filter(|&id| !g.node(id).op.is_effect()).collect();
    assert_eq!(seen, valued);
    assert_eq!(observed.values, plain.values);
    assert_eq!(state, plain_state);
}

#[test]
fn replaced_values_feed_later_nodes() {
    let fwd = mlp();
    let g = step_graph(&fwd);
    let (x, labels) = (images(), [0u32, 2, 1]);
    let params = generic_point(&g, 3);
    let h = g.find("h").expect("relu node");
    let w2 = g.param_by_name("fc2.weight").expect("fc2 weight");
    let b2 = g.param_by_name("fc2.bias").expect("fc2 bias");
    let w2_grad = g
        .ids()
        .find(|&id| matches!(g.node(id).op, Op::SgdUpdate { param, .. } if param == w2))
        .map(|id| g.node(id).inputs[0])
        .expect("an SGD update of fc2.weight");
    let mut state = State::<f64>::new(&g, &params);
    let before = state.clone();
    let values = run_observed(&g, &mut state, &inputs(&x, &labels), &mut |id, v| {
        if id == h || id == w2_grad {
            v.fill(0.0);
        }
    })
    .expect("runs");
    // With the hidden layer forced to zero, every row of logits is fc2's bias.
    let logits = values.output(&g, "logits").expect("logits");
    for row in logits.chunks(3) {
        assert_eq!(row, before.params[b2.index()].as_slice());
    }
    // With its gradient forced to zero, fc2's weight moves by weight decay only
    // (momentum starts at zero): w' = w - lr·wd·w.
    let (new, old) = (&state.params[w2.index()], &before.params[w2.index()]);
    for (&new, &old) in new.iter().zip(old) {
        let want = old - LR * (WD as f64 * old);
        assert!((new - want).abs() <= 1e-15, "{new} vs {want}");
    }
}

/// `rerun` after changing one parameter recomputes exactly what reads it,
/// bit for bit as a full run, and nothing else.
#[test]
fn rerun_matches_a_full_run_bit_for_bit() {
    let g = dropjit_graph::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nets/dropout_pool_bn.json"),
        Default::default(),
    )
    .expect("net loads");
    let standard = DropoutConfig {
        mode: DropoutMode::Standard,
        fwd: 0.3,
        bwd: 0.0,
    };
    let bwd = dropjit_graph::autodiff::backward(&g, &standard).expect("backward graph");
    let (images, labels) = dropjit_graph::gradcheck::random_batch(&g, 2, 3);
    let inputs = Inputs {
        images: &images,
        labels: &labels,
        batch: 2,
        seed: 3,
        step: 0,
        lr: 0.0,
    };
    let state = State::<f64>::new(&g, &generic_point(&g, 3));
    let base = run(&bwd, &mut state.clone(), &inputs).expect("base run");
    for p in g.trainable_params() {
        let mut changed = state.clone();
        changed.params[p.index()][0] += 1e-3;
        let mut stale = vec![false; bwd.nodes.len()];
        for id in bwd.ids() {
            let node = bwd.node(id);
            stale[id.index()] =
                node.op == Op::Param(p) || node.inputs.iter().any(|i| stale[i.index()]);
        }
        let full = run(&bwd, &mut changed.clone(), &inputs).expect("full run");
        let part = rerun(&bwd, &mut changed.clone(), &inputs, &base, &stale).expect("rerun");
        let name = &g.param(p).name;
        for id in bwd.ids() {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            if stale[id.index()] {
                assert_eq!(
                    bits(part.get(id)),
                    bits(full.get(id)),
                    "{name}: node {id:?}"
                );
            } else {
                assert!(part.get(id).is_empty(), "{name}: node {id:?} recomputed");
            }
        }
        let loss = bwd.output("loss").expect("loss");
        assert!(stale[loss.index()], "{name} feeds the loss");
        assert_ne!(part.get(loss), base.get(loss), "{name}: the change shows");
    }
}
