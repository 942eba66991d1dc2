//! Extra models beside the primary one (`[model] extra`): each reads the primary's region of
//! interest (enhanced with the primary's CLAHE when the parameters match, else with its own),
//! resized to its own input, and measures with its own postprocessing (fascicles get the
//! primary's aponeuroses of the same frame). For still images the extra model runs inline; along
//! a stream it runs in a lane of its own: a thread that takes the newest job from a "latest value
//! wins" slot (a job it could not start before the next one arrived is dropped and counted), so
//! the primary's frame never waits for a slower extra model and the numbers it adds are those of
//! the newest frame the lane finished. No I/O; threads only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::frame::{FrameError, GrayImage, GrayView, Rect};
use crate::infer::LoadedModel;
use crate::model::{ModelSpec, Task};
use crate::postprocess::fascicle::{ApoLines, FascicleLine};
use crate::postprocess::{Measurements, PostprocessConfig, Postprocessor};
use crate::preprocess::calibration::CalibrationInfo;
use crate::preprocess::{fill_tensor, Clahe, Resizer};
use crate::slot::Slot;

/// A lane's numbers older than this many frames are not merged (a stuck or failing extra model
/// adds nothing rather than stale numbers).
pub const MAX_LAG_FRAMES: u64 = 30;

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

/// What an extra model runs: its engine and its postprocessing.
#[derive(Debug)]
struct Work {
    model: LoadedModel,
    post: Postprocessor,
}

/// One frame for an extra model.
#[derive(Debug)]
struct Job {
    /// The analyser's frame number.
    frame: u64,
    tensor: Vec<f32>,
    roi: Rect,
    apo: Option<ApoLines>,
    ruler: Option<CalibrationInfo>,
}

/// What an extra model made of a frame.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub frame: u64,
    pub measurements: Measurements,
    pub fascicles: Vec<FascicleLine>,
    /// The region of interest the model saw and its mask over it (0 or 255), for snapshots.
    pub roi: Rect,
    pub mask: Vec<u8>,
    /// The extra model's own verdict on its numbers.
    pub doubt: crate::postprocess::quality::Doubts,
    /// Set when the run failed (nothing else is).
    pub error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `job` on `work` into `out`, reusing its buffers (the mask, the fascicle list).
fn run(work: &Mutex<Work>, job: &Job, out: &mut Outcome) {
    let mut w = lock(work);
    let Work { model, post } = &mut *w;
    let (ew, eh) = (model.spec().input_width, model.spec().input_height);
    out.frame = job.frame;
    out.roi = job.roi;
    if let Err(e) = model.run(&job.tensor) {
        out.measurements = Default::default();
        out.fascicles.clear();
        out.mask.clear();
        out.doubt = Default::default();
        out.error = Some(e.to_string());
        return;
    }
    if post.task() == Task::Fascicle {
        post.set_aponeuroses(job.apo);
    }
    post.set_ruler(job.ruler);
    let a = post.process(model.probability(), ew, eh, job.roi);
    out.measurements = a.measurements.clone();
    out.fascicles.clone_from(&a.fascicles);
    out.doubt = a.doubt;
    out.error = None;
    out.mask.clear();
    out.mask.extend_from_slice(post.mask());
}

/// A thread that runs an extra model on the newest job.
#[derive(Debug)]
struct Lane {
    jobs: Arc<Slot<Job>>,
    outcome: Arc<Mutex<Option<Outcome>>>,
    /// Tensors the lane is done with, for the next jobs.
    spare: Arc<Mutex<Vec<Vec<f32>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lane {
    fn start(work: Arc<Mutex<Work>>, role: &str) -> std::io::Result<Self> {
        let jobs: Arc<Slot<Job>> = Arc::new(Slot::new());
        let outcome = Arc::new(Mutex::new(None));
        let spare = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (j, o, s, st) = (jobs.clone(), outcome.clone(), spare.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("pocusd-{role}"))
            .spawn(move || {
                let mut out = Outcome::default();
                while !st.load(Ordering::Relaxed) {
                    let Some(job) = j.take_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    // Filled outside the lock, then swapped in: the previous outcome's buffers
                    // come back for the next run.
                    run(&work, &job, &mut out);
                    std::mem::swap(&mut out, lock(&o).get_or_insert_with(Outcome::default));
                    let mut spare = lock(&s);
                    if spare.len() < 2 {
                        spare.push(job.tensor);
                    }
                }
            })?;
        Ok(Self {
            jobs,
            outcome,
            spare,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An extra model with its input stage, run inline or in its lane.
#[derive(Debug)]
pub struct Extra {
    /// The role (its task's name: `fascicle`).
    pub role: String,
    spec: ModelSpec,
    path: PathBuf,
    sha256: String,
    clahe: Option<Clahe>,
    enhanced: GrayImage,
    resizer: Resizer,
    plane: Vec<f32>,
    /// The inline run's tensor (still images).
    tensor: Vec<f32>,
    work: Arc<Mutex<Work>>,
    lane: Option<Lane>,
    /// The newest outcome (inline: this frame's).
    last: Option<Outcome>,
}

impl Extra {
    /// An extra model beside a primary of `primary`'s contract; `stream`: in a lane of its own.
    pub fn new(
        model: LoadedModel,
        primary: &ModelSpec,
        post: PostprocessConfig,
        stream: bool,
    ) -> Self {
        let spec = model.spec().clone();
        let mut p = Postprocessor::new(spec.task, post);
        p.set_contour_offset_px(spec.contour_offset_px);
        let role = spec.task.as_str().to_string();
        let (path, sha256) = (model.path().to_path_buf(), model.sha256().to_string());
        let work = Arc::new(Mutex::new(Work { model, post: p }));
        // Without a thread (none can be started) the model runs inline: slower, never lost.
        let lane = if stream {
            Lane::start(work.clone(), &role).ok()
        } else {
            None
        };
        let mut e = Self {
            role,
            clahe: None,
            spec,
            path,
            sha256,
            enhanced: GrayImage::default(),
            resizer: Resizer::new(),
            plane: Vec::new(),
            tensor: Vec::new(),
            work,
            lane,
            last: None,
        };
        e.follow(primary);
        e
    }

    /// Adapts to a (new) primary model: its own CLAHE only where the parameters differ.
    pub fn follow(&mut self, primary: &ModelSpec) {
        self.clahe = if self.spec.clahe == primary.clahe {
            None
        } else {
            self.spec.clahe.map(Clahe::new)
        };
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Jobs its lane dropped because a newer frame arrived first.
    pub fn dropped(&self) -> u64 {
        self.lane.as_ref().map_or(0, |l| l.jobs.dropped())
    }

    /// Changes its postprocessing settings.
    pub fn set_postprocess(&mut self, cfg: PostprocessConfig) {
        lock(&self.work).post.set_config(cfg);
    }

    /// Hands frame `frame` to the model: `primary_enhanced` is the primary's enhanced region of
    /// interest `roi` of `image`. Returns the newest outcome to merge (inline: this frame's; in a
    /// lane: the newest one finished, if not older than [`MAX_LAG_FRAMES`]).
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        frame: u64,
        image: GrayView<'_>,
        primary_enhanced: &GrayImage,
        roi: Rect,
        apo: Option<ApoLines>,
        ruler: Option<CalibrationInfo>,
    ) -> Result<Option<&Outcome>, FrameError> {
        let source = match &mut self.clahe {
            Some(c) => {
                c.apply(image.crop(roi)?, &mut self.enhanced);
                &self.enhanced
            }
            None => primary_enhanced,
        };
        let (w, h) = (self.spec.input_width, self.spec.input_height);
        self.resizer.resize(&source.view()?, w, h, &mut self.plane);
        let mut tensor = match &self.lane {
            Some(l) => lock(&l.spare).pop().unwrap_or_default(),
            None => std::mem::take(&mut self.tensor),
        };
        fill_tensor(&self.plane, &self.spec, &mut tensor);
        let job = Job {
            frame,
            tensor,
            roi,
            apo,
            ruler,
        };
        match &self.lane {
            Some(l) => {
                l.jobs.put(job);
                // Copied only when the lane finished a newer frame.
                let newest = lock(&l.outcome);
                if newest.as_ref().map(|o| o.frame) != self.last.as_ref().map(|o| o.frame) {
                    self.last.clone_from(&newest);
                }
            }
            None => {
                let mut out = self.last.take().unwrap_or_default();
                run(&self.work, &job, &mut out);
                self.last = Some(out);
                self.tensor = job.tensor;
            }
        }
        Ok(self.fresh(frame))
    }

    /// The outcome merged into the analysis of frame `frame` (the last one submitted), if any.
    pub fn fresh(&self, frame: u64) -> Option<&Outcome> {
        self.last
            .as_ref()
            .filter(|o| o.error.is_none() && o.frame + MAX_LAG_FRAMES >= frame)
    }

    /// The newest outcome, whatever its age or error.
    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }
}
