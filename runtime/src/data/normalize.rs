//! Input normalisation, with statistics computed from the training split.

use std::fmt;
use std::str::FromStr;

use super::dataset::Split;

/// How raw u8 pixels become network inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalization {
    /// Caffe style: subtract the per-pixel mean image, on the raw 0..255 scale (no division).
    MeanImage,
    /// torchvision style: `(x / 255 - mean[c]) / std[c]` per channel, statistics on the 0..1 scale.
    #[default]
    ChannelMeanStd,
    /// Only scale to 0..1: `x / 255` (torchvision's ToTensor without Normalize).
    None,
}

impl Normalization {
    /// Config / CLI name: `mean-image`, `channel-mean-std`, `none`.
    pub fn name(self) -> &'static str {
        match self {
            Normalization::MeanImage => "mean-image",
            Normalization::ChannelMeanStd => "channel-mean-std",
            Normalization::None => "none",
        }
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Normalization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean-image" => Ok(Normalization::MeanImage),
            "channel-mean-std" | "channel" => Ok(Normalization::ChannelMeanStd),
            "none" => Ok(Normalization::None),
            _ => Err(format!(
                "unknown normalisation '{s}': expected mean-image, channel-mean-std or none"
            )),
        }
    }
}

/// Computed statistics; public so a run can save them in its config.
#[derive(Clone, Debug, PartialEq)]
pub enum NormStats {
    /// One value per CHW position, raw 0..255 scale.
    MeanImage {
        mean: Vec<f32>,
    },
    /// Per-channel mean and population standard deviation on the 0..1 scale.
    /// A zero deviation (constant channel) is stored as 1 so nothing divides by zero.
    ChannelMeanStd {
        mean: Vec<f32>,
        std: Vec<f32>,
        /// Pixels per channel plane: which channel a CHW position is in.
        plane: usize,
    },
    None,
}

impl NormStats {
    /// Compute the statistics of `norm` over the training split.
    pub fn compute(norm: Normalization, train: &Split) -> NormStats {
        let n = train.len().max(1) as f64;
        let (image_len, plane, channels) =
            (train.shape.len(), train.shape.plane(), train.shape.channels);
        match norm {
            Normalization::MeanImage => {
                let mut sums = vec![0u64; image_len];
                for img in train.images.chunks_exact(image_len) {
                    for (s, &v) in sums.iter_mut().zip(img) {
                        *s += u64::from(v);
                    }
                }
                NormStats::MeanImage {
                    mean: sums.iter().map(|&s| (s as f64 / n) as f32).collect(),
                }
            }
            Normalization::ChannelMeanStd => {
                let mut sum = vec![0u64; channels];
                let mut sq = vec![0u64; channels];
                for img in train.images.chunks_exact(image_len) {
                    for (c, plane) in img.chunks_exact(plane).enumerate() {
                        for &v in plane {
                            sum[c] += u64::from(v);
                            sq[c] += u64::from(v) * u64::from(v);
                        }
                    }
                }
                let count = n * plane as f64;
                let mut mean = vec![0f32; channels];
                let mut std = vec![1f32; channels];
                for c in 0..channels {
                    let m = sum[c] as f64 / count / 255.0;
                    let var = (sq[c] as f64 / count / (255.0 * 255.0) - m * m).max(0.0);
                    mean[c] = m as f32;
                    let s = var.sqrt() as f32;
                    std[c] = if s > 0.0 { s } else { 1.0 };
                }
                NormStats::ChannelMeanStd { mean, std, plane }
            }
            Normalization::None => NormStats::None,
        }
    }

    pub fn normalization(&self) -> Normalization {
        match self {
            NormStats::MeanImage { .. } => Normalization::MeanImage,
            NormStats::ChannelMeanStd { .. } => Normalization::ChannelMeanStd,
            NormStats::None => Normalization::None,
        }
    }

    /// The input value of raw pixel `v` placed at CHW position `idx` of the network input.
    #[inline]
    pub fn apply(&self, idx: usize, v: u8) -> f32 {
        match self {
            NormStats::MeanImage { mean } => f32::from(v) - mean[idx],
            NormStats::ChannelMeanStd { mean, std, plane } => {
                let c = idx / plane;
                (f32::from(v) / 255.0 - mean[c]) / std[c]
            }
            NormStats::None => f32::from(v) / 255.0,
        }
    }

    /// Normalise one CHW image without augmentation.
    pub fn normalize_image(&self, raw: &[u8], out: &mut [f32]) {
        assert_eq!(raw.len(), out.len(), "normalize_image: image lengths");
        for (i, (o, &v)) in out.iter_mut().zip(raw).enumerate() {
            *o = self.apply(i, v);
        }
    }
}
