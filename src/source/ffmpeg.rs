//! The FFmpeg source (feature `ffmpeg`): anything FFmpeg opens (mp4, avi, mkv, `udp://`, `rtsp://`,
//! `http://`), decoded and converted to GRAY8 with swscale, rows copied out stride by stride.
//!
//! Demuxing and decoding run on a reader thread, so `read` never blocks longer than its timeout.
//! Blocking FFmpeg calls are interruptible: an interrupt callback aborts them when the source is
//! dropped or when no packet arrived for `stall_ms` (a silent UDP stream), and network protocols
//! also get FFmpeg's own `timeout` options. Files are paced at their own frame rate unless
//! `realtime=0`; `loop=1` reopens a file at its end. Options: `loop`, `realtime`, `stall_ms`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use super::{realtime_us, FrameSource, Read, SourceError, SourceKind, SourceSpec};
use crate::frame::{Frame, FramePool, GrayImage, GrayView};

/// Frames skipped after damage when no keyframe comes first (2 s at 30 fps): streams without
/// keyframes (intra refresh) have healed by then.
const TAINT_FRAMES: u32 = 60;

type Msg = Result<Read, SourceError>;

/// Frames from FFmpeg.
pub struct FfmpegSource {
    spec: String,
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
    /// Frames the reader produced while the consumer still held older ones (dropped, newest kept).
    pub dropped: Arc<AtomicI64>,
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        // The reader thread sees this in its interrupt callback and between packets.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn is_network(url: &str) -> bool {
    url.contains("://") && !url.starts_with("file://")
}

impl FfmpegSource {
    /// (loop, realtime, stall_ms) from `spec`'s options, or the option that is wrong.
    pub fn settings(spec: &SourceSpec) -> Result<(bool, bool, i64), SourceError> {
        spec.only(&["loop", "realtime", "stall_ms"])?;
        Ok((
            spec.num("loop", 0u8, 0, 1)? == 1,
            spec.num("realtime", 1u8, 0, 1)? == 1,
            spec.num("stall_ms", 2000i64, 100, 600_000)?,
        ))
    }

    /// Starts reading `ffmpeg:URL[?loop=1&realtime=1&stall_ms=2000]`; errors opening the URL arrive
    /// on the first `read`.
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        let (looping, realtime, stall_ms) = Self::settings(spec)?;
        let SourceKind::Ffmpeg(url) = &spec.kind else {
            return Err(SourceError::BadSpec {
                spec: spec.raw.clone(),
                reason: "not an ffmpeg: spec".into(),
            });
        };
        ff::init().map_err(|e| SourceError::Unavailable {
            kind: "ffmpeg".into(),
            reason: e.to_string(),
        })?;
        ff::util::log::set_level(ff::util::log::Level::Fatal);
        let (tx, rx) = sync_channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicI64::new(0));
        let reader = Reader {
            spec: spec.raw.clone(),
            url: url.clone(),
            looping,
            realtime: realtime && !is_network(url),
            stall_ms,
            stop: stop.clone(),
            dropped: dropped.clone(),
            tx,
            seq: 0,
            pool: FramePool::new(),
            live: realtime || is_network(url),
        };
        std::thread::Builder::new()
            .name("pocusd-ffmpeg".into())
            .spawn(move || reader.run())
            .map_err(|e| SourceError::Open {
                spec: spec.raw.clone(),
                reason: format!("cannot start reader thread: {e}"),
            })?;
        Ok(Self {
            spec: spec.raw.clone(),
            rx,
            stop,
            dropped,
        })
    }
}

impl FrameSource for FfmpegSource {
    fn read(&mut self, timeout: Duration) -> Result<Read, SourceError> {
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => Ok(Read::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(SourceError::Lost {
                spec: self.spec.clone(),
                reason: "reader stopped".into(),
            }),
        }
    }

    fn spec(&self) -> &str {
        &self.spec
    }
}

struct Reader {
    spec: String,
    url: String,
    looping: bool,
    realtime: bool,
    stall_ms: i64,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicI64>,
    tx: SyncSender<Msg>,
    seq: u64,
    /// Frame buffers the processing thread hands back.
    pool: FramePool,
    live: bool,
}

/// Why the reading of one opened input ended.
enum Ended {
    Eof,
    Stopped,
}

impl Reader {
    fn run(mut self) {
        loop {
            let result = self.read_input();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match result {
                Ok(Ended::Eof) if self.looping => continue,
                Ok(Ended::Eof) => {
                    let _ = self.tx.send(Ok(Read::End));
                    return;
                }
                Ok(Ended::Stopped) => return,
                Err(e) => {
                    let _ = self.tx.send(Err(e));
                    return;
                }
            }
        }
    }

    /// Sends a frame. Live input (network, or a file paced in real time) never waits for the
    /// consumer: when it is behind, the frame is dropped and counted. An unpaced file
    /// (`realtime=0`) is read at the consumer's pace, so no frame is lost.
    fn send_frame(&mut self, frame: Frame) -> bool {
        if !self.live {
            return self.tx.send(Ok(Read::Frame(frame))).is_ok();
        }
        match self.tx.try_send(Ok(Read::Frame(frame))) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Reports a corrupt frame (skipped, counted by the consumer).
    fn corrupt(&mut self, reason: String) {
        let _ = self.tx.try_send(Err(SourceError::Corrupt {
            spec: self.spec.clone(),
            reason,
        }));
    }

    fn read_input(&mut self) -> Result<Ended, SourceError> {
        let spec = self.spec.clone();
        let open_err = |reason: String| SourceError::Open {
            spec: spec.clone(),
            reason,
        };
        let lost = |reason: String| SourceError::Lost {
            spec: spec.clone(),
            reason,
        };
        // Interrupt: source dropped, or no progress for stall_ms while a call blocks.
        let last_progress = Arc::new(AtomicI64::new(now_ms()));
        let (stop, progress, stall) = (self.stop.clone(), last_progress.clone(), self.stall_ms);
        let interrupt = move || {
            stop.load(Ordering::SeqCst) || now_ms() - progress.load(Ordering::Relaxed) > stall
        };
        let mut opts = ff::Dictionary::new();
        if is_network(&self.url) {
            let us = (self.stall_ms * 1000).to_string();
            opts.set("timeout", &us); // udp: read timeout; http/rtsp: socket timeout (microseconds)
            opts.set("rw_timeout", &us);
        }
        let mut ictx = ff::format::input_with_interrupt_and_dictionary(&self.url, interrupt, opts)
            .map_err(|e| open_err(format!("{e} (is the file or stream there?)")))?;
        let stream = ictx
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| open_err("no video stream".into()))?;
        let index = stream.index();
        let time_base = f64::from(stream.time_base());
        let ctx = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| open_err(format!("codec parameters: {e}")))?;
        let mut decoder = open_decoder(ctx).map_err(&open_err)?;
        let mut scaler: Option<(
            ff::software::scaling::Context,
            (ff::format::Pixel, u32, u32),
        )> = None;
        let mut decoded = ff::frame::Video::empty();
        let mut gray = ff::frame::Video::empty();
        let start = Instant::now();
        let mut first_pts: Option<f64> = None;
        let mut eof = false;
        let mut dead = false;
        // Frames still to skip after damage (0: none).
        let mut tainted = 0u32;
        while !eof {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Ended::Stopped);
            }
            let mut packet = ff::Packet::empty();
            let read_at = now_ms();
            let result = packet.read(&mut ictx);
            // A read that blocked until the stall interrupt returns what the demuxer still held
            // of a dead input (a killed sender, a pulled cable): those frames were captured up to
            // stall_ms ago and would be published as new, so they are dropped, and a stream
            // that ends this way is not flushed.
            dead |= now_ms() - read_at >= self.stall_ms - self.stall_ms / 8;
            match result {
                // Once interrupted, everything the demuxer still returns is the dead input's tail.
                Ok(()) if dead => continue,
                Ok(()) => {
                    last_progress.store(now_ms(), Ordering::Relaxed);
                    if packet.stream() != index {
                        continue;
                    }
                    if let Err(e) = decoder.send_packet(&packet) {
                        tainted = TAINT_FRAMES;
                        self.corrupt(e.to_string());
                        continue;
                    }
                }
                Err(ff::Error::Eof) => {
                    // The decoder's held frames are flushed only at a real end (a file).
                    if dead {
                        return Ok(Ended::Eof);
                    }
                    eof = true;
                    let _ = decoder.send_eof();
                }
                Err(ff::Error::InvalidData) => {
                    tainted = TAINT_FRAMES;
                    self.corrupt("invalid data in stream".into());
                    continue;
                }
                Err(e) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(Ended::Stopped);
                    }
                    return Err(lost(format!(
                        "{e} (no data for {} ms, or the stream failed)",
                        self.stall_ms
                    )));
                }
            }
            while decoder.receive_frame(&mut decoded).is_ok() {
                let (fmt, w, h) = (decoded.format(), decoded.width(), decoded.height());
                if w == 0 || h == 0 {
                    continue;
                }
                // A frame the decoder patched up after damaged packets (error concealment) looks
                // plausible but holds wrong pixels, and so do the frames predicted from it until
                // the next keyframe (or, for streams without keyframes, TAINT_FRAMES later):
                // skipped and counted, never measured.
                if decoded.is_key() {
                    tainted = 0;
                }
                if decoded.is_corrupt() || decoded.has_decode_errors() {
                    tainted = TAINT_FRAMES;
                    self.corrupt(
                        "the decoder concealed errors in this frame (damaged packets)".into(),
                    );
                    continue;
                }
                if tainted > 0 {
                    tainted -= 1;
                    self.corrupt("predicted from a damaged frame (waiting for a keyframe)".into());
                    continue;
                }
                if scaler.as_ref().is_none_or(|(_, key)| *key != (fmt, w, h)) {
                    let s = ff::software::scaling::Context::get(
                        fmt,
                        w,
                        h,
                        ff::format::Pixel::GRAY8,
                        w,
                        h,
                        ff::software::scaling::Flags::POINT,
                    )
                    .map_err(|e| open_err(format!("cannot convert {fmt:?} to GRAY8: {e}")))?;
                    scaler = Some((s, (fmt, w, h)));
                    // The output frame has the old size: swscale refuses it ("output changed")
                    // for every later frame unless it is allocated afresh.
                    gray = ff::frame::Video::empty();
                }
                let Some((sws, _)) = scaler.as_mut() else {
                    continue;
                };
                if let Err(e) = sws.run(&decoded, &mut gray) {
                    self.corrupt(format!("conversion: {e}"));
                    continue;
                }
                let image = copy_plane(&gray, w as usize, h as usize, &self.pool);
                if self.realtime {
                    if let Some(pts) = decoded.pts().or(decoded.timestamp()) {
                        let t = pts as f64 * time_base;
                        let t0 = *first_pts.get_or_insert(t);
                        let due = Duration::from_secs_f64((t - t0).max(0.0));
                        let elapsed = start.elapsed();
                        if due > elapsed {
                            std::thread::sleep((due - elapsed).min(Duration::from_secs(1)));
                        }
                    }
                }
                let frame = Frame {
                    image,
                    seq: self.seq,
                    timestamp_us: realtime_us(),
                    pool: Some(self.pool.clone()),
                };
                self.seq += 1;
                last_progress.store(now_ms(), Ordering::Relaxed);
                if !self.send_frame(frame) {
                    return Ok(Ended::Stopped);
                }
            }
        }
        Ok(Ended::Eof)
    }
}

/// Opens the video decoder with `err_detect=+crccheck+bitstream+buffer+explode`, so a damaged
/// packet fails at send_packet, in decode order, and the frames predicted from it (B-frames
/// shown before it included) are skipped with it.
fn open_decoder(ctx: ff::codec::context::Context) -> Result<ff::decoder::Video, String> {
    let dec = ctx.decoder();
    let codec = ff::codec::decoder::find(dec.id())
        .ok_or_else(|| format!("no decoder for {:?}", dec.id()))?;
    let mut options = ff::Dictionary::new();
    options.set("err_detect", "+crccheck+bitstream+buffer+explode");
    dec.open_as_with(codec, options)
        .and_then(|o| o.video())
        .map_err(|e| format!("no decoder: {e}"))
}

/// Copies plane 0 of a GRAY8 frame into a packed image, honouring the line stride.
fn copy_plane(
    frame: &ff::frame::Video,
    width: usize,
    height: usize,
    pool: &FramePool,
) -> GrayImage {
    let mut img = pool.image(width, height);
    if let Ok(view) = GrayView::new(width, height, frame.stride(0), frame.data(0)) {
        view.copy_into(&mut img);
    }
    img
}

fn now_ms() -> i64 {
    realtime_us() / 1000
}
