//! The command line's pieces, one file per family of subcommands: each holds its clap argument
//! types and a short `cmd_*` that turns them into a call of the library and prints the result.
//! Shared here: model loading with its notes, and the few settings every engine command takes.
//! Part of the binary; the work itself lives in the library.

pub mod bench;
pub mod calibrate;
pub mod data;
pub mod dicom;
pub mod engine;
pub mod image;
pub mod manpages;
pub mod models;
#[cfg(feature = "train")]
pub mod nightly;
#[cfg(feature = "train")]
pub mod train;

use std::num::NonZeroUsize;
use std::path::Path;

use pocusd::config::Config;
use pocusd::infer::{self, LoadedModel};
use pocusd::postprocess::{PostprocessConfig, Smoothing};

/// Loads the model for an engine command (the flag, `[model] path`, then the shipped default)
/// and notes on stderr when it has no pocusd metadata or when an explicit region of interest
/// overrides its own policy.
pub fn load_model(cfg: &Config, flag: Option<&Path>) -> anyhow::Result<LoadedModel> {
    infer::set_threads(cfg.model.threads);
    let path = pocusd::daemon::resolve_model(cfg, flag)?;
    let model = LoadedModel::load(&path, &cfg.model.overrides)?;
    let s = model.spec();
    if !s.from_metadata {
        eprintln!(
            "pocusd: note: {} has no pocusd metadata; using config and graph: task {}, {} {}x{}x{}, output {}, CLAHE {}",
            path.display(),
            s.task.as_str(),
            s.layout.as_str(),
            s.channels,
            s.input_width,
            s.input_height,
            s.output.as_str(),
            s.clahe.map(|c| format!("{}@{}x{}", c.clip_limit, c.tiles_x, c.tiles_y)).unwrap_or_else(|| "off".into())
        );
    }
    if let Some(w) = cfg.source.roi.resolve(s.roi).warning() {
        eprintln!("pocusd: warning: {}: {w}", path.display());
    }
    Ok(model)
}

/// Threads for CLAHE (`[preprocess] threads`).
pub fn clahe_threads(cfg: &Config) -> NonZeroUsize {
    NonZeroUsize::new(cfg.preprocess.threads).unwrap_or(NonZeroUsize::MIN)
}

/// Still images are never smoothed over time.
pub fn still_postprocess(cfg: &Config) -> PostprocessConfig {
    PostprocessConfig {
        smoothing: Smoothing::Off,
        ..cfg.postprocess
    }
}
