//! Everything between a captured frame and the model's input tensor: find the region of interest
//! (detected per image or tracked along a stream, see [`roi`]) and crop to it, CLAHE at that resolution with the model's parameters, resize to the model input
//! (stretch; area averaging when shrinking, bilinear when growing), normalise into the tensor in
//! the model's layout, replicating gray into 3 channels when asked. Serving and training share this
//! code so the model sees the same pixels at night and live. Must not depend on tract, burn or tokio.

pub mod calibration;
pub mod clahe;
pub mod resize;
pub mod roi;
pub mod ruler;

use std::num::NonZeroUsize;

pub use clahe::{Clahe, ClaheError, ClaheParams};
pub use resize::{F32Plane, Pixels, Resizer};

use crate::frame::{FrameError, GrayImage, GrayView, Rect};
use crate::model::{Layout, ModelSpec, Normalisation};
use roi::{RoiMode, RoiTracker, Tracking};

/// The preprocessing stage for one model. Owns every buffer and the region-of-interest tracker;
/// allocation happens only when the region of interest changes size.
#[derive(Debug)]
pub struct Preprocessor {
    spec: ModelSpec,
    rois: RoiTracker,
    /// The region of interest of the last frame.
    roi: Rect,
    clahe: Option<Clahe>,
    /// The region of interest after CLAHE (or a plain copy when CLAHE is off): what the overlay shows.
    enhanced: GrayImage,
    resizer: Resizer,
    /// The enhanced region resized to the model input, grey levels 0..=255.
    plane: Vec<f32>,
    tensor: Vec<f32>,
}

impl Preprocessor {
    /// A stage for `spec` that finds the region of interest by `roi` (usually the model's own
    /// policy, see [`roi::RoiChoice::resolve`]) per image or along a stream, with `threads` for CLAHE.
    pub fn new(spec: &ModelSpec, roi: RoiMode, tracking: Tracking, threads: NonZeroUsize) -> Self {
        Self {
            spec: spec.clone(),
            rois: RoiTracker::new(roi, tracking),
            roi: Rect::default(),
            clahe: spec.clahe.map(|p| Clahe::new(p).with_threads(threads)),
            enhanced: GrayImage::default(),
            resizer: Resizer::new(),
            plane: Vec::new(),
            tensor: Vec::new(),
        }
    }

    /// Finds the region of interest of `frame`, crops, enhances, resizes and normalises it;
    /// returns the input tensor (shape `spec.input_shape()`).
    pub fn process(&mut self, frame: GrayView<'_>) -> Result<&[f32], FrameError> {
        let roi = self.rois.roi_for(frame);
        self.roi = roi;
        let region = frame.crop(roi)?;
        match &mut self.clahe {
            Some(c) => c.apply(region, &mut self.enhanced),
            None => region.copy_into(&mut self.enhanced),
        }
        let enhanced = self.enhanced.view()?;
        let (w, h) = (self.spec.input_width, self.spec.input_height);
        self.resizer.resize(&enhanced, w, h, &mut self.plane);
        fill_tensor(&self.plane, &self.spec, &mut self.tensor);
        Ok(&self.tensor)
    }

    /// The region of interest of the last frame, in frame pixels.
    pub fn roi(&self) -> Rect {
        self.roi
    }

    /// The region-of-interest mode this stage applies.
    pub fn roi_mode(&self) -> RoiMode {
        self.rois.mode()
    }

    /// Layout changes (re-detected regions that moved) seen so far.
    pub fn layout_changes(&self) -> u64 {
        self.rois.changes
    }

    /// The enhanced region of interest of the last frame.
    pub fn enhanced(&self) -> &GrayImage {
        &self.enhanced
    }

    /// The input tensor of the last frame (what [`Preprocessor::process`] returned).
    pub fn tensor(&self) -> &[f32] {
        &self.tensor
    }

    /// The last frame at model resolution, grey levels 0..=255 (before normalisation).
    pub fn plane(&self) -> &[f32] {
        &self.plane
    }

    /// The model description this stage prepares for.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
}

/// Normalises a model-resolution plane (0..=255) into the input tensor, in the model's layout and
/// channel count.
pub fn fill_tensor(plane: &[f32], spec: &ModelSpec, tensor: &mut Vec<f32>) {
    let c = spec.channels;
    tensor.resize(plane.len() * c, 0.0);
    let (scale, offset) = match spec.normalisation {
        Normalisation::Unit => (1.0 / 255.0, 0.0),
        Normalisation::MeanStd { mean, std } => (1.0 / (255.0 * std), -mean / std),
    };
    match spec.layout {
        Layout::Nchw => {
            for ch in tensor.chunks_exact_mut(plane.len()) {
                for (t, &p) in ch.iter_mut().zip(plane) {
                    *t = p * scale + offset;
                }
            }
        }
        Layout::Nhwc => {
            for (px, &p) in tensor.chunks_exact_mut(c).zip(plane) {
                px.fill(p * scale + offset);
            }
        }
    }
}
