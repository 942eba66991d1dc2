//! The shipped models (models/*.onnx) against the targets on the real data's validation
//! blocks, which training held out. Runs when ../shared/data is present.

use std::path::PathBuf;

use crate::common::{self, run, stderr, stdout};

// The recorded figures (models/README.md) less a margin for float differences between machines.
const APO_DICE: f64 = 0.81;
const APO_MEDIAN_REL: f64 = 0.014;
const APO_WITHIN_10: f64 = 0.95;
const HEAD_DICE: f64 = 0.97;
const HEAD_HC_MAE_MM: f64 = 2.0;
// The verdict on the blocks (issue 25's targets): coverage and the precision of `ok` numbers.
const APO_COVERAGE: f64 = 0.95;
const APO_PRECISION_10: f64 = 0.98;
const HEAD_OK_WITHIN_5: f64 = 0.99;

/// The shipped models on the validation blocks they never trained on: no worse than the figures
/// models/README.md records (a regression guard; the targets and where they stand are in
/// that file).
#[test]
fn shipped_models_meet_targets_on_held_out_real_data() {
    let Some(data) = common::real_data_for(
        "shipped models on held-out real data",
        &["dl_track", "hc18"],
    ) else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let apo = root.join("models/aponeurosis.onnx");
    // No --roi: the model's own policy (pocusd.roi = auto) must give what --roi auto gives.
    let eval_apo = |extra: &[&str]| {
        let dl = data.join("dl_track");
        let mut args = extra.to_vec();
        args.extend([
            "eval",
            "--model",
            apo.to_str().unwrap(),
            "--data",
            dl.to_str().unwrap(),
            "--val-fraction",
            "0.15",
            "--json",
        ]);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let v = eval_apo(&[]);
    let explicit = eval_apo(&["--roi", "auto"]);
    for k in [
        "images",
        "dice",
        "iou",
        "thickness_rel_err_median",
        "thickness_within_10pct",
        "failed",
    ] {
        assert_eq!(v[k], explicit[k], "{k}: model policy vs --roi auto");
    }
    eprintln!(
        "aponeurosis: dice {} rel median {} within10 {}",
        v["dice"], v["thickness_rel_err_median"], v["thickness_within_10pct"]
    );
    assert_eq!(v["images"].as_u64(), Some(66));
    assert!(v["dice"].as_f64().unwrap() >= APO_DICE, "{}", v["dice"]);
    assert!(
        v["thickness_rel_err_median"].as_f64().unwrap() <= APO_MEDIAN_REL,
        "{}",
        v["thickness_rel_err_median"]
    );
    assert!(
        v["thickness_within_10pct"].as_f64().unwrap() >= APO_WITHIN_10,
        "{}",
        v["thickness_within_10pct"]
    );
    eprintln!(
        "aponeurosis verdict: coverage {} ok within 10 % {} doubtful within 10 % {} reasons {}",
        v["coverage"], v["precision_10pct"], v["doubtful_precision_10pct"], v["doubt_counts"]
    );
    assert!(
        v["coverage"].as_f64().unwrap() >= APO_COVERAGE,
        "{}",
        v["coverage"]
    );
    assert!(
        v["precision_10pct"].as_f64().unwrap() >= APO_PRECISION_10,
        "{}",
        v["precision_10pct"]
    );
    for p in v["per_image"].as_array().unwrap() {
        assert!(
            ["ok", "doubtful"].contains(&p["quality"].as_str().unwrap()),
            "{p}"
        );
        assert!(p["doubt"].is_array(), "{p}");
    }
    let head = root.join("models/fetal-head.onnx");
    let hc = data.join("hc18");
    let v = common::run_json(&[
        "eval",
        "--model",
        head.to_str().unwrap(),
        "--data",
        hc.to_str().unwrap(),
        "--val-fraction",
        "0.15",
        "--mm-csv",
        hc.join("pixel_size_and_hc.csv").to_str().unwrap(),
        "--json",
    ]);
    eprintln!(
        "fetal head: dice {} hc mae {} mm",
        v["dice"], v["circumference_mae_mm"]
    );
    assert_eq!(v["images"].as_u64(), Some(43));
    assert!(v["dice"].as_f64().unwrap() >= HEAD_DICE, "{}", v["dice"]);
    assert!(
        v["circumference_mae_mm"].as_f64().unwrap() <= HEAD_HC_MAE_MM,
        "{}",
        v["circumference_mae_mm"]
    );
    eprintln!(
        "fetal head verdict: coverage {} ok within 5 % {} reasons {}",
        v["coverage"], v["precision_5pct"], v["doubt_counts"]
    );
    assert!(
        v["precision_5pct"].as_f64().unwrap() >= HEAD_OK_WITHIN_5,
        "{}",
        v["precision_5pct"]
    );
    assert!(v["coverage"].as_f64().unwrap() >= 0.95, "{}", v["coverage"]);
    // No size bias beyond 1 % in any tercile of head size (issue 14).
    let terciles = v["circumference_bias_by_size"].as_array().unwrap();
    assert_eq!(terciles.len(), 3);
    for t in terciles {
        let rel = t["signed_mean_rel"].as_f64().unwrap();
        assert!(rel.abs() <= 0.01, "size bias {t}");
    }
}

// The shipped fascicle model's recorded figures (models/README.md) less a margin.
const FASC_ORIENT_ERR_DEG: f64 = 2.0;
const FASC_RECALL: f64 = 0.85;

/// The shipped fascicle model on the phantom (no real data needed): with the shipped aponeurosis
/// model for the aponeuroses, pennation angle and fascicle length against the phantom's analytic
/// truth (`truth.csv`, from its parameters).
#[test]
fn shipped_fascicle_model_measures_the_phantom_against_its_truth() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    common::synth_dataset(
        &data,
        &[
            "--count",
            "12",
            "--task",
            "fascicle",
            "--furniture",
            "--seed",
            "3",
        ],
    );
    let v = common::run_json(&[
        "eval",
        "--model",
        root.join("models/fascicle.onnx").to_str().unwrap(),
        "--apo-model",
        root.join("models/aponeurosis.onnx").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    eprintln!(
        "fascicle model on 12 phantom images: orientation error {:.2} deg, pennation vs truth {:.2} deg, length vs truth {:.2} %",
        f("orientation_err_deg_median"),
        f("truth_pennation_err_deg_median"),
        100.0 * f("truth_fascicle_length_rel_err_median")
    );
    assert_eq!(v["task"], "fascicle");
    assert!(f("truth_pennation_err_deg_median") <= 1.0);
    assert!(f("truth_fascicle_length_rel_err_median") <= 0.05);
    assert!(f("orientation_err_deg_median") <= FASC_ORIENT_ERR_DEG);
}

/// The shipped head model on phantom heads larger than any it trained on (the largest HC18 head
/// is 270.5 mm; these are 268 to 353 mm at the phantom's scale): the signed circumference error
/// against each drawn ellipse stays within 1 % in every size tercile.
#[test]
fn shipped_head_model_has_no_size_bias_on_heads_beyond_its_training_range() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("heads");
    common::synth_dataset(
        &data,
        &[
            "--count",
            "30",
            "--task",
            "region",
            "--width",
            "800",
            "--height",
            "540",
            "--depth-mm",
            "130",
            "--seed",
            "3",
        ],
    );
    let v = common::run_json(&[
        "eval",
        "--model",
        root.join("models/fetal-head.onnx").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let terciles = v["truth_circumference_bias_by_size"].as_array().unwrap();
    assert_eq!(terciles.len(), 3, "{v}");
    for (i, t) in terciles.iter().enumerate() {
        let rel = t["signed_mean_rel"].as_f64().unwrap();
        eprintln!(
            "phantom heads, size {}/3 ({:.0} to {:.0} px): {:+.2} % against the drawn ellipse",
            i + 1,
            t["reference_min"].as_f64().unwrap(),
            t["reference_max"].as_f64().unwrap(),
            100.0 * rel
        );
        assert!(rel.abs() <= 0.01, "tercile {}: {t}", i + 1);
    }
    assert!(v["per_image"][0]["truth_circumference_px"].is_number());
}

/// `pocusd infer` with the fascicle model as an extra model beside the aponeurosis model (as
/// `pocusd run --extra-model`) measures pennation angle and fascicle length on phantom images,
/// against the phantom's truth; the fascicle model alone says why it gives orientation only.
#[test]
fn infer_with_the_fascicle_model_as_extra_measures_pennation() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    common::synth_dataset(
        &data,
        &[
            "--count",
            "4",
            "--task",
            "fascicle",
            "--furniture",
            "--seed",
            "5",
        ],
    );
    let truth = std::fs::read_to_string(data.join("truth.csv")).unwrap();
    let header: Vec<&str> = truth.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (ip, il) = (col("pennation_angle_deg"), col("fascicle_length_px"));
    let apo = root.join("models/aponeurosis.onnx");
    let fasc = root.join("models/fascicle.onnx");
    let out = tmp.path().join("out");
    let (mut angle_err, mut len_err) = (Vec::new(), Vec::new());
    for line in truth.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let image = data.join("images").join(f[0]);
        let v = common::run_json(&[
            "infer",
            image.to_str().unwrap(),
            "--model",
            apo.to_str().unwrap(),
            "--extra-model",
            fasc.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        let r = &v[0];
        assert!(r["fascicle_quality"].is_string(), "{r}");
        let m = &r["measurements"];
        assert!(m["thickness_px"].is_number(), "{r}");
        let (Some(p), Some(l)) = (
            m["pennation_angle_deg"].as_f64(),
            m["fascicle_length_px"].as_f64(),
        ) else {
            continue;
        };
        let (tp, tl): (f64, f64) = (f[ip].parse().unwrap(), f[il].parse().unwrap());
        eprintln!(
            "{}: pennation {p:.2} deg (truth {tp:.2}), length {l:.1} px (truth {tl:.1}), fascicle {}",
            f[0], r["fascicle_quality"]
        );
        assert!(
            (p - tp).abs() <= 5.0,
            "{}: pennation {p} against {tp}",
            f[0]
        );
        angle_err.push((p - tp).abs());
        len_err.push((l - tl).abs() / tl);
    }
    let measured = angle_err.len();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(
        measured >= 3,
        "pennation measured on {measured} of 4 images"
    );
    // As `pocusd eval` finds on 12 such phantoms: within 1 deg and 5 % at the median.
    assert!(median(&mut angle_err) <= 1.0, "{angle_err:?}");
    assert!(median(&mut len_err) <= 0.05, "{len_err:?}");
    // The fascicle model alone: orientation only, and a note saying what to run instead.
    let image = data
        .join("images")
        .join(truth.lines().nth(1).unwrap().split(',').next().unwrap());
    let o = run(&[
        "infer",
        image.to_str().unwrap(),
        "--model",
        fasc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--extra-model"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v[0]["measurements"]["pennation_angle_deg"].is_null(), "{v}");
    assert!(
        v[0]["measurements"]["fascicle_orientation_deg"].is_number(),
        "{v}"
    );
}

/// The shipped fascicle model on the dl_track_fascicles validation blocks it never trained on.
#[test]
fn shipped_fascicle_model_on_held_out_real_data() {
    let Some(data) = common::real_data_for(
        "shipped fascicle model on held-out real data",
        &["dl_track_fascicles"],
    ) else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let v = common::run_json(&[
        "eval",
        "--model",
        root.join("models/fascicle.onnx").to_str().unwrap(),
        "--data",
        data.join("dl_track_fascicles").to_str().unwrap(),
        "--val-fraction",
        "0.15",
        "--json",
    ]);
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    eprintln!(
        "fascicle model: orientation error {:.2} deg, fragment recall {:.3}, pennation vs reference {:.2} deg",
        f("orientation_err_deg_median"),
        f("fragment_recall"),
        f("pennation_err_deg_median")
    );
    assert_eq!(v["images"].as_u64(), Some(38));
    assert!(f("orientation_err_deg_median") <= FASC_ORIENT_ERR_DEG);
    assert!(f("fragment_recall") >= FASC_RECALL);
}

/// Every shipped model has its unfolded copy beside it (`models/NAME.bpk`, what the cart's
/// fine-tuning starts from), and the copy folds back to the shipped file's weights.
#[cfg(feature = "train")]
#[test]
fn every_shipped_model_has_an_unfolded_copy_that_folds_back_to_it() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "onnx") {
            let d = pocusd::train::trainer::unfolded_fold_difference(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(d <= 1e-5, "{}: its .bpk folds back within {d}", p.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} shipped models");
}
