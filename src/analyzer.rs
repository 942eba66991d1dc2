//! One frame from pixels to numbers and overlay: the preprocessing, postprocessing and overlay stages
//! for one model, composed, plus any extra models (`[model] extra`, e.g. fascicles) that run on the
//! same preprocessed frame (one preprocessing, one region of interest, one calibration) and whose
//! keys join the primary's. `pocusd infer`, `eval`, the benchmarks and the daemon's processing
//! thread use it. The primary model stays with the caller (so its hot swap stays with the owner of
//! state); each extra model ([`extra`]) is owned here with its own engine, runs inline for still
//! images and in a lane of its own along a stream, and is swapped by role. No I/O.

pub mod extra;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::frame::{FrameError, GrayImage, GrayView, Rect};
use crate::infer::{InferError, LoadedModel};
use crate::model::Task;
use crate::postprocess::overlay::{Overlay, OverlayInput, OverlayStyle, RgbImage};
use crate::postprocess::{Analysis, Calibration, PostprocessConfig, Postprocessor};
use crate::preprocess::calibration::Calibrator;
use crate::preprocess::roi::{RoiMode, Tracking};
use crate::preprocess::Preprocessor;
pub use extra::{Extra, ExtraError, Outcome};

/// Why a frame could not be analysed.
#[derive(Debug, Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// The stages around a model.
#[derive(Debug)]
pub struct Analyzer {
    pre: Preprocessor,
    post: Postprocessor,
    overlay: Overlay,
    style: OverlayStyle,
    /// Ruler calibration (`[calibration] mode = "ruler"`).
    calibrator: Option<Calibrator>,
    per_image: bool,
    extras: Vec<Extra>,
    /// Frames analysed (the extras' lanes tell their outcomes' age by it).
    frames: u64,
    /// Lane jobs dropped by extra models since replaced (so the total never goes back).
    dropped_before: u64,
    /// The primary's analysis with the extras' keys merged in (only with extras).
    merged: Analysis,
    /// Per-stage times of the last frame, ms: preprocess, infer, postprocess.
    pub last_ms: [f64; 3],
    /// The mirrored-frame check of the primary model (`[quality] mirror_every`).
    mirror: Mirror,
    /// Time the mirrored check took on the last frame, ms.
    mirror_ms: f64,
}

/// The frame mirrored left to right through the same model: its own postprocessing and buffers.
/// With mirrored test-time averaging (the model's `pocusd.tta = mirror`) also the original
/// frame's probabilities, the average of both and the original's own postprocessing (the check
/// then compares the original with the mirrored frame, not with their average).
#[derive(Debug)]
struct Mirror {
    post: Postprocessor,
    input: Vec<f32>,
    output: Vec<f32>,
    original: Vec<f32>,
    averaged: Vec<f32>,
    original_post: Postprocessor,
}

/// Mirrors a model input tensor left to right in place (`w` x `h`, `c` channels, in `layout`).
fn mirror_tensor(t: &mut [f32], w: usize, h: usize, c: usize, layout: crate::model::Layout) {
    match layout {
        crate::model::Layout::Nchw => {
            for row in t.chunks_exact_mut(w.max(1)).take(c * h) {
                row.reverse();
            }
        }
        crate::model::Layout::Nhwc => {
            let c = c.max(1);
            for row in t.chunks_exact_mut((w * c).max(1)).take(h) {
                for x in 0..w / 2 {
                    for k in 0..c {
                        row.swap(x * c + k, (w - 1 - x) * c + k);
                    }
                }
            }
        }
    }
}

impl Analyzer {
    /// Stages matching `model`'s spec, finding the region of interest by `roi` per image or
    /// along a stream (`tracking`).
    pub fn new(
        model: &LoadedModel,
        roi: RoiMode,
        tracking: Tracking,
        clahe_threads: NonZeroUsize,
        post: PostprocessConfig,
        style: OverlayStyle,
    ) -> Self {
        let per_image = tracking == Tracking::PerImage;
        let calibrator = post.ruler.map(|r| Calibrator::new(r, per_image));
        let mut mirror_post = Postprocessor::new(model.spec().task, post);
        mirror_post.set_contour_offset_px(model.spec().contour_offset_px);
        let mut original_post = Postprocessor::new(model.spec().task, post);
        original_post.set_contour_offset_px(model.spec().contour_offset_px);
        let mut post = Postprocessor::new(model.spec().task, post);
        post.set_contour_offset_px(model.spec().contour_offset_px);
        Self {
            pre: Preprocessor::new(model.spec(), roi, tracking, clahe_threads),
            post,
            overlay: Overlay::new(),
            style,
            calibrator,
            per_image,
            extras: Vec::new(),
            frames: 0,
            dropped_before: 0,
            merged: Analysis::default(),
            last_ms: [0.0; 3],
            mirror: Mirror {
                post: mirror_post,
                input: Vec::new(),
                output: Vec::new(),
                original: Vec::new(),
                averaged: Vec::new(),
                original_post,
            },
            mirror_ms: 0.0,
        }
    }

    /// Adds an extra model, or replaces the one in its role (its task). `role`, when given, must
    /// be that task; the primary's task cannot be an extra role.
    pub fn set_extra(&mut self, role: Option<&str>, model: LoadedModel) -> Result<(), ExtraError> {
        let task = model.spec().task;
        let path = model.path().display().to_string();
        if let Some(r) = role {
            if r != task.as_str() {
                return Err(ExtraError::WrongRole {
                    role: r.to_string(),
                    path,
                    task: task.as_str(),
                });
            }
        }
        if task == self.pre.spec().task {
            return Err(ExtraError::SameAsPrimary {
                path,
                task: task.as_str(),
            });
        }
        let extra = Extra::new(model, self.pre.spec(), *self.post.config(), !self.per_image);
        match self.extras.iter_mut().find(|e| e.role == extra.role) {
            Some(e) => {
                self.dropped_before += e.dropped();
                *e = extra;
            }
            None => self.extras.push(extra),
        }
        Ok(())
    }

    /// Jobs the extra models' lanes dropped because a newer frame arrived first, in total.
    pub fn extra_dropped(&self) -> u64 {
        self.dropped_before + self.extras.iter().map(Extra::dropped).sum::<u64>()
    }

    /// The extra models, in the order they were added.
    pub fn extras(&self) -> &[Extra] {
        &self.extras
    }

    /// Takes the extra models out (to move them to a new analyser on a primary swap).
    pub fn take_extras(&mut self) -> Vec<Extra> {
        std::mem::take(&mut self.extras)
    }

    /// Puts extra models taken from another analyser back, re-checked against this primary;
    /// returns the ones refused with why.
    pub fn put_extras(&mut self, extras: Vec<Extra>) -> Vec<(Extra, ExtraError)> {
        let mut refused = Vec::new();
        for mut e in extras {
            if e.spec().task == self.pre.spec().task {
                let err = ExtraError::SameAsPrimary {
                    path: e.path().display().to_string(),
                    task: e.spec().task.as_str(),
                };
                refused.push((e, err));
                continue;
            }
            e.follow(self.pre.spec());
            self.extras.push(e);
        }
        refused
    }

    /// Changes the postprocessing settings live (threshold, gates, smoothing, calibration).
    pub fn set_postprocess(&mut self, cfg: PostprocessConfig) {
        if cfg.ruler != self.post.config().ruler {
            self.calibrator = cfg.ruler.map(|r| Calibrator::new(r, self.per_image));
        }
        self.post.set_config(cfg);
        self.mirror.post.set_config(cfg);
        self.mirror.original_post.set_config(cfg);
        for e in &mut self.extras {
            e.set_postprocess(cfg);
        }
    }

    /// Along a stream: the frame number (`seq`) of the next frame analysed, for the rules that
    /// hold a number against its recent history (still images leave it unset).
    pub fn set_frame_seq(&mut self, seq: u64) {
        self.post.set_frame_seq(Some(seq));
    }

    /// The ruler calibrator, in ruler mode.
    pub fn calibrator(&self) -> Option<&Calibrator> {
        self.calibrator.as_ref()
    }

    /// Preprocess (region of interest included), run and postprocess one frame.
    pub fn analyse(
        &mut self,
        model: &mut LoadedModel,
        frame: GrayView<'_>,
    ) -> Result<&Analysis, AnalyzeError> {
        let q = self.post.config().quality;
        let mirror_due = q.enabled
            && matches!(self.post.task(), Task::Aponeurosis | Task::Region)
            && (self.per_image
                || (q.mirror_every > 0 && self.frames.is_multiple_of(q.mirror_every)));
        let s = model.spec();
        let (w, h) = (s.input_width, s.input_height);
        let (c, layout, out_c, tta) = (s.channels, s.layout, s.output_channels, s.tta_mirror);
        let t0 = std::time::Instant::now();
        let input = self.pre.process(frame)?;
        let t1 = std::time::Instant::now();
        if mirror_due || tta {
            self.mirror.input.clear();
            self.mirror.input.extend_from_slice(input);
        }
        let probability = model.run(input)?;
        let roi = self.pre.roi();
        // The ruler is read unless a manual calibration wins anyway.
        let ruler = match &mut self.calibrator {
            Some(c) if self.post.config().calibration == Calibration::None => {
                Some(c.update(frame, self.pre.layout_changes()))
            }
            _ => None,
        };
        self.post.set_ruler(ruler);
        let t2;
        if tta {
            // Test-time averaging: the mirrored frame's map flipped back and averaged with the
            // original's; a failed mirrored run fails the frame (half an average is neither).
            let m = &mut self.mirror;
            m.original.clear();
            m.original.extend_from_slice(probability);
            mirror_tensor(&mut m.input, w, h, c, layout);
            let p = model.run(&m.input)?;
            m.output.clear();
            m.output.extend_from_slice(p);
            mirror_tensor(&mut m.output, w, h, out_c, crate::model::Layout::Nchw);
            m.averaged.clear();
            m.averaged
                .extend(m.original.iter().zip(&m.output).map(|(a, b)| 0.5 * (a + b)));
            t2 = std::time::Instant::now();
            self.post.process(&m.averaged, w, h, roi);
            if mirror_due {
                let t = std::time::Instant::now();
                m.original_post.process(&m.original, w, h, roi);
                m.post.process(&m.output, w, h, roi);
                let (original, mirrored) = (m.original_post.headline(), m.post.headline());
                self.post.apply_mirror_pair(original, mirrored);
                self.mirror_ms = ms(t.elapsed());
            } else {
                self.mirror_ms = 0.0;
            }
        } else {
            t2 = std::time::Instant::now();
            self.post.process(probability, w, h, roi);
            if mirror_due {
                // The same frame mirrored: a model whose answer depends on the probe's direction
                // is not to be trusted on this frame. A failed run only means no such evidence.
                let t = std::time::Instant::now();
                mirror_tensor(&mut self.mirror.input, w, h, c, layout);
                if let Ok(p) = model.run(&self.mirror.input) {
                    self.mirror.output.clear();
                    self.mirror.output.extend_from_slice(p);
                    mirror_tensor(
                        &mut self.mirror.output,
                        w,
                        h,
                        out_c,
                        crate::model::Layout::Nchw,
                    );
                    self.mirror.post.process(&self.mirror.output, w, h, roi);
                    let mirrored = self.mirror.post.headline();
                    self.post.apply_mirror(mirrored);
                }
                self.mirror_ms = ms(t.elapsed());
            } else {
                self.mirror_ms = 0.0;
            }
        }
        let frame_no = self.frames;
        self.frames += 1;
        if self.extras.is_empty() {
            let t3 = std::time::Instant::now();
            self.last_ms = [
                ms(t1 - t0),
                ms(t2 - t1) + self.mirror_ms,
                ms(t3 - t2) - self.mirror_ms,
            ];
            return Ok(self.post.analysis());
        }
        // The extras: the same region of interest and calibration, and (for fascicles) the
        // primary's aponeuroses of this frame. Along a stream each runs in its lane and the
        // newest outcome it finished joins (`fascicle_lag_frames` says how many frames old).
        self.merged.clone_from(self.post.analysis());
        let apo = self.post.aponeuroses();
        for e in &mut self.extras {
            let task = e.spec().task;
            let fascicle = task == crate::model::Task::Fascicle;
            let out = e.submit(frame_no, frame, self.pre.enhanced(), roi, apo, ruler)?;
            if let Some(o) = out {
                self.merged.measurements.merge(&o.measurements);
                self.merged.extra_doubt.push((task, o.doubt));
                if fascicle {
                    self.merged.fascicles.clone_from(&o.fascicles);
                    self.merged.measurements.fascicle_lag_frames = Some(frame_no - o.frame);
                }
            }
        }
        let t3 = std::time::Instant::now();
        self.last_ms = [
            ms(t1 - t0),
            ms(t2 - t1) + self.mirror_ms,
            ms(t3 - t2) - self.mirror_ms,
        ];
        Ok(&self.merged)
    }

    /// The analysis of the last frame (the primary's, with the extras' keys).
    pub fn analysis(&self) -> &Analysis {
        if self.extras.is_empty() {
            self.post.analysis()
        } else {
            &self.merged
        }
    }

    /// Draws the overlay of the last analysed frame (which must be `frame`).
    pub fn render_overlay(&mut self, frame: GrayView<'_>, model_sha256: &str) -> &RgbImage {
        let input = OverlayInput {
            frame,
            enhanced: self.pre.enhanced(),
            mask: self.post.mask(),
            roi: self.post.roi(),
            task: self.pre.spec().task,
            model_sha256,
        };
        let analysis = if self.extras.is_empty() {
            self.post.analysis()
        } else {
            &self.merged
        };
        self.overlay.render(&input, analysis, &self.style)
    }

    /// Draws the overlay of the last analysed frame (which must be `frame`) and hands it out as
    /// an owned image; `reuse` (an earlier overlay nobody holds any more) becomes the buffer of
    /// the next one, so a stream draws without allocating.
    pub fn take_overlay(
        &mut self,
        frame: GrayView<'_>,
        model_sha256: &str,
        reuse: Option<RgbImage>,
    ) -> RgbImage {
        self.render_overlay(frame, model_sha256);
        self.overlay.take_image(reuse)
    }

    /// The last mask as a whole-frame image (0/255; zero outside the region of interest).
    pub fn mask_image(&self, width: usize, height: usize) -> GrayImage {
        let mut img = GrayImage::new(width, height);
        let r = self.post.roi();
        let mask = self.post.mask();
        for y in 0..r.h.min(height.saturating_sub(r.y)) {
            let src = &mask[y * r.w..(y + 1) * r.w];
            let start = (r.y + y) * width + r.x;
            let n = r.w.min(width.saturating_sub(r.x));
            img.as_mut_slice()[start..start + n].copy_from_slice(&src[..n]);
        }
        img
    }

    /// The extra models' masks merged into the last frame's analysis, over a frame of `width` x
    /// `height` (0 or 255), by task; an extra without a fresh outcome has none.
    pub fn extra_masks(&self, width: usize, height: usize) -> Vec<(Task, GrayImage)> {
        let frame = self.frames.saturating_sub(1);
        self.extras
            .iter()
            .filter_map(|e| {
                let o = e.fresh(frame)?;
                let r = o.roi;
                if o.mask.len() != r.w * r.h {
                    return None;
                }
                let mut img = GrayImage::new(width, height);
                for y in 0..r.h.min(height.saturating_sub(r.y)) {
                    let n = r.w.min(width.saturating_sub(r.x));
                    let start = (r.y + y) * width + r.x;
                    img.as_mut_slice()[start..start + n]
                        .copy_from_slice(&o.mask[y * r.w..y * r.w + n]);
                }
                Some((e.spec().task, img))
            })
            .collect()
    }

    /// The last frame's region of interest (the postprocessor's) cropped from `frame`, and the
    /// last mask over it as uint8 labels (1: the model's structure, 0: not), for OpenIGTLink.
    /// `None` when the region does not fit `frame`.
    pub fn roi_planes(&self, frame: &GrayView<'_>) -> Option<(GrayImage, GrayImage)> {
        let r = self.post.roi();
        let mut image = GrayImage::new(0, 0);
        frame.crop(r).ok()?.copy_into(&mut image);
        let labels: Vec<u8> = self
            .post
            .mask()
            .iter()
            .map(|&m| u8::from(m > 127))
            .collect();
        let labels = GrayImage::from_vec(r.w, r.h, labels).ok()?;
        Some((image, labels))
    }

    /// The region of interest of the last frame.
    pub fn roi(&self) -> Rect {
        self.pre.roi()
    }

    /// The preprocessing stage.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    /// Changes the overlay style (live).
    pub fn set_style(&mut self, style: OverlayStyle) {
        self.style = style;
    }

    /// The postprocessing stage (threshold and settings can change live).
    pub fn postprocessor(&mut self) -> &mut Postprocessor {
        &mut self.post
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where the default model is looked for, in order: the checkout's `models/`, the installed
/// `/usr/share/pocusd/models/`.
pub fn default_model_candidates(name: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/pocusd -> the checkout root.
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            v.push(root.join("models").join(name));
        }
    }
    v.push(PathBuf::from("models").join(name));
    v.push(PathBuf::from("/usr/share/pocusd/models").join(name));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Layout;

    #[test]
    fn mirror_tensor_reverses_each_row_of_each_channel_and_is_its_own_inverse() {
        // 3 wide, 2 high, 2 channels.
        let nchw: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut t = nchw.clone();
        mirror_tensor(&mut t, 3, 2, 2, Layout::Nchw);
        assert_eq!(t, [2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
        mirror_tensor(&mut t, 3, 2, 2, Layout::Nchw);
        assert_eq!(t, nchw);
        // NHWC: pixels swap, channels stay in order within a pixel.
        let mut t: Vec<f32> = (0..12).map(|i| i as f32).collect();
        mirror_tensor(&mut t, 3, 2, 2, Layout::Nhwc);
        assert_eq!(t, [4., 5., 2., 3., 0., 1., 10., 11., 8., 9., 6., 7.]);
    }
}
