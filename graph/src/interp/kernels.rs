//! Naive reference kernels, one per op: plain nested loops over NCHW in the
//! obvious order. Slow by design; clarity is the point.

use super::real::Real;
use crate::op::{Conv2dAttrs, PoolAttrs};

/// `[N, C, H, W]` extents of an image batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn at(&self, n: usize, c: usize, h: usize, w: usize) -> usize {
        ((n * self.c + c) * self.h + h) * self.w + w
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Input coordinate of output `o`, kernel tap `k`; None in the padding.
fn tap(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < len)
}

pub fn conv2d<T: Real>(x: &[T], xs: Nchw, w: &[T], ys: Nchw, a: &Conv2dAttrs) -> Vec<T> {
    let k = a.kernel;
    let mut y = vec![T::ZERO; ys.len()];
    for n in 0..ys.n {
        for co in 0..ys.c {
            for oh in 0..ys.h {
                for ow in 0..ys.w {
                    let mut acc = T::ZERO;
                    for ci in 0..xs.c {
                        for kh in 0..k {
                            let Some(ih) = tap(oh, kh, a.stride, a.padding, xs.h) else {
                                continue;
                            };
                            for kw in 0..k {
                                let Some(iw) = tap(ow, kw, a.stride, a.padding, xs.w) else {
                                    continue;
                                };
                                acc += x[xs.at(n, ci, ih, iw)]
                                    * w[((co * xs.c + ci) * k + kh) * k + kw];
                            }
                        }
                    }
                    y[ys.at(n, co, oh, ow)] = acc;
                }
            }
        }
    }
    y
}

pub fn conv2d_grad_input<T: Real>(
    dy: &[T],
    ys: Nchw,
    w: &[T],
    xs: Nchw,
    a: &Conv2dAttrs,
) -> Vec<T> {
    let k = a.kernel;
    let mut dx = vec![T::ZERO; xs.len()];
    for n in 0..ys.n {
        for co in 0..ys.c {
            for oh in 0..ys.h {
                for ow in 0..ys.w {
                    let g = dy[ys.at(n, co, oh, ow)];
                    for ci in 0..xs.c {
                        for kh in 0..k {
                            let Some(ih) = tap(oh, kh, a.stride, a.padding, xs.h) else {
                                continue;
                            };
                            for kw in 0..k {
                                let Some(iw) = tap(ow, kw, a.stride, a.padding, xs.w) else {
                                    continue;
                                };
                                dx[xs.at(n, ci, ih, iw)] +=
                                    g * w[((co * xs.c + ci) * k + kh) * k + kw];
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

pub fn conv2d_grad_weight<T: Real>(
    dy: &[T],
    ys: Nchw,
    x: &[T],
    xs: Nchw,
    a: &Conv2dAttrs,
) -> Vec<T> {
    let k = a.kernel;
    let mut dw = vec![T::ZERO; ys.c * xs.c * k * k];
    for co in 0..ys.c {
        for ci in 0..xs.c {
            for kh in 0..k {
                for kw in 0..k {
                    let mut acc = T::ZERO;
                    for n in 0..ys.n {
                        for oh in 0..ys.h {
                            let Some(ih) = tap(oh, kh, a.stride, a.padding, xs.h) else {
                                continue;
                            };
                            for ow in 0..ys.w {
                                let Some(iw) = tap(ow, kw, a.stride, a.padding, xs.w) else {
                                    continue;
                                };
                                acc += dy[ys.at(n, co, oh, ow)] * x[xs.at(n, ci, ih, iw)];
                            }
                        }
                    }
                    dw[((co * xs.c + ci) * k + kh) * k + kw] = acc;
                }
            }
        }
    }
    dw
}

/// The clipped window of output `o` along one axis: `[start, end)` inside the
/// input, and the divisor of average pooling, which counts the part of the
/// window inside `input + padding` (Caffe's and PyTorch's rule).
pub fn window(o: usize, a: &PoolAttrs, len: usize) -> (usize, usize, usize) {
    let start = (o * a.stride) as isize - a.padding as isize;
    let end = (start + a.kernel as isize).min((len + a.padding) as isize);
    let count = (end - start) as usize;
    (start.max(0) as usize, end.min(len as isize) as usize, count)
}

pub fn max_pool<T: Real>(x: &[T], xs: Nchw, ys: Nchw, a: &PoolAttrs) -> Vec<T> {
    let mut y = vec![T::ZERO; ys.len()];
    for_each_window(xs, ys, a, |out, taps, _| {
        let mut best = x[taps[0]];
        for &i in &taps[1..] {
            if x[i] > best {
                best = x[i];
            }
        }
        y[out] = best;
    });
    y
}

pub fn max_pool_grad<T: Real>(dy: &[T], x: &[T], xs: Nchw, ys: Nchw, a: &PoolAttrs) -> Vec<T> {
    let mut dx = vec![T::ZERO; xs.len()];
    for_each_window(xs, ys, a, |out, taps, _| {
        // The first maximum in row-major window order receives the gradient.
        let mut arg = taps[0];
        for &i in &taps[1..] {
            if x[i] > x[arg] {
                arg = i;
            }
        }
        dx[arg] += dy[out];
    });
    dx
}

pub fn avg_pool<T: Real>(x: &[T], xs: Nchw, ys: Nchw, a: &PoolAttrs) -> Vec<T> {
    let mut y = vec![T::ZERO; ys.len()];
    for_each_window(xs, ys, a, |out, taps, count| {
        let mut acc = T::ZERO;
        for &i in taps {
            acc += x[i];
        }
        y[out] = acc / T::of(count as f64);
    });
    y
}

pub fn avg_pool_grad<T: Real>(dy: &[T], xs: Nchw, ys: Nchw, a: &PoolAttrs) -> Vec<T> {
    let mut dx = vec![T::ZERO; xs.len()];
    for_each_window(xs, ys, a, |out, taps, count| {
        let g = dy[out] / T::of(count as f64);
        for &i in taps {
            dx[i] += g;
        }
    });
    dx
}

/// Calls `f(output index, input indices of the clipped window, divisor)` for
/// every pooling window.
fn for_each_window(xs: Nchw, ys: Nchw, a: &PoolAttrs, mut f: impl FnMut(usize, &[usize], usize)) {
    let mut taps = Vec::with_capacity(a.kernel * a.kernel);
    for n in 0..ys.n {
        for c in 0..ys.c {
            for oh in 0..ys.h {
                let (h0, h1, hc) = window(oh, a, xs.h);
                for ow in 0..ys.w {
                    let (w0, w1, wc) = window(ow, a, xs.w);
                    taps.clear();
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            taps.push(xs.at(n, c, ih, iw));
                        }
                    }
                    f(ys.at(n, c, oh, ow), &taps, hc * wc);
                }
            }
        }
    }
}

/// Per-channel sums of `f(element)` over an `[N, C, rest...]` tensor.
pub fn channel_sum<T: Real>(len: usize, n: usize, c: usize, f: impl Fn(usize) -> T) -> Vec<T> {
    let inner = len / (n * c);
    let mut s = vec![T::ZERO; c];
    for b in 0..n {
        for (ch, acc) in s.iter_mut().enumerate() {
            for i in 0..inner {
                *acc += f((b * c + ch) * inner + i);
            }
        }
    }
    s
}

/// Channel of flat element `e` of an `[N, C, rest...]` tensor.
pub fn channel_of(e: usize, c: usize, inner: usize) -> usize {
    (e / inner) % c
}
