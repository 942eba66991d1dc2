//! Capture health: the state a clinician and a supervisor see (streaming, no signal, frozen,
//! reconnecting) and the counters behind it. Fed by the capture loop with frames, errors and
//! ticks; owns a subsampled copy of the previous frame for the freeze test. No I/O.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frame::Frame;

/// Capture states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureState {
    /// No frame yet since start.
    Starting,
    /// Frames arrive and change.
    Streaming,
    /// No frame for `no_signal` (cable pulled, stream silent, device gone).
    NoSignal,
    /// Frames arrive but do not change (the scanner's freeze button).
    Frozen,
    /// Waiting to reopen a lost source.
    Reconnecting,
}

impl CaptureState {
    /// The published name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CaptureState::Starting => "starting",
            CaptureState::Streaming => "streaming",
            CaptureState::NoSignal => "no_signal",
            CaptureState::Frozen => "frozen",
            CaptureState::Reconnecting => "reconnecting",
        }
    }
}

/// Thresholds (the `[source]` config keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// `source.no_signal_ms`.
    pub no_signal: Duration,
    /// `source.frozen_frames`: consecutive unchanged frames before `frozen`.
    pub frozen_frames: u32,
    /// `source.frozen_tolerance`: mean absolute difference (grey levels) under which a frame is unchanged.
    pub frozen_tolerance: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            no_signal: Duration::from_millis(1000),
            frozen_frames: 30,
            frozen_tolerance: 1.0,
        }
    }
}

/// Counters and state.
#[derive(Debug, Clone, Serialize)]
pub struct HealthCounters {
    pub state: CaptureState,
    pub frames: u64,
    pub decode_errors: u64,
    pub format_changes: u64,
    pub reconnects: u64,
}

/// The health tracker.
#[derive(Debug)]
pub struct Health {
    cfg: HealthConfig,
    counters: HealthCounters,
    last_frame_at: Option<Instant>,
    started: Instant,
    unchanged_run: u32,
    /// Every 4th pixel of every 4th row of the previous frame.
    prev: Vec<u8>,
    prev_size: (usize, usize),
}

const STEP: usize = 4;

impl Health {
    /// A tracker in `starting`.
    pub fn new(cfg: HealthConfig) -> Self {
        Self {
            cfg,
            counters: HealthCounters {
                state: CaptureState::Starting,
                frames: 0,
                decode_errors: 0,
                format_changes: 0,
                reconnects: 0,
            },
            last_frame_at: None,
            started: Instant::now(),
            unchanged_run: 0,
            prev: Vec::new(),
            prev_size: (0, 0),
        }
    }

    /// The current counters and state.
    pub fn counters(&self) -> &HealthCounters {
        &self.counters
    }

    /// The current state.
    pub fn state(&self) -> CaptureState {
        self.counters.state
    }

    /// A frame arrived.
    pub fn on_frame(&mut self, frame: &Frame) {
        let (w, h) = (frame.image.width(), frame.image.height());
        self.counters.frames += 1;
        self.last_frame_at = Some(Instant::now());
        let px = frame.image.as_slice();
        if (w, h) != self.prev_size {
            if self.prev_size != (0, 0) {
                self.counters.format_changes += 1;
            }
            self.prev_size = (w, h);
            self.prev.clear();
            self.unchanged_run = 0;
            for y in (0..h).step_by(STEP) {
                self.prev
                    .extend(px[y * w..(y + 1) * w].iter().step_by(STEP));
            }
        } else {
            let (mut sum, mut n) = (0u64, 0u64);
            let mut i = 0;
            for y in (0..h).step_by(STEP) {
                for v in px[y * w..(y + 1) * w].iter().step_by(STEP) {
                    if let Some(p) = self.prev.get_mut(i) {
                        sum += (*p as i32 - *v as i32).unsigned_abs() as u64;
                        *p = *v;
                        n += 1;
                    }
                    i += 1;
                }
            }
            let mad = if n > 0 { sum as f64 / n as f64 } else { 0.0 };
            if mad < self.cfg.frozen_tolerance {
                self.unchanged_run = self.unchanged_run.saturating_add(1);
            } else {
                self.unchanged_run = 0;
            }
        }
        self.counters.state = if self.unchanged_run >= self.cfg.frozen_frames {
            CaptureState::Frozen
        } else {
            CaptureState::Streaming
        };
    }

    /// A frame could not be decoded.
    pub fn on_decode_error(&mut self) {
        self.counters.decode_errors += 1;
    }

    /// Called on every loop tick (with or without a frame): ages the state.
    pub fn on_tick(&mut self, reconnecting: bool, reconnects: u64) {
        self.counters.reconnects = reconnects;
        let since = self.last_frame_at.unwrap_or(self.started).elapsed();
        if since >= self.cfg.no_signal {
            // Silence longer than the limit is "no signal", whether or not a reconnect is pending.
            self.counters.state = CaptureState::NoSignal;
        } else if reconnecting {
            self.counters.state = CaptureState::Reconnecting;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::GrayImage;

    fn frame(v: u8, noise: u8) -> Frame {
        let data = (0..64 * 48)
            .map(|i| v.wrapping_add(((i * 7) % (noise as usize + 1)) as u8))
            .collect();
        Frame {
            image: GrayImage::from_vec(64, 48, data).unwrap(),
            seq: 0,
            timestamp_us: 0,
            pool: None,
        }
    }

    #[test]
    fn noisy_still_frames_become_frozen_and_moving_ones_do_not() {
        let cfg = HealthConfig {
            no_signal: Duration::from_secs(10),
            frozen_frames: 5,
            frozen_tolerance: 2.0,
        };
        let mut h = Health::new(cfg);
        // Capture noise of about 1 grey level alternating: still "unchanged".
        for i in 0..5 {
            h.on_frame(&frame(100, (i % 2) as u8));
            assert_eq!(h.state(), CaptureState::Streaming);
        }
        h.on_frame(&frame(100, 1));
        assert_eq!(h.state(), CaptureState::Frozen);
        h.on_frame(&frame(140, 0));
        assert_eq!(h.state(), CaptureState::Streaming);
    }

    #[test]
    fn silence_is_no_signal() {
        let cfg = HealthConfig {
            no_signal: Duration::from_millis(20),
            ..Default::default()
        };
        let mut h = Health::new(cfg);
        h.on_frame(&frame(1, 0));
        h.on_tick(false, 0);
        assert_eq!(h.state(), CaptureState::Streaming);
        std::thread::sleep(Duration::from_millis(30));
        h.on_tick(false, 0);
        assert_eq!(h.state(), CaptureState::NoSignal);
        h.on_frame(&frame(50, 0));
        assert_eq!(h.state(), CaptureState::Streaming);
    }
}
