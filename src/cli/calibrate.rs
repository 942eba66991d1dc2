//! `pocusd calibrate IMAGE|DIR... [--spacing-mm 10] [--json]`: the ruler calibration on screen
//! grabs, as the daemon will do it on frames: the ultrasound region found by the ROI detector, the
//! ruler beside it fitted (`pocusd::preprocess::ruler`). One line (or JSON object) per image with
//! mm per pixel, the tick count and residual and the evidence it was accepted on, or why no ruler
//! was accepted (with the evidence of the most ruler-like comb refused); then a summary.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use pocusd::preprocess::roi::RoiDetector;
use pocusd::preprocess::ruler::{RulerConfig, RulerDetector};

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Images (PNG or JPEG), or folders of them (their images/ subfolder when there is one).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Physical distance between the ruler's major ticks (or between all ticks when they are
    /// all alike), mm.
    #[arg(long, default_value_t = 10.0)]
    spacing_mm: f64,
    /// One JSON object per line per image, then a summary object.
    #[arg(long)]
    json: bool,
}

fn images_of(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !p.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let dir = if p.join("images").is_dir() {
        p.join("images")
    } else {
        p.to_path_buf()
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| pocusd::dataset::has_image_ext(&n.to_string_lossy()))
        })
        .collect();
    v.sort();
    Ok(v)
}

pub fn cmd_calibrate(a: &CalibrateArgs) -> anyhow::Result<()> {
    if !(a.spacing_mm > 0.0 && a.spacing_mm <= 1000.0) {
        anyhow::bail!("--spacing-mm {}: allowed above 0 to 1000", a.spacing_mm);
    }
    let mut files = Vec::new();
    for p in &a.inputs {
        files.extend(images_of(p)?);
    }
    let mut roi = RoiDetector::default();
    let mut ruler = RulerDetector::new(RulerConfig {
        spacing_mm: a.spacing_mm,
        ..Default::default()
    });
    let (mut found, mut total) = (0usize, 0usize);
    for f in &files {
        let img = match pocusd::imageio::read_gray(f) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("pocusd: skipped: {e}");
                continue;
            }
        };
        total += 1;
        let view = img.view()?;
        let r = roi.detect(view);
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = format!("{}x{}", img.width(), img.height());
        let result = ruler.detect(img.view()?, r);
        let evidence = ruler.last_evidence();
        match result {
            Ok(fit) => {
                found += 1;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({ "image": name, "size": size, "roi": r, "ruler": fit, "evidence": evidence })
                    );
                } else {
                    println!(
                        "{name}  {size}  {:.5} mm/px  {} ticks every {:.2} px (major every {}), residual {:.2} px, {:?}; accepted on: {}",
                        fit.mm_per_px, fit.ticks, fit.tick_spacing_px, fit.major_every, fit.residual_px, fit.side,
                        fit.evidence.words()
                    );
                }
            }
            Err(e) => {
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({ "image": name, "size": size, "roi": r, "ruler": null, "reason": e.to_string(), "evidence": evidence })
                    );
                } else {
                    println!("{name}  {size}  no ruler: {e}");
                    if let Some(ev) = evidence {
                        println!("    the most ruler-like comb: {}", ev.words());
                    }
                }
            }
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "images": total, "with_ruler": found })
        );
    } else {
        println!("{found} of {total} images with a ruler");
    }
    Ok(())
}
