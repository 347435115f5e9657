//! Small graphs written in the model format, for the pass and oracle tests.

#![allow(dead_code)]

use dropjit_graph::{parse, Graph, GraphLoadOptions};

/// A graph with an image input of `image` dims, the given layer JSON objects,
/// and `loss` / `logits` outputs.
pub fn graph(image: [usize; 3], classes: usize, nodes: &str, logits: &str) -> Graph {
    let text = format!(
        r#"{{"format": "dropjit-graph/1", "name": "t",
            "inputs": [{{"name": "image", "kind": "image", "shape": {image:?}}},
                       {{"name": "label", "kind": "label", "classes": {classes}}}],
            "nodes": [{nodes},
                      {{"name": "loss", "op": "softmax_cross_entropy", "inputs": ["{logits}", "label"]}}],
            "outputs": {{"loss": "loss", "logits": "{logits}"}}}}"#
    );
    parse(&text, "test graph", GraphLoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}
