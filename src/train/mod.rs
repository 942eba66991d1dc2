//! Training (feature `train`): `pocusd train`, `pocusd export` and `pocusd bench train`. The
//! dataset loader and validation split, seeded augmentation, the U-Net in burn, the losses, the
//! training loop with its run folder (checkpoints, metrics.csv, TensorBoard events, curves,
//! previews, resume), and the ONNX exporter. Must not depend on daemon, publish or source.

pub mod augment;
pub mod bench;
pub use crate::dataset;
pub mod export;
pub mod loss;
pub mod plot;
pub mod settings;
pub mod tfevents;
pub mod trainer;
pub mod unet;
