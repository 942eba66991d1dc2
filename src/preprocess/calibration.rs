//! Which scale a frame's numbers are in, frame by frame, from the scanner's on-screen ruler
//! (`[calibration] mode = "ruler"`). The [`Calibrator`] finds the image region itself (its own
//! ROI detector, whatever region the model is fed), fits the ruler beside it ([`super::ruler`]),
//! and decides what is in force: at start, on every layout change (a new frame size or a moved
//! image region) and every `check_frames` frames it looks again; the first fit after start or a
//! layout change is taken; a later fit that disagrees with the one in force by more than
//! [`MAX_DISAGREEMENT`] withholds millimetres until two looks in a row agree (a depth change on the
//! scanner), and a look that finds no ruler, too few ticks or a poor fit withholds them too, with
//! the reason. It never guesses a scale. The types of the outcome ([`CalibrationInfo`]) are what
//! every output publishes. No I/O; depends only on `frame`, `roi` and `ruler`.

use serde::Serialize;

use super::roi::{RoiConfig, RoiDetector};
use super::ruler::{RulerConfig, RulerDetector, RulerError, RulerFit};
use crate::frame::{GrayView, Rect};

/// A new ruler fit may differ from the one in force by this fraction before mm are withheld.
pub const MAX_DISAGREEMENT: f64 = 0.02;

/// After a look that withheld mm, the next look comes this many frames later (not the full
/// `check_frames`), so a scale comes back quickly once the ruler is readable again.
const RETRY_FRAMES: u64 = 5;

/// Where the scale of a frame's millimetres came from (published as `calibration_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationKind {
    /// Read from the on-screen ruler.
    Ruler,
    /// The configuration's `[calibration]` values.
    Manual,
    /// No scale: numbers in pixels only.
    #[default]
    None,
}

impl CalibrationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CalibrationKind::Ruler => "ruler",
            CalibrationKind::Manual => "manual",
            CalibrationKind::None => "none",
        }
    }
}

/// Why millimetres are withheld.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Withheld {
    #[error("no calibration: set [calibration] mode = \"ruler\" (the scanner's depth ruler) or mm_per_px_x/mm_per_px_y or depth_mm")]
    NotSet,
    #[error("the image layout changed since the manual calibration was taken: check [calibration] for the new layout")]
    LayoutChanged,
    #[error("ruler: {0}")]
    Ruler(RulerError),
    #[error("ruler: the scale read now, {found:.5} mm/px, differs from the one in force, {previous:.5} mm/px, by more than 2 %; waiting for two readings that agree")]
    Disagrees { previous: f64, found: f64 },
}

/// The calibration of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CalibrationInfo {
    pub kind: CalibrationKind,
    /// Millimetres per pixel along x and y when `kind` is not `None`.
    pub mm_per_px: Option<(f64, f64)>,
    /// The ruler fit in force (kind `Ruler`), or the last one seen when withheld.
    pub ruler: Option<RulerFit>,
    /// Why `kind` is `None`.
    pub withheld: Option<Withheld>,
}

/// Ruler calibration settings (`[calibration]` with `mode = "ruler"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RulerSettings {
    /// Physical distance between the ruler's labelled (or all) ticks.
    pub spacing_mm: f64,
    /// A stream looks again every this many frames (and at start and on layout changes).
    pub check_frames: u64,
}

impl Default for RulerSettings {
    fn default() -> Self {
        Self {
            spacing_mm: 10.0,
            check_frames: 150,
        }
    }
}

/// Ruler calibration along a stream (or per image).
#[derive(Debug)]
pub struct Calibrator {
    settings: RulerSettings,
    /// Every image on its own (folders): look at each, remember nothing.
    per_image: bool,
    roi: RoiDetector,
    ruler: RulerDetector,
    frames: u64,
    next_look: u64,
    frame_size: (usize, usize),
    /// The image region of the last look, and the preprocessor's layout-change count.
    image: Option<Rect>,
    layout_changes: u64,
    in_force: Option<RulerFit>,
    /// A fit that disagreed with the one in force, waiting for a second look.
    candidate: Option<RulerFit>,
    last_seen: Option<RulerFit>,
    withheld: Option<Withheld>,
    /// Looks taken, and the time the last one took (ms).
    pub looks: u64,
    pub last_look_ms: f64,
}

fn agree(a: &RulerFit, b: &RulerFit) -> bool {
    (a.mm_per_px - b.mm_per_px).abs() <= MAX_DISAGREEMENT * a.mm_per_px
}

impl Calibrator {
    pub fn new(settings: RulerSettings, per_image: bool) -> Self {
        Self {
            settings,
            per_image,
            roi: RoiDetector::new(RoiConfig::default()),
            ruler: RulerDetector::new(RulerConfig {
                spacing_mm: settings.spacing_mm,
                ..RulerConfig::default()
            }),
            frames: 0,
            next_look: 0,
            frame_size: (0, 0),
            image: None,
            layout_changes: 0,
            in_force: None,
            candidate: None,
            last_seen: None,
            withheld: None,
            looks: 0,
            last_look_ms: 0.0,
        }
    }

    pub fn settings(&self) -> RulerSettings {
        self.settings
    }

    /// Takes `frame` (whose model region the preprocessor found after `layout_changes` layout
    /// changes) and returns the calibration in force for it.
    pub fn update(&mut self, frame: GrayView<'_>, layout_changes: u64) -> CalibrationInfo {
        let size = (frame.width(), frame.height());
        if size != self.frame_size || layout_changes != self.layout_changes {
            self.frame_size = size;
            self.layout_changes = layout_changes;
            self.forget();
        }
        if self.per_image {
            self.forget();
        }
        if self.frames >= self.next_look {
            self.look(frame);
        }
        self.frames += 1;
        self.info()
    }

    /// Drops what was in force (a new layout has its own scale).
    fn forget(&mut self) {
        self.in_force = None;
        self.candidate = None;
        self.image = None;
        self.next_look = self.frames;
    }

    fn look(&mut self, frame: GrayView<'_>) {
        let t0 = std::time::Instant::now();
        let image = self.roi.detect(frame);
        let moved = self.image.is_some_and(|r| r.moved(&image, 4));
        if moved {
            self.in_force = None;
            self.candidate = None;
        }
        self.image = Some(image);
        let found = self.ruler.detect(frame, image);
        self.looks += 1;
        self.last_look_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut settled = true;
        match found {
            Err(e) => {
                self.in_force = None;
                self.withheld = Some(Withheld::Ruler(e));
                settled = false;
            }
            Ok(fit) => {
                self.last_seen = Some(fit);
                match (self.in_force, self.candidate) {
                    (None, _) => self.take(fit),
                    (Some(f), _) if agree(&f, &fit) => self.take(fit),
                    (Some(_), Some(c)) if agree(&c, &fit) => self.take(fit),
                    (Some(f), _) => {
                        self.withheld = Some(Withheld::Disagrees {
                            previous: f.mm_per_px,
                            found: fit.mm_per_px,
                        });
                        self.candidate = Some(fit);
                        settled = false;
                    }
                }
            }
        }
        let wait = if settled {
            self.settings.check_frames.max(1)
        } else {
            RETRY_FRAMES.min(self.settings.check_frames.max(1))
        };
        self.next_look = self.frames + wait;
    }

    fn take(&mut self, fit: RulerFit) {
        self.in_force = Some(fit);
        self.candidate = None;
        self.withheld = None;
    }

    /// The calibration in force now.
    pub fn info(&self) -> CalibrationInfo {
        match self.in_force {
            Some(f) if self.withheld.is_none() => CalibrationInfo {
                kind: CalibrationKind::Ruler,
                mm_per_px: Some((f.mm_per_px, f.mm_per_px)),
                ruler: Some(f),
                withheld: None,
            },
            _ => CalibrationInfo {
                kind: CalibrationKind::None,
                mm_per_px: None,
                ruler: self.last_seen,
                withheld: self.withheld.or(Some(Withheld::NotSet)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;
    use crate::synth::{Phantom, PhantomConfig};

    fn frame(depth_mm: f64, furniture: bool) -> crate::frame::GrayImage {
        let mut p = Phantom::new(PhantomConfig {
            width: 640,
            height: 480,
            furniture,
            depth_mm,
            task: Task::Aponeurosis,
            seed: 3,
            ..Default::default()
        });
        let g = p.geometry_at(0.0);
        let (mut img, mut mask) = Default::default();
        p.render(&g, 0, &mut img, &mut mask);
        img
    }

    #[test]
    fn a_stream_keeps_its_scale_and_withholds_on_a_disagreeing_ruler_until_confirmed() {
        let settings = RulerSettings {
            spacing_mm: 10.0,
            check_frames: 10,
        };
        let mut c = Calibrator::new(settings, false);
        let a = frame(40.0, true);
        let b = frame(50.0, true);
        let truth_a = 40.0 / (480.0 * 17.0 / 20.0);
        let i = c.update(a.view().unwrap(), 0);
        assert_eq!(i.kind, CalibrationKind::Ruler);
        let (x, _) = i.mm_per_px.unwrap();
        assert!((x / truth_a - 1.0).abs() < 0.01, "{x} vs {truth_a}");
        for _ in 0..9 {
            assert_eq!(c.update(a.view().unwrap(), 0).kind, CalibrationKind::Ruler);
        }
        assert_eq!(c.looks, 1);
        // The depth changes on the scanner: the next look disagrees (mm withheld, with the
        // reason), the one after confirms the new scale.
        let i = c.update(b.view().unwrap(), 0);
        assert_eq!(i.kind, CalibrationKind::None);
        assert!(
            matches!(i.withheld, Some(Withheld::Disagrees { .. })),
            "{i:?}"
        );
        let mut n = 0;
        while c.update(b.view().unwrap(), 0).kind != CalibrationKind::Ruler {
            n += 1;
            assert!(n < 10, "no second look");
        }
        let (x, _) = c.info().mm_per_px.unwrap();
        assert!((x / (truth_a * 1.25) - 1.0).abs() < 0.01);
    }

    #[test]
    fn no_ruler_withholds_with_the_reason_and_a_frame_size_change_looks_again() {
        let mut c = Calibrator::new(RulerSettings::default(), false);
        let plain = frame(40.0, false);
        let i = c.update(plain.view().unwrap(), 0);
        assert_eq!(i.kind, CalibrationKind::None);
        assert!(matches!(i.withheld, Some(Withheld::Ruler(_))), "{i:?}");
        let mut p = Phantom::new(PhantomConfig {
            width: 800,
            height: 600,
            furniture: true,
            depth_mm: 40.0,
            task: Task::Aponeurosis,
            seed: 3,
            ..Default::default()
        });
        let g = p.geometry_at(0.0);
        let (mut big, mut mask) = Default::default();
        p.render(&g, 0, &mut big, &mut mask);
        let i = c.update(big.view().unwrap(), 0);
        assert_eq!(i.kind, CalibrationKind::Ruler, "{i:?}");
        let want = 40.0 / (600.0 * 17.0 / 20.0);
        assert!((i.mm_per_px.unwrap().0 / want - 1.0).abs() < 0.01);
    }
}
