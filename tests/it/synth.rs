//! The phantom: its truth agrees with its own mask (measured here by an independent, simple
//! method), it is deterministic, and `pocusd synth` writes a usable dataset.

use pocusd::frame::GrayImage;
use pocusd::model::Task;
use pocusd::synth::{self, Phantom, PhantomConfig};

use crate::common;

/// Vertical runs of mask pixels in column `x`: (first row, last row) of each run.
fn runs(mask: &GrayImage, x: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for y in 0..mask.height() {
        let on = mask.get(x, y) == Some(255);
        match (on, start) {
            (true, None) => start = Some(y),
            (false, Some(s)) => {
                out.push((s, y - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, mask.height() - 1));
    }
    out
}

#[test]
fn aponeurosis_truth_matches_the_mask() {
    for (i, furniture) in [(0u64, false), (1, true), (2, false), (3, true)] {
        let cfg = PhantomConfig {
            depth_mm: 40.0,
            width: 640,
            height: 480,
            task: Task::Aponeurosis,
            furniture,
            seed: 11,
            ..Default::default()
        };
        let s = synth::sample(cfg, i);
        let truth = s.truth.thickness_px.unwrap();
        let angle = s.truth.band_angle_deg.unwrap().to_radians();
        // At the image's centre column, the vertical gap between the bands' inner edges, projected
        // onto the bands' normal, is the perpendicular thickness.
        let r = s.geometry.image;
        let x = r.x + r.w / 2;
        let bands = runs(&s.mask, x);
        assert_eq!(bands.len(), 2, "two bands at column {x}: {bands:?}");
        let gap_px = (bands[1].0 as f64 - bands[0].1 as f64 - 1.0) * angle.cos();
        assert!(
            (gap_px - truth).abs() <= 1.5,
            "sample {i}: mask gap {gap_px:.2} vs truth {truth:.2}"
        );
        assert!(truth > 40.0, "a visible muscle: {truth}");
    }
}

#[test]
fn region_truth_matches_the_mask() {
    for i in 0..4 {
        let cfg = PhantomConfig {
            depth_mm: 40.0,
            width: 800,
            height: 540,
            task: Task::Region,
            furniture: i % 2 == 1,
            seed: 3,
            ..Default::default()
        };
        let s = synth::sample(cfg, i);
        let area = s.mask.as_slice().iter().filter(|&&v| v == 255).count() as f64;
        let truth = s.truth.area_px.unwrap();
        assert!(
            (area - truth).abs() / truth < 0.01,
            "sample {i}: mask area {area} vs truth {truth:.1}"
        );
        let c = s.truth.circumference_px.unwrap();
        let (a, b) = (s.geometry.semi_a_px, s.geometry.semi_b_px);
        assert!(
            c > std::f64::consts::PI * 2.0 * b && c < std::f64::consts::PI * 2.0 * a,
            "{c} between circles of radius {b} and {a}"
        );
    }
}

#[test]
fn moving_sequence_changes_smoothly() {
    let p = Phantom::new(PhantomConfig::default());
    let task = Task::Aponeurosis;
    let mut last = p.geometry_at(0.0).truth(task).thickness_px.unwrap();
    let mut moved = 0.0;
    for n in 1..300 {
        let t = p
            .geometry_at(n as f64 / 30.0)
            .truth(task)
            .thickness_px
            .unwrap();
        assert!(
            (t - last).abs() < 1.0,
            "frame {n}: thickness jumps {last} -> {t}"
        );
        moved += (t - last).abs();
        last = t;
    }
    assert!(moved > 5.0, "the sequence moves ({moved} px over 10 s)");
}

#[test]
fn furniture_surrounds_the_image() {
    let cfg = PhantomConfig {
        furniture: true,
        ..Default::default()
    };
    let s = synth::sample(cfg, 0);
    let r = s.geometry.image;
    assert!(r.x > 0 && r.y > 0 && r.x + r.w < 640 && r.y + r.h < 480);
    // Mask never outside the image area.
    for y in 0..480 {
        for x in 0..640 {
            if s.mask.get(x, y) == Some(255) {
                assert!(x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h);
            }
        }
    }
}

#[test]
fn synth_command_writes_a_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    let o = common::run(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "3",
        "--task",
        "region",
        "--seed",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(common::stdout(&o).trim()).unwrap();
    assert_eq!(summary["count"], 3);
    let csv = std::fs::read_to_string(out.join("truth.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("filename,task,"));
    for i in 0..3 {
        let name = format!("synth_{i:05}.png");
        let img = pocusd::imageio::read_gray(&out.join("images").join(&name)).unwrap();
        let mask = pocusd::imageio::read_gray(&out.join("masks").join(&name)).unwrap();
        assert_eq!((img.width(), img.height()), (640, 480));
        assert_eq!((mask.width(), mask.height()), (640, 480));
        assert!(mask.as_slice().iter().all(|&v| v == 0 || v == 255));
        let row: Vec<&str> = lines[i + 1].split(',').collect();
        assert_eq!(row[0], name);
        let area: f64 = row[8].parse().unwrap();
        let mask_area = mask.as_slice().iter().filter(|&&v| v == 255).count() as f64;
        assert!((area - mask_area).abs() / area < 0.01);
    }
    // Same seed, same bytes.
    let again = tmp.path().join("again");
    let o = common::run(&[
        "synth",
        "--out",
        again.to_str().unwrap(),
        "--count",
        "3",
        "--task",
        "region",
        "--seed",
        "4",
    ]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(out.join("images/synth_00002.png")).unwrap(),
        std::fs::read(again.join("images/synth_00002.png")).unwrap()
    );
}
