//! Scoring a model on a labelled folder (`images/` + `masks/`, same file names): per image the
//! Dice and IoU of the predicted mask against the reference over the whole image, and the task's
//! measurement taken the same way from both masks (thickness between the aponeuroses, or the
//! fitted ellipse's circumference, in mm with the HC18 CSV of pixel sizes). The model sees each
//! image through the one [`Analyzer`] path, with the region of interest found per image by the
//! model's own policy unless the caller overrides it; an image that cannot be read or scored is
//! skipped and counted, never the end of the evaluation. `pocusd eval`, the shipped-model tests
//! and (later) the nightly loop call [`evaluate`]. Reads the folder it is given; writes nothing.
//! Must not depend on tract or burn directly (the model comes in as an `infer::LoadedModel`).

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::analyzer::Analyzer;
use crate::frame::Rect;
use crate::imageio;
use crate::infer::LoadedModel;
use crate::model::Task;
use crate::postprocess::overlay::OverlayStyle;
use crate::postprocess::quality::{Doubt, Doubts, Evidence};
use crate::postprocess::{Calibration, Flag, PostprocessConfig, Postprocessor, Smoothing};
use crate::preprocess::roi::{RoiChoice, Tracking};

/// Why an evaluation could not run at all (single bad images are skipped, not errors).
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("cannot list {} (expected DIR/images and DIR/masks): {source}", path.display())]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PNG or JPEG images", .0.display())]
    NoImages(PathBuf),
    #[error("no image in {} had a readable mask of the same size in {}", images.display(), masks.display())]
    NothingScored { images: PathBuf, masks: PathBuf },
    #[error("{0}")]
    Csv(String),
    #[error("--apo-model {0}")]
    ApoModel(String),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
}

/// What to score and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Folder with `images/` and `masks/`.
    pub data: PathBuf,
    /// Measurement to score; `None`: the model's task.
    pub task: Option<Task>,
    /// HC18-style CSV (`filename,pixel_size_mm,head_circumference_mm`).
    pub mm_csv: Option<PathBuf>,
    /// Only the validation blocks `pocusd train` holds out: (fraction, blocks).
    pub validation: Option<(f64, usize)>,
    /// The region of interest: the model's policy unless explicit.
    pub roi: RoiChoice,
    pub clahe_threads: NonZeroUsize,
    /// Postprocessing settings (calibration and smoothing are switched off for scoring).
    pub post: PostprocessConfig,
    /// Fascicle task: the aponeurosis model that finds the aponeuroses the fascicles are extended
    /// to (then pennation angle and fascicle length are scored too).
    pub apo_model: Option<PathBuf>,
}

/// The task-specific numbers of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskScore {
    Aponeurosis {
        thickness_px: Option<f64>,
        reference_thickness_px: Option<f64>,
    },
    Region {
        circumference_px: Option<f64>,
        reference_circumference_px: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        circumference_mm: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reference_hc_mm: Option<f64>,
        /// Phantom data (truth.csv beside images/): the drawn ellipse's circumference, px.
        #[serde(skip_serializing_if = "Option::is_none")]
        truth_circumference_px: Option<f64>,
    },
    Fascicle {
        /// Dominant orientation of the predicted and of the reference fragments, degrees.
        orientation_deg: Option<f64>,
        reference_orientation_deg: Option<f64>,
        orientation_err_deg: Option<f64>,
        /// Of the reference fragment pixels, the fraction within 3 px of a predicted fragment.
        fragment_recall: Option<f64>,
        /// With an aponeurosis model: from the predicted and from the reference fragments.
        #[serde(skip_serializing_if = "Option::is_none")]
        pennation_angle_deg: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reference_pennation_angle_deg: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fascicle_length_px: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reference_fascicle_length_px: Option<f64>,
        /// Phantom data (truth.csv beside images/): the analytic truth.
        #[serde(skip_serializing_if = "Option::is_none")]
        truth_pennation_angle_deg: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        truth_fascicle_length_px: Option<f64>,
    },
}

/// One scored image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageScore {
    pub image: String,
    /// 0 when the prediction lacks the structure (no structure, one band).
    pub dice: f64,
    pub iou: f64,
    pub flag: Option<&'static str>,
    /// The model's own confidence (mean probability inside the mask) and uncertain fraction.
    pub confidence: f64,
    pub uncertain_fraction: f64,
    /// The verdict on the prediction's measurement, as live: `ok` or `doubtful`, and the reasons.
    pub quality: &'static str,
    pub doubt: Doubts,
    /// What the verdict was made from.
    pub evidence: Evidence,
    /// The region of interest the model saw, in image pixels.
    pub roi: Rect,
    #[serde(flatten)]
    pub task: TaskScore,
}

/// The whole evaluation (`pocusd eval --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub images: usize,
    /// Images whose prediction lacks the structure.
    pub failed: usize,
    /// Images that could not be read or scored.
    pub skipped: usize,
    pub task: &'static str,
    pub model_sha256: String,
    /// The region-of-interest mode applied, and whether it overrides the model's policy.
    pub roi: String,
    pub roi_override: bool,
    pub dice: Option<f64>,
    pub iou: Option<f64>,
    pub thickness_mae_px: Option<f64>,
    pub thickness_rel_err_median: Option<f64>,
    pub thickness_within_10pct: Option<f64>,
    pub circumference_mae_px: Option<f64>,
    pub circumference_mae_mm: Option<f64>,
    /// Region task: the signed circumference error by tercile of reference size (smallest third
    /// first), in mm when the CSV gives the scale, else in pixels. A size bias shows up here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub circumference_bias_by_size: Vec<SizeBias>,
    /// Region task on phantom data: the same against the drawn ellipse (truth.csv), in pixels.
    /// The reference masks are measured with the model's `contour_offset_px`, which describes
    /// the training data's mask convention; a phantom's mask ends exactly on its ellipse, so
    /// the truth is the fair reference for a phantom.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub truth_circumference_bias_by_size: Vec<SizeBias>,
    /// Fascicle task: median over images of the dominant orientation's error, degrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orientation_err_deg_median: Option<f64>,
    /// Fascicle task: reference fragment pixels within 3 px of a predicted fragment, pooled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragment_recall: Option<f64>,
    /// Fascicle task with an aponeurosis model: median |predicted - reference| pennation angle
    /// (degrees) and relative fascicle length error, against the reference fragments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pennation_err_deg_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fascicle_length_rel_err_median: Option<f64>,
    /// The same against the phantom's analytic truth (truth.csv).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_pennation_err_deg_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_fascicle_length_rel_err_median: Option<f64>,
    /// The gate measured as risk against coverage: of the images with a reference measurement,
    /// the fraction with an `ok` one.
    pub coverage: Option<f64>,
    /// Of the `ok` measurements, the fraction within 10 % of the reference (thickness, or
    /// circumference: in mm with the CSV).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_10pct: Option<f64>,
    /// The same for the doubtful ones that still carry a number (low is good: the gate caught
    /// wrong ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doubtful_precision_10pct: Option<f64>,
    /// Regions: of the `ok` measurements, the fraction within 5 % of the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_5pct: Option<f64>,
    /// Fascicles: of the `ok` measurements, the fraction with the dominant orientation within 3
    /// degrees of the reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_3deg: Option<f64>,
    /// Images by reason of doubt.
    pub doubt_counts: std::collections::BTreeMap<&'static str, usize>,
    pub per_image: Vec<ImageScore>,
}

/// Risk against coverage from (ok?, relative error or `None` without a number, has reference)
/// per image: (coverage, precision of ok within `tol`, precision of doubtful within `tol`).
pub fn gate_scores(
    items: &[(bool, Option<f64>, bool)],
    tol: f64,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let with_ref: Vec<_> = items.iter().filter(|i| i.2).collect();
    let ok_n = with_ref.iter().filter(|i| i.0 && i.1.is_some()).count();
    let coverage = (!with_ref.is_empty()).then(|| ok_n as f64 / with_ref.len() as f64);
    let prec = |want_ok: bool| {
        let errs: Vec<f64> = with_ref
            .iter()
            .filter(|i| i.0 == want_ok)
            .filter_map(|i| i.1)
            .collect();
        (!errs.is_empty())
            .then(|| errs.iter().filter(|&&e| e <= tol).count() as f64 / errs.len() as f64)
    };
    (coverage, prec(true), prec(false))
}

/// Fraction of `reference`'s foreground pixels within `radius` px (Euclidean) of a foreground
/// pixel of `predicted` (both `w` x `h`, nonzero = foreground); with the counts (within, total).
pub fn recall_within(
    predicted: &[u8],
    reference: &[u8],
    w: usize,
    h: usize,
    radius: usize,
) -> (usize, usize) {
    let r = radius as i64;
    let (mut hit, mut total) = (0usize, 0usize);
    for y in 0..h {
        for x in 0..w {
            if reference[y * w + x] == 0 {
                continue;
            }
            total += 1;
            let found = (-r..=r).any(|dy| {
                (-r..=r).any(|dx| {
                    let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                    dx * dx + dy * dy <= r * r
                        && xx >= 0
                        && yy >= 0
                        && (xx as usize) < w
                        && (yy as usize) < h
                        && predicted[yy as usize * w + xx as usize] != 0
                })
            });
            hit += found as usize;
        }
    }
    (hit, total)
}

/// One image's analytic truth from a phantom dataset's truth.csv (`pocusd synth`).
#[derive(Debug, Clone, Copy, Default)]
struct PhantomTruth {
    pennation_angle_deg: Option<f64>,
    fascicle_length_px: Option<f64>,
    circumference_px: Option<f64>,
}

/// A phantom dataset's truth.csv: filename -> its truth (empty without the file).
fn read_truth_csv(path: &Path) -> HashMap<String, PhantomTruth> {
    let mut map = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return map;
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return map;
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (ip, il, ic) = (
        col("pennation_angle_deg"),
        col("fascicle_length_px"),
        col("circumference_px"),
    );
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: Option<usize>| i.and_then(|i| f.get(i)?.parse::<f64>().ok());
        if let Some(n) = f.first() {
            map.insert(
                n.to_string(),
                PhantomTruth {
                    pennation_angle_deg: get(ip),
                    fascicle_length_px: get(il),
                    circumference_px: get(ic),
                },
            );
        }
    }
    map
}

/// The signed error of one size tercile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeBias {
    pub images: usize,
    /// The tercile's reference sizes (mm with a CSV, else px).
    pub reference_min: f64,
    pub reference_max: f64,
    pub unit: &'static str,
    /// Mean of (predicted - reference), in `unit`.
    pub signed_mean: f64,
    /// Mean of (predicted - reference) / reference.
    pub signed_mean_rel: f64,
}

/// |predicted - reference| of each pair.
fn abs_errors(pairs: &[(f64, f64)]) -> Vec<f64> {
    pairs.iter().map(|(p, r)| (p - r).abs()).collect()
}

/// Splits (predicted, reference) pairs into terciles of reference size and gives each one's
/// signed mean error; empty under 3 pairs.
pub fn bias_by_size(pairs: &[(f64, f64)], unit: &'static str) -> Vec<SizeBias> {
    if pairs.len() < 3 {
        return Vec::new();
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let n = sorted.len();
    (0..3)
        .map(|t| {
            let part = &sorted[t * n / 3..(t + 1) * n / 3];
            let k = part.len() as f64;
            SizeBias {
                images: part.len(),
                reference_min: part[0].1,
                reference_max: part[part.len() - 1].1,
                unit,
                signed_mean: part.iter().map(|(p, r)| p - r).sum::<f64>() / k,
                signed_mean_rel: part.iter().map(|(p, r)| (p - r) / r).sum::<f64>() / k,
            }
        })
        .collect()
}

/// Dice and IoU of two 0/non-0 masks (a pixel is set above 127); both empty count as agreement.
pub fn dice_iou(a: &[u8], b: &[u8]) -> (f64, f64) {
    let (mut inter, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x > 127, y > 127);
        na += x as usize;
        nb += y as usize;
        inter += (x && y) as usize;
    }
    if na + nb == 0 {
        return (1.0, 1.0);
    }
    let union = na + nb - inter;
    (
        2.0 * inter as f64 / (na + nb) as f64,
        inter as f64 / union as f64,
    )
}

/// The HC18 CSV: filename -> (pixel_size_mm, head_circumference_mm).
pub fn read_mm_csv(path: &Path) -> Result<HashMap<String, (f64, f64)>, EvalError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Csv(format!("cannot read {}: {e}", path.display())))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 3 {
            continue;
        }
        let num = |v: &str, what: &str| {
            v.parse::<f64>().map_err(|_| {
                EvalError::Csv(format!(
                    "{} line {}: {what} {v:?} is not a number",
                    path.display(),
                    i + 1
                ))
            })
        };
        map.insert(
            f[0].to_string(),
            (
                num(f[1], "pixel_size_mm")?,
                num(f[2], "head_circumference_mm")?,
            ),
        );
    }
    Ok(map)
}

fn med(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    (!v.is_empty()).then(|| crate::postprocess::median(&mut v))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The images of `dir/images`, sorted by name.
fn list_images(images_dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(images_dir)
        .map_err(|source| EvalError::List {
            path: images_dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| {
                ["png", "jpg", "jpeg"]
                    .iter()
                    .any(|k| x.eq_ignore_ascii_case(k))
            })
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(EvalError::NoImages(images_dir.to_path_buf()));
    }
    Ok(names)
}

/// The quality gate on images without labels (site frames held back from an adaptation): each
/// image through the one [`Analyzer`] path as a still image (the mirrored check always on), the
/// verdict counted without the model's own confidence; returns the score and each image's
/// verdict in order (`None`: skipped), for a frame-by-frame comparison of two models. Unreadable
/// images are skipped and counted in `note`.
pub fn evidence_on(
    model: &mut LoadedModel,
    images: &[PathBuf],
    clahe_threads: NonZeroUsize,
    post: PostprocessConfig,
    note: &mut dyn FnMut(String),
) -> (crate::versions::EvidenceScore, Vec<Option<bool>>) {
    let post_cfg = PostprocessConfig {
        calibration: Calibration::None,
        smoothing: Smoothing::Off,
        ..post
    };
    let tolerance = post_cfg.quality.mirror_tolerance;
    let roi = RoiChoice::default().resolve(model.spec().roi);
    let mut analyzer = Analyzer::new(
        model,
        roi.mode,
        Tracking::PerImage,
        clahe_threads,
        post_cfg,
        OverlayStyle::default(),
    );
    let mut score = crate::versions::EvidenceScore::default();
    let mut diffs = Vec::new();
    let mut per_frame = Vec::with_capacity(images.len());
    for path in images {
        let analysed = imageio::read_gray(path)
            .map_err(|e| e.to_string())
            .and_then(|img| {
                let v = img.view().map_err(|e| e.to_string())?;
                analyzer
                    .analyse(model, v)
                    .map(|a| (a.doubt, a.evidence))
                    .map_err(|e| e.to_string())
            });
        let (doubt, evidence) = match analysed {
            Ok(r) => r,
            Err(e) => {
                note(format!("skipped {}: {e}", path.display()));
                per_frame.push(None);
                continue;
            }
        };
        score.frames += 1;
        let evidence_doubt = doubt
            .iter()
            .filter(|d| !matches!(d, Doubt::LowConfidence | Doubt::Jump));
        let ok = evidence_doubt.count() == 0;
        per_frame.push(Some(ok));
        score.ok += usize::from(ok);
        score.confident += usize::from(!doubt.contains(Doubt::LowConfidence));
        if let Some(d) = evidence.mirror_diff {
            score.mirror_agrees += usize::from(d <= tolerance);
            if d < 1.0 {
                diffs.push(d);
            }
        }
    }
    score.mirror_diff_mean = mean(&diffs);
    (score, per_frame)
}

/// Scores `model` on `opts.data`. `note` receives one line per skipped image and the validation
/// summary (the command line prints them on stderr).
pub fn evaluate(
    model: &mut LoadedModel,
    opts: &EvalOptions,
    note: &mut dyn FnMut(String),
) -> Result<EvalReport, EvalError> {
    let task = opts.task.unwrap_or(model.spec().task);
    let post_cfg = PostprocessConfig {
        calibration: Calibration::None,
        smoothing: Smoothing::Off,
        ..opts.post
    };
    let roi = opts.roi.resolve(model.spec().roi);
    let mut analyzer = Analyzer::new(
        model,
        roi.mode,
        Tracking::PerImage,
        opts.clahe_threads,
        post_cfg,
        OverlayStyle::default(),
    );
    // Reference masks and predictions follow the same mask convention (the model's).
    let mut reference = Postprocessor::new(task, post_cfg);
    reference.set_contour_offset_px(model.spec().contour_offset_px);
    // The task used for measuring predictions may differ from the model's (--task).
    let mut measure_pred = Postprocessor::new(task, post_cfg);
    measure_pred.set_contour_offset_px(model.spec().contour_offset_px);
    let csv = match &opts.mm_csv {
        Some(p) => read_mm_csv(p)?,
        None => HashMap::new(),
    };
    // Fascicle task: the aponeurosis model's stages, and the phantom's truth when there is one.
    let mut apo = match &opts.apo_model {
        Some(p) if task == Task::Fascicle => {
            let m = LoadedModel::load(p, &crate::model::SpecOverrides::default())
                .map_err(|e| EvalError::ApoModel(format!("{}: {e}", p.display())))?;
            if m.spec().task != Task::Aponeurosis {
                return Err(EvalError::ApoModel(format!(
                    "{} is a {} model, not an aponeurosis model",
                    p.display(),
                    m.spec().task.as_str()
                )));
            }
            let a = Analyzer::new(
                &m,
                opts.roi.resolve(m.spec().roi).mode,
                Tracking::PerImage,
                opts.clahe_threads,
                post_cfg,
                OverlayStyle::default(),
            );
            Some((m, a))
        }
        _ => None,
    };
    let truth = read_truth_csv(&opts.data.join("truth.csv"));
    let (mut orient_err, mut recall_hits, mut recall_total) = (Vec::new(), 0usize, 0usize);
    let (mut penn_err, mut len_rel, mut t_penn_err, mut t_len_rel) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let images_dir = opts.data.join("images");
    let masks_dir = opts.data.join("masks");
    let mut names = list_images(&images_dir)?;
    if let Some((fraction, blocks)) = opts.validation {
        let (samples, _) = crate::dataset::load(std::slice::from_ref(&opts.data), |_| {})?;
        let held: BTreeSet<String> =
            crate::dataset::validation_blocks(samples.len(), fraction, blocks)
                .into_iter()
                .map(|i| samples[i].name.clone())
                .collect();
        names.retain(|p| {
            p.file_name()
                .is_some_and(|n| held.contains(n.to_string_lossy().as_ref()))
        });
        note(format!(
            "scoring the {} validation images of {} (fraction {fraction}, {blocks} blocks)",
            names.len(),
            opts.data.display()
        ));
    }
    let (mut dice, mut iou, mut failed, mut skipped) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let (mut th_abs, mut th_rel) = (Vec::new(), Vec::new());
    // Circumference (predicted, reference) pairs, in px and, with the CSV, in mm.
    let (mut c_pairs_px, mut c_pairs_mm, mut c_pairs_truth) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_image = Vec::new();
    // Per image: (ok, relative error of the headline number, has a reference number).
    let mut gate: Vec<(bool, Option<f64>, bool)> = Vec::new();
    let mut doubt_counts = std::collections::BTreeMap::new();
    let mut pred_prob = Vec::new();
    let mut ref_prob = Vec::new();
    for path in &names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut skip = |why: String| {
            note(format!("skipped {name}: {why}"));
            skipped += 1;
        };
        let (img, refmask) = match (
            imageio::read_gray(path),
            imageio::read_gray(&masks_dir.join(&name)),
        ) {
            (Ok(i), Ok(m)) if (i.width(), i.height()) == (m.width(), m.height()) => (i, m),
            (Ok(_), Ok(_)) => {
                skip("image and mask sizes differ".into());
                continue;
            }
            (Err(e), _) | (_, Err(e)) => {
                skip(e.to_string());
                continue;
            }
        };
        let scored = img.view().map_err(|e| e.to_string()).and_then(|v| {
            analyzer
                .analyse(model, v)
                .map_err(|e| e.to_string())
                .map(|_| ())
        });
        if let Err(e) = scored {
            skip(e);
            continue;
        }
        // Masks are compared, and measured, over the whole image.
        let full = Rect::full(img.width(), img.height());
        let pred_mask = analyzer.mask_image(img.width(), img.height());
        let as_prob = |m: &[u8], out: &mut Vec<f32>| {
            out.clear();
            out.extend(m.iter().map(|&v| (v > 127) as u8 as f32));
        };
        as_prob(pred_mask.as_slice(), &mut pred_prob);
        as_prob(refmask.as_slice(), &mut ref_prob);
        if let Some((m, a)) = apo.as_mut() {
            // The aponeuroses on the same image, moved from the aponeurosis model's region of
            // interest into image coordinates.
            let lines = img
                .view()
                .ok()
                .and_then(|v| a.analyse(m, v).ok().map(|_| ()))
                .and_then(|_| {
                    let r = a.roi();
                    a.postprocessor().aponeuroses().map(|l| {
                        let shift = |(c, b): (f64, f64)| (c - b * r.x as f64 + r.y as f64, b);
                        crate::postprocess::fascicle::ApoLines {
                            superficial: shift(l.superficial),
                            deep: shift(l.deep),
                        }
                    })
                });
            measure_pred.set_aponeuroses(lines);
            reference.set_aponeuroses(lines);
        }
        let pa = measure_pred.process_full(&pred_prob, full).clone();
        let ra = reference.process_full(&ref_prob, full).clone();
        // The verdict as the daemon gives it live: the analyser's (with the model's confidence);
        // fascicles are judged where they meet the aponeurosis model's bands.
        let (confidence, uncertain_fraction) = {
            let live = analyzer.analysis();
            (live.confidence, live.uncertain_fraction)
        };
        let (doubt, evidence) = {
            let live = analyzer.analysis();
            if task == Task::Fascicle || task != model.spec().task {
                let mut d = pa.doubt;
                if live.flag == Some(Flag::LowConfidence) {
                    d.insert(Doubt::LowConfidence);
                }
                (d, pa.evidence)
            } else {
                (live.doubt, live.evidence)
            }
        };
        for d in doubt.iter() {
            *doubt_counts.entry(d.as_str()).or_insert(0usize) += 1;
        }
        let ok = doubt.is_empty();
        // A fascicle prediction without aponeuroses still has its fragments.
        let lacks = match task {
            Task::Fascicle => pa.flag == Some(Flag::NoStructure),
            _ => matches!(pa.flag, Some(Flag::NoStructure) | Some(Flag::OneBand)),
        };
        let (d, j) = if lacks {
            (0.0, 0.0)
        } else {
            dice_iou(pred_mask.as_slice(), refmask.as_slice())
        };
        failed += lacks as usize;
        dice.push(d);
        iou.push(j);
        let task_score = match task {
            Task::Aponeurosis => {
                let (p, r) = (pa.measurements.thickness_px, ra.measurements.thickness_px);
                if let (Some(p), Some(r)) = (p, r) {
                    th_abs.push((p - r).abs());
                    th_rel.push((p - r).abs() / r);
                }
                gate.push((ok, p.zip(r).map(|(p, r)| (p - r).abs() / r), r.is_some()));
                TaskScore::Aponeurosis {
                    thickness_px: p,
                    reference_thickness_px: r,
                }
            }
            Task::Fascicle => {
                let (p, r) = (
                    pa.measurements.fascicle_orientation_deg,
                    ra.measurements.fascicle_orientation_deg,
                );
                let err = p
                    .zip(r)
                    .map(|(p, r)| crate::postprocess::fascicle::axial_difference_deg(p, r));
                orient_err.extend(err);
                gate.push((ok, err, r.is_some()));
                let (hit, total) = recall_within(
                    pred_mask.as_slice(),
                    refmask.as_slice(),
                    img.width(),
                    img.height(),
                    3,
                );
                recall_hits += hit;
                recall_total += total;
                let (pp, rp) = (
                    pa.measurements.pennation_angle_deg,
                    ra.measurements.pennation_angle_deg,
                );
                let (pl, rl) = (
                    pa.measurements.fascicle_length_px,
                    ra.measurements.fascicle_length_px,
                );
                if let (Some(p), Some(r)) = (pp, rp) {
                    penn_err.push((p - r).abs());
                }
                if let (Some(p), Some(r)) = (pl, rl) {
                    len_rel.push((p - r).abs() / r);
                }
                let t = truth.get(&name).copied().unwrap_or_default();
                if let (Some(p), Some(tp)) = (pp, t.pennation_angle_deg) {
                    t_penn_err.push((p - tp).abs());
                }
                if let (Some(p), Some(tl)) = (pl, t.fascicle_length_px) {
                    t_len_rel.push((p - tl).abs() / tl);
                }
                TaskScore::Fascicle {
                    orientation_deg: p,
                    reference_orientation_deg: r,
                    orientation_err_deg: err,
                    fragment_recall: (total > 0).then(|| hit as f64 / total as f64),
                    pennation_angle_deg: pp,
                    reference_pennation_angle_deg: rp,
                    fascicle_length_px: pl,
                    reference_fascicle_length_px: rl,
                    truth_pennation_angle_deg: t.pennation_angle_deg,
                    truth_fascicle_length_px: t.fascicle_length_px,
                }
            }
            Task::Region => {
                let (p, r) = (
                    pa.measurements.circumference_px,
                    ra.measurements.circumference_px,
                );
                if let (Some(p), Some(r)) = (p, r) {
                    c_pairs_px.push((p, r));
                }
                let t = truth.get(&name).and_then(|t| t.circumference_px);
                if let (Some(p), Some(t)) = (p, t) {
                    c_pairs_truth.push((p, t));
                }
                let mm = match (p, csv.get(&name)) {
                    (Some(p), Some(&(px_mm, hc_mm))) => {
                        c_pairs_mm.push((p * px_mm, hc_mm));
                        Some((p * px_mm, hc_mm))
                    }
                    _ => None,
                };
                let rel = match mm {
                    Some((p, r)) => Some((p - r).abs() / r),
                    None => p.zip(r).map(|(p, r)| (p - r).abs() / r),
                };
                gate.push((ok, rel, r.is_some()));
                TaskScore::Region {
                    circumference_px: p,
                    reference_circumference_px: r,
                    truth_circumference_px: t,
                    circumference_mm: mm.map(|m| m.0),
                    reference_hc_mm: mm.map(|m| m.1),
                }
            }
        };
        per_image.push(ImageScore {
            image: name,
            dice: d,
            iou: j,
            flag: pa.flag.map(|f| f.as_str()),
            confidence,
            uncertain_fraction,
            quality: doubt.quality(),
            doubt,
            evidence,
            roi: analyzer.roi(),
            task: task_score,
        });
    }
    if per_image.is_empty() {
        return Err(EvalError::NothingScored {
            images: images_dir,
            masks: masks_dir,
        });
    }
    let mut rel_sorted = th_rel.clone();
    let (coverage, precision_10pct, doubtful_precision_10pct, precision_5pct, precision_3deg) =
        match task {
            Task::Fascicle => {
                let (c, p, _) = gate_scores(&gate, 3.0);
                (c, None, None, None, p)
            }
            Task::Aponeurosis => {
                let (c, p, d) = gate_scores(&gate, 0.10);
                (c, p, d, None, None)
            }
            Task::Region => {
                let (c, p, d) = gate_scores(&gate, 0.10);
                (c, p, d, gate_scores(&gate, 0.05).1, None)
            }
        };
    Ok(EvalReport {
        images: per_image.len(),
        failed,
        skipped,
        task: task.as_str(),
        model_sha256: model.sha256().to_string(),
        roi: roi.mode.to_string(),
        roi_override: roi.overrides_model(),
        dice: mean(&dice),
        iou: mean(&iou),
        thickness_mae_px: mean(&th_abs),
        thickness_rel_err_median: (!rel_sorted.is_empty())
            .then(|| crate::postprocess::median(&mut rel_sorted)),
        thickness_within_10pct: (!th_rel.is_empty())
            .then(|| th_rel.iter().filter(|&&r| r <= 0.10).count() as f64 / th_rel.len() as f64),
        circumference_mae_px: mean(&abs_errors(&c_pairs_px)),
        circumference_mae_mm: mean(&abs_errors(&c_pairs_mm)),
        circumference_bias_by_size: if c_pairs_mm.is_empty() {
            bias_by_size(&c_pairs_px, "px")
        } else {
            bias_by_size(&c_pairs_mm, "mm")
        },
        truth_circumference_bias_by_size: bias_by_size(&c_pairs_truth, "px"),
        orientation_err_deg_median: med(&orient_err),
        fragment_recall: (recall_total > 0).then(|| recall_hits as f64 / recall_total as f64),
        pennation_err_deg_median: med(&penn_err),
        fascicle_length_rel_err_median: med(&len_rel),
        truth_pennation_err_deg_median: med(&t_penn_err),
        truth_fascicle_length_rel_err_median: med(&t_len_rel),
        coverage,
        precision_10pct,
        doubtful_precision_10pct,
        precision_5pct,
        precision_3deg,
        doubt_counts,
        per_image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_terciles_show_a_bias_that_grows_with_size() {
        // Predictions 2 % too large: each tercile's relative bias is +2 %, the absolute one grows.
        let pairs: Vec<(f64, f64)> = (1..=9).map(|r| (r as f64 * 1.02, r as f64)).collect();
        let b = bias_by_size(&pairs, "mm");
        assert_eq!(b.len(), 3);
        assert_eq!(b.iter().map(|t| t.images).sum::<usize>(), 9);
        for t in &b {
            assert!((t.signed_mean_rel - 0.02).abs() < 1e-12, "{t:?}");
        }
        assert!(b[0].signed_mean < b[1].signed_mean && b[1].signed_mean < b[2].signed_mean);
        assert_eq!((b[0].reference_min, b[2].reference_max), (1.0, 9.0));
        assert!(bias_by_size(&pairs[..2], "mm").is_empty());
    }

    #[test]
    fn gate_scores_count_coverage_and_precision_on_both_sides() {
        let items = [
            (true, Some(0.02), true),
            (true, Some(0.2), true),
            (false, Some(0.5), true),
            (false, None, true),
            (true, Some(0.01), false),
        ];
        let (c, p, d) = gate_scores(&items, 0.1);
        assert_eq!(c, Some(0.5));
        assert_eq!(p, Some(0.5));
        assert_eq!(d, Some(0.0));
        assert_eq!(gate_scores(&[], 0.1), (None, None, None));
    }

    #[test]
    fn dice_and_iou() {
        assert_eq!(dice_iou(&[0, 0], &[0, 0]), (1.0, 1.0));
        assert_eq!(dice_iou(&[255, 0], &[0, 255]), (0.0, 0.0));
        let (d, j) = dice_iou(&[255, 255, 0, 0], &[255, 0, 0, 0]);
        assert!((d - 2.0 / 3.0).abs() < 1e-12 && (j - 0.5).abs() < 1e-12);
    }
}
