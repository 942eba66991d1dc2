//! The shipped models (models/*.onnx) against the targets on the real data's validation
//! blocks, which training held out. Runs when ../shared/data is present.

use std::path::PathBuf;

use crate::common::{real_data, run, stderr, stdout};

/// The shipped models meet the targets on validation blocks never trained on.
#[test]
fn shipped_models_meet_targets_on_held_out_real_data() {
    let Some(data) = real_data() else {
        eprintln!("real-data test not run: ../shared/data is absent");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let apo = root.join("models/aponeurosis.onnx");
    let o = run(&[
        "eval", "--model", apo.to_str().unwrap(), "--data", data.join("dl_track").to_str().unwrap(),
        "--val-fraction", "0.15", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    eprintln!("aponeurosis: dice {} rel median {} within10 {}", v["dice"], v["thickness_rel_err_median"], v["thickness_within_10pct"]);
    assert!(v["images"].as_u64().unwrap() >= 50);
    assert!(v["dice"].as_f64().unwrap() >= 0.85, "{}", v["dice"]);
    assert!(v["thickness_rel_err_median"].as_f64().unwrap() <= 0.01, "{}", v["thickness_rel_err_median"]);
    assert!(v["thickness_within_10pct"].as_f64().unwrap() >= 0.95, "{}", v["thickness_within_10pct"]);
    let head = root.join("models/fetal-head.onnx");
    let hc = data.join("hc18");
    let o = run(&[
        "eval", "--model", head.to_str().unwrap(), "--data", hc.to_str().unwrap(), "--val-fraction", "0.15",
        "--mm-csv", hc.join("pixel_size_and_hc.csv").to_str().unwrap(), "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    eprintln!("fetal head: dice {} hc mae {} mm", v["dice"], v["circumference_mae_mm"]);
    assert!(v["dice"].as_f64().unwrap() >= 0.97, "{}", v["dice"]);
    assert!(v["circumference_mae_mm"].as_f64().unwrap() <= 2.0, "{}", v["circumference_mae_mm"]);
}
