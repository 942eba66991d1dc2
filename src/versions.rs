//! Model versions on the cart: the `models_dir` folder (`[loop] models_dir`, default
//! `STATE/models`) holds every promoted model as `NNNN-<sha8>.onnx`, the append-only record
//! `history.jsonl` (one JSON object per nightly run, promotion, base import or rollback) and
//! `current.onnx`, a copy of the current version, which the daemon loads at start. The current
//! version is the one named by the last record that made a version current (a promotion, a
//! rollback or the import of the base model). Files are written whole or not at all
//! (`files::write_atomic`); a history line is appended with one write and flushed to disk. Must
//! not depend on burn, tract, the daemon or D-Bus.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The history file's name in `models_dir`.
pub const HISTORY: &str = "history.jsonl";
/// The copy of the current version the daemon loads at start.
pub const CURRENT: &str = "current.onnx";

#[derive(Debug, Error)]
pub enum VersionError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] crate::files::WriteError),
    #[error("{} line {line} is not a history record ({message}); fix or remove that line", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("no model version {0} in the history (see `pocusd models list`)")]
    NoSuchVersion(u32),
    #[error("{0}")]
    Refused(String),
}

/// One model's scores on one data set: `dice` and `error` (the median relative thickness error
/// for aponeurosis models, the mean relative circumference error for region models; fractions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub dice: Option<f64>,
    pub error: Option<f64>,
    /// Images scored.
    pub images: usize,
    /// Region models on a test set with pixel sizes: the mean absolute circumference error, mm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_mm: Option<f64>,
}

/// The quality gate's verdicts on site frames without labels, counting only evidence that does not
/// come from the model's own confidence (`eval::evidence_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EvidenceScore {
    /// Frames scored.
    pub frames: usize,
    /// Frames whose verdict is `ok` leaving out `low_confidence` (and `jump`: the frames are a
    /// thinned sample, not a stream): the geometry holds and the mirrored frame agrees.
    pub ok: usize,
    /// Frames whose mirrored copy gives a number within `[quality] mirror_tolerance`.
    pub mirror_agrees: usize,
    /// Mean |number - mirrored number| / number over the frames with both.
    pub mirror_diff_mean: Option<f64>,
    /// Frames the model's own confidence passes (reported; never counted for promotion).
    pub confident: usize,
    /// A candidate's score only, against the current model on the same frames: frames ok for
    /// the candidate and not for the current model (`gained`), and the reverse (`lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gained: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<usize>,
}

/// How much lower the mean mirrored-frame difference must be to count as better evidence when
/// two models pass the gate on as many frames (a tenth: below that it is noise).
pub const MIRROR_IMPROVEMENT: f64 = 0.9;

impl EvidenceScore {
    /// Whether this is better evidence than `other` on the same frames. More frames ok counts
    /// only when it is more than chance: with the frames compared one by one (`gained`, `lost`),
    /// gained - lost >= [`EVIDENCE_Z`] x sqrt(gained + lost) (a one-sided sign test at about 5 %;
    /// on group-out, 16 -> 19 frames ok of 36, 4 gained and 1 lost, came with a worse model);
    /// without them, simply more frames ok. Otherwise, as many frames ok (a gain short of that
    /// proves nothing either way) and a mean mirrored-frame difference under
    /// [`MIRROR_IMPROVEMENT`] of `other`'s. The model's own confidence plays no part.
    pub fn improves_on(&self, other: &EvidenceScore) -> bool {
        let more = match (self.gained, self.lost) {
            (Some(g), Some(l)) => g > l && (g - l) as f64 >= EVIDENCE_Z * ((g + l) as f64).sqrt(),
            _ => self.ok > other.ok,
        };
        if more {
            return true;
        }
        if self.ok != other.ok {
            return false;
        }
        match (self.mirror_diff_mean, other.mirror_diff_mean) {
            (Some(a), Some(b)) => a < MIRROR_IMPROVEMENT * b,
            _ => false,
        }
    }

    /// Records `gained` and `lost` against `other`'s per-frame verdicts (`ok` of each frame
    /// both scored; a frame one of them skipped counts for neither).
    pub fn compare_frames(&mut self, mine: &[Option<bool>], other: &[Option<bool>]) {
        let pairs = mine.iter().zip(other).filter_map(|(a, b)| a.zip(*b));
        let (mut gained, mut lost) = (0, 0);
        for (a, b) in pairs {
            gained += usize::from(a && !b);
            lost += usize::from(b && !a);
        }
        self.gained = Some(gained);
        self.lost = Some(lost);
    }
}

/// How many standard deviations of the sign test a gain in frames ok must reach (one-sided,
/// about 5 %).
pub const EVIDENCE_Z: f64 = 1.645;

/// A model's scores on the site-validation images and on the locked test set (if any); for an
/// adaptation without labels, on the project's phantom set and the gate's evidence on held-back
/// site frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub site: Option<Score>,
    pub test: Option<Score>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phantom: Option<Score>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<EvidenceScore>,
}

/// How many images a run saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DataCounts {
    pub site_images: usize,
    pub site_train: usize,
    pub site_val: usize,
    pub base_images: usize,
    pub test_images: usize,
    /// Unlabelled site frames: those the model adapted to, and those held back to judge it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlabelled_adapt: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlabelled_held_back: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phantom_images: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// How a nightly run changed the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adaptation {
    /// Fine-tuned on the site's accepted labels.
    Labelled,
    /// Batch-norm statistics re-estimated on the site's unlabelled frames.
    BnStats,
    /// The batch-norm statistics, then fine-tuning on the unlabelled frames the gate marked ok
    /// with the model's own masks.
    SelfTraining,
}

impl Adaptation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Adaptation::Labelled => "labelled",
            Adaptation::BnStats => "bn-stats",
            Adaptation::SelfTraining => "self-training",
        }
    }
}

/// What a history record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The model the cart ran before any promotion, imported as version 0.
    Base,
    /// A nightly run, promoted or not.
    Nightly,
    /// A rollback to an earlier version.
    Rollback,
}

impl Kind {
    /// The name written in the history (and shown by `models list` and the `Training` property).
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Base => "base",
            Kind::Nightly => "nightly",
            Kind::Rollback => "rollback",
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// UTC, RFC 3339.
    pub time: String,
    pub kind: Kind,
    /// Whether this record made `version` current (always for base and rollback records).
    pub promoted: bool,
    pub reason: String,
    /// The version made current, or, for a nightly run not promoted, `None`.
    pub version: Option<u32>,
    /// The sha256 of the model this record is about (the candidate of a nightly run).
    pub sha256: Option<String>,
    /// The version file (`models_dir/NNNN-<sha8>.onnx`), when there is one.
    pub model: Option<PathBuf>,
    /// The version that was current before this record.
    pub parent: Option<u32>,
    #[serde(default)]
    pub data: DataCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Scores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Scores>,
    /// The training run folder of a nightly run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// A nightly run's kind of adaptation (absent in records written before there were two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<Adaptation>,
}

impl Record {
    /// A record stamped now.
    pub fn new(kind: Kind, promoted: bool, reason: impl Into<String>) -> Self {
        Self {
            time: crate::clock::rfc3339_us(crate::clock::realtime_us()),
            kind,
            promoted,
            reason: reason.into(),
            version: None,
            sha256: None,
            model: None,
            parent: None,
            data: DataCounts::default(),
            current: None,
            candidate: None,
            run: None,
            adaptation: None,
        }
    }
}

/// A model version as `pocusd models list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    pub version: u32,
    pub sha256: String,
    pub model: PathBuf,
    pub time: String,
    pub kind: Kind,
    pub parent: Option<u32>,
    pub reason: String,
    pub current: bool,
    /// The scores the version had when it was made current (its own, as the candidate).
    pub scores: Option<Scores>,
    /// How a nightly version was made (`labelled`, `bn-stats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<Adaptation>,
}

/// The versions folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

pub use crate::files::sha256_hex;

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY)
    }

    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// Every record, oldest first (an absent history is empty). A torn last line (a crash in
    /// the middle of an append) is ignored; any other bad line is an error naming it.
    pub fn history(&self) -> Result<Vec<Record>, VersionError> {
        let path = self.history_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(VersionError::Read { path, source }),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => {
                    return Err(VersionError::Corrupt {
                        path,
                        line: i + 1,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Appends one record as one line, flushed to disk.
    pub fn append(&self, record: &Record) -> Result<(), VersionError> {
        let path = self.history_path();
        let werr = |source| VersionError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(werr)?;
        let mut line = serde_json::to_string(record).map_err(|e| werr(std::io::Error::other(e)))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(werr)?;
        // A torn line left by a crash would glue onto this one: start on a fresh line.
        let len = f.metadata().map_err(werr)?.len();
        if len > 0 {
            let text = std::fs::read(&path).map_err(werr)?;
            if text.last() != Some(&b'\n') {
                line.insert(0, '\n');
            }
        }
        f.write_all(line.as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)
    }

    /// The record that made the current version current, if any.
    pub fn current_record(&self) -> Result<Option<Record>, VersionError> {
        Ok(current_of(&self.history()?).cloned())
    }

    /// The versions made current at some point (one row per version, its first record), with
    /// the current one marked.
    pub fn versions(&self) -> Result<Vec<Version>, VersionError> {
        let history = self.history()?;
        let current = current_of(&history).and_then(|r| r.version);
        let mut out: Vec<Version> = Vec::new();
        for r in &history {
            let (Some(v), Some(sha), Some(model)) = (r.version, &r.sha256, &r.model) else {
                continue;
            };
            if !r.promoted || r.kind == Kind::Rollback || out.iter().any(|x| x.version == v) {
                continue;
            }
            out.push(Version {
                version: v,
                sha256: sha.clone(),
                model: model.clone(),
                time: r.time.clone(),
                kind: r.kind,
                parent: r.parent,
                reason: r.reason.clone(),
                current: Some(v) == current,
                scores: r.candidate,
                adaptation: r.adaptation,
            });
        }
        Ok(out)
    }

    /// The next free version number.
    pub fn next_version(&self) -> Result<u32, VersionError> {
        Ok(self
            .history()?
            .iter()
            .filter_map(|r| r.version)
            .max()
            .map_or(0, |v| v + 1))
    }

    /// Writes `bytes` as version `version` (`NNNN-<sha8>.onnx`) and as `current.onnx`, both
    /// atomically; returns the version file. The caller appends the record afterwards: a crash
    /// before that leaves a stray file and the old history, whose current version is unchanged
    /// (the daemon's `current.onnx` may then be ahead of the history; [`Self::repair_current`]
    /// puts it back).
    pub fn install(&self, version: u32, bytes: &[u8]) -> Result<(PathBuf, String), VersionError> {
        let sha = sha256_hex(bytes);
        let file = self.dir.join(format!("{version:04}-{}.onnx", &sha[..8]));
        crate::files::write_atomic(&file, bytes)?;
        crate::files::write_atomic(&self.current_path(), bytes)?;
        Ok((file, sha))
    }

    /// Keeps the unfolded network of a version (`NNNN-<sha8>.bpk` beside its `.onnx`), from which
    /// the next fine-tuning starts exactly. Written before the version's record.
    pub fn install_unfolded(&self, version_file: &Path, bytes: &[u8]) -> Result<(), VersionError> {
        crate::files::write_atomic(&version_file.with_extension("bpk"), bytes)?;
        Ok(())
    }

    /// Makes `current.onnx` the current version's file again if it differs (after a crash
    /// between an install and its record). Returns whether it rewrote it.
    pub fn repair_current(&self) -> Result<bool, VersionError> {
        let Some(rec) = self.current_record()? else {
            return Ok(false);
        };
        let (Some(model), Some(sha)) = (&rec.model, &rec.sha256) else {
            return Ok(false);
        };
        let cur = self.current_path();
        let now = std::fs::read(&cur).ok().map(|b| sha256_hex(&b));
        if now.as_deref() == Some(sha.as_str()) {
            return Ok(false);
        }
        let bytes = std::fs::read(model).map_err(|source| VersionError::Read {
            path: model.clone(),
            source,
        })?;
        crate::files::write_atomic(&cur, &bytes)?;
        Ok(true)
    }

    /// The version a rollback goes to: `target`, or, when `None`, the parent of the current
    /// version (the one it replaced). Refuses the current version itself and unknown versions.
    pub fn rollback_target(&self, target: Option<u32>) -> Result<Version, VersionError> {
        let versions = self.versions()?;
        let current = versions.iter().find(|v| v.current);
        let want = match target {
            Some(v) => v,
            None => {
                let cur = current.ok_or_else(|| {
                    VersionError::Refused(
                        "no model version is current yet (no nightly run has promoted one)".into(),
                    )
                })?;
                cur.parent.ok_or_else(|| {
                    VersionError::Refused(format!(
                        "version {} has no previous version to roll back to",
                        cur.version
                    ))
                })?
            }
        };
        let v = versions
            .iter()
            .find(|v| v.version == want)
            .cloned()
            .ok_or(VersionError::NoSuchVersion(want))?;
        if v.current {
            return Err(VersionError::Refused(format!(
                "version {want} is already the current version"
            )));
        }
        Ok(v)
    }

    /// Rolls back to `v` (from [`Self::rollback_target`]): checks the file still has its
    /// sha256, rewrites `current.onnx` and records the rollback. Returns the bytes installed.
    pub fn rollback(&self, v: &Version, reason: &str) -> Result<Vec<u8>, VersionError> {
        let bytes = std::fs::read(&v.model).map_err(|source| VersionError::Read {
            path: v.model.clone(),
            source,
        })?;
        let sha = sha256_hex(&bytes);
        if sha != v.sha256 {
            return Err(VersionError::Refused(format!(
                "{} no longer has the sha256 recorded for version {} ({} recorded, {} found); not rolled back",
                v.model.display(),
                v.version,
                v.sha256,
                sha
            )));
        }
        let parent = self.current_record()?.and_then(|r| r.version);
        crate::files::write_atomic(&self.current_path(), &bytes)?;
        let mut r = Record::new(Kind::Rollback, true, reason);
        r.version = Some(v.version);
        r.sha256 = Some(sha);
        r.model = Some(v.model.clone());
        r.parent = parent;
        self.append(&r)?;
        Ok(bytes)
    }
}

/// The last record that made a version current.
fn current_of(history: &[Record]) -> Option<&Record> {
    history
        .iter()
        .rev()
        .find(|r| r.promoted && r.version.is_some())
}

/// A stable split of a data set by name: FNV-1a 64 of the name, mixed (splitmix64's finaliser,
/// since FNV's low bits barely change between `img001` and `img002`); the image goes to
/// validation when the hash modulo 1000 is below `fraction * 1000`. A growing set keeps its old
/// split.
pub fn in_validation(name: &str, fraction: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((h % 1000) as f64) < fraction * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promote(store: &Store, bytes: &[u8], kind: Kind) -> u32 {
        let v = store.next_version().unwrap();
        let parent = store.current_record().unwrap().and_then(|r| r.version);
        let (file, sha) = store.install(v, bytes).unwrap();
        let mut r = Record::new(kind, true, "test");
        r.version = Some(v);
        r.sha256 = Some(sha);
        r.model = Some(file);
        r.parent = parent;
        store.append(&r).unwrap();
        v
    }

    #[test]
    fn versions_promotions_and_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("models"));
        assert!(store.versions().unwrap().is_empty());
        assert!(store.rollback_target(None).is_err());
        assert_eq!(promote(&store, b"base", Kind::Base), 0);
        // A nightly run that was not promoted changes nothing.
        store
            .append(&Record::new(Kind::Nightly, false, "worse"))
            .unwrap();
        assert_eq!(promote(&store, b"one", Kind::Nightly), 1);
        assert_eq!(promote(&store, b"two", Kind::Nightly), 2);
        assert_eq!(std::fs::read(store.current_path()).unwrap(), b"two");
        let v = store.versions().unwrap();
        assert_eq!(v.iter().map(|x| x.version).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(v[2].current && !v[1].current);
        // Default rollback: to the parent.
        let t = store.rollback_target(None).unwrap();
        assert_eq!(t.version, 1);
        store.rollback(&t, "by test").unwrap();
        assert_eq!(std::fs::read(store.current_path()).unwrap(), b"one");
        assert_eq!(store.current_record().unwrap().unwrap().version, Some(1));
        // Rolled back to 1, whose parent is 0.
        assert_eq!(store.rollback_target(None).unwrap().version, 0);
        assert!(matches!(
            store.rollback_target(Some(1)),
            Err(VersionError::Refused(_))
        ));
        assert!(matches!(
            store.rollback_target(Some(9)),
            Err(VersionError::NoSuchVersion(9))
        ));
        // Forward again to 2 by number; a new promotion numbers on from the highest.
        let t = store.rollback_target(Some(2)).unwrap();
        store.rollback(&t, "forward").unwrap();
        assert_eq!(store.next_version().unwrap(), 3);
        // A tampered version file is refused.
        std::fs::write(&store.versions().unwrap()[0].model, b"changed").unwrap();
        let t = store.rollback_target(Some(0)).unwrap();
        assert!(store.rollback(&t, "x").is_err());
        assert_eq!(std::fs::read(store.current_path()).unwrap(), b"two");
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_the_next_append_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        promote(&store, b"base", Kind::Base);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(store.history_path())
            .unwrap();
        f.write_all(b"{\"time\":\"2026").unwrap();
        assert_eq!(store.history().unwrap().len(), 1);
        promote(&store, b"one", Kind::Nightly);
        // The torn line is now a whole bad line in the middle: named.
        let e = store.history().unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn repair_puts_current_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        promote(&store, b"base", Kind::Base);
        // Crash between install and record: current.onnx is ahead of the history.
        store.install(1, b"unrecorded").unwrap();
        assert!(store.repair_current().unwrap());
        assert_eq!(std::fs::read(store.current_path()).unwrap(), b"base");
        assert!(!store.repair_current().unwrap());
    }

    #[test]
    fn the_split_is_stable_and_near_its_fraction() {
        let names: Vec<String> = (0..2000).map(|i| format!("img{i:05}.png")).collect();
        let val = names.iter().filter(|n| in_validation(n, 0.2)).count();
        assert!((340..460).contains(&val), "{val} of 2000");
        // Consecutive names spread (FNV alone put 1 of the phantom's 24 names in validation).
        let max = names
            .chunks(25)
            .map(|c| c.iter().filter(|n| in_validation(n, 0.2)).count())
            .max()
            .unwrap();
        assert!(max <= 14, "{max} of 25 consecutive names");
        assert_eq!(in_validation("a.png", 0.2), in_validation("a.png", 0.2));
        assert!(!in_validation("a.png", 0.0));
        assert!(in_validation("a.png", 1.0));
    }
}
