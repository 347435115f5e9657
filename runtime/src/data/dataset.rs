//! In-memory data sets: u8 CHW images (3x32x32) with u8 labels, and the loader entry point.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::DataError;
use super::locate::locate_dataset;
use super::{cifar, svhn};

/// Channels, height and width of every image of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// CIFAR-10/100 and SVHN.
    pub const RGB32: ImageShape = ImageShape {
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    };

    /// Pixels per channel plane.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Bytes (and f32 values) per image, CHW.
    pub fn len(&self) -> usize {
        self.channels * self.plane()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]`, as a model's image input declares it.
    pub fn dims(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
}

/// Channels per CIFAR / SVHN image.
pub const CHANNELS: usize = 3;
/// Height and width of every CIFAR / SVHN image.
pub const SIDE: usize = 32;
/// Pixels per channel plane.
pub const PLANE: usize = SIDE * SIDE;
/// Bytes (and f32 values) per image, CHW.
pub const IMAGE_LEN: usize = CHANNELS * PLANE;

/// The supported data sets (`--dataset cifar10|cifar100|svhn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
    Svhn,
    Mnist,
    FashionMnist,
}

impl DatasetKind {
    /// All kinds, in detection order.
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Svhn,
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
    ];

    /// The CLI name: `cifar10`, `cifar100` or `svhn`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Number of classes; CIFAR-100 has 100 fine or 20 coarse labels.
    pub fn num_classes(self, labels: Cifar100Labels) -> usize {
        match (self, labels) {
            (DatasetKind::Cifar100, Cifar100Labels::Fine) => 100,
            (DatasetKind::Cifar100, Cifar100Labels::Coarse) => 20,
            _ => 10,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cifar10" => Ok(DatasetKind::Cifar10),
            "cifar100" => Ok(DatasetKind::Cifar100),
            "svhn" => Ok(DatasetKind::Svhn),
            "mnist" => Ok(DatasetKind::Mnist),
            "fashionmnist" => Ok(DatasetKind::FashionMnist),
            _ => Err(DataError::UnknownKind(s.to_string())),
        }
    }
}

/// Which CIFAR-100 label to train on; ignored by the other data sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// 100 fine classes (the usual benchmark).
    #[default]
    Fine,
    /// 20 coarse super-classes.
    Coarse,
}

/// How to load: the data set (detected from the directory when `None`) and the CIFAR-100 labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataLoadOptions {
    pub kind: Option<DatasetKind>,
    pub cifar100_labels: Cifar100Labels,
}

/// One split (train or test) fully in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// `len() * shape.len()` bytes, each image CHW (channel planes, rows top to bottom).
    pub images: Vec<u8>,
    pub shape: ImageShape,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    pub num_classes: usize,
    /// The files the split was read from, in order.
    pub files: Vec<PathBuf>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A loaded data set: both splits, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub kind: DatasetKind,
    /// The directory the files were read from (e.g. `DIR/cifar-10-batches-bin`).
    pub dir: PathBuf,
    pub num_classes: usize,
    pub train: Split,
    pub test: Split,
}

/// Locate the data set under `root` (the directory itself or one of its known sub-directories),
/// read both splits and validate them. Reading never panics on bad files.
pub fn load_dataset(root: &Path, options: &DataLoadOptions) -> Result<Dataset, DataError> {
    let (kind, dir) = locate_dataset(root, options.kind)?;
    let classes = kind.num_classes(options.cifar100_labels);
    let (train, test) = match kind {
        DatasetKind::Cifar10 => cifar::read_cifar10(&dir)?,
        DatasetKind::Cifar100 => cifar::read_cifar100(&dir, options.cifar100_labels)?,
        DatasetKind::Svhn => svhn::read_svhn(&dir)?,
        DatasetKind::Mnist | DatasetKind::FashionMnist => super::idx::read_idx_dataset(&dir)?,
    };
    Ok(Dataset {
        kind,
        dir,
        num_classes: classes,
        train,
        test,
    })
}
