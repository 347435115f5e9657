//! The data sets `dropjit data fetch` knows: where their official files are,
//! their published MD5 checksums, and how each unpacks into the directory the
//! data loader looks for.

use crate::data::DatasetKind;

/// How the downloaded files become the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpack {
    /// A gzipped tar archive whose files sit under this top-level directory.
    TarGz { member_dir: &'static str },
    /// Each file gunzipped, `.gz` dropped from its name.
    Gunzip,
    /// The files as downloaded.
    AsIs,
}

/// One official file and its published MD5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: &'static str,
    pub md5: &'static str,
}

const fn file(name: &'static str, md5: &'static str) -> RemoteFile {
    RemoteFile { name, md5 }
}

/// Where each data set comes from (the names and directories are the data
/// module's: `DatasetKind::name`, `DatasetKind::subdir`).
impl DatasetKind {
    /// Where the official files are (each file is `base_url/name`).
    pub fn base_url(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => "https://www.cs.toronto.edu/~kriz",
            DatasetKind::Svhn => "http://ufldl.stanford.edu/housenumbers",
            DatasetKind::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist",
            DatasetKind::FashionMnist => {
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
            }
        }
    }

    /// The official files with the checksums their publishers give (for
    /// MNIST, Fashion-MNIST and SVHN as torchvision lists them).
    pub fn files(self) -> &'static [RemoteFile] {
        const CIFAR10: [RemoteFile; 1] = [file(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
        )];
        const CIFAR100: [RemoteFile; 1] = [file(
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        )];
        const SVHN: [RemoteFile; 2] = [
            file("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d0373"),
            file("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
        ];
        const MNIST: [RemoteFile; 4] = [
            file(
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            file(
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            file(
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            file(
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ];
        const FASHION: [RemoteFile; 4] = [
            file(
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            file(
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
            ),
            file(
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
            ),
            file(
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ];
        match self {
            DatasetKind::Cifar10 => &CIFAR10,
            DatasetKind::Cifar100 => &CIFAR100,
            DatasetKind::Svhn => &SVHN,
            DatasetKind::Mnist => &MNIST,
            DatasetKind::FashionMnist => &FASHION,
        }
    }

    pub fn unpack(self) -> Unpack {
        match self {
            DatasetKind::Cifar10 => Unpack::TarGz {
                member_dir: "cifar-10-batches-bin",
            },
            DatasetKind::Cifar100 => Unpack::TarGz {
                member_dir: "cifar-100-binary",
            },
            DatasetKind::Svhn => Unpack::AsIs,
            DatasetKind::Mnist | DatasetKind::FashionMnist => Unpack::Gunzip,
        }
    }
}
