//! `dropjit sweep`, `report` and `plot` end to end on the tiny model of
//! `tests/fixtures/tiny.json` and a data set each test writes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{assert_fails, assert_ok, dropjit, json, test_data, text, tiny};

/// A sweep file in `dir` over the tiny model: `cells` (JSON), seeds 0 and 1,
/// `train` settings merged over a short run on 256 / 64 images.
fn write_spec(dir: &Path, name: &str, cells: &str, train: &str) -> PathBuf {
    let spec = format!(
        r#"{{
  "name": "{name}",
  "model": "{}",
  "seeds": [0, 1],
  "train": {{"limit_train": 256, "limit_test": 64, "engine": "jit"{train}}},
  "cells": {cells}
}}"#,
        tiny()
    );
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, spec).unwrap();
    path
}

const CELLS: &str = r#"[
    {"mode": "plain"},
    {"modes": ["standard", "backward"], "ratios": [0.1]},
    {"name": "aug-drop1-plain", "mode": "augmented", "fwd": 0.2, "bwd": 0.01,
     "sites": {"drop1": {"mode": "plain"}}}
]"#;

const RUNS: [&str; 8] = [
    "plain-s0",
    "plain-s1",
    "standard-0.1-s0",
    "standard-0.1-s1",
    "backward-0.1-s0",
    "backward-0.1-s1",
    "aug-drop1-plain-s0",
    "aug-drop1-plain-s1",
];

/// What a run is remembered by, without timings: the summary's numbers,
/// the metrics' numbers and the final weights.
fn fingerprint(run: &Path) -> (String, Vec<String>, Vec<u8>) {
    let s = json(&run.join("summary.json"));
    let summary = format!(
        "{} {} {} {} {}",
        s["iterations"],
        s["final_test_accuracy"],
        s["final_test_loss"],
        s["final_train_loss"],
        s["best_test_accuracy"]
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {} {} {}",
                v["kind"], v["iteration"], v["loss"], v["accuracy"]
            )
        })
        .collect();
    (
        summary,
        metrics,
        std::fs::read(run.join("final.safetensors")).unwrap(),
    )
}

#[test]
fn sweep_runs_every_cell_and_status_and_report_read_them() {
    let (_d, data) = test_data();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let spec = write_spec(t, "cells", CELLS, r#", "iterations": 12"#);
    let spec = spec.display().to_string();
    let data = data.display().to_string();
    let out = dropjit(
        t,
        &[
            "sweep",
            &spec,
            "--data",
            &data,
            "--jobs",
            "2",
            "--threads",
            "2",
        ],
    );
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("8 of 8 runs finished"), "{stdout}");
    let sweep = t.join("runs/cells");
    for run in RUNS {
        let s = json(&sweep.join("runs").join(run).join("summary.json"));
        assert_eq!(s["iterations"], 12, "{run}");
    }
    // Each run is an ordinary train run with its cell's dropout and seed.
    let cfg = json(&sweep.join("runs/backward-0.1-s1/config.json"));
    assert_eq!(cfg["dropout"]["mode"], "backward");
    assert_eq!(cfg["dropout"]["bwd"], 0.1);
    assert_eq!(cfg["seed"], 1);
    assert_eq!(cfg["threads"], 1, "two jobs share the 2 threads");
    // The site override is in the cell's own copy of the model, which the run trains.
    let cfg = json(&sweep.join("runs/aug-drop1-plain-s0/config.json"));
    let model = PathBuf::from(cfg["model"]["path"].as_str().unwrap());
    assert_eq!(
        model,
        sweep
            .join("models/aug-drop1-plain.json")
            .canonicalize()
            .unwrap()
    );
    let g = json(&model);
    let drop1 = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "drop1")
        .unwrap();
    assert_eq!(drop1["mode"], "plain");
    // Plain and augmented-with-its-only-site-plain train the same network:
    // the same seed gives the same result.
    assert_eq!(
        fingerprint(&sweep.join("runs/plain-s0")),
        fingerprint(&sweep.join("runs/aug-drop1-plain-s0"))
    );
    assert_ne!(
        fingerprint(&sweep.join("runs/plain-s0")).2,
        fingerprint(&sweep.join("runs/standard-0.1-s0")).2
    );

    // A second invocation finds everything finished and trains nothing.
    let before = std::fs::metadata(sweep.join("runs/plain-s0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let out = dropjit(t, &["sweep", &spec, "--data", &data]);
    assert_ok(&out);
    assert!(text(&out.stdout).contains("(8 already finished)"));
    let after = std::fs::metadata(sweep.join("runs/plain-s0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    let out = dropjit(t, &["sweep", &spec, "--status"]);
    assert_ok(&out);
    let status = text(&out.stdout);
    assert!(
        status.contains("8 runs: 8 done, 0 partial, 0 failed, 0 pending"),
        "{status}"
    );
    for run in RUNS {
        assert!(status.contains(run), "{status}");
    }

    let out = dropjit(t, &["report", &sweep.display().to_string()]);
    assert_ok(&out);
    let md = text(&out.stdout);
    assert_eq!(
        md,
        std::fs::read_to_string(sweep.join("report.md")).unwrap()
    );
    assert!(
        md.contains("Every run changes the model's recipe: `{\"iterations\":12,"),
        "{md}"
    );
    let acc = |run: &str| {
        json(&sweep.join("runs").join(run).join("summary.json"))["final_test_accuracy"]
            .as_f64()
            .unwrap()
    };
    for cell in ["plain", "standard-0.1", "backward-0.1"] {
        let (a, b) = (acc(&format!("{cell}-s0")), acc(&format!("{cell}-s1")));
        let mean = (a + b) / 2.0;
        let sd = ((a - mean).powi(2) + (b - mean).powi(2)).sqrt();
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {cell} |")))
            .unwrap_or_else(|| panic!("no row for {cell}:\n{md}"));
        assert!(row.contains(&format!("{mean:.4} ± {sd:.4}")), "{row}");
        assert!(row.contains(&format!("s0: {a:.4}, s1: {b:.4}")), "{row}");
        assert!(row.contains("| 2 |"), "{row}");
    }
    for f in ["accuracy_vs_ratio", "curves-plain", "curves-standard-0.1"] {
        check_png(&sweep.join(format!("plots/{f}.png")));
        assert!(md.contains(&format!("plots/{f}.svg")), "{md}");
    }
    let svg = std::fs::read_to_string(sweep.join("plots/accuracy_vs_ratio.svg")).unwrap();
    for series in [
        "plain (ours)",
        "standard (ours, mean ± sd)",
        "backward (ours, mean ± sd)",
    ] {
        assert!(svg.contains(series), "no legend entry {series}");
    }
    assert!(
        !svg.contains("forward (ours"),
        "no forward cell in this sweep"
    );
}

/// A valid PNG of plausible size with more than one colour.
fn check_png(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert!(
        info.width >= 600 && info.height >= 400,
        "{}",
        path.display()
    );
    let px = &buf[..info.buffer_size()];
    let first = &px[..3];
    assert!(
        px.chunks(3).any(|p| p != first),
        "{} is blank",
        path.display()
    );
    (info.width, info.height)
}

/// Pixels of exactly this colour in an RGB PNG.
fn count_colour(path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf[..info.buffer_size()]
        .chunks(3)
        .filter(|p| *p == rgb)
        .count()
}

#[test]
fn plot_draws_one_series_per_run() {
    let (_d, data) = test_data();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let spec = write_spec(
        t,
        "two",
        r#"[{"mode": "plain"}]"#,
        r#", "iterations": 16, "log_every": 2, "eval_every": 4"#,
    );
    assert_ok(&dropjit(
        t,
        &[
            "sweep",
            &spec.display().to_string(),
            "--data",
            &data.display().to_string(),
        ],
    ));
    let runs = t.join("runs/two/runs");
    let (a, b) = (runs.join("plain-s0"), runs.join("plain-s1"));
    let out = dropjit(
        t,
        &[
            "plot",
            &a.display().to_string(),
            &b.display().to_string(),
            "--out",
            "pics/curves",
        ],
    );
    assert_ok(&out);
    assert_eq!((1200, 500), check_png(&t.join("pics/curves.png")));
    // The first two palette colours are the two runs' lines.
    for rgb in [[31, 119, 180], [255, 127, 14]] {
        assert!(
            count_colour(&t.join("pics/curves.png"), rgb) > 100,
            "{rgb:?}"
        );
    }
    let svg = std::fs::read_to_string(t.join("pics/curves.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    // Two panels (test accuracy, training loss), each with both runs' lines
    // and their legend swatches in the runs' colours, and the runs' labels.
    for colour in ["#1F77B4", "#FF7F0E"] {
        let lines = svg
            .split("<polyline")
            .skip(1)
            .filter(|p| {
                p.split('>')
                    .next()
                    .unwrap()
                    .contains(&format!("stroke=\"{colour}\""))
            })
            .count();
        assert_eq!(lines, 4, "{colour}: 2 panels x (line + legend swatch)");
    }
    let labels = |l: &str| svg.lines().filter(|x| x.trim() == l).count();
    assert_eq!(labels("plain-s0"), 2);
    assert_eq!(labels("plain-s1"), 2);
    // 16 iterations, evaluation every 4: the test-accuracy line has 4 points.
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches(r#""kind":"test""#).count(), 4);

    let out = dropjit(t, &["plot", "no-such-run", "--out", "x"]);
    assert_fails(&out, &["no-such-run"]);
}

fn sigkill(pid: u32) {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn a_killed_sweep_restarted_finishes_with_the_same_results() {
    let (_d, data) = test_data();
    let data = data.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Checkpoints every 4 iterations so that a kill falls between two.
    let cells = r#"[{"mode": "plain"}, {"mode": "standard", "fwd": 0.2}]"#;
    let settings = r#", "iterations": 40, "checkpoint_every": 4, "log_every": 1"#;
    let spec = write_spec(t, "whole", cells, settings);
    assert_ok(&dropjit(
        t,
        &["sweep", &spec.display().to_string(), "--data", &data],
    ));

    let spec = write_spec(t, "killed", cells, settings);
    let spec = spec.display().to_string();
    let sweep = [
        "sweep",
        spec.as_str(),
        "--data",
        data.as_str(),
        "--jobs",
        "2",
        "--threads",
        "2",
    ];
    let start = |t: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dropjit"))
            .args(sweep)
            .current_dir(t)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = start(t);
    // Kill the sweep itself (not its runs) once a run has a mid-run checkpoint.
    let runs = t.join("runs/killed/runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mid = ["plain-s0", "plain-s1"].iter().any(|r| {
            std::fs::read_to_string(runs.join(r).join("state.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| v["iteration"].as_u64())
                .is_some_and(|i| i >= 4)
        });
        if mid {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 2 minutes");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // --status sees the live runs through their locks.
    let status = text(&dropjit(t, &["sweep", &spec, "--status"]).stdout);
    assert!(status.contains("running, iteration"), "{status}");
    assert!(status.contains("running now)"), "{status}");
    sigkill(child.id());
    child.wait().unwrap();
    let partial = ["plain-s0", "plain-s1", "standard-0.2-s0", "standard-0.2-s1"]
        .iter()
        .filter(|r| !runs.join(r).join("summary.json").exists())
        .count();
    assert!(partial >= 2, "the kill came too late to test anything");

    // The same command again: waits for the orphaned runs' checkpoints,
    // resumes them, runs the rest.
    let out = dropjit(t, &sweep);
    assert_ok(&out);
    let whole = t.join("runs/whole/runs");
    for run in ["plain-s0", "plain-s1", "standard-0.2-s0", "standard-0.2-s1"] {
        let (want, got) = (fingerprint(&whole.join(run)), fingerprint(&runs.join(run)));
        let log = std::fs::read_to_string(runs.join(run).join("train.log")).unwrap_or_default();
        assert_eq!(
            want.0, got.0,
            "{run}: summary differs after the kill and restart\n{log}"
        );
        assert_eq!(
            want.1, got.1,
            "{run}: metrics differ after the kill and restart\n{log}"
        );
        // The weights: the first differing byte, not both files.
        let first = want.2.iter().zip(&got.2).position(|(a, b)| a != b);
        assert!(
            first.is_none() && want.2.len() == got.2.len(),
            "{run}: final weights differ after the kill and restart (byte {first:?})\n{log}"
        );
    }
    let log = std::fs::read_to_string(runs.join("plain-s0/train.log")).unwrap();
    assert!(log.contains("--resume"), "plain-s0 was not resumed:\n{log}");
}

#[test]
fn a_failing_run_is_reported_and_the_others_finish() {
    let (_d, data) = test_data();
    let data = data.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The second cell's batch is larger than its 256 training images.
    let cells =
        r#"[{"mode": "plain"}, {"name": "too-big", "mode": "plain", "train": {"batch": 1000}}]"#;
    let spec = write_spec(t, "failing", cells, r#", "iterations": 6"#);
    let spec = spec.display().to_string();
    let out = dropjit(t, &["sweep", &spec, "--data", &data]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("2 of 4 runs finished, 2 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed: too-big-s0: exit status 1"),
        "{stdout}"
    );
    assert!(stdout.contains("batch size 1000"), "{stdout}");
    let runs = t.join("runs/failing/runs");
    assert!(runs.join("plain-s1/summary.json").is_file());
    assert!(runs.join("too-big-s1/sweep-failed.txt").is_file());
    let out = dropjit(t, &["sweep", &spec, "--status"]);
    let status = text(&out.stdout);
    assert!(
        status.contains("4 runs: 2 done, 0 partial, 2 failed, 0 pending"),
        "{status}"
    );
    assert!(
        status.contains("too-big-s0") && status.contains("batch size 1000"),
        "{status}"
    );
    // The report shows the finished cell and says what is missing.
    let out = dropjit(
        t,
        &["report", &t.join("runs/failing").display().to_string()],
    );
    assert_ok(&out);
    let md = text(&out.stdout);
    assert!(md.contains("2 of 4 runs are not finished"), "{md}");
    assert!(
        md.contains("Runs that change the model's recipe: plain: {"),
        "{md}"
    );
    assert!(
        md.contains("too-big: {\"iterations\":6,\"batch\":1000,"),
        "{md}"
    );
}

#[test]
fn bad_sweep_files_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = tiny();
    let cases: &[(&str, &[&str])] = &[
        ("{", &["bad.json"]),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "plain"}], "colour": 1}"#,
            &["colour"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "sideways"}]}"#,
            &["cells[0]", "mode", "sideways"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "standard"}]}"#,
            &["cells[0]", "fwd", "needs"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "plain", "fwd": 0.1}]}"#,
            &["cells[0]", "fwd", "does not use"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "standard", "fwd": 1.0}]}"#,
            &["cells[0]", "fwd", "[0, 1)"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"modes": ["plain"], "ratios": [0.1]}]}"#,
            &["cells[0]", "plain has no ratio"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"modes": ["augmented"], "ratios": [0.1]}]}"#,
            &["cells[0]", "bwd"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "plain"}, {"mode": "plain"}]}"#,
            &["two cells are named 'plain'"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [], "cells": [{"mode": "plain"}]}"#,
            &["seeds"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": []}"#,
            &["cells", "no cells"],
        ),
        (
            r#"{"name": "x/y", "model": "M", "seeds": [0], "cells": [{"mode": "plain"}]}"#,
            &["name", "x/y"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"mode": "plain", "sites": {"drop1": {"mode": "plain"}}}]}"#,
            &["cells[0]", "needs a name"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"name": "c", "mode": "plain", "sites": {"conv1": {"mode": "plain"}}}]}"#,
            &["conv1", "not a dropout node"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "cells": [{"name": "c", "mode": "plain", "sites": {"drop9": {"fwd": 0.1}}}]}"#,
            &["drop9", "no node"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "train": {"schedule_scale": -1}, "cells": [{"mode": "plain"}]}"#,
            &["schedule_scale"],
        ),
        (
            r#"{"name": "x", "model": "M", "seeds": [0], "train": {"engine": "gpu"}, "cells": [{"mode": "plain"}]}"#,
            &["engine", "gpu"],
        ),
        (
            r#"{"name": "x", "model": "no-such-model.json", "seeds": [0], "cells": [{"mode": "plain"}]}"#,
            &["model", "relative to the sweep file"],
        ),
    ];
    for (spec, fragments) in cases {
        let path = t.join("bad.json");
        std::fs::write(&path, spec.replace("\"M\"", &format!("\"{model}\""))).unwrap();
        let out = dropjit(
            t,
            &["sweep", "bad.json", "--data", "nowhere", "--no-download"],
        );
        assert_fails(&out, fragments);
    }
    assert_fails(&dropjit(t, &["sweep", "missing.json"]), &["missing.json"]);
    assert_fails(&dropjit(t, &["report", "."]), &["not a sweep directory"]);
    let ok = write_spec(t, "ok", r#"[{"mode": "plain"}]"#, "");
    let ok = ok.display().to_string();
    assert_fails(&dropjit(t, &["sweep", &ok, "--jobs", "0"]), &["--jobs"]);
    assert_fails(
        &dropjit(t, &["sweep", &ok, "--data", "nowhere", "--no-download"]),
        &["nowhere"],
    );
}

#[test]
fn slurm_dry_run_writes_an_array_of_the_unfinished_runs() {
    let (_d, data) = test_data();
    let data = data.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let spec = write_spec(t, "batch", CELLS, r#", "iterations": 4"#);
    let spec = spec.display().to_string();
    let slurm = [
        "--slurm",
        "--dry-run",
        "--partition",
        "short",
        "--time",
        "01:00:00",
        "--cpus-per-task",
        "2",
        "--sbatch=--mem=2G",
    ];
    let mut args = vec!["sweep", spec.as_str(), "--data", data.as_str()];
    args.extend(slurm);
    let out = dropjit(t, &args);
    assert_ok(&out);
    let script = text(&out.stdout);
    let dir = t.join("runs/batch").canonicalize().unwrap();
    for line in [
        "#SBATCH --array=0-7\n",
        "#SBATCH --partition=short\n",
        "#SBATCH --time=01:00:00\n",
        "#SBATCH --cpus-per-task=2\n",
        "#SBATCH --mem=2G\n",
        &format!("#SBATCH --output={}/slurm/%A_%a.out\n", dir.display()),
        "--run-index \"$SLURM_ARRAY_TASK_ID\" --threads \"${SLURM_CPUS_PER_TASK:-1}\"",
    ] {
        assert!(script.contains(line), "no {line:?} in\n{script}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("slurm/sweep.sbatch")).unwrap(),
        script
            .lines()
            .filter(|l| !l.starts_with("# written"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    );
    // What an array task does, by hand: runs 0 and 3. Tasks start together on
    // one directory, so they write nothing shared (sweep.json stays as the
    // submission wrote it).
    let modified = || {
        std::fs::metadata(dir.join("sweep.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let written = modified();
    for i in ["0", "3"] {
        let out = dropjit(
            t,
            &[
                "sweep",
                &spec,
                "--data",
                &data,
                "--run-index",
                i,
                "--threads",
                "1",
            ],
        );
        assert_ok(&out);
    }
    assert_eq!(written, modified(), "an array task rewrote sweep.json");
    assert_fails(
        &dropjit(t, &["sweep", &spec, "--data", &data, "--run-index", "8"]),
        &["--run-index 8", "0..8"],
    );
    let out = dropjit(t, &args);
    assert!(text(&out.stdout).contains("#SBATCH --array=1-2,4-7\n"));
    // Without --dry-run on a machine without Slurm: a clear error, the script kept.
    if Command::new("sbatch").arg("--version").output().is_err() {
        let out = dropjit(t, &["sweep", &spec, "--data", &data, "--slurm"]);
        assert_fails(&out, &["sbatch", "sweep.sbatch"]);
    }
}
