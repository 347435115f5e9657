//! The evaluation graph: dropout becomes the identity and BatchNorm normalises
//! with its running statistics.

use crate::error::Result;
use crate::graph::Graph;
use crate::ids::NodeId;
use crate::op::Op;

pub fn evaluation(fwd: &Graph) -> Result<Graph> {
    let mut g = fwd.empty_like();
    let mut map: Vec<NodeId> = Vec::with_capacity(fwd.nodes.len());
    for id in fwd.ids() {
        let n = fwd.node(id);
        let inputs: Vec<NodeId> = n.inputs.iter().map(|i| map[i.index()]).collect();
        let new = match &n.op {
            Op::Dropout(_) => inputs[0],
            Op::BnMean { running, .. } | Op::BnVar { running, .. } => g.param_node(*running),
            op if op.arity() == 0 => {
                g.push_typed(&n.name, op.clone(), vec![], n.ty.clone(), None)?
            }
            op => g.push(&n.name, op.clone(), inputs, n.origin.clone())?,
        };
        map.push(new);
    }
    g.outputs = fwd
        .outputs
        .iter()
        .map(|(k, id)| (k.clone(), map[id.index()]))
        .collect();
    g.layers = fwd
        .layers
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.output = map[l.output.index()];
            l
        })
        .collect();
    Ok(crate::dce::eliminate_dead(&g))
}
