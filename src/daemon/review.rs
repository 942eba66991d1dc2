//! The review queue behind the `/review` page: the snapshots in `STATE/snapshots` are the queue;
//! a reviewer accepts one with a corrected mask, which becomes a label in the site data folder
//! (`[loop] site_data`: `images/NAME.png`, `masks/NAME.png` 0/255 in frame coordinates and
//! `NAME.json`), or rejects it. The decision is kept beside the snapshot (`review.json`). The
//! site folder has its own cap (`[loop] site_max_mb`): over it the oldest labels are dropped,
//! each drop logged. Files only: no pipeline state, no HTTP types. Must not depend on the
//! pipeline's threads or on D-Bus.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::files::write_atomic;
use crate::frame::GrayImage;
use crate::imageio;

#[derive(Debug, Error)]
pub enum ReviewError {
    #[error("no snapshot {0:?} in the review queue (deleted by retention, or never made)")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Io(String),
}

/// One queued snapshot as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: String,
    pub time: Option<String>,
    pub task: Option<String>,
    pub flag: Option<String>,
    /// The verdict on the snapshot's numbers (`ok` or `doubtful`) and the reasons.
    pub quality: Option<String>,
    pub doubt: Vec<String>,
    pub model_sha256: Option<String>,
    /// The measurement shown in the list (`thickness_mm`, `thickness_px`, `circumference_mm`, ...).
    pub measurement: Option<(String, f64)>,
    /// `queued`, `accepted` or `rejected`.
    pub status: String,
    /// `auto_queue` for a frame the quality gate queued by itself, else `snapshot`.
    pub queued_by: String,
    pub width: Option<u64>,
    pub height: Option<u64>,
}

/// The queue: where snapshots are and where accepted labels go.
#[derive(Debug, Clone)]
pub struct Review {
    pub snapshots: PathBuf,
    pub site: PathBuf,
    /// Cap of the site folder in bytes.
    pub site_max_bytes: u64,
}

/// A snapshot id is a folder name the daemon made: letters, digits, `-`, `_`, `.` and `:` only,
/// never `.` or `..` (the path cannot leave the snapshots folder).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn io(e: impl std::fmt::Display) -> ReviewError {
    ReviewError::Io(e.to_string())
}

fn now() -> String {
    crate::clock::rfc3339_us(crate::clock::realtime_us())
}

impl Review {
    fn dir(&self, id: &str) -> Result<PathBuf, ReviewError> {
        let d = self.snapshots.join(id);
        if !valid_id(id) || !d.join("frame.png").is_file() {
            return Err(ReviewError::NotFound(id.chars().take(60).collect()));
        }
        Ok(d)
    }

    /// Every snapshot, newest first.
    pub fn list(&self) -> Vec<Item> {
        let Ok(rd) = std::fs::read_dir(&self.snapshots) else {
            return Vec::new();
        };
        let mut items: Vec<Item> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                let d = self.dir(&id).ok()?;
                let m: serde_json::Value = std::fs::read_to_string(d.join("measurement.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                let status = std::fs::read_to_string(d.join("review.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["decision"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "queued".into());
                let s = |k: &str| m[k].as_str().map(str::to_string);
                let measurement = [
                    "thickness_mm",
                    "circumference_mm",
                    "area_mm2",
                    "thickness_px",
                    "circumference_px",
                    "area_px",
                ]
                .iter()
                .find_map(|k| m["values"][*k].as_f64().map(|v| (k.to_string(), v)));
                Some(Item {
                    id,
                    time: s("time"),
                    task: s("task"),
                    flag: s("flag"),
                    quality: s("quality"),
                    doubt: m["doubt"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    model_sha256: s("model_sha256"),
                    measurement,
                    status,
                    queued_by: if d.join("queued.json").is_file() {
                        "auto_queue".into()
                    } else {
                        "snapshot".into()
                    },
                    width: m["width"].as_u64(),
                    height: m["height"].as_u64(),
                })
            })
            .collect();
        items.sort_by(|a, b| b.id.cmp(&a.id));
        items
    }

    /// A snapshot's `frame.png` or `mask.png`, as stored.
    pub fn file(&self, id: &str, name: &str) -> Result<Vec<u8>, ReviewError> {
        let d = self.dir(id)?;
        std::fs::read(d.join(name)).map_err(io)
    }

    /// Accepts snapshot `id` with `mask_png` (any PNG of the frame's size; grey or colour,
    /// thresholded at half scale to 0/255). Returns the label's name in the site folder.
    pub fn accept(&self, id: &str, mask_png: &[u8]) -> Result<String, ReviewError> {
        let d = self.dir(id)?;
        let frame_bytes = std::fs::read(d.join("frame.png")).map_err(io)?;
        let frame = imageio::decode_gray(&frame_bytes).map_err(io)?;
        let mask = imageio::decode_gray(mask_png).map_err(|e| {
            ReviewError::BadRequest(format!(
                "the mask is not a PNG image ({e}); send the painted mask as image/png"
            ))
        })?;
        if (mask.width(), mask.height()) != (frame.width(), frame.height()) {
            return Err(ReviewError::BadRequest(format!(
                "the mask is {}x{} but the frame is {}x{}; send it at the frame's size",
                mask.width(),
                mask.height(),
                frame.width(),
                frame.height()
            )));
        }
        let binary: Vec<u8> = mask
            .as_slice()
            .iter()
            .map(|&v| if v >= 128 { 255 } else { 0 })
            .collect();
        let binary = GrayImage::from_vec(frame.width(), frame.height(), binary).map_err(io)?;
        let meta: serde_json::Value = std::fs::read_to_string(d.join("measurement.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let name = format!("{id}.png");
        // The mask first, the image second: a pair exists (for `loop nightly`) once both do.
        imageio::write_gray(&self.site.join("masks").join(&name), &binary).map_err(io)?;
        write_atomic(&self.site.join("images").join(&name), &frame_bytes).map_err(io)?;
        let record = serde_json::json!({
            "snapshot": id,
            "model_sha256": meta["model_sha256"],
            "time": meta["time"],
            "accepted": now(),
        });
        write_atomic(
            &self.site.join(format!("{id}.json")),
            record.to_string().as_bytes(),
        )
        .map_err(io)?;
        // The label as DICOM too (a MANUAL Segmentation of the snapshot's image), when the
        // snapshot has its DICOM files; the label itself is already safe in the site folder.
        // Its segment type comes from the snapshot's task; without one it is not guessed.
        let task = meta["task"].as_str().and_then(crate::model::Task::parse);
        if let (true, Some(task)) = (d.join(crate::dicom::FILES[0]).is_file(), task) {
            if let Err(e) = crate::dicom::write_label_segmentation(
                &d,
                task,
                &binary,
                crate::clock::realtime_us(),
            ) {
                eprintln!("pocusd: review label {id} kept, but not written as DICOM: {e}");
            }
        }
        self.decide(&d, "accepted")?;
        self.enforce_cap();
        Ok(name)
    }

    /// Rejects snapshot `id` (kept in the queue as rejected; retention removes it in time).
    pub fn reject(&self, id: &str) -> Result<(), ReviewError> {
        let d = self.dir(id)?;
        self.decide(&d, "rejected")
    }

    fn decide(&self, d: &Path, decision: &str) -> Result<(), ReviewError> {
        let v = serde_json::json!({ "decision": decision, "at": now() });
        write_atomic(&d.join("review.json"), v.to_string().as_bytes()).map_err(io)
    }

    /// Drops the oldest labels (by their `NAME.json`'s modification time) while the site folder
    /// holds more than its cap, never the newest one; logs each drop. Returns the names dropped.
    pub fn enforce_cap(&self) -> Vec<String> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut labels: Vec<(std::time::SystemTime, String, u64)> = std::fs::read_dir(&self.site)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let stem = n.strip_suffix(".json")?.to_string();
                let t = e.metadata().ok()?.modified().ok()?;
                let png = format!("{stem}.png");
                let bytes = size(&e.path())
                    + size(&self.site.join("images").join(&png))
                    + size(&self.site.join("masks").join(&png));
                Some((t, stem, bytes))
            })
            .collect();
        labels.sort();
        let mut total: u64 = labels.iter().map(|l| l.2).sum();
        labels.pop();
        let mut dropped = Vec::new();
        for (_, stem, bytes) in labels {
            if total <= self.site_max_bytes {
                break;
            }
            let png = format!("{stem}.png");
            let _ = std::fs::remove_file(self.site.join("images").join(&png));
            let _ = std::fs::remove_file(self.site.join("masks").join(&png));
            let _ = std::fs::remove_file(self.site.join(format!("{stem}.json")));
            total = total.saturating_sub(bytes);
            eprintln!(
                "pocusd: site data over [loop] site_max_mb: dropped the oldest label {stem} ({bytes} bytes)"
            );
            dropped.push(stem);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(root: &Path, id: &str, w: usize, h: usize) {
        let d = root.join(id);
        std::fs::create_dir_all(&d).unwrap();
        let frame =
            GrayImage::from_vec(w, h, (0..w * h).map(|i| (i % 251) as u8).collect()).unwrap();
        imageio::write_gray(&d.join("frame.png"), &frame).unwrap();
        imageio::write_gray(&d.join("mask.png"), &GrayImage::new(w, h)).unwrap();
        std::fs::write(
            d.join("measurement.json"),
            r#"{"time":"2026-12-01T10:00:00Z","task":"aponeurosis","flag":null,"model_sha256":"abc","values":{"thickness_px":42.0}}"#,
        )
        .unwrap();
    }

    fn png(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let img = GrayImage::from_vec(w, h, (0..w * h).map(|i| f(i % w, i / w)).collect()).unwrap();
        let p = dir.path().join("m.png");
        imageio::write_gray(&p, &img).unwrap();
        std::fs::read(p).unwrap()
    }

    #[test]
    fn accept_reject_list_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let r = Review {
            snapshots: dir.path().join("snapshots"),
            site: dir.path().join("labelled"),
            site_max_bytes: 1 << 30,
        };
        snapshot(&r.snapshots, "20261201T100000Z-1", 40, 30);
        snapshot(&r.snapshots, "20261201T100001Z-2", 40, 30);
        let l = r.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].id, "20261201T100001Z-2");
        assert_eq!(l[0].measurement, Some(("thickness_px".into(), 42.0)));
        assert!(l.iter().all(|i| i.status == "queued"));
        // Wrong size, not a PNG, unknown or hostile ids.
        assert!(matches!(
            r.accept("20261201T100000Z-1", &png(10, 10, |_, _| 0)),
            Err(ReviewError::BadRequest(_))
        ));
        assert!(matches!(
            r.accept("20261201T100000Z-1", b"nope"),
            Err(ReviewError::BadRequest(_))
        ));
        for bad in ["..", "../snapshots", "x/y", "", ".hidden", "nope"] {
            assert!(
                matches!(r.reject(bad), Err(ReviewError::NotFound(_))),
                "{bad}"
            );
        }
        // Accept: the painted rows become 255, the rest 0.
        let name = r
            .accept(
                "20261201T100000Z-1",
                &png(40, 30, |_, y| if (10..20).contains(&y) { 200 } else { 30 }),
            )
            .unwrap();
        let m = imageio::read_gray(&r.site.join("masks").join(&name)).unwrap();
        assert_eq!((m.width(), m.height()), (40, 30));
        for (i, &v) in m.as_slice().iter().enumerate() {
            assert_eq!(
                v,
                if (10..20).contains(&(i / 40)) { 255 } else { 0 },
                "pixel {i}"
            );
        }
        assert_eq!(
            std::fs::read(r.site.join("images").join(&name)).unwrap(),
            std::fs::read(r.snapshots.join("20261201T100000Z-1/frame.png")).unwrap()
        );
        let j: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(r.site.join("20261201T100000Z-1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(j["snapshot"], "20261201T100000Z-1");
        assert_eq!(j["model_sha256"], "abc");
        r.reject("20261201T100001Z-2").unwrap();
        let st: Vec<String> = r.list().into_iter().map(|i| i.status).collect();
        assert_eq!(st, ["rejected", "accepted"]);
        // The cap: a second label over a tiny cap drops the oldest.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let small = Review {
            site_max_bytes: 1,
            ..r.clone()
        };
        small
            .accept("20261201T100001Z-2", &png(40, 30, |_, _| 255))
            .unwrap();
        assert!(
            !r.site.join("20261201T100000Z-1.json").exists(),
            "the oldest went first"
        );
        assert!(!r.site.join("images/20261201T100000Z-1.png").exists());
        assert!(
            r.site.join("images/20261201T100001Z-2.png").exists(),
            "never the newest"
        );
    }
}
