//! Snapshots and the exam they belong to: `Snapshot()` and the viewer's button, the frames
//! `[loop] auto_queue` takes by themselves for review, and `SetExam` (a new DICOM study). A
//! snapshot is written whole or not at all (frame, mask, overlay, measurement.json and the DICOM
//! files, in a hidden folder renamed when complete), then queued for the PACS and the retention
//! enforced, off the supervisor's thread. Must not touch the models, the configuration or the
//! pipeline beyond asking it for the frame in hand.

use std::time::{Duration, Instant};

use super::dbus::Error as DbusError;
use super::pipeline::{Control, Processed};
use super::store;
use super::supervisor::{measurement, Supervisor};
use crate::postprocess::quality::Doubts;

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
        tokio::task::spawn_blocking(move || -> Result<String, DbusError> {
            let p = &data.processed;
            let (y, mo, d, h, mi, s) = store::utc_parts(p.timestamp_us.div_euclid(1_000_000));
            let ms = p.timestamp_us.rem_euclid(1_000_000) / 1000;
            let dir = root.join(format!(
                "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{ms:03}Z-seq{}",
                p.seq
            ));
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
                            overlay: &data.overlay,
                            record: &record,
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
