//! The Cranelift JIT as an engine: the step and evaluation graphs compiled
//! once per batch size, sharing one state vector (parameters, momentum, lr).

use std::collections::HashMap;

use dropjit_codegen::{compile, step_keys, CompileOptions, CompiledGraph, StateLayout};
use dropjit_graph::eval::evaluation;
use dropjit_graph::step::training_step;
use dropjit_graph::Graph;

use crate::engine::{check_momentum, check_params, Engine, EngineError, EngineSpec};

pub struct JitEngine {
    forward: Graph,
    step_graph: Graph,
    eval_graph: Graph,
    layout: StateLayout,
    state: Vec<f32>,
    steps: HashMap<usize, CompiledGraph>,
    evals: HashMap<usize, CompiledGraph>,
    seed: u64,
    threads: usize,
}

fn codegen(e: dropjit_codegen::CodegenError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

impl JitEngine {
    pub fn new(spec: EngineSpec<'_>) -> Result<Self, EngineError> {
        let g = spec.graph;
        check_params(g, &spec.params)?;
        let layout = StateLayout::new(g);
        let state = layout.pack(&spec.params);
        Ok(JitEngine {
            forward: g.clone(),
            step_graph: training_step(g, &spec.dropout, &spec.sgd)?,
            eval_graph: evaluation(g)?,
            layout,
            state,
            steps: HashMap::new(),
            evals: HashMap::new(),
            seed: spec.seed,
            threads: spec.threads.max(1),
        })
    }

    /// The compiled step for `batch` images (compiled on first use).
    pub fn step_program(&mut self, batch: usize) -> Result<&CompiledGraph, EngineError> {
        if !self.steps.contains_key(&batch) {
            let c = compile(
                &self.step_graph,
                batch,
                &self.layout,
                CompileOptions::default(),
            )
            .map_err(codegen)?;
            self.steps.insert(batch, c);
        }
        Ok(&self.steps[&batch])
    }

    /// The compiled evaluation pass for `batch` images (compiled on first use).
    pub fn eval_program(&mut self, batch: usize) -> Result<&CompiledGraph, EngineError> {
        if !self.evals.contains_key(&batch) {
            let c = compile(
                &self.eval_graph,
                batch,
                &self.layout,
                CompileOptions::default(),
            )
            .map_err(codegen)?;
            self.evals.insert(batch, c);
        }
        Ok(&self.evals[&batch])
    }

    /// Mutable access to a compiled step, e.g. to switch on profiling.
    pub fn step_program_mut(&mut self, batch: usize) -> Option<&mut CompiledGraph> {
        self.steps.get_mut(&batch)
    }

    fn batch_of(&self, images: &[f32], labels: &[u32]) -> Result<usize, EngineError> {
        let per: usize = self.forward.image_dims().map_or(0, |d| d.iter().product());
        if labels.is_empty() || images.len() != labels.len() * per {
            return Err(EngineError::Invalid(format!(
                "{} image values for {} labels (expected {per} per image)",
                images.len(),
                labels.len()
            )));
        }
        // The loss kernels clamp labels to stay in bounds; a wrong label is
        // still an error the caller must hear about.
        let classes = self.forward.classes().unwrap_or(0);
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(EngineError::Invalid(format!(
                "label {l} of item {i} is out of range for {classes} classes"
            )));
        }
        Ok(labels.len())
    }

    fn outputs(c: &CompiledGraph) -> (f32, Vec<f32>) {
        (
            c.output("loss").expect("loss output")[0],
            c.output("logits").expect("logits output").to_vec(),
        )
    }
}

impl Engine for JitEngine {
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        step: u64,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), EngineError> {
        let n = self.batch_of(images, labels)?;
        self.step_program(n)?;
        self.state[self.layout.lr] = lr;
        let keys = step_keys(self.forward.sites.len(), self.seed, step);
        let c = self.steps.get_mut(&n).expect("compiled above");
        c.run(&mut self.state, images, labels, &keys, self.threads)
            .map_err(codegen)?;
        Ok(Self::outputs(c))
    }

    fn eval_batch(
        &mut self,
        images: &[f32],
        labels: &[u32],
    ) -> Result<(f32, Vec<f32>), EngineError> {
        let n = self.batch_of(images, labels)?;
        if !self.evals.contains_key(&n) {
            let c = compile(&self.eval_graph, n, &self.layout, CompileOptions::default())
                .map_err(codegen)?;
            self.evals.insert(n, c);
        }
        let c = self.evals.get_mut(&n).expect("compiled above");
        c.run(&mut self.state, images, labels, &[], self.threads)
            .map_err(codegen)?;
        Ok(Self::outputs(c))
    }

    fn params(&self) -> Vec<Vec<f32>> {
        self.layout
            .params
            .iter()
            .map(|&(o, n)| self.state[o..o + n].to_vec())
            .collect()
    }

    fn momentum(&self) -> Vec<Vec<f32>> {
        self.layout
            .momentum
            .iter()
            .map(|m| m.map_or_else(Vec::new, |(o, n)| self.state[o..o + n].to_vec()))
            .collect()
    }

    fn set_state(&mut self, params: &[Vec<f32>], momentum: &[Vec<f32>]) -> Result<(), EngineError> {
        check_params(&self.forward, params)?;
        check_momentum(&self.forward, momentum)?;
        for (&(o, n), v) in self.layout.params.iter().zip(params) {
            self.state[o..o + n].copy_from_slice(v);
        }
        for (m, v) in self.layout.momentum.iter().zip(momentum) {
            if let Some((o, n)) = *m {
                self.state[o..o + n].copy_from_slice(v);
            }
        }
        Ok(())
    }
}
