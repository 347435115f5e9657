//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
