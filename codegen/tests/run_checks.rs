//! `CompiledGraph::run` is safe to call with anything: the lengths the
//! generated code relies on (state, mask key table, batch) are checked first.

use dropjit_codegen::{compile, step_keys, CompileOptions, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::random_batch;
use dropjit_graph::init::generic_point;
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{DropoutMode, GraphLoadOptions};

#[test]
fn short_state_keys_or_batch_are_errors_not_wild_reads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/conv_bn_drop_linear.json");
    let g = dropjit_graph::load(&path, GraphLoadOptions::default()).expect("fixture loads");
    let cfg = DropoutConfig {
        mode: DropoutMode::Augmented,
        fwd: 0.2,
        bwd: 0.1,
    };
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let step = training_step(&g, &cfg, &sgd).expect("step graph");
    let layout = StateLayout::new(&g);
    let mut prog = compile(&step, 2, &layout, CompileOptions::default()).expect("compiles");
    let mut state = layout.pack(&generic_point(&g, 1));
    let (images, labels) = random_batch(&g, 2, 5);
    let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
    let keys = step_keys(step.sites.len(), 1, 0);
    assert!(!keys.is_empty(), "the fixture has a dropout site");

    let err = prog
        .run(&mut state, &images, &labels, &keys[..keys.len() - 1], 1)
        .expect_err("short key table");
    assert!(err.to_string().contains("mask keys"), "{err}");
    let err = prog
        .run(&mut state[..layout.len - 1], &images, &labels, &keys, 1)
        .expect_err("short state");
    assert!(err.to_string().contains("state of"), "{err}");
    let err = prog
        .run(&mut state, &images[1..], &labels, &keys, 1)
        .expect_err("short batch");
    assert!(err.to_string().contains("does not fit"), "{err}");
    prog.run(&mut state, &images, &labels, &keys, 1)
        .expect("the right lengths run");
    assert!(prog.output("loss").expect("loss")[0].is_finite());
}
