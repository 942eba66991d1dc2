//! The daemon's life: what it does on its own clock and on signals. The tick (the watchdog, fed
//! only while the processing thread's heartbeat is fresh; the property snapshot, PropertiesChanged,
//! the STATUS line and new faults at most every [`PROPERTY_PERIOD`]), SIGTERM/SIGINT, SIGHUP and
//! `Reload()` (a refused configuration keeps the running one), `Pause`, `SetThreshold`, and the
//! orderly stop (finish the frame in hand, join the threads, release the bus name, close the
//! log). Must not touch the models, the snapshots or the exam.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use super::dbus::{self, Error as DbusError, Val};
use super::outputs::Outputs;
use super::pipeline::{self, Control, Shared};
use super::supervisor::{emit_changes, Supervisor};
use super::{load_config, store, HEARTBEAT_FRESH, PROPERTY_PERIOD};
use crate::config::{Bus, StorageConfig};

/// The state folder, created when missing (a warning, not a stop: the log and snapshots fail
/// until it exists), with the retention enforced once at start.
pub(super) fn prepare_state_dir(storage: &StorageConfig) -> PathBuf {
    let state_dir = store::resolve_state_dir(storage);
    if let Err(e) = store::create_private_dir(&state_dir) {
        eprintln!(
            "pocusd: warning: cannot create the state folder {} ({e}); the measurement log and snapshots will fail until it exists (set [storage] dir)",
            state_dir.display()
        );
    }
    store::enforce_retention(
        &state_dir,
        storage.max_days,
        storage.max_mb,
        None,
        std::time::SystemTime::now(),
    );
    state_dir
}

/// Stops the pipeline threads after a failed start.
pub(super) fn stop_pipeline(shared: &Arc<Shared>, threads: pipeline::Threads) {
    shared.stop.store(true, Ordering::Relaxed);
    let _ = threads.capture.join();
    let _ = threads.process.join();
}

/// What a signal asks of the daemon.
pub(super) enum Signal {
    /// SIGTERM or SIGINT (its name): stop.
    Stop(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR2 with `POCUSD_TEST_HOOKS=1`: hang or resume the processing thread.
    ToggleHang,
}

/// The signals the daemon answers.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    hooks: bool,
}

impl Signals {
    pub(super) fn watch() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            usr2: signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?,
            hooks: std::env::var("POCUSD_TEST_HOOKS").is_ok_and(|v| v == "1"),
        })
    }

    /// The next signal that means something (SIGUSR2 only with the test hooks). Cancel-safe.
    pub(super) async fn next(&mut self) -> Signal {
        loop {
            tokio::select! {
                _ = self.term.recv() => return Signal::Stop("SIGTERM"),
                _ = self.int.recv() => return Signal::Stop("SIGINT"),
                _ = self.hup.recv() => return Signal::Reload,
                _ = self.usr2.recv() => if self.hooks { return Signal::ToggleHang },
            }
        }
    }
}

/// The supervisor's clock: half the watchdog period, at most [`PROPERTY_PERIOD`], at least 20 ms.
pub(super) fn ticker(watchdog: Option<Duration>) -> tokio::time::Interval {
    let period = watchdog
        .map(|w| (w / 2).min(PROPERTY_PERIOD))
        .unwrap_or(PROPERTY_PERIOD)
        .max(Duration::from_millis(20));
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

impl Supervisor {
    pub(super) fn set_threshold(&mut self, p: f64) -> Result<(), DbusError> {
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
    pub(super) fn reload(&mut self) -> Result<(), DbusError> {
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
        // A rotated certificate is served to new connections at once; a broken one refuses
        // the whole reload and the running certificate keeps serving.
        if let Some(tls) = &self.viewer_tls {
            match tls.reload() {
                Ok(true) => eprintln!(
                    "pocusd: viewer certificate {} reloaded: SHA-256 {}",
                    tls.cert_path().display(),
                    tls.fingerprints().cert_sha256
                ),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("pocusd: reload refused, the running certificate keeps serving: {e}");
                    return Err(DbusError::InvalidArgument(format!(
                        "the viewer's certificate is refused, the running one keeps serving: {e}"
                    )));
                }
            }
        }
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
        // The spool's sender and the worklist poller are started with the daemon.
        if new.dicom != self.cfg.dicom {
            restart.push("[dicom]");
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
        applied.dicom = self.cfg.dicom.clone();
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

    /// `Pause(paused)`: the processing thread stops measuring (capture goes on).
    pub(super) fn pause(&mut self, paused: bool) -> Result<(), DbusError> {
        self.paused = paused;
        self.control
            .send(Control::Pause(paused))
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))
    }

    /// Answers a signal; returns whether the daemon should stop.
    pub(super) fn on_signal(&mut self, s: Signal) -> bool {
        match s {
            Signal::Stop(name) => {
                eprintln!("pocusd: {name}; stopping");
                return true;
            }
            Signal::Reload => {
                let _ = self.reload();
            }
            Signal::ToggleHang => {
                let now = !self.shared.hang.load(Ordering::Relaxed);
                self.shared.hang.store(now, Ordering::Relaxed);
                eprintln!(
                    "pocusd: test hook: processing thread {}",
                    if now { "hangs" } else { "resumes" }
                );
            }
        }
        false
    }

    /// One tick of the supervisor's clock: the watchdog, and when due the properties, the
    /// STATUS line and new faults.
    pub(super) async fn tick(&mut self) {
        if self.shared.heartbeat_age() < HEARTBEAT_FRESH {
            if self.notifier.watchdog().is_some() {
                self.notifier.watchdog_ping();
                self.last_watchdog = Some(Instant::now());
            }
        } else if self
            .last_watchdog
            .is_some_and(|t| t.elapsed() > HEARTBEAT_FRESH)
        {
            // Logged once per stall: systemd will act on the missing pings.
            eprintln!(
                "pocusd: the processing thread has not ticked for {:?}; not feeding the watchdog",
                self.shared.heartbeat_age()
            );
            self.last_watchdog = None;
        }
        if self.last_props.elapsed() + Duration::from_millis(5) < PROPERTY_PERIOD {
            return;
        }
        self.last_props = Instant::now();
        let p = self.refresh_props();
        if let Some(b) = &self.bus {
            emit_changes(&b.iface, &self.emitted, &p).await;
        }
        self.emitted = p.clone();
        let line = self.status_line(&p);
        if line != self.last_status {
            self.notifier.status(&line);
            self.last_status = line;
        }
        for (code, msg) in self.new_faults() {
            eprintln!("pocusd: fault {code}: {msg}");
            self.signal_fault(&code, &msg).await;
        }
        self.keep_unlabelled();
    }

    /// Tells systemd READY=1 and says in the log what runs where.
    pub(super) fn announce(&self, bus: Bus) {
        self.notifier.ready(&self.status_line(&self.emitted));
        if let Some(addr) = self.viewer {
            let scheme = if self.viewer_tls.is_some() {
                "https"
            } else {
                "http"
            };
            eprintln!("pocusd: viewer at {scheme}://{addr}/");
        }
        eprintln!(
            "pocusd: serving {} on the {} bus; source {}; model {}; state folder {}",
            dbus::BUS_NAME,
            match (self.bus.is_some(), bus) {
                (false, _) => "no (D-Bus off)",
                (true, Bus::System) => "system",
                (true, Bus::Session) => "session",
            },
            self.cfg.source.spec.raw,
            match self.model.get("path") {
                Some(Val::S(p)) => p.as_str(),
                _ => "?",
            },
            self.state_dir.display()
        );
    }

    /// The orderly stop: the processing thread finishes the frame in hand (a hung one, under the
    /// test hook, is released by the stop flag), the threads are joined, the bus name released
    /// and the log closed.
    pub(super) async fn shutdown(
        self,
        threads: pipeline::Threads,
        outputs: Outputs,
        server: Option<tokio::task::JoinHandle<()>>,
    ) {
        self.notifier.stopping();
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(s) = server {
            s.abort();
        }
        let joined = tokio::task::spawn_blocking(move || {
            let _ = threads.capture.join();
            let _ = threads.process.join();
            outputs.join()
        })
        .await;
        if let Ok(report) = joined {
            report.print(&self.cfg, &self.shared);
        }
        if let Some(o) = &self.opts.observer {
            o.stopping(self.counts());
        }
        if let Some(b) = &self.bus {
            if let Err(e) = b.conn.release_name(dbus::BUS_NAME).await {
                eprintln!("pocusd: cannot release {}: {e}", dbus::BUS_NAME);
            }
        }
        let lost = self.log.counters.lost.load(Ordering::Relaxed);
        let written = self.log.counters.written.load(Ordering::Relaxed);
        self.log.close();
        eprintln!(
            "pocusd: stopped after {} frames ({} dropped); measurement log: {written} lines written, {lost} lost",
            self.shared.processed.load(Ordering::Relaxed),
            self.shared.frames.dropped() + self.shared.results.dropped()
        );
    }
}
