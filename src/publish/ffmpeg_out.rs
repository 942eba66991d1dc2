//! FFmpeg output of the overlay (feature `ffmpeg`): `[output.ffmpeg] url` is a file (`exam.mp4`,
//! `exam.mkv`) or a stream (`udp://127.0.0.1:5000`, sent as MPEG-TS) for recording exams and for
//! players such as VLC or ffplay; codec H.264 (libx264) or MJPEG. Runs on its own thread and takes
//! overlays from its own latest-wins slot, so an encoder that falls behind drops overlay frames
//! (counted) and never measurements or pipeline time. Timestamps are the frames' capture times.
//! Must not depend on HTTP or D-Bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ffmpeg_next as ff;

use super::{OverlayFrame, TICK};
use crate::postprocess::overlay::RgbImage;
use crate::slot::Slot;
use std::sync::atomic::AtomicBool;

/// Video codec of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    Mjpeg,
}

/// Output settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSettings {
    pub url: String,
    pub codec: Codec,
    /// Nominal frame rate written into the stream header (timestamps are the real ones).
    pub fps: u32,
}

/// Counters of the recorder.
#[derive(Debug, Default)]
pub struct RecordCounters {
    pub written: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
}

struct Writer {
    octx: ff::format::context::Output,
    encoder: ff::encoder::Video,
    scaler: ff::software::scaling::Context,
    rgb: ff::frame::Video,
    yuv: ff::frame::Video,
    enc_tb: ff::Rational,
    ost_tb: ff::Rational,
    first_us: Option<i64>,
    last_pts: i64,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Writer {
    fn open(s: &OutputSettings, width: u32, height: u32) -> Result<Self, String> {
        ff::init().map_err(|e| err("cannot initialise FFmpeg", e))?;
        let is_stream = s.url.contains("://") && !s.url.starts_with("file://");
        let mut octx = if is_stream {
            ff::format::output_as(&s.url, "mpegts")
        } else {
            ff::format::output(&s.url)
        }
        .map_err(|e| err(&format!("cannot open output {}", s.url), e))?;
        let (codec_id, pix) = match s.codec {
            Codec::H264 => (ff::codec::Id::H264, ff::format::Pixel::YUV420P),
            Codec::Mjpeg => (ff::codec::Id::MJPEG, ff::format::Pixel::YUVJ420P),
        };
        let codec = ff::encoder::find(codec_id).ok_or_else(|| {
            format!("this FFmpeg has no {codec_id:?} encoder (Debian's has libx264 and mjpeg)")
        })?;
        let global_header = octx
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let mut ost = octx
            .add_stream(codec)
            .map_err(|e| err("cannot add a stream", e))?;
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| err("cannot create the encoder", e))?;
        let enc_tb = ff::Rational(1, 1000);
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(pix);
        enc.set_time_base(enc_tb);
        enc.set_frame_rate(Some(ff::Rational(s.fps as i32, 1)));
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ff::Dictionary::new();
        if s.codec == Codec::H264 {
            // Live: no lookahead, no B-frames, fast.
            opts.set("preset", "veryfast");
            opts.set("tune", "zerolatency");
        } else {
            opts.set("qscale", "4");
        }
        let encoder = enc
            .open_with(opts)
            .map_err(|e| err("cannot open the encoder", e))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(enc_tb);
        octx.write_header()
            .map_err(|e| err(&format!("cannot write the header of {}", s.url), e))?;
        let ost_tb = octx.stream(0).map(|st| st.time_base()).unwrap_or(enc_tb);
        let scaler = ff::software::scaling::Context::get(
            ff::format::Pixel::RGB24,
            width,
            height,
            pix,
            width,
            height,
            ff::software::scaling::Flags::BILINEAR,
        )
        .map_err(|e| err("cannot create the colour converter", e))?;
        Ok(Self {
            octx,
            encoder,
            scaler,
            rgb: ff::frame::Video::new(ff::format::Pixel::RGB24, width, height),
            yuv: ff::frame::Video::new(pix, width, height),
            enc_tb,
            ost_tb,
            first_us: None,
            last_pts: -1,
        })
    }

    fn drain(&mut self) -> Result<(), String> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(self.enc_tb, self.ost_tb);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(|e| err("cannot write a packet", e))?;
        }
        Ok(())
    }

    fn write(&mut self, image: &RgbImage, timestamp_us: i64) -> Result<(), String> {
        let stride = self.rgb.stride(0);
        let row = image.width * 3;
        let data = self.rgb.data_mut(0);
        for y in 0..image.height {
            data[y * stride..y * stride + row].copy_from_slice(&image.data[y * row..(y + 1) * row]);
        }
        self.scaler
            .run(&self.rgb, &mut self.yuv)
            .map_err(|e| err("cannot convert the overlay", e))?;
        let first = *self.first_us.get_or_insert(timestamp_us);
        // Milliseconds since the first frame, strictly increasing.
        let pts = ((timestamp_us - first) / 1000).max(self.last_pts + 1);
        self.last_pts = pts;
        self.yuv.set_pts(Some(pts));
        self.encoder
            .send_frame(&self.yuv)
            .map_err(|e| err("cannot encode", e))?;
        self.drain()
    }

    fn finish(mut self) -> Result<(), String> {
        self.encoder
            .send_eof()
            .map_err(|e| err("cannot flush", e))?;
        self.drain()?;
        self.octx
            .write_trailer()
            .map_err(|e| err("cannot finish the output", e))
    }
}

/// Starts the recorder thread; it finishes the file (trailer) when `stop` is set.
pub fn start(
    stop: Arc<AtomicBool>,
    slot: Arc<Slot<Arc<OverlayFrame>>>,
    settings: OutputSettings,
    counters: Arc<RecordCounters>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pocusd-record".into())
        .spawn(move || {
            let fail = |e: String| {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                *counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e);
            };
            let mut writer: Option<Writer> = None;
            let mut failed_size: Option<(usize, usize)> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(ov) = slot.take_timeout(TICK) else {
                    continue;
                };
                let size = (ov.image.width, ov.image.height);
                if writer.is_none() && failed_size != Some(size) {
                    match Writer::open(&settings, size.0 as u32, size.1 as u32) {
                        Ok(w) => writer = Some(w),
                        Err(e) => {
                            failed_size = Some(size);
                            fail(e);
                        }
                    }
                }
                let Some(w) = writer.as_mut() else { continue };
                if (w.rgb.width() as usize, w.rgb.height() as usize) != size {
                    continue; // a size change mid-recording: frames of the new size are skipped
                }
                match w.write(&ov.image, ov.timestamp_us) {
                    Ok(()) => {
                        counters.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => fail(e),
                }
            }
            if let Some(w) = writer {
                if let Err(e) = w.finish() {
                    fail(e);
                }
            }
        })
}
