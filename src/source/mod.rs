//! Frame sources: one spec string chooses where frames come from (`demo`, `images:DIR`,
//! `ffmpeg:URL` with feature `ffmpeg`, `v4l2:/dev/videoN` with feature `v4l`), options as a query
//! string. Every source yields 8-bit gray [`Frame`]s stamped with a sequence number and the capture
//! time (CLOCK_REALTIME, microseconds).
//!
//! [`Reconnecting`] wraps any source with the recovery policy (no signal, retry with capped
//! backoff, resume by itself, sleeping while it waits) and [`health::Health`] tracks capture
//! health (streaming, no signal, frozen, reconnecting) and counters. Must not depend on infer or
//! publish.

pub mod convert;
pub mod demo;
#[cfg(feature = "ffmpeg")]
pub mod ffmpeg;
pub mod health;
pub mod images;
#[cfg(feature = "v4l")]
pub mod v4l2;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::Frame;
use crate::synth::Truth;

pub use health::{CaptureState, Health, HealthConfig};

/// Errors from parsing a spec or reading a source.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SourceError {
    /// The spec string cannot be understood.
    #[error("invalid source spec {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    /// The source cannot be opened now (missing folder or device, refused URL).
    #[error("cannot open source {spec}: {reason}")]
    Open { spec: String, reason: String },
    /// The source went away (cable pulled, device error, stream lost).
    #[error("source {spec} lost: {reason}")]
    Lost { spec: String, reason: String },
    /// One frame could not be decoded; it is skipped and counted.
    #[error("corrupt frame from {spec}: {reason}")]
    Corrupt { spec: String, reason: String },
    /// The kind exists in the spec grammar but is not built into this binary.
    #[error("source kind {kind:?} is not available in this build: {reason}")]
    Unavailable { kind: String, reason: String },
}

/// What one read produced.
#[derive(Debug)]
pub enum Read {
    /// A frame.
    Frame(Frame),
    /// Nothing within the timeout (the caller's loop keeps ticking).
    Timeout,
    /// The stream ended (a file without `loop=1`).
    End,
}

/// A producer of frames.
pub trait FrameSource: Send {
    /// Waits up to `timeout` for the next frame. Must not block longer, so the caller's loop
    /// keeps ticking while a source is silent.
    fn read(&mut self, timeout: Duration) -> Result<Read, SourceError>;
    /// The spec this source was opened from.
    fn spec(&self) -> &str;
    /// Ground truth of the last frame, for sources that know it (the demo phantom).
    fn truth(&self) -> Option<Truth> {
        None
    }
}

/// The parsed spec: kind, target and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub raw: String,
    pub kind: SourceKind,
    pub options: BTreeMap<String, String>,
}

/// Which source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The moving phantom.
    Demo,
    /// PNG/JPEG files of a folder, in name order.
    Images(PathBuf),
    /// Anything FFmpeg opens.
    Ffmpeg(String),
    /// A V4L2 capture device.
    V4l2(PathBuf),
}

impl SourceSpec {
    /// Parses `demo[?..]`, `images:DIR[?..]`, `ffmpeg:URL[?..]`, `v4l2:/dev/videoN[?..]`.
    pub fn parse(spec: &str) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::BadSpec {
            spec: spec.into(),
            reason: reason.into(),
        };
        let s = spec.trim();
        let (head, query) = match s.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (s, None),
        };
        let mut options = BTreeMap::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("option {pair:?} is not key=value")))?;
                options.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let kind = if head == "demo" {
            SourceKind::Demo
        } else if let Some(dir) = head.strip_prefix("images:") {
            if dir.is_empty() {
                return Err(bad("images: needs a folder, e.g. images:/data/frames"));
            }
            SourceKind::Images(PathBuf::from(dir))
        } else if let Some(url) = head.strip_prefix("ffmpeg:") {
            if url.is_empty() {
                return Err(bad("ffmpeg: needs a file or URL, e.g. ffmpeg:exam.mp4 or ffmpeg:udp://127.0.0.1:5000"));
            }
            SourceKind::Ffmpeg(url.to_string())
        } else if let Some(dev) = head.strip_prefix("v4l2:") {
            if dev.is_empty() {
                return Err(bad("v4l2: needs a device, e.g. v4l2:/dev/video0"));
            }
            SourceKind::V4l2(PathBuf::from(dev))
        } else {
            return Err(bad(
                "expected demo, images:DIR, ffmpeg:URL or v4l2:/dev/videoN",
            ));
        };
        Ok(Self {
            raw: spec.to_string(),
            kind,
            options,
        })
    }

    /// A numeric option, or `default`; out-of-range or unparsable values are errors naming the option.
    pub fn num<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
        &self,
        key: &str,
        default: T,
        lo: T,
        hi: T,
    ) -> Result<T, SourceError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<T>() {
                Ok(x) if x >= lo && x <= hi => Ok(x),
                _ => Err(SourceError::BadSpec {
                    spec: self.raw.clone(),
                    reason: format!("option {key}={v}: allowed {lo} to {hi}"),
                }),
            },
        }
    }

    /// Checks the options of the spec's kind (names, values, ranges) without opening anything, so
    /// a typo stops start-up instead of being retried forever as a lost source.
    pub fn validate(&self) -> Result<(), SourceError> {
        match &self.kind {
            SourceKind::Demo => demo::DemoSource::settings(self).map(|_| ()),
            SourceKind::Images(_) => images::ImagesSource::settings(self).map(|_| ()),
            #[cfg(feature = "ffmpeg")]
            SourceKind::Ffmpeg(_) => ffmpeg::FfmpegSource::settings(self).map(|_| ()),
            #[cfg(feature = "v4l")]
            SourceKind::V4l2(_) => v4l2::V4l2Source::check(self),
            // Kinds not built in are reported when opened.
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    /// Rejects options the source does not know, naming them.
    pub fn only(&self, known: &[&str]) -> Result<(), SourceError> {
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(SourceError::BadSpec {
                spec: self.raw.clone(),
                reason: format!("unknown option {k:?}; known: {}", known.join(", ")),
            }),
        }
    }
}

/// Opens a source from its spec.
pub fn open(spec: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    match &spec.kind {
        SourceKind::Demo => Ok(Box::new(demo::DemoSource::open(spec)?)),
        SourceKind::Images(_) => Ok(Box::new(images::ImagesSource::open(spec)?)),
        #[cfg(feature = "ffmpeg")]
        SourceKind::Ffmpeg(_) => Ok(Box::new(ffmpeg::FfmpegSource::open(spec)?)),
        #[cfg(not(feature = "ffmpeg"))]
        SourceKind::Ffmpeg(_) => Err(SourceError::Unavailable {
            kind: "ffmpeg".into(),
            reason: "built without the `ffmpeg` feature".into(),
        }),
        #[cfg(feature = "v4l")]
        SourceKind::V4l2(_) => Ok(Box::new(v4l2::V4l2Source::open(spec)?)),
        #[cfg(not(feature = "v4l"))]
        SourceKind::V4l2(_) => Err(SourceError::Unavailable {
            kind: "v4l2".into(),
            reason: "built without the `v4l` feature".into(),
        }),
    }
}

pub use crate::clock::realtime_us;

/// Paces a source at a frame rate: `wait` sleeps until the next frame is due (or the timeout).
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// `fps` of 0 means unpaced.
    pub fn new(fps: f64) -> Self {
        Self {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next: None,
        }
    }

    /// Sleeps until the next frame is due; false if that is later than `timeout` (it then sleeps
    /// the whole timeout and the caller reports `Read::Timeout`).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(period) = self.period else {
            return true;
        };
        let now = Instant::now();
        let due = *self.next.get_or_insert(now);
        if due > now + timeout {
            std::thread::sleep(timeout);
            return false;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        // Never build up a backlog: if we are late, the next frame is one period from now.
        let after = due + period;
        self.next = Some(if after < Instant::now() {
            Instant::now()
        } else {
            after
        });
        true
    }
}

/// Recovery settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

/// A source that survives its own loss: on a lost stream, an end of stream or a failed open it
/// reports no frames, retries with doubling backoff up to `policy.max` (sleeping, never spinning)
/// and resumes by itself when the source is back.
pub struct Reconnecting {
    spec: SourceSpec,
    current: Option<Box<dyn FrameSource>>,
    policy: RetryPolicy,
    backoff: Duration,
    next_attempt: Instant,
    /// Last error, for status lines.
    pub last_error: Option<SourceError>,
    /// Successful (re)opens after the first.
    pub reconnects: u64,
    opened_once: bool,
    /// True while waiting to retry.
    pub reconnecting: bool,
    /// Pass the end of a finite stream through (capture, benchmarks) instead of reconnecting.
    pub end_is_final: bool,
    opener: fn(&SourceSpec) -> Result<Box<dyn FrameSource>, SourceError>,
}

impl Reconnecting {
    /// Wraps the source `spec` opens; the first open happens on the first read.
    pub fn new(spec: SourceSpec, policy: RetryPolicy) -> Self {
        Self::with_opener(spec, policy, open)
    }

    /// As `new`, with a custom opener (tests).
    pub fn with_opener(
        spec: SourceSpec,
        policy: RetryPolicy,
        opener: fn(&SourceSpec) -> Result<Box<dyn FrameSource>, SourceError>,
    ) -> Self {
        Self {
            spec,
            current: None,
            policy,
            backoff: policy.first,
            next_attempt: Instant::now(),
            last_error: None,
            reconnects: 0,
            opened_once: false,
            reconnecting: false,
            end_is_final: false,
            opener,
        }
    }

    fn lose(&mut self, e: SourceError) {
        self.current = None;
        self.last_error = Some(e);
        self.reconnecting = true;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.max);
    }

    /// The spec.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// Ground truth of the last frame, if the source knows it.
    pub fn truth(&self) -> Option<Truth> {
        self.current.as_ref().and_then(|s| s.truth())
    }

    /// Waits up to `timeout` for a frame; never fails, never blocks longer than `timeout`.
    /// Corrupt frames come back as `Err(Corrupt)` so the caller can count them.
    pub fn read(&mut self, timeout: Duration) -> Result<Read, SourceError> {
        let deadline = Instant::now() + timeout;
        if self.current.is_none() {
            let now = Instant::now();
            if now < self.next_attempt {
                std::thread::sleep((self.next_attempt - now).min(timeout));
                if Instant::now() < self.next_attempt {
                    return Ok(Read::Timeout);
                }
            }
            match (self.opener)(&self.spec) {
                Ok(s) => {
                    self.current = Some(s);
                    if self.opened_once {
                        self.reconnects += 1;
                    }
                    self.opened_once = true;
                    self.reconnecting = false;
                    self.backoff = self.policy.first;
                }
                Err(e @ SourceError::BadSpec { .. }) | Err(e @ SourceError::Unavailable { .. }) => {
                    return Err(e)
                }
                Err(e) => {
                    self.lose(e);
                    return Ok(Read::Timeout);
                }
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let Some(src) = self.current.as_mut() else {
            return Ok(Read::Timeout);
        };
        match src.read(left) {
            Ok(Read::End) if self.end_is_final => Ok(Read::End),
            Ok(Read::End) => {
                self.lose(SourceError::Lost {
                    spec: self.spec.raw.clone(),
                    reason: "end of stream".into(),
                });
                Ok(Read::Timeout)
            }
            Ok(r) => Ok(r),
            Err(e @ SourceError::Corrupt { .. }) => Err(e),
            Err(e) => {
                self.lose(e);
                Ok(Read::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = SourceSpec::parse("demo?seed=3&fps=60").unwrap();
        assert_eq!(s.kind, SourceKind::Demo);
        assert_eq!(s.num("fps", 30.0, 0.0, 1000.0).unwrap(), 60.0);
        assert!(s.num("seed", 1u64, 0, 10).is_ok());
        assert_eq!(
            SourceSpec::parse("images:/tmp/x?loop=1").unwrap().kind,
            SourceKind::Images("/tmp/x".into())
        );
        assert_eq!(
            SourceSpec::parse("ffmpeg:udp://127.0.0.1:5000?realtime=0")
                .unwrap()
                .kind,
            SourceKind::Ffmpeg("udp://127.0.0.1:5000".into())
        );
        assert_eq!(
            SourceSpec::parse("v4l2:/dev/video0").unwrap().kind,
            SourceKind::V4l2("/dev/video0".into())
        );
        for bad in ["", "camera", "images:", "demo?fps", "ffmpeg:"] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad}");
        }
        let s = SourceSpec::parse("demo?fps=abc").unwrap();
        assert!(s
            .num("fps", 30.0, 0.0, 1000.0)
            .unwrap_err()
            .to_string()
            .contains("fps=abc"));
        assert!(s.only(&["seed"]).unwrap_err().to_string().contains("fps"));
    }
}
