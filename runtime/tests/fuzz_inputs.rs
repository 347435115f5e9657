//! Structure-aware mutation of what users hand dropjit: the model files (JSON
//! values replaced by absurd numbers, wrong types, deleted keys, truncated
//! text) and the data files (CIFAR records, IDX headers, MAT files: truncated,
//! bytes overwritten, sizes made absurd). Every case must end in `Ok` or a
//! one-line error: never a panic, and no single allocation above 1 GiB (a
//! counting allocator watches), whatever the file claims.
//!
//! CI runs a fixed set of cases; a long run:
//!   DROPJIT_FUZZ_CASES=5000 DROPJIT_FUZZ_SEED=7 cargo test --release -p dropjit --test fuzz_inputs

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use dropjit_codegen::{compile, CompileOptions, StateLayout};
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::step::{training_step, SgdConfig};
use dropjit_graph::GraphLoadOptions;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

/// The system allocator, noting the largest single request.
struct Watch;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

const MAX_ALLOCATION: usize = 1 << 30;

fn config() -> Config {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Config {
        cases: env("DROPJIT_FUZZ_CASES", 300) as u32,
        rng_seed: RngSeed::Fixed(env("DROPJIT_FUZZ_SEED", 1)),
        ..Config::default()
    }
}

/// Runs `f` (which returns the error text, if any) and checks the contract.
fn contract(what: &str, f: impl FnOnce() -> Option<String> + std::panic::UnwindSafe) {
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(f);
    let largest = LARGEST.load(Ordering::Relaxed);
    match outcome {
        Err(_) => panic!("{what}: panicked"),
        Ok(Some(err)) => {
            assert!(!err.trim().is_empty(), "{what}: empty error");
            assert!(
                err.lines().count() <= 2,
                "{what}: error of {} lines:\n{err}",
                err.lines().count()
            );
        }
        Ok(None) => {}
    }
    assert!(
        largest <= MAX_ALLOCATION,
        "{what}: allocated {largest} bytes at once"
    );
}

// ---------------------------------------------------------------- model files

const MODELS: [&str; 5] = [
    "models/convnet_quick.json",
    "models/resnet20.json",
    "models/lenet5.json",
    "tests/fixtures/tiny_bn.json",
    "tests/fixtures/drop_pool_bn_add.json",
];

/// Replacement values: absurd numbers, wrong types.
fn absurd(k: u8) -> Value {
    match k % 12 {
        0 => Value::from(0),
        1 => Value::from(-1),
        2 => Value::from(1u64 << 31),
        3 => Value::from(u64::MAX),
        4 => Value::from(1e300),
        5 => Value::from(0.5),
        6 => Value::from("x"),
        7 => Value::Null,
        8 => Value::Array(vec![]),
        9 => Value::Object(Default::default()),
        10 => Value::from(65536),
        _ => Value::from(true),
    }
}

/// Every value's location, depth first.
fn locations(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                path.push(k.clone());
                locations(c, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(i.to_string());
                locations(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k).expect("path exists"),
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        _ => unreachable!(),
    })
}

fn mutate_model(text: &str, edits: &[(usize, u8, bool)], cut: Option<usize>) -> String {
    let mut v: Value = serde_json::from_str(text).unwrap();
    for &(pick, kind, delete) in edits {
        let mut all = Vec::new();
        locations(&v, &mut Vec::new(), &mut all);
        let path = &all[pick % all.len()];
        if delete && !path.is_empty() {
            let (last, parent) = path.split_last().unwrap();
            match at(&mut v, parent) {
                Value::Object(m) => {
                    m.remove(last);
                }
                Value::Array(a) => {
                    a.remove(last.parse::<usize>().unwrap());
                }
                _ => {}
            }
        } else {
            *at(&mut v, path) = absurd(kind);
        }
    }
    let mut s = serde_json::to_string(&v).unwrap();
    if let Some(c) = cut {
        let mut c = c % (s.len() + 1);
        while !s.is_char_boundary(c) {
            c -= 1;
        }
        s.truncate(c);
    }
    s
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_model_files_load_or_fail_in_one_line(
        model in 0..MODELS.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), prop::bool::weighted(0.2)), 1..4),
        cut in prop::option::weighted(0.1, any::<usize>()),
    ) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(root.join(MODELS[model])).unwrap();
        let mutated = mutate_model(&text, &edits, cut);
        contract(&mutated.clone(), move || {
            let g = match dropjit_graph::parse(&mutated, "fuzz.json", GraphLoadOptions::default()) {
                Ok(g) => g,
                Err(e) => return Some(e.to_string()),
            };
            // A graph that loads also derives and compiles (batch 2), or says why not.
            let step = match training_step(&g, &DropoutConfig::PLAIN, &SgdConfig { momentum: 0.9, weight_decay: 0.0 }) {
                Ok(s) => s,
                Err(e) => return Some(e.to_string()),
            };
            compile(&step, 2, &StateLayout::new(&g), CompileOptions::default())
                .err()
                .map(|e| e.to_string())
        });
    }
}

// ---------------------------------------------------------------- data files

/// A minimal little-endian MAT v5 file holding SVHN-shaped X (uint8) and y (double).
fn mat_file(n: usize) -> Vec<u8> {
    let mut buf = b"MATLAB 5.0 MAT-file, written by the dropjit fuzzer".to_vec();
    buf.resize(116, b' ');
    buf.extend([0u8; 8]);
    buf.extend(0x0100u16.to_le_bytes());
    buf.extend(b"IM");
    let element = |ty: u32, data: &[u8]| {
        let mut out = ty.to_le_bytes().to_vec();
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out.resize(out.len().div_ceil(8) * 8, 0);
        out
    };
    let matrix = |name: &str, class: u32, dims: &[u32], ty: u32, data: &[u8]| {
        let mut body = element(6, &[class.to_le_bytes(), 0u32.to_le_bytes()].concat());
        body.extend(element(
            5,
            &dims
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect::<Vec<_>>(),
        ));
        body.extend(element(1, name.as_bytes()));
        body.extend(element(ty, data));
        element(14, &body)
    };
    let x: Vec<u8> = (0..n * 3072).map(|i| (i % 251) as u8).collect();
    buf.extend(matrix("X", 9, &[32, 32, 3, n as u32], 2, &x));
    let y: Vec<u8> = (0..n)
        .flat_map(|i| (1.0 + (i % 10) as f64).to_le_bytes())
        .collect();
    buf.extend(matrix("y", 6, &[n as u32, 1], 9, &y));
    buf
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

/// Truncation, byte overwrites and a 32-bit word overwritten with an absurd
/// size at a header-ish offset.
fn mutate_bytes(
    mut b: Vec<u8>,
    flips: &[(usize, u8)],
    word: Option<(usize, u32)>,
    cut: Option<usize>,
) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for &(pos, byte) in flips {
        let i = pos % b.len();
        b[i] = byte;
    }
    if let Some((pos, value)) = word {
        let i = pos % 256.min(b.len().saturating_sub(4)).max(1);
        if i + 4 <= b.len() {
            b[i..i + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_data_files_load_or_fail_in_one_line(
        format in 0..3usize,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        word in prop::option::of((any::<usize>(), prop::sample::select(vec![0u32, 1, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x0100_0000, 3072, 60000]))),
        cut in prop::option::weighted(0.3, any::<usize>()),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let kind = match format {
            0 => {
                let dir = root.join("cifar-10-batches-bin");
                std::fs::create_dir_all(&dir).unwrap();
                let records: Vec<u8> = (0..4).flat_map(|i| std::iter::once(i as u8).chain((0..3072).map(|p| (p % 256) as u8))).collect();
                std::fs::write(dir.join("data_batch_1.bin"), mutate_bytes(records.clone(), &flips, word, cut)).unwrap();
                std::fs::write(dir.join("test_batch.bin"), &records).unwrap();
                dropjit::data::DatasetKind::Cifar10
            }
            1 => {
                let dir = root.join("mnist");
                std::fs::create_dir_all(&dir).unwrap();
                let images = idx(0x803, &[3, 28, 28], &[7u8; 3 * 784]);
                let labels = idx(0x801, &[3], &[1, 2, 3]);
                let bad = mutate_bytes(images.clone(), &flips, word.map(|(p, v)| (p, v.swap_bytes())), cut);
                std::fs::write(dir.join("train-images-idx3-ubyte"), bad).unwrap();
                std::fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
                std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
                std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
                dropjit::data::DatasetKind::Mnist
            }
            _ => {
                let dir = root.join("svhn");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("train_32x32.mat"), mutate_bytes(mat_file(3), &flips, word, cut)).unwrap();
                std::fs::write(dir.join("test_32x32.mat"), mat_file(2)).unwrap();
                dropjit::data::DatasetKind::Svhn
            }
        };
        contract(&format!("{kind} {flips:?} {word:?} {cut:?}"), move || {
            let opts = dropjit::data::DataLoadOptions { kind: Some(kind), ..Default::default() };
            dropjit::data::load_dataset(&root, &opts).err().map(|e| e.to_string())
        });
    }
}

/// The unmutated files load: the fuzzer starts from valid inputs.
#[test]
fn the_unmutated_inputs_are_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("svhn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train_32x32.mat"), mat_file(3)).unwrap();
    std::fs::write(dir.join("test_32x32.mat"), mat_file(2)).unwrap();
    let ds = dropjit::data::load_dataset(tmp.path(), &Default::default()).expect("valid MAT files");
    assert_eq!((ds.train.len(), ds.test.len()), (3, 2));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for m in MODELS {
        let text = std::fs::read_to_string(root.join(m)).unwrap();
        let same = mutate_model(&text, &[], None);
        dropjit_graph::parse(&same, m, GraphLoadOptions::default())
            .expect("model re-serialised loads");
    }
}
