//! The image-folder source: PNG/JPEG files in name order, paced at `fps` (0: unpaced), looping
//! with `loop=1`. An unreadable file is a corrupt frame: skipped and counted, never fatal.

use std::path::PathBuf;
use std::time::Duration;

use super::{realtime_us, FrameSource, Pacer, Read, SourceError, SourceKind, SourceSpec};
use crate::frame::Frame;
use crate::imageio;

/// Frames from a folder of images.
pub struct ImagesSource {
    spec: String,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    pacer: Pacer,
    seq: u64,
}

impl ImagesSource {
    /// (loop, fps) from `spec`'s options, or the option that is wrong.
    pub fn settings(spec: &SourceSpec) -> Result<(bool, f64), SourceError> {
        spec.only(&["fps", "loop"])?;
        Ok((
            spec.num("loop", 0u8, 0, 1)? == 1,
            spec.num("fps", 30.0f64, 0.0, 1000.0)?,
        ))
    }

    /// Opens `images:DIR[?fps=30&loop=1]`.
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        let (looping, fps) = Self::settings(spec)?;
        let SourceKind::Images(dir) = &spec.kind else {
            return Err(SourceError::BadSpec {
                spec: spec.raw.clone(),
                reason: "not an images: spec".into(),
            });
        };
        let open_err = |reason: String| SourceError::Open {
            spec: spec.raw.clone(),
            reason,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| open_err(format!("cannot list {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(open_err(format!(
                "{} holds no PNG or JPEG files",
                dir.display()
            )));
        }
        Ok(Self {
            spec: spec.raw.clone(),
            files,
            next: 0,
            looping,
            pacer: Pacer::new(fps),
            seq: 0,
        })
    }
}

impl FrameSource for ImagesSource {
    fn read(&mut self, timeout: Duration) -> Result<Read, SourceError> {
        if self.next >= self.files.len() {
            if !self.looping {
                return Ok(Read::End);
            }
            self.next = 0;
        }
        if !self.pacer.wait(timeout) {
            return Ok(Read::Timeout);
        }
        let path = &self.files[self.next];
        self.next += 1;
        let image = imageio::read_gray(path).map_err(|e| SourceError::Corrupt {
            spec: self.spec.clone(),
            reason: e.to_string(),
        })?;
        // Decoded into a new buffer by the image codec: nothing to pool.
        let frame = Frame {
            image,
            seq: self.seq,
            timestamp_us: realtime_us(),
            pool: None,
        };
        self.seq += 1;
        Ok(Read::Frame(frame))
    }

    fn spec(&self) -> &str {
        &self.spec
    }
}
