//! The `pocusd` command line: the door, not a room. Parses arguments (clap), loads the layered
//! configuration with the global flags applied, dispatches one subcommand to `cli::*` (which
//! calls the library), and turns errors into one readable line and an exit status (78 for
//! configuration errors, as EX_CONFIG; 2 for usage errors, by clap; 1 otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pocusd::config::{self, ConfigError};
use pocusd::preprocess::roi::RoiChoice;
use pocusd::version_string;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::bench::BenchCommand;
use cli::data::{CaptureArgs, SourcesArgs};
use cli::engine::{EvalArgs, InferArgs};
use cli::image::{ClaheArgs, SynthArgs, UnetArgs};
use cli::models::ModelsCommand;

/// Exit status for configuration errors (sysexits.h EX_CONFIG): systemd units do not restart on it.
const EX_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "pocusd",
    version = version_string(),
    about = "Point-of-care ultrasound: capture, CLAHE, segmentation and measurements",
    long_about = "pocusd captures ultrasound frames, enhances them with CLAHE (bit-identical to OpenCV), \
                  segments them with a U-Net (ONNX on tract), measures and publishes live over D-Bus \
                  and HTTP; it also trains and exports its models.\n\n\
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

    /// Region of interest (overrides [source] roi): model (the model's own policy, the default),
    /// full (or none), auto, or x,y,w,h. For `train`: model, auto or none (full).
    #[arg(long, global = true, value_name = "model|full|auto|x,y,w,h", value_parser = parse_roi)]
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
    /// Find the scanner's ruler beside the image in screen grabs and give mm per pixel.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Train a U-Net on labelled images (burn, CPU); the run folder can be resumed and exported.
    #[cfg(feature = "train")]
    Train(cli::train::TrainArgs),
    /// Export a training run's checkpoint to ONNX with pocusd metadata.
    #[cfg(feature = "train")]
    Export(cli::train::ExportArgs),
    /// Write a synthetic phantom dataset: images/, masks/ and truth.csv.
    Synth(SynthArgs),
    /// Segment images with a model: mask, overlay and measurements per image.
    Infer(InferArgs),
    /// Score a model on a labelled folder (images/ + masks/): Dice, IoU, thickness or circumference errors.
    Eval(EvalArgs),
    /// Write a U-Net of the default architecture with random weights (for benchmarks and tests).
    Unet(UnetArgs),
    /// Inspect and maintain model files; list the cart's model versions and roll back.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The cart's learning loop: `pocusd loop nightly` fine-tunes on accepted labels, promotes if better.
    #[cfg(feature = "train")]
    #[command(subcommand)]
    Loop(cli::nightly::LoopCommand),
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
    /// DICOM: send snapshots to a PACS (`pocusd dicom send DIR --to AET@HOST:PORT`).
    #[command(subcommand)]
    Dicom(cli::dicom::DicomCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Write the manual pages (pocusd.1 and one per subcommand, e.g. pocusd-run.1) into a folder.
    Manpages(ManpagesArgs),
}

#[derive(Args, Debug)]
struct CompletionsArgs {
    /// The shell, e.g. `pocusd completions bash > /usr/share/bash-completion/completions/pocusd`.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
struct ManpagesArgs {
    /// Folder to write the pages into (created when missing); `man -l DIR/pocusd.1` reads one.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Model (ONNX); default: [model] path, else the shipped models/aponeurosis.onnx.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Stop cleanly after N processed frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// An extra model on the same frames (repeatable; replaces [model] extra), e.g.
    /// models/fascicle.onnx beside the aponeurosis model.
    #[arg(long, value_name = "FILE")]
    extra_model: Vec<PathBuf>,
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

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the layered configuration and print the effective values as TOML.
    Check,
}

/// `--roi`: a usage error (exit 2) when it is none of the spellings any command takes.
fn parse_roi(s: &str) -> Result<String, String> {
    if RoiChoice::parse(s).is_some() {
        Ok(s.trim().to_string())
    } else {
        Err(format!(
            "'{s}' is not model, full, auto or x,y,w,h (w and h above 0)"
        ))
    }
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
                extra_models: args.extra_model.clone(),
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
        // Neither reads the configuration: they run while packaging, and on a cart whose
        // configuration is broken.
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "pocusd", &mut script);
            // A reader that stops early (`| head`) is not an error.
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(e).context("writing the completion script"))
                }
                _ => Ok(()),
            };
        }
        Command::Manpages(args) => {
            let written =
                cli::manpages::write_all(<Cli as clap::CommandFactory>::command(), &args.dir)?;
            eprintln!(
                "pocusd: wrote {} manual pages into {}",
                written.len(),
                args.dir.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let mut cfg = config::load(cli.config.as_deref())?;
    if let Some(spec) = &cli.source {
        cfg.source.spec = config::parse_source("--source", spec)?;
    }
    #[cfg(feature = "train")]
    let roi_is_for_training = matches!(cli.command, Command::Train(_));
    #[cfg(not(feature = "train"))]
    let roi_is_for_training = false;
    if let Some(roi) = cli.roi.as_deref().filter(|_| !roi_is_for_training) {
        // Checked by clap (parse_roi).
        cfg.source.roi = RoiChoice::parse(roi).unwrap_or_default();
    }
    match &cli.command {
        Command::Clahe(args) => cli::image::cmd_clahe(&cfg, args),
        Command::Calibrate(args) => cli::calibrate::cmd_calibrate(args),
        Command::Synth(args) => cli::image::cmd_synth(args),
        Command::Unet(args) => cli::image::cmd_unet(args),
        #[cfg(feature = "train")]
        Command::Train(args) => cli::train::cmd_train(&cfg, cli.roi.as_deref(), args),
        #[cfg(feature = "train")]
        Command::Export(args) => cli::train::cmd_export(args),
        Command::Infer(args) => cli::engine::cmd_infer(&cfg, args),
        Command::Eval(args) => cli::engine::cmd_eval(&cfg, args),
        Command::Models(cmd) => cli::models::cmd_models(&cfg, cmd),
        #[cfg(feature = "train")]
        Command::Loop(cmd) => cli::nightly::cmd_loop(&cfg, cmd),
        Command::Capture(args) => cli::data::cmd_capture(&cfg, args),
        Command::Sources(args) => cli::data::cmd_sources(args),
        Command::Dicom(cmd) => cli::dicom::cmd_dicom(&cfg, cmd),
        Command::Bench(cmd) => {
            cli::bench::cmd_bench(&cfg, cli.config.clone(), cli.source.as_deref(), cmd)
        }
        Command::Run(_) | Command::Status(_) | Command::Completions(_) | Command::Manpages(_) => {
            unreachable!("dispatched above")
        }
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
