//! The training curves as a PNG (plotters, drawn into a memory buffer with the bundled DejaVu font
//! through ab_glyph, so no system font or fontconfig is needed) and the preview grids. Must not
//! depend on burn.

use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::postprocess::overlay::FONT_BYTES;

const FONT: &str = "pocusd-mono";

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font always parses (checked by the overlay tests).
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// One curve: name and (epoch, value) points.
pub struct Curve<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Renders two panels (losses, linear from 0; Dice and IoU on 0..1) as an RGB buffer of `w` x `h`.
pub fn curves_rgb(
    title: &str,
    losses: &[Curve<'_>],
    scores: &[Curve<'_>],
    w: u32,
    h: u32,
) -> Result<Vec<u8>, String> {
    register();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root.titled(title, (FONT, 18)).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 2));
        let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (panel, (curves, label, is_loss)) in panels
            .iter()
            .zip([(losses, "loss", true), (scores, "score", false)])
        {
            let max_x = curves
                .iter()
                .flat_map(|c| c.points.iter().map(|p| p.0))
                .fold(1.0f64, f64::max);
            let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
            let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            if !lo.is_finite() || !hi.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            // Losses from 0 to a little above their largest value; scores on 0..1.
            (lo, hi) = if is_loss {
                (0.0, hi.max(lo + 1e-6) * 1.05)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(panel);
            chart
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .caption(label, (FONT, 14));
            let mut c = chart
                .build_cartesian_2d(0f64..max_x, lo..hi)
                .map_err(|e| e.to_string())?;
            c.configure_mesh()
                .x_desc("epoch")
                .label_style((FONT, 11))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, curve) in curves.iter().enumerate() {
                let colour = colours[i % colours.len()];
                c.draw_series(LineSeries::new(curve.points.iter().copied(), colour))
                    .map_err(|e| e.to_string())?
                    .label(curve.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            }
            c.configure_series_labels()
                .position(if is_loss {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .label_font((FONT, 11))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// Tiles grey planes (values 0..1, each `w` x `h`) into rows of `cols` with a 2-pixel gap; planes
/// may carry a tint (RGB multiplier) so masks stand out. Returns (width, height, RGB).
pub fn grid_rgb(
    tiles: &[(&[f32], [f32; 3])],
    w: usize,
    h: usize,
    cols: usize,
) -> (usize, usize, Vec<u8>) {
    let gap = 2;
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let (gw, gh) = (cols * (w + gap) - gap, rows * (h + gap) - gap);
    let mut rgb = vec![40u8; gw * gh * 3];
    for (i, (plane, tint)) in tiles.iter().enumerate() {
        let (ox, oy) = ((i % cols) * (w + gap), (i / cols) * (h + gap));
        for y in 0..h {
            for x in 0..w {
                let v = plane.get(y * w + x).copied().unwrap_or(0.0).clamp(0.0, 1.0) * 255.0;
                let o = ((oy + y) * gw + ox + x) * 3;
                for c in 0..3 {
                    rgb[o + c] = (v * tint[c]).round() as u8;
                }
            }
        }
    }
    (gw, gh, rgb)
}
