//! `pocusd train`, `pocusd export` and `pocusd bench train`: flags layered over the `[train]`
//! config section, then the library's trainer (`pocusd::train`). Only in builds with the `train`
//! feature; the binary names burn nowhere else.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use pocusd::config;
use pocusd::model::Task;
use pocusd::train::settings::TrainSettings;
use pocusd::train::trainer::{self, Checkpoint, ConsoleProgress};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder with images/ and masks/ (repeat for several). Config: train.data.
    #[arg(long = "data", value_name = "DIR")]
    data: Vec<PathBuf>,
    /// Run folder to create (config, checkpoints, metrics, previews, plots). Config: train.out.
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,
    /// What the masks label. Config: train.task.
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Separate validation folder (instead of --val-fraction). Config: train.val.
    #[arg(long, value_name = "DIR", conflicts_with = "val_fraction")]
    val: Option<PathBuf>,
    /// Fraction of the sorted names held out in contiguous blocks. Config: train.val_fraction.
    #[arg(long, value_name = "F")]
    val_fraction: Option<f64>,
    /// Config: train.epochs.
    #[arg(long, value_name = "N")]
    epochs: Option<u64>,
    /// Images per step. Config: train.batch.
    #[arg(long, value_name = "N")]
    batch: Option<u64>,
    /// Model input "WxH". Config: train.input.
    #[arg(long, value_name = "WxH")]
    input: Option<String>,
    /// Channels of the first level. Config: train.width.
    #[arg(long, value_name = "N")]
    width: Option<u64>,
    /// U-Net levels. Config: train.depth.
    #[arg(long, value_name = "N")]
    depth: Option<u64>,
    /// sigmoid | softmax (two classes). Config: train.head.
    #[arg(long, value_name = "HEAD")]
    head: Option<String>,
    /// dice-bce | tversky | reconstruct (self-supervised pretraining on images without masks:
    /// the network learns to restore corrupted images; start a labelled run from it with
    /// --init RUN). Config: train.loss.
    #[arg(long, value_name = "LOSS")]
    loss: Option<String>,
    /// Adam learning rate (cosine decay over the run). Config: train.lr.
    #[arg(long, value_name = "F")]
    lr: Option<f64>,
    /// Config: train.seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// flex | ndarray. Config: train.backend.
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Start from a run folder or a pocusd-exported ONNX file. Config: train.init.
    #[arg(long, value_name = "RUN_DIR|MODEL.onnx")]
    init: Option<PathBuf>,
    /// auto | batch | frozen: batch norms normalise by each batch, or by their running statistics
    /// left unchanged (exact fine-tuning); auto: frozen with --init. Config: train.bn_stats.
    #[arg(long, value_name = "MODE")]
    bn_stats: Option<String>,
    /// Continue a run from its last checkpoint (its own settings; --epochs may extend it).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "init"])]
    resume: Option<PathBuf>,
    /// Write N augmented pairs into RUN_DIR/previews/augment/ first. Config: train.preview_augment.
    #[arg(long, value_name = "N")]
    preview_augment: Option<u64>,
    /// Threads for the tensor backend (0: all cores). Config: train.threads.
    #[arg(long, value_name = "N")]
    threads: Option<u64>,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run folder.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// best-dice | best-loss | last | swa (the weight average of `[train] swa_epochs`)
    #[arg(long, default_value = "best-dice")]
    checkpoint: String,
    /// Output ONNX file.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Model input "WxH".
    #[arg(long, default_value = "128x128")]
    input: String,
    #[arg(long, default_value_t = 8)]
    batch: u64,
    /// flex | ndarray
    #[arg(long, default_value = "flex")]
    backend: String,
    #[arg(long, default_value_t = 16)]
    width: u64,
    #[arg(long, default_value_t = 4)]
    depth: u64,
    /// Timed steps (after 2 untimed).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Leave augmentation out of the step (it is in by default, as in the Keras comparison).
    #[arg(long)]
    no_augment: bool,
    #[arg(long)]
    json: bool,
}

fn settings(
    cfg: &config::Config,
    roi: Option<&str>,
    a: &TrainArgs,
) -> anyhow::Result<TrainSettings> {
    let mut t = cfg.raw.train.clone();
    if !a.data.is_empty() {
        t.data = a.data.iter().map(|p| p.display().to_string()).collect();
    }
    if let Some(v) = &a.out {
        t.out = v.display().to_string();
    }
    if let Some(v) = &a.resume {
        t.out = v.display().to_string();
    }
    if let Some(v) = a.task {
        t.task = v.as_str().into();
    }
    if let Some(v) = &a.val {
        t.val = v.display().to_string();
    }
    if let Some(v) = a.val_fraction {
        t.val_fraction = v;
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { t.$f = v; } )* };
    }
    set!(
        epochs,
        batch,
        input,
        width,
        depth,
        loss,
        lr,
        seed,
        backend,
        bn_stats,
        preview_augment,
        threads
    );
    if let Some(v) = &a.init {
        t.init = v.display().to_string();
    }
    if let Some(r) = roi {
        t.roi = match r {
            "auto" => "auto".into(),
            "none" | "full" => "none".into(),
            "model" => "model".into(),
            other => anyhow::bail!("--roi {other:?}: training takes auto, none (full) or model"),
        };
    }
    Ok(TrainSettings::from_section(&t, cfg.preprocess.clahe)?)
}

pub fn cmd_train(cfg: &config::Config, roi: Option<&str>, a: &TrainArgs) -> anyhow::Result<()> {
    let s = settings(cfg, roi, a)?;
    let mut progress = ConsoleProgress::new();
    let outcome = trainer::train(
        &s,
        a.resume.is_some(),
        a.epochs.map(|e| e as usize),
        &mut progress,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        // The exported model, or for a pretraining run (nothing exported) the run to --init from.
        println!(
            "{}",
            outcome.model.as_ref().unwrap_or(&outcome.run_dir).display()
        );
    }
    Ok(())
}

pub fn cmd_export(a: &ExportArgs) -> anyhow::Result<()> {
    let which = Checkpoint::parse(&a.checkpoint).ok_or_else(|| {
        anyhow::anyhow!(
            "--checkpoint {:?}: expected best-dice, best-loss, last or swa",
            a.checkpoint
        )
    })?;
    let spec = trainer::export_run(&a.run, which, &a.out)
        .with_context(|| format!("exporting {}", a.run.display()))?;
    eprintln!(
        "exported {} ({}, run {}, validation Dice {})",
        a.out.display(),
        a.checkpoint,
        spec.run_id.as_deref().unwrap_or("-"),
        spec.val_dice
            .map(|d| format!("{d:.4}"))
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}

pub fn cmd_bench_train(cfg: &config::Config, a: &BenchTrainArgs) -> anyhow::Result<()> {
    let mut t = cfg.raw.train.clone();
    t.input = a.input.clone();
    t.batch = a.batch;
    t.backend = a.backend.clone();
    t.width = a.width;
    t.depth = a.depth;
    let s = TrainSettings::from_section(&t, cfg.preprocess.clahe)?;
    let r = pocusd::train::bench::step_time(&s, a.steps, !a.no_augment);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{:<10} {:>6} {:>10} {:>20} {:>14} {:>12}",
            "backend", "batch", "input", "encoder", "step_ms_median", "images_per_s"
        );
        println!(
            "{:<10} {:>6} {:>10} {:>20} {:>14.1} {:>12.2}",
            r.backend, r.batch, a.input, r.encoder, r.step_ms_median, r.images_per_s
        );
    }
    Ok(())
}
