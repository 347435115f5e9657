//! The stable text form of a graph: one node a line, then the outputs.
//!
//! `%3 = conv2d k=5 s=1 p=2 (%0, %1) : f32[N,32,32,32]  ; conv1.conv`
//! Derived nodes end with `<- origin`, the forward node whose rule made them.

use std::fmt::Write;

use crate::graph::Graph;

pub fn graph_text(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph {} ({} nodes, {} params)",
        g.name,
        g.nodes.len(),
        g.params.len()
    );
    let pname = |p| g.param(p).name.clone();
    for id in g.ids() {
        let n = g.node(id);
        let attrs = n.op.attrs_text(&pname);
        let args: Vec<String> = n.inputs.iter().map(|i| i.to_string()).collect();
        let _ = write!(out, "{id} = {}", n.op.name());
        if !attrs.is_empty() {
            let _ = write!(out, " {attrs}");
        }
        let _ = write!(out, " ({}) : {}  ; {}", args.join(", "), n.ty, n.name);
        if let Some(o) = &n.origin {
            let _ = write!(out, " <- {o}");
        }
        out.push('\n');
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(out, "output {name} = {id}");
    }
    out
}
