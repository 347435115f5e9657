//! Helpers shared by the runtime's end-to-end tests: the binary, a CIFAR-10
//! format data set each test writes, and checks of a command's outcome.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

pub fn tiny() -> String {
    repo_root()
        .join("tests/fixtures/tiny.json")
        .display()
        .to_string()
}

/// A CIFAR-10-format data set written by the test into a temporary directory
/// (kept alive by the returned guard): 5 training batches of 200 images, 1000
/// test images. Class k brightens channel k % 3 in row band k / 3 over
/// deterministic noise, so a small net learns it in a few epochs. No test
/// depends on data outside the repository.
pub fn test_data() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let records = |n: usize, seed: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 3073);
        for i in 0..n {
            let k = (i * 7 + seed) % 10;
            out.push(k as u8);
            for p in 0..3072 {
                let (c, r) = (p / 1024, p % 1024 / 32);
                let noise = ((i * 131 + p * 17 + seed * 7) % 97) as u8;
                let lit = c == k % 3 && r / 8 == k / 3;
                out.push(if lit { 120 + noise } else { noise });
            }
        }
        out
    };
    for b in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{b}.bin")), records(200, b)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), records(1000, 9)).unwrap();
    let root = dir.path().to_path_buf();
    (dir, root)
}

/// The shared `cifar10-mini` set where `DROPJIT_TEST_DATA` points at it: an
/// extra some tests also run on (never instead of the generated set).
pub fn mini_set() -> Option<PathBuf> {
    let d = PathBuf::from(std::env::var_os("DROPJIT_TEST_DATA")?);
    assert!(
        d.join("cifar-10-batches-bin/data_batch_1.bin").is_file(),
        "DROPJIT_TEST_DATA={} has no cifar-10-batches-bin/data_batch_1.bin",
        d.display()
    );
    Some(d)
}

pub fn dropjit(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dropjit"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the dropjit binary")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Fails with exit code 1, one `error: ` report containing every fragment, no panic.
pub fn assert_fails(out: &Output, fragments: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert!(stderr.starts_with("error: "), "stderr:\n{stderr}");
    for f in fragments {
        assert!(stderr.contains(f), "no `{f}` in stderr:\n{stderr}");
    }
}

pub fn json(path: &Path) -> Value {
    let s = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
