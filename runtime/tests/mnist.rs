//! MNIST-format (IDX) data end to end: LeNet-5 trains on a small learnable set
//! written by the test, and bad IDX files are one-line errors naming the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dropjit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dropjit"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("DROPJIT_DATA")
        .output()
        .expect("run dropjit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// `n` 28x28 images: class k is a bright bar on rows 2k+4..2k+6 over
/// deterministic noise, so a small net can learn it in a few hundred steps.
fn images_and_labels(n: usize, seed: usize) -> (Vec<u8>, Vec<u8>) {
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = (i * 7 + seed) % 10;
        labels.push(k as u8);
        for p in 0..784 {
            let (r, c) = (p / 28, p % 28);
            let noise = ((i * 131 + p * 17 + seed) % 61) as u8;
            let bar = (2 * k + 4..2 * k + 6).contains(&r) && (4..24).contains(&c);
            images.push(if bar { 200 + noise / 2 } else { noise });
        }
    }
    (images, labels)
}

fn write_mnist(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n, seed) in [("train", train, 1), ("t10k", test, 5)] {
        let (images, labels) = images_and_labels(n, seed);
        let images = idx(0x803, &[n as u32, 28, 28], &images);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(0x801, &[n as u32], &labels),
        )
        .unwrap();
    }
}

#[test]
fn lenet5_trains_on_mnist_format_data() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    write_mnist(&data.join("mnist"), 640, 200);
    let run = t.path().join("run");
    let out = dropjit(&[
        "train",
        "--graph",
        "models/lenet5.json",
        "--data",
        data.to_str().unwrap(),
        "--no-download",
        "--iterations",
        "200",
        "--batch",
        "32",
        "--fwd",
        "0.1",
        "--bwd",
        "0.0001",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let acc = summary["final_test_accuracy"].as_f64().expect("accuracy");
    assert!(acc > 0.9, "test accuracy {acc}\n{}", text(&out.stdout));
    // The same weights evaluated again give the same accuracy.
    let eval = dropjit(&[
        "eval",
        "--graph",
        "models/lenet5.json",
        "--data",
        data.to_str().unwrap(),
        "--weights",
        run.join("final.safetensors").to_str().unwrap(),
        "--engine",
        "jit",
    ]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    assert!(
        text(&eval.stdout).contains(&format!("{:.4}", acc)),
        "train said {acc}, eval said:\n{}",
        text(&eval.stdout)
    );
}

#[test]
fn a_model_whose_image_shape_differs_from_the_data_names_both() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    write_mnist(&data.join("mnist"), 20, 10);
    let out = dropjit(&[
        "train",
        "--graph",
        "models/convnet_quick.json",
        "--data",
        data.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--no-download",
        "--iterations",
        "1",
        "--out",
        t.path().join("run").to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[3, 32, 32]") && err.contains("[1, 28, 28]"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_idx_files_are_one_line_errors_naming_the_file() {
    type Damage = Box<dyn Fn(&Path)>;
    let cases: [(&str, Damage, &str); 4] = [
        (
            "truncated images",
            Box::new(|d: &Path| {
                let f = d.join("train-images-idx3-ubyte");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() - 100]).unwrap();
            }),
            "train-images-idx3-ubyte: wrong size: header says [20, 28, 28] = 15680 bytes of data, the file has 15580",
        ),
        (
            "wrong magic",
            Box::new(|d: &Path| {
                let f = d.join("t10k-labels-idx1-ubyte");
                let mut b = std::fs::read(&f).unwrap();
                b[3] = 0x03;
                std::fs::write(&f, b).unwrap();
            }),
            "t10k-labels-idx1-ubyte: wrong size: IDX magic 0x00000803, expected 0x00000801",
        ),
        (
            "absurd dimensions",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("train-images-idx3-ubyte"),
                    idx(0x803, &[u32::MAX, u32::MAX, u32::MAX], &[]),
                )
                .unwrap();
            }),
            "train-images-idx3-ubyte: wrong size:",
        ),
        (
            "label out of range",
            Box::new(|d: &Path| {
                std::fs::write(d.join("train-labels-idx1-ubyte"), idx(0x801, &[20], &[10; 20]))
                    .unwrap();
            }),
            "train-labels-idx1-ubyte: record 0 has label 10",
        ),
    ];
    for (what, damage, want) in cases {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        write_mnist(&data.join("mnist"), 20, 10);
        damage(&data.join("mnist"));
        let out = dropjit(&[
            "train",
            "--graph",
            "models/lenet5.json",
            "--data",
            data.to_str().unwrap(),
            "--no-download",
            "--iterations",
            "1",
            "--out",
            t.path().join("run").to_str().unwrap(),
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}
