//! One frame from pixels to numbers and overlay: the preprocessing, postprocessing and overlay stages
//! for one model, composed, plus any extra models (`[model] extra`, e.g. fascicles) that run on the
//! same preprocessed frame (one preprocessing, one region of interest, one calibration) and whose
//! keys join the primary's. `pocusd infer`, `eval`, the benchmarks and the daemon's processing
//! thread use it. The primary model stays with the caller (so its hot swap stays with the owner of
//! state); each extra model is owned here with its own engine and is swapped by role. No I/O.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::frame::{FrameError, GrayImage, GrayView, Rect};
use crate::infer::{InferError, LoadedModel};
use crate::model::{ModelSpec, Task};
use crate::postprocess::overlay::{Overlay, OverlayInput, OverlayStyle, RgbImage};
use crate::postprocess::{Analysis, Calibration, PostprocessConfig, Postprocessor};
use crate::preprocess::calibration::Calibrator;
use crate::preprocess::roi::{RoiMode, Tracking};
use crate::preprocess::Preprocessor;
use crate::preprocess::{fill_tensor, Clahe, Resizer};

/// Why a frame could not be analysed.
#[derive(Debug, Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// An extra model and its stages: it reads the primary's region of interest (enhanced with the
/// primary's CLAHE when the parameters match, else with its own), resized to its own input.
#[derive(Debug)]
pub struct Extra {
    /// The role (its task's name: `fascicle`).
    pub role: String,
    pub model: LoadedModel,
    clahe: Option<Clahe>,
    enhanced: GrayImage,
    resizer: Resizer,
    plane: Vec<f32>,
    tensor: Vec<f32>,
    post: Postprocessor,
    /// Inference time of the last frame, ms.
    pub last_infer_ms: f64,
}

impl Extra {
    fn new(model: LoadedModel, primary: &ModelSpec, post: PostprocessConfig) -> Self {
        let spec = model.spec().clone();
        let clahe = if spec.clahe == primary.clahe {
            None
        } else {
            spec.clahe.map(Clahe::new)
        };
        let mut post = Postprocessor::new(spec.task, post);
        post.set_contour_offset_px(spec.contour_offset_px);
        Self {
            role: spec.task.as_str().to_string(),
            model,
            clahe,
            enhanced: GrayImage::default(),
            resizer: Resizer::new(),
            plane: Vec::new(),
            tensor: Vec::new(),
            post,
            last_infer_ms: 0.0,
        }
    }

    /// The postprocessing stage (its mask, its last analysis).
    pub fn postprocessor(&self) -> &Postprocessor {
        &self.post
    }
}

/// Why an extra model cannot join.
#[derive(Debug, Error)]
pub enum ExtraError {
    #[error("an extra model needs its own role: {path} is a {task} model, like the primary model (load it with LoadModel instead)")]
    SameAsPrimary { path: String, task: &'static str },
    #[error("role {role:?} does not match {path}, a {task} model (the role is the model's task)")]
    WrongRole {
        role: String,
        path: String,
        task: &'static str,
    },
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
    /// The primary's analysis with the extras' keys merged in (only with extras).
    merged: Analysis,
    /// Per-stage times of the last frame, ms: preprocess, infer, postprocess.
    pub last_ms: [f64; 3],
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
            merged: Analysis::default(),
            last_ms: [0.0; 3],
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
        let extra = Extra::new(model, self.pre.spec(), *self.post.config());
        match self.extras.iter_mut().find(|e| e.role == extra.role) {
            Some(e) => *e = extra,
            None => self.extras.push(extra),
        }
        Ok(())
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
        for e in extras {
            if e.model.spec().task == self.pre.spec().task {
                let err = ExtraError::SameAsPrimary {
                    path: e.model.path().display().to_string(),
                    task: e.model.spec().task.as_str(),
                };
                refused.push((e, err));
                continue;
            }
            let mut fresh = Extra::new(e.model, self.pre.spec(), *self.post.config());
            fresh.role = e.role;
            self.extras.push(fresh);
        }
        refused
    }

    /// Changes the postprocessing settings live (threshold, gates, smoothing, calibration).
    pub fn set_postprocess(&mut self, cfg: PostprocessConfig) {
        if cfg.ruler != self.post.config().ruler {
            self.calibrator = cfg.ruler.map(|r| Calibrator::new(r, self.per_image));
        }
        self.post.set_config(cfg);
        for e in &mut self.extras {
            e.post.set_config(cfg);
        }
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
        let t0 = std::time::Instant::now();
        self.pre.process(frame)?;
        let roi = self.pre.roi();
        // The extras' inputs, from the same region of interest.
        for e in &mut self.extras {
            let spec = e.model.spec();
            let source = match &mut e.clahe {
                Some(c) => {
                    c.apply(frame.crop(roi)?, &mut e.enhanced);
                    &e.enhanced
                }
                None => self.pre.enhanced(),
            };
            e.resizer.resize(
                &source.view()?,
                spec.input_width,
                spec.input_height,
                &mut e.plane,
            );
            fill_tensor(&e.plane, spec, &mut e.tensor);
        }
        let t1 = std::time::Instant::now();
        let input = self.pre.tensor();
        if self.extras.is_empty() {
            model.run(input)?;
        } else {
            // Each extra model on a thread of its own while the primary runs here: the frame
            // takes the longest model's time, not the sum.
            let extras = &mut self.extras;
            let (primary, others) = std::thread::scope(|s| {
                let handles: Vec<_> = extras
                    .iter_mut()
                    .map(|e| {
                        s.spawn(move || {
                            let t = std::time::Instant::now();
                            let r = e.model.run(&e.tensor).map(|_| ());
                            e.last_infer_ms = ms(t.elapsed());
                            r
                        })
                    })
                    .collect();
                let primary = model.run(input).map(|_| ());
                let others: Vec<Result<(), InferError>> = handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(InferError::Run("an extra model's thread panicked".into()))
                        })
                    })
                    .collect();
                (primary, others)
            });
            primary?;
            for r in others {
                r?;
            }
        }
        let t2 = std::time::Instant::now();
        // The ruler is read unless a manual calibration wins anyway.
        let ruler = match &mut self.calibrator {
            Some(c) if self.post.config().calibration == Calibration::None => {
                Some(c.update(frame, self.pre.layout_changes()))
            }
            _ => None,
        };
        let (w, h) = (model.spec().input_width, model.spec().input_height);
        self.post.set_ruler(ruler);
        self.post.process(model.probability(), w, h, roi);
        if self.extras.is_empty() {
            let t3 = std::time::Instant::now();
            self.last_ms = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2)];
            return Ok(self.post.analysis());
        }
        // The extras' numbers, on the same calibration and (for fascicles) the primary's
        // aponeuroses.
        self.merged.clone_from(self.post.analysis());
        let apo = self.post.aponeuroses();
        for e in &mut self.extras {
            let (ew, eh) = (e.model.spec().input_width, e.model.spec().input_height);
            let fascicle = e.post.task() == Task::Fascicle;
            if fascicle {
                e.post.set_aponeuroses(apo);
            }
            e.post.set_ruler(ruler);
            let a = e.post.process(e.model.probability(), ew, eh, roi);
            self.merged.measurements.merge(&a.measurements);
            if fascicle {
                self.merged.fascicles.clone_from(&a.fascicles);
            }
        }
        let t3 = std::time::Instant::now();
        self.last_ms = [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2)];
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
