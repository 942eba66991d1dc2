//! `pocusd infer`, `pocusd eval` and `pocusd unet` as a user runs them, and onnxruntime as the
//! independent check that the ONNX files pocusd writes are valid and that tract computes the same.

use std::path::Path;

use pocusd::infer::onnx_build::{self, Breakage, UnetShape};
use pocusd::model::Task;
use pocusd::model::{Layout, OutputKind};

use crate::common::{self, run, stderr, stdout};

fn brightness_file(
    dir: &Path,
    layout: Layout,
    channels: usize,
    output: OutputKind,
    meta: bool,
) -> std::path::PathBuf {
    let mut spec = onnx_build::fixture_spec(Task::Aponeurosis, 128, 96, channels, layout, output);
    spec.clahe = Some(pocusd::preprocess::ClaheParams::default());
    let path = dir.join(format!(
        "bright_{}_{channels}_{}_{meta}.onnx",
        layout.as_str(),
        output.as_str()
    ));
    std::fs::write(
        &path,
        onnx_build::brightness_model(&spec, 3, 0.6, 30.0, meta, Breakage::None),
    )
    .unwrap();
    path
}

fn truth_column(csv: &str, col: usize) -> Vec<f64> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn infer_writes_mask_overlay_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ds");
    common::synth_dataset(&data, &["--count", "3", "--seed", "9"]);
    let model = brightness_file(tmp.path(), Layout::Nchw, 1, OutputKind::Sigmoid, true);
    let out = tmp.path().join("out");
    let images: Vec<String> = (0..3)
        .map(|i| {
            data.join(format!("images/synth_{i:05}.png"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut args = vec!["infer"];
    args.extend(images.iter().map(String::as_str));
    args.extend([
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let sha = pocusd::infer::sha256_hex(&std::fs::read(&model).unwrap());
    let truth = truth_column(&std::fs::read_to_string(data.join("truth.csv")).unwrap(), 5);
    for (i, r) in arr.iter().enumerate() {
        for k in [
            "image",
            "width",
            "height",
            "model_sha256",
            "task",
            "measurements",
            "confidence",
            "uncertain_fraction",
            "flag",
        ] {
            assert!(r.get(k).is_some(), "key {k} in {r}");
        }
        assert_eq!(r["model_sha256"], sha);
        assert_eq!(r["task"], "aponeurosis");
        let t = r["measurements"]["thickness_px"].as_f64().unwrap();
        assert!(
            (t - truth[i]).abs() / truth[i] < 0.15,
            "image {i}: {t} vs {}",
            truth[i]
        );
        assert!(
            r["measurements"].get("thickness_mm").is_none(),
            "no mm without calibration"
        );
        let stem = format!("synth_{i:05}");
        let mask = pocusd::imageio::read_gray(&out.join(format!("{stem}.mask.png"))).unwrap();
        assert_eq!((mask.width(), mask.height()), (640, 480));
        assert!(mask.as_slice().iter().any(|&v| v == 255));
        let ov = image::open(out.join(format!("{stem}.overlay.png"))).unwrap();
        assert_eq!((ov.width(), ov.height()), (640, 480));
        let j: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(&j, r);
    }
    // With calibration: mm appear.
    let cal = tmp.path().join("cal.toml");
    std::fs::write(&cal, "[calibration]\ndepth_mm = 48.0\n").unwrap();
    let o = run(&[
        "infer",
        &images[0],
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--config",
        cal.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let m = &v[0]["measurements"];
    let (px, mm) = (
        m["thickness_px"].as_f64().unwrap(),
        m["thickness_mm"].as_f64().unwrap(),
    );
    assert!(
        (mm - px * 0.1).abs() < 1e-6,
        "{px} px at 0.1 mm/px gave {mm} mm"
    );
}

#[test]
fn infer_reports_bad_inputs_and_keeps_going() {
    let tmp = tempfile::tempdir().unwrap();
    let model = brightness_file(tmp.path(), Layout::Nchw, 1, OutputKind::Sigmoid, true);
    let good = tmp.path().join("good.png");
    pocusd::imageio::write_gray(&good, &pocusd::synth::sample(Default::default(), 1).image)
        .unwrap();
    let out = tmp.path().join("out");
    let o = run(&[
        "infer",
        "/nonexistent/a.png",
        good.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/a.png"), "{}", stderr(&o));
    assert!(
        out.join("good.json").exists(),
        "the good image was still processed"
    );

    let bytes = std::fs::read(&model).unwrap();
    let broken = tmp.path().join("broken.onnx");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    let o = run(&[
        "infer",
        good.to_str().unwrap(),
        "--model",
        broken.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a valid ONNX file") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "infer",
        good.to_str().unwrap(),
        "--model",
        "/nonexistent/m.onnx",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/m.onnx"), "{}", stderr(&o));
}

#[test]
fn eval_scores_a_labelled_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ds");
    common::synth_dataset(&data, &["--count", "6", "--seed", "2"]);
    // One broken pair: skipped and counted, not fatal.
    std::fs::write(data.join("masks/synth_00005.png"), b"garbage").unwrap();
    let model = brightness_file(tmp.path(), Layout::Nhwc, 3, OutputKind::Softmax, true);
    let o = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for k in [
        "images",
        "failed",
        "dice",
        "iou",
        "thickness_mae_px",
        "thickness_rel_err_median",
        "thickness_within_10pct",
        "circumference_mae_px",
        "circumference_mae_mm",
        "per_image",
    ] {
        assert!(v.get(k).is_some(), "key {k}");
    }
    assert_eq!(v["images"], 5);
    assert_eq!(v["skipped"], 1);
    assert!(v["circumference_mae_px"].is_null() && v["circumference_mae_mm"].is_null());
    assert!(v["dice"].as_f64().unwrap() > 0.4, "{}", v["dice"]);
    assert!(
        v["thickness_rel_err_median"].as_f64().unwrap() < 0.15,
        "{}",
        v["thickness_rel_err_median"]
    );
    assert_eq!(v["per_image"].as_array().unwrap().len(), 5);
    let o = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nothing"), "{}", stderr(&o));
}

#[test]
#[ignore = "needs onnxruntime from scripts/setup.sh; scripts/test.sh runs it"]
fn onnxruntime_runs_our_files_and_agrees_with_tract() {
    let python = common::python();
    let tmp = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for layout in [Layout::Nchw, Layout::Nhwc] {
        for channels in [1, 3] {
            for output in [OutputKind::Sigmoid, OutputKind::Softmax] {
                models.push(brightness_file(tmp.path(), layout, channels, output, true));
            }
        }
    }
    for (i, transpose) in [true, false].into_iter().enumerate() {
        let spec = onnx_build::fixture_spec(
            Task::Aponeurosis,
            64,
            64,
            1,
            Layout::Nchw,
            OutputKind::Sigmoid,
        );
        let p = tmp.path().join(format!("unet{i}.onnx"));
        std::fs::write(
            &p,
            onnx_build::random_unet(
                &spec,
                UnetShape {
                    depth: 3,
                    base_width: 8,
                    conv_transpose: transpose,
                },
                3,
            ),
        )
        .unwrap();
        models.push(p);
    }
    for model_path in &models {
        let mut model = pocusd::infer::LoadedModel::load(model_path, &Default::default()).unwrap();
        let n: usize = model.spec().input_shape().iter().product();
        let input: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let inp = tmp.path().join("in.f32");
        std::fs::write(
            &inp,
            input
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let outp = tmp.path().join("out.f32");
        let o = std::process::Command::new(&python)
            .arg(common::script("ort_run.py"))
            .args([
                "run",
                model_path.to_str().unwrap(),
                inp.to_str().unwrap(),
                outp.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "onnxruntime refused {}: {}",
            model_path.display(),
            stderr(&o)
        );
        let ort: Vec<f32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Compare foreground probabilities (tract's run converts heads; do the same for ort's raw).
        let mut ort_fg = Vec::new();
        pocusd::infer::foreground(&ort, model.spec(), &mut ort_fg);
        let ours = model.run(&input).unwrap();
        assert_eq!(ours.len(), ort_fg.len(), "{}", model_path.display());
        let max = ours
            .iter()
            .zip(&ort_fg)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max < 1e-4,
            "{}: max abs difference {max}",
            model_path.display()
        );
    }
}

#[test]
fn unet_command_writes_a_model_infer_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("u.onnx");
    let o = run(&[
        "unet",
        "--out",
        m.to_str().unwrap(),
        "--input",
        "64x64",
        "--width",
        "4",
        "--depth",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let loaded = pocusd::infer::LoadedModel::load(&m, &Default::default()).unwrap();
    assert_eq!(loaded.spec().input_shape(), [1, 1, 64, 64]);
    assert!(loaded.spec().from_metadata);
    let o = run(&[
        "bench",
        "infer",
        "--model",
        m.to_str().unwrap(),
        "--iters",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["input"], serde_json::json!([1, 1, 64, 64]));
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    let o = run(&["unet", "--out", m.to_str().unwrap(), "--input", "100x64"]);
    assert_eq!(o.status.code(), Some(2));
}
