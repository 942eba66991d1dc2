//! The verdict on a live stream: no crying wolf on the demo phantom (without screen furniture,
//! and with it and the fascicle model beside the aponeurosis model as scripts/demo.sh runs it;
//! well below capacity), every logged frame carrying `quality` and `doubt`, and `/metrics`
//! counting doubtful frames by reason.

use std::time::Duration;

use crate::daemon_support::*;
use crate::reliability::log_lines;

/// Runs the demo `source` for `frames` frames with every measurement logged (with `extra`, the
/// shipped fascicle model too); returns the log.
fn run_demo(source: &str, extra: bool, frames: u64) -> Vec<serde_json::Value> {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let frames = frames.to_string();
    let mut args = vec!["--source", source, "--frames", &frames];
    if extra {
        args.extend(["--extra-model", "models/fascicle.onnx"]);
    }
    let mut cmd = daemon_cmd(&bus, true, &state, &args);
    cmd.env("POCUSD__DBUS__MEASUREMENT_HZ", "1000");
    let mut d = Daemon::spawn(cmd, tmp.path());
    let st = d.wait(Duration::from_secs(600));
    assert!(st.success(), "{}", d.log());
    log_lines(&state)
}

#[test]
fn the_demo_phantom_gives_no_doubtful_frame() {
    // The fascicle model runs only where it was trained to (the demo with furniture, 128x256):
    // on the bare phantom its pennation is 6 degrees off and it is rightly doubtful.
    for (source, extra) in [("demo?fps=10", false), ("demo?fps=10&furniture=1", true)] {
        let lines = run_demo(source, extra, 150);
        assert!(lines.len() >= 140, "{source}: {} lines", lines.len());
        let mut fascicle_verdicts = 0;
        for l in &lines {
            assert_eq!(l["quality"], "ok", "{source}: {l}");
            assert_eq!(l["doubt"], serde_json::json!([]), "{source}: {l}");
            assert_eq!(l["values"]["quality"], "ok", "{source}: {l}");
            if let Some(q) = l["values"]["fascicle_quality"].as_str() {
                fascicle_verdicts += 1;
                assert_eq!(q, "ok", "{source}: {l}");
            }
        }
        assert!(
            !extra || fascicle_verdicts > lines.len() / 2,
            "{source}: the fascicle model's verdict on {fascicle_verdicts} of {} frames",
            lines.len()
        );
    }
}

#[test]
fn doubtful_frames_are_counted_by_reason() {
    // The aponeurosis model on the fetal-head phantom: nothing it can measure.
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cmd = daemon_cmd(&bus, true, &state, &["--source", "demo?fps=20&task=region"]);
    let mut d = Daemon::spawn(cmd, tmp.path());
    let addr = crate::viewer::viewer_addr(&d);
    let doubtful = || {
        let (code, _, body) = crate::viewer::http(addr, "GET", "/metrics", "");
        assert_eq!(code, 200);
        let text = String::from_utf8(body).unwrap();
        let mut sum = 0.0;
        let mut reasons = 0;
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("pocusd_doubtful_frames_total{reason=\"") {
                reasons += 1;
                let (code, n) = rest.split_once("\"} ").unwrap();
                assert!(
                    pocusd::postprocess::quality::Doubt::parse(code).is_some(),
                    "{l}"
                );
                sum += n.parse::<f64>().unwrap();
            }
        }
        assert_eq!(reasons, pocusd::postprocess::quality::Doubt::ALL.len());
        sum
    };
    wait_for("doubtful frames counted", Duration::from_secs(60), || {
        doubtful() >= 10.0
    });
    // Most frames are doubtful (a head's top and bottom can pass for two bands now and then):
    // the status line says so while the last one is.
    wait_for(
        "pocusd status saying DOUBTFUL",
        Duration::from_secs(60),
        || status(&bus, false).1.contains("DOUBTFUL: "),
    );
    assert!(d.stop().success(), "{}", d.log());
}
