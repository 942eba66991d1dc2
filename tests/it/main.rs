//! The one integration-test binary (one link on a 2-core machine). Modules by capability.

mod calibration;
mod card_formats;
mod clahe;
mod cli;
mod common;
mod daemon;
mod daemon_support;
#[cfg(feature = "train")]
mod dataset;
mod engine;
mod fascicle;
#[cfg(feature = "ffmpeg")]
mod ffmpeg_src;
mod infer_cli;
#[cfg(feature = "train")]
mod nightly;
mod properties;
mod protocols;
mod quality;
mod reliability;
mod review;
mod roi;
mod roi_contract;
mod security;
mod shipped_models;
mod sources;
mod synth;
#[cfg(feature = "train")]
mod train;
mod viewer;
