//! `pocusd loop nightly`: the edge of `pocusd::train::nightly`. Resolves the folders from the
//! configuration, runs one turn of the loop with progress on stderr, hands a promoted model to a
//! running daemon over D-Bus (`LoadModel`), and prints the outcome (one JSON object with
//! `--json`). Exits 0 whether or not it promoted; non-zero only for errors.

use clap::{Args, Subcommand};

use pocusd::config::Config;
use pocusd::train::nightly::{self, NightlyInputs};
use pocusd::train::trainer::ConsoleProgress;

#[derive(Subcommand, Debug)]
pub enum LoopCommand {
    /// Fine-tune the current model on the site's accepted labels and promote it only if better.
    Nightly(NightlyArgs),
}

#[derive(Args, Debug)]
pub struct NightlyArgs {
    /// Print one JSON object: promoted, reason, version, model, site_images, current, candidate.
    #[arg(long)]
    json: bool,
    /// Hand a promoted model to the daemon on the session bus (one started with --session-bus).
    #[arg(long)]
    session_bus: bool,
}

pub fn cmd_loop(cfg: &Config, cmd: &LoopCommand) -> anyhow::Result<()> {
    let LoopCommand::Nightly(a) = cmd;
    let state = pocusd::daemon::store::resolve_state_dir(&cfg.storage);
    let fallback = pocusd::daemon::resolve_model(cfg, None)?;
    let inputs = NightlyInputs {
        cfg: &cfg.loop_,
        state: &state,
        train: &cfg.raw.train,
        clahe: cfg.preprocess.clahe,
        fallback_model: &fallback,
        post: cfg.postprocess,
        clahe_threads: super::clahe_threads(cfg),
    };
    let session = a.session_bus || cfg.dbus.bus == pocusd::config::Bus::Session;
    let mut progress = ConsoleProgress::new();
    let mut load = |path: &std::path::Path| -> Result<(), String> {
        let p = path.display().to_string();
        pocusd::daemon::status::with_daemon(session, |d| {
            Box::pin(async move { d.load_model(&p).await })
        })
        .map_err(|e| format!("{e:#}"))
    };
    let outcome = nightly::run(&inputs, &mut progress, &mut load)?;
    if a.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!(
            "{}: {}",
            if outcome.promoted {
                "promoted"
            } else {
                "not promoted"
            },
            outcome.reason
        );
        if let Some(m) = &outcome.model {
            println!(
                "version {} at {}",
                outcome.version.unwrap_or(0),
                m.display()
            );
        }
    }
    Ok(())
}
