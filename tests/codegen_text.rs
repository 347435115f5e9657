//! Snapshots of what the code generator emits: the fusion and memory plan of
//! both models, and the Cranelift IR of a small graph's training step and
//! evaluation pass, built for a fixed x86-64 target so the text does not
//! depend on the host. Fusion decisions are asserted, not only snapshotted.

use dropjit_codegen::{clif_text, plan_text, ConvIsa, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::eval::evaluation;
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{DropoutMode, Graph, GraphLoadOptions};
use dropjit_tests::repo_root;

fn model(path: &str) -> Graph {
    dropjit_graph::load(&repo_root().join(path), GraphLoadOptions::default()).expect("model loads")
}

const AUGMENTED: DropoutConfig = DropoutConfig {
    mode: DropoutMode::Augmented,
    fwd: 0.2,
    bwd: 0.0001,
};

fn step(g: &Graph) -> Graph {
    training_step(g, &AUGMENTED, &SgdConfig::from_recipe(g)).expect("step graph")
}

#[test]
fn plans_of_both_models() {
    for name in ["convnet_quick", "resnet20"] {
        let g = model(&format!("models/{name}.json"));
        // The plan names the instruction set: fixed here, so the text is the same
        // on every machine (nothing runs).
        let plan = plan_text(&step(&g), 8, &StateLayout::new(&g), ConvIsa::Avx512).expect("plan");
        insta::assert_snapshot!(format!("{name}_step_plan"), plan);
        // A mask read only by the next convolution (F ⊙ x) and its weight
        // gradient (B ⊙ x) is applied as they prepare each image: the masked
        // tensors are never stored.
        let masked = |conv: &str| {
            plan.lines().any(|l| {
                l.contains("conv Forward")
                    && l.contains("input masked as prepared (1 factor(s)")
                    && l.contains(&format!("; {conv} "))
            }) && plan.lines().any(|l| {
                l.contains("conv GradWeight")
                    && l.contains("input masked as prepared (2 factor(s)")
                    && l.ends_with(&format!("; {conv}.grad_weight"))
            })
        };
        if name == "resnet20" {
            assert!(!plan.contains(".saved"), "{plan}");
            assert!(plan.contains("; layer1.0.bn1 layer1.0.relu1\n"), "{plan}");
            assert!(masked("layer1.0.conv2"), "{plan}");
            assert!(!plan.contains("layer1.0.drop\n"), "{plan}");
            // The mask's gradient B ⊙ dx is applied by the input-gradient
            // launch as it finishes each image; the ReLU gradient's loop reads
            // the masked result.
            assert!(
                plan.lines().any(|l| l.contains("conv GradInput")
                    && l.contains("output masked as stored (2 factor(s)")
                    && l.ends_with("; layer1.0.conv2.grad_input layer1.0.drop.grad_input")),
                "{plan}"
            );
            assert!(plan.contains("; layer1.0.relu1.grad_input\n"), "{plan}");
            // ... and records B for the weight gradient, which reads it.
            assert!(
                plan.lines().any(|l| l.contains("conv GradInput")
                    && l.contains("kept bytes written")
                    && l.ends_with("; layer1.0.conv2.grad_input layer1.0.drop.grad_input")),
                "{plan}"
            );
            assert!(
                plan.lines().any(|l| l.contains("conv GradWeight")
                    && l.contains("kept bytes read")
                    && l.ends_with("; layer1.0.conv2.grad_weight")),
                "{plan}"
            );
            // Every convolution followed by BatchNorm takes its statistics
            // while it writes its output: no reduction reads it again.
            let fused = plan
                .lines()
                .filter(|l| l.contains("conv Forward") && l.contains(".mean") && l.contains(".var"))
                .count();
            assert_eq!(
                fused, 19,
                "statistics fused into the 19 convolutions: {plan}"
            );
            assert!(!plan.contains("; layer1.0.bn1.mean\n"), "{plan}");
            assert!(plan.contains("direct avx512"), "{plan}");
            // The 3x3 stride-1 layers' forward and input-gradient passes run
            // Winograd (the first layer's too: 16 outputs); weight gradients
            // and the stride-2 layers stay direct.
            let pass = |prefix: &str, algo: &str| {
                plan.lines().any(|l| l.contains(prefix) && l.contains(algo))
            };
            assert!(
                pass(
                    "conv Forward 16x32x32 -> 16 k3 s1",
                    "winograd F(2x2,3x3) avx512"
                ),
                "{plan}"
            );
            assert!(
                pass(
                    "conv GradInput 64x8x8 -> 64 k3 s1",
                    "winograd F(2x2,3x3) avx512"
                ),
                "{plan}"
            );
            assert!(
                pass("conv Forward 3x32x32 -> 16", "winograd F(2x2,3x3) avx512"),
                "{plan}"
            );
            assert!(
                pass("conv Forward 16x32x32 -> 32 k3 s2", "direct avx512"),
                "{plan}"
            );
            assert!(!pass("conv GradWeight", "winograd"), "{plan}");
        } else {
            assert!(masked("conv2.conv"), "{plan}");
            // The three 5x5 "same" layers run F(2x2, 5x5) forward passes, and
            // conv2's and conv3's input gradients; weight gradients stay direct.
            let winograd = |prefix: &str| {
                plan.lines()
                    .any(|l| l.contains(prefix) && l.contains("winograd F(2x2,5x5) avx512"))
            };
            assert!(winograd("conv Forward 32x16x16 -> 32 k5"), "{plan}");
            assert!(winograd("conv GradInput 32x8x8 -> 64 k5"), "{plan}");
            assert!(winograd("conv Forward 3x32x32 -> 32 k5"), "{plan}");
            assert!(
                !plan
                    .lines()
                    .any(|l| l.contains("conv GradWeight") && l.contains("winograd")),
                "{plan}"
            );
            // drop2 and drop3 feed average pooling: their masks are applied
            // as the pooling reads its input (F ⊙ x forward, B ⊙ x for the
            // backward pass's pooled copy) and as its gradient is stored
            // (B ⊙ dx); no loop hashes a mask, no masked tensor is stored.
            for site in ["2", "3"] {
                let pool = |kind: &str, mask: &str, nodes: &str| {
                    plan.lines().any(|l| {
                        l.contains(&format!("{kind} ")) && l.contains(mask) && l.ends_with(nodes)
                    })
                };
                let fwd = "input masked as read (1 factor(s)";
                let bwd = "input masked as read (2 factor(s)";
                let grad = "output masked as stored (2 factor(s)";
                assert!(pool("avg_pool2d", fwd, &format!("; pool{site}")), "{plan}");
                assert!(
                    pool("avg_pool2d", bwd, &format!("; pool{site}.saved")),
                    "{plan}"
                );
                let nodes = format!("; pool{site}.grad_input drop{site}.grad_input");
                assert!(pool("avg_pool2d_grad", grad, &nodes), "{plan}");
                // B is hashed once in the backward pass: the pooled copy
                // records it, the gradient reads the record.
                let written = "2 factor(s), scale 1.250125, kept bytes written";
                let read = "2 factor(s), scale 1.250125, kept bytes read";
                assert!(
                    pool("avg_pool2d", written, &format!("; pool{site}.saved")),
                    "{plan}"
                );
                assert!(pool("avg_pool2d_grad", read, &nodes), "{plan}");
                assert!(plan.contains(&format!("; relu{site}\n")), "{plan}");
            }
            assert!(!plan.contains(" keys+"), "{plan}");
            assert!(!plan.contains("drop2.saved"), "{plan}");
            // Each convolution adds its bias as it stores its output.
            for conv in ["conv1", "conv2", "conv3"] {
                assert!(plan.contains(&format!("; {conv}.conv {conv}\n")), "{plan}");
            }
        }
    }
}

#[test]
fn clif_of_a_small_graph() {
    let g = model("tests/fixtures/conv_bn_drop_linear.json");
    let layout = StateLayout::new(&g);
    let step_clif = clif_text(&step(&g), 2, &layout).expect("step CLIF");
    insta::assert_snapshot!("small_step_clif", step_clif);
    let eval_clif = clif_text(&evaluation(&g).expect("eval"), 2, &layout).expect("eval CLIF");
    insta::assert_snapshot!("small_eval_clif", eval_clif);
    // Every function says which graph nodes it implements.
    for text in [&step_clif, &eval_clif] {
        for func in text.split("\nfunction ").skip(1) {
            assert!(!func.is_empty());
        }
        assert!(text.starts_with("; "), "{text}");
    }
    assert!(step_clif.contains("; bn relu drop"), "{step_clif}");
}
