//! `dropjit info`: parameter and multiply-add counts, per layer and in total.

use std::fmt::Write;

use crate::graph::Graph;

/// Formats an integer with thousands separators, `269,722`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn info_text(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "model {}", g.name);
    let _ = writeln!(
        out,
        "{:<22} {:<22} {:<16} {:>10} {:>14}",
        "layer", "op", "output", "params", "MACs/image"
    );
    for l in &g.layers {
        let params: usize = l
            .params
            .iter()
            .map(|&p| g.param(p))
            .filter(|p| p.trainable)
            .map(|p| p.elems())
            .sum();
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:<16} {:>10} {:>14}",
            l.name,
            l.op,
            g.node(l.output).ty.to_string(),
            thousands(params as u64),
            thousands(l.macs)
        );
    }
    let state: usize = g
        .params
        .iter()
        .filter(|p| !p.trainable)
        .map(|p| p.elems())
        .sum();
    let _ = writeln!(
        out,
        "parameters: {} trainable ({} state values: BatchNorm running statistics)",
        thousands(g.trainable_param_count() as u64),
        thousands(state as u64)
    );
    let _ = writeln!(
        out,
        "multiply-adds per image (forward): {}",
        thousands(g.macs_per_image())
    );
    let _ = writeln!(out, "dropout sites: {}", g.sites.len());
    out
}
