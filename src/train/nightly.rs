//! `pocusd loop nightly`: one turn of the cart's learning loop. Splits the site's accepted labels
//! into training and site-validation by a stable hash of the name, fine-tunes the current model
//! (base data plus site training images, the site ones repeated `site_weight` times), scores the
//! candidate and the current model on the same site-validation images and the locked test set
//! with `eval`'s metrics, and promotes the candidate only if it is better on the site and no worse
//! on the test set. Every run, promoted or not, ends with a record in `history.jsonl` and a
//! `report.json` in its run folder; an interrupted run (no `report.json`) is resumed by the next
//! one. Nothing in `models_dir` changes before the decision. Asking a running daemon to take the
//! new model is the caller's (a callback), so this module does not depend on D-Bus or the daemon.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::trainer::{self, Progress};
use crate::config::UnlabelledAdaptation;
use crate::config::{LoopConfig, TrainSection};
use crate::eval::{self, EvalOptions, TaskScore};
use crate::infer::LoadedModel;
use crate::model::{SpecOverrides, Task};
use crate::postprocess::PostprocessConfig;
use crate::preprocess::clahe::ClaheParams;
use crate::preprocess::roi::RoiChoice;
use crate::versions::{self, Adaptation, DataCounts, Kind, Record, Score, Scores, Store};

#[derive(Debug, Error)]
pub enum NightlyError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Versions(#[from] versions::VersionError),
    #[error("{0}")]
    Invalid(String),
}

/// Everything a run needs, resolved by the caller.
pub struct NightlyInputs<'a> {
    pub cfg: &'a LoopConfig,
    /// The state folder (runs go to `STATE/runs`).
    pub state: &'a Path,
    /// The `[train]` section: everything the loop does not set itself (batch, augmentation, ...).
    pub train: &'a TrainSection,
    pub clahe: Option<ClaheParams>,
    /// The model to fine-tune when `models_dir` has no current version yet.
    pub fallback_model: &'a Path,
    pub post: PostprocessConfig,
    pub clahe_threads: std::num::NonZeroUsize,
}

/// What `pocusd loop nightly --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct NightlyOutcome {
    pub promoted: bool,
    pub reason: String,
    pub version: Option<u32>,
    pub model: Option<PathBuf>,
    pub site_images: usize,
    pub current: Option<Scores>,
    pub candidate: Option<Scores>,
    /// The run folder, when a run took place.
    pub run: Option<PathBuf>,
    /// What kind of run it was (`labelled`, `bn-stats`), when one took place.
    pub adaptation: Option<Adaptation>,
}

/// Image names of a dataset folder that have a mask of the same name.
fn labelled_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir.join("images")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| crate::dataset::has_image_ext(n))
        .filter(|n| dir.join("masks").join(n).is_file())
        .collect();
    v.sort();
    v
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NightlyError {
    let path = path.to_path_buf();
    move |source| NightlyError::Io { what, path, source }
}

/// Links `src/{images,masks}/name` as `dst/{images,masks}/prefix+name`.
fn link_pair(src: &Path, name: &str, dst: &Path, prefix: &str) -> Result<(), NightlyError> {
    for sub in ["images", "masks"] {
        let from = std::fs::canonicalize(src.join(sub).join(name))
            .map_err(io("cannot resolve", &src.join(sub).join(name)))?;
        let to = dst.join(sub).join(format!("{prefix}{name}"));
        std::os::unix::fs::symlink(&from, &to).map_err(io("cannot link", &to))?;
    }
    Ok(())
}

/// Builds `run/data/{train,site-val}` (symbolic links, made under a temporary name and renamed,
/// so an interrupted build leaves nothing half made). Returns the counts.
fn build_split(
    run: &Path,
    site: &Path,
    base: Option<&Path>,
    cfg: &LoopConfig,
) -> Result<DataCounts, NightlyError> {
    let data = run.join("data");
    let tmp = run.join(".data.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    for d in ["train", "site-val"] {
        for sub in ["images", "masks"] {
            let p = tmp.join(d).join(sub);
            std::fs::create_dir_all(&p).map_err(io("cannot create", &p))?;
        }
    }
    let names = labelled_names(site);
    let mut counts = DataCounts {
        site_images: names.len(),
        ..Default::default()
    };
    let repeats = if base.is_some() {
        cfg.site_weight.round().max(1.0) as usize
    } else {
        1
    };
    for n in &names {
        if versions::in_validation(n, cfg.site_val_fraction) {
            link_pair(site, n, &tmp.join("site-val"), "")?;
            counts.site_val += 1;
        } else {
            for r in 0..repeats {
                link_pair(site, n, &tmp.join("train"), &format!("site{r}-"))?;
            }
            counts.site_train += 1;
        }
    }
    if let Some(base) = base {
        let names = labelled_names(base);
        if names.is_empty() {
            return Err(NightlyError::Invalid(format!(
                "[loop] base_data {} has no image/mask pairs (it needs images/ and masks/ with the same names)",
                base.display()
            )));
        }
        for n in &names {
            link_pair(base, n, &tmp.join("train"), "base-")?;
        }
        counts.base_images = names.len();
    }
    std::fs::rename(&tmp, &data).map_err(io("cannot rename", &tmp))?;
    Ok(counts)
}

/// An unfinished run (made, no `report.json`) to resume, the newest first.
fn unfinished_run(runs: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(runs)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("nightly-"))
                && p.join("data").is_dir()
                && !p.join("report.json").exists()
        })
        .collect();
    v.sort();
    v.pop()
}

/// Scores a model on a folder with `eval`'s metrics: Dice, and the error of the model's task
/// (median relative thickness error; mean relative circumference error against the reference
/// masks, with the mm error when a CSV of pixel sizes is given).
pub fn score(
    m: &mut LoadedModel,
    data: &Path,
    mm_csv: Option<&Path>,
    post: PostprocessConfig,
    clahe_threads: std::num::NonZeroUsize,
) -> Result<Score, NightlyError> {
    let opts = EvalOptions {
        data: data.to_path_buf(),
        task: None,
        mm_csv: mm_csv.map(Path::to_path_buf),
        validation: None,
        roi: RoiChoice::default(),
        clahe_threads,
        post,
        apo_model: None,
    };
    let report = eval::evaluate(m, &opts, &mut |_| {})
        .map_err(|e| NightlyError::Invalid(format!("scoring {}: {e}", m.path().display())))?;
    let error = match m.spec().task {
        Task::Aponeurosis => report.thickness_rel_err_median,
        // No reference length without aponeuroses: the orientation error, in degrees.
        Task::Fascicle => report.orientation_err_deg_median,
        Task::Region => {
            let rel: Vec<f64> = report
                .per_image
                .iter()
                .filter_map(|s| match s.task {
                    TaskScore::Region {
                        circumference_px: Some(c),
                        reference_circumference_px: Some(r),
                        ..
                    } if r > 0.0 => Some((c - r).abs() / r),
                    _ => None,
                })
                .collect();
            (!rel.is_empty()).then(|| rel.iter().sum::<f64>() / rel.len() as f64)
        }
    };
    Ok(Score {
        dice: report.dice,
        error,
        images: report.images,
        error_mm: report.circumference_mae_mm,
    })
}

/// Whether the candidate may replace the current model, and why (or why not).
pub fn decide(current: &Scores, candidate: &Scores, max_dice_drop: f64) -> (bool, String) {
    let f = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
    let (Some(cs), Some(ns)) = (current.site, candidate.site) else {
        return (false, "no site-validation score".into());
    };
    match (cs.dice, ns.dice) {
        (_, None) => return (false, "the candidate has no site-validation Dice".into()),
        (Some(c), Some(n)) if n <= c => {
            return (
                false,
                format!(
                    "site-validation Dice {} is not above the current model's {}",
                    f(Some(n)),
                    f(Some(c))
                ),
            )
        }
        _ => {}
    }
    if let (Some(ct), Some(nt)) = (current.test, candidate.test) {
        match (ct.dice, nt.dice) {
            (Some(c), Some(n)) if n < c - max_dice_drop => {
                return (
                    false,
                    format!(
                        "test Dice {} is more than {max_dice_drop} below the current model's {}",
                        f(Some(n)),
                        f(Some(c))
                    ),
                )
            }
            (Some(_), None) => return (false, "the candidate has no test Dice".into()),
            _ => {}
        }
        match (ct.error, nt.error) {
            (Some(c), Some(n)) if n > c => {
                return (
                    false,
                    format!(
                        "test error {} is higher than the current model's {}",
                        f(Some(n)),
                        f(Some(c))
                    ),
                )
            }
            (Some(_), None) => return (false, "the candidate has no test error".into()),
            _ => {}
        }
    }
    (
        true,
        format!(
            "site-validation Dice {} above {}{}",
            f(ns.dice),
            f(cs.dice),
            test_summary(current, candidate)
        ),
    )
}

/// "; test Dice N against C, error N against C" when both models have a test score, else "".
fn test_summary(current: &Scores, candidate: &Scores) -> String {
    let f = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
    match (current.test, candidate.test) {
        (Some(ct), Some(nt)) => format!(
            "; test Dice {} against {}, error {} against {}",
            f(nt.dice),
            f(ct.dice),
            f(nt.error),
            f(ct.error)
        ),
        _ => String::new(),
    }
}

fn write_report(run: &Path, outcome: &NightlyOutcome) -> Result<(), NightlyError> {
    let text =
        serde_json::to_string_pretty(outcome).map_err(|e| NightlyError::Invalid(e.to_string()))?;
    crate::files::write_atomic(&run.join("report.json"), text.as_bytes())
        .map_err(|e| NightlyError::Invalid(e.to_string()))
}

/// One nightly run. `load_model` is asked to hand a promoted model to a running daemon; its
/// error is reported in the outcome's reason, not as a failure (the files are the truth, and
/// the daemon loads `current.onnx` at its next start).
pub fn run(
    inp: &NightlyInputs,
    progress: &mut dyn Progress,
    load_model: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<NightlyOutcome, NightlyError> {
    let cfg = inp.cfg;
    let store = Store::new(cfg.models_dir(inp.state));
    let site = cfg.site_data(inp.state);
    let site_images = labelled_names(&site).len();
    let record_only =
        |reason: String, run: Option<PathBuf>| -> Result<NightlyOutcome, NightlyError> {
            let mut r = Record::new(Kind::Nightly, false, reason.clone());
            r.parent = store.current_record()?.and_then(|r| r.version);
            r.data.site_images = site_images;
            r.run = run.clone();
            store.append(&r)?;
            Ok(NightlyOutcome {
                promoted: false,
                reason,
                version: None,
                model: None,
                site_images,
                current: None,
                candidate: None,
                run,
                adaptation: None,
            })
        };
    let runs = inp.state.join("runs");
    let resumed = unfinished_run(&runs);
    if resumed.is_none() && (site_images as u64) < cfg.min_site_images {
        let too_few = format!(
            "too few site images: {site_images} accepted labels in {}, [loop] min_site_images is {}",
            site.display(),
            cfg.min_site_images
        );
        if cfg.unlabelled_adaptation == UnlabelledAdaptation::Off {
            return record_only(too_few, None);
        }
        let dir = cfg.unlabelled_data(inp.state);
        let frames = unlabelled_frames(&dir, cfg.max_unlabelled_frames as usize);
        if (frames.len() as u64) < cfg.min_unlabelled_frames {
            return record_only(
                format!(
                    "{too_few}; and too few unlabelled frames to adapt without labels: {} in {}, [loop] min_unlabelled_frames is {}",
                    frames.len(),
                    dir.display(),
                    cfg.min_unlabelled_frames
                ),
                None,
            );
        }
        progress.log(&format!(
            "{too_few}: adapting to the site's {} unlabelled frames in {} instead",
            frames.len(),
            dir.display()
        ));
        return run_unlabelled(inp, &store, &frames, site_images, progress, load_model);
    }
    let current_model = current_model(inp, &store, progress)?;
    let parent = store.current_record()?.and_then(|r| r.version);

    let (run, counts) = match resumed {
        Some(run) => {
            progress.log(&format!("resuming the unfinished run {}", run.display()));
            let counts = read_counts(&run).unwrap_or_default();
            (run, counts)
        }
        None => {
            let stamp = crate::clock::rfc3339_us(crate::clock::realtime_us())
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(15)
                .collect::<String>();
            let run = runs.join(format!("nightly-{stamp}Z"));
            std::fs::create_dir_all(&run).map_err(io("cannot create", &run))?;
            let counts = build_split(&run, &site, cfg.base_data.as_deref(), cfg)?;
            let text = serde_json::to_string(&counts).unwrap_or_default();
            crate::files::write_atomic(&run.join("counts.json"), text.as_bytes())
                .map_err(|e| NightlyError::Invalid(e.to_string()))?;
            (run, counts)
        }
    };
    let mut counts = counts;
    if counts.site_val == 0 || counts.site_train == 0 {
        let outcome = record_only(
            format!(
                "the {} site images split into {} for training and {} for site validation; both need at least one (add labels or change [loop] site_val_fraction)",
                counts.site_images, counts.site_train, counts.site_val
            ),
            Some(run.clone()),
        )?;
        write_report(&run, &outcome)?;
        return Ok(outcome);
    }

    // Fine-tune.
    let load = |p: &Path| {
        LoadedModel::load(p, &SpecOverrides::default())
            .map_err(|e| NightlyError::Invalid(format!("{e}")))
    };
    // Loaded once: its contract sets the fine-tuning, then it is scored.
    let mut current_loaded = load(&current_model)?;
    let settings = super::adapt::fine_tuning(
        inp.train,
        inp.clahe,
        &current_model,
        &run.join("data/train"),
        &run.join("data/site-val"),
        &run.join("train"),
        (cfg.epochs, cfg.lr, &cfg.loss),
    )
    .map_err(|e| NightlyError::Invalid(format!("training settings: {e}")))?;
    // A finished training (killed while scoring) is kept; one with a completed epoch resumes;
    // one without starts over.
    let train_dir = run.join("train");
    let finished = train_dir.join("model.onnx");
    let trained = if finished.is_file() {
        Ok(finished)
    } else {
        let resume = train_dir.join("checkpoints/last.json").is_file();
        if !resume && train_dir.exists() {
            std::fs::remove_dir_all(&train_dir).map_err(io("cannot remove", &train_dir))?;
        }
        // A segmentation run always exports its model.onnx (only pretraining runs do not).
        trainer::train(&settings, resume, None, progress)
            .map(|o| o.model.unwrap_or_else(|| finished.clone()))
    };
    let candidate_model = match trained {
        Ok(m) => m,
        Err(e) => {
            let outcome = record_only(
                format!("training failed: {e}; the current model stays"),
                Some(run.clone()),
            )?;
            write_report(&run, &outcome)?;
            return Ok(outcome);
        }
    };

    // Score both on the same images.
    let site_val = run.join("data/site-val");
    // Both models on the same images, each loaded once.
    let score_all = |m: &mut LoadedModel| -> Result<Scores, NightlyError> {
        let site = score(m, &site_val, None, inp.post, inp.clahe_threads)?;
        let test = match &cfg.test_data {
            Some(d) => Some(score(
                m,
                d,
                cfg.test_mm_csv.as_deref(),
                inp.post,
                inp.clahe_threads,
            )?),
            None => None,
        };
        Ok(Scores {
            site: Some(site),
            test,
            ..Default::default()
        })
    };
    let current = score_all(&mut current_loaded)?;
    let candidate = score_all(&mut load(&candidate_model)?)?;
    counts.test_images = current.test.map_or(0, |t| t.images);
    let (promote, reason) = decide(&current, &candidate, cfg.max_dice_drop);
    let mut r = Record::new(Kind::Nightly, promote, reason);
    r.parent = parent;
    r.data = counts;
    r.current = Some(current);
    r.candidate = Some(candidate);
    r.run = Some(run.clone());
    r.adaptation = Some(Adaptation::Labelled);
    finish(&store, r, Some(&candidate_model), &run, load_model)
}

/// Ends a run: with a candidate, records its sha256 and, when `r.promoted`, installs it as the
/// next version (with its unfolded copy) and hands it to a running daemon; appends the history
/// record and writes the run's report.
fn finish(
    store: &Store,
    mut r: Record,
    candidate_model: Option<&Path>,
    run: &Path,
    load_model: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<NightlyOutcome, NightlyError> {
    let candidate = match candidate_model {
        Some(p) => Some((p, std::fs::read(p).map_err(io("cannot read", p))?)),
        None => None,
    };
    if let Some((_, bytes)) = &candidate {
        r.sha256 = Some(versions::sha256_hex(bytes));
    }
    if let (true, Some((candidate_model, cand_bytes))) = (r.promoted, &candidate) {
        let version = store.next_version()?;
        let (file, _) = store.install(version, cand_bytes)?;
        let side = super::trainer::unfolded_path(candidate_model);
        if let Ok(unfolded) = std::fs::read(&side) {
            store.install_unfolded(&file, &unfolded)?;
        }
        if let Err(e) = load_model(&file) {
            r.reason = format!(
                "{}; the running daemon did not take it now ({e}); it loads it at its next start",
                r.reason
            );
        }
        r.version = Some(version);
        r.model = Some(file);
    }
    let outcome = NightlyOutcome {
        promoted: r.promoted,
        reason: r.reason.clone(),
        version: r.version,
        model: r.model.clone(),
        site_images: r.data.site_images,
        current: r.current,
        candidate: r.candidate,
        run: Some(run.to_path_buf()),
        adaptation: r.adaptation,
    };
    store.append(&r)?;
    write_report(run, &outcome)?;
    Ok(outcome)
}

/// The model to start from: the current version, else the configured or shipped one (then
/// imported as version 0 with its unfolded copy, so a rollback can return to it).
fn current_model(
    inp: &NightlyInputs,
    store: &Store,
    progress: &mut dyn Progress,
) -> Result<PathBuf, NightlyError> {
    store.repair_current()?;
    if let Some(r) = store.current_record()? {
        return r.model.ok_or_else(|| {
            NightlyError::Invalid("the current history record names no model file".into())
        });
    }
    let bytes = std::fs::read(inp.fallback_model)
        .map_err(io("cannot read the model", inp.fallback_model))?;
    let (file, sha) = store.install(0, &bytes)?;
    let side = super::trainer::unfolded_path(inp.fallback_model);
    if let Ok(unfolded) = std::fs::read(&side) {
        store.install_unfolded(&file, &unfolded)?;
    }
    let mut r = Record::new(
        Kind::Base,
        true,
        format!(
            "the model the cart ran before its first promotion: {}",
            inp.fallback_model.display()
        ),
    );
    r.version = Some(0);
    r.sha256 = Some(sha);
    r.model = Some(file.clone());
    store.append(&r)?;
    progress.log(&format!(
        "imported {} as model version 0",
        inp.fallback_model.display()
    ));
    Ok(file)
}

/// The images of an unlabelled folder (`NAME.png` as the daemon keeps them, or any folder of
/// images, or its `images/`), the newest `max` by name (the daemon's names sort by time).
pub fn unlabelled_frames(dir: &Path, max: usize) -> Vec<PathBuf> {
    let list = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && p.file_name().is_some_and(|n| {
                                let n = n.to_string_lossy();
                                !n.starts_with('.') && crate::dataset::has_image_ext(&n)
                            })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = list(dir);
    if v.is_empty() {
        v = list(&dir.join("images"));
    }
    v.sort();
    let skip = v.len().saturating_sub(max);
    v.split_off(skip)
}

/// Writes the project's phantom set for `task` into `dir` (`images/`, `masks/`), `count` images.
fn write_phantom_set(dir: &Path, task: Task, count: u64) -> Result<(), NightlyError> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(tmp.join(sub)).map_err(io("cannot create", &tmp))?;
    }
    let cfg = crate::synth::PhantomConfig {
        width: 320,
        height: 240,
        task,
        seed: 27,
        ..Default::default()
    };
    for i in 0..count {
        let s = crate::synth::sample(cfg, i);
        let name = format!("phantom_{i:04}.png");
        for (sub, img) in [("images", &s.image), ("masks", &s.mask)] {
            let p = tmp.join(sub).join(&name);
            crate::imageio::write_gray(&p, img)
                .map_err(|e| NightlyError::Invalid(format!("{}: {e}", p.display())))?;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(io("cannot rename", &tmp))
}

/// Whether a candidate adapted without labels may replace the current model, and why (or why
/// not): the locked test set (when configured) loses no more than `max_dice_drop` Dice and its
/// error does not rise; the phantom set loses no more than `max_phantom_drop` in Dice or error;
/// and on the held-back site frames the gate finds more frames ok by evidence that is not the
/// model's own confidence. A model that only grew more confident gains nothing here.
pub fn decide_unlabelled(
    current: &Scores,
    candidate: &Scores,
    max_dice_drop: f64,
    max_phantom_drop: f64,
) -> (bool, String) {
    let f = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
    if let (Some(ct), Some(nt)) = (current.test, candidate.test) {
        if let Some(why) = worse(&ct, &nt, max_dice_drop, 0.0, "test") {
            return (false, why);
        }
    }
    match (current.phantom, candidate.phantom) {
        (Some(cp), Some(np)) => {
            if let Some(why) = worse(&cp, &np, max_phantom_drop, max_phantom_drop, "phantom") {
                return (false, why);
            }
        }
        _ => return (false, "no phantom-set score".into()),
    }
    let (Some(ch), Some(nh)) = (current.held_back, candidate.held_back) else {
        return (false, "no held-back frames scored".into());
    };
    let mirror = |e: &versions::EvidenceScore| {
        e.mirror_diff_mean
            .map_or("none".to_string(), |v| format!("{v:.4}"))
    };
    if !nh.improves_on(&ch) {
        return (
            false,
            format!(
                "the gate's evidence on the {} held-back site frames did not improve beyond chance: {} ok by geometry and mirrored frame against the current model's {} ({} gained, {} lost frame by frame; needed: gained - lost >= {} x sqrt(gained + lost)), mean mirrored difference {} against {} (confident by its own measure: {} against {}, which does not count)",
                nh.frames,
                nh.ok,
                ch.ok,
                nh.gained.map_or("-".into(), |g| g.to_string()),
                nh.lost.map_or("-".into(), |l| l.to_string()),
                versions::EVIDENCE_Z,
                mirror(&nh),
                mirror(&ch),
                nh.confident,
                ch.confident
            ),
        );
    }
    let (cp, np) = (
        current.phantom.unwrap_or_default(),
        candidate.phantom.unwrap_or_default(),
    );
    (
        true,
        format!(
            "on the {} held-back site frames the gate finds {} ok against {}, mean mirrored difference {} against {}; phantom Dice {} against {}{}",
            nh.frames,
            nh.ok,
            ch.ok,
            mirror(&nh),
            mirror(&ch),
            f(np.dice),
            f(cp.dice),
            test_summary(current, candidate)
        ),
    )
}

/// Why `new` is worse than `cur` on a set beyond the allowed Dice drop and error rise, if it is.
fn worse(cur: &Score, new: &Score, dice_drop: f64, error_rise: f64, set: &str) -> Option<String> {
    let f = |v: f64| format!("{v:.4}");
    match (cur.dice, new.dice) {
        (Some(c), Some(n)) if n < c - dice_drop => {
            return Some(format!(
                "{set} Dice {} is more than {dice_drop} below the current model's {}",
                f(n),
                f(c)
            ))
        }
        (Some(_), None) => return Some(format!("the candidate has no {set} Dice")),
        _ => {}
    }
    match (cur.error, new.error) {
        (Some(c), Some(n)) if n > c + error_rise => Some(format!(
            "{set} error {} is higher than the current model's {}{}",
            f(n),
            f(c),
            if error_rise > 0.0 {
                format!(" by more than {error_rise}")
            } else {
                String::new()
            }
        )),
        (Some(_), None) => Some(format!("the candidate has no {set} error")),
        _ => None,
    }
}

/// Run folders of adaptations without labels kept whole (each holds pseudo-labels and a training
/// run, about 30 MB for 2,000 frames); older ones are removed when a new one ends.
pub const KEEP_ADAPT_RUNS: usize = 7;

/// Removes all but the newest `keep` `adapt-*` folders of `runs` (their names sort by time).
fn prune_adapt_runs(runs: &Path, keep: usize, progress: &mut dyn Progress) {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return;
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("adapt-"))
        })
        .collect();
    v.sort();
    let old = v.len().saturating_sub(keep);
    for p in &v[..old] {
        if let Err(e) = std::fs::remove_dir_all(p) {
            progress.log(&format!(
                "warning: cannot remove the old run {}: {e}",
                p.display()
            ));
        }
    }
}

/// A nightly run without labels: the current model's batch-norm statistics re-estimated on the
/// site's unlabelled frames (less those held back), both models scored, the candidate promoted
/// by [`decide_unlabelled`].
fn run_unlabelled(
    inp: &NightlyInputs,
    store: &Store,
    frames: &[PathBuf],
    site_images: usize,
    progress: &mut dyn Progress,
    load_model: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<NightlyOutcome, NightlyError> {
    let outcome = adapt_and_judge(inp, store, frames, site_images, progress, load_model);
    prune_adapt_runs(&inp.state.join("runs"), KEEP_ADAPT_RUNS, progress);
    outcome
}

fn adapt_and_judge(
    inp: &NightlyInputs,
    store: &Store,
    frames: &[PathBuf],
    site_images: usize,
    progress: &mut dyn Progress,
    load_model: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<NightlyOutcome, NightlyError> {
    let cfg = inp.cfg;
    let current_model = current_model(inp, store, progress)?;
    let parent = store.current_record()?.and_then(|r| r.version);
    let stamp = crate::clock::rfc3339_us(crate::clock::realtime_us())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect::<String>();
    let run = inp.state.join("runs").join(format!("adapt-{stamp}Z"));
    std::fs::create_dir_all(&run).map_err(io("cannot create", &run))?;
    let (held, adapt): (Vec<PathBuf>, Vec<PathBuf>) = frames.iter().cloned().partition(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        versions::in_validation(&name.unwrap_or_default(), cfg.unlabelled_held_back)
    });
    let mut counts = DataCounts {
        site_images,
        unlabelled_adapt: adapt.len(),
        unlabelled_held_back: held.len(),
        phantom_images: cfg.phantom_images as usize,
        ..Default::default()
    };
    let mut r = Record::new(Kind::Nightly, false, String::new());
    r.parent = parent;
    r.run = Some(run.clone());
    r.adaptation = Some(Adaptation::BnStats);
    r.data = counts;
    if adapt.is_empty() || held.is_empty() {
        r.reason = format!(
            "the {} unlabelled frames split into {} to adapt to and {} held back; both need at least one",
            frames.len(),
            adapt.len(),
            held.len()
        );
        return finish(store, r, None, &run, load_model);
    }
    let candidate_model = run.join("candidate.onnx");
    let report = match super::adapt::reestimate_bn_stats(
        &current_model,
        &adapt,
        &candidate_model,
        inp.train.batch as usize,
        progress,
    ) {
        Ok(rep) => rep,
        Err(e) => {
            r.reason = format!("adaptation without labels failed: {e}; the current model stays");
            return finish(store, r, None, &run, load_model);
        }
    };
    progress.log(&format!(
        "re-estimated {} batch norms on {} frames in {:.1} s (the site's features are {:.3} running standard deviations from the model's training data on average)",
        report.batch_norms, report.frames, report.seconds, report.shift
    ));
    let mut candidate_model = candidate_model;
    if cfg.unlabelled_adaptation == UnlabelledAdaptation::SelfTraining {
        let how = super::adapt::SelfTraining {
            train: inp.train,
            clahe: inp.clahe,
            epochs: cfg.self_training_epochs,
            lr: cfg.self_training_lr,
            post: inp.post,
            clahe_threads: inp.clahe_threads,
            min_frames: 10,
        };
        let out = run.join("self-trained.onnx");
        match super::adapt::self_train(
            &candidate_model,
            &adapt,
            &run.join("self-training"),
            &out,
            &how,
            progress,
        ) {
            Ok(rep) => {
                progress.log(&format!(
                    "self-trained on {} pseudo-labels in {:.0} s",
                    rep.pseudo_labels, rep.seconds
                ));
                candidate_model = out;
                r.adaptation = Some(Adaptation::SelfTraining);
            }
            Err(e) => progress.log(&format!(
                "self-training not done ({e}); judging the batch-norm statistics alone"
            )),
        }
    }
    let phantom = run.join("phantom");
    let mut current_loaded = LoadedModel::load(&current_model, &SpecOverrides::default())
        .map_err(|e| NightlyError::Invalid(format!("{e}")))?;
    write_phantom_set(&phantom, current_loaded.spec().task, cfg.phantom_images)?;
    let mut score_all = |m: &mut LoadedModel| -> Result<(Scores, Vec<Option<bool>>), NightlyError> {
        let phantom = score(m, &phantom, None, inp.post, inp.clahe_threads)?;
        let test = match &cfg.test_data {
            Some(d) => Some(score(
                m,
                d,
                cfg.test_mm_csv.as_deref(),
                inp.post,
                inp.clahe_threads,
            )?),
            None => None,
        };
        let (held_back, per_frame) =
            eval::evidence_on(m, &held, inp.clahe_threads, inp.post, &mut |l| {
                progress.log(&l)
            });
        let scores = Scores {
            site: None,
            test,
            phantom: Some(phantom),
            held_back: Some(held_back),
        };
        Ok((scores, per_frame))
    };
    let (current, current_frames) = score_all(&mut current_loaded)?;
    let mut cand_loaded = LoadedModel::load(&candidate_model, &SpecOverrides::default())
        .map_err(|e| NightlyError::Invalid(format!("{e}")))?;
    let (mut candidate, candidate_frames) = score_all(&mut cand_loaded)?;
    if let Some(h) = candidate.held_back.as_mut() {
        h.compare_frames(&candidate_frames, &current_frames);
    }
    counts.test_images = current.test.map_or(0, |t| t.images);
    let (promote, reason) = decide_unlabelled(
        &current,
        &candidate,
        cfg.max_dice_drop,
        cfg.max_phantom_drop,
    );
    r.current = Some(current);
    r.candidate = Some(candidate);
    r.promoted = promote;
    r.reason = reason;
    r.data = counts;
    finish(store, r, Some(&candidate_model), &run, load_model)
}

fn read_counts(run: &Path) -> Option<DataCounts> {
    let text = std::fs::read_to_string(run.join("counts.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(dice: f64, error: f64) -> Option<Score> {
        Some(Score {
            dice: Some(dice),
            error: Some(error),
            images: 5,
            error_mm: None,
        })
    }

    #[test]
    fn the_promotion_rule() {
        let cur = Scores {
            site: s(0.70, 0.05),
            test: s(0.80, 0.02),
            ..Default::default()
        };
        let good = Scores {
            site: s(0.75, 0.04),
            test: s(0.797, 0.02),
            ..Default::default()
        };
        assert!(decide(&cur, &good, 0.005).0);
        let same_site = Scores {
            site: s(0.70, 0.01),
            ..good
        };
        let (ok, why) = decide(&cur, &same_site, 0.005);
        assert!(!ok && why.contains("site-validation Dice"), "{why}");
        let test_drop = Scores {
            test: s(0.79, 0.02),
            ..good
        };
        let (ok, why) = decide(&cur, &test_drop, 0.005);
        assert!(!ok && why.contains("test Dice"), "{why}");
        let test_err = Scores {
            test: s(0.80, 0.021),
            ..good
        };
        let (ok, why) = decide(&cur, &test_err, 0.005);
        assert!(!ok && why.contains("test error"), "{why}");
        // Without a test set the site decides.
        let (a, b) = (Scores { test: None, ..cur }, Scores { test: None, ..good });
        assert!(decide(&a, &b, 0.005).0);
    }

    #[test]
    fn old_adaptation_runs_are_pruned_newest_kept() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..9 {
            std::fs::create_dir_all(dir.path().join(format!("adapt-2026120{i}T000000Z/x")))
                .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("nightly-20260101T000000Z")).unwrap();
        prune_adapt_runs(
            dir.path(),
            7,
            &mut crate::train::trainer::ConsoleProgress::new(),
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 8, "{left:?}");
        assert_eq!(left[0], "adapt-20261202T000000Z");
        assert!(left.contains(&"nightly-20260101T000000Z".to_string()));
    }

    fn ev(ok: usize, mirror: f64, confident: usize) -> Option<versions::EvidenceScore> {
        Some(versions::EvidenceScore {
            frames: 20,
            ok,
            mirror_agrees: ok,
            mirror_diff_mean: Some(mirror),
            confident,
            gained: None,
            lost: None,
        })
    }

    /// More frames ok counts only beyond chance when the frames are compared one by one: the
    /// group-out fold where 4 frames were gained and 1 lost came with a worse model.
    #[test]
    fn more_frames_ok_must_be_more_than_chance() {
        let cur = Scores {
            phantom: s(0.80, 0.03),
            held_back: ev(16, 0.05, 12),
            ..Default::default()
        };
        let cand = |gained: usize, lost: usize, mirror: f64| {
            let mut e = ev(16 + gained - lost, mirror, 12);
            if let Some(e) = e.as_mut() {
                e.gained = Some(gained);
                e.lost = Some(lost);
            }
            Scores {
                phantom: s(0.80, 0.03),
                held_back: e,
                ..Default::default()
            }
        };
        let (ok, why) = decide_unlabelled(&cur, &cand(4, 1, 0.05), 0.005, 0.02);
        assert!(!ok && why.contains("did not improve"), "{why}");
        assert!(decide_unlabelled(&cur, &cand(6, 0, 0.05), 0.005, 0.02).0);
        assert!(decide_unlabelled(&cur, &cand(9, 2, 0.05), 0.005, 0.02).0);
        // As many frames ok, some gained and as many lost: the mirrored frames decide.
        assert!(decide_unlabelled(&cur, &cand(3, 3, 0.03), 0.005, 0.02).0);
        // A gain short of chance, or fewer frames ok: a closer mirrored frame does not make up
        // for it (the group-out fold above had one).
        assert!(!decide_unlabelled(&cur, &cand(4, 1, 0.03), 0.005, 0.02).0);
        assert!(!decide_unlabelled(&cur, &cand(1, 2, 0.01), 0.005, 0.02).0);
    }

    #[test]
    fn the_promotion_rule_without_labels() {
        let cur = Scores {
            phantom: s(0.80, 0.03),
            held_back: ev(14, 0.05, 12),
            ..Default::default()
        };
        let better = Scores {
            phantom: s(0.79, 0.035),
            held_back: ev(16, 0.04, 12),
            ..Default::default()
        };
        assert!(decide_unlabelled(&cur, &better, 0.005, 0.02).0);
        // As many frames ok: the mirrored frames must agree clearly better.
        let tie = Scores {
            held_back: ev(14, 0.03, 12),
            ..better
        };
        assert!(decide_unlabelled(&cur, &tie, 0.005, 0.02).0);
        let tie_noise = Scores {
            held_back: ev(14, 0.047, 12),
            ..better
        };
        assert!(!decide_unlabelled(&cur, &tie_noise, 0.005, 0.02).0);
        // Only more confident: refused.
        let confident = Scores {
            held_back: ev(14, 0.05, 20),
            ..better
        };
        let (ok, why) = decide_unlabelled(&cur, &confident, 0.005, 0.02);
        assert!(!ok && why.contains("did not improve"), "{why}");
        // The phantom set counts in any case; the test set when there is one.
        let phantom = Scores {
            phantom: s(0.77, 0.03),
            ..better
        };
        let (ok, why) = decide_unlabelled(&cur, &phantom, 0.005, 0.02);
        assert!(!ok && why.contains("phantom Dice"), "{why}");
        let with_test = |c: &Scores, t| Scores { test: t, ..*c };
        let (ok, why) = decide_unlabelled(
            &with_test(&cur, s(0.85, 0.02)),
            &with_test(&better, s(0.84, 0.02)),
            0.005,
            0.02,
        );
        assert!(!ok && why.contains("test Dice"), "{why}");
        assert!(
            decide_unlabelled(
                &with_test(&cur, s(0.85, 0.02)),
                &with_test(&better, s(0.848, 0.02)),
                0.005,
                0.02
            )
            .0
        );
        let no_phantom = Scores {
            phantom: None,
            ..better
        };
        assert!(!decide_unlabelled(&cur, &no_phantom, 0.005, 0.02).0);
    }
}
