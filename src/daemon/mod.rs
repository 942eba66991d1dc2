//! `pocusd run`: the daemon. [`run`] loads and checks the configuration and the model; `serve`
//! wires the rest: the capture and processing threads ([`pipeline`]), the outputs beside them
//! ([`outputs`]: viewer, DICOM sender, OpenIGTLink, recorder, JPEG encoder), `org.pocusd.Daemon1`
//! on D-Bus ([`dbus`]), and then the [`supervisor`]'s loop: the one owner of mutable state, which
//! takes every processed frame and every command and hands each command to its room
//! ([`models`], [`exam`], [`lifecycle`], [`training`]). Talks to systemd ([`notify`]): READY once
//! the config, model and bus name are in hand (without waiting for the source), STATUS lines,
//! WATCHDOG only while the processing thread's heartbeat is fresh. Must not depend on the
//! training code or the command line.

pub mod command;
mod exam;
pub mod igtl;
mod lifecycle;
mod models;
pub mod notify;
mod outputs;
pub mod pipeline;
pub mod review;
pub mod store;
mod supervisor;
mod training;
pub mod worklist;

#[cfg(feature = "ffmpeg")]
pub use crate::publish::ffmpeg_out as record;
pub use crate::publish::jpeg as publish;
/// The D-Bus client (`pocusd status`) and the outputs, which live in [`crate::publish`].
pub use crate::publish::{dbus, http, status};
pub use models::{load_checked, load_extra_models, resolve_model};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::{self, Bus, Config};
use crate::infer::{self, LoadedModel};
use dbus::{Command, Props};
use pipeline::{CaptureSettings, ProcessSettings, Processed, Shared};

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

/// Runs the daemon until SIGTERM/SIGINT or `--frames`; returns when the bus name is released.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let cfg = load_config(&opts)?;
    infer::set_threads(cfg.model.threads);
    let model_path = resolve_model(&cfg, opts.model.as_deref())?;
    let model = load_checked(&model_path, &cfg)?;
    let extras = models::load_extras(&opts, &cfg, &model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(opts, cfg, model, extras))
}

/// Wires the daemon together and runs the supervisor's loop until a stop.
async fn serve(
    opts: RunOptions,
    cfg: Config,
    model: LoadedModel,
    extras: Vec<LoadedModel>,
) -> anyhow::Result<()> {
    let bus = if opts.session_bus {
        Bus::Session
    } else {
        cfg.dbus.bus
    };
    let state_dir = lifecycle::prepare_state_dir(&cfg.storage);
    let model_vals = models::model_values(&model, cfg.source.roi);
    let extra_models = models::extra_values(&extras, cfg.source.roi);
    let roi_warning = models::warn_roi(&model, cfg.source.roi);
    let listener = outputs::bind_http(&cfg).await?;
    let shared = Shared::new();
    let (capture, process) = pipeline_settings(&cfg, &opts, listener.is_some());
    let threads = pipeline::start(&shared, model, extras, capture, process)
        .context("cannot start the pipeline threads")?;
    let start_id: Arc<str> = Arc::from(crate::publish::measurement::new_start_id());
    let outputs =
        match outputs::Outputs::start(&cfg, &shared, &state_dir, &start_id, listener.is_some()) {
            Ok(o) => o,
            Err(e) => {
                lifecycle::stop_pipeline(&shared, threads);
                return Err(e);
            }
        };
    let props = Arc::new(Mutex::new(Props {
        source: cfg.source.spec.raw.clone(),
        model: model_vals.clone(),
        state_text: "starting".into(),
        ..Props::default()
    }));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let bus_object = match outputs::connect_bus(&opts, bus, props.clone(), cmd_tx.clone()).await {
        Ok(b) => b,
        Err(e) => {
            lifecycle::stop_pipeline(&shared, threads);
            return Err(e);
        }
    };
    let metrics = outputs::viewer_metrics();
    let (events, _) = tokio::sync::broadcast::channel::<Arc<str>>(256);
    let (server, viewer) = match listener {
        Some(l) => {
            let links = outputs::ViewerLinks {
                jpeg: outputs.jpeg.clone(),
                events: events.clone(),
                metrics: metrics.clone(),
                commands: cmd_tx.clone(),
                worklist: outputs.worklist.clone(),
            };
            let (task, addr, tls) =
                outputs::serve_http(l, &cfg, &state_dir, links, opts.observer.as_deref())?;
            (Some(task), Some((addr, tls)))
        }
        None => (None, None),
    };
    let viewer_tls = viewer.as_ref().and_then(|(_, t)| t.clone());
    let viewer = viewer.map(|(a, _)| a);

    let mut sup = supervisor::Supervisor::new(supervisor::Parts {
        opts: opts.clone(),
        cfg,
        shared: shared.clone(),
        control: threads.control.clone(),
        props,
        model: model_vals,
        extra_models,
        roi_warning,
        state_dir,
        metrics,
        events,
        jpeg_counters: outputs.encoder_counters.clone(),
        start_id,
        igtl: outputs.igtl.clone(),
        spool: outputs.spool.clone(),
        worklist: outputs.worklist.clone(),
        viewer,
        viewer_tls,
        bus: bus_object,
    });
    sup.announce(bus);
    let mut signals = lifecycle::Signals::watch()?;
    let mut ticker = lifecycle::ticker(sup.notifier.watchdog());
    loop {
        tokio::select! {
            _ = shared.results.notified() => {
                if sup.take_results().await {
                    break;
                }
            }
            Some(cmd) = cmd_rx.recv() => sup.handle(cmd).await,
            _ = ticker.tick() => sup.tick().await,
            s = signals.next() => {
                if sup.on_signal(s) {
                    break;
                }
            }
        }
    }
    sup.shutdown(threads, outputs, server).await;
    Ok(())
}

/// The pipeline's settings from the configuration and the command line.
fn pipeline_settings(
    cfg: &Config,
    opts: &RunOptions,
    viewer: bool,
) -> (CaptureSettings, ProcessSettings) {
    (
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
            render_overlay: viewer,
            record: cfg!(feature = "ffmpeg") && cfg.output_ffmpeg.is_some(),
        },
    )
}
