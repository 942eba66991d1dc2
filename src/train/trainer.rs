//! The training loop and the run folder. A run is a folder: `run.json` (settings, model spec,
//! dataset report, run id), `checkpoints/` (last, best-loss, best-dice; `last.json` holds epoch,
//! optimizer step, best scores and the metrics history and is written after the files it names),
//! `metrics.csv`, a TensorBoard event file, `curves.png` and `previews/`. Every file is written to a
//! temporary name and renamed, so a run killed at any instant (SIGKILL included) resumes from its
//! last complete epoch with `--resume`. Must not depend on the daemon, sources or tract.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::augment::{self, AugmentConfig, Augmenter};
use super::average::{settle_statistics, WeightMean};
use super::effnet::EffEncoder;
use super::export;
use super::loss::dice_iou;
use super::plot;
use super::settings::{Backend, BnStats, TrainSettings};
use super::tfevents;
use super::unet::{Encoder, Unet, UnetArch};
use crate::dataset::{self, LoadReport, Sample};
use crate::imageio;
use crate::model::ModelSpec;
use crate::model::Task;
use crate::preprocess::roi::Tracking;
use crate::preprocess::{Preprocessor, Resizer};
use crate::synth::SplitMix64;

/// Run folder format version.
const RUN_FORMAT: u32 = 1;

/// Training failures, each naming what to do.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("checkpoint {path} cannot be read: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Run(#[from] super::settings::RunFileError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` whole or not at all ([`crate::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::files::write_atomic(path, bytes).map_err(|e| TrainError::Io {
        path: e.path,
        source: e.source,
    })
}

/// One epoch's figures (a row of metrics.csv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub step: u64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_dice: f64,
    pub train_iou: f64,
    #[serde(with = "nan_as_null")]
    pub val_loss: f64,
    #[serde(with = "nan_as_null")]
    pub val_dice: f64,
    #[serde(with = "nan_as_null")]
    pub val_iou: f64,
    pub seconds: f64,
    pub wall_time: f64,
}

/// JSON has no NaN: a missing figure (no validation set) is written as null and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The header of metrics.csv.
pub const METRICS_HEADER: &str =
    "epoch,step,lr,train_loss,train_dice,train_iou,val_loss,val_dice,val_iou,seconds";

/// A best checkpoint's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub value: f64,
}

/// What `checkpoints/last.json` holds: enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    pub run_id: String,
    pub epochs_done: usize,
    pub step: u64,
    pub best_loss: Option<Best>,
    pub best_dice: Option<Best>,
    pub history: Vec<EpochMetrics>,
    pub start_time: f64,
    /// File names (inside checkpoints/) of the last model and optimizer state.
    pub model_file: String,
    pub optimizer_file: String,
    /// Weight averaging (`[train] swa_epochs`): the steps averaged so far, the file (inside
    /// checkpoints/) of their mean with its statistics measured on the training images, and its
    /// validation Dice.
    #[serde(default)]
    pub swa_steps: u64,
    #[serde(default)]
    pub swa_file: String,
    #[serde(default)]
    pub swa_val_dice: Option<f64>,
}

pub use super::settings::{spec_for, RunInfo};

/// Fascicle task: the fraction of a model pixel a fragment must cover to count as fragment (a
/// 1 px line through a pixel 3.6 image pixels wide covers about 0.28 of it).
pub const FASCICLE_MASK_COVERAGE: f32 = 0.12;

/// A training pair at model resolution: image 0..1, mask 0/1.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: String,
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// Runs every sample through the engine's preprocessing (the region of interest per image by
/// `spec.roi`, CLAHE, resize, the tensor fill serving uses) and brings the mask to the same crop
/// and size.
pub fn prepare(samples: &[Sample], spec: &ModelSpec) -> Result<Vec<Prepared>, TrainError> {
    let mut pre = Preprocessor::new(spec, spec.roi.into(), Tracking::PerImage, NonZeroUsize::MIN);
    let mut resizer = Resizer::new();
    let mut plane = Vec::new();
    let (w, h) = (spec.input_width, spec.input_height);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let bad = |e: crate::frame::FrameError| TrainError::Invalid(format!("{}: {e}", s.name));
        let view = s.image.view().map_err(bad)?;
        let image = pre.process(view).map_err(bad)?.to_vec();
        let mview = s.mask.view().map_err(bad)?.crop(pre.roi()).map_err(bad)?;
        resizer.resize(&mview, w, h, &mut plane);
        // Thin structures (fascicle fragments, 1 to 2 px wide in the image) would vanish at model
        // resolution under a half-coverage rule: a model pixel a fragment crosses counts.
        let cut = match spec.task {
            Task::Fascicle => 255.0 * FASCICLE_MASK_COVERAGE,
            _ => 127.5,
        };
        let mask: Vec<f32> = plane
            .iter()
            .map(|&v| if v >= cut { 1.0 } else { 0.0 })
            .collect();
        out.push(Prepared {
            name: s.name.clone(),
            image,
            mask,
        });
    }
    Ok(out)
}

/// The images at `paths` prepared by the model's contract (region of interest, CLAHE, size,
/// normalisation), at model resolution, named by their file names, with no mask (an empty
/// plane); unreadable ones are logged and counted.
pub(crate) fn prepare_images(
    paths: &[PathBuf],
    spec: &ModelSpec,
    progress: &mut dyn Progress,
) -> (Vec<Prepared>, usize) {
    let mut pre = Preprocessor::new(spec, spec.roi.into(), Tracking::PerImage, NonZeroUsize::MIN);
    let mut out = Vec::with_capacity(paths.len());
    let mut skipped = 0;
    for p in paths {
        let image = imageio::read_gray(p)
            .map_err(|e| e.to_string())
            .and_then(|img| {
                let view = img.view().map_err(|e| e.to_string())?;
                pre.process(view)
                    .map(<[f32]>::to_vec)
                    .map_err(|e| e.to_string())
            });
        match image {
            Ok(image) => out.push(Prepared {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                image,
                mask: Vec::new(),
            }),
            Err(e) => {
                progress.log(&format!("skipped {}: {e}", p.display()));
                skipped += 1;
            }
        }
    }
    (out, skipped)
}

/// Images alone for self-supervised pretraining (`loss = "reconstruct"`): every image of each
/// folder (its `images/` when it has one; masks are never read), prepared by the model's
/// contract, each named `FOLDER/FILE` with a copy of itself as the target.
fn load_images_only(
    dirs: &[PathBuf],
    spec: &ModelSpec,
    report: &mut LoadReport,
    progress: &mut dyn Progress,
) -> Result<Vec<Prepared>, TrainError> {
    let mut all = Vec::new();
    for dir in dirs {
        let paths = super::nightly::unlabelled_frames(dir, usize::MAX);
        let (prepared, skipped) = prepare_images(&paths, spec, progress);
        report.unreadable += skipped;
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        all.extend(prepared.into_iter().map(|p| Prepared {
            name: format!("{folder}/{}", p.name),
            mask: p.image.clone(),
            image: p.image,
        }));
    }
    report.pairs += all.len();
    if all.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no readable images in {} (self-supervised pretraining reads DIR/images or the images directly in DIR)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(all)
}

/// The device for a backend.
#[allow(deprecated)] // burn-ndarray is deprecated upstream; kept selectable for comparison.
pub fn device_for(backend: Backend) -> Device {
    match backend {
        Backend::Flex => Device::flex(),
        Backend::Ndarray => Device::ndarray(),
    }
}

/// Mixes seed, epoch and sample index into one generator seed.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = SplitMix64::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// The sample order of `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(mix(seed, epoch as u64, 0xE90C));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Builds one augmented batch `[b, 1, h, w]` (image, mask). With `corrupt` (self-supervised
/// pretraining, the mask a grey-level copy of the image) the input is then spoilt by
/// [`augment::corrupt`], seeded like the augmentation, and the target stays as it was.
#[allow(clippy::too_many_arguments)]
pub fn batch_tensors(
    set: &[Prepared],
    idx: &[usize],
    w: usize,
    h: usize,
    augmenter: Option<&mut Augmenter>,
    seed: u64,
    epoch: usize,
    corrupt: bool,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let n = w * h;
    let mut xs = Vec::with_capacity(idx.len() * n);
    let mut ys = Vec::with_capacity(idx.len() * n);
    let mut aug = augmenter;
    for &i in idx {
        let mut img = set[i].image.clone();
        let mut m = set[i].mask.clone();
        if let Some(a) = aug.as_deref_mut() {
            let mut rng = SplitMix64::new(mix(seed, epoch as u64 + 1, i as u64));
            a.apply(&mut img, &mut m, w, h, &mut rng);
        }
        if corrupt {
            let mut rng = SplitMix64::new(mix(seed ^ 0x55AA, epoch as u64 + 1, i as u64));
            augment::corrupt(&mut img, w, h, &mut rng);
        }
        xs.extend_from_slice(&img);
        ys.extend_from_slice(&m);
    }
    let b = idx.len();
    (
        Tensor::from_data(TensorData::new(xs, [b, 1, h, w]), device),
        Tensor::from_data(TensorData::new(ys, [b, 1, h, w]), device),
    )
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Mean per-image hard Dice and IoU of probabilities `[b, 1, h, w]` against masks.
fn scores(prob: &[f32], mask: &[f32], per_image: usize) -> (f64, f64, usize) {
    let mut dsum = 0.0;
    let mut isum = 0.0;
    let mut count = 0;
    for (p, m) in prob.chunks(per_image).zip(mask.chunks(per_image)) {
        let (d, i) = dice_iou(p, m, 0.5);
        dsum += d;
        isum += i;
        count += 1;
    }
    (dsum, isum, count)
}

/// Loss, Dice and IoU of `net` (inference mode) over `set`, plus the probabilities of the images
/// named by `keep` (for previews).
pub fn evaluate(
    net: &Unet,
    set: &[Prepared],
    settings: &TrainSettings,
    device: &Device,
    keep: &[usize],
) -> (f64, f64, f64, Vec<Vec<f32>>) {
    let (w, h) = (settings.input_width, settings.input_height);
    let n = w * h;
    let (mut loss_sum, mut dice_sum, mut iou_sum, mut count) = (0.0, 0.0, 0.0, 0usize);
    let mut kept = vec![Vec::new(); keep.len()];
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(settings.batch.max(1)) {
        let corrupt = settings.loss.is_reconstruction();
        let (x, y) = batch_tensors(set, chunk, w, h, None, 0, 0, corrupt, device);
        let logits = net.forward(x);
        let loss = settings.loss.compute(logits.clone(), y.clone());
        loss_sum += to_vec(loss).first().copied().unwrap_or(f32::NAN) as f64 * chunk.len() as f64;
        let prob = to_vec(super::unet::foreground_probability(logits));
        let mask = to_vec(y);
        let (d, i, c) = scores(&prob, &mask, n);
        dice_sum += d;
        iou_sum += i;
        count += c;
        for (k, &want) in keep.iter().enumerate() {
            if let Some(pos) = chunk.iter().position(|&j| j == want) {
                kept[k] = prob[pos * n..(pos + 1) * n].to_vec();
            }
        }
    }
    let c = count.max(1) as f64;
    (
        loss_sum / set.len().max(1) as f64,
        dice_sum / c,
        iou_sum / c,
        kept,
    )
}

/// What the caller sees of progress.
pub trait Progress {
    /// A line for the log.
    fn log(&mut self, line: &str);
    /// Start of an epoch with `steps` steps.
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize);
    /// One step done, with its loss.
    fn step(&mut self, loss: f64);
    /// End of an epoch.
    fn epoch_end(&mut self, m: &EpochMetrics);
}

/// Progress on a terminal: an indicatif bar with ETA; otherwise plain lines (journald-friendly).
pub struct ConsoleProgress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    steps: usize,
    done: usize,
    epoch: usize,
}

impl ConsoleProgress {
    pub fn new() -> Self {
        Self {
            bar: None,
            last_line: Instant::now(),
            steps: 0,
            done: 0,
            epoch: 0,
        }
    }
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for ConsoleProgress {
    fn log(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.steps = steps;
        self.done = 0;
        self.epoch = epoch;
        self.last_line = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} steps, loss {msg}, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{epoch}/{epochs}"));
            self.bar = Some(bar);
        }
    }

    fn step(&mut self, loss: f64) {
        self.done += 1;
        match &self.bar {
            Some(b) => {
                b.set_message(format!("{loss:.4}"));
                b.inc(1);
            }
            None => {
                if self.last_line.elapsed().as_secs() >= 60 {
                    eprintln!(
                        "epoch {}: step {}/{}, loss {loss:.4}",
                        self.epoch, self.done, self.steps
                    );
                    self.last_line = Instant::now();
                }
            }
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!(
            "epoch {}: train loss {:.4} dice {:.4} | val loss {:.4} dice {:.4} iou {:.4} | lr {:.2e} | {:.1} s",
            m.epoch, m.train_loss, m.train_dice, m.val_loss, m.val_dice, m.val_iou, m.lr, m.seconds
        );
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Which saved weights to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    BestDice,
    BestLoss,
    Last,
    /// The weight average of `[train] swa_epochs`.
    Swa,
}

impl Checkpoint {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "best-dice" => Some(Self::BestDice),
            "best-loss" => Some(Self::BestLoss),
            "last" => Some(Self::Last),
            "swa" => Some(Self::Swa),
            _ => None,
        }
    }
}

/// Loads the network of checkpoint `which` of run `dir` onto `device`; returns it with the run's
/// info and the checkpoint's validation Dice.
pub fn load_checkpoint(
    dir: &Path,
    which: Checkpoint,
    device: &Device,
) -> Result<(Unet, RunInfo, RunState, Option<f64>), TrainError> {
    let info = RunInfo::load(dir)?;
    let state = load_state(dir)?;
    let (file, dice) = match which {
        Checkpoint::BestDice => (
            "best-dice.model.bpk".to_string(),
            state.best_dice.map(|b| b.value),
        ),
        Checkpoint::BestLoss => {
            let e = state.best_loss.map(|b| b.epoch);
            let d = e
                .and_then(|e| state.history.iter().find(|m| m.epoch == e))
                .map(|m| m.val_dice);
            ("best-loss.model.bpk".to_string(), d)
        }
        Checkpoint::Last => (
            state.model_file.clone(),
            state.history.last().map(|m| m.val_dice),
        ),
        Checkpoint::Swa => {
            if state.swa_file.is_empty() {
                return Err(TrainError::Invalid(format!(
                    "{} has no weight average: it ran with [train] swa_epochs = {} and {} of its {} epochs done; export best-dice, best-loss or last",
                    dir.display(),
                    info.settings.swa_epochs,
                    state.epochs_done,
                    info.settings.epochs
                )));
            }
            (state.swa_file.clone(), state.swa_val_dice)
        }
    };
    let net = load_model_file(&checkpoint_dir(dir).join(file), &info.settings.arch, device)?;
    Ok((net, info, state, dice))
}

fn load_model_file(path: &Path, arch: &UnetArch, device: &Device) -> Result<Unet, TrainError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let record =
        ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(|e| {
            TrainError::Checkpoint {
                path: path.into(),
                message: e.to_string(),
            }
        })?;
    Unet::new(arch, device)
        .try_load_record(record)
        .map_err(|e| TrainError::Checkpoint {
            path: path.into(),
            message: e.to_string(),
        })
}

fn load_state(dir: &Path) -> Result<RunState, TrainError> {
    let path = checkpoint_dir(dir).join("last.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainError::Invalid(format!(
            "{} has no completed epoch yet ({}: {e}); start it again without --resume",
            dir.display(),
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{} is damaged: {e}", path.display())))
}

pub(crate) fn model_bytes(net: &Unet) -> Result<Vec<u8>, TrainError> {
    net.clone()
        .into_record()
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| TrainError::Invalid(format!("cannot serialise the network: {e}")))
}

/// `bn_stats = "auto"` made definite: frozen for a network that came from a folded ONNX file
/// alone, batch otherwise.
fn resolve_bn_stats(configured: BnStats, folded_only: bool) -> BnStats {
    match configured {
        BnStats::Auto if folded_only => BnStats::Frozen,
        BnStats::Auto => BnStats::Batch,
        other => other,
    }
}

/// A network to start from, per `--init`, and whether it came from a folded ONNX file alone.
fn initial_network(
    settings: &TrainSettings,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Unet, bool), TrainError> {
    let mut net = Unet::new(&settings.arch, device);
    let Some(init) = &settings.init else {
        if let (Some(pth), Some(_)) = (&settings.encoder_weights, &net.encoder) {
            let bytes = std::fs::read(pth).map_err(io(pth))?;
            let encoder =
                EffEncoder::from_pth(&bytes, settings.arch.in_channels, device).map_err(|e| {
                    TrainError::Invalid(format!("[train] encoder_weights {}: {e}", pth.display()))
                })?;
            net.encoder = Some(encoder);
            progress.log(&format!(
                "encoder {} initialised from {}",
                settings.arch.encoder.as_str(),
                pth.display()
            ));
        }
        return Ok((net, false));
    };
    if init.is_dir() {
        // A pretraining run's "Dice" compares bright pixels of its restorations: its best
        // checkpoint is the one that restored the validation images best.
        let pretrained = RunInfo::load(init)?.settings.loss.is_reconstruction();
        let which = if pretrained {
            Checkpoint::BestLoss
        } else if !load_state(init)?.swa_file.is_empty() {
            // What the run exported.
            Checkpoint::Swa
        } else {
            Checkpoint::BestDice
        };
        let (loaded, info, _, dice) = load_checkpoint(init, which, device)?;
        if info.settings.arch != settings.arch {
            return Err(TrainError::Invalid(format!(
                "--init {}: its U-Net has depth {} and width {}, this run depth {} and width {}; set --depth/--width to match",
                init.display(),
                info.settings.arch.depth,
                info.settings.arch.base_width,
                settings.arch.depth,
                settings.arch.base_width
            )));
        }
        if pretrained {
            progress.log(&format!(
                "initialised from the self-supervised pretraining run {} ({}, its best validation loss)",
                info.run_id,
                init.display()
            ));
        } else {
            progress.log(&format!(
                "initialised from run {} ({}, best validation Dice {})",
                info.run_id,
                init.display(),
                dice.map(|d| format!("{d:.4}"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        Ok((loaded, false))
    } else {
        let bytes = std::fs::read(init).map_err(io(init))?;
        let origin = init.display().to_string();
        let side = unfolded_path(init);
        let bn = |folded_only: bool| match resolve_bn_stats(settings.bn_stats, folded_only) {
            BnStats::Frozen => "batch norms frozen at their statistics",
            _ => "batch norms normalising by each batch, their statistics moving to the data's",
        };
        if side.is_file() {
            let inits = export::onnx_initializers(&origin, &bytes)?;
            match load_unfolded(init, &inits, &settings.arch, device) {
                Ok((n, diff)) if diff <= UNFOLDED_MATCH => {
                    progress.log(&format!(
                        "initialised from {} (the unfolded network with its batch-norm statistics; it folds to {}'s weights, largest relative difference {diff:.1e}); {}",
                        side.display(),
                        init.display(),
                        bn(false)
                    ));
                    return Ok((n, false));
                }
                Ok((_, diff)) => progress.log(&format!(
                    "warning: {} does not fold to {} (largest relative difference {diff:.1e}): not used",
                    side.display(),
                    init.display()
                )),
                Err(e) => progress.log(&format!("warning: {}: {e}: not used", side.display())),
            }
        }
        let loaded = export::load_onnx_weights(&origin, &bytes, net, device)?;
        progress.log(&format!(
            "initialised from {} (only the folded ONNX: weights matched by name, batch norms start as identities with the folded bias as their shift and no statistics of the data it was trained on); {}",
            init.display(),
            bn(true)
        ));
        Ok((loaded, true))
    }
}

fn write_run_info(run: &Path, info: &RunInfo) -> Result<(), TrainError> {
    write_atomic(
        &run.join("run.json"),
        serde_json::to_string_pretty(info)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// The unfolded network kept beside an exported model: `NAME.bpk` beside `NAME.onnx` (burn's
/// burnpack record of the U-Net with its batch-norm running statistics).
pub fn unfolded_path(onnx: &Path) -> PathBuf {
    onnx.with_extension("bpk")
}

/// Largest relative difference between an unfolded network folded again and the ONNX file it
/// claims to be (f32 rounding of the fold is around 1e-7).
pub(crate) const UNFOLDED_MATCH: f32 = 1e-5;

fn new_run_id(settings: &TrainSettings) -> String {
    let t = now();
    let secs = t as u64;
    // UTC date-time from the epoch seconds (civil-from-days).
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-s{}",
        settings.task.as_str(),
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        settings.seed
    )
}

/// The data of a run: training and validation sets.
pub struct Data {
    pub train: Vec<Prepared>,
    pub val: Vec<Prepared>,
    pub report: LoadReport,
}

/// Loads and prepares the data for `settings`.
pub fn load_data(
    settings: &TrainSettings,
    progress: &mut dyn Progress,
) -> Result<Data, TrainError> {
    if settings.data.is_empty() {
        return Err(TrainError::Invalid(
            "no training data: give --data DIR (a folder with images/ and masks/) or set train.data".into(),
        ));
    }
    let spec = spec_for(settings, None, None, None);
    let (all, report, val) = if settings.loss.is_reconstruction() {
        let mut report = LoadReport::default();
        let all = load_images_only(&settings.data, &spec, &mut report, progress)?;
        progress.log(&format!(
            "self-supervised pretraining on {} images without masks ({} unreadable)",
            all.len(),
            report.unreadable
        ));
        let val = match &settings.val {
            Some(v) => Some(load_images_only(
                std::slice::from_ref(v),
                &spec,
                &mut LoadReport::default(),
                progress,
            )?),
            None => None,
        };
        (all, report, val)
    } else {
        let (samples, report) =
            dataset::load(&settings.data, |w| progress.log(&format!("warning: {w}")))?;
        progress.log(&format!("training data: {report}"));
        let all = prepare(&samples, &spec)?;
        let val = match &settings.val {
            Some(v) => {
                let (vs, vr) = dataset::load(std::slice::from_ref(v), |w| {
                    progress.log(&format!("warning: {w}"))
                })?;
                progress.log(&format!("validation data ({}): {vr}", v.display()));
                Some(prepare(&vs, &spec)?)
            }
            None => None,
        };
        (all, report, val)
    };
    let (train, val) = match val {
        Some(v) => (all, v),
        None => {
            let held =
                dataset::validation_blocks(all.len(), settings.val_fraction, settings.val_blocks);
            let mut train = Vec::new();
            let mut val = Vec::new();
            for (i, p) in all.into_iter().enumerate() {
                if held.binary_search(&i).is_ok() {
                    val.push(p);
                } else {
                    train.push(p);
                }
            }
            (train, val)
        }
    };
    if train.is_empty() {
        return Err(TrainError::Invalid(
            "every image went to validation; lower --val-fraction".into(),
        ));
    }
    Ok(Data { train, val, report })
}

/// Writes `previews/augment/NNN.png`: `n` augmented (image | mask) pairs.
pub fn write_augment_previews(
    run: &Path,
    data: &Data,
    settings: &TrainSettings,
) -> Result<usize, TrainError> {
    let (w, h) = (settings.input_width, settings.input_height);
    let mut aug = Augmenter::new(settings.augment);
    let dir = run.join("previews").join("augment");
    for k in 0..settings.preview_augment {
        let i = k % data.train.len();
        let mut img = data.train[i].image.clone();
        let mut m = data.train[i].mask.clone();
        let mut rng = SplitMix64::new(mix(settings.seed, 0xA116 + k as u64, i as u64));
        aug.apply(&mut img, &mut m, w, h, &mut rng);
        let (gw, gh, rgb) = plot::grid_rgb(
            &[
                (&data.train[i].image, [1.0; 3]),
                (&img, [1.0; 3]),
                (&m, [0.3, 1.0, 0.3]),
            ],
            w,
            h,
            3,
        );
        let path = dir.join(format!("{k:03}.png"));
        write_png(&path, gw, gh, &rgb)?;
    }
    Ok(settings.preview_augment)
}

fn write_png(path: &Path, w: usize, h: usize, rgb: &[u8]) -> Result<(), TrainError> {
    // imageio writes whole files (temporary sibling + rename).
    imageio::write_rgb(path, w, h, rgb)
        .map_err(|e| TrainError::Invalid(format!("cannot write {}: {e}", path.display())))
}

fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut s = String::from(METRICS_HEADER);
    s.push('\n');
    for m in history {
        s.push_str(&format!(
            "{},{},{:e},{},{},{},{},{},{},{:.3}\n",
            m.epoch,
            m.step,
            m.lr,
            m.train_loss,
            m.train_dice,
            m.train_iou,
            m.val_loss,
            m.val_dice,
            m.val_iou,
            m.seconds
        ));
    }
    s
}

fn event_scalars(history: &[EpochMetrics]) -> Vec<tfevents::Scalar> {
    let mut out = Vec::new();
    for m in history {
        for (tag, v) in [
            ("train/loss", m.train_loss),
            ("train/dice", m.train_dice),
            ("train/iou", m.train_iou),
            ("val/loss", m.val_loss),
            ("val/dice", m.val_dice),
            ("val/iou", m.val_iou),
            ("lr", m.lr),
        ] {
            out.push(tfevents::Scalar {
                tag: tag.into(),
                step: m.epoch as i64,
                wall_time: m.wall_time,
                value: v as f32,
            });
        }
    }
    out
}

fn write_logs(run: &Path, state: &RunState, title: &str) -> Result<(), TrainError> {
    write_atomic(
        &run.join("metrics.csv"),
        metrics_csv(&state.history).as_bytes(),
    )?;
    let events = tfevents::encode(state.start_time, &event_scalars(&state.history));
    write_atomic(
        &run.join("logs").join(format!(
            "events.out.tfevents.{}.pocusd",
            state.start_time as u64
        )),
        &events,
    )?;
    let pts = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        state
            .history
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect()
    };
    let losses = [
        plot::Curve {
            name: "train loss",
            points: pts(|m| m.train_loss),
        },
        plot::Curve {
            name: "val loss",
            points: pts(|m| m.val_loss),
        },
    ];
    let scores = [
        plot::Curve {
            name: "train dice",
            points: pts(|m| m.train_dice),
        },
        plot::Curve {
            name: "val dice",
            points: pts(|m| m.val_dice),
        },
        plot::Curve {
            name: "val iou",
            points: pts(|m| m.val_iou),
        },
    ];
    let (w, h) = (960u32, 400u32);
    match plot::curves_rgb(title, &losses, &scores, w, h) {
        Ok(rgb) => write_png(&run.join("curves.png"), w as usize, h as usize, &rgb)?,
        Err(e) => eprintln!("warning: cannot draw curves.png: {e}"),
    }
    Ok(())
}

/// Indices of the validation images shown in previews: spread over the set.
fn preview_indices(n: usize, k: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let k = k.min(n);
    (0..k).map(|i| (2 * i + 1) * n / (2 * k)).collect()
}

/// Outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub epochs_done: usize,
    pub best_dice: Option<Best>,
    pub best_loss: Option<Best>,
    pub model: Option<PathBuf>,
    pub train_images: usize,
    pub val_images: usize,
}

/// Trains a new run in `settings.out`, or continues `resume` (its own settings; `epochs` may be
/// changed with `resume_epochs`).
pub fn train(
    settings: &TrainSettings,
    resume: bool,
    resume_epochs: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, TrainError> {
    let run = settings.out.clone();
    if run.as_os_str().is_empty() {
        return Err(TrainError::Invalid(
            "no run folder: give --out RUN_DIR (or --resume RUN_DIR)".into(),
        ));
    }
    let (settings, info, state) = if resume {
        let mut info = RunInfo::load(&run)?;
        let state = load_state(&run)?;
        // The run keeps its own settings; only a longer schedule may be asked for.
        if let Some(e) = resume_epochs {
            if e < state.epochs_done {
                return Err(TrainError::Invalid(format!(
                    "--epochs {e} is fewer than the {} epochs this run has done",
                    state.epochs_done
                )));
            }
            info.settings.epochs = e;
        }
        info.settings.out = run.clone();
        (info.settings.clone(), Some(info), Some(state))
    } else {
        if run.join("run.json").exists() {
            return Err(TrainError::Invalid(format!(
                "{} already holds a run; continue it with --resume {} or choose another --out",
                run.display(),
                run.display()
            )));
        }
        (settings.clone(), None, None)
    };
    if settings.threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", settings.threads.to_string());
    }
    let data = load_data(&settings, progress)?;
    let info = match info {
        Some(i) => i,
        None => {
            let trained_on = settings
                .data
                .iter()
                .map(|d| {
                    d.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| d.display().to_string())
                })
                .collect::<Vec<_>>()
                .join("+");
            let info = RunInfo {
                format: RUN_FORMAT,
                run_id: new_run_id(&settings),
                created: now(),
                settings: settings.clone(),
                train_report: data.report.clone(),
                train_images: data.train.len(),
                val_images: data.val.len(),
                val_names: data.val.iter().map(|p| p.name.clone()).collect(),
                trained_on: format!(
                    "{trained_on} ({} training images, {} validation)",
                    data.train.len(),
                    data.val.len()
                ),
                pocusd_version: env!("CARGO_PKG_VERSION").into(),
            };
            std::fs::create_dir_all(&run).map_err(io(&run))?;
            info
        }
    };
    write_run_info(&run, &info)?;
    progress.log(&format!(
        "run {} in {}: {} training, {} validation images at {}x{}, U-Net depth {} width {}{}, loss {}, backend {}",
        info.run_id,
        run.display(),
        data.train.len(),
        data.val.len(),
        settings.input_width,
        settings.input_height,
        settings.arch.depth,
        settings.arch.base_width,
        match settings.arch.encoder {
            Encoder::Unet => String::new(),
            e => format!(" encoder {}", e.as_str()),
        },
        settings.loss.name(),
        settings.backend.as_str()
    ));
    if settings.preview_augment > 0 && state.is_none() {
        let n = write_augment_previews(&run, &data, &settings)?;
        progress.log(&format!(
            "wrote {n} augmentation previews to {}",
            run.join("previews/augment").display()
        ));
    }

    let base = device_for(settings.backend);
    let device = base.clone().autodiff();
    // Weight initialisation draws from the backend's generator: seed it for repeatable runs.
    base.seed(settings.seed);
    device.seed(settings.seed);
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    let mut folded_only_init = None;
    let (mut net, mut state) = match state {
        Some(st) => {
            let ck = checkpoint_dir(&run);
            let net = load_model_file(&ck.join(&st.model_file), &settings.arch, &device)?;
            let opath = ck.join(&st.optimizer_file);
            let bytes = std::fs::read(&opath).map_err(io(&opath))?;
            optim = optim
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| TrainError::Checkpoint {
                    path: opath.clone(),
                    message: e.to_string(),
                })?;
            progress.log(&format!(
                "resumed after epoch {} (step {}, best validation Dice {})",
                st.epochs_done,
                st.step,
                st.best_dice
                    .map(|b| format!("{:.4} at epoch {}", b.value, b.epoch))
                    .unwrap_or_else(|| "-".into())
            ));
            (net, st)
        }
        None => {
            let (net, folded_only) = initial_network(&settings, &device, progress)?;
            folded_only_init = Some(folded_only);
            (
                net,
                RunState {
                    format: RUN_FORMAT,
                    run_id: info.run_id.clone(),
                    epochs_done: 0,
                    step: 0,
                    best_loss: None,
                    best_dice: None,
                    history: Vec::new(),
                    start_time: now(),
                    model_file: String::new(),
                    optimizer_file: String::new(),
                    swa_steps: 0,
                    swa_file: String::new(),
                    swa_val_dice: None,
                },
            )
        }
    };

    // `auto` made definite once for the whole run; run.json keeps the decision for --resume (a
    // run stopped before that asks the files again: an ONNX file with no unfolded copy).
    let mut settings = settings;
    if settings.bn_stats == BnStats::Auto {
        let folded_only = folded_only_init.unwrap_or_else(|| {
            settings
                .init
                .as_deref()
                .is_some_and(|p| p.is_file() && !unfolded_path(p).is_file())
        });
        settings.bn_stats = resolve_bn_stats(BnStats::Auto, folded_only);
        let mut info = info.clone();
        info.settings.bn_stats = settings.bn_stats;
        write_run_info(&run, &info)?;
    }
    if settings.bn_stats == BnStats::Frozen {
        net = net.with_frozen_bn_stats();
    }
    let (w, h) = (settings.input_width, settings.input_height);
    let mut augmenter = Augmenter::new(settings.augment);
    if settings.loss.is_reconstruction() {
        augmenter = augmenter.with_grey_target();
    }
    let no_aug = settings.augment == AugmentConfig::none();
    if settings.swa_epochs >= settings.epochs {
        return Err(TrainError::Invalid(format!(
            "[train] swa_epochs = {} must be fewer than the run's {} epochs (the epochs before the averaged ones train the model); lower it or raise --epochs",
            settings.swa_epochs, settings.epochs
        )));
    }
    let mut mean = if state.swa_file.is_empty() {
        WeightMean::default()
    } else {
        let path = checkpoint_dir(&run).join(&state.swa_file);
        WeightMean::resume(
            load_model_file(&path, &settings.arch, &base)?,
            state.swa_steps,
        )
    };
    let keep = preview_indices(data.val.len(), settings.preview_images);
    let batch = settings.batch.max(1);
    for epoch in state.epochs_done..settings.epochs {
        let t0 = Instant::now();
        let lr = settings.lr_at(epoch);
        let order = epoch_order(data.train.len(), settings.seed, epoch);
        // Batch norm needs two images; a last batch of one joins nothing and is skipped.
        let batches: Vec<&[usize]> = order
            .chunks(batch)
            .filter(|c| c.len() > 1 || batch == 1)
            .collect();
        progress.epoch_start(epoch + 1, settings.epochs, batches.len());
        let (mut loss_sum, mut dice_sum, mut iou_sum, mut seen) = (0.0, 0.0, 0.0, 0usize);
        for idx in batches {
            let (x, y) = batch_tensors(
                &data.train,
                idx,
                w,
                h,
                (!no_aug).then_some(&mut augmenter),
                settings.seed,
                epoch,
                settings.loss.is_reconstruction(),
                &device,
            );
            let logits = net.forward(x);
            let loss = settings.loss.compute(logits.clone(), y.clone());
            let loss_value = to_vec(loss.clone().detach())
                .first()
                .copied()
                .unwrap_or(f32::NAN) as f64;
            if !loss_value.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the loss became {loss_value} at epoch {} step {}; lower --lr (now {lr:e}) and resume from the last checkpoint",
                    epoch + 1,
                    state.step + 1
                )));
            }
            let prob = to_vec(super::unet::foreground_probability(logits.detach()));
            let (d, i, c) = scores(&prob, &to_vec(y), w * h);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            state.step += 1;
            if settings.swa_start().is_some_and(|s| epoch >= s) {
                mean.add(&net.valid());
            }
            loss_sum += loss_value * c as f64;
            dice_sum += d;
            iou_sum += i;
            seen += c;
            progress.step(loss_value);
        }
        let valid = net.valid();
        let eval_device = base.clone();
        let (val_loss, val_dice, val_iou, kept) = if data.val.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN, Vec::new())
        } else {
            evaluate(&valid, &data.val, &settings, &eval_device, &keep)
        };
        let s = seen.max(1) as f64;
        let m = EpochMetrics {
            epoch: epoch + 1,
            step: state.step,
            lr,
            train_loss: loss_sum / s,
            train_dice: dice_sum / s,
            train_iou: iou_sum / s,
            val_loss,
            val_dice,
            val_iou,
            seconds: t0.elapsed().as_secs_f64(),
            wall_time: now(),
        };
        // Without a validation set, the best checkpoints follow the training figures.
        let (judge_loss, judge_dice) = if data.val.is_empty() {
            (m.train_loss, m.train_dice)
        } else {
            (val_loss, val_dice)
        };
        let ck = checkpoint_dir(&run);
        let bytes = model_bytes(&valid)?;
        if state.best_loss.is_none_or(|b| judge_loss < b.value) {
            write_atomic(&ck.join("best-loss.model.bpk"), &bytes)?;
            state.best_loss = Some(Best {
                epoch: epoch + 1,
                value: judge_loss,
            });
        }
        if state.best_dice.is_none_or(|b| judge_dice > b.value) {
            write_atomic(&ck.join("best-dice.model.bpk"), &bytes)?;
            state.best_dice = Some(Best {
                epoch: epoch + 1,
                value: judge_dice,
            });
        }
        let mut swa_line = None;
        let old_swa = match (settings.swa_start(), mean.mean()) {
            (Some(s), Some(avg)) if epoch >= s => {
                let (averaged, swa_dice) = settled_mean(
                    avg,
                    &data,
                    &settings,
                    (!no_aug).then_some(&mut augmenter),
                    epoch,
                    &eval_device,
                );
                let file = format!("swa-{:04}.model.bpk", epoch + 1);
                write_atomic(&ck.join(&file), &model_bytes(&averaged)?)?;
                swa_line = Some(format!(
                    "weight average of {} steps: validation Dice {swa_dice:.4}",
                    mean.count()
                ));
                state.swa_steps = mean.count();
                state.swa_val_dice = Some(swa_dice);
                Some(std::mem::replace(&mut state.swa_file, file))
            }
            _ => None,
        };
        let model_file = format!("epoch-{:04}.model.bpk", epoch + 1);
        let optimizer_file = format!("epoch-{:04}.optim.bpk", epoch + 1);
        write_atomic(&ck.join(&model_file), &bytes)?;
        let obytes = optim
            .into_bytes()
            .map_err(|e| TrainError::Invalid(format!("cannot serialise the optimizer: {e}")))?;
        write_atomic(&ck.join(&optimizer_file), &obytes)?;
        let old = (
            std::mem::replace(&mut state.model_file, model_file),
            std::mem::replace(&mut state.optimizer_file, optimizer_file),
        );
        state.epochs_done = epoch + 1;
        state.history.push(m.clone());
        // The logs (metrics.csv, events, curves) first, `last.json` last: it is the commit point.
        // A run killed between the two has logs one epoch ahead of its checkpoint, never behind;
        // `--resume` redoes that epoch the same way and rewrites them.
        write_logs(
            &run,
            &state,
            &format!("{} ({})", info.run_id, settings.loss.name()),
        )?;
        write_atomic(
            &ck.join("last.json"),
            serde_json::to_string_pretty(&state)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        for f in [old.0, old.1].into_iter().chain(old_swa) {
            if !f.is_empty() {
                let _ = std::fs::remove_file(ck.join(f));
            }
        }
        progress.epoch_end(&m);
        if let Some(line) = swa_line {
            progress.log(&line);
        }
        if !keep.is_empty() {
            let mut tiles: Vec<(&[f32], [f32; 3])> = Vec::new();
            for (k, &i) in keep.iter().enumerate() {
                tiles.push((&data.val[i].image, [1.0; 3]));
                tiles.push((&data.val[i].mask, [0.3, 1.0, 0.3]));
                tiles.push((&kept[k], [1.0, 0.6, 0.2]));
            }
            let (gw, gh, rgb) = plot::grid_rgb(&tiles, w, h, 3);
            write_png(
                &run.join("previews")
                    .join(format!("epoch-{:04}.png", epoch + 1)),
                gw,
                gh,
                &rgb,
            )?;
        }
    }

    let model = if settings.loss.is_reconstruction() {
        progress.log(&format!(
            "done: {} epochs of self-supervised pretraining; best validation loss {}; nothing exported (it segments nothing): start a labelled run from it with --init {}",
            state.epochs_done,
            state
                .best_loss
                .map(|b| format!("{:.5} (epoch {})", b.value, b.epoch))
                .unwrap_or_else(|| "-".into()),
            run.display()
        ));
        None
    } else {
        // The deployable file: best-by-Dice weights exported next to the checkpoints, or the
        // weight average when the run made one.
        let model = run.join("model.onnx");
        let averaged = !state.swa_file.is_empty();
        let which = if averaged {
            Checkpoint::Swa
        } else {
            Checkpoint::BestDice
        };
        export_run(&run, which, &model)?;
        progress.log(&format!(
            "done: {} epochs; best validation Dice {}; exported {}{}",
            state.epochs_done,
            state
                .best_dice
                .map(|b| format!("{:.4} (epoch {})", b.value, b.epoch))
                .unwrap_or_else(|| "-".into()),
            model.display(),
            if averaged {
                format!(
                    " (the weight average of the last {} steps, validation Dice {})",
                    state.swa_steps,
                    state
                        .swa_val_dice
                        .map(|d| format!("{d:.4}"))
                        .unwrap_or_else(|| "-".into())
                )
            } else {
                String::new()
            }
        ));
        Some(model)
    };
    Ok(TrainOutcome {
        run_id: info.run_id.clone(),
        run_dir: run.clone(),
        epochs_done: state.epochs_done,
        best_dice: state.best_dice,
        best_loss: state.best_loss,
        model,
        train_images: data.train.len(),
        val_images: data.val.len(),
    })
}

/// The weight mean `avg` with its batch-norm statistics measured on the training images as
/// training shows them (augmented by `augmenter` with the draws of `epoch`, as the running
/// statistics of training were; left as they are when batch norms are frozen) and its validation
/// Dice (the training Dice without a validation set).
fn settled_mean(
    avg: &Unet,
    data: &Data,
    settings: &TrainSettings,
    mut augmenter: Option<&mut Augmenter>,
    epoch: usize,
    device: &Device,
) -> (Unet, f64) {
    let net = if settings.bn_stats == BnStats::Frozen {
        avg.clone()
    } else {
        let (w, h) = (settings.input_width, settings.input_height);
        let order = epoch_order(data.train.len(), settings.seed, epoch);
        let batches: Vec<Tensor<4>> = order
            .chunks(settings.batch.max(2))
            .filter(|c| c.len() > 1)
            .map(|idx| {
                batch_tensors(
                    &data.train,
                    idx,
                    w,
                    h,
                    augmenter.as_deref_mut(),
                    settings.seed,
                    epoch,
                    false,
                    device,
                )
                .0
            })
            .collect();
        settle_statistics(avg.clone(), batches)
    };
    let set = if data.val.is_empty() {
        &data.train
    } else {
        &data.val
    };
    let (_, dice, _, _) = evaluate(&net, set, settings, device, &[]);
    (net, dice)
}

/// Exports checkpoint `which` of `run` to `out` (ONNX with pocusd metadata); returns the spec
/// written.
pub fn export_run(run: &Path, which: Checkpoint, out: &Path) -> Result<ModelSpec, TrainError> {
    let device = device_for(Backend::Flex);
    let (net, info, _, dice) = load_checkpoint(run, which, &device)?;
    if info.settings.loss.is_reconstruction() {
        // Its output is an image, not a mask: as a model it would measure nonsense.
        return Err(TrainError::Invalid(format!(
            "{} is a self-supervised pretraining run (loss reconstruct): its network restores images and segments nothing, so it is not exported as a model; train on labelled images from it (`pocusd train --init {} --data DIR ...`) and export that run",
            run.display(),
            run.display()
        )));
    }
    let spec = info.spec(dice.filter(|d| d.is_finite()));
    let bytes = export::to_onnx(&net, &spec)?;
    // The unfolded network first: an ONNX file never stands beside a stale .bpk of another run
    // (one that does not fold to it is ignored by `--init` anyway).
    write_atomic(&unfolded_path(out), &model_bytes(&net)?)?;
    write_atomic(out, &bytes)?;
    Ok(spec)
}

/// `Task` of a run (for eval after export).
pub fn run_task(run: &Path) -> Result<Task, TrainError> {
    Ok(RunInfo::load(run)?.settings.task)
}

/// What [`unfold_with_data`] did.
#[derive(Debug, Clone, Serialize)]
pub struct UnfoldReport {
    pub model: PathBuf,
    pub out: PathBuf,
    pub images: usize,
    pub batch_norms: usize,
    /// Largest relative difference between the calibrated network folded again and the file.
    pub fold_difference: f32,
}

/// An exported model file as the training side needs it: its bytes, its input contract, its
/// initializers by name and the architecture they imply.
pub(crate) struct Exported {
    pub bytes: Vec<u8>,
    pub spec: ModelSpec,
    pub inits: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub arch: UnetArch,
}

/// Reads an ONNX file `pocusd export` wrote (refused with the file's name if it is not one).
pub(crate) fn read_exported(model: &Path) -> Result<Exported, TrainError> {
    let origin = model.display().to_string();
    let bytes = std::fs::read(model).map_err(io(model))?;
    let spec = crate::infer::LoadedModel::from_bytes(
        &bytes,
        model,
        &crate::model::SpecOverrides::default(),
    )
    .map_err(|e| TrainError::Invalid(format!("{origin}: {e}")))?
    .spec()
    .clone();
    let inits = export::onnx_initializers(&origin, &bytes)?;
    let arch = export::onnx_arch(&origin, &inits)?;
    Ok(Exported {
        bytes,
        spec,
        inits,
        arch,
    })
}

/// Calibrated unfolding of a folded ONNX file whose training run is gone: loads its weights
/// (batch norms as identities), measures every batch norm's input over the images of `data`
/// (prepared by the model's own contract: region of interest, CLAHE, size) and writes the
/// network with those statistics ([`Unet::with_data_statistics`]) to `out`, after checking it
/// folds back to the file's weights. Not the original run's running averages, but the same
/// model in inference mode and nearly the same normalised by a batch of such data.
pub fn unfold_with_data(
    model: &Path,
    data: &[PathBuf],
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<UnfoldReport, TrainError> {
    let origin = model.display().to_string();
    let Exported {
        bytes,
        spec,
        inits,
        arch,
    } = read_exported(model)?;
    let device = device_for(Backend::Flex);
    let net = export::load_onnx_weights(&origin, &bytes, Unet::new(&arch, &device), &device)?;
    let (samples, report) = dataset::load(data, |w| progress.log(&format!("warning: {w}")))?;
    progress.log(&format!("calibration data: {report}"));
    let prepared = prepare(&samples, &spec)?;
    if prepared.is_empty() {
        return Err(TrainError::Invalid(
            "no images to measure the batch-norm statistics on".into(),
        ));
    }
    let (w, h) = (spec.input_width, spec.input_height);
    let mut acc = super::unet::Moments::default();
    let all: Vec<usize> = (0..prepared.len()).collect();
    for chunk in all.chunks(8) {
        let (x, _) = batch_tensors(&prepared, chunk, w, h, None, 0, 0, false, &device);
        net.accumulate_moments(x, &mut acc);
    }
    let net = net.with_data_statistics(&acc);
    let fold_difference = export::fold_difference(&origin, &net, &inits)?;
    if fold_difference > UNFOLDED_MATCH {
        return Err(TrainError::Invalid(format!(
            "the calibrated network does not fold back to {origin} (largest relative difference {fold_difference:.1e}); nothing written"
        )));
    }
    write_atomic(out, &model_bytes(&net)?)?;
    Ok(UnfoldReport {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        images: prepared.len(),
        batch_norms: acc.layers(),
        fold_difference,
    })
}

/// The largest relative difference between the unfolded copy beside `onnx` (`NAME.bpk`), folded
/// again, and the file's weights (what `--init` checks before using the copy).
pub fn unfolded_fold_difference(onnx: &Path) -> Result<f32, TrainError> {
    let origin = onnx.display().to_string();
    let bytes = std::fs::read(onnx).map_err(io(onnx))?;
    let inits = export::onnx_initializers(&origin, &bytes)?;
    let arch = export::onnx_arch(&origin, &inits)?;
    Ok(load_unfolded(onnx, &inits, &arch, &device_for(Backend::Flex))?.1)
}

/// The unfolded copy beside `onnx` and how far it is, folded again, from the file's weights
/// `inits` (largest difference relative to 1 + |weight|).
pub(crate) fn load_unfolded(
    onnx: &Path,
    inits: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    arch: &UnetArch,
    device: &Device,
) -> Result<(Unet, f32), TrainError> {
    let net = load_model_file(&unfolded_path(onnx), arch, device)?;
    let diff = export::fold_difference(&onnx.display().to_string(), &net, inits)?;
    Ok((net, diff))
}
