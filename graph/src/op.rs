//! The closed set of operations. Every op is matched exhaustively by the shape
//! rules (here), the gradient rules (`autodiff`), the reference interpreter
//! (`interp`) and the code generator, so adding one forces a decision in each.

use crate::ids::{ParamId, SiteId};
use crate::mask::Stream;
use crate::shape::{conv_out_len, pool_out_len, DType, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dAttrs {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolAttrs {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub ceil_mode: bool,
}

/// One factor of a dropout mask: elements of `stream` dropped with `ratio`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskFactor {
    pub stream: Stream,
    pub ratio: f64,
}

/// A dropout mask at one site: the product of its factors (`F`, or `F ⊙ G`, or
/// `G`), each element `0` or the inverted-dropout scale. Never empty: an
/// all-ones mask is not materialised as a node.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskSpec {
    pub site: SiteId,
    pub factors: Vec<MaskFactor>,
}

impl MaskSpec {
    pub fn scale(&self) -> f64 {
        crate::mask::keep_scale(&self.factors.iter().map(|f| f.ratio).collect::<Vec<_>>())
    }

    /// Each factor's (key, keep threshold) at (`seed`, `step`): an element is
    /// kept when every factor keeps it.
    pub fn keys(&self, seed: u64, step: u64) -> Vec<(u64, i32)> {
        self.factors
            .iter()
            .map(|f| {
                (
                    crate::mask::mask_key(seed, step, self.site.0, f.stream),
                    crate::mask::keep_threshold(f.ratio),
                )
            })
            .collect()
    }
}

/// Whether element `index` is kept by every factor of [`MaskSpec::keys`].
pub fn kept_by_all(keys: &[(u64, i32)], index: u32) -> bool {
    keys.iter()
        .all(|&(key, thr)| crate::mask::is_kept(key, index, thr))
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- leaves -------------------------------------------------------------
    /// The image batch, `[N, C, H, W]`.
    Image,
    /// The label batch, `[N]`, each in `0..classes`.
    Labels {
        classes: usize,
    },
    /// A parameter or state tensor (weights, BatchNorm running statistics).
    Param(ParamId),

    // ---- forward ------------------------------------------------------------
    /// `[x: N,Ci,H,W; w: Co,Ci,k,k] -> N,Co,Ho,Wo` (cross-correlation, no bias).
    Conv2d(Conv2dAttrs),
    /// `[x: N,C,...; b: C] -> x + b` broadcast along the channel axis.
    BiasAdd,
    /// `[x: N,I; w: O,I] -> N,O` (`x wᵀ`, PyTorch's layout).
    Linear,
    MaxPool2d(PoolAttrs),
    /// Average over the window clipped to the padded input (Caffe/PyTorch rule).
    AvgPool2d(PoolAttrs),
    Relu,
    /// Per-channel batch mean over `N, H, W`. `running` is the running-mean
    /// state this statistic feeds (used by the step and evaluation passes).
    /// `momentum` is PyTorch's running-average factor.
    BnMean {
        running: ParamId,
        momentum: f32,
    },
    /// `[x, mean] ->` per-channel biased batch variance.
    BnVar {
        running: ParamId,
        momentum: f32,
    },
    /// `[x, mean, var, gamma, beta] -> gamma (x - mean) / sqrt(var + eps) + beta`.
    BnApply {
        eps: f32,
    },
    Add,
    /// He et al.'s option-A shortcut: every `stride`-th pixel, channels
    /// zero-padded equally on both sides to `out_channels`.
    ShortcutA {
        stride: usize,
        out_channels: usize,
    },
    GlobalAvgPool,
    /// Same elements, new per-item dims (flatten and its gradient).
    Reshape {
        dims: Vec<usize>,
    },
    /// A dropout site of the forward graph; the autodiff and evaluation passes
    /// replace it by masks (or by nothing).
    Dropout(SiteId),
    /// `[logits: N,K; labels: N] ->` mean softmax cross-entropy (scalar).
    SoftmaxCrossEntropy,

    // ---- derived by autodiff -------------------------------------------------
    /// `x ⊙ M` for the mask `M` of a dropout site.
    Mask(MaskSpec),
    /// `[dy, w] -> dx`, with the input's spatial size.
    Conv2dGradInput {
        conv: Conv2dAttrs,
        in_h: usize,
        in_w: usize,
    },
    /// `[dy, x] -> dw`.
    Conv2dGradWeight(Conv2dAttrs),
    /// `[dy] ->` per-channel sum over all other axes.
    BiasGrad,
    /// `[dy: N,O; w: O,I] -> dy w`.
    LinearGradInput,
    /// `[dy: N,O; x: N,I] -> dyᵀ x`.
    LinearGradWeight,
    /// `[dy, x] -> dx`: routes each output gradient to the window's first maximum.
    MaxPool2dGrad(PoolAttrs),
    /// `[dy] -> dx` of the given input size.
    AvgPool2dGrad {
        pool: PoolAttrs,
        in_h: usize,
        in_w: usize,
    },
    /// `[dy, y] -> dy where y > 0`.
    ReluGrad,
    /// `[dy, x, mean, var, gamma] -> dx` through the batch statistics too.
    BnGradInput {
        eps: f32,
    },
    /// `[dy, x, mean, var] -> Σ dy (x - mean) / sqrt(var + eps)` per channel.
    BnGradGamma {
        eps: f32,
    },
    /// `[dy] -> dx` of an option-A shortcut with `in_channels`.
    ShortcutAGrad {
        stride: usize,
        in_channels: usize,
        in_h: usize,
        in_w: usize,
    },
    /// `[dy: N,C] -> dx: N,C,H,W` spread evenly.
    GlobalAvgPoolGrad {
        h: usize,
        w: usize,
    },
    /// `[logits, labels] ->` gradient of the mean cross-entropy: `(softmax - onehot) / N`.
    SoftmaxCrossEntropyGrad,

    // ---- effects of the training step -----------------------------------------
    /// `[grad]`: PyTorch SGD on `param` with learning rate `lr · lr_mult` (the lr
    /// is a runtime argument): `g = grad + weight_decay·w; v = momentum·v + g; w -= lr·lr_mult·v`.
    SgdUpdate {
        param: ParamId,
        lr_mult: f32,
        weight_decay: f32,
        momentum: f32,
    },
    /// `[batch_stat]`: `r = (1 - momentum)·r + momentum·s`, where `s` is the batch
    /// statistic, for a variance made unbiased (`· n/(n-1)`, `n = N·H·W`).
    BnRunningUpdate {
        running: ParamId,
        momentum: f32,
        unbiased: bool,
    },
}

impl Op {
    /// Name in the text form and in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Image => "image",
            Op::Labels { .. } => "labels",
            Op::Param(_) => "param",
            Op::Conv2d(_) => "conv2d",
            Op::BiasAdd => "bias_add",
            Op::Linear => "linear",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::Relu => "relu",
            Op::BnMean { .. } => "bn_mean",
            Op::BnVar { .. } => "bn_var",
            Op::BnApply { .. } => "bn_apply",
            Op::Add => "add",
            Op::ShortcutA { .. } => "shortcut_a",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Reshape { .. } => "reshape",
            Op::Dropout(_) => "dropout",
            Op::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Op::Mask(_) => "mask",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight(_) => "conv2d_grad_weight",
            Op::BiasGrad => "bias_grad",
            Op::LinearGradInput => "linear_grad_input",
            Op::LinearGradWeight => "linear_grad_weight",
            Op::MaxPool2dGrad(_) => "max_pool2d_grad",
            Op::AvgPool2dGrad { .. } => "avg_pool2d_grad",
            Op::ReluGrad => "relu_grad",
            Op::BnGradInput { .. } => "bn_grad_input",
            Op::BnGradGamma { .. } => "bn_grad_gamma",
            Op::ShortcutAGrad { .. } => "shortcut_a_grad",
            Op::GlobalAvgPoolGrad { .. } => "global_avg_pool_grad",
            Op::SoftmaxCrossEntropyGrad => "softmax_cross_entropy_grad",
            Op::SgdUpdate { .. } => "sgd_update",
            Op::BnRunningUpdate { .. } => "bn_running_update",
        }
    }

    pub fn arity(&self) -> usize {
        match self {
            Op::Image | Op::Labels { .. } | Op::Param(_) => 0,
            Op::Relu
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::BnMean { .. }
            | Op::ShortcutA { .. }
            | Op::GlobalAvgPool
            | Op::Reshape { .. }
            | Op::Dropout(_)
            | Op::Mask(_)
            | Op::BiasGrad
            | Op::AvgPool2dGrad { .. }
            | Op::ShortcutAGrad { .. }
            | Op::GlobalAvgPoolGrad { .. }
            | Op::SgdUpdate { .. }
            | Op::BnRunningUpdate { .. } => 1,
            Op::Conv2d(_)
            | Op::BiasAdd
            | Op::Linear
            | Op::BnVar { .. }
            | Op::Add
            | Op::SoftmaxCrossEntropy
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight(_)
            | Op::LinearGradInput
            | Op::LinearGradWeight
            | Op::MaxPool2dGrad(_)
            | Op::ReluGrad
            | Op::SoftmaxCrossEntropyGrad => 2,
            Op::BnGradGamma { .. } => 4,
            Op::BnApply { .. } | Op::BnGradInput { .. } => 5,
        }
    }

    /// Whether the node exists for its effect on state rather than its value.
    pub fn is_effect(&self) -> bool {
        matches!(self, Op::SgdUpdate { .. } | Op::BnRunningUpdate { .. })
    }

    /// Attributes in the text form, e.g. `k=3 s=2 p=0 ceil`.
    pub fn attrs_text(&self, params: &dyn Fn(ParamId) -> String) -> String {
        fn conv(a: &Conv2dAttrs) -> String {
            format!("k={} s={} p={}", a.kernel, a.stride, a.padding)
        }
        fn pool(a: &PoolAttrs) -> String {
            format!(
                "k={} s={} p={}{}",
                a.kernel,
                a.stride,
                a.padding,
                if a.ceil_mode { " ceil" } else { "" }
            )
        }
        match self {
            Op::Labels { classes } => format!("classes={classes}"),
            Op::Param(p) => params(*p),
            Op::Conv2d(a) | Op::Conv2dGradWeight(a) => conv(a),
            Op::Conv2dGradInput {
                conv: a,
                in_h,
                in_w,
            } => format!("{} in={in_h}x{in_w}", conv(a)),
            Op::MaxPool2d(a) | Op::AvgPool2d(a) | Op::MaxPool2dGrad(a) => pool(a),
            Op::AvgPool2dGrad {
                pool: a,
                in_h,
                in_w,
            } => format!("{} in={in_h}x{in_w}", pool(a)),
            Op::BnMean { running, momentum } | Op::BnVar { running, momentum } => {
                format!("running={} momentum={momentum}", params(*running))
            }
            Op::BnApply { eps } | Op::BnGradInput { eps } | Op::BnGradGamma { eps } => {
                format!("eps={eps:e}")
            }
            Op::ShortcutA {
                stride,
                out_channels,
            } => format!("s={stride} out_channels={out_channels}"),
            Op::ShortcutAGrad {
                stride,
                in_channels,
                in_h,
                in_w,
            } => format!("s={stride} in={in_channels}x{in_h}x{in_w}"),
            Op::GlobalAvgPoolGrad { h, w } => format!("in={h}x{w}"),
            Op::Reshape { dims } => format!("dims={dims:?}"),
            Op::Dropout(site) => format!("{site}"),
            Op::Mask(m) => {
                let factors: Vec<String> = m
                    .factors
                    .iter()
                    .map(|f| format!("{:?}(p={})", f.stream, f.ratio))
                    .collect();
                format!("{} {}", m.site, factors.join("*"))
            }
            Op::SgdUpdate {
                param,
                lr_mult,
                weight_decay,
                momentum,
            } => format!(
                "{} lr_mult={lr_mult} wd={weight_decay} momentum={momentum}",
                params(*param)
            ),
            Op::BnRunningUpdate {
                running,
                momentum,
                unbiased,
            } => format!(
                "{} momentum={momentum}{}",
                params(*running),
                if *unbiased { " unbiased" } else { "" }
            ),
            Op::Image
            | Op::BiasAdd
            | Op::Linear
            | Op::Relu
            | Op::Add
            | Op::GlobalAvgPool
            | Op::SoftmaxCrossEntropy
            | Op::BiasGrad
            | Op::LinearGradInput
            | Op::LinearGradWeight
            | Op::ReluGrad
            | Op::SoftmaxCrossEntropyGrad => String::new(),
        }
    }
}

/// The shape rule of every op: the output type from the input types, or a
/// message saying which input is wrong. Leaves (`Image`, `Labels`, `Param`) are
/// typed by their declarations, not here.
pub fn infer_type(op: &Op, ins: &[&TensorType]) -> Result<TensorType, String> {
    if ins.len() != op.arity() {
        return Err(format!("takes {} inputs, got {}", op.arity(), ins.len()));
    }
    for (i, t) in ins.iter().enumerate() {
        let wants_label = matches!(
            (op, i),
            (Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad, 1)
        );
        if wants_label != (t.dtype == DType::Label) {
            return Err(if wants_label {
                format!("input {i} must be the labels, got {t}")
            } else {
                format!("input {i} must be a float tensor, got {t}")
            });
        }
    }
    let image = |i: usize| -> Result<(usize, usize, usize), String> {
        ins[i]
            .chw()
            .ok_or_else(|| format!("input {i} must be an image batch [N,C,H,W], got {}", ins[i]))
    };
    let fixed = |i: usize, rank: usize| -> Result<&[usize], String> {
        let t = ins[i];
        if t.batched || t.dims.len() != rank {
            return Err(format!(
                "input {i} must be a rank-{rank} parameter, got {t}"
            ));
        }
        Ok(&t.dims)
    };
    let matrix = |i: usize| -> Result<usize, String> {
        match (ins[i].batched, ins[i].dims.as_slice()) {
            (true, &[f]) => Ok(f),
            _ => Err(format!("input {i} must be a matrix [N,F], got {}", ins[i])),
        }
    };
    let channels = |i: usize| -> Result<usize, String> {
        match (ins[i].batched, ins[i].dims.first()) {
            (true, Some(&c)) => Ok(c),
            _ => Err(format!(
                "input {i} must be batched with channels, got {}",
                ins[i]
            )),
        }
    };
    let same = |a: usize, b: usize| -> Result<(), String> {
        if ins[a] != ins[b] {
            return Err(format!(
                "inputs {a} and {b} differ: {} vs {}",
                ins[a], ins[b]
            ));
        }
        Ok(())
    };
    let per_channel = |i: usize, c: usize| -> Result<(), String> {
        if fixed(i, 1)? != [c] {
            return Err(format!("input {i} must have {c} channels, got {}", ins[i]));
        }
        Ok(())
    };
    let ty = match op {
        Op::Image | Op::Labels { .. } | Op::Param(_) => {
            return Err("leaf ops are typed by their declaration".into())
        }
        Op::Conv2d(a) => {
            let (c, h, w) = image(0)?;
            let wd = fixed(1, 4)?;
            if wd[1] != c || wd[2] != a.kernel || wd[3] != a.kernel {
                return Err(format!(
                    "weight {:?} does not fit {c} input channels and kernel {}",
                    wd, a.kernel
                ));
            }
            let ho = conv_out_len(h, a.kernel, a.stride, a.padding);
            let wo = conv_out_len(w, a.kernel, a.stride, a.padding);
            match (ho, wo) {
                (Some(ho), Some(wo)) => TensorType::batched(vec![wd[0], ho, wo]),
                _ => {
                    return Err(format!(
                        "kernel {} is larger than the padded input {}x{} (padding {})",
                        a.kernel,
                        h + 2 * a.padding,
                        w + 2 * a.padding,
                        a.padding
                    ))
                }
            }
        }
        Op::BiasAdd => {
            let c = channels(0)?;
            per_channel(1, c)?;
            ins[0].clone()
        }
        Op::Linear => {
            let f = matrix(0)?;
            let wd = fixed(1, 2)?;
            if wd[1] != f {
                return Err(format!("weight {:?} does not take {f} input features", wd));
            }
            TensorType::batched(vec![wd[0]])
        }
        Op::MaxPool2d(a) | Op::AvgPool2d(a) => {
            let (c, h, w) = image(0)?;
            let ho = pool_out_len(h, a.kernel, a.stride, a.padding, a.ceil_mode);
            let wo = pool_out_len(w, a.kernel, a.stride, a.padding, a.ceil_mode);
            if a.padding * 2 > a.kernel {
                return Err(format!(
                    "padding {} is more than half the kernel {}",
                    a.padding, a.kernel
                ));
            }
            match (ho, wo) {
                (Some(ho), Some(wo)) => TensorType::batched(vec![c, ho, wo]),
                _ => {
                    return Err(format!(
                        "kernel {} is larger than the padded input {}x{}",
                        a.kernel,
                        h + 2 * a.padding,
                        w + 2 * a.padding
                    ))
                }
            }
        }
        Op::Relu | Op::Dropout(_) | Op::Mask(_) => {
            channels(0)?;
            ins[0].clone()
        }
        Op::BnMean { .. } => TensorType::fixed(vec![channels(0)?]),
        Op::BnVar { .. } => {
            let c = channels(0)?;
            per_channel(1, c)?;
            TensorType::fixed(vec![c])
        }
        Op::BnApply { .. } => {
            let c = channels(0)?;
            for i in 1..5 {
                per_channel(i, c)?;
            }
            ins[0].clone()
        }
        Op::Add => {
            same(0, 1)?;
            channels(0)?;
            ins[0].clone()
        }
        Op::ShortcutA {
            stride,
            out_channels,
        } => {
            let (c, h, w) = image(0)?;
            if *stride == 0 || *out_channels < c || !(out_channels - c).is_multiple_of(2) {
                return Err(format!(
                    "cannot map {c} channels to {out_channels} with stride {stride} (needs out >= in, an even difference, stride >= 1)"
                ));
            }
            TensorType::batched(vec![
                *out_channels,
                h.div_ceil(*stride),
                w.div_ceil(*stride),
            ])
        }
        Op::GlobalAvgPool => {
            let (c, _, _) = image(0)?;
            TensorType::batched(vec![c])
        }
        Op::Reshape { dims } => {
            channels(0)?;
            if dims.iter().product::<usize>() != ins[0].elems_per_item() {
                return Err(format!("cannot reshape {} to {:?}", ins[0], dims));
            }
            TensorType::batched(dims.clone())
        }
        Op::SoftmaxCrossEntropy => {
            matrix(0)?;
            TensorType::scalar()
        }
        Op::Conv2dGradInput { conv, in_h, in_w } => {
            let (co, ho, wo) = image(0)?;
            let wd = fixed(1, 4)?;
            if wd[0] != co
                || conv_out_len(*in_h, conv.kernel, conv.stride, conv.padding) != Some(ho)
                || conv_out_len(*in_w, conv.kernel, conv.stride, conv.padding) != Some(wo)
            {
                return Err(format!("gradient {} does not fit weight {:?}", ins[0], wd));
            }
            TensorType::batched(vec![wd[1], *in_h, *in_w])
        }
        Op::Conv2dGradWeight(a) => {
            let (co, ho, wo) = image(0)?;
            let (ci, h, w) = image(1)?;
            if conv_out_len(h, a.kernel, a.stride, a.padding) != Some(ho)
                || conv_out_len(w, a.kernel, a.stride, a.padding) != Some(wo)
            {
                return Err(format!("gradient {} does not fit input {}", ins[0], ins[1]));
            }
            TensorType::fixed(vec![co, ci, a.kernel, a.kernel])
        }
        Op::BiasGrad => TensorType::fixed(vec![channels(0)?]),
        Op::LinearGradInput => {
            let o = matrix(0)?;
            let wd = fixed(1, 2)?;
            if wd[0] != o {
                return Err(format!("gradient {} does not fit weight {:?}", ins[0], wd));
            }
            TensorType::batched(vec![wd[1]])
        }
        Op::LinearGradWeight => TensorType::fixed(vec![matrix(0)?, matrix(1)?]),
        Op::MaxPool2dGrad(_) => ins[1].clone(),
        Op::AvgPool2dGrad { in_h, in_w, .. } => {
            let (c, _, _) = image(0)?;
            TensorType::batched(vec![c, *in_h, *in_w])
        }
        Op::ReluGrad => {
            same(0, 1)?;
            ins[0].clone()
        }
        Op::BnGradInput { .. } => {
            same(0, 1)?;
            let c = channels(0)?;
            for i in 2..5 {
                per_channel(i, c)?;
            }
            ins[0].clone()
        }
        Op::BnGradGamma { .. } => {
            same(0, 1)?;
            let c = channels(0)?;
            for i in 2..4 {
                per_channel(i, c)?;
            }
            TensorType::fixed(vec![c])
        }
        Op::ShortcutAGrad {
            in_channels,
            in_h,
            in_w,
            ..
        } => TensorType::batched(vec![*in_channels, *in_h, *in_w]),
        Op::GlobalAvgPoolGrad { h, w } => TensorType::batched(vec![matrix(0)?, *h, *w]),
        Op::SoftmaxCrossEntropyGrad => {
            matrix(0)?;
            ins[0].clone()
        }
        Op::SgdUpdate { .. } | Op::BnRunningUpdate { .. } => TensorType::unit(),
    };
    Ok(ty)
}
