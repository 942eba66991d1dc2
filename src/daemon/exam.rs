//! Snapshots and the exam they belong to: `Snapshot()` and the viewer's button, the frames
//! `[loop] auto_queue` takes by themselves for review, `SetExam` (a new DICOM study), and the
//! thinned sample of streamed frames kept for adaptation without labels (`[loop]
//! unlabelled_per_hour`: the region of interest's pixels and the verdict, capped, never sent). A
//! snapshot is written whole or not at all (frame, mask, overlay, measurement.json and the DICOM
//! files, in a hidden folder renamed when complete), then queued for the PACS and the retention
//! enforced, off the supervisor's thread. Must not touch the models, the configuration or the
//! pipeline beyond asking it for the frame in hand.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dbus::Error as DbusError;
use super::pipeline::{Control, Processed};
use super::store;
use super::supervisor::{measurement, Supervisor};
use crate::postprocess::quality::Doubts;
use crate::publish::measurement::{Val, Values};

impl Supervisor {
    /// Whether this result should be queued for review by itself: `[loop] auto_queue` on, a
    /// doubtful verdict (`uncalibrated` alone is not doubt), and the hourly budget's spacing
    /// passed. Returns the reasons.
    pub(super) fn auto_queue_due(&mut self, r: &Processed) -> Option<Doubts> {
        if !self.cfg.loop_.auto_queue || r.analysis.doubt.is_empty() {
            return None;
        }
        let spacing = Duration::from_secs_f64(3600.0 / self.cfg.loop_.auto_queue_per_hour as f64);
        if self.last_auto_queue.is_some_and(|t| t.elapsed() < spacing) {
            return None;
        }
        self.last_auto_queue = Some(Instant::now());
        Some(r.analysis.doubt)
    }

    /// Keeps the frame in hand for adaptation without labels when `[loop] unlabelled_per_hour`
    /// is due (spaced by 3600 / N seconds): asks the pipeline for it and hands it to the
    /// [`UnlabelledWriter`], never waiting; a frame already kept (a paused or frozen source) is
    /// not kept again.
    pub(super) fn keep_unlabelled(&mut self) {
        let per_hour = self.cfg.loop_.unlabelled_per_hour;
        let Some(writer) = self.unlabelled.clone() else {
            return;
        };
        let spacing = Duration::from_secs_f64(3600.0 / per_hour.max(1) as f64);
        if self.last_unlabelled.is_some_and(|t| t.elapsed() < spacing) {
            return;
        }
        self.last_unlabelled = Some(Instant::now());
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.control.send(Control::Frame(tx)).is_err() {
            return;
        }
        tokio::spawn(async move {
            // No frame (no signal yet): the next one a spacing later.
            if let Ok(Ok(Some(data))) = tokio::time::timeout(Duration::from_secs(5), rx).await {
                writer.offer(data);
            }
        });
    }

    /// Saves a snapshot; `auto_doubt`: taken by `[loop] auto_queue` for these reasons of doubt (a
    /// `queued.json` inside the folder before it appears, so the review list never sees it
    /// without).
    pub(super) async fn snapshot(
        &mut self,
        auto_doubt: Option<Doubts>,
    ) -> Result<String, DbusError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::Snapshot(tx))
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?;
        let data = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| DbusError::Io("the processing thread did not answer within 5 s".into()))?
            .map_err(|_| DbusError::Io("the processing thread has stopped".into()))?
            .ok_or_else(|| {
                DbusError::NotFound(
                    "no frame has been processed yet (no signal or paused since start?)".into(),
                )
            })?;
        let root = self.state_dir.join("snapshots");
        let record = measurement(
            &data.processed,
            self.cfg.postprocess.calibration,
            &self.start_id,
        );
        let (max_days, max_mb, state_dir) = (
            self.cfg.storage.max_days,
            self.cfg.storage.max_mb,
            self.state_dir.clone(),
        );
        let (exam, spool) = (self.exam.clone(), self.spool.clone());
        let primary = algorithm(&self.model, Some(&record.model_sha256));
        let extras: Vec<(crate::model::Task, crate::dicom::sr::Algorithm)> = self
            .extra_models
            .iter()
            .filter_map(|(role, v)| Some((crate::model::Task::parse(role)?, algorithm(v, None))))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<String, DbusError> {
            let p = &data.processed;
            let dir = root.join(frame_name(p));
            let io =
                |e: String| DbusError::Io(format!("cannot write snapshot {}: {e}", dir.display()));
            // Whole or absent: written into a hidden sibling, renamed when complete, removed on
            // any error (a full disk leaves no partial snapshot behind).
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = root.join(format!(".{name}.partial"));
            if !state_dir.is_dir() {
                return Err(DbusError::Io(format!(
                    "the state folder {} is gone (removed or unmounted); snapshots work again once it is back",
                    state_dir.display()
                )));
            }
            let written = (|| -> Result<(), String> {
                store::create_private_dir(&tmp).map_err(|e| e.to_string())?;
                crate::imageio::write_gray(&tmp.join("frame.png"), &data.frame)
                    .map_err(|e| e.to_string())?;
                crate::imageio::write_gray(&tmp.join("mask.png"), &data.mask)
                    .map_err(|e| e.to_string())?;
                crate::imageio::write_rgb(
                    &tmp.join("overlay.png"),
                    data.overlay.width,
                    data.overlay.height,
                    &data.overlay.data,
                )
                .map_err(|e| e.to_string())?;
                let text =
                    serde_json::to_string_pretty(&record.snapshot()).map_err(|e| e.to_string())?;
                crate::files::write_atomic(&tmp.join("measurement.json"), text.as_bytes())
                    .map_err(|e| e.to_string())?;
                {
                    // Numbered under the lock, written without it (SetExam never waits on I/O).
                    let (exam, n) = exam.lock().unwrap_or_else(|p| p.into_inner()).next_snapshot();
                    crate::dicom::write_snapshot(
                        &tmp,
                        &exam,
                        n,
                        crate::dicom::SnapshotInput {
                            frame: &data.frame,
                            mask: &data.mask,
                            overlay: &data.overlay,
                            record: &record,
                            extra_masks: &data.extra_masks,
                            primary: &primary,
                            extras: &extras,
                        },
                    )
                    .map_err(|e| e.to_string())?;
                }
                if let Some(doubt) = auto_doubt {
                    // `flag`: the first reason (the key before the verdict existed).
                    let note = serde_json::json!({
                        "queued_by": "auto_queue",
                        "flag": doubt.iter().next().map(|d| d.as_str()),
                        "doubt": doubt,
                    });
                    crate::files::write_atomic(&tmp.join("queued.json"), note.to_string().as_bytes())
                        .map_err(|e| e.to_string())?;
                }
                std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io(e));
            }
            if let Some(spool) = &spool {
                if let Err(e) = spool.enqueue(&dir) {
                    eprintln!(
                        "pocusd: snapshot {} not queued for DICOM sending: {e} (send it by hand with `pocusd dicom send`)",
                        dir.display()
                    );
                }
            }
            store::enforce_retention(
                &state_dir,
                max_days,
                max_mb,
                Some(&dir),
                std::time::SystemTime::now(),
            );
            Ok(dir.display().to_string())
        })
        .await
        .map_err(|e| DbusError::Io(format!("snapshot task failed: {e}")))?
    }

    /// `SelectWorklistItem(accession, step_id)`: the exam of that worklist item (its patient,
    /// Study Instance UID and order) for the snapshots to come.
    pub(super) fn select_worklist_item(
        &mut self,
        accession: &str,
        step_id: &str,
    ) -> Result<(), DbusError> {
        let w = self.worklist.as_ref().ok_or_else(no_worklist)?;
        let item = w.find(accession, step_id).ok_or_else(|| {
            DbusError::NotFound(format!(
                "no worklist item with accession {accession:?} and step {step_id:?} in the last list ({} items); refresh it, or check both values",
                w.state().items.len()
            ))
        })?;
        let e = crate::dicom::Exam::from_worklist(&item, crate::source::realtime_us()).map_err(
            |e| DbusError::InvalidArgument(format!("the worklist item cannot be used: {e}")),
        )?;
        eprintln!(
            "pocusd: new exam from the worklist: accession {accession}, step {step_id} (study {})",
            e.study_uid
        );
        *self.exam.lock().unwrap_or_else(|p| p.into_inner()) = e;
        Ok(())
    }

    /// `SetExam(patient_id, patient_name, accession)`: a new study for the snapshots to come
    /// (empty strings: not given).
    pub(super) fn set_exam(
        &mut self,
        id: &str,
        name: &str,
        accession: &str,
    ) -> Result<(), DbusError> {
        let e = crate::dicom::Exam::new(id, name, accession, crate::source::realtime_us())
            .map_err(|e| DbusError::InvalidArgument(e.to_string()))?;
        eprintln!(
            "pocusd: new exam (study {}){}",
            e.study_uid,
            if e.patient_id.is_some() || e.patient_name.is_some() {
                ""
            } else {
                " without patient identity"
            }
        );
        *self.exam.lock().unwrap_or_else(|p| p.into_inner()) = e;
        Ok(())
    }
}

/// A frame and its result, as the pipeline hands them over.
type Unlabelled = (crate::frame::GrayImage, std::sync::Arc<Processed>);

/// The thread that writes unlabelled frames (`[loop] unlabelled_per_hour`): one for the daemon's
/// life, so writing costs no thread per frame; a frame offered while one is being written is
/// dropped (the next comes a spacing later).
#[derive(Clone)]
pub(super) struct UnlabelledWriter {
    tx: std::sync::mpsc::SyncSender<Unlabelled>,
}

impl UnlabelledWriter {
    /// Starts the writer into `dir` with `[storage] max_days` and `[loop] unlabelled_max_mb`.
    pub(super) fn start(dir: PathBuf, max_days: u64, max_mb: u64) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Unlabelled>(1);
        std::thread::Builder::new()
            .name("pocusd-unlabelled".into())
            .spawn(move || {
                let mut last_seq = None;
                for (frame, processed) in rx {
                    if last_seq == Some(processed.seq) {
                        continue;
                    }
                    last_seq = Some(processed.seq);
                    if let Err(e) = write_unlabelled(&dir, &frame, &processed, max_days, max_mb) {
                        eprintln!("pocusd: unlabelled frame not kept: {e}");
                    }
                }
            })?;
        Ok(Self { tx })
    }

    fn offer(&self, data: Unlabelled) {
        let _ = self.tx.try_send(data);
    }
}

/// Writes one unlabelled frame: the region of interest's pixels as `NAME.png` and `NAME.json`
/// (seq, time, roi, quality, doubt, flag, model, task), the record first and the image renamed
/// into place when whole, then the folder's retention.
fn write_unlabelled(
    dir: &Path,
    frame: &crate::frame::GrayImage,
    p: &Processed,
    max_days: u64,
    max_mb: u64,
) -> Result<(), String> {
    let crop = frame
        .view()
        .and_then(|v| v.crop(p.roi))
        .map_err(|e| e.to_string())?;
    let mut pixels = crate::frame::GrayImage::default();
    crop.copy_into(&mut pixels);
    let name = frame_name(p);
    // Only the folder itself: a vanished state folder (an unmounted disk) is never re-created
    // underneath.
    if !dir.is_dir() {
        if !dir.parent().is_some_and(Path::is_dir) {
            return Err(format!(
                "the folder holding {} is gone (removed or unmounted)",
                dir.display()
            ));
        }
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let record = serde_json::json!({
        "seq": p.seq,
        "time": store::rfc3339_us(p.timestamp_us),
        "roi": p.roi,
        "quality": p.analysis.doubt.quality(),
        "doubt": p.analysis.doubt,
        "flag": p.analysis.flag.map(|f| f.as_str()),
        "model_sha256": &*p.model_sha256,
        "task": p.task.as_str(),
    });
    crate::files::write_atomic(
        &dir.join(format!("{name}.json")),
        record.to_string().as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".{name}.png.partial"));
    crate::imageio::write_gray(&tmp, &pixels).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(format!("{name}.png"))).map_err(|e| e.to_string())?;
    store::enforce_frame_retention(dir, max_days, max_mb, std::time::SystemTime::now());
    Ok(())
}

/// A frame's name for snapshots and unlabelled frames: its UTC time to the millisecond and its
/// `seq` (`20261203T141500.123Z-seq42`), sorting by time.
fn frame_name(p: &Processed) -> String {
    let (y, mo, d, h, mi, s) = store::utc_parts(p.timestamp_us.div_euclid(1_000_000));
    let ms = p.timestamp_us.rem_euclid(1_000_000) / 1000;
    format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{ms:03}Z-seq{}",
        p.seq
    )
}

/// The model of `values` (a model's published properties: `path`, `sha256`) as the DICOM
/// report's algorithm: its file name and sha256. `sha256`: the hash the frame was processed
/// with, which wins when the model was swapped since (its file name is then not known).
fn algorithm(values: &Values, sha256: Option<&str>) -> crate::dicom::sr::Algorithm {
    let text = |k: &str| match values.get(k) {
        Some(Val::S(s)) => Some(s.clone()),
        _ => None,
    };
    let current = text("sha256");
    let version = sha256
        .map(str::to_string)
        .or(current.clone())
        .unwrap_or_default();
    let name = text("path")
        .filter(|_| sha256.is_none() || current.as_deref() == sha256)
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "pocusd model".to_string());
    crate::dicom::sr::Algorithm { name, version }
}

/// The answer of a worklist method on a daemon without one.
pub(super) fn no_worklist() -> DbusError {
    DbusError::NotFound(
        "no worklist is configured: set [dicom] worklist = \"AET@HOST:PORT\" (or use SetExam)"
            .into(),
    )
}
