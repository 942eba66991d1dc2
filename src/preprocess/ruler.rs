//! Calibration from the scanner's on-screen ruler. Scanners draw a depth scale beside the image
//! (and some a width scale under it): tick marks at a fixed physical spacing, often longer ones
//! every so many, sometimes on a thin line, with digits or focal-zone marks beside them. The
//! detector searches the whole margin on each side of the image region (found by the ROI
//! detector) in narrow bands of lines; for each band it builds a profile along the ruler of how
//! much brighter than its own line the pixels are (so a constant axis line cancels), finds the
//! marks as peaks with sub-pixel centroids, sets aside marks that are not straight ticks (arrows,
//! triangles, hourglasses: their outline spreads above or below the mark), fits the spacing
//! robustly (integer tick indices, least squares over the inliers) and tells major from minor
//! ticks by their length. A reading is accepted only when independent evidence agrees
//! ([`RulerEvidence`]): the comb spans most of the image's side, the image's top edge (the zero
//! of a depth scale) lies on it, the depth it implies is one a scanner offers, and a width ruler
//! under the image, where there is one, gives the same scale. Anything less is an error with the
//! reason, never a guess. No I/O; depends only on `frame`.

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

impl Side {
    /// A depth scale (beside the image) rather than a width scale (above or under it).
    pub fn is_vertical(self) -> bool {
        matches!(self, Side::Right | Side::Left)
    }
}

/// What a reading rests on (`pocusd calibrate --json`'s `evidence`, the viewer's calibration
/// row): the checks a comb of ticks must pass before its scale is used.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RulerEvidence {
    pub side: Side,
    /// Ticks in the comb.
    pub ticks: usize,
    /// Marks in the comb's band that were not straight ticks (focal-zone arrows, hourglasses),
    /// set aside before the fit.
    pub other_marks: usize,
    /// The comb's length over the image's side along it.
    pub extent_fraction: f64,
    /// Distance from the image's start edge (the top for a depth scale; the nearer of left and
    /// right for a width scale) to the nearest major tick position of the comb, pixels.
    pub zero_offset_px: f64,
    /// The image's extent along the ruler in mm at this scale (the depth, for a depth scale).
    pub implied_extent_mm: f64,
    /// The width scale under or above the image, where one was read: its mm per pixel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_check_mm_per_px: Option<f64>,
}

impl RulerEvidence {
    /// The evidence in words, for the viewer and `pocusd calibrate`.
    pub fn words(&self) -> String {
        let mut s =
            format!(
            "{} ticks over {:.0} % of the image {}, zero {:.1} px from its {} edge, {} {:.1} mm",
            self.ticks,
            100.0 * self.extent_fraction,
            if self.side.is_vertical() { "height" } else { "width" },
            self.zero_offset_px,
            if self.side.is_vertical() { "top" } else { "side" },
            if self.side.is_vertical() { "depth" } else { "width" },
            self.implied_extent_mm,
        );
        if self.other_marks > 0 {
            s += &format!(", {} other marks set aside", self.other_marks);
        }
        if let Some(c) = self.cross_check_mm_per_px {
            // Said as read: on a refusal for disagreement this is the disagreeing scale.
            s += &format!(", width scale under the image {c:.5} mm/px");
        }
        s
    }
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
    /// What the reading was accepted on (published under its own key).
    #[serde(skip)]
    pub evidence: RulerEvidence,
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
    #[error("the only comb of evenly spaced marks spans {extent_px:.0} px, under {MIN_EXTENT_PERCENT} % of the image side ({side_px} px; {MIN_EXTENT_PERCENT_3} % for three ticks): not a ruler")]
    Short { extent_px: f64, side_px: usize },
    #[error("a comb of {ticks} ticks every {spacing_px:.1} px does not start at the image's edge (its nearest major tick is {offset_px:.1} px from it): not the image's scale")]
    NotAtZero {
        ticks: usize,
        spacing_px: f64,
        offset_px: f64,
    },
    #[error("a comb of {ticks} ticks every {spacing_px:.1} px implies an image {extent_mm:.1} mm {what}, not one a scanner shows ({MIN_EXTENT_MM} to {MAX_EXTENT_MM} mm)")]
    ImplausibleExtent {
        ticks: usize,
        spacing_px: f64,
        extent_mm: f64,
        what: &'static str,
    },
    #[error("the ruler's {ticks} ticks every {spacing_px:.1} px differ in length without a regular period of longer ones: which ticks are the major ones is unclear")]
    Ambiguous { ticks: usize, spacing_px: f64 },
    #[error("the depth scale ({depth_mm_per_px:.5} mm/px) and the width scale under the image ({width_mm_per_px:.5} mm/px) disagree by more than {CROSS_CHECK_PERCENT} %")]
    CrossCheck {
        depth_mm_per_px: f64,
        width_mm_per_px: f64,
    },
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
            min_ticks: 3,
            max_residual_fraction: 0.04,
        }
    }
}

/// Fewest ticks a comb must have of the positions between its first and last (the rest may be
/// hidden by markers or labels).
const MIN_FILL: f64 = 0.6;

/// Closest tick spacing considered, pixels (finer combs are image texture or dotted lines).
const MIN_SPACING_PX: f64 = 6.0;

/// A ruler spans at least this share of the image's side (a depth scale runs from the skin line
/// to the image's bottom).
const MIN_EXTENT_PERCENT: u32 = 60;

/// A comb of only three ticks (a 1-per-cm ruler on a 2 to 3 cm image: 67 to 100 %) must span
/// this share.
const MIN_EXTENT_PERCENT_3: u32 = 65;

/// The zero of the scale may lie this far from the image's edge: a fraction of the major
/// spacing, at least `ZERO_MIN_PX` (the image region's edge is found to a pixel or two).
const ZERO_FRACTION: f64 = 0.12;
const ZERO_MIN_PX: f64 = 5.0;

/// The extents a scanner shows, mm (depth settings run from about 1.5 to 30 cm).
const MIN_EXTENT_MM: u32 = 15;
const MAX_EXTENT_MM: u32 = 300;

/// A depth scale and a width scale must agree this closely, percent.
const CROSS_CHECK_PERCENT: u32 = 2;

/// Marks brighter than their line's median by this many grey levels are part of a mark.
const BRIGHT: i32 = 24;

/// Lines per band the strips are searched in, and the step between bands.
const BAND: usize = 6;

/// One tick: its sub-pixel centre along the strip (pixel centres at `i + 0.5`), its strength and
/// its run across the strip (first and last pixel).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tick {
    centre: f64,
    strength: f64,
    span: (usize, usize),
}

/// One searched strip: where, which way, and each pixel's excess over its cross line's median,
/// computed once in the frame's own row order.
#[derive(Debug, Default)]
struct Strip {
    rect: Rect,
    vertical: bool,
    /// The strip's pixels minus their cross line's median, row by row as in the frame.
    excess: Vec<i16>,
    /// Per cross line: how many of its pixels are bright (lines without any are skipped).
    lit: Vec<u32>,
    /// Per cross line: a histogram of its pixels (vertical strips: one per column).
    hist: Vec<u32>,
    medians: Vec<i16>,
}

impl Strip {
    fn along(&self) -> usize {
        if self.vertical {
            self.rect.h
        } else {
            self.rect.w
        }
    }

    fn across(&self) -> usize {
        if self.vertical {
            self.rect.w
        } else {
            self.rect.h
        }
    }

    /// Where the pixel at `t` along and `u` across is in `excess`.
    fn index(&self, t: usize, u: usize) -> usize {
        if self.vertical {
            t * self.rect.w + u
        } else {
            u * self.rect.w + t
        }
    }

    /// The pixel at `t` along and `u` across, above its cross line's median.
    fn excess(&self, t: usize, u: usize) -> i32 {
        i32::from(self.excess[self.index(t, u)])
    }

    fn bright(&self, t: usize, u: usize) -> bool {
        self.excess(t, u) > BRIGHT
    }

    /// Each cross line's median along the strip (histograms: linear in the strip's size) and
    /// every pixel's excess over it.
    fn measure(&mut self, frame: &GrayView<'_>) {
        let (along, across) = (self.along(), self.across());
        let r = self.rect;
        self.hist.clear();
        self.hist.resize(across * 256, 0);
        for y in 0..r.h {
            let row = &frame.row(r.y + y)[r.x..r.x + r.w];
            if self.vertical {
                for (u, &p) in row.iter().enumerate() {
                    self.hist[u * 256 + usize::from(p)] += 1;
                }
            } else {
                let h = &mut self.hist[y * 256..(y + 1) * 256];
                for &p in row {
                    h[usize::from(p)] += 1;
                }
            }
        }
        self.medians.clear();
        let half = along as u32 / 2;
        for u in 0..across {
            let mut seen = 0;
            let mut m = 0i16;
            for (v, &n) in self.hist[u * 256..(u + 1) * 256].iter().enumerate() {
                seen += n;
                if seen > half {
                    m = v as i16;
                    break;
                }
            }
            self.medians.push(m);
        }
        self.excess.clear();
        self.excess.resize(r.w * r.h, 0);
        self.lit.clear();
        self.lit.resize(across, 0);
        for y in 0..r.h {
            let row = &frame.row(r.y + y)[r.x..r.x + r.w];
            let out = &mut self.excess[y * r.w..(y + 1) * r.w];
            if self.vertical {
                for ((e, &p), (&m, lit)) in out
                    .iter_mut()
                    .zip(row)
                    .zip(self.medians.iter().zip(self.lit.iter_mut()))
                {
                    *e = i16::from(p) - m;
                    *lit += u32::from(i32::from(*e) > BRIGHT);
                }
            } else {
                let m = self.medians[y];
                let mut lit = 0;
                for (e, &p) in out.iter_mut().zip(row) {
                    *e = i16::from(p) - m;
                    lit += u32::from(i32::from(*e) > BRIGHT);
                }
                self.lit[y] = lit;
            }
        }
    }
}

/// The detector; owns its scratch buffers.
#[derive(Debug, Default)]
pub struct RulerDetector {
    cfg: RulerConfig,
    profile: Vec<f64>,
    strip: Strip,
    last_evidence: Option<RulerEvidence>,
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

    /// The evidence of the last [`detect`](Self::detect): of the accepted reading, or of the
    /// most ruler-like comb refused (`None` when no comb was found at all).
    pub fn last_evidence(&self) -> Option<RulerEvidence> {
        self.last_evidence
    }

    /// Finds the image's scale in the margins around `image` (the ultrasound region of `frame`):
    /// a depth scale on either side, checked against a width scale above or under the image
    /// where there is one; a width scale alone when there is no depth scale.
    pub fn detect(&mut self, frame: GrayView<'_>, image: Rect) -> Result<RulerFit, RulerError> {
        self.last_evidence = None;
        let (fw, fh) = (frame.width(), frame.height());
        // A little beyond the image region's ends (found to a few pixels): the zero tick and
        // one at the last centimetre lie on them.
        let pad = (image.h / 50).max(3);
        let y0 = image.y.saturating_sub(pad);
        let y1 = (image.y + image.h + pad).min(fh);
        let x0 = image.x.saturating_sub(pad);
        let x1 = (image.x + image.w + pad).min(fw);
        let right = (image.x + image.w).min(fw);
        let bottom = (image.y + image.h).min(fh);
        // Where a strip may give a reading: any (a margin), or only a confirmation of the depth
        // scale (the image region's last lines, where a width scale found inside the region's
        // edge sits; image texture there could fake a comb, so a reading there is only taken
        // when it agrees).
        #[derive(PartialEq)]
        enum Use {
            Reading,
            Confirmation,
        }
        let inset = (image.h / 40).max(4).min(image.h);
        let strips = [
            (
                Side::Right,
                rect(right, y0, fw - right, y1 - y0),
                true,
                Use::Reading,
            ),
            (
                Side::Left,
                rect(0, y0, image.x, y1 - y0),
                true,
                Use::Reading,
            ),
            (
                Side::Bottom,
                rect(x0, bottom, x1 - x0, fh - bottom),
                false,
                Use::Reading,
            ),
            (
                Side::Top,
                rect(x0, 0, x1 - x0, image.y),
                false,
                Use::Reading,
            ),
            (
                Side::Bottom,
                rect(x0, bottom - inset, x1 - x0, inset),
                false,
                Use::Confirmation,
            ),
        ];
        let mut depth: Option<Result<RulerFit, RulerError>> = None;
        let mut width: Option<Result<RulerFit, RulerError>> = None;
        let mut confirmation: Option<RulerFit> = None;
        let mut any_strip = false;
        for (side, rect, vertical, usage) in strips {
            if rect.w < 3 || rect.h < 3 {
                continue;
            }
            if usage == Use::Confirmation && !matches!(depth, Some(Ok(_))) {
                continue;
            }
            any_strip |= usage == Use::Reading;
            self.strip.rect = rect;
            self.strip.vertical = vertical;
            self.strip.measure(&frame);
            let evidence = self.last_evidence;
            let r = self.search_strip(image, side);
            if usage == Use::Confirmation {
                confirmation = r.ok();
                self.last_evidence = evidence;
                continue;
            }
            let slot = if vertical { &mut depth } else { &mut width };
            *slot = Some(match slot.take() {
                None => r,
                Some(prev) => better(prev, r),
            });
        }
        if !any_strip {
            return Err(RulerError::NoStrip);
        }
        let out = match (depth, width) {
            (Some(Ok(d)), w) => {
                let mut fit = d;
                let agrees = |w: &RulerFit| {
                    (d.mm_per_px - w.mm_per_px).abs()
                        <= f64::from(CROSS_CHECK_PERCENT) / 100.0 * d.mm_per_px
                };
                if let Some(c) = confirmation.filter(agrees) {
                    fit.evidence.cross_check_mm_per_px = Some(c.mm_per_px);
                }
                if let Some(Ok(w)) = w {
                    let (a, b) = (d.mm_per_px, w.mm_per_px);
                    fit.evidence.cross_check_mm_per_px = Some(b);
                    if (a - b).abs() > f64::from(CROSS_CHECK_PERCENT) / 100.0 * a {
                        self.last_evidence = Some(fit.evidence);
                        return Err(RulerError::CrossCheck {
                            depth_mm_per_px: a,
                            width_mm_per_px: b,
                        });
                    }
                }
                Ok(fit)
            }
            (_, Some(Ok(w))) => Ok(w),
            (Some(Err(a)), Some(Err(b))) => Err(worse_of(a, b)),
            (Some(Err(e)), None) | (None, Some(Err(e))) => Err(e),
            (None, None) => Err(RulerError::NoStrip),
        };
        if let Ok(f) = &out {
            self.last_evidence = Some(f.evidence);
        }
        out
    }

    /// The best comb of the current strip that passes the checks, or the most ruler-like
    /// refusal.
    fn search_strip(&mut self, image: Rect, side: Side) -> Result<RulerFit, RulerError> {
        let across = self.strip.across();
        let mut best: Option<Result<RulerFit, RulerError>> = None;
        let mut u0 = 0;
        let mut last_ticks: Vec<Tick> = Vec::new();
        loop {
            let band = (u0, (u0 + BAND).min(across));
            let (ticks, other_marks) = self.ticks(band);
            // Neighbouring bands over the same ticks give the same comb.
            let same = ticks.len() == last_ticks.len()
                && ticks
                    .iter()
                    .zip(&last_ticks)
                    .all(|(a, b)| (a.centre - b.centre).abs() < 0.01 && a.span == b.span);
            if !same && !ticks.is_empty() {
                let side_px = if side.is_vertical() { image.h } else { image.w };
                let r = fit(&ticks, &self.cfg, side, side_px).and_then(|(fit, origin, spacing)| {
                    self.check(image, fit, origin, spacing, other_marks)
                });
                best = Some(match best.take() {
                    None => r,
                    Some(prev) => better(prev, r),
                });
            }
            last_ticks = ticks;
            if band.1 >= across {
                break;
            }
            u0 += BAND / 2;
        }
        best.unwrap_or(Err(RulerError::TooFewTicks {
            found: 0,
            min: self.cfg.min_ticks.max(3),
        }))
    }

    /// The independent checks a comb must pass, with the evidence they looked at.
    fn check(
        &mut self,
        image: Rect,
        mut fit: RulerFit,
        origin: f64,
        major_spacing: f64,
        other_marks: usize,
    ) -> Result<RulerFit, RulerError> {
        let vertical = fit.side.is_vertical();
        let s = &self.strip;
        let side_px = if vertical { image.h } else { image.w };
        // Positions along the strip are relative to its start; the image's edges in the same
        // coordinates.
        let start = if vertical { s.rect.y } else { s.rect.x } as f64;
        let o = origin + start;
        let edges: &[f64] = if vertical {
            &[image.y as f64]
        } else {
            &[image.x as f64, (image.x + image.w) as f64]
        };
        let zero_offset_px = edges
            .iter()
            .map(|&e| {
                let k = ((e - o) / major_spacing).round();
                (e - (o + k * major_spacing)).abs()
            })
            .fold(f64::INFINITY, f64::min);
        let evidence = RulerEvidence {
            side: fit.side,
            ticks: fit.ticks,
            other_marks,
            extent_fraction: fit.extent_px / side_px.max(1) as f64,
            zero_offset_px,
            implied_extent_mm: side_px as f64 * fit.mm_per_px,
            cross_check_mm_per_px: None,
        };
        fit.evidence = evidence;
        if self.last_evidence.is_none_or(|e| e.ticks <= evidence.ticks) {
            self.last_evidence = Some(evidence);
        }
        // Three ticks are a comb only when they span nearly all of the side.
        let min_extent = if fit.ticks < 4 {
            f64::from(MIN_EXTENT_PERCENT_3) / 100.0
        } else {
            f64::from(MIN_EXTENT_PERCENT) / 100.0
        };
        if evidence.extent_fraction < min_extent {
            return Err(RulerError::Short {
                extent_px: fit.extent_px,
                side_px,
            });
        }
        if zero_offset_px > (ZERO_FRACTION * major_spacing).max(ZERO_MIN_PX) {
            return Err(RulerError::NotAtZero {
                ticks: fit.ticks,
                spacing_px: fit.tick_spacing_px,
                offset_px: zero_offset_px,
            });
        }
        let mm = evidence.implied_extent_mm;
        if !(f64::from(MIN_EXTENT_MM)..=f64::from(MAX_EXTENT_MM)).contains(&mm) {
            return Err(RulerError::ImplausibleExtent {
                ticks: fit.ticks,
                spacing_px: fit.tick_spacing_px,
                extent_mm: mm,
                what: if vertical { "deep" } else { "wide" },
            });
        }
        Ok(fit)
    }

    /// The run of a mark centred at `centre` along the strip (the longest run of bright pixels
    /// across the strip on its line or lines: first and last) and whether it is a straight tick: the
    /// lines just beyond its thickness are dark along its run (an arrow's, a triangle's or an
    /// hourglass's outline spreads there).
    fn tick_shape(&self, centre: f64) -> ((usize, usize), bool) {
        let s = &self.strip;
        let (along, across) = (s.along(), s.across());
        let lines = [(centre - 0.5).floor(), (centre - 0.5).ceil()];
        let (mut best, mut run_at) = (0, (0usize, 0usize, 0usize));
        for l in lines {
            if l < 0.0 || l as usize >= along {
                continue;
            }
            let t = l as usize;
            let mut run = 0;
            for u in 0..across {
                if s.bright(t, u) {
                    run += 1;
                    if run > best {
                        best = run;
                        run_at = (t, u + 1 - run, u);
                    }
                } else {
                    run = 0;
                }
            }
        }
        let (t, u0, u1) = run_at;
        // A run across the whole strip, or over half of it and 40 px, is an edge or a bar (a
        // header over the image, a margin round the screen), not a tick.
        if best == 0 || (u0 == 0 && u1 + 1 == across) || (best >= 40 && 2 * best >= across) {
            return ((u0, u1), false);
        }
        // The mark's thickness at the middle of its run.
        let um = (u0 + u1) / 2;
        let mut lo = t;
        while lo > 0 && t - lo < 8 && s.bright(lo - 1, um) {
            lo -= 1;
        }
        let mut hi = t;
        while hi + 1 < along && hi - t < 8 && s.bright(hi + 1, um) {
            hi += 1;
        }
        if hi - lo + 1 > 6 {
            return ((u0, u1), false);
        }
        // Two lines beyond the thickness on each side, over the run widened by two pixels: a
        // tick has nothing there (a digit beside it sits clear of its run); an arrow's, a
        // triangle's or an hourglass's outline spreads there, as a digit's strokes do under or
        // over its bars.
        let (a, b) = (u0.saturating_sub(2), (u1 + 2).min(across - 1));
        let count = |line: Option<usize>| -> usize {
            line.filter(|&l| l < along)
                .map_or(0, |line| (a..=b).filter(|&u| s.bright(line, u)).count())
        };
        let above = count(lo.checked_sub(2)) + count(lo.checked_sub(3));
        let below = count(Some(hi + 2)) + count(Some(hi + 3));
        let straight = above == 0 && below == 0;
        ((u0, u1), straight)
    }

    /// Marks of lines `band` of the current strip: the straight ticks, and how many other
    /// marks were set aside. A band whose profile is busy over more than a third of its length
    /// (image texture, text) has no ticks.
    fn ticks(&mut self, band: (usize, usize)) -> (Vec<Tick>, usize) {
        let along = self.strip.along();
        self.profile.clear();
        self.profile.resize(along, 0.0);
        let st = &self.strip;
        let lit: Vec<usize> = (band.0..band.1).filter(|&u| st.lit[u] > 0).collect();
        if lit.is_empty() {
            return (Vec::new(), 0);
        }
        if st.vertical {
            // Rows of the frame: the band's few columns of each.
            let w = st.rect.w;
            for (t, p) in self.profile.iter_mut().enumerate() {
                let row = &st.excess[t * w..(t + 1) * w];
                for &u in &lit {
                    let e = i32::from(row[u]);
                    if e > BRIGHT {
                        *p += f64::from(e);
                    }
                }
            }
        } else {
            for &u in &lit {
                let line = &st.excess[u * along..(u + 1) * along];
                for (p, &e) in self.profile.iter_mut().zip(line) {
                    if i32::from(e) > BRIGHT {
                        *p += f64::from(e);
                    }
                }
            }
        }
        let busy = self.profile.iter().filter(|&&p| p > 0.0).count();
        if busy * 3 > along {
            return (Vec::new(), 0);
        }
        let peak = self.profile.iter().cloned().fold(0.0, f64::max);
        if peak <= 0.0 {
            return (Vec::new(), 0);
        }
        let threshold = peak * 0.25;
        let mut out = Vec::new();
        let mut other = 0;
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
            for k in a..b {
                s += self.profile[k];
                st += self.profile[k] * (k as f64 + 0.5);
            }
            // Runs wider than a tick (text, a bar) are not ticks.
            if t - start > 6 {
                continue;
            }
            let centre = st / s;
            // A band sees only part of each mark: its length and shape across the whole strip,
            // so major and minor ticks can be told apart and other marks set aside.
            let (span, straight) = self.tick_shape(centre);
            if straight {
                out.push(Tick {
                    centre,
                    strength: s,
                    span,
                });
            } else {
                other += 1;
            }
        }
        (out, other)
    }
}

fn rect(x: usize, y: usize, w: usize, h: usize) -> Rect {
    Rect { x, y, w, h }
}

/// The better of two outcomes: an accepted comb over a refusal; of two combs the one with more
/// ticks (then the smaller residual); of two refusals the more ruler-like.
fn better(
    a: Result<RulerFit, RulerError>,
    b: Result<RulerFit, RulerError>,
) -> Result<RulerFit, RulerError> {
    match (a, b) {
        (Ok(x), Ok(y)) => Ok(
            if y.ticks > x.ticks || (y.ticks == x.ticks && y.residual_px < x.residual_px) {
                y
            } else {
                x
            },
        ),
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
        (Err(x), Err(y)) => Err(worse_of(x, y)),
    }
}

fn worse_of(a: RulerError, b: RulerError) -> RulerError {
    // Report the most ruler-like failure: a comb refused by the evidence (the one with more
    // ticks), then a poor fit, then too few ticks (the most found).
    let rank = |e: &RulerError| match *e {
        RulerError::CrossCheck { .. } => (4, 0),
        RulerError::NotAtZero { ticks, .. }
        | RulerError::ImplausibleExtent { ticks, .. }
        | RulerError::Ambiguous { ticks, .. } => (3, ticks),
        RulerError::Short { .. } => (3, 0),
        RulerError::PoorFit { .. } => (2, 0),
        RulerError::TooFewTicks { found, .. } => (1, found),
        RulerError::NoStrip => (0, 0),
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
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

/// The largest comb of evenly spaced ticks, its spacing and the major ticks' period; with the
/// position along the strip of a major tick of the comb and the major spacing.
/// `side_px`: the image's side along the ruler (to rule out a reading of landmark ticks that
/// would imply an image no scanner shows).
fn fit(
    ticks: &[Tick],
    cfg: &RulerConfig,
    side: Side,
    side_px: usize,
) -> Result<(RulerFit, f64, f64), RulerError> {
    let min = cfg.min_ticks.max(3);
    if ticks.len() < min {
        return Err(RulerError::TooFewTicks {
            found: ticks.len(),
            min,
        });
    }
    // Candidates: each pair of neighbouring ticks, anchored at the first at their distance (a
    // comb that has most of its ticks has two neighbours among them); keep the comb with most
    // inliers. A pair already in a comb of about its spacing gives that comb again.
    let mut best: Option<(usize, f64, f64, f64, Vec<(usize, i64)>)> = None; // (n, a, d, rms, members)
    let mut found: Vec<(f64, Vec<bool>)> = Vec::new();
    for (pi, w) in ticks.windows(2).enumerate() {
        let d0 = w[1].centre - w[0].centre;
        if d0 < MIN_SPACING_PX
            || found
                .iter()
                .any(|(d, m)| (d - d0).abs() <= 0.01 * d && m[pi] && m[pi + 1])
        {
            continue;
        }
        {
            let anchor = &w[0];
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
            let mut m = vec![false; ticks.len()];
            for &(i, _) in &members {
                m[i] = true;
            }
            found.push((d, m));
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
    let Some((n, a, d, rms, members)) = best else {
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
    // Major ticks: by their index in the comb, the ticks fall into two groups of different
    // shape on a regular period (their runs across the strip start or end elsewhere), the longer
    // group the majors; or all ticks are alike. Anything else is refused: a wrong period would be
    // a wrong scale.
    let spans: Vec<(i64, (usize, usize))> =
        members.iter().map(|&(i, k)| (k, ticks[i].span)).collect();
    let ambiguous = RulerError::Ambiguous {
        ticks: n,
        spacing_px: d,
    };
    let (major_every, phase) = match majors(&spans) {
        Some(Majors::Period(g, phase)) => (g, phase),
        Some(Majors::Alike) => (1, 0),
        // One or two longer ticks among alike ones (the zero, a 5 cm mark): all ticks are
        // `spacing_mm` apart, unless the longer ones are the majors, which would make the image
        // `period` times shallower. Only when that is no image a scanner shows is the reading
        // safe.
        Some(Majors::Landmarks { period }) => {
            let shallower_mm = side_px as f64 * cfg.spacing_mm / (d * period as f64);
            if shallower_mm >= f64::from(MIN_EXTENT_MM) {
                return Err(ambiguous);
            }
            (1, 0)
        }
        None => return Err(ambiguous),
    };
    let (kmin, kmax) = members
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &(_, k)| (a.min(k), b.max(k)));
    let fit = RulerFit {
        mm_per_px: cfg.spacing_mm / (d * major_every as f64),
        tick_spacing_px: d,
        major_every,
        ticks: n,
        residual_px: rms,
        extent_px: d * (kmax - kmin) as f64,
        side,
        evidence: RulerEvidence {
            side,
            ticks: n,
            other_marks: 0,
            extent_fraction: 0.0,
            zero_offset_px: f64::NAN,
            implied_extent_mm: f64::NAN,
            cross_check_mm_per_px: None,
        },
    };
    Ok((fit, a + phase as f64 * d, d * major_every as f64))
}

/// Ticks of one kind start and end within this many pixels of each other across the strip.
const ALIKE_PX: usize = 2;

/// The ranges of the runs' starts and ends of `spans`: (first start, last start, first end,
/// last end).
fn span_ranges<'a>(
    spans: impl Iterator<Item = &'a (i64, (usize, usize))>,
) -> (usize, usize, usize, usize) {
    spans.fold(
        (usize::MAX, 0, usize::MAX, 0),
        |(a0, a1, b0, b1), &(_, (u0, u1))| (a0.min(u0), a1.max(u0), b0.min(u1), b1.max(u1)),
    )
}

fn alike(r: (usize, usize, usize, usize)) -> bool {
    r.1 - r.0 <= ALIKE_PX && r.3 - r.2 <= ALIKE_PX
}

/// How a comb's ticks divide into majors and minors.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Majors {
    /// Every `.0`-th tick from index `.1` is a major (longer than the rest).
    Period(usize, i64),
    /// All ticks alike.
    Alike,
    /// At least four alike ticks and one or two longer ones; if the longer ones were majors,
    /// their period could be as short as `period` (the smallest divisor of their distance, or 2
    /// for a single one).
    Landmarks { period: usize },
}

/// The major ticks from the ticks' runs across the strip `(index, (start, end))`: at least three
/// longer ticks on a regular period with the rest alike; all alike; one or two longer among
/// alike ones; `None` when the ticks differ otherwise.
fn majors(spans: &[(i64, (usize, usize))]) -> Option<Majors> {
    for g in 2..=10i64 {
        for phase in 0..g {
            let on = |k: i64| (k - phase).rem_euclid(g) == 0;
            let count = spans.iter().filter(|s| on(s.0)).count();
            // At least three majors seen: two (one hidden between them under a focal mark, or
            // a 5 cm landmark) also fit a longer period, or landmark ticks among alike ones.
            if count < 3 || count == spans.len() {
                continue;
            }
            let a = span_ranges(spans.iter().filter(|s| on(s.0)));
            let b = span_ranges(spans.iter().filter(|s| !on(s.0)));
            let disjoint = |lo0: usize, hi0: usize, lo1: usize, hi1: usize| hi0 < lo1 || hi1 < lo0;
            let separated = disjoint(a.0, a.1, b.0, b.1) || disjoint(a.2, a.3, b.2, b.3);
            if !(alike(a) && alike(b) && separated) {
                continue;
            }
            let len = |r: (usize, usize, usize, usize)| {
                (r.2 + r.3) as f64 / 2.0 - (r.0 + r.1) as f64 / 2.0
            };
            return if len(a) > len(b) + 0.5 {
                Some(Majors::Period(g as usize, phase))
            } else if g == 2 && len(b) > len(a) + 0.5 {
                Some(Majors::Period(2, (phase + 1) % 2))
            } else {
                // Two kinds of tick, neither longer: which are the majors is unclear.
                None
            };
        }
    }
    if alike(span_ranges(spans.iter())) {
        return Some(Majors::Alike);
    }
    // The ticks alike with the median one, and the others.
    let mut u0s: Vec<usize> = spans.iter().map(|s| s.1 .0).collect();
    let mut u1s: Vec<usize> = spans.iter().map(|s| s.1 .1).collect();
    u0s.sort_unstable();
    u1s.sort_unstable();
    let (m0, m1) = (u0s[u0s.len() / 2], u1s[u1s.len() / 2]);
    let near = |s: &&(i64, (usize, usize))| {
        s.1 .0.abs_diff(m0) <= ALIKE_PX && s.1 .1.abs_diff(m1) <= ALIKE_PX
    };
    let common: Vec<_> = spans.iter().filter(near).collect();
    let odd: Vec<_> = spans.iter().filter(|s| !near(s)).collect();
    let common_len = span_ranges(common.iter().copied());
    let len = |u0: usize, u1: usize| u1 as f64 - u0 as f64;
    let base = len(
        (common_len.0 + common_len.1) / 2,
        (common_len.2 + common_len.3) / 2,
    );
    let longer = odd.iter().all(|s| len(s.1 .0, s.1 .1) > base + 0.5);
    match odd.as_slice() {
        [_] | [_, _] if common.len() >= 4 && alike(common_len) && longer => {
            let period = if let [a, b] = odd.as_slice() {
                let d = a.0.abs_diff(b.0) as usize;
                (2..=d.max(2)).find(|p| d % p == 0).unwrap_or(2)
            } else {
                2
            };
            Some(Majors::Landmarks {
                period: period.max(2),
            })
        }
        _ => None,
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
        /// Any spacing, noise and size, the zero within 2 px of the image's top edge: the
        /// spacing within 0.5 %, majors told apart.
        #[test]
        fn finds_any_regular_ruler(w in 200usize..900, h in 200usize..800, frac in 0.06f64..0.2,
                                   offset in 0.0f64..2.0, noise in 0.0f64..12.0, seed in any::<u64>()) {
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

    /// One phantom frame of `layout` through the ROI detector and the ruler, as the daemon
    /// looks: the reading (or refusal) and the analytic scale.
    fn read_layout(
        layout: crate::synth::Layout,
        mirrored: bool,
        (w, h): (usize, usize),
        depth_mm: f64,
        seed: u64,
    ) -> (Result<RulerFit, RulerError>, f64) {
        use crate::preprocess::roi::RoiDetector;
        use crate::synth::{Phantom, PhantomConfig};
        let cfg = PhantomConfig {
            width: w,
            height: h,
            furniture: true,
            layout,
            mirrored,
            seed,
            depth_mm,
            ..Default::default()
        };
        let want = Phantom::new(cfg).mm_per_px();
        let s = crate::synth::sample(cfg, seed);
        let view = s.image.view().unwrap();
        let roi = RoiDetector::default().detect(view);
        (
            RulerDetector::new(RulerConfig::default()).detect(view, roi),
            want,
        )
    }

    proptest! {
        // 32 cases per layout in the test command (the debug build is slow on large frames);
        // `PROPTEST_CASES` runs more.
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Every vendor layout, mirrored or not, at depths of 20 to 80 mm and frames of 640x480
        /// to 1920x1080, read with the default 10 mm spacing: found, within 0.5 % of the
        /// analytic scale.
        #[test]
        fn every_layout_is_read(layout in 0usize..4, mirrored in any::<bool>(),
                                w in 640usize..=1920, h in 480usize..=1080,
                                depth_mm in 20.0f64..80.0, seed in 0u64..1000) {
            // Screens are landscape.
            let h = h.min(w * 3 / 4);
            let layout = crate::synth::Layout::ALL[layout];
            let (found, want) = read_layout(layout, mirrored, (w, h), depth_mm, seed);
            let fit = found.map_err(|e| TestCaseError::fail(format!(
                "{layout:?} mirrored {mirrored} {w}x{h} depth {depth_mm:.1}: {e}")))?;
            let rel = (fit.mm_per_px - want).abs() / want;
            prop_assert!(rel < 0.005, "{:?} mirrored {} {}x{} depth {:.1}: {:?}, want {}",
                layout, mirrored, w, h, depth_mm, fit, want);
            let expected_side = match (layout, mirrored) {
                (crate::synth::Layout::Telemed, false) => Side::Left,
                (crate::synth::Layout::Telemed, true) => Side::Right,
                (_, false) => Side::Right,
                (_, true) => Side::Left,
            };
            prop_assert_eq!(fit.side, expected_side);
        }
    }

    /// What each layout looks like to the detector, checked by name: the Philips focal-zone
    /// marks (evenly spaced `<`, what an earlier detector read as a scale 2.3 times too large)
    /// are not read, the GE hourglass and digits are not ticks, the GE majors every fourth tick.
    #[test]
    fn each_layout_reads_its_own_ruler() {
        use crate::synth::Layout;
        for (layout, major_every) in [
            (Layout::Generic, 2),
            (Layout::Ge, 4),
            (Layout::Telemed, 1),
            (Layout::Philips, 1),
        ] {
            for mirrored in [false, true] {
                let (fit, want) = read_layout(layout, mirrored, (800, 600), 40.0, 1);
                let fit = fit.unwrap_or_else(|e| panic!("{layout:?} {mirrored}: {e}"));
                assert!(
                    (fit.mm_per_px - want).abs() < 0.005 * want,
                    "{layout:?}: {fit:?}"
                );
                assert_eq!(fit.major_every, major_every, "{layout:?}: {fit:?}");
                let ev = fit.evidence;
                assert!(ev.extent_fraction > 0.9, "{layout:?}: {ev:?}");
                assert!(ev.zero_offset_px < 5.0, "{layout:?}: {ev:?}");
                assert!(
                    (ev.implied_extent_mm - 40.0).abs() < 1.0,
                    "{layout:?}: {ev:?}"
                );
                if layout == Layout::Ge {
                    // 17 ticks from 0 to 40 mm, two under the hourglass.
                    assert_eq!(ev.ticks, 15, "{ev:?}");
                }
            }
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
    fn a_comb_that_does_not_start_at_the_image_top_is_refused() {
        // Evenly spaced marks half a spacing below the top edge (focal-zone marks, a scale of
        // something else): not the image's depth scale.
        let (img, image) = frame_with_ruler(640, 480, 40.0, 20.0, 2, 2.0, 4);
        let mut det = RulerDetector::new(RulerConfig::default());
        let e = det.detect(img.view().unwrap(), image).unwrap_err();
        assert!(matches!(e, RulerError::NotAtZero { .. }), "{e}");
        let ev = det.last_evidence().expect("the refused comb's evidence");
        assert!(ev.zero_offset_px > 15.0, "{ev:?}");
        // The same comb from the top edge is read.
        let (img, image) = frame_with_ruler(640, 480, 40.0, 0.5, 2, 2.0, 4);
        let fit = det.detect(img.view().unwrap(), image).unwrap();
        assert!((fit.mm_per_px - 0.125).abs() < 0.001, "{fit:?}");
        assert!(fit.evidence.zero_offset_px < 1.0, "{:?}", fit.evidence);
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
