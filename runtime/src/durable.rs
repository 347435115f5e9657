//! Files that survive a crash or a power loss: written beside the target,
//! flushed to the device, renamed into place, and the directory entry flushed
//! too, so a committed file never points at data the disk does not hold.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `path` + `.tmp`: fsync of the file, rename,
/// fsync of the directory.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Flushes the directory holding `path` (its entries: renames, new files).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Flushes a directory's entries.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
