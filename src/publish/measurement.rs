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
use crate::postprocess::{Calibration, Flag, Measurements};
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
    pub model_sha256: Arc<str>,
    /// The demo phantom's analytic truth for the frame (published beside, never instead of, the
    /// measurement).
    pub truth: Option<Truth>,
    /// The calibration in force.
    pub calibration: Calibration,
    /// Identifies this run of the daemon: `seq` is unique and increasing within one `start_id`,
    /// so a client tells a restart from a reconnect.
    pub start_id: Arc<str>,
}

/// A start id for a daemon started now: its start time (CLOCK_REALTIME µs) and process id, hex.
pub fn new_start_id() -> String {
    format!("{:x}-{:x}", crate::clock::realtime_us(), std::process::id())
}

/// The calibration as JSON (`kind` plus its parameters).
pub fn calibration_json(c: &Calibration) -> serde_json::Value {
    match c {
        Calibration::None => serde_json::json!({"kind": "none"}),
        Calibration::MmPerPx { x, y } => {
            serde_json::json!({"kind": "mm_per_px", "mm_per_px_x": x, "mm_per_px_y": y})
        }
        Calibration::DepthMm(d) => serde_json::json!({"kind": "depth_mm", "depth_mm": d}),
    }
}

impl Measurement {
    /// The flat values (the `Measurement` signal's dictionary, the log's and the event's
    /// `values`): the engine's measurement keys, confidence, flag (empty when none), the model's
    /// sha256 and, for the demo, the phantom's truth.
    pub fn values(&self) -> Values {
        let mut v = Values::new();
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&self.measurements) {
            for (k, x) in m {
                if let Some(f) = x.as_f64() {
                    v.insert(k, Val::F(f));
                }
            }
        }
        v.insert("confidence".into(), Val::F(self.confidence));
        v.insert(
            "flag".into(),
            Val::S(self.flag.map(|f| f.as_str()).unwrap_or("").into()),
        );
        v.insert("model_sha256".into(), Val::S(self.model_sha256.to_string()));
        if let Some(t) = &self.truth {
            if let Some(x) = t.thickness_px {
                v.insert("phantom_thickness_px".into(), Val::F(x));
            }
            if let Some(x) = t.circumference_px {
                v.insert("phantom_circumference_px".into(), Val::F(x));
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
            "model_sha256": &*self.model_sha256,
            "calibration": calibration_json(&self.calibration),
        })
    }

    /// The Server-Sent Event (`type` `measurement`), with the D-Bus signal's seq and values.
    pub fn event(&self) -> String {
        serde_json::json!({
            "type": "measurement",
            "seq": self.seq,
            "start_id": &*self.start_id,
            "timestamp_us": self.timestamp_us,
            "values": self.values(),
        })
        .to_string()
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
            "model_sha256": &*self.model_sha256,
            "calibration": calibration_json(&self.calibration),
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
            model_sha256: Arc::from("abc"),
            truth: None,
            calibration: Calibration::None,
            start_id: Arc::from("s1"),
        }
    }

    #[test]
    fn every_output_carries_the_same_values() {
        let m = sample();
        let v = serde_json::to_value(m.values()).unwrap();
        assert_eq!(v["thickness_px"], 42.5);
        assert_eq!(v["flag"], "uncalibrated");
        let log = m.log_line(0);
        let ev: serde_json::Value = serde_json::from_str(&m.event()).unwrap();
        let snap = m.snapshot();
        for out in [&log["values"], &ev["values"], &snap["values"]] {
            assert_eq!(out, &v);
        }
        assert_eq!(log["seq"], 7);
        assert_eq!(ev["seq"], 7);
        assert_eq!(snap["seq"], 7);
        let last = m.last_measurement();
        assert_eq!(last.get("seq"), Some(&Val::U(7)));
    }
}
