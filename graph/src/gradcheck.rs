//! Finite-difference check of derived gradients, in f64 with the reference
//! interpreter: central differences of the loss against the backward graph's
//! gradients, on a sample of elements of every trainable parameter.

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::autodiff::{backward, grad_output};
use crate::dropout::DropoutConfig;
use crate::error::{GraphError, Result};
use crate::graph::Graph;
use crate::interp::{run, Inputs, State};

/// Gradient norms below this are compared absolutely (see `ParamCheck::rel_error`).
pub const ABS_FLOOR: f64 = 1e-4;

#[derive(Clone, Debug)]
pub struct ParamCheck {
    pub name: String,
    pub elems: usize,
    pub sampled: usize,
    /// Elements skipped because a kink lay within the finite-difference step.
    pub kinks: usize,
    /// `‖fd − ad‖ / max(‖fd‖, ‖ad‖, 1e-4)` over the sampled elements.
    pub rel_error: f64,
    /// Largest `|ad|` among the sampled elements, to show the check is not vacuous.
    pub max_abs_grad: f64,
}

#[derive(Clone, Debug)]
pub struct GradCheckReport {
    pub loss: f64,
    pub params: Vec<ParamCheck>,
}

impl GradCheckReport {
    pub fn worst(&self) -> f64 {
        self.params.iter().map(|p| p.rel_error).fold(0.0, f64::max)
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<32} {:>9} {:>8} {:>6} {:>12} {:>12}\n",
            "parameter", "elements", "sampled", "kinks", "max |grad|", "rel. error"
        );
        for p in &self.params {
            s += &format!(
                "{:<32} {:>9} {:>8} {:>6} {:>12.3e} {:>12.3e}\n",
                p.name, p.elems, p.sampled, p.kinks, p.max_abs_grad, p.rel_error
            );
        }
        s
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GradCheckOptions {
    pub batch: usize,
    pub seed: u64,
    /// Elements sampled per parameter (all of them when it has fewer).
    pub samples: usize,
    pub step_size: f64,
    pub dropout: DropoutConfig,
    /// Worker threads (each evaluates different parameters).
    pub threads: usize,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions {
            batch: 2,
            seed: 0,
            samples: 4,
            step_size: 1e-6,
            dropout: DropoutConfig::PLAIN,
            threads: 2,
        }
    }
}

/// Random images (standard normal-ish) and labels for a check.
pub fn random_batch(g: &Graph, batch: usize, seed: u64) -> (Vec<f64>, Vec<u32>) {
    let mut rng = Pcg64::seed_from_u64(seed ^ 0xBA7C);
    let per: usize = g.image_dims().map(|d| d.iter().product()).unwrap_or(0);
    let classes = g.classes().unwrap_or(1) as u64;
    let u = |rng: &mut Pcg64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let images = (0..batch * per).map(|_| 2.0 * u(&mut rng) - 1.0).collect();
    let labels = (0..batch)
        .map(|_| (rng.next_u64() % classes) as u32)
        .collect();
    (images, labels)
}

/// Checks every trainable parameter's gradient of `fwd` with `params` as the point.
/// The dropout setting must give `F = B` (plain or standard) for the derived
/// gradient to be the true gradient of the computed loss.
pub fn grad_check(
    fwd: &Graph,
    params: &[Vec<f32>],
    opts: &GradCheckOptions,
) -> Result<GradCheckReport> {
    let bwd = backward(fwd, &opts.dropout)?;
    // Before the random batch is made: it and every value must fit the limit.
    crate::interp::check_interpreter_memory::<f64>(&bwd, opts.batch)?;
    let mut loss_graph = bwd.clone();
    loss_graph.outputs.retain(|(n, _)| n == "loss");
    let loss_graph = crate::dce::eliminate_dead(&loss_graph);
    let (images, labels) = random_batch(fwd, opts.batch, opts.seed);
    let inputs = Inputs {
        images: &images,
        labels: &labels,
        batch: opts.batch,
        seed: opts.seed,
        step: 0,
        lr: 0.0,
    };
    let base = State::<f64>::new(fwd, params);
    let mut state = base.clone();
    let values = run(&bwd, &mut state, &inputs)?;
    let loss = values
        .output(&bwd, "loss")
        .ok_or_else(|| GraphError::graph("no loss"))?[0];
    let loss_at = |state: &State<f64>| -> Result<f64> {
        let mut s = state.clone();
        Ok(run(&loss_graph, &mut s, &inputs)?
            .output(&loss_graph, "loss")
            .expect("loss output")[0])
    };
    let jobs: Vec<(usize, Vec<f64>)> = fwd
        .trainable_params()
        .map(|p| {
            let grad = values
                .output(&bwd, &grad_output(&fwd.param(p).name))
                .expect("backward graph has every gradient")
                .to_vec();
            (p.index(), grad)
        })
        .collect();
    let check = |(p, grad): &(usize, Vec<f64>)| -> Result<ParamCheck> {
        let n = grad.len();
        let mut rng = Pcg64::seed_from_u64(opts.seed ^ (*p as u64 + 1));
        // All elements of small tensors; otherwise random ones. An element whose
        // difference quotients at h and h/2 disagree has a ReLU or max-pool kink
        // within h: its quotient says nothing about the derivative, so it is
        // replaced by another (a wrong rule shows at both step sizes alike).
        let all = n <= opts.samples;
        let mut candidates: Vec<usize> = if all {
            (0..n).collect()
        } else {
            (0..opts.samples * 4)
                .map(|_| (rng.next_u64() % n as u64) as usize)
                .collect()
        };
        candidates.reverse();
        let (mut diff, mut nfd, mut nad, mut maxg) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let (mut used, mut kinks) = (0usize, 0usize);
        let quotient = |i: usize, h: f64| -> Result<f64> {
            let mut s = base.clone();
            let w = s.params[*p][i];
            s.params[*p][i] = w + h;
            let up = loss_at(&s)?;
            s.params[*p][i] = w - h;
            let down = loss_at(&s)?;
            Ok((up - down) / (2.0 * h))
        };
        while used < opts.samples.min(n) {
            let Some(i) = candidates.pop() else { break };
            let fd = quotient(i, opts.step_size)?;
            let fd_half = quotient(i, opts.step_size / 2.0)?;
            // Without a kink the two agree to rounding (~1e-10 absolute) plus
            // truncation (~h² f'''); a kink makes the error depend on h.
            if (fd - fd_half).abs() > 1e-6 * fd.abs().max(fd_half.abs()) + 1e-9 {
                kinks += 1;
                continue;
            }
            diff += (fd - grad[i]).powi(2);
            nfd += fd * fd;
            nad += grad[i] * grad[i];
            maxg = maxg.max(grad[i].abs());
            used += 1;
        }
        // Floor: a gradient that is truly zero (a bias before BatchNorm) has
        // difference quotients of pure rounding noise, ~1e-10.
        let denom = nfd.sqrt().max(nad.sqrt()).max(ABS_FLOOR);
        Ok(ParamCheck {
            name: fwd.params[*p].name.clone(),
            elems: n,
            sampled: used,
            kinks,
            rel_error: diff.sqrt() / denom,
            max_abs_grad: maxg,
        })
    };
    let threads = opts.threads.max(1);
    let results: Vec<Result<ParamCheck>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let jobs = &jobs;
                let check = &check;
                scope.spawn(move || {
                    jobs.iter()
                        .skip(t)
                        .step_by(threads)
                        .map(check)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut per_thread: Vec<std::vec::IntoIter<Result<ParamCheck>>> = handles
            .into_iter()
            .map(|h| h.join().expect("gradcheck worker").into_iter())
            .collect();
        // Re-interleave into parameter order.
        (0..jobs.len())
            .map(|i| per_thread[i % threads].next().expect("one result per job"))
            .collect()
    });
    Ok(GradCheckReport {
        loss,
        params: results.into_iter().collect::<Result<_>>()?,
    })
}
