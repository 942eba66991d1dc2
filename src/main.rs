//! The `pocusd` command line: a thin shell over the library. Parses arguments (clap), loads the
//! layered configuration, runs one subcommand, and turns errors into one readable line and an exit
//! status (78 for configuration errors, as EX_CONFIG; 1 otherwise).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use pocusd::config::{self, ConfigError};
use pocusd::frame::GrayImage;
use pocusd::preprocess::{Clahe, ClaheParams};
use pocusd::synth::{self, PhantomConfig, Task};
use pocusd::{imageio, version_string};

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Equalise an image with CLAHE (OpenCV createCLAHE semantics).
    Clahe(ClaheArgs),
    /// Write a synthetic phantom dataset: images/, masks/ and truth.csv.
    Synth(SynthArgs),
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
    let cfg = config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Clahe(args) => cmd_clahe(&cfg, &args),
        Command::Synth(args) => cmd_synth(&args),
        Command::Bench(BenchCommand::Clahe(args)) => cmd_bench_clahe(&cfg, &args),
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
