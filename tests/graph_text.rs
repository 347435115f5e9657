//! Snapshots of the text forms of the two published models, their headline
//! counts, the DOT export, and the `info` / `compile` commands on them.

use dropjit_graph::autodiff::backward;
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::eval::evaluation;
use dropjit_graph::print::graph_text;
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{DropoutMode, Op};
use dropjit_graph::{Graph, GraphLoadOptions};
use dropjit_tests::repo_root;

fn model(name: &str) -> Graph {
    let path = repo_root().join("models").join(format!("{name}.json"));
    dropjit_graph::load(&path, GraphLoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn resnet20_graph_text() {
    insta::assert_snapshot!(
        "resnet20_graph",
        dropjit_graph::print::graph_text(&model("resnet20"))
    );
}

#[test]
fn convnet_quick_graph_text() {
    insta::assert_snapshot!(
        "convnet_quick_graph",
        dropjit_graph::print::graph_text(&model("convnet_quick"))
    );
}

#[test]
fn resnet20_info_text() {
    insta::assert_snapshot!(
        "resnet20_info",
        dropjit_graph::info::info_text(&model("resnet20"))
    );
}

#[test]
fn convnet_quick_info_text() {
    insta::assert_snapshot!(
        "convnet_quick_info",
        dropjit_graph::info::info_text(&model("convnet_quick"))
    );
}

#[test]
fn published_parameter_and_mac_counts() {
    // He et al. 2016 report 0.27M parameters for ResNet-20; Caffe's
    // cifar10_quick has 145,578 weights and biases.
    let r = model("resnet20");
    assert_eq!(r.trainable_param_count(), 269_722);
    assert_eq!(r.macs_per_image(), 40_551_040);
    let c = model("convnet_quick");
    assert_eq!(c.trainable_param_count(), 145_578);
    assert_eq!(c.macs_per_image(), 12_354_176);
}

fn check_dot(g: &Graph) {
    let dot = dropjit_graph::dot::graph_dot(g);
    assert!(dot.starts_with("digraph "), "{dot}");
    let (mut depth, mut min_depth) = (0i64, 0i64);
    for c in dot.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        min_depth = min_depth.min(depth);
    }
    assert_eq!((depth, min_depth), (0, 0), "unbalanced braces");
    assert!(dot.trim_end().ends_with('}'));
    let edges: usize = g.nodes.iter().map(|n| n.inputs.len()).sum::<usize>() + g.outputs.len();
    assert_eq!(dot.matches("->").count(), edges);
    assert_eq!(
        dot.lines().filter(|l| l.contains("->")).count(),
        edges,
        "one edge a line"
    );
}

#[test]
fn dot_is_well_formed() {
    check_dot(&model("resnet20"));
    check_dot(&model("convnet_quick"));
}

fn augmented() -> DropoutConfig {
    DropoutConfig {
        mode: DropoutMode::Augmented,
        fwd: 0.2,
        bwd: 0.0001,
    }
}

#[test]
fn backward_graphs() {
    // F per site, B ⊙ dy per site, and B ⊙ x for every site: the weight
    // gradient of the first layer with parameters after it reads the site's
    // substituted output (through ConvNet-Quick's average pools and flatten).
    for (name, masks_expected) in [("convnet_quick", 9), ("resnet20", 27)] {
        let g = model(name);
        let plain = backward(&g, &DropoutConfig::PLAIN).expect("backward");
        insta::assert_snapshot!(format!("{name}_backward_plain"), graph_text(&plain));
        let aug = backward(&g, &augmented()).expect("backward");
        insta::assert_snapshot!(format!("{name}_backward_augmented"), graph_text(&aug));
        let masks = |g: &Graph| {
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Mask(_)))
                .count()
        };
        assert_eq!(masks(&plain), 0);
        assert_eq!(masks(&aug), masks_expected);
    }
}

#[test]
fn evaluation_graphs() {
    for name in ["convnet_quick", "resnet20"] {
        let g = model(name);
        let e = evaluation(&g).expect("eval");
        insta::assert_snapshot!(format!("{name}_eval"), graph_text(&e));
        assert!(!e.nodes.iter().any(|n| matches!(
            n.op,
            Op::Dropout(_) | Op::Mask(_) | Op::BnMean { .. } | Op::BnVar { .. }
        )));
    }
}

#[test]
fn step_graph_updates_every_parameter_and_running_statistic() {
    let g = model("resnet20");
    let s = training_step(&g, &augmented(), &SgdConfig::from_recipe(&g)).expect("step");
    let sgd = s
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::SgdUpdate { .. }))
        .count();
    let running = s
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BnRunningUpdate { .. }))
        .count();
    assert_eq!(sgd, g.trainable_params().count());
    assert_eq!(running, 2 * 19);
    // Updates come after every reader of the parameter they write.
    let first_update = s
        .nodes
        .iter()
        .position(|n| n.op.is_effect())
        .expect("updates");
    assert!(s.nodes[first_update..].iter().all(|n| n.op.is_effect()));
}
