//! The report's pictures, each written as SVG and PNG: test accuracy against
//! dropout ratio per mode with error bars over seeds, the paper's figures
//! dashed beside ours (the paper's own figure); and training curves (test
//! accuracy and training loss against iteration) per cell or per run.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::collect::{CellResult, RunCurve};

const SIZE: (u32, u32) = (900, 600);
const CURVES_SIZE: (u32, u32) = (1200, 500);
const FONT: &str = "sans-serif";

/// Modes in the paper's order, each with its colour.
const MODES: [(&str, RGBColor); 4] = [
    ("standard", RGBColor(31, 119, 180)),
    ("forward", RGBColor(214, 39, 40)),
    ("backward", RGBColor(44, 160, 44)),
    ("augmented", RGBColor(148, 103, 189)),
];
const PLAIN: RGBColor = RGBColor(90, 90, 90);
/// Seeds / runs in a curve plot.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the dejavu crate.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

type PlotResult = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Writes `stem.svg` and `stem.png`, drawing `$body` on each backend's `$root`
/// (a macro: one closure cannot take both backends' types).
macro_rules! svg_and_png {
    ($stem:expr, $size:expr, |$root:ident| $body:expr) => {{
        let stem: &Path = $stem;
        register_font();
        if let Some(d) = stem.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        // Appended, not `with_extension`: cell names hold dots (`standard-0.1`).
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
        let (svg, png) = (with("svg"), with("png"));
        {
            let $root = &SVGBackend::new(&svg, $size).into_drawing_area();
            $body?;
            $root
                .present()
                .map_err(|e| format!("{}: {e}", svg.display()))?;
        }
        {
            let $root = &BitMapBackend::new(&png, $size).into_drawing_area();
            $body?;
            $root
                .present()
                .map_err(|e| format!("{}: {e}", png.display()))?;
        }
        Ok::<Vec<PathBuf>, String>(vec![svg, png])
    }};
}

/// The ratio a cell is plotted at: the forward ratio, the backward one for backward mode.
fn x_of(c: &CellResult) -> f64 {
    if c.cell.mode == "backward" {
        c.cell.bwd
    } else {
        c.cell.fwd
    }
}

/// Accuracy against ratio, one series per mode; `None` when the sweep has no
/// cell with a ratio (plain alone).
pub fn accuracy_vs_ratio(
    title: &str,
    cells: &[CellResult],
    stem: &Path,
) -> Result<Option<Vec<PathBuf>>, String> {
    let plotted: Vec<&CellResult> = cells
        .iter()
        .filter(|c| c.cell.sites.is_empty() && c.cell.mode != "plain" && x_of(c) > 0.0)
        .collect();
    if plotted.is_empty() {
        return Ok(None);
    }
    let plain = cells
        .iter()
        .find(|c| c.cell.mode == "plain" && c.cell.sites.is_empty());
    let xs: Vec<f64> = plotted.iter().map(|c| x_of(c)).collect();
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let mut ys: Vec<f64> = Vec::new();
    for c in plotted.iter().copied().chain(plain) {
        if let Some(m) = c.mean() {
            let sd = c.sd().unwrap_or(0.0);
            ys.extend([m - sd, m + sd]);
        }
        ys.extend(c.paper);
    }
    if ys.is_empty() {
        ys.extend([0.0, 1.0]);
    }
    let (ymin, ymax) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    let pad = ((ymax - ymin) * 0.08).max(0.005);
    let x_range = (xmin / 1.6)..(xmax * 1.6);
    let y_range = (ymin - pad)..(ymax + pad);

    let files = svg_and_png!(stem, SIZE, |root| ratio_chart(
        root,
        title,
        &plotted,
        plain,
        x_range.clone(),
        y_range.clone()
    ))?;
    Ok(Some(files))
}

/// `0.30000000000000004` as `0.3`.
fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn ratio_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    plotted: &[&CellResult],
    plain: Option<&CellResult>,
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = (x_range.start, x_range.end);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x_range.log_scale(), y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("dropout ratio (forward; backward for backward mode)")
        .y_desc("final test accuracy")
        .x_label_formatter(&|x| short(*x))
        .max_light_lines(1)
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    if let Some(p) = plain {
        if let Some(m) = p.mean() {
            chart
                .draw_series(LineSeries::new([(x0, m), (x1, m)], PLAIN.stroke_width(2)))
                .map_err(err)?
                .label("plain (ours)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], PLAIN.stroke_width(2)));
        }
        if let Some(pp) = p.paper {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, pp), (x1, pp)],
                    6,
                    4,
                    PLAIN.stroke_width(1),
                ))
                .map_err(err)?
                .label("plain (paper)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], PLAIN.stroke_width(1)));
        }
    }
    for (k, (mode, colour)) in MODES.into_iter().enumerate() {
        // Modes a few per cent apart on the log axis, so error bars at the
        // same ratio do not hide each other.
        let nudge = 1.0 + 0.03 * (k as f64 - 1.5);
        let mut ours: Vec<(f64, f64, f64)> = plotted
            .iter()
            .filter(|c| c.cell.mode == mode)
            .filter_map(|c| {
                c.mean()
                    .map(|m| (x_of(c) * nudge, m, c.sd().unwrap_or(0.0)))
            })
            .collect();
        ours.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut paper: Vec<(f64, f64)> = plotted
            .iter()
            .filter(|c| c.cell.mode == mode)
            .filter_map(|c| c.paper.map(|p| (x_of(c), p)))
            .collect();
        paper.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !ours.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    ours.iter().map(|&(x, m, _)| (x, m)),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{mode} (ours, mean ± sd)"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(ours.iter().map(|&(x, m, sd)| {
                    ErrorBar::new_vertical(x, m - sd, m, m + sd, colour.filled(), 8)
                }))
                .map_err(err)?;
        }
        if !paper.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    paper.iter().copied(),
                    6,
                    4,
                    colour.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("{mode} (paper)"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(1))
                });
            chart
                .draw_series(
                    paper
                        .iter()
                        .map(|&p| Circle::new(p, 4, colour.stroke_width(1))),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Test accuracy (left) and training loss (right) against iteration, one
/// series per run.
pub fn curves(title: &str, runs: &[RunCurve], stem: &Path) -> Result<Vec<PathBuf>, String> {
    if runs
        .iter()
        .all(|r| r.test_accuracy.is_empty() && r.train_loss.is_empty())
    {
        return Err(format!("{title}: no metrics recorded yet"));
    }
    svg_and_png!(stem, CURVES_SIZE, |root| curves_chart(root, title, runs))
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> Option<((f64, f64), (f64, f64))> {
    points.fold(None, |acc, (x, y)| {
        let ((a, b), (c, d)) = acc.unwrap_or(((x, x), (y, y)));
        Some(((a.min(x), b.max(x)), (c.min(y), d.max(y))))
    })
}

fn curves_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    runs: &[RunCurve],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 22)).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    type Pick = fn(&RunCurve) -> &[(f64, f64)];
    let sides: [(&str, Pick); 2] = [
        ("test accuracy", |r| &r.test_accuracy),
        ("training loss (mean over the logging interval)", |r| {
            &r.train_loss
        }),
    ];
    for (panel, (name, pick)) in panels.iter().zip(sides) {
        let Some(((x0, x1), (y0, y1))) = bounds(runs.iter().flat_map(|r| pick(r).iter().copied()))
        else {
            continue;
        };
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc(name)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .max_light_lines(1)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for (i, r) in runs.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let pts = pick(r);
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?
                .label(r.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
