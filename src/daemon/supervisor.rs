//! The supervisor: the one owner of the daemon's mutable state ([`Supervisor`]). It takes each
//! processed frame from the pipeline (latency, fps, the rate-limited `Measurement` signal, the
//! log line, the SSE event), keeps the property snapshot that D-Bus and the viewer read, and
//! dispatches every command to the room that handles it ([`super::models`], [`super::exam`],
//! [`super::lifecycle`]); those rooms add `impl Supervisor` blocks of their own or take
//! `&mut Supervisor`. Must not start threads or servers (that is `serve`'s wiring) and holds no
//! algorithm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dbus::{Command, Daemon1, Error as DbusError, Props, State, Val, Values};
use super::pipeline::{self, Control, Processed, Shared};
use super::{http, models, notify, publish, store, Counts, RunOptions};
use crate::config::Config;
use crate::postprocess::Calibration;
use crate::publish::measurement::Measurement;
use crate::stats::{Rate, Window};

/// The daemon's object on the bus: the connection (to release the name at the end) and the
/// served interface (to emit property changes and signals).
pub(super) struct BusObject {
    pub(super) conn: zbus::Connection,
    pub(super) iface: zbus::object_server::InterfaceRef<super::dbus::Strict>,
}

/// What `serve` has built by the time the supervisor takes over.
pub(super) struct Parts {
    pub(super) opts: RunOptions,
    pub(super) cfg: Config,
    pub(super) shared: Arc<Shared>,
    pub(super) control: std::sync::mpsc::Sender<Control>,
    pub(super) props: Arc<Mutex<Props>>,
    pub(super) model: Values,
    pub(super) extra_models: BTreeMap<String, Values>,
    pub(super) roi_warning: Option<String>,
    pub(super) state_dir: PathBuf,
    pub(super) metrics: Arc<Mutex<http::Metrics>>,
    pub(super) events: tokio::sync::broadcast::Sender<Arc<str>>,
    pub(super) jpeg_counters: Arc<publish::EncoderCounters>,
    pub(super) start_id: Arc<str>,
    pub(super) igtl: Option<Arc<crate::publish::igtl::Server>>,
    pub(super) spool: Option<Arc<crate::dicom::spool::Spool>>,
    pub(super) worklist: Option<Arc<super::worklist::Worklist>>,
    /// The viewer's address and TLS (`None`: no viewer; plain HTTP).
    pub(super) viewer: Option<std::net::SocketAddr>,
    pub(super) viewer_tls: Option<Arc<crate::publish::tls::Tls>>,
    pub(super) bus: Option<BusObject>,
}

/// The `Calibration` property before the first frame.
pub(super) fn initial_calibration(cfg: &Config) -> Values {
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
pub(super) fn measurement(
    p: &Processed,
    calibration: Calibration,
    start_id: &Arc<str>,
) -> Measurement {
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
        doubt: p.analysis.doubt,
        extra_doubt: p.analysis.extra_doubt.clone(),
        model_sha256: p.model_sha256.clone(),
        truth: p.truth,
        calibration: p.analysis.calibration,
        manual: calibration,
        start_id: start_id.clone(),
    }
}

/// Latency windows: end to end and per stage.
pub(super) struct Latency {
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
pub(super) struct Supervisor {
    pub(super) opts: RunOptions,
    pub(super) cfg: Config,
    pub(super) shared: Arc<Shared>,
    pub(super) control: std::sync::mpsc::Sender<Control>,
    pub(super) props: Arc<Mutex<Props>>,
    pub(super) emitted: Props,
    pub(super) model: Values,
    /// The extra models' `Model` dictionaries by role.
    pub(super) extra_models: std::collections::BTreeMap<String, Values>,
    pub(super) paused: bool,
    pub(super) threshold: f32,
    pub(super) latency: Latency,
    pub(super) fps: Rate,
    pub(super) last_published: Option<Instant>,
    pub(super) last_measurement: Values,
    /// Before the first frame: whether a manual calibration is configured.
    pub(super) calibrated_at_start: bool,
    /// The calibration of the last processed frame, and its dictionary.
    pub(super) calibration_info: Option<crate::preprocess::calibration::CalibrationInfo>,
    pub(super) calibration: Values,
    pub(super) log: store::MeasurementLog,
    pub(super) state_dir: PathBuf,
    pub(super) notifier: notify::Notifier,
    pub(super) last_status: String,
    pub(super) last_watchdog: Option<Instant>,
    pub(super) fault_seen: (u64, Option<String>),
    pub(super) metrics: Arc<Mutex<http::Metrics>>,
    pub(super) events: tokio::sync::broadcast::Sender<Arc<str>>,
    pub(super) last_state_event: Option<(State, String)>,
    /// Why the region of interest in force departs from the model's policy (`None`: it does not).
    pub(super) roi_warning: Option<String>,
    pub(super) jpeg_counters: Arc<publish::EncoderCounters>,
    /// This run's identity beside every `seq` (see `publish::measurement::new_start_id`).
    pub(super) start_id: Arc<str>,
    /// The OpenIGTLink server (`[igtl] enabled`).
    pub(super) igtl: Option<Arc<crate::publish::igtl::Server>>,
    /// The exam snapshots belong to (`SetExam`; anonymous until then), shared with the snapshot
    /// writer.
    pub(super) exam: Arc<Mutex<crate::dicom::Exam>>,
    /// The DICOM spool (`[dicom] store`).
    pub(super) spool: Option<Arc<crate::dicom::spool::Spool>>,
    pub(super) worklist: Option<Arc<super::worklist::Worklist>>,
    /// The viewer's address and TLS (`None`: no viewer; plain HTTP).
    pub(super) viewer: Option<std::net::SocketAddr>,
    pub(super) viewer_tls: Option<Arc<crate::publish::tls::Tls>>,
    /// The newest history record of `models_dir` (the `Training` property).
    pub(super) training: Values,
    /// The history file's (mtime, length) when last read.
    pub(super) training_stamp: Option<(std::time::SystemTime, u64)>,
    /// A nightly run not promoted, to be reported once as `Fault("training", ..)`.
    pub(super) training_fault: Option<String>,
    /// When the last automatic review snapshot was taken (`[loop] auto_queue`).
    pub(super) last_auto_queue: Option<Instant>,
    /// When the last unlabelled frame was kept, and its `seq` (`[loop] unlabelled_per_hour`).
    pub(super) last_unlabelled: Option<Instant>,
    /// The writer of unlabelled frames (`None`: `unlabelled_per_hour = 0`).
    pub(super) unlabelled: Option<super::exam::UnlabelledWriter>,
    /// When the properties were last published (the tick publishes them every
    /// `PROPERTY_PERIOD`).
    pub(super) last_props: Instant,
    /// The D-Bus object, when the daemon serves one (not under `bench pipeline --no-dbus`).
    pub(super) bus: Option<BusObject>,
}

impl Supervisor {
    /// Takes over what `serve` built; the first property snapshot is published at once.
    pub(super) fn new(p: Parts) -> Self {
        let cfg = p.cfg;
        let mut sup = Self {
            threshold: cfg.postprocess.threshold,
            calibrated_at_start: !matches!(cfg.postprocess.calibration, Calibration::None),
            calibration_info: None,
            calibration: initial_calibration(&cfg),
            log: store::MeasurementLog::start(store::LogSettings {
                root: p.state_dir.clone(),
                max_days: cfg.storage.max_days,
                max_mb: cfg.storage.max_mb,
            }),
            opts: p.opts,
            cfg,
            shared: p.shared,
            control: p.control,
            props: p.props,
            emitted: Props::default(),
            model: p.model,
            extra_models: p.extra_models,
            paused: false,
            latency: Latency::new(),
            fps: Rate::new(Duration::from_secs(2)),
            last_published: None,
            last_measurement: Values::new(),
            state_dir: p.state_dir,
            notifier: notify::Notifier::from_env(),
            last_status: String::new(),
            last_watchdog: None,
            fault_seen: (0, None),
            metrics: p.metrics,
            events: p.events,
            last_state_event: None,
            roi_warning: p.roi_warning,
            jpeg_counters: p.jpeg_counters,
            start_id: p.start_id,
            igtl: p.igtl,
            exam: Arc::new(Mutex::new(crate::dicom::Exam::anonymous(
                crate::source::realtime_us(),
            ))),
            spool: p.spool,
            worklist: p.worklist,
            viewer: p.viewer,
            viewer_tls: p.viewer_tls,
            training: Values::new(),
            training_stamp: None,
            training_fault: None,
            last_auto_queue: None,
            last_unlabelled: None,
            unlabelled: None,
            last_props: Instant::now(),
            bus: p.bus,
        };
        if sup.cfg.loop_.unlabelled_per_hour > 0 {
            let dir = sup.cfg.loop_.unlabelled_data(&sup.state_dir);
            let (days, mb) = (sup.cfg.storage.max_days, sup.cfg.loop_.unlabelled_max_mb);
            match super::exam::UnlabelledWriter::start(dir, days, mb) {
                Ok(w) => sup.unlabelled = Some(w),
                Err(e) => eprintln!("pocusd: unlabelled frames not kept: no writer thread: {e}"),
            }
        }
        sup.emitted = sup.refresh_props();
        sup
    }

    /// Answers one command (a D-Bus method or a viewer action); a refused model or a failed
    /// snapshot is also signalled as `Fault`.
    pub(super) async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::SetThreshold(p, reply) => {
                let _ = reply.send(self.set_threshold(p));
            }
            Command::Pause(p, reply) => {
                let _ = reply.send(self.pause(p));
            }
            Command::Reload(reply) => {
                let _ = reply.send(self.reload());
            }
            Command::RefreshWorklist(reply) => {
                let _ = reply.send(match &self.worklist {
                    Some(w) => {
                        w.refresh();
                        Ok(())
                    }
                    None => Err(super::exam::no_worklist()),
                });
            }
            Command::SelectWorklistItem(accession, step_id, reply) => {
                let _ = reply.send(self.select_worklist_item(&accession, &step_id));
            }
            Command::SetExam(id, name, accession, reply) => {
                let _ = reply.send(self.set_exam(&id, &name, &accession));
            }
            Command::RollbackModel(target, reply) => {
                let r = models::rollback_command(self, target).await;
                if let Err(DbusError::ModelRejected(m)) = &r {
                    self.signal_fault("model_rejected", m).await;
                }
                let _ = reply.send(r);
            }
            Command::Snapshot(reply) => {
                let r = self.snapshot(None).await;
                if let Err(DbusError::Io(m)) = &r {
                    self.signal_fault("snapshot", m).await;
                }
                let _ = reply.send(r);
            }
            Command::LoadExtraModel(role, path, reply) => {
                let r = models::load_extra_command(self, role, path).await;
                if let Err(DbusError::ModelRejected(m)) = &r {
                    self.signal_fault("model_rejected", m).await;
                }
                let _ = reply.send(r);
            }
            Command::LoadModel(path, reply) => {
                let r = models::load_model_command(self, path).await;
                if let Err(DbusError::ModelRejected(m)) = &r {
                    self.signal_fault("model_rejected", m).await;
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Takes every result the processing thread has left: queues flagged frames for review
    /// (`[loop] auto_queue`), publishes the measurement. Returns whether `--frames` is reached.
    pub(super) async fn take_results(&mut self) -> bool {
        while let Some(r) = self.shared.results.take() {
            if let Some(doubt) = self.auto_queue_due(&r) {
                let codes = doubt.codes().join(", ");
                match self.snapshot(Some(doubt)).await {
                    Ok(path) => {
                        eprintln!("pocusd: doubtful frame ({codes}) queued for review: {path}")
                    }
                    Err(e) => eprintln!("pocusd: auto_queue snapshot failed: {e}"),
                }
            }
            if let Some((seq, ts, values)) = self.on_result(r) {
                if let Some(b) = &self.bus {
                    if let Err(e) = Daemon1::measurement(
                        b.iface.signal_emitter(),
                        seq,
                        ts,
                        super::dbus::to_dict(&values),
                    )
                    .await
                    {
                        eprintln!("pocusd: cannot emit Measurement: {e}");
                    }
                }
            }
        }
        let processed = self.shared.processed.load(Ordering::Relaxed);
        let done = self.opts.frames.is_some_and(|n| processed >= n);
        if done {
            eprintln!("pocusd: {processed} frames processed; stopping");
        }
        done
    }

    /// Emits `Fault(code, message)` when the daemon serves D-Bus.
    pub(super) async fn signal_fault(&self, code: &str, message: &str) {
        if let Some(b) = &self.bus {
            let _ = Daemon1::fault(b.iface.signal_emitter(), code, message).await;
        }
    }

    /// Totals now, for observers.
    pub(super) fn counts(&self) -> Counts {
        Counts {
            processed: self.shared.processed.load(Ordering::Relaxed),
            dropped: self.shared.frames.dropped() + self.shared.results.dropped(),
            jpeg_encoded: self.jpeg_counters.encoded.load(Ordering::Relaxed),
        }
    }

    pub(super) fn state(&self, cap: &pipeline::CaptureStatus) -> (State, String) {
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
    pub(super) fn refresh_props(&mut self) -> Props {
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
            worklist: self
                .worklist
                .as_ref()
                .map_or_else(Values::new, |w| w.state().values()),
            viewer: self.viewer_values(),
            pacs: match (&self.spool, &self.cfg.dicom.store) {
                (Some(s), Some(peer)) => super::worklist::peer_values(
                    &peer.to_string(),
                    s.last_answer_us(),
                    s.last_error().as_deref(),
                ),
                _ => Values::new(),
            },
        };
        *self.props.lock().unwrap_or_else(|p| p.into_inner()) = p.clone();
        self.publish_http(&p);
        p
    }

    /// The `Viewer` property: `url` (s), `tls` (b), `self_signed` (b), `cert_sha256` (s),
    /// `spki_sha256` (s, base64); empty without a viewer.
    fn viewer_values(&self) -> Values {
        let Some(addr) = self.viewer else {
            return Values::new();
        };
        let scheme = if self.viewer_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut v = Values::from([
            ("url".to_string(), Val::S(format!("{scheme}://{addr}/"))),
            ("tls".to_string(), Val::B(self.viewer_tls.is_some())),
        ]);
        if let Some(t) = &self.viewer_tls {
            let fp = t.fingerprints();
            v.insert("self_signed".into(), Val::B(t.self_signed));
            v.insert("cert_sha256".into(), Val::S(fp.cert_sha256));
            v.insert("spki_sha256".into(), Val::S(fp.spki_sha256_base64));
        }
        v
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

    pub(super) fn status_line(&self, p: &Props) -> String {
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

    pub(super) fn on_result(&mut self, r: Arc<Processed>) -> Option<(u64, i64, Values)> {
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
            for d in r.analysis.doubt.iter() {
                *m.doubtful_total.entry(d.as_str()).or_insert(0) += 1;
            }
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
    pub(super) fn new_faults(&mut self) -> Vec<(String, String)> {
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
}

pub(super) async fn emit_changes(
    iface: &zbus::object_server::InterfaceRef<super::dbus::Strict>,
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
        worklist => worklist_changed,
        pacs => pacs_changed,
        viewer => viewer_changed,
    );
    if let Err(e) = r {
        eprintln!("pocusd: cannot emit PropertiesChanged: {e}");
    }
}
