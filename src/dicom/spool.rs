//! The DICOM spool (`[dicom] store`): each snapshot's DICOM files wait in their own folder under
//! `STATE/dicom-spool` (linked or copied in whole, then renamed, so an entry is complete or absent)
//! until a sender thread has stored them at the peer; then the entry is removed. A peer that is
//! down means entries wait and are retried oldest first with backoff (1 s doubling to 30 s, or at
//! once when a new snapshot arrives); nothing is lost below `spool_max_mb`, and over it the oldest
//! entry is dropped and logged. An entry the peer refuses for good (a rejected SOP class, a
//! failure status) moves to `dicom-spool/failed/` and is logged, so it never blocks the rest.
//! Must not depend on the daemon, D-Bus or HTTP.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::DicomPeer;
use crate::slot::Slot;

/// The backoff between attempts while the peer is unreachable.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The spool: queue snapshots with [`Spool::enqueue`]; the sender thread does the rest.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    waiting: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    wake: Slot<()>,
    last_error: std::sync::Mutex<Option<String>>,
    /// When the peer last answered, CLOCK_REALTIME µs (0: not yet).
    last_answer_us: std::sync::atomic::AtomicI64,
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n != "failed" && e.path().is_dir()
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn dcm_files(entry: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(entry)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    // image, overlay, seg, sr: the report last, after what it references.
    v.sort_by_key(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            super::FILES
                .iter()
                .position(|f| *f == n)
                .unwrap_or(usize::MAX),
            n,
        )
    });
    v
}

impl Spool {
    /// Opens (creating) the spool folder; counts what already waits there from an earlier run.
    pub fn open(dir: PathBuf, max_mb: u64) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        // Half-written entries of a run that died mid-copy: their snapshots still hold the files.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let waiting = entries(&dir).len() as u64;
        Ok(Arc::new(Self {
            dir,
            max_bytes: max_mb.saturating_mul(1024 * 1024),
            waiting: AtomicU64::new(waiting),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            wake: Slot::new(),
            last_error: std::sync::Mutex::new(None),
            last_answer_us: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshots waiting to be sent.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Snapshots stored at the peer since start.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Snapshots dropped over the cap since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// When the peer last answered (an echo at start or a stored snapshot), CLOCK_REALTIME µs.
    pub fn last_answer_us(&self) -> Option<i64> {
        Some(self.last_answer_us.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    fn answered(&self) {
        self.last_answer_us
            .store(crate::clock::realtime_us(), Ordering::Relaxed);
    }

    /// Why the last attempt failed (`None` after a success).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues the `.dcm` files of `snapshot` (a snapshot folder) under its name.
    pub fn enqueue(&self, snapshot: &Path) -> std::io::Result<PathBuf> {
        let name = snapshot
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into());
        let stamp = crate::clock::realtime_us();
        let entry = self.dir.join(format!("{stamp:016}-{name}"));
        let tmp = self.dir.join(format!(".{stamp:016}-{name}.partial"));
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir_all(&tmp)?;
            for f in dcm_files(snapshot) {
                let Some(n) = f.file_name() else { continue };
                let to = tmp.join(n);
                if std::fs::hard_link(&f, &to).is_err() {
                    std::fs::copy(&f, &to)?;
                }
            }
            std::fs::rename(&tmp, &entry)
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.enforce_cap(&entry);
        self.wake.put(());
        Ok(entry)
    }

    /// Drops the oldest entries (never `keep`) while the spool is over its cap.
    fn enforce_cap(&self, keep: &Path) {
        let all = entries(&self.dir);
        let mut total: u64 = all.iter().map(|e| dir_bytes(e)).sum();
        for e in all {
            if total <= self.max_bytes {
                break;
            }
            if e == keep {
                continue;
            }
            let b = dir_bytes(&e);
            if std::fs::remove_dir_all(&e).is_ok() {
                total = total.saturating_sub(b);
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "pocusd: DICOM spool over dicom.spool_max_mb ({} MB): dropped the oldest waiting snapshot {} unsent",
                    self.max_bytes / (1024 * 1024),
                    e.display()
                );
            }
        }
    }

    /// Sends what waits, oldest first, until `stop`.
    pub fn run(
        self: Arc<Self>,
        peer: DicomPeer,
        calling_aet: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        stop: Arc<AtomicBool>,
    ) {
        // Whether the peer answers is known from the start (C-ECHO), not only at the first send.
        match super::worklist::echo(&peer, &calling_aet, Duration::from_secs(10), tls.as_ref()) {
            Ok(_) => self.answered(),
            Err(e) => {
                eprintln!("pocusd: DICOM: {e}; snapshots will wait in the spool until it answers");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        let mut backoff = RETRY_FIRST;
        while !stop.load(Ordering::Relaxed) {
            let Some(entry) = entries(&self.dir).into_iter().next() else {
                self.waiting.store(0, Ordering::Relaxed);
                let _ = self.wake.take_timeout(crate::publish::TICK * 5);
                continue;
            };
            let files = dcm_files(&entry);
            let result = if files.is_empty() {
                Ok(Vec::new())
            } else {
                super::net::send_files(
                    &peer,
                    &calling_aet,
                    &files,
                    Duration::from_secs(30),
                    tls.as_ref(),
                )
            };
            match result {
                Ok(stored) => {
                    let _ = std::fs::remove_dir_all(&entry);
                    self.waiting
                        .store(entries(&self.dir).len() as u64, Ordering::Relaxed);
                    self.sent.fetch_add(1, Ordering::Relaxed);
                    if self.last_error().is_some() {
                        eprintln!("pocusd: DICOM: {peer} reachable again; sending the spool");
                    }
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    self.answered();
                    eprintln!(
                        "pocusd: DICOM: stored {} files of {} at {peer} ({} waiting)",
                        stored.len(),
                        entry.display(),
                        self.waiting()
                    );
                    backoff = RETRY_FIRST;
                }
                Err(e) if e.transient() => {
                    let msg = e.to_string();
                    let first = self.last_error().as_deref() != Some(msg.as_str());
                    if first {
                        eprintln!(
                            "pocusd: DICOM: {msg}; {} snapshots wait in {}, retried with backoff",
                            self.waiting(),
                            self.dir.display()
                        );
                    }
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    // Wait, but wake early for a new snapshot (the peer may be back).
                    let mut waited = Duration::ZERO;
                    while waited < backoff && !stop.load(Ordering::Relaxed) {
                        if self.wake.take_timeout(crate::publish::TICK).is_some() {
                            break;
                        }
                        waited += crate::publish::TICK;
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    let failed = self.dir.join("failed");
                    let _ = std::fs::create_dir_all(&failed);
                    let to = failed.join(entry.file_name().unwrap_or_default());
                    let _ = std::fs::rename(&entry, &to);
                    self.waiting
                        .store(entries(&self.dir).len() as u64, Ordering::Relaxed);
                    eprintln!(
                        "pocusd: DICOM: {e}; the snapshot is kept in {} and not retried",
                        to.display()
                    );
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(root: &Path, name: &str, bytes: usize) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in super::super::FILES {
            std::fs::write(d.join(f), vec![0u8; bytes]).unwrap();
        }
        std::fs::write(d.join("frame.png"), b"not sent").unwrap();
        d
    }

    #[test]
    fn entries_are_whole_and_capped_oldest_first() {
        let t = tempfile::tempdir().unwrap();
        let spool = Spool::open(t.path().join("spool"), 1).unwrap();
        let a = spool.enqueue(&snapshot(t.path(), "a", 75_000)).unwrap();
        assert_eq!(dcm_files(&a).len(), 4, "only the .dcm files travel");
        let n = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        let names: Vec<String> = dcm_files(&a).iter().map(|p| n(p)).collect();
        assert_eq!(names, ["image.dcm", "overlay.dcm", "seg.dcm", "sr.dcm"]);
        let b = spool.enqueue(&snapshot(t.path(), "b", 75_000)).unwrap();
        assert_eq!(spool.waiting(), 2);
        // 1 MB cap: a third and fourth of 300 kB each push the oldest out.
        spool.enqueue(&snapshot(t.path(), "c", 75_000)).unwrap();
        let d = spool.enqueue(&snapshot(t.path(), "d", 75_000)).unwrap();
        assert_eq!(spool.dropped(), 1);
        assert!(!a.exists() && b.exists() && d.exists());
        assert_eq!(spool.waiting(), 3);
        // A new process counts what waits.
        let again = Spool::open(t.path().join("spool"), 1).unwrap();
        assert_eq!(again.waiting(), 3);
    }
}
