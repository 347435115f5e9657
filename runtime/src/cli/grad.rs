//! `dropjit grad`: the loss and gradients of one exact batch, computed by the
//! f64 reference interpreter, written with PyTorch names so another framework
//! can be checked against the same numbers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dropjit_graph::autodiff::{backward, grad_output};
use dropjit_graph::dropout::site_mask_values;
use dropjit_graph::interp::{run, Inputs, State};

use super::dropout_args::DropoutArgs;
use super::{CliError, GraphArgs};
use crate::tensors::{self, Out, Values};

#[derive(Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Weights (safetensors, PyTorch names); default: the model's initialisation with --seed.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The batch (safetensors): `input` f32 [N,C,H,W] and `label` integers [N].
    #[arg(long, value_name = "B.safetensors")]
    pub batch_file: PathBuf,
    /// Where to write the gradients (and `loss`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dropout: DropoutArgs,
    /// Run seed: the dropout masks (and the initialisation without --weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Step number the masks are drawn for.
    #[arg(long, default_value_t = 0)]
    pub step: u64,
    /// Also write every dropout site's forward mask `F` and backward mask `B`
    /// of this step (safetensors, `<site>.F` and `<site>.B`, shape `[N, ...]`,
    /// each element 0 or the inverted-dropout scale, ones where the mode has no
    /// mask), to check the modes against an independent implementation.
    #[arg(long, value_name = "FILE")]
    pub masks_out: Option<PathBuf>,
}

pub fn run_grad(args: &GradArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    let dropout = args.dropout.config()?;
    let params = match &args.weights {
        Some(w) => crate::weights::load(&g, w)?,
        None => dropjit_graph::init::init_params(&g, args.seed),
    };
    let mut batch = tensors::read(&args.batch_file)?;
    let labels_t = batch
        .remove("label")
        .ok_or_else(|| format!("{}: tensor 'label' is missing", args.batch_file.display()))?;
    let n = labels_t.shape.first().copied().unwrap_or(0);
    if labels_t.shape.len() != 1 || n == 0 {
        return Err(format!(
            "{}: tensor 'label' must have shape [N] with N >= 1, got {:?}",
            args.batch_file.display(),
            labels_t.shape
        )
        .into());
    }
    let classes = g.classes().unwrap_or(0);
    let labels: Vec<u32> = match labels_t.values {
        Values::I64(v) => v
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                u32::try_from(l)
                    .ok()
                    .filter(|&l| (l as usize) < classes)
                    .ok_or_else(|| {
                        format!(
                            "{}: label[{i}] = {l} is outside 0..{classes}",
                            args.batch_file.display()
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Values::F32(_) => {
            return Err(format!(
                "{}: tensor 'label' must hold integers",
                args.batch_file.display()
            )
            .into())
        }
    };
    let mut shape = vec![n];
    shape.extend_from_slice(g.image_dims().unwrap_or(&[]));
    let images = tensors::take_f32(&mut batch, &args.batch_file, "input", &shape)?;

    let bwd = backward(&g, &dropout)?;
    let images64: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let mut state = State::<f64>::new(&g, &params);
    let inputs = Inputs {
        images: &images64,
        labels: &labels,
        batch: n,
        seed: args.seed,
        step: args.step,
        lr: 0.0,
    };
    let values = run(&bwd, &mut state, &inputs)?;
    let loss = values
        .output(&bwd, "loss")
        .expect("backward graph has a loss")[0] as f32;
    let grads: Vec<(String, Vec<usize>, Vec<f32>)> = g
        .trainable_params()
        .map(|p| {
            let param = g.param(p);
            let grad = values
                .output(&bwd, &grad_output(&param.name))
                .expect("every gradient");
            (
                param.name.clone(),
                param.dims.clone(),
                grad.iter().map(|&v| v as f32).collect(),
            )
        })
        .collect();
    let loss_arr = [loss];
    let mut out: Vec<(String, Vec<usize>, Out<'_>)> = grads
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), Out::F32(v)))
        .collect();
    out.push(("loss".into(), vec![], Out::F32(&loss_arr)));
    tensors::write(&args.out, &out, None)?;
    if let Some(path) = &args.masks_out {
        let masks = site_mask_values(&g, &dropout, args.seed, args.step, n)?;
        let out: Vec<(String, Vec<usize>, Out<'_>)> = masks
            .iter()
            .flat_map(|m| {
                [
                    (
                        format!("{}.F", m.site),
                        m.shape.clone(),
                        Out::F32(&m.forward),
                    ),
                    (
                        format!("{}.B", m.site),
                        m.shape.clone(),
                        Out::F32(&m.backward),
                    ),
                ]
            })
            .collect();
        tensors::write(path, &out, None)?;
        println!(
            "F and B of {} dropout sites written to {}",
            masks.len(),
            path.display()
        );
    }
    println!(
        "loss {loss:.6} over {n} images ({}), {} gradients written to {}",
        dropout.describe(),
        grads.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Where to write the initial weights (safetensors, PyTorch names).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the initialisation (as `train --seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run_init(args: &InitArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    if args.out.exists() && !args.force {
        return Err(format!("{} exists; give --force to replace it", args.out.display()).into());
    }
    let params = dropjit_graph::init::init_params(&g, args.seed);
    crate::weights::save(&g, &params, 0, &args.out)?;
    println!(
        "{} tensors of {} written to {}",
        g.params.len(),
        g.name,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
