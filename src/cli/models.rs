//! `pocusd models meta`: show or rewrite an ONNX model's `pocusd.*` metadata without touching its
//! graph or weights (the bytes of both are copied), e.g. to give a model trained before a key
//! existed its region-of-interest policy: `pocusd models meta M.onnx --set pocusd.roi=auto`.
//! The result must still load as a model, or nothing is written. `pocusd models list` and
//! `pocusd models rollback`: the cart's model versions (`[loop] models_dir`, see
//! `pocusd::versions`); a rollback is carried out by the running daemon (`RollbackModel` on
//! D-Bus, operators only), or with `--offline` on the files when no daemon runs.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use pocusd::config::Config;
use pocusd::files::write_atomic;
use pocusd::infer::{self, onnx_file, LoadedModel};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Print a model's metadata, or rewrite it (--set/--unset) keeping graph and weights byte for byte.
    Meta(MetaArgs),
    /// List the cart's model versions (models_dir/history.jsonl) with their scores; * marks the current one.
    List(ListArgs),
    /// Make an earlier model version current (default: the one the current version replaced).
    Rollback(RollbackArgs),
    /// Write MODEL.bpk beside a folded MODEL.onnx whose training run is gone: the unfolded network
    /// with batch-norm statistics measured on its training images (what fine-tuning starts from).
    #[cfg(feature = "train")]
    Unfold(UnfoldArgs),
    /// Adapt MODEL.onnx to a scanner without labels: its batch-norm statistics re-estimated on a
    /// folder of that scanner's images (what `pocusd loop nightly` does with the unlabelled
    /// frames); writes OUT.onnx and OUT.bpk. Decides nothing: score the result with `pocusd eval`.
    #[cfg(feature = "train")]
    Adapt(AdaptArgs),
}

#[cfg(feature = "train")]
#[derive(Args, Debug)]
pub struct AdaptArgs {
    /// The ONNX model, with its unfolded copy MODEL.bpk beside it.
    model: PathBuf,
    /// Images of the scanner to adapt to: a folder of images (or its images/); masks are never
    /// read. Repeatable.
    #[arg(long, value_name = "DIR", required = true)]
    frames: Vec<PathBuf>,
    /// The adapted model (ONNX; its unfolded copy goes beside it with .bpk).
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// Frames per batch: the batch size the model was trained with (its running variances are
    /// variances within such batches).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=256))]
    batch: u32,
    /// Then self-training: fine-tune the adapted model on the images the quality gate marks ok,
    /// its own masks as labels (`[train]` settings for the rest; the pseudo-labels and the run
    /// go to OUT's folder as NAME.self-training/).
    #[arg(long)]
    self_training: bool,
    /// Self-training epochs.
    #[arg(long, default_value_t = 4, requires = "self_training", value_parser = clap::value_parser!(u64).range(1..=100))]
    epochs: u64,
    /// Self-training learning rate.
    #[arg(long, default_value_t = 1e-4, requires = "self_training")]
    lr: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "train")]
#[derive(Args, Debug)]
pub struct UnfoldArgs {
    /// The ONNX model (exported by pocusd).
    model: PathBuf,
    /// Images (images/ + masks/, as for training) to measure the statistics on; the model's
    /// training data. Repeatable.
    #[arg(long, value_name = "DIR", required = true)]
    data: Vec<PathBuf>,
    /// Output file; default: the model's path with .bpk.
    #[arg(long, value_name = "FILE.bpk")]
    out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print one JSON object: {"models_dir":..,"current":N|null,"versions":[..]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The version to return to (see `pocusd models list`); default: the previous one.
    version: Option<u32>,
    /// Ask the daemon on the session bus (one started with --session-bus).
    #[arg(long)]
    session_bus: bool,
    /// No daemon is running: rewrite current.onnx and the history directly (needs write access
    /// to models_dir); the daemon starts on it next time.
    #[arg(long)]
    offline: bool,
}

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Add or replace KEY=VALUE (a key without a dot means pocusd.KEY). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_pair)]
    set: Vec<(String, String)>,
    /// Remove KEY (pocusd.KEY without a dot). Repeatable.
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
    /// Write the result here instead of replacing the model in place.
    #[arg(long, value_name = "FILE.onnx")]
    out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn full_key(k: &str) -> String {
    let k = k.trim();
    if k.contains('.') {
        k.to_string()
    } else {
        format!("{}{k}", pocusd::model::META_PREFIX)
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE (e.g. pocusd.roi=auto)"))?;
    if k.trim().is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    Ok((full_key(k), v.to_string()))
}

pub fn cmd_models(cfg: &Config, cmd: &ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Meta(a) => cmd_meta(cfg, a),
        ModelsCommand::List(a) => cmd_list(cfg, a),
        ModelsCommand::Rollback(a) => cmd_rollback(cfg, a),
        #[cfg(feature = "train")]
        ModelsCommand::Unfold(a) => cmd_unfold(a),
        #[cfg(feature = "train")]
        ModelsCommand::Adapt(a) => cmd_adapt(cfg, a),
    }
}

#[cfg(feature = "train")]
fn cmd_adapt(cfg: &Config, a: &AdaptArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let frames: Vec<PathBuf> = a
        .frames
        .iter()
        .flat_map(|d| pocusd::train::nightly::unlabelled_frames(d, usize::MAX))
        .collect();
    if frames.is_empty() {
        anyhow::bail!(
            "no PNG or JPEG images in {} (nor in its images/)",
            a.frames
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut progress = pocusd::train::trainer::ConsoleProgress::new();
    // With self-training the statistics step is an intermediate file beside OUT.
    let bn_out = if a.self_training {
        a.out.with_extension("bn-stats.onnx")
    } else {
        a.out.clone()
    };
    let r = pocusd::train::adapt::reestimate_bn_stats(
        &a.model,
        &frames,
        &bn_out,
        a.batch as usize,
        &mut progress,
    )
    .with_context(|| format!("adapting {}", a.model.display()))?;
    let st = if a.self_training {
        if !(a.lr > 0.0 && a.lr <= 1.0) {
            anyhow::bail!("--lr {}: allowed above 0 up to 1", a.lr);
        }
        let how = pocusd::train::adapt::SelfTraining {
            train: &cfg.raw.train,
            clahe: cfg.preprocess.clahe,
            epochs: a.epochs,
            lr: a.lr,
            post: cfg.postprocess,
            clahe_threads: super::clahe_threads(cfg),
            min_frames: 1,
        };
        let work = a.out.with_extension("self-training");
        Some(
            pocusd::train::adapt::self_train(&r.out, &frames, &work, &a.out, &how, &mut progress)
                .with_context(|| format!("self-training {}", a.out.display()))?,
        )
    } else {
        None
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bn_stats": r, "self_training": st})
        );
    } else {
        println!(
            "{}: {} batch norms re-estimated on {} images ({} skipped) in {:.1} s; mean shift {:.3} standard deviations",
            r.out.display(),
            r.batch_norms,
            r.frames,
            r.skipped,
            r.seconds,
            r.shift
        );
        if let Some(st) = &st {
            println!(
                "{}: then self-trained {} epochs on the {} of {} images the gate marked ok ({:.0} s)",
                st.out.display(),
                st.epochs,
                st.pseudo_labels,
                st.frames,
                st.seconds
            );
        }
    }
    Ok(())
}

#[cfg(feature = "train")]
fn cmd_unfold(a: &UnfoldArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| pocusd::train::trainer::unfolded_path(&a.model));
    let mut progress = pocusd::train::trainer::ConsoleProgress::new();
    let r = pocusd::train::trainer::unfold_with_data(&a.model, &a.data, &out, &mut progress)
        .with_context(|| format!("unfolding {}", a.model.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "wrote {}: {} batch norms with statistics of {} images; folds back to {} within {:.1e}",
            r.out.display(),
            r.batch_norms,
            r.images,
            r.model.display(),
            r.fold_difference
        );
    }
    Ok(())
}

fn store_of(cfg: &Config) -> pocusd::versions::Store {
    let state = pocusd::daemon::store::resolve_state_dir(&cfg.storage);
    pocusd::versions::Store::new(cfg.loop_.models_dir(&state))
}

fn cmd_list(cfg: &Config, a: &ListArgs) -> anyhow::Result<()> {
    let store = store_of(cfg);
    let versions = store.versions()?;
    let current = versions.iter().find(|v| v.current).map(|v| v.version);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "models_dir": store.dir(),
                "current": current,
                "versions": versions,
            })
        );
        return Ok(());
    }
    if versions.is_empty() {
        println!(
            "no model versions in {} yet (`pocusd loop nightly` makes them)",
            store.dir().display()
        );
        return Ok(());
    }
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "  {:>7}  {:<8}  {:<24}  {:<17}  {:>9}  {:>9}  {:>9}  {:>9}",
        "version", "sha256", "time", "kind", "site dice", "site err", "test dice", "test err"
    );
    for v in &versions {
        let site = v.scores.and_then(|s| s.site);
        let test = v.scores.and_then(|s| s.test);
        println!(
            "{} {:>7}  {:<8}  {:<24}  {:<17}  {:>9}  {:>9}  {:>9}  {:>9}",
            if v.current { "*" } else { " " },
            v.version,
            &v.sha256[..8.min(v.sha256.len())],
            v.time.get(..19).unwrap_or(&v.time),
            match v.adaptation {
                Some(a) => format!("{} {}", v.kind.as_str(), a.as_str()),
                None => v.kind.as_str().to_string(),
            },
            f(site.and_then(|s| s.dice)),
            f(site.and_then(|s| s.error)),
            f(test.and_then(|s| s.dice)),
            f(test.and_then(|s| s.error)),
        );
    }
    Ok(())
}

fn cmd_rollback(cfg: &Config, a: &RollbackArgs) -> anyhow::Result<()> {
    if a.offline {
        let store = store_of(cfg);
        let v = store.rollback_target(a.version)?;
        // The file must still be a model this build runs.
        LoadedModel::load(&v.model, &cfg.model.overrides)?;
        store.rollback(
            &v,
            &format!(
                "rollback to version {} (pocusd models rollback --offline)",
                v.version
            ),
        )?;
        println!(
            "version {} is current ({}); the daemon starts on it next time",
            v.version,
            store.current_path().display()
        );
        return Ok(());
    }
    let session = a.session_bus || cfg.dbus.bus == pocusd::config::Bus::Session;
    let arg = a.version.map_or(-1, |v| v as i32);
    let now = pocusd::daemon::status::with_daemon(session, |p| Box::pin(p.rollback_model(arg)))
        .map_err(|e| e.context("rollback not done (with no daemon running, use --offline)"))?;
    println!("version {now} is current and running");
    Ok(())
}

fn cmd_meta(cfg: &Config, a: &MetaArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.model)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.model.display()))?;
    let unset: Vec<String> = a.unset.iter().map(|k| full_key(k)).collect();
    let (bytes, written) = if a.set.is_empty() && unset.is_empty() {
        (bytes, None)
    } else {
        let new = onnx_file::rewrite_metadata(&bytes, &a.set, &unset)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
        // The engine must accept the result (metadata values, probe run) before it is written.
        let target = a.out.clone().unwrap_or_else(|| a.model.clone());
        LoadedModel::from_bytes(&new, &target, &cfg.model.overrides).map_err(|e| {
            anyhow::anyhow!("the rewritten model would be refused ({e}); nothing written")
        })?;
        write_atomic(&target, &new)?;
        (new, Some(target))
    };
    let meta =
        onnx_file::metadata(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let sha = infer::sha256_hex(&bytes);
    if a.json {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        println!(
            "{}",
            serde_json::json!({"model": written.as_ref().unwrap_or(&a.model), "sha256": sha, "metadata": m})
        );
    } else {
        if let Some(t) = &written {
            println!("wrote {} (sha256 {sha})", t.display());
        }
        for (k, v) in &meta {
            println!("{k} = {v}");
        }
    }
    Ok(())
}
