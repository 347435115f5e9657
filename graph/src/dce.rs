//! Dead-node elimination: keeps what the outputs and the effect nodes
//! (parameter updates) need, plus the image and label leaves the executors bind,
//! and renumbers the rest in the same order.

use crate::graph::Graph;
use crate::ids::NodeId;
use crate::op::Op;

pub fn eliminate_dead(g: &Graph) -> Graph {
    let mut live = vec![false; g.nodes.len()];
    for (_, id) in &g.outputs {
        live[id.index()] = true;
    }
    for id in g.ids() {
        let op = &g.node(id).op;
        if op.is_effect() || matches!(op, Op::Image | Op::Labels { .. }) {
            live[id.index()] = true;
        }
    }
    for id in g.ids().rev() {
        if live[id.index()] {
            for i in &g.node(id).inputs {
                live[i.index()] = true;
            }
        }
    }
    let mut out = g.empty_like();
    let mut map = vec![None; g.nodes.len()];
    for id in g.ids() {
        if !live[id.index()] {
            continue;
        }
        let mut n = g.node(id).clone();
        n.inputs = n
            .inputs
            .iter()
            .map(|i| map[i.index()].expect("inputs precede users"))
            .collect();
        map[id.index()] = Some(NodeId::from_index(out.nodes.len()));
        out.nodes.push(n);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), map[id.index()].expect("outputs are live")))
        .collect();
    // A layer whose output died (e.g. a dropout that became identity) points at
    // nothing in this graph; keep only those still present.
    out.layers = g
        .layers
        .iter()
        .filter_map(|l| {
            map[l.output.index()].map(|o| {
                let mut l = l.clone();
                l.output = o;
                l
            })
        })
        .collect();
    out
}
