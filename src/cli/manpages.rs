//! Manual pages from the clap definitions (clap_mangen): `pocusd.1` and one page per subcommand
//! at any depth (`pocusd-run.1`, `pocusd-loop-nightly.1`), so the pages can never drift from the
//! flags. The top page gains the sections an administrator looks for (files, environment, exit
//! status). Writes only into the folder it is given; reads no configuration.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The manual every page belongs to (the centre of the page footer/header).
const MANUAL: &str = "pocusd manual";

/// Roff for the top page's extra sections; plain text with the few requests man(7) knows.
const TOP_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/pocusd/pocusd.toml\fR
The system configuration (a conffile: package upgrades keep your edits). Every key with its default
is in the file as a comment; \fBpocusd config check\fR prints the effective values.
.TP
\fI/var/lib/pocusd\fR
The daemon's state: \fIlog/\fR (measurement log), \fIsnapshots/\fR, \fIlabelled/\fR, \fImodels/\fR
(model versions; \fIcurrent.onnx\fR is the model in use), \fIruns/\fR, \fItls/\fR.
.TP
\fI/usr/share/pocusd/models\fR
The shipped models and their README (training data, licences, scores).
.TP
\fI/usr/lib/systemd/system/pocusd.service\fR, \fIpocusd\-train.service\fR, \fIpocusd\-train.timer\fR
The daemon and the nightly retraining.
.SH ENVIRONMENT
.TP
\fBPOCUSD__SECTION__KEY\fR
Overrides one configuration key, e.g. \fBPOCUSD__SOURCE__SPEC=demo\fR; layered over the files.
.TP
\fBPOCUSD_DATA\fR
The folder of real datasets read by training and evaluation commands.
.SH EXIT STATUS
0 on success; 1 on an error (one line on stderr naming it); 2 for a usage error; 78 for a
configuration error (systemd does not restart the daemon on it).
.SH SEE ALSO
\fBsystemctl\fR(1), \fBgdbus\fR(1); the interface \fI/usr/share/dbus\-1/interfaces/org.pocusd.Daemon1.xml\fR;
\fI/usr/share/doc/pocusd/\fR.
"#;

/// Writes every page into `dir` (created when missing) and returns their paths.
pub fn write_all(root: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut root = root.disable_help_subcommand(true);
    // Builds the display names (`pocusd-run`) of every subcommand.
    root.build();
    let mut written = Vec::new();
    write_page(&root, dir, true, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    dir: &Path,
    top: bool,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual(MANUAL)
        .source(format!("pocusd {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page).context("rendering a manual page")?;
    if top {
        page.extend_from_slice(TOP_EXTRA.as_bytes());
    } else {
        writeln!(page, ".SH SEE ALSO\n\\fBpocusd\\fR(1)")?;
    }
    let path = dir.join(man.get_filename());
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false, written)?;
    }
    Ok(())
}
