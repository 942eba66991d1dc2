//! Helpers shared by the integration tests: the binary, the reference Python, the real data.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The built `pocusd` binary.
pub fn pocusd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pocusd"))
}

/// Runs `pocusd` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    pocusd().args(args).output().expect("pocusd runs")
}

/// Runs `pocusd` with `args`, which must succeed (else the test fails with its stderr), and
/// parses what it printed as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "pocusd {args:?}: {}", stderr(&o));
    serde_json::from_str(stdout(&o).trim())
        .unwrap_or_else(|e| panic!("pocusd {args:?} printed no JSON ({e}): {}", stdout(&o)))
}

/// The Python with pinned OpenCV that scripts/setup.sh installs. Tests that need it are
/// `#[ignore]`d so a bare `cargo test` reports them as ignored, and scripts/test.sh runs them with
/// `--include-ignored`; there, a missing interpreter is a failure, never a skip.
pub fn python() -> PathBuf {
    let p = std::env::var_os("POCUSD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        p.exists(),
        "reference Python {} not found: run scripts/setup.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The real-data folder (`POCUSD_DATA`, else ../shared/data beside the checkout), if present.
pub fn real_data() -> Option<PathBuf> {
    let p = std::env::var_os("POCUSD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    p.join("README.md").exists().then_some(p)
}

/// The real-data folder for a test that needs the sets `sets` (e.g. `["dl_track"]`). When they
/// are missing the test is "not run", and says so where the test runner does not capture it
/// (straight to stderr); under CI (`CI` set), where ../shared is always beside the clone, a
/// missing folder is a broken set-up and fails the test.
pub fn real_data_for(test: &str, sets: &[&str]) -> Option<PathBuf> {
    let root = real_data();
    let missing: Vec<&str> = match &root {
        Some(r) => sets
            .iter()
            .copied()
            .filter(|s| !r.join(s).is_dir())
            .collect(),
        None => vec!["../shared/data"],
    };
    if missing.is_empty() {
        return root;
    }
    let why = format!("{} absent", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}; under CI (CI is set) ../shared/data must be beside the clone (or POCUSD_DATA set)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "not run: {test}: {why}");
    None
}

/// The script folder of the checkout.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// CPU seconds (user + system) used by the calling thread and by this process's threads named
/// `pocusd-*` (the library's worker threads). Other tests running in parallel do not count.
pub fn own_cpu_seconds() -> f64 {
    let me = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if Some(&tid) != me.as_ref() && !comm.starts_with("pocusd-") {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) {
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if f.len() > 12 {
                total += (f[11].parse::<f64>().unwrap_or(0.0)
                    + f[12].parse::<f64>().unwrap_or(0.0))
                    / 100.0;
            }
        }
    }
    total
}

/// A small random U-Net (64x64, depth 3, width 8) written by `pocusd unet` to `path`.
pub fn small_unet(path: &std::path::Path) {
    small_unet_with(path, &[]);
}

/// [`small_unet`] with more `pocusd unet` arguments (`--task fascicle`, `--seed 2`).
pub fn small_unet_with(path: &std::path::Path, extra: &[&str]) {
    let mut args = vec![
        "unet",
        "--out",
        path.to_str().expect("utf-8 temp path"),
        "--input",
        "64x64",
        "--depth",
        "3",
        "--width",
        "8",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "pocusd unet failed: {}", stderr(&o));
}

/// Writes a phantom dataset with `pocusd synth --out DIR ARGS...` and checks it succeeded.
pub fn synth_dataset(dir: &std::path::Path, args: &[&str]) {
    let mut all = vec!["synth", "--out", dir.to_str().expect("utf-8 temp path")];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "pocusd synth failed: {}", stderr(&o));
}

/// Held by the tests whose assertions count frames against a paced source and by the heaviest
/// neighbour (headless Chromium on the demo with two models), so that on a 2-core machine the
/// two never run at the same time: counted, not timed, but a starved pipeline still drops.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
