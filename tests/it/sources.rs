//! Frame sources as the capture loop sees them: the demo phantom, image folders with corrupt
//! files, the reconnect policy on a source that disappears and returns, and the capture and
//! bench commands.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pocusd::frame::{Frame, GrayImage};
use pocusd::source::{
    self, CaptureState, FrameSource, Health, HealthConfig, Read, Reconnecting, RetryPolicy,
    SourceError, SourceSpec,
};

use crate::common::{run, stderr, stdout};

fn frames(src: &mut dyn FrameSource, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n && Instant::now() < deadline {
        if let Ok(Read::Frame(f)) = src.read(Duration::from_millis(100)) {
            out.push(f);
        }
    }
    out
}

#[test]
fn demo_source_moves_and_knows_its_truth() {
    let spec = SourceSpec::parse("demo?fps=0&width=320&height=240&seed=5").unwrap();
    let mut src = source::open(&spec).unwrap();
    let fs = frames(src.as_mut(), 5);
    assert_eq!(fs.len(), 5);
    for (i, f) in fs.iter().enumerate() {
        assert_eq!(f.seq, i as u64);
        assert_eq!((f.image.width(), f.image.height()), (320, 240));
        assert!(f.pool.is_some(), "demo frames come from a buffer pool");
    }
    assert!(fs[1].timestamp_us >= fs[0].timestamp_us && fs[0].timestamp_us > 1_600_000_000_000_000);
    assert_ne!(fs[0].image, fs[4].image);
    assert!(src.truth().and_then(|t| t.thickness_px).is_some());
    // A recycled buffer is filled again instead of a new one being allocated.
    let pool = fs[0].pool.clone().unwrap();
    let (allocated, reused) = pool.counts();
    assert_eq!((allocated, reused), (5, 0));
    fs.into_iter().for_each(|f| f.recycle());
    let again = frames(src.as_mut(), 2);
    assert_eq!(again.len(), 2);
    assert_eq!(pool.counts(), (5, 2));
    assert_ne!(again[0].image, again[1].image);
    // Bad options are named.
    let e = source::open(&SourceSpec::parse("demo?fsp=3").unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("fsp"), "{e}");
    let e = source::open(&SourceSpec::parse("demo?task=heart").unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("task=heart"), "{e}");
}

#[test]
fn demo_source_is_paced() {
    let mut src =
        source::open(&SourceSpec::parse("demo?fps=50&width=128&height=96").unwrap()).unwrap();
    let t = Instant::now();
    let fs = frames(src.as_mut(), 11);
    assert_eq!(fs.len(), 11);
    // Ten periods of 20 ms: at least 180 ms (pacing never runs ahead).
    assert!(
        t.elapsed() >= Duration::from_millis(180),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn image_folder_skips_corrupt_files_and_ends() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let img = pocusd::synth::sample(
            pocusd::synth::PhantomConfig {
                width: 64,
                height: 48,
                ..Default::default()
            },
            i,
        )
        .image;
        pocusd::imageio::write_gray(&tmp.path().join(format!("f{i}.png")), &img).unwrap();
    }
    std::fs::write(tmp.path().join("f1b.png"), b"not a png").unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"ignored").unwrap();
    let spec = SourceSpec::parse(&format!("images:{}?fps=0", tmp.path().display())).unwrap();
    let mut src = source::open(&spec).unwrap();
    let (mut got, mut corrupt) = (0, 0);
    loop {
        match src.read(Duration::from_millis(100)) {
            Ok(Read::Frame(_)) => got += 1,
            Ok(Read::End) => break,
            Ok(Read::Timeout) => {}
            Err(SourceError::Corrupt { reason, .. }) => {
                corrupt += 1;
                assert!(reason.contains("f1b.png"), "{reason}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((got, corrupt), (3, 1));
    let looping =
        SourceSpec::parse(&format!("images:{}?fps=0&loop=1", tmp.path().display())).unwrap();
    let mut src = source::open(&looping).unwrap();
    let mut n = 0;
    for _ in 0..12 {
        if let Ok(Read::Frame(_)) = src.read(Duration::from_millis(100)) {
            n += 1;
        }
    }
    assert_eq!(n, 9, "3 of every 4 reads are frames when looping");
    let e = source::open(&SourceSpec::parse("images:/nonexistent/dir").unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(e, SourceError::Open { .. }) && e.to_string().contains("/nonexistent/dir"),
        "{e}"
    );
}

/// A source that fails to open while `AVAILABLE` is 0 and loses its stream after 5 frames.
static AVAILABLE: AtomicU32 = AtomicU32::new(0);
static OPENS: AtomicU32 = AtomicU32::new(0);

struct Flaky {
    left: u32,
    seq: u64,
}

impl FrameSource for Flaky {
    fn read(&mut self, _timeout: Duration) -> Result<Read, SourceError> {
        if self.left == 0 {
            return Err(SourceError::Lost {
                spec: "flaky".into(),
                reason: "cable pulled".into(),
            });
        }
        self.left -= 1;
        self.seq += 1;
        Ok(Read::Frame(Frame {
            image: GrayImage::new(8, 8),
            seq: self.seq,
            timestamp_us: source::realtime_us(),
            pool: None,
        }))
    }
    fn spec(&self) -> &str {
        "flaky"
    }
}

fn open_flaky(_: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    OPENS.fetch_add(1, Ordering::SeqCst);
    if AVAILABLE.load(Ordering::SeqCst) == 0 {
        return Err(SourceError::Open {
            spec: "flaky".into(),
            reason: "no such device".into(),
        });
    }
    Ok(Box::new(Flaky { left: 5, seq: 0 }))
}

#[test]
fn reconnects_with_capped_backoff_and_reports_no_signal() {
    let policy = RetryPolicy {
        first: Duration::from_millis(10),
        max: Duration::from_millis(80),
    };
    let mut src = Reconnecting::with_opener(SourceSpec::parse("demo").unwrap(), policy, open_flaky);
    let mut health = Health::new(HealthConfig {
        no_signal: Duration::from_millis(150),
        ..Default::default()
    });
    let tick = |src: &mut Reconnecting, health: &mut Health, ms: u64| -> u32 {
        let mut n = 0;
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            match src.read(Duration::from_millis(20)) {
                Ok(Read::Frame(f)) => {
                    health.on_frame(&f);
                    n += 1;
                }
                _ => {}
            }
            health.on_tick(src.reconnecting, src.reconnects);
        }
        n
    };
    // Missing at start: no frames, no_signal, and attempts spaced by the backoff (not a spin).
    let cpu0 = crate::common::own_cpu_seconds();
    let wall0 = Instant::now();
    assert_eq!(tick(&mut src, &mut health, 600), 0);
    assert_eq!(health.state(), CaptureState::NoSignal);
    let opens = OPENS.load(Ordering::SeqCst);
    assert!(
        (3..=15).contains(&opens),
        "{opens} open attempts in 600 ms with backoff 10..80 ms"
    );
    let cpu = crate::common::own_cpu_seconds() - cpu0;
    assert!(
        cpu < wall0.elapsed().as_secs_f64() * 0.5,
        "waiting must sleep: {cpu:.3} s CPU"
    );
    // It appears: frames flow, it is lost after 5, comes back by itself.
    AVAILABLE.store(1, Ordering::SeqCst);
    let n = tick(&mut src, &mut health, 600);
    assert!(n >= 10, "frames flow across reconnects: {n}");
    assert!(src.reconnects >= 1);
    assert!(src
        .last_error
        .as_ref()
        .is_some_and(|e| e.to_string().contains("cable pulled")));
}

#[test]
fn capture_and_bench_source_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cap");
    let o = run(&[
        "capture",
        "--source",
        "demo?fps=0&width=200&height=150",
        "--frames",
        "4",
        "--every",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "frame_000000.png",
            "frame_000002.png",
            "frame_000004.png",
            "frame_000006.png"
        ]
    );
    let img = pocusd::imageio::read_gray(&out.join("frame_000002.png")).unwrap();
    assert_eq!((img.width(), img.height()), (200, 150));
    // The captured folder is itself a source.
    let o = run(&[
        "bench",
        "source",
        "--source",
        &format!("images:{}?fps=0", out.display()),
        "--frames",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["frames"], 4);
    assert!(v["fps"].as_f64().unwrap() > 0.0 && v["decode_ms_median"].as_f64().unwrap() > 0.0);
    // A spec that cannot work is a configuration error (exit 78), wherever it comes from.
    let o = run(&["bench", "source", "--source", "bogus:thing"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("bogus:thing"), "{}", stderr(&o));
}

#[cfg(feature = "v4l")]
#[test]
fn a_missing_capture_card_is_a_clear_open_error() {
    let e = source::open(&SourceSpec::parse("v4l2:/dev/video97").unwrap())
        .err()
        .expect("no such device here");
    assert!(matches!(e, SourceError::Open { .. }), "{e}");
    assert!(e.to_string().contains("/dev/video97"), "{e}");
    // Through the reconnecting wrapper it is "no signal" and retried, not fatal.
    let mut src = Reconnecting::new(
        SourceSpec::parse("v4l2:/dev/video97").unwrap(),
        RetryPolicy::default(),
    );
    let mut health = Health::new(HealthConfig {
        no_signal: Duration::from_millis(100),
        ..Default::default()
    });
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(400) {
        assert!(matches!(
            src.read(Duration::from_millis(50)),
            Ok(Read::Timeout)
        ));
        health.on_tick(src.reconnecting, src.reconnects);
    }
    assert_eq!(health.state(), CaptureState::NoSignal);
    assert!(src
        .last_error
        .as_ref()
        .is_some_and(|e| e.to_string().contains("/dev/video97")));
}
