//! The outputs started beside the pipeline, and their end: the viewer's socket and HTTP server,
//! the DICOM spool's sender, the OpenIGTLink server, the overlay recorder (feature `ffmpeg`), the
//! JPEG encoder, and the D-Bus object. Each runs on a thread or task of its own and stops with the
//! pipeline's stop flag; what a later command needs of them (the spool, the server's figures, the
//! encoder's counters) is handed to the supervisor. Must not hold daemon state or answer
//! commands.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};

use super::dbus::{self, Command, Daemon1, Props};
use super::pipeline::Shared;
#[cfg(feature = "ffmpeg")]
use super::record;
use super::supervisor::BusObject;
use super::{http, igtl, publish, review, RunOptions};
use crate::config::{Bus, Config};

/// Binds the viewer's socket (`[http] enabled`) before anything starts, so a taken port stops
/// start-up with the key to change.
pub(super) async fn bind_http(cfg: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if !cfg.http.enabled {
        return Ok(None);
    }
    let l = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the viewer; set http.listen (or POCUSD__HTTP__LISTEN) to a free address:port, or http.enabled = false",
                cfg.http.listen
            )
        })?;
    Ok(Some(l))
}

/// The output threads and what the supervisor and the viewer need of them.
pub(super) struct Outputs {
    /// The DICOM spool (`[dicom] store`).
    pub(super) spool: Option<Arc<crate::dicom::spool::Spool>>,
    /// The Modality Worklist poller (`[dicom] worklist`).
    pub(super) worklist: Option<Arc<super::worklist::Worklist>>,
    /// The OpenIGTLink server (`[igtl] enabled`).
    pub(super) igtl: Option<Arc<crate::publish::igtl::Server>>,
    /// The newest JPEG of the overlay, for the viewer's stream.
    pub(super) jpeg: publish::Latest,
    /// The JPEG encoder's counters.
    pub(super) encoder_counters: Arc<publish::EncoderCounters>,
    encoder: Option<std::thread::JoinHandle<()>>,
    #[cfg(feature = "ffmpeg")]
    recorder: Option<std::thread::JoinHandle<()>>,
    #[cfg(feature = "ffmpeg")]
    record_counters: Arc<record::RecordCounters>,
}

/// What the outputs report once joined.
pub(super) struct OutputReport {
    #[cfg(feature = "ffmpeg")]
    record_counters: Arc<record::RecordCounters>,
}

impl Outputs {
    /// Starts the DICOM sender, the OpenIGTLink server, the recorder and (for a viewer) the JPEG
    /// encoder; all stop with `shared.stop`.
    pub(super) fn start(
        cfg: &Config,
        shared: &Arc<Shared>,
        state_dir: &Path,
        start_id: &Arc<str>,
        viewer: bool,
    ) -> anyhow::Result<Self> {
        // DICOM over TLS: one client configuration for the store and the worklist; a file that
        // cannot be read stops start-up with its name.
        let dicom_tls = match &cfg.dicom.tls {
            Some(t) => Some(
                crate::dicom::net::tls_client_config(t)
                    .map_err(|e| anyhow::anyhow!("dicom.tls: {e}"))?,
            ),
            None => None,
        };
        let spool = match &cfg.dicom.store {
            Some(peer) => {
                let dir = state_dir.join("dicom-spool");
                let spool = crate::dicom::spool::Spool::open(dir.clone(), cfg.dicom.spool_max_mb)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot create the DICOM spool {}: {e}; check [storage] dir, or empty dicom.store",
                            dir.display()
                        )
                    })?;
                let (s, p, aet, tls, stop) = (
                    spool.clone(),
                    peer.clone(),
                    cfg.dicom.calling_aet.clone(),
                    dicom_tls.clone(),
                    shared.stop.clone(),
                );
                std::thread::Builder::new()
                    .name("pocusd-dicom".into())
                    .spawn(move || s.run(p, aet, tls, stop))
                    .context("cannot start the DICOM sender thread")?;
                eprintln!(
                    "pocusd: snapshots go to {peer} as {} (spool {}, {} waiting)",
                    cfg.dicom.calling_aet,
                    dir.display(),
                    spool.waiting()
                );
                Some(spool)
            }
            None => None,
        };
        let worklist = match &cfg.dicom.worklist {
            Some(peer) => {
                eprintln!(
                    "pocusd: worklist {peer} asked for today's US steps of station {} every {} s",
                    cfg.dicom.calling_aet, cfg.dicom.worklist_poll_s
                );
                Some(
                    super::worklist::Worklist::start(
                        peer.clone(),
                        cfg.dicom.calling_aet.clone(),
                        dicom_tls.clone(),
                        std::time::Duration::from_secs(cfg.dicom.worklist_poll_s),
                        shared.stop.clone(),
                    )
                    .context("cannot start the worklist thread")?,
                )
            }
            None => None,
        };
        let igtl = if cfg.igtl.enabled {
            Some(igtl::start(
                shared.clone(),
                &cfg.igtl,
                cfg.postprocess.calibration,
                start_id.clone(),
            )?)
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
        let (jpeg_tx, jpeg) = tokio::sync::watch::channel(None);
        let encoder_counters = Arc::new(publish::EncoderCounters::default());
        let encoder = if viewer {
            Some(
                publish::start(
                    shared.stop.clone(),
                    shared.overlays.clone(),
                    cfg.http.jpeg_quality,
                    jpeg_tx,
                    encoder_counters.clone(),
                )
                .context("cannot start the JPEG encoder thread")?,
            )
        } else {
            None
        };
        Ok(Self {
            spool,
            worklist,
            igtl,
            jpeg,
            encoder_counters,
            encoder,
            #[cfg(feature = "ffmpeg")]
            recorder,
            #[cfg(feature = "ffmpeg")]
            record_counters,
        })
    }

    /// Waits for the output threads (after the stop flag is set).
    pub(super) fn join(self) -> OutputReport {
        if let Some(e) = self.encoder {
            let _ = e.join();
        }
        #[cfg(feature = "ffmpeg")]
        if let Some(r) = self.recorder {
            let _ = r.join();
        }
        OutputReport {
            #[cfg(feature = "ffmpeg")]
            record_counters: self.record_counters,
        }
    }
}

impl OutputReport {
    /// The recorder's totals, when one ran.
    #[cfg_attr(not(feature = "ffmpeg"), allow(unused_variables))]
    pub(super) fn print(&self, cfg: &Config, shared: &Shared) {
        #[cfg(feature = "ffmpeg")]
        if cfg.output_ffmpeg.is_some() {
            use std::sync::atomic::Ordering;
            let c = &self.record_counters;
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
}

/// The viewer's Prometheus figures, with one latency histogram per stage.
pub(super) fn viewer_metrics() -> Arc<Mutex<http::Metrics>> {
    Arc::new(Mutex::new(http::Metrics {
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
    }))
}

/// What the viewer's routes share with the supervisor.
pub(super) struct ViewerLinks {
    pub(super) jpeg: publish::Latest,
    pub(super) events: broadcast::Sender<Arc<str>>,
    pub(super) metrics: Arc<Mutex<http::Metrics>>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) worklist: Option<Arc<super::worklist::Worklist>>,
}

/// The viewer's TLS: the configured certificate, or off loopback a self-signed one made once
/// under `STATE/tls/`; `None` (plain HTTP) on loopback without one.
fn viewer_tls(
    cfg: &Config,
    state_dir: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<Arc<crate::publish::tls::Tls>>> {
    use crate::publish::tls;
    let t = match (&cfg.http.tls, addr.ip().is_loopback()) {
        (Some((cert, key)), _) => tls::Tls::new(cert.clone(), key.clone(), false)
            .context("http.tls_cert / http.tls_key")?,
        (None, false) => {
            let mut names = vec![addr.ip().to_string(), "localhost".to_string()];
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                names.push(h.trim().to_string());
            }
            let dir = state_dir.join("tls");
            let (cert, key) = tls::self_signed(&dir, names).context(
                "the viewer listens on a network address and needs a certificate: set http.tls_cert and http.tls_key",
            )?;
            tls::Tls::new(cert, key, true)?
        }
        (None, true) => return Ok(None),
    };
    let fp = t.fingerprints();
    eprintln!(
        "pocusd: viewer serves HTTPS only with {}{}: certificate SHA-256 {}, public key sha256/{} (pin one of them in the clients)",
        t.cert_path().display(),
        if t.self_signed { " (self-signed)" } else { "" },
        fp.cert_sha256,
        fp.spki_sha256_base64
    );
    Ok(Some(Arc::new(t)))
}

/// Serves the viewer on `listener`; returns the server's task, its address and its TLS.
pub(super) fn serve_http(
    listener: tokio::net::TcpListener,
    cfg: &Config,
    state_dir: &Path,
    links: ViewerLinks,
    observer: Option<&dyn super::Observer>,
) -> anyhow::Result<(
    tokio::task::JoinHandle<()>,
    std::net::SocketAddr,
    Option<Arc<crate::publish::tls::Tls>>,
)> {
    let addr = listener
        .local_addr()
        .context("the viewer socket has no address")?;
    let tls = viewer_tls(cfg, state_dir, addr)?;
    if let Some(o) = observer {
        o.http_listening(addr);
    }
    let app = http::router(http::HttpState {
        jpeg: links.jpeg,
        events: links.events,
        metrics: links.metrics,
        commands: links.commands,
        worklist: links.worklist,
        access: Arc::new(http::Access::new(!addr.ip().is_loopback(), tls.is_some())),
        token: cfg.http.token.clone(),
        clients: Arc::new(tokio::sync::Semaphore::new(cfg.http.max_clients)),
        max_clients: cfg.http.max_clients,
        review: Arc::new(review::Review {
            snapshots: state_dir.join("snapshots"),
            site: cfg.loop_.site_data(state_dir),
            site_max_bytes: cfg.loop_.site_max_mb * 1024 * 1024,
        }),
    });
    let served = tls.clone();
    let task = tokio::spawn(async move {
        http::serve(listener, app, served).await;
    });
    Ok((task, addr, tls))
}

/// Serves `org.pocusd.Daemon1` (unless `--no-dbus`): the object first, then the name.
pub(super) async fn connect_bus(
    opts: &RunOptions,
    bus: Bus,
    props: Arc<Mutex<Props>>,
    commands: mpsc::Sender<Command>,
) -> anyhow::Result<Option<BusObject>> {
    if opts.no_dbus {
        return Ok(None);
    }
    let conn = connect(
        bus,
        opts.bus_address.as_deref(),
        Daemon1::new(props, commands),
    )
    .await?;
    let iface = conn
        .object_server()
        .interface::<_, dbus::Strict>(dbus::OBJECT_PATH)
        .await
        .context("the D-Bus object vanished")?;
    Ok(Some(BusObject { conn, iface }))
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
