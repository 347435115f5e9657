//! Tests of the data module: fixtures are written in code; the real CIFAR-10 mini set is read
//! when `DROPJIT_TEST_DATA` points at it.

use std::path::{Path, PathBuf};

use super::mat::{MI_COMPRESSED, MI_DOUBLE, MI_INT32, MI_INT8, MI_MATRIX, MI_UINT32, MI_UINT8};
use super::svhn::svhn_from_bytes;
use super::*;

// ---------------------------------------------------------------- fixtures

/// CHW index of (channel, row, col).
fn at(c: usize, r: usize, x: usize) -> usize {
    c * PLANE + r * SIDE + x
}

/// A CIFAR record: the label bytes then 3072 pixels, all 0 except `pixels` (chw index, value).
fn cifar_record(labels: &[u8], pixels: &[(usize, u8)]) -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_LEN];
    for &(i, v) in pixels {
        img[i] = v;
    }
    let mut rec = labels.to_vec();
    rec.extend(img);
    rec
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Write a CIFAR-10 directory `root/cifar-10-batches-bin` with the given batch files.
fn cifar10_dir(root: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    for (name, bytes) in files {
        write(&dir.join(name), bytes);
    }
    dir
}

fn cifar10_records(labels: &[u8]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|&l| cifar_record(&[l], &[]))
        .collect()
}

/// A minimal MAT v5 writer (uncompressed), little or big endian.
struct MatWriter {
    be: bool,
    buf: Vec<u8>,
}

impl MatWriter {
    fn new(be: bool) -> Self {
        let mut buf = b"MATLAB 5.0 MAT-file, Platform: test, written by dropjit tests".to_vec();
        buf.resize(116, b' ');
        buf.extend([0u8; 8]);
        if be {
            buf.extend(0x0100u16.to_be_bytes());
            buf.extend(b"MI");
        } else {
            buf.extend(0x0100u16.to_le_bytes());
            buf.extend(b"IM");
        }
        MatWriter { be, buf }
    }

    fn u32b(&self, v: u32) -> [u8; 4] {
        if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// A data element; `small` uses the packed form (data of at most 4 bytes).
    fn element(&self, ty: u32, data: &[u8], small: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if small {
            assert!(data.len() <= 4);
            out.extend(self.u32b(((data.len() as u32) << 16) | ty));
            let mut d = data.to_vec();
            d.resize(4, 0);
            out.extend(d);
        } else {
            out.extend(self.u32b(ty));
            out.extend(self.u32b(data.len() as u32));
            out.extend(data);
            out.resize(out.len().div_ceil(8) * 8, 0);
        }
        out
    }

    /// Append a real numeric matrix: `class` is the MATLAB class, `ty`/`data` the stored numbers.
    fn matrix(&mut self, name: &str, class: u8, dims: &[i32], ty: u32, data: &[u8]) {
        let mut body = Vec::new();
        let mut flags = self.u32b(u32::from(class)).to_vec();
        flags.extend(self.u32b(0));
        body.extend(self.element(MI_UINT32, &flags, false));
        let dims: Vec<u8> = dims.iter().flat_map(|&d| self.u32b(d as u32)).collect();
        body.extend(self.element(MI_INT32, &dims, false));
        body.extend(self.element(MI_INT8, name.as_bytes(), name.len() <= 4));
        body.extend(self.element(ty, data, false));
        let el = self.element(MI_MATRIX, &body, false);
        self.buf.extend(el);
    }

    fn f64s(&self, v: &[f64]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| {
                if self.be {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            })
            .collect()
    }
}

const MX_DOUBLE: u8 = 6;
const MX_UINT8: u8 = 9;

/// Column-major SVHN X (32x32x3xN) with the given (n, channel, row, col, value) pixels set.
fn svhn_x(n: usize, pixels: &[(usize, usize, usize, usize, u8)]) -> Vec<u8> {
    let mut x = vec![0u8; n * IMAGE_LEN];
    for &(i, c, r, col, v) in pixels {
        x[r + SIDE * col + PLANE * c + IMAGE_LEN * i] = v;
    }
    x
}

/// An SVHN file with two images (known pixels) and labels [10, 3]; y stored as double or uint8.
fn svhn_fixture(be: bool, y_double: bool) -> Vec<u8> {
    let mut w = MatWriter::new(be);
    let x = svhn_x(
        2,
        &[
            (0, 0, 1, 2, 11),
            (0, 1, 5, 30, 22),
            (0, 2, 31, 0, 33),
            (1, 0, 0, 31, 44),
        ],
    );
    w.matrix("X", MX_UINT8, &[32, 32, 3, 2], MI_UINT8, &x);
    if y_double {
        let y = w.f64s(&[10.0, 3.0]);
        w.matrix("y", MX_DOUBLE, &[2, 1], MI_DOUBLE, &y);
    } else {
        w.matrix("y", MX_UINT8, &[2, 1], MI_UINT8, &[10, 3]);
    }
    w.buf
}

fn check_svhn_split(s: &Split) {
    assert_eq!(s.len(), 2);
    assert_eq!(s.labels, vec![0, 3], "label 10 must become 0");
    let (a, b) = (s.image(0), s.image(1));
    assert_eq!(a[at(0, 1, 2)], 11, "R at row 1, col 2");
    assert_eq!(a[at(0, 2, 1)], 0, "transposed position must be empty");
    assert_eq!(a[at(1, 5, 30)], 22, "G at row 5, col 30");
    assert_eq!(a[at(2, 31, 0)], 33, "B at row 31, col 0");
    assert_eq!(b[at(0, 0, 31)], 44, "second image R at row 0, col 31");
    assert_eq!(a.iter().map(|&v| u32::from(v)).sum::<u32>(), 11 + 22 + 33);
    assert_eq!(b.iter().map(|&v| u32::from(v)).sum::<u32>(), 44);
}

/// A split of `n` images whose pixels are `f(image, chw index)`.
fn synthetic_split(n: usize, f: impl Fn(usize, usize) -> u8) -> Split {
    let mut images = Vec::with_capacity(n * IMAGE_LEN);
    for i in 0..n {
        images.extend((0..IMAGE_LEN).map(|j| f(i, j)));
    }
    Split {
        images,
        shape: ImageShape::RGB32,
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        num_classes: 10,
        files: Vec::new(),
    }
}

// ---------------------------------------------------------------- real mini set

/// The shared mini set (or the full set) where `DROPJIT_TEST_DATA` points at
/// it: it reads and validates, whatever its size. Without the variable the
/// same checks run on a generated set, so the test always checks something.
#[test]
fn cifar10_set_reads_and_validates() {
    let generated = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("DROPJIT_TEST_DATA") {
        Some(root) => PathBuf::from(root),
        None => {
            let dir = generated.path().join("cifar-10-batches-bin");
            let records = |n: usize| -> Vec<u8> {
                (0..n)
                    .flat_map(|i| cifar_record(&[(i % 10) as u8], &[(at(0, 0, 0), i as u8)]))
                    .collect()
            };
            write(&dir.join("data_batch_1.bin"), &records(500));
            write(&dir.join("test_batch.bin"), &records(100));
            generated.path().to_path_buf()
        }
    };
    let resolved = resolve_data_dir(Some(&root))
        .unwrap_or_else(|e| panic!("{} is not usable:\n{e}", root.display()));
    let ds = load_dataset(&resolved, &DataLoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    assert_eq!(ds.kind, DatasetKind::Cifar10);
    assert_eq!(ds.num_classes, 10);
    assert!(!ds.train.is_empty() && !ds.test.is_empty());
    assert_eq!(ds.train.images.len(), ds.train.len() * IMAGE_LEN);
    assert_eq!(ds.test.images.len(), ds.test.len() * IMAGE_LEN);
    assert!(ds
        .train
        .labels
        .iter()
        .chain(&ds.test.labels)
        .all(|&l| l < 10));
    // Every class holds about a tenth of the training images (CIFAR-10 and
    // its subsets are balanced to within a few percent).
    let tenth = ds.train.len() as f64 / 10.0;
    for (class, &count) in ds.train.class_counts().iter().enumerate() {
        assert!(
            (count as f64 - tenth).abs() <= 0.1 * tenth,
            "class {class} has {count} of {} training images",
            ds.train.len()
        );
    }
}

// ---------------------------------------------------------------- formats

#[test]
fn cifar100_fixture_pixels_fine_and_coarse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    let labels = [(1u8, 99u8), (19, 0), (5, 42)];
    let mut train = Vec::new();
    for (i, &(coarse, fine)) in labels.iter().enumerate() {
        let i = i as u8;
        train.extend(cifar_record(
            &[coarse, fine],
            &[
                (at(0, 0, 1), 10 + i),
                (at(1, 31, 31), 20 + i),
                (at(2, 7, 3), 30 + i),
            ],
        ));
    }
    write(&dir.join("train.bin"), &train);
    write(&dir.join("test.bin"), &cifar_record(&[2, 3], &[]));
    assert_eq!(train.len(), 3 * CIFAR100_RECORD);

    let ds = load_dataset(tmp.path(), &DataLoadOptions::default()).unwrap();
    assert_eq!(ds.kind, DatasetKind::Cifar100);
    assert_eq!(ds.dir, dir);
    assert_eq!(ds.num_classes, 100);
    assert_eq!(ds.train.labels, vec![99, 0, 42]);
    assert_eq!(ds.test.labels, vec![3]);
    for i in 0..3 {
        let img = ds.train.image(i);
        assert_eq!(img[at(0, 0, 1)], 10 + i as u8);
        assert_eq!(img[at(1, 31, 31)], 20 + i as u8);
        assert_eq!(img[at(2, 7, 3)], 30 + i as u8);
        assert_eq!(img.iter().filter(|&&v| v != 0).count(), 3);
    }

    let coarse = DataLoadOptions {
        kind: Some(DatasetKind::Cifar100),
        cifar100_labels: Cifar100Labels::Coarse,
    };
    let ds = load_dataset(&dir, &coarse).unwrap();
    assert_eq!(ds.num_classes, 20);
    assert_eq!(ds.train.labels, vec![1, 19, 5]);
}

#[test]
fn cifar100_fine_label_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    let mut train = cifar_record(&[0, 0], &[]);
    train.extend(cifar_record(&[3, 100], &[]));
    write(&dir.join("train.bin"), &train);
    write(&dir.join("test.bin"), &cifar_record(&[0, 0], &[]));
    let err = read_cifar100(&dir, Cifar100Labels::Coarse).unwrap_err();
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            record: 1,
            label: 100,
            classes: 100,
            ..
        }
    ));
}

#[test]
fn svhn_fixture_double_y_little_endian() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(SVHN_TRAIN), &svhn_fixture(false, true));
    write(&tmp.path().join(SVHN_TEST), &svhn_fixture(false, false));
    let ds = load_dataset(tmp.path(), &DataLoadOptions::default()).unwrap();
    assert_eq!(ds.kind, DatasetKind::Svhn);
    assert_eq!(ds.num_classes, 10);
    check_svhn_split(&ds.train);
    check_svhn_split(&ds.test);
}

#[test]
fn svhn_fixture_big_endian_and_uint8_y() {
    for y_double in [true, false] {
        let bytes = svhn_fixture(true, y_double);
        let split = svhn_from_bytes(Path::new("be.mat"), &bytes, "train").unwrap();
        check_svhn_split(&split);
    }
}

#[test]
fn svhn_bad_files_are_errors_not_panics() {
    let good = svhn_fixture(false, true);
    let p = Path::new("cut.mat");
    // Every truncation of a valid file is an error (or, past the last element, a full read).
    for len in 0..good.len() {
        let r = svhn_from_bytes(p, &good[..len], "train");
        assert!(r.is_err(), "truncated to {len} bytes was accepted");
    }
    // Corrupting any single byte never panics.
    for i in 0..good.len().min(400) {
        let mut bad = good.clone();
        bad[i] ^= 0xa5;
        let _ = svhn_from_bytes(p, &bad, "train");
    }

    // Label 11 is out of range.
    let mut w = MatWriter::new(false);
    w.matrix("X", MX_UINT8, &[32, 32, 3, 1], MI_UINT8, &svhn_x(1, &[]));
    let y = w.f64s(&[11.0]);
    w.matrix("y", MX_DOUBLE, &[1, 1], MI_DOUBLE, &y);
    let err = svhn_from_bytes(Path::new("lab.mat"), &w.buf, "test").unwrap_err();
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            record: 0,
            label: 11,
            classes: 10,
            ..
        }
    ));
    assert!(err.to_string().contains("lab.mat"), "{err}");

    // Wrong dimensions.
    let mut w = MatWriter::new(false);
    w.matrix(
        "X",
        MX_UINT8,
        &[32, 32, 1, 3],
        MI_UINT8,
        &vec![0; 3 * PLANE],
    );
    w.matrix("y", MX_UINT8, &[3, 1], MI_UINT8, &[1, 2, 3]);
    let err = svhn_from_bytes(Path::new("dims.mat"), &w.buf, "test").unwrap_err();
    assert!(matches!(err, DataError::WrongSize { .. }), "{err}");

    // y shorter than X.
    let mut w = MatWriter::new(false);
    w.matrix("X", MX_UINT8, &[32, 32, 3, 2], MI_UINT8, &svhn_x(2, &[]));
    w.matrix("y", MX_UINT8, &[1, 1], MI_UINT8, &[1]);
    let err = svhn_from_bytes(Path::new("y.mat"), &w.buf, "test").unwrap_err();
    assert!(matches!(err, DataError::WrongSize { .. }), "{err}");

    // No images at all.
    let mut w = MatWriter::new(false);
    w.matrix("X", MX_UINT8, &[32, 32, 3, 0], MI_UINT8, &[]);
    w.matrix("y", MX_UINT8, &[0, 1], MI_UINT8, &[]);
    let err = svhn_from_bytes(Path::new("empty.mat"), &w.buf, "test").unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { .. }), "{err}");
}

/// The official SVHN files store each variable as a zlib-compressed element.
fn compress_top_level(uncompressed: &[u8]) -> Vec<u8> {
    let mut out = uncompressed[..128].to_vec();
    let mut pos = 128;
    while pos + 8 <= uncompressed.len() {
        let n = u32::from_le_bytes(uncompressed[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let next = (pos + 8 + n).div_ceil(8) * 8;
        let packed = miniz_oxide::deflate::compress_to_vec_zlib(
            &uncompressed[pos..next.min(uncompressed.len())],
            6,
        );
        out.extend(MI_COMPRESSED.to_le_bytes());
        out.extend((packed.len() as u32).to_le_bytes());
        out.extend(packed);
        pos = next;
    }
    out
}

#[test]
fn compressed_mat_files_read_like_uncompressed_ones() {
    let plain = svhn_fixture(false, true);
    let packed = compress_top_level(&plain);
    assert_ne!(plain, packed);
    let split = svhn_from_bytes(Path::new("packed.mat"), &packed, "train").unwrap();
    check_svhn_split(&split);
}

#[test]
fn corrupt_compressed_mat_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = MatWriter::new(false).buf;
    bytes.extend(MI_COMPRESSED.to_le_bytes());
    bytes.extend(6u32.to_le_bytes());
    bytes.extend([0x78, 0x9c, 0xff, 0xff, 0x00, 0x00]);
    let path = tmp.path().join(SVHN_TRAIN);
    write(&path, &bytes);
    let msg = read_svhn_file(&path, "train").unwrap_err().to_string();
    assert!(
        msg.contains("train_32x32.mat") && msg.contains("does not inflate"),
        "{msg}"
    );
    // Truncated compressed data is reported, not read past.
    let mut cut = compress_top_level(&svhn_fixture(false, true));
    cut.truncate(cut.len() - 10);
    assert!(svhn_from_bytes(Path::new("cut.mat"), &cut, "train").is_err());
}

#[test]
fn truncated_cifar10_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut batch = cifar10_records(&[1, 2]);
    batch.extend(vec![3u8; 1200]);
    cifar10_dir(
        tmp.path(),
        &[
            ("data_batch_1.bin", batch),
            ("test_batch.bin", cifar10_records(&[0])),
        ],
    );
    let err = load_dataset(tmp.path(), &DataLoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                record: 2,
                got: 1200,
                record_size: 3073,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
    assert!(
        msg.contains("truncated: record 2 has 1200 of 3073 bytes"),
        "{msg}"
    );
}

#[test]
fn cifar10_label_10_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(
        tmp.path(),
        &[
            ("data_batch_1.bin", cifar10_records(&[0, 9])),
            ("test_batch.bin", cifar10_records(&[4, 10, 2])),
        ],
    );
    let err = read_cifar10(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 1,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("label 10"),
        "{msg}"
    );
}

#[test]
fn cifar10_train_is_whichever_batches_exist_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(
        tmp.path(),
        &[
            ("data_batch_3.bin", cifar10_records(&[3, 3])),
            ("data_batch_1.bin", cifar10_records(&[1])),
            ("test_batch.bin", cifar10_records(&[5])),
        ],
    );
    let (train, test) = read_cifar10(&dir).unwrap();
    assert_eq!(train.labels, vec![1, 3, 3]);
    assert_eq!(
        train.files,
        vec![dir.join("data_batch_1.bin"), dir.join("data_batch_3.bin")]
    );
    assert_eq!(test.labels, vec![5]);
}

#[test]
fn missing_and_empty_files_are_distinct_errors() {
    // No training batch at all.
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(tmp.path(), &[("test_batch.bin", cifar10_records(&[5]))]);
    let err = read_cifar10(&dir).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");

    // Test batch missing.
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(tmp.path(), &[("data_batch_1.bin", cifar10_records(&[5]))]);
    let err = read_cifar10(&dir).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("test_batch.bin"), "{err}");

    // Empty test batch.
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(
        tmp.path(),
        &[
            ("data_batch_1.bin", cifar10_records(&[5])),
            ("test_batch.bin", Vec::new()),
        ],
    );
    let err = read_cifar10(&dir).unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { .. }), "{err:?}");
    assert!(err.to_string().contains("test_batch.bin"), "{err}");

    // Missing SVHN test file.
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(SVHN_TRAIN), &svhn_fixture(false, true));
    let err = load_dataset(tmp.path(), &DataLoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains(SVHN_TEST), "{err}");
}

// ---------------------------------------------------------------- locating

#[test]
fn missing_dir_lists_looked_at_paths_and_download_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let err = resolve_data_dir_from(Some(&nowhere), None).unwrap_err();
    let DataError::NotFound { looked_at, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(looked_at.contains(&nowhere));
    assert!(looked_at.contains(
        &nowhere
            .join("cifar-10-batches-bin")
            .join("data_batch_1.bin")
    ));
    assert!(looked_at.contains(&nowhere.join("cifar-100-binary").join("train.bin")));
    assert!(looked_at.contains(&nowhere.join(SVHN_TRAIN)));
    let msg = err.to_string();
    for p in looked_at {
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
    assert!(msg.contains("--data"), "{msg}");
    assert!(
        msg.contains("https://www.cs.toronto.edu/~kriz/cifar.html"),
        "{msg}"
    );
    assert!(msg.contains("cifar-10-binary.tar.gz"), "{msg}");
    assert!(
        msg.contains("http://ufldl.stanford.edu/housenumbers/"),
        "{msg}"
    );

    // The environment is named when it supplied the directory.
    let err = resolve_data_dir_from(None, Some(&nowhere)).unwrap_err();
    assert!(err.to_string().contains("DROPJIT_DATA"), "{err}");
}

#[test]
fn data_dir_precedence_and_parent_or_self() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cifar10_dir(
        tmp.path(),
        &[
            ("data_batch_1.bin", cifar10_records(&[1])),
            ("test_batch.bin", cifar10_records(&[2])),
        ],
    );
    let elsewhere = tmp.path().join("elsewhere");
    // Flag beats the environment; the environment is used without a flag.
    assert_eq!(
        resolve_data_dir_from(Some(tmp.path()), Some(&elsewhere)).unwrap(),
        tmp.path()
    );
    assert_eq!(resolve_data_dir_from(None, Some(&dir)).unwrap(), dir);
    assert!(resolve_data_dir_from(Some(&elsewhere), Some(tmp.path())).is_err());
    // Parent and the data set directory itself both work.
    for root in [tmp.path(), dir.as_path()] {
        assert_eq!(
            locate_dataset(root, None).unwrap(),
            (DatasetKind::Cifar10, dir.clone())
        );
    }
    // A forced kind that is absent is NotFound; two data sets without a choice are ambiguous.
    assert!(matches!(
        locate_dataset(tmp.path(), Some(DatasetKind::Svhn)),
        Err(DataError::NotFound { .. })
    ));
    write(&tmp.path().join(SVHN_TRAIN), &svhn_fixture(false, true));
    assert!(matches!(
        locate_dataset(tmp.path(), None),
        Err(DataError::Ambiguous { .. })
    ));
    assert_eq!(
        locate_dataset(tmp.path(), Some(DatasetKind::Svhn)).unwrap(),
        (DatasetKind::Svhn, tmp.path().to_path_buf())
    );
}

#[test]
fn dataset_kind_names() {
    for k in DatasetKind::ALL {
        assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
    }
    assert_eq!(
        "CIFAR-10".parse::<DatasetKind>().unwrap(),
        DatasetKind::Cifar10
    );
    assert_eq!(
        "Fashion_MNIST".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert!(matches!(
        "imagenet".parse::<DatasetKind>(),
        Err(DataError::UnknownKind(_))
    ));
    for n in [
        Normalization::MeanImage,
        Normalization::ChannelMeanStd,
        Normalization::None,
    ] {
        assert_eq!(n.name().parse::<Normalization>().unwrap(), n);
    }
}

// ---------------------------------------------------------------- normalisation

#[test]
fn mean_image_of_constant_fixture_is_the_constant() {
    let split = synthetic_split(7, |_, _| 137);
    let NormStats::MeanImage { mean } = NormStats::compute(Normalization::MeanImage, &split) else {
        panic!()
    };
    assert_eq!(mean.len(), IMAGE_LEN);
    assert!(mean.iter().all(|&m| m == 137.0));
    let stats = NormStats::MeanImage { mean };
    let mut out = vec![1f32; IMAGE_LEN];
    stats.normalize_image(split.image(3), &mut out);
    assert!(out.iter().all(|&v| v == 0.0));
}

#[test]
fn channel_mean_std_on_unit_scale() {
    // R constant 51 (0.2, std 0 -> stored 1), G 0 / 255 alternating images (0.5, 0.5),
    // B 0 / 255 alternating pixels (0.5, 0.5).
    let split = synthetic_split(4, |i, j| match j / PLANE {
        0 => 51,
        1 => {
            if i % 2 == 0 {
                0
            } else {
                255
            }
        }
        _ => {
            if j % 2 == 0 {
                0
            } else {
                255
            }
        }
    });
    let stats = NormStats::compute(Normalization::ChannelMeanStd, &split);
    let NormStats::ChannelMeanStd { mean, std, .. } = &stats else {
        panic!()
    };
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(
        close(mean[0], 0.2) && close(mean[1], 0.5) && close(mean[2], 0.5),
        "{mean:?}"
    );
    assert!(
        close(std[0], 1.0) && close(std[1], 0.5) && close(std[2], 0.5),
        "{std:?}"
    );
    assert!(close(stats.apply(at(1, 3, 3), 255), 1.0));
    assert!(close(stats.apply(at(2, 0, 0), 0), -1.0));
    assert_eq!(
        NormStats::compute(Normalization::None, &split).apply(0, 255),
        1.0
    );
}

// ---------------------------------------------------------------- order and augmentation

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    let a = epoch_order(42, 3, 1000, true);
    assert_eq!(a, epoch_order(42, 3, 1000, true));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
    assert_ne!(a, epoch_order(42, 4, 1000, true), "epochs must differ");
    assert_ne!(a, epoch_order(43, 3, 1000, true), "seeds must differ");
    assert_ne!(a, sorted, "shuffled order is not the identity");
    assert_eq!(epoch_order(42, 3, 1000, false), sorted);
    assert!(epoch_order(1, 1, 0, true).is_empty());
    assert_eq!(epoch_order(1, 1, 1, true), vec![0]);
}

#[test]
fn epoch_order_is_pinned_across_builds() {
    // Resumed runs depend on this exact sequence: a change of rand_pcg or of the seeding
    // scheme must show up here, not as a silently different training run.
    assert_eq!(epoch_order(42, 0, 10, true), PINNED_ORDER);
    let draws: Vec<_> = (0..6)
        .map(|p| {
            let d = draw_crop_flip(&Augment::default(), 42, 0, p);
            (d.dy, d.dx, d.flip)
        })
        .collect();
    assert_eq!(draws, PINNED_DRAWS);
}

const PINNED_ORDER: [u32; 10] = [7, 3, 6, 5, 4, 2, 0, 1, 9, 8];
const PINNED_DRAWS: [(usize, usize, bool); 6] = [
    (2, 7, false),
    (3, 3, true),
    (5, 3, true),
    (3, 7, true),
    (5, 0, true),
    (0, 8, false),
];

#[test]
fn augmented_batches_are_pure_functions_of_seed_epoch_position() {
    let split = synthetic_split(20, |i, j| ((i * 31 + j * 7) % 256) as u8);
    let stats = NormStats::compute(Normalization::ChannelMeanStd, &split);
    let loader = BatchLoader::new(&split, &stats, Some(Augment::default()), 7);
    let order = loader.epoch_order(5, true);
    let bs = 8;
    let run = |epoch: u64, order: &[u32], start: usize, bs: usize| {
        let mut x = vec![0f32; bs * IMAGE_LEN];
        let mut y = vec![0i32; bs];
        let n = loader.fill_batch(order, start, epoch, &mut x, &mut y);
        (n, x, y)
    };
    let (n1, x1, y1) = run(5, &order, 8, bs);
    let (n2, x2, y2) = run(5, &order, 8, bs);
    assert_eq!(n2, n1);
    assert_eq!(n1, 8);
    assert_eq!(y1, y2);
    assert!(x1.iter().zip(&x2).all(|(a, b)| a.to_bits() == b.to_bits()));
    let expect: Vec<i32> = order[8..16]
        .iter()
        .map(|&i| i32::from(split.labels[i as usize]))
        .collect();
    assert_eq!(y1, expect);

    // The same position gives the same image whatever the batch size.
    let (_, x3, _) = run(5, &order, 10, 2);
    assert_eq!(&x3[..IMAGE_LEN], &x1[2 * IMAGE_LEN..3 * IMAGE_LEN]);

    // Another epoch (same order, to isolate the augmentation draws) differs.
    let (_, x4, _) = run(6, &order, 8, bs);
    assert_ne!(x1, x4);

    // Last partial batch: 20 images, start 16, batch 8 -> 4 filled.
    let (n5, _, _) = run(5, &order, 16, bs);
    assert_eq!(n5, 4);
    assert_eq!(loader.train_batches(bs), 2);
}

#[test]
fn flip_and_crop_statistics_are_plausible() {
    let aug = Augment::default();
    let draws = 2000;
    let mut flips = 0;
    let mut dy_hist = [0usize; 9];
    let mut dx_hist = [0usize; 9];
    for pos in 0..draws {
        let d = draw_crop_flip(&aug, 11, 2, pos);
        flips += usize::from(d.flip);
        dy_hist[d.dy] += 1;
        dx_hist[d.dx] += 1;
    }
    let rate = flips as f64 / draws as f64;
    assert!((rate - 0.5).abs() < 0.05, "flip rate {rate}");
    for h in dy_hist.iter().chain(&dx_hist) {
        assert!(
            (150..=300).contains(h),
            "crop offsets not uniform: {dy_hist:?} {dx_hist:?}"
        );
    }
    let no_flip = Augment {
        pad: 4,
        flip: false,
    };
    assert!((0..200).all(|p| !draw_crop_flip(&no_flip, 11, 2, p).flip));
    // Disabling flips leaves the crops unchanged.
    assert!((0..200).all(|p| {
        let (a, b) = (
            draw_crop_flip(&aug, 11, 2, p),
            draw_crop_flip(&no_flip, 11, 2, p),
        );
        (a.dy, a.dx) == (b.dy, b.dx)
    }));
}

#[test]
fn crop_geometry_padding_and_flip() {
    let split = synthetic_split(1, |_, j| (j % 251) as u8 + 1); // no zero pixels
    for norm in [
        Normalization::MeanImage,
        Normalization::ChannelMeanStd,
        Normalization::None,
    ] {
        let stats = NormStats::compute(norm, &split);
        let raw = split.image(0);
        let mut plain = vec![0f32; IMAGE_LEN];
        stats.normalize_image(raw, &mut plain);

        // Offset (4, 4) without flip is the normalised original.
        let mut out = vec![0f32; IMAGE_LEN];
        crop_flip_normalize(
            raw,
            ImageShape::RGB32,
            CropFlip::identity(4),
            4,
            &stats,
            &mut out,
        );
        assert_eq!(out, plain, "{norm}");

        // Flip only mirrors columns.
        let flip = CropFlip {
            dy: 4,
            dx: 4,
            flip: true,
        };
        crop_flip_normalize(raw, ImageShape::RGB32, flip, 4, &stats, &mut out);
        for (c, r, x) in [(0, 0, 0), (1, 17, 5), (2, 31, 31)] {
            assert_eq!(
                out[at(c, r, x)],
                stats.apply(at(c, r, x), raw[at(c, r, SIDE - 1 - x)])
            );
        }

        // Offset (0, 0): the top-left 4 rows / columns are raw-zero padding, normalised
        // positionally; the rest is the image shifted down-right by 4.
        let corner = CropFlip {
            dy: 0,
            dx: 0,
            flip: false,
        };
        crop_flip_normalize(raw, ImageShape::RGB32, corner, 4, &stats, &mut out);
        for c in 0..CHANNELS {
            assert_eq!(out[at(c, 0, 0)], stats.apply(at(c, 0, 0), 0));
            assert_eq!(out[at(c, 3, 20)], stats.apply(at(c, 3, 20), 0));
            assert_eq!(out[at(c, 4, 4)], stats.apply(at(c, 4, 4), raw[at(c, 0, 0)]));
            assert_eq!(
                out[at(c, 31, 31)],
                stats.apply(at(c, 31, 31), raw[at(c, 27, 27)])
            );
        }
    }
}

// ---------------------------------------------------------------- batching

#[test]
fn batch_counts_and_eval_batches_keep_the_last() {
    assert_eq!(batches_per_epoch(10, 4, LastBatch::Drop), 2);
    assert_eq!(batches_per_epoch(10, 4, LastBatch::Keep), 3);
    assert_eq!(batches_per_epoch(8, 4, LastBatch::Keep), 2);
    assert_eq!(batches_per_epoch(3, 4, LastBatch::Drop), 0);
    assert_eq!(
        eval_batches(10, 4).collect::<Vec<_>>(),
        vec![0..4, 4..8, 8..10]
    );

    let split = synthetic_split(10, |i, _| i as u8);
    let stats = NormStats::None;
    let mut sizes = Vec::new();
    let mut labels = Vec::new();
    for_each_eval_batch(&split, &stats, 4, |x, y| {
        assert_eq!(x.len(), y.len() * IMAGE_LEN);
        // Image i is constant i/255: no augmentation, natural order.
        for (k, &l) in y.iter().enumerate() {
            let i = labels.len() + k;
            assert_eq!(l, (i % 10) as i32);
            assert!(x[k * IMAGE_LEN..(k + 1) * IMAGE_LEN]
                .iter()
                .all(|&v| v == i as f32 / 255.0));
        }
        sizes.push(y.len());
        labels.extend_from_slice(y);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(labels.len(), 10);
}

/// Crop and flip work on any shape: a 1x28x28 image shifted by the crop and
/// mirrored by the flip, zero (then normalised) where the crop leaves the image.
#[test]
fn crop_flip_on_a_single_channel_28x28_image() {
    let shape = ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let raw: Vec<u8> = (0..784).map(|i| (i % 251) as u8).collect();
    let stats = NormStats::None;
    let mut out = vec![0f32; 784];
    // pad 2, crop offset (dy, dx) = (3, 1): output (r, x) reads input (r + 1, x - 1).
    let draw = CropFlip {
        dy: 3,
        dx: 1,
        flip: false,
    };
    crop_flip_normalize(&raw, shape, draw, 2, &stats, &mut out);
    for r in 0..28 {
        for x in 0..28 {
            let (sr, sc) = (r as isize + 1, x as isize - 1);
            let want = if (0..28).contains(&sr) && (0..28).contains(&sc) {
                raw[sr as usize * 28 + sc as usize] as f32 / 255.0
            } else {
                0.0
            };
            assert_eq!(out[r * 28 + x], want, "({r}, {x})");
        }
    }
    let flip = CropFlip {
        dy: 2,
        dx: 2,
        flip: true,
    };
    crop_flip_normalize(&raw, shape, flip, 2, &stats, &mut out);
    assert_eq!(out[5 * 28], raw[5 * 28 + 27] as f32 / 255.0);
}
