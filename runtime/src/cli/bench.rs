//! `dropjit bench`: compile time, milliseconds per step and images per second
//! of the JIT-compiled training (or evaluation) step on a random batch.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::gradcheck::random_batch;
use dropjit_graph::init::init_params;
use dropjit_graph::step::SgdConfig;

use super::dropout_args::DropoutArgs;
use super::{CliError, GraphArgs};
use crate::engine::{Engine, EngineSpec};
use crate::jit_engine::JitEngine;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Images per step (default: the recipe's batch size).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps after two warm-up steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub dropout: DropoutArgs,
    /// Time the evaluation step instead of the training step.
    #[arg(long)]
    pub eval: bool,
    /// Also print where the time goes, by launch kind.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also time the plain step, alternating with the chosen mode step by
    /// step in this process, and print the ratio of their speeds (the cost
    /// of the dropout mode, free of the machine's drift between runs).
    #[arg(long)]
    pub vs_plain: bool,
}

pub fn run(args: &BenchArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    let dropout = args.dropout.config()?;
    let batch = args.batch.unwrap_or(g.recipe.batch_size);
    if batch == 0 || args.steps == 0 || args.threads == 0 {
        return Err("--batch, --steps and --threads must be at least 1".into());
    }
    if args.vs_plain && (args.eval || args.profile) {
        return Err(
            "--vs-plain times training steps: it takes neither --eval nor --profile".into(),
        );
    }
    let spec = |dropout| EngineSpec {
        graph: &g,
        dropout,
        sgd: SgdConfig::from_recipe(&g),
        seed: 0,
        threads: args.threads,
        params: init_params(&g, 0),
    };
    let mut engine = JitEngine::new(spec(dropout))?;
    // The plain step timed in alternation with the chosen one (--vs-plain).
    let mut plain = match args.vs_plain {
        true => {
            let mut e = JitEngine::new(spec(DropoutConfig::PLAIN))?;
            e.step_program(batch)?;
            Some(e)
        }
        false => None,
    };
    let t = Instant::now();
    let compiled = if args.eval {
        engine.eval_program(batch)?
    } else {
        engine.step_program(batch)?
    };
    let (arena_bytes, kernels, unique, isa) = (
        compiled.arena_bytes(),
        compiled.kernel_count(),
        compiled.unique_kernel_count(),
        compiled.isa,
    );
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    if args.profile && !args.eval {
        engine
            .step_program_mut(batch)
            .expect("compiled above")
            .enable_profile();
    }
    let (images, labels) = random_batch(&g, batch, 1);
    let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
    // Caffe-like small learning rate keeps the random-data run finite.
    let lr = 1e-4;
    let mut times = Vec::with_capacity(args.steps);
    let mut plain_times = Vec::with_capacity(args.steps);
    for i in 0..args.steps + 2 {
        // Alternate which of the pair runs first, so neither always follows
        // the other.
        let plain_first = i % 2 == 1;
        let mut time_plain = |plain: &mut Option<JitEngine>| -> Result<(), CliError> {
            if let Some(p) = plain {
                let t = Instant::now();
                p.train_step(&images, &labels, i as u64, lr)?;
                if i >= 2 {
                    plain_times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok(())
        };
        if plain_first {
            time_plain(&mut plain)?;
        }
        let t = Instant::now();
        if args.eval {
            engine.eval_batch(&images, &labels)?;
        } else {
            engine.train_step(&images, &labels, i as u64, lr)?;
        }
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if !plain_first {
            time_plain(&mut plain)?;
        }
    }
    // Per pair: plain's time over the mode's, i.e. the mode's speed over
    // plain's; the median of those.
    let mut pair_ratios: Vec<f64> = plain_times.iter().zip(&times).map(|(p, m)| p / m).collect();
    pair_ratios.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    plain_times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    let ips = batch as f64 / (median / 1e3);
    let what = if args.eval { "eval" } else { "train" };
    let vs_plain = (!pair_ratios.is_empty()).then(|| {
        let q = |f: f64| pair_ratios[((pair_ratios.len() - 1) as f64 * f).round() as usize];
        (plain_times[plain_times.len() / 2], q(0.5), q(0.25), q(0.75))
    });
    if args.json {
        let mut obj = serde_json::json!({
            "model": g.name, "mode": what, "dropout": dropout.describe(), "batch": batch,
            "threads": args.threads, "steps": args.steps, "images_per_second": ips,
            "step_ms_median": median, "step_ms_min": min, "step_ms_max": max,
            "compile_ms": compile_ms, "arena_bytes": arena_bytes, "kernels": kernels, "kernels_compiled": unique,
            "conv_isa": isa.name(),
        });
        if let Some((plain_ms, ratio, lo, hi)) = vs_plain {
            obj["plain_step_ms_median"] = plain_ms.into();
            obj["vs_plain_median"] = ratio.into();
            obj["vs_plain_quartiles"] = serde_json::json!([lo, hi]);
        }
        println!("{obj}");
    } else {
        println!(
            "{} {what} {} batch {batch} threads {}: {median:.2} ms/step (range {min:.2}-{max:.2} over {} steps), {ips:.0} images/s; compile {compile_ms:.1} ms ({kernels} kernels, {unique} distinct), arena {:.1} MiB, convolutions {isa}",
            g.name,
            dropout.describe(),
            args.threads,
            args.steps,
            arena_bytes as f64 / (1 << 20) as f64
        );
        if let Some((plain_ms, ratio, lo, hi)) = vs_plain {
            println!(
                "  against plain, alternating step by step: plain {plain_ms:.2} ms/step; {} / plain images/s per pair: median {ratio:.3} (quartiles {lo:.3}-{hi:.3}, {} pairs)",
                dropout.describe(),
                pair_ratios.len()
            );
        }
    }
    if args.profile && !args.eval {
        let c = engine.step_program_mut(batch).expect("compiled above");
        let runs = (args.steps + 2) as f64;
        for (kind, secs) in c.profile_by_kind() {
            println!("  {kind:<28} {:>8.2} ms/step", secs * 1e3 / runs);
        }
        // Each core's FMA peak, to read the convolutions' rates against.
        let peak = dropjit_codegen::conv::fma_peak_gflops(isa);
        match peak {
            Some(p) => println!(
                "  convolutions (FMA peak {p:.1} GFLOP/s per core, {:.1} on {} threads):",
                p * args.threads as f64,
                args.threads
            ),
            None => println!("  convolutions:"),
        }
        // Rates count a direct convolution's multiply-adds; Winograd launches
        // do 2.25x fewer, so theirs are effective rates and can pass the peak.
        for (name, launches, secs, flops) in c.profile_convs() {
            let gflops = flops * runs / secs / 1e9;
            let share = peak.map_or(String::new(), |p| {
                format!(
                    ", {:.0} % of peak",
                    100.0 * gflops / (p * args.threads as f64)
                )
            });
            let effective = if name.contains("winograd") {
                " (effective)"
            } else {
                ""
            };
            println!(
                "    {name:<44} x{launches:<2} {:>7.2} ms/step {gflops:>6.1} GFLOP/s{share}{effective}",
                secs * 1e3 / runs
            );
        }
        println!("  slowest launches:");
        for (line, secs) in c.profile_by_launch().into_iter().take(12) {
            println!("  {:>8.2} ms  {}", secs * 1e3 / runs, line.trim());
        }
    }
    Ok(ExitCode::SUCCESS)
}
