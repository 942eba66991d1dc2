//! `pocusd models meta`: show or rewrite an ONNX model's `pocusd.*` metadata without touching its
//! graph or weights (the bytes of both are copied), e.g. to give a model trained before a key
//! existed its region-of-interest policy: `pocusd models meta M.onnx --set pocusd.roi=auto`.
//! The result must still load as a model, or nothing is written.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use pocusd::config::Config;
use pocusd::files::write_atomic;
use pocusd::infer::{self, onnx_file, LoadedModel};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Print a model's metadata, or rewrite it (--set/--unset) keeping graph and weights byte for byte.
    Meta(MetaArgs),
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
    }
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
