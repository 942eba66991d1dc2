//! `pocusd bench ...`: the argument types and the printing of the library's benchmark reports
//! (`pocusd::bench`, and `pocusd::train::bench` for training).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use pocusd::bench;
use pocusd::config::Config;
use pocusd::imageio;
use pocusd::infer::{self, LoadedModel};

use super::image::{clahe_params, ClaheFlags};
use super::{clahe_threads, load_model};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time CLAHE on one image: median and 99th percentile over --iters runs.
    Clahe(BenchClaheArgs),
    /// Time one inference of a model (tract, the reused state).
    Infer(BenchInferArgs),
    /// Time postprocessing + overlay on 640x480 phantom frames with a model's outputs.
    Postprocess(BenchPostArgs),
    /// Read frames from a source (--source SPEC) as fast as it delivers them.
    Source(BenchSourceArgs),
    /// Time one look of the ruler calibration (image region and ruler) on a phantom screen.
    Calibrate(BenchCalibrateArgs),
    /// The whole daemon (capture, processing, D-Bus, log, viewer with one MJPEG client) on a paced source.
    Pipeline(BenchPipelineArgs),
    /// The whole daemon on the unpaced source for a long run: RSS, descriptors and threads after a
    /// 1,000-frame warm-up and at the end.
    Soak(BenchSoakArgs),
    /// Time one training step (forward, backward, Adam) with augmentation.
    #[cfg(feature = "train")]
    Train(super::train::BenchTrainArgs),
}

#[derive(Args, Debug)]
pub struct BenchPipelineArgs {
    /// Source frame rate; 0: unpaced (as fast as the pipeline takes frames). The source is the
    /// global --source SPEC (default: the demo phantom at 640x480) with its fps replaced.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Processed frames to measure (after a first second of warm-up).
    #[arg(long, default_value_t = 600)]
    frames: u64,
    /// Model (ONNX); default as `pocusd run`.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// An extra model on the same frames (repeatable), as `pocusd run --extra-model`.
    #[arg(long, value_name = "FILE")]
    extra_model: Vec<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `WxH`, each 64 to 8192.
fn parse_frame_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("'{s}': expected WxH, e.g. 1920x1080"))?;
    let n = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|n| (64..=8192).contains(n))
            .ok_or_else(|| format!("'{s}': width and height must be whole numbers from 64 to 8192"))
    };
    Ok((n(w)?, n(h)?))
}

#[derive(Args, Debug)]
pub struct BenchCalibrateArgs {
    /// Frame size WxH.
    #[arg(long, default_value = "1920x1080", value_parser = parse_frame_size)]
    size: (usize, usize),
    /// The phantom's screen layout: generic, ge, telemed, philips; all: each in turn.
    #[arg(long, default_value = "all")]
    layout: String,
    /// Looks to time.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Print one JSON object per layout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BenchSoakArgs {
    /// Processed frames to run after the warm-up (200000 is about an hour here).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Model (ONNX); default as `pocusd run`.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BenchSourceArgs {
    /// Frames to read.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BenchInferArgs {
    /// The ONNX model.
    #[arg(long, value_name = "FILE.onnx")]
    model: PathBuf,
    /// Threads for tract's matrix products.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Timed iterations (after a warm-up).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BenchPostArgs {
    /// The ONNX model whose outputs are postprocessed.
    #[arg(long, value_name = "FILE.onnx")]
    model: PathBuf,
    /// Timed iterations.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BenchClaheArgs {
    /// Image to equalise.
    #[arg(long, value_name = "IN.png")]
    image: PathBuf,
    /// Timed iterations (after a short warm-up).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    #[command(flatten)]
    params: ClaheFlags,
    /// Threads per image.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Runs one benchmark; `source` is the global `--source` when given.
pub fn cmd_bench(
    cfg: &Config,
    config_file: Option<PathBuf>,
    source: Option<&str>,
    cmd: &BenchCommand,
) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Clahe(a) => {
            let params = clahe_params(cfg, &a.params)?;
            let src = imageio::read_gray(&a.image)?;
            let r = bench::clahe(src.view()?, params, a.threads, a.iters);
            if a.json {
                return print_json(&r);
            }
            println!(
                "{:<10} {:>6} {:>8} {:>10} {:>10}",
                "size", "iters", "threads", "median_ms", "p99_ms"
            );
            println!(
                "{:<10} {:>6} {:>8} {:>10.3} {:>10.3}",
                format!("{}x{}", r.width, r.height),
                r.iters,
                r.threads,
                r.median_ms,
                r.p99_ms
            );
        }
        BenchCommand::Infer(a) => {
            infer::set_threads(a.threads as usize);
            let mut model = LoadedModel::load(&a.model, &cfg.model.overrides)?;
            let r = bench::infer(&mut model, a.threads, a.iters)?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{:<20} {:>8} {:>10} {:>10}",
                "input", "threads", "median_ms", "p99_ms"
            );
            println!(
                "{:<20} {:>8} {:>10.3} {:>10.3}",
                format!("{:?}", r.input),
                r.threads,
                r.median_ms,
                r.p99_ms
            );
        }
        BenchCommand::Postprocess(a) => {
            let mut model = load_model(cfg, Some(&a.model))?;
            let r = bench::postprocess(
                &mut model,
                clahe_threads(cfg),
                cfg.postprocess,
                cfg.overlay,
                a.iters,
            )?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{:<10} {:>6} {:>10} {:>10}",
                "frame", "iters", "median_ms", "p99_ms"
            );
            println!(
                "{:<10} {:>6} {:>10.3} {:>10.3}",
                "640x480", r.iters, r.median_ms, r.p99_ms
            );
        }
        BenchCommand::Calibrate(a) => {
            use pocusd::synth::Layout;
            let layouts: Vec<Layout> = if a.layout == "all" {
                Layout::ALL.to_vec()
            } else {
                vec![Layout::parse(&a.layout).ok_or_else(|| {
                    anyhow::anyhow!("--layout {}: allowed all, {}", a.layout, Layout::allowed())
                })?]
            };
            if !a.json {
                println!(
                    "{:<10} {:<8} {:>6} {:>10} {:>10} {:>10}",
                    "frame", "layout", "iters", "median_ms", "p99_ms", "mm_per_px"
                );
            }
            for l in layouts {
                let (w, h) = a.size;
                let r = bench::calibrate(w, h, l, a.iters)?;
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                    continue;
                }
                println!(
                    "{:<10} {:<8} {:>6} {:>10.3} {:>10.3} {:>10}",
                    format!("{w}x{h}"),
                    r.layout,
                    r.iters,
                    r.median_ms,
                    r.p99_ms,
                    r.mm_per_px
                        .map_or("refused".to_string(), |m| format!("{m:.5}"))
                );
            }
        }
        BenchCommand::Source(a) => {
            let mut src = super::data::finite_source(cfg);
            let r = bench::source(&mut src, &cfg.source.spec.raw, a.frames)?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{:<40} {:>8} {:>10} {:>16}",
                "source", "frames", "fps", "decode_ms_median"
            );
            println!(
                "{:<40} {:>8} {:>10.1} {:>16.3}",
                r.source, r.frames, r.fps, r.decode_ms_median
            );
        }
        BenchCommand::Pipeline(a) => {
            let r = bench::pipeline(&bench::PipelineOptions {
                config_file,
                source: source.unwrap_or("demo").to_string(),
                fps: a.fps,
                frames: a.frames,
                model: a.model.clone(),
                extra_models: a.extra_model.clone(),
            })?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{} at {} fps: {:.1} fps processed, {} dropped ({:.2} %), latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, CPU {:.1} ms per frame, RSS {:.0} MB (after 1 s: {:.0} MB), MJPEG client got {} frames",
                r.source, r.source_fps, r.fps, r.dropped, r.dropped_fraction * 100.0,
                r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max, r.cpu_ms_per_frame,
                r.rss_mb, r.rss_mb_after_1s, r.mjpeg_client_frames
            );
            for n in bench::STAGES {
                if let Some(s) = r.stages_ms.get(n) {
                    println!("  {n:<12} p50 {:>7.2} ms  p99 {:>7.2} ms", s.p50, s.p99);
                }
            }
        }
        BenchCommand::Soak(a) => {
            let r = bench::soak(&bench::PipelineOptions {
                config_file,
                source: source.unwrap_or("demo").to_string(),
                fps: 0.0,
                frames: a.frames,
                model: a.model.clone(),
                extra_models: Vec::new(),
            })?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{} frames at {:.1} fps ({} dropped): RSS {:.1} -> {:.1} MB, descriptors {} -> {}, threads {} -> {}",
                r.frames, r.fps, r.dropped, r.rss_mb.start, r.rss_mb.end, r.fds.start, r.fds.end,
                r.threads.start, r.threads.end
            );
        }
        #[cfg(feature = "train")]
        BenchCommand::Train(a) => super::train::cmd_bench_train(cfg, a)?,
    }
    Ok(())
}
