//! `pocusd infer` and `pocusd eval`: a model on still images, one at a time (each image gets its
//! own region of interest by the model's policy unless `--roi` says otherwise).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use pocusd::analyzer::Analyzer;
use pocusd::config::Config;
use pocusd::eval::{self, EvalOptions};
use pocusd::files::write_atomic;
use pocusd::imageio;
use pocusd::model::Task;
use pocusd::preprocess::roi::Tracking;

use super::{clahe_threads, load_model, still_postprocess};

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Images (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// The ONNX model. Default: [model] path, then the shipped default model.
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,
    /// Where NAME.mask.png, NAME.overlay.png and NAME.json go.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Also print a JSON array, one object per image.
    #[arg(long)]
    json: bool,
    /// An extra model on the same images (repeatable; replaces [model] extra), as for `pocusd
    /// run`: e.g. models/fascicle.onnx beside the aponeurosis model gives fascicle length and
    /// pennation angle.
    #[arg(long, value_name = "FILE.onnx")]
    extra_model: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The ONNX model. Default: [model] path, then the shipped default model.
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,
    /// Folder with images/ and masks/ (same file names).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Measurement to score; default: the model's task.
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// CSV with filename,pixel_size_mm,head_circumference_mm for circumference in mm.
    #[arg(long, value_name = "FILE")]
    mm_csv: Option<PathBuf>,
    /// Score only the validation blocks `pocusd train --val-fraction F` holds out of this folder
    /// (same usable pairs, same contiguous blocks), i.e. images the model never trained on.
    #[arg(long, value_name = "F")]
    val_fraction: Option<f64>,
    /// Number of validation blocks (with --val-fraction). Default: [train] val_blocks.
    #[arg(long, value_name = "N")]
    val_blocks: Option<usize>,
    /// Fascicle task: the aponeurosis model whose aponeuroses the fascicles are extended to;
    /// pennation angle and fascicle length are then scored too (default: the shipped one, when
    /// it is there).
    #[arg(long, value_name = "FILE.onnx")]
    apo_model: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn headline(task: Task, m: &serde_json::Value) -> Option<String> {
    let (mm, px) = match task {
        Task::Aponeurosis => ("thickness_mm", "thickness_px"),
        Task::Region => ("circumference_mm", "circumference_px"),
        Task::Fascicle => ("fascicle_length_mm", "fascicle_length_px"),
    };
    m[mm]
        .as_f64()
        .map(|x| format!("{x:.2} mm"))
        .or(m[px].as_f64().map(|x| format!("{x:.1} px")))
}

pub fn cmd_infer(cfg: &Config, args: &InferArgs) -> anyhow::Result<()> {
    let mut model = load_model(cfg, args.model.as_deref())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let roi = cfg.source.roi.resolve(model.spec().roi);
    let mut analyzer = Analyzer::new(
        &model,
        roi.mode,
        Tracking::PerImage,
        clahe_threads(cfg),
        still_postprocess(cfg),
        cfg.overlay,
    );
    let extra_paths = if args.extra_model.is_empty() {
        &cfg.model.extra
    } else {
        &args.extra_model
    };
    for m in pocusd::daemon::load_extra_models(extra_paths, cfg, &model)? {
        analyzer.set_extra(None, m)?;
    }
    let sha = model.sha256().to_string();
    let task = model.spec().task;
    if task == Task::Fascicle {
        eprintln!(
            "pocusd: note: a fascicle model alone finds no aponeuroses to extend its fragments to \
             (orientation only); for fascicle length and pennation angle run the aponeurosis model \
             with this one as --extra-model"
        );
    }
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for path in &args.images {
        let one = (|| -> anyhow::Result<serde_json::Value> {
            let img = imageio::read_gray(path)?;
            let analysis = analyzer.analyse(&mut model, img.view()?)?.clone();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            imageio::write_gray(
                &args.out.join(format!("{stem}.mask.png")),
                &analyzer.mask_image(img.width(), img.height()),
            )?;
            let roi = analyzer.roi();
            let ov = analyzer.render_overlay(img.view()?, &sha);
            imageio::write_rgb(
                &args.out.join(format!("{stem}.overlay.png")),
                ov.width,
                ov.height,
                &ov.data,
            )?;
            let mut v = serde_json::json!({
                "image": path,
                "width": img.width(),
                "height": img.height(),
                "model_sha256": sha,
                "task": task.as_str(),
                "measurements": analysis.measurements,
                "confidence": analysis.confidence,
                "uncertain_fraction": analysis.uncertain_fraction,
                "flag": analysis.flag.map(|f| f.as_str()),
                "quality": analysis.doubt.quality(),
                "doubt": analysis.doubt,
                "evidence": analysis.evidence,
                "roi": roi,
                "calibration": pocusd::publish::measurement::calibration_json(
                    &analysis.calibration,
                    &cfg.postprocess.calibration,
                ),
            });
            // An extra model's own verdict, keyed as in the daemon's measurement (`fascicle_quality`).
            for (t, d) in &analysis.extra_doubt {
                v[format!("{}_quality", t.as_str())] = d.quality().into();
                v[format!("{}_doubt", t.as_str())] = serde_json::to_value(d)?;
            }
            write_atomic(
                &args.out.join(format!("{stem}.json")),
                serde_json::to_string_pretty(&v)?.as_bytes(),
            )?;
            Ok(v)
        })();
        match one {
            Ok(v) => results.push(v),
            Err(e) => failures.push(format!("{}: {e:#}", path.display())),
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(results.clone()));
    } else {
        let name = match task {
            Task::Aponeurosis => "thickness",
            Task::Region => "circumference",
            Task::Fascicle => "fascicle length",
        };
        println!(
            "{:<40} {:>14} {:>10} {:>16} {:>9}  doubt",
            "image", name, "confidence", "flag", "quality"
        );
        for v in &results {
            let doubt: Vec<&str> = v["doubt"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!(
                "{:<40} {:>14} {:>10.3} {:>16} {:>9}  {}",
                v["image"].as_str().unwrap_or("?"),
                headline(task, &v["measurements"]).unwrap_or_else(|| "-".into()),
                v["confidence"].as_f64().unwrap_or(0.0),
                v["flag"].as_str().unwrap_or(""),
                v["quality"].as_str().unwrap_or(""),
                doubt.join(",")
            );
        }
    }
    for f in &failures {
        eprintln!("pocusd: skipped {f}");
    }
    if !failures.is_empty() {
        anyhow::bail!("{} of {} images failed", failures.len(), args.images.len());
    }
    Ok(())
}

pub fn cmd_eval(cfg: &Config, args: &EvalArgs) -> anyhow::Result<()> {
    let mut model = load_model(cfg, args.model.as_deref())?;
    let opts = EvalOptions {
        data: args.data.clone(),
        task: args.task,
        mm_csv: args.mm_csv.clone(),
        validation: args.val_fraction.map(|f| {
            (
                f,
                args.val_blocks.unwrap_or(cfg.raw.train.val_blocks as usize),
            )
        }),
        roi: cfg.source.roi,
        clahe_threads: clahe_threads(cfg),
        post: cfg.postprocess,
        apo_model: args.apo_model.clone().or_else(|| {
            // Fascicle models are scored with the shipped aponeurosis model when present.
            (args.task.unwrap_or(model.spec().task) == Task::Fascicle)
                .then(|| {
                    pocusd::analyzer::default_model_candidates("aponeurosis.onnx")
                        .into_iter()
                        .find(|p| p.is_file())
                })
                .flatten()
        }),
    };
    let report = eval::evaluate(&mut model, &opts, &mut |line| eprintln!("pocusd: {line}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    println!(
        "images {}  failed {}  skipped {}  task {}  roi {}{}",
        report.images,
        report.failed,
        report.skipped,
        report.task,
        report.roi,
        if report.roi_override {
            " (explicit, not the model's)"
        } else {
            ""
        }
    );
    for (k, v) in [
        ("dice", report.dice),
        ("iou", report.iou),
        ("thickness_mae_px", report.thickness_mae_px),
        ("thickness_rel_err_median", report.thickness_rel_err_median),
        ("thickness_within_10pct", report.thickness_within_10pct),
        ("circumference_mae_px", report.circumference_mae_px),
        ("circumference_mae_mm", report.circumference_mae_mm),
        (
            "orientation_err_deg_median",
            report.orientation_err_deg_median,
        ),
        ("fragment_recall", report.fragment_recall),
        ("pennation_err_deg_median", report.pennation_err_deg_median),
        (
            "fascicle_length_rel_err_median",
            report.fascicle_length_rel_err_median,
        ),
        (
            "truth_pennation_err_deg_median",
            report.truth_pennation_err_deg_median,
        ),
        (
            "truth_fascicle_length_rel_err_median",
            report.truth_fascicle_length_rel_err_median,
        ),
        ("coverage", report.coverage),
        ("precision_10pct", report.precision_10pct),
        ("doubtful_precision_10pct", report.doubtful_precision_10pct),
        ("precision_5pct", report.precision_5pct),
        ("precision_3deg", report.precision_3deg),
    ] {
        if v.is_some() || !k.contains("precision") {
            println!("{k:<28} {}", f(v));
        }
    }
    if !report.doubt_counts.is_empty() {
        let counts: Vec<String> = report
            .doubt_counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("{:<28} {}", "doubt_counts", counts.join(", "));
    }
    let biases = [
        ("", &report.circumference_bias_by_size),
        (
            " against the phantom's truth",
            &report.truth_circumference_bias_by_size,
        ),
    ];
    for (i, b, against) in biases
        .iter()
        .flat_map(|(w, v)| v.iter().enumerate().map(move |(i, b)| (i, b, *w)))
    {
        println!(
            "circumference bias{against}, size {}/3  {:+.2} {} ({:+.2} %) over {} images, reference {:.1} to {:.1} {}",
            i + 1,
            b.signed_mean,
            b.unit,
            100.0 * b.signed_mean_rel,
            b.images,
            b.reference_min,
            b.reference_max,
            b.unit
        );
    }
    Ok(())
}
