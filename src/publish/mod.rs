//! Everything that leaves the daemon: the one measurement record and its encoders
//! ([`measurement`]: the D-Bus dictionary, the log line, the Server-Sent Event, a snapshot's
//! `measurement.json`), the D-Bus object ([`dbus`]), the HTTP viewer with MJPEG, events and
//! metrics ([`http`]), the JPEG encoder thread ([`jpeg`]), the FFmpeg output ([`ffmpeg_out`]), the OpenIGTLink server ([`igtl`]) and
//! the `pocusd status` client ([`status`]). Outputs own no daemon state: they read snapshots the
//! supervisor publishes and send it [`crate::daemon::command::Command`]s. Must not depend on the
//! pipeline's internals (preprocessing, inference) or on training.

pub mod dbus;
#[cfg(feature = "ffmpeg")]
pub mod ffmpeg_out;
pub mod http;
pub mod igtl;
pub mod jpeg;
pub mod measurement;
pub mod status;
pub mod tls;

use std::time::Duration;

use crate::postprocess::overlay::RgbImage;

/// How long an output thread waits for input before it checks whether to stop.
pub const TICK: Duration = Duration::from_millis(100);

/// The overlay of one processed frame, for the encoders.
#[derive(Debug)]
pub struct OverlayFrame {
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME µs.
    pub timestamp_us: i64,
    pub image: RgbImage,
}
