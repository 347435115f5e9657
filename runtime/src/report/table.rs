//! The report's Markdown: one row per cell, our mean ± sd over seeds beside
//! the published figure, both also as the difference from plain (what the
//! paper's claims are about).

use std::fmt::Write;

use super::collect::CellResult;
use crate::sweep::spec::TrainSettings;
use crate::sweep::Plan;

fn all_same(cells: &[CellResult]) -> bool {
    cells.windows(2).all(|w| w[0].cell.train == w[1].cell.train)
}

fn ratio(mode: &str, uses: bool, p: f64) -> String {
    if uses && mode != "plain" {
        format!("{p}")
    } else {
        "–".into()
    }
}

/// Points (accuracy × 100), signed.
fn points(x: f64) -> String {
    format!("{:+.2}", x * 100.0)
}

pub fn markdown(plan: &Plan, cells: &[CellResult], paper_source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Sweep `{}`: {} on {}\n",
        plan.name, plan.model_name, plan.dataset
    );
    if let Some(d) = &plan.description {
        let _ = writeln!(s, "{d}\n");
    }
    // Settings that change the model's recipe make the paper's figure a
    // reference, not a target: say so above the table.
    let settings: Vec<String> = cells
        .iter()
        .filter(|c| c.cell.train != TrainSettings::default())
        .map(|c| {
            format!(
                "{}: {}",
                c.cell.name,
                serde_json::to_string(&c.cell.train).unwrap_or_default()
            )
        })
        .collect();
    if !settings.is_empty() && settings.len() == cells.len() && all_same(cells) {
        let _ = writeln!(
            s,
            "Every run changes the model's recipe: `{}`.\n",
            serde_json::to_string(&cells[0].cell.train).unwrap_or_default()
        );
    } else if !settings.is_empty() {
        let _ = writeln!(
            s,
            "Runs that change the model's recipe: {}.\n",
            settings.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "Final test accuracy, mean ± sample standard deviation over the finished seeds; \
         differences in points (accuracy × 100). Paper: {paper_source}\n"
    );
    let plain = cells
        .iter()
        .find(|c| c.cell.mode == "plain" && c.cell.sites.is_empty());
    let ours_plain = plain.and_then(|c| c.mean());
    let paper_plain = plain.and_then(|c| c.paper);
    s.push_str(
        "| cell | mode | fwd | bwd | seeds | test accuracy | vs plain | paper | paper vs plain | ours − paper | per seed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let m = c.mean();
        let acc = match (m, c.sd()) {
            (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
            (Some(m), None) => format!("{m:.4}"),
            (None, _) => "–".into(),
        };
        let vs = |a: Option<f64>, b: Option<f64>, same: bool| match (a, b) {
            (Some(a), Some(b)) if !same => points(a - b),
            _ => String::new(),
        };
        let is_plain = plain.is_some_and(|p| p.cell.name == c.cell.name);
        let mode = &c.cell.mode;
        let uses_fwd = matches!(mode.as_str(), "standard" | "forward" | "augmented");
        let uses_bwd = matches!(mode.as_str(), "backward" | "augmented");
        let seeds = if c.unfinished > 0 {
            format!(
                "{} (+{} running or pending)",
                c.accuracies.len(),
                c.unfinished
            )
        } else {
            c.accuracies.len().to_string()
        };
        let per_seed: Vec<String> = c
            .accuracies
            .iter()
            .map(|(seed, a)| format!("s{seed}: {a:.4}"))
            .collect();
        let sites = if c.cell.sites.is_empty() {
            String::new()
        } else {
            format!(
                " (sites: {})",
                serde_json::to_string(&c.cell.sites).unwrap_or_default()
            )
        };
        let _ = writeln!(
            s,
            "| {}{sites} | {mode} | {} | {} | {seeds} | {acc} | {} | {} | {} | {} | {} |",
            c.cell.name,
            ratio(mode, uses_fwd, c.cell.fwd),
            ratio(mode, uses_bwd, c.cell.bwd),
            vs(m, ours_plain, is_plain),
            c.paper.map_or(String::new(), |p| format!("{p:.4}")),
            vs(c.paper, paper_plain, is_plain),
            vs(m, c.paper, false),
            per_seed.join(", "),
        );
    }
    let sds: Vec<f64> = cells.iter().filter_map(|c| c.sd()).collect();
    if !sds.is_empty() {
        let mut sorted = sds.clone();
        sorted.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "\nSeed-to-seed spread: standard deviation {:.2}–{:.2} points across cells \
             (median {:.2}); a difference between two cells smaller than about twice that \
             is not a finding.",
            sorted[0] * 100.0,
            sorted[sorted.len() - 1] * 100.0,
            sorted[sorted.len() / 2] * 100.0
        );
    }
    let unfinished: usize = cells.iter().map(|c| c.unfinished).sum();
    if unfinished > 0 {
        let _ = writeln!(
            s,
            "\n{unfinished} of {} runs are not finished; their cells show the seeds that are.",
            plan.runs.len()
        );
    }
    s
}
