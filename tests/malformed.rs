//! The malformed-graph corpus `tests/bad_graphs/`: every file must be rejected
//! by `dropjit_graph::load` with the message fragment of
//! `tests/bad_graphs/expected.txt` (the CLI side is `runtime/tests/cli.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use dropjit_graph::GraphLoadOptions;
use dropjit_tests::repo_root;

fn corpus_dir() -> PathBuf {
    repo_root().join("tests").join("bad_graphs")
}

/// `(file name, expected fragment)` for each manifest line; `#` starts a comment.
fn manifest() -> Vec<(String, String)> {
    let path = corpus_dir().join("expected.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let (file, fragment) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("expected.txt:{}: want `file.json<TAB>fragment`", i + 1));
            assert!(
                !fragment.trim().is_empty(),
                "expected.txt:{}: empty fragment",
                i + 1
            );
            (file.to_string(), fragment.to_string())
        })
        .collect()
}

#[test]
fn manifest_covers_every_file() {
    let listed: Vec<String> = manifest().into_iter().map(|(f, _)| f).collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a file is listed twice");
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("read tests/bad_graphs")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != "expected.txt")
        .collect();
    let orphans: Vec<&String> = on_disk.iter().filter(|f| !unique.contains(f)).collect();
    assert!(
        orphans.is_empty(),
        "files without a manifest line: {orphans:?}"
    );
    let missing: Vec<&&String> = unique.iter().filter(|f| !on_disk.contains(**f)).collect();
    assert!(
        missing.is_empty(),
        "manifest lines without a file: {missing:?}"
    );
    assert!(on_disk.len() >= 30, "only {} bad graphs", on_disk.len());
}

#[test]
fn load_rejects_each_with_its_message() {
    let mut failures = Vec::new();
    for (file, fragment) in manifest() {
        let path = corpus_dir().join(&file);
        match dropjit_graph::load(&path, GraphLoadOptions::default()) {
            Ok(_) => failures.push(format!("{file}: loaded without error")),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(&fragment) {
                    failures.push(format!("{file}:\n  got:  {msg}\n  want: {fragment}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
