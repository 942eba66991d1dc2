//! The daemon's state folder: the measurement log (one JSON-lines file per UTC day under `log/`),
//! snapshots (one folder each under `snapshots/`), and retention for both (`storage.max_days`,
//! `storage.max_mb`, oldest first). The log is written by its own thread behind a bounded queue,
//! so a slow or full disk costs dropped log lines (counted and reported), never pipeline time.
//! Folders are created mode 0750: snapshots can show patient names burnt into the scanner's
//! screen. Must not depend on the pipeline or D-Bus.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::StorageConfig;

/// The state folder to use: `storage.dir`, else `$STATE_DIRECTORY` (systemd's StateDirectory=),
/// else /var/lib/pocusd for root, else `$XDG_STATE_HOME/pocusd` or ~/.local/state/pocusd.
pub fn resolve_state_dir(cfg: &StorageConfig) -> PathBuf {
    if let Some(d) = &cfg.dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'; the first is ours.
        let s = d.to_string_lossy();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    // SAFETY-free check of the effective uid through /proc (no libc dependency).
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/pocusd");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(x).join("pocusd");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/pocusd")
}

/// Creates `path` and its parents with mode 0750.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o750).create(path)
}

pub use crate::clock::{rfc3339_us, utc_parts};

/// What retention removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Retention {
    pub removed: Vec<PathBuf>,
    pub kept_bytes: u64,
}

fn tree_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Applies retention to `root/log/*.jsonl` and `root/snapshots/*`: removes entries older than
/// `max_days`, then the oldest until everything fits in `max_mb`. `keep` (today's log) is never
/// removed. Entries are ordered by modification time.
pub fn enforce_retention(
    root: &Path,
    max_days: u64,
    max_mb: u64,
    keep: Option<&Path>,
    now: SystemTime,
) -> Retention {
    let mut entries: Vec<(SystemTime, u64, Vec<PathBuf>)> = Vec::new();
    for sub in ["log", "snapshots"] {
        let Ok(rd) = std::fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if keep.is_some_and(|k| k == p) {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            entries.push((m.modified().unwrap_or(UNIX_EPOCH), tree_size(&p), vec![p]));
        }
    }
    let keep_bytes = keep.map(tree_size).unwrap_or(0);
    prune(entries, keep_bytes, max_days, max_mb, now)
}

/// Retention's one rule: of `entries` (modification time, bytes, paths removed together), those
/// older than `max_days` go, then the oldest until they and `other_bytes` fit in `max_mb`.
fn prune(
    mut entries: Vec<(SystemTime, u64, Vec<PathBuf>)>,
    other_bytes: u64,
    max_days: u64,
    max_mb: u64,
    now: SystemTime,
) -> Retention {
    entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    let mut total: u64 = entries.iter().map(|e| e.1).sum::<u64>() + other_bytes;
    let limit = max_mb.saturating_mul(1024 * 1024);
    let max_age = Duration::from_secs(max_days.saturating_mul(86_400));
    let mut out = Retention::default();
    for (mtime, size, paths) in entries {
        let too_old = now.duration_since(mtime).is_ok_and(|age| age > max_age);
        if !too_old && total <= limit {
            continue;
        }
        let mut removed = true;
        for path in paths {
            let res = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Ok(()) => out.removed.push(path),
                Err(_) => removed = false,
            }
        }
        if removed {
            total = total.saturating_sub(size);
        }
    }
    out.kept_bytes = total;
    out
}

/// Applies retention to the unlabelled frames in `dir` (`NAME.png` with its `NAME.json`, one
/// entry per name, removed together): entries older than `max_days`, then the oldest until the
/// folder fits in `max_mb`.
pub fn enforce_frame_retention(
    dir: &Path,
    max_days: u64,
    max_mb: u64,
    now: SystemTime,
) -> Retention {
    let mut by_name: std::collections::BTreeMap<String, (SystemTime, u64, Vec<PathBuf>)> =
        Default::default();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let (Some(stem), Ok(m)) = (p.file_stem(), e.metadata()) else {
                continue;
            };
            if !m.is_file() || stem.to_string_lossy().starts_with('.') {
                continue;
            }
            let entry = by_name
                .entry(stem.to_string_lossy().into_owned())
                .or_insert((UNIX_EPOCH, 0, Vec::new()));
            entry.0 = entry.0.max(m.modified().unwrap_or(UNIX_EPOCH));
            entry.1 += m.len();
            entry.2.push(p);
        }
    }
    prune(by_name.into_values().collect(), 0, max_days, max_mb, now)
}

/// Counters of the measurement log.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub written: AtomicU64,
    /// Lines not written: the queue was full or the disk refused them.
    pub lost: AtomicU64,
    /// The last write error, until reported.
    pub last_error: Mutex<Option<String>>,
}

/// Opens a day file for appending, first cutting a torn last line (a crash or a full disk in an
/// earlier run) back to the last newline; returns the file and its length of whole lines.
fn open_whole(path: &Path) -> std::io::Result<(File, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((f, 0));
    }
    // Look back at most 1 MB for the last newline.
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let whole = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None => start,
    };
    if whole != len {
        f.set_len(whole)?;
    }
    Ok((f, whole))
}

/// Whether `path` still names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The measurement log: one JSON object per line, per UTC day.
#[derive(Debug)]
pub struct MeasurementLog {
    tx: Option<SyncSender<(i64, String)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub counters: Arc<LogCounters>,
}

/// How the log thread applies retention.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub root: PathBuf,
    pub max_days: u64,
    pub max_mb: u64,
}

impl MeasurementLog {
    /// Starts the writer thread. Never fails: an unwritable folder shows up as lost lines and an error.
    pub fn start(settings: LogSettings) -> Self {
        let (tx, rx) = sync_channel::<(i64, String)>(1024);
        let counters = Arc::new(LogCounters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("pocusd-log".into())
            .spawn(move || {
                // The open day file and the length of its whole lines.
                let mut current: Option<(String, File, u64)> = None;
                let mut since_retention = 0u32;
                // Faults are reported on entering the failing state and on leaving it (with the
                // count of lines lost meanwhile), not once per line.
                let mut failing = false;
                let mut lost_here = 0u64;
                let report = |msg: String| {
                    *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                };
                let fail = |e: String, failing: &mut bool, lost_here: &mut u64| {
                    c.lost.fetch_add(1, Ordering::Relaxed);
                    *lost_here += 1;
                    if !*failing {
                        *failing = true;
                        report(e);
                    }
                };
                for (time_us, line) in rx {
                    let (y, m, d, ..) = utc_parts(time_us.div_euclid(1_000_000));
                    let day = format!("{y:04}-{m:02}-{d:02}");
                    // A day file that was removed or replaced under us (the state folder deleted
                    // or unmounted) would swallow lines unseen: reopen by name instead.
                    if let Some((cur, file, _)) = current.as_ref() {
                        let path = settings.root.join("log").join(format!("{cur}.jsonl"));
                        if !same_file(file, &path) {
                            current = None;
                        }
                    }
                    if current.as_ref().is_none_or(|(cur, ..)| *cur != day) {
                        let dir = settings.root.join("log");
                        let path = dir.join(format!("{day}.jsonl"));
                        // The state folder itself is never re-created here: gone means removed
                        // or unmounted, and a new folder would put the log on the wrong disk.
                        if !settings.root.is_dir() {
                            current = None;
                            fail(
                                format!(
                                    "the state folder {} is gone (removed or unmounted); measurements are not logged until it is back",
                                    settings.root.display()
                                ),
                                &mut failing,
                                &mut lost_here,
                            );
                            continue;
                        }
                        match create_private_dir(&dir).and_then(|_| open_whole(&path)) {
                            Ok((f, len)) => {
                                current = Some((day, f, len));
                                since_retention = u32::MAX;
                            }
                            Err(e) => {
                                fail(
                                    format!("cannot open {}: {e}", path.display()),
                                    &mut failing,
                                    &mut lost_here,
                                );
                                continue;
                            }
                        }
                    }
                    let Some((day, file, whole_len)) = current.as_mut() else {
                        continue;
                    };
                    // One write of the whole line; a partial one (full disk) is cut back to the
                    // last whole line, so the next line never lands on a torn one.
                    let written = file
                        .metadata()
                        .and_then(|m| {
                            if m.len() != *whole_len {
                                file.set_len(*whole_len)?;
                            }
                            file.write_all(line.as_bytes())
                        });
                    match written {
                        Ok(()) => {
                            *whole_len += line.len() as u64;
                            c.written.fetch_add(1, Ordering::Relaxed);
                            if failing {
                                failing = false;
                                report(format!(
                                    "the measurement log is written again ({lost_here} lines were lost)"
                                ));
                                lost_here = 0;
                            }
                        }
                        Err(e) => {
                            let _ = file.set_len(*whole_len);
                            fail(
                                format!("cannot append to the measurement log: {e}"),
                                &mut failing,
                                &mut lost_here,
                            );
                        }
                    }
                    since_retention = since_retention.saturating_add(1);
                    if since_retention >= 1000 {
                        since_retention = 0;
                        let keep = settings.root.join("log").join(format!("{day}.jsonl"));
                        enforce_retention(
                            &settings.root,
                            settings.max_days,
                            settings.max_mb,
                            Some(&keep),
                            SystemTime::now(),
                        );
                    }
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            thread,
            counters,
        }
    }

    /// Queues one record (a JSON object) stamped `time_us`; never blocks.
    pub fn append(&self, time_us: i64, record: &serde_json::Value) {
        let mut line = record.to_string();
        line.push('\n');
        match self.tx.as_ref().map(|tx| tx.try_send((time_us, line))) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_))) | Some(Err(TrySendError::Disconnected(_))) | None => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The last write error, once.
    pub fn take_error(&self) -> Option<String> {
        self.counters
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Flushes the queue and stops the thread.
    pub fn close(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_one_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let now_us = crate::clock::realtime_us();
        let (y, m, d, ..) = utc_parts(now_us.div_euclid(1_000_000));
        let log_dir = dir.path().join("log");
        std::fs::create_dir_all(&log_dir).unwrap();
        let path = log_dir.join(format!("{y:04}-{m:02}-{d:02}.jsonl"));
        // What a full disk left behind: a whole line, then a cut one.
        std::fs::write(&path, "{\"seq\":1}\n{\"calibration\":{\"kin").unwrap();
        let log = MeasurementLog::start(LogSettings {
            root: dir.path().to_path_buf(),
            max_days: 365,
            max_mb: 1000,
        });
        log.append(now_us, &serde_json::json!({"seq": 2}));
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"seq\":1}\n{\"seq\":2}\n");
    }

    #[test]
    fn unlabelled_frames_go_oldest_first_with_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mb = vec![0u8; 600 * 1024];
        for name in ["a", "b", "c"] {
            std::fs::write(d.join(format!("{name}.png")), &mb).unwrap();
            std::fs::write(d.join(format!("{name}.json")), b"{}").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // 1.8 MB in a 1 MB cap: the two oldest go, each with its record.
        let r = enforce_frame_retention(d, 365, 1, SystemTime::now());
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["c.json", "c.png"], "{r:?}");
        assert_eq!(r.removed.len(), 4);
        // Older than max_days: gone whatever the size.
        let later = SystemTime::now() + Duration::from_secs(3 * 86_400);
        enforce_frame_retention(d, 2, 1000, later);
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc_parts(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc_parts(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc_parts(1_796_083_199), (2026, 11, 30, 23, 59, 59));
        assert_eq!(rfc3339_us(1_500_000), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn retention_removes_old_then_oldest_until_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("log")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/a")).unwrap();
        let now = SystemTime::now();
        let mb = vec![0u8; 1024 * 1024];
        let set = |p: &Path, age_days: u64| {
            let f = File::options().write(true).open(p).unwrap();
            f.set_modified(now - Duration::from_secs(age_days * 86_400 + 60))
                .unwrap();
        };
        for (name, age) in [
            ("old.jsonl", 40),
            ("b.jsonl", 3),
            ("c.jsonl", 2),
            ("today.jsonl", 0),
        ] {
            let p = root.join("log").join(name);
            std::fs::write(&p, &mb).unwrap();
            set(&p, age);
        }
        std::fs::write(root.join("snapshots/a/frame.png"), &mb).unwrap();
        let keep = root.join("log/today.jsonl");
        // 5 MB in all; at most 30 days and 3 MB: old (age) goes, then the oldest of the rest (b).
        let r = enforce_retention(root, 30, 3, Some(&keep), now);
        let names: Vec<String> = r
            .removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["old.jsonl", "b.jsonl"], "{r:?}");
        assert!(keep.exists() && root.join("log/c.jsonl").exists());
        assert_eq!(r.kept_bytes, 3 * 1024 * 1024);
        // Tighter: everything but today's log goes, however new.
        let r = enforce_retention(root, 30, 1, Some(&keep), now);
        assert_eq!(r.removed.len(), 2, "{r:?}");
        assert!(keep.exists());
    }

    #[test]
    fn log_lines_land_in_a_file_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let log = MeasurementLog::start(LogSettings {
            root: dir.path().to_path_buf(),
            max_days: 30,
            max_mb: 100,
        });
        log.append(0, &serde_json::json!({"seq": 1}));
        log.append(86_400_000_000, &serde_json::json!({"seq": 2}));
        log.close();
        let a = std::fs::read_to_string(dir.path().join("log/1970-01-01.jsonl")).unwrap();
        let b = std::fs::read_to_string(dir.path().join("log/1970-01-02.jsonl")).unwrap();
        assert_eq!(a, "{\"seq\":1}\n");
        assert_eq!(b, "{\"seq\":2}\n");
    }

    #[test]
    fn a_vanished_state_folder_loses_lines_until_it_is_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        std::fs::create_dir(&root).unwrap();
        let log = MeasurementLog::start(LogSettings {
            root: root.clone(),
            max_days: 30,
            max_mb: 100,
        });
        let c = log.counters.clone();
        let settle = |n: u64| {
            let t = std::time::Instant::now();
            while c.written.load(Ordering::Relaxed) + c.lost.load(Ordering::Relaxed) < n {
                assert!(
                    t.elapsed().as_secs() < 20,
                    "the log thread did not take {n} lines"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        log.append(0, &serde_json::json!({"seq": 1}));
        settle(1);
        std::fs::remove_dir_all(&root).unwrap();
        for i in 2..5 {
            log.append(0, &serde_json::json!({"seq": i}));
        }
        settle(4);
        assert_eq!(
            c.lost.load(Ordering::Relaxed),
            3,
            "lines went to the deleted file"
        );
        let e = log.take_error().unwrap();
        assert!(e.contains("is gone") && e.contains("state"), "{e}");
        assert!(!root.exists(), "the log re-created the state folder");
        std::fs::create_dir(&root).unwrap();
        log.append(0, &serde_json::json!({"seq": 5}));
        settle(5);
        let e = log.take_error().unwrap();
        assert!(e.contains("written again (3 lines were lost)"), "{e}");
        log.close();
        let text = std::fs::read_to_string(root.join("log/1970-01-01.jsonl")).unwrap();
        assert_eq!(text, "{\"seq\":5}\n");
    }

    #[test]
    fn an_unwritable_folder_loses_lines_without_blocking() {
        let log = MeasurementLog::start(LogSettings {
            root: PathBuf::from("/proc/pocusd-cannot-write-here"),
            max_days: 30,
            max_mb: 100,
        });
        for i in 0..5 {
            log.append(0, &serde_json::json!({"seq": i}));
        }
        let c = log.counters.clone();
        log.close();
        assert_eq!(c.written.load(Ordering::Relaxed), 0);
        assert_eq!(c.lost.load(Ordering::Relaxed), 5);
    }
}
