//! Graphviz DOT export: one box per node labelled with name, op and type.

use std::fmt::Write;

use crate::graph::Graph;
use crate::op::Op;

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn graph_dot(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", quote(&g.name));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    for id in g.ids() {
        let n = g.node(id);
        let style = match n.op {
            Op::Param(_) => ", style=filled, fillcolor=\"#eeeeee\"",
            Op::Image | Op::Labels { .. } => ", shape=oval",
            Op::Dropout(_) | Op::Mask(_) => ", style=filled, fillcolor=\"#ffe8b0\"",
            _ if n.origin.is_some() => ", style=filled, fillcolor=\"#dde8ff\"",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\\n{} {}\"{style}];",
            id.0,
            quote(&n.name),
            n.op.name(),
            n.ty
        );
        for i in &n.inputs {
            let _ = writeln!(out, "  n{} -> n{};", i.0, id.0);
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(
            out,
            "  out_{0} [label=\"{0}\", shape=plaintext];\n  n{1} -> out_{0};",
            quote(name),
            id.0
        );
    }
    out.push_str("}\n");
    out
}
