//! Automatic region of interest on real screen grabs (../shared/data/dl_track, many with the
//! scanner's furniture): it keeps the labelled structures and drops the flat UI borders.

use pocusd::preprocess::roi::{RoiConfig, RoiDetector};

use crate::common;

/// A pixel is "flat UI" when it equals all four neighbours (synthetic screen colour).
fn flat(img: &pocusd::frame::GrayImage, x: usize, y: usize) -> bool {
    let (w, h) = (img.width(), img.height());
    if x == 0 || y == 0 || x + 1 >= w || y + 1 >= h {
        return false;
    }
    let v = img.get(x, y);
    [
        img.get(x - 1, y),
        img.get(x + 1, y),
        img.get(x, y - 1),
        img.get(x, y + 1),
    ]
    .iter()
    .all(|&n| n == v)
}

#[test]
fn keeps_the_structures_and_drops_the_borders_on_dl_track() {
    let Some(root) = common::real_data_for("ROI on dl_track", &["dl_track"]) else {
        return;
    };
    let dir = root.join("dl_track");
    let mut names: Vec<_> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut det = RoiDetector::new(RoiConfig::default());
    let (mut kept, mut total, mut flat_in, mut flat_all, mut worst, mut below) =
        (0u64, 0u64, 0u64, 0u64, 1.0f64, Vec::new());
    let mut area_fraction = 0.0;
    for name in &names {
        let img = pocusd::imageio::read_gray(&dir.join("images").join(name)).unwrap();
        let mask = pocusd::imageio::read_gray(&dir.join("masks").join(name)).unwrap();
        let r = det.detect(img.view().unwrap());
        let (mut k, mut t) = (0u64, 0u64);
        for y in 0..img.height() {
            for x in 0..img.width() {
                let inside = x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h;
                if mask.get(x, y).unwrap_or(0) > 127 {
                    t += 1;
                    k += inside as u64;
                }
                if flat(&img, x, y) {
                    flat_all += 1;
                    flat_in += inside as u64;
                }
            }
        }
        kept += k;
        total += t;
        area_fraction += (r.w * r.h) as f64 / (img.width() * img.height()) as f64;
        let f = if t > 0 { k as f64 / t as f64 } else { 1.0 };
        worst = worst.min(f);
        if f < 0.98 {
            below.push(format!("{} {:.3} {r:?}", name.to_string_lossy(), f));
        }
    }
    let kept_fraction = kept as f64 / total as f64;
    let flat_excluded = 1.0 - flat_in as f64 / flat_all.max(1) as f64;
    eprintln!(
        "dl_track ROI: {} images, mask pixels kept {:.4} (worst image {:.3}, {} images below 0.98), flat UI pixels excluded {:.4}, mean ROI area {:.3} of the frame",
        names.len(),
        kept_fraction,
        worst,
        below.len(),
        flat_excluded,
        area_fraction / names.len() as f64
    );
    for b in below.iter().take(10) {
        eprintln!("  below 0.98: {b}");
    }
    assert!(
        kept_fraction >= 0.98,
        "kept {kept_fraction:.4} of mask pixels"
    );
    assert!(
        flat_excluded >= 0.9,
        "excluded only {flat_excluded:.4} of the flat UI pixels"
    );
}

#[test]
fn capture_crops_to_the_detected_image_and_tracks_layout_changes() {
    use pocusd::preprocess::roi::{RoiMode, RoiTracker, Tracking};
    use pocusd::synth::{self, PhantomConfig};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cap");
    let o = common::run(&[
        "capture",
        "--source",
        "demo?fps=0&furniture=1",
        "--roi",
        "auto",
        "--frames",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let img = pocusd::imageio::read_gray(&out.join("frame_000001.png")).unwrap();
    let truth = synth::Phantom::new(PhantomConfig {
        furniture: true,
        ..Default::default()
    })
    .image_rect();
    assert_eq!((img.width(), img.height()), (truth.w, truth.h));
    // A "depth change": the same screen at another size moves the image; the tracker follows.
    let mut t = RoiTracker::new(RoiMode::Auto, Tracking::Stream { every: 1000 });
    let a = synth::sample(
        PhantomConfig {
            furniture: true,
            ..Default::default()
        },
        0,
    );
    let b = synth::sample(
        PhantomConfig {
            furniture: true,
            width: 800,
            height: 600,
            ..Default::default()
        },
        0,
    );
    let ra = t.roi_for(a.image.view().unwrap());
    let rb = t.roi_for(b.image.view().unwrap());
    assert_ne!(ra, rb);
    assert_eq!(t.changes, 1);
    assert_eq!(
        RoiMode::parse("10,20,300,200"),
        Some(RoiMode::Fixed(pocusd::frame::Rect {
            x: 10,
            y: 20,
            w: 300,
            h: 200
        }))
    );
    assert_eq!(RoiMode::parse("10,20,0,200"), None);
    // A malformed --roi is a usage error, like every bad flag value.
    let o = common::run(&["config", "check", "--roi", "1,2"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("x,y,w,h"),
        "{}",
        common::stderr(&o)
    );
}

/// Issue 16's ruler on the real grabs, through `pocusd calibrate` as a user runs it: the
/// 512x512 group has no room for a ruler (the image fills the grab) and gets none; every
/// 660x556 grab gets its depth ruler with one spacing for the whole scanner group (the ticks
/// 77.4 px apart); no grab gets a scale that differs from its group's.
#[test]
fn the_ruler_on_dl_track_is_found_per_scanner_and_constant_within_it() {
    let Some(root) = common::real_data_for("ruler on dl_track", &["dl_track"]) else {
        return;
    };
    let o = common::run(&[
        "calibrate",
        "--json",
        root.join("dl_track").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut by_size: std::collections::BTreeMap<String, (usize, Vec<f64>)> = Default::default();
    for line in common::stdout(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(size) = v["size"].as_str() else {
            continue;
        };
        let e = by_size.entry(size.to_string()).or_default();
        e.0 += 1;
        if let Some(s) = v["ruler"]["tick_spacing_px"].as_f64() {
            e.1.push(s);
        }
    }
    let (n512, f512) = &by_size["512x512"];
    assert!(
        *n512 > 100 && f512.is_empty(),
        "512x512: {} of {n512} with a ruler",
        f512.len()
    );
    let (n660, f660) = &by_size["660x556"];
    assert_eq!(f660.len(), *n660, "660x556: a ruler in every grab");
    let (lo, hi) = f660
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(
        (lo - 77.4).abs() < 0.5 && hi - lo < 0.01 * lo,
        "660x556 spacing {lo:.2} to {hi:.2} px"
    );
    eprintln!(
        "ruler: {}",
        by_size
            .iter()
            .map(|(k, (n, f))| format!("{k} {} of {n}", f.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
