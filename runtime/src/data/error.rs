//! Errors of the data module: every variant names the file or directory it is about.

use std::path::PathBuf;

/// Where to get the data sets; quoted by [`DataError::NotFound`].
pub const DOWNLOAD_HELP: &str = "\
`dropjit data fetch cifar10|cifar100|svhn --dir DIR` downloads and verifies them; by hand: \
CIFAR-10 / CIFAR-100: download the *binary* versions from https://www.cs.toronto.edu/~kriz/cifar.html \
(cifar-10-binary.tar.gz or cifar-100-binary.tar.gz) and unpack them in DIR so that \
DIR/cifar-10-batches-bin/ or DIR/cifar-100-binary/ exists (tar xzf cifar-10-binary.tar.gz -C DIR). \
SVHN: download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ into DIR/svhn. \
Point dropjit at DIR with --data DIR or the DROPJIT_DATA environment variable (default ./data).";

/// Everything that can go wrong while locating, reading or validating a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// No data set under the chosen directory.
    #[error(
        "no data set found (directory from {origin}); looked at:\n{}\n{DOWNLOAD_HELP}",
        list_paths(looked_at)
    )]
    NotFound {
        /// Where the directory came from: `--data`, `DROPJIT_DATA` or the default `./data`.
        origin: String,
        /// Every path that was checked, in order.
        looked_at: Vec<PathBuf>,
    },

    /// Several data sets were found and none was asked for.
    #[error(
        "{}: several data sets found ({}); choose one with --dataset",
        dir.display(),
        found.join(", ")
    )]
    Ambiguous { dir: PathBuf, found: Vec<String> },

    /// A data set was recognised but one of its files is absent.
    #[error("{}: missing file ({what})", path.display())]
    MissingFile { path: PathBuf, what: String },

    /// Reading a file failed at the operating-system level.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A fixed-record file whose size is not a whole number of records.
    #[error(
        "{}: truncated: record {record} has {got} of {record_size} bytes (file size {file_size})",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        record: usize,
        got: usize,
        record_size: usize,
        file_size: u64,
    },

    /// An array with the wrong dimensions or an element count that does not match.
    #[error("{}: wrong size: {detail}", path.display())]
    WrongSize { path: PathBuf, detail: String },

    /// A label outside `0..classes`.
    #[error(
        "{}: record {record} has label {label}, but the data set has {classes} classes (0..{})",
        path.display(),
        classes.saturating_sub(1)
    )]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        label: i64,
        classes: usize,
    },

    /// A file (or split) with no records at all.
    #[error("{}: empty {split} split: the file has no records", path.display())]
    EmptySplit { path: PathBuf, split: String },

    /// A zlib-compressed element still present after the file's compressed
    /// elements were inflated (compression nested inside compression).
    #[error(
        "{}: nested compressed element at byte {offset}; dropjit inflates MATLAB's top-level \
         compression only. Re-save the file: python3 -c \"import scipy.io as s; d = s.loadmat('{}'); s.savemat('{}', {{'X': d['X'], 'y': d['y']}})\"",
        path.display(),
        path.display(),
        path.display()
    )]
    CompressedMat { path: PathBuf, offset: usize },

    /// A MAT file that is not a MATLAB v5 file or that is malformed.
    #[error("{}: bad MAT file: {detail}", path.display())]
    BadMat { path: PathBuf, detail: String },

    /// An unknown `--dataset` name.
    #[error("unknown data set '{0}': expected cifar10, cifar100, svhn, mnist or fashion-mnist")]
    UnknownKind(String),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}
