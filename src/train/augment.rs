//! Seeded augmentation of one training pair at model resolution. Geometry (flips, rotation,
//! scaling, elastic deformation) is one inverse map applied with the same bilinear sampling to the
//! image and to the mask (the mask re-thresholded at 0.5), so the two stay aligned by construction;
//! photometry (brightness, contrast, gamma, a depth-gain gradient, lower resolution, gaussian blur,
//! gaussian noise) touches the image only: the last four imitate what differs between scanners
//! (gain curve, time-gain compensation, lateral resolution). Each
//! operation has a probability and a strength; the chosen numbers are in `config/default.toml`
//! (`[train]` `aug_*`). For self-supervised pretraining the second plane is the image itself (a
//! grey-level target, not re-thresholded) and [`corrupt`] then spoils the input the network must
//! restore. Must not depend on burn or files.

use serde::{Deserialize, Serialize};

use crate::synth::SplitMix64;

/// Probabilities and strengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    pub hflip_p: f64,
    pub vflip_p: f64,
    pub rotate_p: f64,
    /// Maximum rotation either way, degrees.
    pub rotate_deg: f64,
    pub scale_p: f64,
    /// Maximum relative zoom either way (0.1: 0.9x to 1.1x).
    pub scale: f64,
    pub elastic_p: f64,
    /// Largest displacement of the elastic field, in pixels at model resolution.
    pub elastic_px: f64,
    pub noise_p: f64,
    /// Largest standard deviation of the added noise, in units of full scale (0..1).
    pub noise_sigma: f64,
    pub blur_p: f64,
    /// Largest gaussian blur sigma, pixels.
    pub blur_sigma: f64,
    pub brightness_contrast_p: f64,
    /// Largest brightness shift, units of full scale.
    pub brightness: f64,
    /// Largest relative contrast change (0.15: 0.85x to 1.15x).
    pub contrast: f64,
    /// Gamma curve `v^g`, `ln g` uniform in `-gamma..gamma` (0.4: g from 0.67 to 1.49).
    #[serde(default)]
    pub gamma_p: f64,
    #[serde(default)]
    pub gamma: f64,
    /// Depth-gain gradient: the image times `exp(a * (y / (h - 1) - 0.5))`, `a` uniform in
    /// `-depth_gain..depth_gain` (deep rows brighter or darker, like a different TGC setting).
    #[serde(default)]
    pub depth_gain_p: f64,
    #[serde(default)]
    pub depth_gain: f64,
    /// Lower resolution: box-averaged down by a factor uniform in `1..lowres`, then bilinearly
    /// back up (a coarser scanner or a smaller screen grab).
    #[serde(default)]
    pub lowres_p: f64,
    #[serde(default)]
    pub lowres: f64,
    /// Top crop: the rows above a cut uniform in `0..crop_top` of the height (and never below
    /// the mask's first row) are dropped and the rest stretched back to the full height, as when
    /// a scanner shows less above the muscle (thin fat, another depth or region of interest).
    #[serde(default)]
    pub crop_top_p: f64,
    #[serde(default)]
    pub crop_top: f64,
}

impl AugmentConfig {
    /// Everything off (validation, previews of the reference).
    pub fn none() -> Self {
        Self {
            hflip_p: 0.0,
            vflip_p: 0.0,
            rotate_p: 0.0,
            rotate_deg: 0.0,
            scale_p: 0.0,
            scale: 0.0,
            elastic_p: 0.0,
            elastic_px: 0.0,
            noise_p: 0.0,
            noise_sigma: 0.0,
            blur_p: 0.0,
            blur_sigma: 0.0,
            brightness_contrast_p: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            gamma_p: 0.0,
            gamma: 0.0,
            depth_gain_p: 0.0,
            depth_gain: 0.0,
            lowres_p: 0.0,
            lowres: 1.0,
            crop_top_p: 0.0,
            crop_top: 0.0,
        }
    }

    /// The defaults (same numbers as config/default.toml).
    pub fn standard() -> Self {
        Self {
            hflip_p: 0.5,
            vflip_p: 0.1,
            rotate_p: 0.5,
            rotate_deg: 10.0,
            scale_p: 0.5,
            scale: 0.1,
            elastic_p: 0.3,
            elastic_px: 3.0,
            noise_p: 0.3,
            noise_sigma: 0.03,
            blur_p: 0.2,
            blur_sigma: 1.0,
            brightness_contrast_p: 0.5,
            brightness: 0.1,
            contrast: 0.15,
            gamma_p: 0.0,
            gamma: 0.4,
            depth_gain_p: 0.0,
            depth_gain: 0.6,
            lowres_p: 0.0,
            lowres: 2.0,
            crop_top_p: 0.0,
            crop_top: 0.3,
        }
    }
}

/// Spoils `image` (0..1, `w` x `h`) for self-supervised pretraining, whose target is the image
/// before this: a random gamma curve (p 0.5, exp(+-0.7)), the pixels shuffled inside small windows
/// (p 0.5, one 2x2 to 4x4 window per 64 pixels: texture the network must not copy) and one to
/// four rectangles, each 1/8 to 1/3 of a side, filled with uniform noise (p 0.8: content it must
/// infer from the context). After the self-supervised restorations of Models Genesis (Zhou et
/// al., 2019).
pub fn corrupt(image: &mut [f32], w: usize, h: usize, rng: &mut SplitMix64) {
    debug_assert!(image.len() == w * h);
    if w < 8 || h < 8 {
        return;
    }
    if rng.next_f64() < 0.5 {
        let g = uniform(rng, -0.7, 0.7).exp() as f32;
        for v in image.iter_mut() {
            *v = v.clamp(0.0, 1.0).powf(g);
        }
    }
    if rng.next_f64() < 0.5 {
        let mut cell = Vec::with_capacity(16);
        for _ in 0..(w * h / 64) {
            let (bw, bh) = (
                2 + (rng.next_u64() % 3) as usize,
                2 + (rng.next_u64() % 3) as usize,
            );
            let x0 = (rng.next_u64() % (w - bw + 1) as u64) as usize;
            let y0 = (rng.next_u64() % (h - bh + 1) as u64) as usize;
            cell.clear();
            for y in y0..y0 + bh {
                cell.extend_from_slice(&image[y * w + x0..y * w + x0 + bw]);
            }
            for i in (1..cell.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                cell.swap(i, j);
            }
            for (k, y) in (y0..y0 + bh).enumerate() {
                image[y * w + x0..y * w + x0 + bw].copy_from_slice(&cell[k * bw..(k + 1) * bw]);
            }
        }
    }
    if rng.next_f64() < 0.8 {
        for _ in 0..1 + rng.next_u64() % 4 {
            let rw = uniform(rng, w as f64 / 8.0, w as f64 / 3.0) as usize;
            let rh = uniform(rng, h as f64 / 8.0, h as f64 / 3.0) as usize;
            let x0 = (rng.next_u64() % (w - rw + 1) as u64) as usize;
            let y0 = (rng.next_u64() % (h - rh + 1) as u64) as usize;
            for y in y0..y0 + rh {
                for v in &mut image[y * w + x0..y * w + x0 + rw] {
                    *v = rng.next_f64() as f32;
                }
            }
        }
    }
}

/// Grid of the elastic field's control points per side.
const ELASTIC_GRID: usize = 5;

/// The augmenter: owns its scratch buffers.
#[derive(Debug, Clone)]
pub struct Augmenter {
    cfg: AugmentConfig,
    /// Re-threshold the second plane at 0.5 after a geometric change (a mask); off for a
    /// grey-level target.
    binary_target: bool,
    map_x: Vec<f32>,
    map_y: Vec<f32>,
    scratch: Vec<f32>,
}

fn normal(rng: &mut SplitMix64) -> f64 {
    let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// Bilinear sample with zero outside the image.
fn sample(src: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as isize, y0 as isize);
    let at = |xi: isize, yi: isize| -> f32 {
        if xi < 0 || yi < 0 || xi >= w as isize || yi >= h as isize {
            0.0
        } else {
            src[yi as usize * w + xi as usize]
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
    let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Bilinear sample of a point inside the image (edges repeated).
fn sample_clamped(src: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
    let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
    top * (1.0 - fy) + bottom * fy
}

impl Augmenter {
    pub fn new(cfg: AugmentConfig) -> Self {
        Self {
            cfg,
            binary_target: true,
            map_x: Vec::new(),
            map_y: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The same augmenter for a grey-level target (self-supervised pretraining): geometry moves
    /// it with the image, without re-thresholding.
    pub fn with_grey_target(mut self) -> Self {
        self.binary_target = false;
        self
    }

    /// Augments `image` (values 0..1) and `mask` (0/1), both `w` x `h`, in place, drawing every
    /// random choice from `rng`.
    pub fn apply(
        &mut self,
        image: &mut [f32],
        mask: &mut [f32],
        w: usize,
        h: usize,
        rng: &mut SplitMix64,
    ) {
        let c = self.cfg;
        let n = w * h;
        debug_assert!(image.len() == n && mask.len() == n);
        let hit = |rng: &mut SplitMix64, p: f64| p > 0.0 && rng.next_f64() < p;

        // Top crop first (its limit is the mask's first row as labelled).
        if hit(rng, c.crop_top_p) && c.crop_top > 0.0 && h > 2 {
            let mut cut = uniform(rng, 0.0, c.crop_top) * (h - 1) as f64;
            if self.binary_target {
                let first = mask.chunks(w).position(|row| row.iter().any(|&m| m >= 0.5));
                cut = cut.min(first.unwrap_or(0).saturating_sub(1) as f64);
            }
            if cut > 0.0 {
                let step = (h - 1) as f64 - cut;
                for plane in [&mut *image, &mut *mask] {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(plane);
                    for y in 0..h {
                        let sy = (cut + y as f64 * step / (h - 1) as f64) as f32;
                        for x in 0..w {
                            plane[y * w + x] = sample(&self.scratch, w, h, x as f32, sy);
                        }
                    }
                }
                if self.binary_target {
                    for m in mask.iter_mut() {
                        *m = if *m >= 0.5 { 1.0 } else { 0.0 };
                    }
                }
            }
        }

        // Geometry: output pixel (x, y) reads source (sx, sy).
        let hflip = hit(rng, c.hflip_p);
        let vflip = hit(rng, c.vflip_p);
        let angle = if hit(rng, c.rotate_p) {
            uniform(rng, -c.rotate_deg, c.rotate_deg).to_radians()
        } else {
            0.0
        };
        let zoom = if hit(rng, c.scale_p) {
            uniform(rng, 1.0 - c.scale, 1.0 + c.scale)
        } else {
            1.0
        };
        let elastic = hit(rng, c.elastic_p);
        let mut grid = [[(0.0f64, 0.0f64); ELASTIC_GRID]; ELASTIC_GRID];
        if elastic {
            for row in grid.iter_mut() {
                for g in row.iter_mut() {
                    *g = (
                        uniform(rng, -c.elastic_px, c.elastic_px),
                        uniform(rng, -c.elastic_px, c.elastic_px),
                    );
                }
            }
        }
        let geometric = hflip || vflip || angle != 0.0 || zoom != 1.0 || elastic;
        if geometric {
            self.map_x.resize(n, 0.0);
            self.map_y.resize(n, 0.0);
            let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
            let (sin, cos) = angle.sin_cos();
            for y in 0..h {
                for x in 0..w {
                    let mut dx = x as f64 - cx;
                    let mut dy = y as f64 - cy;
                    if hflip {
                        dx = -dx;
                    }
                    if vflip {
                        dy = -dy;
                    }
                    // Inverse of zoom then rotation.
                    let rx = (cos * dx + sin * dy) / zoom;
                    let ry = (-sin * dx + cos * dy) / zoom;
                    let (mut sx, mut sy) = (rx + cx, ry + cy);
                    if elastic {
                        // Bilinear interpolation of the control grid: a smooth field.
                        let gx = x as f64 / (w.max(2) - 1) as f64 * (ELASTIC_GRID - 1) as f64;
                        let gy = y as f64 / (h.max(2) - 1) as f64 * (ELASTIC_GRID - 1) as f64;
                        let (ix, iy) = (
                            (gx as usize).min(ELASTIC_GRID - 2),
                            (gy as usize).min(ELASTIC_GRID - 2),
                        );
                        let (fx, fy) = (gx - ix as f64, gy - iy as f64);
                        let lerp = |a: (f64, f64), b: (f64, f64), t: f64| {
                            (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
                        };
                        let top = lerp(grid[iy][ix], grid[iy][ix + 1], fx);
                        let bottom = lerp(grid[iy + 1][ix], grid[iy + 1][ix + 1], fx);
                        let d = lerp(top, bottom, fy);
                        sx += d.0;
                        sy += d.1;
                    }
                    self.map_x[y * w + x] = sx as f32;
                    self.map_y[y * w + x] = sy as f32;
                }
            }
            for plane in [&mut *image, &mut *mask] {
                self.scratch.clear();
                self.scratch.extend_from_slice(plane);
                for i in 0..n {
                    plane[i] = sample(&self.scratch, w, h, self.map_x[i], self.map_y[i]);
                }
            }
            if self.binary_target {
                for m in mask.iter_mut() {
                    *m = if *m >= 0.5 { 1.0 } else { 0.0 };
                }
            }
        }

        // Photometry, image only.
        if hit(rng, c.brightness_contrast_p) {
            let b = uniform(rng, -c.brightness, c.brightness) as f32;
            let k = uniform(rng, 1.0 - c.contrast, 1.0 + c.contrast) as f32;
            let mean = image.iter().sum::<f32>() / n.max(1) as f32;
            for v in image.iter_mut() {
                *v = ((*v - mean) * k + mean + b).clamp(0.0, 1.0);
            }
        }
        if hit(rng, c.gamma_p) {
            let g = uniform(rng, -c.gamma, c.gamma).exp() as f32;
            for v in image.iter_mut() {
                *v = v.max(0.0).powf(g);
            }
        }
        if hit(rng, c.depth_gain_p) {
            let a = uniform(rng, -c.depth_gain, c.depth_gain);
            for (y, row) in image.chunks_mut(w.max(1)).enumerate() {
                let t = y as f64 / (h.max(2) - 1) as f64 - 0.5;
                let k = (a * t).exp() as f32;
                for v in row.iter_mut() {
                    *v = (*v * k).clamp(0.0, 1.0);
                }
            }
        }
        if hit(rng, c.lowres_p) && c.lowres > 1.0 {
            let f = uniform(rng, 1.0, c.lowres);
            self.lower_resolution(image, w, h, f);
        }
        if hit(rng, c.blur_p) {
            let sigma = uniform(rng, 0.3, c.blur_sigma.max(0.3));
            self.blur(image, w, h, sigma);
        }
        if hit(rng, c.noise_p) {
            let sigma = uniform(rng, 0.0, c.noise_sigma);
            for v in image.iter_mut() {
                *v = (*v + (normal(rng) * sigma) as f32).clamp(0.0, 1.0);
            }
        }
    }

    /// Box-averages `image` down to `w / factor` x `h / factor` and samples it back up
    /// bilinearly (pixel centres aligned), in place.
    fn lower_resolution(&mut self, image: &mut [f32], w: usize, h: usize, factor: f64) {
        let (sw, sh) = (
            ((w as f64 / factor).round() as usize).clamp(1, w),
            ((h as f64 / factor).round() as usize).clamp(1, h),
        );
        if sw == w && sh == h {
            return;
        }
        self.scratch.clear();
        self.scratch.resize(sw * sh, 0.0);
        for sy in 0..sh {
            let (y0, y1) = (sy * h / sh, ((sy + 1) * h / sh).max(sy * h / sh + 1));
            for sx in 0..sw {
                let (x0, x1) = (sx * w / sw, ((sx + 1) * w / sw).max(sx * w / sw + 1));
                let mut acc = 0.0;
                for y in y0..y1 {
                    acc += image[y * w + x0..y * w + x1].iter().sum::<f32>();
                }
                self.scratch[sy * sw + sx] = acc / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
        let (kx, ky) = (sw as f32 / w as f32, sh as f32 / h as f32);
        for y in 0..h {
            let syf = ((y as f32 + 0.5) * ky - 0.5).clamp(0.0, (sh - 1) as f32);
            for x in 0..w {
                let sxf = ((x as f32 + 0.5) * kx - 0.5).clamp(0.0, (sw - 1) as f32);
                image[y * w + x] = sample_clamped(&self.scratch, sw, sh, sxf, syf);
            }
        }
    }

    /// Separable gaussian blur, edges clamped.
    fn blur(&mut self, image: &mut [f32], w: usize, h: usize, sigma: f64) {
        let radius = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f32> = (-radius..=radius)
            .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
            .collect();
        let total: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
        self.scratch.clear();
        self.scratch.resize(w * h, 0.0);
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, i) in kernel.iter().zip(-radius..=radius) {
                    let xi = (x as isize + i).clamp(0, w as isize - 1) as usize;
                    acc += k * image[y * w + xi];
                }
                self.scratch[y * w + x] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, i) in kernel.iter().zip(-radius..=radius) {
                    let yi = (y as isize + i).clamp(0, h as isize - 1) as usize;
                    acc += k * self.scratch[yi * w + x];
                }
                image[y * w + x] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With the photometric part off, an image that equals its mask stays equal to it after
        /// augmentation (thresholded), whatever the geometry drawn: image and mask move together.
        #[test]
        fn geometry_keeps_image_and_mask_aligned(seed in any::<u64>(), w in 8usize..48, h in 8usize..48,
                                                 shape_seed in any::<u64>()) {
            let mut cfg = AugmentConfig::standard();
            cfg.hflip_p = 0.5; cfg.vflip_p = 0.5; cfg.rotate_p = 0.8; cfg.scale_p = 0.8; cfg.elastic_p = 0.8;
            cfg.noise_p = 0.0; cfg.blur_p = 0.0; cfg.brightness_contrast_p = 0.0;
            let mut r = SplitMix64::new(shape_seed);
            let (cx, cy, rad) = (r.next_f64() * w as f64, r.next_f64() * h as f64, 2.0 + r.next_f64() * 10.0);
            let mask: Vec<f32> = (0..w * h).map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                if (x - cx).powi(2) + (y - cy).powi(2) < rad * rad { 1.0 } else { 0.0 }
            }).collect();
            let mut image = mask.clone();
            let mut m = mask.clone();
            let mut aug = Augmenter::new(cfg);
            aug.apply(&mut image, &mut m, w, h, &mut SplitMix64::new(seed));
            for i in 0..w * h {
                prop_assert_eq!(image[i] >= 0.5, m[i] >= 0.5, "pixel {}", i);
            }
        }
    }

    /// Pretraining: the grey target follows the geometry without being thresholded, and the
    /// corruption is seeded, keeps values in 0..1 and changes most images (the network has
    /// something to restore).
    #[test]
    fn grey_target_and_corruption() {
        let (w, h) = (32, 24);
        let base: Vec<f32> = (0..w * h)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let mut cfg = AugmentConfig::none();
        cfg.hflip_p = 1.0;
        let (mut img, mut target) = (base.clone(), base.clone());
        Augmenter::new(cfg).with_grey_target().apply(
            &mut img,
            &mut target,
            w,
            h,
            &mut SplitMix64::new(3),
        );
        assert_eq!(img, target, "the target moves with the image");
        assert!(
            target.iter().any(|&v| v > 0.05 && v < 0.95),
            "not thresholded"
        );
        let spoil = |seed| {
            let mut x = base.clone();
            corrupt(&mut x, w, h, &mut SplitMix64::new(seed));
            x
        };
        assert_eq!(spoil(9), spoil(9));
        let mut changed = 0;
        for seed in 0..20 {
            let x = spoil(seed);
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
            changed += usize::from(x != base);
        }
        assert!(changed >= 15, "{changed} of 20 seeds corrupted the image");
    }

    #[test]
    fn seeded_and_not_identity() {
        let (w, h) = (32, 32);
        let base: Vec<f32> = (0..w * h).map(|i| (i % 7) as f32 / 7.0).collect();
        let mask: Vec<f32> = (0..w * h).map(|i| ((i / w) > 10) as u8 as f32).collect();
        let run = |seed| {
            let (mut a, mut m) = (base.clone(), mask.clone());
            Augmenter::new(AugmentConfig::standard()).apply(
                &mut a,
                &mut m,
                w,
                h,
                &mut SplitMix64::new(seed),
            );
            (a, m)
        };
        assert_eq!(run(5), run(5));
        let changed = (0..20).filter(|&s| run(s).0 != base).count();
        assert!(changed >= 15, "{changed} of 20 seeds changed the image");
        let (mut a, mut m) = (base.clone(), mask.clone());
        Augmenter::new(AugmentConfig::none()).apply(&mut a, &mut m, w, h, &mut SplitMix64::new(1));
        assert_eq!((a, m), (base, mask));
    }

    /// The top crop moves the first band up, never out of view, keeps image and mask aligned
    /// and keeps the bottom row.
    #[test]
    fn top_crop_brings_the_first_band_to_the_edge_without_losing_it() {
        let (w, h) = (16, 64);
        // Bright bands where the mask is: rows 20..23 and 44..47.
        let band = |y: usize| (20..23).contains(&y) || (44..47).contains(&y);
        let mask: Vec<f32> = (0..w * h).map(|i| band(i / w) as u8 as f32).collect();
        let base: Vec<f32> = (0..w * h)
            .map(|i| {
                if band(i / w) {
                    1.0
                } else {
                    0.1 + (i / w) as f32 / 1000.0
                }
            })
            .collect();
        let mut c = AugmentConfig::none();
        c.crop_top_p = 1.0;
        c.crop_top = 0.8;
        let mut firsts = Vec::new();
        for seed in 0..30 {
            let (mut a, mut m) = (base.clone(), mask.clone());
            Augmenter::new(c).apply(&mut a, &mut m, w, h, &mut SplitMix64::new(seed));
            let first = m
                .chunks(w)
                .position(|r| r.iter().any(|&v| v >= 0.5))
                .unwrap();
            firsts.push(first);
            for i in 0..w * h {
                if m[i] >= 0.5 {
                    assert!(a[i] > 0.5, "seed {seed}: mask pixel {i} on a dark pixel");
                }
            }
            assert_eq!(
                a[(h - 1) * w..],
                base[(h - 1) * w..],
                "seed {seed}: bottom row"
            );
        }
        assert!(firsts.iter().all(|&f| f <= 20), "{firsts:?}");
        assert!(
            firsts.iter().filter(|&&f| f <= 5).count() >= 5,
            "{firsts:?}"
        );
    }

    /// The scanner-like photometry: each changes the image, never the mask, keeps values in
    /// 0..1, and does what it says (gamma keeps 0 and 1, the gradient brightens or darkens one end
    /// more than the other, lower resolution keeps the mean and smooths a checkerboard).
    #[test]
    fn scanner_photometry() {
        let (w, h) = (40, 30);
        let base: Vec<f32> = (0..w * h)
            .map(|i| ((i % w + i / w) % 2) as f32 * 0.5 + 0.25)
            .collect();
        let mask: Vec<f32> = (0..w * h).map(|i| ((i / w) > 10) as u8 as f32).collect();
        let only = |f: &dyn Fn(&mut AugmentConfig)| {
            let mut c = AugmentConfig::none();
            f(&mut c);
            c
        };
        let cases = [
            only(&|c| {
                c.gamma_p = 1.0;
                c.gamma = 0.5;
            }),
            only(&|c| {
                c.depth_gain_p = 1.0;
                c.depth_gain = 0.8;
            }),
            only(&|c| {
                c.lowres_p = 1.0;
                c.lowres = 3.0;
            }),
        ];
        for (k, cfg) in cases.iter().enumerate() {
            let mut changed = 0;
            for seed in 0..10 {
                let (mut a, mut m) = (base.clone(), mask.clone());
                Augmenter::new(*cfg).apply(&mut a, &mut m, w, h, &mut SplitMix64::new(seed));
                assert_eq!(m, mask, "case {k}: the mask moved");
                assert!(
                    a.iter().all(|v| (0.0..=1.0).contains(v)),
                    "case {k}: out of range"
                );
                changed += (a != base) as usize;
                if k == 2 && a != base {
                    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
                    assert!(
                        (mean(&a) - mean(&base)).abs() < 0.02,
                        "lowres moved the mean"
                    );
                    let spread = |v: &[f32]| v.iter().map(|x| (x - 0.5).abs()).sum::<f32>();
                    assert!(spread(&a) < 0.8 * spread(&base), "lowres did not smooth");
                }
                if k == 1 && a != base {
                    let row_mean = |y: usize| a[y * w..(y + 1) * w].iter().sum::<f32>() / w as f32;
                    assert!((row_mean(0) - row_mean(h - 1)).abs() > 0.01, "no gradient");
                }
            }
            assert!(
                changed >= 8,
                "case {k}: {changed} of 10 seeds changed the image"
            );
        }
        let mut g = vec![0.0f32, 1.0];
        let mut gm = vec![0.0f32, 0.0];
        Augmenter::new(cases[0]).apply(&mut g, &mut gm, 2, 1, &mut SplitMix64::new(3));
        assert_eq!(g, vec![0.0, 1.0], "gamma keeps black and white");
    }
}
