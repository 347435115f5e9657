//! `dropjit data fetch`: the official archives downloaded, verified against
//! their published checksums, unpacked in a temporary directory and renamed
//! into place, so an interrupted fetch leaves nothing a later run would take
//! for data.

mod catalog;
mod download;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use catalog::{RemoteFile, Unpack};

use crate::data::DatasetKind;

/// Overrides the base URL of every data set (a mirror, or a test server):
/// each file is fetched from `$DROPJIT_DATA_URL/<file name>`.
pub const URL_ENV: &str = "DROPJIT_DATA_URL";
/// Overrides checksums, `name=md5,name=md5`: for a mirror that serves files
/// other than the official ones (and for tests).
pub const MD5_ENV: &str = "DROPJIT_DATA_MD5";
/// Written into a fetched data set's directory once every file verified.
pub const VERIFIED_FILE: &str = ".dropjit-verified";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot download {url}: {detail}")]
    Network { url: String, detail: String },
    #[error("{file}: checksum mismatch: MD5 {got}, published {expected} (nothing was kept)")]
    Checksum {
        file: String,
        expected: String,
        got: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot unpack: {detail}", path.display())]
    Unpack { path: PathBuf, detail: String },
    #[error("{}: exists but is not a complete {source_name} fetched by dropjit; move it away first", path.display())]
    Occupied { path: PathBuf, source_name: String },
    #[error("{0}")]
    Config(String),
}

/// Where files come from and which checksums they must have.
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    pub base_url: Option<String>,
    pub md5: HashMap<String, String>,
}

impl FetchOptions {
    /// From `DROPJIT_DATA_URL` and `DROPJIT_DATA_MD5`.
    pub fn from_env() -> Result<FetchOptions, FetchError> {
        let base_url = std::env::var(URL_ENV).ok().filter(|s| !s.is_empty());
        let mut md5 = HashMap::new();
        if let Ok(list) = std::env::var(MD5_ENV) {
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (name, sum) = item.split_once('=').ok_or_else(|| {
                    FetchError::Config(format!("{MD5_ENV}: expected name=md5, got '{item}'"))
                })?;
                md5.insert(name.to_string(), sum.to_ascii_lowercase());
            }
        }
        Ok(FetchOptions { base_url, md5 })
    }

    fn url(&self, source: DatasetKind, file: &RemoteFile) -> String {
        let base = self.base_url.as_deref().unwrap_or(source.base_url());
        format!("{}/{}", base.trim_end_matches('/'), file.name)
    }

    fn md5<'a>(&'a self, file: &'a RemoteFile) -> &'a str {
        self.md5.get(file.name).map_or(file.md5, String::as_str)
    }
}

/// What `data list` reports for a data set under a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fetched by dropjit, every file matched its checksum.
    Verified,
    /// The directory exists (put there by hand): dropjit will use it as is.
    Present,
    Absent,
}

pub fn status(source: DatasetKind, root: &Path) -> Status {
    let dir = root.join(source.subdir());
    if dir.join(VERIFIED_FILE).is_file() {
        Status::Verified
    } else if dir.is_dir() {
        Status::Present
    } else {
        Status::Absent
    }
}

/// Fetches `source` into `root/<source dir>` and returns that directory. An
/// already verified copy is kept. Everything happens in `root/.fetch-*` until
/// the last file verified and unpacked; that directory is removed on error.
pub fn fetch(source: DatasetKind, root: &Path, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let dest = root.join(source.subdir());
    match status(source, root) {
        Status::Verified => return Ok(dest),
        Status::Present => {
            return Err(FetchError::Occupied {
                path: dest,
                source_name: source.name().into(),
            })
        }
        Status::Absent => {}
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    remove_stale_temporaries(source, root);
    let tmp = TempDir(root.join(format!(".fetch-{}-{}", source.subdir(), std::process::id())));
    let downloads = tmp.0.join("download");
    let content = tmp.0.join("content");
    std::fs::create_dir_all(&downloads).map_err(io(&downloads))?;
    std::fs::create_dir_all(&content).map_err(io(&content))?;
    let mut record = String::new();
    for file in source.files() {
        let url = opts.url(source, file);
        let path = downloads.join(file.name);
        let got = download::download(&url, &path)?;
        let expected = opts.md5(file);
        if got != expected {
            return Err(FetchError::Checksum {
                file: url,
                expected: expected.to_string(),
                got,
            });
        }
        record += &format!("{}  {}\n", got, file.name);
        unpack::unpack(source.unpack(), &path, &content)?;
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let marker = content.join(VERIFIED_FILE);
    std::fs::write(&marker, record).map_err(io(&marker))?;
    std::fs::rename(&content, &dest).map_err(io(&dest))?;
    sync_dir(root);
    Ok(dest)
}

/// Removes `.fetch-<dir>-*` left by killed fetches of this data set.
fn remove_stale_temporaries(source: DatasetKind, root: &Path) {
    let prefix = format!(".fetch-{}-", source.subdir());
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Makes the rename durable (best effort: not every file system syncs directories).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removed when dropped: on every error path, and after a successful rename
/// (by then it holds only the emptied download directory).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What to tell a user who has no network: the files, and where they go.
pub fn manual_help(source: DatasetKind, root: &Path) -> String {
    let urls: Vec<String> = source
        .files()
        .iter()
        .map(|f| format!("{}/{}", source.base_url(), f.name))
        .collect();
    let dest = root.join(source.subdir());
    let how = match source.unpack() {
        Unpack::TarGz { .. } => format!(
            "unpack it with tar xzf FILE -C {} so that {} exists",
            root.display(),
            dest.display()
        ),
        Unpack::Gunzip => format!("gunzip them into {}", dest.display()),
        Unpack::AsIs => format!("put them in {}", dest.display()),
    };
    format!(
        "Without a network: download {} and {how}, or point --data at a copy",
        urls.join(", ")
    )
}
