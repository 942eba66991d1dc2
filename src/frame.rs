//! Frames and images as plain 8-bit grayscale pixel buffers.
//!
//! `GrayImage` owns its pixels (tightly packed, stride = width); `GrayView` borrows pixels with an
//! explicit stride, which is what capture buffers with padded lines look like. `Frame` adds the
//! sequence number and capture timestamp a source stamps on every frame. This module does no I/O and
//! must not depend on any other module of the crate.

use thiserror::Error;

/// Errors building an image from raw parts.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Width or height is zero.
    #[error("image is empty ({width}x{height}); width and height must both be at least 1")]
    Empty { width: usize, height: usize },
    /// The stride is shorter than a line.
    #[error("stride {stride} is shorter than the width {width}")]
    StrideTooSmall { width: usize, stride: usize },
    /// The buffer does not hold `height` lines of `stride` bytes.
    #[error(
        "buffer of {len} bytes is too small for {height} lines of stride {stride} (width {width})"
    )]
    BufferTooSmall {
        width: usize,
        height: usize,
        stride: usize,
        len: usize,
    },
    /// A crop rectangle leaves the image.
    #[error("region {rect:?} is empty or outside the {width}x{height} image")]
    OutOfBounds {
        rect: Rect,
        width: usize,
        height: usize,
    },
}

/// A rectangle in frame pixels (the region of interest, the image area of a screen grab).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

impl Rect {
    /// Whether an edge of `other` lies more than `tolerance_px` from the same edge of this one.
    pub fn moved(&self, other: &Rect, tolerance_px: usize) -> bool {
        let d = |a: usize, b: usize| a.abs_diff(b) > tolerance_px;
        d(self.x, other.x)
            || d(self.y, other.y)
            || d(self.x + self.w, other.x + other.w)
            || d(self.y + self.h, other.y + other.h)
    }

    /// The whole of a `width` x `height` image.
    pub fn full(width: usize, height: usize) -> Self {
        Self {
            x: 0,
            y: 0,
            w: width,
            h: height,
        }
    }
}

/// A borrowed 8-bit grayscale image whose lines start `stride` bytes apart.
#[derive(Debug, Clone, Copy)]
pub struct GrayView<'a> {
    width: usize,
    height: usize,
    stride: usize,
    data: &'a [u8],
}

impl<'a> GrayView<'a> {
    /// A view over `data`, checking that every line fits.
    pub fn new(
        width: usize,
        height: usize,
        stride: usize,
        data: &'a [u8],
    ) -> Result<Self, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty { width, height });
        }
        if stride < width {
            return Err(FrameError::StrideTooSmall { width, stride });
        }
        let needed = stride * (height - 1) + width;
        if data.len() < needed {
            return Err(FrameError::BufferTooSmall {
                width,
                height,
                stride,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            stride,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Distance between line starts in bytes.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The sub-image `r`, sharing the pixels; fails when `r` is empty or leaves the image.
    pub fn crop(&self, r: Rect) -> Result<GrayView<'a>, FrameError> {
        if r.w == 0 || r.h == 0 || r.x + r.w > self.width || r.y + r.h > self.height {
            return Err(FrameError::OutOfBounds {
                rect: r,
                width: self.width,
                height: self.height,
            });
        }
        let start = r.y * self.stride + r.x;
        GrayView::new(r.w, r.h, self.stride, &self.data[start..])
    }

    /// Copies the pixels into `out` (resized, packed; reuses its allocation).
    pub fn copy_into(&self, out: &mut GrayImage) {
        out.resize(self.width, self.height);
        for (y, row) in out.as_mut_slice().chunks_exact_mut(self.width).enumerate() {
            row.copy_from_slice(self.row(y));
        }
    }

    /// Line `y` (exactly `width` pixels). Panics if `y >= height`, which callers rule out by looping
    /// over `0..height`.
    #[inline]
    pub fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width]
    }
}

/// An owned, tightly packed 8-bit grayscale image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrayImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl GrayImage {
    /// A black image of the given size (may be empty: 0x0 is the "nothing yet" value of buffers).
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    /// Wraps packed pixels; `data.len()` must be `width * height`.
    pub fn from_vec(width: usize, height: usize, data: Vec<u8>) -> Result<Self, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty { width, height });
        }
        if data.len() != width * height {
            return Err(FrameError::BufferTooSmall {
                width,
                height,
                stride: width,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Resizes the buffer in place (contents unspecified afterwards); reuses the allocation when it
    /// is large enough, so stages can keep one output image across frames.
    pub fn resize(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
        self.data.resize(width * height, 0);
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The packed pixels, line after line.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The packed pixels, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Consumes the image, returning its pixels.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    /// Pixel at (x, y); `None` outside the image.
    pub fn get(&self, x: usize, y: usize) -> Option<u8> {
        if x < self.width && y < self.height {
            self.data.get(y * self.width + x).copied()
        } else {
            None
        }
    }

    /// A borrowed view of the whole image. Fails only for an empty image.
    pub fn view(&self) -> Result<GrayView<'_>, FrameError> {
        GrayView::new(self.width, self.height, self.width, &self.data)
    }
}

/// One captured frame: pixels plus where it sits in the stream.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The pixels.
    pub image: GrayImage,
    /// Sequence number from the source, increasing by one per delivered frame.
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME, microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// The pool the pixel buffer came from, if any: [`Frame::recycle`] returns it there.
    pub pool: Option<FramePool>,
}

impl Frame {
    /// Gives the pixel buffer back to the pool it came from (a no-op for unpooled frames), so the
    /// source fills it again instead of allocating a new one.
    pub fn recycle(self) {
        if let Some(pool) = self.pool {
            pool.recycle(self.image);
        }
    }
}

/// Pixel buffers handed around between a source and the stage that is done with its frames: a
/// source takes an image of the size it needs ([`FramePool::image`]), the processing thread gives
/// the buffer back when it lets go of the frame. Holds at most [`FramePool::CAPACITY`] spare
/// buffers; frames dropped elsewhere are simply freed. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct FramePool {
    inner: std::sync::Arc<std::sync::Mutex<PoolInner>>,
}

#[derive(Debug, Default)]
struct PoolInner {
    spare: Vec<Vec<u8>>,
    allocated: u64,
    reused: u64,
}

impl FramePool {
    /// Spare buffers kept at most.
    pub const CAPACITY: usize = 4;

    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// An image of `width` x `height` (contents unspecified), reusing a spare buffer when there is
    /// one.
    pub fn image(&self, width: usize, height: usize) -> GrayImage {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let data = match g.spare.pop() {
            Some(mut v) => {
                g.reused += 1;
                v.resize(width * height, 0);
                v
            }
            None => {
                g.allocated += 1;
                vec![0; width * height]
            }
        };
        GrayImage {
            width,
            height,
            data,
        }
    }

    /// Takes a buffer back.
    pub fn recycle(&self, image: GrayImage) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.spare.len() < Self::CAPACITY {
            g.spare.push(image.data);
        }
    }

    /// (buffers allocated, buffers reused) so far.
    pub fn counts(&self) -> (u64, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.allocated, g.reused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_recycled_buffers() {
        let pool = FramePool::new();
        let a = pool.image(64, 48);
        let f = Frame {
            image: a,
            seq: 0,
            timestamp_us: 0,
            pool: Some(pool.clone()),
        };
        f.recycle();
        let b = pool.image(32, 16);
        assert_eq!((b.width(), b.height(), b.as_slice().len()), (32, 16, 512));
        assert_eq!(pool.counts(), (1, 1));
    }

    #[test]
    fn view_checks_its_parts() {
        let data = vec![0u8; 10];
        // Two full strides plus one line: 4 * 2 + 3 = 11 bytes are needed.
        assert!(matches!(
            GrayView::new(3, 3, 4, &data),
            Err(FrameError::BufferTooSmall { .. })
        ));
        assert!(GrayView::new(3, 3, 3, &data).is_ok());
        assert!(matches!(
            GrayView::new(0, 3, 3, &data),
            Err(FrameError::Empty { .. })
        ));
        assert!(matches!(
            GrayView::new(4, 2, 3, &data),
            Err(FrameError::StrideTooSmall { .. })
        ));
    }
}
