//! `pocusd status`: a D-Bus client of a running daemon that prints its live state like
//! `systemctl status` (or one JSON object with `--json`). Also the typed proxy other Rust programs
//! and the tests use. Must not depend on the pipeline.

use std::collections::HashMap;

use anyhow::Context;
use zbus::{proxy, OwnedVariant};

use super::dbus::State;

/// Client side of `org.pocusd.Daemon1`.
#[proxy(
    interface = "org.pocusd.Daemon1",
    default_service = "org.pocusd.Daemon1",
    default_path = "/org/pocusd/Daemon1"
)]
pub trait Daemon1 {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn state_text(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn model(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn models(&self) -> zbus::Result<HashMap<String, HashMap<String, OwnedVariant>>>;
    #[zbus(property)]
    fn fps(&self) -> zbus::Result<f64>;
    #[zbus(property, name = "LatencyMs")]
    fn latency_ms(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn dropped_frames(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn corrupt_frames(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn calibrated(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn calibration(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn last_measurement(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn training(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn dicom_queue(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn igtl(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn worklist(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn pacs(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn viewer(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;

    #[zbus(signal)]
    fn measurement(
        &self,
        seq: u64,
        timestamp_us: i64,
        values: HashMap<String, OwnedVariant>,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn fault(&self, code: String, message: String) -> zbus::Result<()>;

    fn load_model(&self, path: &str) -> zbus::Result<()>;
    fn load_extra_model(&self, role: &str, path: &str) -> zbus::Result<()>;
    fn set_threshold(&self, probability: f64) -> zbus::Result<()>;
    fn pause(&self, paused: bool) -> zbus::Result<()>;
    fn snapshot(&self) -> zbus::Result<String>;
    fn reload(&self) -> zbus::Result<()>;
    fn rollback_model(&self, version: i32) -> zbus::Result<u32>;
}

/// A proxy of the daemon on the session or system bus; returns the bus's name for messages.
async fn connect(session: bool) -> anyhow::Result<(zbus::Connection, &'static str)> {
    let (builder, what) = if session {
        (zbus::connection::Builder::session(), "session")
    } else {
        (zbus::connection::Builder::system(), "system")
    };
    let conn = builder
        .build()
        .await
        .with_context(|| format!("cannot connect to the {what} bus"))?;
    Ok((conn, what))
}

async fn proxy(conn: &zbus::Connection) -> anyhow::Result<Daemon1Proxy<'_>> {
    Ok(Daemon1Proxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects to the daemon on the session or system bus and runs one call (the clients of
/// `pocusd loop nightly` and `pocusd models rollback`).
pub fn with_daemon<T>(
    session: bool,
    call: impl for<'a> FnOnce(
        &'a Daemon1Proxy<'a>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = zbus::Result<T>> + 'a>,
    >,
) -> anyhow::Result<T> {
    runtime()?.block_on(async {
        let (conn, what) = connect(session).await?;
        let proxy = proxy(&conn).await?;
        call(&proxy).await.map_err(|e| match e {
            zbus::Error::MethodError(name, Some(msg), _) => {
                anyhow::anyhow!("the daemon refused: {msg} ({name})")
            }
            other => {
                anyhow::anyhow!("no answer from pocusd on the {what} bus ({other}); is it running?")
            }
        })
    })
}

/// An `a{sv}` value as JSON.
pub fn variant_json(v: &OwnedVariant) -> serde_json::Value {
    if let Ok(x) = f64::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = u64::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = i64::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = u32::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = bool::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = <&str>::try_from(v) {
        return serde_json::json!(x);
    }
    if let Ok(x) = Vec::<String>::try_from(v.clone()) {
        return serde_json::json!(x);
    }
    serde_json::Value::Null
}

fn dict_json(d: &HashMap<String, OwnedVariant>) -> serde_json::Value {
    let mut m: Vec<_> = d.iter().collect();
    m.sort_by(|a, b| a.0.cmp(b.0));
    serde_json::Value::Object(
        m.into_iter()
            .map(|(k, v)| (k.clone(), variant_json(v)))
            .collect(),
    )
}

/// Reads every property into one JSON object.
pub async fn read_all(p: &Daemon1Proxy<'_>) -> zbus::Result<serde_json::Value> {
    let state = p.state().await?;
    Ok(serde_json::json!({
        "state": state,
        "state_name": State::from_code(state).map(|s| s.as_str()).unwrap_or("unknown"),
        "state_text": p.state_text().await?,
        "source": p.source().await?,
        "model": dict_json(&p.model().await?),
        "models": serde_json::Value::Object(
            p.models()
                .await?
                .iter()
                .map(|(k, d)| (k.clone(), dict_json(d)))
                .collect(),
        ),
        "fps": p.fps().await?,
        "latency_ms": dict_json(&p.latency_ms().await?),
        "dropped_frames": p.dropped_frames().await?,
        "corrupt_frames": p.corrupt_frames().await?,
        "calibrated": p.calibrated().await?,
        "calibration": dict_json(&p.calibration().await?),
        "last_measurement": dict_json(&p.last_measurement().await?),
        "training": dict_json(&p.training().await?),
        // An older daemon without the property reads as 0.
        "dicom_queue": p.dicom_queue().await.unwrap_or(0),
        "igtl": p.igtl().await.map(|d| dict_json(&d)).unwrap_or_default(),
        "worklist": p.worklist().await.map(|d| dict_json(&d)).unwrap_or_default(),
        "pacs": p.pacs().await.map(|d| dict_json(&d)).unwrap_or_default(),
        "viewer": p.viewer().await.map(|d| dict_json(&d)).unwrap_or_default(),
    }))
}

/// Prints the status; `session` picks the session bus.
pub fn print_status(session: bool, json: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (conn, what) = connect(session).await?;
        let proxy = proxy(&conn).await?;
        let v = read_all(&proxy).await.with_context(|| {
            format!(
                "pocusd is not running on the {what} bus (no answer from {}){}",
                super::dbus::BUS_NAME,
                if session {
                    ""
                } else {
                    "; for a daemon started with --session-bus use `pocusd status --session-bus`"
                }
            )
        })?;
        if json {
            println!("{v}");
        } else {
            print!("{}", human(&v));
        }
        Ok(())
    })
}

/// ", DOUBTFUL: the reasons in words" for a doubtful verdict; empty when ok or absent.
fn doubt_text(quality: &serde_json::Value, doubt: &serde_json::Value) -> String {
    if quality.as_str() != Some("doubtful") {
        return String::new();
    }
    let words: Vec<&str> = doubt
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str())
                .map(|c| crate::postprocess::quality::Doubt::parse(c).map_or(c, |d| d.words()))
                .collect()
        })
        .unwrap_or_default();
    format!(", DOUBTFUL: {}", words.join("; "))
}

fn num(v: &serde_json::Value, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64())
}

/// The human-readable form, like `systemctl status`.
pub fn human(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let state = v["state_name"].as_str().unwrap_or("?");
    let dot = match state {
        "streaming" => "●",
        "error" => "×",
        _ => "○",
    };
    s += &format!(
        "{dot} pocusd - {}\n",
        v["state_text"].as_str().unwrap_or(state)
    );
    s += &format!("     Source: {}\n", v["source"].as_str().unwrap_or("?"));
    let m = &v["model"];
    s += &format!(
        "      Model: {} ({} {}x{}, sha256 {}{})\n",
        m["path"].as_str().unwrap_or("?"),
        m["task"].as_str().unwrap_or("?"),
        m["input_width"],
        m["input_height"],
        m["sha256"]
            .as_str()
            .map(|x| &x[..x.len().min(12)])
            .unwrap_or("?"),
        num(m, "val_dice")
            .map(|d| format!(", val Dice {d:.3}"))
            .unwrap_or_default()
    );
    if let Some(models) = v["models"].as_object() {
        for (role, e) in models.iter().filter(|(r, _)| r.as_str() != "primary") {
            s += &format!(
                "      Extra: {role}: {} (sha256 {}{})\n",
                e["path"].as_str().unwrap_or("?"),
                e["sha256"]
                    .as_str()
                    .map(|x| &x[..x.len().min(12)])
                    .unwrap_or("?"),
                num(e, "val_dice")
                    .map(|d| format!(", val Dice {d:.3}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(applied) = m["roi_applied"].as_str() {
        let model_roi = m["roi"].as_str().unwrap_or("full");
        s += &if m["roi_override"].as_bool().unwrap_or(false) {
            format!(
                "        ROI: {applied} (explicit; WARNING: the model was trained with {model_roi})\n"
            )
        } else {
            format!("        ROI: {applied} (the model's policy)\n")
        };
    }
    let t = &v["training"];
    if let Some(reason) = t["reason"].as_str() {
        let when = t["time"]
            .as_str()
            .map(|x| x.get(..16).unwrap_or(x))
            .unwrap_or("?");
        s += &match (t["kind"].as_str(), t["promoted"].as_bool()) {
            (Some("nightly"), Some(false)) => {
                format!("   Training: {when}: last night's model was not promoted: {reason}\n")
            }
            _ => format!("   Training: {when}: {reason}\n"),
        };
    }
    let l = &v["latency_ms"];
    s += &format!(
        "        Fps: {:.1}   dropped frames: {}   corrupt frames: {}\n",
        v["fps"].as_f64().unwrap_or(0.0),
        v["dropped_frames"],
        v["corrupt_frames"]
    );
    s += &format!(
        "    Latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (infer p50 {:.1} ms)\n",
        num(l, "p50").unwrap_or(0.0),
        num(l, "p99").unwrap_or(0.0),
        num(l, "max").unwrap_or(0.0),
        num(l, "infer_p50").unwrap_or(0.0)
    );
    let lm = &v["last_measurement"];
    let headline = ["thickness_mm", "circumference_mm"]
        .iter()
        .find_map(|k| num(lm, k).map(|x| format!("{} {x:.2} mm", k.trim_end_matches("_mm"))))
        .or_else(|| {
            ["thickness_px", "circumference_px"].iter().find_map(|k| {
                num(lm, k).map(|x| format!("{} {x:.1} px", k.trim_end_matches("_px")))
            })
        });
    match (lm.get("seq"), headline) {
        (Some(seq), h) => {
            let flag = lm["flag"].as_str().unwrap_or("");
            s += &format!(
                "       Last: seq {seq}: {}, confidence {:.2}{}{}\n",
                h.unwrap_or_else(|| "no value".into()),
                num(lm, "confidence").unwrap_or(0.0),
                if flag.is_empty() {
                    String::new()
                } else {
                    format!(", flag {flag}")
                },
                doubt_text(&lm["quality"], &lm["doubt"])
            );
        }
        _ => s += "       Last: no measurement yet\n",
    }
    if let Some(a) = num(lm, "pennation_angle_deg") {
        let len = num(lm, "fascicle_length_mm")
            .map(|x| format!("{x:.1} mm"))
            .or_else(|| num(lm, "fascicle_length_px").map(|x| format!("{x:.0} px")))
            .unwrap_or_else(|| "-".into());
        s += &format!(
            "  Fascicles: length {len}, pennation {a:.1} deg, {} measured{}\n",
            lm["fascicle_count"],
            doubt_text(&lm["fascicle_quality"], &lm["fascicle_doubt"])
        );
    }
    let c = &v["calibration"];
    let scale = num(c, "mm_per_px").map(|x| format!("{x:.5} mm/px"));
    s += &match (c["kind"].as_str(), scale) {
        (Some("ruler"), Some(scale)) => format!(
            " Calibrated: yes, from the ruler: {scale} ({} ticks, residual {:.2} px)\n",
            c["ticks"],
            num(c, "residual_px").unwrap_or(0.0)
        ),
        (Some("manual"), Some(scale)) => format!(" Calibrated: yes, manual: {scale}\n"),
        (Some("manual"), None) => " Calibrated: yes, manual\n".to_string(),
        _ if v["calibrated"].as_bool().unwrap_or(false) => " Calibrated: yes\n".to_string(),
        _ => format!(
            " Calibrated: no (numbers in pixels){}\n",
            c["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    };
    let g = &v["igtl"];
    if let Some(listen) = g["listen"].as_str() {
        let clients = g["clients"].as_u64().unwrap_or(0);
        s += &format!(
            "OpenIGTLink: {listen}, {clients} client{}, {} frames sent, {} not read in time\n",
            if clients == 1 { "" } else { "s" },
            g["frames_sent"],
            g["frames_dropped"]
        );
    }
    s += &format!(
        "      DICOM: {} snapshots waiting to be sent\n",
        v["dicom_queue"].as_u64().unwrap_or(0)
    );
    let w = &v["viewer"];
    if let Some(url) = w["url"].as_str() {
        s +=
            &match w["cert_sha256"].as_str() {
                Some(fp) => {
                    format!(
                "     Viewer: {url} (TLS{}; certificate SHA-256 {fp}; public key sha256/{})\n",
                if w["self_signed"].as_bool() == Some(true) { ", self-signed" } else { "" },
                w["spki_sha256"].as_str().unwrap_or("")
            )
                }
                None => format!("     Viewer: {url}\n"),
            };
    }
    let now_us = crate::clock::realtime_us();
    s += &peer_line("       PACS", &v["pacs"], now_us, "");
    let items = v["worklist"]["items"].as_u64().unwrap_or(0);
    s += &peer_line(
        "   Worklist",
        &v["worklist"],
        now_us,
        &format!("{items} scheduled steps; "),
    );
    s
}

/// A DICOM peer's line (`PACS:`, `Worklist:`): when it last answered, or why it is not
/// answering (with `kept`, what is kept meanwhile). Empty without that peer.
fn peer_line(label: &str, w: &serde_json::Value, now_us: i64, kept: &str) -> String {
    let Some(peer) = w["peer"].as_str() else {
        return String::new();
    };
    let answered = w["last_answer_us"].as_i64().filter(|&t| t > 0);
    let when = match answered {
        Some(t) => format!("answered {:.0} s ago", (now_us - t).max(0) as f64 / 1e6),
        None => "never answered".to_string(),
    };
    match w["error"].as_str().filter(|e| !e.is_empty()) {
        None if answered.is_none() => format!("{label}: {peer}, not asked yet\n"),
        None => format!("{label}: {peer}, {kept}{when}\n"),
        Some(e) => format!("{label}: {peer} NOT ANSWERING: {e}; {kept}{when}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_line_says_when_it_answered_or_why_not() {
        let ok = serde_json::json!({"peer": "WL@h:1", "last_answer_us": 1_000_000, "error": ""});
        assert_eq!(
            peer_line("Worklist", &ok, 13_000_000, "2 steps; "),
            "Worklist: WL@h:1, 2 steps; answered 12 s ago\n"
        );
        let down = serde_json::json!({"peer": "WL@h:1", "last_answer_us": 1_000_000, "error": "cannot reach"});
        assert_eq!(
            peer_line("Worklist", &down, 13_000_000, "2 steps; "),
            "Worklist: WL@h:1 NOT ANSWERING: cannot reach; 2 steps; answered 12 s ago\n"
        );
        let never = serde_json::json!({"peer": "P@h:1", "last_answer_us": 0, "error": "refused"});
        assert_eq!(
            peer_line("PACS", &never, 5, ""),
            "PACS: P@h:1 NOT ANSWERING: refused; never answered\n"
        );
        assert_eq!(peer_line("PACS", &serde_json::json!({}), 0, ""), "");
    }

    #[test]
    fn a_doubtful_last_measurement_is_said_with_its_reasons_in_words() {
        let v = serde_json::json!({
            "last_measurement": {
                "seq": 12, "thickness_px": 80.0, "confidence": 0.9, "flag": "",
                "quality": "doubtful", "doubt": ["short_bands", "jump"],
            },
        });
        let text = human(&v);
        assert!(
            text.contains(
                "DOUBTFUL: the aponeuroses overlap too little; the number jumped against the last frames"
            ),
            "{text}"
        );
        let ok = serde_json::json!({
            "last_measurement": {"seq": 12, "thickness_px": 80.0, "quality": "ok", "doubt": []},
        });
        assert!(!human(&ok).contains("DOUBTFUL"), "{}", human(&ok));
    }
}
