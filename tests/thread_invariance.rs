//! A JIT training step gives the same bits whatever the thread count: every
//! parallel split (convolution images, weight-gradient groups, channel
//! reductions, GEMM tiles) writes disjoint outputs or sums a fixed number of
//! partials in a fixed order. Checked on both shipped models in augmented
//! mode (both masks live), on every convolution instruction set this CPU runs,
//! at 1, 2, 3, 4 and 8 threads: updated parameters, momentum, BatchNorm
//! running statistics, loss and logits.

use dropjit_codegen::{step_keys, CompileOptions, ConvIsa};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::random_batch;
use dropjit_graph::init::generic_point;
use dropjit_graph::DropoutMode;
use dropjit_tests::JitStep;

/// The state, loss and logits after two steps at `threads` threads.
fn two_steps(path: &str, batch: usize, isa: ConvIsa, threads: usize) -> Vec<Vec<u32>> {
    let dropout = DropoutConfig {
        mode: DropoutMode::Augmented,
        fwd: 0.2,
        bwd: 0.1,
    };
    let opts = CompileOptions {
        isa: Some(isa),
        ..Default::default()
    };
    let JitStep {
        model: g,
        layout,
        mut jit,
        ..
    } = JitStep::new(path, batch, dropout, opts);
    let mut state = layout.pack(&generic_point(&g, 5));
    state[layout.lr] = 0.05;
    let mut out = Vec::new();
    for k in 0..2u64 {
        let (images, labels) = random_batch(&g, batch, 40 + k);
        let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
        let keys = step_keys(g.sites.len(), 3, k);
        jit.run(&mut state, &images, &labels, &keys, threads)
            .expect("step runs");
        for name in ["loss", "logits"] {
            let v = jit.output(name).expect("output");
            out.push(v.iter().map(|x| x.to_bits()).collect());
        }
    }
    out.push(state.iter().map(|x| x.to_bits()).collect());
    out
}

fn check(path: &str, batch: usize) {
    for isa in ConvIsa::ALL.into_iter().filter(|i| i.available()) {
        let one = two_steps(path, batch, isa, 1);
        for threads in [2, 3, 4, 8] {
            let more = two_steps(path, batch, isa, threads);
            for (i, (a, b)) in one.iter().zip(&more).enumerate() {
                let first = a.iter().zip(b).position(|(x, y)| x != y);
                assert!(
                    a.len() == b.len() && first.is_none(),
                    "{path} {isa}: {threads} threads differ from 1 in result {i} at element {first:?}"
                );
            }
        }
    }
}

#[test]
fn resnet20_step_is_bit_identical_at_any_thread_count() {
    check("models/resnet20.json", 20);
}

#[test]
fn convnet_quick_step_is_bit_identical_at_any_thread_count() {
    check("models/convnet_quick.json", 20);
}
