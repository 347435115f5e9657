//! What the training loop needs from an executor: one training step, one
//! evaluation batch, and the parameters and momentum buffers in and out.
//!
//! Two executors implement it: [`InterpreterEngine`] (the reference interpreter
//! of `dropjit_graph::interp`, in f32) and [`JitEngine`](crate::jit_engine::JitEngine),
//! the Cranelift JIT of `dropjit-codegen` and the default. The loop holds a
//! `&mut dyn Engine` and never knows which.

use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::interp::{self, Inputs, State};
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::{Graph, GraphError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Inputs or state that do not fit the compiled graph.
    #[error("{0}")]
    Invalid(String),
    /// The engine cannot be built on this machine or in this build.
    #[error("engine '{engine}' is not available: {reason}")]
    Unavailable {
        engine: &'static str,
        reason: String,
    },
}

/// A compiled model: the training step (forward + backward + SGD + BatchNorm
/// running statistics, in place) and the evaluation forward pass.
///
/// Contract shared by every engine (`shared/docs/dropout-semantics.md`):
/// the dropout masks of `train_step` are a pure function of (run seed, `step`,
/// site), where `step` is the global iteration number; the SGD rule is
/// PyTorch's `g = grad + wd·w; v = μ·v + g; w -= lr·lr_mult·v`.
pub trait Engine {
    /// One training step on a batch (`images` `[n, C, H, W]` flat, `labels` `[n]`):
    /// forward + backward + SGD (+ BatchNorm running statistics), in place.
    /// Returns (mean loss, logits `[n * classes]`).
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        step: u64,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), EngineError>;
    /// Evaluation forward (dropout is the identity, BatchNorm uses its running
    /// statistics): (mean loss, logits `[n * classes]`).
    fn eval_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
    ) -> Result<(f32, Vec<f32>), EngineError>;
    /// Every parameter and state tensor, by `ParamId`.
    fn params(&self) -> Vec<Vec<f32>>;
    /// SGD momentum buffers by `ParamId` (empty for non-trainable tensors).
    fn momentum(&self) -> Vec<Vec<f32>>;
    /// Replaces parameters and momentum buffers (both by `ParamId`).
    fn set_state(&mut self, params: &[Vec<f32>], momentum: &[Vec<f32>]) -> Result<(), EngineError>;
}

/// Which executor runs the model (`--engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The Cranelift JIT (`dropjit-codegen`).
    Jit,
    /// The reference interpreter in f32: slow, exact, always available.
    Interp,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Jit => "jit",
            EngineKind::Interp => "interp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [EngineKind::Jit, EngineKind::Interp]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// Everything an engine is built from.
pub struct EngineSpec<'a> {
    /// The forward graph as loaded from the model file.
    pub graph: &'a Graph,
    pub dropout: DropoutConfig,
    pub sgd: SgdConfig,
    /// Run seed: the dropout masks are a function of it.
    pub seed: u64,
    /// Worker threads (the interpreter runs on one).
    pub threads: usize,
    /// Initial parameters by `ParamId`; momentum starts at zero.
    pub params: Vec<Vec<f32>>,
}

/// Builds the engine of `kind`: the one place that knows every engine.
pub fn create(kind: EngineKind, spec: EngineSpec<'_>) -> Result<Box<dyn Engine>, EngineError> {
    match kind {
        EngineKind::Interp => Ok(Box::new(InterpreterEngine::new(spec)?)),
        EngineKind::Jit => Ok(Box::new(crate::jit_engine::JitEngine::new(spec)?)),
    }
}

/// The reference interpreter as an engine, in f32.
pub struct InterpreterEngine {
    step: Graph,
    eval: Graph,
    state: State<f32>,
    seed: u64,
}

impl InterpreterEngine {
    pub fn new(spec: EngineSpec<'_>) -> Result<Self, EngineError> {
        let g = spec.graph;
        let step = training_step(g, &spec.dropout, &spec.sgd)?;
        let eval = dropjit_graph::eval::evaluation(g)?;
        check_params(g, &spec.params)?;
        let state = State::new(g, &spec.params);
        Ok(InterpreterEngine {
            step,
            eval,
            state,
            seed: spec.seed,
        })
    }

    fn run(
        &mut self,
        train: bool,
        images: &[f32],
        labels: &[u32],
        step: u64,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), EngineError> {
        let g = if train { &self.step } else { &self.eval };
        let inputs = Inputs {
            images,
            labels,
            batch: labels.len(),
            seed: self.seed,
            step,
            lr: lr as f64,
        };
        let values = interp::run(g, &mut self.state, &inputs)?;
        let output = |name: &str| {
            values
                .output(g, name)
                .ok_or_else(|| EngineError::Invalid(format!("graph has no '{name}' output")))
        };
        let loss = output("loss")?.first().copied().unwrap_or(f32::NAN);
        Ok((loss, output("logits")?.to_vec()))
    }
}

impl Engine for InterpreterEngine {
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        step: u64,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), EngineError> {
        self.run(true, images, labels, step, lr)
    }

    fn eval_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
    ) -> Result<(f32, Vec<f32>), EngineError> {
        self.run(false, images, labels, 0, 0.0)
    }

    fn params(&self) -> Vec<Vec<f32>> {
        self.state.params.clone()
    }

    fn momentum(&self) -> Vec<Vec<f32>> {
        self.state.momentum.clone()
    }

    fn set_state(&mut self, params: &[Vec<f32>], momentum: &[Vec<f32>]) -> Result<(), EngineError> {
        check_params(&self.step, params)?;
        check_momentum(&self.step, momentum)?;
        self.state.params = params.to_vec();
        self.state.momentum = momentum.to_vec();
        Ok(())
    }
}

/// Every tensor of `g` present with its element count.
pub fn check_params(g: &Graph, params: &[Vec<f32>]) -> Result<(), EngineError> {
    check_tensors(g, params, "parameter", |p| p.elems())
}

/// A momentum buffer for every trainable tensor, none for the others.
pub fn check_momentum(g: &Graph, momentum: &[Vec<f32>]) -> Result<(), EngineError> {
    check_tensors(g, momentum, "momentum", |p| {
        if p.trainable {
            p.elems()
        } else {
            0
        }
    })
}

/// One vector per tensor of `g`, each of the length `want` gives.
fn check_tensors(
    g: &Graph,
    values: &[Vec<f32>],
    what: &str,
    want: impl Fn(&dropjit_graph::Param) -> usize,
) -> Result<(), EngineError> {
    if values.len() != g.params.len() {
        return Err(EngineError::Invalid(format!(
            "{} {what} tensors given, model {} has {}",
            values.len(),
            g.name,
            g.params.len()
        )));
    }
    for (p, v) in g.params.iter().zip(values) {
        if v.len() != want(p) {
            return Err(EngineError::Invalid(format!(
                "{what} of {} has {} values, expected {}",
                p.name,
                v.len(),
                want(p)
            )));
        }
    }
    Ok(())
}
