//! The V4L2 source (feature `v4l`): capture cards through the v4l crate, mmap streaming. Format
//! negotiation prefers GREY, then YUYV, then MJPG (or the `format=` option); frames are converted
//! by `convert` (which carries the tests, on buffers in the cards' real formats). Kept thin: this
//! machine's kernel has no V4L2, so only the conversions run in CI. Options: `width`, `height`,
//! `fps`, `format`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::convert::{self, PixelFormat};
use super::{realtime_us, FrameSource, Read, SourceError, SourceKind, SourceSpec};
use crate::frame::{Frame, FramePool};

/// A streaming capture device.
pub struct V4l2Source {
    spec: String,
    // Field order matters: the stream must be dropped before the device.
    stream: Stream<'static>,
    _device: Device,
    format: PixelFormat,
    width: usize,
    height: usize,
    bytes_per_line: usize,
    seq: u64,
    /// Frame buffers the processing thread hands back.
    pool: FramePool,
}

fn io_err(spec: &str, e: std::io::Error, what: &str) -> SourceError {
    let reason = format!("{what}: {e}");
    match e.raw_os_error() {
        // ENODEV, EIO, ENXIO: the card went away mid-stream.
        Some(19) | Some(5) | Some(6) => SourceError::Lost {
            spec: spec.into(),
            reason,
        },
        _ => SourceError::Open {
            spec: spec.into(),
            reason,
        },
    }
}

impl V4l2Source {
    /// Checks `spec`'s options and their values without touching a device.
    pub fn check(spec: &SourceSpec) -> Result<(), SourceError> {
        spec.only(&["width", "height", "fps", "format"])?;
        if let Some(f) = spec.options.get("format") {
            let ok = <[u8; 4]>::try_from(f.as_bytes())
                .ok()
                .and_then(|f4| PixelFormat::from_fourcc(&f4))
                .is_some();
            if !ok {
                return Err(SourceError::BadSpec {
                    spec: spec.raw.clone(),
                    reason: format!("format={f}: allowed GREY, YUYV, MJPG"),
                });
            }
        }
        spec.num("width", 640u32, 16, 8192)?;
        spec.num("height", 480u32, 16, 8192)?;
        spec.num("fps", 30u32, 1, 1000)?;
        Ok(())
    }

    /// Opens `v4l2:/dev/videoN[?width=..&height=..&fps=..&format=GREY|YUYV|MJPG]`.
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        Self::check(spec)?;
        let SourceKind::V4l2(path) = &spec.kind else {
            return Err(SourceError::BadSpec {
                spec: spec.raw.clone(),
                reason: "not a v4l2: spec".into(),
            });
        };
        let raw = spec.raw.as_str();
        let dev = Device::with_path(path)
            .map_err(|e| io_err(raw, e, &format!("cannot open {}", path.display())))?;
        let offered: Vec<PixelFormat> = dev
            .enum_formats()
            .map_err(|e| io_err(raw, e, "cannot list formats"))?
            .iter()
            .filter_map(|d| PixelFormat::from_fourcc(&d.fourcc.repr))
            .collect();
        let wanted = match spec.options.get("format") {
            Some(f) => {
                let f4: [u8; 4] = f.as_bytes().try_into().map_err(|_| SourceError::BadSpec {
                    spec: raw.into(),
                    reason: format!("format={f}: allowed GREY, YUYV, MJPG"),
                })?;
                let pf = PixelFormat::from_fourcc(&f4).ok_or_else(|| SourceError::BadSpec {
                    spec: raw.into(),
                    reason: format!("format={f}: allowed GREY, YUYV, MJPG"),
                })?;
                if !offered.contains(&pf) {
                    return Err(SourceError::Open {
                        spec: raw.into(),
                        reason: format!("the device does not offer {f}"),
                    });
                }
                pf
            }
            None => *offered
                .iter()
                .min_by_key(|f| f.preference())
                .ok_or_else(|| SourceError::Open {
                    spec: raw.into(),
                    reason: "the device offers none of GREY, YUYV, MJPG".into(),
                })?,
        };
        let mut fmt = dev
            .format()
            .map_err(|e| io_err(raw, e, "cannot read the format"))?;
        fmt.fourcc = FourCC::new(&wanted.fourcc());
        if spec.options.contains_key("width") {
            fmt.width = spec.num("width", fmt.width, 16, 8192)?;
        }
        if spec.options.contains_key("height") {
            fmt.height = spec.num("height", fmt.height, 16, 8192)?;
        }
        let fmt = dev
            .set_format(&fmt)
            .map_err(|e| io_err(raw, e, "cannot set the format"))?;
        if fmt.fourcc.repr != wanted.fourcc() {
            return Err(SourceError::Open {
                spec: raw.into(),
                reason: format!("the driver refused {:?}", wanted),
            });
        }
        if spec.options.contains_key("fps") {
            let fps = spec.num("fps", 30u32, 1, 1000)?;
            let _ = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps));
        }
        let stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .map_err(|e| io_err(raw, e, "cannot map buffers"))?;
        Ok(Self {
            spec: raw.into(),
            stream,
            _device: dev,
            format: wanted,
            width: fmt.width as usize,
            height: fmt.height as usize,
            bytes_per_line: fmt.stride as usize,
            seq: 0,
            pool: FramePool::new(),
        })
    }
}

impl FrameSource for V4l2Source {
    fn read(&mut self, timeout: Duration) -> Result<Read, SourceError> {
        self.stream
            .set_timeout(timeout.max(Duration::from_millis(1)));
        let (buf, meta) = match self.stream.next() {
            Ok(x) => x,
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return Ok(Read::Timeout)
            }
            Err(e) => return Err(io_err(&self.spec, e, "capture failed")),
        };
        let used = (meta.bytesused as usize).min(buf.len());
        let data = &buf[..if used > 0 { used } else { buf.len() }];
        let mut image = self.pool.image(self.width, self.height);
        let r = match self.format {
            PixelFormat::Grey => convert::grey(
                data,
                self.width,
                self.height,
                self.bytes_per_line.max(self.width),
                &mut image,
            ),
            PixelFormat::Yuyv => convert::yuyv_to_y(
                data,
                self.width,
                self.height,
                self.bytes_per_line.max(2 * self.width),
                &mut image,
            ),
            PixelFormat::Mjpg => convert::mjpeg(data, Some((self.width, self.height)), &mut image),
        };
        r.map_err(|e| SourceError::Corrupt {
            spec: self.spec.clone(),
            reason: e.to_string(),
        })?;
        let frame = Frame {
            image,
            seq: self.seq,
            timestamp_us: realtime_us(),
            pool: Some(self.pool.clone()),
        };
        self.seq += 1;
        Ok(Read::Frame(frame))
    }

    fn spec(&self) -> &str {
        &self.spec
    }
}

/// One device as `pocusd sources` lists it.
#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub card: String,
    pub driver: String,
    pub formats: Vec<FormatInfo>,
}

/// One pixel format with its sizes and rates.
#[derive(Debug, Serialize)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    /// Supported by pocusd (GREY, YUYV, MJPG).
    pub supported: bool,
    pub sizes: Vec<SizeInfo>,
}

/// A frame size and its frame rates.
#[derive(Debug, Serialize)]
pub struct SizeInfo {
    pub width: u32,
    pub height: u32,
    pub fps: Vec<f64>,
}

/// Lists `/dev/video*` capture devices with formats, sizes and rates.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video"))
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| describe(p)).collect()
}

fn describe(path: &Path) -> Option<DeviceInfo> {
    let dev = Device::with_path(path).ok()?;
    let caps = dev.query_caps().ok()?;
    let formats = dev
        .enum_formats()
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            let sizes = dev
                .enum_framesizes(d.fourcc)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|s| s.size.to_discrete())
                .map(|s| {
                    let fps = dev
                        .enum_frameintervals(d.fourcc, s.width, s.height)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| match i.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(f)
                                if f.numerator > 0 =>
                            {
                                Some(f.denominator as f64 / f.numerator as f64)
                            }
                            _ => None,
                        })
                        .collect();
                    SizeInfo {
                        width: s.width,
                        height: s.height,
                        fps,
                    }
                })
                .collect();
            FormatInfo {
                fourcc: String::from_utf8_lossy(&d.fourcc.repr).into_owned(),
                description: d.description.clone(),
                supported: PixelFormat::from_fourcc(&d.fourcc.repr).is_some(),
                sizes,
            }
        })
        .collect();
    Some(DeviceInfo {
        path: path.to_path_buf(),
        card: caps.card,
        driver: caps.driver,
        formats,
    })
}
