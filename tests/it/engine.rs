//! The engine: measurements on phantom masks against the analytic truth, real reference masks
//! against HC18's circumferences, ONNX fixtures of every layout through tract, bad models refused,
//! hot swap keeping the old model.

use std::path::Path;

use pocusd::frame::{GrayImage, Rect};
use pocusd::infer::onnx_build::{self, Breakage};
use pocusd::infer::{Engine, InferError, LoadedModel};
use pocusd::model::Task;
use pocusd::model::{Layout, OutputKind, SpecOverrides};
use pocusd::postprocess::{Calibration, Flag, PostprocessConfig, Postprocessor};
use pocusd::preprocess::Preprocessor;
use pocusd::synth::{self, PhantomConfig};

use crate::common;

fn mask_probability(mask: &GrayImage) -> Vec<f32> {
    mask.as_slice()
        .iter()
        .map(|&v| if v > 127 { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn thickness_from_phantom_masks_within_one_pixel() {
    let mut worst: f64 = 0.0;
    for i in 0..40u64 {
        let furniture = i % 2 == 0;
        let cfg = PhantomConfig {
            depth_mm: 40.0,
            width: 640,
            height: 480,
            task: Task::Aponeurosis,
            furniture,
            seed: 100 + i,
            ..Default::default()
        };
        let s = synth::sample(cfg, i);
        let roi = Rect::full(640, 480);
        let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
        let a = post.process_full(&mask_probability(&s.mask), roi).clone();
        let got = a
            .measurements
            .thickness_px
            .unwrap_or_else(|| panic!("sample {i}: {a:?}"));
        let truth = s.truth.thickness_px.unwrap();
        worst = worst.max((got - truth).abs());
        assert!(
            (got - truth).abs() <= 1.0,
            "sample {i}: measured {got:.2} px, truth {truth:.2} px"
        );
        let angle = a.measurements.band_angle_deg.unwrap();
        assert!(
            (angle - s.truth.band_angle_deg.unwrap()).abs() < 0.5,
            "angle {angle} vs {:?}",
            s.truth.band_angle_deg
        );
        assert_eq!(a.flag, Some(Flag::Uncalibrated));
        assert!(
            a.measurements.thickness_mm.is_none(),
            "no mm without calibration"
        );
    }
    eprintln!("worst thickness error {worst:.3} px over 40 phantom masks");
}

#[test]
fn circumference_from_phantom_masks_within_half_a_percent() {
    for i in 0..20u64 {
        let cfg = PhantomConfig {
            depth_mm: 40.0,
            width: 800,
            height: 540,
            task: Task::Region,
            furniture: i % 3 == 0,
            seed: 7 + i,
            ..Default::default()
        };
        let s = synth::sample(cfg, i);
        let mut post = Postprocessor::new(Task::Region, PostprocessConfig::default());
        let a = post
            .process_full(&mask_probability(&s.mask), Rect::full(800, 540))
            .clone();
        let got = a.measurements.circumference_px.unwrap();
        let truth = s.truth.circumference_px.unwrap();
        assert!(
            (got - truth).abs() / truth < 0.005,
            "sample {i}: {got:.2} vs {truth:.2}"
        );
    }
}

/// A model's `contour_offset_px` shrinks the fitted ellipse's semi-axes by that many pixels, in
/// px and (scaled) in mm: a 1.5 px offset takes about 2 pi 1.5 px off the circumference; the
/// metadata key round-trips and a bad value is refused by name.
#[test]
fn the_contour_offset_shrinks_the_ellipse() {
    let cfg = PhantomConfig {
        depth_mm: 40.0,
        width: 800,
        height: 540,
        task: Task::Region,
        furniture: false,
        seed: 3,
        ..Default::default()
    };
    let s = synth::sample(cfg, 0);
    let p = mask_probability(&s.mask);
    let pc = PostprocessConfig {
        calibration: Calibration::MmPerPx { x: 0.2, y: 0.2 },
        ..Default::default()
    };
    let mut post = Postprocessor::new(Task::Region, pc);
    let plain = post
        .process_full(&p, Rect::full(800, 540))
        .clone()
        .measurements;
    post.set_contour_offset_px(1.5);
    let shrunk = post
        .process_full(&p, Rect::full(800, 540))
        .clone()
        .measurements;
    let d_px = plain.circumference_px.unwrap() - shrunk.circumference_px.unwrap();
    let d_mm = plain.circumference_mm.unwrap() - shrunk.circumference_mm.unwrap();
    let want = 2.0 * std::f64::consts::PI * 1.5;
    assert!((d_px - want).abs() < 0.05 * want, "{d_px} px, want {want}");
    assert!((d_mm - 0.2 * want).abs() < 0.05 * 0.2 * want, "{d_mm} mm");
    assert!(
        (plain.ellipse_semi_major_px.unwrap() - shrunk.ellipse_semi_major_px.unwrap() - 1.5).abs()
            < 1e-9
    );
    // The key in metadata.
    let mut spec =
        onnx_build::fixture_spec(Task::Region, 64, 64, 1, Layout::Nchw, OutputKind::Sigmoid);
    spec.contour_offset_px = 0.92;
    let meta = spec.to_metadata();
    assert_eq!(
        meta.get("pocusd.contour_offset_px").map(String::as_str),
        Some("0.92")
    );
    let bytes = onnx_build::brightness_model(&spec, 5, 0.5, 10.0, true, Breakage::None);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.onnx");
    std::fs::write(&f, &bytes).unwrap();
    let m = LoadedModel::load(&f, &SpecOverrides::default()).unwrap();
    assert_eq!(m.spec().contour_offset_px, 0.92);
    spec.contour_offset_px = 0.0;
    assert!(
        !spec.to_metadata().contains_key("pocusd.contour_offset_px"),
        "written only when set"
    );
}

#[test]
fn calibration_gives_mm_and_goes_stale_when_the_roi_changes() {
    let cfg = PhantomConfig {
        task: Task::Aponeurosis,
        ..Default::default()
    };
    let s = synth::sample(cfg, 0);
    let p = mask_probability(&s.mask);
    let pc = PostprocessConfig {
        calibration: Calibration::MmPerPx { x: 0.1, y: 0.1 },
        ..Default::default()
    };
    let mut post = Postprocessor::new(Task::Aponeurosis, pc);
    let a = post.process_full(&p, Rect::full(640, 480)).clone();
    let (px, mm) = (
        a.measurements.thickness_px.unwrap(),
        a.measurements.thickness_mm.unwrap(),
    );
    assert!((mm - px * 0.1).abs() < 1e-9, "{px} px -> {mm} mm");
    assert_eq!(a.flag, None);
    // Same pixels, but the region of interest moved: calibration is stale.
    let a = post
        .process_full(
            &p,
            Rect {
                x: 1,
                y: 0,
                w: 640,
                h: 480,
            },
        )
        .clone();
    assert!(a.measurements.thickness_mm.is_none());
    assert_eq!(a.flag, Some(Flag::Uncalibrated));
}

#[test]
fn missing_structures_are_flagged() {
    let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
    let a = post
        .process_full(&vec![0.0; 100 * 80], Rect::full(100, 80))
        .clone();
    assert_eq!(a.flag, Some(Flag::NoStructure));
    let mut p = vec![0.0f32; 100 * 80];
    for y in 30..36 {
        for x in 5..95 {
            p[y * 100 + x] = 0.9;
        }
    }
    let a = post.process_full(&p, Rect::full(100, 80)).clone();
    assert_eq!(a.flag, Some(Flag::OneBand));
    assert!(a.measurements.thickness_px.is_none());
    let mut post = Postprocessor::new(Task::Region, PostprocessConfig::default());
    assert_eq!(
        post.process_full(&vec![0.0; 100 * 80], Rect::full(100, 80))
            .flag,
        Some(Flag::NoStructure)
    );
}

#[test]
fn hc18_reference_masks_match_the_csv() {
    let Some(root) = common::real_data_for("HC18 reference masks against the CSV", &["hc18"])
    else {
        return;
    };
    let csv = std::fs::read_to_string(root.join("hc18/pixel_size_and_hc.csv")).unwrap();
    let mut errors = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (name, mm_per_px, hc_mm): (&str, f64, f64) =
            (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        let mask_path = root.join("hc18/masks").join(name);
        let Ok(mask) = pocusd::imageio::read_gray(&mask_path) else {
            continue;
        };
        let pc = PostprocessConfig {
            calibration: Calibration::MmPerPx {
                x: mm_per_px,
                y: mm_per_px,
            },
            ..Default::default()
        };
        let mut post = Postprocessor::new(Task::Region, pc);
        let a = post
            .process_full(
                &mask_probability(&mask),
                Rect::full(mask.width(), mask.height()),
            )
            .clone();
        let got = a.measurements.circumference_mm.unwrap_or(f64::NAN);
        errors.push((got - hc_mm).abs());
    }
    assert!(errors.len() > 200, "{} masks read", errors.len());
    let mae = errors.iter().sum::<f64>() / errors.len() as f64;
    eprintln!(
        "HC18 reference masks: circumference MAE {mae:.3} mm over {} images",
        errors.len()
    );
    assert!(mae <= 1.0, "MAE {mae:.3} mm");
}

fn spec(layout: Layout, channels: usize, output: OutputKind) -> pocusd::model::ModelSpec {
    let mut s = onnx_build::fixture_spec(Task::Aponeurosis, 128, 96, channels, layout, output);
    // The same CLAHE as config gives models without metadata, so all fixtures see the same pixels.
    s.clahe = Some(pocusd::preprocess::ClaheParams::default());
    s
}

fn load(bytes: &[u8]) -> Result<LoadedModel, InferError> {
    LoadedModel::from_bytes(bytes, Path::new("fixture.onnx"), &SpecOverrides::default())
}

/// Runs a phantom frame through preprocess + model + postprocess.
fn measure(model: &mut LoadedModel, seed: u64) -> (f64, f64) {
    let cfg = PhantomConfig {
        depth_mm: 40.0,
        width: 640,
        height: 480,
        task: Task::Aponeurosis,
        furniture: false,
        seed,
        ..Default::default()
    };
    let s = synth::sample(cfg, seed);
    let mut pre = Preprocessor::new(
        model.spec(),
        pocusd::preprocess::roi::RoiMode::Full,
        pocusd::preprocess::roi::Tracking::Stream { every: 30 },
        std::num::NonZeroUsize::MIN,
    );
    let roi = Rect::full(640, 480);
    let input = pre.process(s.image.view().unwrap()).unwrap().to_vec();
    let (w, h) = (model.spec().input_width, model.spec().input_height);
    let prob = model.run(&input).unwrap().to_vec();
    let mut post = Postprocessor::new(Task::Aponeurosis, PostprocessConfig::default());
    let a = post.process(&prob, w, h, roi).clone();
    (
        a.measurements.thickness_px.unwrap_or(f64::NAN),
        s.truth.thickness_px.unwrap(),
    )
}

#[test]
fn fixtures_of_every_layout_run_and_agree() {
    let mut results = Vec::new();
    for layout in [Layout::Nchw, Layout::Nhwc] {
        for channels in [1, 3] {
            for output in [OutputKind::Sigmoid, OutputKind::Logits, OutputKind::Softmax] {
                for with_meta in [true, false] {
                    let sp = spec(layout, channels, output);
                    let bytes =
                        onnx_build::brightness_model(&sp, 3, 0.6, 30.0, with_meta, Breakage::None);
                    let mut m = load(&bytes).unwrap_or_else(|e| {
                        panic!("{layout:?} {channels} {output:?} meta={with_meta}: {e}")
                    });
                    assert_eq!(m.spec().layout, layout);
                    assert_eq!(m.spec().channels, channels);
                    assert_eq!(m.spec().from_metadata, with_meta);
                    let got = measure(&mut m, 3);
                    results.push(((layout, channels, output, with_meta), got));
                }
            }
        }
    }
    // Same weights in every form: the same thickness everywhere (models without metadata get CLAHE
    // from config, so compare within each metadata group).
    for with_meta in [true, false] {
        let group: Vec<_> = results.iter().filter(|r| r.0 .3 == with_meta).collect();
        let first = group[0].1 .0;
        assert!(first.is_finite(), "{:?}", group[0]);
        for r in &group {
            assert!((r.1 .0 - first).abs() < 0.51, "{:?} vs {first}", r);
        }
    }
}

#[test]
fn bad_models_are_refused_with_named_errors() {
    let sp = spec(Layout::Nchw, 1, OutputKind::Sigmoid);
    let good = onnx_build::brightness_model(&sp, 3, 0.5, 20.0, true, Breakage::None);
    let e = load(&good[..good.len() / 2]).unwrap_err();
    assert!(matches!(e, InferError::NotOnnx { .. }), "truncated: {e}");
    assert!(e.to_string().contains("fixture.onnx"));
    let e = load(&onnx_build::brightness_model(
        &sp,
        3,
        0.5,
        20.0,
        true,
        Breakage::FlatInput,
    ))
    .unwrap_err();
    assert!(matches!(e, InferError::Refused { .. }), "flat input: {e}");
    assert!(e.to_string().contains("expected [1, C, H, W]"), "{e}");
    let e = load(&onnx_build::brightness_model(
        &sp,
        3,
        0.5,
        20.0,
        true,
        Breakage::VectorOutput,
    ))
    .unwrap_err();
    assert!(
        matches!(e, InferError::Refused { .. }),
        "vector output: {e}"
    );
    let e = load(&onnx_build::brightness_model(
        &sp,
        3,
        0.5,
        20.0,
        true,
        Breakage::NanOutput,
    ))
    .unwrap_err();
    assert!(matches!(e, InferError::Probe { .. }), "NaN output: {e}");
    assert!(e.to_string().contains("not finite"), "{e}");
    let e = load(b"not a model at all").unwrap_err();
    assert!(matches!(e, InferError::NotOnnx { .. }), "{e}");
}

#[test]
fn failed_hot_swap_keeps_the_old_model() {
    let tmp = tempfile::tempdir().unwrap();
    let sp = spec(Layout::Nchw, 1, OutputKind::Sigmoid);
    let good = tmp.path().join("good.onnx");
    std::fs::write(
        &good,
        onnx_build::brightness_model(&sp, 3, 0.6, 30.0, true, Breakage::None),
    )
    .unwrap();
    let nan = tmp.path().join("nan.onnx");
    std::fs::write(
        &nan,
        onnx_build::brightness_model(&sp, 3, 0.6, 30.0, true, Breakage::NanOutput),
    )
    .unwrap();
    let truncated = tmp.path().join("truncated.onnx");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();

    let mut engine = Engine::new(
        LoadedModel::load(&good, &SpecOverrides::default()).unwrap(),
        SpecOverrides::default(),
    );
    let sha = engine.model().sha256().to_string();
    let before = measure(engine.model_mut(), 5).0;
    for bad in [&nan, &truncated, &tmp.path().join("missing.onnx")] {
        assert!(engine.swap(bad).is_err());
        assert_eq!(
            engine.model().sha256(),
            sha,
            "old model still loaded after {}",
            bad.display()
        );
        assert_eq!(
            measure(engine.model_mut(), 5).0,
            before,
            "and still serving"
        );
    }
    let other = tmp.path().join("other.onnx");
    std::fs::write(
        &other,
        onnx_build::brightness_model(&sp, 5, 0.5, 30.0, true, Breakage::None),
    )
    .unwrap();
    engine.swap(&other).unwrap();
    assert_ne!(engine.model().sha256(), sha);
}

#[test]
fn brightness_model_measures_the_phantom() {
    // A hand-weighted model is no trained U-Net, but the path from frame to number must carry its
    // mask faithfully: the thickness lands near the truth.
    let sp = spec(Layout::Nchw, 1, OutputKind::Sigmoid);
    let mut m = load(&onnx_build::brightness_model(
        &sp,
        3,
        0.6,
        30.0,
        true,
        Breakage::None,
    ))
    .unwrap();
    let (got, truth) = measure(&mut m, 3);
    eprintln!("brightness model: {got:.1} px vs truth {truth:.1} px");
    assert!((got - truth).abs() / truth < 0.15, "{got} vs {truth}");
}

/// Mirrored test-time averaging (`pocusd.tta = mirror`, issue 27): the published map is the
/// average of a frame's and its mirror's, so a frame and its mirror image give the same number;
/// the same model without it does not (its answer depends on the probe's direction), and the
/// mirrored check still compares the original frame with the mirrored one.
#[test]
fn mirrored_averaging_makes_a_frame_and_its_mirror_agree() {
    use pocusd::analyzer::Analyzer;
    use pocusd::preprocess::roi::{RoiMode, Tracking};
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let plain = root.join("models/aponeurosis.onnx");
    let tta = tmp.path().join("tta.onnx");
    let o = common::run(&[
        "models",
        "meta",
        plain.to_str().unwrap(),
        "--set",
        "tta=mirror",
        "--out",
        tta.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let thickness = |model: &Path, image: &GrayImage| {
        let mut m = LoadedModel::load(model, &SpecOverrides::default()).unwrap();
        let mut a = Analyzer::new(
            &m,
            RoiMode::Full,
            Tracking::PerImage,
            std::num::NonZeroUsize::MIN,
            PostprocessConfig::default(),
            Default::default(),
        );
        let r = a.analyse(&mut m, image.view().unwrap()).unwrap();
        (
            r.measurements.thickness_px.expect("a thickness"),
            r.evidence.mirror_diff,
        )
    };
    let (mut plain_worst, mut tta_worst) = (0.0f64, 0.0f64);
    for seed in 0..6u64 {
        let s = synth::sample(
            PhantomConfig {
                width: 320,
                height: 240,
                task: Task::Aponeurosis,
                seed: 40 + seed,
                ..Default::default()
            },
            seed,
        );
        let (w, h) = (s.image.width(), s.image.height());
        let flipped: Vec<u8> = s
            .image
            .as_slice()
            .chunks(w)
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        let mirror = GrayImage::from_vec(w, h, flipped).unwrap();
        let rel = |a: f64, b: f64| (a - b).abs() / a;
        let (p, _) = thickness(&plain, &s.image);
        let (pm, _) = thickness(&plain, &mirror);
        let (t, diff) = thickness(&tta, &s.image);
        let (tm, _) = thickness(&tta, &mirror);
        plain_worst = plain_worst.max(rel(p, pm));
        tta_worst = tta_worst.max(rel(t, tm));
        assert!(diff.is_some(), "the mirrored check still ran");
    }
    eprintln!("frame against its mirror: plain {plain_worst:.2e}, averaged {tta_worst:.2e}");
    assert!(
        tta_worst < 1e-3,
        "with averaging a frame and its mirror differ by {tta_worst:.2e}"
    );
    assert!(
        plain_worst > 10.0 * tta_worst.max(1e-6),
        "without averaging they differ by {plain_worst:.2e} only (with it {tta_worst:.2e}): the check shows nothing"
    );
}
