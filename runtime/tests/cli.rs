//! The `dropjit` binary as a user runs it: exit codes, stdout, and errors as
//! one short `error: ` report, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dropjit_graph::{Graph, LoadOptions};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

fn run_dropjit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dropjit"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run the dropjit binary")
}

fn model(name: &str) -> Graph {
    dropjit_graph::load(
        &repo_root().join("models").join(format!("{name}.json")),
        LoadOptions::default(),
    )
    .expect("shipped model loads")
}

/// `(file name, expected fragment)` of `tests/bad_graphs/expected.txt`.
fn manifest() -> Vec<(String, String)> {
    let path = repo_root().join("tests/bad_graphs/expected.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (f, frag) = l.split_once('\t').expect("file<TAB>fragment");
            (f.to_string(), frag.to_string())
        })
        .collect()
}

#[test]
fn cli_reports_each_in_a_short_error() {
    let mut failures = Vec::new();
    for (file, fragment) in manifest() {
        let rel = format!("tests/bad_graphs/{file}");
        let out = run_dropjit(&["info", "--graph", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut problems = Vec::new();
        if out.status.success() {
            problems.push("exit code 0".to_string());
        }
        if stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if !stderr.starts_with("error: ") {
            problems.push("stderr does not start with `error: `".to_string());
        }
        if !stderr.contains(&fragment) {
            problems.push(format!("no `{fragment}`"));
        }
        if stderr.lines().count() > 3 {
            problems.push(format!("{} lines on stderr", stderr.lines().count()));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{file}: {} (status {}); stderr:\n{stderr}",
                problems.join(", "),
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cli_info_resnet20() {
    let out = run_dropjit(&["info", "--graph", "models/resnet20.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("269,722"), "{stdout}");
    assert!(stdout.contains("40,551,040"), "{stdout}");
    assert_eq!(stdout, dropjit_graph::info::info_text(&model("resnet20")));
}

#[test]
fn cli_compile_dot_convnet_quick() {
    let out = run_dropjit(&[
        "compile",
        "--graph",
        "models/convnet_quick.json",
        "--emit",
        "dot",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("digraph "), "{stdout}");
    assert_eq!(
        stdout,
        dropjit_graph::dot::graph_dot(&model("convnet_quick"))
    );
}
