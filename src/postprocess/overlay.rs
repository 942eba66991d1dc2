//! Drawing the overlay the clinician watches: the frame with the enhanced region of interest, the
//! mask blended in colour, its contour, the caliper where the thickness was measured (or the fitted
//! ellipse), the numbers as text (DejaVu Sans Mono Bold, bundled, via ab_glyph), a banner for
//! flagged results, and the model's short sha in a corner. Owns its RGB buffer. No I/O.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};

use super::{Analysis, Annotation, Flag};
use crate::frame::{GrayImage, GrayView, Rect};
use crate::model::Task;

pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono-Bold.ttf");

/// Colours and blending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayStyle {
    /// Mask colour (RGB).
    pub colour: [u8; 3],
    /// Mask opacity, 0..=1.
    pub alpha: f32,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self {
            colour: [0, 200, 255],
            alpha: 0.35,
        }
    }
}

/// An RGB image, 3 bytes per pixel, packed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A rasterised glyph: coverage (0..=255) and its offset from the pen on the baseline.
#[derive(Debug, Clone)]
struct Glyph {
    left: isize,
    top: isize,
    width: usize,
    height: usize,
    coverage: Vec<u8>,
    advance: f32,
}

/// The overlay renderer. Glyphs are rasterised once per character and size and then only blitted.
#[derive(Debug)]
pub struct Overlay {
    font: FontRef<'static>,
    image: RgbImage,
    glyphs: std::collections::HashMap<(char, u32), Glyph>,
}

/// What to draw besides the analysis.
#[derive(Debug, Clone, Copy)]
pub struct OverlayInput<'a> {
    /// The whole frame as captured.
    pub frame: GrayView<'a>,
    /// The region of interest after CLAHE, drawn in place of the raw region.
    pub enhanced: &'a GrayImage,
    /// The mask at region-of-interest size (0 or 255).
    pub mask: &'a [u8],
    pub roi: Rect,
    pub task: Task,
    /// The model's sha256 (the first 8 characters are drawn).
    pub model_sha256: &'a str,
}

impl Overlay {
    /// A renderer with the bundled font.
    pub fn new() -> Self {
        // The bundled font is a fixed, valid file; failing to parse it is a build defect.
        let font = FontRef::try_from_slice(FONT_BYTES).expect("bundled font parses");
        Self {
            font,
            image: RgbImage::default(),
            glyphs: Default::default(),
        }
    }

    /// The last rendered overlay.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }

    /// Renders one overlay and returns it.
    /// Hands the drawn image out (the next render draws into `reuse` or a new buffer).
    pub fn take_image(&mut self, reuse: Option<RgbImage>) -> RgbImage {
        std::mem::replace(&mut self.image, reuse.unwrap_or_default())
    }

    pub fn render(
        &mut self,
        input: &OverlayInput<'_>,
        analysis: &Analysis,
        style: &OverlayStyle,
    ) -> &RgbImage {
        let (fw, fh) = (input.frame.width(), input.frame.height());
        let img = &mut self.image;
        img.width = fw;
        img.height = fh;
        img.data.resize(fw * fh * 3, 0);
        // Frame, with the enhanced region of interest in place.
        let r = input.roi;
        for y in 0..fh {
            let row = input.frame.row(y);
            let out = &mut img.data[y * fw * 3..(y + 1) * fw * 3];
            for (o, &v) in out.chunks_exact_mut(3).zip(row) {
                o.fill(v);
            }
        }
        let ew = input.enhanced.width();
        if ew == r.w && input.enhanced.height() == r.h && input.mask.len() == r.w * r.h {
            let (a, [cr, cg, cb]) = (style.alpha.clamp(0.0, 1.0), style.colour);
            let ia = 1.0 - a;
            for y in 0..r.h {
                let erow = &input.enhanced.as_slice()[y * ew..(y + 1) * ew];
                let mrow = &input.mask[y * r.w..(y + 1) * r.w];
                let start = ((r.y + y) * fw + r.x) * 3;
                let out = &mut img.data[start..start + r.w * 3];
                for (x, (o, &v)) in out.chunks_exact_mut(3).zip(erow).enumerate() {
                    if mrow[x] == 0 {
                        o.fill(v);
                        continue;
                    }
                    // Contour: a mask pixel with a 4-neighbour outside the mask.
                    let edge = x == 0
                        || x + 1 == r.w
                        || y == 0
                        || y + 1 == r.h
                        || mrow[x - 1] == 0
                        || mrow[x + 1] == 0
                        || input.mask[(y - 1) * r.w + x] == 0
                        || input.mask[(y + 1) * r.w + x] == 0;
                    if edge {
                        o.copy_from_slice(&[cr, cg, cb]);
                    } else {
                        let v = v as f32 * ia;
                        o[0] = (v + cr as f32 * a) as u8;
                        o[1] = (v + cg as f32 * a) as u8;
                        o[2] = (v + cb as f32 * a) as u8;
                    }
                }
            }
        }
        let yellow = [255, 220, 0];
        match analysis.annotation {
            Some(Annotation::Caliper { from, to }) => {
                draw_line(img, from, to, yellow, 2);
                // End ticks perpendicular to the caliper.
                let (dx, dy) = (to.0 - from.0, to.1 - from.1);
                let len = (dx * dx + dy * dy).sqrt().max(1e-6);
                let (tx, ty) = (-dy / len * 8.0, dx / len * 8.0);
                for p in [from, to] {
                    draw_line(img, (p.0 - tx, p.1 - ty), (p.0 + tx, p.1 + ty), yellow, 2);
                }
            }
            Some(Annotation::Ellipse(e)) => {
                let steps = ((e.a + e.b) * 4.0).clamp(64.0, 4096.0) as usize;
                let (c, s) = (
                    e.angle_deg.to_radians().cos(),
                    e.angle_deg.to_radians().sin(),
                );
                let point = |t: f64| {
                    let (x, y) = (e.a * t.cos(), e.b * t.sin());
                    (e.cx + x * c - y * s, e.cy + x * s + y * c)
                };
                for i in 0..steps {
                    let t0 = i as f64 / steps as f64 * std::f64::consts::TAU;
                    let t1 = (i + 1) as f64 / steps as f64 * std::f64::consts::TAU;
                    draw_line(img, point(t0), point(t1), yellow, 2);
                }
            }
            None => {}
        }
        // Fascicles (an extra fascicle model): each from the superficial to the deep aponeurosis.
        // Clipped to the image region (a fascicle may meet an aponeurosis beyond it).
        let cyan = [0, 220, 255];
        let r = input.roi;
        let bounds = (
            r.x as f64,
            r.y as f64,
            (r.x + r.w) as f64,
            (r.y + r.h) as f64,
        );
        for f in &analysis.fascicles {
            if let Some((a, b)) = clip_segment(f.from, f.to, bounds) {
                draw_line(img, a, b, cyan, 1);
            }
        }

        // Numbers.
        let size = (fh as f32 / 20.0).clamp(12.0, 40.0);
        let m = &analysis.measurements;
        let headline = match input.task {
            Task::Aponeurosis => match (m.thickness_mm, m.thickness_px) {
                (Some(mm), _) => Some(format!("thickness {mm:.1} mm")),
                (None, Some(px)) => Some(format!("thickness {px:.1} px")),
                _ => None,
            },
            Task::Region => match (m.circumference_mm, m.circumference_px) {
                (Some(mm), _) => Some(format!("HC {mm:.1} mm")),
                (None, Some(px)) => Some(format!("circumference {px:.1} px")),
                _ => None,
            },
            Task::Fascicle => None,
        };
        let top = if analysis.flag.is_some() {
            size * 1.6
        } else {
            4.0
        };
        if let Some(flag) = analysis.flag {
            let banner_h = (size * 1.4) as usize;
            let colour = match flag {
                Flag::Uncalibrated => [60, 60, 140],
                _ => [170, 30, 30],
            };
            fill_rect(img, 0, 0, fw, banner_h.min(fh), colour);
            let text = match flag {
                Flag::NoStructure => "NO STRUCTURE FOUND",
                Flag::OneBand => "ONLY ONE APONEUROSIS",
                Flag::LowConfidence => "LOW CONFIDENCE",
                Flag::Uncalibrated => "UNCALIBRATED: PIXELS ONLY",
            };
            self.draw_text(6.0, size * 0.15, size, text, [255, 255, 255]);
        }
        let mut y = top;
        // A number the daemon cannot stand behind is drawn grey, its reason in words below it.
        const GREY: [u8; 3] = [128, 128, 128];
        const AMBER: [u8; 3] = [240, 180, 0];
        let doubtful = !analysis.doubt.is_empty();
        if let Some(h) = headline {
            let c = if doubtful { GREY } else { [255, 255, 255] };
            self.draw_text_shadowed(6.0, y, size, &h, c);
            y += size * 1.15;
        }
        if doubtful && analysis.flag.is_none_or(|f| f == Flag::Uncalibrated) {
            let why = format!("doubtful: {}", analysis.doubt.words());
            self.draw_text_shadowed(6.0, y, size * 0.6, &why, AMBER);
            y += size * 0.75;
        }
        let fascicle_doubt = analysis
            .extra_doubt
            .iter()
            .find(|(t, _)| *t == Task::Fascicle)
            .map(|(_, d)| *d)
            .filter(|d| !d.is_empty());
        let fascicle = match (
            m.fascicle_length_mm,
            m.fascicle_length_px,
            m.pennation_angle_deg,
        ) {
            (Some(mm), _, Some(a)) => Some(format!("fascicle {mm:.1} mm, pennation {a:.1} deg")),
            (None, Some(px), Some(a)) => Some(format!("fascicle {px:.0} px, pennation {a:.1} deg")),
            _ => None,
        };
        if let Some(t) = fascicle {
            let c = if fascicle_doubt.is_some() {
                GREY
            } else {
                [200, 240, 255]
            };
            self.draw_text_shadowed(6.0, y, size * 0.8, &t, c);
            y += size * 0.95;
        }
        if let Some(d) = fascicle_doubt {
            let why = format!("fascicles doubtful: {}", d.words());
            self.draw_text_shadowed(6.0, y, size * 0.6, &why, AMBER);
            y += size * 0.75;
        }
        let conf = format!("confidence {:.2}", analysis.confidence);
        self.draw_text_shadowed(6.0, y, size * 0.7, &conf, [220, 220, 220]);
        let sha: String = input.model_sha256.chars().take(8).collect();
        let sw = self.text_width(size * 0.6, &sha);
        self.draw_text_shadowed(
            fw as f32 - sw - 6.0,
            fh as f32 - size * 0.8,
            size * 0.6,
            &sha,
            [200, 200, 200],
        );
        &self.image
    }
}

impl Default for Overlay {
    fn default() -> Self {
        Self::new()
    }
}

/// The part of segment `a`-`b` inside the box (x0, y0, x1, y1) (Liang-Barsky), if any.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    (x0, y0, x1, y1): (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - x0),
        (dx, x1 - a.0),
        (-dy, a.1 - y0),
        (dy, y1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    (t0 <= t1).then(|| {
        (
            (a.0 + t0 * dx, a.1 + t0 * dy),
            (a.0 + t1 * dx, a.1 + t1 * dy),
        )
    })
}

fn fill_rect(img: &mut RgbImage, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
    for yy in y..(y + h).min(img.height) {
        for xx in x..(x + w).min(img.width) {
            let i = (yy * img.width + xx) * 3;
            img.data[i..i + 3].copy_from_slice(&c);
        }
    }
}

fn put(img: &mut RgbImage, x: isize, y: isize, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
        let i = (y as usize * img.width + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&c);
    }
}

/// A line `thickness` pixels wide (square brush), by sampling at half-pixel steps.
fn draw_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: [u8; 3], thickness: usize) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let steps = (dx.abs().max(dy.abs()) * 2.0).ceil().clamp(1.0, 20000.0) as usize;
    let half = thickness as isize / 2;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (
            (a.0 + dx * t).floor() as isize,
            (a.1 + dy * t).floor() as isize,
        );
        for oy in -half..(thickness as isize - half) {
            for ox in -half..(thickness as isize - half) {
                put(img, x + ox, y + oy, c);
            }
        }
    }
}

impl Overlay {
    fn glyph(&mut self, ch: char, size: f32) -> &Glyph {
        let key = (ch, (size * 8.0).round() as u32);
        let font = &self.font;
        self.glyphs.entry(key).or_insert_with(|| {
            let scale = PxScale::from(size);
            let id = font.glyph_id(ch);
            let advance = font.as_scaled(scale).h_advance(id);
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(0.0, 0.0));
            match font.outline_glyph(glyph) {
                Some(outline) => {
                    let b = outline.px_bounds();
                    let (width, height) =
                        (b.width().max(0.0) as usize, b.height().max(0.0) as usize);
                    let mut coverage = vec![0u8; width * height];
                    outline.draw(|x, y, c| {
                        if let Some(v) = coverage.get_mut(y as usize * width + x as usize) {
                            *v = (c.clamp(0.0, 1.0) * 255.0) as u8;
                        }
                    });
                    Glyph {
                        left: b.min.x as isize,
                        top: b.min.y as isize,
                        width,
                        height,
                        coverage,
                        advance,
                    }
                }
                None => Glyph {
                    left: 0,
                    top: 0,
                    width: 0,
                    height: 0,
                    coverage: Vec::new(),
                    advance,
                },
            }
        })
    }

    fn text_width(&mut self, size: f32, text: &str) -> f32 {
        text.chars().map(|ch| self.glyph(ch, size).advance).sum()
    }

    /// Draws `text` with its top-left at (x, y), anti-aliased, from the glyph cache.
    fn draw_text(&mut self, x: f32, y: f32, size: f32, text: &str, c: [u8; 3]) {
        let ascent = self.font.as_scaled(PxScale::from(size)).ascent();
        let baseline = (y + ascent).round() as isize;
        let mut pen = x;
        for ch in text.chars() {
            let g = self.glyph(ch, size).clone();
            let (ox, oy) = (pen.round() as isize + g.left, baseline + g.top);
            pen += g.advance;
            let img = &mut self.image;
            for gy in 0..g.height {
                let py = oy + gy as isize;
                if py < 0 || py as usize >= img.height {
                    continue;
                }
                for gx in 0..g.width {
                    let px = ox + gx as isize;
                    let cov = g.coverage[gy * g.width + gx] as u32;
                    if cov == 0 || px < 0 || px as usize >= img.width {
                        continue;
                    }
                    let i = (py as usize * img.width + px as usize) * 3;
                    for k in 0..3 {
                        let old = img.data[i + k] as u32;
                        img.data[i + k] = ((old * (255 - cov) + c[k] as u32 * cov) / 255) as u8;
                    }
                }
            }
        }
    }

    fn draw_text_shadowed(&mut self, x: f32, y: f32, size: f32, text: &str, c: [u8; 3]) {
        self.draw_text(x + 1.5, y + 1.5, size, text, [0, 0, 0]);
        self.draw_text(x, y, size, text, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_clipped_to_the_box() {
        let b = (0.0, 0.0, 10.0, 10.0);
        assert_eq!(
            clip_segment((-5.0, 5.0), (15.0, 5.0), b),
            Some(((0.0, 5.0), (10.0, 5.0)))
        );
        assert_eq!(clip_segment((-5.0, -5.0), (-1.0, 20.0), b), None);
        assert_eq!(
            clip_segment((2.0, 2.0), (3.0, 3.0), b),
            Some(((2.0, 2.0), (3.0, 3.0)))
        );
    }
}
