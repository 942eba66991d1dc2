//! `pocusd train` / `pocusd export` end to end on phantom data: learning is proven by overfitting
//! (Dice of the exported model, scored by tract through `pocusd eval`), export parity between
//! burn and tract, resume after SIGKILL, bad data, TensorBoard events read back by the
//! `tensorboard` package, the exported file checked by onnx and run by onnxruntime.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use pocusd::infer::LoadedModel;
use pocusd::model::SpecOverrides;
use pocusd::synth::SplitMix64;
use pocusd::train::export::to_onnx;
use pocusd::train::trainer::{self, spec_for, RunState};
use pocusd::train::unet::{Encoder, Unet, UnetArch};

use crate::common::{pocusd, python, run, stderr, stdout, synth_dataset};

/// A config that switches augmentation off (so 8 images can be learnt by heart quickly).
fn no_augment_config(dir: &Path) -> PathBuf {
    let p = dir.join("noaug.toml");
    let mut s = String::from("[train]\n");
    for k in [
        "aug_hflip_p",
        "aug_vflip_p",
        "aug_rotate_p",
        "aug_scale_p",
        "aug_elastic_p",
        "aug_noise_p",
        "aug_blur_p",
        "aug_brightness_contrast_p",
    ] {
        s.push_str(&format!("{k} = 0.0\n"));
    }
    std::fs::write(&p, s).unwrap();
    p
}

pub(crate) fn small_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        epochs,
        "--batch",
        "4",
        "--input",
        "64x64",
        "--depth",
        "3",
        "--width",
        "8",
        "--roi",
        "none",
        "--threads",
        "1",
    ]
}

fn metrics_rows(run: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(trainer::METRICS_HEADER));
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn state(run: &Path) -> RunState {
    serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/last.json")).unwrap())
        .unwrap()
}

/// The phantom set of the resume tests: 12 images of 80x64.
fn resume_dataset(dir: &Path) -> PathBuf {
    let ds = dir.join("ds");
    synth_dataset(
        &ds,
        &[
            "--count", "12", "--width", "80", "--height", "64", "--seed", "9",
        ],
    );
    ds
}

/// Waits (at most 600 s) until the run in `run` has committed a checkpoint for which `ready`
/// holds, then SIGKILLs `child` (no chance to clean up); returns that checkpoint's state.
fn kill_when(
    mut child: std::process::Child,
    run: &Path,
    ready: impl Fn(&RunState) -> bool,
) -> RunState {
    let deadline = Instant::now() + Duration::from_secs(600);
    let seen = loop {
        if let Ok(text) = std::fs::read_to_string(run.join("checkpoints/last.json")) {
            if let Ok(st) = serde_json::from_str::<RunState>(&text) {
                if ready(&st) {
                    break st;
                }
            }
        }
        assert!(Instant::now() < deadline, "no such checkpoint within 600 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

#[test]
fn overfitting_eight_phantoms_reaches_dice_above_0_9() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(
        &ds,
        &[
            "--count", "8", "--width", "96", "--height", "72", "--seed", "5",
        ],
    );
    let cfg = no_augment_config(tmp.path());
    let out = tmp.path().join("run");
    // 8 images, batch 8: one step per epoch; 80 steps with a fixed seed.
    let o = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "train",
        "--data",
        ds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--val-fraction",
        "0",
        "--epochs",
        "80",
        "--batch",
        "8",
        "--input",
        "64x64",
        "--depth",
        "3",
        "--width",
        "8",
        "--lr",
        "0.01",
        "--seed",
        "3",
        "--roi",
        "none",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = out.join("model.onnx");
    assert_eq!(stdout(&o).trim(), model.to_str().unwrap());
    assert_eq!(metrics_rows(&out).len(), 80);
    // The exported file, run by tract, on the same images.
    let e = run(&[
        "--roi",
        "full",
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        ds.to_str().unwrap(),
        "--json",
    ]);
    assert!(e.status.success(), "{}", stderr(&e));
    let v: serde_json::Value = serde_json::from_str(&stdout(&e)).unwrap();
    let dice = v["dice"].as_f64().unwrap();
    assert!(dice > 0.9, "Dice after 80 steps: {dice}");
    assert!(o.status.success());
    for f in [
        "run.json",
        "metrics.csv",
        "curves.png",
        "checkpoints/best-dice.model.bpk",
        "checkpoints/best-loss.model.bpk",
        "checkpoints/epoch-0080.model.bpk",
        "checkpoints/epoch-0080.optim.bpk",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(
        !out.join("checkpoints/epoch-0079.model.bpk").exists(),
        "old checkpoints are removed"
    );
}

/// Trains a network a few steps in burn (so batch-norm statistics are not trivial), exports it,
/// and compares burn's inference with tract's run of the file.
#[test]
fn export_parity_burn_vs_tract() {
    parity(1, Encoder::Unet);
    parity(2, Encoder::Unet);
    parity(1, Encoder::EfficientnetLite0);
}

fn parity(classes: usize, encoder: Encoder) {
    let device = trainer::device_for(pocusd::train::settings::Backend::Flex);
    let ad = device.clone().autodiff();
    let eff = encoder == Encoder::EfficientnetLite0;
    let arch = UnetArch {
        depth: if eff { 4 } else { 3 },
        base_width: 8,
        in_channels: 1,
        classes,
        encoder,
    };
    let (w, h) = (64usize, 48usize);
    let mut net = Unet::new(&arch, &ad);
    let mut optim = burn::optim::AdamConfig::new().init();
    let mut rng = SplitMix64::new(11);
    for _ in 0..3 {
        let x: Vec<f32> = (0..4 * w * h).map(|_| rng.next_f64() as f32).collect();
        let y: Vec<f32> = x.iter().map(|&v| (v > 0.6) as u8 as f32).collect();
        let xt = Tensor::<4>::from_data(TensorData::new(x, [4, 1, h, w]), &ad);
        let yt = Tensor::<4>::from_data(TensorData::new(y, [4, 1, h, w]), &ad);
        let loss = pocusd::train::loss::Loss::DiceBce.compute(net.forward(xt), yt);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    let valid = net.valid();
    let mut settings_spec = spec_for(&test_settings(w, h), Some("parity test".into()), None, None);
    settings_spec.clahe = None;
    if classes == 2 {
        settings_spec.output = pocusd::model::OutputKind::Softmax;
        settings_spec.output_channels = 2;
    }
    let bytes = to_onnx(&valid, &settings_spec).unwrap();
    let mut model =
        LoadedModel::from_bytes(&bytes, Path::new("parity.onnx"), &SpecOverrides::default())
            .unwrap();
    // Random inputs and a phantom image.
    let phantom = pocusd::synth::sample(
        pocusd::synth::PhantomConfig {
            width: w,
            height: h,
            ..Default::default()
        },
        3,
    );
    let mut inputs: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..w * h).map(|_| rng.next_f64() as f32).collect())
        .collect();
    inputs.push(
        phantom
            .image
            .as_slice()
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect(),
    );
    let mut worst = 0.0f32;
    for x in inputs {
        let t = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 1, h, w]), &device);
        let burn_p: Vec<f32> = valid
            .probability(t)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let tract_p = model.run(&x).unwrap();
        assert_eq!(burn_p.len(), tract_p.len());
        for (a, b) in burn_p.iter().zip(tract_p) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "max abs difference burn vs tract ({classes} classes, {encoder:?}): {worst}"
    );
    if eff {
        // Its architecture reads back from the file (what finds its unfolded copy's shape)...
        let inits = pocusd::train::export::onnx_initializers("parity.onnx", &bytes).unwrap();
        assert_eq!(
            pocusd::train::export::onnx_arch("parity.onnx", &inits).unwrap(),
            arch
        );
        // ...but a folded file cannot give back its batch norms: refused, with the way.
        let e = pocusd::train::export::load_onnx_weights(
            "parity.onnx",
            &bytes,
            Unet::new(&arch, &device),
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("EfficientNet-lite0") && e.contains(".bpk"),
            "{e}"
        );
        return;
    }
    // The same bytes load back as initial weights by name.
    let re = pocusd::train::export::load_onnx_weights(
        "parity.onnx",
        &bytes,
        Unet::new(&arch, &device),
        &device,
    )
    .unwrap();
    let again = to_onnx(&re, &settings_spec).unwrap();
    let mut model2 =
        LoadedModel::from_bytes(&again, Path::new("again.onnx"), &SpecOverrides::default())
            .unwrap();
    let x: Vec<f32> = (0..w * h).map(|i| ((i * 31) % 97) as f32 / 97.0).collect();
    let a = model.run(&x).unwrap().to_vec();
    let b = model2.run(&x).unwrap();
    let d = max_abs_difference(&a, b);
    assert!(d < 1e-4, "ONNX -> burn -> ONNX changed outputs by {d}");
}

/// The embedded defaults alone (no /etc file, no environment).
fn defaults() -> pocusd::config::Config {
    pocusd::config::load_from(&pocusd::config::Sources {
        system_file: PathBuf::from("/nonexistent"),
        user_file: None,
        env: Vec::new(),
    })
    .unwrap()
}

fn test_settings(w: usize, h: usize) -> pocusd::train::settings::TrainSettings {
    let cfg = defaults();
    let mut t = cfg.raw.train.clone();
    t.input = format!("{w}x{h}");
    t.depth = 3;
    t.width = 8;
    pocusd::train::settings::TrainSettings::from_section(&t, None).unwrap()
}

/// `train.roi = "model"` (the default) follows the `--init` model's `pocusd.roi`, and is auto
/// without one; an explicit value wins.
#[test]
fn training_roi_follows_the_init_model() {
    use pocusd::infer::onnx_file;
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full.onnx");
    crate::common::small_unet(&full);
    let auto = tmp.path().join("auto.onnx");
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(
        &auto,
        onnx_file::rewrite_metadata(&bytes, &[("pocusd.roi".into(), "auto".into())], &[]).unwrap(),
    )
    .unwrap();
    let cfg = defaults();
    assert_eq!(cfg.raw.train.roi, "model");
    let roi_auto = |init: &Path, roi: &str| {
        let mut t = cfg.raw.train.clone();
        t.init = init.display().to_string();
        t.roi = roi.into();
        pocusd::train::settings::TrainSettings::from_section(&t, None)
            .unwrap()
            .roi_auto
    };
    assert!(!roi_auto(&full, "model"));
    assert!(roi_auto(&auto, "model"));
    assert!(roi_auto(Path::new(""), "model"));
    assert!(roi_auto(&full, "auto"));
    assert!(!roi_auto(&auto, "none"));
    // Mirrored test-time averaging is carried over too, into the exported spec.
    let tta = tmp.path().join("tta.onnx");
    std::fs::write(
        &tta,
        onnx_file::rewrite_metadata(&bytes, &[("pocusd.tta".into(), "mirror".into())], &[])
            .unwrap(),
    )
    .unwrap();
    let settings = |init: &Path| {
        let mut t = cfg.raw.train.clone();
        t.init = init.display().to_string();
        pocusd::train::settings::TrainSettings::from_section(&t, None).unwrap()
    };
    assert!(settings(&tta).tta_mirror);
    assert!(!settings(&full).tta_mirror);
    assert!(spec_for(&settings(&tta), None, None, None).tta_mirror);
}

#[test]
fn resume_after_sigkill_continues_from_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = resume_dataset(tmp.path());
    let d = ds.to_str().unwrap();
    // Reference: the same run without interruption.
    let full = tmp.path().join("full");
    let o = run(&small_args(d, full.to_str().unwrap(), "6"));
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = metrics_rows(&full);
    assert_eq!(reference.len(), 6);

    let cut = tmp.path().join("cut");
    let child = pocusd()
        .args(small_args(d, cut.to_str().unwrap(), "6"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done_before = kill_when(child, &cut, |st| st.epochs_done >= 2).epochs_done;
    let killed = state(&cut);
    assert!(
        killed.epochs_done >= done_before && killed.epochs_done < 6,
        "{}",
        killed.epochs_done
    );
    // metrics.csv is whole and never behind the checkpoint (`last.json` is written last, so a
    // kill between the two leaves the logs one epoch ahead, which the resumed run rewrites).
    let logged = metrics_rows(&cut).len();
    assert!(
        logged == killed.epochs_done || logged == killed.epochs_done + 1,
        "metrics.csv has {logged} rows, the checkpoint {} epochs",
        killed.epochs_done
    );

    let o = run(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("resumed after epoch {}", killed.epochs_done)),
        "{}",
        stderr(&o)
    );
    let after = state(&cut);
    assert_eq!(after.epochs_done, 6);
    assert_eq!(
        after.history[..killed.epochs_done],
        killed.history[..],
        "history kept"
    );
    assert_eq!(
        after.step,
        state(&full).step,
        "optimizer step count continues"
    );
    // Same seed, same data order, optimizer state restored: the resumed run ends where the
    // uninterrupted one did (one thread, so the arithmetic is the same).
    let rows = metrics_rows(&cut);
    assert_eq!(rows.len(), 6);
    // Everything but the timing column, to a tolerance: the sums inside the backend's kernels are
    // not bit-repeatable from one process to the next (last-digit differences seen).
    let close = |a: &str, b: &str| {
        let (x, y): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-3 * x.abs().max(y.abs()).max(1e-3)
    };
    for (a, b) in rows.iter().zip(&reference) {
        for c in 0..9 {
            assert!(
                close(&a[c], &b[c]),
                "resumed run diverged from the uninterrupted one: {a:?} vs {b:?}"
            );
        }
    }
    let (ra, fa) = (after.best_dice.unwrap(), state(&full).best_dice.unwrap());
    assert!(
        ra.epoch == fa.epoch && close(&ra.value.to_string(), &fa.value.to_string()),
        "{ra:?} {fa:?}"
    );
    let (ra, fa) = (after.best_loss.unwrap(), state(&full).best_loss.unwrap());
    assert!(
        ra.epoch == fa.epoch && close(&ra.value.to_string(), &fa.value.to_string()),
        "{ra:?} {fa:?}"
    );
}

/// `[train] swa_epochs`: the last epochs run at one constant rate, the weights after each of
/// their steps are averaged, and the average (its batch-norm statistics measured on the training
/// images) is what the run exports and `--checkpoint swa` gives; a run killed in the middle of
/// the averaged epochs and resumed ends with the average of the uninterrupted run; a run without
/// averaging and a setting that leaves nothing to average are refused by name.
#[test]
fn weight_averaging_exports_the_mean_of_the_last_epochs_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = resume_dataset(tmp.path());
    let d = ds.to_str().unwrap();
    let cfg = tmp.path().join("swa.toml");
    std::fs::write(&cfg, "[train]\nswa_epochs = 4\nswa_lr_fraction = 0.3\n").unwrap();
    let c = cfg.to_str().unwrap();
    let with_cfg = |out: &Path| {
        let mut a = vec!["--config".to_string(), c.to_string()];
        a.extend(
            small_args(d, out.to_str().unwrap(), "8")
                .into_iter()
                .map(String::from),
        );
        a
    };
    let full = tmp.path().join("full");
    let o = pocusd().args(with_cfg(&full)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(the weight average of the last"),
        "{}",
        stderr(&o)
    );
    let st = state(&full);
    // Averaged: every step of epochs 5 to 8, at lr 1e-3 x 0.3; the cosine before them ends there.
    assert_eq!(st.swa_steps, st.step - st.history[3].step);
    let lrs: Vec<f64> = st.history.iter().map(|m| m.lr).collect();
    for (e, lr) in lrs.iter().enumerate() {
        let want = if e >= 3 { 3e-4 } else { lrs[e] };
        assert!((lr - want).abs() < 1e-12, "epoch {}: lr {lr}", e + 1);
    }
    assert!(
        lrs[0] > lrs[1] && lrs[1] > lrs[2] && lrs[2] > 3e-4,
        "{lrs:?}"
    );
    assert!(full.join("checkpoints").join(&st.swa_file).is_file());
    assert!(full.join("model.onnx").is_file());
    // The exported model is the average, not the last weights.
    let swa = tmp.path().join("swa.onnx");
    let last = tmp.path().join("last.onnx");
    for (which, out) in [("swa", &swa), ("last", &last)] {
        let o = run(&[
            "export",
            "--run",
            full.to_str().unwrap(),
            "--checkpoint",
            which,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let outputs = |m: &Path| {
        let mut model = LoadedModel::load(m, &SpecOverrides::default()).unwrap();
        let mut rng = SplitMix64::new(3);
        let x: Vec<f32> = (0..64 * 64).map(|_| rng.next_f64() as f32).collect();
        model.run(&x).unwrap().to_vec()
    };
    let (m, s, l) = (
        outputs(&full.join("model.onnx")),
        outputs(&swa),
        outputs(&last),
    );
    assert!(
        max_abs_difference(&m, &s) < 1e-6,
        "model.onnx is not the average"
    );
    assert!(
        max_abs_difference(&s, &l) > 1e-4,
        "the average equals the last weights"
    );

    // Killed after the first averaged epoch, then resumed.
    let cut = tmp.path().join("cut");
    let child = pocusd()
        .args(with_cfg(&cut))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_when(child, &cut, |st| st.swa_steps > 0);
    let o = run(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let resumed = state(&cut);
    assert_eq!(resumed.swa_steps, st.swa_steps);
    let (a, b) = (resumed.swa_val_dice.unwrap(), st.swa_val_dice.unwrap());
    assert!(
        (a - b).abs() <= 1e-3 * a.abs().max(b.abs()).max(1e-3),
        "{a} vs {b}"
    );
    assert!(
        max_abs_difference(&outputs(&cut.join("model.onnx")), &m) < 1e-3,
        "the resumed run's average differs"
    );

    // No average to export, and nothing left to train before one.
    let plain = tmp.path().join("plain");
    let o = run(&small_args(d, plain.to_str().unwrap(), "1"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "export",
        "--run",
        plain.to_str().unwrap(),
        "--checkpoint",
        "swa",
        "--out",
        tmp.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no weight average"), "{}", stderr(&o));
    let bad = tmp.path().join("bad");
    let mut a = vec!["--config", c];
    a.extend(small_args(d, bad.to_str().unwrap(), "4"));
    let o = run(&a);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("swa_epochs = 4"), "{}", stderr(&o));
}

#[test]
fn bad_data_gives_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Empty folder.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    std::fs::create_dir_all(empty.join("masks")).unwrap();
    let o = run(&[
        "train",
        "--data",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no usable image/mask pairs"),
        "{}",
        stderr(&o)
    );
    // Not a dataset folder.
    let o = run(&[
        "train",
        "--data",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("needs images/ and masks/"),
        "{}",
        stderr(&o)
    );
    // No --data at all.
    let o = run(&["train", "--out", out.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("no training data: give --data DIR"),
        "{}",
        stderr(&o)
    );
    // A corrupt PNG and a size mismatch: skipped, named, counted; training goes on.
    let ds = tmp.path().join("ds");
    synth_dataset(&ds, &["--count", "6", "--width", "64", "--height", "64"]);
    std::fs::write(ds.join("images/synth_00001.png"), b"\x89PNG broken").unwrap();
    pocusd::imageio::write_gray(
        &ds.join("masks/synth_00002.png"),
        &pocusd::frame::GrayImage::new(10, 10),
    )
    .unwrap();
    let o = run(&small_args(
        ds.to_str().unwrap(),
        out.to_str().unwrap(),
        "1",
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("synth_00001.png") && e.contains("synth_00002.png"),
        "{e}"
    );
    assert!(
        e.contains("4 pairs used; skipped 1 unreadable, 1 with image/mask size mismatch"),
        "{e}"
    );
    // A bad option value names its key; a second run into the same folder is refused.
    let o = run(&[
        "train",
        "--data",
        ds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--loss",
        "l2",
    ]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("train.loss"), "{}", stderr(&o));
    let o = run(&small_args(
        ds.to_str().unwrap(),
        out.to_str().unwrap(),
        "1",
    ));
    assert!(
        stderr(&o).contains("already holds a run; continue it with --resume"),
        "{}",
        stderr(&o)
    );
    // --init with a foreign file.
    let foreign = tmp.path().join("foreign.onnx");
    std::fs::write(&foreign, b"not onnx at all").unwrap();
    let mut args = small_args(ds.to_str().unwrap(), "", "1");
    let other = tmp.path().join("run2");
    args[4] = other.to_str().unwrap();
    args.extend(["--init", foreign.to_str().unwrap()]);
    let o = run(&args);
    assert!(
        stderr(&o).contains("is not an ONNX file exported by pocusd"),
        "{}",
        stderr(&o)
    );
}

/// Scalars in the TensorBoard event file, read by tensorboard's EventAccumulator, equal metrics.csv;
/// the exported model passes onnx's full check and onnxruntime agrees with tract.
#[test]
#[ignore = "needs the .venv of scripts/setup.sh (tensorboard, onnx, onnxruntime); scripts/test.sh runs it"]
fn tensorboard_events_and_onnx_checks() {
    let py = python();
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(&ds, &["--count", "10", "--width", "64", "--height", "64"]);
    let out = tmp.path().join("run");
    let o = run(&small_args(
        ds.to_str().unwrap(),
        out.to_str().unwrap(),
        "3",
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let script = r#"
import csv, glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run = sys.argv[1]
files = glob.glob(run + "/logs/events.out.tfevents.*")
assert len(files) == 1, files
acc = EventAccumulator(files[0]); acc.Reload()
rows = list(csv.DictReader(open(run + "/metrics.csv")))
n = 0
for tag, col in [("train/loss", "train_loss"), ("val/dice", "val_dice"), ("val/loss", "val_loss"), ("val/iou", "val_iou"), ("train/dice", "train_dice")]:
    ev = acc.Scalars(tag)
    assert [e.step for e in ev] == [int(r["epoch"]) for r in rows], (tag, ev)
    for e, r in zip(ev, rows):
        v = float(r[col])
        assert abs(e.value - v) <= 1e-6 * max(1.0, abs(v)), (tag, e.value, v)
        n += 1
print(n)
"#;
    let o = Command::new(&py)
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "15");

    let exported = tmp.path().join("last.onnx");
    let o = run(&[
        "export",
        "--run",
        out.to_str().unwrap(),
        "--checkpoint",
        "last",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(&py)
        .arg(crate::common::script("check_onnx.py"))
        .arg(&exported)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["checker"], "ok");
    assert_eq!(
        report["metadata"]["pocusd.run_id"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
    assert!(
        report["metadata"]["pocusd.val_dice"].as_str().is_some(),
        "{report}"
    );
    // Training's `--roi none` is the whole frame in the model's contract.
    assert_eq!(report["metadata"]["pocusd.roi"], "full", "{report}");
    assert_eq!(
        report["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| *o == "ConvTranspose")
            .count(),
        3,
        "one per level"
    );
    // onnxruntime vs tract on the same input.
    let x: Vec<f32> = (0..64 * 64)
        .map(|i| ((i * 13) % 251) as f32 / 251.0)
        .collect();
    let mut model = LoadedModel::load(&exported, &SpecOverrides::default()).unwrap();
    let tract_p = model.run(&x).unwrap().to_vec();
    let raw = tmp.path().join("x.f32");
    std::fs::write(
        &raw,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = Command::new(&py)
        .arg(crate::common::script("check_onnx.py"))
        .arg(&exported)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let ort: Vec<f32> = report["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let worst = max_abs_difference(&ort, &tract_p);
    assert!(worst < 1e-4, "onnxruntime vs tract: {worst}");
}

/// The augmentation preview shows pairs side by side.
#[test]
fn augmentation_previews_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(&ds, &["--count", "4", "--width", "64", "--height", "64"]);
    let out = tmp.path().join("run");
    let mut args = small_args(ds.to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(["--preview-augment", "5", "--val-fraction", "0.25"]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for k in 0..5 {
        let p = out.join(format!("previews/augment/{k:03}.png"));
        let img = pocusd::imageio::read_gray(&p).unwrap();
        assert_eq!((img.width(), img.height()), (3 * 64 + 4, 64));
    }
    let grid = pocusd::imageio::read_gray(&out.join("previews/epoch-0001.png")).unwrap();
    assert_eq!(
        grid.width(),
        3 * 64 + 4,
        "image / reference / prediction columns"
    );
}

/// Promise (issue 13, nothing lost in training): `pocusd train` killed with SIGKILL at 10
/// moments (seeded, from 0.2 to 2.5 s after each start): every time the run folder holds only
/// whole files (last.json parses and names checkpoint files that exist, metrics.csv parses and is
/// never behind the checkpoint) and `--resume` continues; the finished run exports a model tract
/// loads.
#[test]
fn train_survives_ten_sigkills_with_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(
        &ds,
        &[
            "--count", "12", "--width", "80", "--height", "64", "--seed", "4",
        ],
    );
    let run_dir = tmp.path().join("run");
    let mut rng = SplitMix64::new(11);
    let mut kills = 0;
    let mut first = true;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        assert!(Instant::now() < deadline, "not finished within 900 s");
        let mut cmd = pocusd();
        if first {
            cmd.args(small_args(
                ds.to_str().unwrap(),
                run_dir.to_str().unwrap(),
                "40",
            ));
        } else {
            cmd.args(["train", "--resume", run_dir.to_str().unwrap()]);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if kills >= 10 {
            assert!(child.wait().unwrap().success(), "the last resume finishes");
            break;
        }
        let wait = Duration::from_millis(200 + (rng.next_f64() * 2300.0) as u64);
        let t = Instant::now();
        let mut finished = false;
        while t.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if finished {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // A kill before the first checkpoint leaves nothing to resume: start over.
        let last = run_dir.join("checkpoints/last.json");
        if !last.exists() {
            first = true;
            let _ = std::fs::remove_dir_all(&run_dir);
            continue;
        }
        first = false;
        let st = state(&run_dir);
        let ck = run_dir.join("checkpoints");
        for f in [&st.model_file, &st.optimizer_file] {
            let len = std::fs::metadata(ck.join(f)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "kill {kills}: {f} missing or empty");
        }
        let rows = metrics_rows(&run_dir).len();
        assert!(
            rows == st.epochs_done || rows == st.epochs_done + 1,
            "kill {kills}: metrics.csv {rows} rows, checkpoint {} epochs",
            st.epochs_done
        );
        let leftovers: Vec<_> = std::fs::read_dir(&ck)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        // A temporary sibling may be left by the kill itself; it is never read, and the next
        // write of that file replaces it.
        assert!(leftovers.len() <= 1, "kill {kills}: {leftovers:?}");
    }
    assert_eq!(kills, 10, "the run ended before its tenth kill");
    assert_eq!(state(&run_dir).epochs_done, 40);
    let model = run_dir.join("model.onnx");
    LoadedModel::load(&model, &SpecOverrides::default()).expect("the exported model loads");
    eprintln!("train: {kills} SIGKILLs, resumed each time");
}

/// Probabilities of an ONNX file on `inputs` (tract, as served).
fn probabilities(model: &Path, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(model).unwrap();
    let mut m = LoadedModel::from_bytes(&bytes, model, &SpecOverrides::default()).unwrap();
    inputs.iter().map(|x| m.run(x).unwrap().to_vec()).collect()
}

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let (a, b): (Vec<f32>, Vec<f32>) = (a.concat(), b.concat());
    max_abs_difference(&a, &b)
}

/// The largest absolute difference between two equally long outputs.
fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max)
}

/// Fine-tuning can start from exactly the model it is given: one epoch at learning rate 0 from
/// `--init MODEL.onnx` with batch norms frozen at their statistics exports the same model
/// (within 1e-4 on every pixel), from the unfolded `MODEL.bpk` kept beside it and from the
/// folded ONNX alone (which `bn_stats = "auto"` fine-tunes frozen). Normalising by each batch
/// (auto with the unfolded copy) moves the statistics towards the data's, so it does not.
#[test]
fn fine_tuning_at_learning_rate_0_reproduces_the_init_model() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(
        &ds,
        &[
            "--count", "8", "--width", "64", "--height", "64", "--seed", "5",
        ],
    );
    let ds_s = ds.to_str().unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let out_s = out.to_str().unwrap();
        let mut args = small_args(ds_s, out_s, "2");
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "train {extra:?}: {}", stderr(&o));
        stderr(&o)
    };
    let export = |run_dir: &Path, out: &Path| {
        let o = run(&[
            "export",
            "--run",
            run_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "export: {}", stderr(&o));
    };
    let base_run = tmp.path().join("base");
    train(&base_run, &["--lr", "0.01"]);
    let base = tmp.path().join("base.onnx");
    export(&base_run, &base);
    assert!(
        tmp.path().join("base.bpk").is_file(),
        "export wrote no unfolded base.bpk beside base.onnx"
    );
    // The same model without its unfolded copy.
    let folded_only = tmp.path().join("folded-only.onnx");
    std::fs::copy(&base, &folded_only).unwrap();

    let mut rng = SplitMix64::new(3);
    let mut inputs: Vec<Vec<f32>> = (0..2)
        .map(|_| (0..64 * 64).map(|_| rng.next_f64() as f32).collect())
        .collect();
    let phantom = pocusd::synth::sample(
        pocusd::synth::PhantomConfig {
            width: 64,
            height: 64,
            ..Default::default()
        },
        4,
    );
    inputs.push(
        phantom
            .image
            .as_slice()
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect(),
    );
    let want = probabilities(&base, &inputs);

    let fine_tune = |name: &str, init: &Path, extra: &[&str]| {
        let run_dir = tmp.path().join(name);
        let run_s = run_dir.to_str().unwrap().to_string();
        let mut args = small_args(ds_s, &run_s, "1");
        args.extend_from_slice(&["--init", init.to_str().unwrap(), "--lr", "0"]);
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "fine-tune {name}: {}", stderr(&o));
        let model = tmp.path().join(format!("{name}.onnx"));
        export(&run_dir, &model);
        let d = max_difference(&want, &probabilities(&model, &inputs));
        eprintln!("{name}: largest probability difference to the init model {d:.2e}");
        (stderr(&o), d)
    };
    let (log, d) = fine_tune("from-bpk", &base, &["--bn-stats", "frozen"]);
    assert!(
        log.contains("base.bpk") && log.contains("batch norms frozen"),
        "the run does not say it started from the unfolded copy, frozen: {log}"
    );
    assert!(
        d < 1e-4,
        "lr 0 from base.onnx + base.bpk changed outputs by {d}"
    );
    // auto: a folded ONNX alone is fine-tuned frozen (its batch norms hold no statistics).
    let (log, d) = fine_tune("from-onnx", &folded_only, &[]);
    assert!(
        log.contains("only the folded ONNX") && log.contains("batch norms frozen"),
        "the run does not say it had only the folded ONNX, frozen: {log}"
    );
    assert!(
        d < 1e-4,
        "lr 0 from the folded ONNX alone changed outputs by {d}"
    );
    // auto with the unfolded copy: normalised by each batch, the statistics move to the data's
    // (what the nightly loop does; measured in models/README.md).
    let (log, d) = fine_tune("batch-stats", &base, &[]);
    assert!(
        log.contains("normalising by each batch"),
        "auto with base.bpk should normalise by each batch: {log}"
    );
    let run_json = std::fs::read_to_string(tmp.path().join("batch-stats/run.json")).unwrap();
    assert!(
        run_json.contains("\"bn_stats\": \"batch\""),
        "run.json does not keep the decision: {run_json}"
    );
    assert!(
        d > 1e-3,
        "normalising by each batch at lr 0 should move the model (the running statistics move), moved {d}"
    );

    // A folded file whose run is gone gets its unfolded copy back from its training images
    // (`pocusd models unfold`): the same model frozen, and normalised by each batch it stays
    // near the model, where the identity batch norms of the folded file alone do not.
    let identity = tmp.path().join("identity.onnx");
    std::fs::copy(&base, &identity).unwrap();
    let (_, d_identity) = fine_tune("identity-batch", &identity, &["--bn-stats", "batch"]);
    let o = run(&[
        "models",
        "unfold",
        folded_only.to_str().unwrap(),
        "--data",
        ds_s,
        "--json",
    ]);
    assert!(o.status.success(), "models unfold: {}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["batch_norms"], 14, "{r}");
    assert_eq!(r["images"], 8, "{r}");
    assert!(r["fold_difference"].as_f64().unwrap() <= 1e-5, "{r}");
    assert!(tmp.path().join("folded-only.bpk").is_file());
    let (log, d) = fine_tune("unfolded-frozen", &folded_only, &["--bn-stats", "frozen"]);
    assert!(log.contains("folded-only.bpk"), "{log}");
    assert!(
        d < 1e-4,
        "lr 0 from the calibrated unfolding, frozen, moved {d}"
    );
    let (_, d_calibrated) = fine_tune("unfolded-batch", &folded_only, &[]);
    assert!(
        d_calibrated * 5.0 < d_identity,
        "by each batch, the calibrated unfolding moved the model by {d_calibrated}, the identity batch norms by {d_identity}"
    );
}

/// Self-supervised pretraining (`--loss reconstruct`, issue 27 part 4): it learns from a folder
/// of images alone (no masks/ beside them), restores corrupted validation images better epoch
/// after epoch, is never exported as a model (its output is an image), and a labelled run starts
/// from its best-restoring checkpoint.
#[test]
fn pretraining_on_images_without_masks_then_a_labelled_run_starts_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    synth_dataset(
        &ds,
        &[
            "--count", "24", "--width", "64", "--height", "64", "--seed", "8",
        ],
    );
    // Only the images: a folder of frames as a cart keeps them.
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for e in std::fs::read_dir(ds.join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), frames.join(e.file_name())).unwrap();
    }
    let pre = tmp.path().join("pre");
    let (frames_s, pre_s) = (frames.to_str().unwrap(), pre.to_str().unwrap());
    let mut args = small_args(frames_s, pre_s, "8");
    args.extend_from_slice(&[
        "--loss",
        "reconstruct",
        "--lr",
        "0.01",
        "--val-fraction",
        "0.25",
    ]);
    let o = run(&args);
    assert!(o.status.success(), "pretraining: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), pre_s, "it names the run to --init from");
    assert!(
        stderr(&o).contains("self-supervised pretraining on 24 images"),
        "{}",
        stderr(&o)
    );
    assert!(!pre.join("model.onnx").exists(), "nothing exported");
    let st = state(&pre);
    let val: Vec<f64> = st.history.iter().map(|m| m.val_loss).collect();
    assert_eq!(val.len(), 8);
    let best = st.best_loss.expect("a best-loss checkpoint").value;
    assert!(
        best < 0.7 * val[0],
        "restoration did not improve: validation loss by epoch {val:?}"
    );

    let e = run(&[
        "export",
        "--run",
        pre_s,
        "--out",
        tmp.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!e.status.success());
    assert!(
        stderr(&e).contains("self-supervised pretraining run"),
        "{}",
        stderr(&e)
    );
    assert!(!tmp.path().join("x.onnx").exists());

    let seg = tmp.path().join("seg");
    let mut args = small_args(ds.to_str().unwrap(), seg.to_str().unwrap(), "1");
    args.extend_from_slice(&["--init", pre_s]);
    let o = run(&args);
    assert!(o.status.success(), "labelled run: {}", stderr(&o));
    assert!(
        stderr(&o).contains("initialised from the self-supervised pretraining run"),
        "{}",
        stderr(&o)
    );
    assert!(seg.join("model.onnx").is_file());
}
