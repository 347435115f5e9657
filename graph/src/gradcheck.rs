//! Finite-difference check of derived gradients, in f64 with the reference
//! interpreter: central differences of the loss against the backward graph's
//! gradients, on a sample of elements of every trainable parameter, each
//! element judged against an estimate of its own finite-difference error.
//!
//! # Method
//!
//! For an element `w` the central quotient `D(h) = (L(w+h) − L(w−h)) / 2h`
//! is computed on a ladder of steps `h₀ = max_step, h₀/10, h₀/100, …` down to
//! `min_step` (defaults 1e-4 and 1e-9; the small steps are for elements near a
//! kink, as at Caffe's tiny initial weights). `D(h)` differs from `∂L/∂w` by
//! truncation (`~h²`, from the curvature), rounding (`~u/h`, `u` the rounding
//! error of the loss, a few ulps of it) and, when a ReLU or max-pool kink lies
//! within `h`, by an amount that does not shrink with `h`. For each pair of
//! neighbouring steps `(h, h/10)` the check takes `fd = D(h/10)` and as its
//! error estimate `noise = |D(h) − D(h/10)| + ulp(L)/(h/10)` (`ulp(L)` =
//! `2⁻⁵² · max(|L|, 1)`): when truncation dominates the
//! difference overstates `fd`'s error a hundredfold, when rounding dominates it
//! *is* `fd`'s rounding error (that of `D(h)` is ten times smaller). The first
//! pair is accepted whose noise is below a tenth of the tolerance relative to
//! `fd` (*resolved*) or whose difference is at the rounding level, at most
//! [`ROUNDING_ULPS`] ulps of the loss over `h/10` (a gradient too small for the
//! quotient to resolve, such as the zero gradient of a bias before BatchNorm).
//! An element accepted at no step has a kink (or worse) at every step: it is
//! counted in `kinks` and replaced by another. (A kink far closer to `w` than
//! both steps of a pair shifts both quotients alike and is not seen: a rare
//! false failure.) Each loss evaluation recomputes only what the perturbed
//! parameter feeds ([`rerun`]).
//!
//! A parameter's error is the largest over its accepted elements of
//! `|fd − ad| / max(S, K·noise / tol)`, with `S = max(‖fd‖, ‖ad‖)` the
//! tensor's gradient scale over those elements and `K` = [`NOISE_MULT`]: an
//! element passes (error `< tol`) when it is within `tol` relative to the
//! tensor's scale or within `K` times its own quotient's estimated error,
//! whichever is larger. So a gradient large enough for the quotients to
//! resolve `tol` is held to relative error `tol`, and one they cannot resolve
//! (a zero gradient) to what they can. A parameter with no accepted element,
//! or with a non-finite value anywhere, has error `+∞`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use crate::autodiff::{backward, grad_output};
use crate::dropout::{resolve_sites, DropoutConfig};
use crate::error::{GraphError, Result};
use crate::graph::Graph;
use crate::ids::ParamId;
use crate::interp::{rerun, run, Inputs, State, Values};
use crate::op::Op;

/// A difference `|fd − ad|` up to this many times the element's estimated
/// finite-difference error is not evidence of a wrong gradient.
pub const NOISE_MULT: f64 = 10.0;

/// Quotients at neighbouring steps that differ by at most this many ulps of the
/// loss (over the smaller step) differ by rounding alone: the element is taken
/// at that step even if its gradient is too small to resolve at the tolerance.
/// The loss's own rounding is one ulp; the margin covers the rounding
/// accumulated in the ops after the perturbed parameter.
pub const ROUNDING_ULPS: f64 = 16.0;

/// An element is resolved when its estimated error is at most this fraction of
/// `tolerance · |fd|`.
pub const RESOLVE_FRACTION: f64 = 0.1;

/// What `gradcheck` says of the modes with `F ≠ B`.
pub const UNCHECKABLE_MODES: &str = "with F != B at a site (forward, backward and augmented \
dropout) the derived update is not the derivative of any loss, so finite differences of a loss \
cannot check it; those modes are checked against an independent PyTorch implementation of the \
paper's per-layer equations (tools/torch_check.py, with the masks written by `dropjit grad \
--masks-out`) and by graph/tests/dropout_modes.rs";

/// One checked element of a parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub index: usize,
    /// Central difference quotient at `step`.
    pub fd: f64,
    /// The derived gradient.
    pub ad: f64,
    /// Estimated error of `fd`.
    pub noise: f64,
    pub step: f64,
}

#[derive(Clone, Debug)]
pub struct ParamCheck {
    pub name: String,
    pub elems: usize,
    /// The accepted elements.
    pub samples: Vec<Sample>,
    /// Elements skipped because the quotients disagreed at every step (a kink).
    pub kinks: usize,
    /// `‖fd − ad‖ / max(‖fd‖, ‖ad‖)`.
    pub rel_diff: f64,
    /// `NOISE_MULT · max noise / max(‖fd‖, ‖ad‖)`: the relative difference
    /// the noisiest sample's quotient cannot tell from zero.
    pub resolution: f64,
    /// The judged error (module docs): below the tolerance is a pass; `+∞`
    /// without samples or with a non-finite value.
    pub error: f64,
    /// Largest `|ad|` among the samples, to show the check is not vacuous.
    pub max_abs_grad: f64,
}

impl ParamCheck {
    /// Summarises the samples of one parameter at relative tolerance `tol`.
    pub fn judge(
        name: &str,
        elems: usize,
        samples: Vec<Sample>,
        kinks: usize,
        tol: f64,
    ) -> ParamCheck {
        let norm =
            |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| f(s).powi(2)).sum::<f64>().sqrt();
        let diff = norm(&|s| s.fd - s.ad);
        let scale = norm(&|s| s.fd).max(norm(&|s| s.ad));
        let finite = samples
            .iter()
            .all(|s| s.fd.is_finite() && s.ad.is_finite() && s.noise.is_finite());
        let ratio = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a / b };
        // Each element against the tensor's scale or its own noise.
        let error = if samples.is_empty() || !finite || tol.is_nan() || tol <= 0.0 {
            f64::INFINITY
        } else {
            samples
                .iter()
                .map(|s| ratio((s.fd - s.ad).abs(), scale.max(NOISE_MULT * s.noise / tol)))
                .fold(0.0, nan_max)
        };
        let noisiest = samples.iter().map(|s| s.noise).fold(0.0, nan_max);
        ParamCheck {
            name: name.to_string(),
            elems,
            kinks,
            rel_diff: ratio(diff, scale),
            resolution: ratio(NOISE_MULT * noisiest, scale),
            error: if error.is_nan() { f64::INFINITY } else { error },
            max_abs_grad: samples.iter().map(|s| s.ad.abs()).fold(0.0, nan_max),
            samples,
        }
    }

    /// Largest and smallest step an element was taken at.
    pub fn step_range(&self) -> (f64, f64) {
        let steps = self.samples.iter().map(|s| s.step);
        (
            steps.clone().fold(0.0, f64::max),
            steps.fold(f64::INFINITY, f64::min),
        )
    }
}

/// `max` that propagates NaN (`f64::max` drops it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[derive(Clone, Debug)]
pub struct GradCheckReport {
    pub loss: f64,
    /// The relative tolerance the errors are judged at.
    pub tolerance: f64,
    pub params: Vec<ParamCheck>,
}

impl GradCheckReport {
    /// The largest parameter error; `+∞` when any is NaN or nothing was checked.
    pub fn worst(&self) -> f64 {
        if self.params.is_empty() {
            return f64::INFINITY;
        }
        let w = self.params.iter().map(|p| p.error).fold(0.0, nan_max);
        if w.is_nan() {
            f64::INFINITY
        } else {
            w
        }
    }

    pub fn passed(&self) -> bool {
        self.worst() < self.tolerance
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<32} {:>9} {:>7} {:>5} {:>13} {:>10} {:>10} {:>10} {:>10}\n",
            "parameter",
            "elements",
            "sampled",
            "kinks",
            "steps",
            "max |grad|",
            "rel. diff",
            "resolution",
            "error"
        );
        for p in &self.params {
            let (hi, lo) = p.step_range();
            let steps = if p.samples.is_empty() {
                "-".to_string()
            } else if hi == lo {
                format!("{hi:.0e}")
            } else {
                format!("{lo:.0e}..{hi:.0e}")
            };
            s += &format!(
                "{:<32} {:>9} {:>7} {:>5} {:>13} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}{}\n",
                p.name,
                p.elems,
                p.samples.len(),
                p.kinks,
                steps,
                p.max_abs_grad,
                p.rel_diff,
                p.resolution,
                p.error,
                if p.error < self.tolerance {
                    ""
                } else if p.samples.is_empty() {
                    "  FAILED (no usable element: the quotients disagreed at every step)"
                } else {
                    "  FAILED"
                }
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
    /// The first (largest) step of the ladder; each next step is a tenth.
    pub max_step: f64,
    /// The ladder's last step is the smallest one at least this.
    pub min_step: f64,
    /// Relative tolerance (module docs).
    pub tolerance: f64,
    pub dropout: DropoutConfig,
    /// Worker threads (each evaluates different parameters).
    pub threads: usize,
    /// A line on stderr as each parameter is done (long checks say where they are).
    pub progress: bool,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions {
            batch: 2,
            seed: 0,
            samples: 4,
            max_step: 1e-4,
            min_step: 1e-9,
            tolerance: 1e-6,
            dropout: DropoutConfig::PLAIN,
            threads: 2,
            progress: false,
        }
    }
}

impl GradCheckOptions {
    /// `max_step, max_step/10, …` down to `min_step`.
    pub fn steps(&self) -> Result<Vec<f64>> {
        let (hi, lo) = (self.max_step, self.min_step);
        if !(hi.is_finite() && lo > 0.0 && hi >= 10.0 * lo * (1.0 - 1e-9)) {
            return Err(GraphError::graph(format!(
                "gradcheck needs steps with 0 < min_step <= max_step / 10, got {lo:e} and {hi:e}"
            )));
        }
        let mut steps = vec![hi];
        while steps[steps.len() - 1] / 10.0 >= lo * (1.0 - 1e-9) {
            steps.push(steps[steps.len() - 1] / 10.0);
        }
        Ok(steps)
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

/// The derived gradient of every trainable parameter of `fwd` at `params`
/// (in `trainable_params` order), and the loss, on the check's batch.
pub fn derived_gradients(
    fwd: &Graph,
    params: &[Vec<f32>],
    opts: &GradCheckOptions,
) -> Result<(f64, Vec<Vec<f64>>)> {
    check_modes(fwd, &opts.dropout)?;
    let bwd = backward(fwd, &opts.dropout)?;
    // Before the random batch is made: it and every value must fit the limit.
    crate::interp::check_interpreter_memory::<f64>(&bwd, opts.batch)?;
    let (images, labels) = random_batch(fwd, opts.batch, opts.seed);
    let mut state = State::<f64>::new(fwd, params);
    let values = run(&bwd, &mut state, &inputs(opts, &images, &labels))?;
    let loss = values
        .output(&bwd, "loss")
        .ok_or_else(|| GraphError::graph("no loss"))?[0];
    let grads = fwd
        .trainable_params()
        .map(|p| {
            values
                .output(&bwd, &grad_output(&fwd.param(p).name))
                .expect("backward graph has every gradient")
                .to_vec()
        })
        .collect();
    Ok((loss, grads))
}

/// Checks every trainable parameter's derived gradient of `fwd` at `params`.
/// The dropout setting must give `F = B` at every site (plain or standard),
/// for the derived update to be the gradient of the computed loss.
pub fn grad_check(
    fwd: &Graph,
    params: &[Vec<f32>],
    opts: &GradCheckOptions,
) -> Result<GradCheckReport> {
    let (_, grads) = derived_gradients(fwd, params, opts)?;
    grad_check_with(fwd, params, opts, &grads)
}

fn check_modes(g: &Graph, dropout: &DropoutConfig) -> Result<()> {
    for (site, masks) in g.sites.iter().zip(resolve_sites(g, dropout)?) {
        if masks.forward != masks.backward {
            return Err(GraphError::graph(format!(
                "gradcheck: site {}: {UNCHECKABLE_MODES}",
                site.name
            )));
        }
    }
    Ok(())
}

fn inputs<'a>(opts: &GradCheckOptions, images: &'a [f64], labels: &'a [u32]) -> Inputs<'a, f64> {
    Inputs {
        images,
        labels,
        batch: opts.batch,
        seed: opts.seed,
        step: 0,
        lr: 0.0,
    }
}

/// [`grad_check`] of the given gradients `grads` (one per trainable parameter,
/// in `trainable_params` order) in place of the derived ones: the way to show
/// the check fails on a wrong gradient.
pub fn grad_check_with(
    fwd: &Graph,
    params: &[Vec<f32>],
    opts: &GradCheckOptions,
    grads: &[Vec<f64>],
) -> Result<GradCheckReport> {
    check_modes(fwd, &opts.dropout)?;
    let steps = opts.steps()?;
    if opts.batch == 0 || opts.samples == 0 {
        return Err(GraphError::graph(
            "gradcheck needs a batch and samples of at least 1",
        ));
    }
    let trainable: Vec<ParamId> = fwd.trainable_params().collect();
    if grads.len() != trainable.len()
        || trainable
            .iter()
            .zip(grads)
            .any(|(p, g)| g.len() != fwd.param(*p).elems())
    {
        return Err(GraphError::graph(
            "gradcheck: one gradient per trainable parameter, of its size",
        ));
    }
    let mut loss_graph = backward(fwd, &opts.dropout)?;
    loss_graph.outputs.retain(|(n, _)| n == "loss");
    let loss_graph = crate::dce::eliminate_dead(&loss_graph);
    let loss_id = loss_graph
        .output("loss")
        .ok_or_else(|| GraphError::graph("no loss"))?;
    crate::interp::check_interpreter_memory::<f64>(&loss_graph, opts.batch)?;
    let (images, labels) = random_batch(fwd, opts.batch, opts.seed);
    let inputs = inputs(opts, &images, &labels);
    let base = State::<f64>::new(fwd, params);
    let base_values: Values<f64> = run(&loss_graph, &mut base.clone(), &inputs)?;
    let loss = base_values.get(loss_id)[0];
    if !loss.is_finite() {
        return Err(GraphError::graph(format!(
            "gradcheck: the loss is {loss} at the check point"
        )));
    }
    // One ulp of the loss (at least of 1: the terms it sums are O(1) and more).
    let ulp = f64::EPSILON * loss.abs().max(1.0);

    let check = |job: usize| -> Result<ParamCheck> {
        let p = trainable[job].index();
        let grad = &grads[job];
        // Only what `p` feeds is recomputed for a perturbation of `p`.
        let mut stale = vec![false; loss_graph.nodes.len()];
        for id in loss_graph.ids() {
            let node = loss_graph.node(id);
            stale[id.index()] = node.op == Op::Param(ParamId::from_index(p))
                || node.inputs.iter().any(|i| stale[i.index()]);
        }
        let loss_at = |state: &State<f64>| -> Result<f64> {
            let mut s = state.clone();
            Ok(rerun(&loss_graph, &mut s, &inputs, &base_values, &stale)?.get(loss_id)[0])
        };
        let mut state = base.clone();
        let mut quotient = |i: usize, h: f64| -> Result<f64> {
            let w = base.params[p][i];
            state.params[p][i] = w + h;
            let up = loss_at(&state)?;
            state.params[p][i] = w - h;
            let down = loss_at(&state)?;
            state.params[p][i] = w;
            Ok((up - down) / (2.0 * h))
        };
        // All elements of small tensors, otherwise distinct random ones, with
        // spares to replace the elements that sit at a kink.
        let n = grad.len();
        let mut rng = Pcg64::seed_from_u64(opts.seed ^ (p as u64 + 1));
        let candidates: Vec<usize> = if n <= opts.samples {
            (0..n).collect()
        } else {
            let want = n.min(4 * opts.samples);
            let mut seen = HashSet::new();
            let mut c = Vec::with_capacity(want);
            while c.len() < want {
                let i = (rng.next_u64() % n as u64) as usize;
                if seen.insert(i) {
                    c.push(i);
                }
            }
            c
        };
        let mut samples = Vec::new();
        let mut kinks = 0;
        for &i in &candidates {
            if samples.len() == opts.samples {
                break;
            }
            let mut prev = quotient(i, steps[0])?;
            let mut accepted = None;
            for &h in &steps[1..] {
                let fd = quotient(i, h)?;
                let delta = (prev - fd).abs();
                let noise = delta + ulp / h;
                let resolved = noise <= RESOLVE_FRACTION * opts.tolerance * fd.abs();
                let at_rounding = delta <= ROUNDING_ULPS * ulp / h;
                if resolved || at_rounding {
                    accepted = Some(Sample {
                        index: i,
                        fd,
                        ad: grad[i],
                        noise,
                        step: h,
                    });
                    break;
                }
                prev = fd;
            }
            match accepted {
                Some(s) => samples.push(s),
                None => kinks += 1,
            }
        }
        Ok(ParamCheck::judge(
            &fwd.param(ParamId::from_index(p)).name,
            n,
            samples,
            kinks,
            opts.tolerance,
        ))
    };

    // Parameters are handed out in order (the early ones, which feed the most
    // ops, cost the most) to whichever worker is free.
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<ParamCheck>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            scope.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= trainable.len() {
                    break;
                }
                let r = check(job);
                let mut done = results.lock().expect("gradcheck worker");
                done.push((job, r));
                if opts.progress {
                    eprintln!(
                        "gradcheck: {}/{} parameters checked ({})",
                        done.len(),
                        trainable.len(),
                        fwd.param(trainable[job]).name
                    );
                }
            });
        }
    });
    let mut results = results.into_inner().expect("gradcheck workers");
    results.sort_by_key(|(job, _)| *job);
    Ok(GradCheckReport {
        loss,
        tolerance: opts.tolerance,
        params: results.into_iter().map(|(_, r)| r).collect::<Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fd: f64, ad: f64, noise: f64) -> Sample {
        Sample {
            index: 0,
            fd,
            ad,
            noise,
            step: 1e-5,
        }
    }

    fn report(errors: &[f64]) -> GradCheckReport {
        GradCheckReport {
            loss: 1.0,
            tolerance: 1e-6,
            params: errors
                .iter()
                .map(|&e| ParamCheck {
                    error: e,
                    ..ParamCheck::judge("p", 1, vec![sample(1.0, 1.0, 0.0)], 0, 1e-6)
                })
                .collect(),
        }
    }

    #[test]
    fn worst_is_not_blind_to_nan() {
        assert_eq!(report(&[1e-9, 2e-9]).worst(), 2e-9);
        assert!(report(&[1e-9, 2e-9]).passed());
        for errors in [
            &[f64::NAN][..],
            &[1e-9, f64::NAN, 2e-9],
            &[f64::NAN, 1e-9],
            &[1e-9, f64::INFINITY],
        ] {
            let r = report(errors);
            assert_eq!(r.worst(), f64::INFINITY, "{errors:?}");
            assert!(!r.passed(), "{errors:?}");
        }
    }

    #[test]
    fn nothing_checked_is_a_failure() {
        assert_eq!(report(&[]).worst(), f64::INFINITY);
        assert!(!report(&[]).passed());
    }

    #[test]
    fn parameter_without_samples_fails() {
        let p = ParamCheck::judge("all kinks", 8, vec![], 8, 1e-6);
        assert_eq!(p.error, f64::INFINITY);
        let r = GradCheckReport {
            loss: 1.0,
            tolerance: 1e-6,
            params: vec![
                ParamCheck::judge("fine", 4, vec![sample(0.5, 0.5, 1e-12)], 0, 1e-6),
                p,
            ],
        };
        assert!(!r.passed());
        assert!(
            r.table().contains("FAILED (no usable element"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn non_finite_samples_fail() {
        for s in [
            sample(f64::NAN, 1.0, 1e-12),
            sample(1.0, f64::NAN, 1e-12),
            sample(1.0, f64::INFINITY, 1e-12),
            sample(1.0, 1.0, f64::NAN),
        ] {
            let p = ParamCheck::judge("p", 2, vec![sample(1.0, 1.0, 1e-12), s], 0, 1e-6);
            assert_eq!(p.error, f64::INFINITY, "{s:?}");
        }
    }

    #[test]
    fn relative_error_above_the_noise_floor() {
        // Resolved gradient: the plain relative error.
        let p = ParamCheck::judge("p", 1, vec![sample(1.0, 1.0 + 3e-7, 1e-12)], 0, 1e-6);
        assert!((p.error - 3e-7).abs() < 1e-12, "{}", p.error);
        // A 1 % error fails.
        let p = ParamCheck::judge("p", 1, vec![sample(1.0, 1.01, 1e-12)], 0, 1e-6);
        assert!(p.error > 1e-3);
    }

    #[test]
    fn gradient_below_the_noise_is_judged_against_the_noise() {
        // True gradient 0, quotient pure rounding noise of 1e-10 estimated as such.
        let p = ParamCheck::judge("bias", 1, vec![sample(1e-10, 1e-17, 1.2e-10)], 0, 1e-6);
        assert!(p.error < 1e-6, "{}", p.error);
        // A derived value 100 times the noise estimate above it is wrong.
        let p = ParamCheck::judge("bias", 1, vec![sample(1e-10, 1e-8, 1e-10)], 0, 1e-6);
        assert!(p.error > 1e-6, "{}", p.error);
    }

    #[test]
    fn each_element_is_held_to_its_own_noise() {
        // A noisy element (accepted at the rounding level) does not hide an
        // error in a quiet one: 1 % off on an element with noise 1e-13.
        let p = ParamCheck::judge(
            "p",
            10,
            vec![sample(1.0, 1.0, 1e-4), sample(1e-3, 1.01e-3, 1e-13)],
            0,
            1e-6,
        );
        assert!(p.error > 1e-6, "{}", p.error);
        // Without the error the same samples pass.
        let p = ParamCheck::judge(
            "p",
            10,
            vec![sample(1.0, 1.0, 1e-4), sample(1e-3, 1e-3, 1e-13)],
            0,
            1e-6,
        );
        assert!(p.error < 1e-6, "{}", p.error);
    }

    #[test]
    fn steps_are_a_ladder_of_tenths() {
        let o = GradCheckOptions::default();
        let s = o.steps().unwrap();
        assert_eq!(s.len(), 6);
        assert!((s[5] - 1e-9).abs() < 1e-22);
        for (hi, lo) in [(1e-4, 1e-4), (1e-4, 0.0), (f64::NAN, 1e-7), (1e-4, -1.0)] {
            let o = GradCheckOptions {
                max_step: hi,
                min_step: lo,
                ..o
            };
            assert!(o.steps().is_err(), "{hi} {lo}");
        }
    }
}
