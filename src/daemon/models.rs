//! The daemon's models: which file to start on, what "checked" means, the `Model` and `Models`
//! property dictionaries, and the commands that change the models while the daemon runs
//! (`LoadModel`, `LoadExtraModel`, `RollbackModel`): each new model is loaded and checked off the
//! supervisor's thread and handed to the processing thread only once it passed, so a refused file
//! leaves the running model in place. Owns no state: it reads and updates the supervisor's
//! `model`, `extra_models`, `roi_warning` and `threshold`. Must not touch the snapshots, the exam,
//! the configuration reload or the D-Bus connection.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::dbus::{Error as DbusError, Val, Values};
use super::pipeline::Control;
use super::supervisor::Supervisor;
use super::{store, RunOptions};
use crate::analyzer::default_model_candidates;
use crate::config::Config;
use crate::infer::LoadedModel;
use crate::preprocess::roi::RoiChoice;

/// The model to use: the flag, then the cart's current version (`models_dir/current.onnx`,
/// written by `pocusd loop nightly` and `pocusd models rollback`) when it exists, then `[model]
/// path`, then the shipped default.
pub fn resolve_model(cfg: &Config, flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let current = cfg
        .loop_
        .models_dir(&store::resolve_state_dir(&cfg.storage))
        .join(crate::versions::CURRENT);
    if current.is_file() {
        return Ok(current);
    }
    if let Some(p) = cfg.model.path.clone() {
        return Ok(p);
    }
    let candidates = default_model_candidates("aponeurosis.onnx");
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no model given and no default model found (looked in {}); pass --model FILE.onnx or set [model] path",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Loads a model and runs it once on a blank input: it must produce finite numbers of the
/// expected size. This is what "checked" means for READY and for `LoadModel`.
pub fn load_checked(path: &Path, cfg: &Config) -> anyhow::Result<LoadedModel> {
    let mut model = LoadedModel::load(path, &cfg.model.overrides)
        .with_context(|| format!("cannot load model {}", path.display()))?;
    let s = model.spec().clone();
    let input = vec![0.5f32; s.channels * s.input_width * s.input_height];
    let out = model
        .run(&input)
        .with_context(|| format!("model {} fails on a test input", path.display()))?;
    if out.is_empty() || out.iter().any(|x| !x.is_finite()) {
        anyhow::bail!(
            "model {} gives non-finite or empty output on a test input",
            path.display()
        );
    }
    Ok(model)
}

/// The `Model` property: the file, its task and size, and the region of interest in force (the
/// model's `roi` policy, the `roi_applied` mode and `roi_override` when an explicit choice departs
/// from the model's).
pub(super) fn model_values(model: &LoadedModel, roi: RoiChoice) -> Values {
    let s = model.spec();
    let r = roi.resolve(s.roi);
    let mut v = Values::new();
    let abs = std::fs::canonicalize(model.path()).unwrap_or_else(|_| model.path().to_path_buf());
    v.insert("path".into(), Val::S(abs.display().to_string()));
    v.insert("sha256".into(), Val::S(model.sha256().to_string()));
    v.insert("task".into(), Val::S(s.task.as_str().to_string()));
    v.insert("input_width".into(), Val::U(s.input_width as u64));
    v.insert("input_height".into(), Val::U(s.input_height as u64));
    if let Some(t) = &s.trained_on {
        v.insert("trained_on".into(), Val::S(t.clone()));
    }
    if let Some(d) = s.val_dice {
        v.insert("val_dice".into(), Val::F(d));
    }
    v.insert("roi".into(), Val::S(s.roi.as_str().into()));
    v.insert("roi_applied".into(), Val::S(r.mode.to_string()));
    v.insert("roi_override".into(), Val::B(r.overrides_model()));
    v
}

/// Logs (once per model) that an explicit region of interest overrides the model's policy, and
/// returns the warning for the status and the viewer.
pub(super) fn warn_roi(model: &LoadedModel, roi: RoiChoice) -> Option<String> {
    let w = roi.resolve(model.spec().roi).warning()?;
    eprintln!("pocusd: warning: {}: {w}", model.path().display());
    Some(w)
}

/// The extra models (`--extra-model`, else `[model] extra`), each checked like the primary, one
/// per task and none with the primary's task.
pub(super) fn load_extras(
    opts: &RunOptions,
    cfg: &Config,
    primary: &LoadedModel,
) -> anyhow::Result<Vec<LoadedModel>> {
    let paths = if opts.extra_models.is_empty() {
        &cfg.model.extra
    } else {
        &opts.extra_models
    };
    load_extra_models(paths, cfg, primary)
}

/// The extra models at `paths`, each checked like the primary, one per task and none with the
/// primary's task (`pocusd run` and `pocusd infer`).
pub fn load_extra_models(
    paths: &[PathBuf],
    cfg: &Config,
    primary: &LoadedModel,
) -> anyhow::Result<Vec<LoadedModel>> {
    let mut out: Vec<LoadedModel> = Vec::new();
    for p in paths {
        let m = load_checked(p, cfg).context("an extra model ([model] extra, --extra-model)")?;
        let task = m.spec().task;
        if task == primary.spec().task {
            anyhow::bail!(
                "extra model {} is a {} model like the primary model {}: an extra model adds another task (e.g. fascicle beside aponeurosis)",
                p.display(),
                task.as_str(),
                primary.path().display()
            );
        }
        if m.spec().roi != primary.spec().roi {
            eprintln!(
                "pocusd: warning: extra model {} was trained with roi {} but runs on the primary model's region of interest (roi {})",
                p.display(),
                m.spec().roi.as_str(),
                primary.spec().roi.as_str()
            );
        }
        if let Some(o) = out.iter().find(|o| o.spec().task == task) {
            anyhow::bail!(
                "extra models {} and {} are both {} models: one extra model per task",
                o.path().display(),
                p.display(),
                task.as_str()
            );
        }
        out.push(m);
    }
    Ok(out)
}

/// At most the first 200 characters of a caller's input, for error replies (a 60 MB argument
/// must not come back in full).
pub(super) fn cut(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// A model path from a method call: absolute and an existing file.
pub(super) fn check_model_path(path: &Path) -> Result<(), DbusError> {
    let shown = cut(&path.display().to_string());
    if !path.is_absolute() {
        return Err(DbusError::InvalidArgument(format!(
            "model path {shown:?} is not absolute; pass the full path of an ONNX file"
        )));
    }
    if !path.is_file() {
        return Err(DbusError::NotFound(format!("no model file at {shown}")));
    }
    Ok(())
}

pub(super) async fn load_model_command(
    sup: &mut Supervisor,
    path: PathBuf,
) -> Result<(), DbusError> {
    check_model_path(&path)?;
    let model = load_for_swap(sup, &path).await?;
    swap_model(sup, model, &path)
}

/// `LoadExtraModel(role, path)`: the role is the model's task (not the primary's); the model in
/// that role, if any, keeps running when the new one is refused.
pub(super) async fn load_extra_command(
    sup: &mut Supervisor,
    role: String,
    path: PathBuf,
) -> Result<(), DbusError> {
    let shown = cut(&path.display().to_string());
    let primary = sup
        .model
        .get("task")
        .and_then(Val::as_str)
        .unwrap_or("")
        .to_string();
    let Some(task) = crate::model::Task::parse(&role).filter(|t| t.as_str() != primary) else {
        return Err(DbusError::InvalidArgument(format!(
            "role {:?}: an extra model's role is its task, one of {} other than the primary model's ({primary})",
            cut(&role),
            crate::model::Task::allowed()
        )));
    };
    check_model_path(&path)?;
    let model = load_for_swap(sup, &path).await?;
    if model.spec().task != task {
        let msg = format!(
            "{shown} is a {} model, not a {role} model; the running {role} model (if any) is kept",
            model.spec().task.as_str()
        );
        eprintln!("pocusd: extra model refused: {msg}");
        return Err(DbusError::ModelRejected(msg));
    }
    let vals = model_values(&model, sup.cfg.source.roi);
    sup.control
        .send(Control::Extra(Box::new(model)))
        .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
    sup.extra_models.insert(role.clone(), vals);
    eprintln!("pocusd: extra model {} loaded as {role}", path.display());
    Ok(())
}

/// Loads and checks a model off the async thread; a refusal keeps the running model.
pub(super) async fn load_for_swap(sup: &Supervisor, path: &Path) -> Result<LoadedModel, DbusError> {
    let cfg = sup.cfg.clone();
    let p = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || load_checked(&p, &cfg))
        .await
        .map_err(|e| DbusError::Io(format!("model loading task failed: {e}")))?;
    loaded.map_err(|e| {
        let msg = format!("{e:#}; the running model is kept");
        eprintln!("pocusd: model {} refused: {msg}", path.display());
        DbusError::ModelRejected(msg)
    })
}

/// Hands a checked model to the processing thread.
pub(super) fn swap_model(
    sup: &mut Supervisor,
    model: LoadedModel,
    path: &Path,
) -> Result<(), DbusError> {
    let vals = model_values(&model, sup.cfg.source.roi);
    sup.roi_warning = warn_roi(&model, sup.cfg.source.roi);
    sup.control
        .send(Control::Model(Box::new(model)))
        .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
    // The live threshold survives a model swap.
    let _ = sup.set_threshold(f64::from(sup.threshold));
    sup.model = vals;
    eprintln!("pocusd: model {} loaded", path.display());
    Ok(())
}

/// `RollbackModel`: the version is loaded and checked first; only then are `current.onnx` and
/// the history rewritten and the model switched, so a refused file changes nothing.
pub(super) async fn rollback_command(
    sup: &mut Supervisor,
    target: Option<u32>,
) -> Result<u32, DbusError> {
    use crate::versions::{Store, VersionError};
    let store = Store::new(sup.cfg.loop_.models_dir(&sup.state_dir));
    let verr = |e: VersionError| match e {
        VersionError::NoSuchVersion(_) => DbusError::NotFound(e.to_string()),
        VersionError::Refused(m) => DbusError::InvalidArgument(m),
        other => DbusError::Io(other.to_string()),
    };
    let v = store.rollback_target(target).map_err(verr)?;
    let model = load_for_swap(sup, &v.model).await?;
    if model.sha256() != v.sha256 {
        return Err(DbusError::ModelRejected(format!(
            "{} no longer has the sha256 recorded for version {}; the running model is kept",
            v.model.display(),
            v.version
        )));
    }
    let from = store
        .current_record()
        .ok()
        .flatten()
        .and_then(|r| r.version)
        .map_or("no version".to_string(), |c| format!("version {c}"));
    store
        .rollback(
            &v,
            &format!(
                "rollback from {from} to version {} (RollbackModel)",
                v.version
            ),
        )
        .map_err(verr)?;
    swap_model(sup, model, &v.model)?;
    eprintln!("pocusd: rolled back to model version {}", v.version);
    Ok(v.version)
}

/// The `Models` property's extra entries: each extra model's dictionary under its task.
pub(super) fn extra_values(
    extras: &[LoadedModel],
    roi: RoiChoice,
) -> std::collections::BTreeMap<String, Values> {
    extras
        .iter()
        .map(|m| (m.spec().task.as_str().to_string(), model_values(m, roi)))
        .collect()
}
