//! `pocusd dicom send DIR... --to AET@HOST:PORT [--calling-aet AET]`: sends snapshot folders'
//! DICOM files (image.dcm, overlay.dcm, seg.dcm, sr.dcm), or single .dcm files, to a PACS with
//! C-STORE, one association per folder, and prints what was stored. `pocusd dicom worklist`
//! prints today's scheduled US steps of this station from the Modality Worklist; `pocusd dicom
//! echo` checks a peer with C-ECHO.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use pocusd::config::{Config, DicomPeer};

#[derive(Subcommand, Debug)]
pub enum DicomCommand {
    /// Send snapshots to a PACS (C-STORE).
    Send(SendArgs),
    /// Print today's scheduled ultrasound steps of this station (Modality Worklist C-FIND).
    Worklist(WorklistArgs),
    /// Check a DICOM peer (C-ECHO).
    Echo(EchoArgs),
}

#[derive(Args, Debug)]
pub struct WorklistArgs {
    /// The worklist provider, AET@HOST:PORT; default: [dicom] worklist.
    #[arg(long, value_name = "AET@HOST:PORT")]
    from: Option<String>,
    /// Our AE title, also the Scheduled Station AE Title asked for; default: [dicom] calling_aet.
    #[arg(long, value_name = "AET")]
    calling_aet: Option<String>,
    /// The scheduled date, YYYYMMDD; default: today (UTC).
    #[arg(long, value_name = "YYYYMMDD")]
    date: Option<String>,
    /// Print a JSON array (keys: the DICOM attribute keywords, e.g. PatientID, AccessionNumber,
    /// ScheduledProcedureStepID).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the peer at each step.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// The peer, AET@HOST:PORT; default: [dicom] store.
    #[arg(long, value_name = "AET@HOST:PORT")]
    to: Option<String>,
    /// Our AE title; default: [dicom] calling_aet.
    #[arg(long, value_name = "AET")]
    calling_aet: Option<String>,
    /// Seconds to wait for the peer at each step.
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
}

/// Today's date (UTC) as YYYYMMDD.
pub fn today() -> String {
    let (y, m, d, ..) = pocusd::clock::utc_parts(pocusd::clock::realtime_us() / 1_000_000);
    format!("{y:04}{m:02}{d:02}")
}

/// The TLS client configuration of `[dicom] tls`, if on.
fn tls(cfg: &Config) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    cfg.dicom
        .tls
        .as_ref()
        .map(|t| {
            pocusd::dicom::net::tls_client_config(t).map_err(|e| anyhow::anyhow!("dicom.tls: {e}"))
        })
        .transpose()
}

fn calling<'a>(given: &'a Option<String>, cfg: &'a Config) -> anyhow::Result<&'a str> {
    let calling = given.as_deref().unwrap_or(&cfg.dicom.calling_aet);
    pocusd::config::check_aet(calling).map_err(|e| anyhow::anyhow!("--calling-aet: {e}"))?;
    Ok(calling)
}

fn cmd_worklist(cfg: &Config, a: &WorklistArgs) -> anyhow::Result<()> {
    let peer = match &a.from {
        Some(s) => DicomPeer::parse(s).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        None => cfg.dicom.worklist.clone().context(
            "no worklist provider: give --from AET@HOST:PORT (or set [dicom] worklist in the configuration)",
        )?,
    };
    let calling = calling(&a.calling_aet, cfg)?;
    let date = a.date.clone().unwrap_or_else(today);
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("--date {date:?}: write the date as YYYYMMDD, e.g. 20261203");
    }
    let items = pocusd::dicom::worklist::query(
        &peer,
        calling,
        calling,
        &date,
        Duration::from_secs(a.timeout_s.max(1)),
        tls(cfg)?.as_ref(),
    )
    .with_context(|| format!("asking the worklist {peer}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for i in &items {
            println!(
                "{} {}  {} ({})  accession {}  step {}  {}",
                i.scheduled_procedure_step_start_date,
                i.scheduled_procedure_step_start_time,
                i.patient_name,
                i.patient_id,
                i.accession_number,
                i.scheduled_procedure_step_id,
                i.requested_procedure_description
            );
        }
        eprintln!(
            "pocusd: {} scheduled US steps for station {calling} on {date} at {peer}",
            items.len()
        );
    }
    Ok(())
}

fn cmd_echo(cfg: &Config, a: &EchoArgs) -> anyhow::Result<()> {
    let peer = match &a.to {
        Some(s) => DicomPeer::parse(s).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        None => cfg.dicom.store.clone().context(
            "no peer: give --to AET@HOST:PORT (or set [dicom] store in the configuration)",
        )?,
    };
    let calling = calling(&a.calling_aet, cfg)?;
    let rtt = pocusd::dicom::worklist::echo(
        &peer,
        calling,
        Duration::from_secs(a.timeout_s.max(1)),
        tls(cfg)?.as_ref(),
    )
    .with_context(|| format!("C-ECHO to {peer}"))?;
    println!(
        "{peer} answered C-ECHO in {:.1} ms",
        rtt.as_secs_f64() * 1e3
    );
    Ok(())
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
    let a = match cmd {
        DicomCommand::Send(a) => a,
        DicomCommand::Worklist(a) => return cmd_worklist(cfg, a),
        DicomCommand::Echo(a) => return cmd_echo(cfg, a),
    };
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
                    "{} holds no image.dcm, overlay.dcm, seg.dcm or sr.dcm: is it a snapshot folder (STATE/snapshots/...) taken by this version?",
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
    let tls = tls(cfg)?;
    let mut total = 0;
    for (name, files) in groups {
        let stored = pocusd::dicom::net::send_files(
            &peer,
            calling,
            &files,
            Duration::from_secs(a.timeout_s.max(1)),
            tls.as_ref(),
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
