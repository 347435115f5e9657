//! Value types: element type, whether the value carries the implicit batch
//! dimension, and the remaining dimensions.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float (64-bit in the f64 interpreter).
    F32,
    /// Integer class label in `0..classes`.
    Label,
    /// No value: the node exists for its effect (a parameter update).
    Unit,
}

/// The type of a node's value. `batched` values have shape `[N, dims...]` for a
/// batch of `N` images; the others (parameters, per-channel statistics, the
/// loss) have shape `dims` whatever the batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub batched: bool,
    pub dims: Vec<usize>,
}

impl TensorType {
    pub fn batched(dims: Vec<usize>) -> Self {
        TensorType {
            dtype: DType::F32,
            batched: true,
            dims,
        }
    }
    pub fn fixed(dims: Vec<usize>) -> Self {
        TensorType {
            dtype: DType::F32,
            batched: false,
            dims,
        }
    }
    pub fn scalar() -> Self {
        Self::fixed(vec![])
    }
    pub fn labels() -> Self {
        TensorType {
            dtype: DType::Label,
            batched: true,
            dims: vec![],
        }
    }
    pub fn unit() -> Self {
        TensorType {
            dtype: DType::Unit,
            batched: false,
            dims: vec![],
        }
    }

    /// Elements per image (batched) or in total (fixed).
    pub fn elems_per_item(&self) -> usize {
        if self.dtype == DType::Unit {
            return 0;
        }
        self.dims.iter().product()
    }

    /// Elements for a batch of `n`.
    pub fn elems(&self, n: usize) -> usize {
        if self.batched {
            n * self.elems_per_item()
        } else {
            self.elems_per_item()
        }
    }

    /// The concrete shape for a batch of `n`.
    pub fn concrete(&self, n: usize) -> Vec<usize> {
        let mut s = Vec::with_capacity(self.dims.len() + 1);
        if self.batched {
            s.push(n);
        }
        s.extend_from_slice(&self.dims);
        s
    }

    /// `[C, H, W]` of a batched image-like value, if it is one.
    pub fn chw(&self) -> Option<(usize, usize, usize)> {
        match (self.batched, self.dims.as_slice()) {
            (true, &[c, h, w]) => Some((c, h, w)),
            _ => None,
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            DType::Unit => return write!(f, "()"),
            DType::Label => write!(f, "label")?,
            DType::F32 => write!(f, "f32")?,
        }
        write!(f, "[")?;
        let mut first = true;
        if self.batched {
            write!(f, "N")?;
            first = false;
        }
        for d in &self.dims {
            if !first {
                write!(f, ",")?;
            }
            write!(f, "{d}")?;
            first = false;
        }
        write!(f, "]")
    }
}

/// Output length of a convolution or floor-mode pooling window sweep.
/// `None` when the (padded) input is smaller than the window.
pub fn conv_out_len(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = input + 2 * padding;
    if kernel == 0 || stride == 0 || kernel > padded {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// Output length of a pooling window sweep, Caffe's and PyTorch's rule: ceil mode
/// rounds up, but the last window must start inside the input or left padding.
pub fn pool_out_len(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let padded = input + 2 * padding;
    if kernel == 0 || stride == 0 || kernel > padded {
        return None;
    }
    let span = padded - kernel;
    let mut out = if ceil_mode {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    if ceil_mode && (out - 1) * stride >= input + padding {
        out -= 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caffe_quick_pool_lengths() {
        // cifar10_quick: 32 -> 16 -> 8 -> 4 with 3x3 stride-2 ceil pools.
        assert_eq!(pool_out_len(32, 3, 2, 0, true), Some(16));
        assert_eq!(pool_out_len(16, 3, 2, 0, true), Some(8));
        assert_eq!(pool_out_len(8, 3, 2, 0, true), Some(4));
        assert_eq!(pool_out_len(32, 3, 2, 0, false), Some(15));
        // The last window would start in the right padding: dropped.
        assert_eq!(pool_out_len(4, 2, 2, 1, true), Some(3));
    }

    #[test]
    fn conv_lengths() {
        assert_eq!(conv_out_len(32, 3, 1, 1), Some(32));
        assert_eq!(conv_out_len(32, 3, 2, 1), Some(16));
        assert_eq!(conv_out_len(2, 5, 1, 1), None);
    }

    #[test]
    fn display() {
        assert_eq!(
            TensorType::batched(vec![3, 32, 32]).to_string(),
            "f32[N,3,32,32]"
        );
        assert_eq!(TensorType::fixed(vec![10, 64]).to_string(), "f32[10,64]");
        assert_eq!(TensorType::scalar().to_string(), "f32[]");
    }
}
