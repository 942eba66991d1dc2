//! Training (feature `train`): `pocusd train`, `pocusd export` and `pocusd bench train`. The
//! dataset loader and validation split, seeded augmentation, the U-Net in burn, the losses, the
//! training loop with its run folder (checkpoints, metrics.csv, TensorBoard events, curves,
//! previews, resume), the ONNX exporter, and the nightly fine-tune-and-promote run of `pocusd loop
//! nightly`. Must not depend on daemon, publish or source.

pub mod adapt;
pub mod augment;
pub mod average;
pub mod bench;
pub use crate::dataset;
pub mod effnet;
pub mod export;
pub mod loss;
pub mod nightly;
pub mod plot;
pub mod settings;
pub mod tfevents;
pub mod trainer;
pub mod unet;
