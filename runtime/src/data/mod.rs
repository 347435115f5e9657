//! Data loading: CIFAR-10 / CIFAR-100 binary, SVHN (MAT v5), MNIST / Fashion-MNIST (IDX) into memory, validation,
//! normalisation, deterministic shuffling and augmentation, and batching.
//!
//! Images are held as u8 CHW (channel planes, rows top to bottom; 3x32x32 or 1x28x28) and handed to the
//! trainer as f32 NCHW with i32 labels. Shuffling and augmentation are pure functions of
//! (seed, epoch, position in the epoch), so a resumed run regenerates the same batches
//! without saved RNG state.
//!
//! Typical use:
//! ```ignore
//! let root = resolve_data_dir(args.data.as_deref())?;
//! let ds = load_dataset(&root, &DataLoadOptions { kind: args.dataset, ..Default::default() })?;
//! let stats = NormStats::compute(Normalization::ChannelMeanStd, &ds.train);
//! let loader = BatchLoader::new(&ds.train, &stats, Some(Augment::default()), seed);
//! for epoch in start_epoch..epochs {
//!     let order = loader.epoch_order(epoch, true);
//!     for b in 0..loader.train_batches(bs) {
//!         loader.fill_batch(&order, b * bs, epoch, &mut images, &mut labels);
//!     }
//! }
//! for_each_eval_batch(&ds.test, &stats, bs, |x, y| { /* ... */ Ok::<_, E>(()) })?;
//! ```

mod augment;
mod batch;
mod cifar;
mod dataset;
mod error;
mod idx;
mod locate;
mod mat;
mod normalize;
mod order;
mod svhn;

#[cfg(test)]
mod tests;

pub use augment::{crop_flip_normalize, draw_crop_flip, Augment, CropFlip};
pub use batch::{batches_per_epoch, eval_batches, for_each_eval_batch, BatchLoader, LastBatch};
pub use cifar::{read_cifar10, read_cifar100, CIFAR100_RECORD, CIFAR10_RECORD};
pub use dataset::{
    load_dataset, Cifar100Labels, DataLoadOptions, Dataset, DatasetKind, ImageShape, Split,
    CHANNELS, IMAGE_LEN, PLANE, SIDE,
};
pub use error::{DataError, DOWNLOAD_HELP};
pub use idx::{read_idx_dataset, IDX_FILES};
pub use locate::{
    choose_data_dir, locate_dataset, resolve_data_dir, resolve_data_dir_from, DATA_ENV,
    DEFAULT_DATA_DIR,
};
pub use mat::{parse_mat, MatNumbers, MatVar};
pub use normalize::{NormStats, Normalization};
pub use order::epoch_order;
pub use svhn::{read_svhn, read_svhn_file, SVHN_TEST, SVHN_TRAIN};
