//! From a model's probability map to the numbers a clinician reads.
//!
//! Probabilities are resized back (bilinear) to region-of-interest pixels and thresholded there, so
//! every measurement is in frame pixels. Then, by task: `aponeurosis` finds the superficial and deep
//! aponeuroses (the largest roughly horizontal bands; with three, the two bounding the most
//! superficial muscle), fits their inner edges and measures the muscle thickness perpendicular to
//! them (DL_Track_US's measurement); `region` measures area, contour length and a least-squares
//! ellipse with Ramanujan's circumference. Millimetres only when calibrated (never guessed),
//! confidence and a quality flag, the verdict (`ok` or `doubtful` with reasons from the frame's own
//! evidence: [`quality`]), optional temporal smoothing. Must not depend on tract, zbus or tokio.

pub mod fascicle;
pub mod geometry;
pub mod overlay;
pub mod quality;

use std::collections::VecDeque;

use serde::Serialize;

use crate::frame::Rect;
use crate::model::Task;
use crate::preprocess::calibration::{CalibrationInfo, CalibrationKind, RulerSettings, Withheld};
use crate::preprocess::{F32Plane, Resizer};
use crate::synth::ellipse_circumference;
use fascicle::{ApoLines, FascicleLine, FascicleStage};
use geometry::{fit_ellipse, trace_contour, Component, Ellipse, Labeller};
use quality::{Doubt, Doubts, Evidence, History, QualityConfig};

/// Why a result is not a confident number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// No structure found.
    NoStructure,
    /// Only one aponeurosis found.
    OneBand,
    /// Found, but the model is unsure (confidence below the gate).
    LowConfidence,
    /// Numbers in pixels only: no calibration, or the image layout changed since it was set.
    Uncalibrated,
}

impl Flag {
    /// The reason code as published.
    pub fn as_str(&self) -> &'static str {
        match self {
            Flag::NoStructure => "no_structure",
            Flag::OneBand => "one_band",
            Flag::LowConfidence => "low_confidence",
            Flag::Uncalibrated => "uncalibrated",
        }
    }
}

/// Pixel spacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// Unknown: mm values are withheld.
    None,
    /// Millimetres per pixel along x and y.
    MmPerPx { x: f64, y: f64 },
    /// The region of interest's height spans this depth (square pixels).
    DepthMm(f64),
}

/// Temporal smoothing of the published numbers, for live streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    Off,
    /// Median of the last `n` values.
    Median(usize),
    /// Exponential moving average with weight `alpha` for the newest value.
    Ema(f64),
}

/// Postprocessing settings (the `[postprocess]` and `[calibration]` config sections).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessConfig {
    /// Mask probability threshold.
    pub threshold: f32,
    /// Below this mean probability inside the mask the result is flagged `low_confidence`.
    pub min_confidence: f64,
    /// Above this uncertain fraction the result is flagged `low_confidence`.
    pub max_uncertain_fraction: f64,
    /// Components smaller than this fraction of the region of interest are ignored.
    pub min_area_fraction: f64,
    pub smoothing: Smoothing,
    /// The manual calibration; when given it wins over the ruler.
    pub calibration: Calibration,
    /// Ruler calibration (`[calibration] mode = "ruler"`); `None` in manual mode.
    pub ruler: Option<RulerSettings>,
    /// The verdict's settings (`[quality]`).
    pub quality: QualityConfig,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_confidence: 0.7,
            max_uncertain_fraction: 0.55,
            min_area_fraction: 0.002,
            smoothing: Smoothing::Off,
            calibration: Calibration::None,
            ruler: None,
            quality: QualityConfig::default(),
        }
    }
}

/// The measurements; keys are the published names (JSON, D-Bus). `None` means "does not apply" or
/// "withheld" (mm without calibration).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measurements {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_centre_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_min_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_max_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band_angle_deg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_centre_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_min_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_max_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub area_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perimeter_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circumference_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_centre_x_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_centre_y_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_semi_major_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_semi_minor_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_angle_deg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub area_mm2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perimeter_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circumference_mm: Option<f64>,
    /// Fascicles (a fascicle model's keys): median length between the aponeuroses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_length_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_length_mm: Option<f64>,
    /// Interquartile range of the fascicle lengths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_length_spread_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_length_spread_mm: Option<f64>,
    /// Median angle between the fascicles and the deep aponeurosis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pennation_angle_deg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pennation_angle_spread_deg: Option<f64>,
    /// Fascicles measured (fragments that agree with the dominant orientation and meet both
    /// aponeuroses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_count: Option<u64>,
    /// The fragments' dominant orientation, degrees from the image's x axis (y down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_orientation_deg: Option<f64>,
    /// Along a stream: how many frames older than this one the frame the fascicle numbers come
    /// from is (the fascicle model runs in a lane of its own; 0 for still images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_lag_frames: Option<u64>,
}

impl Measurements {
    /// Copies in every key `other` has (an extra model's keys joining the primary's).
    pub fn merge(&mut self, other: &Measurements) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            thickness_px,
            thickness_centre_px,
            thickness_min_px,
            thickness_max_px,
            band_angle_deg,
            thickness_mm,
            thickness_centre_mm,
            thickness_min_mm,
            thickness_max_mm,
            area_px,
            perimeter_px,
            circumference_px,
            ellipse_centre_x_px,
            ellipse_centre_y_px,
            ellipse_semi_major_px,
            ellipse_semi_minor_px,
            ellipse_angle_deg,
            area_mm2,
            perimeter_mm,
            circumference_mm,
            fascicle_length_px,
            fascicle_length_mm,
            fascicle_length_spread_px,
            fascicle_length_spread_mm,
            pennation_angle_deg,
            pennation_angle_spread_deg,
            fascicle_count,
            fascicle_orientation_deg
        );
    }
}

/// Where a measurement was taken, for drawing (frame coordinates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Annotation {
    /// The thickness caliper: from the superficial band's deep edge to the deep band's superficial
    /// edge, perpendicular to the bands.
    Caliper { from: (f64, f64), to: (f64, f64) },
    /// The fitted ellipse.
    Ellipse(Ellipse),
}

/// One frame's analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub measurements: Measurements,
    /// Mean probability inside the mask (0 without a mask).
    pub confidence: f64,
    /// Of the pixels with probability above 0.3, the fraction still below 0.7.
    pub uncertain_fraction: f64,
    pub flag: Option<Flag>,
    /// The verdict: empty when the numbers can be trusted, else the reasons (the flags
    /// `no_structure`, `one_band` and `low_confidence` among them; `uncalibrated` is not a doubt).
    pub doubt: Doubts,
    /// What the verdict was made from.
    pub evidence: Evidence,
    /// The extra models' verdicts by task (published as `<task>_quality` and `<task>_doubt`).
    pub extra_doubt: Vec<(Task, Doubts)>,
    /// Where the scale came from (and why there is none); calibrated when it has `mm_per_px`.
    pub calibration: CalibrationInfo,
    pub annotation: Option<Annotation>,
    /// Fascicle task: the measured fascicles, frame coordinates.
    pub fascicles: Vec<FascicleLine>,
}

/// The postprocessing stage. Owns every buffer; reuse one per stream.
#[derive(Debug)]
pub struct Postprocessor {
    cfg: PostprocessConfig,
    task: Task,
    resizer: Resizer,
    /// Foreground probability at region-of-interest resolution.
    probability: Vec<f32>,
    /// Thresholded mask (0 or 255) at region-of-interest resolution.
    mask: Vec<u8>,
    roi: Rect,
    labeller: Labeller,
    /// Image pixels by which the masks' boundary lies outside the clinical outline (the model's
    /// `contour_offset_px`); the fitted ellipse shrinks by it.
    contour_offset_px: f64,
    /// Points the ellipse is fitted to.
    fit_points: Vec<(f64, f64)>,
    contour: Vec<(usize, usize)>,
    /// Per column of the band overlap: superficial band's last row and deep band's first row.
    edge_sup: Vec<i64>,
    edge_deep: Vec<i64>,
    /// Columns where both inner edges exist, and the edges there (continuous y).
    xs: Vec<f64>,
    sup_edge_y: Vec<f64>,
    deep_edge_y: Vec<f64>,
    /// Band candidates of the current frame, largest first.
    bands: Vec<Component>,
    gaps: Vec<f64>,
    /// The region of interest calibration was valid for (first seen); a different one is stale.
    calibration_roi: Option<Rect>,
    /// Smoothing of the headline number, the fascicle length and the pennation angle.
    smoothers: [Smoother; 3],
    /// Aponeurosis task: the inner edges of the last frame's bands.
    apo_lines: Option<ApoLines>,
    /// Fascicle task: the aponeuroses of the frame being analysed (from the aponeurosis model).
    apo_input: Option<ApoLines>,
    fascicles: FascicleStage,
    /// The ruler's calibration for the frame being analysed (see [`Postprocessor::set_ruler`]).
    ruler: Option<CalibrationInfo>,
    /// Along a stream: the frame number of the frame being analysed (`None` for still images:
    /// no history).
    seq: Option<u64>,
    /// Recent values of the headline number, for the `jump` rule.
    history: History,
    /// Scratch for the quality rules.
    quality_scratch: Vec<f64>,
    analysis: Analysis,
}

/// Temporal smoothing of one number.
#[derive(Debug, Clone, Default)]
struct Smoother {
    history: VecDeque<f64>,
    scratch: Vec<f64>,
    ema: Option<f64>,
}

impl Smoother {
    fn reset(&mut self) {
        self.history.clear();
        self.ema = None;
    }

    /// The smoothed value after `v`.
    fn push(&mut self, smoothing: Smoothing, v: f64) -> f64 {
        match smoothing {
            Smoothing::Off => v,
            Smoothing::Median(n) => {
                self.history.push_back(v);
                while self.history.len() > n.max(1) {
                    self.history.pop_front();
                }
                self.scratch.clear();
                self.scratch.extend(self.history.iter().copied());
                median(&mut self.scratch)
            }
            Smoothing::Ema(alpha) => {
                let s = match self.ema {
                    Some(prev) => alpha * v + (1.0 - alpha) * prev,
                    None => v,
                };
                self.ema = Some(s);
                s
            }
        }
    }
}

impl Postprocessor {
    /// A stage for `task`.
    pub fn new(task: Task, cfg: PostprocessConfig) -> Self {
        Self {
            cfg,
            task,
            resizer: Resizer::new(),
            probability: Vec::new(),
            mask: Vec::new(),
            roi: Rect::default(),
            labeller: Labeller::default(),
            contour_offset_px: 0.0,
            fit_points: Vec::new(),
            contour: Vec::new(),
            edge_sup: Vec::new(),
            edge_deep: Vec::new(),
            xs: Vec::new(),
            sup_edge_y: Vec::new(),
            deep_edge_y: Vec::new(),
            bands: Vec::new(),
            gaps: Vec::new(),
            calibration_roi: None,
            smoothers: Default::default(),
            apo_lines: None,
            apo_input: None,
            fascicles: FascicleStage::default(),
            ruler: None,
            seq: None,
            history: History::default(),
            quality_scratch: Vec::new(),
            analysis: Analysis::default(),
        }
    }

    /// Along a stream: the frame number (`seq`) of the next frame, so the `jump` rule can hold
    /// a number against its recent history (the allowance grows with the gap).
    pub fn set_frame_seq(&mut self, seq: Option<u64>) {
        self.seq = seq;
    }

    /// The headline number of the last frame (thickness or circumference, px; the pennation
    /// angle for fascicles), as the mirrored check compares it.
    pub fn headline(&self) -> Option<f64> {
        headline_px(self.task, &self.analysis.measurements)
    }

    /// Adds the mirrored frame's evidence to the last analysis: its headline number
    /// (`None`: the mirrored frame gave none).
    pub fn apply_mirror(&mut self, mirrored: Option<f64>) {
        let own = self.headline();
        self.apply_mirror_pair(own, mirrored);
    }

    /// The mirrored check between two numbers of this frame, the original frame's and the
    /// mirrored one's, when the published number is neither (mirrored test-time averaging
    /// publishes the number of the averaged maps): the evidence and any doubt go on the
    /// published analysis; one of the two missing counts as full disagreement.
    pub fn apply_mirror_pair(&mut self, original: Option<f64>, mirrored: Option<f64>) {
        let q = self.cfg.quality;
        if self.headline().filter(|v| *v > 0.0).is_none() {
            return;
        }
        let diff = match (original.filter(|v| *v > 0.0), mirrored) {
            (Some(v), Some(m)) => (v - m).abs() / v,
            _ => 1.0,
        };
        let a = &mut self.analysis;
        a.evidence.mirror_diff = Some(diff);
        if q.enabled && diff > q.mirror_tolerance {
            a.doubt.insert(Doubt::MirrorDisagrees);
        }
    }

    /// Forgets the history the `jump` rule holds numbers against (a new model, a new stream).
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    /// Sets the masks' boundary convention (the model's `contour_offset_px`, image pixels).
    pub fn set_contour_offset_px(&mut self, px: f64) {
        self.contour_offset_px = if px.is_finite() { px } else { 0.0 };
    }

    /// Changes settings that may change live (threshold, gates, smoothing, calibration).
    pub fn set_config(&mut self, cfg: PostprocessConfig) {
        if cfg.calibration != self.cfg.calibration {
            self.calibration_roi = None;
        }
        if cfg.smoothing != self.cfg.smoothing {
            for s in &mut self.smoothers {
                s.reset();
            }
        }
        self.cfg = cfg;
    }

    /// The settings in use.
    pub fn config(&self) -> &PostprocessConfig {
        &self.cfg
    }

    /// Sets the mask threshold.
    pub fn set_threshold(&mut self, threshold: f32) {
        self.cfg.threshold = threshold;
    }

    /// Analyses one frame: `probability` is the model's foreground map (`model_w` x `model_h`),
    /// `roi` where the model's input came from in the frame.
    pub fn process(
        &mut self,
        probability: &[f32],
        model_w: usize,
        model_h: usize,
        roi: Rect,
    ) -> &Analysis {
        let plane = F32Plane {
            width: model_w,
            height: model_h,
            data: probability,
        };
        self.resizer
            .resize(&plane, roi.w, roi.h, &mut self.probability);
        self.analyse(roi);
        &self.analysis
    }

    /// Analyses a probability map already at region-of-interest resolution (e.g. a reference mask
    /// as 0/1, for evaluation).
    pub fn process_full(&mut self, probability: &[f32], roi: Rect) -> &Analysis {
        self.probability.clear();
        self.probability.extend_from_slice(probability);
        self.analyse(roi);
        &self.analysis
    }

    /// The thresholded mask of the last frame (0 or 255, region-of-interest size).
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }

    /// The probability map of the last frame at region-of-interest size.
    pub fn probability(&self) -> &[f32] {
        &self.probability
    }

    /// The region of interest of the last frame.
    pub fn roi(&self) -> Rect {
        self.roi
    }

    /// The last analysis.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// The ruler's calibration for the next frame (the analyser's [`crate::preprocess::calibration::Calibrator`]);
    /// used unless a manual calibration is configured.
    pub fn set_ruler(&mut self, info: Option<CalibrationInfo>) {
        self.ruler = info;
    }

    /// The task this stage measures.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Aponeurosis task: the inner edges of the last frame's two bands (region-of-interest
    /// pixels), `None` when two bands were not found.
    pub fn aponeuroses(&self) -> Option<ApoLines> {
        self.apo_lines
    }

    /// Fascicle task: the aponeuroses the next frame's fascicles are extended to (from the
    /// aponeurosis model on the same frame, same region of interest).
    pub fn set_aponeuroses(&mut self, lines: Option<ApoLines>) {
        self.apo_input = lines;
    }

    fn analyse(&mut self, roi: Rect) {
        self.roi = roi;
        let (w, h) = (roi.w, roi.h);
        let t = self.cfg.threshold;
        self.mask.clear();
        self.mask.extend(
            self.probability
                .iter()
                .map(|&p| if p >= t { 255 } else { 0 }),
        );
        let (mut inside_sum, mut inside_n, mut above, mut uncertain) =
            (0.0f64, 0usize, 0usize, 0usize);
        for (&p, &m) in self.probability.iter().zip(&self.mask) {
            if m != 0 {
                inside_sum += p as f64;
                inside_n += 1;
            }
            if p > 0.3 {
                above += 1;
                if p < 0.7 {
                    uncertain += 1;
                }
            }
        }
        let confidence = if inside_n > 0 {
            inside_sum / inside_n as f64
        } else {
            0.0
        };
        let uncertain_fraction = if above > 0 {
            uncertain as f64 / above as f64
        } else {
            0.0
        };
        self.labeller.label(&self.mask, w, h);
        let min_area = ((w * h) as f64 * self.cfg.min_area_fraction).max(8.0) as usize;

        // A manual calibration wins; it is valid for the region of interest it was first used
        // with. Otherwise the ruler's, when there is one.
        let manual = match self.cfg.calibration {
            Calibration::None => None,
            Calibration::MmPerPx { x, y } => Some((x, y)),
            Calibration::DepthMm(d) => Some((d / h as f64, d / h as f64)),
        };
        let calibration = match manual {
            Some(xy) => {
                let fresh = match self.calibration_roi {
                    None => {
                        self.calibration_roi = Some(roi);
                        true
                    }
                    Some(r) => r == roi,
                };
                if fresh {
                    CalibrationInfo {
                        kind: CalibrationKind::Manual,
                        mm_per_px: Some(xy),
                        ..Default::default()
                    }
                } else {
                    CalibrationInfo {
                        withheld: Some(Withheld::LayoutChanged),
                        ..Default::default()
                    }
                }
            }
            None => self.ruler.unwrap_or(CalibrationInfo {
                withheld: Some(Withheld::NotSet),
                ..Default::default()
            }),
        };
        let scale = calibration.mm_per_px;

        let mut a = Analysis {
            confidence,
            uncertain_fraction,
            calibration,
            ..Default::default()
        };
        self.apo_lines = None;
        match self.task {
            Task::Aponeurosis => self.aponeurosis(&mut a, min_area, scale),
            Task::Region => self.region(&mut a, min_area, scale),
            Task::Fascicle => self.fascicle(&mut a, scale),
        }
        // Thin fascicle fragments are mostly edge, where probabilities are uncertain by nature:
        // their uncertain fraction says nothing (0.33 to 0.70 on clean phantom frames).
        let uncertain_counts = self.task != Task::Fascicle;
        if a.flag.is_none()
            && (confidence < self.cfg.min_confidence
                || (uncertain_counts && uncertain_fraction > self.cfg.max_uncertain_fraction))
        {
            a.flag = Some(Flag::LowConfidence);
        }
        self.judge(&mut a);
        if a.flag.is_none() && scale.is_none() {
            a.flag = Some(Flag::Uncalibrated);
        }
        self.smooth(&mut a);
        // Annotations in frame coordinates.
        a.annotation = a.annotation.map(|ann| match ann {
            Annotation::Caliper { from, to } => Annotation::Caliper {
                from: (from.0 + roi.x as f64, from.1 + roi.y as f64),
                to: (to.0 + roi.x as f64, to.1 + roi.y as f64),
            },
            Annotation::Ellipse(e) => Annotation::Ellipse(Ellipse {
                cx: e.cx + roi.x as f64,
                cy: e.cy + roi.y as f64,
                ..e
            }),
        });
        for f in a.fascicles.iter_mut() {
            let (dx, dy) = (roi.x as f64, roi.y as f64);
            f.from = (f.from.0 + dx, f.from.1 + dy);
            f.to = (f.to.0 + dx, f.to.1 + dy);
        }
        if let Some(x) = a.measurements.ellipse_centre_x_px.as_mut() {
            *x += roi.x as f64;
        }
        if let Some(y) = a.measurements.ellipse_centre_y_px.as_mut() {
            *y += roi.y as f64;
        }
        self.analysis = a;
    }

    /// The verdict: the rules on the task's evidence, the history (along a stream) and the
    /// model's own flags.
    fn judge(&mut self, a: &mut Analysis) {
        let q = self.cfg.quality;
        let headline = headline_px(self.task, &a.measurements);
        if let (Some(seq), Some(v), true) = (self.seq, headline, q.enabled) {
            if let Some((jump, allowed)) = self.history.push(seq, v, &q) {
                a.evidence.jump = Some(jump);
                a.evidence.jump_allowed = Some(allowed);
            }
        }
        let mut d = quality::judge(&a.evidence, &q);
        match a.flag {
            Some(Flag::NoStructure) => d.insert(Doubt::NoStructure),
            Some(Flag::OneBand) => d.insert(Doubt::OneBand),
            Some(Flag::LowConfidence) => d.insert(Doubt::LowConfidence),
            Some(Flag::Uncalibrated) | None => {}
        }
        a.doubt = d;
    }

    fn aponeurosis(&mut self, a: &mut Analysis, min_area: usize, scale: Option<(f64, f64)>) {
        let w = self.roi.w;
        // Roughly horizontal bands, largest first.
        let mut bands = std::mem::take(&mut self.bands);
        bands.clear();
        bands.extend(self.labeller.components.iter().filter(|c| {
            let (angle, elongation) = c.orientation();
            let (bw, bh) = c.bbox_size();
            c.area >= min_area && angle.abs() <= 35.0 && (elongation >= 2.0 || bw >= 2 * bh)
        }));
        bands.sort_by(|x, y| y.area.cmp(&x.area));
        let found = bands.len();
        let mut chosen = [Component::default(); 3];
        let take = if found >= 3 && bands[2].area * 10 >= bands[1].area * 3 {
            3
        } else {
            found.min(2)
        };
        chosen[..take].copy_from_slice(&bands[..take]);
        self.bands = bands;
        match found {
            0 => {
                a.flag = Some(Flag::NoStructure);
                return;
            }
            1 => {
                a.flag = Some(Flag::OneBand);
                return;
            }
            _ => {}
        }
        // A third band counts only if it is a real band (not a fragment of the second).
        chosen[..take].sort_by(|x, y| x.centroid().1.total_cmp(&y.centroid().1));
        // With three, the two bounding the most superficial muscle: the two shallowest.
        let (sup, deep) = (chosen[0], chosen[1]);
        let (x0, x1) = (sup.x0.max(deep.x0), sup.x1.min(deep.x1));
        if x0 > x1 {
            a.flag = Some(Flag::OneBand);
            return;
        }
        let n = x1 - x0 + 1;
        self.edge_sup.clear();
        self.edge_sup.resize(n, -1);
        self.edge_deep.clear();
        self.edge_deep.resize(n, -1);
        let labels = &self.labeller.labels;
        for y in sup.y0.min(deep.y0)..=sup.y1.max(deep.y1) {
            let row = &labels[y * w + x0..y * w + x1 + 1];
            for (i, &l) in row.iter().enumerate() {
                if l == sup.label {
                    self.edge_sup[i] = y as i64;
                } else if l == deep.label && self.edge_deep[i] < 0 {
                    self.edge_deep[i] = y as i64;
                }
            }
        }
        // Inner edges in continuous coordinates: below the superficial band's last row, at the deep
        // band's first row. Fit a line to each for the direction.
        self.xs.clear();
        self.sup_edge_y.clear();
        self.deep_edge_y.clear();
        for i in 0..n {
            if self.edge_sup[i] >= 0 && self.edge_deep[i] > self.edge_sup[i] {
                self.xs.push((x0 + i) as f64 + 0.5);
                self.sup_edge_y.push(self.edge_sup[i] as f64 + 1.0);
                self.deep_edge_y.push(self.edge_deep[i] as f64);
            }
        }
        if self.xs.len() < 4 {
            a.flag = Some(Flag::OneBand);
            return;
        }
        let (a_sup, slope_sup) = fit_line(&self.xs, &self.sup_edge_y);
        let (a_deep, slope_deep) = fit_line(&self.xs, &self.deep_edge_y);
        self.apo_lines = Some(ApoLines {
            superficial: (a_sup, slope_sup),
            deep: (a_deep, slope_deep),
        });
        self.band_evidence(
            a,
            (sup, deep),
            (x0, x1),
            (a_sup, slope_sup),
            (a_deep, slope_deep),
        );
        let (xs, sup_edge, deep_edge) = (&self.xs, &self.sup_edge_y, &self.deep_edge_y);
        let slope = (slope_sup + slope_deep) / 2.0;
        let cos = 1.0 / (1.0 + slope * slope).sqrt();
        // Central half of the overlap.
        let lo = x0 as f64 + n as f64 * 0.25;
        let hi = x0 as f64 + n as f64 * 0.75;
        self.gaps.clear();
        let mut centre: Option<(f64, f64, f64)> = None;
        let mid = (x0 as f64 + x1 as f64 + 1.0) / 2.0;
        for (k, &x) in xs.iter().enumerate() {
            if x < lo || x > hi {
                continue;
            }
            let gap = deep_edge[k] - sup_edge[k];
            self.gaps.push(gap);
            if centre.is_none_or(|(cx, _, _)| (x - mid).abs() < (cx - mid).abs()) {
                centre = Some((x, sup_edge[k], gap));
            }
        }
        if self.gaps.is_empty() {
            a.flag = Some(Flag::OneBand);
            return;
        }
        let vertical_median = median(&mut self.gaps);
        let (vmin, vmax) = self
            .gaps
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &g| {
                (lo.min(g), hi.max(g))
            });
        let (cx, cy, cgap) = centre.unwrap_or((mid, 0.0, vertical_median));
        let m = &mut a.measurements;
        m.thickness_px = Some(vertical_median * cos);
        m.thickness_centre_px = Some(cgap * cos);
        m.thickness_min_px = Some(vmin * cos);
        m.thickness_max_px = Some(vmax * cos);
        m.band_angle_deg = Some(slope.atan().to_degrees());
        if let Some((sx, sy)) = scale {
            // Perpendicular distance between lines of this slope, in mm: vertical gap scaled by sy,
            // divided by the length of the normal in mm space.
            let f = sy / (1.0 + (sy * slope / sx).powi(2)).sqrt();
            m.thickness_mm = Some(vertical_median * f);
            m.thickness_centre_mm = Some(cgap * f);
            m.thickness_min_mm = Some(vmin * f);
            m.thickness_max_mm = Some(vmax * f);
        }
        // Caliper: from the superficial edge at the centre column along the bands' normal.
        let t = cgap * cos;
        let (nx, ny) = (-slope * cos, cos);
        a.annotation = Some(Annotation::Caliper {
            from: (cx, cy),
            to: (cx + nx * t, cy + ny * t),
        });
    }

    /// The evidence that `pair` (superficial, deep) bounds one muscle: their overlap `x0..=x1`
    /// against the region's width, the angle between their inner-edge lines, the consistency of
    /// the thickness along the overlap, bands between them, and how many long bands there are.
    fn band_evidence(
        &mut self,
        a: &mut Analysis,
        pair: (Component, Component),
        (x0, x1): (usize, usize),
        sup_line: (f64, f64),
        deep_line: (f64, f64),
    ) {
        let w = self.roi.w.max(1) as f64;
        let q = self.cfg.quality;
        let e = &mut a.evidence;
        e.overlap_fraction = Some((x1 - x0 + 1) as f64 / w);
        let span = |b: &Component| (b.x1 - b.x0 + 1) as f64 / w;
        e.short_span_fraction = Some(span(&pair.0).min(span(&pair.1)));
        e.band_angle_diff_deg = Some((sup_line.1.atan() - deep_line.1.atan()).abs().to_degrees());
        self.gaps.clear();
        self.gaps.extend(
            self.deep_edge_y
                .iter()
                .zip(&self.sup_edge_y)
                .map(|(d, s)| d - s),
        );
        e.thickness_spread =
            quality::thickness_spread(&self.xs, &self.gaps, &mut self.quality_scratch);
        let overlap = (x1 - x0 + 1) as f64;
        let y_at = |l: (f64, f64), x: f64| l.0 + l.1 * x;
        let between = self
            .bands
            .iter()
            .filter(|b| b.label != pair.0.label && b.label != pair.1.label)
            .filter(|b| {
                let (cx, cy) = b.centroid();
                let span = (b.x1.min(x1) as f64 - b.x0.max(x0) as f64 + 1.0).max(0.0);
                cx >= x0 as f64
                    && cx <= x1 as f64 + 1.0
                    && cy > y_at(sup_line, cx)
                    && cy < y_at(deep_line, cx)
                    && span >= q.min_between_span * overlap
            })
            .count();
        e.bands_between = Some(between as u64);
        let is_long = |b: &&Component| (b.x1 - b.x0 + 1) as f64 >= q.long_band_span * w;
        e.long_bands = Some(self.bands.iter().filter(is_long).count() as u64);
        let others = || {
            self.bands
                .iter()
                .filter(|b| b.label != pair.0.label && b.label != pair.1.label)
                .filter(is_long)
        };
        e.long_bands_above = Some(
            others()
                .filter(|b| {
                    let (cx, cy) = b.centroid();
                    cy < y_at(sup_line, cx)
                })
                .count() as u64,
        );
        let mid = (x0 + x1) as f64 / 2.0;
        let thickness = y_at(deep_line, mid) - y_at(sup_line, mid);
        e.deeper_gap_ratio = others()
            .filter_map(|b| {
                let (cx, cy) = b.centroid();
                let below = cy - y_at(deep_line, cx);
                (below > 0.0 && thickness > 0.0).then_some(below / thickness)
            })
            .min_by(f64::total_cmp);
    }

    fn fascicle(&mut self, a: &mut Analysis, scale: Option<(f64, f64)>) {
        let Some(r) =
            self.fascicles
                .measure(&self.labeller.components, self.apo_input, scale, self.roi.w)
        else {
            a.flag = Some(Flag::NoStructure);
            return;
        };
        let m = &mut a.measurements;
        m.fascicle_orientation_deg = Some(r.orientation_deg);
        m.fascicle_count = Some(r.count as u64);
        m.fascicle_length_px = r.length_px;
        m.fascicle_length_spread_px = r.length_spread_px;
        m.fascicle_length_mm = r.length_mm;
        m.fascicle_length_spread_mm = r.length_spread_mm;
        m.pennation_angle_deg = r.pennation_deg;
        m.pennation_angle_spread_deg = r.pennation_spread_deg;
        a.fascicles.clear();
        a.fascicles.extend_from_slice(&self.fascicles.lines);
        if r.count == 0 {
            // Fragments, but no aponeuroses to extend them to (or none between them).
            a.flag = Some(Flag::OneBand);
        } else {
            a.evidence.fascicles = Some(r.count as u64);
            a.evidence.fascicle_spread_deg = r.pennation_spread_deg;
        }
    }

    fn region(&mut self, a: &mut Analysis, min_area: usize, scale: Option<(f64, f64)>) {
        let (w, h) = (self.roi.w, self.roi.h);
        let Some(c) = self
            .labeller
            .components
            .iter()
            .filter(|c| c.area >= min_area)
            .max_by_key(|c| c.area)
            .copied()
        else {
            a.flag = Some(Flag::NoStructure);
            return;
        };
        trace_contour(&self.labeller.labels, w, h, c.label, &c, &mut self.contour);
        // Fit to the centres of the outer boundary pixels (the convention of OpenCV's
        // findContours + fitEllipse and of published HC18 pipelines); see ARCHITECTURE.md.
        self.fit_points.clear();
        self.fit_points.extend(
            self.contour
                .iter()
                .map(|&(x, y)| (x as f64 + 0.5, y as f64 + 0.5)),
        );
        let Some(mut e) = fit_ellipse(&self.fit_points) else {
            a.flag = Some(Flag::NoStructure);
            return;
        };
        a.evidence.fit_residual =
            quality::ellipse_residual(&self.fit_points, (e.cx, e.cy), e.a, e.b, e.angle_deg);
        a.evidence.touches_border = Some(c.x0 == 0 || c.y0 == 0 || c.x1 + 1 >= w || c.y1 + 1 >= h);
        a.evidence.ellipse_area_fraction =
            Some(std::f64::consts::PI * e.a * e.b / (w.max(1) * h.max(1)) as f64);
        let off = self.contour_offset_px;
        e.a = (e.a - off).max(0.0);
        e.b = (e.b - off).max(0.0);
        let m = &mut a.measurements;
        m.area_px = Some(c.area as f64);
        m.perimeter_px = Some(geometry::contour_length(&self.contour, 1.0, 1.0));
        m.circumference_px = Some(ellipse_circumference(e.a, e.b));
        m.ellipse_centre_x_px = Some(e.cx);
        m.ellipse_centre_y_px = Some(e.cy);
        m.ellipse_semi_major_px = Some(e.a);
        m.ellipse_semi_minor_px = Some(e.b);
        m.ellipse_angle_deg = Some(e.angle_deg);
        if let Some((sx, sy)) = scale {
            m.area_mm2 = Some(c.area as f64 * sx * sy);
            m.perimeter_mm = Some(geometry::contour_length(&self.contour, sx, sy));
            // Refit in millimetres so anisotropic pixels give the true ellipse.
            for p in self.fit_points.iter_mut() {
                *p = (p.0 * sx, p.1 * sy);
            }
            let off_mm = off * (sx * sy).sqrt();
            m.circumference_mm = fit_ellipse(&self.fit_points)
                .map(|e| ellipse_circumference((e.a - off_mm).max(0.0), (e.b - off_mm).max(0.0)));
        }
        a.annotation = Some(Annotation::Ellipse(e));
    }

    /// Smooths the headline number (thickness or circumference, px and mm alike by the same
    /// factor), the fascicle length and the pennation angle.
    fn smooth(&mut self, a: &mut Analysis) {
        let smoothing = self.cfg.smoothing;
        if smoothing == Smoothing::Off {
            return;
        }
        let m = &mut a.measurements;
        let headline = match self.task {
            Task::Aponeurosis => m.thickness_px,
            Task::Region => m.circumference_px,
            Task::Fascicle => None,
        };
        let scale = |f: f64, xs: [&mut Option<f64>; 2]| {
            for x in xs.into_iter().flatten() {
                *x *= f;
            }
        };
        if let Some(v) = headline {
            let s = self.smoothers[0].push(smoothing, v);
            let f = if v != 0.0 { s / v } else { 1.0 };
            scale(f, [&mut m.thickness_px, &mut m.thickness_mm]);
            scale(f, [&mut m.circumference_px, &mut m.circumference_mm]);
        }
        if let Some(v) = m.fascicle_length_px {
            let s = self.smoothers[1].push(smoothing, v);
            let f = if v != 0.0 { s / v } else { 1.0 };
            scale(f, [&mut m.fascicle_length_px, &mut m.fascicle_length_mm]);
        }
        if let Some(v) = m.pennation_angle_deg {
            m.pennation_angle_deg = Some(self.smoothers[2].push(smoothing, v));
        }
    }
}

/// The number the verdict's history and mirrored check compare for `task`: thickness or
/// circumference in pixels, the pennation angle for fascicles.
fn headline_px(task: Task, m: &Measurements) -> Option<f64> {
    match task {
        Task::Aponeurosis => m.thickness_px,
        Task::Region => m.circumference_px,
        Task::Fascicle => m.pennation_angle_deg,
    }
}

/// Least-squares line y = a + b x; returns (a, b).
pub fn fit_line(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if n < 2.0 {
        return (ys.first().copied().unwrap_or(0.0), 0.0);
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// Median (sorts `v`); NaN for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    //! Each reason of doubt produced by a constructed mask (the verdict's rules on their own are
    //! tested in [`super::quality`]).
    use super::quality::Doubt;
    use super::*;

    const W: usize = 256;
    const H: usize = 200;

    /// A probability map with the given filled rectangles (x0, x1, y0, y1; inclusive) at 1.
    fn map(rects: &[(usize, usize, usize, usize)]) -> Vec<f32> {
        let mut p = vec![0.0f32; W * H];
        for &(x0, x1, y0, y1) in rects {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    p[y * W + x] = 1.0;
                }
            }
        }
        p
    }

    fn judge(task: Task, p: &[f32]) -> Analysis {
        let mut post = Postprocessor::new(task, PostprocessConfig::default());
        post.process_full(p, Rect::full(W, H)).clone()
    }

    fn codes(a: &Analysis) -> Vec<&'static str> {
        a.doubt.codes()
    }

    #[test]
    fn two_clean_bands_are_ok() {
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 30, 37), (0, 255, 150, 157)]),
        );
        assert!(a.doubt.is_empty(), "{:?} {:?}", codes(&a), a.evidence);
        assert!((a.measurements.thickness_px.unwrap() - 112.0).abs() < 1.0);
        // Uncalibrated is the calibration's state, not a doubt.
        assert_eq!(a.flag, Some(Flag::Uncalibrated));
    }

    #[test]
    fn a_band_near_the_skin_over_a_thick_muscle_is_doubtful() {
        // A fascia near the skin, the superficial and the deep aponeurosis, all long: the two
        // shallowest give the fat layer (30 px) over a muscle four times as thick.
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 5, 10), (0, 255, 40, 46), (0, 255, 175, 181)]),
        );
        assert!(
            codes(&a).contains(&"extra_band"),
            "{:?} {:?}",
            codes(&a),
            a.evidence
        );
    }

    #[test]
    fn a_missing_deep_band_is_one_band() {
        let a = judge(Task::Aponeurosis, &map(&[(0, 255, 30, 37)]));
        assert_eq!(codes(&a), vec!["one_band"]);
        assert_eq!(a.measurements.thickness_px, None);
    }

    #[test]
    fn a_fragment_taken_for_the_deep_band_is_doubtful() {
        // The deep band split: a fragment just below the superficial band over the left part,
        // the rest of the deep band on the right.
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 30, 37), (0, 100, 50, 55), (120, 255, 170, 177)]),
        );
        assert!(
            codes(&a).contains(&"short_bands"),
            "{:?} {:?}",
            codes(&a),
            a.evidence
        );
    }

    #[test]
    fn a_short_band_paired_over_a_long_one_is_doubtful() {
        // A fragment just below the superficial band, over 55 % of the width (enough overlap),
        // with a long band beneath it closer than `max_deeper_gap_ratio` times the thickness:
        // the fragment may have been taken for the deep aponeurosis.
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 30, 37), (0, 140, 80, 85), (0, 255, 150, 157)]),
        );
        let e = a.evidence;
        assert!(e.deeper_gap_ratio.is_some_and(|r| r < 2.5), "{e:?}");
        assert!(e.overlap_fraction.is_some_and(|f| f >= 0.5), "{e:?}");
        assert_eq!(codes(&a), vec!["extra_band"], "{e:?}");
        // A short band near the skin paired with the superficial aponeurosis, the deep one
        // beneath: the same ambiguity from above.
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 140, 10, 14), (0, 255, 60, 67), (0, 255, 150, 157)]),
        );
        assert_eq!(codes(&a), vec!["extra_band"], "{:?}", a.evidence);
        // The same fragment grown long is a deep aponeurosis with a deeper muscle beneath.
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 30, 37), (0, 200, 80, 85), (0, 255, 150, 157)]),
        );
        assert_eq!(codes(&a), Vec::<&str>::new(), "{:?}", a.evidence);
    }

    #[test]
    fn a_band_between_the_aponeuroses_is_doubtful() {
        let a = judge(
            Task::Aponeurosis,
            &map(&[(0, 255, 30, 37), (80, 180, 90, 92), (0, 255, 150, 157)]),
        );
        assert_eq!(codes(&a), vec!["band_between"], "{:?}", a.evidence);
    }

    #[test]
    fn diverging_aponeuroses_are_doubtful() {
        let mut p = map(&[(0, 255, 20, 26)]);
        // A deep band rising 25 degrees across the region.
        let slope = 25f64.to_radians().tan();
        for x in 0..W {
            let y = (180.0 - slope * x as f64) as usize;
            for yy in y..y + 6 {
                p[yy * W + x] = 1.0;
            }
        }
        let a = judge(Task::Aponeurosis, &p);
        assert!(
            codes(&a).contains(&"not_parallel"),
            "{:?} {:?}",
            codes(&a),
            a.evidence
        );
    }

    fn ellipse_map(cx: f64, cy: f64, a: f64, b: f64) -> Vec<f32> {
        let mut p = vec![0.0f32; W * H];
        for y in 0..H {
            for x in 0..W {
                let (dx, dy) = ((x as f64 + 0.5 - cx) / a, (y as f64 + 0.5 - cy) / b);
                if dx * dx + dy * dy <= 1.0 {
                    p[y * W + x] = 1.0;
                }
            }
        }
        p
    }

    #[test]
    fn a_head_inside_the_image_is_ok_one_cut_by_its_edge_is_not() {
        let a = judge(Task::Region, &ellipse_map(128.0, 100.0, 80.0, 60.0));
        assert!(a.doubt.is_empty(), "{:?} {:?}", codes(&a), a.evidence);
        let a = judge(Task::Region, &ellipse_map(40.0, 100.0, 80.0, 60.0));
        assert!(codes(&a).contains(&"touches_border"), "{:?}", a.evidence);
    }

    #[test]
    fn a_region_that_is_no_ellipse_fits_poorly() {
        // An L shape.
        let a = judge(
            Task::Region,
            &map(&[(40, 80, 30, 170), (40, 200, 130, 170)]),
        );
        assert!(
            codes(&a).contains(&"poor_fit"),
            "{:?} {:?}",
            codes(&a),
            a.evidence
        );
    }

    #[test]
    fn a_jump_along_a_stream_is_doubtful_unless_frames_were_dropped() {
        let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
        let thin = map(&[(0, 255, 30, 37), (0, 255, 130, 137)]);
        let thick = map(&[(0, 255, 30, 37), (0, 255, 185, 192)]);
        for seq in 1..=5 {
            post.set_frame_seq(Some(seq));
            assert!(post.process_full(&thin, Rect::full(W, H)).doubt.is_empty());
        }
        // 92 px to 147 px from one frame to the next.
        post.set_frame_seq(Some(6));
        let a = post.process_full(&thick, Rect::full(W, H)).clone();
        assert_eq!(codes(&a), vec!["jump"], "{:?}", a.evidence);
        // The same change after 9 dropped frames is within the allowance.
        let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
        for seq in 1..=5 {
            post.set_frame_seq(Some(seq));
            post.process_full(&thin, Rect::full(W, H));
        }
        post.set_frame_seq(Some(15));
        let a = post.process_full(&thick, Rect::full(W, H)).clone();
        assert!(a.doubt.is_empty(), "{:?}", a.evidence);
        // Still images have no history.
        let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
        post.process_full(&thin, Rect::full(W, H));
        assert!(post.process_full(&thick, Rect::full(W, H)).doubt.is_empty());
    }

    #[test]
    fn the_model_flags_are_doubts_and_the_gate_can_be_switched_off() {
        let p = map(&[(0, 255, 30, 37), (80, 180, 90, 92), (0, 255, 150, 157)]);
        let mut cfg = PostprocessConfig::default();
        cfg.quality.enabled = false;
        let mut post = Postprocessor::new(Task::Aponeurosis, cfg);
        assert!(post.process_full(&p, Rect::full(W, H)).doubt.is_empty());
        // Low confidence stays a doubt with the rules off.
        let half: Vec<f32> = p.iter().map(|&x| x * 0.55).collect();
        let a = post.process_full(&half, Rect::full(W, H)).clone();
        assert_eq!(a.flag, Some(Flag::LowConfidence));
        assert!(a.doubt.contains(Doubt::LowConfidence));
    }
}
