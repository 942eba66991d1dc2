//! The FFmpeg source against real files and streams made by the `ffmpeg` command: H.264 mp4 and
//! MJPEG avi decoded frame for frame, truncated and missing files, a refused URL, and a live
//! MPEG-TS stream over UDP that is killed and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pocusd::frame::GrayImage;
use pocusd::source::{
    self, CaptureState, Health, HealthConfig, Read, Reconnecting, RetryPolicy, SourceError,
    SourceSpec,
};
use pocusd::synth::{Phantom, PhantomConfig};

/// Writes `n` moving phantom frames as PNG and returns them.
pub(crate) fn phantom_frames(dir: &Path, n: usize) -> Vec<GrayImage> {
    std::fs::create_dir_all(dir).unwrap();
    let mut p = Phantom::new(PhantomConfig {
        width: 320,
        height: 240,
        ..Default::default()
    });
    (0..n)
        .map(|i| {
            let g = p.geometry_at(i as f64 / 30.0);
            let (mut img, mut mask) = (GrayImage::default(), GrayImage::default());
            p.render(&g, i as u64, &mut img, &mut mask);
            pocusd::imageio::write_gray(&dir.join(format!("f{i:04}.png")), &img).unwrap();
            img
        })
        .collect()
}

/// `n` phantom frames under `dir/frames`, encoded with H.264 (keyframe every `gop`) into
/// `dir/name`; the extension picks the container (`.ts` is MPEG-TS).
pub(crate) fn phantom_clip(dir: &Path, name: &str, n: usize, gop: u32) -> PathBuf {
    phantom_frames(&dir.join("frames"), n);
    let out = dir.join(name);
    let gop = gop.to_string();
    let mut args = vec!["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", gop.as_str()];
    if name.ends_with(".ts") {
        args.extend(["-f", "mpegts"]);
    }
    encode(&dir.join("frames"), &out, &args);
    out
}

pub(crate) fn encode(frames_dir: &Path, out: &Path, codec_args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-framerate", "30", "-i"])
        .arg(frames_dir.join("f%04d.png"))
        .args(codec_args)
        .arg(out)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
}

fn read_all(spec: &str) -> (Vec<GrayImage>, Option<SourceError>) {
    let mut src = source::open(&SourceSpec::parse(spec).unwrap()).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match src.read(Duration::from_millis(200)) {
            Ok(Read::Frame(f)) => out.push(f.image),
            Ok(Read::End) => return (out, None),
            Ok(Read::Timeout) => {}
            Err(SourceError::Corrupt { .. }) => {}
            Err(e) => return (out, Some(e)),
        }
    }
    panic!("{spec}: neither end nor error within 30 s");
}

fn mad(a: &GrayImage, b: &GrayImage) -> f64 {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.as_slice().len() as f64
}

#[test]
fn files_decode_frame_for_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = phantom_frames(&tmp.path().join("frames"), 30);
    let mp4 = tmp.path().join("a.mp4");
    encode(
        &tmp.path().join("frames"),
        &mp4,
        &["-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p"],
    );
    let avi = tmp.path().join("a.avi");
    encode(
        &tmp.path().join("frames"),
        &avi,
        &["-c:v", "mjpeg", "-q:v", "2"],
    );
    for file in [&mp4, &avi] {
        let (got, err) = read_all(&format!("ffmpeg:{}?realtime=0", file.display()));
        assert!(err.is_none(), "{}: {err:?}", file.display());
        assert_eq!(got.len(), 30, "{}", file.display());
        for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
            assert_eq!((g.width(), g.height()), (320, 240));
            let d = mad(g, f);
            assert!(
                d < 6.0,
                "{} frame {i}: mean abs difference {d:.2}",
                file.display()
            );
        }
    }
}

/// Defect (issue 13): a stream whose resolution changed mid-way lost every later frame (the
/// converter's output frame kept the old size). One MPEG-TS stream, 320x240 then 640x480 then
/// 320x240 again (three segments, byte-concatenated as a live stream would carry them): every
/// frame of every size arrives, none is counted corrupt.
#[test]
fn a_resolution_change_inside_a_stream_keeps_every_frame() {
    let tmp = tempfile::tempdir().unwrap();
    phantom_frames(&tmp.path().join("frames"), 20);
    let mut ts = Vec::new();
    for (i, scale) in ["320:240", "640:480", "320:240"].iter().enumerate() {
        let part = tmp.path().join(format!("p{i}.ts"));
        encode(
            &tmp.path().join("frames"),
            &part,
            &[
                "-vf",
                &format!("scale={scale}"),
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "mpegts",
            ],
        );
        ts.extend(std::fs::read(&part).unwrap());
    }
    let file = tmp.path().join("changing.ts");
    std::fs::write(&file, ts).unwrap();
    let mut src =
        source::open(&SourceSpec::parse(&format!("ffmpeg:{}?realtime=0", file.display())).unwrap())
            .unwrap();
    let (mut sizes, mut corrupt) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no end within 60 s");
        match src.read(Duration::from_millis(200)) {
            Ok(Read::Frame(f)) => sizes.push((f.image.width(), f.image.height())),
            Ok(Read::End) => break,
            Ok(Read::Timeout) => {}
            Err(SourceError::Corrupt { .. }) => corrupt += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let count = |s: (usize, usize)| sizes.iter().filter(|&&x| x == s).count();
    assert_eq!(corrupt, 0);
    assert_eq!(
        (count((320, 240)), count((640, 480))),
        (40, 20),
        "{sizes:?}"
    );
    assert_eq!(sizes[25], (640, 480));
    assert_eq!(sizes[59], (320, 240));
}

#[test]
fn broken_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    phantom_frames(&tmp.path().join("frames"), 30);
    let mp4 = tmp.path().join("a.mp4");
    encode(
        &tmp.path().join("frames"),
        &mp4,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    // Truncated mid-file: some frames, then a clean end or a named loss, never a panic.
    let bytes = std::fs::read(&mp4).unwrap();
    let cut = tmp.path().join("cut.mkv");
    let mkv = tmp.path().join("a.mkv");
    encode(
        &tmp.path().join("frames"),
        &mkv,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    let mk = std::fs::read(&mkv).unwrap();
    std::fs::write(&cut, &mk[..mk.len() / 2]).unwrap();
    let (got, err) = read_all(&format!("ffmpeg:{}?realtime=0", cut.display()));
    assert!(
        !got.is_empty() && got.len() < 30,
        "{} frames from half a file",
        got.len()
    );
    if let Some(e) = err {
        assert!(e.to_string().contains("cut.mkv"), "{e}");
    }
    // Truncated mp4 (index at the end is lost): refused at open, named.
    std::fs::write(tmp.path().join("cut.mp4"), &bytes[..bytes.len() / 2]).unwrap();
    let (_, err) = read_all(&format!(
        "ffmpeg:{}?realtime=0",
        tmp.path().join("cut.mp4").display()
    ));
    if let Some(e) = err {
        assert!(e.to_string().contains("cut.mp4"), "{e}");
    }
    let (got, err) = read_all("ffmpeg:/nonexistent/exam.mp4");
    assert!(got.is_empty());
    let e = err.expect("missing file is an error");
    assert!(
        matches!(e, SourceError::Open { .. }) && e.to_string().contains("/nonexistent/exam.mp4"),
        "{e}"
    );
    // Nothing listens on port 9: connection refused, quickly.
    let t = Instant::now();
    let (_, err) = read_all("ffmpeg:http://127.0.0.1:9/live.mp4");
    assert!(matches!(err, Some(SourceError::Open { .. })), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

pub(crate) fn sender(file: &Path, port: u16) -> Child {
    Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-stream_loop", "-1", "-i"])
        .arg(file)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("udp://127.0.0.1:{port}?pkt_size=1316"))
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg sender starts")
}

#[test]
fn live_udp_stream_survives_its_sender_restarting() {
    let tmp = tempfile::tempdir().unwrap();
    let ts = phantom_clip(tmp.path(), "a.mp4", 60, 10);
    let port = 20000 + (std::process::id() % 20000) as u16;
    let spec = SourceSpec::parse(&format!("ffmpeg:udp://127.0.0.1:{port}?stall_ms=400")).unwrap();
    let mut src = Reconnecting::new(
        spec,
        RetryPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_millis(500),
        },
    );
    let no_signal = Duration::from_millis(500);
    let mut health = Health::new(HealthConfig {
        no_signal,
        ..Default::default()
    });
    let mut step = |src: &mut Reconnecting, health: &mut Health| {
        match src.read(Duration::from_millis(50)) {
            Ok(Read::Frame(f)) => health.on_frame(&f),
            Err(SourceError::Corrupt { .. }) => health.on_decode_error(),
            _ => {}
        }
        health.on_tick(src.reconnecting, src.reconnects);
    };
    let wait_for = |src: &mut Reconnecting,
                    health: &mut Health,
                    step: &mut dyn FnMut(&mut Reconnecting, &mut Health),
                    what: &dyn Fn(&Health) -> bool,
                    secs: u64|
     -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            step(src, health);
            if what(health) {
                return Some(t.elapsed());
            }
        }
        None
    };
    let mut tx = sender(&ts, port);
    let frames_before = health.counters().frames;
    let got = wait_for(
        &mut src,
        &mut health,
        &mut step,
        &|h| h.counters().frames >= frames_before + 30,
        30,
    );
    assert!(
        got.is_some(),
        "frames flow from the live stream (state {:?})",
        health.state()
    );
    assert_eq!(health.state(), CaptureState::Streaming);

    // Pull the cable.
    tx.kill().unwrap();
    tx.wait().unwrap();
    let killed = Instant::now();
    // Defect (issue 13): about stall_ms after the sender died the decoder's held frames were
    // flushed and published as new ones. What was in flight arrives at once; nothing later.
    let mut last_frame_after_kill = None;
    let mut step_timed = |src: &mut Reconnecting, health: &mut Health| {
        let before = health.counters().frames;
        step(src, health);
        if health.counters().frames > before {
            last_frame_after_kill = Some(killed.elapsed());
        }
    };
    let t = wait_for(
        &mut src,
        &mut health,
        &mut step_timed,
        &|h| h.state() == CaptureState::NoSignal,
        10,
    )
    .expect("no_signal appears");
    // A stale frame comes when the stall interrupt fires (stall_ms = 400 ms here, observed at
    // 500 ms before the fix); frames in flight at the kill come well before.
    assert!(
        last_frame_after_kill.is_none_or(|d| d < Duration::from_millis(400)),
        "a frame arrived {last_frame_after_kill:?} after the sender died (a stale one)"
    );
    assert!(
        t <= no_signal * 5,
        "no_signal after {t:?} (limit {:?})",
        no_signal * 5
    );
    // Waiting costs little CPU: it sleeps between attempts.
    let (cpu0, wall0) = (crate::common::own_cpu_seconds(), Instant::now());
    wait_for(&mut src, &mut health, &mut step, &|_| false, 3);
    let cpu = crate::common::own_cpu_seconds() - cpu0;
    assert!(
        cpu < wall0.elapsed().as_secs_f64() * 0.3,
        "{cpu:.2} s CPU while waiting {:?}",
        wall0.elapsed()
    );
    assert_eq!(health.state(), CaptureState::NoSignal);

    // Plug it back: streaming resumes by itself.
    let mut tx = sender(&ts, port);
    let frames_now = health.counters().frames;
    let resumed = wait_for(
        &mut src,
        &mut health,
        &mut step,
        &|h| h.counters().frames >= frames_now + 10 && h.state() == CaptureState::Streaming,
        30,
    );
    tx.kill().ok();
    tx.wait().ok();
    assert!(
        resumed.is_some(),
        "streaming resumes (state {:?}, last error {:?})",
        health.state(),
        src.last_error
    );
}

/// A file with damaged packets in the middle (TS packets' payload bytes overwritten): what the
/// decoder refused or flagged, and the frames predicted from it up to the next keyframe, come back
/// as `Corrupt` (counted by the daemon, never measured); every frame delivered is exactly one of
/// the clean file's, and the file ends normally.
#[test]
fn a_file_with_a_broken_frame_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let ts = phantom_clip(tmp.path(), "a.ts", 60, 15);
    let (clean, err) = read_all(&format!("ffmpeg:{}?realtime=0", ts.display()));
    assert!(
        err.is_none() && clean.len() == 60,
        "{err:?} {}",
        clean.len()
    );
    let mut bytes = std::fs::read(&ts).unwrap();
    // 12 packets at the middle of the file: keep each TS header, overwrite the payload.
    let packets = bytes.len() / 188;
    for k in 0..12 {
        let at = (packets / 2 + k) * 188;
        for b in &mut bytes[at + 8..at + 188] {
            *b = b.wrapping_mul(31).wrapping_add(0x5A);
        }
    }
    let broken = tmp.path().join("broken.ts");
    std::fs::write(&broken, &bytes).unwrap();
    let spec = format!("ffmpeg:{}?realtime=0", broken.display());
    let mut src = source::open(&SourceSpec::parse(&spec).unwrap()).unwrap();
    let (mut good, mut corrupt) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no end within 30 s");
        match src.read(Duration::from_millis(200)) {
            Ok(Read::Frame(f)) => good.push(f.image),
            Ok(Read::End) => break,
            Ok(Read::Timeout) => {}
            Err(SourceError::Corrupt { reason, .. }) => {
                corrupt += 1;
                assert!(!reason.is_empty());
            }
            Err(e) => panic!("the damaged file failed instead of skipping: {e}"),
        }
    }
    // Each delivered frame against the clean decode: identical, or altered without a flag.
    let altered = good
        .iter()
        .filter(|g| clean.iter().all(|c| mad(g, c) > 0.5))
        .count();
    eprintln!(
        "broken file: {} frames delivered, {corrupt} reported corrupt, {altered} delivered altered without a decoder flag, of {}",
        good.len(),
        clean.len()
    );
    assert!(corrupt > 0, "nothing reported corrupt");
    assert_eq!(altered, 0, "damaged frames were delivered as good");
    assert!(good.len() + corrupt <= clean.len() + 1);
    for i in 0..15 {
        assert!(
            mad(&good[i], &clean[i]) < 0.5,
            "frame {i} before the damage differs"
        );
    }
    for k in 1..=10 {
        let (g, c) = (&good[good.len() - k], &clean[clean.len() - k]);
        assert!(mad(g, c) < 0.5, "frame -{k} after the damage differs");
    }
}
