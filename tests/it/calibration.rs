//! Calibration from the on-screen ruler, live: `pocusd run` on the demo with screen furniture and no
//! calibration set reads the phantom's depth ruler on every frame; mm per px and thickness in mm
//! agree with the phantom's physical scale (from its parameters: 40 mm over the image height), and
//! the D-Bus `Calibration` property and `pocusd status` say where the scale came from. Without a
//! ruler, millimetres are withheld with the reason.

use std::time::Duration;

use crate::daemon_support::*;

fn values(text: &str) -> serde_json::Value {
    // `pocusd status --json` is the parseable form of the same properties.
    serde_json::from_str(text).unwrap()
}

#[test]
fn the_demo_with_furniture_is_calibrated_from_its_ruler_on_every_frame() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = demo_daemon(&bus, tmp.path(), "demo?fps=15&furniture=1&seed=3");
    wait_for("the daemon to stream", Duration::from_secs(60), || {
        name_has_owner(&bus) && state_of(&bus) == 1
    });
    // The phantom's scale: depth_mm (40) over the image's height (17/20 of 480 px).
    let truth_mm_per_px = 40.0 / (480.0 * 17.0 / 20.0);
    let mut seen = std::collections::BTreeSet::new();
    let mut thickness_errors = Vec::new();
    wait_for("20 measurements", Duration::from_secs(60), || {
        let (v, _) = status(&bus, true);
        let lm = &v.unwrap()["last_measurement"];
        if let Some(seq) = lm["seq"].as_u64() {
            if seen.insert(seq) {
                assert_eq!(lm["calibration_kind"], "ruler", "seq {seq}: {lm}");
                let mm = lm["mm_per_px"].as_f64().unwrap();
                assert!(
                    (mm / truth_mm_per_px - 1.0).abs() < 0.01,
                    "seq {seq}: {mm} mm/px, phantom {truth_mm_per_px}"
                );
                let (t, p) = (
                    lm["thickness_mm"].as_f64().unwrap(),
                    lm["phantom_thickness_mm"].as_f64().unwrap(),
                );
                thickness_errors.push(t / p - 1.0);
            }
        }
        seen.len() >= 20
    });
    let worst = thickness_errors.iter().fold(0.0f64, |a, e| a.max(e.abs()));
    eprintln!(
        "{} measurements: ruler every time, worst thickness_mm error {:.2} % of phantom_thickness_mm",
        thickness_errors.len(),
        100.0 * worst
    );
    assert!(worst <= 0.02, "thickness_mm off by {:.2} %", 100.0 * worst);
    let c = get(&bus, "Calibration");
    assert!(c.contains("'kind': <'ruler'>"), "{c}");
    assert!(c.contains("'ticks': <uint64 9>"), "{c}");
    let (_, text) = status(&bus, false);
    assert!(
        text.contains("Calibrated: yes, from the ruler: 0.09804 mm/px (9 ticks"),
        "{text}"
    );
    assert!(d.stop().success(), "{}", d.log());
    // The log's calibration object.
    let log_dir = tmp.path().join("state/log");
    let log = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    let line: serde_json::Value = values(log.lines().last().unwrap());
    assert_eq!(line["calibration"]["kind"], "ruler", "{line}");
    assert_eq!(line["calibration"]["ticks"], 9, "{line}");
    assert!(line["calibration"]["residual_px"].as_f64().unwrap() < 0.5);
}

#[test]
fn without_a_ruler_millimetres_are_withheld_with_the_reason_and_manual_wins() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = demo_daemon(&bus, tmp.path(), "demo?fps=15&seed=3");
    wait_for("a measurement", Duration::from_secs(60), || {
        name_has_owner(&bus) && get(&bus, "LastMeasurement").contains("'seq'")
    });
    let lm = get(&bus, "LastMeasurement");
    assert!(lm.contains("'calibration_kind': <'none'>"), "{lm}");
    assert!(!lm.contains("'thickness_mm'"), "{lm}");
    assert!(lm.contains("'flag': <'uncalibrated'>"), "{lm}");
    assert!(lm.contains("no room beside the image for a ruler"), "{lm}");
    let (_, text) = status(&bus, false);
    assert!(
        text.contains("Calibrated: no (numbers in pixels): ruler: no room beside the image"),
        "{text}"
    );
    assert!(d.stop().success(), "{}", d.log());

    // A manual calibration wins over the ruler.
    let cfg = tmp.path().join("manual.toml");
    std::fs::write(
        &cfg,
        "[calibration]\nmm_per_px_x = 0.2\nmm_per_px_y = 0.2\n",
    )
    .unwrap();
    let mut d = Daemon::spawn(
        daemon_cmd(
            &bus,
            true,
            &tmp.path().join("state2"),
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--source",
                "demo?fps=15&furniture=1&seed=3",
            ],
        ),
        tmp.path(),
    );
    wait_for("a measurement", Duration::from_secs(60), || {
        name_has_owner(&bus) && get(&bus, "LastMeasurement").contains("'seq'")
    });
    let lm = get(&bus, "LastMeasurement");
    assert!(lm.contains("'calibration_kind': <'manual'>"), "{lm}");
    assert!(lm.contains("'mm_per_px': <0.2"), "{lm}");
    assert!(d.stop().success(), "{}", d.log());

    // A bad key stops start-up with its name.
    std::fs::write(&cfg, "[calibration]\nmode = \"guess\"\n").unwrap();
    let o = crate::common::pocusd()
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        crate::common::stderr(&o).contains("calibration.mode"),
        "{}",
        crate::common::stderr(&o)
    );
}
