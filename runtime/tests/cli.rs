//! The `dropjit` binary as a user runs it: exit codes, stdout, and errors as
//! one short `error: ` report, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dropjit_graph::{Graph, GraphLoadOptions};

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
        GraphLoadOptions::default(),
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

const TINY: &str = "tests/fixtures/tiny_bn.json";

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, fragment: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(fragment),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn compile_emits_every_graph_stage() {
    for emit in ["graph", "dot", "backward", "step", "eval"] {
        let out = run_dropjit(&[
            "compile", "--graph", TINY, "--emit", emit, "--fwd", "0.2", "--bwd", "0.1",
        ]);
        let text = ok(&out);
        assert!(!text.is_empty(), "{emit}");
    }
    let step = ok(&run_dropjit(&[
        "compile", "--graph", TINY, "--emit", "step", "--fwd", "0.2", "--bwd", "0.1",
    ]));
    assert!(
        step.contains("sgd_update") && step.contains("F(p=0.2)*G(p=0.1)"),
        "{step}"
    );
}

#[test]
fn bad_dropout_flags_are_rejected() {
    for (flags, fragment) in [
        (
            vec!["--fwd", "1.0"],
            "--fwd: dropout ratio must be in [0, 1), got 1",
        ),
        (
            vec!["--bwd", "-0.1"],
            "--bwd: dropout ratio must be in [0, 1), got -0.1",
        ),
        (
            vec!["--fwd", "NaN"],
            "--fwd: dropout ratio must be in [0, 1), got NaN",
        ),
        (
            vec!["--dropout", "forward"],
            "--dropout forward needs --fwd",
        ),
        // A ratio the mode does not use is refused, naming the flag.
        (
            vec!["--dropout", "standard", "--fwd", "0.2", "--bwd", "0.0001"],
            "--bwd: --dropout standard does not use it",
        ),
        (
            vec!["--dropout", "plain", "--fwd", "0.2"],
            "--fwd: --dropout plain does not use it",
        ),
        (
            vec!["--dropout", "backward", "--fwd", "0.2", "--bwd", "0.1"],
            "--fwd: --dropout backward does not use it",
        ),
        (
            vec!["--dropout", "forward", "--fwd", "0.2", "--bwd", "0.1"],
            "--bwd: --dropout forward does not use it",
        ),
    ] {
        let mut args = vec!["compile", "--graph", TINY, "--emit", "backward"];
        args.extend(flags);
        fails_with(&run_dropjit(&args), fragment);
    }
}

#[test]
fn gradcheck_prints_its_table_and_passes() {
    let out = run_dropjit(&["gradcheck", "--graph", TINY, "--batch", "3"]);
    // Progress on stderr, one line per parameter (a long check is not silent).
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    let tiny = dropjit_graph::load(&repo_root().join(TINY), GraphLoadOptions::default()).unwrap();
    let params = tiny.trainable_params().count();
    assert_eq!(
        progress.matches("parameters checked").count(),
        params,
        "{progress}"
    );
    assert!(progress.contains(&format!("gradcheck: {params}/{params} parameters checked")));
    let text = ok(&out);
    for name in ["conv1.weight", "bn1.weight", "conv2.bias", "fc.weight"] {
        assert!(text.contains(name), "{text}");
    }
    assert!(text.contains("gradcheck passed"), "{text}");
    // Steps so large that no element's quotients agree leave every parameter
    // without a sample: a failure, with its own exit code.
    let out = run_dropjit(&[
        "gradcheck",
        "--graph",
        TINY,
        "--max-step",
        "1",
        "--min-step",
        "0.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no usable element") && text.contains("gradcheck FAILED"),
        "{text}"
    );
}

#[test]
fn gradcheck_passes_a_vgg_net_with_batch_norm_after_biased_convolutions() {
    // The conv biases' true gradient is zero: a fixed step and floor failed it.
    let text = ok(&run_dropjit(&[
        "gradcheck",
        "--graph",
        "graph/tests/nets/vgg_bn.json",
    ]));
    assert!(
        text.contains("conv1_1.bias") && text.contains("gradcheck passed"),
        "{text}"
    );
}

#[test]
fn gradcheck_names_the_checks_of_the_modes_it_cannot_check() {
    for flags in [
        &["--dropout", "forward", "--fwd", "0.3"][..],
        &["--dropout", "backward", "--bwd", "0.3"],
        &["--dropout", "augmented", "--fwd", "0.2", "--bwd", "0.1"],
        &["--fwd", "0.2", "--bwd", "0.1"],
    ] {
        let mut args = vec!["gradcheck", "--graph", TINY];
        args.extend(flags);
        let out = run_dropjit(&args);
        for fragment in [
            "not the derivative of any loss",
            "tools/torch_check.py",
            "--masks-out",
            "graph/tests/dropout_modes.rs",
        ] {
            fails_with(&out, fragment);
        }
    }
}

fn write_batch(path: &Path, shape: &[usize], labels: &[i64]) {
    let n: usize = shape.iter().product();
    let images: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    dropjit::tensors::write(
        path,
        &[
            (
                "input".into(),
                shape.to_vec(),
                dropjit::tensors::Out::F32(&images),
            ),
            (
                "label".into(),
                vec![labels.len()],
                dropjit::tensors::Out::I64(labels),
            ),
        ],
        None,
    )
    .expect("write batch");
}

#[test]
fn grad_writes_loss_and_every_gradient_with_pytorch_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (w, b, g) = (
        dir.path().join("w.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("g.safetensors"),
    );
    ok(&run_dropjit(&[
        "init",
        "--graph",
        TINY,
        "--out",
        w.to_str().unwrap(),
        "--seed",
        "4",
    ]));
    // `init` does not overwrite a file unless told to.
    let again = ["init", "--graph", TINY, "--out", w.to_str().unwrap()];
    fails_with(&run_dropjit(&again), "exists; give --force to replace it");
    ok(&run_dropjit(
        &[&again[..], &["--force", "--seed", "4"]].concat(),
    ));
    write_batch(&b, &[2, 3, 8, 8], &[3, 9]);
    let text = ok(&run_dropjit(&[
        "grad",
        "--graph",
        TINY,
        "--weights",
        w.to_str().unwrap(),
        "--batch-file",
        b.to_str().unwrap(),
        "--out",
        g.to_str().unwrap(),
        "--fwd",
        "0.3",
        "--bwd",
        "0.2",
    ]));
    assert!(text.contains("loss "), "{text}");
    let grads = dropjit::tensors::read(&g).expect("gradients");
    let tiny = dropjit_graph::load(&repo_root().join(TINY), GraphLoadOptions::default()).unwrap();
    for p in tiny.trainable_params() {
        let t = &grads[&tiny.param(p).name];
        assert_eq!(t.shape, tiny.param(p).dims);
    }
    assert!(grads.contains_key("loss"));
    assert!(
        !grads.contains_key("bn1.running_mean"),
        "state is not a gradient"
    );

    // Bad batches name the file and the tensor.
    write_batch(&b, &[2, 3, 8, 8], &[3, 10]);
    fails_with(
        &run_dropjit(&[
            "grad",
            "--graph",
            TINY,
            "--batch-file",
            b.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
        ]),
        "label[1] = 10 is outside 0..10",
    );
    write_batch(&b, &[2, 3, 7, 8], &[3, 1]);
    fails_with(
        &run_dropjit(&[
            "grad",
            "--graph",
            TINY,
            "--batch-file",
            b.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
        ]),
        "tensor 'input' has shape [2, 3, 7, 8], expected [2, 3, 8, 8]",
    );
    std::fs::write(&w, b"not a safetensors file").unwrap();
    write_batch(&b, &[2, 3, 8, 8], &[3, 1]);
    fails_with(
        &run_dropjit(&[
            "grad",
            "--graph",
            TINY,
            "--weights",
            w.to_str().unwrap(),
            "--batch-file",
            b.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
        ]),
        "not a safetensors file",
    );
}

/// `grad --masks-out` writes every site's `F` and `B` of the step, named by
/// site, shaped like the site's input, with the values the contract gives.
#[test]
fn grad_masks_out_writes_each_sites_forward_and_backward_mask() {
    use dropjit_graph::mask::{is_kept, keep_threshold, mask_key, Stream};
    const FIXTURE: &str = "tests/fixtures/drop_pool_bn_add.json";
    let dir = tempfile::tempdir().expect("temp dir");
    let (b, g, m) = (
        dir.path().join("b.safetensors"),
        dir.path().join("g.safetensors"),
        dir.path().join("m.safetensors"),
    );
    write_batch(&b, &[2, 3, 8, 8], &[3, 9]);
    let run = |ratios: &[&str]| {
        let mut args = vec![
            "grad",
            "--graph",
            FIXTURE,
            "--batch-file",
            b.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
            "--masks-out",
            m.to_str().unwrap(),
            "--seed",
            "6",
            "--step",
            "2",
        ];
        args.extend_from_slice(ratios);
        let text = ok(&run_dropjit(&args));
        assert!(
            text.contains("F and B of 3 dropout sites written"),
            "{text}"
        );
        dropjit::tensors::read(&m).expect("masks file")
    };
    let values = |t: &dropjit::tensors::Tensor| match &t.values {
        dropjit::tensors::Values::F32(v) => v.clone(),
        dropjit::tensors::Values::I64(_) => panic!("masks are f32"),
    };
    let masks = run(&["--dropout", "augmented", "--fwd", "0.3", "--bwd", "0.2"]);
    assert_eq!(masks.len(), 6);
    for (site, (name, shape)) in [
        ("drop1", vec![2, 4, 8, 8]),
        ("drop2", vec![2, 6, 4, 4]),
        ("drop3", vec![2, 6, 4, 4]),
    ]
    .into_iter()
    .enumerate()
    {
        let (f, bm) = (&masks[&format!("{name}.F")], &masks[&format!("{name}.B")]);
        assert_eq!((&f.shape, &bm.shape), (&shape, &shape), "{name}");
        let (f, bm) = (values(f), values(bm));
        // F: the contract's hash, kept elements scaled by 1/0.7.
        let key = mask_key(6, 2, site as u32, Stream::F);
        for (e, &v) in f.iter().enumerate() {
            let want = if is_kept(key, e as u32, keep_threshold(0.3)) {
                (1.0 / 0.7f64) as f32
            } else {
                0.0
            };
            assert_eq!(v, want, "{name}.F[{e}]");
        }
        // B = F ⊙ G: kept only where F keeps, scaled by 1/(0.7 · 0.8).
        let scale = (1.0 / (0.7 * 0.8f64)) as f32;
        assert!(
            bm.iter().all(|&v| v == 0.0 || v == scale),
            "{name}.B values"
        );
        assert!(
            f.iter().zip(&bm).all(|(&a, &c)| c == 0.0 || a != 0.0),
            "{name}: B ⊆ F"
        );
        let zeros = |v: &[f32]| v.iter().filter(|&&x| x == 0.0).count();
        assert!(
            zeros(&bm) > zeros(&f) && zeros(&f) > 0,
            "{name}: G drops more"
        );
    }
    // Forward mode: B is all ones; backward mode: F is.
    let masks = run(&["--dropout", "forward", "--fwd", "0.3"]);
    assert!(values(&masks["drop2.B"]).iter().all(|&v| v == 1.0));
    assert!(values(&masks["drop2.F"]).contains(&0.0));
    let masks = run(&["--dropout", "backward", "--bwd", "0.3"]);
    assert!(values(&masks["drop2.F"]).iter().all(|&v| v == 1.0));
    assert!(values(&masks["drop2.B"]).contains(&0.0));
}

/// A weights file with tensors, given for a graph without parameters: an
/// error naming the stray tensor, not an index panic.
#[test]
fn weights_for_a_graph_without_parameters_name_the_stray_tensor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (w, b, g) = (
        dir.path().join("w.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("g.safetensors"),
    );
    ok(&run_dropjit(&[
        "init",
        "--graph",
        TINY,
        "--out",
        w.to_str().unwrap(),
    ]));
    write_batch(&b, &[2, 10, 1, 1], &[3, 9]);
    fails_with(
        &run_dropjit(&[
            "grad",
            "--graph",
            "tests/fixtures/no_params.json",
            "--weights",
            w.to_str().unwrap(),
            "--batch-file",
            b.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
        ]),
        "model no_params has no parameters",
    );
}

/// The memory limit applies at the batch actually used, and a batch that
/// would overflow a size is refused before any size is computed.
#[test]
fn memory_limit_applies_at_the_batch_actually_used() {
    let resnet = "models/resnet20.json";
    for (args, fragment) in [
        (
            vec!["compile", "--graph", resnet, "--emit", "plan", "--batch", "100000"],
            "at batch 100000 the step needs 143.44 GiB (arena and state), over the memory limit of 8.00 GiB",
        ),
        (
            vec!["bench", "--graph", resnet, "--batch", "18014398509481985"],
            "node 'image': f32[N,3,32,32] at batch 18014398509481985 alone exceeds the memory limit",
        ),
        (
            vec!["gradcheck", "--graph", resnet, "--batch", "1000000"],
            "alone exceeds the memory limit of 8.00 GiB",
        ),
        (
            vec![
                "compile", "--graph", resnet, "--emit", "plan", "--batch", "128",
                "--memory-limit-gib", "0.1",
            ],
            "over the memory limit of 0.10 GiB",
        ),
    ] {
        fails_with(&run_dropjit(&args), fragment);
    }
    ok(&run_dropjit(&[
        "compile", "--graph", resnet, "--emit", "plan", "--batch", "128",
    ]));
}

/// `bench --profile` names each convolution's algorithm, and marks the
/// Winograd launches' rates as effective (counted in a direct convolution's
/// multiply-adds); `DROPJIT_WINOGRAD=off` keeps every launch direct.
#[test]
fn bench_profile_names_the_convolution_algorithms() {
    #[cfg(target_arch = "x86_64")]
    let vector =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    let args = [
        "bench",
        "--graph",
        "models/resnet20.json",
        "--batch",
        "2",
        "--steps",
        "1",
        "--profile",
    ];
    let out = run_dropjit(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |shape: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(shape))
            .unwrap_or_else(|| panic!("no {shape} line in:\n{text}"))
            .to_string()
    };
    let layer = line("Forward 16x32x32 -> 16 k3 s1 p1");
    if vector {
        assert!(
            layer.contains("(winograd ") && layer.ends_with("(effective)"),
            "{layer}"
        );
        let strided = line("Forward 16x32x32 -> 32 k3 s2 p1");
        assert!(
            strided.contains("(direct ") && !strided.contains("effective"),
            "{strided}"
        );
    } else {
        assert!(layer.contains("(im2col)"), "{layer}");
    }
    let off = Command::new(env!("CARGO_BIN_EXE_dropjit"))
        .args(args)
        .current_dir(repo_root())
        .env("DROPJIT_WINOGRAD", "off")
        .output()
        .expect("run the dropjit binary");
    assert!(off.status.success());
    let text = String::from_utf8_lossy(&off.stdout);
    assert!(!text.contains("winograd"), "{text}");
}

/// `bench --vs-plain` times the plain step alternating with the chosen mode
/// in one process and reports the ratio of their speeds (text and JSON);
/// it refuses the evaluation pass and the profile.
#[test]
fn bench_vs_plain_reports_the_modes_cost() {
    let base = [
        "bench",
        "--graph",
        "models/convnet_quick.json",
        "--batch",
        "2",
        "--steps",
        "3",
        "--fwd",
        "0.2",
        "--bwd",
        "0.0001",
        "--vs-plain",
    ];
    let text = ok(&run_dropjit(&base));
    let line = text
        .lines()
        .find(|l| l.contains("against plain, alternating step by step"))
        .unwrap_or_else(|| panic!("no comparison line in:\n{text}"));
    assert!(
        line.contains("augmented(fwd=0.2,bwd=0.0001) / plain"),
        "{line}"
    );
    assert!(line.contains("3 pairs"), "{line}");
    let json: serde_json::Value =
        serde_json::from_str(ok(&run_dropjit(&[&base[..], &["--json"]].concat())).trim())
            .expect("one JSON object");
    let ratio = json["vs_plain_median"].as_f64().expect("vs_plain_median");
    let plain_ms = json["plain_step_ms_median"]
        .as_f64()
        .expect("plain_step_ms_median");
    let [lo, hi] = [0, 1].map(|i| json["vs_plain_quartiles"][i].as_f64().expect("quartiles"));
    assert!(
        ratio > 0.0 && plain_ms > 0.0 && lo <= ratio && ratio <= hi,
        "{json}"
    );
    // Without --vs-plain there is no comparison.
    let alone = ok(&run_dropjit(&base[..base.len() - 1]));
    assert!(!alone.contains("against plain"), "{alone}");
    for extra in ["--eval", "--profile"] {
        fails_with(
            &run_dropjit(&[&base[..], &[extra]].concat()),
            "--vs-plain times training steps",
        );
    }
}
