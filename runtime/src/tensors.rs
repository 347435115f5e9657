//! Named tensors in safetensors files: model weights with PyTorch names and
//! layouts, batches for `grad`, gradients. Every failure names the file and
//! the tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor '{name}' is missing")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor '{name}' has shape {got:?}, expected {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor '{name}' has dtype {got}, expected {want}")]
    Dtype {
        path: PathBuf,
        name: String,
        got: String,
        want: &'static str,
    },
    #[error("{path}: tensor '{name}' is not a parameter of this model ({hint})")]
    Unexpected {
        path: PathBuf,
        name: String,
        hint: String,
    },
}

/// A float or integer tensor read from a file, converted to f32 / i64.
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, TensorFileError> {
    let bytes = std::fs::read(path).map_err(|source| TensorFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TensorFileError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Values::F32(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            Dtype::F64 => Values::F32(
                d.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            Dtype::I64 => Values::I64(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            Dtype::I32 => Values::I64(
                d.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            Dtype::U8 => Values::I64(d.iter().map(|&b| b as i64).collect()),
            other => {
                return Err(TensorFileError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    got: format!("{other:?}"),
                    want: "F32, F64, I64, I32 or U8",
                })
            }
        };
        out.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Takes tensor `name` as f32 of exactly `shape`.
pub fn take_f32(
    tensors: &mut BTreeMap<String, Tensor>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, TensorFileError> {
    let t = tensors
        .remove(name)
        .ok_or_else(|| TensorFileError::Missing {
            path: path.to_path_buf(),
            name: name.to_string(),
        })?;
    if t.shape != shape {
        return Err(TensorFileError::Shape {
            path: path.to_path_buf(),
            name: name.to_string(),
            got: t.shape,
            want: shape.to_vec(),
        });
    }
    match t.values {
        Values::F32(v) => Ok(v),
        Values::I64(_) => Err(TensorFileError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            got: "an integer type".into(),
            want: "F32",
        }),
    }
}

/// One tensor to write: name, shape, f32 values or i64 values.
pub enum Out<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// Writes tensors atomically: a temporary file beside the target, then rename,
/// so a reader (or a killed run) never sees half a file.
pub fn write(
    path: &Path,
    tensors: &[(String, Vec<usize>, Out<'_>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), TensorFileError> {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, v)| match v {
            Out::F32(v) => (
                n.clone(),
                shape.clone(),
                Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Out::I64(v) => (
                n.clone(),
                shape.clone(),
                Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, d, b)| {
            let view =
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("shape matches data");
            (n.clone(), view)
        })
        .collect();
    let data = safetensors::serialize(views, metadata).map_err(|e| TensorFileError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::durable::write(path, &data).map_err(|source| TensorFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}
