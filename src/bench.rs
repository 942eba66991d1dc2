//! The benchmark harness behind `pocusd bench`: CLAHE, one inference, postprocessing with the
//! overlay, a frame source, and the whole daemon on a paced source (with a private `dbus-daemon`
//! when one is installed, the measurement log in a temporary folder and one MJPEG client reading
//! the viewer). Each returns a typed report whose serialisation is the command's `--json` output;
//! figures are printed, never asserted. The pipeline benchmark watches the daemon through a
//! [`daemon::Observer`]. Must not depend on tract or burn directly (models come in through
//! `infer`).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::analyzer::Analyzer;
use crate::daemon::{self, pipeline::Processed, Counts, Observer};
use crate::frame::{GrayImage, GrayView, Rect};
use crate::infer::{InferError, LoadedModel};
use crate::postprocess::overlay::OverlayStyle;
use crate::postprocess::PostprocessConfig;
use crate::preprocess::roi::{RoiMode, Tracking};
use crate::preprocess::{Clahe, ClaheParams, Preprocessor};
use crate::source::{Read, Reconnecting, SourceError};
use crate::stats::{percentile, Percentiles};
use crate::synth;

/// Median and 99th percentile (ms) of `iters` calls of `f`, after a short warm-up.
pub fn time_ms<F: FnMut()>(iters: u32, mut f: F) -> (f64, f64) {
    for _ in 0..(iters / 10).clamp(1, 20) {
        f();
    }
    let mut t = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    (percentile(&mut t, 0.5), percentile(&mut t, 0.99))
}

/// Resident memory of this process, MB (0 where /proc is missing).
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU time of this process (all its threads, living and ended), seconds, from
/// /proc/self/stat (fields 14 and 15, in USER_HZ = 100 ticks a second on Linux).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ")" the fields start at 3 (state): utime is field 14, stime field 15.
    (ticks(14 - 3) + ticks(15 - 3)) / 100.0
}

/// `pocusd bench clahe`.
#[derive(Debug, Clone, Serialize)]
pub struct ClaheBench {
    pub width: usize,
    pub height: usize,
    pub iters: u32,
    pub threads: u32,
    pub threads_used: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// Times CLAHE on `image`.
pub fn clahe(image: GrayView<'_>, params: ClaheParams, threads: u32, iters: u32) -> ClaheBench {
    let n = NonZeroUsize::new(threads as usize).unwrap_or(NonZeroUsize::MIN);
    let mut c = Clahe::new(params).with_threads(n);
    let mut dst = GrayImage::default();
    let (median_ms, p99_ms) = time_ms(iters, || c.apply(image, &mut dst));
    ClaheBench {
        width: image.width(),
        height: image.height(),
        iters,
        threads,
        threads_used: c.threads_for(image.width(), image.height()),
        median_ms,
        p99_ms,
    }
}

/// `pocusd bench infer`.
#[derive(Debug, Clone, Serialize)]
pub struct InferBench {
    pub input: [usize; 4],
    pub threads: u32,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub iters: u32,
}

/// Times one inference of `model` (tract's reused state) on a fixed pattern; `threads` is only
/// reported (the caller set tract's threads before loading).
pub fn infer(model: &mut LoadedModel, threads: u32, iters: u32) -> Result<InferBench, InferError> {
    let shape = model.spec().input_shape();
    let n: usize = shape.iter().product();
    let input: Vec<f32> = (0..n).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
    let mut err = None;
    let (median_ms, p99_ms) = time_ms(iters, || {
        if let Err(e) = model.run(&input) {
            err = Some(e);
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(InferBench {
            input: shape,
            threads,
            median_ms,
            p99_ms,
            iters,
        }),
    }
}

/// `pocusd bench postprocess`.
#[derive(Debug, Clone, Serialize)]
pub struct PostBench {
    pub width: usize,
    pub height: usize,
    pub iters: u32,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// Times postprocessing + overlay on 640x480 phantom frames of the model's task with the model's
/// outputs (computed once; only postprocessing and drawing are timed).
pub fn postprocess(
    model: &mut LoadedModel,
    clahe_threads: NonZeroUsize,
    post: PostprocessConfig,
    style: OverlayStyle,
    iters: u32,
) -> Result<PostBench, crate::analyzer::AnalyzeError> {
    let (fw, fh) = (640, 480);
    let phantom = synth::PhantomConfig {
        width: fw,
        height: fh,
        task: model.spec().task,
        furniture: false,
        seed: 1,
        ..Default::default()
    };
    let frames: Vec<GrayImage> = (0..8).map(|i| synth::sample(phantom, i).image).collect();
    let roi = Rect::full(fw, fh);
    let (w, h) = (model.spec().input_width, model.spec().input_height);
    let mut pre = Preprocessor::new(
        model.spec(),
        RoiMode::Full,
        Tracking::PerImage,
        clahe_threads,
    );
    let mut outputs = Vec::new();
    for f in &frames {
        let input = pre.process(f.view()?)?.to_vec();
        outputs.push(model.run(&input)?.to_vec());
    }
    let mut analyzer = Analyzer::new(
        model,
        RoiMode::Full,
        Tracking::PerImage,
        clahe_threads,
        post,
        style,
    );
    // One full pass so the overlay has an enhanced frame of the right size.
    analyzer.analyse(model, frames[0].view()?)?;
    let sha = model.sha256().to_string();
    let mut k = 0usize;
    let (median_ms, p99_ms) = time_ms(iters, || {
        let i = k % frames.len();
        k += 1;
        analyzer.postprocessor().process(&outputs[i], w, h, roi);
        if let Ok(v) = frames[i].view() {
            analyzer.render_overlay(v, &sha);
        }
    });
    Ok(PostBench {
        width: fw,
        height: fh,
        iters,
        median_ms,
        p99_ms,
    })
}

/// `pocusd bench calibrate`: one look of the ruler calibration (the ROI detector and the ruler)
/// on a phantom frame of one layout.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrateBench {
    pub width: usize,
    pub height: usize,
    pub layout: &'static str,
    pub iters: u32,
    pub median_ms: f64,
    pub p99_ms: f64,
    /// The reading timed (mm per px), or null when the look refused.
    pub mm_per_px: Option<f64>,
}

/// Times one look of the ruler calibration, as a stream takes it at start, on a layout change
/// and every `check_frames` frames: the ROI detector, then the ruler in the margins.
pub fn calibrate(
    width: usize,
    height: usize,
    layout: synth::Layout,
    iters: u32,
) -> Result<CalibrateBench, crate::frame::FrameError> {
    use crate::preprocess::roi::RoiDetector;
    use crate::preprocess::ruler::{RulerConfig, RulerDetector};
    let cfg = synth::PhantomConfig {
        width,
        height,
        furniture: true,
        layout,
        ..Default::default()
    };
    let frame = synth::sample(cfg, 1).image;
    let view = frame.view()?;
    let mut roi = RoiDetector::default();
    let mut ruler = RulerDetector::new(RulerConfig::default());
    let mut mm_per_px = None;
    let (median_ms, p99_ms) = time_ms(iters, || {
        let r = roi.detect(view);
        mm_per_px = ruler.detect(view, r).ok().map(|f| f.mm_per_px);
    });
    Ok(CalibrateBench {
        width,
        height,
        layout: layout.as_str(),
        iters,
        median_ms,
        p99_ms,
        mm_per_px,
    })
}

/// `pocusd bench source`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceBench {
    pub fps: f64,
    pub decode_ms_median: f64,
    pub frames: usize,
    pub source: String,
}

/// Reads `frames` frames from `src` as fast as it delivers them; fails after 10 s without one.
pub fn source(src: &mut Reconnecting, raw: &str, frames: u64) -> anyhow::Result<SourceBench> {
    let mut times = Vec::with_capacity(frames as usize);
    let start = Instant::now();
    let mut idle_since = Instant::now();
    while (times.len() as u64) < frames {
        let t = Instant::now();
        match src.read(Duration::from_millis(500)) {
            Ok(Read::Frame(_)) => {
                times.push(t.elapsed().as_secs_f64() * 1e3);
                idle_since = Instant::now();
            }
            Ok(Read::End) => break,
            Ok(Read::Timeout) => {
                if idle_since.elapsed() > Duration::from_secs(10) {
                    anyhow::bail!(
                        "no frame from {raw} for 10 s ({})",
                        src.last_error
                            .as_ref()
                            .map(|e| e.to_string())
                            .unwrap_or_default()
                    );
                }
            }
            Err(SourceError::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = times.len();
    Ok(SourceBench {
        fps: if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        },
        decode_ms_median: percentile(&mut times, 0.5),
        frames: n,
        source: raw.to_string(),
    })
}

/// What `pocusd bench pipeline` runs.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    pub config_file: Option<PathBuf>,
    /// Source spec; its `fps` option is replaced by `fps`.
    pub source: String,
    /// 0: unpaced.
    pub fps: f64,
    /// Processed frames to measure after the warm-up second.
    pub frames: u64,
    pub model: Option<PathBuf>,
    /// Extra models on the same frames.
    pub extra_models: Vec<PathBuf>,
}

/// p50 and p99 of one stage, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageMs {
    pub p50: f64,
    pub p99: f64,
}

/// `pocusd bench pipeline --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineBench {
    pub fps: f64,
    pub dropped: u64,
    pub dropped_fraction: f64,
    /// Capture timestamp to publication.
    pub latency_ms: Percentiles,
    /// capture, preprocess, infer, postprocess, publish.
    pub stages_ms: std::collections::BTreeMap<&'static str, StageMs>,
    /// Resident memory at the last measured frame (while running).
    pub rss_mb: f64,
    pub rss_mb_after_1s: f64,
    /// Process CPU time (user + system, every thread: capture, processing, D-Bus, viewer and its
    /// client, the log) per measured frame.
    pub cpu_ms_per_frame: f64,
    pub frames: u64,
    pub seconds: f64,
    pub source: String,
    pub source_fps: f64,
    pub mjpeg_client_frames: u64,
    pub jpeg_encoded: u64,
    pub dbus: bool,
}

/// The stage names, in `Processed` order.
pub const STAGES: [&str; 5] = ["capture", "preprocess", "infer", "postprocess", "publish"];

#[derive(Debug, Default)]
struct Collected {
    warm_at: Option<(Instant, Counts, f64)>,
    last: Option<(Instant, Counts, f64)>,
    rss_at_1s: f64,
    rss_last: f64,
    end_to_end_ms: Vec<f64>,
    stages_ms: [Vec<f64>; 5],
}

/// Collects latencies after a warm-up second.
struct Collector {
    started: Instant,
    http: Mutex<Option<std::sync::mpsc::Sender<std::net::SocketAddr>>>,
    data: Mutex<Collected>,
}

impl Observer for Collector {
    fn http_listening(&self, addr: std::net::SocketAddr) {
        if let Some(tx) = self.http.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(addr);
        }
    }

    fn processed(&self, r: &Processed, now_us: i64, counts: Counts) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if d.warm_at.is_none() {
            if self.started.elapsed() < Duration::from_secs(1) {
                return;
            }
            d.warm_at = Some((now, counts, cpu_seconds()));
            d.rss_at_1s = rss_mb();
            return;
        }
        d.end_to_end_ms.push(r.end_to_end_ms(now_us));
        for (v, x) in d.stages_ms.iter_mut().zip(r.stage_ms(now_us)) {
            v.push(x);
        }
        d.last = Some((now, counts, cpu_seconds()));
        // Sampled while running, every 64 frames and at the end (the last sample wins).
        if d.end_to_end_ms.len() % 64 == 1 {
            d.rss_last = rss_mb();
        }
    }

    fn stopping(&self, _counts: Counts) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        if d.last.is_some() {
            d.rss_last = rss_mb();
        }
    }
}

/// A private session bus, if dbus-daemon is installed: (child, address).
pub fn private_bus() -> Option<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let out = child.stdout.take()?;
    std::io::BufReader::new(out).read_line(&mut line).ok()?;
    let addr = line.trim().to_string();
    if addr.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some((child, addr))
}

/// Reads the viewer's MJPEG stream at `addr` and counts its parts until `stop`.
pub fn mjpeg_reader(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.write_all(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n");
        let needle = b"--pocusdframe";
        let (mut parts, mut buf, mut carry) = (0u64, vec![0u8; 1 << 16], Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    carry.extend_from_slice(&buf[..n]);
                    parts += carry.windows(needle.len()).filter(|w| w == needle).count() as u64;
                    let keep = carry.len().saturating_sub(needle.len() - 1);
                    carry.drain(..keep);
                }
                Err(_) => continue,
            }
        }
        parts
    })
}

/// The source spec with its `fps` option set.
fn paced_spec(spec: &str, fps: f64) -> anyhow::Result<String> {
    let mut s = crate::source::SourceSpec::parse(spec)?;
    s.options.insert("fps".into(), format!("{fps}"));
    Ok(format!(
        "{}?{}",
        s.raw.split('?').next().unwrap_or("demo"),
        s.options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    ))
}

/// Runs the whole daemon (private bus when `dbus-daemon` exists, a temporary state folder, the
/// viewer on a free loopback port with one MJPEG client reading it) on `source` until it has
/// processed `frames`, watched by `observer`, which announces the viewer's address on `rx`'s
/// sender. Returns (MJPEG parts the client got, whether D-Bus was used).
fn run_watched(
    opts: &PipelineOptions,
    source: &str,
    frames: u64,
    observer: Arc<dyn Observer>,
    rx: std::sync::mpsc::Receiver<std::net::SocketAddr>,
) -> anyhow::Result<(u64, bool)> {
    let bus = private_bus();
    let dbus_used = bus.is_some();
    let state = std::env::temp_dir().join(format!("pocusd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    // The benchmark must not touch the system's state folder or port 8080.
    std::env::set_var("POCUSD__STORAGE__DIR", &state);
    std::env::set_var("POCUSD__HTTP__LISTEN", "127.0.0.1:0");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        rx.recv_timeout(Duration::from_secs(120))
            .ok()
            .map(|addr| mjpeg_reader(addr, stop2))
    });
    let result = daemon::run(daemon::RunOptions {
        config_file: opts.config_file.clone(),
        source: Some(source.to_string()),
        model: opts.model.clone(),
        extra_models: opts.extra_models.clone(),
        frames: Some(frames),
        session_bus: true,
        no_dbus: bus.is_none(),
        bus_address: bus.as_ref().map(|b| b.1.clone()),
        observer: Some(observer),
        ..Default::default()
    });
    stop.store(true, Ordering::Relaxed);
    let parts = reader
        .join()
        .ok()
        .flatten()
        .and_then(|h| h.join().ok())
        .unwrap_or(0);
    if let Some((mut child, _)) = bus {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&state);
    result?;
    Ok((parts, dbus_used))
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A figure at the start and at the end of a soak.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Span<T> {
    pub start: T,
    pub end: T,
}

/// `pocusd bench soak --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakBench {
    /// Frames processed after the warm-up.
    pub frames: u64,
    pub fps: f64,
    pub dropped: u64,
    pub rss_mb: Span<f64>,
    pub fds: Span<usize>,
    pub threads: Span<usize>,
    pub warmup_frames: u64,
    pub mjpeg_client_frames: u64,
    pub dbus: bool,
    pub source: String,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    counts: Counts,
    rss_mb: f64,
    fds: usize,
    threads: usize,
}

impl Sample {
    fn now(counts: Counts) -> Self {
        Self {
            at: Instant::now(),
            counts,
            rss_mb: rss_mb(),
            fds: open_fds(),
            threads: threads(),
        }
    }
}

/// Samples resources after the warm-up and at the last frames.
struct SoakWatch {
    warmup: u64,
    total: u64,
    http: Mutex<Option<std::sync::mpsc::Sender<std::net::SocketAddr>>>,
    samples: Mutex<(Option<Sample>, Option<Sample>)>,
}

impl Observer for SoakWatch {
    fn http_listening(&self, addr: std::net::SocketAddr) {
        if let Some(tx) = self.http.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(addr);
        }
    }

    fn processed(&self, _r: &Processed, _now_us: i64, counts: Counts) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_none() && counts.processed >= self.warmup {
            s.0 = Some(Sample::now(counts));
        } else if s.0.is_some()
            && (counts.processed % 1000 == 0 || counts.processed + 1 >= self.total)
        {
            // While running, never after shutdown began: the last sample wins.
            s.1 = Some(Sample::now(counts));
        }
    }
}

/// `pocusd bench soak`: the full daemon on the unpaced source for `frames` processed frames after
/// a warm-up of 1,000 (the MJPEG client connected), with RSS, descriptors and threads sampled
/// after the warm-up and at the end.
pub fn soak(opts: &PipelineOptions) -> anyhow::Result<SoakBench> {
    const WARMUP: u64 = 1000;
    let raw = paced_spec(&opts.source, 0.0)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let total = WARMUP + opts.frames;
    let watch = Arc::new(SoakWatch {
        warmup: WARMUP,
        total,
        http: Mutex::new(Some(tx)),
        samples: Mutex::new((None, None)),
    });
    let (mjpeg_client_frames, dbus) = run_watched(opts, &raw, total, watch.clone(), rx)?;
    let (a, b) = *watch.samples.lock().unwrap_or_else(|p| p.into_inner());
    let (Some(a), Some(b)) = (a, b) else {
        anyhow::bail!("the soak processed fewer than {} frames", WARMUP + 1);
    };
    let frames = b.counts.processed - a.counts.processed;
    Ok(SoakBench {
        frames,
        fps: frames as f64 / (b.at - a.at).as_secs_f64().max(1e-9),
        dropped: b.counts.dropped - a.counts.dropped,
        rss_mb: Span {
            start: a.rss_mb,
            end: b.rss_mb,
        },
        fds: Span {
            start: a.fds,
            end: b.fds,
        },
        threads: Span {
            start: a.threads,
            end: b.threads,
        },
        warmup_frames: WARMUP,
        mjpeg_client_frames,
        dbus,
        source: raw,
    })
}

/// Runs the whole daemon on the paced source and reports what it did after the first second.
/// The daemon's state folder is a temporary one and the viewer listens on a free loopback port.
pub fn pipeline(opts: &PipelineOptions) -> anyhow::Result<PipelineBench> {
    let raw = paced_spec(&opts.source, opts.fps)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let collector = Arc::new(Collector {
        started: Instant::now(),
        http: Mutex::new(Some(tx)),
        data: Mutex::new(Collected::default()),
    });
    let frames = opts.frames + (opts.fps.max(1.0) as u64);
    let (mjpeg_client_frames, dbus_used) = run_watched(opts, &raw, frames, collector.clone(), rx)?;
    let mut d = std::mem::take(&mut *collector.data.lock().unwrap_or_else(|p| p.into_inner()));
    let (Some((t0, c0, cpu0)), Some((t1, c1, cpu1))) = (d.warm_at, d.last) else {
        anyhow::bail!("the pipeline processed no frame after its warm-up second");
    };
    let frames = c1.processed - c0.processed;
    let dropped = c1.dropped - c0.dropped;
    let seconds = (t1 - t0).as_secs_f64();
    let offered = frames + dropped;
    let mut stages_ms = std::collections::BTreeMap::new();
    for (name, v) in STAGES.iter().zip(d.stages_ms.iter_mut()) {
        stages_ms.insert(
            *name,
            StageMs {
                p50: percentile(v, 0.5),
                p99: percentile(v, 0.99),
            },
        );
    }
    Ok(PipelineBench {
        fps: frames as f64 / seconds.max(1e-9),
        dropped,
        dropped_fraction: if offered > 0 {
            dropped as f64 / offered as f64
        } else {
            0.0
        },
        latency_ms: Percentiles::of(&mut d.end_to_end_ms),
        stages_ms,
        rss_mb: d.rss_last,
        rss_mb_after_1s: d.rss_at_1s,
        cpu_ms_per_frame: if frames > 0 {
            (cpu1 - cpu0) * 1e3 / frames as f64
        } else {
            0.0
        },
        frames,
        seconds,
        source: raw,
        source_fps: opts.fps,
        mjpeg_client_frames,
        jpeg_encoded: c1.jpeg_encoded,
        dbus: dbus_used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let a = cpu_seconds();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = cpu_seconds();
        assert!(b - a >= 0.1, "{a} -> {b}");
        assert!(rss_mb() > 0.0);
    }
}
