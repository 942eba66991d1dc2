//! Contrast Limited Adaptive Histogram Equalization with OpenCV's exact semantics.
//!
//! `Clahe` reproduces `cv::createCLAHE(clipLimit, tileGridSize)->apply()` on 8-bit grayscale images
//! bit for bit: the image is split into `tiles_x` by `tiles_y` tiles (padded at the bottom and right
//! with reflect-101 when a side is not divisible, and then, like OpenCV, padded on *both* sides), each
//! tile gets a histogram clipped at `clip_limit * tile_area / 256` (at least 1; no clipping when the
//! limit is <= 0) with the excess spread evenly and the remainder stepped across the bins, the
//! cumulative histogram becomes a lookup table, and every pixel is the bilinear blend of the four
//! nearest tiles' tables, computed in `f32` in OpenCV's operation order and rounded half to even.
//!
//! The stage owns its buffers (tables, histograms, column weights) and reuses them across frames of
//! the same size; it allocates only when the size or parameters change. It does no I/O and depends
//! only on `frame` and on [`ClaheParams`], which [`crate::model`] owns as part of a model's input
//! contract.

use std::num::NonZeroUsize;

use crate::frame::{GrayImage, GrayView};

/// Number of grey levels of an 8-bit image, OpenCV's `histSize`.
const BINS: usize = 256;

// The parameters are part of a model's input contract ([`crate::model`] owns them, as it owns
// the region-of-interest policy); this module applies them.
pub use crate::model::{parse_tiles, ClaheError, ClaheParams, MAX_TILES};

/// Geometry derived from the image size and the grid; recomputed only when either changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Layout {
    width: usize,
    height: usize,
    /// Tile size in the (possibly padded) image used for the histograms.
    tile_w: usize,
    tile_h: usize,
    /// Padded size; equals the image size when no padding is needed.
    padded_w: usize,
    padded_h: usize,
}

/// A run of output columns that blend the same two tile columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    x0: usize,
    x1: usize,
    left_tile: usize,
    right_tile: usize,
}

/// Per-thread scratch: histograms for one band and tables for the bands this worker needs.
#[derive(Debug, Default)]
struct Worker {
    /// `PARTS` partial histograms for each tile of a band.
    hist: Vec<u32>,
    /// One 256-entry table per tile, row-major over the grid (only the needed bands are valid).
    lut: Vec<u8>,
    /// The tables of the current band pair interleaved per column segment (see `fill_quads`).
    quads: Vec<u32>,
}

/// Read-only per-image settings shared by the workers.
#[derive(Clone, Copy)]
struct Shared<'a> {
    layout: Layout,
    tiles_x: usize,
    tiles_y: usize,
    clip: u32,
    scale: f32,
    pad_cols: &'a [usize],
    segments: &'a [Segment],
    w_left: &'a [f32],
    w_right: &'a [f32],
}

/// The CLAHE stage. Create once, call [`Clahe::apply`] per frame.
#[derive(Debug)]
pub struct Clahe {
    params: ClaheParams,
    threads: NonZeroUsize,
    /// Image area per extra thread.
    pixels_per_thread: usize,
    layout: Layout,
    /// Integer clip limit per bin (0: no clipping), OpenCV's `clipLimit` after scaling.
    clip_per_bin: u32,
    /// 255 / tile area, in f32 as OpenCV computes it.
    lut_scale: f32,
    /// Scratch per worker thread. Each worker computes the tile bands its rows need, so threads
    /// never wait for each other (the bands at a boundary are computed twice).
    workers: Vec<Worker>,
    /// Source column for every padded column past the image's right edge.
    pad_cols: Vec<usize>,
    /// Output columns grouped by the pair of tile columns they blend.
    segments: Vec<Segment>,
    /// Per output column: weights of the left and right tile tables.
    col_w_left: Vec<f32>,
    col_w_right: Vec<f32>,
}

impl Clahe {
    /// A stage with the given parameters, single-threaded.
    pub fn new(params: ClaheParams) -> Self {
        Self {
            params,
            threads: NonZeroUsize::MIN,
            pixels_per_thread: PIXELS_PER_THREAD,
            layout: Layout::default(),
            clip_per_bin: 0,
            lut_scale: 0.0,
            workers: Vec::new(),
            pad_cols: Vec::new(),
            segments: Vec::new(),
            col_w_left: Vec::new(),
            col_w_right: Vec::new(),
        }
    }

    /// Uses up to `threads` threads per image (rows are split between them).
    pub fn with_threads(mut self, threads: NonZeroUsize) -> Self {
        self.threads = threads;
        self
    }

    /// Overrides the image area per extra thread (see [`Clahe::threads_for`]); tests use 1 to
    /// exercise the threaded path on small images.
    pub fn with_pixels_per_thread(mut self, pixels: usize) -> Self {
        self.pixels_per_thread = pixels.max(1);
        self
    }

    /// The parameters in use.
    pub fn params(&self) -> ClaheParams {
        self.params
    }

    /// Changes the parameters; buffers are re-laid on the next frame.
    pub fn set_params(&mut self, params: ClaheParams) {
        if params != self.params {
            self.params = params;
            self.layout = Layout::default();
        }
    }

    /// Equalises `src` into `dst`, which is resized to the source size (reusing its allocation).
    pub fn apply(&mut self, src: GrayView<'_>, dst: &mut GrayImage) {
        self.prepare(src.width(), src.height());
        dst.resize(src.width(), src.height());
        let height = src.height();
        let width = src.width();
        let threads = self.threads_for(width, height);
        self.workers
            .resize_with(threads.max(self.workers.len()), Worker::default);
        let shared = Shared {
            layout: self.layout,
            tiles_x: self.params.tiles_x,
            tiles_y: self.params.tiles_y,
            clip: self.clip_per_bin,
            scale: self.lut_scale,
            pad_cols: &self.pad_cols,
            segments: &self.segments,
            w_left: &self.col_w_left,
            w_right: &self.col_w_right,
        };
        let out = dst.as_mut_slice();
        if threads == 1 {
            shared.run(&mut self.workers[0], src, out, 0..height);
            return;
        }
        let rows_per_thread = height.div_ceil(threads);
        std::thread::scope(|scope| {
            let mut jobs = out
                .chunks_mut(rows_per_thread * width)
                .zip(self.workers.iter_mut())
                .enumerate();
            // The calling thread takes the first share itself instead of idling.
            let first = jobs.next();
            for (i, (chunk, worker)) in jobs {
                let y0 = i * rows_per_thread;
                let rows = y0..y0 + chunk.len() / width;
                scope.spawn(move || shared.run(worker, src, chunk, rows));
            }
            if let Some((_, (chunk, worker))) = first {
                let rows = 0..chunk.len() / width;
                shared.run(worker, src, chunk, rows);
            }
        });
    }

    /// Threads actually used for an image of this size: at most the configured number, and one
    /// per ~400 000 pixels, because starting a thread (~40 us here) and the shared tile bands
    /// cost more than they save on smaller images (measured: 640x480 took 0.39 ms on one thread
    /// and 0.45 ms on two).
    pub fn threads_for(&self, width: usize, height: usize) -> usize {
        let by_size = (width * height) / self.pixels_per_thread.max(1) + 1;
        self.threads.get().min(by_size).min(height).max(1)
    }

    /// The per-tile lookup tables of the last image, row-major over the grid, 256 entries each
    /// (complete when the stage runs single-threaded).
    pub fn luts(&self) -> &[u8] {
        self.workers
            .first()
            .map(|w| w.lut.as_slice())
            .unwrap_or(&[])
    }

    /// Tile size (width, height) used for the last image's histograms, in padded-image pixels.
    pub fn tile_size(&self) -> (usize, usize) {
        (self.layout.tile_w, self.layout.tile_h)
    }

    /// The integer clip limit per histogram bin used for the last image (0: no clipping).
    pub fn clip_per_bin(&self) -> u32 {
        self.clip_per_bin
    }

    fn prepare(&mut self, width: usize, height: usize) {
        if self.layout.width == width && self.layout.height == height && self.layout.tile_w != 0 {
            return;
        }
        let (tx, ty) = (self.params.tiles_x, self.params.tiles_y);
        // OpenCV pads only when a side is not divisible, but then pads both sides by
        // `tiles - size % tiles`, i.e. a whole extra tile's worth on a divisible side.
        let (padded_w, padded_h) = if width % tx == 0 && height % ty == 0 {
            (width, height)
        } else {
            (width + tx - width % tx, height + ty - height % ty)
        };
        let tile_w = padded_w / tx;
        let tile_h = padded_h / ty;
        self.layout = Layout {
            width,
            height,
            tile_w,
            tile_h,
            padded_w,
            padded_h,
        };

        let tile_area = tile_w * tile_h;
        self.lut_scale = (BINS - 1) as f32 / tile_area as f32;
        self.clip_per_bin = if self.params.clip_limit > 0.0 {
            // f64 product then truncation, as `static_cast<int>(clipLimit_ * tileSizeTotal / histSize)`.
            let limit = (self.params.clip_limit * tile_area as f64 / BINS as f64) as i64;
            limit.clamp(1, u32::MAX as i64) as u32
        } else {
            0
        };
        self.pad_cols.clear();
        self.pad_cols
            .extend((width..padded_w).map(|x| reflect_101(x, width)));

        self.segments.clear();
        self.col_w_right.clear();
        self.col_w_left.clear();
        let inv_tw = 1.0f32 / tile_w as f32;
        for x in 0..width {
            let (left_tile, right_tile, w_right) = neighbours(x, inv_tw, tx);
            self.col_w_right.push(w_right);
            self.col_w_left.push(1.0f32 - w_right);
            match self.segments.last_mut() {
                Some(seg) if seg.left_tile == left_tile && seg.right_tile == right_tile => {
                    seg.x1 = x + 1
                }
                _ => self.segments.push(Segment {
                    x0: x,
                    x1: x + 1,
                    left_tile,
                    right_tile,
                }),
            }
        }
    }
}

/// The two tiles blended at position `p` along one axis and the weight of the second one, exactly
/// as OpenCV computes them in f32: `t = p * (1/tile) - 0.5`, tiles `floor(t)` and `floor(t) + 1`
/// clamped to the grid, weight `t - floor(t)`.
#[inline]
fn neighbours(p: usize, inv_tile: f32, tiles: usize) -> (usize, usize, f32) {
    let t = p as f32 * inv_tile - 0.5f32;
    let t1 = t.floor() as i64;
    let weight = t - t1 as f32;
    let first = t1.max(0) as usize;
    let second = ((t1 + 1).max(0) as usize).min(tiles - 1);
    (first, second, weight)
}

impl Shared<'_> {
    /// One worker's job: tables for the tile bands rows `rows` need, then those rows into `out`.
    fn run(
        &self,
        worker: &mut Worker,
        src: GrayView<'_>,
        out: &mut [u8],
        rows: std::ops::Range<usize>,
    ) {
        if rows.is_empty() {
            return;
        }
        let band_len = self.tiles_x * BINS;
        worker.hist.resize(band_len * PARTS, 0);
        worker.lut.resize(band_len * self.tiles_y, 0);
        let inv_th = 1.0f32 / self.layout.tile_h as f32;
        let (first_band, _, _) = neighbours(rows.start, inv_th, self.tiles_y);
        let (_, last_band, _) = neighbours(rows.end - 1, inv_th, self.tiles_y);
        for ty in first_band..=last_band {
            let lut_band = &mut worker.lut[ty * band_len..(ty + 1) * band_len];
            band_luts(
                src,
                &self.layout,
                ty,
                self.pad_cols,
                self.clip,
                self.scale,
                &mut worker.hist,
                lut_band,
            );
        }
        self.interpolate_rows(worker, src, out, rows, inv_th);
    }

    /// Writes output rows `rows` into `out`, which holds exactly those rows.
    ///
    /// For each pair of tile bands (above, below) and each column segment, the four tables are
    /// interleaved into one `u32` per grey level, so a pixel needs a single lookup; the blend then
    /// runs over a chunk of looked-up quads in a loop the compiler vectorises.
    fn interpolate_rows(
        &self,
        worker: &mut Worker,
        src: GrayView<'_>,
        out: &mut [u8],
        rows: std::ops::Range<usize>,
        inv_th: f32,
    ) {
        let width = self.layout.width;
        let n_seg = self.segments.len();
        worker.quads.resize(n_seg * BINS, 0);
        let mut quad_bands = None;
        let mut looked_up = [0u32; CHUNK];
        for (y, out_row) in rows.zip(out.chunks_exact_mut(width)) {
            let (above, below, w_below) = neighbours(y, inv_th, self.tiles_y);
            let w_above = 1.0f32 - w_below;
            if quad_bands != Some((above, below)) {
                self.fill_quads(&worker.lut, &mut worker.quads, above, below);
                quad_bands = Some((above, below));
            }
            let row = src.row(y);
            for (seg, quads) in self.segments.iter().zip(worker.quads.chunks_exact(BINS)) {
                let Ok(quads) = <&[u32; BINS]>::try_from(quads) else {
                    continue;
                };
                let mut x = seg.x0;
                while x < seg.x1 {
                    let end = (x + CHUNK).min(seg.x1);
                    let n = end - x;
                    for (q, &v) in looked_up[..n].iter_mut().zip(&row[x..end]) {
                        *q = quads[v as usize];
                    }
                    blend(
                        &looked_up[..n],
                        &self.w_left[x..end],
                        &self.w_right[x..end],
                        w_above,
                        w_below,
                        &mut out_row[x..end],
                    );
                    x = end;
                }
            }
        }
    }

    /// Interleaves, for every column segment, the tables of its four tiles (left/right in the
    /// band above and below) into `quads[segment][grey] = la | ra << 8 | lb << 16 | rb << 24`.
    fn fill_quads(&self, lut: &[u8], quads: &mut [u32], above: usize, below: usize) {
        for (seg, q) in self.segments.iter().zip(quads.chunks_exact_mut(BINS)) {
            let (Some(la), Some(ra), Some(lb), Some(rb)) = (
                table(lut, above * self.tiles_x + seg.left_tile),
                table(lut, above * self.tiles_x + seg.right_tile),
                table(lut, below * self.tiles_x + seg.left_tile),
                table(lut, below * self.tiles_x + seg.right_tile),
            ) else {
                continue;
            };
            for (i, e) in q.iter_mut().enumerate() {
                *e = la[i] as u32
                    | (ra[i] as u32) << 8
                    | (lb[i] as u32) << 16
                    | (rb[i] as u32) << 24;
            }
        }
    }
}

/// Image area per extra thread (see `Clahe::threads_for`).
const PIXELS_PER_THREAD: usize = 400_000;

/// Pixels looked up per blend call: small enough for the stack, long enough to vectorise.
const CHUNK: usize = 64;

/// The bilinear blend of looked-up table quads, in OpenCV's f32 operation order (no fused
/// multiply-add): `(la*wl + ra*wr)*w_above + (lb*wl + rb*wr)*w_below`, rounded half to even.
#[inline]
fn blend(
    quads: &[u32],
    w_left: &[f32],
    w_right: &[f32],
    w_above: f32,
    w_below: f32,
    out: &mut [u8],
) {
    const MAGIC: f32 = 8_388_608.0; // 2^23
    for (((o, &q), &wl), &wr) in out.iter_mut().zip(quads).zip(w_left).zip(w_right) {
        let la = (q & 0xFF) as f32;
        let ra = ((q >> 8) & 0xFF) as f32;
        let lb = ((q >> 16) & 0xFF) as f32;
        let rb = (q >> 24) as f32;
        let res = (la * wl + ra * wr) * w_above + (lb * wl + rb * wr) * w_below;
        // res lies in [0, 255.5): a convex blend of values in 0..=255 with f32 rounding error.
        // Adding 2^23 rounds it half to even into the low mantissa bits, which are the result.
        *o = (res + MAGIC).to_bits() as u8;
    }
}

/// Tile `index`'s 256-entry table as a fixed-size array, so lookups by a `u8` need no bounds check.
#[inline]
fn table(lut: &[u8], index: usize) -> Option<&[u8; BINS]> {
    lut.get(index * BINS..(index + 1) * BINS)?.try_into().ok()
}

/// Histograms, clipping and tables for one band of tiles (tile row `ty`).
#[allow(clippy::too_many_arguments)]
fn band_luts(
    src: GrayView<'_>,
    layout: &Layout,
    ty: usize,
    pad_cols: &[usize],
    clip: u32,
    scale: f32,
    hist: &mut [u32],
    lut_band: &mut [u8],
) {
    hist.fill(0);
    let width = layout.width;
    let tile_w = layout.tile_w;
    for yp in ty * layout.tile_h..(ty + 1) * layout.tile_h {
        let row = src.row(reflect_101(yp, layout.height));
        for (tx, h) in hist.chunks_exact_mut(PARTS * BINS).enumerate() {
            let x0 = tx * tile_w;
            let x1 = x0 + tile_w;
            let inside_end = x1.min(width);
            if x0 < inside_end {
                count(h, &row[x0..inside_end]);
            }
            // Padded columns (only in the last tile columns): their reflected sources.
            for xp in x0.max(width)..x1 {
                h[row[pad_cols[xp - width]] as usize] += 1;
            }
        }
    }
    for (parts, lut) in hist
        .chunks_exact_mut(PARTS * BINS)
        .zip(lut_band.chunks_exact_mut(BINS))
    {
        let (h, others) = parts.split_at_mut(BINS);
        for part in others.chunks_exact(BINS) {
            for (a, b) in h.iter_mut().zip(part) {
                *a += b;
            }
        }
        if clip > 0 {
            clip_histogram(h, clip);
        }
        let mut sum = 0u32;
        for (bin, entry) in h.iter().zip(lut.iter_mut()) {
            sum += bin;
            *entry = round_to_u8(sum as f32 * scale);
        }
    }
}

/// Number of partial histograms per tile: counting consecutive pixels into different arrays hides
/// the store-to-load latency of runs of equal values, common in dark ultrasound backgrounds.
const PARTS: usize = 4;

/// Counts `pixels` into the `PARTS` partial histograms of one tile (`PARTS * 256` bins).
#[inline]
fn count(parts: &mut [u32], pixels: &[u8]) {
    let (p0, rest) = parts.split_at_mut(BINS);
    let (p1, rest) = rest.split_at_mut(BINS);
    let (p2, p3) = rest.split_at_mut(BINS);
    let (p0, p1, p2, p3): (
        &mut [u32; BINS],
        &mut [u32; BINS],
        &mut [u32; BINS],
        &mut [u32; BINS],
    ) = match (p0.try_into(), p1.try_into(), p2.try_into(), p3.try_into()) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => return,
    };
    let mut chunks = pixels.chunks_exact(PARTS);
    for c in &mut chunks {
        p0[c[0] as usize] += 1;
        p1[c[1] as usize] += 1;
        p2[c[2] as usize] += 1;
        p3[c[3] as usize] += 1;
    }
    for &p in chunks.remainder() {
        p0[p as usize] += 1;
    }
}

/// Clips every bin at `limit` and redistributes the excess like OpenCV: an equal share to every
/// bin, then one more to every `max(256 / residual, 1)`-th bin from bin 0 until the residual is used.
pub(crate) fn clip_histogram(hist: &mut [u32], limit: u32) {
    let mut clipped = 0u32;
    for bin in hist.iter_mut() {
        if *bin > limit {
            clipped += *bin - limit;
            *bin = limit;
        }
    }
    let batch = clipped / BINS as u32;
    let mut residual = clipped - batch * BINS as u32;
    for bin in hist.iter_mut() {
        *bin += batch;
    }
    if residual != 0 {
        let step = (BINS / residual as usize).max(1);
        let mut i = 0;
        while i < BINS && residual > 0 {
            hist[i] += 1;
            i += step;
            residual -= 1;
        }
    }
}

/// OpenCV's `borderInterpolate(p, len, BORDER_REFLECT_101)`: mirror about the edge pixels without
/// repeating them, folding again for offsets longer than the image.
pub fn reflect_101(p: usize, len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    let mut p = p as i64;
    let len = len as i64;
    while p < 0 || p >= len {
        p = if p < 0 { -p } else { 2 * (len - 1) - p };
    }
    p as usize
}

/// `cv::saturate_cast<uchar>(float)`: round half to even, then clamp to 0..=255. Adding and
/// subtracting 2^23 rounds an f32 in [0, 2^22] to an integer in the default (nearest-even) mode,
/// which keeps the loop free of library calls so it can be vectorised.
#[inline(always)]
fn round_to_u8(v: f32) -> u8 {
    const MAGIC: f32 = 8_388_608.0; // 2^23
    if v >= 0.0 {
        let r = (v + MAGIC) - MAGIC;
        r.min(255.0) as u8
    } else {
        // Only reachable for negative inputs, which CLAHE never produces; keep the semantics anyway.
        v.round_ties_even().max(0.0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_101_matches_opencv_border_interpolate() {
        // len 5: 0 1 2 3 4 | 3 2 1 0 1 2 ...
        let got: Vec<usize> = (0..12).map(|p| reflect_101(p, 5)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]);
        assert_eq!(reflect_101(7, 1), 0);
        assert_eq!(reflect_101(2, 2), 0);
        assert_eq!(reflect_101(3, 2), 1);
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_to_u8(0.5), 0);
        assert_eq!(round_to_u8(1.5), 2);
        assert_eq!(round_to_u8(2.5), 2);
        assert_eq!(round_to_u8(2.5000002), 3);
        assert_eq!(round_to_u8(254.5), 254);
        assert_eq!(round_to_u8(255.4), 255);
        assert_eq!(round_to_u8(300.0), 255);
    }

    #[test]
    fn clipping_redistributes_every_clipped_pixel() {
        let mut h = vec![0u32; BINS];
        h[10] = 1000;
        h[20] = 7;
        let before: u32 = h.iter().sum();
        clip_histogram(&mut h, 5);
        assert_eq!(h.iter().sum::<u32>(), before);
        // 995 + 2 clipped: 3 per bin, 229 bins get one more.
        assert_eq!(h[10], 5 + 3 + 1);
        assert_eq!(h[255], 3);
    }

    #[test]
    fn params_are_checked() {
        assert!(ClaheParams::new(f64::NAN, 8, 8).is_err());
        assert!(ClaheParams::new(2.0, 0, 8).is_err());
        assert!(ClaheParams::new(2.0, 8, 0).is_err());
        assert!(ClaheParams::new(-1.0, 1, 1).is_ok());
    }

    #[test]
    fn constant_image_maps_through_the_table() {
        let img = GrayImage::from_vec(16, 16, vec![100; 256]).unwrap();
        let mut out = GrayImage::default();
        let mut clahe = Clahe::new(ClaheParams::new(0.0, 2, 2).unwrap());
        clahe.apply(img.view().unwrap(), &mut out);
        // No clipping: the cumulative histogram reaches the full tile at 100, so 100 -> 255.
        assert!(out.as_slice().iter().all(|&v| v == 255));
    }
}
