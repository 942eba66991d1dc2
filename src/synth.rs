//! A synthetic B-mode ultrasound phantom with exact, analytic ground truth.
//!
//! Deterministic from a seed. For the `aponeurosis` task it draws subcutaneous tissue, two bright
//! aponeurosis bands and a muscle belly between them with oblique fascicle striations; for the
//! `region` task a fetal-head-like ellipse with a bright skull and a midline echo. Both get Rayleigh
//! speckle, depth attenuation and log-like compression, and optionally the scanner's screen
//! furniture around the image (grey border, depth scale, text blocks, a logo), as a frame grabber
//! sees it. Geometry is a set of parameters ([`Geometry`]) that either varies smoothly with time
//! (the demo sequence) or is drawn per image (datasets). The truth ([`Truth`]) is computed from
//! those parameters alone, never from measurement code, so measurement tests are not circular.
//!
//! Must not depend on anything in the crate but `frame` and the task names of `model`.

use std::f64::consts::PI;

use crate::frame::GrayImage;
pub use crate::frame::Rect;
use crate::model::Task;

/// SplitMix64: a tiny, well-mixed deterministic generator (Steele, Lea and Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// SplitMix64's output function, also used as a stateless hash of pixel coordinates.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The phantom's geometry. Coordinates are frame pixels with pixel centres at `i + 0.5`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Geometry {
    /// Where the ultrasound image sits in the frame (the whole frame without furniture).
    pub image: Rect,
    /// The physical scale: the configured depth over the image's height.
    pub mm_per_px: f64,
    /// Aponeurosis task: y of the superficial band's centre line at the image's centre column.
    pub superficial_y_px: f64,
    /// Aponeurosis task: perpendicular thickness of the superficial band.
    pub superficial_band_px: f64,
    /// Aponeurosis task: y of the deep band's centre line at the image's centre column.
    pub deep_y_px: f64,
    /// Aponeurosis task: perpendicular thickness of the deep band.
    pub deep_band_px: f64,
    /// Aponeurosis task: slope of both bands, degrees (positive: deeper to the right).
    pub band_angle_deg: f64,
    /// Aponeurosis task: fascicle angle relative to the bands, degrees.
    pub pennation_deg: f64,
    /// Region task: ellipse centre.
    pub centre_x_px: f64,
    pub centre_y_px: f64,
    /// Region task: semi-axes (a along the rotated x axis).
    pub semi_a_px: f64,
    pub semi_b_px: f64,
    /// Region task: rotation of the a axis from the x axis, degrees.
    pub ellipse_angle_deg: f64,
}

/// Analytic truth from a [`Geometry`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Truth {
    /// Perpendicular distance between the superficial band's deep edge and the deep band's
    /// superficial edge (aponeurosis task).
    pub thickness_px: Option<f64>,
    /// Band slope, degrees (aponeurosis task).
    pub band_angle_deg: Option<f64>,
    /// Ellipse circumference (region task), Ramanujan's second approximation (relative error
    /// below 1e-9 at the eccentricities drawn here).
    pub circumference_px: Option<f64>,
    /// Ellipse area, pi * a * b (region task).
    pub area_px: Option<f64>,
    /// Angle between the fascicles and the deep aponeurosis, degrees (aponeurosis and fascicle
    /// tasks).
    pub pennation_angle_deg: Option<f64>,
    /// Length of a fascicle between the aponeuroses' inner edges: the thickness over the sine of
    /// the pennation angle (aponeurosis and fascicle tasks).
    pub fascicle_length_px: Option<f64>,
    /// The same in millimetres, at the phantom's scale (`depth_mm` over the image height).
    pub thickness_mm: Option<f64>,
    pub fascicle_length_mm: Option<f64>,
    pub circumference_mm: Option<f64>,
}

impl Geometry {
    /// Truth computed from the parameters.
    pub fn truth(&self, task: Task) -> Truth {
        match task {
            Task::Aponeurosis | Task::Fascicle => {
                let cos = self.band_angle_deg.to_radians().cos();
                // Both bands share the slope, so the perpendicular gap between their centre lines
                // is the vertical gap times cos(angle); remove the half-bands to get inner edges.
                let gap = (self.deep_y_px - self.superficial_y_px) * cos;
                let thickness = gap - self.superficial_band_px / 2.0 - self.deep_band_px / 2.0;
                // Fascicles are straight lines at `pennation_deg` to both (parallel) bands.
                let length = thickness / self.pennation_deg.to_radians().sin();
                Truth {
                    thickness_px: Some(thickness),
                    band_angle_deg: Some(self.band_angle_deg),
                    circumference_px: None,
                    area_px: None,
                    pennation_angle_deg: Some(self.pennation_deg),
                    fascicle_length_px: Some(length),
                    thickness_mm: Some(thickness * self.mm_per_px),
                    fascicle_length_mm: Some(length * self.mm_per_px),
                    circumference_mm: None,
                }
            }
            Task::Region => Truth {
                thickness_px: None,
                band_angle_deg: None,
                circumference_px: Some(ellipse_circumference(self.semi_a_px, self.semi_b_px)),
                area_px: Some(PI * self.semi_a_px * self.semi_b_px),
                pennation_angle_deg: None,
                fascicle_length_px: None,
                thickness_mm: None,
                fascicle_length_mm: None,
                circumference_mm: Some(
                    ellipse_circumference(self.semi_a_px, self.semi_b_px) * self.mm_per_px,
                ),
            },
        }
    }
}

/// Another scanner's look on a rendered phantom image (the mask is untouched): the grey levels
/// times `gain` (clipped at white, as a gain turned up saturates) and a separable gaussian blur of
/// standard deviation `blur_px` (coarser speckle, lower lateral and axial resolution). `gain` 1
/// and `blur_px` 0 leave the image as it is.
pub fn restyle(image: &mut GrayImage, gain: f64, blur_px: f64) {
    let (w, h) = (image.width(), image.height());
    let px = image.as_mut_slice();
    if gain != 1.0 {
        for v in px.iter_mut() {
            *v = (f64::from(*v) * gain).round().clamp(0.0, 255.0) as u8;
        }
    }
    if blur_px <= 0.0 || w == 0 || h == 0 {
        return;
    }
    let r = (3.0 * blur_px).ceil() as isize;
    let kernel: Vec<f64> = (-r..=r)
        .map(|i| (-((i * i) as f64) / (2.0 * blur_px * blur_px)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    let mut a: Vec<f64> = px.iter().map(|&v| f64::from(v)).collect();
    let mut b = vec![0.0; a.len()];
    for (step, len, lines, stride) in [(1usize, w, h, w), (w, h, w, 1usize)] {
        for line in 0..lines {
            let base = line * stride;
            for i in 0..len {
                let mut acc = 0.0;
                for (k, kv) in kernel.iter().enumerate() {
                    let j = (i as isize + k as isize - r).clamp(0, len as isize - 1) as usize;
                    acc += kv * a[base + j * step];
                }
                b[base + i * step] = acc / total;
            }
        }
        std::mem::swap(&mut a, &mut b);
    }
    for (v, f) in px.iter_mut().zip(&a) {
        *v = f.round().clamp(0.0, 255.0) as u8;
    }
}

/// Ramanujan's second approximation of an ellipse's perimeter.
pub fn ellipse_circumference(a: f64, b: f64) -> f64 {
    let h = ((a - b) / (a + b)).powi(2);
    PI * (a + b) * (1.0 + 3.0 * h / (10.0 + (4.0 - 3.0 * h).sqrt()))
}

/// Phantom settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhantomConfig {
    pub width: usize,
    pub height: usize,
    pub task: Task,
    /// Draw the scanner's screen around the image.
    pub furniture: bool,
    pub seed: u64,
    /// The depth the image shows, mm (its height; square pixels): the physical scale of the
    /// furniture's ruler.
    pub depth_mm: f64,
    /// Which scanner's screen the furniture draws ([`Layout`]).
    pub layout: Layout,
    /// The whole screen mirrored left to right (with furniture).
    pub mirrored: bool,
}

/// A scanner's screen around the image (the phantom's furniture), after the screens of four
/// vendors: where the depth ruler sits, its ticks, digits and focal-zone marks, header bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Title text, a settings panel, a grey frame round the image and the depth ruler just
    /// right of it: a tick every 5 mm, longer every 10 mm.
    #[default]
    Generic,
    /// A header bar of text right above the image; the ruler about 11 % of the screen's width
    /// beyond the image: a tick every 2.5 mm, longer every 10 mm with its digit (cm) beside it; an
    /// hourglass focal mark covering two ticks.
    Ge,
    /// The ruler left of the image: a thin vertical line with a tick every 10 mm, labelled 0 and
    /// the depth at its ends; the depth printed under the image. Mirrored, it gets a white
    /// margin round the screen.
    Telemed,
    /// A trapezoid image; a column of small ticks, one per 10 mm, at the screen's right edge;
    /// six evenly spaced `<` focal-zone marks between the image and the ruler.
    Philips,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::Generic,
        Layout::Ge,
        Layout::Telemed,
        Layout::Philips,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Generic => "generic",
            Layout::Ge => "ge",
            Layout::Telemed => "telemed",
            Layout::Philips => "philips",
        }
    }

    pub fn parse(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The names, for error messages.
    pub fn allowed() -> &'static str {
        "generic, ge, telemed, philips"
    }
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            task: Task::Aponeurosis,
            furniture: false,
            seed: 1,
            depth_mm: 40.0,
            layout: Layout::Generic,
            mirrored: false,
        }
    }
}

/// The fascicle task's mask: fragments of the bright fascicle lines the muscle belly is drawn
/// with (their centre lines, 2 px wide), kept 2 px clear of both aponeuroses, in pieces
/// `fragment_px` long of which about a third are drawn, like hand-traced fragments.
struct FascicleLines<'a> {
    g: &'a Geometry,
    /// Image centre column (the bands' pivot).
    cx: f64,
    /// Perpendicular distance between neighbouring fascicle lines.
    period_px: f64,
    fragment_px: f64,
    seed: u64,
}

impl FascicleLines<'_> {
    /// Half the width of a drawn fragment.
    const HALF_WIDTH_PX: f64 = 1.0;
    /// Clearance from the aponeuroses' inner edges.
    const CLEAR_PX: f64 = 2.0;

    fn mask_row(&self, x_first: f64, y: f64, mrow: &mut [u8]) {
        let g = self.g;
        let band = g.band_angle_deg.to_radians();
        let (tan, cos) = (band.tan(), band.cos());
        let fasc = (g.band_angle_deg + g.pennation_deg).to_radians();
        let (fs, fc) = fasc.sin_cos();
        for (xi, m) in mrow.iter_mut().enumerate() {
            let x = x_first + xi as f64;
            let d1 = (y - (g.superficial_y_px + tan * (x - self.cx))) * cos;
            let d2 = (y - (g.deep_y_px + tan * (x - self.cx))) * cos;
            if d1 <= g.superficial_band_px / 2.0 + Self::CLEAR_PX
                || d2 >= -(g.deep_band_px / 2.0 + Self::CLEAR_PX)
            {
                continue;
            }
            // The same coordinate the texture's stripes use: lines at whole periods.
            let u = (-x * fs + y * fc) / self.period_px + 4096.0;
            let k = u.round();
            if (u - k).abs() * self.period_px > Self::HALF_WIDTH_PX {
                continue;
            }
            let along = (x * fc + y * fs) / self.fragment_px;
            let key = (k as i64 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (along.floor() as i64 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            if mix64(self.seed ^ key) % 3 == 0 {
                *m = 255;
            }
        }
    }
}

/// Number of precomputed Rayleigh samples (a power of two).
const SPECKLE_TABLE: usize = 1 << 14;

/// The phantom renderer. Owns its speckle table and scratch line, so rendering allocates nothing
/// once the output buffers have their size.
#[derive(Debug, Clone)]
pub struct Phantom {
    cfg: PhantomConfig,
    /// Speckle field of the image area (Rayleigh, laterally blurred: grains wider than tall),
    /// made once per seed; rows are read shifted with the tissue.
    field: Vec<f32>,
    /// sin over one period, `SIN_STEPS` entries.
    sin: Vec<f32>,
    /// Log-like compression: output grey level for an echo amplitude in steps of 1/`COMPRESS_SCALE`.
    compress: Vec<u8>,
    /// Electronic noise, -2..=2 grey levels.
    noise: Vec<i8>,
    /// Muscle echo by position within a fascicle period (1024 steps): bright thin lines.
    stripe: Vec<f32>,
    /// Deep-tissue echo per image column.
    deep_cols: Vec<f32>,
    /// One row of echo amplitudes (scratch).
    echo: Vec<f32>,
}

const SIN_STEPS: usize = 1024;
const COMPRESS_SCALE: f32 = 1024.0;
const COMPRESS_MAX: f32 = 6.0;
const NOISE_LEN: usize = 1 << 16;

impl Phantom {
    /// A renderer for the given settings.
    pub fn new(cfg: PhantomConfig) -> Self {
        let mut rng = SplitMix64::new(cfg.seed ^ 0x5EED_5BEC);
        // Rayleigh with sigma = 1/sqrt(2): E[s^2] = 1, mean ~0.886.
        let table: Vec<f32> = (0..SPECKLE_TABLE)
            .map(|_| {
                let u = 1.0 - rng.next_f64(); // (0, 1]
                ((-u.ln()).sqrt()) as f32
            })
            .collect();
        let mut phantom = Self {
            cfg,
            field: Vec::new(),
            sin: Vec::new(),
            compress: Vec::new(),
            noise: Vec::new(),
            stripe: Vec::new(),
            deep_cols: Vec::new(),
            echo: Vec::new(),
        };
        let r = phantom.image_rect();
        let mut raw = vec![0f32; r.w * r.h];
        for (i, v) in raw.iter_mut().enumerate() {
            // Two pixels per grain laterally: pairs share a sample before the blur.
            let (x, y) = ((i % r.w) as u64, (i / r.w) as u64);
            *v = table[(mix64(cfg.seed ^ (y << 20) ^ (x >> 1)) as usize) & (SPECKLE_TABLE - 1)];
        }
        phantom.field = vec![0f32; r.w * r.h];
        for y in 0..r.h {
            let row = &raw[y * r.w..(y + 1) * r.w];
            for x in 0..r.w {
                let (l, rr) = (row[x.saturating_sub(1)], row[(x + 1).min(r.w - 1)]);
                phantom.field[y * r.w + x] = 0.25 * l + 0.5 * row[x] + 0.25 * rr;
            }
        }
        phantom.sin = (0..SIN_STEPS)
            .map(|i| (i as f32 / SIN_STEPS as f32 * std::f32::consts::TAU).sin())
            .collect();
        let steps = (COMPRESS_MAX * COMPRESS_SCALE) as usize + 1;
        phantom.compress = (0..steps)
            .map(|i| (230.0 * (i as f32 / COMPRESS_SCALE).powf(0.65)).min(255.0) as u8)
            .collect();
        let mut nrng = SplitMix64::new(cfg.seed ^ 0xA5A5);
        phantom.noise = (0..NOISE_LEN + r.w)
            .map(|_| ((nrng.next_u64() % 5) as i8) - 2)
            .collect();
        phantom.stripe = (0..1024)
            .map(|i| {
                let stripe = ((i as f32 + 0.5) / 1024.0 - 0.5).abs() * 2.0; // 1 on a line, 0 between
                0.16 + 0.34 * stripe.powi(6)
            })
            .collect();
        phantom.deep_cols = (0..r.w)
            .map(|xi| 0.20 + 0.05 * (((r.x + xi) as f32 + 0.5) * 0.02).sin())
            .collect();
        phantom
    }

    /// The settings.
    pub fn config(&self) -> &PhantomConfig {
        &self.cfg
    }

    /// The phantom's physical scale: `depth_mm` over the image's height in pixels.
    pub fn mm_per_px(&self) -> f64 {
        self.cfg.depth_mm / self.image_rect().h.max(1) as f64
    }

    /// Where the ultrasound image sits in the frame (for the Philips layout, the bounding box of
    /// its trapezoid).
    pub fn image_rect(&self) -> Rect {
        let (w, h) = (self.cfg.width, self.cfg.height);
        if !self.cfg.furniture {
            return Rect { x: 0, y: 0, w, h };
        }
        let r = self.layout_rect(self.screen());
        if self.cfg.mirrored {
            Rect {
                x: w - r.x - r.w,
                ..r
            }
        } else {
            r
        }
    }

    /// The scanner's screen within the frame: all of it, but for the white margin round a
    /// mirrored Telemed screen.
    fn screen(&self) -> Rect {
        let (w, h) = (self.cfg.width, self.cfg.height);
        if self.cfg.furniture && self.cfg.layout == Layout::Telemed && self.cfg.mirrored {
            let m = (w.min(h) / 60).max(4);
            return Rect {
                x: m,
                y: m,
                w: w - 2 * m,
                h: h - 2 * m,
            };
        }
        Rect { x: 0, y: 0, w, h }
    }

    /// The image region on screen `s` before mirroring.
    fn layout_rect(&self, s: Rect) -> Rect {
        let (x, y, w, h) = match self.cfg.layout {
            // A typical scanner layout: title bar on top, controls on the left, depth scale right.
            Layout::Generic => (s.w * 3 / 20, s.h / 10, s.w * 7 / 10, s.h * 17 / 20),
            Layout::Philips => (s.w / 5, s.h / 10, s.w * 3 / 5, s.h * 4 / 5),
            Layout::Ge => (s.w * 12 / 100, s.h / 10, s.w * 62 / 100, s.h * 85 / 100),
            Layout::Telemed => (s.w / 5, s.h * 6 / 100, s.w * 3 / 5, s.h * 9 / 10),
        };
        Rect {
            x: s.x + x,
            y: s.y + y,
            w,
            h,
        }
    }

    /// Geometry of frame `t_s` seconds into the moving demo sequence: bands breathe with probe
    /// pressure, the angle sways, the head drifts, all smoothly.
    pub fn geometry_at(&self, t_s: f64) -> Geometry {
        let mut rng = SplitMix64::new(self.cfg.seed);
        let base = self.draw(&mut rng);
        let r = base.image;
        let (h, w) = (r.h as f64, r.w as f64);
        let s = |period_s: f64, phase: f64| (2.0 * PI * t_s / period_s + phase).sin();
        let mut g = base;
        let shift = 0.03 * h * s(4.0, 0.0);
        let squeeze = 1.0 + 0.08 * s(6.5, 1.0);
        let mid = (base.superficial_y_px + base.deep_y_px) / 2.0 + shift;
        let half = (base.deep_y_px - base.superficial_y_px) / 2.0 * squeeze;
        g.superficial_y_px = mid - half;
        g.deep_y_px = mid + half;
        g.band_angle_deg = base.band_angle_deg + 2.0 * s(9.0, 2.0);
        g.centre_x_px = base.centre_x_px + 0.02 * w * s(7.0, 0.5);
        g.centre_y_px = base.centre_y_px + 0.02 * h * s(5.0, 1.5);
        g.semi_a_px = base.semi_a_px * (1.0 + 0.04 * s(8.0, 0.3));
        g.ellipse_angle_deg = base.ellipse_angle_deg + 5.0 * s(11.0, 0.7);
        g
    }

    /// Geometry of dataset image `index`: an independent draw per image.
    pub fn geometry_for_index(&self, index: u64) -> Geometry {
        let mut rng = SplitMix64::new(mix64(self.cfg.seed.wrapping_mul(0x1000_0000_01B3) ^ index));
        self.draw(&mut rng)
    }

    fn draw(&self, rng: &mut SplitMix64) -> Geometry {
        let r = self.image_rect();
        let (x0, y0, w, h) = (r.x as f64, r.y as f64, r.w as f64, r.h as f64);
        let superficial_y = y0 + h * rng.range(0.16, 0.28);
        let deep_y = superficial_y + h * rng.range(0.30, 0.46);
        let a = w.min(h * 1.3) * rng.range(0.28, 0.36);
        Geometry {
            image: r,
            mm_per_px: self.mm_per_px(),
            superficial_y_px: superficial_y,
            superficial_band_px: (h * rng.range(0.018, 0.032)).max(2.0),
            deep_y_px: deep_y,
            deep_band_px: (h * rng.range(0.022, 0.040)).max(2.0),
            band_angle_deg: rng.range(-8.0, 8.0),
            pennation_deg: rng.range(14.0, 26.0),
            centre_x_px: x0 + w * rng.range(0.42, 0.58),
            centre_y_px: y0 + h * rng.range(0.45, 0.55),
            semi_a_px: a,
            semi_b_px: a * rng.range(0.72, 0.90),
            ellipse_angle_deg: rng.range(-30.0, 30.0),
        }
    }

    /// Renders `geometry` into `image` and `mask` (resized to the frame size). `frame_no` varies
    /// the electronic noise so consecutive frames of a still scene are not bit-identical.
    pub fn render(
        &mut self,
        geometry: &Geometry,
        frame_no: u64,
        image: &mut GrayImage,
        mask: &mut GrayImage,
    ) {
        let (fw, fh) = (self.cfg.width, self.cfg.height);
        image.resize(fw, fh);
        mask.resize(fw, fh);
        self.draw_furniture(image);
        mask.as_mut_slice().fill(0);
        let r = geometry.image;
        let g = *geometry;
        let tan = g.band_angle_deg.to_radians().tan();
        let cos = g.band_angle_deg.to_radians().cos();
        let cx = r.x as f64 + r.w as f64 / 2.0;
        // Fascicles run at `pennation` to the bands; their normal's direction in the image.
        let fasc = (g.band_angle_deg + g.pennation_deg).to_radians();
        let fascicle_period_px = (r.h as f64 * 0.045).max(4.0);
        let (fn_x, fn_y) = (
            (-fasc.sin() / fascicle_period_px) as f32,
            (fasc.cos() / fascicle_period_px) as f32,
        );
        let (ea_cos, ea_sin) = (
            g.ellipse_angle_deg.to_radians().cos(),
            g.ellipse_angle_deg.to_radians().sin(),
        );
        let skull_px = (g.semi_a_px * 0.06).max(2.0);
        // Speckle follows the tissue vertically so the demo looks like tissue moving, not noise.
        let tissue_shift = (g.superficial_y_px - r.y as f64).round() as i64;
        let noise_offset = (mix64(frame_no ^ 0xA5A5) as usize) & (NOISE_LEN - 1);
        let half_sup = g.superficial_band_px / 2.0;
        let half_deep = g.deep_band_px / 2.0;
        let (sin, compress, noise) = (&self.sin, &self.compress, &self.noise);
        let px = image.as_mut_slice();
        let mk = mask.as_mut_slice();
        // Phases of the periodic textures advance by a fixed step per pixel along a row, so they
        // are kept in 16.16 fixed point (table index = phase >> 16): no float conversions per pixel.
        const FIX: f64 = 65536.0;
        let to_idx = SIN_STEPS as f64 / std::f64::consts::TAU;
        let fixed = |v: f64| (v * FIX) as i64;
        let sin_at = |phase: i64| sin[((phase >> 16) & (SIN_STEPS as i64 - 1)) as usize];
        self.echo.resize(r.w, 0.0);
        let x_first = r.x as f64 + 0.5;
        for yi in 0..r.h {
            let fy = r.y + yi;
            let y = fy as f64 + 0.5;
            let mrow = &mut mk[fy * fw + r.x..fy * fw + r.x + r.w];
            let echo = &mut self.echo;
            match self.cfg.task {
                Task::Aponeurosis | Task::Fascicle => {
                    let bands_mask: u8 = if self.cfg.task == Task::Aponeurosis {
                        255
                    } else {
                        0
                    };
                    // Band distances are linear in x along a row: start and step.
                    let d1_0 = (y - (g.superficial_y_px + tan * (x_first - cx))) * cos;
                    let d2_0 = (y - (g.deep_y_px + tan * (x_first - cx))) * cos;
                    let dd = -tan * cos;
                    let (mut septa, septa_step) = (
                        fixed((y * 0.21 + x_first * 0.013) * to_idx),
                        fixed(0.013 * to_idx),
                    );
                    // Fascicle coordinate (in periods); its fraction picks the stripe profile.
                    let (mut fasc_u, fasc_step) = (
                        fixed(x_first * fn_x as f64 + y * fn_y as f64 + 4096.0),
                        fixed(fn_x as f64),
                    );
                    let stripe: &[f32; 1024] = match self.stripe.as_slice().try_into() {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                    let (mut d1, mut d2) = (d1_0, d2_0);
                    for ((e, m), &deep) in echo.iter_mut().zip(mrow.iter_mut()).zip(&self.deep_cols)
                    {
                        *e = if d1.abs() <= half_sup || d2.abs() <= half_deep {
                            *m = bands_mask;
                            1.6
                        } else if d1 < 0.0 {
                            // Subcutaneous layer: fat, moderately echoic with a few septa.
                            0.30 + 0.10 * sin_at(septa).max(0.0)
                        } else if d2 < 0.0 {
                            // Muscle belly: dark with bright oblique fascicles.
                            stripe[((fasc_u as u64 & 0xFFFF) >> 6) as usize]
                        } else {
                            // Deeper muscle / bone shadow.
                            deep
                        };
                        d1 += dd;
                        d2 += dd;
                        septa += septa_step;
                        fasc_u += fasc_step;
                    }
                    if self.cfg.task == Task::Fascicle {
                        let f = FascicleLines {
                            g: &g,
                            cx,
                            period_px: fascicle_period_px,
                            fragment_px: (r.h as f64 * 0.1).max(8.0),
                            seed: self.cfg.seed,
                        };
                        f.mask_row(x_first, y, mrow);
                    }
                }
                Task::Region => {
                    let (dx0, dy) = (x_first - g.centre_x_px, y - g.centre_y_px);
                    let (u0, du) = (
                        (dx0 * ea_cos + dy * ea_sin) / g.semi_a_px,
                        ea_cos / g.semi_a_px,
                    );
                    let (v0, dv) = (
                        (-dx0 * ea_sin + dy * ea_cos) / g.semi_b_px,
                        -ea_sin / g.semi_b_px,
                    );
                    let skull_inner = 1.0 - skull_px / g.semi_b_px;
                    let inner2 = skull_inner * skull_inner;
                    let (mut tex, tex_step) = (fixed(u0 * 9.0 * to_idx), fixed(du * 9.0 * to_idx));
                    let (mut out_phase, out_step) =
                        (fixed((x_first + y) * 0.05 * to_idx), fixed(0.05 * to_idx));
                    let falx_v = 1.2 / g.semi_b_px;
                    // rho^2 is quadratic in x along the row: only the columns between its roots
                    // (plus a pixel of margin for rounding) need the exact per-pixel test.
                    let qa = du * du + dv * dv;
                    let qb = 2.0 * (u0 * du + v0 * dv);
                    let qc = u0 * u0 + v0 * v0 - 1.0;
                    let disc = qb * qb - 4.0 * qa * qc;
                    let (lo, hi) = if disc < 0.0 || qa <= 0.0 {
                        (r.w, r.w)
                    } else {
                        let sq = disc.sqrt();
                        let x_lo = ((-qb - sq) / (2.0 * qa)).floor() - 1.0;
                        let x_hi = ((-qb + sq) / (2.0 * qa)).ceil() + 2.0;
                        (
                            x_lo.clamp(0.0, r.w as f64) as usize,
                            x_hi.clamp(0.0, r.w as f64) as usize,
                        )
                    };
                    let lo = lo.min(hi);
                    // Outside the head: the surrounding tissue's texture only.
                    let (left, rest) = echo.split_at_mut(lo);
                    let right = &mut rest[hi - lo..];
                    for (xi, e) in left.iter_mut().enumerate() {
                        *e = 0.28 + 0.05 * sin_at(out_phase + out_step * xi as i64);
                    }
                    for (k, e) in right.iter_mut().enumerate() {
                        *e = 0.28 + 0.05 * sin_at(out_phase + out_step * (hi + k) as i64);
                    }
                    let (mut u, mut v) = (u0 + du * lo as f64, v0 + dv * lo as f64);
                    tex += tex_step * lo as i64;
                    out_phase += out_step * lo as i64;
                    for (e, m) in echo[lo..hi].iter_mut().zip(mrow[lo..hi].iter_mut()) {
                        let rho2 = u * u + v * v;
                        *e = if rho2 <= 1.0 {
                            *m = 255;
                            if rho2 >= inner2 {
                                1.0
                            } else if v.abs() < falx_v && u.abs() < 0.8 {
                                0.75 // midline echo (falx)
                            } else {
                                0.22 + 0.06 * sin_at(tex).abs()
                            }
                        } else {
                            0.28 + 0.05 * sin_at(out_phase)
                        };
                        u += du;
                        v += dv;
                        tex += tex_step;
                        out_phase += out_step;
                    }
                }
            }
            // Speckle, attenuation, compression and noise: the same for every task.
            let attenuation = (-0.9 * yi as f64 / r.h as f64).exp() as f32 * COMPRESS_SCALE;
            let field_row = (yi as i64 - tissue_shift).rem_euclid(r.h as i64) as usize;
            let field = &self.field[field_row * r.w..(field_row + 1) * r.w];
            let out = &mut px[fy * fw + r.x..fy * fw + r.x + r.w];
            let nbase = noise_offset.wrapping_add(yi * 7919);
            let top = compress.len() - 1;
            // The noise table is longer than NOISE_LEN by a row, so a row's noise is one slice.
            let start = nbase & (NOISE_LEN - 1);
            let noise_row = &noise[start..start + r.w.min(noise.len() - start)];
            let top = top as i32;
            for (((o, &e), &f), &n) in out
                .iter_mut()
                .zip(self.echo.iter())
                .zip(field)
                .zip(noise_row)
            {
                let idx = ((e * attenuation * f) as i32).clamp(0, top) as usize;
                *o = compress[idx].saturating_add_signed(n);
            }
            if self.cfg.furniture && self.cfg.layout == Layout::Philips {
                // A trapezoid: the top 70 % of the bottom's width, dark outside.
                let inset = ((1.0 - yi as f64 / r.h as f64) * 0.15 * r.w as f64) as usize;
                let row = fy * fw + r.x;
                for x in (0..inset).chain(r.w - inset..r.w) {
                    px[row + x] = 0;
                    mk[row + x] = 0;
                }
            }
        }
    }

    fn draw_furniture(&self, image: &mut GrayImage) {
        if !self.cfg.furniture {
            return;
        }
        let fw = self.cfg.width;
        image.as_mut_slice().fill(18);
        let screen = self.screen();
        // The layout is drawn unmirrored around the unmirrored image region, then the whole
        // frame is flipped when the screen is mirrored.
        let r = self.layout_rect(screen);
        let mut c = Canvas {
            px: image.as_mut_slice(),
            w: fw,
            h: self.cfg.height,
        };
        let px_per_mm = r.h as f64 / self.cfg.depth_mm.max(1e-6);
        let mut rng = SplitMix64::new(self.cfg.seed ^ 0x7E47);
        let (sw, sh) = (screen.w, screen.h);
        let th = (sh / 40).max(3);
        match self.cfg.layout {
            Layout::Generic => {
                // Grey frame around the image, title text top left, a logo top right, a settings
                // panel on the left, the depth scale right of the image: a tick every 5 mm from
                // the image's top edge, the whole centimetres longer.
                let b = 3;
                c.fill(
                    r.x.saturating_sub(b),
                    r.y.saturating_sub(b),
                    r.w + 2 * b,
                    b,
                    70,
                );
                c.fill(r.x.saturating_sub(b), r.y + r.h, r.w + 2 * b, b, 70);
                c.fill(r.x.saturating_sub(b), r.y, b, r.h, 70);
                c.fill(r.x + r.w, r.y, b, r.h, 70);
                c.text_blocks(
                    &mut rng,
                    screen.x + sw / 40,
                    screen.y + sh / 30,
                    sw / 2,
                    th,
                    200,
                );
                c.fill(
                    screen.x + sw - sw / 8,
                    screen.y + sh / 40,
                    sw / 12,
                    sh / 25,
                    160,
                );
                for i in 0..6 {
                    c.fill(
                        screen.x + sw / 50,
                        r.y + i * r.h / 7,
                        r.x.saturating_sub(screen.x + sw / 25).max(1),
                        th,
                        120,
                    );
                }
                let x = r.x + r.w + b + 4;
                c.ruler(r, px_per_mm, 5.0, 2, |major| {
                    (x, if major { 10 } else { 6 })
                });
            }
            Layout::Philips => {
                // Title text; a column of small ticks, one per centimetre, at the very right
                // edge of the screen; focal-zone `<` marks between the image and the ruler, evenly
                // spaced but not a scale.
                c.text_blocks(
                    &mut rng,
                    screen.x + sw / 40,
                    screen.y + sh / 40,
                    sw / 3,
                    th,
                    190,
                );
                let len = (sw / 100).max(4);
                let x = screen.x + sw - len - 3;
                c.ruler(r, px_per_mm, 10.0, 1, |_| (x, len));
                let mark = (sh / 60).max(5);
                let mx = r.x + r.w + sw / 30;
                let step = r.h as f64 * 0.108;
                for k in 0..6 {
                    let cy = r.y as f64 + r.h as f64 * 0.13 + k as f64 * step;
                    c.chevron(mx, cy, mark, 210);
                }
            }
            Layout::Ge => {
                // A header bar of text right above the image; the ruler about 90 px (at 800
                // wide) beyond the image: a tick every 2.5 mm, longer every centimetre with its
                // digit beside it; an hourglass focal mark over two ticks.
                c.fill(
                    screen.x,
                    screen.y,
                    sw,
                    r.y - screen.y - (sh / 100).max(4),
                    46,
                );
                c.text_blocks(
                    &mut rng,
                    screen.x + sw / 40,
                    screen.y + sh / 40,
                    sw * 3 / 4,
                    th,
                    215,
                );
                let x = r.x + r.w + sw * 11 / 100;
                let minor = (sw / 160).max(4);
                let glyph = (sh / 300).max(1);
                let depth_cm = (self.cfg.depth_mm / 10.0).floor() as usize;
                c.ruler(r, px_per_mm, 2.5, 4, |major| {
                    (x, if major { 2 * minor } else { minor })
                });
                for cm in 1..=depth_cm {
                    let cy = r.y as f64 + cm as f64 * 10.0 * px_per_mm;
                    c.number(cm, x + 2 * minor + 4, cy, glyph, 220);
                }
                // The hourglass over two minor ticks (the second and third after a major) near
                // a third of the depth.
                let spacing = 2.5 * px_per_mm;
                let cm = ((r.h as f64 / 3.0) / (4.0 * spacing)).floor();
                let cy = r.y as f64 + (4.0 * cm + 1.5) * spacing;
                c.hourglass(x + minor, cy, (2 * minor + 2).max(8), 2.0 * spacing, 170);
            }
            Layout::Telemed => {
                // The ruler on the left: a thin vertical line, a tick every 10 mm, labelled 0
                // and the depth at its ends; the depth printed under the image.
                let line_x = r.x.saturating_sub(sw * 4 / 100);
                c.fill(line_x, r.y, 1, r.h, 150);
                let len = (sw / 150).max(6);
                let x = line_x.saturating_sub(len);
                c.ruler(r, px_per_mm, 10.0, 1, |_| (x, len + 1));
                let glyph = (sh / 300).max(1);
                let ticks = (self.cfg.depth_mm / 10.0).floor() as usize;
                let right_of = |n: usize| x.saturating_sub(4 + Canvas::number_width(n, glyph));
                c.number(0, right_of(0), r.y as f64 + 3.0 * glyph as f64, glyph, 220);
                let bottom = r.y as f64 + ticks as f64 * 10.0 * px_per_mm;
                c.number(
                    10 * ticks,
                    right_of(10 * ticks),
                    bottom - 3.0 * glyph as f64,
                    glyph,
                    220,
                );
                let ty = (r.y + r.h + sh / 60).min(screen.y + sh - 6 * glyph);
                c.text_blocks(&mut rng, r.x, ty, r.x + sw / 20, 5 * glyph, 200);
                c.number(
                    self.cfg.depth_mm.round() as usize,
                    r.x + sw / 20 + 4,
                    ty as f64 + 2.5 * glyph as f64,
                    glyph,
                    200,
                );
            }
        }
        if self.cfg.mirrored {
            for row in c.px.chunks_exact_mut(fw) {
                row.reverse();
            }
        }
        if screen.x > 0 {
            // A white margin round the screen (a grab of a mirrored Telemed screen).
            let (fw, fh) = (fw, self.cfg.height);
            c.fill(0, 0, fw, screen.y, 255);
            c.fill(0, screen.y + screen.h, fw, fh - screen.y - screen.h, 255);
            c.fill(0, 0, screen.x, fh, 255);
            c.fill(screen.x + screen.w, 0, fw - screen.x - screen.w, fh, 255);
        }
    }
}

/// Pixels to draw the screen furniture on.
struct Canvas<'a> {
    px: &'a mut [u8],
    w: usize,
    h: usize,
}

/// Digits 0 to 9 in a 3x5 grid (rows top to bottom, bit 2 the left column).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 2, 2, 2],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

impl Canvas<'_> {
    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, v: u8) {
        for y in y0..(y0 + h).min(self.h) {
            for x in x0..(x0 + w).min(self.w) {
                self.px[y * self.w + x] = v;
            }
        }
    }

    /// Blocky glyph-like marks in a row from (`x`, `y`) up to `x_end`, `th` high.
    fn text_blocks(
        &mut self,
        rng: &mut SplitMix64,
        x: usize,
        y: usize,
        x_end: usize,
        th: usize,
        v: u8,
    ) {
        let mut x = x;
        while x + th < x_end {
            let gw = th * 2 / 3 + (rng.next_u64() % 3) as usize;
            for k in 0..3 {
                if rng.next_u64() % 3 != 0 {
                    self.fill(x, y + k * th / 2, gw, th / 3 + 1, v);
                }
            }
            x += gw + 2 + if rng.next_u64() % 5 == 0 { th } else { 0 };
        }
    }

    /// A horizontal tick 2 px thick centred exactly at `cy`, anti-aliased, from `x` for `len`.
    fn tick(&mut self, x: usize, len: usize, cy: f64) {
        let (lo, hi) = (
            (cy - 1.5).floor().max(0.0) as usize,
            ((cy + 1.5).ceil() as usize).min(self.h),
        );
        for y in lo..hi {
            let cov = crate::preprocess::ruler::tick_coverage(y, cy, 2.0);
            if cov > 0.0 {
                let v = (18.0 + (220.0 - 18.0) * cov).round() as u8;
                for x in x..(x + len).min(self.w) {
                    let p = &mut self.px[y * self.w + x];
                    *p = (*p).max(v);
                }
            }
        }
    }

    /// A depth scale for image region `r`: a tick every `step_mm` from its top edge, every
    /// `major_every`-th (the first too) a major; `at(major)` gives a tick's start column and
    /// length.
    fn ruler(
        &mut self,
        r: Rect,
        px_per_mm: f64,
        step_mm: f64,
        major_every: usize,
        at: impl Fn(bool) -> (usize, usize),
    ) {
        let mut k = 0usize;
        loop {
            let c = r.y as f64 + k as f64 * step_mm * px_per_mm;
            if c > (r.y + r.h) as f64 + 0.5 || k > 10_000 {
                break;
            }
            let major = k % major_every.max(1) == 0;
            let (x, len) = at(major);
            self.tick(x, len, c);
            k += 1;
        }
    }

    /// The width of `n` drawn by [`Self::number`] at `scale`.
    fn number_width(n: usize, scale: usize) -> usize {
        n.to_string().len() * 4 * scale
    }

    /// `n` in the 3x5 digits, `scale` px per cell, from column `x`, centred on row `cy`.
    fn number(&mut self, n: usize, x: usize, cy: f64, scale: usize, v: u8) {
        let y0 = (cy - 2.5 * scale as f64).round().max(0.0) as usize;
        for (i, ch) in n.to_string().bytes().enumerate() {
            let d = DIGITS[usize::from(ch - b'0')];
            for (row, bits) in d.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.fill(x + (i * 4 + col) * scale, y0 + row * scale, scale, scale, v);
                    }
                }
            }
        }
    }

    /// A `<` outline `size` px tall and wide with its point at (`x`, `cy`).
    fn chevron(&mut self, x: usize, cy: f64, size: usize, v: u8) {
        let half = size as f64 / 2.0;
        for i in 0..=size {
            let dy = i as f64 * half / size as f64;
            for s in [-1.0, 1.0] {
                let y = (cy + s * dy).floor();
                if y >= 0.0 {
                    self.fill(x + i, y as usize, 1, 2, v);
                }
            }
        }
    }

    /// A filled hourglass centred at (`cx`, `cy`), `w` wide and `h` tall.
    fn hourglass(&mut self, cx: usize, cy: f64, w: usize, h: f64, v: u8) {
        let top = (cy - h / 2.0).round().max(0.0) as usize;
        let rows = h.round() as usize;
        for i in 0..rows {
            let t = ((i as f64 + 0.5) / rows as f64 - 0.5).abs() * 2.0; // 1 at the ends, 0 mid
            let half = ((w as f64 / 2.0) * t).max(1.0).round() as usize;
            self.fill(cx.saturating_sub(half), top + i, 2 * half, 1, v);
        }
    }
}

/// One rendered phantom sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: GrayImage,
    pub mask: GrayImage,
    pub geometry: Geometry,
    pub truth: Truth,
}

/// Renders dataset image `index` (independent geometry per image).
pub fn sample(cfg: PhantomConfig, index: u64) -> Sample {
    let mut phantom = Phantom::new(cfg);
    let geometry = phantom.geometry_for_index(index);
    let mut image = GrayImage::default();
    let mut mask = GrayImage::default();
    phantom.render(&geometry, index, &mut image, &mut mask);
    Sample {
        image,
        mask,
        truth: geometry.truth(cfg.task),
        geometry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restyle_keeps_the_mean_under_blur_and_scales_under_gain() {
        let s = sample(
            PhantomConfig {
                width: 96,
                height: 64,
                ..Default::default()
            },
            0,
        );
        let mut same = s.image.clone();
        restyle(&mut same, 1.0, 0.0);
        assert_eq!(same.as_slice(), s.image.as_slice());
        let mean = |g: &GrayImage| {
            g.as_slice().iter().map(|&v| f64::from(v)).sum::<f64>() / g.as_slice().len() as f64
        };
        let rough = |g: &GrayImage| {
            let p = g.as_slice();
            p.windows(2)
                .map(|w| (f64::from(w[0]) - f64::from(w[1])).abs())
                .sum::<f64>()
        };
        let mut blurred = s.image.clone();
        restyle(&mut blurred, 1.0, 2.0);
        assert!((mean(&blurred) - mean(&s.image)).abs() < 1.5);
        assert!(rough(&blurred) < 0.5 * rough(&s.image));
        let mut darker = s.image.clone();
        restyle(&mut darker, 0.5, 0.0);
        assert!((mean(&darker) - 0.5 * mean(&s.image)).abs() < 1.0);
    }

    #[test]
    fn ramanujan_matches_circle_and_series() {
        assert!((ellipse_circumference(10.0, 10.0) - 2.0 * PI * 10.0).abs() < 1e-12);
        // a=2, b=1: exact perimeter 9.688448220547675...
        assert!((ellipse_circumference(2.0, 1.0) - 9.688_448_220_547_675).abs() < 1e-6);
    }

    #[test]
    fn rendering_is_deterministic_and_seed_dependent() {
        let cfg = PhantomConfig {
            width: 96,
            height: 80,
            ..Default::default()
        };
        let a = sample(cfg, 3);
        let b = sample(cfg, 3);
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        let c = sample(PhantomConfig { seed: 2, ..cfg }, 3);
        assert_ne!(a.image, c.image);
    }
}
