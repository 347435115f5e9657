//! Finite-difference check (f64) of both shipped models on a tiny batch in
//! plain mode: every trainable parameter, relative error below 1e-6.

use dropjit_graph::gradcheck::{grad_check, GradCheckOptions};
use dropjit_graph::init::generic_point;

fn check(model: &str, samples: usize) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{model}.json"));
    let g = dropjit_graph::load(&path, Default::default()).expect("model loads");
    let opts = GradCheckOptions {
        batch: 2,
        samples,
        ..GradCheckOptions::default()
    };
    let report = grad_check(&g, &generic_point(&g, 1), &opts).expect("gradcheck runs");
    assert_eq!(report.params.len(), g.trainable_params().count());
    assert!(report.worst() < 1e-6, "{}", report.table());
}

#[test]
fn convnet_quick() {
    check("convnet_quick", 3);
}

#[test]
fn resnet20() {
    check("resnet20", 2);
}
