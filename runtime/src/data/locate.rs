//! Finding the data: `--data DIR`, else `$DROPJIT_DATA`, else `./data`; DIR may be the data set
//! directory itself or its parent (e.g. DIR containing `cifar-10-batches-bin/`).

use std::path::{Path, PathBuf};

use super::dataset::DatasetKind;
use super::error::DataError;

/// Environment variable naming the data directory when `--data` is not given.
pub const DATA_ENV: &str = "DROPJIT_DATA";
/// Used when neither `--data` nor `DROPJIT_DATA` is given.
pub const DEFAULT_DATA_DIR: &str = "./data";

impl DatasetKind {
    /// The sub-directory the official archive unpacks to (`dropjit data
    /// fetch` puts SVHN's two files in `svhn/`); the root itself is also looked at.
    pub fn subdir(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar-10-batches-bin",
            DatasetKind::Cifar100 => "cifar-100-binary",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Files whose presence marks a directory as holding this data set.
    pub fn marker_files(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Cifar10 => &["data_batch_1.bin", "test_batch.bin"],
            DatasetKind::Cifar100 => &["train.bin", "test.bin"],
            DatasetKind::Svhn => &["train_32x32.mat", "test_32x32.mat"],
            // MNIST and Fashion-MNIST share file names: a directory holding
            // them directly is ambiguous unless --dataset names one.
            DatasetKind::Mnist | DatasetKind::FashionMnist => {
                &["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
            }
        }
    }
}

/// The data root: `flag`, else `$DROPJIT_DATA`, else `./data`. It must hold at least one
/// recognisable data set (itself or in a known sub-directory); otherwise the error lists every
/// path looked at and where to download the data.
pub fn resolve_data_dir(flag: Option<&Path>) -> Result<PathBuf, DataError> {
    let env = std::env::var_os(DATA_ENV);
    resolve_data_dir_from(flag, env.as_deref().map(Path::new))
}

/// The data root, `flag`, else `$DROPJIT_DATA` (`env`), else `./data`, and where
/// that choice came from (for messages). Nothing is looked at on disk.
pub fn choose_data_dir(flag: Option<&Path>, env: Option<&Path>) -> (PathBuf, String) {
    match (flag, env) {
        (Some(f), _) => (f.to_path_buf(), format!("--data {}", f.display())),
        (None, Some(e)) if !e.as_os_str().is_empty() => {
            (e.to_path_buf(), format!("{DATA_ENV}={}", e.display()))
        }
        _ => (
            PathBuf::from(DEFAULT_DATA_DIR),
            format!("the default {DEFAULT_DATA_DIR}, as neither --data nor {DATA_ENV} is set"),
        ),
    }
}

/// [`resolve_data_dir`] with the environment value passed in (testable without touching env).
pub fn resolve_data_dir_from(
    flag: Option<&Path>,
    env: Option<&Path>,
) -> Result<PathBuf, DataError> {
    let (root, origin) = choose_data_dir(flag, env);
    let mut looked_at = Vec::new();
    if find_all(&root, None, &mut looked_at).is_empty() {
        return Err(DataError::NotFound { origin, looked_at });
    }
    Ok(root)
}

/// Which data set `root` holds and the directory its files are in. With `kind` given only that
/// data set is looked for; without, exactly one must be present.
pub fn locate_dataset(
    root: &Path,
    kind: Option<DatasetKind>,
) -> Result<(DatasetKind, PathBuf), DataError> {
    let mut looked_at = Vec::new();
    let mut found = find_all(root, kind, &mut looked_at);
    match found.len() {
        0 => Err(DataError::NotFound {
            origin: match kind {
                Some(k) => format!("{}, looking for {k}", root.display()),
                None => root.display().to_string(),
            },
            looked_at,
        }),
        1 => Ok(found.remove(0)),
        _ => Err(DataError::Ambiguous {
            dir: root.to_path_buf(),
            found: found.iter().map(|(k, _)| k.name().to_string()).collect(),
        }),
    }
}

/// For each wanted kind, the first candidate directory (sub-directory first, then `root`) that
/// holds one of its marker files. Every checked path is appended to `looked_at`.
fn find_all(
    root: &Path,
    kind: Option<DatasetKind>,
    looked_at: &mut Vec<PathBuf>,
) -> Vec<(DatasetKind, PathBuf)> {
    looked_at.push(root.to_path_buf());
    let mut found = Vec::new();
    for k in DatasetKind::ALL {
        if kind.is_some_and(|want| want != k) {
            continue;
        }
        let candidates = [root.join(k.subdir()), root.to_path_buf()];
        'dirs: for dir in candidates {
            for m in k.marker_files() {
                let p = dir.join(m);
                let hit = p.is_file();
                looked_at.push(p);
                if hit {
                    found.push((k, dir));
                    break 'dirs;
                }
            }
        }
    }
    found
}
