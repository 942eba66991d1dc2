//! CLAHE against OpenCV: committed golden files (quick), live OpenCV on phantom, noise and real
//! images (the test command), and property tests of the invariants.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use pocusd::frame::GrayImage;
use pocusd::imageio;
use pocusd::model::Task;
use pocusd::preprocess::{Clahe, ClaheParams};
use pocusd::synth::{self, PhantomConfig, SplitMix64};
use proptest::prelude::*;

use crate::common;

fn equalise(img: &GrayImage, clip: f64, tx: usize, ty: usize, threads: usize) -> GrayImage {
    let params = ClaheParams::new(clip, tx, ty).expect("valid params");
    // One pixel per thread: the threaded path runs whenever more than one thread is asked for.
    let mut clahe = Clahe::new(params)
        .with_threads(NonZeroUsize::new(threads).unwrap())
        .with_pixels_per_thread(1);
    let mut out = GrayImage::default();
    clahe.apply(img.view().unwrap(), &mut out);
    out
}

fn first_difference(a: &GrayImage, b: &[u8]) -> Option<(usize, usize, u8, u8)> {
    let w = a.width();
    a.as_slice()
        .iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i % w, i / w, *x, *y))
}

#[test]
fn matches_committed_opencv_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clahe");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "manifest lists {} cases", cases.len());
    for case in cases {
        let input = imageio::read_gray(&dir.join(case["input"].as_str().unwrap())).unwrap();
        let expected = imageio::read_gray(&dir.join(case["output"].as_str().unwrap())).unwrap();
        let clip = case["clip_limit"].as_f64().unwrap();
        let tiles = case["tiles"].as_array().unwrap();
        let (tx, ty) = (
            tiles[0].as_u64().unwrap() as usize,
            tiles[1].as_u64().unwrap() as usize,
        );
        for threads in [1, 2] {
            let got = equalise(&input, clip, tx, ty, threads);
            assert_eq!(
                first_difference(&got, expected.as_slice()),
                None,
                "case {case} (threads {threads}): first differing pixel (x, y, ours, OpenCV)"
            );
        }
    }
}

/// Images for the live comparison: phantom frames of odd sizes, noise, degenerate sizes.
fn generated_images() -> Vec<(String, GrayImage)> {
    let mut out = Vec::new();
    let sizes = [
        (640, 480, true),
        (333, 257, false),
        (97, 61, true),
        (1234, 688, false),
        (129, 1001, false),
    ];
    for (i, (w, h, furniture)) in sizes.into_iter().enumerate() {
        for task in [Task::Aponeurosis, Task::Region] {
            let cfg = PhantomConfig {
                depth_mm: 40.0,
                width: w,
                height: h,
                task,
                furniture,
                seed: 7 + i as u64,
                ..Default::default()
            };
            out.push((
                format!("phantom_{}_{w}x{h}", task.as_str()),
                synth::sample(cfg, i as u64).image,
            ));
        }
    }
    let mut rng = SplitMix64::new(99);
    for (w, h) in [(1, 1), (5, 3), (17, 1), (1, 23), (31, 29), (256, 255)] {
        let px = (0..w * h).map(|_| (rng.next_u64() >> 56) as u8).collect();
        out.push((
            format!("noise_{w}x{h}"),
            GrayImage::from_vec(w, h, px).unwrap(),
        ));
    }
    // Few grey levels: stresses clipping, redistribution and the residual step.
    let px = (0..200 * 150)
        .map(|i| [0u8, 0, 0, 12, 200][(i * 7 + i / 200) % 5])
        .collect();
    out.push((
        "levels_200x150".into(),
        GrayImage::from_vec(200, 150, px).unwrap(),
    ));
    out
}

/// Real images: every image of ../shared/data when present.
fn real_images() -> Vec<PathBuf> {
    let Some(root) =
        common::real_data_for("CLAHE against OpenCV on real images", &["dl_track", "hc18"])
    else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for set in ["dl_track", "hc18"] {
        if let Ok(rd) = std::fs::read_dir(root.join(set).join("images")) {
            paths.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "png")),
            );
        }
    }
    paths.sort();
    paths
}

struct Case {
    input: PathBuf,
    clip: f64,
    tiles: (usize, usize),
    output: PathBuf,
}

#[test]
#[ignore = "needs OpenCV from scripts/setup.sh; scripts/test.sh runs it"]
fn matches_live_opencv() {
    let python = common::python();
    let tmp = tempfile::tempdir().unwrap();
    let clips = [-1.0, 0.0, 0.5, 1.0, 2.0, 3.7, 10.0, 40.0];
    let grids = [
        (1, 1),
        (2, 2),
        (8, 8),
        (16, 16),
        (7, 5),
        (16, 1),
        (1, 16),
        (3, 11),
        (13, 16),
        (8, 6),
    ];
    let mut cases = Vec::new();
    for (name, img) in generated_images() {
        let input = tmp.path().join(format!("{name}.png"));
        imageio::write_gray(&input, &img).unwrap();
        for clip in clips {
            for tiles in grids {
                let output = tmp
                    .path()
                    .join(format!("{name}_{clip}_{}x{}.bin", tiles.0, tiles.1));
                cases.push(Case {
                    input: input.clone(),
                    clip,
                    tiles,
                    output,
                });
            }
        }
    }
    // Real images: the default parameters plus a pseudo-random other setting per image.
    let real = real_images();
    let mut rng = SplitMix64::new(5);
    for (i, input) in real.iter().enumerate() {
        let clip = [0.5, 1.0, 2.0, 3.0, 8.0, 40.0][(rng.next_u64() % 6) as usize];
        let tiles = (
            1 + (rng.next_u64() % 16) as usize,
            1 + (rng.next_u64() % 16) as usize,
        );
        for (clip, tiles) in [(2.0, (8, 8)), (clip, tiles)] {
            let output = tmp
                .path()
                .join(format!("real{i}_{clip}_{}x{}.bin", tiles.0, tiles.1));
            cases.push(Case {
                input: input.clone(),
                clip,
                tiles,
                output,
            });
        }
    }
    let json: Vec<_> = cases
        .iter()
        .map(|c| serde_json::json!({"input": c.input, "clip_limit": c.clip, "tiles": [c.tiles.0, c.tiles.1], "output": c.output}))
        .collect();
    let cases_path = tmp.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(common::script("clahe_opencv.py"))
        .arg("run")
        .arg(&cases_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OpenCV reference failed: {}",
        common::stderr(&out)
    );
    eprintln!("reference: {}", common::stdout(&out).trim());

    let mut last: Option<(PathBuf, GrayImage)> = None;
    let mut failures = Vec::new();
    for c in &cases {
        let img = match &last {
            Some((p, img)) if *p == c.input => img.clone(),
            _ => {
                let img = imageio::read_gray(&c.input).unwrap();
                last = Some((c.input.clone(), img.clone()));
                img
            }
        };
        let expected = std::fs::read(&c.output).unwrap();
        assert_eq!(expected.len(), img.width() * img.height());
        let got = equalise(&img, c.clip, c.tiles.0, c.tiles.1, 1);
        if let Some(d) = first_difference(&got, &expected) {
            failures.push(format!(
                "{} clip {} tiles {:?}: {:?}",
                c.input.display(),
                c.clip,
                c.tiles,
                d
            ));
        }
    }
    eprintln!(
        "compared {} cases ({} real images)",
        cases.len(),
        real.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from OpenCV, e.g.:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

fn arb_image() -> impl Strategy<Value = GrayImage> {
    (1usize..48, 1usize..48, any::<u64>(), 1u32..=256).prop_map(|(w, h, seed, levels)| {
        let mut rng = SplitMix64::new(seed);
        let px = (0..w * h)
            .map(|_| ((rng.next_u64() % levels as u64) * 255 / levels.max(2) as u64) as u8)
            .collect();
        GrayImage::from_vec(w, h, px).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every tile's table is non-decreasing (equalisation keeps the grey-level order within a
    /// tile), so each output pixel is bounded by its four neighbouring tables at its grey level.
    #[test]
    fn tables_are_monotone_and_outputs_bounded(img in arb_image(), clip in -1.0f64..60.0, tx in 1usize..9, ty in 1usize..9) {
        let params = ClaheParams::new(clip, tx, ty).unwrap();
        let mut clahe = Clahe::new(params);
        let mut out = GrayImage::default();
        clahe.apply(img.view().unwrap(), &mut out);
        let luts = clahe.luts();
        prop_assert_eq!(luts.len(), tx * ty * 256);
        for t in luts.chunks_exact(256) {
            prop_assert!(t.windows(2).all(|w| w[0] <= w[1]), "table not monotone: {:?}", t);
        }
        for (i, (&v, &o)) in img.as_slice().iter().zip(out.as_slice()).enumerate() {
            let lo = luts.chunks_exact(256).map(|t| t[v as usize]).min().unwrap();
            let hi = luts.chunks_exact(256).map(|t| t[v as usize]).max().unwrap();
            prop_assert!(lo <= o && o <= hi, "pixel {} value {} -> {} outside [{}, {}]", i, v, o, lo, hi);
        }
    }

    /// With clipping on, no grey level's share of a tile's table exceeds the clip limit plus the
    /// evenly redistributed excess (one more for the residual), converted to output levels.
    #[test]
    fn clip_limit_bounds_every_histogram_bin(img in arb_image(), clip in 0.01f64..8.0, tx in 1usize..6, ty in 1usize..6) {
        let mut clahe = Clahe::new(ClaheParams::new(clip, tx, ty).unwrap());
        let mut out = GrayImage::default();
        clahe.apply(img.view().unwrap(), &mut out);
        let (tw, th) = clahe.tile_size();
        let area = (tw * th) as f64;
        let limit = clahe.clip_per_bin() as f64;
        prop_assert!(limit >= 1.0);
        // A bin holds at most limit + area/256 (the even share of everything clipped) + 1.
        let max_bin = limit + (area / 256.0).floor() + 1.0;
        let max_step = (max_bin * 255.0 / area).ceil() + 1.0;
        for t in clahe.luts().chunks_exact(256) {
            for w in t.windows(2) {
                prop_assert!(((w[1] - w[0]) as f64) <= max_step, "step {} > {} (limit {}, area {})", w[1] - w[0], max_step, limit, area);
            }
        }
    }

    /// Any size, including more tiles than pixels and lines of one pixel: the output has the
    /// input's size, and a flat image stays flat (one level in, one level out).
    #[test]
    fn any_size_and_tile_count_gives_a_same_size_output(w in 1usize..700, h in 1usize..500, tx in 1usize..65, ty in 1usize..65, level in any::<u8>(), clip in -1.0f64..40.0) {
        let img = GrayImage::from_vec(w, h, vec![level; w * h]).unwrap();
        let mut clahe = Clahe::new(ClaheParams::new(clip, tx, ty).unwrap());
        let mut out = GrayImage::default();
        clahe.apply(img.view().unwrap(), &mut out);
        prop_assert_eq!((out.width(), out.height()), (w, h));
        let first = out.as_slice()[0];
        prop_assert!(out.as_slice().iter().all(|&v| v == first), "a flat {}x{} image came out uneven", w, h);
    }

    /// The threaded path computes exactly what the single-threaded one does.
    #[test]
    fn threads_do_not_change_the_output(w in 1usize..300, h in 1usize..400, seed in any::<u64>(), clip in -1.0f64..40.0, tx in 1usize..17, ty in 1usize..17) {
        let img = synth::sample(PhantomConfig { width: w.max(16), height: h.max(16), seed, ..Default::default() }, 0).image;
        prop_assert_eq!(equalise(&img, clip, tx, ty, 1), equalise(&img, clip, tx, ty, 3));
    }
}

#[test]
fn reused_stage_handles_size_and_parameter_changes() {
    let a = synth::sample(
        PhantomConfig {
            width: 200,
            height: 150,
            ..Default::default()
        },
        1,
    )
    .image;
    let b = synth::sample(
        PhantomConfig {
            width: 97,
            height: 61,
            ..Default::default()
        },
        2,
    )
    .image;
    let mut clahe = Clahe::new(ClaheParams::new(2.0, 8, 8).unwrap());
    let mut out = GrayImage::default();
    for img in [&a, &b, &a] {
        clahe.apply(img.view().unwrap(), &mut out);
        assert_eq!(out, equalise(img, 2.0, 8, 8, 1));
    }
    clahe.set_params(ClaheParams::new(4.0, 3, 5).unwrap());
    clahe.apply(a.view().unwrap(), &mut out);
    assert_eq!(out, equalise(&a, 4.0, 3, 5, 1));
}
