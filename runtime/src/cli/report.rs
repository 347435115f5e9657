//! `dropjit report SWEEP_DIR`: the sweep's table (Markdown, also written to
//! `SWEEP_DIR/report.md`) and plots (`SWEEP_DIR/plots/`, SVG and PNG);
//! `dropjit plot RUN_DIR...`: the training curves of any runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use crate::report::{collect, plot, table, PaperResults, RunCurve};
use crate::sweep::Plan;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A sweep directory (the one `dropjit sweep` wrote, holding sweep.json).
    pub sweep_dir: PathBuf,
    /// Published figures to compare with [default: results/paper.json, built in].
    #[arg(long)]
    pub paper: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output path without extension: writes OUT.svg and OUT.png.
    #[arg(long, default_value = "curves")]
    pub out: PathBuf,
    /// Title of the plot.
    #[arg(long, default_value = "training curves")]
    pub title: String,
}

pub fn run_report(a: &ReportArgs) -> Result<ExitCode, CliError> {
    let dir = &a.sweep_dir;
    let plan = Plan::load(dir)?;
    let paper = match &a.paper {
        Some(p) => PaperResults::load(p)?,
        None => PaperResults::shipped(),
    };
    let cells = collect(&plan, dir, &paper);
    let mut md = table::markdown(&plan, &cells, &paper.source);
    let plots = dir.join("plots");
    let mut files = Vec::new();
    let title = format!(
        "{} on {}: final test accuracy",
        plan.model_name, plan.dataset
    );
    if let Some(f) = plot::accuracy_vs_ratio(&title, &cells, &plots.join("accuracy_vs_ratio"))? {
        files.extend(f);
    }
    for c in &cells {
        if c.curves.is_empty() {
            continue;
        }
        let title = format!(
            "{} {} on {}, per seed",
            plan.model_name, c.cell.name, plan.dataset
        );
        match plot::curves(
            &title,
            &c.curves,
            &plots.join(format!("curves-{}", c.cell.name)),
        ) {
            Ok(f) => files.extend(f),
            Err(e) => eprintln!("note: {e}"),
        }
    }
    if !files.is_empty() {
        md.push_str("\nPlots:\n\n");
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        {
            let rel = f.strip_prefix(dir).unwrap_or(f);
            md.push_str(&format!("![{}]({})\n", rel.display(), rel.display()));
        }
    }
    let out = dir.join("report.md");
    crate::durable::write(&out, md.as_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    print!("{md}");
    eprintln!(
        "wrote {} and {} plot files in {}",
        out.display(),
        files.len(),
        plots.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn label(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

pub fn run_plot(a: &PlotArgs) -> Result<ExitCode, CliError> {
    let curves: Vec<RunCurve> = a
        .runs
        .iter()
        .map(|d| collect::read_curve(d, &label(d)))
        .collect::<Result<_, _>>()?;
    let files = plot::curves(&a.title, &curves, &a.out)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
