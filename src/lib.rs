//! pocusd: point-of-care ultrasound capture, enhancement, segmentation and measurement.
//!
//! The library holds every stage as a plain struct (see ARCHITECTURE.md for the map); the `pocusd`
//! binary in `src/main.rs` is a thin command-line shell over it.

pub mod analyzer;
pub mod bench;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod dicom;
pub mod eval;
pub mod files;
pub mod frame;
pub mod imageio;
pub mod infer;
pub mod model;
pub mod postprocess;
pub mod preprocess;
pub mod publish;
pub mod slot;
pub mod source;
pub mod stats;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
pub mod versions;

/// The version string `pocusd --version` prints: crate version and the git commit it was built from.
pub fn version_string() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("POCUSD_GIT_COMMIT"),
        ")"
    )
}
