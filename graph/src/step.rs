//! The training step as one graph: forward + backward + SGD update of every
//! trainable parameter + BatchNorm running-statistics update, so that the whole
//! step can be compiled at once.

use crate::autodiff::{backward, grad_output};
use crate::dropout::DropoutConfig;
use crate::error::{GraphError, Result};
use crate::graph::Graph;
use crate::op::Op;

/// Optimiser constants baked into the step (the learning rate is a runtime input).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
}

impl SgdConfig {
    pub fn from_recipe(g: &Graph) -> SgdConfig {
        SgdConfig {
            momentum: g.recipe.momentum as f32,
            weight_decay: g.recipe.weight_decay as f32,
        }
    }
}

pub fn training_step(fwd: &Graph, dropout: &DropoutConfig, sgd: &SgdConfig) -> Result<Graph> {
    let mut g = backward(fwd, dropout)?;
    for p in fwd.trainable_params() {
        let param = fwd.param(p);
        let grad = g.output(&grad_output(&param.name)).ok_or_else(|| {
            GraphError::graph(format!("no gradient for parameter {}", param.name))
        })?;
        let op = Op::SgdUpdate {
            param: p,
            lr_mult: param.lr_mult,
            weight_decay: sgd.weight_decay * param.decay_mult,
            momentum: sgd.momentum,
        };
        g.push(
            format!("{}.sgd", param.name),
            op,
            vec![grad],
            Some(param.name.clone()),
        )?;
    }
    // Running statistics follow the forward pass's batch statistics only, not
    // those the backward pass recomputes on a substituted input (autodiff).
    let forward_stats: std::collections::HashSet<&str> = fwd
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BnMean { .. } | Op::BnVar { .. }))
        .map(|n| n.name.as_str())
        .collect();
    for id in g.ids().collect::<Vec<_>>() {
        let n = g.node(id);
        if !forward_stats.contains(n.name.as_str()) {
            continue;
        }
        let (running, momentum, unbiased) = match n.op {
            Op::BnMean { running, momentum } => (running, momentum, false),
            Op::BnVar { running, momentum } => (running, momentum, true),
            _ => continue,
        };
        let name = format!("{}.update", g.param(running).name);
        let origin = Some(n.name.clone());
        g.push(
            name,
            Op::BnRunningUpdate {
                running,
                momentum,
                unbiased,
            },
            vec![id],
            origin,
        )?;
    }
    g.outputs
        .retain(|(name, _)| name == "loss" || name == "logits");
    Ok(crate::dce::eliminate_dead(&g))
}
