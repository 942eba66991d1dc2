//! Automatic region of interest: finds the ultrasound image inside a screen grab. Speckle makes the
//! image area textured everywhere, while the scanner's UI is flat colour with sparse marks (text,
//! logos, scales, colour bars). The frame is cut into 8x8 blocks; a block is textured when most of
//! its pixels differ from a neighbour; the region is the longest run of columns, then
//! of rows within them, in which most blocks are textured, refined to pixels at its edges.
//! `RoiDetector` owns its buffers; `RoiTracker` applies a mode per image or along a stream;
//! `RoiChoice` is the user's setting, resolved against the model's own policy (`pocusd.roi`). No
//! I/O; depends only on `frame` and the model's `RoiPolicy`.

use crate::frame::{GrayView, Rect};
use crate::model::RoiPolicy;

/// Block size in pixels.
const BLOCK: usize = 8;

/// Detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiConfig {
    /// Fraction of a block's pixels that differ from a neighbour, above which it is textured.
    pub texture_threshold: f32,
    /// Fraction of textured blocks a column or row needs to belong to the image.
    pub min_fill: f32,
    /// Smallest accepted region, as a fraction of the frame's width and height.
    pub min_side_fraction: f32,
}

impl Default for RoiConfig {
    fn default() -> Self {
        Self {
            texture_threshold: 0.5,
            min_fill: 0.5,
            min_side_fraction: 0.2,
        }
    }
}

/// The detector.
#[derive(Debug, Default)]
pub struct RoiDetector {
    cfg: RoiConfig,
    activity: Vec<f32>,
    textured: Vec<bool>,
    /// One line's changed-pixel flags (scratch).
    changed: Vec<u8>,
}

impl RoiDetector {
    /// A detector with `cfg`.
    pub fn new(cfg: RoiConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// The image area of `frame`, or the whole frame when no textured region stands out.
    pub fn detect(&mut self, frame: GrayView<'_>) -> Rect {
        let (w, h) = (frame.width(), frame.height());
        let full = Rect::full(w, h);
        let (bw, bh) = (w / BLOCK, h / BLOCK);
        if bw < 4 || bh < 4 {
            return full;
        }
        // Block activity: the fraction of pixels that differ from their right or lower neighbour.
        // Speckle changes almost everywhere, even where it is dark; screen colour never does, and
        // text, scales and logos change only along their edges.
        self.activity.clear();
        self.activity.resize(bw * bh, 0.0);
        self.changed.clear();
        self.changed.resize(w, 0);
        for by in 0..bh {
            for y in by * BLOCK..(by + 1) * BLOCK {
                let row = frame.row(y);
                let below = frame.row((y + 1).min(h - 1));
                // Per pixel: differs from its right or lower neighbour (the last column from
                // the one below only), in one pass the compiler vectorises.
                let changed = &mut self.changed;
                for ((c, pair), &b) in changed.iter_mut().zip(row.windows(2)).zip(below) {
                    *c = u8::from(pair[1] != pair[0] || b != pair[0]);
                }
                changed[w - 1] = u8::from(below[w - 1] != row[w - 1]);
                for bx in 0..bw {
                    let n: u32 = changed[bx * BLOCK..(bx + 1) * BLOCK]
                        .iter()
                        .map(|&c| u32::from(c))
                        .sum();
                    self.activity[by * bw + bx] += n as f32;
                }
            }
        }
        let norm = 1.0 / (BLOCK * BLOCK) as f32;
        self.textured.clear();
        self.textured.extend(
            self.activity
                .iter()
                .map(|&a| a * norm > self.cfg.texture_threshold),
        );
        let t = &self.textured;
        let fill = self.cfg.min_fill;
        // Columns, then rows within the chosen columns.
        let col_ok: Vec<bool> = (0..bw)
            .map(|bx| {
                (0..bh).filter(|&by| t[by * bw + bx]).count() as f32 >= fill * bh as f32 * 0.5
            })
            .collect();
        let (cx0, cx1) = longest_run(&col_ok);
        if cx1 <= cx0 {
            return full;
        }
        let ncols = (cx1 - cx0) as f32;
        let row_ok: Vec<bool> = (0..bh)
            .map(|by| (cx0..cx1).filter(|&bx| t[by * bw + bx]).count() as f32 >= fill * ncols)
            .collect();
        let (ry0, ry1) = longest_run(&row_ok);
        if ry1 <= ry0 {
            return full;
        }
        // Columns again, now judged within the chosen rows only.
        let nrows = (ry1 - ry0) as f32;
        let col_ok: Vec<bool> = (0..bw)
            .map(|bx| (ry0..ry1).filter(|&by| t[by * bw + bx]).count() as f32 >= fill * nrows)
            .collect();
        let (cx0, cx1) = longest_run(&col_ok);
        if cx1 <= cx0 {
            return full;
        }
        // Pixel edges: grow each side while the next pixel line is textured over the region.
        let (mut x0, mut x1, mut y0, mut y1) = (
            cx0 * BLOCK,
            (cx1 * BLOCK).min(w),
            ry0 * BLOCK,
            (ry1 * BLOCK).min(h),
        );
        let ui = screen_colour(frame);
        // A column belongs to the image when it changes along most of its length, or when it is
        // not mostly the screen's colour (dark, coarsely quantised image still counts); a vertical
        // UI line or a flat margin does not.
        let col_textured = |x: usize, y0: usize, y1: usize| -> bool {
            let len = y1 - y0;
            let changes = (y0..y1.saturating_sub(1))
                .filter(|&y| frame.row(y)[x] != frame.row(y + 1)[x])
                .count();
            let ui_px = (y0..y1).filter(|&y| frame.row(y)[x] == ui).count();
            changes > 0 && (changes * 2 >= len || ui_px * 10 < len * 9)
        };
        // Rows grow on a looser test: the near field just under the probe is often dark and, on
        // grabbers with few grey levels, nearly flat, yet it is image (and where the superficial
        // structures lie). A row stops the region only when it is mostly the screen's own colour
        // (the commonest value on the frame's outer edge) or never changes.
        let row_textured = |y: usize, x0: usize, x1: usize| -> bool {
            let r = &frame.row(y)[x0..x1];
            let changes = r.windows(2).filter(|p| p[0] != p[1]).count();
            let ui_px = r.iter().filter(|&&v| v == ui).count();
            changes > 0 && (changes * 10 >= r.len() || ui_px * 10 < r.len() * 9)
        };
        while x0 > 0 && col_textured(x0 - 1, y0, y1) {
            x0 -= 1;
        }
        while x1 < w && col_textured(x1, y0, y1) {
            x1 += 1;
        }
        // A few blank lines (a black separator, a dead line of the grabber) do not end the image.
        const GAP: usize = 6;
        while y0 > 0 && (1..=GAP.min(y0)).any(|k| row_textured(y0 - k, x0, x1)) {
            y0 -= 1;
        }
        while y1 < h && (0..GAP.min(h - y1)).any(|k| row_textured(y1 + k, x0, x1)) {
            y1 += 1;
        }
        let r = Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        };
        if (r.w as f32) < self.cfg.min_side_fraction * w as f32
            || (r.h as f32) < self.cfg.min_side_fraction * h as f32
        {
            return full;
        }
        r
    }
}

/// The commonest value on the outer edge of the frame: the screen's background colour.
fn screen_colour(frame: GrayView<'_>) -> u8 {
    let (w, h) = (frame.width(), frame.height());
    let mut hist = [0u32; 256];
    for &v in frame.row(0).iter().chain(frame.row(h - 1)) {
        hist[v as usize] += 1;
    }
    for y in 0..h {
        let r = frame.row(y);
        hist[r[0] as usize] += 1;
        hist[r[w - 1] as usize] += 1;
    }
    (0..256).max_by_key(|&v| hist[v]).unwrap_or(0) as u8
}

/// The longest run of `true`, as a half-open range.
fn longest_run(v: &[bool]) -> (usize, usize) {
    let (mut best, mut start) = ((0, 0), None);
    for (i, &b) in v.iter().chain(std::iter::once(&false)).enumerate() {
        match (b, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s > best.1 - best.0 {
                    best = (s, i);
                }
                start = None;
            }
            _ => {}
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, PhantomConfig};

    #[test]
    fn finds_the_phantom_inside_its_screen() {
        for seed in 0..5 {
            let s = synth::sample(
                PhantomConfig {
                    furniture: true,
                    seed,
                    ..Default::default()
                },
                seed,
            );
            let r = RoiDetector::new(RoiConfig::default()).detect(s.image.view().unwrap());
            let t = s.geometry.image;
            let d = |a: usize, b: usize| (a as i64 - b as i64).abs();
            assert!(
                d(r.x, t.x) <= 3
                    && d(r.y, t.y) <= 3
                    && d(r.x + r.w, t.x + t.w) <= 3
                    && d(r.y + r.h, t.y + t.h) <= 3,
                "seed {seed}: {r:?} vs {t:?}"
            );
        }
        // No furniture: the whole frame.
        let s = synth::sample(PhantomConfig::default(), 0);
        assert_eq!(
            RoiDetector::new(RoiConfig::default()).detect(s.image.view().unwrap()),
            Rect::full(640, 480)
        );
    }

    #[test]
    fn tracker_follows_size_changes_and_never_returns_a_region_outside_the_frame() {
        let grab = |w: usize, h: usize, seed: u64| {
            synth::sample(
                PhantomConfig {
                    width: w,
                    height: h,
                    furniture: true,
                    seed,
                    ..Default::default()
                },
                seed,
            )
        };
        for tracking in [Tracking::PerImage, Tracking::Stream { every: 30 }] {
            let mut t = RoiTracker::new(RoiMode::Auto, tracking);
            // Sizes that differ by a pixel or two (the region would overhang by one) and by a lot.
            for (w, h) in [(640, 480), (640, 479), (639, 478), (1024, 768), (640, 480)] {
                let s = grab(w, h, 3);
                let r = t.roi_for(s.image.view().unwrap());
                assert!(
                    r.x + r.w <= w && r.y + r.h <= h,
                    "{tracking:?} {w}x{h}: {r:?}"
                );
                let g = s.geometry.image;
                assert!(
                    r.x.abs_diff(g.x) <= 3 && (r.x + r.w).abs_diff(g.x + g.w) <= 3,
                    "{r:?} vs {g:?}"
                );
            }
        }
        // A fixed region larger than the frame is the whole frame.
        let mut t = RoiTracker::new(
            RoiMode::Fixed(Rect {
                x: 10,
                y: 10,
                w: 700,
                h: 400,
            }),
            Tracking::PerImage,
        );
        let s = grab(640, 480, 1);
        assert_eq!(t.roi_for(s.image.view().unwrap()), Rect::full(640, 480));
    }

    #[test]
    fn choice_resolves_against_the_model() {
        assert_eq!(RoiChoice::parse("model"), Some(RoiChoice::Model));
        let r = RoiChoice::Model.resolve(RoiPolicy::Auto);
        assert_eq!((r.mode, r.overrides_model()), (RoiMode::Auto, false));
        let r = RoiChoice::Explicit(RoiMode::Full).resolve(RoiPolicy::Auto);
        assert!(r.overrides_model());
        assert!(r.warning().unwrap().contains("trained with auto"));
        let r = RoiChoice::Explicit(RoiMode::Auto).resolve(RoiPolicy::Auto);
        assert!(!r.overrides_model() && r.warning().is_none());
        assert_eq!(RoiChoice::parse("1,2,3,4").unwrap().to_string(), "1,2,3,4");
    }

    #[test]
    fn runs() {
        assert_eq!(longest_run(&[false, true, true, false, true]), (1, 3));
        assert_eq!(longest_run(&[true, true, true]), (0, 3));
        assert_eq!(longest_run(&[false]), (0, 0));
    }
}

/// How the region of interest is chosen (`source.roi`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RoiMode {
    /// The whole frame.
    Full,
    /// A fixed rectangle.
    Fixed(Rect),
    /// Detected, and re-detected when the screen layout changes.
    Auto,
}

impl RoiMode {
    /// Parses "full", "auto" or "x,y,w,h".
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "full" => Some(RoiMode::Full),
            "auto" => Some(RoiMode::Auto),
            other => {
                let v: Vec<usize> = other
                    .split(',')
                    .map(|p| p.trim().parse().ok())
                    .collect::<Option<_>>()?;
                (v.len() == 4 && v[2] > 0 && v[3] > 0).then(|| {
                    RoiMode::Fixed(Rect {
                        x: v[0],
                        y: v[1],
                        w: v[2],
                        h: v[3],
                    })
                })
            }
        }
    }
}

impl From<RoiPolicy> for RoiMode {
    fn from(p: RoiPolicy) -> Self {
        match p {
            RoiPolicy::Full => RoiMode::Full,
            RoiPolicy::Auto => RoiMode::Auto,
        }
    }
}

impl std::fmt::Display for RoiMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoiMode::Full => f.write_str("full"),
            RoiMode::Auto => f.write_str("auto"),
            RoiMode::Fixed(r) => write!(f, "{},{},{},{}", r.x, r.y, r.w, r.h),
        }
    }
}

/// How the user chose the region of interest (`source.roi`, `--roi`): the model's own policy
/// (`model`, the default) or an explicit mode that overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RoiChoice {
    /// The policy in the model's metadata (`pocusd.roi`; the whole frame without the key).
    #[default]
    Model,
    /// An explicit choice; one that differs from the model's policy is reported.
    Explicit(RoiMode),
}

impl RoiChoice {
    /// Parses "model", "full" (or "none", training's spelling), "auto" or "x,y,w,h".
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "model" => Some(RoiChoice::Model),
            "none" => Some(RoiChoice::Explicit(RoiMode::Full)),
            other => RoiMode::parse(other).map(RoiChoice::Explicit),
        }
    }

    /// The mode to apply to a model trained with `policy`.
    pub fn resolve(self, policy: RoiPolicy) -> RoiResolution {
        match self {
            RoiChoice::Model => RoiResolution {
                mode: policy.into(),
                model: policy,
                explicit: false,
            },
            RoiChoice::Explicit(mode) => RoiResolution {
                mode,
                model: policy,
                explicit: true,
            },
        }
    }
}

impl std::fmt::Display for RoiChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoiChoice::Model => f.write_str("model"),
            RoiChoice::Explicit(m) => m.fmt(f),
        }
    }
}

/// The region-of-interest mode in force for one model, and whether it departs from the model's
/// contract.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiResolution {
    /// What is applied.
    pub mode: RoiMode,
    /// What the model was trained with.
    pub model: RoiPolicy,
    /// Chosen by the user (config or `--roi`) rather than taken from the model.
    pub explicit: bool,
}

impl RoiResolution {
    /// True when an explicit choice differs from the model's policy.
    pub fn overrides_model(&self) -> bool {
        self.explicit && self.mode != RoiMode::from(self.model)
    }

    /// The one-line warning for an override, `None` when the model's contract holds.
    pub fn warning(&self) -> Option<String> {
        self.overrides_model().then(|| {
            format!(
                "region of interest {} was chosen explicitly, but the model was trained with {} (pocusd.roi); \
                 its numbers may be off (remove --roi / [source] roi to use the model's policy)",
                self.mode,
                self.model.as_str()
            )
        })
    }
}

/// How often a tracker re-detects the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// Every image on its own (folders of images, `infer`, `eval`, training).
    PerImage,
    /// A stream: on the first frame, on a size change, when the region no longer fits the frame,
    /// and every `every` frames.
    Stream { every: u32 },
}

/// Keeps the region of interest of a stream (or of each image of a folder). A re-detection that
/// moved an edge by more than a few pixels is a layout change (the calibration downstream then
/// goes stale, as it keys on the region). A region that does not fit a frame is never returned:
/// it means re-detection.
#[derive(Debug)]
pub struct RoiTracker {
    mode: RoiMode,
    tracking: Tracking,
    detector: RoiDetector,
    current: Option<Rect>,
    size: (usize, usize),
    since: u32,
    /// Layout changes seen.
    pub changes: u64,
}

impl RoiTracker {
    /// A tracker for `mode`.
    pub fn new(mode: RoiMode, tracking: Tracking) -> Self {
        Self {
            mode,
            tracking,
            detector: RoiDetector::new(RoiConfig::default()),
            current: None,
            size: (0, 0),
            since: 0,
            changes: 0,
        }
    }

    /// The mode this tracker applies.
    pub fn mode(&self) -> RoiMode {
        self.mode
    }

    /// The region of interest for `frame`; always inside it.
    pub fn roi_for(&mut self, frame: GrayView<'_>) -> Rect {
        let (w, h) = (frame.width(), frame.height());
        let full = Rect::full(w, h);
        let fits = |r: &Rect| r.w > 0 && r.h > 0 && r.x + r.w <= w && r.y + r.h <= h;
        match self.mode {
            RoiMode::Full => full,
            // A fixed region that does not fit this frame falls back to the whole frame.
            RoiMode::Fixed(r) if fits(&r) => r,
            RoiMode::Fixed(_) => full,
            RoiMode::Auto => {
                let every = match self.tracking {
                    Tracking::PerImage => 1,
                    Tracking::Stream { every } => every.max(1),
                };
                self.since += 1;
                let resized = self.size != (w, h);
                let stale = self.current.is_none_or(|c| !fits(&c));
                if stale || resized || self.since >= every {
                    self.since = 0;
                    self.size = (w, h);
                    let found = self.detector.detect(frame);
                    let found = if fits(&found) { found } else { full };
                    let moved = self.current.is_none_or(|c| c.moved(&found, 4));
                    if moved && self.current.is_some() {
                        self.changes += 1;
                    }
                    // Each image of a folder, a new frame size or a region that no longer fits
                    // takes the new detection as it is; a stream keeps its region through
                    // detections that moved an edge by a few pixels only.
                    if moved || resized || stale || self.tracking == Tracking::PerImage {
                        self.current = Some(found);
                    }
                }
                self.current.filter(fits).unwrap_or(full)
            }
        }
    }
}
