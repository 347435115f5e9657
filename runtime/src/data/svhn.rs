//! SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`): `X` is uint8 32x32x3xN in MATLAB
//! column-major order X(row, col, channel, n); `y` is Nx1 (double or uint8) with 10 meaning digit 0.

use std::path::Path;

use super::cifar::read_file;
use super::dataset::{Split, IMAGE_LEN, PLANE, SIDE};
use super::error::DataError;
use super::mat::{inflate_mat, parse_mat, MatNumbers, MatVar};

pub const SVHN_TRAIN: &str = "train_32x32.mat";
pub const SVHN_TEST: &str = "test_32x32.mat";

/// Read both SVHN splits from `dir`: (train, test).
pub fn read_svhn(dir: &Path) -> Result<(Split, Split), DataError> {
    let train = read_svhn_file(&dir.join(SVHN_TRAIN), "train")?;
    let test = read_svhn_file(&dir.join(SVHN_TEST), "test")?;
    Ok((train, test))
}

/// Read one SVHN MAT file into a split with CHW images and labels 0..9.
pub fn read_svhn_file(path: &Path, split_name: &str) -> Result<Split, DataError> {
    let bytes = read_file(path, &format!("SVHN {split_name} split"))?;
    svhn_from_bytes(path, &bytes, split_name)
}

/// Decode the bytes of an SVHN MAT file; `path` is only used in error messages.
pub(crate) fn svhn_from_bytes(
    path: &Path,
    bytes: &[u8],
    split_name: &str,
) -> Result<Split, DataError> {
    let inflated = inflate_mat(path, bytes)?;
    let vars = parse_mat(path, &inflated)?;
    let (x_dims, x) = numeric(path, &vars, "X")?;
    let n = match x_dims.as_slice() {
        [32, 32, 3, n] => *n,
        [32, 32, 3] => 1, // MATLAB drops a trailing singleton dimension
        d => {
            return Err(DataError::WrongSize {
                path: path.to_path_buf(),
                detail: format!("variable X has dimensions {d:?}, expected [32, 32, 3, N]"),
            })
        }
    };
    let (_, y) = numeric(path, &vars, "y")?;
    if y.len() != n {
        return Err(DataError::WrongSize {
            path: path.to_path_buf(),
            detail: format!("X holds {n} images but y holds {} labels", y.len()),
        });
    }
    if n == 0 {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
            split: split_name.to_string(),
        });
    }
    let labels = (0..n)
        .map(|i| svhn_label(path, i, y.get(i)))
        .collect::<Result<Vec<u8>, _>>()?;
    let images = match x.as_u8() {
        Some(raw) => to_chw(raw, n),
        None => {
            let mut raw = Vec::with_capacity(n * IMAGE_LEN);
            for i in 0..x.len() {
                let v = x.get(i);
                if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                    return Err(DataError::BadMat {
                        path: path.to_path_buf(),
                        detail: format!("X element {i} is {v}, not a pixel value 0..255"),
                    });
                }
                raw.push(v as u8);
            }
            to_chw(&raw, n)
        }
    };
    Ok(Split {
        shape: super::dataset::ImageShape::RGB32,
        images,
        labels,
        num_classes: 10,
        files: vec![path.to_path_buf()],
    })
}

fn numeric<'a>(
    path: &Path,
    vars: &[MatVar<'a>],
    name: &str,
) -> Result<(Vec<usize>, MatNumbers<'a>), DataError> {
    let var = vars.iter().find(|v| v.name == name).ok_or_else(|| {
        let found: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        DataError::BadMat {
            path: path.to_path_buf(),
            detail: format!("no variable '{name}' (variables found: {found:?})"),
        }
    })?;
    let real = var.real.ok_or_else(|| DataError::BadMat {
        path: path.to_path_buf(),
        detail: format!(
            "variable '{name}' is not a real numeric array (class {})",
            var.class
        ),
    })?;
    Ok((var.dims.clone(), real))
}

/// SVHN label: 1..9 are digits, 10 is digit 0 (0 itself is accepted too).
fn svhn_label(path: &Path, record: usize, v: f64) -> Result<u8, DataError> {
    if v.fract() != 0.0 || !v.is_finite() {
        return Err(DataError::BadMat {
            path: path.to_path_buf(),
            detail: format!("y[{record}] = {v} is not an integer label"),
        });
    }
    match v as i64 {
        10 => Ok(0),
        l @ 0..=9 => Ok(l as u8),
        l => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            record,
            label: l,
            classes: 10,
        }),
    }
}

/// Column-major X(row, col, ch, n) to per-image CHW with rows top to bottom.
fn to_chw(raw: &[u8], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * IMAGE_LEN];
    for (src, dst) in raw
        .chunks_exact(IMAGE_LEN)
        .zip(out.chunks_exact_mut(IMAGE_LEN))
    {
        for (sp, dp) in src.chunks_exact(PLANE).zip(dst.chunks_exact_mut(PLANE)) {
            // sp[r + SIDE * c] holds (row r, col c); dp wants r * SIDE + c.
            for c in 0..SIDE {
                for r in 0..SIDE {
                    dp[r * SIDE + c] = sp[r + SIDE * c];
                }
            }
        }
    }
    out
}
