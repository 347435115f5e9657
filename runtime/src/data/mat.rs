//! A minimal reader of MATLAB v5 MAT files: real numeric arrays only.
//!
//! Layout: a 128-byte header (text, subsystem offset, version 0x0100, endian indicator "IM"/"MI"),
//! then data elements. Each element has an 8-byte tag (type u32, byte count u32) followed by its
//! data padded to 8 bytes, or the "small element" form (byte count in the upper 16 bits of the
//! first word, type in the lower 16, up to 4 data bytes in the second word). A variable is an
//! miMATRIX element whose sub-elements are: array flags, dimensions, name, real part [, imaginary].
//! Compressed elements (miCOMPRESSED, zlib; the official SVHN files use them)
//! are inflated first by [`inflate_mat`]; one still found by [`parse_mat`]
//! (compression nested inside compression) is reported, not decoded.

use std::path::{Path, PathBuf};

use super::error::DataError;

pub const MI_INT8: u32 = 1;
pub const MI_UINT8: u32 = 2;
pub const MI_INT16: u32 = 3;
pub const MI_UINT16: u32 = 4;
pub const MI_INT32: u32 = 5;
pub const MI_UINT32: u32 = 6;
pub const MI_SINGLE: u32 = 7;
pub const MI_DOUBLE: u32 = 9;
pub const MI_INT64: u32 = 12;
pub const MI_UINT64: u32 = 13;
pub const MI_MATRIX: u32 = 14;
pub const MI_COMPRESSED: u32 = 15;

/// MATLAB array classes `mxDOUBLE_CLASS` (6) ... `mxUINT64_CLASS` (15) are numeric.
const NUMERIC_CLASSES: std::ops::RangeInclusive<u8> = 6..=15;
const COMPLEX_FLAG: u32 = 0x0800;

/// The numbers of one array, borrowed from the file bytes, in column-major order.
#[derive(Clone, Copy, Debug)]
pub struct MatNumbers<'a> {
    /// Storage type (`MI_UINT8`, `MI_DOUBLE`, ...); may be narrower than the array class.
    pub ty: u32,
    pub bytes: &'a [u8],
    pub big_endian: bool,
}

impl<'a> MatNumbers<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / type_size(self.ty).unwrap_or(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes when stored as miUINT8 (the fast path for images).
    pub fn as_u8(&self) -> Option<&'a [u8]> {
        (self.ty == MI_UINT8).then_some(self.bytes)
    }

    /// Element `i` as f64 (exact for every integer type up to 2^53).
    pub fn get(&self, i: usize) -> f64 {
        let size = type_size(self.ty).unwrap_or(1);
        let b = &self.bytes[i * size..(i + 1) * size];
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(b);
        if self.big_endian {
            w[..size].reverse();
        }
        let u = u64::from_le_bytes(w);
        match self.ty {
            MI_INT8 => f64::from(u as u8 as i8),
            MI_UINT8 => f64::from(u as u8),
            MI_INT16 => f64::from(u as u16 as i16),
            MI_UINT16 => f64::from(u as u16),
            MI_INT32 => f64::from(u as u32 as i32),
            MI_UINT32 => f64::from(u as u32),
            MI_SINGLE => f64::from(f32::from_bits(u as u32)),
            MI_DOUBLE => f64::from_bits(u),
            MI_INT64 => u as i64 as f64,
            _ => u as f64,
        }
    }
}

/// One top-level variable.
#[derive(Clone, Debug)]
pub struct MatVar<'a> {
    pub name: String,
    /// MATLAB class (6 = double, 9 = uint8, ...).
    pub class: u8,
    pub dims: Vec<usize>,
    /// Real part; `None` for non-numeric (cell, struct, char, sparse) or complex arrays.
    pub real: Option<MatNumbers<'a>>,
}

fn type_size(ty: u32) -> Option<usize> {
    match ty {
        MI_INT8 | MI_UINT8 => Some(1),
        MI_INT16 | MI_UINT16 => Some(2),
        MI_INT32 | MI_UINT32 | MI_SINGLE => Some(4),
        MI_DOUBLE | MI_INT64 | MI_UINT64 => Some(8),
        _ => None,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
    path: PathBuf,
}

/// A data element: its type, data bytes and the offset just past it (padding included).
struct Element<'a> {
    ty: u32,
    data: &'a [u8],
    start: usize,
    next: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, detail: String) -> DataError {
        DataError::BadMat {
            path: self.path.clone(),
            detail,
        }
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let w: [u8; 4] = self.bytes[pos..pos + 4].try_into().expect("4 bytes");
        if self.big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    }

    /// The element starting at `pos`, which must lie within `..end`.
    fn element(&self, pos: usize, end: usize) -> Result<Element<'a>, DataError> {
        if end < pos + 8 {
            return Err(self.bad(format!(
                "truncated: data element tag at byte {pos} needs 8 bytes, only {} remain",
                end.saturating_sub(pos)
            )));
        }
        let first = self.u32_at(pos);
        if first >> 16 != 0 {
            // Small data element: up to 4 bytes packed into the tag.
            let n = (first >> 16) as usize;
            if n > 4 {
                return Err(self.bad(format!(
                    "small data element at byte {pos} claims {n} bytes (at most 4)"
                )));
            }
            return Ok(Element {
                ty: first & 0xffff,
                data: &self.bytes[pos + 4..pos + 4 + n],
                start: pos,
                next: pos + 8,
            });
        }
        let n = self.u32_at(pos + 4) as usize;
        let data_start = pos + 8;
        if n > end - data_start {
            return Err(self.bad(format!(
                "truncated: data element at byte {pos} claims {n} bytes, only {} remain",
                end - data_start
            )));
        }
        let padded = if first == MI_COMPRESSED {
            n
        } else {
            n.div_ceil(8) * 8
        };
        Ok(Element {
            ty: first,
            data: &self.bytes[data_start..data_start + n],
            start: pos,
            next: (data_start + padded).min(end),
        })
    }

    fn matrix(&self, el: &Element<'a>) -> Result<MatVar<'a>, DataError> {
        let base = el.start + 8;
        let end = base + el.data.len();
        let flags = self.element(base, end)?;
        if flags.ty != MI_UINT32 || flags.data.len() != 8 {
            return Err(self.bad(format!(
                "matrix at byte {}: array flags sub-element has type {} and {} bytes (want miUINT32, 8)",
                el.start,
                flags.ty,
                flags.data.len()
            )));
        }
        let flag_word = self.u32_at(flags.start + 8);
        let class = (flag_word & 0xff) as u8;
        let dims_el = self.element(flags.next, end)?;
        if dims_el.ty != MI_INT32 || dims_el.data.len() % 4 != 0 {
            return Err(self.bad(format!(
                "matrix at byte {}: dimensions sub-element is not miINT32",
                el.start
            )));
        }
        let mut dims = Vec::with_capacity(dims_el.data.len() / 4);
        for w in dims_el.data.chunks_exact(4) {
            let w: [u8; 4] = w.try_into().expect("4 bytes");
            let d = if self.big_endian {
                i32::from_be_bytes(w)
            } else {
                i32::from_le_bytes(w)
            };
            if d < 0 {
                return Err(self.bad(format!(
                    "matrix at byte {}: negative dimension {d}",
                    el.start
                )));
            }
            dims.push(d as usize);
        }
        let name_el = self.element(dims_el.next, end)?;
        let name = String::from_utf8_lossy(name_el.data).into_owned();
        let numeric = NUMERIC_CLASSES.contains(&class) && flag_word & COMPLEX_FLAG == 0;
        let real = if numeric {
            let re = self.element(name_el.next, end)?;
            let Some(size) = type_size(re.ty) else {
                return Err(self.bad(format!(
                    "variable '{name}': unsupported storage type {}",
                    re.ty
                )));
            };
            let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count != Some(re.data.len() / size) || re.data.len() % size != 0 {
                return Err(self.bad(format!(
                    "variable '{name}': dimensions {dims:?} do not match {} bytes of type {}",
                    re.data.len(),
                    re.ty
                )));
            }
            Some(MatNumbers {
                ty: re.ty,
                bytes: re.data,
                big_endian: self.big_endian,
            })
        } else {
            None
        };
        Ok(MatVar {
            name,
            class,
            dims,
            real,
        })
    }
}

/// Largest size a compressed element may inflate to: far above SVHN's largest
/// variable (`extra_32x32.mat` X is ~1.6 GB), far below what would exhaust memory.
const MAX_INFLATED: usize = 4 << 30;

/// The file with every top-level `miCOMPRESSED` element inflated in place (the
/// official SVHN files are compressed), or the bytes as they are when none is.
pub fn inflate_mat<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, DataError> {
    if bytes.len() < 128 || !matches!(&bytes[126..128], b"IM" | b"MI") {
        return Ok(std::borrow::Cow::Borrowed(bytes)); // parse_mat reports it
    }
    let big_endian = &bytes[126..128] == b"MI";
    let word = |pos: usize| -> u32 {
        let w: [u8; 4] = bytes[pos..pos + 4].try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 128;
    while pos + 8 <= bytes.len() {
        let (ty, n) = (word(pos), word(pos + 4) as usize);
        // Small-element tags pack the size in the upper half-word; they are
        // never compressed and never top-level variables worth inflating.
        let small = ty >> 16 != 0;
        let len = if small { 8 } else { 8 + n };
        let next = if small || ty == MI_COMPRESSED {
            pos + len
        } else {
            pos + len.div_ceil(8) * 8
        };
        if ty == MI_COMPRESSED {
            let data = bytes
                .get(pos + 8..pos + 8 + n)
                .ok_or_else(|| DataError::BadMat {
                    path: path.to_path_buf(),
                    detail: format!("truncated: compressed element at byte {pos} needs {n} bytes"),
                })?;
            let inflated =
                miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data, MAX_INFLATED)
                    .map_err(|e| DataError::BadMat {
                        path: path.to_path_buf(),
                        detail: format!(
                            "compressed element at byte {pos} does not inflate: {:?}",
                            e.status
                        ),
                    })?;
            let buf = out.get_or_insert_with(|| bytes[..pos].to_vec());
            buf.extend_from_slice(&inflated);
            // Inflated elements keep their own padding; keep the stream 8-aligned.
            buf.resize(buf.len().div_ceil(8) * 8, 0);
        } else if let Some(buf) = out.as_mut() {
            buf.extend_from_slice(&bytes[pos..next.min(bytes.len())]);
        }
        pos = next;
    }
    Ok(match out {
        Some(mut buf) => {
            buf.extend_from_slice(&bytes[pos.min(bytes.len())..]);
            std::borrow::Cow::Owned(buf)
        }
        None => std::borrow::Cow::Borrowed(bytes),
    })
}

/// Parse every top-level variable of an uncompressed MAT v5 file held in `bytes`
/// (run [`inflate_mat`] first for compressed files).
/// `path` is only used in error messages.
pub fn parse_mat<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<MatVar<'a>>, DataError> {
    let bad = |detail: String| DataError::BadMat {
        path: path.to_path_buf(),
        detail,
    };
    if bytes.len() < 128 {
        return Err(bad(format!(
            "{} bytes, too short for the 128-byte MAT header",
            bytes.len()
        )));
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ if bytes.starts_with(b"\x89HDF") => {
            return Err(bad("HDF5 file without a MAT header".into()));
        }
        _ => {
            return Err(bad(
                "no MATLAB v5 endian indicator at bytes 126..128 (MATLAB v4 or not a MAT file)"
                    .into(),
            ))
        }
    };
    let reader = Reader {
        bytes,
        big_endian,
        path: path.to_path_buf(),
    };
    let version = if big_endian {
        u16::from_be_bytes([bytes[124], bytes[125]])
    } else {
        u16::from_le_bytes([bytes[124], bytes[125]])
    };
    if version == 0x0200 {
        return Err(bad(
            "MATLAB v7.3 (HDF5) file; resave it as v5/v6, e.g. in MATLAB save(name, 'X', 'y', '-v6') \
             or with scipy.io.savemat(..., do_compression=False)"
                .into(),
        ));
    }
    let mut vars = Vec::new();
    let mut pos = 128;
    while pos < bytes.len() {
        if bytes.len() - pos < 8 && bytes[pos..].iter().all(|&b| b == 0) {
            break; // trailing padding
        }
        let el = reader.element(pos, bytes.len())?;
        match el.ty {
            MI_COMPRESSED => {
                return Err(DataError::CompressedMat {
                    path: path.to_path_buf(),
                    offset: pos,
                })
            }
            MI_MATRIX if el.data.is_empty() => {} // an empty array written as a bare tag
            MI_MATRIX => vars.push(reader.matrix(&el)?),
            _ => {} // other top-level elements carry no variable we need
        }
        pos = el.next;
    }
    Ok(vars)
}
