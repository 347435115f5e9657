//! Small file helpers: durable atomic writes (temporary file beside the
//! target, fsync, rename, fsync of the directory, so neither a killed run nor a
//! power loss leaves half a file) and JSON in and out.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::TrainError;

/// Writes `bytes` to `path` durably (see [`crate::durable::write`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::durable::write(path, bytes).map_err(|e| TrainError::io(path, "write", e))
}

/// Pretty JSON, written atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Config(format!("{}: cannot encode: {e}", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, "read", e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: not a valid run file: {e}", path.display())))
}
