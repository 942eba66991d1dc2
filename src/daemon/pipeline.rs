//! The real-time threads of `pocusd run`. The capture thread reads the source (with reconnection
//! and capture health) and hands frames to the processing thread through a "latest value wins"
//! [`Slot`]; the processing thread runs CLAHE, the model and postprocessing and hands each result
//! to the supervisor through a second slot. Neither queues: when the CPU cannot keep up, older
//! frames are dropped and counted. Both loops tick at least every 100 ms even without frames, and
//! the processing loop's tick is the heartbeat the supervisor's watchdog checks. Settings reach the
//! processing thread only as [`Control`] messages from the supervisor (the one owner of state).
//! Must not depend on D-Bus, HTTP or the file system (snapshots are written by the supervisor).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::analyzer::Analyzer;
use crate::frame::{Frame, GrayImage, Rect};
use crate::infer::LoadedModel;
use crate::model::Task;
use crate::postprocess::overlay::{OverlayStyle, RgbImage};
use crate::postprocess::{Analysis, PostprocessConfig};
use crate::preprocess::roi::{RoiChoice, Tracking};
use crate::source::{HealthConfig, Read, Reconnecting, RetryPolicy, SourceError, SourceSpec};
use crate::synth::Truth;

use crate::publish::OverlayFrame;
use crate::slot::Slot;

/// How long a loop waits for input before it ticks anyway.
pub use crate::publish::TICK;

/// What the capture thread reports.
#[derive(Debug, Clone)]
pub struct CaptureStatus {
    pub counters: crate::source::health::HealthCounters,
    /// A source error that retrying cannot fix (a bad spec, a kind not built in).
    pub fault: Option<String>,
    /// The last reason the source was lost, for status lines.
    pub last_error: Option<String>,
}

/// One processed frame.
#[derive(Debug, Clone)]
pub struct Processed {
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME µs.
    pub timestamp_us: i64,
    /// When the processing thread took the frame (CLOCK_REALTIME µs).
    pub picked_us: i64,
    /// When processing finished (CLOCK_REALTIME µs).
    pub done_us: i64,
    /// preprocess, infer, postprocess, ms.
    pub stages_ms: [f64; 3],
    pub analysis: Analysis,
    pub model_sha256: Arc<str>,
    pub task: Task,
    pub width: usize,
    pub height: usize,
    pub roi: Rect,
    /// The demo phantom's analytic truth for this frame.
    pub truth: Option<Truth>,
    /// Frames the extra models' lanes dropped so far (a newer frame arrived first).
    pub extra_dropped: u64,
}

impl Processed {
    /// Per-stage latency when the result reached the supervisor at `now_us`, ms: capture (waiting
    /// for the processing thread), preprocess, infer, postprocess, publish.
    pub fn stage_ms(&self, now_us: i64) -> [f64; 5] {
        let ms = |a: i64, b: i64| (b - a) as f64 / 1000.0;
        [
            ms(self.timestamp_us, self.picked_us),
            self.stages_ms[0],
            self.stages_ms[1],
            self.stages_ms[2],
            ms(self.done_us, now_us),
        ]
    }

    /// Capture to publication, ms.
    pub fn end_to_end_ms(&self, now_us: i64) -> f64 {
        (now_us - self.timestamp_us) as f64 / 1000.0
    }
}

/// One processed frame's pieces for the OpenIGTLink server (taken only while a client is
/// connected).
#[derive(Debug)]
pub struct IgtlInput {
    pub processed: Arc<Processed>,
    /// The region of interest of the frame, grey.
    pub image: GrayImage,
    /// The mask over the same region, uint8 labels.
    pub labels: GrayImage,
}

/// Everything a snapshot saves, taken from the processing thread's last frame.
#[derive(Debug)]
pub struct SnapshotData {
    pub frame: GrayImage,
    pub mask: GrayImage,
    /// The extra models' masks, by task (those merged into the frame's numbers).
    pub extra_masks: Vec<(crate::model::Task, GrayImage)>,
    pub overlay: RgbImage,
    pub processed: Arc<Processed>,
}

/// Messages from the supervisor to the processing thread.
pub enum Control {
    /// A loaded and checked model replaces the current one.
    Model(Box<LoadedModel>),
    /// A loaded and checked extra model joins, or replaces the one of its role (its task).
    Extra(Box<LoadedModel>),
    Postprocess(PostprocessConfig),
    Style(OverlayStyle),
    Pause(bool),
    /// Reply with the last frame's pieces (`None` before the first frame).
    Snapshot(tokio::sync::oneshot::Sender<Option<SnapshotData>>),
    /// Reply with the last frame and its result only (no mask or overlay drawn: the unlabelled
    /// frames need neither).
    Frame(tokio::sync::oneshot::Sender<Option<(GrayImage, Arc<Processed>)>>),
}

/// State shared by the threads; written by one thread each, read by the supervisor.
#[derive(Debug)]
pub struct Shared {
    /// Frames with the phantom's analytic truth when the source is the demo.
    pub frames: Slot<(Frame, Option<Truth>)>,
    pub results: Slot<Arc<Processed>>,
    /// Rendered overlays for the JPEG encoder (only when the viewer is on).
    pub overlays: Arc<Slot<Arc<OverlayFrame>>>,
    /// Rendered overlays for the FFmpeg output (only when it is configured).
    pub recording: Arc<Slot<Arc<OverlayFrame>>>,
    /// Frames for the OpenIGTLink server, filled only while `igtl_wanted`.
    pub igtl: Slot<IgtlInput>,
    /// Set by the OpenIGTLink thread while at least one client is connected.
    pub igtl_wanted: AtomicBool,
    pub capture: Mutex<CaptureStatus>,
    /// Milliseconds since `started` at the processing loop's last tick.
    pub heartbeat_ms: AtomicU64,
    pub started: Instant,
    pub stop: Arc<AtomicBool>,
    /// Test hook (`POCUSD_TEST_HOOKS=1` + SIGUSR2): the processing loop hangs.
    pub hang: AtomicBool,
    /// Frames that failed in processing (counted, skipped).
    pub process_errors: AtomicU64,
    pub last_process_error: Mutex<Option<String>>,
    /// Frames analysed.
    pub processed: AtomicU64,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            frames: Slot::new(),
            results: Slot::new(),
            overlays: Arc::new(Slot::new()),
            recording: Arc::new(Slot::new()),
            igtl: Slot::new(),
            igtl_wanted: AtomicBool::new(false),
            capture: Mutex::new(CaptureStatus {
                counters: crate::source::Health::new(HealthConfig::default())
                    .counters()
                    .clone(),
                fault: None,
                last_error: None,
            }),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            hang: AtomicBool::new(false),
            process_errors: AtomicU64::new(0),
            last_process_error: Mutex::new(None),
            processed: AtomicU64::new(0),
        })
    }

    /// Age of the processing heartbeat.
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Settings of the capture thread.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub spec: SourceSpec,
    pub retry: RetryPolicy,
    pub health: HealthConfig,
}

/// Runs the capture loop until `shared.stop`.
pub fn capture_loop(shared: Arc<Shared>, settings: CaptureSettings) {
    let mut src = Reconnecting::new(settings.spec, settings.retry);
    let mut health = crate::source::Health::new(settings.health);
    // Test hook: a source fault retrying cannot fix (invalid specs now stop start-up, so the
    // error state is otherwise reached only by a source kind this build lacks).
    let mut fault: Option<String> = std::env::var("POCUSD_TEST_HOOKS")
        .is_ok_and(|v| v == "1")
        .then(|| std::env::var("POCUSD_TEST_SOURCE_FAULT").ok())
        .flatten();
    // The daemon's own numbering: unique and increasing for its whole life, whatever the source
    // does (a reopened source starts its own count again at 0).
    let mut next_seq: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        match src.read(TICK) {
            Ok(Read::Frame(_)) if fault.is_some() => {}
            Ok(Read::Frame(mut f)) => {
                f.seq = next_seq;
                next_seq += 1;
                // Frames flow: an earlier loss's reason is history, not the current state.
                src.last_error = None;
                health.on_frame(&f);
                shared.frames.put((f, src.truth()));
            }
            Ok(Read::Timeout) | Ok(Read::End) => health.on_tick(src.reconnecting, src.reconnects),
            Err(SourceError::Corrupt { .. }) => health.on_decode_error(),
            Err(e) => {
                fault = Some(e.to_string());
                health.on_tick(false, src.reconnects);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let status = CaptureStatus {
            counters: health.counters().clone(),
            fault: fault.clone(),
            last_error: src.last_error.as_ref().map(|e| e.to_string()),
        };
        *shared.capture.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// Settings of the processing thread.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub clahe_threads: NonZeroUsize,
    pub post: PostprocessConfig,
    pub style: OverlayStyle,
    /// The user's region-of-interest choice, resolved against each model's own policy.
    pub roi: RoiChoice,
    /// Process at most this many frames (`--frames N`), then only tick.
    pub max_frames: Option<u64>,
    /// Render the overlay of every processed frame for the viewer (once per frame, not per client).
    pub render_overlay: bool,
    /// Hand each overlay to the FFmpeg output too.
    pub record: bool,
}

fn realtime_us() -> i64 {
    crate::source::realtime_us()
}

/// Runs the processing loop until `shared.stop`.
pub fn process_loop(
    shared: Arc<Shared>,
    mut model: LoadedModel,
    extras: Vec<LoadedModel>,
    settings: ProcessSettings,
    control: Receiver<Control>,
) {
    let mut post = settings.post;
    let mut style = settings.style;
    // A stream: the region is tracked, re-detected every 30 frames and whenever the frame size
    // changes or the region no longer fits.
    let tracking = Tracking::Stream { every: 30 };
    let analyzer_for = |model: &LoadedModel, post, style| {
        let roi = settings.roi.resolve(model.spec().roi).mode;
        Analyzer::new(model, roi, tracking, settings.clahe_threads, post, style)
    };
    let mut analyzer = analyzer_for(&model, post, style);
    for e in extras {
        // Checked by the supervisor (one per task, not the primary's).
        if let Err(err) = analyzer.set_extra(None, e) {
            eprintln!("pocusd: extra model refused: {err}");
        }
    }
    let mut sha: Arc<str> = Arc::from(model.sha256());
    // Lane drops of analysers replaced by a primary swap (their lanes move, their counts do not).
    let mut extra_dropped_before = 0u64;
    let mut paused = false;
    let mut last: Option<(Frame, Arc<Processed>)> = None;
    // The previous overlay: once the encoders let go of it, its buffer draws the next one.
    let mut prev_overlay: Option<Arc<OverlayFrame>> = None;
    loop {
        shared.beat();
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        while shared.hang.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in control.try_iter() {
            match c {
                Control::Model(m) => {
                    model = *m;
                    sha = Arc::from(model.sha256());
                    extra_dropped_before += analyzer.extra_dropped();
                    let extras = analyzer.take_extras();
                    analyzer = analyzer_for(&model, post, style);
                    for (e, err) in analyzer.put_extras(extras) {
                        eprintln!("pocusd: extra model {} dropped: {err}", e.path().display());
                    }
                    if let Some((f, _)) = last.take() {
                        f.recycle();
                    }
                }
                Control::Extra(m) => {
                    if let Err(err) = analyzer.set_extra(None, *m) {
                        eprintln!("pocusd: extra model refused: {err}");
                    }
                }
                Control::Postprocess(p) => {
                    post = p;
                    analyzer.set_postprocess(p);
                }
                Control::Style(s) => {
                    style = s;
                    analyzer.set_style(s);
                }
                Control::Pause(p) => paused = p,
                Control::Frame(reply) => {
                    let _ =
                        reply
                            .send(last.as_ref().map(|(frame, processed)| {
                                (frame.image.clone(), processed.clone())
                            }));
                }
                Control::Snapshot(reply) => {
                    let data = last.as_ref().and_then(|(frame, processed)| {
                        let view = frame.image.view().ok()?;
                        let (w, h) = (frame.image.width(), frame.image.height());
                        let mask = analyzer.mask_image(w, h);
                        let extra_masks = analyzer.extra_masks(w, h);
                        let overlay = analyzer.render_overlay(view, &sha).clone();
                        Some(SnapshotData {
                            frame: frame.image.clone(),
                            mask,
                            extra_masks,
                            overlay,
                            processed: processed.clone(),
                        })
                    });
                    let _ = reply.send(data);
                }
            }
        }
        let Some((frame, truth)) = shared.frames.take_timeout(TICK) else {
            continue;
        };
        let limit_reached = settings
            .max_frames
            .is_some_and(|n| shared.processed.load(Ordering::Relaxed) >= n);
        if paused || limit_reached {
            continue;
        }
        let picked_us = realtime_us();
        let result = frame
            .image
            .view()
            .map_err(|e| e.to_string())
            .and_then(|view| {
                analyzer.set_frame_seq(frame.seq);
                analyzer
                    .analyse(&mut model, view)
                    .map(|a| a.clone())
                    .map_err(|e| e.to_string())
            });
        let roi = analyzer.roi();
        match result {
            Ok(analysis) => {
                let mut stages_ms = analyzer.last_ms;
                if settings.render_overlay || settings.record {
                    // Drawn here, where the enhanced image and mask live; counted as postprocessing.
                    let t = Instant::now();
                    if let Ok(view) = frame.image.view() {
                        let reuse = prev_overlay
                            .take()
                            .and_then(|o| Arc::try_unwrap(o).ok())
                            .map(|o| o.image);
                        let image = analyzer.take_overlay(view, &sha, reuse);
                        let ov = Arc::new(OverlayFrame {
                            seq: frame.seq,
                            timestamp_us: frame.timestamp_us,
                            image,
                        });
                        if settings.record {
                            shared.recording.put(ov.clone());
                        }
                        if settings.render_overlay {
                            shared.overlays.put(ov.clone());
                        }
                        prev_overlay = Some(ov);
                    }
                    stages_ms[2] += t.elapsed().as_secs_f64() * 1e3;
                }
                let p = Processed {
                    seq: frame.seq,
                    timestamp_us: frame.timestamp_us,
                    picked_us,
                    done_us: realtime_us(),
                    stages_ms,
                    analysis,
                    model_sha256: sha.clone(),
                    task: model.spec().task,
                    width: frame.image.width(),
                    height: frame.image.height(),
                    roi,
                    truth,
                    extra_dropped: analyzer.extra_dropped() + extra_dropped_before,
                };
                shared.processed.fetch_add(1, Ordering::Relaxed);
                let p = Arc::new(p);
                if shared.igtl_wanted.load(Ordering::Relaxed) {
                    let planes = frame
                        .image
                        .view()
                        .ok()
                        .and_then(|v| analyzer.roi_planes(&v));
                    if let Some((image, labels)) = planes {
                        shared.igtl.put(IgtlInput {
                            processed: p.clone(),
                            image,
                            labels,
                        });
                    }
                }
                shared.results.put(p.clone());
                if let Some((old, _)) = last.replace((frame, p)) {
                    old.recycle();
                }
            }
            Err(e) => {
                shared.process_errors.fetch_add(1, Ordering::Relaxed);
                *shared
                    .last_process_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format!("frame {}: {e}", frame.seq));
            }
        }
    }
}

/// Handles to the two threads.
pub struct Threads {
    pub capture: std::thread::JoinHandle<()>,
    pub process: std::thread::JoinHandle<()>,
    pub control: Sender<Control>,
}

/// Starts both threads.
pub fn start(
    shared: &Arc<Shared>,
    model: LoadedModel,
    extras: Vec<LoadedModel>,
    capture: CaptureSettings,
    process: ProcessSettings,
) -> std::io::Result<Threads> {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = shared.clone();
    let capture = std::thread::Builder::new()
        .name("pocusd-capture".into())
        .spawn(move || capture_loop(s, capture))?;
    let s = shared.clone();
    let process = std::thread::Builder::new()
        .name("pocusd-process".into())
        .spawn(move || process_loop(s, model, extras, process, rx))?;
    Ok(Threads {
        capture,
        process,
        control: tx,
    })
}
