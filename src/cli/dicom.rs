//! `pocusd dicom send DIR... --to AET@HOST:PORT [--calling-aet AET]`: sends snapshot folders'
//! DICOM files (image.dcm, overlay.dcm, sr.dcm), or single .dcm files, to a PACS with C-STORE,
//! one association per folder, and prints what was stored.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use pocusd::config::{Config, DicomPeer};

#[derive(Subcommand, Debug)]
pub enum DicomCommand {
    /// Send snapshots to a PACS (C-STORE).
    Send(SendArgs),
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Snapshot folders (their .dcm files are sent, the report last) or .dcm files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The peer, AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242); default: [dicom] store.
    #[arg(long, value_name = "AET@HOST:PORT")]
    to: Option<String>,
    /// Our AE title; default: [dicom] calling_aet.
    #[arg(long, value_name = "AET")]
    calling_aet: Option<String>,
    /// Seconds to wait for the peer at each step.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

pub fn cmd_dicom(cfg: &Config, cmd: &DicomCommand) -> anyhow::Result<()> {
    let DicomCommand::Send(a) = cmd;
    let peer = match &a.to {
        Some(s) => DicomPeer::parse(s).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        None => cfg.dicom.store.clone().context(
            "no peer: give --to AET@HOST:PORT (or set [dicom] store in the configuration)",
        )?,
    };
    let calling = a.calling_aet.as_deref().unwrap_or(&cfg.dicom.calling_aet);
    pocusd::config::check_aet(calling).map_err(|e| anyhow::anyhow!("--calling-aet: {e}"))?;
    let mut groups: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for p in &a.inputs {
        if p.is_dir() {
            let files: Vec<PathBuf> = pocusd::dicom::FILES
                .iter()
                .map(|f| p.join(f))
                .filter(|f| f.is_file())
                .collect();
            if files.is_empty() {
                anyhow::bail!(
                    "{} holds no image.dcm, overlay.dcm or sr.dcm: is it a snapshot folder (STATE/snapshots/...) taken by this version?",
                    p.display()
                );
            }
            groups.push((p.display().to_string(), files));
        } else if p.is_file() {
            groups.push((p.display().to_string(), vec![p.clone()]));
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    let mut total = 0;
    for (name, files) in groups {
        let stored = pocusd::dicom::net::send_files(
            &peer,
            calling,
            &files,
            Duration::from_secs(a.timeout_s.max(1)),
        )
        .with_context(|| format!("sending {name}"))?;
        for s in &stored {
            println!(
                "stored {} ({}) at {peer}, status 0x{:04X}",
                s.path.display(),
                s.sop_instance_uid,
                s.status
            );
        }
        total += stored.len();
    }
    eprintln!("pocusd: {total} files stored at {peer}");
    Ok(())
}
