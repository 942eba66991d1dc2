//! Fascicle length and pennation angle from a fascicle-fragment mask and the two aponeuroses found
//! on the same frame (DL_Track's measurement, live). Each fragment (a connected component) becomes
//! a line segment by its principal axis (orientation, and length from the second moment). When the
//! aponeuroses are known only fragments whose centres lie between them count; the dominant
//! orientation is the one most of their length agrees with (within
//! [`FascicleStage::max_deviation_deg`]), and only fragments that agree with it are kept. Each
//! kept fragment is extended until it meets the superficial and the deep aponeurosis' inner
//! edges: the fascicle length is the distance between those meeting points, the
//! pennation angle the angle to the deep aponeurosis, both in millimetres space when calibrated (so
//! non-square pixels give true angles). Reported: median, count and interquartile spread.
//! No I/O; depends only on [`super::geometry`].

use super::geometry::Component;
use super::median;

/// The aponeuroses' inner edges as lines `y = a + b x` in region-of-interest pixels: the
/// superficial band's deep edge and the deep band's superficial edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApoLines {
    pub superficial: (f64, f64),
    pub deep: (f64, f64),
}

impl ApoLines {
    fn y_at(line: (f64, f64), x: f64) -> f64 {
        line.0 + line.1 * x
    }
}

/// One measured fascicle: where it meets the superficial and the deep aponeurosis
/// (region-of-interest pixels until the postprocessor moves it to frame pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FascicleLine {
    pub from: (f64, f64),
    pub to: (f64, f64),
}

/// The measurement of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FascicleResult {
    /// Dominant fragment orientation, degrees from the x axis (y down, -90..90).
    pub orientation_deg: f64,
    /// Fragments that agree with the dominant orientation.
    pub fragments: usize,
    /// Fascicles with both meeting points (what the medians are over).
    pub count: usize,
    pub length_px: Option<f64>,
    pub length_spread_px: Option<f64>,
    pub length_mm: Option<f64>,
    pub length_spread_mm: Option<f64>,
    pub pennation_deg: Option<f64>,
    pub pennation_spread_deg: Option<f64>,
}

/// A fragment as a segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    centre: (f64, f64),
    angle_deg: f64,
    length_px: f64,
}

/// The stage; owns its scratch buffers.
#[derive(Debug, Clone)]
pub struct FascicleStage {
    /// Fragments farther than this from the dominant orientation are dropped, degrees.
    pub max_deviation_deg: f64,
    /// Fewest pixels of a fragment.
    pub min_area_px: usize,
    /// Least major/minor axis ratio of a fragment (thin lines, not blobs).
    pub min_elongation: f64,
    segments: Vec<Segment>,
    /// The fascicles of the last frame.
    pub lines: Vec<FascicleLine>,
    lengths_px: Vec<f64>,
    lengths_mm: Vec<f64>,
    angles: Vec<f64>,
}

impl Default for FascicleStage {
    fn default() -> Self {
        Self {
            max_deviation_deg: 10.0,
            min_area_px: 6,
            min_elongation: 2.5,
            segments: Vec::new(),
            lines: Vec::new(),
            lengths_px: Vec::new(),
            lengths_mm: Vec::new(),
            angles: Vec::new(),
        }
    }
}

/// Difference of two axial angles (a line at 10 degrees is the line at -170), degrees, 0..=90.
pub fn axial_difference_deg(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(180.0);
    d.min(180.0 - d)
}

/// Interquartile range (sorts `v`).
fn iqr(v: &mut [f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos.fract());
        let j = (i + 1).min(v.len() - 1);
        v[i] * (1.0 - f) + v[j] * f
    };
    q(0.75) - q(0.25)
}

impl FascicleStage {
    /// Measures the fragments among `components` (labelled in a region of interest `roi_w`
    /// pixels wide) against `apo`; `scale` is (mm per px along x, along y) when calibrated.
    /// `None` when no fragment qualifies.
    pub fn measure(
        &mut self,
        components: &[Component],
        apo: Option<ApoLines>,
        scale: Option<(f64, f64)>,
        roi_w: usize,
    ) -> Option<FascicleResult> {
        self.segments.clear();
        self.lines.clear();
        for c in components {
            if c.area < self.min_area_px {
                continue;
            }
            let (angle_deg, elongation) = c.orientation();
            if elongation < self.min_elongation {
                continue;
            }
            self.segments.push(Segment {
                centre: c.centroid(),
                angle_deg,
                length_px: c.principal_length(),
            });
        }
        // With the aponeuroses known, only fragments inside the muscle vote: a bright line in the
        // fat above or along an aponeurosis is not a fascicle and would pull the orientation flat.
        if let Some(apo) = apo {
            self.segments.retain(|s| {
                let (cx, cy) = s.centre;
                cy > ApoLines::y_at(apo.superficial, cx) && cy < ApoLines::y_at(apo.deep, cx)
            });
        }
        let dev = self.max_deviation_deg;
        // The orientation most fragment length agrees with.
        let support = |a: f64, segs: &[Segment]| -> f64 {
            segs.iter()
                .filter(|s| axial_difference_deg(s.angle_deg, a) <= dev)
                .map(|s| s.length_px)
                .sum()
        };
        let seed = self
            .segments
            .iter()
            .map(|s| (s.angle_deg, support(s.angle_deg, &self.segments)))
            .max_by(|x, y| x.1.total_cmp(&y.1))?
            .0;
        // Refine: length-weighted axial mean (doubled angles) of the agreeing fragments.
        let (mut sx, mut sy) = (0.0, 0.0);
        for s in &self.segments {
            if axial_difference_deg(s.angle_deg, seed) <= dev {
                let t = (2.0 * s.angle_deg).to_radians();
                sx += s.length_px * t.cos();
                sy += s.length_px * t.sin();
            }
        }
        let dominant = 0.5 * sy.atan2(sx).to_degrees();
        self.segments
            .retain(|s| axial_difference_deg(s.angle_deg, dominant) <= dev);
        let mut result = FascicleResult {
            orientation_deg: dominant,
            fragments: self.segments.len(),
            ..Default::default()
        };
        let Some(apo) = apo else {
            return Some(result);
        };
        let (mx, my) = scale.unwrap_or((1.0, 1.0));
        self.lengths_px.clear();
        self.lengths_mm.clear();
        self.angles.clear();
        let w = roi_w as f64;
        for s in &self.segments {
            let (cx, cy) = s.centre;
            let (dy, dx) = s.angle_deg.to_radians().sin_cos();
            let meet = |(a, b): (f64, f64)| -> Option<(f64, f64)> {
                let denom = dy - b * dx;
                if denom.abs() < 0.05 {
                    return None; // (nearly) parallel to the aponeurosis
                }
                let t = (a + b * cx - cy) / denom;
                let p = (cx + t * dx, cy + t * dy);
                // Extrapolated at most half the region's width beyond it.
                (p.0 >= -0.5 * w && p.0 <= 1.5 * w).then_some(p)
            };
            let (Some(from), Some(to)) = (meet(apo.superficial), meet(apo.deep)) else {
                continue;
            };
            let len_px = (to.0 - from.0).hypot(to.1 - from.1);
            let len_mm = ((to.0 - from.0) * mx).hypot((to.1 - from.1) * my);
            // Angle to the deep aponeurosis, in millimetre space.
            let (ux, uy) = (dx * mx, dy * my);
            let (vx, vy) = (mx, apo.deep.1 * my);
            let cos = ((ux * vx + uy * vy).abs() / (ux.hypot(uy) * vx.hypot(vy))).min(1.0);
            self.lengths_px.push(len_px);
            self.lengths_mm.push(len_mm);
            self.angles.push(cos.acos().to_degrees());
            self.lines.push(FascicleLine { from, to });
        }
        result.count = self.lines.len();
        if result.count == 0 {
            return Some(result);
        }
        result.length_px = Some(median(&mut self.lengths_px));
        result.length_spread_px = Some(iqr(&mut self.lengths_px));
        if scale.is_some() {
            result.length_mm = Some(median(&mut self.lengths_mm));
            result.length_spread_mm = Some(iqr(&mut self.lengths_mm));
        }
        result.pennation_deg = Some(median(&mut self.angles));
        result.pennation_spread_deg = Some(iqr(&mut self.angles));
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::super::geometry::Labeller;
    use super::*;

    #[test]
    fn axial_differences_wrap() {
        assert!((axial_difference_deg(10.0, -170.0)).abs() < 1e-9);
        assert!((axial_difference_deg(89.0, -89.0) - 2.0).abs() < 1e-9);
        assert!((axial_difference_deg(20.0, 5.0) - 15.0).abs() < 1e-9);
    }

    /// Draws a 3 px thick line from `a` to `b` into a `w`-wide mask.
    fn draw(mask: &mut [u8], w: usize, a: (f64, f64), b: (f64, f64)) {
        let steps = ((b.0 - a.0).hypot(b.1 - a.1) * 4.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            for dy in -1..=1 {
                let (xi, yi) = (x as usize, (y as isize + dy) as usize);
                mask[yi * w + xi] = 255;
            }
        }
    }

    #[test]
    fn only_fragments_inside_the_muscle_set_the_orientation() {
        let (w, h) = (200, 120);
        let mut mask = vec![0u8; w * h];
        // Two long, nearly flat lines in the fat above the superficial aponeurosis (y = 20) ...
        draw(&mut mask, w, (10.0, 8.0), (190.0, 12.0));
        draw(&mut mask, w, (10.0, 14.0), (190.0, 17.0));
        // ... and three shorter fascicles at 20 degrees between it and the deep one (y = 100).
        for x0 in [30.0, 80.0, 130.0] {
            let a = 20f64.to_radians();
            draw(
                &mut mask,
                w,
                (x0, 40.0),
                (x0 + 50.0 * a.cos(), 40.0 + 50.0 * a.sin()),
            );
        }
        let mut labeller = Labeller::default();
        labeller.label(&mask, w, h);
        let apo = ApoLines {
            superficial: (20.0, 0.0),
            deep: (100.0, 0.0),
        };
        let mut stage = FascicleStage::default();
        // Without the aponeuroses the flat lines carry more length and win.
        let all = stage
            .measure(&labeller.components, None, None, w)
            .expect("fragments");
        assert!(all.orientation_deg.abs() < 5.0, "{all:?}");
        let inside = stage
            .measure(&labeller.components, Some(apo), None, w)
            .expect("fragments");
        assert!((inside.orientation_deg - 20.0).abs() < 2.0, "{inside:?}");
        assert_eq!((inside.fragments, inside.count), (3, 3), "{inside:?}");
        assert!((inside.pennation_deg.expect("pennation") - 20.0).abs() < 2.0);
        // Nothing between the aponeuroses: no fascicle measured.
        let empty = ApoLines {
            superficial: (20.0, 0.0),
            deep: (22.0, 0.0),
        };
        assert!(stage
            .measure(&labeller.components, Some(empty), None, w)
            .is_none());
    }

    #[test]
    fn iqr_of_a_ramp() {
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert!((iqr(&mut v) - 50.0).abs() < 1e-9);
    }
}
