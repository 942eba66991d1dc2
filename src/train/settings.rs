//! Validated training settings: the `[train]` section (after command-line overrides) turned into
//! typed values, each bad value named by its key. Also the run's identity as written into
//! `run.json` ([`RunInfo`]) and the model description its settings imply ([`spec_for`]). Must not
//! depend on burn; the only files it reads are a run folder's `run.json` and the metadata of the
//! model `--init` names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::augment::AugmentConfig;
use super::loss::Loss;
use super::unet::{Encoder, UnetArch};
use crate::config::{choice, range, ConfigError, TrainSection};
use crate::dataset::LoadReport;
use crate::model::parse_size;
use crate::model::{Layout, ModelSpec, Normalisation, OutputKind, RoiPolicy, Task};
use crate::preprocess::ClaheParams;

/// Tensor backend for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn-flex, pure Rust, the faster one here.
    Flex,
    /// burn-ndarray (deprecated upstream; kept for comparison).
    Ndarray,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
        }
    }
}

/// Everything a run needs, validated.
/// How batch norms normalise while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnStats {
    /// Decided when the network is made: frozen when `--init` gave only a folded ONNX file (its
    /// batch norms are identities with no statistics of any data), batch otherwise.
    Auto,
    /// By each batch's statistics, moving the running statistics towards them (from scratch;
    /// fine-tuning from an unfolded network this also adapts the statistics to the new data).
    #[default]
    Batch,
    /// By the running statistics, which stay as they are; scale and shift still learn. The
    /// first step of a fine-tuning run then computes exactly the model it started from.
    Frozen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub task: Task,
    pub val: Option<PathBuf>,
    pub val_fraction: f64,
    pub val_blocks: usize,
    pub epochs: usize,
    pub batch: usize,
    pub input_width: usize,
    pub input_height: usize,
    pub arch: UnetArch,
    pub loss: Loss,
    pub lr: f64,
    pub lr_final_fraction: f64,
    /// Weight averaging (`[train] swa_epochs`, 0: off): the last this many epochs run at the
    /// constant learning rate `lr * swa_lr_fraction` (the cosine before them decays to it) and
    /// the run's model is the mean of the weights after each of their steps, its batch-norm
    /// statistics measured afresh on the training images.
    #[serde(default)]
    pub swa_epochs: usize,
    #[serde(default)]
    pub swa_lr_fraction: f64,
    /// ImageNet weights for an EfficientNet encoder (`[train] encoder_weights`).
    #[serde(default)]
    pub encoder_weights: Option<PathBuf>,
    pub seed: u64,
    /// Detect the region of interest (true) or use the whole image.
    pub roi_auto: bool,
    pub backend: Backend,
    pub init: Option<PathBuf>,
    /// How batch norms normalise while training (`[train] bn_stats`).
    #[serde(default)]
    pub bn_stats: BnStats,
    /// 0: all cores.
    pub threads: usize,
    pub preview_augment: usize,
    pub preview_images: usize,
    pub augment: AugmentConfig,
    /// CLAHE before the model (from `[preprocess]`), written into the model's metadata.
    pub clahe: Option<ClaheParams>,
    /// The masks' boundary convention (`pocusd.contour_offset_px`), carried over from the
    /// `--init` model or run so a fine-tuned model measures like the one it started from.
    #[serde(default)]
    pub contour_offset_px: f64,
    /// Mirrored test-time averaging (`pocusd.tta = mirror`), carried over from the `--init`
    /// model or run so a fine-tuned model runs like the one it started from.
    #[serde(default)]
    pub tta_mirror: bool,
}

fn int(key: &str, v: u64, lo: u64, hi: u64) -> Result<usize, ConfigError> {
    range(
        key,
        v as f64,
        lo as f64,
        hi as f64,
        &format!("{lo} to {hi}"),
    )
    .map(|v| v as usize)
}

fn prob(key: &str, v: f64) -> Result<f64, ConfigError> {
    range(key, v, 0.0, 1.0, "0 to 1")
}

/// What a model started from (`--init`, a run folder or an ONNX file) passes on: its
/// region-of-interest policy, its masks' contour offset and its test-time averaging. `None` when
/// it cannot be read (the run that tries to load its weights reports that, once).
struct InitContract {
    roi: RoiPolicy,
    contour_offset_px: f64,
    tta_mirror: bool,
}

fn init_contract(init: &std::path::Path) -> Option<InitContract> {
    if init.is_dir() {
        let s = RunInfo::load(init).ok()?.settings;
        return Some(InitContract {
            roi: if s.roi_auto {
                RoiPolicy::Auto
            } else {
                RoiPolicy::Full
            },
            contour_offset_px: s.contour_offset_px,
            tta_mirror: s.tta_mirror,
        });
    }
    let bytes = std::fs::read(init).ok()?;
    let meta = crate::infer::onnx_file::metadata(&bytes).ok()?;
    let get = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    Some(InitContract {
        roi: get("pocusd.roi")
            .and_then(RoiPolicy::parse)
            .unwrap_or(RoiPolicy::Full),
        contour_offset_px: get("pocusd.contour_offset_px")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .unwrap_or(0.0),
        tta_mirror: get("pocusd.tta").is_some_and(|v| v.trim() == "mirror"),
    })
}

fn path(s: &str) -> Option<PathBuf> {
    (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()))
}

impl TrainSettings {
    /// Validates `t` (keys named `train.<key>` in errors); `clahe` comes from `[preprocess]`.
    pub fn from_section(t: &TrainSection, clahe: Option<ClaheParams>) -> Result<Self, ConfigError> {
        // Without an --init (or one that cannot be read): auto ROI, no contour offset.
        let init = path(&t.init).and_then(|p| init_contract(&p));
        let Some(task) = Task::parse(&t.task) else {
            choice("train.task", &t.task, &Task::ALL.map(|t| t.as_str()))?;
            unreachable!()
        };
        let depth = int("train.depth", t.depth, 1, 6)?;
        let Some(encoder) = Encoder::parse(&t.encoder) else {
            choice("train.encoder", &t.encoder, &["unet", "efficientnet-lite0"])?;
            unreachable!()
        };
        if encoder == Encoder::EfficientnetLite0 && depth != 4 {
            return Err(ConfigError::OutOfRange {
                key: "train.depth".into(),
                value: depth.to_string(),
                allowed: "4 with encoder = \"efficientnet-lite0\" (strides 2 to 16)".into(),
            });
        }
        let (input_width, input_height) =
            parse_size(&t.input).ok_or_else(|| ConfigError::OutOfRange {
                key: "train.input".into(),
                value: format!("{:?}", t.input),
                allowed: "\"WxH\", e.g. \"128x128\"".into(),
            })?;
        let step = 1usize << depth;
        if input_width % step != 0
            || input_height % step != 0
            || input_width > 2048
            || input_height > 2048
        {
            return Err(ConfigError::OutOfRange {
                key: "train.input".into(),
                value: format!("{:?}", t.input),
                allowed: format!("width and height multiples of 2^depth = {step}, at most 2048"),
            });
        }
        let loss = match t.loss.as_str() {
            "dice-bce" => Loss::DiceBce,
            "tversky" => Loss::Tversky {
                alpha: prob("train.tversky_alpha", t.tversky_alpha)?,
                beta: prob("train.tversky_beta", t.tversky_beta)?,
            },
            "reconstruct" => Loss::Reconstruct,
            other => {
                choice("train.loss", other, &["dice-bce", "tversky", "reconstruct"])?;
                unreachable!()
            }
        };
        let backend = match t.backend.as_str() {
            "flex" => Backend::Flex,
            "ndarray" => Backend::Ndarray,
            other => {
                choice("train.backend", other, &["flex", "ndarray"])?;
                unreachable!()
            }
        };
        choice("train.roi", &t.roi, &["model", "auto", "none"])?;
        choice("train.head", &t.head, &["sigmoid", "softmax"])?;
        let classes = if t.head == "softmax" { 2 } else { 1 };
        let augment = AugmentConfig {
            hflip_p: prob("train.aug_hflip_p", t.aug_hflip_p)?,
            vflip_p: prob("train.aug_vflip_p", t.aug_vflip_p)?,
            rotate_p: prob("train.aug_rotate_p", t.aug_rotate_p)?,
            rotate_deg: range(
                "train.aug_rotate_deg",
                t.aug_rotate_deg,
                0.0,
                45.0,
                "0 to 45",
            )?,
            scale_p: prob("train.aug_scale_p", t.aug_scale_p)?,
            scale: range("train.aug_scale", t.aug_scale, 0.0, 0.5, "0 to 0.5")?,
            elastic_p: prob("train.aug_elastic_p", t.aug_elastic_p)?,
            elastic_px: range(
                "train.aug_elastic_px",
                t.aug_elastic_px,
                0.0,
                20.0,
                "0 to 20",
            )?,
            noise_p: prob("train.aug_noise_p", t.aug_noise_p)?,
            noise_sigma: range(
                "train.aug_noise_sigma",
                t.aug_noise_sigma,
                0.0,
                0.5,
                "0 to 0.5",
            )?,
            blur_p: prob("train.aug_blur_p", t.aug_blur_p)?,
            blur_sigma: range(
                "train.aug_blur_sigma",
                t.aug_blur_sigma,
                0.3,
                5.0,
                "0.3 to 5",
            )?,
            brightness_contrast_p: prob(
                "train.aug_brightness_contrast_p",
                t.aug_brightness_contrast_p,
            )?,
            brightness: range(
                "train.aug_brightness",
                t.aug_brightness,
                0.0,
                0.5,
                "0 to 0.5",
            )?,
            contrast: range("train.aug_contrast", t.aug_contrast, 0.0, 0.5, "0 to 0.5")?,
            gamma_p: prob("train.aug_gamma_p", t.aug_gamma_p)?,
            gamma: range("train.aug_gamma", t.aug_gamma, 0.0, 1.0, "0 to 1")?,
            depth_gain_p: prob("train.aug_depth_gain_p", t.aug_depth_gain_p)?,
            depth_gain: range("train.aug_depth_gain", t.aug_depth_gain, 0.0, 2.0, "0 to 2")?,
            lowres_p: prob("train.aug_lowres_p", t.aug_lowres_p)?,
            lowres: range("train.aug_lowres", t.aug_lowres, 1.0, 4.0, "1 to 4")?,
            crop_top_p: prob("train.aug_crop_top_p", t.aug_crop_top_p)?,
            crop_top: range("train.aug_crop_top", t.aug_crop_top, 0.0, 0.8, "0 to 0.8")?,
        };
        Ok(Self {
            data: t.data.iter().filter_map(|d| path(d)).collect(),
            out: PathBuf::from(t.out.trim()),
            task,
            val: path(&t.val),
            val_fraction: range("train.val_fraction", t.val_fraction, 0.0, 0.5, "0.0 to 0.5")?,
            val_blocks: int("train.val_blocks", t.val_blocks, 1, 100)?,
            epochs: int("train.epochs", t.epochs, 1, 10_000)?,
            batch: int("train.batch", t.batch, 1, 256)?,
            input_width,
            input_height,
            arch: UnetArch {
                depth,
                base_width: int("train.width", t.width, 1, 256)?,
                in_channels: 1,
                classes,
                encoder,
            },
            encoder_weights: path(&t.encoder_weights),
            loss,
            lr: range("train.lr", t.lr, 0.0, 1.0, "0 to 1.0")?,
            lr_final_fraction: prob("train.lr_final_fraction", t.lr_final_fraction)?,
            swa_epochs: int("train.swa_epochs", t.swa_epochs, 0, 10_000)?,
            swa_lr_fraction: prob("train.swa_lr_fraction", t.swa_lr_fraction)?,
            seed: t.seed,
            roi_auto: match t.roi.as_str() {
                "auto" => true,
                "none" => false,
                // "model": the policy of the model or run we start from, else auto.
                _ => init.as_ref().is_none_or(|c| c.roi != RoiPolicy::Full),
            },
            backend,
            bn_stats: match t.bn_stats.as_str() {
                "batch" => BnStats::Batch,
                "frozen" => BnStats::Frozen,
                "auto" if path(&t.init).is_some() => BnStats::Auto,
                "auto" => BnStats::Batch,
                other => {
                    choice("train.bn_stats", other, &["auto", "batch", "frozen"])?;
                    unreachable!()
                }
            },
            init: path(&t.init),
            threads: int("train.threads", t.threads, 0, 256)?,
            preview_augment: int("train.preview_augment", t.preview_augment, 0, 10_000)?,
            preview_images: int("train.preview_images", t.preview_images, 1, 16)?,
            augment,
            clahe,
            contour_offset_px: init.as_ref().map_or(0.0, |c| c.contour_offset_px),
            tta_mirror: init.as_ref().is_some_and(|c| c.tta_mirror),
        })
    }

    /// Learning rate for `epoch` (0-based): cosine from `lr` down to `lr * lr_final_fraction`;
    /// with weight averaging, cosine over the epochs before the averaged ones down to `lr *
    /// swa_lr_fraction`, then constant.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let (span, floor) = if self.swa_epochs > 0 {
            (
                self.epochs.saturating_sub(self.swa_epochs),
                self.swa_lr_fraction,
            )
        } else {
            (self.epochs, self.lr_final_fraction)
        };
        let low = self.lr * floor;
        if epoch + 1 > span {
            return low;
        }
        let t = if span <= 1 {
            0.0
        } else {
            epoch as f64 / (span - 1) as f64
        };
        low + (self.lr - low) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// The first epoch (0-based) whose steps are averaged, `None` without weight averaging.
    pub fn swa_start(&self) -> Option<usize> {
        (self.swa_epochs > 0).then(|| self.epochs.saturating_sub(self.swa_epochs))
    }
}

/// A run folder whose `run.json` cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFileError(pub String);

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format: u32,
    pub run_id: String,
    pub created: f64,
    pub settings: TrainSettings,
    pub train_report: LoadReport,
    pub train_images: usize,
    pub val_images: usize,
    pub val_names: Vec<String>,
    pub trained_on: String,
    pub pocusd_version: String,
}

impl RunInfo {
    /// Reads `run.json` of `dir`.
    pub fn load(dir: &Path) -> Result<Self, RunFileError> {
        let path = dir.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            RunFileError(format!(
                "{} is not a pocusd run folder (cannot read run.json: {e})",
                dir.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| RunFileError(format!("{} is damaged: {e}", path.display())))
    }

    /// The model description the exported file carries.
    pub fn spec(&self, val_dice: Option<f64>) -> ModelSpec {
        spec_for(
            &self.settings,
            Some(self.trained_on.clone()),
            val_dice,
            Some(self.run_id.clone()),
        )
    }
}

/// The model spec (what preprocessing the network expects) for these settings.
pub fn spec_for(
    s: &TrainSettings,
    trained_on: Option<String>,
    val_dice: Option<f64>,
    run_id: Option<String>,
) -> ModelSpec {
    ModelSpec {
        task: s.task,
        input_width: s.input_width,
        input_height: s.input_height,
        channels: 1,
        layout: Layout::Nchw,
        normalisation: Normalisation::Unit,
        clahe: s.clahe,
        // Training's `--roi none` is the whole frame.
        roi: if s.roi_auto {
            RoiPolicy::Auto
        } else {
            RoiPolicy::Full
        },
        contour_offset_px: s.contour_offset_px,
        tta_mirror: s.tta_mirror,
        output: if s.arch.classes > 1 {
            OutputKind::Softmax
        } else {
            OutputKind::Sigmoid
        },
        output_channels: s.arch.classes,
        classes: vec!["background".into(), s.task.as_str().into()],
        from_metadata: true,
        trained_on,
        val_dice,
        run_id,
    }
}
