//! `pocusd run`: the daemon. [`run`] loads and checks the configuration and the model, starts the
//! capture and processing threads ([`pipeline`]), serves `org.pocusd.Daemon1` on D-Bus
//! ([`dbus`]), and then acts as the supervisor: the one owner of mutable state. It takes every
//! command (D-Bus methods, SIGHUP, SIGTERM), publishes properties (at most twice a second) and
//! rate-limited Measurement signals, appends the measurement log ([`store`]) and talks to systemd
//! ([`notify`]): READY once the config, model and bus name are in hand (without waiting for the
//! source), STATUS lines, WATCHDOG only while the processing thread's heartbeat is fresh.
//! Must not depend on the training code or the command line.

pub mod command;
pub mod igtl;
pub mod notify;
pub mod pipeline;
pub mod review;
pub mod store;

#[cfg(feature = "ffmpeg")]
pub use crate::publish::ffmpeg_out as record;
pub use crate::publish::jpeg as publish;
/// The D-Bus client (`pocusd status`) and the outputs, which live in [`crate::publish`].
pub use crate::publish::{dbus, http, status};

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::analyzer::default_model_candidates;
use crate::config::{self, Bus, Config};
use crate::infer::{self, LoadedModel};
use crate::postprocess::Calibration;
use crate::preprocess::roi::RoiChoice;
use crate::publish::measurement::Measurement;

use crate::stats::{Rate, Window};
use dbus::{Command, Daemon1, Error as DbusError, Props, State, Val, Values};
use pipeline::{CaptureSettings, Control, ProcessSettings, Processed, Shared};

/// How the daemon was asked to run (the command line).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--source SPEC`.
    pub source: Option<String>,
    /// `--roi MODE`.
    pub roi: Option<String>,
    /// `--model FILE`.
    pub model: Option<PathBuf>,
    /// `--extra-model FILE` (repeatable): replaces `[model] extra` when given.
    pub extra_models: Vec<PathBuf>,
    /// `--frames N`: stop after N processed frames.
    pub frames: Option<u64>,
    /// `--session-bus`.
    pub session_bus: bool,
    /// Serve no D-Bus at all (`pocusd bench pipeline` where no bus can be started).
    pub no_dbus: bool,
    /// Connect to this bus address instead of the system or session bus (`bench pipeline`).
    pub bus_address: Option<String>,
    /// Watches the run without taking part (`bench pipeline`, soak runs).
    pub observer: Option<Arc<dyn Observer>>,
}

/// Totals at one moment of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Frames processed.
    pub processed: u64,
    /// Frames dropped between the stages.
    pub dropped: u64,
    /// Overlays encoded as JPEG for the viewer.
    pub jpeg_encoded: u64,
}

/// Watches a running daemon without changing what it does: benchmark instrumentation lives in
/// an observer, not in options threaded through the supervisor. Called on the supervisor's
/// thread, so an observer must be quick.
pub trait Observer: Send + Sync {
    /// The viewer listens on `addr`.
    fn http_listening(&self, _addr: std::net::SocketAddr) {}
    /// `r` reached the supervisor at `now_us` (CLOCK_REALTIME µs).
    fn processed(&self, _r: &Processed, _now_us: i64, _counts: Counts) {}
    /// The daemon is about to release its bus name and stop.
    fn stopping(&self, _counts: Counts) {}
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// How fresh the processing heartbeat must be for the watchdog to be fed.
pub const HEARTBEAT_FRESH: Duration = Duration::from_secs(2);
/// Property publication period (PropertiesChanged at most this often).
pub const PROPERTY_PERIOD: Duration = Duration::from_millis(500);

/// Loads the layered configuration with the command line's overrides applied.
pub fn load_config(opts: &RunOptions) -> anyhow::Result<Config> {
    let mut cfg = config::load(opts.config_file.as_deref())?;
    if let Some(spec) = &opts.source {
        cfg.source.spec = config::parse_source("--source", spec)?;
    }
    if let Some(roi) = &opts.roi {
        cfg.source.roi = crate::preprocess::roi::RoiChoice::parse(roi).ok_or_else(|| {
            anyhow::anyhow!("--roi {roi:?}: expected model, full, auto or x,y,w,h")
        })?;
    }
    Ok(cfg)
}

/// The model to use: the flag, then the cart's current version (`models_dir/current.onnx`,
/// written by `pocusd loop nightly` and `pocusd models rollback`) when it exists, then `[model]
/// path`, then the shipped default.
pub fn resolve_model(cfg: &Config, flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let current = cfg
        .loop_
        .models_dir(&store::resolve_state_dir(&cfg.storage))
        .join(crate::versions::CURRENT);
    if current.is_file() {
        return Ok(current);
    }
    if let Some(p) = cfg.model.path.clone() {
        return Ok(p);
    }
    let candidates = default_model_candidates("aponeurosis.onnx");
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no model given and no default model found (looked in {}); pass --model FILE.onnx or set [model] path",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Loads a model and runs it once on a blank input: it must produce finite numbers of the
/// expected size. This is what "checked" means for READY and for `LoadModel`.
pub fn load_checked(path: &Path, cfg: &Config) -> anyhow::Result<LoadedModel> {
    let mut model = LoadedModel::load(path, &cfg.model.overrides)
        .with_context(|| format!("cannot load model {}", path.display()))?;
    let s = model.spec().clone();
    let input = vec![0.5f32; s.channels * s.input_width * s.input_height];
    let out = model
        .run(&input)
        .with_context(|| format!("model {} fails on a test input", path.display()))?;
    if out.is_empty() || out.iter().any(|x| !x.is_finite()) {
        anyhow::bail!(
            "model {} gives non-finite or empty output on a test input",
            path.display()
        );
    }
    Ok(model)
}

/// The `Model` property: the file, its task and size, and the region of interest in force (the
/// model's `roi` policy, the `roi_applied` mode and `roi_override` when an explicit choice departs
/// from the model's).
fn model_values(model: &LoadedModel, roi: RoiChoice) -> Values {
    let s = model.spec();
    let r = roi.resolve(s.roi);
    let mut v = Values::new();
    let abs = std::fs::canonicalize(model.path()).unwrap_or_else(|_| model.path().to_path_buf());
    v.insert("path".into(), Val::S(abs.display().to_string()));
    v.insert("sha256".into(), Val::S(model.sha256().to_string()));
    v.insert("task".into(), Val::S(s.task.as_str().to_string()));
    v.insert("input_width".into(), Val::U(s.input_width as u64));
    v.insert("input_height".into(), Val::U(s.input_height as u64));
    if let Some(t) = &s.trained_on {
        v.insert("trained_on".into(), Val::S(t.clone()));
    }
    if let Some(d) = s.val_dice {
        v.insert("val_dice".into(), Val::F(d));
    }
    v.insert("roi".into(), Val::S(s.roi.as_str().into()));
    v.insert("roi_applied".into(), Val::S(r.mode.to_string()));
    v.insert("roi_override".into(), Val::B(r.overrides_model()));
    v
}

/// Logs (once per model) that an explicit region of interest overrides the model's policy, and
/// returns the warning for the status and the viewer.
fn warn_roi(model: &LoadedModel, roi: RoiChoice) -> Option<String> {
    let w = roi.resolve(model.spec().roi).warning()?;
    eprintln!("pocusd: warning: {}: {w}", model.path().display());
    Some(w)
}

/// The `Calibration` property before the first frame.
fn initial_calibration(cfg: &Config) -> Values {
    let reason = match (cfg.postprocess.calibration, cfg.postprocess.ruler) {
        (Calibration::None, None) => crate::preprocess::calibration::Withheld::NotSet.to_string(),
        (Calibration::None, Some(_)) => {
            "no frame processed yet: the ruler is read on the first frame".into()
        }
        _ => return Values::from([("kind".to_string(), Val::S("manual".into()))]),
    };
    Values::from([
        ("kind".to_string(), Val::S("none".into())),
        ("reason".to_string(), Val::S(reason)),
    ])
}

/// The published record of a processed frame.
fn measurement(p: &Processed, calibration: Calibration, start_id: &Arc<str>) -> Measurement {
    Measurement {
        seq: p.seq,
        timestamp_us: p.timestamp_us,
        task: p.task,
        width: p.width,
        height: p.height,
        roi: p.roi,
        measurements: p.analysis.measurements.clone(),
        confidence: p.analysis.confidence,
        flag: p.analysis.flag,
        model_sha256: p.model_sha256.clone(),
        truth: p.truth,
        calibration: p.analysis.calibration,
        manual: calibration,
        start_id: start_id.clone(),
    }
}

/// Latency windows: end to end and per stage.
struct Latency {
    end_to_end: Window,
    stages: [(&'static str, Window); 5],
}

impl Latency {
    fn new() -> Self {
        let w = || Window::new(600);
        Self {
            end_to_end: w(),
            stages: [
                ("capture", w()),
                ("preprocess", w()),
                ("infer", w()),
                ("postprocess", w()),
                ("publish", w()),
            ],
        }
    }

    fn values(&mut self) -> Values {
        let mut v = Values::new();
        let e = self.end_to_end.percentiles();
        v.insert("p50".into(), Val::F(e.p50));
        v.insert("p99".into(), Val::F(e.p99));
        v.insert("max".into(), Val::F(e.max));
        for (name, w) in self.stages.iter_mut() {
            let p = w.percentiles();
            v.insert(format!("{name}_p50"), Val::F(p.p50));
            v.insert(format!("{name}_p99"), Val::F(p.p99));
        }
        v
    }
}

/// The supervisor's state: everything that can change, in one place.
struct Supervisor {
    opts: RunOptions,
    cfg: Config,
    shared: Arc<Shared>,
    control: std::sync::mpsc::Sender<Control>,
    props: Arc<Mutex<Props>>,
    emitted: Props,
    model: Values,
    /// The extra models' `Model` dictionaries by role.
    extra_models: std::collections::BTreeMap<String, Values>,
    paused: bool,
    threshold: f32,
    latency: Latency,
    fps: Rate,
    last_published: Option<Instant>,
    last_measurement: Values,
    /// Before the first frame: whether a manual calibration is configured.
    calibrated_at_start: bool,
    /// The calibration of the last processed frame, and its dictionary.
    calibration_info: Option<crate::preprocess::calibration::CalibrationInfo>,
    calibration: Values,
    log: store::MeasurementLog,
    state_dir: PathBuf,
    notifier: notify::Notifier,
    last_status: String,
    last_watchdog: Option<Instant>,
    fault_seen: (u64, Option<String>),
    metrics: Arc<Mutex<http::Metrics>>,
    events: tokio::sync::broadcast::Sender<Arc<str>>,
    last_state_event: Option<(State, String)>,
    /// Why the region of interest in force departs from the model's policy (`None`: it does not).
    roi_warning: Option<String>,
    jpeg_counters: Arc<publish::EncoderCounters>,
    /// This run's identity beside every `seq` (see `publish::measurement::new_start_id`).
    start_id: Arc<str>,
    /// The OpenIGTLink server (`[igtl] enabled`).
    igtl: Option<Arc<crate::publish::igtl::Server>>,
    /// The exam snapshots belong to (`SetExam`; anonymous until then), shared with the snapshot
    /// writer.
    exam: Arc<Mutex<crate::dicom::Exam>>,
    /// The DICOM spool (`[dicom] store`).
    spool: Option<Arc<crate::dicom::spool::Spool>>,
    /// The newest history record of `models_dir` (the `Training` property).
    training: Values,
    /// The history file's (mtime, length) when last read.
    training_stamp: Option<(std::time::SystemTime, u64)>,
    /// A nightly run not promoted, to be reported once as `Fault("training", ..)`.
    training_fault: Option<String>,
    /// When the last automatic review snapshot was taken (`[loop] auto_queue`).
    last_auto_queue: Option<Instant>,
}

impl Supervisor {
    /// Re-reads the newest `history.jsonl` record when the file changed (a stat per tick).
    fn poll_training(&mut self) {
        let store = crate::versions::Store::new(self.cfg.loop_.models_dir(&self.state_dir));
        let stamp = std::fs::metadata(store.history_path())
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp == self.training_stamp {
            return;
        }
        self.training_stamp = stamp;
        let last = match store.history() {
            Ok(h) => h.last().cloned(),
            Err(e) => {
                self.training = Values::from([("reason".to_string(), Val::S(e.to_string()))]);
                return;
            }
        };
        let current = store
            .current_record()
            .ok()
            .flatten()
            .and_then(|r| r.version);
        let Some(r) = last else {
            self.training = Values::new();
            return;
        };
        let mut v = Values::new();
        v.insert("time".into(), Val::S(r.time.clone()));
        v.insert("kind".into(), Val::S(r.kind.as_str().into()));
        v.insert("promoted".into(), Val::B(r.promoted));
        v.insert("reason".into(), Val::S(r.reason.clone()));
        if let Some(x) = r.version {
            v.insert("version".into(), Val::U(u64::from(x)));
        }
        if let Some(x) = current {
            v.insert("current_version".into(), Val::U(u64::from(x)));
        }
        if r.kind == crate::versions::Kind::Nightly && !r.promoted {
            self.training_fault =
                Some(format!("last night's model was not promoted: {}", r.reason));
        }
        self.training = v;
    }

    /// Whether this result should be queued for review by itself: `[loop] auto_queue` on, a
    /// quality flag (not `uncalibrated`), and the hourly budget's spacing passed. Returns the flag.
    fn auto_queue_due(&mut self, r: &Processed) -> Option<&'static str> {
        use crate::postprocess::Flag;
        if !self.cfg.loop_.auto_queue {
            return None;
        }
        let flag = match r.analysis.flag? {
            Flag::Uncalibrated => return None,
            f => f.as_str(),
        };
        let spacing = Duration::from_secs_f64(3600.0 / self.cfg.loop_.auto_queue_per_hour as f64);
        if self.last_auto_queue.is_some_and(|t| t.elapsed() < spacing) {
            return None;
        }
        self.last_auto_queue = Some(Instant::now());
        Some(flag)
    }

    /// The viewer's banner text for a nightly run that was not promoted.
    fn training_warning(&self) -> Option<String> {
        match (
            self.training.get("kind"),
            self.training.get("promoted"),
            self.training.get("reason"),
        ) {
            (Some(Val::S(k)), Some(Val::B(false)), Some(Val::S(r))) if k == "nightly" => {
                Some(format!("last night's model was not promoted: {r}"))
            }
            _ => None,
        }
    }

    /// Totals now, for observers.
    fn counts(&self) -> Counts {
        Counts {
            processed: self.shared.processed.load(Ordering::Relaxed),
            dropped: self.shared.frames.dropped() + self.shared.results.dropped(),
            jpeg_encoded: self.jpeg_counters.encoded.load(Ordering::Relaxed),
        }
    }

    fn state(&self, cap: &pipeline::CaptureStatus) -> (State, String) {
        use crate::source::CaptureState as C;
        if let Some(f) = &cap.fault {
            return (State::Error, format!("error: {f}"));
        }
        if self.paused {
            return (State::Paused, "paused".into());
        }
        let detail = |s: State| match (&cap.last_error, s) {
            (Some(e), _) => format!("{}: {e}", s.as_str()),
            (None, State::NoSignal) => format!(
                "no_signal: no frame for more than {} ms",
                self.cfg.source.health.no_signal.as_millis()
            ),
            (None, _) => s.as_str().to_string(),
        };
        match cap.counters.state {
            C::Starting => (State::Starting, "starting".into()),
            C::Streaming => (State::Streaming, "streaming".into()),
            C::NoSignal => (State::NoSignal, detail(State::NoSignal)),
            C::Frozen => (State::Frozen, "frozen".into()),
            C::Reconnecting => (State::Reconnecting, detail(State::Reconnecting)),
        }
    }

    /// Recomputes the property snapshot; returns it.
    fn refresh_props(&mut self) -> Props {
        let cap = self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (state, state_text) = self.state(&cap);
        self.poll_training();
        let p = Props {
            state,
            state_text,
            source: self.cfg.source.spec.raw.clone(),
            model: self.model.clone(),
            models: {
                let mut m = self.extra_models.clone();
                m.insert("primary".into(), self.model.clone());
                m
            },
            fps: (self.fps.per_second(Instant::now()) * 10.0).round() / 10.0,
            latency_ms: self.latency.values(),
            dropped_frames: self.shared.frames.dropped() + self.shared.results.dropped(),
            corrupt_frames: cap.counters.decode_errors,
            calibrated: self
                .calibration_info
                .map_or(self.calibrated_at_start, |c| c.mm_per_px.is_some()),
            calibration: self.calibration.clone(),
            last_measurement: self.last_measurement.clone(),
            training: self.training.clone(),
            igtl: self.igtl.as_ref().map_or_else(Values::new, |s| {
                let g = s.stats();
                Values::from([
                    ("listen".to_string(), Val::S(s.local_addr().to_string())),
                    ("clients".to_string(), Val::U(g.clients)),
                    ("frames_sent".to_string(), Val::U(g.frames_sent)),
                    ("frames_dropped".to_string(), Val::U(g.frames_dropped)),
                ])
            }),
            dicom_queue: self
                .spool
                .as_ref()
                .map_or(0, |s| s.waiting().min(u32::MAX as u64) as u32),
        };
        *self.props.lock().unwrap_or_else(|p| p.into_inner()) = p.clone();
        self.publish_http(&p);
        p
    }

    /// The viewer's side of a property refresh: metrics, a state event on change, a status event.
    fn publish_http(&mut self, p: &Props) {
        let state_event = (p.state != State::Starting || self.last_state_event.is_none())
            && self
                .last_state_event
                .as_ref()
                .is_none_or(|(s, t)| *s != p.state || *t != p.state_text);
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.dropped_total = p.dropped_frames;
        m.corrupt_total = p.corrupt_frames;
        m.frames_total = self.shared.processed.load(Ordering::Relaxed);
        m.state = p.state;
        m.state_text = p.state_text.clone();
        m.dicom_queue = self.spool.as_ref().map(|s| s.waiting());
        m.igtl = self.igtl.as_ref().map(|s| s.stats());
        if let (Some(Val::S(path)), Some(Val::S(sha)), Some(Val::S(task))) = (
            p.model.get("path"),
            p.model.get("sha256"),
            p.model.get("task"),
        ) {
            m.model_path = path.clone();
            m.model_sha256 = sha.clone();
            m.model_task = task.clone();
        }
        if state_event {
            let e: Arc<str> = Arc::from(
                serde_json::json!({
                    "type": "state",
                    "state": p.state.code(),
                    "state_name": p.state.as_str(),
                    "state_text": p.state_text,
                })
                .to_string(),
            );
            m.last_state_event = Some(e.clone());
            self.last_state_event = Some((p.state, p.state_text.clone()));
            let _ = self.events.send(e);
        }
        let status: Arc<str> = Arc::from(
            serde_json::json!({
                "type": "status",
                "fps": p.fps,
                "latency_ms": &p.latency_ms,
                "dropped_frames": p.dropped_frames,
                "corrupt_frames": p.corrupt_frames,
                "calibrated": p.calibrated,
                "calibration": &p.calibration,
                "roi": p.model.get("roi_applied").and_then(Val::as_str),
                "roi_warning": self.roi_warning,
                "training_warning": self.training_warning(),
            })
            .to_string(),
        );
        m.last_status_event = Some(status.clone());
        drop(m);
        let _ = self.events.send(status);
    }

    fn status_line(&self, p: &Props) -> String {
        let model = match (self.model.get("path"), self.model.get("sha256")) {
            (Some(Val::S(path)), Some(Val::S(sha))) => format!(
                "{} ({})",
                Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                &sha[..sha.len().min(12)]
            ),
            _ => "?".into(),
        };
        format!(
            "{}; {:.1} fps; {} dropped; model {model}",
            p.state_text, p.fps, p.dropped_frames
        )
    }

    fn on_result(&mut self, r: Arc<Processed>) -> Option<(u64, i64, Values)> {
        let now_us = crate::source::realtime_us();
        let stages = r.stage_ms(now_us);
        let end_to_end = r.end_to_end_ms(now_us);
        self.latency.end_to_end.push(end_to_end);
        for ((_, w), x) in self.latency.stages.iter_mut().zip(stages) {
            w.push(x);
        }
        self.fps.tick(Instant::now());
        if self.calibration_info != Some(r.analysis.calibration) {
            self.calibration_info = Some(r.analysis.calibration);
            self.calibration =
                crate::publish::measurement::calibration_values(&r.analysis.calibration);
        }
        if let Some(o) = &self.opts.observer {
            o.processed(&r, now_us, self.counts());
        }
        {
            let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            m.frames_total = self.shared.processed.load(Ordering::Relaxed);
            m.extra_dropped_total = r.extra_dropped;
            let obs = stages.iter().copied().chain([end_to_end]);
            for ((_, h), x) in m.stages.iter_mut().zip(obs) {
                h.observe_ms(x);
            }
        }
        let period = Duration::from_secs_f64(1.0 / self.cfg.dbus.measurement_hz);
        let due = self
            .last_published
            .is_none_or(|t| t.elapsed() + Duration::from_micros(500) >= period);
        if !due {
            return None;
        }
        self.last_published = Some(Instant::now());
        let m = measurement(&r, self.cfg.postprocess.calibration, &self.start_id);
        let values = m.values();
        self.last_measurement = m.last_measurement();
        self.log.append(now_us, &m.log_line(now_us));
        let event: Arc<str> = Arc::from(m.event());
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_measurement_event = Some(event.clone());
        let _ = self.events.send(event);
        Some((r.seq, r.timestamp_us, values))
    }

    /// Faults not yet signalled: (code, message).
    fn new_faults(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(e) = self.log.take_error() {
            out.push(("log".into(), e));
        }
        if let Some(m) = self.training_fault.take() {
            out.push(("training".into(), m));
        }
        let errs = self.shared.process_errors.load(Ordering::Relaxed);
        if errs > self.fault_seen.0 {
            self.fault_seen.0 = errs;
            if let Some(e) = self
                .shared
                .last_process_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                out.push(("frame".into(), format!("{e} ({errs} frames failed so far)")));
            }
        }
        let cap = self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let src_err = cap.fault.clone().or(cap.last_error.clone());
        if src_err != self.fault_seen.1 {
            if let Some(e) = &src_err {
                out.push(("source".into(), e.clone()));
            }
            self.fault_seen.1 = src_err;
        }
        out
    }

    fn set_threshold(&mut self, p: f64) -> Result<(), DbusError> {
        if !(0.01..=0.99).contains(&p) || !p.is_finite() {
            return Err(DbusError::InvalidArgument(format!(
                "probability {p:.3e} is outside 0.01 to 0.99"
            )));
        }
        self.threshold = p as f32;
        let post = crate::postprocess::PostprocessConfig {
            threshold: self.threshold,
            ..self.cfg.postprocess
        };
        self.control
            .send(Control::Postprocess(post))
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))
    }

    /// Reloads the configuration (SIGHUP, `Reload()`), telling systemd RELOADING=1 before and
    /// READY=1 after, whether the new configuration was taken or refused.
    fn reload(&mut self) -> Result<(), DbusError> {
        self.notifier.reloading();
        let r = self.reload_config();
        let status = self.last_status.clone();
        self.notifier.ready(&status);
        r
    }

    fn reload_config(&mut self) -> Result<(), DbusError> {
        let new = load_config(&self.opts).map_err(|e| {
            eprintln!("pocusd: reload refused, keeping the running configuration: {e:#}");
            DbusError::InvalidArgument(format!(
                "configuration refused, the running one is kept: {e:#}"
            ))
        })?;
        let mut restart = Vec::new();
        if new.source != self.cfg.source {
            restart.push("[source]");
        }
        if new.model != self.cfg.model {
            restart.push("[model]");
        }
        if new.preprocess != self.cfg.preprocess {
            restart.push("[preprocess]");
        }
        if new.dbus.bus != self.cfg.dbus.bus {
            restart.push("dbus.bus");
        }
        if new.storage.dir != self.cfg.storage.dir {
            restart.push("storage.dir");
        }
        if new.http != self.cfg.http {
            restart.push("[http]");
        }
        if new.output_ffmpeg != self.cfg.output_ffmpeg {
            restart.push("[output.ffmpeg]");
        }
        self.threshold = new.postprocess.threshold;
        let _ = self.control.send(Control::Postprocess(new.postprocess));
        let _ = self.control.send(Control::Style(new.overlay));
        // Keep what needs a restart as it runs; take the rest.
        let mut applied = new;
        applied.source = self.cfg.source.clone();
        applied.model = self.cfg.model.clone();
        applied.preprocess = self.cfg.preprocess.clone();
        applied.dbus.bus = self.cfg.dbus.bus;
        applied.storage.dir = self.cfg.storage.dir.clone();
        applied.http = self.cfg.http.clone();
        applied.output_ffmpeg = self.cfg.output_ffmpeg.clone();
        self.cfg = applied;
        eprintln!(
            "pocusd: configuration reloaded (thresholds, smoothing, overlay style, publish rates){}",
            if restart.is_empty() {
                String::new()
            } else {
                format!("; changes to {} take effect on restart", restart.join(", "))
            }
        );
        Ok(())
    }

    /// Saves a snapshot; `auto_flag`: taken by `[loop] auto_queue` for this quality flag (a
    /// `queued.json` inside the folder before it appears, so the review list never sees it
    /// without).
    async fn snapshot(&mut self, auto_flag: Option<&'static str>) -> Result<String, DbusError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::Snapshot(tx))
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
        let data = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| DbusError::Io("the processing thread did not answer within 5 s".into()))?
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?
            .ok_or_else(|| {
                DbusError::NotFound(
                    "no frame has been processed yet (no signal or paused since start?)".into(),
                )
            })?;
        let root = self.state_dir.join("snapshots");
        let record = measurement(
            &data.processed,
            self.cfg.postprocess.calibration,
            &self.start_id,
        );
        let (max_days, max_mb, state_dir) = (
            self.cfg.storage.max_days,
            self.cfg.storage.max_mb,
            self.state_dir.clone(),
        );
        let (exam, spool) = (self.exam.clone(), self.spool.clone());
        tokio::task::spawn_blocking(move || -> Result<String, DbusError> {
            let p = &data.processed;
            let (y, mo, d, h, mi, s) = store::utc_parts(p.timestamp_us.div_euclid(1_000_000));
            let ms = p.timestamp_us.rem_euclid(1_000_000) / 1000;
            let dir = root.join(format!(
                "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{ms:03}Z-seq{}",
                p.seq
            ));
            let io =
                |e: String| DbusError::Io(format!("cannot write snapshot {}: {e}", dir.display()));
            // Whole or absent: written into a hidden sibling, renamed when complete, removed on
            // any error (a full disk leaves no partial snapshot behind).
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = root.join(format!(".{name}.partial"));
            if !state_dir.is_dir() {
                return Err(DbusError::Io(format!(
                    "the state folder {} is gone (removed or unmounted); snapshots work again once it is back",
                    state_dir.display()
                )));
            }
            let written = (|| -> Result<(), String> {
                store::create_private_dir(&tmp).map_err(|e| e.to_string())?;
                crate::imageio::write_gray(&tmp.join("frame.png"), &data.frame)
                    .map_err(|e| e.to_string())?;
                crate::imageio::write_gray(&tmp.join("mask.png"), &data.mask)
                    .map_err(|e| e.to_string())?;
                crate::imageio::write_rgb(
                    &tmp.join("overlay.png"),
                    data.overlay.width,
                    data.overlay.height,
                    &data.overlay.data,
                )
                .map_err(|e| e.to_string())?;
                let text =
                    serde_json::to_string_pretty(&record.snapshot()).map_err(|e| e.to_string())?;
                crate::files::write_atomic(&tmp.join("measurement.json"), text.as_bytes())
                    .map_err(|e| e.to_string())?;
                {
                    // Numbered under the lock, written without it (SetExam never waits on I/O).
                    let (exam, n) = exam.lock().unwrap_or_else(|p| p.into_inner()).next_snapshot();
                    crate::dicom::write_snapshot(
                        &tmp,
                        &exam,
                        n,
                        crate::dicom::SnapshotInput {
                            frame: &data.frame,
                            overlay: &data.overlay,
                            record: &record,
                        },
                    )
                    .map_err(|e| e.to_string())?;
                }
                if let Some(flag) = auto_flag {
                    let note = serde_json::json!({ "queued_by": "auto_queue", "flag": flag });
                    crate::files::write_atomic(&tmp.join("queued.json"), note.to_string().as_bytes())
                        .map_err(|e| e.to_string())?;
                }
                std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io(e));
            }
            if let Some(spool) = &spool {
                if let Err(e) = spool.enqueue(&dir) {
                    eprintln!(
                        "pocusd: snapshot {} not queued for DICOM sending: {e} (send it by hand with `pocusd dicom send`)",
                        dir.display()
                    );
                }
            }
            store::enforce_retention(
                &state_dir,
                max_days,
                max_mb,
                Some(&dir),
                std::time::SystemTime::now(),
            );
            Ok(dir.display().to_string())
        })
        .await
        .map_err(|e| DbusError::Io(format!("snapshot task failed: {e}")))?
    }
}

/// Stops the pipeline threads after a failed start.
fn stop_pipeline(shared: &Arc<Shared>, threads: pipeline::Threads) {
    shared.stop.store(true, Ordering::Relaxed);
    let _ = threads.capture.join();
    let _ = threads.process.join();
}

/// Runs the daemon until SIGTERM/SIGINT or `--frames`; returns when the bus name is released.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let cfg = load_config(&opts)?;
    infer::set_threads(cfg.model.threads);
    let model_path = resolve_model(&cfg, opts.model.as_deref())?;
    let model = load_checked(&model_path, &cfg)?;
    let extras = load_extras(&opts, &cfg, &model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(opts, cfg, model, extras))
}

/// The extra models (`--extra-model`, else `[model] extra`), each checked like the primary, one
/// per task and none with the primary's task.
fn load_extras(
    opts: &RunOptions,
    cfg: &Config,
    primary: &LoadedModel,
) -> anyhow::Result<Vec<LoadedModel>> {
    let paths = if opts.extra_models.is_empty() {
        &cfg.model.extra
    } else {
        &opts.extra_models
    };
    let mut out: Vec<LoadedModel> = Vec::new();
    for p in paths {
        let m = load_checked(p, cfg).context("an extra model ([model] extra, --extra-model)")?;
        let task = m.spec().task;
        if task == primary.spec().task {
            anyhow::bail!(
                "extra model {} is a {} model like the primary model {}: an extra model adds another task (e.g. fascicle beside aponeurosis)",
                p.display(),
                task.as_str(),
                primary.path().display()
            );
        }
        if m.spec().roi != primary.spec().roi {
            eprintln!(
                "pocusd: warning: extra model {} was trained with roi {} but runs on the primary model's region of interest (roi {})",
                p.display(),
                m.spec().roi.as_str(),
                primary.spec().roi.as_str()
            );
        }
        if let Some(o) = out.iter().find(|o| o.spec().task == task) {
            anyhow::bail!(
                "extra models {} and {} are both {} models: one extra model per task",
                o.path().display(),
                p.display(),
                task.as_str()
            );
        }
        out.push(m);
    }
    Ok(out)
}

async fn connect(
    bus: Bus,
    address: Option<&str>,
    iface: Daemon1,
) -> anyhow::Result<zbus::Connection> {
    let (builder, what) = match (address, bus) {
        (Some(a), _) => (zbus::connection::Builder::address(a), "given"),
        (None, Bus::System) => (zbus::connection::Builder::system(), "system"),
        (None, Bus::Session) => (zbus::connection::Builder::session(), "session"),
    };
    builder
        .serve_at(dbus::OBJECT_PATH, dbus::Strict::new(iface))
        .name(dbus::BUS_NAME)
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot serve {} on the {what} bus (another pocusd running? on the system bus the policy \
                 systemd/org.pocusd.Daemon1.conf lets only user pocusd and root own it; use --session-bus \
                 to try it as a user)",
                dbus::BUS_NAME
            )
        })
}

async fn serve(
    opts: RunOptions,
    cfg: Config,
    model: LoadedModel,
    extras: Vec<LoadedModel>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let bus = if opts.session_bus {
        Bus::Session
    } else {
        cfg.dbus.bus
    };
    let state_dir = store::resolve_state_dir(&cfg.storage);
    if let Err(e) = store::create_private_dir(&state_dir) {
        eprintln!(
            "pocusd: warning: cannot create the state folder {} ({e}); the measurement log and snapshots will fail until it exists (set [storage] dir)",
            state_dir.display()
        );
    }
    store::enforce_retention(
        &state_dir,
        cfg.storage.max_days,
        cfg.storage.max_mb,
        None,
        std::time::SystemTime::now(),
    );
    let model_vals = model_values(&model, cfg.source.roi);
    let extra_vals: std::collections::BTreeMap<String, Values> = extras
        .iter()
        .map(|m| {
            (
                m.spec().task.as_str().to_string(),
                model_values(m, cfg.source.roi),
            )
        })
        .collect();
    let roi_warning = warn_roi(&model, cfg.source.roi);
    let listener = if cfg.http.enabled {
        Some(
            tokio::net::TcpListener::bind(cfg.http.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the viewer; set http.listen (or POCUSD__HTTP__LISTEN) to a free address:port, or http.enabled = false",
                        cfg.http.listen
                    )
                })?,
        )
    } else {
        None
    };
    let shared = Shared::new();
    let threads = pipeline::start(
        &shared,
        model,
        extras,
        CaptureSettings {
            spec: cfg.source.spec.clone(),
            retry: cfg.source.retry,
            health: cfg.source.health,
        },
        ProcessSettings {
            clahe_threads: std::num::NonZeroUsize::new(cfg.preprocess.threads)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            post: cfg.postprocess,
            style: cfg.overlay,
            roi: cfg.source.roi,
            max_frames: opts.frames,
            render_overlay: listener.is_some(),
            record: cfg!(feature = "ffmpeg") && cfg.output_ffmpeg.is_some(),
        },
    )
    .context("cannot start the pipeline threads")?;
    let start_id: Arc<str> = Arc::from(crate::publish::measurement::new_start_id());
    let spool = match &cfg.dicom.store {
        Some(peer) => {
            let dir = state_dir.join("dicom-spool");
            match crate::dicom::spool::Spool::open(dir.clone(), cfg.dicom.spool_max_mb) {
                Ok(spool) => {
                    let (s, p, aet, stop) = (
                        spool.clone(),
                        peer.clone(),
                        cfg.dicom.calling_aet.clone(),
                        shared.stop.clone(),
                    );
                    std::thread::Builder::new()
                        .name("pocusd-dicom".into())
                        .spawn(move || s.run(p, aet, stop))
                        .context("cannot start the DICOM sender thread")?;
                    eprintln!(
                        "pocusd: snapshots go to {peer} as {} (spool {}, {} waiting)",
                        cfg.dicom.calling_aet,
                        dir.display(),
                        spool.waiting()
                    );
                    Some(spool)
                }
                Err(e) => {
                    stop_pipeline(&shared, threads);
                    return Err(anyhow::anyhow!(
                        "cannot create the DICOM spool {}: {e}; check [storage] dir, or empty dicom.store",
                        dir.display()
                    ));
                }
            }
        }
        None => None,
    };
    let igtl_server = if cfg.igtl.enabled {
        match igtl::start(
            shared.clone(),
            &cfg.igtl,
            cfg.postprocess.calibration,
            start_id.clone(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                stop_pipeline(&shared, threads);
                return Err(e);
            }
        }
    } else {
        None
    };
    #[cfg(feature = "ffmpeg")]
    let record_counters = Arc::new(record::RecordCounters::default());
    #[cfg(feature = "ffmpeg")]
    let recorder = match &cfg.output_ffmpeg {
        Some(o) => {
            let settings = record::OutputSettings {
                url: o.url.clone(),
                codec: if o.codec == "mjpeg" {
                    record::Codec::Mjpeg
                } else {
                    record::Codec::H264
                },
                fps: o.fps,
            };
            eprintln!("pocusd: recording the overlay to {} ({})", o.url, o.codec);
            Some(
                record::start(
                    shared.stop.clone(),
                    shared.recording.clone(),
                    settings,
                    record_counters.clone(),
                )
                .context("cannot start the recorder thread")?,
            )
        }
        None => None,
    };
    #[cfg(not(feature = "ffmpeg"))]
    if let Some(o) = &cfg.output_ffmpeg {
        eprintln!(
            "pocusd: warning: output.ffmpeg.url = {:?} ignored: this build has no `ffmpeg` feature",
            o.url
        );
    }
    let (jpeg_tx, jpeg_rx) = tokio::sync::watch::channel(None);
    let encoder_counters = Arc::new(publish::EncoderCounters::default());
    let encoder = match listener {
        Some(_) => Some(
            publish::start(
                shared.stop.clone(),
                shared.overlays.clone(),
                cfg.http.jpeg_quality,
                jpeg_tx,
                encoder_counters.clone(),
            )
            .context("cannot start the JPEG encoder thread")?,
        ),
        None => None,
    };

    let props = Arc::new(Mutex::new(Props {
        source: cfg.source.spec.raw.clone(),
        model: model_vals.clone(),
        state_text: "starting".into(),
        ..Props::default()
    }));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let stop_threads = |shared: &Arc<Shared>| shared.stop.store(true, Ordering::Relaxed);
    let conn = if opts.no_dbus {
        None
    } else {
        match connect(
            bus,
            opts.bus_address.as_deref(),
            Daemon1::new(props.clone(), cmd_tx.clone()),
        )
        .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                stop_threads(&shared);
                let _ = threads.capture.join();
                let _ = threads.process.join();
                return Err(e);
            }
        }
    };
    let iface = match &conn {
        Some(c) => Some(
            c.object_server()
                .interface::<_, dbus::Strict>(dbus::OBJECT_PATH)
                .await
                .context("the D-Bus object vanished")?,
        ),
        None => None,
    };
    let metrics = Arc::new(Mutex::new(http::Metrics {
        stages: [
            "capture",
            "preprocess",
            "infer",
            "postprocess",
            "publish",
            "end_to_end",
        ]
        .into_iter()
        .map(|s| (s, http::Histogram::default()))
        .collect(),
        ..Default::default()
    }));
    let (events_tx, _) = tokio::sync::broadcast::channel::<Arc<str>>(256);
    let mut viewer_url = None;
    let server = match listener {
        Some(l) => {
            let addr = l.local_addr().context("the viewer socket has no address")?;
            viewer_url = Some(format!("http://{addr}/"));
            if let Some(o) = &opts.observer {
                o.http_listening(addr);
            }
            let app = http::router(http::HttpState {
                jpeg: jpeg_rx.clone(),
                events: events_tx.clone(),
                metrics: metrics.clone(),
                commands: cmd_tx.clone(),
                token: sup_token(&cfg),
                clients: Arc::new(tokio::sync::Semaphore::new(cfg.http.max_clients)),
                max_clients: cfg.http.max_clients,
                review: Arc::new(review::Review {
                    snapshots: state_dir.join("snapshots"),
                    site: cfg.loop_.site_data(&state_dir),
                    site_max_bytes: cfg.loop_.site_max_mb * 1024 * 1024,
                }),
            });
            Some(tokio::spawn(async move {
                http::serve(l, app).await;
            }))
        }
        None => None,
    };

    let mut sup = Supervisor {
        threshold: cfg.postprocess.threshold,
        calibrated_at_start: !matches!(cfg.postprocess.calibration, Calibration::None),
        calibration_info: None,
        calibration: initial_calibration(&cfg),
        log: store::MeasurementLog::start(store::LogSettings {
            root: state_dir.clone(),
            max_days: cfg.storage.max_days,
            max_mb: cfg.storage.max_mb,
        }),
        opts: opts.clone(),
        cfg,
        shared: shared.clone(),
        control: threads.control.clone(),
        props,
        emitted: Props::default(),
        model: model_vals,
        extra_models: extra_vals,
        paused: false,
        latency: Latency::new(),
        fps: Rate::new(Duration::from_secs(2)),
        last_published: None,
        last_measurement: Values::new(),
        state_dir,
        notifier: notify::Notifier::from_env(),
        last_status: String::new(),
        last_watchdog: None,
        fault_seen: (0, None),
        metrics,
        events: events_tx,
        last_state_event: None,
        roi_warning,
        jpeg_counters: encoder_counters.clone(),
        start_id,
        igtl: igtl_server,
        exam: Arc::new(Mutex::new(crate::dicom::Exam::anonymous(
            crate::source::realtime_us(),
        ))),
        spool,
        training: Values::new(),
        training_stamp: None,
        training_fault: None,
        last_auto_queue: None,
    };
    let first = sup.refresh_props();
    sup.emitted = first.clone();
    sup.notifier.ready(&sup.status_line(&first));
    if let Some(url) = &viewer_url {
        eprintln!("pocusd: viewer at {url}");
    }
    eprintln!(
        "pocusd: serving {} on the {} bus; source {}; model {}; state folder {}",
        dbus::BUS_NAME,
        match (conn.is_some(), bus) {
            (false, _) => "no (D-Bus off)",
            (true, Bus::System) => "system",
            (true, Bus::Session) => "session",
        },
        sup.cfg.source.spec.raw,
        match sup.model.get("path") {
            Some(Val::S(p)) => p.as_str(),
            _ => "?",
        },
        sup.state_dir.display()
    );

    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let hooks = std::env::var("POCUSD_TEST_HOOKS").is_ok_and(|v| v == "1");
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
    let tick_period = sup
        .notifier
        .watchdog()
        .map(|w| (w / 2).min(PROPERTY_PERIOD))
        .unwrap_or(PROPERTY_PERIOD)
        .max(Duration::from_millis(20));
    let mut ticker = tokio::time::interval(tick_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_props = Instant::now();
    let emitter = iface.as_ref().map(|i| i.signal_emitter().clone());

    loop {
        tokio::select! {
            _ = shared.results.notified() => {
                while let Some(r) = shared.results.take() {
                    if let Some(flag) = sup.auto_queue_due(&r) {
                        match sup.snapshot(Some(flag)).await {
                            Ok(path) => eprintln!("pocusd: frame flagged {flag} queued for review: {path}"),
                            Err(e) => eprintln!("pocusd: auto_queue snapshot failed: {e}"),
                        }
                    }
                    if let (Some((seq, ts, values)), Some(emitter)) = (sup.on_result(r), &emitter) {
                        if let Err(e) = Daemon1::measurement(emitter, seq, ts, dbus::to_dict(&values)).await {
                            eprintln!("pocusd: cannot emit Measurement: {e}");
                        }
                    }
                }
                if opts.frames.is_some_and(|n| shared.processed.load(Ordering::Relaxed) >= n) {
                    eprintln!("pocusd: {} frames processed; stopping", shared.processed.load(Ordering::Relaxed));
                    break;
                }
            }
            Some(cmd) = cmd_rx.recv() => {
                match cmd {
                    Command::SetThreshold(p, reply) => { let _ = reply.send(sup.set_threshold(p)); }
                    Command::Pause(p, reply) => {
                        sup.paused = p;
                        let r = sup.control.send(Control::Pause(p))
                            .map_err(|_| DbusError::Io("the processing thread has stopped".into()));
                        let _ = reply.send(r);
                    }
                    Command::Reload(reply) => { let _ = reply.send(sup.reload()); }
                    Command::SetExam(id, name, accession, reply) => {
                        let r = crate::dicom::Exam::new(&id, &name, &accession, crate::source::realtime_us())
                            .map(|e| {
                                eprintln!("pocusd: new exam (study {}){}", e.study_uid,
                                    if e.patient_id.is_some() || e.patient_name.is_some() { "" } else { " without patient identity" });
                                *sup.exam.lock().unwrap_or_else(|p| p.into_inner()) = e;
                            })
                            .map_err(|e| DbusError::InvalidArgument(e.to_string()));
                        let _ = reply.send(r);
                    }
                    Command::RollbackModel(target, reply) => {
                        let r = rollback_command(&mut sup, target).await;
                        if let (Err(DbusError::ModelRejected(m)), Some(emitter)) = (&r, &emitter) {
                            let _ = Daemon1::fault(emitter, "model_rejected", m).await;
                        }
                        let _ = reply.send(r);
                    }
                    Command::Snapshot(reply) => {
                        let r = sup.snapshot(None).await;
                        if let (Err(DbusError::Io(m)), Some(emitter)) = (&r, &emitter) {
                            let _ = Daemon1::fault(emitter, "snapshot", m).await;
                        }
                        let _ = reply.send(r);
                    }
                    Command::LoadExtraModel(role, path, reply) => {
                        let r = load_extra_command(&mut sup, role, path).await;
                        if let (Err(DbusError::ModelRejected(m)), Some(emitter)) = (&r, &emitter) {
                            let _ = Daemon1::fault(emitter, "model_rejected", m).await;
                        }
                        let _ = reply.send(r);
                    }
                    Command::LoadModel(path, reply) => {
                        let r = load_model_command(&mut sup, path).await;
                        if let (Err(DbusError::ModelRejected(m)), Some(emitter)) = (&r, &emitter) {
                            let _ = Daemon1::fault(emitter, "model_rejected", m).await;
                        }
                        let _ = reply.send(r);
                    }
                }
            }
            _ = ticker.tick() => {
                if sup.shared.heartbeat_age() < HEARTBEAT_FRESH {
                    if sup.notifier.watchdog().is_some() {
                        sup.notifier.watchdog_ping();
                        sup.last_watchdog = Some(Instant::now());
                    }
                } else if sup.last_watchdog.is_some_and(|t| t.elapsed() > HEARTBEAT_FRESH) {
                    // Logged once per stall: systemd will act on the missing pings.
                    eprintln!("pocusd: the processing thread has not ticked for {:?}; not feeding the watchdog", sup.shared.heartbeat_age());
                    sup.last_watchdog = None;
                }
                if last_props.elapsed() + Duration::from_millis(5) >= PROPERTY_PERIOD {
                    last_props = Instant::now();
                    let p = sup.refresh_props();
                    if let Some(iface) = &iface {
                        emit_changes(iface, &sup.emitted, &p).await;
                    }
                    sup.emitted = p.clone();
                    let line = sup.status_line(&p);
                    if line != sup.last_status {
                        sup.notifier.status(&line);
                        sup.last_status = line;
                    }
                    for (code, msg) in sup.new_faults() {
                        eprintln!("pocusd: fault {code}: {msg}");
                        if let Some(emitter) = &emitter {
                            let _ = Daemon1::fault(emitter, &code, &msg).await;
                        }
                    }
                }
            }
            _ = sigterm.recv() => { eprintln!("pocusd: SIGTERM; stopping"); break; }
            _ = sigint.recv() => { eprintln!("pocusd: SIGINT; stopping"); break; }
            _ = sighup.recv() => { let _ = sup.reload(); }
            _ = sigusr2.recv() => {
                if hooks {
                    let now = !sup.shared.hang.load(Ordering::Relaxed);
                    sup.shared.hang.store(now, Ordering::Relaxed);
                    eprintln!("pocusd: test hook: processing thread {}", if now { "hangs" } else { "resumes" });
                }
            }
        }
    }

    sup.notifier.stopping();
    stop_threads(&shared);
    // The processing thread finishes the frame in hand; a hung one (test hook) is released by stop.
    if let Some(s) = server {
        s.abort();
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = threads.capture.join();
        let _ = threads.process.join();
        if let Some(e) = encoder {
            let _ = e.join();
        }
        #[cfg(feature = "ffmpeg")]
        if let Some(r) = recorder {
            let _ = r.join();
        }
    })
    .await;
    #[cfg(feature = "ffmpeg")]
    {
        let c = &record_counters;
        if cfg_has_output(&sup.cfg) {
            eprintln!(
                "pocusd: recorder: {} frames written, {} dropped while it was busy{}",
                c.written.load(Ordering::Relaxed),
                shared.recording.dropped(),
                c.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(o) = &opts.observer {
        o.stopping(sup.counts());
    }
    if let Some(conn) = &conn {
        if let Err(e) = conn.release_name(dbus::BUS_NAME).await {
            eprintln!("pocusd: cannot release {}: {e}", dbus::BUS_NAME);
        }
    }
    let lost = sup.log.counters.lost.load(Ordering::Relaxed);
    let written = sup.log.counters.written.load(Ordering::Relaxed);
    sup.log.close();
    eprintln!(
        "pocusd: stopped after {} frames ({} dropped); measurement log: {written} lines written, {lost} lost",
        shared.processed.load(Ordering::Relaxed),
        shared.frames.dropped() + shared.results.dropped()
    );
    Ok(())
}

#[cfg(feature = "ffmpeg")]
fn cfg_has_output(cfg: &Config) -> bool {
    cfg.output_ffmpeg.is_some()
}

fn sup_token(cfg: &Config) -> Option<String> {
    cfg.http.token.clone()
}

/// At most the first 200 characters of a caller's input, for error replies (a 60 MB argument
/// must not come back in full).
fn cut(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// A model path from a method call: absolute and an existing file.
fn check_model_path(path: &Path) -> Result<(), DbusError> {
    let shown = cut(&path.display().to_string());
    if !path.is_absolute() {
        return Err(DbusError::InvalidArgument(format!(
            "model path {shown:?} is not absolute; pass the full path of an ONNX file"
        )));
    }
    if !path.is_file() {
        return Err(DbusError::NotFound(format!("no model file at {shown}")));
    }
    Ok(())
}

async fn load_model_command(sup: &mut Supervisor, path: PathBuf) -> Result<(), DbusError> {
    check_model_path(&path)?;
    let model = load_for_swap(sup, &path).await?;
    swap_model(sup, model, &path)
}

/// `LoadExtraModel(role, path)`: the role is the model's task (not the primary's); the model in
/// that role, if any, keeps running when the new one is refused.
async fn load_extra_command(
    sup: &mut Supervisor,
    role: String,
    path: PathBuf,
) -> Result<(), DbusError> {
    let shown = cut(&path.display().to_string());
    let primary = sup
        .model
        .get("task")
        .and_then(Val::as_str)
        .unwrap_or("")
        .to_string();
    let Some(task) = crate::model::Task::parse(&role).filter(|t| t.as_str() != primary) else {
        return Err(DbusError::InvalidArgument(format!(
            "role {:?}: an extra model's role is its task, one of {} other than the primary model's ({primary})",
            cut(&role),
            crate::model::Task::allowed()
        )));
    };
    check_model_path(&path)?;
    let model = load_for_swap(sup, &path).await?;
    if model.spec().task != task {
        let msg = format!(
            "{shown} is a {} model, not a {role} model; the running {role} model (if any) is kept",
            model.spec().task.as_str()
        );
        eprintln!("pocusd: extra model refused: {msg}");
        return Err(DbusError::ModelRejected(msg));
    }
    let vals = model_values(&model, sup.cfg.source.roi);
    sup.control
        .send(Control::Extra(Box::new(model)))
        .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
    sup.extra_models.insert(role.clone(), vals);
    eprintln!("pocusd: extra model {} loaded as {role}", path.display());
    Ok(())
}

/// Loads and checks a model off the async thread; a refusal keeps the running model.
async fn load_for_swap(sup: &Supervisor, path: &Path) -> Result<LoadedModel, DbusError> {
    let cfg = sup.cfg.clone();
    let p = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || load_checked(&p, &cfg))
        .await
        .map_err(|e| DbusError::Io(format!("model loading task failed: {e}")))?;
    loaded.map_err(|e| {
        let msg = format!("{e:#}; the running model is kept");
        eprintln!("pocusd: model {} refused: {msg}", path.display());
        DbusError::ModelRejected(msg)
    })
}

/// Hands a checked model to the processing thread.
fn swap_model(sup: &mut Supervisor, model: LoadedModel, path: &Path) -> Result<(), DbusError> {
    let vals = model_values(&model, sup.cfg.source.roi);
    sup.roi_warning = warn_roi(&model, sup.cfg.source.roi);
    sup.control
        .send(Control::Model(Box::new(model)))
        .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
    // The live threshold survives a model swap.
    let _ = sup.set_threshold(f64::from(sup.threshold));
    sup.model = vals;
    eprintln!("pocusd: model {} loaded", path.display());
    Ok(())
}

/// `RollbackModel`: the version is loaded and checked first; only then are `current.onnx` and
/// the history rewritten and the model switched, so a refused file changes nothing.
async fn rollback_command(sup: &mut Supervisor, target: Option<u32>) -> Result<u32, DbusError> {
    use crate::versions::{Store, VersionError};
    let store = Store::new(sup.cfg.loop_.models_dir(&sup.state_dir));
    let verr = |e: VersionError| match e {
        VersionError::NoSuchVersion(_) => DbusError::NotFound(e.to_string()),
        VersionError::Refused(m) => DbusError::InvalidArgument(m),
        other => DbusError::Io(other.to_string()),
    };
    let v = store.rollback_target(target).map_err(verr)?;
    let model = load_for_swap(sup, &v.model).await?;
    if model.sha256() != v.sha256 {
        return Err(DbusError::ModelRejected(format!(
            "{} no longer has the sha256 recorded for version {}; the running model is kept",
            v.model.display(),
            v.version
        )));
    }
    let from = store
        .current_record()
        .ok()
        .flatten()
        .and_then(|r| r.version)
        .map_or("no version".to_string(), |c| format!("version {c}"));
    store
        .rollback(
            &v,
            &format!(
                "rollback from {from} to version {} (RollbackModel)",
                v.version
            ),
        )
        .map_err(verr)?;
    swap_model(sup, model, &v.model)?;
    eprintln!("pocusd: rolled back to model version {}", v.version);
    Ok(v.version)
}

async fn emit_changes(
    iface: &zbus::object_server::InterfaceRef<dbus::Strict>,
    old: &Props,
    new: &Props,
) {
    let e = iface.signal_emitter();
    let d = iface.get().await;
    let d = &d.inner;
    let mut r = Ok(());
    // One line per property: (changed?, the generated `<property>_changed` emitter).
    macro_rules! emit_if_changed {
        ($($field:ident => $emit:ident),* $(,)?) => {
            $(if old.$field != new.$field {
                r = r.and(d.$emit(e).await);
            })*
        };
    }
    emit_if_changed!(
        state => state_changed,
        state_text => state_text_changed,
        source => source_changed,
        model => model_changed,
        models => models_changed,
        fps => fps_changed,
        latency_ms => latency_ms_changed,
        dropped_frames => dropped_frames_changed,
        corrupt_frames => corrupt_frames_changed,
        calibrated => calibrated_changed,
        calibration => calibration_changed,
        last_measurement => last_measurement_changed,
        training => training_changed,
        dicom_queue => dicom_queue_changed,
        igtl => igtl_changed,
    );
    if let Err(e) = r {
        eprintln!("pocusd: cannot emit PropertiesChanged: {e}");
    }
}
