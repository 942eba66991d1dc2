//! `pocusd sources` and `pocusd capture`: what capture devices exist, and frames saved from a
//! source to build a dataset.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use pocusd::config::Config;
use pocusd::frame::GrayImage;
use pocusd::imageio;
use pocusd::preprocess::roi::{RoiChoice, RoiMode, RoiTracker, Tracking};
use pocusd::source::{Health, Read, Reconnecting, SourceError};

#[derive(Args, Debug)]
pub struct SourcesArgs {
    /// Print one JSON object instead of a listing.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Stop after saving this many frames (default: until the source ends or Ctrl-C).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Save every K-th frame.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    every: u32,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The configured source, ending (not reconnecting) when a file ends.
pub fn finite_source(cfg: &Config) -> Reconnecting {
    let mut src = Reconnecting::new(cfg.source.spec.clone(), cfg.source.retry);
    src.end_is_final = true;
    src
}

pub fn cmd_capture(cfg: &Config, args: &CaptureArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut src = finite_source(cfg);
    let mut health = Health::new(cfg.source.health);
    // No model here: "model" saves whole frames, so training later applies its own policy to
    // exactly what the daemon sees.
    let mode = match cfg.source.roi {
        RoiChoice::Model => RoiMode::Full,
        RoiChoice::Explicit(m) => m,
    };
    let mut rois = RoiTracker::new(mode, Tracking::Stream { every: 30 });
    let mut crop = GrayImage::default();
    let (mut saved, mut seen) = (0u64, 0u64);
    while args.frames.is_none_or(|n| saved < n) {
        match src.read(Duration::from_millis(200)) {
            Ok(Read::Frame(f)) => {
                health.on_frame(&f);
                seen += 1;
                if (seen - 1) % args.every as u64 != 0 {
                    continue;
                }
                let roi = rois.roi_for(f.image.view()?);
                f.image.view()?.crop(roi)?.copy_into(&mut crop);
                imageio::write_gray(&args.out.join(format!("frame_{:06}.png", f.seq)), &crop)?;
                saved += 1;
            }
            Ok(Read::Timeout) => health.on_tick(src.reconnecting, src.reconnects),
            Ok(Read::End) => break,
            Err(e @ SourceError::Corrupt { .. }) => {
                health.on_decode_error();
                eprintln!("pocusd: skipped {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let c = health.counters();
    println!(
        "saved {saved} frames to {} ({} read, {} corrupt skipped)",
        args.out.display(),
        c.frames,
        c.decode_errors
    );
    Ok(())
}

#[cfg(feature = "v4l")]
pub fn cmd_sources(args: &SourcesArgs) -> anyhow::Result<()> {
    let devices = pocusd::source::v4l2::list_devices();
    if args.json {
        println!("{}", serde_json::json!({ "devices": devices }));
        return Ok(());
    }
    if devices.is_empty() {
        println!("no V4L2 capture devices found (/dev/video*); network and file sources: --source ffmpeg:URL");
    }
    for d in &devices {
        println!("{}: {} ({})", d.path.display(), d.card, d.driver);
        for f in &d.formats {
            let note = if f.supported {
                ""
            } else {
                " (not used by pocusd)"
            };
            println!("  {} {}{note}", f.fourcc, f.description);
            for s in &f.sizes {
                let fps: Vec<String> = s.fps.iter().map(|v| format!("{v:.2}")).collect();
                let fps = if fps.is_empty() {
                    "?".to_string()
                } else {
                    fps.join(", ")
                };
                println!("    {}x{} @ {fps} fps", s.width, s.height);
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "v4l"))]
pub fn cmd_sources(_args: &SourcesArgs) -> anyhow::Result<()> {
    anyhow::bail!("this pocusd was built without the `v4l` feature; rebuild with default features to list capture cards")
}
