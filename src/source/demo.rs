//! The demo source: the synthetic phantom as a moving sequence, paced at `fps`, knowing its
//! ground truth. Options: `seed`, `fps` (0: unpaced), `width`, `height`, `task`, `furniture`
//! (the generic screen layout), `layout` (`generic`, `ge`, `telemed`, `philips`: a scanner's
//! screen, furniture implied), `mirrored` (the screen mirrored left to right, furniture implied),
//! `depth_mm` (the physical depth of the image, the scale of the furniture's ruler; default 40).

use std::time::Duration;

use super::{realtime_us, FrameSource, Pacer, Read, SourceError, SourceSpec};
use crate::frame::{Frame, FramePool, GrayImage};
use crate::model::Task;
use crate::synth::{Layout, Phantom, PhantomConfig, Truth};

/// The phantom as a live source.
pub struct DemoSource {
    spec: String,
    phantom: Phantom,
    fps: f64,
    pacer: Pacer,
    seq: u64,
    mask: GrayImage,
    truth: Option<Truth>,
    /// Frame buffers the processing thread hands back.
    pool: FramePool,
}

impl DemoSource {
    /// The phantom and frame rate `spec`'s options ask for, or the option that is wrong.
    pub fn settings(spec: &SourceSpec) -> Result<(PhantomConfig, f64), SourceError> {
        spec.only(&[
            "seed",
            "fps",
            "width",
            "height",
            "task",
            "furniture",
            "layout",
            "mirrored",
            "depth_mm",
        ])?;
        let layout = match spec.options.get("layout").map(String::as_str) {
            None => None,
            Some(l) => Some(Layout::parse(l).ok_or_else(|| SourceError::BadSpec {
                spec: spec.raw.clone(),
                reason: format!("layout={l}: allowed {}", Layout::allowed()),
            })?),
        };
        let mirrored = spec.num("mirrored", 0u8, 0, 1)? == 1;
        let task = match spec.options.get("task").map(String::as_str) {
            None => Task::Aponeurosis,
            Some(t) => Task::parse(t).ok_or_else(|| SourceError::BadSpec {
                spec: spec.raw.clone(),
                reason: format!("task={t}: allowed {}", Task::allowed()),
            })?,
        };
        let cfg = PhantomConfig {
            width: spec.num("width", 640usize, 64, 4096)?,
            height: spec.num("height", 480usize, 64, 4096)?,
            task,
            furniture: spec.num("furniture", 0u8, 0, 1)? == 1 || layout.is_some() || mirrored,
            seed: spec.num("seed", 1u64, 0, u64::MAX)?,
            depth_mm: spec.num("depth_mm", 40.0f64, 5.0, 400.0)?,
            layout: layout.unwrap_or_default(),
            mirrored,
        };
        let fps = spec.num("fps", 30.0f64, 0.0, 1000.0)?;
        Ok((cfg, fps))
    }

    /// Opens `demo[?seed=1&fps=30&width=640&height=480&task=aponeurosis|region&furniture=1&layout=ge&mirrored=1&depth_mm=40]`.
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        let (cfg, fps) = Self::settings(spec)?;
        let phantom = Phantom::new(cfg);
        Ok(Self {
            spec: spec.raw.clone(),
            phantom,
            fps,
            pacer: Pacer::new(fps),
            seq: 0,
            mask: GrayImage::default(),
            truth: None,
            pool: FramePool::new(),
        })
    }

    /// The ground-truth mask of the last frame.
    pub fn mask(&self) -> &GrayImage {
        &self.mask
    }
}

impl FrameSource for DemoSource {
    fn read(&mut self, timeout: Duration) -> Result<Read, SourceError> {
        if !self.pacer.wait(timeout) {
            return Ok(Read::Timeout);
        }
        // Unpaced runs still advance the scene as if at 30 fps.
        let t_s = self.seq as f64 / if self.fps > 0.0 { self.fps } else { 30.0 };
        let geometry = self.phantom.geometry_at(t_s);
        let cfg = self.phantom.config();
        let mut image = self.pool.image(cfg.width, cfg.height);
        self.phantom
            .render(&geometry, self.seq, &mut image, &mut self.mask);
        self.truth = Some(geometry.truth(self.phantom.config().task));
        let frame = Frame {
            image,
            seq: self.seq,
            timestamp_us: realtime_us(),
            pool: Some(self.pool.clone()),
        };
        self.seq += 1;
        Ok(Read::Frame(frame))
    }

    fn spec(&self) -> &str {
        &self.spec
    }

    fn truth(&self) -> Option<Truth> {
        self.truth
    }
}
