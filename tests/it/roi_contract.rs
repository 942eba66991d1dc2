//! The model carries its region-of-interest policy (`pocusd.roi`): `pocusd models meta` writes
//! it without touching graph or weights, the shipped models have it, and `eval`/`infer` apply it
//! per image by default (folders of mixed sizes included), with an explicit `--roi` reported
//! when it departs from the model's.

use std::path::{Path, PathBuf};

use pocusd::infer::onnx_file;

use crate::common::{run, stderr, stdout, synth_dataset};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn meta_of(path: &Path, key: &str) -> Option<String> {
    onnx_file::metadata(&std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[test]
fn models_meta_rewrites_metadata_and_copies_graph_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.onnx");
    crate::common::small_unet(&a);
    assert_eq!(meta_of(&a, "pocusd.roi").as_deref(), Some("full"));
    let b = tmp.path().join("b.onnx");
    let o = run(&[
        "models",
        "meta",
        a.to_str().unwrap(),
        "--set",
        "roi=auto",
        "--unset",
        "trained_on",
        "--out",
        b.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["metadata"]["pocusd.roi"], "auto", "{v}");
    assert!(v["metadata"].get("pocusd.trained_on").is_none(), "{v}");
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_ne!(
        pocusd::infer::sha256_hex(&ba),
        pocusd::infer::sha256_hex(&bb)
    );
    assert_eq!(v["sha256"], pocusd::infer::sha256_hex(&bb));
    // Graph and initializers: the same bytes.
    assert_eq!(
        onnx_file::graph_bytes(&ba).unwrap(),
        onnx_file::graph_bytes(&bb).unwrap()
    );
    let (ia, ib) = (
        onnx_file::initializers(&ba).unwrap(),
        onnx_file::initializers(&bb).unwrap(),
    );
    assert!(!ia.tensors.is_empty());
    assert_eq!(ia.tensors, ib.tensors);
    // A value the engine refuses is not written; the input is untouched.
    let c = tmp.path().join("c.onnx");
    let o = run(&[
        "models",
        "meta",
        b.to_str().unwrap(),
        "--set",
        "pocusd.roi=sideways",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("pocusd.roi") && stderr(&o).contains("nothing written"),
        "{}",
        stderr(&o)
    );
    assert!(!c.exists());
    // Not a model at all.
    std::fs::write(&c, b"not onnx").unwrap();
    let o = run(&["models", "meta", c.to_str().unwrap(), "--set", "roi=auto"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not an ONNX model"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&c).unwrap(), b"not onnx");
    // A bad flag value is a usage error.
    let o = run(&["models", "meta", b.to_str().unwrap(), "--set", "roi"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn shipped_models_carry_their_roi_policy() {
    for m in ["aponeurosis.onnx", "fetal-head.onnx"] {
        let p = repo().join("models").join(m);
        assert_eq!(meta_of(&p, "pocusd.roi").as_deref(), Some("auto"), "{m}");
    }
}

/// A folder of screen grabs in three sizes (two a pixel apart, where a region tracked from the
/// previous image would overhang the next): every image scored, and no `--roi` gives exactly
/// what `--roi auto` gives.
#[test]
fn eval_and_infer_apply_the_models_roi_per_image_on_mixed_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("mixed");
    for d in ["images", "masks"] {
        std::fs::create_dir_all(ds.join(d)).unwrap();
    }
    for (i, (w, h)) in [(640, 480), (639, 479), (800, 600)].iter().enumerate() {
        let part = tmp.path().join(format!("part{i}"));
        let (ws, hs, seed) = (w.to_string(), h.to_string(), (i + 3).to_string());
        synth_dataset(
            &part,
            &[
                "--count",
                "3",
                "--furniture",
                "--width",
                &ws,
                "--height",
                &hs,
                "--seed",
                &seed,
            ],
        );
        for d in ["images", "masks"] {
            for e in std::fs::read_dir(part.join(d)).unwrap().flatten() {
                let name = format!("s{i}_{}", e.file_name().to_string_lossy());
                std::fs::copy(e.path(), ds.join(d).join(name)).unwrap();
            }
        }
    }
    let model = repo().join("models/aponeurosis.onnx");
    let eval = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            ds.to_str().unwrap(),
            "--json",
        ]);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap(),
            stderr(&o),
        )
    };
    let (by_model, err_model) = eval(&[]);
    let (auto, _) = eval(&["--roi", "auto"]);
    assert_eq!(by_model["images"], 9, "{by_model}");
    assert_eq!(by_model["skipped"], 0, "{by_model}");
    assert_eq!(by_model["roi"], "auto");
    assert_eq!(by_model["roi_override"], false);
    assert!(!err_model.contains("warning"), "{err_model}");
    for k in [
        "dice",
        "iou",
        "failed",
        "thickness_mae_px",
        "thickness_rel_err_median",
        "per_image",
    ] {
        assert_eq!(by_model[k], auto[k], "{k}");
    }
    // Each image got a region inside itself, not the whole screen.
    for row in by_model["per_image"].as_array().unwrap() {
        let r = &row["roi"];
        let name = row["image"].as_str().unwrap();
        let (w, h) = match &name[..2] {
            "s0" => (640, 480),
            "s1" => (639, 479),
            _ => (800, 600),
        };
        let (x, y, rw, rh) = (
            r["x"].as_u64().unwrap(),
            r["y"].as_u64().unwrap(),
            r["w"].as_u64().unwrap(),
            r["h"].as_u64().unwrap(),
        );
        assert!(
            x + rw <= w && y + rh <= h && (rw < w || rh < h),
            "{name}: {r}"
        );
    }
    assert!(by_model["dice"].as_f64().unwrap() > 0.5, "{by_model}");
    // An explicit choice that differs from the model's is applied and reported.
    let (full, err_full) = eval(&["--roi", "full"]);
    assert_eq!(full["roi_override"], true);
    assert!(
        err_full.contains("warning") && err_full.contains("trained with auto"),
        "{err_full}"
    );

    // infer: each image its own region, in one call over mixed sizes.
    let out = tmp.path().join("out");
    let imgs: Vec<PathBuf> = [
        "s0_synth_00000.png",
        "s1_synth_00000.png",
        "s2_synth_00000.png",
    ]
    .iter()
    .map(|n| ds.join("images").join(n))
    .collect();
    let mut args = vec![
        "infer",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend(imgs.iter().map(|p| p.to_str().unwrap()));
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rois: Vec<&serde_json::Value> = v.as_array().unwrap().iter().map(|r| &r["roi"]).collect();
    assert_eq!(rois.len(), 3);
    assert_ne!(rois[0], rois[2], "different screens, different regions");
    for (r, (w, h)) in rois.iter().zip([(640u64, 480u64), (639, 479), (800, 600)]) {
        assert!(
            r["x"].as_u64().unwrap() + r["w"].as_u64().unwrap() <= w,
            "{r}"
        );
        assert!(
            r["y"].as_u64().unwrap() + r["h"].as_u64().unwrap() <= h,
            "{r}"
        );
    }
}
