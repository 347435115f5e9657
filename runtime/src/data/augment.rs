//! Random crop (zero padding) and horizontal flip, drawn per image from (seed, epoch, position).
//!
//! Order of operations, as torchvision's `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`,
//! `ToTensor()`, `Normalize(...)`: the *raw* image is padded with 0 (black), a 32x32 window is cut,
//! optionally mirrored, and only then normalised. Normalisation is positional: the value that
//! lands at output position (c, r, x) is normalised with the statistic of that position (this
//! matters only for the per-pixel mean image). So padded pixels become `apply(idx, 0)`, not 0.

use rand_core::Rng;

use super::dataset::ImageShape;
use super::normalize::NormStats;
use super::order::{below, derive_rng, AUGMENT_STREAM};

/// Augmentation settings for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the random 32x32 crop (0 disables cropping).
    pub pad: usize,
    /// Mirror left-right with probability 0.5.
    pub flip: bool,
}

impl Default for Augment {
    /// pad 4 + flip: the standard CIFAR recipe.
    fn default() -> Self {
        Augment { pad: 4, flip: true }
    }
}

/// One image's draw: the crop's top-left corner in the padded image (`0..=2*pad` each;
/// `(pad, pad)` is the original framing) and whether it is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
}

impl CropFlip {
    /// The draw that leaves the image unchanged.
    pub fn identity(pad: usize) -> Self {
        CropFlip {
            dy: pad,
            dx: pad,
            flip: false,
        }
    }
}

/// The draw of the image at `position` of epoch `epoch`: independent of batch size and of every
/// other image, so any batch can be regenerated on its own. Always consumes the same draws
/// (dy, dx, flip), so turning flipping off does not change the crops.
pub fn draw_crop_flip(augment: &Augment, seed: u64, epoch: u64, position: u64) -> CropFlip {
    let mut rng = derive_rng(AUGMENT_STREAM, seed, epoch, position);
    let span = 2 * augment.pad as u64 + 1;
    let dy = below(&mut rng, span) as usize;
    let dx = below(&mut rng, span) as usize;
    let flip = rng.next_u64() >> 63 == 1;
    CropFlip {
        dy,
        dx,
        flip: augment.flip && flip,
    }
}

/// Write the cropped, optionally mirrored and normalised CHW image to `out`
/// (`shape.len()` f32), for any channel count and size.
pub fn crop_flip_normalize(
    raw: &[u8],
    shape: ImageShape,
    draw: CropFlip,
    pad: usize,
    stats: &NormStats,
    out: &mut [f32],
) {
    let (h, w, plane_len) = (shape.height, shape.width, shape.plane());
    assert_eq!(
        raw.len(),
        shape.len(),
        "crop_flip_normalize: raw image length"
    );
    assert_eq!(out.len(), shape.len(), "crop_flip_normalize: output length");
    for c in 0..shape.channels {
        let plane = &raw[c * plane_len..(c + 1) * plane_len];
        for r in 0..h {
            let sr = (r + draw.dy) as isize - pad as isize;
            for x in 0..w {
                let cx = if draw.flip { w - 1 - x } else { x };
                let sc = (cx + draw.dx) as isize - pad as isize;
                let v = if (0..h as isize).contains(&sr) && (0..w as isize).contains(&sc) {
                    plane[sr as usize * w + sc as usize]
                } else {
                    0
                };
                let idx = c * plane_len + r * w + x;
                out[idx] = stats.apply(idx, v);
            }
        }
    }
}
