//! The layout the direct kernels read: each input plane zero-padded, dilated
//! and split into stride phases, so that every tap of every pass is one
//! contiguous run of memory.
//!
//! Output position `q = oy * row + ox` (`ox < out_w`; the other `row - out_w`
//! positions of a row are junk the kernels compute and never store). Tap
//! `(ki, kj)` of channel `c` reads `buf[c * chan_len + tap(ki, kj) + q]`, which
//! holds the padded input at `(stride * oy + ki, stride * ox + kj)`. With
//! stride 1 a row's right padding is the next row's left padding (reads past
//! the end of a row wrap into zeros), so junk is only `max(pad, ...)` columns.

/// Geometry of one prepared image; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prep {
    /// Source planes (channels) and their size.
    pub chans: usize,
    pub h: usize,
    pub w: usize,
    /// Source element `(iy, ix)` sits at padded `(pad_top + dilation * iy,
    /// pad_left + dilation * ix)`; every other padded element is zero.
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub stride: usize,
    pub kh: usize,
    pub kw: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Row length and rows of one stride phase.
    pub row: usize,
    pub rows: usize,
    /// Elements per channel: `stride² · rows · row`.
    pub chan_len: usize,
}

impl Prep {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (chans, h, w): (usize, usize, usize),
        dilation: usize,
        (pad_top, pad_left): (usize, usize),
        stride: usize,
        (kh, kw): (usize, usize),
        (out_h, out_w): (usize, usize),
    ) -> Self {
        let (row, rows) = if stride == 1 {
            // Columns [0, pad_left) and [pad_left + data, row) are zero; reads
            // up to `out_w + kw - 1` wrap into the next row's left zeros.
            let data = dilation * (w - 1) + 1;
            let right = (out_w + kw - 1).saturating_sub(pad_left + data);
            let row = (data + pad_left.max(right)).max(out_w);
            (row, out_h + kh)
        } else {
            (out_w + (kw - 1) / stride, out_h + (kh - 1) / stride)
        };
        Prep {
            chans,
            h,
            w,
            dilation,
            pad_top,
            pad_left,
            stride,
            kh,
            kw,
            out_h,
            out_w,
            row,
            rows,
            chan_len: stride * stride * rows * row,
        }
    }

    /// Offset of tap `(ki, kj)` within a channel.
    pub fn tap(&self, ki: usize, kj: usize) -> usize {
        let s = self.stride;
        ((ki % s) * s + kj % s) * self.rows * self.row + (ki / s) * self.row + kj / s
    }

    /// Offset of every tap of every channel, in OIHW weight order
    /// (`(c · kh + ki) · kw + kj`).
    pub fn tap_offsets(&self) -> Vec<usize> {
        (0..self.chans)
            .flat_map(|c| {
                (0..self.kh * self.kw)
                    .map(move |t| c * self.chan_len + self.tap(t / self.kw, t % self.kw))
            })
            .collect()
    }

    /// Offset of the first tap of each kernel row of each channel: with
    /// stride 1 a row's `kw` taps follow it one element apart.
    pub fn row_offsets(&self) -> Vec<usize> {
        (0..self.chans)
            .flat_map(|c| (0..self.kh).map(move |ki| c * self.chan_len + self.tap(ki, 0)))
            .collect()
    }

    /// The taps in groups whose members follow one element apart: with
    /// stride 1 and a 3- or 5-wide kernel one group of `kw` per kernel row
    /// ([`Prep::row_offsets`]), else every tap alone. Returns the groups'
    /// offsets and the taps per group.
    pub fn tap_groups(&self) -> (Vec<usize>, usize) {
        if self.stride == 1 && (self.kw == 3 || self.kw == 5) {
            (self.row_offsets(), self.kw)
        } else {
            (self.tap_offsets(), 1)
        }
    }

    /// Output positions, junk included.
    pub fn positions(&self) -> usize {
        self.out_h * self.row
    }

    /// Vectors of `lanes` covering the output positions.
    pub fn vectors(&self, lanes: usize) -> usize {
        self.positions().div_ceil(lanes)
    }

    /// Elements of a prepared image: every channel whole (stride phases no tap
    /// reads are still written), and room for the last vector's over-read.
    pub fn len(&self, lanes: usize) -> usize {
        let max_tap = (0..self.kh)
            .flat_map(|ki| (0..self.kw).map(move |kj| (ki, kj)))
            .map(|(ki, kj)| self.tap(ki, kj))
            .max()
            .unwrap_or(0);
        (self.chans - 1) * self.chan_len + self.chan_len.max(max_tap + self.vectors(lanes) * lanes)
    }

    /// Writes the prepared image of `src` (`chans · h · w`, NCHW) into `dst`
    /// (`self.len(lanes)` elements).
    ///
    /// # Safety
    /// `src` and `dst` hold those many elements.
    pub unsafe fn fill(&self, src: *const f32, dst: *mut f32, lanes: usize) {
        if self.stride == 1 && self.dilation == 1 {
            return self.fill_rows_padded(src, dst, lanes);
        }
        std::ptr::write_bytes(dst, 0, self.len(lanes));
        let (s, d) = (self.stride, self.dilation);
        let plane = self.rows * self.row;
        for c in 0..self.chans {
            let src_c = src.add(c * self.h * self.w);
            let dst_c = dst.add(c * self.chan_len);
            for iy in 0..self.h {
                let y = self.pad_top + d * iy;
                let r = y / s;
                if r >= self.rows {
                    break;
                }
                let src_row = src_c.add(iy * self.w);
                if s == 1 && d == 1 {
                    let to = dst_c.add(r * self.row + self.pad_left);
                    std::ptr::copy_nonoverlapping(src_row, to, self.w);
                    continue;
                }
                let phase_row = dst_c.add((y % s) * s * plane + r * self.row);
                if d == 1 {
                    // One strided copy per column phase (a division per
                    // element cost as much as the convolution itself).
                    for b in 0..s {
                        let ix0 = (b + s - self.pad_left % s) % s;
                        let col0 = (self.pad_left + ix0) / s;
                        let n = self.w.saturating_sub(ix0).div_ceil(s);
                        let n = n.min(self.row.saturating_sub(col0));
                        let to = phase_row.add(b * plane + col0);
                        for k in 0..n {
                            *to.add(k) = *src_row.add(ix0 + k * s);
                        }
                    }
                    continue;
                }
                // Dilated (stride 1): every d-th column.
                debug_assert_eq!(s, 1);
                for ix in 0..self.w {
                    let col = self.pad_left + d * ix;
                    if col >= self.row {
                        break;
                    }
                    *phase_row.add(col) = *src_row.add(ix);
                }
            }
        }
    }
}

impl Prep {
    /// [`Prep::fill`] for stride 1 without dilation: rows are copied and only
    /// the padding between them is zeroed (one pass over the buffer, not two).
    unsafe fn fill_rows_padded(&self, src: *const f32, dst: *mut f32, lanes: usize) {
        let zero = |from: usize, to: usize| {
            if to > from {
                std::ptr::write_bytes(dst.add(from), 0, to - from);
            }
        };
        let mut done = 0; // everything before this offset is written
        for c in 0..self.chans {
            let base = c * self.chan_len;
            let rows = self.h.min(self.rows.saturating_sub(self.pad_top));
            for iy in 0..rows {
                let at = base + (self.pad_top + iy) * self.row + self.pad_left;
                zero(done, at);
                std::ptr::copy_nonoverlapping(
                    src.add((c * self.h + iy) * self.w),
                    dst.add(at),
                    self.w,
                );
                done = at + self.w;
            }
        }
        zero(done, self.len(lanes));
    }
}

/// Copies `chans` planes of `out_h x out_w` into rows of `row` (junk columns
/// and the tail up to `chan_stride` zero): the layout of a gradient that the
/// weight-gradient kernel multiplies with a prepared input.
///
/// # Safety
/// `src` holds `chans · out_h · out_w`, `dst` `chans · chan_stride` elements,
/// `chan_stride >= out_h · row`.
pub unsafe fn fill_rows(
    src: *const f32,
    (chans, out_h, out_w): (usize, usize, usize),
    row: usize,
    chan_stride: usize,
    dst: *mut f32,
) {
    for c in 0..chans {
        let plane = dst.add(c * chan_stride);
        for oy in 0..out_h {
            let row_start = plane.add(oy * row);
            std::ptr::copy_nonoverlapping(src.add((c * out_h + oy) * out_w), row_start, out_w);
            std::ptr::write_bytes(row_start.add(out_w), 0, row - out_w);
        }
        std::ptr::write_bytes(plane.add(out_h * row), 0, chan_stride - out_h * row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padded, dilated input at `(y, x)`, straight from the definition.
    fn padded(p: &Prep, src: &[f32], c: usize, y: usize, x: usize) -> f32 {
        let (d, pt, pl) = (p.dilation, p.pad_top, p.pad_left);
        if y < pt || x < pl || !(y - pt).is_multiple_of(d) || !(x - pl).is_multiple_of(d) {
            return 0.0;
        }
        let (iy, ix) = ((y - pt) / d, (x - pl) / d);
        if iy >= p.h || ix >= p.w {
            return 0.0;
        }
        src[(c * p.h + iy) * p.w + ix]
    }

    #[test]
    fn every_tap_reads_the_padded_input() {
        let cases = [
            // (chans, h, w), dilation, pads, stride, kernel
            ((2, 5, 7), 1, (1, 1), 1, (3, 3)),
            ((1, 1, 1), 1, (0, 0), 1, (1, 1)),
            ((3, 9, 9), 1, (2, 2), 1, (5, 5)),
            ((2, 9, 8), 1, (1, 1), 2, (3, 3)),
            ((2, 7, 7), 1, (0, 0), 2, (1, 1)),
            ((1, 5, 5), 1, (2, 2), 2, (5, 5)),
            ((2, 4, 3), 2, (2, 2), 1, (3, 3)),
            ((1, 6, 6), 1, (0, 2), 1, (3, 5)),
            ((1, 3, 3), 1, (3, 3), 1, (3, 3)),
        ];
        for ((c, h, w), d, (pt, pl), s, (kh, kw)) in cases {
            let hd = d * (h - 1) + 1 + 2 * pt;
            let wd = d * (w - 1) + 1 + 2 * pl;
            let (oh, ow) = ((hd - kh) / s + 1, (wd - kw) / s + 1);
            let p = Prep::new((c, h, w), d, (pt, pl), s, (kh, kw), (oh, ow));
            let src: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            for lanes in [8, 16] {
                let mut buf = vec![f32::NAN; p.len(lanes)];
                unsafe { p.fill(src.as_ptr(), buf.as_mut_ptr(), lanes) };
                for ch in 0..c {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            for oy in 0..oh {
                                for ox in 0..ow {
                                    let q = oy * p.row + ox;
                                    let got = buf[ch * p.chan_len + p.tap(ki, kj) + q];
                                    let want = padded(&p, &src, ch, s * oy + ki, s * ox + kj);
                                    assert_eq!(
                                        got, want,
                                        "{p:?} c{ch} tap ({ki},{kj}) ({oy},{ox})"
                                    );
                                }
                            }
                        }
                    }
                }
                // Junk positions and the over-read tail are finite.
                assert!(buf.iter().all(|v| v.is_finite()), "{p:?}");
            }
        }
    }
}
