//! Calibration from the scanner's on-screen ruler. Scanners draw a depth (or width) scale beside
//! the image: tick marks at a fixed physical spacing, the longer ones every so many. The detector
//! looks in the four strips around the image region (found by the ROI detector), builds for each a
//! profile along the strip of how much brighter than its own column (or row) the pixels are (so a
//! constant axis line cancels), finds the ticks as peaks with sub-pixel centroids, fits their
//! spacing robustly (integer tick indices, least squares over the inliers, outliers rejected),
//! tells major from minor ticks by their length, and gives mm per pixel with the fit's residual
//! and tick count. A strip that is not a ruler gives an error with the reason, never a guess. No
//! I/O; depends only on `frame`.

use crate::frame::{GrayView, Rect};

/// Which side of the image a ruler was found on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Right,
    Left,
    Bottom,
    Top,
}

/// A fitted ruler.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RulerFit {
    /// Millimetres per pixel along the ruler (square pixels assumed across it).
    pub mm_per_px: f64,
    /// Pixels between neighbouring ticks (minor ones when there are two lengths).
    pub tick_spacing_px: f64,
    /// Ticks `spacing_mm` apart: 1 when every tick is, else the major ticks' period in ticks.
    pub major_every: usize,
    /// Ticks used in the fit.
    pub ticks: usize,
    /// RMS distance of the used ticks from the fitted comb, pixels.
    pub residual_px: f64,
    /// Length of the ruler from its first to its last tick, pixels.
    pub extent_px: f64,
    pub side: Side,
}

/// Why no ruler was accepted.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum RulerError {
    #[error("no ruler beside the image: the largest comb of evenly spaced ticks had {found} (at least {min} needed)")]
    TooFewTicks { found: usize, min: usize },
    #[error("the ruler's ticks fit a regular comb poorly: residual {residual_px:.2} px at {spacing_px:.1} px spacing")]
    PoorFit { residual_px: f64, spacing_px: f64 },
    #[error("no room beside the image for a ruler (the image fills the frame)")]
    NoStrip,
    #[error("the only comb of evenly spaced marks spans {extent_px:.0} px, under 40 % of the image side ({side_px} px): not a ruler")]
    Short { extent_px: f64, side_px: usize },
}

/// Detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RulerConfig {
    /// Physical distance between the ticks that are `major_every` apart (or between all ticks).
    pub spacing_mm: f64,
    /// Fewest ticks of one comb.
    pub min_ticks: usize,
    /// Largest accepted RMS residual, as a fraction of the tick spacing.
    pub max_residual_fraction: f64,
}

impl Default for RulerConfig {
    fn default() -> Self {
        Self {
            spacing_mm: 10.0,
            min_ticks: 4,
            max_residual_fraction: 0.04,
        }
    }
}

/// Fewest ticks a comb must have of the positions between its first and last (the rest may be
/// hidden by markers or labels).
const MIN_FILL: f64 = 0.6;

/// Closest tick spacing considered, pixels (finer combs are image texture or dotted lines).
const MIN_SPACING_PX: f64 = 6.0;

/// One tick: its sub-pixel centre along the strip (pixel centres at `i + 0.5`), its strength and
/// its length across the strip in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tick {
    centre: f64,
    strength: f64,
    length: usize,
}

/// The detector; owns its scratch buffers.
#[derive(Debug, Default)]
pub struct RulerDetector {
    cfg: RulerConfig,
    column: Vec<u8>,
    profile: Vec<f64>,
    lengths: Vec<usize>,
    /// Per cross line of the last strip measured by `tick_length`: its median.
    medians: Vec<f64>,
    medians_for: (Rect, bool),
}

impl RulerDetector {
    pub fn new(cfg: RulerConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &RulerConfig {
        &self.cfg
    }

    /// Finds the best ruler in the strips around `image` (the ultrasound region of `frame`).
    /// Each strip is searched in narrow bands of lines, so clutter elsewhere in the strip (colour
    /// bars, icons, text) does not drown the ticks.
    pub fn detect(&mut self, frame: GrayView<'_>, image: Rect) -> Result<RulerFit, RulerError> {
        let (fw, fh) = (frame.width(), frame.height());
        let across_v = (fw / 12).max(12);
        let across_h = (fh / 12).max(12);
        let pad = 3;
        let y0 = image.y.saturating_sub(pad);
        let y1 = (image.y + image.h + pad).min(fh);
        let x0 = image.x.saturating_sub(pad);
        let x1 = (image.x + image.w + pad).min(fw);
        let right = image.x + image.w;
        let bottom = image.y + image.h;
        let span = |from: usize, to: usize| (from, to.saturating_sub(from));
        // (side, strip, vertical ruler?)
        let (rx, rw) = span(right, (right + across_v).min(fw));
        let (lx, lw) = span(image.x.saturating_sub(across_v), image.x);
        let (by, bh) = span(bottom, (bottom + across_h).min(fh));
        let (ty, th) = span(image.y.saturating_sub(across_h), image.y);
        let strips = [
            (
                Side::Right,
                Rect {
                    x: rx,
                    y: y0,
                    w: rw,
                    h: y1 - y0,
                },
                true,
                fw > right,
            ),
            (
                Side::Left,
                Rect {
                    x: lx,
                    y: y0,
                    w: lw,
                    h: y1 - y0,
                },
                true,
                image.x > 0,
            ),
            (
                Side::Bottom,
                Rect {
                    x: x0,
                    y: by,
                    w: x1 - x0,
                    h: bh,
                },
                false,
                fh > bottom,
            ),
            (
                Side::Top,
                Rect {
                    x: x0,
                    y: ty,
                    w: x1 - x0,
                    h: th,
                },
                false,
                image.y > 0,
            ),
        ];
        let mut best: Option<Result<RulerFit, RulerError>> = None;
        let mut any_strip = false;
        const BAND: usize = 6;
        for (side, strip, vertical, room) in strips {
            let across = if vertical { strip.w } else { strip.h };
            if !room || strip.w < 3 || strip.h < 3 || across < 3 {
                continue;
            }
            any_strip = true;
            let mut u0 = 0;
            loop {
                let band = (u0, (u0 + BAND).min(across));
                let mut ticks = self.ticks(&frame, strip, vertical, band);
                // A band sees only part of each tick: measure their lengths across the whole
                // strip, so major and minor ticks can be told apart.
                for t in ticks.iter_mut() {
                    t.length = self.tick_length(&frame, strip, vertical, t.centre);
                }
                let side_px = if vertical { image.h } else { image.w };
                // A ruler runs along most of the image's side; a short regular pattern (text,
                // texture, an icon) is not one.
                let r = fit(&ticks, &self.cfg, side).and_then(|f| {
                    if f.extent_px < 0.4 * side_px as f64 {
                        Err(RulerError::Short {
                            extent_px: f.extent_px,
                            side_px,
                        })
                    } else {
                        Ok(f)
                    }
                });
                best = Some(match (best, r) {
                    (None, r) => r,
                    (Some(Ok(a)), Ok(b)) => Ok(
                        if b.ticks > a.ticks
                            || (b.ticks == a.ticks && b.residual_px < a.residual_px)
                        {
                            b
                        } else {
                            a
                        },
                    ),
                    (Some(Ok(a)), Err(_)) => Ok(a),
                    (Some(Err(_)), Ok(b)) => Ok(b),
                    (Some(Err(a)), Err(b)) => Err(worse_of(a, b)),
                });
                if band.1 >= across {
                    break;
                }
                u0 += BAND / 2;
            }
        }
        if !any_strip {
            return Err(RulerError::NoStrip);
        }
        best.unwrap_or(Err(RulerError::NoStrip))
    }

    /// The longest run of bright pixels (above its line's median by 24) across the whole strip
    /// on the line(s) of a tick centred at `centre`.
    fn tick_length(
        &mut self,
        frame: &GrayView<'_>,
        strip: Rect,
        vertical: bool,
        centre: f64,
    ) -> usize {
        let (along, across) = if vertical {
            (strip.h, strip.w)
        } else {
            (strip.w, strip.h)
        };
        let at = |t: usize, u: usize| strip_px(frame, strip, vertical, t, u);
        let lines = [(centre - 0.5).floor(), (centre - 0.5).ceil()];
        let mut best = 0;
        // The level of each cross line: its median along the strip (as in `ticks`), cached.
        if self.medians.len() != across || self.medians_for != (strip, vertical) {
            self.medians.clear();
            for u in 0..across {
                self.column.clear();
                self.column.extend((0..along).map(|t| at(t, u)));
                self.column.sort_unstable();
                self.medians
                    .push(f64::from(self.column[self.column.len() / 2]));
            }
            self.medians_for = (strip, vertical);
        }
        for l in lines {
            if l < 0.0 || l as usize >= along {
                continue;
            }
            let t = l as usize;
            let mut run = 0;
            for u in 0..across {
                if f64::from(at(t, u)) - self.medians[u] > 24.0 {
                    run += 1;
                    best = best.max(run);
                } else {
                    run = 0;
                }
            }
        }
        best
    }

    /// Ticks of lines `band` of one strip. `vertical`: the ruler runs down the strip (ticks are
    /// rows). A band whose profile is busy over more than a third of its length (image texture,
    /// text) has no ticks.
    fn ticks(
        &mut self,
        frame: &GrayView<'_>,
        strip: Rect,
        vertical: bool,
        band: (usize, usize),
    ) -> Vec<Tick> {
        let along = if vertical { strip.h } else { strip.w };
        let at = |t: usize, u: usize| strip_px(frame, strip, vertical, t, u);
        self.profile.clear();
        self.profile.resize(along, 0.0);
        self.lengths.clear();
        self.lengths.resize(along, 0);
        for u in band.0..band.1 {
            // The line's own level (its median along the strip) cancels axis lines and flat UI.
            self.column.clear();
            self.column.extend((0..along).map(|t| at(t, u)));
            let mut sorted = self.column.clone();
            sorted.sort_unstable();
            let median = f64::from(sorted[sorted.len() / 2]);
            for t in 0..along {
                let e = f64::from(self.column[t]) - median;
                if e > 24.0 {
                    self.profile[t] += e;
                    self.lengths[t] += 1;
                }
            }
        }
        let busy = self.profile.iter().filter(|&&p| p > 0.0).count();
        if busy * 3 > along {
            return Vec::new();
        }
        let peak = self.profile.iter().cloned().fold(0.0, f64::max);
        if peak <= 0.0 {
            return Vec::new();
        }
        let threshold = peak * 0.25;
        let mut out = Vec::new();
        let mut t = 0;
        while t < along {
            if self.profile[t] <= threshold {
                t += 1;
                continue;
            }
            // A run above the threshold, widened by one sample each side for the centroid.
            let start = t;
            while t < along && self.profile[t] > threshold {
                t += 1;
            }
            let (a, b) = (start.saturating_sub(1), (t + 1).min(along));
            let (mut s, mut st) = (0.0, 0.0);
            let mut length = 0;
            for k in a..b {
                s += self.profile[k];
                st += self.profile[k] * (k as f64 + 0.5);
                length = length.max(self.lengths[k]);
            }
            // Runs wider than a tick (text, a bar) are not ticks.
            if t - start <= 6 {
                out.push(Tick {
                    centre: st / s,
                    strength: s,
                    length,
                });
            }
        }
        out
    }
}

/// The pixel at `t` along and `u` across a strip (`vertical`: the strip runs down the frame).
fn strip_px(frame: &GrayView<'_>, strip: Rect, vertical: bool, t: usize, u: usize) -> u8 {
    let (x, y) = if vertical {
        (strip.x + u, strip.y + t)
    } else {
        (strip.x + t, strip.y + u)
    };
    frame.row(y)[x]
}

fn worse_of(a: RulerError, b: RulerError) -> RulerError {
    // Report the most ruler-like failure: a poor fit over too few ticks.
    match (&a, &b) {
        (RulerError::PoorFit { .. }, _) => a,
        (_, RulerError::PoorFit { .. }) => b,
        (RulerError::TooFewTicks { found: fa, .. }, RulerError::TooFewTicks { found: fb, .. }) => {
            if fb > fa {
                b
            } else {
                a
            }
        }
        _ => a,
    }
}

/// Least squares `c = a + d k` over the given (index, centre) pairs.
fn line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let (sk, sc) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mk, mc) = (sk / n, sc / n);
    let (mut skk, mut skc) = (0.0, 0.0);
    for &(k, c) in points {
        skk += (k - mk) * (k - mk);
        skc += (k - mk) * (c - mc);
    }
    (skk > 0.0).then(|| {
        let d = skc / skk;
        (mc - d * mk, d)
    })
}

/// The largest comb of evenly spaced ticks, its spacing and the major ticks' period.
fn fit(ticks: &[Tick], cfg: &RulerConfig, side: Side) -> Result<RulerFit, RulerError> {
    let min = cfg.min_ticks.max(3);
    if ticks.len() < min {
        return Err(RulerError::TooFewTicks {
            found: ticks.len(),
            min,
        });
    }
    // Candidate spacings: every difference between neighbours; keep the comb with most inliers.
    let mut best: Option<(usize, f64, f64, f64, Vec<(usize, i64)>)> = None; // (n, a, d, rms, members)
    for w in ticks.windows(2) {
        let d0 = w[1].centre - w[0].centre;
        if d0 < MIN_SPACING_PX {
            continue;
        }
        for anchor in ticks {
            let (mut a, mut d) = (anchor.centre, d0);
            let mut members: Vec<(usize, i64)> = Vec::new();
            for _ in 0..4 {
                members.clear();
                for (i, t) in ticks.iter().enumerate() {
                    let k = ((t.centre - a) / d).round();
                    if (t.centre - (a + k * d)).abs() <= 0.12 * d {
                        members.push((i, k as i64));
                    }
                }
                // One tick per index (the strongest).
                members.sort_by(|x, y| {
                    x.1.cmp(&y.1)
                        .then(ticks[y.0].strength.total_cmp(&ticks[x.0].strength))
                });
                members.dedup_by_key(|m| m.1);
                let pts: Vec<(f64, f64)> = members
                    .iter()
                    .map(|&(i, k)| (k as f64, ticks[i].centre))
                    .collect();
                match line(&pts) {
                    Some((na, nd)) if nd >= MIN_SPACING_PX => {
                        a = na;
                        d = nd;
                    }
                    _ => break,
                }
            }
            if members.len() < 2 {
                continue;
            }
            // A ruler has most of its ticks: a comb with more gaps than ticks is a coincidence
            // of unrelated marks at some fraction of their real spacing.
            let (kmin, kmax) = members
                .iter()
                .fold((i64::MAX, i64::MIN), |(a, b), &(_, k)| (a.min(k), b.max(k)));
            if (members.len() as f64) < MIN_FILL * (kmax - kmin + 1) as f64 {
                continue;
            }
            let rms = (members
                .iter()
                .map(|&(i, k)| (ticks[i].centre - (a + k as f64 * d)).powi(2))
                .sum::<f64>()
                / members.len() as f64)
                .sqrt();
            let better = match &best {
                None => true,
                Some((n, _, bd, brms, _)) => {
                    members.len() > *n
                        || (members.len() == *n
                            && (rms < *brms - 1e-9 || (rms <= *brms + 1e-9 && d < *bd)))
                }
            };
            if better {
                best = Some((members.len(), a, d, rms, members.clone()));
            }
        }
    }
    let Some((n, _a, d, rms, members)) = best else {
        return Err(RulerError::TooFewTicks { found: 1, min });
    };
    if n < min {
        return Err(RulerError::TooFewTicks { found: n, min });
    }
    if rms > cfg.max_residual_fraction * d {
        return Err(RulerError::PoorFit {
            residual_px: rms,
            spacing_px: d,
        });
    }
    // Major ticks: the longer class when the lengths split in two, on a regular period.
    let lengths: Vec<usize> = members.iter().map(|&(i, _)| ticks[i].length).collect();
    let (lo, hi) = (
        *lengths.iter().min().unwrap_or(&0),
        *lengths.iter().max().unwrap_or(&0),
    );
    let mut major_every = 1;
    if hi as f64 >= 1.4 * lo as f64 && hi >= lo + 2 {
        let cut = (lo + hi) as f64 / 2.0;
        let majors: Vec<i64> = members
            .iter()
            .filter(|&&(i, _)| ticks[i].length as f64 > cut)
            .map(|&(_, k)| k)
            .collect();
        // At least three long ticks, on a period, and every tick on that period long and every
        // other short: one long mark (a focus marker, the zero) is not a major scale.
        if majors.len() >= 3 {
            let g = majors.windows(2).fold(0i64, |g, w| gcd(g, w[1] - w[0]));
            let on = |k: i64| (k - majors[0]).rem_euclid(g.max(1)) == 0;
            let consistent = members
                .iter()
                .all(|&(i, k)| on(k) == (ticks[i].length as f64 > cut));
            if (2..=10).contains(&g) && consistent {
                major_every = g as usize;
            }
        }
    }
    let (kmin, kmax) = members
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &(_, k)| (a.min(k), b.max(k)));
    Ok(RulerFit {
        mm_per_px: cfg.spacing_mm / (d * major_every as f64),
        tick_spacing_px: d,
        major_every,
        ticks: n,
        residual_px: rms,
        extent_px: d * (kmax - kmin) as f64,
        side,
    })
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// Draws an anti-aliased tick `thick` pixels thick centred at `c` (pixel centres at `i + 0.5`):
/// the coverage of each pixel, for renderers (the phantom) and tests.
pub fn tick_coverage(i: usize, c: f64, thick: f64) -> f64 {
    let (p0, p1) = (i as f64, i as f64 + 1.0);
    let (t0, t1) = (c - thick / 2.0, c + thick / 2.0);
    (p1.min(t1) - p0.max(t0)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::GrayImage;
    use crate::synth::SplitMix64;
    use proptest::prelude::*;

    /// A frame with a textured image region and a vertical ruler to its right: ticks every
    /// `spacing` px from `offset`, every `major`-th longer, with gaussian-ish noise.
    fn frame_with_ruler(
        w: usize,
        h: usize,
        spacing: f64,
        offset: f64,
        major: usize,
        noise: f64,
        seed: u64,
    ) -> (GrayImage, Rect) {
        let image = Rect {
            x: w / 8,
            y: h / 10,
            w: w * 6 / 10,
            h: h * 8 / 10,
        };
        let mut img = GrayImage::new(w, h);
        let mut rng = SplitMix64::new(seed);
        let px = img.as_mut_slice();
        for y in 0..h {
            for x in 0..w {
                let inside =
                    x >= image.x && x < image.x + image.w && y >= image.y && y < image.y + image.h;
                let base = if inside {
                    40.0 + 120.0 * rng.next_f64()
                } else {
                    18.0
                };
                px[y * w + x] = base as u8;
            }
        }
        let sx = image.x + image.w + 4;
        let mut k = 0;
        loop {
            let c = image.y as f64 + offset + k as f64 * spacing;
            if c > (image.y + image.h) as f64 {
                break;
            }
            let len = if k % major == 0 { 10 } else { 5 };
            for y in 0..h {
                let cov = tick_coverage(y, c, 2.0);
                if cov > 0.0 {
                    for x in sx..(sx + len).min(w) {
                        px[y * w + x] = (18.0 + 200.0 * cov) as u8;
                    }
                }
            }
            k += 1;
        }
        // A vertical axis line beside the ticks: constant along the ruler, must cancel.
        for y in image.y..image.y + image.h {
            if sx > 0 {
                px[y * w + sx - 1] = 150;
            }
        }
        for v in px.iter_mut() {
            let n = (rng.next_f64() - 0.5) * 2.0 * noise;
            *v = (f64::from(*v) + n).clamp(0.0, 255.0) as u8;
        }
        (img, image)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any spacing, offset, noise and size: the spacing within 0.5 %, majors told apart.
        #[test]
        fn finds_any_regular_ruler(w in 200usize..900, h in 200usize..800, frac in 0.06f64..0.2,
                                   offset in 0.0f64..6.0, noise in 0.0f64..12.0, seed in any::<u64>()) {
            let spacing = (h as f64 * 0.8 * frac).max(8.0);
            let (img, image) = frame_with_ruler(w, h, spacing, offset, 2, noise, seed);
            let n_ticks = ((image.h as f64 - offset) / spacing).floor() as usize + 1;
            prop_assume!(n_ticks >= 5);
            let mut det = RulerDetector::new(RulerConfig { spacing_mm: 10.0, ..Default::default() });
            let fit = det.detect(img.view().unwrap(), image).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(fit.side, Side::Right);
            prop_assert!((fit.tick_spacing_px - spacing).abs() < 0.005 * spacing,
                "spacing {} px, want {}", fit.tick_spacing_px, spacing);
            prop_assert_eq!(fit.major_every, 2);
            prop_assert!((fit.mm_per_px - 10.0 / (2.0 * spacing)).abs() < 0.005 * fit.mm_per_px);
            prop_assert!(fit.ticks + 1 >= n_ticks, "{} of {} ticks", fit.ticks, n_ticks);
        }
    }

    /// The phantom's own ruler, found through the ROI detector as the daemon would: mm per pixel
    /// within 1 % of the phantom's scale at every depth, size and seed tried.
    #[test]
    fn the_phantom_ruler_gives_its_scale() {
        use crate::preprocess::roi::RoiDetector;
        use crate::synth::{Phantom, PhantomConfig};
        let mut worst: f64 = 0.0;
        for (w, h) in [(640, 480), (800, 600), (1024, 768), (512, 512)] {
            for depth_mm in [30.0, 40.0, 60.0, 90.0] {
                for seed in 0..3 {
                    let cfg = PhantomConfig {
                        width: w,
                        height: h,
                        furniture: true,
                        seed,
                        depth_mm,
                        ..Default::default()
                    };
                    let p = Phantom::new(cfg);
                    let s = crate::synth::sample(cfg, seed);
                    let roi = RoiDetector::default().detect(s.image.view().unwrap());
                    let fit = RulerDetector::new(RulerConfig::default())
                        .detect(s.image.view().unwrap(), roi)
                        .unwrap_or_else(|e| panic!("{w}x{h} depth {depth_mm}: {e}"));
                    let want = p.mm_per_px();
                    let rel = (fit.mm_per_px - want).abs() / want;
                    worst = worst.max(rel);
                    assert!(
                        rel < 0.01,
                        "{w}x{h} depth {depth_mm} seed {seed}: {fit:?}, want {want}"
                    );
                    assert_eq!((fit.side, fit.major_every), (Side::Right, 2), "{fit:?}");
                }
            }
        }
        eprintln!(
            "worst relative mm-per-px error over 48 phantom frames: {:.3} %",
            100.0 * worst
        );
    }

    #[test]
    fn one_length_and_outliers() {
        let (mut img, image) = frame_with_ruler(640, 480, 30.0, 2.0, 1, 4.0, 3);
        // A stray mark between two ticks (a label) is rejected by the fit.
        let (w, sx) = (640, image.x + image.w + 4);
        for x in sx..sx + 6 {
            img.as_mut_slice()[(image.y + 45) * w + x] = 220;
        }
        let fit = RulerDetector::new(RulerConfig::default())
            .detect(img.view().unwrap(), image)
            .unwrap();
        assert_eq!(fit.major_every, 1);
        assert!((fit.tick_spacing_px - 30.0).abs() < 0.15, "{fit:?}");
        assert!((fit.mm_per_px - 10.0 / 30.0).abs() < 0.002, "{fit:?}");
    }

    #[test]
    fn no_ruler_is_an_error_not_a_guess() {
        let (img, image) = frame_with_ruler(640, 480, 1000.0, 2.0, 2, 4.0, 5);
        let e = RulerDetector::new(RulerConfig::default())
            .detect(img.view().unwrap(), image)
            .unwrap_err();
        assert!(matches!(e, RulerError::TooFewTicks { .. }), "{e}");
        // Three ticks are not enough.
        let (img, image) = frame_with_ruler(640, 480, 150.0, 2.0, 2, 0.0, 5);
        assert!(RulerDetector::new(RulerConfig::default())
            .detect(img.view().unwrap(), image)
            .is_err());
        // The image filling the frame: nowhere to look.
        let img = GrayImage::new(100, 100);
        let e = RulerDetector::new(RulerConfig::default())
            .detect(img.view().unwrap(), Rect::full(100, 100))
            .unwrap_err();
        assert_eq!(e, RulerError::NoStrip);
    }
}
