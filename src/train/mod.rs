//! Training (feature `train`): the parts of `pocusd train` that exist so far. The dataset loader and
//! the validation split are here; the U-Net in burn, the losses, the training loop, checkpoints,
//! logs and the exporter arrive with the training issue. Must not depend on daemon, publish or
//! source.

pub mod dataset;
