//! The training loop, over any [`Engine`].
//!
//! Iteration `i` (0-based, counted over the whole run) trains on batch
//! `i % iterations_per_epoch` of epoch `i / iterations_per_epoch`, with the
//! learning rate `schedule.lr(base, i, total)` and dropout mask step `i`. Data
//! order, augmentation and masks are pure functions of (seed, epoch, position)
//! and (seed, step, site), so parameters + momentum + `i` are the whole state:
//! a resumed run repeats an uninterrupted one bit for bit.

use std::path::Path;
use std::time::Instant;

use dropjit_graph::Graph;

use super::checkpoint::{self, RunState, CHECKPOINT_FILE};
use super::config::RunConfig;
use super::error::TrainError;
use super::evaluate::{class_names, count_correct, evaluate, per_class_table, EvalResult};
use super::files;
use super::metrics::{Accum, MetricsLog, Record};
use super::progress::Progress;
use super::setup::RunData;
use super::summary::{Summary, FINAL_FILE, SUMMARY_FILE};
use crate::data::{Augment, BatchLoader};
use crate::engine::Engine;

/// How a call to [`Trainer::run`] ended (divergence is an error).
#[derive(Debug)]
pub enum Outcome {
    Finished(Box<Summary>),
    /// Stopped on request (`--stop-after`) after a checkpoint at this iteration.
    Stopped {
        iteration: usize,
    },
    /// Stopped by a signal (Ctrl-C, SIGTERM) after a checkpoint at this iteration.
    Interrupted {
        iteration: usize,
        signal: &'static str,
    },
}

/// One run: its directory, settings, model and data.
pub struct Trainer<'a> {
    pub dir: &'a Path,
    pub config: &'a RunConfig,
    pub graph: &'a Graph,
    pub data: &'a RunData,
    /// Stop (as if interrupted, after a checkpoint) once this many iterations are done.
    pub stop_after: Option<usize>,
}

impl Trainer<'_> {
    fn total(&self) -> usize {
        self.config.recipe.iterations
    }

    fn per_epoch(&self) -> usize {
        self.config.recipe.iterations_per_epoch.max(1)
    }

    fn epochs(&self) -> usize {
        self.total().div_ceil(self.per_epoch())
    }

    /// Writes a checkpoint of the engine's state with `state`.
    pub fn checkpoint(
        &self,
        engine: &dyn Engine,
        state: &mut RunState,
        metrics: &MetricsLog,
    ) -> Result<(), TrainError> {
        state.metrics_bytes = metrics.len();
        checkpoint::save(
            self.dir,
            self.graph,
            &engine.params(),
            &engine.momentum(),
            state,
        )
    }

    /// Trains from `state` (iteration 0 or a resumed checkpoint) to the end of
    /// the run, or to `stop_after`.
    pub fn run(
        &self,
        engine: &mut dyn Engine,
        mut state: RunState,
        metrics: &mut MetricsLog,
    ) -> Result<Outcome, TrainError> {
        let cfg = self.config;
        let r = &cfg.recipe;
        let (bs, ipe, total) = (r.batch_size, self.per_epoch(), self.total());
        let schedule = r.schedule.schedule();
        let augment = r.augment.map(|a| Augment {
            pad: a.crop_padding,
            flip: a.flip,
        });
        let train = &self.data.dataset.train;
        let classes = train.num_classes;
        let loader = BatchLoader::new(train, &self.data.stats, augment, cfg.seed);
        let session = Instant::now();
        let wall_before = state.wall_seconds;
        let mut last_checkpoint = state.iteration;
        let mut images = vec![0f32; bs * self.data.dataset.train.shape.len()];
        let mut raw_labels = vec![0i32; bs];
        let mut labels = vec![0u32; bs];
        let mut order: Option<(usize, Vec<u32>)> = None;
        let progress = Progress::new(total, state.iteration);

        for it in state.iteration..total {
            let epoch = it / ipe;
            if order.as_ref().map(|o| o.0) != Some(epoch) {
                order = Some((epoch, loader.epoch_order(epoch as u64, r.shuffle)));
            }
            let epoch_order = &order.as_ref().expect("set above").1;
            loader.fill_batch(
                epoch_order,
                (it % ipe) * bs,
                epoch as u64,
                &mut images,
                &mut raw_labels,
            );
            for (l, &raw) in labels.iter_mut().zip(&raw_labels) {
                *l = raw as u32;
            }
            let lr = schedule.lr(r.base_lr, it, total);
            let t = Instant::now();
            let (loss, logits) = engine.train_step(&images, &labels, it as u64, lr as f32)?;
            let seconds = t.elapsed().as_secs_f64();
            if !loss.is_finite() {
                progress.clear();
                return Err(TrainError::Diverged {
                    iteration: it + 1,
                    epoch: epoch + 1,
                    loss,
                    checkpoint: format!(
                        "The last checkpoint, {} (iteration {last_checkpoint}), is intact; \
                         lower the learning rate (it was {lr:e}).",
                        self.dir.join(CHECKPOINT_FILE).display()
                    ),
                });
            }
            let correct = count_correct(&logits, &labels, classes);
            for acc in [
                &mut state.total,
                &mut state.epoch_stats,
                &mut state.interval_stats,
            ] {
                acc.add(loss, correct, bs, seconds);
            }
            let done = it + 1;
            state.iteration = done;
            state.epoch = done / ipe;
            state.position = (done % ipe) * bs;
            state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
            progress.tick(
                epoch + 1,
                self.epochs(),
                done,
                loss,
                state.epoch_stats.images_per_second(),
            );

            if done % cfg.log_every == 0 {
                progress.log_line(&format!(
                    "iteration {done}/{total}  epoch {}/{}  loss {:.4}  {:.0} img/s",
                    epoch + 1,
                    self.epochs(),
                    state.interval_stats.loss(),
                    state.interval_stats.images_per_second()
                ));
                metrics.write(&self.record("train", &state.interval_stats, &state, lr))?;
                state.interval_stats = Accum::default();
            }
            if done % cfg.eval_every == 0 || done == total {
                let result = evaluate(engine, &self.data.dataset.test, &self.data.stats, bs)?;
                state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
                metrics.write(&self.test_record(&result, &state, lr))?;
                if state.best_test_accuracy.is_none_or(|b| result.accuracy > b) {
                    state.best_test_accuracy = Some(result.accuracy);
                    state.best_test_iteration = Some(done);
                }
                state.last_test = Some((done, result));
            }
            let epoch_end = done % ipe == 0 || done == total;
            if epoch_end {
                metrics.write(&self.record("epoch", &state.epoch_stats, &state, lr))?;
                progress.line(&self.epoch_line(epoch + 1, &state, lr));
                state.last_epoch = std::mem::take(&mut state.epoch_stats);
            }
            let signal = super::interrupt::received().filter(|_| done < total);
            let stop = self.stop_after == Some(done) || signal.is_some();
            let periodic = cfg.checkpoint_every.is_some_and(|n| done % n == 0);
            if epoch_end || periodic || stop {
                state.finished = done == total;
                state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
                self.checkpoint(engine, &mut state, metrics)?;
                last_checkpoint = done;
            }
            if stop && done < total {
                progress.clear();
                return Ok(match signal {
                    Some(signal) => Outcome::Interrupted {
                        iteration: done,
                        signal,
                    },
                    None => Outcome::Stopped { iteration: done },
                });
            }
        }
        progress.clear();
        self.finish(engine, &state)
            .map(|s| Outcome::Finished(Box::new(s)))
    }

    /// Writes `final.safetensors` and `summary.json` and prints the final report.
    pub fn finish(&self, engine: &dyn Engine, state: &RunState) -> Result<Summary, TrainError> {
        crate::weights::save(
            self.graph,
            &engine.params(),
            state.iteration as u64,
            &self.dir.join(FINAL_FILE),
        )?;
        let ds = &self.data.dataset;
        let names = class_names(ds.kind, ds.num_classes);
        let summary = Summary::of(self.config, state, &names)
            .ok_or_else(|| TrainError::Config("the run ended without a test evaluation".into()))?;
        files::write_json(&self.dir.join(SUMMARY_FILE), &summary)?;
        if let Some((_, test)) = &state.last_test {
            print!("{}", per_class_table(test, &names));
        }
        println!(
            "done: {} iterations, final test accuracy {:.4} (best {:.4} at iteration {}), \
             {:.1} s, {:.0} img/s; run directory {}",
            summary.iterations,
            summary.final_test_accuracy,
            summary.best_test_accuracy,
            summary.best_test_iteration,
            summary.wall_seconds,
            summary.images_per_second,
            self.dir.display()
        );
        Ok(summary)
    }

    fn record(&self, kind: &str, acc: &Accum, state: &RunState, lr: f64) -> Record {
        Record {
            kind: kind.to_string(),
            iteration: state.iteration,
            epoch: state.iteration as f64 / self.per_epoch() as f64,
            loss: acc.loss(),
            accuracy: acc.accuracy(),
            lr,
            images_per_second: acc.images_per_second(),
            images: acc.images,
            wall_seconds: state.wall_seconds,
        }
    }

    fn test_record(&self, result: &EvalResult, state: &RunState, lr: f64) -> Record {
        Record {
            kind: "test".to_string(),
            iteration: state.iteration,
            epoch: state.iteration as f64 / self.per_epoch() as f64,
            loss: result.loss,
            accuracy: result.accuracy,
            lr,
            images_per_second: result.images_per_second(),
            images: result.images,
            wall_seconds: state.wall_seconds,
        }
    }

    /// `epoch 3/10 (it 1500/5000)  train loss .. acc ..  test loss .. acc ..  lr ..  time ..`
    fn epoch_line(&self, epoch: usize, state: &RunState, lr: f64) -> String {
        let e = &state.epoch_stats;
        let test = match &state.last_test {
            Some((at, t)) if *at == state.iteration => {
                format!("test loss {:.4} acc {:.4}", t.loss, t.accuracy)
            }
            Some((at, t)) => format!("test loss {:.4} acc {:.4} (at it {at})", t.loss, t.accuracy),
            None => "test -".to_string(),
        };
        format!(
            "epoch {epoch}/{} (it {}/{})  train loss {:.4} acc {:.4}  {test}  lr {lr:.3e}  \
             {:.1} s  {:.0} img/s",
            self.epochs(),
            state.iteration,
            self.total(),
            e.loss(),
            e.accuracy(),
            state.wall_seconds,
            e.images_per_second()
        )
    }
}
