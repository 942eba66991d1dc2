//! Issue 15's loop on real files, a real daemon and a real bus: `pocusd loop nightly` promotes a
//! fine-tuned model that is better on the site's images and refuses one trained on shuffled
//! masks; the daemon starts on `current.onnx`; `RollbackModel` (gdbus) restores the exact
//! previous sha256 live; a nightly run killed with SIGKILL mid-epoch leaves `models_dir` as it
//! was and the next run resumes it to a complete history record.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon_support as ds;

/// The phantom set, a 1-epoch "current" model, and a config naming them. Returns (config, model).
fn setup(dir: &Path, epochs: u64) -> (PathBuf, PathBuf) {
    let site = dir.join("site");
    common::synth_dataset(
        &site,
        &[
            "--count", "24", "--seed", "3", "--width", "160", "--height", "120",
        ],
    );
    let test = dir.join("test");
    common::synth_dataset(
        &test,
        &[
            "--count", "10", "--seed", "9", "--width", "160", "--height", "120",
        ],
    );
    let base_run = dir.join("base-run");
    let (site_s, run_s) = (site.to_str().unwrap(), base_run.to_str().unwrap());
    let o = common::run(&crate::train::small_args(site_s, run_s, "1"));
    assert!(o.status.success(), "train: {}", common::stderr(&o));
    let model = base_run.join("model.onnx");
    let cfg = dir.join("pocusd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndir = \"{state}\"\n[model]\npath = \"{model}\"\n[loop]\nsite_data = \"{site}\"\n\
             test_data = \"{test}\"\nmin_site_images = 5\nepochs = {epochs}\nlr = 0.003\nloss = \"dice-bce\"\n\
             max_dice_drop = 0.05\n[train]\nbatch = 4\nthreads = 1\n",
            state = dir.join("state").display(),
            model = model.display(),
            site = site.display(),
            test = test.display(),
        ),
    )
    .unwrap();
    (cfg, model)
}

/// `pocusd loop nightly --json` with no daemon to tell.
fn nightly_cmd(cfg: &Path) -> std::process::Command {
    let mut c = common::pocusd();
    c.args([
        "--config",
        cfg.to_str().unwrap(),
        "loop",
        "nightly",
        "--json",
        "--session-bus",
    ])
    .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent");
    c
}

fn nightly_output(cfg: &Path) -> std::process::Output {
    nightly_cmd(cfg).output().unwrap()
}

fn nightly(cfg: &Path) -> serde_json::Value {
    let o = nightly_output(cfg);
    assert!(o.status.success(), "loop nightly: {}", common::stderr(&o));
    serde_json::from_str(&common::stdout(&o))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", common::stdout(&o)))
}

fn history(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("models/history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sha256(path: &Path) -> String {
    pocusd::versions::sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn nightly_promotes_a_better_model_refuses_a_worse_one_and_rollback_restores_the_old_sha() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, base_model) = setup(dir.path(), 6);
    let state = dir.path().join("state");
    let base_sha = sha256(&base_model);

    // Too few site images: a record, no run.
    let few = dir.path().join("few.toml");
    std::fs::write(
        &few,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("min_site_images = 5", "min_site_images = 500"),
    )
    .unwrap();
    let v = nightly(&few);
    assert_eq!(v["promoted"], false);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("too few site images: 24"),
        "{v}"
    );

    // A promotion.
    let v = nightly(&cfg);
    assert_eq!(v["promoted"], true, "{v}");
    assert_eq!(v["version"], 1);
    // The promoted version keeps its unfolded network beside it, version 0 the base's.
    for version in ["0000-", "0001-"] {
        let kept = std::fs::read_dir(state.join("models")).unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with(version) && name.ends_with(".bpk")
        });
        assert!(kept, "no {version}*.bpk in models_dir");
    }
    let site_cur = v["current"]["site"]["dice"].as_f64().unwrap();
    let site_new = v["candidate"]["site"]["dice"].as_f64().unwrap();
    assert!(site_new > site_cur, "{v}");
    assert!(
        v["candidate"]["test"]["dice"].is_f64() && v["candidate"]["test"]["error"].is_f64(),
        "{v}"
    );
    let v1 = PathBuf::from(v["model"].as_str().unwrap());
    let v1_sha = sha256(&v1);
    assert!(v1
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&format!("0001-{}", &v1_sha[..8])));
    assert_eq!(sha256(&state.join("models/current.onnx")), v1_sha);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("did not take it now"),
        "no daemon: {v}"
    );
    let h = history(&state);
    let kinds: Vec<&str> = h.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["nightly", "base", "nightly"], "{h:?}");
    assert_eq!(h[1]["sha256"], base_sha.as_str());
    assert_eq!(h[2]["parent"], 0);
    assert!(Path::new(v["run"].as_str().unwrap())
        .join("report.json")
        .is_file());

    // A refusal: the site masks shuffled between images (labels that disagree with the images).
    let masks = dir.path().join("site/masks");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&masks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let first = std::fs::read(&names[0]).unwrap();
    for i in 0..names.len() - 1 {
        std::fs::copy(&names[i + 1], &names[i]).unwrap();
    }
    std::fs::write(names.last().unwrap(), first).unwrap();
    let before: Vec<_> = std::fs::read_dir(state.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let v = nightly(&cfg);
    assert_eq!(v["promoted"], false, "{v}");
    assert!(v["version"].is_null() && v["model"].is_null(), "{v}");
    let mut after: Vec<_> = std::fs::read_dir(state.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "a refused candidate adds no file");
    assert_eq!(sha256(&state.join("models/current.onnx")), v1_sha);
    assert_eq!(history(&state).last().unwrap()["promoted"], false);

    // `models list`: versions 0 and 1, 1 current.
    let o = common::run(&[
        "--config",
        cfg.to_str().unwrap(),
        "models",
        "list",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let l: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(l["current"], 1, "{l}");
    assert_eq!(l["versions"].as_array().unwrap().len(), 2, "{l}");

    // The daemon starts on current.onnx (not [model] path) and rolls back live.
    let bus = ds::Bus::session();
    let mut d = ds::Daemon::spawn(
        {
            let mut c = ds::daemon_cmd(&bus, true, &state, &["--source", "demo?fps=20"]);
            c.args(["--config", cfg.to_str().unwrap()]);
            c
        },
        dir.path(),
    );
    ds::wait_for(
        "the daemon to process frames",
        Duration::from_secs(60),
        || ds::state_of(&bus) == 1,
    );
    assert!(
        ds::get(&bus, "Model").contains(&v1_sha),
        "{}",
        ds::get(&bus, "Model")
    );
    // The refused run is visible: the Training property, `pocusd status`, one Fault("training").
    let t = ds::get(&bus, "Training");
    assert!(
        t.contains("'promoted': <false>") && t.contains("'kind': <'nightly'>"),
        "{t}"
    );
    let (_, text) = ds::status(&bus, false);
    assert!(
        text.contains("last night's model was not promoted:"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        d.log()
            .matches("fault training: last night's model was not promoted")
            .count(),
        1,
        "{}",
        d.log()
    );
    let o = ds::call(&bus, "RollbackModel", &["--", "-1"]);
    assert!(o.status.success(), "RollbackModel: {}", common::stderr(&o));
    assert_eq!(common::stdout(&o).trim(), "(uint32 0,)");
    ds::wait_for(
        "the Model property to show the base model",
        Duration::from_secs(10),
        || ds::get(&bus, "Model").contains(&base_sha),
    );
    assert_eq!(sha256(&state.join("models/current.onnx")), base_sha);
    ds::wait_for(
        "the Training property to show the rollback",
        Duration::from_secs(10),
        || ds::get(&bus, "Training").contains("'kind': <'rollback'>"),
    );
    let last = history(&state).last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["version"].as_u64()),
        (Some("rollback"), Some(0))
    );
    // Version 0 has no previous one; an unknown version is NotFound; the model stays.
    let o = ds::call(&bus, "RollbackModel", &["--", "-1"]);
    assert!(
        !o.status.success() && common::stderr(&o).contains("no previous version"),
        "{}",
        common::stderr(&o)
    );
    let o = ds::call(&bus, "RollbackModel", &["7"]);
    assert!(
        common::stderr(&o).contains("NotFound"),
        "{}",
        common::stderr(&o)
    );
    // Forward again by number, through the command line.
    let o = common::pocusd()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "models",
            "rollback",
            "1",
            "--session-bus",
        ])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "models rollback: {}",
        common::stderr(&o)
    );
    ds::wait_for(
        "the Model property to show version 1",
        Duration::from_secs(10),
        || ds::get(&bus, "Model").contains(&v1_sha),
    );
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn a_nightly_run_killed_mid_epoch_changes_nothing_and_the_next_run_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = setup(dir.path(), 12);
    let state = dir.path().join("state");
    let mut child = nightly_cmd(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the second epoch's first step line, then kill.
    let run_dir = state.join("runs");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = std::fs::read_dir(&run_dir)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("train/checkpoints/last.json"))
            .is_some_and(|p| p.is_file());
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "no completed epoch in 240 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let models = state.join("models");
    let files: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Version 0 is the base model with the unfolded copy exported beside it (what the next
    // fine-tuning starts from exactly), current.onnx and the history.
    assert_eq!(
        files.len(),
        4,
        "version 0 (.onnx and .bpk), current.onnx, history: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("0000-") && f.ends_with(".bpk")),
        "no unfolded copy of version 0: {files:?}"
    );
    assert_eq!(
        history(&state).len(),
        1,
        "only the base import before the kill"
    );
    // The next run resumes the unfinished one.
    let o = nightly_output(&cfg);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("resuming the unfinished run"),
        "{}",
        common::stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let h = history(&state);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1]["kind"], "nightly");
    assert_eq!(h[1]["promoted"], v["promoted"]);
    assert!(
        h[1]["current"]["site"]["dice"].is_f64() && h[1]["candidate"]["site"]["dice"].is_f64(),
        "{h:?}"
    );
    assert_eq!(h[1]["run"], v["run"]);
}
