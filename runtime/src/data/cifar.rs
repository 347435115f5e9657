//! CIFAR-10 and CIFAR-100 binary versions: fixed-size records of label byte(s) + 3072 CHW pixels.

use std::path::{Path, PathBuf};

use super::dataset::{Cifar100Labels, Split, IMAGE_LEN};
use super::error::DataError;

/// CIFAR-10 record: 1 label byte + 3072 pixel bytes.
pub const CIFAR10_RECORD: usize = 1 + IMAGE_LEN;
/// CIFAR-100 record: coarse label, fine label, 3072 pixel bytes.
pub const CIFAR100_RECORD: usize = 2 + IMAGE_LEN;

/// The training files of CIFAR-10 that exist in `dir`, in order `data_batch_1.bin`..`_5.bin`.
pub fn cifar10_train_files(dir: &Path) -> Vec<PathBuf> {
    (1..=5)
        .map(|k| dir.join(format!("data_batch_{k}.bin")))
        .filter(|p| p.is_file())
        .collect()
}

/// Read CIFAR-10 from its `cifar-10-batches-bin` directory: (train, test).
/// Train is every `data_batch_K.bin` present (at least one), test is `test_batch.bin`.
pub fn read_cifar10(dir: &Path) -> Result<(Split, Split), DataError> {
    let train_files = cifar10_train_files(dir);
    if train_files.is_empty() {
        return Err(DataError::MissingFile {
            path: dir.join("data_batch_1.bin"),
            what: "CIFAR-10 training batch; at least data_batch_1.bin is needed".into(),
        });
    }
    let format = RecordFormat {
        record: CIFAR10_RECORD,
        label_at: 0,
        checks: &[(0, 10)],
    };
    let mut train = new_split(10);
    for f in &train_files {
        append_records(f, "train", &format, &mut train)?;
    }
    let mut test = new_split(10);
    append_records(&dir.join("test_batch.bin"), "test", &format, &mut test)?;
    Ok((train, test))
}

/// Read CIFAR-100 from its `cifar-100-binary` directory (`train.bin`, `test.bin`): (train, test).
/// Both labels of every record are validated; `labels` picks the one kept.
pub fn read_cifar100(dir: &Path, labels: Cifar100Labels) -> Result<(Split, Split), DataError> {
    let (label_at, classes) = match labels {
        Cifar100Labels::Fine => (1, 100),
        Cifar100Labels::Coarse => (0, 20),
    };
    let format = RecordFormat {
        record: CIFAR100_RECORD,
        label_at,
        checks: &[(0, 20), (1, 100)],
    };
    let mut train = new_split(classes);
    append_records(&dir.join("train.bin"), "train", &format, &mut train)?;
    let mut test = new_split(classes);
    append_records(&dir.join("test.bin"), "test", &format, &mut test)?;
    Ok((train, test))
}

struct RecordFormat<'a> {
    /// Bytes per record; the last `IMAGE_LEN` are the pixels.
    record: usize,
    /// Offset of the label that is kept.
    label_at: usize,
    /// (offset, class count) of every label byte to validate.
    checks: &'a [(usize, usize)],
}

fn new_split(num_classes: usize) -> Split {
    Split {
        shape: super::dataset::ImageShape::RGB32,
        images: Vec::new(),
        labels: Vec::new(),
        num_classes,
        files: Vec::new(),
    }
}

/// Read a whole file, mapping "not found" to [`DataError::MissingFile`].
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::MissingFile {
            path: path.to_path_buf(),
            what: what.to_string(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn append_records(
    path: &Path,
    split_name: &str,
    format: &RecordFormat<'_>,
    split: &mut Split,
) -> Result<(), DataError> {
    let bytes = read_file(path, &format!("{split_name} split"))?;
    if bytes.is_empty() {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
            split: split_name.to_string(),
        });
    }
    if bytes.len() % format.record != 0 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: bytes.len() / format.record,
            got: bytes.len() % format.record,
            record_size: format.record,
            file_size: bytes.len() as u64,
        });
    }
    let n = bytes.len() / format.record;
    split.images.reserve(n * IMAGE_LEN);
    split.labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(format.record).enumerate() {
        for &(offset, classes) in format.checks {
            if rec[offset] as usize >= classes {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record: i,
                    label: i64::from(rec[offset]),
                    classes,
                });
            }
        }
        split.labels.push(rec[format.label_at]);
        split
            .images
            .extend_from_slice(&rec[format.record - IMAGE_LEN..]);
    }
    split.files.push(path.to_path_buf());
    Ok(())
}
