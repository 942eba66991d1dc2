//! Everything between a captured frame and the model's input tensor: CLAHE today; region of
//! interest, resizing and normalisation join it with the engine. Serving and training share this
//! code so the model sees the same pixels at night and live. Must not depend on tract, burn or tokio.

pub mod clahe;

pub use clahe::{Clahe, ClaheError, ClaheParams};
