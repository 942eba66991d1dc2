//! The `pocusd` command line: a thin shell over the library. Parses arguments (clap), loads the
//! layered configuration, runs one subcommand, and turns errors into one readable line and an exit
//! status (78 for configuration errors, as EX_CONFIG; 1 otherwise).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use pocusd::analyzer::Analyzer;
use pocusd::config::{self, ConfigError};
use pocusd::frame::GrayImage;
use pocusd::frame::Rect;
use pocusd::infer::{self, onnx_build, LoadedModel};
use pocusd::postprocess::{Calibration, Flag, PostprocessConfig, Postprocessor, Smoothing};
use pocusd::preprocess::{Clahe, ClaheParams};
use pocusd::synth::{self, PhantomConfig, Task};
use pocusd::{imageio, version_string};

#[cfg(feature = "train")]
mod train_cli;

/// Exit status for configuration errors (sysexits.h EX_CONFIG): systemd units do not restart on it.
const EX_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "pocusd",
    version = version_string(),
    about = "Point-of-care ultrasound: capture, CLAHE, segmentation and measurements",
    long_about = "pocusd enhances ultrasound frames with CLAHE (bit-identical to OpenCV), and generates \
                  a synthetic B-mode phantom with exact ground truth for testing.\n\n\
                  Configuration layers: embedded defaults, /etc/pocusd/pocusd.toml, --config FILE, \
                  then POCUSD__SECTION__KEY environment variables."
)]
struct Cli {
    /// Configuration file layered over the defaults and /etc/pocusd/pocusd.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Frame source spec (overrides [source] spec): demo[?..], images:DIR[?..], ffmpeg:URL[?..], v4l2:/dev/videoN[?..].
    #[arg(long, global = true, value_name = "SPEC")]
    source: Option<String>,

    /// Region of interest (overrides [source] roi): full, auto, or x,y,w,h.
    #[arg(long, global = true, value_name = "full|auto|x,y,w,h")]
    roi: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: capture, process and publish live (D-Bus org.pocusd.Daemon1, measurement log).
    Run(RunArgs),
    /// Show a running daemon's live state over D-Bus (like systemctl status).
    Status(StatusArgs),
    /// Equalise an image with CLAHE (OpenCV createCLAHE semantics).
    Clahe(ClaheArgs),
    /// Train a U-Net on labelled images (burn, CPU); the run folder can be resumed and exported.
    #[cfg(feature = "train")]
    Train(train_cli::TrainArgs),
    /// Export a training run's checkpoint to ONNX with pocusd metadata.
    #[cfg(feature = "train")]
    Export(train_cli::ExportArgs),
    /// Write a synthetic phantom dataset: images/, masks/ and truth.csv.
    Synth(SynthArgs),
    /// Segment images with a model: mask, overlay and measurements per image.
    Infer(InferArgs),
    /// Score a model on a labelled folder (images/ + masks/): Dice, IoU, thickness or circumference errors.
    Eval(EvalArgs),
    /// Write a U-Net of the default architecture with random weights (for benchmarks and tests).
    Unet(UnetArgs),
    /// List V4L2 capture devices with their formats, sizes and frame rates.
    Sources(SourcesArgs),
    /// Save frames from a source as PNG (after the region-of-interest crop), to build a dataset.
    Capture(CaptureArgs),
    /// Time a stage and print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Args, Debug)]
struct ClaheArgs {
    /// Input image (PNG or JPEG; colour is converted to gray).
    input: PathBuf,
    /// Output image (PNG unless the extension says JPEG).
    output: PathBuf,
    #[command(flatten)]
    params: ClaheFlags,
}

#[derive(Args, Debug)]
struct ClaheFlags {
    /// Contrast limit (OpenCV clipLimit); <= 0 disables clipping. Default: [preprocess] clahe_clip_limit.
    #[arg(long, value_name = "F", value_parser = parse_clip_limit, allow_negative_numbers = true)]
    clip_limit: Option<f64>,
    /// Tile grid: N for NxN, or CxR (C columns by R rows). Default: [preprocess] clahe_tiles.
    #[arg(long, value_name = "N|CxR", value_parser = parse_tiles_arg)]
    tiles: Option<(usize, usize)>,
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Output folder (created); gets images/, masks/ and truth.csv.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of image/mask pairs.
    #[arg(long, value_name = "N")]
    count: u32,
    /// What the phantom shows.
    #[arg(long, value_enum, default_value = "aponeurosis")]
    task: Task,
    /// Seed; the same seed gives the same dataset.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Frame width in pixels.
    #[arg(long, default_value_t = 640, value_parser = clap::value_parser!(u32).range(16..=8192))]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(16..=8192))]
    height: u32,
    /// Draw the scanner's screen furniture around the image.
    #[arg(long)]
    furniture: bool,
    /// Print one JSON object instead of a summary line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time CLAHE on one image: median and 99th percentile over --iters runs.
    Clahe(BenchClaheArgs),
    /// Time one inference of a model (tract, the reused state).
    Infer(BenchInferArgs),
    /// Time postprocessing + overlay on 640x480 phantom frames with a model's outputs.
    Postprocess(BenchPostArgs),
    /// Read frames from a source as fast as it delivers them.
    Source(BenchSourceArgs),
    /// The whole daemon (capture, processing, D-Bus, log, viewer with one MJPEG client) on a paced source.
    Pipeline(BenchPipelineArgs),
    /// Time one training step (forward, backward, Adam) with augmentation.
    #[cfg(feature = "train")]
    Train(train_cli::BenchTrainArgs),
}

#[derive(Args, Debug)]
struct BenchPipelineArgs {
    /// Source spec; its fps is set by --fps (default: the demo phantom at 640x480).
    #[arg(
        long = "source",
        id = "bench_source",
        value_name = "SPEC",
        default_value = "demo"
    )]
    bench_source: String,
    /// Source frame rate; 0: unpaced (as fast as the pipeline takes frames).
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Processed frames to measure (after a first second of warm-up).
    #[arg(long, default_value_t = 600)]
    frames: u64,
    /// Model (ONNX); default as `pocusd run`.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Model (ONNX); default: [model] path, else the shipped models/aponeurosis.onnx.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Stop cleanly after N processed frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Serve on the session bus instead of the system bus (as dbus.bus = "session").
    #[arg(long)]
    session_bus: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Ask the daemon on the session bus (one started with --session-bus).
    #[arg(long)]
    session_bus: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SourcesArgs {
    /// Print one JSON object instead of a listing.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CaptureArgs {
    /// Stop after saving this many frames (default: until the source ends or Ctrl-C).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Save every K-th frame.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    every: u32,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct BenchSourceArgs {
    /// Frames to read.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InferArgs {
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
}

#[derive(Args, Debug)]
struct EvalArgs {
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct UnetArgs {
    /// Output ONNX file.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// Input size WxH.
    #[arg(long, default_value = "128x128", value_parser = parse_size_arg)]
    input: (usize, usize),
    /// Channels at the first level (doubled per level).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    width: u32,
    /// Levels (poolings).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=6))]
    depth: u32,
    /// Upsampling: ConvTranspose 2x2 (transpose) or nearest Resize + 3x3 conv (resize).
    #[arg(long, default_value = "transpose", value_parser = ["transpose", "resize"])]
    upsample: String,
    /// Input channels (1, or 3 with the gray frame replicated).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3))]
    channels: u32,
    /// Task written into the metadata.
    #[arg(long, value_enum, default_value = "aponeurosis")]
    task: Task,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct BenchInferArgs {
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
struct BenchPostArgs {
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
struct BenchClaheArgs {
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

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the layered configuration and print the effective values as TOML.
    Check,
}

fn parse_clip_limit(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!(
            "'{s}' is not a finite number (use 0 or a negative value to disable clipping)"
        ));
    }
    Ok(v)
}

fn parse_size_arg(s: &str) -> Result<(usize, usize), String> {
    let (w, h) =
        pocusd::model::parse_size(s).ok_or_else(|| format!("'{s}' is not WxH (e.g. 128x128)"))?;
    if w % 16 != 0 || h % 16 != 0 || w > 2048 || h > 2048 {
        return Err(format!(
            "'{s}': width and height must be multiples of 16 up to 2048"
        ));
    }
    Ok((w, h))
}

fn parse_tiles_arg(s: &str) -> Result<(usize, usize), String> {
    let (c, r) =
        config::parse_tiles(s).ok_or_else(|| format!("'{s}' is not N or CxR (e.g. 8 or 8x6)"))?;
    ClaheParams::new(0.0, c, r).map_err(|e| e.to_string())?;
    Ok((c, r))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pocusd: error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) => {
            return pocusd::daemon::run(pocusd::daemon::RunOptions {
                config_file: cli.config.clone(),
                source: cli.source.clone(),
                roi: cli.roi.clone(),
                model: args.model.clone(),
                frames: args.frames,
                session_bus: args.session_bus,
                ..Default::default()
            })
        }
        Command::Status(args) => {
            // The bus from the configuration when it loads; the flag wins.
            let session = args.session_bus
                || config::load(cli.config.as_deref())
                    .is_ok_and(|c| c.dbus.bus == config::Bus::Session);
            return pocusd::daemon::status::print_status(session, args.json);
        }
        _ => {}
    }
    let mut cfg = config::load(cli.config.as_deref())?;
    if let Some(spec) = &cli.source {
        cfg.source.spec = pocusd::source::SourceSpec::parse(spec)?;
    }
    #[cfg(feature = "train")]
    let roi_is_for_training = matches!(cli.command, Command::Train(_));
    #[cfg(not(feature = "train"))]
    let roi_is_for_training = false;
    if let Some(roi) = cli.roi.as_deref().filter(|_| !roi_is_for_training) {
        cfg.source.roi = pocusd::preprocess::roi::RoiMode::parse(roi)
            .ok_or_else(|| anyhow::anyhow!("--roi {roi:?}: expected full, auto or x,y,w,h"))?;
    }
    match cli.command {
        Command::Clahe(args) => cmd_clahe(&cfg, &args),
        Command::Synth(args) => cmd_synth(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => train_cli::cmd_train(&cfg, cli.roi.as_deref(), &args),
        #[cfg(feature = "train")]
        Command::Export(args) => train_cli::cmd_export(&args),
        #[cfg(feature = "train")]
        Command::Bench(BenchCommand::Train(args)) => train_cli::cmd_bench_train(&cfg, &args),
        Command::Bench(BenchCommand::Clahe(args)) => cmd_bench_clahe(&cfg, &args),
        Command::Bench(BenchCommand::Infer(args)) => cmd_bench_infer(&cfg, &args),
        Command::Bench(BenchCommand::Postprocess(args)) => cmd_bench_post(&cfg, &args),
        Command::Infer(args) => cmd_infer(&cfg, &args),
        Command::Eval(args) => cmd_eval(&cfg, &args),
        Command::Unet(args) => cmd_unet(&args),
        Command::Capture(args) => cmd_capture(&cfg, &args),
        Command::Sources(args) => cmd_sources(&args),
        Command::Bench(BenchCommand::Source(args)) => cmd_bench_source(&cfg, &args),
        Command::Bench(BenchCommand::Pipeline(args)) => cmd_bench_pipeline(&cli.config, &args),
        Command::Run(_) | Command::Status(_) => unreachable!("dispatched above"),
        Command::Config(ConfigCommand::Check) => {
            println!(
                "# effective configuration; layers: {}",
                cfg.layers.join(" < ")
            );
            print!("{}", config::to_toml(&cfg.raw));
            Ok(())
        }
    }
}

/// CLAHE parameters from flags, falling back to the configuration.
fn clahe_params(cfg: &config::Config, flags: &ClaheFlags) -> anyhow::Result<ClaheParams> {
    let base = cfg.preprocess.clahe.unwrap_or_default();
    let clip = flags.clip_limit.unwrap_or(base.clip_limit);
    let (tx, ty) = flags.tiles.unwrap_or((base.tiles_x, base.tiles_y));
    Ok(ClaheParams::new(clip, tx, ty)?)
}

fn cmd_clahe(cfg: &config::Config, args: &ClaheArgs) -> anyhow::Result<()> {
    let params = clahe_params(cfg, &args.params)?;
    let src = imageio::read_gray(&args.input)?;
    let mut dst = GrayImage::default();
    Clahe::new(params).apply(src.view()?, &mut dst);
    imageio::write_gray(&args.output, &dst)?;
    Ok(())
}

fn cmd_synth(args: &SynthArgs) -> anyhow::Result<()> {
    let images = args.out.join("images");
    let masks = args.out.join("masks");
    for dir in [&images, &masks] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cfg = PhantomConfig {
        width: args.width as usize,
        height: args.height as usize,
        task: args.task,
        furniture: args.furniture,
        seed: args.seed,
    };
    let mut csv = String::from(
        "filename,task,seed,width,height,thickness_px,band_angle_deg,circumference_px,area_px,\
         image_x,image_y,image_w,image_h\n",
    );
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    for i in 0..args.count {
        let s = synth::sample(cfg, i as u64);
        let name = format!("synth_{i:05}.png");
        imageio::write_gray(&images.join(&name), &s.image)?;
        imageio::write_gray(&masks.join(&name), &s.mask)?;
        let r = s.geometry.image;
        csv.push_str(&format!(
            "{name},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            args.task.as_str(),
            args.seed,
            cfg.width,
            cfg.height,
            fmt(s.truth.thickness_px),
            fmt(s.truth.band_angle_deg),
            fmt(s.truth.circumference_px),
            fmt(s.truth.area_px),
            r.x,
            r.y,
            r.w,
            r.h
        ));
    }
    write_atomic(&args.out.join("truth.csv"), csv.as_bytes())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out, "count": args.count, "task": args.task.as_str(), "seed": args.seed})
        );
    } else {
        println!(
            "wrote {} {} pairs to {}",
            args.count,
            args.task.as_str(),
            args.out.display()
        );
    }
    Ok(())
}

fn cmd_bench_clahe(cfg: &config::Config, args: &BenchClaheArgs) -> anyhow::Result<()> {
    let params = clahe_params(cfg, &args.params)?;
    let src = imageio::read_gray(&args.image)?;
    let threads =
        std::num::NonZeroUsize::new(args.threads as usize).unwrap_or(std::num::NonZeroUsize::MIN);
    let mut clahe = Clahe::new(params).with_threads(threads);
    let mut dst = GrayImage::default();
    let view = src.view()?;
    let warmup = (args.iters / 10).clamp(1, 50);
    for _ in 0..warmup {
        clahe.apply(view, &mut dst);
    }
    let mut times_ms = Vec::with_capacity(args.iters as usize);
    for _ in 0..args.iters {
        let t = std::time::Instant::now();
        clahe.apply(view, &mut dst);
        times_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (median, p99) = (
        percentile(&mut times_ms, 0.5),
        percentile(&mut times_ms, 0.99),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "width": src.width(), "height": src.height(), "iters": args.iters, "threads": args.threads,
                "threads_used": clahe.threads_for(src.width(), src.height()),
                "median_ms": median, "p99_ms": p99,
            })
        );
    } else {
        println!(
            "{:<10} {:>6} {:>8} {:>10} {:>10}",
            "size", "iters", "threads", "median_ms", "p99_ms"
        );
        println!(
            "{:<10} {:>6} {:>8} {:>10.3} {:>10.3}",
            format!("{}x{}", src.width(), src.height()),
            args.iters,
            args.threads,
            median,
            p99
        );
    }
    Ok(())
}

/// The `q` quantile (0..=1) by nearest rank; sorts `v`.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Writes a file through a temporary sibling and a rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn resolve_model(cfg: &config::Config, flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    pocusd::daemon::resolve_model(cfg, flag)
}

fn load_model(cfg: &config::Config, flag: Option<&Path>) -> anyhow::Result<LoadedModel> {
    infer::set_threads(cfg.model.threads);
    let path = resolve_model(cfg, flag)?;
    let model = LoadedModel::load(&path, &cfg.model.overrides)?;
    let s = model.spec();
    if !s.from_metadata {
        eprintln!(
            "pocusd: note: {} has no pocusd metadata; using config and graph: task {}, {} {}x{}x{}, output {}, CLAHE {}",
            path.display(),
            s.task.as_str(),
            s.layout.as_str(),
            s.channels,
            s.input_width,
            s.input_height,
            s.output.as_str(),
            s.clahe.map(|c| format!("{}@{}x{}", c.clip_limit, c.tiles_x, c.tiles_y)).unwrap_or_else(|| "off".into())
        );
    }
    Ok(model)
}

fn clahe_threads(cfg: &config::Config) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(cfg.preprocess.threads).unwrap_or(std::num::NonZeroUsize::MIN)
}

/// Still images are never smoothed over time.
fn still_postprocess(cfg: &config::Config) -> PostprocessConfig {
    PostprocessConfig {
        smoothing: Smoothing::Off,
        ..cfg.postprocess
    }
}

fn cmd_infer(cfg: &config::Config, args: &InferArgs) -> anyhow::Result<()> {
    let mut model = load_model(cfg, args.model.as_deref())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut analyzer = Analyzer::new(
        &model,
        clahe_threads(cfg),
        still_postprocess(cfg),
        cfg.overlay,
    );
    let sha = model.sha256().to_string();
    let task = model.spec().task;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for path in &args.images {
        let one = (|| -> anyhow::Result<serde_json::Value> {
            let img = imageio::read_gray(path)?;
            let roi =
                pocusd::preprocess::roi::RoiTracker::new(cfg.source.roi, 1).roi_for(img.view()?);
            let analysis = analyzer.analyse(&mut model, img.view()?, roi)?.clone();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            imageio::write_gray(
                &args.out.join(format!("{stem}.mask.png")),
                &analyzer.mask_image(img.width(), img.height()),
            )?;
            let ov = analyzer.render_overlay(img.view()?, &sha);
            imageio::write_rgb(
                &args.out.join(format!("{stem}.overlay.png")),
                ov.width,
                ov.height,
                &ov.data,
            )?;
            let v = serde_json::json!({
                "image": path,
                "width": img.width(),
                "height": img.height(),
                "model_sha256": sha,
                "task": task.as_str(),
                "measurements": analysis.measurements,
                "confidence": analysis.confidence,
                "uncertain_fraction": analysis.uncertain_fraction,
                "flag": analysis.flag.map(|f| f.as_str()),
                "roi": roi,
            });
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
        println!(
            "{:<40} {:>14} {:>10} {:>16}",
            "image",
            headline_name(task),
            "confidence",
            "flag"
        );
        for v in &results {
            let m = &v["measurements"];
            let value = match task {
                Task::Aponeurosis => m["thickness_mm"]
                    .as_f64()
                    .map(|x| format!("{x:.2} mm"))
                    .or(m["thickness_px"].as_f64().map(|x| format!("{x:.1} px"))),
                Task::Region => m["circumference_mm"]
                    .as_f64()
                    .map(|x| format!("{x:.2} mm"))
                    .or(m["circumference_px"].as_f64().map(|x| format!("{x:.1} px"))),
            };
            println!(
                "{:<40} {:>14} {:>10.3} {:>16}",
                v["image"].as_str().unwrap_or("?"),
                value.unwrap_or_else(|| "-".into()),
                v["confidence"].as_f64().unwrap_or(0.0),
                v["flag"].as_str().unwrap_or("")
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

fn headline_name(task: Task) -> &'static str {
    match task {
        Task::Aponeurosis => "thickness",
        Task::Region => "circumference",
    }
}

/// Dice and IoU of two 0/non-0 masks; both empty counts as perfect agreement.
fn dice_iou(a: &[u8], b: &[u8]) -> (f64, f64) {
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

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn cmd_eval(cfg: &config::Config, args: &EvalArgs) -> anyhow::Result<()> {
    let mut model = load_model(cfg, args.model.as_deref())?;
    let task = args.task.unwrap_or(model.spec().task);
    let post_cfg = PostprocessConfig {
        calibration: Calibration::None,
        ..still_postprocess(cfg)
    };
    let mut analyzer = Analyzer::new(&model, clahe_threads(cfg), post_cfg, cfg.overlay);
    let mut reference = Postprocessor::new(task, post_cfg);
    // The task used for measuring predictions may differ from the model's (--task).
    let mut measure_pred = Postprocessor::new(task, post_cfg);
    let csv = match &args.mm_csv {
        Some(p) => read_mm_csv(p)?,
        None => Default::default(),
    };
    let images_dir = args.data.join("images");
    let masks_dir = args.data.join("masks");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images_dir)
        .with_context(|| {
            format!(
                "cannot list {} (expected DIR/images and DIR/masks)",
                images_dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| {
                x.eq_ignore_ascii_case("png")
                    || x.eq_ignore_ascii_case("jpg")
                    || x.eq_ignore_ascii_case("jpeg")
            })
        })
        .collect();
    names.sort();
    if names.is_empty() {
        anyhow::bail!("{} holds no PNG or JPEG images", images_dir.display());
    }
    if let Some(fraction) = args.val_fraction {
        let blocks = args.val_blocks.unwrap_or(cfg.raw.train.val_blocks as usize);
        let (samples, _) = pocusd::dataset::load(std::slice::from_ref(&args.data), |_| {})?;
        let held: std::collections::BTreeSet<String> =
            pocusd::dataset::validation_blocks(samples.len(), fraction, blocks)
                .into_iter()
                .map(|i| samples[i].name.clone())
                .collect();
        names.retain(|p| {
            p.file_name()
                .is_some_and(|n| held.contains(n.to_string_lossy().as_ref()))
        });
        eprintln!(
            "scoring the {} validation images of {} (fraction {fraction}, {blocks} blocks)",
            names.len(),
            args.data.display()
        );
    }
    let mut rois = pocusd::preprocess::roi::RoiTracker::new(cfg.source.roi, 1);
    let (mut dice, mut iou, mut failed, mut skipped) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let (mut th_abs, mut th_rel, mut c_abs_px, mut c_abs_mm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_image = Vec::new();
    for path in &names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let (img, refmask) = match (
            imageio::read_gray(path),
            imageio::read_gray(&masks_dir.join(&name)),
        ) {
            (Ok(i), Ok(m)) if (i.width(), i.height()) == (m.width(), m.height()) => (i, m),
            (Ok(_), Ok(_)) => {
                eprintln!("pocusd: skipped {name}: image and mask sizes differ");
                skipped += 1;
                continue;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("pocusd: skipped {name}: {e}");
                skipped += 1;
                continue;
            }
        };
        let roi = Rect::full(img.width(), img.height());
        // The model sees the region of interest the source settings choose (--roi auto for
        // scanner screenshots, as training does); masks are compared over the whole image.
        let model_roi = rois.roi_for(img.view()?);
        analyzer.analyse(&mut model, img.view()?, model_roi)?;
        let pred_mask = analyzer.mask_image(img.width(), img.height());
        let pred_prob: Vec<f32> = pred_mask
            .as_slice()
            .iter()
            .map(|&v| (v > 127) as u8 as f32)
            .collect();
        let pa = measure_pred.process_full(&pred_prob, roi).clone();
        let ref_prob: Vec<f32> = refmask
            .as_slice()
            .iter()
            .map(|&v| (v > 127) as u8 as f32)
            .collect();
        let ra = reference.process_full(&ref_prob, roi).clone();
        let lacks = matches!(pa.flag, Some(Flag::NoStructure) | Some(Flag::OneBand));
        let (d, j) = if lacks {
            (0.0, 0.0)
        } else {
            dice_iou(pred_mask.as_slice(), refmask.as_slice())
        };
        failed += lacks as usize;
        dice.push(d);
        iou.push(j);
        let mut row = serde_json::json!({"image": name, "dice": d, "iou": j, "flag": pa.flag.map(|f| f.as_str())});
        match task {
            Task::Aponeurosis => {
                let (p, r) = (pa.measurements.thickness_px, ra.measurements.thickness_px);
                row["thickness_px"] = serde_json::json!(p);
                row["reference_thickness_px"] = serde_json::json!(r);
                if let (Some(p), Some(r)) = (p, r) {
                    th_abs.push((p - r).abs());
                    th_rel.push((p - r).abs() / r);
                }
            }
            Task::Region => {
                let (p, r) = (
                    pa.measurements.circumference_px,
                    ra.measurements.circumference_px,
                );
                row["circumference_px"] = serde_json::json!(p);
                row["reference_circumference_px"] = serde_json::json!(r);
                if let (Some(p), Some(r)) = (p, r) {
                    c_abs_px.push((p - r).abs());
                }
                if let (Some(p), Some(&(px_mm, hc_mm))) = (p, csv.get(&name)) {
                    row["circumference_mm"] = serde_json::json!(p * px_mm);
                    row["reference_hc_mm"] = serde_json::json!(hc_mm);
                    c_abs_mm.push((p * px_mm - hc_mm).abs());
                }
            }
        }
        per_image.push(row);
    }
    if per_image.is_empty() {
        anyhow::bail!(
            "no image in {} had a readable mask of the same size in {}",
            images_dir.display(),
            masks_dir.display()
        );
    }
    let mut rel_sorted = th_rel.clone();
    let summary = serde_json::json!({
        "images": per_image.len(),
        "failed": failed,
        "skipped": skipped,
        "task": task.as_str(),
        "model_sha256": model.sha256(),
        "dice": mean(&dice),
        "iou": mean(&iou),
        "thickness_mae_px": mean(&th_abs),
        "thickness_rel_err_median": (!rel_sorted.is_empty()).then(|| pocusd::postprocess::median(&mut rel_sorted)),
        "thickness_within_10pct": (!th_rel.is_empty()).then(|| th_rel.iter().filter(|&&r| r <= 0.10).count() as f64 / th_rel.len() as f64),
        "circumference_mae_px": mean(&c_abs_px),
        "circumference_mae_mm": mean(&c_abs_mm),
        "per_image": per_image,
    });
    if args.json {
        println!("{summary}");
    } else {
        let f = |k: &str| {
            summary[k]
                .as_f64()
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "images {}  failed {}  skipped {}  task {}",
            summary["images"],
            failed,
            skipped,
            task.as_str()
        );
        for k in [
            "dice",
            "iou",
            "thickness_mae_px",
            "thickness_rel_err_median",
            "thickness_within_10pct",
            "circumference_mae_px",
            "circumference_mae_mm",
        ] {
            println!("{k:<28} {}", f(k));
        }
    }
    Ok(())
}

/// filename -> (pixel_size_mm, head_circumference_mm).
fn read_mm_csv(path: &Path) -> anyhow::Result<std::collections::HashMap<String, (f64, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut map = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 3 {
            continue;
        }
        let px: f64 = f[1].parse().with_context(|| {
            format!(
                "{} line {}: pixel_size_mm {:?} is not a number",
                path.display(),
                i + 1,
                f[1]
            )
        })?;
        let hc: f64 = f[2].parse().with_context(|| {
            format!(
                "{} line {}: head_circumference_mm {:?} is not a number",
                path.display(),
                i + 1,
                f[2]
            )
        })?;
        map.insert(f[0].to_string(), (px, hc));
    }
    Ok(map)
}

fn cmd_unet(args: &UnetArgs) -> anyhow::Result<()> {
    let (w, h) = args.input;
    if w >> args.depth << args.depth != w || h >> args.depth << args.depth != h {
        anyhow::bail!(
            "input {w}x{h} is not divisible by 2^{} (depth {})",
            args.depth,
            args.depth
        );
    }
    let spec = onnx_build::fixture_spec(
        args.task,
        w,
        h,
        args.channels as usize,
        pocusd::model::Layout::Nchw,
        pocusd::model::OutputKind::Sigmoid,
    );
    let spec = pocusd::model::ModelSpec {
        clahe: Some(ClaheParams::default()),
        trained_on: Some("random weights (pocusd unet)".into()),
        ..spec
    };
    let shape = onnx_build::UnetShape {
        depth: args.depth as usize,
        base_width: args.width as usize,
        conv_transpose: args.upsample == "transpose",
    };
    let bytes = onnx_build::random_unet(&spec, shape, args.seed);
    write_atomic(&args.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, sha256 {})",
        args.out.display(),
        bytes.len(),
        infer::sha256_hex(&bytes)
    );
    Ok(())
}

fn time_ms<F: FnMut()>(iters: u32, mut f: F) -> (f64, f64) {
    for _ in 0..(iters / 10).clamp(1, 20) {
        f();
    }
    let mut t = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let s = std::time::Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    (percentile(&mut t, 0.5), percentile(&mut t, 0.99))
}

fn cmd_bench_infer(cfg: &config::Config, args: &BenchInferArgs) -> anyhow::Result<()> {
    infer::set_threads(args.threads as usize);
    let mut model = LoadedModel::load(&args.model, &cfg.model.overrides)?;
    let shape = model.spec().input_shape();
    let n: usize = shape.iter().product();
    let input: Vec<f32> = (0..n).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
    let mut err = None;
    let (median, p99) = time_ms(args.iters, || {
        if let Err(e) = model.run(&input) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"input": shape, "threads": args.threads, "median_ms": median, "p99_ms": p99, "iters": args.iters})
        );
    } else {
        println!(
            "{:<20} {:>8} {:>10} {:>10}",
            "input", "threads", "median_ms", "p99_ms"
        );
        println!(
            "{:<20} {:>8} {:>10.3} {:>10.3}",
            format!("{shape:?}"),
            args.threads,
            median,
            p99
        );
    }
    Ok(())
}

fn cmd_bench_post(cfg: &config::Config, args: &BenchPostArgs) -> anyhow::Result<()> {
    let mut model = load_model(cfg, Some(&args.model))?;
    let task = model.spec().task;
    let mut analyzer = Analyzer::new(&model, clahe_threads(cfg), cfg.postprocess, cfg.overlay);
    // Model outputs for a few phantom frames, computed once; only postprocess + overlay is timed.
    let phantom = synth::PhantomConfig {
        width: 640,
        height: 480,
        task,
        furniture: false,
        seed: 1,
    };
    let frames: Vec<GrayImage> = (0..8).map(|i| synth::sample(phantom, i).image).collect();
    let roi = Rect::full(640, 480);
    let (w, h) = (model.spec().input_width, model.spec().input_height);
    let mut pre = pocusd::preprocess::Preprocessor::new(model.spec(), clahe_threads(cfg));
    let mut outputs = Vec::new();
    for f in &frames {
        let input = pre.process(f.view()?, roi)?.to_vec();
        outputs.push(model.run(&input)?.to_vec());
    }
    // One full pass so the overlay has an enhanced frame of the right size.
    analyzer.analyse(&mut model, frames[0].view()?, roi)?;
    let sha = model.sha256().to_string();
    let mut k = 0usize;
    let (median, p99) = time_ms(args.iters, || {
        let i = k % frames.len();
        k += 1;
        analyzer.postprocessor().process(&outputs[i], w, h, roi);
        if let Ok(v) = frames[i].view() {
            analyzer.render_overlay(v, &sha);
        }
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({"width": 640, "height": 480, "iters": args.iters, "median_ms": median, "p99_ms": p99})
        );
    } else {
        println!(
            "{:<10} {:>6} {:>10} {:>10}",
            "frame", "iters", "median_ms", "p99_ms"
        );
        println!(
            "{:<10} {:>6} {:>10.3} {:>10.3}",
            "640x480", args.iters, median, p99
        );
    }
    Ok(())
}

fn finite_source(cfg: &config::Config) -> pocusd::source::Reconnecting {
    let mut src = pocusd::source::Reconnecting::new(cfg.source.spec.clone(), cfg.source.retry);
    src.end_is_final = true;
    src
}

fn cmd_capture(cfg: &config::Config, args: &CaptureArgs) -> anyhow::Result<()> {
    use pocusd::source::Read;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut src = finite_source(cfg);
    let mut health = pocusd::source::Health::new(cfg.source.health);
    let mut rois = pocusd::preprocess::roi::RoiTracker::new(cfg.source.roi, 30);
    let mut crop = GrayImage::default();
    let (mut saved, mut seen) = (0u64, 0u64);
    while args.frames.is_none_or(|n| saved < n) {
        match src.read(std::time::Duration::from_millis(200)) {
            Ok(Read::Frame(f)) => {
                health.on_frame(&f);
                seen += 1;
                if (seen - 1) % args.every as u64 != 0 {
                    continue;
                }
                let roi = rois.roi_for(f.image.view()?);
                let view = f.image.view()?.crop(roi)?;
                view.copy_into(&mut crop);
                imageio::write_gray(&args.out.join(format!("frame_{:06}.png", f.seq)), &crop)?;
                saved += 1;
            }
            Ok(Read::Timeout) => health.on_tick(src.reconnecting, src.reconnects),
            Ok(Read::End) => break,
            Err(e @ pocusd::source::SourceError::Corrupt { .. }) => {
                health.on_decode_error();
                eprintln!("pocusd: skipped {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let c = health.counters();
    println!(
        "saved {saved} frames to {} ({} read, {} corrupt skipped)",
        args.out.display(),
        c.frames,
        c.decode_errors
    );
    Ok(())
}

/// A private session bus for the benchmark, if dbus-daemon is installed: (child, address).
fn private_bus() -> Option<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let out = child.stdout.take()?;
    std::io::BufReader::new(out).read_line(&mut line).ok()?;
    let addr = line.trim().to_string();
    (!addr.is_empty()).then_some((child, addr))
}

/// Reads an MJPEG stream and counts its parts until `stop`.
fn mjpeg_reader(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(200)));
        let _ = s.write_all(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n");
        let needle = b"--pocusdframe";
        let (mut parts, mut buf, mut carry) = (0u64, vec![0u8; 1 << 16], Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    carry.extend_from_slice(&buf[..n]);
                    parts += carry.windows(needle.len()).filter(|w| w == needle).count() as u64;
                    let keep = carry.len().saturating_sub(needle.len() - 1);
                    carry.drain(..keep);
                }
                Err(_) => continue,
            }
        }
        parts
    })
}

fn cmd_bench_pipeline(config: &Option<PathBuf>, args: &BenchPipelineArgs) -> anyhow::Result<()> {
    let mut spec = pocusd::source::SourceSpec::parse(&args.bench_source)?;
    spec.options.insert("fps".into(), format!("{}", args.fps));
    let raw = format!(
        "{}?{}",
        spec.raw.split('?').next().unwrap_or("demo"),
        spec.options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    );
    let bus = private_bus();
    let dbus_used = bus.is_some();
    let state = tempdir_for_bench()?;
    // The benchmark must not touch the system's state folder or port 8080.
    std::env::set_var("POCUSD__STORAGE__DIR", &state);
    std::env::set_var("POCUSD__HTTP__LISTEN", "127.0.0.1:0");
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .ok()
            .map(|addr| mjpeg_reader(addr, stop2))
    });
    let result = pocusd::daemon::run_for_bench(pocusd::daemon::RunOptions {
        config_file: config.clone(),
        source: Some(raw.clone()),
        model: args.model.clone(),
        frames: Some(args.frames + (args.fps.max(1.0) as u64)),
        session_bus: true,
        no_dbus: bus.is_none(),
        bus_address: bus.as_ref().map(|b| b.1.clone()),
        announce_http: Some(tx),
        collect: true,
        ..Default::default()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mjpeg_parts = reader
        .join()
        .ok()
        .flatten()
        .and_then(|h| h.join().ok())
        .unwrap_or(0);
    if let Some((mut child, _)) = bus {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&state);
    let s = result?;
    let pct = |v: &[f64]| {
        let mut v = v.to_vec();
        (
            percentile(&mut v, 0.5),
            percentile(&mut v, 0.99),
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let (p50, p99, max) = pct(&s.end_to_end_ms);
    let names = ["capture", "preprocess", "infer", "postprocess", "publish"];
    let mut stages = serde_json::Map::new();
    for (n, v) in names.iter().zip(&s.stages_ms) {
        let (a, b, _) = pct(v);
        stages.insert(n.to_string(), serde_json::json!({"p50": a, "p99": b}));
    }
    let fps = s.frames as f64 / s.seconds.max(1e-9);
    let offered = s.frames + s.dropped;
    let v = serde_json::json!({
        "fps": fps,
        "dropped": s.dropped,
        "dropped_fraction": if offered > 0 { s.dropped as f64 / offered as f64 } else { 0.0 },
        "latency_ms": {"p50": p50, "p99": p99, "max": max},
        "stages_ms": stages,
        "rss_mb": s.rss_mb_end,
        "rss_mb_after_1s": s.rss_mb_at_1s,
        "frames": s.frames,
        "seconds": s.seconds,
        "source": raw,
        "source_fps": args.fps,
        "mjpeg_client_frames": mjpeg_parts,
        "jpeg_encoded": s.encoded_jpegs,
        "dbus": dbus_used,
    });
    if args.json {
        println!("{v}");
    } else {
        println!(
            "{} at {} fps: {:.1} fps processed, {} dropped ({:.2} %), latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, RSS {:.0} MB (after 1 s: {:.0} MB), MJPEG client got {} frames",
            raw, args.fps, fps, s.dropped, v["dropped_fraction"].as_f64().unwrap_or(0.0) * 100.0, p50, p99, max,
            s.rss_mb_end, s.rss_mb_at_1s, mjpeg_parts
        );
        for n in names {
            println!(
                "  {n:<12} p50 {:>7.2} ms  p99 {:>7.2} ms",
                stages[n]["p50"].as_f64().unwrap_or(0.0),
                stages[n]["p99"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn tempdir_for_bench() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("pocusd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

fn cmd_bench_source(cfg: &config::Config, args: &BenchSourceArgs) -> anyhow::Result<()> {
    use pocusd::source::Read;
    let mut src = finite_source(cfg);
    let mut times = Vec::with_capacity(args.frames as usize);
    let start = std::time::Instant::now();
    let mut idle_since = std::time::Instant::now();
    while (times.len() as u64) < args.frames {
        let t = std::time::Instant::now();
        match src.read(std::time::Duration::from_millis(500)) {
            Ok(Read::Frame(_)) => {
                times.push(t.elapsed().as_secs_f64() * 1e3);
                idle_since = std::time::Instant::now();
            }
            Ok(Read::End) => break,
            Ok(Read::Timeout) => {
                if idle_since.elapsed() > std::time::Duration::from_secs(10) {
                    anyhow::bail!(
                        "no frame from {} for 10 s ({})",
                        cfg.source.spec.raw,
                        src.last_error
                            .as_ref()
                            .map(|e| e.to_string())
                            .unwrap_or_default()
                    );
                }
            }
            Err(pocusd::source::SourceError::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let frames = times.len();
    let fps = if elapsed > 0.0 {
        frames as f64 / elapsed
    } else {
        0.0
    };
    let median = percentile(&mut times, 0.5);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"fps": fps, "decode_ms_median": median, "frames": frames, "source": cfg.source.spec.raw})
        );
    } else {
        println!(
            "{:<40} {:>8} {:>10} {:>16}",
            "source", "frames", "fps", "decode_ms_median"
        );
        println!(
            "{:<40} {:>8} {:>10.1} {:>16.3}",
            cfg.source.spec.raw, frames, fps, median
        );
    }
    Ok(())
}

#[cfg(feature = "v4l")]
fn cmd_sources(args: &SourcesArgs) -> anyhow::Result<()> {
    let devices = pocusd::source::v4l2::list_devices();
    if args.json {
        println!("{}", serde_json::json!({ "devices": devices }));
        return Ok(());
    }
    if devices.is_empty() {
        println!("no V4L2 capture devices found (/dev/video*); network and file sources: --source ffmpeg:URL");
    }
    for d in &devices {
        println!("{}: {} ({})", d.path.display(), d.card, d.driver);
        for f in &d.formats {
            println!(
                "  {} {}{}",
                f.fourcc,
                f.description,
                if f.supported {
                    ""
                } else {
                    " (not used by pocusd)"
                }
            );
            for s in &f.sizes {
                let fps: Vec<String> = s.fps.iter().map(|v| format!("{v:.2}")).collect();
                println!(
                    "    {}x{} @ {} fps",
                    s.width,
                    s.height,
                    if fps.is_empty() {
                        "?".to_string()
                    } else {
                        fps.join(", ")
                    }
                );
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "v4l"))]
fn cmd_sources(_args: &SourcesArgs) -> anyhow::Result<()> {
    anyhow::bail!("this pocusd was built without the `v4l` feature; rebuild with default features to list capture cards")
}
