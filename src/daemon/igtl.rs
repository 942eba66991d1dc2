//! Feeds the OpenIGTLink server (`[igtl] enabled`): a thread that takes each processed frame's
//! region and mask from the processing thread's slot (filled only while a client is connected),
//! builds the same measurement record as the SSE event, encodes the three messages once and hands
//! them to every client. Rate-limited by `igtl.max_fps`. Must not depend on D-Bus or HTTP.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::pipeline::Shared;
use crate::config::IgtlConfig;
use crate::postprocess::Calibration;
use crate::publish::igtl::{encode_frame, Outgoing, Plane, Server};

/// Starts the server and its feeding thread; both stop with `shared.stop`.
pub fn start(
    shared: Arc<Shared>,
    cfg: &IgtlConfig,
    manual: Calibration,
    start_id: Arc<str>,
) -> anyhow::Result<Arc<Server>> {
    let server = Arc::new(
        Server::start(cfg.listen, cfg.max_clients, shared.stop.clone()).with_context(|| {
            format!(
                "cannot listen on {} for OpenIGTLink; set igtl.listen to a free address:port, or igtl.enabled = false",
                cfg.listen
            )
        })?,
    );
    if !cfg.listen.ip().is_loopback() {
        eprintln!(
            "pocusd: warning: OpenIGTLink listens on {}, reachable from the network: the protocol has no authentication, so anyone who can reach this port sees the images",
            server.local_addr()
        );
    }
    eprintln!("pocusd: OpenIGTLink server on {}", server.local_addr());
    let min_gap = (cfg.max_fps > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.max_fps));
    let s = server.clone();
    std::thread::Builder::new()
        .name("pocusd-igtl-feed".into())
        .spawn(move || feed(shared, s, min_gap, manual, start_id))
        .context("cannot start the OpenIGTLink thread")?;
    Ok(server)
}

fn feed(
    shared: Arc<Shared>,
    server: Arc<Server>,
    min_gap: Option<Duration>,
    manual: Calibration,
    start_id: Arc<str>,
) {
    let mut last_sent: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        // Frames are cut from the pipeline only while a client is connected and, under
        // `max_fps`, only once the next one is due: no work on the frame path is thrown away.
        let wait = match (min_gap, last_sent) {
            (Some(gap), Some(t)) => gap.saturating_sub(t.elapsed() + Duration::from_micros(500)),
            _ => Duration::ZERO,
        };
        let connected = server.clients() > 0;
        let wanted = connected && wait.is_zero();
        shared.igtl_wanted.store(wanted, Ordering::Relaxed);
        if !wanted {
            // Drop a frame cut before the flag went down; sleep until the next frame is due, or
            // a tick when nobody is connected.
            let _ = shared.igtl.take();
            let nap = if connected {
                wait
            } else {
                crate::publish::TICK
            };
            std::thread::sleep(nap.clamp(Duration::from_millis(1), crate::publish::TICK));
            continue;
        }
        let Some(input) = shared.igtl.take_timeout(crate::publish::TICK) else {
            continue;
        };
        let p = &input.processed;
        let event = super::supervisor::measurement(p, manual, &start_id).event();
        let out = Outgoing {
            seq: p.seq,
            timestamp_us: p.timestamp_us,
            image: Plane {
                width: input.image.width(),
                height: input.image.height(),
                pixels: input.image.as_slice(),
            },
            labels: Plane {
                width: input.labels.width(),
                height: input.labels.height(),
                pixels: input.labels.as_slice(),
            },
            spacing_mm: p.analysis.calibration.mm_per_px.unwrap_or((1.0, 1.0)),
            event: &event,
        };
        match encode_frame(&out) {
            Ok(bytes) => {
                server.broadcast(Arc::from(bytes));
                last_sent = Some(Instant::now());
                last_error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    eprintln!("pocusd: OpenIGTLink: frame {} not sent: {e}", p.seq);
                    last_error = Some(e);
                }
            }
        }
    }
    shared.igtl_wanted.store(false, Ordering::Relaxed);
}
