//! Adaptation without labels, two ways, both from the exact model (the unfolded copy beside its
//! ONNX file, `NAME.bpk`, checked to fold back to it) and both on a site's own frames (images only,
//! never masks). Batch-norm statistics ([`reestimate_bn_stats`]): nothing changes but each batch
//! norm's running mean and variance, measured in one pass over batches of the training batch size
//! in which every batch norm normalises by the batch's own statistics, as in training (so each
//! layer sees its input as it is with all earlier layers adapted). Passes that then normalise by
//! the statistics just measured drift instead of settling (on a group-out fold the change grew
//! 0.02, 0.02, 0.08, 0.15 over four: the variance within a batch is not the variance around the
//! overall mean), so there is one. Self-training
//! ([`self_train`]): the model's own masks on the frames the quality gate marks `ok` become
//! pseudo-labels it is fine-tuned on. Either way the model's input contract stays as it is and the
//! result is written as ONNX with its unfolded copy beside it. Whether the adapted model is better
//! is not decided here (`nightly` does, on frames held back and on labelled sets). Must not depend
//! on the daemon, D-Bus or sources.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::export;
use super::settings::{Backend, TrainSettings};
use super::trainer::{
    device_for, load_unfolded, model_bytes, prepare_images, read_exported, unfolded_path,
    write_atomic, Exported, Progress, TrainError, UNFOLDED_MATCH,
};
use super::unet::Moments;
use crate::preprocess::roi::Tracking;
use burn::tensor::{Tensor, TensorData};

/// What [`reestimate_bn_stats`] did.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    pub model: PathBuf,
    pub out: PathBuf,
    /// Frames the statistics were measured on.
    pub frames: usize,
    /// Frames that could not be read or prepared (skipped, named in the progress log).
    pub skipped: usize,
    pub batch_norms: usize,
    /// How far the site is from the data the model learnt on: the mean over batch norms and
    /// channels of |site mean - running mean| / sqrt(running variance + eps).
    pub shift: f64,
    pub seconds: f64,
}

/// Mean over layers and channels of |a.mean - b.mean| / sqrt(b.var + eps).
fn distance(a: &[(Vec<f32>, Vec<f32>)], b: &[(Vec<f32>, Vec<f32>)], eps: f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for ((am, _), (bm, bv)) in a.iter().zip(b) {
        for ((x, y), v) in am.iter().zip(bm).zip(bv) {
            sum += (f64::from(*x) - f64::from(*y)).abs() / (f64::from(*v) + eps).sqrt();
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Re-estimates the batch-norm statistics of `model` (an exported ONNX file with its exact
/// unfolded copy beside it) on the images `frames` in batches of `batch` frames (the batch size
/// the model was trained with: a batch norm's running variance is the variance within such
/// batches; a last batch of one frame is left out), and writes
/// the adapted model to `out` (ONNX with the same contract, `trained_on` saying what was done)
/// with its unfolded copy. Refuses a model without an exact unfolded copy: a folded file alone
/// has no statistics to re-estimate (its batch norms are gone into the convolutions).
pub fn reestimate_bn_stats(
    model: &Path,
    frames: &[PathBuf],
    out: &Path,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<AdaptReport, TrainError> {
    let t0 = std::time::Instant::now();
    let origin = model.display().to_string();
    let Exported {
        spec, inits, arch, ..
    } = read_exported(model)?;
    let device = device_for(Backend::Flex);
    let side = unfolded_path(model);
    if !side.is_file() {
        return Err(TrainError::Invalid(format!(
            "{origin} has no unfolded copy ({}): its batch-norm statistics are folded into the convolutions, so there is nothing to re-estimate; export the model with `pocusd export` (which writes it) or make one with `pocusd models unfold`",
            side.display()
        )));
    }
    let (net, diff) = load_unfolded(model, &inits, &arch, &device)?;
    if diff > UNFOLDED_MATCH {
        return Err(TrainError::Invalid(format!(
            "{} does not fold back to {origin} (largest relative difference {diff:.1e}): it is another model's; not adapted",
            side.display()
        )));
    }
    let (prepared, skipped) = prepare_images(frames, &spec, progress);
    if prepared.is_empty() {
        return Err(TrainError::Invalid(format!(
            "none of the {} frames could be read; nothing to adapt to",
            frames.len()
        )));
    }
    let (w, h) = (spec.input_width, spec.input_height);
    let source = net.running_statistics();
    let mut acc = Moments::default();
    // A batch of one frame has no spread within it.
    for chunk in prepared.chunks(batch.max(2)).filter(|c| c.len() >= 2) {
        let x: Vec<f32> = chunk.iter().flat_map(|p| p.image.iter().copied()).collect();
        let x = Tensor::<4>::from_data(
            TensorData::new(x, [chunk.len(), spec.channels, h, w]),
            &device,
        );
        net.accumulate_batch_moments(x, &mut acc);
    }
    if acc.layers() == 0 {
        return Err(TrainError::Invalid(
            "one frame is not enough to measure batch-norm statistics on".into(),
        ));
    }
    let net = net.with_running_statistics(&acc);
    let shift = distance(&net.running_statistics(), &source, 1e-5);
    let mut spec = spec;
    spec.trained_on = Some(format!(
        "{}; batch-norm statistics re-estimated on {} site frames without labels",
        spec.trained_on.as_deref().unwrap_or("unknown data"),
        prepared.len()
    ));
    spec.val_dice = None;
    let onnx = export::to_onnx(&net, &spec)?;
    write_atomic(&unfolded_path(out), &model_bytes(&net)?)?;
    write_atomic(out, &onnx)?;
    Ok(AdaptReport {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        frames: prepared.len(),
        skipped,
        batch_norms: source.len(),
        shift,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The settings to fine-tune `model` (its architecture, input, task and region-of-interest
/// policy, from its unfolded copy when there is one) on `data`, validated on `val`, into the run
/// folder `out`; everything else from `base` (batch, threads, augmentation, ...). `how`: epochs,
/// learning rate, loss.
pub fn fine_tuning(
    base: &crate::config::TrainSection,
    clahe: Option<crate::preprocess::clahe::ClaheParams>,
    model: &Path,
    data: &Path,
    val: &Path,
    out: &Path,
    how: (u64, f64, &str),
) -> Result<TrainSettings, TrainError> {
    let Exported { spec, arch, .. } = read_exported(model)?;
    let mut t = base.clone();
    t.data = vec![data.display().to_string()];
    t.val = val.display().to_string();
    t.out = out.display().to_string();
    t.task = spec.task.as_str().into();
    t.input = format!("{}x{}", spec.input_width, spec.input_height);
    t.width = arch.base_width as u64;
    t.depth = arch.depth as u64;
    t.head = if arch.classes >= 2 {
        "softmax"
    } else {
        "sigmoid"
    }
    .into();
    t.init = model.display().to_string();
    (t.epochs, t.lr) = (how.0, how.1);
    t.loss = how.2.into();
    t.roi = "model".into();
    t.preview_augment = 0;
    TrainSettings::from_section(&t, clahe).map_err(|e| TrainError::Invalid(e.to_string()))
}

/// Pseudo-labels a self-training run validates on (its validation only feeds its curves).
const PSEUDO_VAL: usize = 32;

/// How [`self_train`] fine-tunes.
#[derive(Debug, Clone)]
pub struct SelfTraining<'a> {
    /// Everything the fine-tuning does not set itself (batch, threads, augmentation, ...).
    pub train: &'a crate::config::TrainSection,
    pub clahe: Option<crate::preprocess::clahe::ClaheParams>,
    pub epochs: u64,
    pub lr: f64,
    /// The quality gate's settings (what marks a frame `ok`).
    pub post: crate::postprocess::PostprocessConfig,
    pub clahe_threads: NonZeroUsize,
    /// Fewest frames marked `ok` worth learning from.
    pub min_frames: usize,
}

/// What [`self_train`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTrainReport {
    pub model: PathBuf,
    pub out: PathBuf,
    /// Frames looked at, and those the gate marked `ok` (the pseudo-labels).
    pub frames: usize,
    pub pseudo_labels: usize,
    pub epochs: u64,
    pub seconds: f64,
}

/// Self-training: `model`'s masks on the frames the quality gate marks `ok` (confidence
/// included: a pseudo-label must be one the model stands behind) become a labelled set in
/// `work/pseudo` (links to the images, the masks written), `model` is fine-tuned on it from its
/// unfolded copy into `work/run`, and the last epoch is written to `out` with its unfolded copy.
pub fn self_train(
    model: &Path,
    frames: &[PathBuf],
    work: &Path,
    out: &Path,
    how: &SelfTraining,
    progress: &mut dyn Progress,
) -> Result<SelfTrainReport, TrainError> {
    let t0 = std::time::Instant::now();
    if !unfolded_path(model).is_file() {
        return Err(TrainError::Invalid(format!(
            "{} has no unfolded copy ({}): self-training starts from the exact model; export it with `pocusd export` or make one with `pocusd models unfold`",
            model.display(),
            unfolded_path(model).display()
        )));
    }
    let pseudo = work.join("pseudo");
    let _ = std::fs::remove_dir_all(&pseudo);
    for sub in ["images", "masks"] {
        let p = pseudo.join(sub);
        std::fs::create_dir_all(&p).map_err(|source| TrainError::Io { path: p, source })?;
    }
    let mut m = crate::infer::LoadedModel::load(model, &crate::model::SpecOverrides::default())
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", model.display())))?;
    let post = crate::postprocess::PostprocessConfig {
        calibration: crate::postprocess::Calibration::None,
        smoothing: crate::postprocess::Smoothing::Off,
        ..how.post
    };
    let roi = crate::preprocess::roi::RoiChoice::default().resolve(m.spec().roi);
    let mut analyzer = crate::analyzer::Analyzer::new(
        &m,
        roi.mode,
        Tracking::PerImage,
        how.clahe_threads,
        post,
        crate::postprocess::overlay::OverlayStyle::default(),
    );
    let mut kept = 0;
    for (i, p) in frames.iter().enumerate() {
        let Ok(img) = crate::imageio::read_gray(p) else {
            progress.log(&format!("skipped {}: unreadable", p.display()));
            continue;
        };
        let ok = img
            .view()
            .ok()
            .and_then(|v| analyzer.analyse(&mut m, v).ok())
            .is_some_and(|a| a.doubt.is_empty());
        if !ok {
            continue;
        }
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("png");
        let name = format!("f{i:06}.{ext}");
        let link = pseudo.join("images").join(&name);
        let target = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|source| TrainError::Io { path: link, source })?;
        let mask = analyzer.mask_image(img.width(), img.height());
        let mpath = pseudo.join("masks").join(&name);
        crate::imageio::write_gray(&mpath, &mask)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", mpath.display())))?;
        kept += 1;
    }
    progress.log(&format!(
        "self-training: {kept} of {} frames marked ok by the gate are the pseudo-labels",
        frames.len()
    ));
    if kept < how.min_frames.max(1) {
        return Err(TrainError::Invalid(format!(
            "only {kept} of {} frames are marked ok by the quality gate; self-training needs at least {}",
            frames.len(),
            how.min_frames.max(1)
        )));
    }
    // No labels to validate on: the run's validation (its curves and best-Dice checkpoint, not
    // used) is kept to a few pseudo-labels so it costs little.
    let val = work.join("pseudo-val");
    let _ = std::fs::remove_dir_all(&val);
    for sub in ["images", "masks"] {
        let dir = val.join(sub);
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir, source })?;
    }
    let mut names: Vec<_> = std::fs::read_dir(pseudo.join("masks"))
        .map_err(|source| TrainError::Io {
            path: pseudo.join("masks"),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let step = (names.len() / PSEUDO_VAL).max(1);
    for name in names.iter().step_by(step).take(PSEUDO_VAL) {
        for sub in ["images", "masks"] {
            let from = std::fs::canonicalize(pseudo.join(sub).join(name))
                .unwrap_or_else(|_| pseudo.join(sub).join(name));
            let to = val.join(sub).join(name);
            std::os::unix::fs::symlink(&from, &to)
                .map_err(|source| TrainError::Io { path: to, source })?;
        }
    }
    let run = work.join("run");
    let settings = fine_tuning(
        how.train,
        how.clahe,
        model,
        &pseudo,
        &val,
        &run,
        (how.epochs, how.lr, "dice-bce"),
    )?;
    let resume = run.join("checkpoints/last.json").is_file();
    if !resume && run.exists() {
        std::fs::remove_dir_all(&run).map_err(|source| TrainError::Io {
            path: run.clone(),
            source,
        })?;
    }
    super::trainer::train(&settings, resume, None, progress)?;
    super::trainer::export_run(&run, super::trainer::Checkpoint::Last, out)?;
    Ok(SelfTrainReport {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        frames: frames.len(),
        pseudo_labels: kept,
        epochs: how.epochs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_in_units_of_the_reference_spread() {
        let a = vec![(vec![1.0, 2.0], vec![1.0, 1.0])];
        let b = vec![(vec![0.0, 2.0], vec![4.0 - 1e-5, 1.0 - 1e-5])];
        // |1 - 0| / 2 and 0, averaged.
        assert!((distance(&a, &b, 1e-5) - 0.25).abs() < 1e-6);
        assert_eq!(distance(&a, &a, 1e-5), 0.0);
    }
}
