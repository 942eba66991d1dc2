//! The overlay encoder: one thread takes the newest rendered overlay from the pipeline's slot,
//! encodes it as JPEG once, and publishes it on a `tokio::sync::watch` channel. Every viewer
//! client reads the same bytes and always gets the newest frame: a slow or stalled client only
//! misses frames, it never slows the encoder, the pipeline or the other clients. Must not depend on
//! HTTP or D-Bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use tokio::sync::watch;

use super::{OverlayFrame, TICK};
use crate::slot::Slot;
use std::sync::atomic::AtomicBool;

/// One encoded overlay.
#[derive(Debug, Clone)]
pub struct JpegFrame {
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME µs.
    pub timestamp_us: i64,
    pub width: usize,
    pub height: usize,
    pub bytes: Bytes,
    /// Encoding time, ms.
    pub encode_ms: f64,
}

/// The newest JPEG, if any.
pub type Latest = watch::Receiver<Option<Arc<JpegFrame>>>;

/// Counters of the encoder.
#[derive(Debug, Default)]
pub struct EncoderCounters {
    pub encoded: AtomicU64,
    pub errors: AtomicU64,
}

/// Encodes RGB pixels as a baseline JPEG.
pub fn encode_jpeg(
    rgb: &[u8],
    width: usize,
    height: usize,
    quality: u8,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(width * height / 4);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(
            rgb,
            width as u32,
            height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Starts the encoder thread on the overlays of `slot`; it stops with `stop`.
pub fn start(
    stop: Arc<AtomicBool>,
    slot: Arc<Slot<Arc<OverlayFrame>>>,
    quality: u8,
    tx: watch::Sender<Option<Arc<JpegFrame>>>,
    counters: Arc<EncoderCounters>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pocusd-jpeg".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(ov) = slot.take_timeout(TICK) else {
                    continue;
                };
                let t = std::time::Instant::now();
                match encode_jpeg(&ov.image.data, ov.image.width, ov.image.height, quality) {
                    Ok(bytes) => {
                        counters.encoded.fetch_add(1, Ordering::Relaxed);
                        tx.send_replace(Some(Arc::new(JpegFrame {
                            seq: ov.seq,
                            timestamp_us: ov.timestamp_us,
                            width: ov.image.width,
                            height: ov.image.height,
                            bytes: Bytes::from(bytes),
                            encode_ms: t.elapsed().as_secs_f64() * 1e3,
                        })));
                    }
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn jpeg_decodes_to_the_same_size() {
        let (w, h) = (64, 48);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let jpg = super::encode_jpeg(&rgb, w, h, 80).unwrap();
        let img = image::load_from_memory_with_format(&jpg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (w as u32, h as u32));
    }
}
