//! Separable resizing with precomputed weights: area averaging along an axis that shrinks (each
//! output pixel is the coverage-weighted mean of the input pixels under it, OpenCV's INTER_AREA),
//! bilinear along an axis that grows (half-pixel centres, edges clamped, OpenCV's INTER_LINEAR).
//!
//! `Resizer` owns its weight tables and its intermediate buffer and reuses them while the sizes stay
//! the same; it reads `u8` or `f32` images and writes `f32`. No I/O; depends on nothing but `frame`.

use crate::frame::GrayView;

/// Weights of one axis in compressed rows: output index `i` reads `len[i]` input pixels from
/// `first[i]` with `weights[offset[i]..]`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Axis {
    first: Vec<u32>,
    len: Vec<u32>,
    offset: Vec<u32>,
    weights: Vec<f32>,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let mut a = Axis::default();
        let scale = src as f64 / dst as f64;
        for i in 0..dst {
            a.offset.push(a.weights.len() as u32);
            if src > dst {
                // Area: output pixel i covers [i*scale, (i+1)*scale) of the input.
                let (lo, hi) = (i as f64 * scale, (i + 1) as f64 * scale);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).min(src);
                for s in first..last {
                    let cover = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
                    a.weights.push((cover / scale) as f32);
                }
                a.first.push(first as u32);
                a.len.push((last - first) as u32);
            } else {
                // Bilinear with half-pixel centres; equal sizes give weight 1 on the same pixel.
                let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(src - 1);
                let f = (x - x0 as f64) as f32;
                if x0 + 1 < src && f > 0.0 {
                    a.first.push(x0 as u32);
                    a.len.push(2);
                    a.weights.extend([1.0 - f, f]);
                } else {
                    a.first.push(x0 as u32);
                    a.len.push(1);
                    a.weights.push(1.0);
                }
            }
        }
        a
    }

    #[inline]
    fn taps(&self, i: usize) -> (usize, &[f32]) {
        let off = self.offset[i] as usize;
        let len = self.len[i] as usize;
        (self.first[i] as usize, &self.weights[off..off + len])
    }
}

/// A resizing stage; reuse one per stream.
#[derive(Debug, Default)]
pub struct Resizer {
    key: (usize, usize, usize, usize),
    x: Axis,
    y: Axis,
    /// Horizontally resized rows: src_h x dst_w.
    tmp: Vec<f32>,
    /// One source row as f32.
    row: Vec<f32>,
}

/// Pixel sources a [`Resizer`] can read.
pub trait Pixels {
    /// Width and height.
    fn size(&self) -> (usize, usize);
    /// Pixel (x, y) as f32.
    fn at(&self, x: usize, y: usize) -> f32;
    /// Row `y` converted into `out` (length = width).
    fn row_into(&self, y: usize, out: &mut [f32]);
}

impl Pixels for GrayView<'_> {
    fn size(&self) -> (usize, usize) {
        (self.width(), self.height())
    }
    fn at(&self, x: usize, y: usize) -> f32 {
        self.row(y)[x] as f32
    }
    fn row_into(&self, y: usize, out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(self.row(y)) {
            *o = v as f32;
        }
    }
}

/// A borrowed f32 plane (row-major, packed).
#[derive(Debug, Clone, Copy)]
pub struct F32Plane<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [f32],
}

impl Pixels for F32Plane<'_> {
    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }
    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }
    fn row_into(&self, y: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[y * self.width..(y + 1) * self.width]);
    }
}

impl Resizer {
    /// A resizer with no tables yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resizes `src` to `dst_w` x `dst_h` into `out` (packed rows, resized to fit).
    pub fn resize<P: Pixels>(&mut self, src: &P, dst_w: usize, dst_h: usize, out: &mut Vec<f32>) {
        let (sw, sh) = src.size();
        if self.key != (sw, sh, dst_w, dst_h) {
            self.x = Axis::new(sw, dst_w);
            self.y = Axis::new(sh, dst_h);
            self.key = (sw, sh, dst_w, dst_h);
        }
        out.resize(dst_w * dst_h, 0.0);
        self.tmp.resize(sh * dst_w, 0.0);
        // Horizontal pass, one source row at a time.
        self.row.resize(sw, 0.0);
        let row = &mut self.row;
        for y in 0..sh {
            src.row_into(y, row);
            let dst_row = &mut self.tmp[y * dst_w..(y + 1) * dst_w];
            for (i, d) in dst_row.iter_mut().enumerate() {
                let (first, w) = self.x.taps(i);
                *d = w
                    .iter()
                    .zip(&row[first..first + w.len()])
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        // Vertical pass, accumulating whole rows (vectorises).
        for (j, out_row) in out.chunks_exact_mut(dst_w).enumerate() {
            let (first, w) = self.y.taps(j);
            out_row.fill(0.0);
            for (k, &wk) in w.iter().enumerate() {
                let src_row = &self.tmp[(first + k) * dst_w..(first + k + 1) * dst_w];
                for (o, &s) in out_row.iter_mut().zip(src_row) {
                    *o += wk * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        for (s, d) in [
            (640, 128),
            (128, 640),
            (7, 3),
            (3, 7),
            (5, 5),
            (1, 4),
            (4, 1),
        ] {
            let a = Axis::new(s, d);
            for i in 0..d {
                let (first, w) = a.taps(i);
                assert!(first + w.len() <= s);
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{s}->{d} at {i}: {sum}");
            }
        }
    }

    #[test]
    fn area_shrink_averages_blocks() {
        let data: Vec<u8> = (0..16).collect();
        let v = GrayView::new(4, 4, 4, &data).unwrap();
        let mut out = Vec::new();
        Resizer::new().resize(&v, 2, 2, &mut out);
        // Top-left block 0,1,4,5 -> 2.5.
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn bilinear_grow_keeps_constant_and_ramps() {
        let data = [10u8, 20];
        let v = GrayView::new(2, 1, 2, &data).unwrap();
        let mut out = Vec::new();
        Resizer::new().resize(&v, 4, 1, &mut out);
        assert_eq!(out, vec![10.0, 12.5, 17.5, 20.0]);
    }
}
