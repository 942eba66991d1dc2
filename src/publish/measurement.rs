//! The one measurement record and its encoders. A processed frame becomes one [`Measurement`];
//! every output is a small function of it, so a key appears everywhere at once: the D-Bus
//! `Measurement` signal's and `LastMeasurement`'s dictionaries ([`Measurement::values`],
//! [`Measurement::last_measurement`]), the measurement log line ([`Measurement::log_line`]), the
//! Server-Sent Event ([`Measurement::event`]) and a snapshot's `measurement.json`
//! ([`Measurement::snapshot`]). No I/O, no D-Bus types (the bus converts [`Values`] itself).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::rfc3339_us;
use crate::frame::Rect;
use crate::model::Task;
use crate::postprocess::quality::Doubts;
use crate::postprocess::{Calibration, Flag, Measurements};
use crate::preprocess::calibration::{CalibrationInfo, CalibrationKind};
use crate::synth::Truth;

/// One value of an `a{sv}` map, kept in plain Rust so it can also go to JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Val {
    F(f64),
    U(u64),
    I(i64),
    S(String),
    B(bool),
    /// A list of strings (`as` on the bus; the reason codes of `doubt`).
    L(Vec<String>),
}

impl Val {
    /// The string, for `S` values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::S(s) => Some(s),
            _ => None,
        }
    }
}

/// A string-keyed map of values (`a{sv}` on the bus, an object in JSON).
pub type Values = BTreeMap<String, Val>;

/// One published measurement: what the engine measured on one frame, with where it came from.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The frame's sequence number.
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME µs.
    pub timestamp_us: i64,
    pub task: Task,
    /// Frame size, pixels.
    pub width: usize,
    pub height: usize,
    /// The region of interest the model saw.
    pub roi: Rect,
    pub measurements: Measurements,
    pub confidence: f64,
    pub flag: Option<Flag>,
    /// The verdict: empty when `ok`, else the reasons.
    pub doubt: Doubts,
    /// The extra models' verdicts on their own numbers, by task.
    pub extra_doubt: Vec<(Task, Doubts)>,
    pub model_sha256: Arc<str>,
    /// The demo phantom's analytic truth for the frame (published beside, never instead of, the
    /// measurement).
    pub truth: Option<Truth>,
    /// The calibration of the frame (its kind, scale, ruler fit or why there is none).
    pub calibration: CalibrationInfo,
    /// The configured manual calibration (what kind `manual` means).
    pub manual: Calibration,
    /// Identifies this run of the daemon: `seq` is unique and increasing within one `start_id`,
    /// so a client tells a restart from a reconnect.
    pub start_id: Arc<str>,
}

/// A start id for a daemon started now: its start time (CLOCK_REALTIME µs) and process id, hex.
pub fn new_start_id() -> String {
    format!("{:x}-{:x}", crate::clock::realtime_us(), std::process::id())
}

/// The calibration as JSON (the log's and a snapshot's `calibration` object): `kind` `ruler`
/// with `mm_per_px`, `ticks`, `residual_px` and the rest of the fit; a manual calibration as
/// configured (`mm_per_px` with `mm_per_px_x`/`_y`, or `depth_mm`); `none` with the `reason`.
pub fn calibration_json(c: &CalibrationInfo, manual: &Calibration) -> serde_json::Value {
    match (c.kind, manual) {
        (CalibrationKind::Ruler, _) => match (c.ruler, c.mm_per_px) {
            (Some(f), Some((x, _))) => serde_json::json!({
                "kind": "ruler",
                "mm_per_px": x,
                "ticks": f.ticks,
                "residual_px": f.residual_px,
                "tick_spacing_px": f.tick_spacing_px,
                "major_every": f.major_every,
                "extent_px": f.extent_px,
                "side": f.side,
                "evidence": f.evidence,
            }),
            _ => serde_json::json!({"kind": "none"}),
        },
        (CalibrationKind::Manual, Calibration::MmPerPx { x, y }) => {
            serde_json::json!({"kind": "mm_per_px", "mm_per_px_x": x, "mm_per_px_y": y})
        }
        (CalibrationKind::Manual, Calibration::DepthMm(d)) => {
            let mut v = serde_json::json!({"kind": "depth_mm", "depth_mm": d});
            if let Some((x, y)) = c.mm_per_px {
                v["mm_per_px_x"] = x.into();
                v["mm_per_px_y"] = y.into();
            }
            v
        }
        _ => {
            let mut v = serde_json::json!({"kind": "none"});
            if let Some(w) = &c.withheld {
                v["reason"] = w.to_string().into();
            }
            v
        }
    }
}

/// The calibration as a flat dictionary (the D-Bus `Calibration` property, the status event's
/// `calibration`): `kind` (`ruler`, `manual`, `none`), `mm_per_px` (and `mm_per_px_y` when
/// different), for the ruler `ticks`, `residual_px`, `tick_spacing_px`, `major_every`, `side`,
/// `evidence` (what the reading in force rests on, in words), and `reason` when millimetres are
/// withheld.
pub fn calibration_values(c: &CalibrationInfo) -> Values {
    let mut v = Values::new();
    v.insert("kind".into(), Val::S(c.kind.as_str().into()));
    if let Some((x, y)) = c.mm_per_px {
        v.insert("mm_per_px".into(), Val::F(x));
        if y != x {
            v.insert("mm_per_px_y".into(), Val::F(y));
        }
    }
    if let Some(f) = c.ruler {
        // The last ruler reading also when withheld (what was seen).
        v.insert("ticks".into(), Val::U(f.ticks as u64));
        v.insert("residual_px".into(), Val::F(f.residual_px));
        v.insert("tick_spacing_px".into(), Val::F(f.tick_spacing_px));
        v.insert("major_every".into(), Val::U(f.major_every as u64));
        v.insert(
            "side".into(),
            Val::S(
                serde_json::to_value(f.side)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ),
        );
    }
    if let (CalibrationKind::Ruler, Some(f)) = (c.kind, c.ruler) {
        v.insert("evidence".into(), Val::S(f.evidence.words()));
    }
    if let Some(w) = &c.withheld {
        v.insert("reason".into(), Val::S(w.to_string()));
    }
    v
}

/// The reason codes as owned strings.
fn codes(d: Doubts) -> Vec<String> {
    d.iter().map(|x| x.as_str().to_string()).collect()
}

impl Measurement {
    /// The flat values (the `Measurement` signal's dictionary, the log's and the event's
    /// `values`): the engine's measurement keys, confidence, flag (empty when none), `quality`
    /// (`ok` or `doubtful`) and `doubt` (the reason codes), each extra model's
    /// `<task>_quality` and `<task>_doubt`, the model's sha256 and, for the demo, the phantom's
    /// truth.
    pub fn values(&self) -> Values {
        let mut v = Values::new();
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&self.measurements) {
            for (k, x) in m {
                if let Some(u) = x
                    .as_u64()
                    .filter(|_| k.ends_with("_count") || k.ends_with("_frames"))
                {
                    v.insert(k, Val::U(u));
                } else if let Some(f) = x.as_f64() {
                    v.insert(k, Val::F(f));
                }
            }
        }
        v.insert("confidence".into(), Val::F(self.confidence));
        v.insert(
            "flag".into(),
            Val::S(self.flag.map(|f| f.as_str()).unwrap_or("").into()),
        );
        v.insert("quality".into(), Val::S(self.doubt.quality().into()));
        v.insert("doubt".into(), Val::L(codes(self.doubt)));
        for (task, d) in &self.extra_doubt {
            v.insert(
                format!("{}_quality", task.as_str()),
                Val::S(d.quality().into()),
            );
            v.insert(format!("{}_doubt", task.as_str()), Val::L(codes(*d)));
        }
        v.insert("model_sha256".into(), Val::S(self.model_sha256.to_string()));
        let c = &self.calibration;
        v.insert("calibration_kind".into(), Val::S(c.kind.as_str().into()));
        if let Some((x, y)) = c.mm_per_px {
            v.insert("mm_per_px".into(), Val::F(x));
            if y != x {
                v.insert("mm_per_px_y".into(), Val::F(y));
            }
        }
        if let Some(w) = &c.withheld {
            v.insert("calibration_reason".into(), Val::S(w.to_string()));
        }
        if let (CalibrationKind::Ruler, Some(f)) = (c.kind, c.ruler) {
            v.insert("calibration_evidence".into(), Val::S(f.evidence.words()));
        }
        if let Some(t) = &self.truth {
            for (k, x) in [
                ("phantom_thickness_px", t.thickness_px),
                ("phantom_thickness_mm", t.thickness_mm),
                ("phantom_circumference_px", t.circumference_px),
                ("phantom_pennation_angle_deg", t.pennation_angle_deg),
                ("phantom_fascicle_length_px", t.fascicle_length_px),
                ("phantom_fascicle_length_mm", t.fascicle_length_mm),
            ] {
                if let Some(x) = x {
                    v.insert(k.into(), Val::F(x));
                }
            }
        }
        v
    }

    /// The `LastMeasurement` property: the values with `seq` and `timestamp_us`.
    pub fn last_measurement(&self) -> Values {
        let mut v = self.values();
        v.insert("seq".into(), Val::U(self.seq));
        v.insert("timestamp_us".into(), Val::I(self.timestamp_us));
        v.insert("start_id".into(), Val::S(self.start_id.to_string()));
        v
    }

    /// One line of the measurement log, written at `now_us`.
    pub fn log_line(&self, now_us: i64) -> serde_json::Value {
        serde_json::json!({
            "time": rfc3339_us(now_us),
            "timestamp_us": self.timestamp_us,
            "seq": self.seq,
            "start_id": &*self.start_id,
            "values": self.values(),
            "flag": self.flag.map(|f| f.as_str()),
            "quality": self.doubt.quality(),
            "doubt": self.doubt,
            "model_sha256": &*self.model_sha256,
            "calibration": calibration_json(&self.calibration, &self.manual),
        })
    }

    /// The Server-Sent Event (`type` `measurement`), with the D-Bus signal's seq and values,
    /// and the reasons of a doubtful verdict in words for the viewer (`doubt_words`,
    /// `<task>_doubt_words`; empty when ok).
    pub fn event(&self) -> String {
        let mut e = serde_json::json!({
            "type": "measurement",
            "seq": self.seq,
            "start_id": &*self.start_id,
            "timestamp_us": self.timestamp_us,
            "values": self.values(),
            "doubt_words": self.doubt.words(),
        });
        for (task, d) in &self.extra_doubt {
            e[format!("{}_doubt_words", task.as_str())] = d.words().into();
        }
        e.to_string()
    }

    /// A snapshot's `measurement.json`.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "start_id": &*self.start_id,
            "timestamp_us": self.timestamp_us,
            "time": rfc3339_us(self.timestamp_us),
            "task": self.task.as_str(),
            "width": self.width,
            "height": self.height,
            "roi": self.roi,
            "values": self.values(),
            "measurements": self.measurements,
            "flag": self.flag.map(|f| f.as_str()),
            "quality": self.doubt.quality(),
            "doubt": self.doubt,
            "model_sha256": &*self.model_sha256,
            "calibration": calibration_json(&self.calibration, &self.manual),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Measurement {
        Measurement {
            seq: 7,
            timestamp_us: 1_700_000_000_000_000,
            task: Task::Aponeurosis,
            width: 640,
            height: 480,
            roi: Rect::full(640, 480),
            measurements: Measurements {
                thickness_px: Some(42.5),
                ..Default::default()
            },
            confidence: 0.9,
            flag: Some(Flag::Uncalibrated),
            doubt: [crate::postprocess::quality::Doubt::NotParallel]
                .into_iter()
                .collect(),
            extra_doubt: vec![(Task::Fascicle, Doubts::NONE)],
            model_sha256: Arc::from("abc"),
            truth: None,
            calibration: CalibrationInfo::default(),
            manual: Calibration::None,
            start_id: Arc::from("s1"),
        }
    }

    #[test]
    fn every_output_carries_the_same_values() {
        let m = sample();
        let v = serde_json::to_value(m.values()).unwrap();
        assert_eq!(v["thickness_px"], 42.5);
        assert_eq!(v["flag"], "uncalibrated");
        assert_eq!(v["quality"], "doubtful");
        assert_eq!(v["doubt"], serde_json::json!(["not_parallel"]));
        assert_eq!(v["fascicle_quality"], "ok");
        assert_eq!(v["fascicle_doubt"], serde_json::json!([]));
        let log = m.log_line(0);
        let ev: serde_json::Value = serde_json::from_str(&m.event()).unwrap();
        let snap = m.snapshot();
        for out in [&log["values"], &ev["values"], &snap["values"]] {
            assert_eq!(out, &v);
        }
        assert_eq!(log["seq"], 7);
        for out in [&log, &snap] {
            assert_eq!(out["quality"], "doubtful");
            assert_eq!(out["doubt"], serde_json::json!(["not_parallel"]));
        }
        assert_eq!(ev["seq"], 7);
        assert_eq!(snap["seq"], 7);
        let last = m.last_measurement();
        assert_eq!(last.get("seq"), Some(&Val::U(7)));
    }
}
