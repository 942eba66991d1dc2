//! The verdict on a measurement: `ok`, or `doubtful` with the reasons ([`Doubt`]). A model's
//! own confidence is as high for a wrong answer as for a right one on a scanner it has never seen,
//! so most reasons come from evidence in the frame itself: whether the two aponeuroses look like
//! the two sides of one muscle (they overlap across most of the region, run nearly parallel, the
//! thickness between them is consistent, nothing band-like lies between them, no third long band
//! makes the choice of pair ambiguous), whether a head's outline is an ellipse inside the image,
//! whether the fascicles agree with each other, and, along a stream, whether a number jumped
//! against its recent history (scaled by the gap in frame numbers, so frames dropped under load
//! are not a jump). The evidence is published beside the verdict ([`Evidence`]) so a threshold
//! can be checked against what it saw. Settings: `[quality]` ([`QualityConfig`]). Pure
//! arithmetic on numbers handed to it; no I/O and no other module of the crate.

use serde::Serialize;

/// One reason a measurement is doubtful. The codes ([`Doubt::as_str`]) are published and stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Doubt {
    /// No structure found (the flag of the same name).
    NoStructure,
    /// Only one aponeurosis found (the flag of the same name).
    OneBand,
    /// The model is unsure (the flag of the same name).
    LowConfidence,
    /// The two aponeuroses overlap over less than `quality.min_overlap` of the region's width.
    ShortBands,
    /// The two aponeuroses diverge by more than `quality.max_band_angle_deg`.
    NotParallel,
    /// The thickness along the overlap departs from a straight trend by more than
    /// `quality.max_thickness_spread` of its median (a fragment taken as an aponeurosis).
    UnevenThickness,
    /// A third band lies between the two aponeuroses.
    BandBetween,
    /// Another long band makes the choice of pair ambiguous: one above the superficial
    /// aponeurosis (skin side), or one below the deep aponeurosis much farther away than the
    /// measured thickness (a thin layer over a thick one: a fascia near the skin taken for the
    /// superficial aponeurosis looks like this), or any long band below the pair when one of
    /// the pair is itself short (under `quality.long_band_span`: a fragment near the skin or
    /// just below the superficial aponeurosis, paired with a long band, looks like this).
    ExtraBand,
    /// Along a stream: the number changed by more than `quality.max_jump` against its recent
    /// history.
    Jump,
    /// The same frame mirrored left to right gives a number more than `quality.mirror_tolerance`
    /// away (the model's answer depends on which way the probe was held).
    MirrorDisagrees,
    /// The region touches the edge of the image (the outline may be cut off).
    TouchesBorder,
    /// The region's outline is not the ellipse fitted to it (`quality.max_fit_residual`).
    PoorFit,
    /// The fitted ellipse is larger than the image region or implausibly small.
    ImplausibleSize,
    /// Fewer fascicles than `quality.min_fascicles` were measured.
    FewFascicles,
    /// The fascicles' pennation angles disagree (interquartile range over
    /// `quality.max_fascicle_spread_deg`).
    FascicleSpread,
}

impl Doubt {
    /// Every reason, in the order they are published.
    pub const ALL: [Doubt; 15] = [
        Doubt::NoStructure,
        Doubt::OneBand,
        Doubt::LowConfidence,
        Doubt::ShortBands,
        Doubt::NotParallel,
        Doubt::UnevenThickness,
        Doubt::BandBetween,
        Doubt::ExtraBand,
        Doubt::Jump,
        Doubt::MirrorDisagrees,
        Doubt::TouchesBorder,
        Doubt::PoorFit,
        Doubt::ImplausibleSize,
        Doubt::FewFascicles,
        Doubt::FascicleSpread,
    ];

    /// The published reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Doubt::NoStructure => "no_structure",
            Doubt::OneBand => "one_band",
            Doubt::LowConfidence => "low_confidence",
            Doubt::ShortBands => "short_bands",
            Doubt::NotParallel => "not_parallel",
            Doubt::UnevenThickness => "uneven_thickness",
            Doubt::BandBetween => "band_between",
            Doubt::ExtraBand => "extra_band",
            Doubt::Jump => "jump",
            Doubt::MirrorDisagrees => "mirror_disagrees",
            Doubt::TouchesBorder => "touches_border",
            Doubt::PoorFit => "poor_fit",
            Doubt::ImplausibleSize => "implausible_size",
            Doubt::FewFascicles => "few_fascicles",
            Doubt::FascicleSpread => "fascicle_spread",
        }
    }

    /// The reason in words, for the viewer, the overlay and `pocusd status`.
    pub fn words(self) -> &'static str {
        match self {
            Doubt::NoStructure => "nothing found",
            Doubt::OneBand => "only one aponeurosis found",
            Doubt::LowConfidence => "the model is unsure",
            Doubt::ShortBands => "the aponeuroses overlap too little",
            Doubt::NotParallel => "the aponeuroses are not parallel",
            Doubt::UnevenThickness => "the thickness varies along the muscle",
            Doubt::BandBetween => "a band lies between the aponeuroses",
            Doubt::ExtraBand => "another long band: which pair bounds the muscle is unclear",
            Doubt::Jump => "the number jumped against the last frames",
            Doubt::MirrorDisagrees => "the mirrored image gives another number",
            Doubt::TouchesBorder => "the outline touches the image edge",
            Doubt::PoorFit => "the outline is not an ellipse",
            Doubt::ImplausibleSize => "implausible size",
            Doubt::FewFascicles => "too few fascicles",
            Doubt::FascicleSpread => "the fascicles disagree",
        }
    }

    /// The reason of a published code.
    pub fn parse(code: &str) -> Option<Doubt> {
        Doubt::ALL.into_iter().find(|d| d.as_str() == code)
    }
}

/// A set of [`Doubt`]s (a bit set: no allocation on the frame path). Empty means `ok`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Doubts(u32);

impl Doubts {
    /// No doubt.
    pub const NONE: Doubts = Doubts(0);

    /// Adds a reason.
    pub fn insert(&mut self, d: Doubt) {
        self.0 |= 1 << d as u32;
    }

    /// Whether `d` is among the reasons.
    pub fn contains(self, d: Doubt) -> bool {
        self.0 & (1 << d as u32) != 0
    }

    /// Whether there is no reason for doubt.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reasons, in [`Doubt::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Doubt> {
        Doubt::ALL.into_iter().filter(move |d| self.contains(*d))
    }

    /// The reason codes.
    pub fn codes(self) -> Vec<&'static str> {
        self.iter().map(Doubt::as_str).collect()
    }

    /// `"ok"` or `"doubtful"`.
    pub fn quality(self) -> &'static str {
        if self.is_empty() {
            "ok"
        } else {
            "doubtful"
        }
    }

    /// `ok`, or `doubtful: ` and the reason codes (a text where a structured key is not
    /// available, e.g. the DICOM report).
    pub fn summary(self) -> String {
        if self.is_empty() {
            "ok".to_string()
        } else {
            format!("doubtful: {}", self.codes().join(", "))
        }
    }

    /// The reasons in words, joined by "; " (empty when ok).
    pub fn words(self) -> String {
        self.iter().map(Doubt::words).collect::<Vec<_>>().join("; ")
    }

    /// Both sets' reasons.
    pub fn union(self, other: Doubts) -> Doubts {
        Doubts(self.0 | other.0)
    }
}

impl FromIterator<Doubt> for Doubts {
    fn from_iter<I: IntoIterator<Item = Doubt>>(iter: I) -> Self {
        let mut s = Doubts::NONE;
        for d in iter {
            s.insert(d);
        }
        s
    }
}

impl Serialize for Doubts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Doubt::as_str))
    }
}

/// The gate's settings (`[quality]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityConfig {
    /// Off: only the model's own flags make a measurement doubtful.
    pub enabled: bool,
    /// Least overlap of the two aponeuroses, as a fraction of the region's width.
    pub min_overlap: f64,
    /// Largest angle between the two aponeuroses, degrees.
    pub max_band_angle_deg: f64,
    /// Largest departure of the thickness from its straight trend along the overlap (90th
    /// percentile of the absolute residual, as a fraction of the median thickness).
    pub max_thickness_spread: f64,
    /// A band between the aponeuroses counts when it spans at least this fraction of their
    /// overlap.
    pub min_between_span: f64,
    /// A band counts as long (for `extra_band`: one above the superficial aponeurosis) when it
    /// spans at least this fraction of the region's width.
    pub long_band_span: f64,
    /// A long band below the deep aponeurosis farther than this many times the measured
    /// thickness makes the pair ambiguous (`extra_band`).
    pub max_deeper_gap_ratio: f64,
    /// Largest change of a number against the median of its recent history, as a fraction, for
    /// one frame of gap; the allowance grows with the square root of the gap in `seq`.
    pub max_jump: f64,
    /// History older than this many frames (by `seq`) is forgotten.
    pub history_frames: u64,
    /// The mirrored frame's number may differ by this fraction (`mirror_disagrees`).
    pub mirror_tolerance: f64,
    /// Along a stream, the mirrored check runs on every this many frames (0: never, the
    /// default: at 10 it put the mirrored frames' double inference into the p99 latency, 38 to
    /// 40 ms at 30 fps); still images are always checked.
    pub mirror_every: u64,
    /// Region: largest mean relative departure of the outline from its ellipse.
    pub max_fit_residual: f64,
    /// Fascicles: fewest measured fascicles.
    pub min_fascicles: u64,
    /// Fascicles: largest interquartile range of the pennation angles, degrees.
    pub max_fascicle_spread_deg: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_overlap: 0.5,
            max_band_angle_deg: 12.0,
            max_thickness_spread: 0.25,
            min_between_span: 0.3,
            long_band_span: 0.6,
            max_deeper_gap_ratio: 2.5,
            max_jump: 0.2,
            history_frames: 30,
            mirror_tolerance: 0.1,
            mirror_every: 0,
            max_fit_residual: 0.05,
            min_fascicles: 3,
            max_fascicle_spread_deg: 10.0,
        }
    }
}

/// What the verdict was made from (published beside it by `infer` and `eval`); `None`: not
/// measured for this task or frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// Aponeuroses: their overlap as a fraction of the region's width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_fraction: Option<f64>,
    /// Aponeuroses: the angle between their fitted lines, degrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band_angle_diff_deg: Option<f64>,
    /// Aponeuroses: 90th percentile of |thickness - its straight trend| over the median thickness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thickness_spread: Option<f64>,
    /// Aponeuroses: bands lying between the two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bands_between: Option<u64>,
    /// Aponeuroses: bands spanning at least `long_band_span` of the width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_bands: Option<u64>,
    /// Aponeuroses: long bands above the superficial one (skin side) that were not chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_bands_above: Option<u64>,
    /// Aponeuroses: for the nearest long band below the deep one, its distance below the deep
    /// band over the measured thickness (a thin layer over a thick one: which is the muscle?).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deeper_gap_ratio: Option<f64>,
    /// Aponeuroses: the shorter of the two chosen bands' spans, as a fraction of the region's
    /// width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_span_fraction: Option<f64>,
    /// Along a stream: |value - history median| / history median, and the allowance it was held
    /// against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jump: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jump_allowed: Option<f64>,
    /// The frame mirrored left to right: |value - mirrored value| / value (1 when the mirrored
    /// frame gives no number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_diff: Option<f64>,
    /// Region: mean relative departure of the outline from the fitted ellipse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit_residual: Option<f64>,
    /// Region: whether the region touches the image's edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touches_border: Option<bool>,
    /// Region: the fitted ellipse's area over the region of interest's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ellipse_area_fraction: Option<f64>,
    /// Fascicles: measured fascicles and the pennation angles' interquartile range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicles: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_spread_deg: Option<f64>,
}

/// The smallest ellipse area (over the region of interest's) a head can plausibly have.
const MIN_ELLIPSE_AREA_FRACTION: f64 = 0.005;

/// The reasons `e` gives under `cfg` (the model's flags are added by the caller).
pub fn judge(e: &Evidence, cfg: &QualityConfig) -> Doubts {
    let mut d = Doubts::NONE;
    if !cfg.enabled {
        return d;
    }
    let mut flag = |cond: bool, doubt: Doubt| {
        if cond {
            d.insert(doubt);
        }
    };
    flag(
        e.overlap_fraction.is_some_and(|x| x < cfg.min_overlap),
        Doubt::ShortBands,
    );
    flag(
        e.band_angle_diff_deg
            .is_some_and(|x| x > cfg.max_band_angle_deg),
        Doubt::NotParallel,
    );
    flag(
        e.thickness_spread
            .is_some_and(|x| x > cfg.max_thickness_spread),
        Doubt::UnevenThickness,
    );
    flag(e.bands_between.is_some_and(|n| n > 0), Doubt::BandBetween);
    flag(
        e.long_bands_above.is_some_and(|n| n > 0)
            || e.deeper_gap_ratio
                .is_some_and(|r| r > cfg.max_deeper_gap_ratio)
            || (e.deeper_gap_ratio.is_some()
                && e.short_span_fraction
                    .is_some_and(|f| f < cfg.long_band_span)),
        Doubt::ExtraBand,
    );
    flag(
        matches!((e.jump, e.jump_allowed), (Some(j), Some(a)) if j > a),
        Doubt::Jump,
    );
    flag(
        e.mirror_diff.is_some_and(|x| x > cfg.mirror_tolerance),
        Doubt::MirrorDisagrees,
    );
    flag(e.touches_border == Some(true), Doubt::TouchesBorder);
    flag(
        e.fit_residual.is_some_and(|x| x > cfg.max_fit_residual),
        Doubt::PoorFit,
    );
    flag(
        e.ellipse_area_fraction
            .is_some_and(|x| !(MIN_ELLIPSE_AREA_FRACTION..=1.0).contains(&x)),
        Doubt::ImplausibleSize,
    );
    flag(
        e.fascicles.is_some_and(|n| n < cfg.min_fascicles),
        Doubt::FewFascicles,
    );
    flag(
        e.fascicle_spread_deg
            .is_some_and(|x| x > cfg.max_fascicle_spread_deg),
        Doubt::FascicleSpread,
    );
    d
}

/// Nearest-rank percentile `q` (0..1) of `v` (sorted in place); NaN for an empty slice.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// The aponeuroses' thickness consistency: the vertical gaps `gaps` at columns `xs` get a
/// least-squares straight trend; returns the 90th percentile of the absolute residuals over the
/// median gap. `scratch` is reused. `None` under 4 columns or with a non-positive median.
pub fn thickness_spread(xs: &[f64], gaps: &[f64], scratch: &mut Vec<f64>) -> Option<f64> {
    if xs.len() < 4 || xs.len() != gaps.len() {
        return None;
    }
    let (a, b) = super::fit_line(xs, gaps);
    scratch.clear();
    scratch.extend_from_slice(gaps);
    let med = super::median(scratch);
    if med.is_nan() || med <= 0.0 {
        return None;
    }
    scratch.clear();
    scratch.extend(xs.iter().zip(gaps).map(|(x, g)| (g - (a + b * x)).abs()));
    Some(percentile(scratch, 0.9) / med)
}

/// The recent history of one number along a stream: judges a new value against the median of
/// the values within `history_frames` (by `seq`), allowing `max_jump` times the square root of
/// the gap to the newest of them.
#[derive(Debug, Clone, Default)]
pub struct History {
    values: std::collections::VecDeque<(u64, f64)>,
    scratch: Vec<f64>,
}

/// Values kept in a [`History`].
const HISTORY_LEN: usize = 5;

impl History {
    /// Forgets everything (a new stream, a new model, a layout change).
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// Adds `v` of frame `seq`; returns (relative jump, allowance) against the history before
    /// it, `None` when there is no recent history.
    pub fn push(&mut self, seq: u64, v: f64, cfg: &QualityConfig) -> Option<(f64, f64)> {
        self.values
            .retain(|&(s, _)| s < seq && seq - s <= cfg.history_frames);
        let out = match self.values.back() {
            Some(&(newest, _)) if v.is_finite() => {
                self.scratch.clear();
                self.scratch.extend(self.values.iter().map(|&(_, x)| x));
                let med = super::median(&mut self.scratch);
                (med.is_finite() && med > 0.0).then(|| {
                    let gap = (seq - newest).max(1) as f64;
                    ((v - med).abs() / med, cfg.max_jump * gap.sqrt())
                })
            }
            _ => None,
        };
        if v.is_finite() {
            self.values.push_back((seq, v));
            while self.values.len() > HISTORY_LEN {
                self.values.pop_front();
            }
        }
        out
    }
}

/// The mean relative departure of `points` from the ellipse (centre, semi-axes `a` >= `b`,
/// rotation `angle_deg`): for each point, |normalised radius - 1|. `None` for no points or a
/// degenerate ellipse.
pub fn ellipse_residual(
    points: &[(f64, f64)],
    centre: (f64, f64),
    a: f64,
    b: f64,
    angle_deg: f64,
) -> Option<f64> {
    if points.is_empty() || a <= 0.0 || b <= 0.0 || !a.is_finite() || !b.is_finite() {
        return None;
    }
    let (s, c) = angle_deg.to_radians().sin_cos();
    let sum: f64 = points
        .iter()
        .map(|&(x, y)| {
            let (dx, dy) = (x - centre.0, y - centre.1);
            let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
            ((u / a).powi(2) + (v / b).powi(2)).sqrt() - 1.0
        })
        .map(f64::abs)
        .sum();
    Some(sum / points.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for d in Doubt::ALL {
            assert_eq!(Doubt::parse(d.as_str()), Some(d));
            assert!(seen.insert(d.as_str()), "{} twice", d.as_str());
            assert!(!d.words().is_empty());
        }
        let s: Doubts = [Doubt::Jump, Doubt::OneBand].into_iter().collect();
        assert_eq!(s.codes(), vec!["one_band", "jump"]);
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"["one_band","jump"]"#);
        assert_eq!(s.quality(), "doubtful");
        assert_eq!(Doubts::NONE.quality(), "ok");
        assert!(Doubts::NONE.codes().is_empty());
    }

    #[test]
    fn each_rule_fires_on_its_own_evidence_only() {
        let cfg = QualityConfig::default();
        let clean = Evidence {
            overlap_fraction: Some(0.9),
            band_angle_diff_deg: Some(2.0),
            thickness_spread: Some(0.05),
            bands_between: Some(0),
            long_bands: Some(3),
            long_bands_above: Some(0),
            deeper_gap_ratio: Some(1.5),
            short_span_fraction: Some(0.9),
            jump: Some(0.01),
            jump_allowed: Some(0.2),
            mirror_diff: Some(0.01),
            fit_residual: Some(0.01),
            touches_border: Some(false),
            ellipse_area_fraction: Some(0.3),
            fascicles: Some(12),
            fascicle_spread_deg: Some(3.0),
        };
        assert!(judge(&clean, &cfg).is_empty());
        let cases: [(Evidence, Doubt); 14] = [
            (
                Evidence {
                    overlap_fraction: Some(0.3),
                    ..clean
                },
                Doubt::ShortBands,
            ),
            (
                Evidence {
                    band_angle_diff_deg: Some(20.0),
                    ..clean
                },
                Doubt::NotParallel,
            ),
            (
                Evidence {
                    thickness_spread: Some(0.5),
                    ..clean
                },
                Doubt::UnevenThickness,
            ),
            (
                Evidence {
                    bands_between: Some(1),
                    ..clean
                },
                Doubt::BandBetween,
            ),
            (
                Evidence {
                    long_bands_above: Some(1),
                    ..clean
                },
                Doubt::ExtraBand,
            ),
            (
                Evidence {
                    deeper_gap_ratio: Some(3.6),
                    ..clean
                },
                Doubt::ExtraBand,
            ),
            (
                Evidence {
                    short_span_fraction: Some(0.4),
                    ..clean
                },
                Doubt::ExtraBand,
            ),
            (
                Evidence {
                    jump: Some(0.5),
                    ..clean
                },
                Doubt::Jump,
            ),
            (
                Evidence {
                    mirror_diff: Some(0.3),
                    ..clean
                },
                Doubt::MirrorDisagrees,
            ),
            (
                Evidence {
                    touches_border: Some(true),
                    ..clean
                },
                Doubt::TouchesBorder,
            ),
            (
                Evidence {
                    fit_residual: Some(0.2),
                    ..clean
                },
                Doubt::PoorFit,
            ),
            (
                Evidence {
                    ellipse_area_fraction: Some(1.4),
                    ..clean
                },
                Doubt::ImplausibleSize,
            ),
            (
                Evidence {
                    fascicles: Some(1),
                    ..clean
                },
                Doubt::FewFascicles,
            ),
            (
                Evidence {
                    fascicle_spread_deg: Some(25.0),
                    ..clean
                },
                Doubt::FascicleSpread,
            ),
        ];
        for (e, want) in cases {
            let got = judge(&e, &cfg);
            assert_eq!(got.codes(), vec![want.as_str()], "{e:?}");
        }
        let off = QualityConfig {
            enabled: false,
            ..cfg
        };
        assert!(judge(&cases_all_bad(), &off).is_empty());
        assert_eq!(judge(&cases_all_bad(), &cfg).iter().count(), 12);
    }

    fn cases_all_bad() -> Evidence {
        Evidence {
            overlap_fraction: Some(0.1),
            band_angle_diff_deg: Some(40.0),
            thickness_spread: Some(1.0),
            bands_between: Some(2),
            long_bands: Some(4),
            long_bands_above: Some(1),
            deeper_gap_ratio: Some(0.2),
            short_span_fraction: Some(0.1),
            jump: Some(2.0),
            jump_allowed: Some(0.2),
            mirror_diff: Some(1.0),
            fit_residual: Some(0.5),
            touches_border: Some(true),
            ellipse_area_fraction: Some(0.0001),
            fascicles: Some(0),
            fascicle_spread_deg: Some(40.0),
        }
    }

    #[test]
    fn thickness_spread_tolerates_converging_bands_but_not_a_step() {
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        let mut scratch = Vec::new();
        // Converging: the gap shrinks linearly from 80 to 60.
        let converging: Vec<f64> = xs.iter().map(|x| 80.0 - 0.2 * x).collect();
        let s = thickness_spread(&xs, &converging, &mut scratch).unwrap();
        assert!(s < 1e-9, "{s}");
        // A fragment taken as the deep band over a third of the overlap: a step of 40 px.
        let step: Vec<f64> = xs
            .iter()
            .map(|&x| if x < 33.0 { 20.0 } else { 70.0 })
            .collect();
        let s = thickness_spread(&xs, &step, &mut scratch).unwrap();
        assert!(s > 0.25, "{s}");
        assert_eq!(thickness_spread(&xs[..3], &step[..3], &mut scratch), None);
    }

    #[test]
    fn history_scales_the_allowance_with_the_gap_and_forgets_old_frames() {
        let cfg = QualityConfig::default();
        let mut h = History::default();
        assert_eq!(h.push(1, 100.0, &cfg), None);
        let (j, a) = h.push(2, 110.0, &cfg).unwrap();
        assert!((j - 0.1).abs() < 1e-9 && (a - 0.2).abs() < 1e-9);
        // 40 % after one frame is a jump; after 9 dropped frames the allowance is 0.6.
        let (j, a) = h.push(3, 147.0, &cfg).unwrap();
        assert!(j > a, "{j} {a}");
        let mut h2 = History::default();
        h2.push(1, 100.0, &cfg);
        let (j, a) = h2.push(10, 140.0, &cfg).unwrap();
        assert!(j < a, "{j} {a}");
        // Older than history_frames: no judgement.
        assert_eq!(h2.push(10 + cfg.history_frames + 1, 500.0, &cfg), None);
        // A non-finite value is never kept.
        let mut h3 = History::default();
        assert_eq!(h3.push(1, f64::NAN, &cfg), None);
        assert_eq!(h3.push(2, 10.0, &cfg), None);
    }

    #[test]
    fn ellipse_residual_is_zero_on_the_ellipse_and_grows_off_it() {
        let (a, b, ang) = (50.0, 30.0, 25.0f64);
        let (s, c) = ang.to_radians().sin_cos();
        let on: Vec<(f64, f64)> = (0..72)
            .map(|k| {
                let t = f64::from(k) * 5.0f64.to_radians();
                let (u, v) = (a * t.cos(), b * t.sin());
                (100.0 + u * c - v * s, 80.0 + u * s + v * c)
            })
            .collect();
        let r = ellipse_residual(&on, (100.0, 80.0), a, b, ang).unwrap();
        assert!(r < 1e-9, "{r}");
        let off: Vec<(f64, f64)> = on
            .iter()
            .map(|&(x, y)| (100.0 + (x - 100.0) * 1.2, 80.0 + (y - 80.0) * 1.2))
            .collect();
        let r = ellipse_residual(&off, (100.0, 80.0), a, b, ang).unwrap();
        assert!((r - 0.2).abs() < 1e-9, "{r}");
        assert_eq!(ellipse_residual(&[], (0.0, 0.0), a, b, 0.0), None);
    }
}
