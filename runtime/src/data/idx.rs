//! MNIST and Fashion-MNIST: IDX files (big-endian header, then u8 data), 1x28x28
//! images and labels 0..9. Gzipped copies (`<name>.gz`) are read as well.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::dataset::{ImageShape, Split};
use super::error::DataError;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The four files of an MNIST-format data set: (train images, train labels,
/// test images, test labels).
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Read an MNIST-format directory: (train, test), 10 classes.
pub fn read_idx_dataset(dir: &Path) -> Result<(Split, Split), DataError> {
    let train = read_split(dir, IDX_FILES[0], IDX_FILES[1], "train")?;
    let test = read_split(dir, IDX_FILES[2], IDX_FILES[3], "test")?;
    if train.shape != test.shape {
        return Err(DataError::WrongSize {
            path: dir.join(IDX_FILES[2]),
            detail: format!(
                "test images are {:?}, training images {:?}",
                test.shape.dims(),
                train.shape.dims()
            ),
        });
    }
    Ok((train, test))
}

fn read_split(dir: &Path, images: &str, labels: &str, split: &str) -> Result<Split, DataError> {
    let (images_path, image_bytes) = read_file(dir, images)?;
    let (labels_path, label_bytes) = read_file(dir, labels)?;
    let (dims, pixels) = parse_idx(&images_path, &image_bytes, IMAGES_MAGIC, 3)?;
    let (label_dims, labels) = parse_idx(&labels_path, &label_bytes, LABELS_MAGIC, 1)?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    if label_dims[0] != n {
        return Err(DataError::WrongSize {
            path: labels_path,
            detail: format!(
                "{} labels for {n} images in {}",
                label_dims[0],
                images_path.display()
            ),
        });
    }
    if n == 0 {
        return Err(DataError::EmptySplit {
            path: images_path,
            split: split.into(),
        });
    }
    if let Some((record, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= 10) {
        return Err(DataError::LabelOutOfRange {
            path: labels_path,
            record,
            label: i64::from(label),
            classes: 10,
        });
    }
    Ok(Split {
        images: pixels.to_vec(),
        shape: ImageShape {
            channels: 1,
            height,
            width,
        },
        labels: labels.to_vec(),
        num_classes: 10,
        files: vec![images_path, labels_path],
    })
}

/// `dir/name`, else `dir/name.gz` decompressed.
fn read_file(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), DataError> {
    let plain = dir.join(name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    if plain.is_file() {
        let bytes = std::fs::read(&plain).map_err(io(&plain))?;
        return Ok((plain, bytes));
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        let file = std::fs::File::open(&gz).map_err(io(&gz))?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::WrongSize {
                path: gz.clone(),
                detail: format!("not a valid gzip file: {e}"),
            })?;
        return Ok((gz, bytes));
    }
    Err(DataError::MissingFile {
        path: plain,
        what: "MNIST-format IDX file (or its .gz)".into(),
    })
}

/// Checks an IDX header (`0 0 type ndim`, then `ndim` big-endian u32 sizes)
/// against the expected magic and rank, and the data length against the sizes.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    rank: usize,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let bad = |detail: String| DataError::WrongSize {
        path: path.to_path_buf(),
        detail,
    };
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(format!(
            "{} bytes, shorter than the {header}-byte IDX header",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if word(0) != magic {
        return Err(bad(format!(
            "IDX magic {:#010x}, expected {magic:#010x} (unsigned bytes, {rank} dimension(s))",
            word(0)
        )));
    }
    let dims: Vec<usize> = (1..=rank).map(|i| word(i) as usize).collect();
    let want = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != want {
        return Err(bad(format!(
            "header says {dims:?} = {want} bytes of data, the file has {}",
            data.len()
        )));
    }
    Ok((dims, data))
}
