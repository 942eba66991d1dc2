//! The field's protocols against real peers nobody on this project wrote, on loopback:
//! OpenIGTLink with pyigtl (PyPI), DICOM files checked by dciodvfy (dicom3tools) and dcmdump
//! (dcmtk), C-STORE to a real Orthanc (Debian's `orthanc`) started by the test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon_support::*;
use crate::viewer::{chromium, http, metric, viewer_addr};

/// The address a log line names after `marker` (e.g. "OpenIGTLink server on ").
fn logged_addr(d: &Daemon, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = d.log();
        if let Some(i) = log.find(marker) {
            let rest = &log[i + marker.len()..];
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no {marker:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `uint64`/`uint32` value of a key in gdbus's text of an `a{sv}`.
fn dict_uint(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("'{key}': <"))? + key.len() + 5;
    let rest = &text[at..];
    let rest = rest
        .strip_prefix("uint64 ")
        .or_else(|| rest.strip_prefix("uint32 "))
        .unwrap_or(rest);
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn metrics(d: &Daemon) -> String {
    let (code, _, body) = http(viewer_addr(d), "GET", "/metrics", "");
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap()
}

/// `pocusd run` on `source` with `[igtl]` on and `env`; returns it with the address it listens on.
fn igtl_daemon(bus: &Bus, dir: &Path, source: &str, env: &[(&str, &str)]) -> (Daemon, String) {
    let mut cmd = daemon_cmd(bus, true, &dir.join("state"), &["--source", source]);
    cmd.env("POCUSD__IGTL__ENABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::spawn(cmd, dir);
    let addr = logged_addr(&d, "OpenIGTLink server on ");
    (d, addr)
}

#[test]
#[ignore = "needs pyigtl from scripts/setup.sh; scripts/test.sh runs it"]
fn igtl_images_prediction_and_measurement_reach_pyigtl_clients() {
    let _alone = common::exclusive();
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, addr) = igtl_daemon(
        &bus,
        tmp.path(),
        "demo?fps=15&furniture=1",
        &[
            ("POCUSD__IGTL__LISTEN", "127.0.0.1:0"),
            ("POCUSD__DBUS__MEASUREMENT_HZ", "1000"),
        ],
    );
    let port = addr.rsplit(':').next().unwrap().to_string();
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    // The region of interest of the demo with screen furniture (stable from frame to frame).
    let snap = snapshot_record(&bus);
    let roi = &snap["roi"];
    let (w, h) = (roi["w"].as_u64().unwrap(), roi["h"].as_u64().unwrap());
    let frames_before = metric(&metrics(&d), "pocusd_frames_total");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/igtl_client.py");
    let mut py: Child = Command::new(common::python())
        .arg(&script)
        .arg(&port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("phase 1 output").unwrap()).unwrap();
    assert_eq!(first["phase"], "received", "{first}");

    // The raw bytes: header version 2 with the extended header, CRC-64 right by pyigtl's own
    // function, the three device names in order, capture-time timestamps.
    let raw = first["raw"].as_array().unwrap();
    let names: Vec<(&str, &str)> = raw
        .iter()
        .map(|m| (m["type"].as_str().unwrap(), m["device"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("IMAGE", "Image"),
            ("IMAGE", "Prediction"),
            ("STRING", "Measurement")
        ]
    );
    for m in raw {
        assert_eq!(m["version"], 2, "{m}");
        assert_eq!(m["crc_ok"], true, "{m}");
        assert_eq!(m["extended_header"], 12, "{m}");
        assert!(m["metadata_bytes"].as_u64().unwrap() > 0, "{m}");
    }

    // Both clients at once; geometry and spacing as the daemon's calibration says.
    for c in ["c1", "c2"] {
        let g = &first[c];
        assert!(!g.is_null(), "{c} received nothing: {first}");
        let m = &g["measurement"];
        let mm_per_px = m["values"]["mm_per_px"]
            .as_f64()
            .unwrap_or_else(|| panic!("{m}"));
        assert_eq!(g["image_shape"], serde_json::json!([1, h, w]), "{g}");
        assert_eq!(g["prediction_shape"], serde_json::json!([1, h, w]), "{g}");
        assert_eq!(g["image_dtype"], "uint8");
        let sp = g["image_spacing"].as_array().unwrap();
        assert!(
            (sp[0].as_f64().unwrap() - mm_per_px).abs() < 1e-4 * mm_per_px.max(1.0),
            "image spacing {sp:?} against the ruler's {mm_per_px} mm/px"
        );
        assert_eq!(g["image_spacing"], g["prediction_spacing"]);
        assert_eq!(g["prediction_values"], serde_json::json!([0, 1]), "{g}");
        assert!(g["prediction_ones"].as_u64().unwrap() > 100, "{g}");
        assert!(g["image_mean"].as_f64().unwrap() > 5.0, "{g}");
        assert_eq!(g["header_version"], 2);
        // The same record as the SSE event: its keys and the capture time as timestamp.
        assert_eq!(m["type"], "measurement", "{m}");
        assert!(m["values"]["thickness_mm"].as_f64().is_some(), "{m}");
        let ts_us = m["timestamp_us"].as_i64().unwrap() as f64;
        let igtl_ts = g["measurement_timestamp"].as_f64().unwrap();
        assert!((igtl_ts - ts_us / 1e6).abs() < 1e-5, "{igtl_ts} vs {ts_us}");
    }
    // One client never read: the other kept receiving and the pipeline kept going.
    let distinct = first["c1_distinct_frames_while_one_stalls"]
        .as_u64()
        .unwrap();
    assert!(distinct >= 10, "c1 saw {distinct} frames in 5 s at 15 fps");
    let m1 = metrics(&d);
    assert!(metric(&m1, "pocusd_frames_total") > frames_before + 40.0);
    assert!(
        metric(&m1, "pocusd_igtl_frames_dropped_total") > 0.0,
        "the stalled client's frames were dropped and counted:\n{m1}"
    );
    // The second client and the stalled socket left: forgotten.
    wait_for("two clients forgotten", Duration::from_secs(20), || {
        metric(&metrics(&d), "pocusd_igtl_clients") == 1.0
    });
    wait_for(
        "the Igtl property with one client",
        Duration::from_secs(20),
        || dict_uint(&get(&bus, "Igtl"), "clients") == Some(1),
    );
    let igtl = get(&bus, "Igtl");
    assert!(dict_uint(&igtl, "frames_dropped").unwrap() > 0, "{igtl}");
    let (_, human) = status(&bus, false);
    assert!(
        human.contains(&format!("OpenIGTLink: {addr}, 1 client, ")),
        "{human}"
    );

    // Paused, the newest Measurement's seq is D-Bus's last one.
    let o = call(&bus, "Pause", &["true"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    std::thread::sleep(Duration::from_millis(1500));
    writeln!(py.stdin.as_mut().unwrap(), "go").unwrap();
    let last: serde_json::Value =
        serde_json::from_str(&lines.next().expect("phase 2 output").unwrap()).unwrap();
    let lm = get(&bus, "LastMeasurement");
    let dbus_seq = dict_uint(&lm, "seq").unwrap();
    assert_eq!(last["seq"].as_u64(), Some(dbus_seq), "{last}");
    assert!(py.wait().unwrap().success());

    // The verdict on that one frame, the same in every output: OpenIGTLink (above), D-Bus, the
    // SSE event, the log line and the snapshot.
    let quality = last["quality"].as_str().unwrap_or_else(|| panic!("{last}"));
    assert!(["ok", "doubtful"].contains(&quality), "{last}");
    let doubt: Vec<String> = last["doubt"]
        .as_array()
        .unwrap_or_else(|| panic!("{last}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(quality == "ok", doubt.is_empty(), "{last}");
    assert!(lm.contains(&format!("'quality': <'{quality}'>")), "{lm}");
    let dbus_doubt = if doubt.is_empty() {
        "'doubt': <@as []>".to_string()
    } else {
        let q: Vec<String> = doubt.iter().map(|c| format!("'{c}'")).collect();
        format!("'doubt': <[{}]>", q.join(", "))
    };
    assert!(lm.contains(&dbus_doubt), "{dbus_doubt} not in {lm}");
    let mut ev = crate::viewer::Stream::open(viewer_addr(&d), "/events");
    let event = loop {
        let e = ev.event();
        if e["type"] == "measurement" {
            break e;
        }
    };
    assert_eq!(event["seq"].as_u64(), Some(dbus_seq), "{event}");
    assert_eq!(event["values"]["quality"], quality, "{event}");
    assert_eq!(
        event["values"]["doubt"],
        serde_json::json!(doubt),
        "{event}"
    );
    let logged = std::fs::read_dir(tmp.path().join("state/log"))
        .unwrap()
        .flatten()
        .flat_map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .find(|l| l["seq"].as_u64() == Some(dbus_seq))
        .expect("the frame's log line");
    assert_eq!(logged["quality"], quality, "{logged}");
    assert_eq!(logged["doubt"], serde_json::json!(doubt), "{logged}");
    assert_eq!(logged["values"]["quality"], quality, "{logged}");
    let snap = snapshot_record(&bus);
    assert_eq!(snap["seq"].as_u64(), Some(dbus_seq), "{snap}");
    assert_eq!(snap["quality"], quality, "{snap}");
    assert_eq!(snap["doubt"], serde_json::json!(doubt), "{snap}");
    assert!(d.stop().success(), "{}", d.log());
    assert!(d.log().contains("OpenIGTLink: client"), "{}", d.log());
}

/// Takes a snapshot over D-Bus; returns its measurement.json.
fn snapshot_record(bus: &Bus) -> serde_json::Value {
    let o = call(bus, "Snapshot", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let snap = PathBuf::from(common::stdout(&o).split('\'').nth(1).unwrap());
    serde_json::from_str(&std::fs::read_to_string(snap.join("measurement.json")).unwrap()).unwrap()
}

/// A snapshot folder of a daemon with an exam set; returns (folder, daemon log).
fn snapshot_with_exam(bus: &Bus, d: &Daemon, exam: Option<[&str; 3]>) -> PathBuf {
    if let Some(e) = exam {
        let o = call(bus, "SetExam", &e);
        assert!(o.status.success(), "{}", common::stderr(&o));
    }
    let o = call(bus, "Snapshot", &[]);
    assert!(o.status.success(), "{}\n{}", common::stderr(&o), d.log());
    let out = common::stdout(&o);
    let path = out.split('\'').nth(1).unwrap_or_else(|| panic!("{out}"));
    PathBuf::from(path)
}

/// dcmdump's text (UIDs as numbers; long texts in full, pixel data left out).
fn dump(file: &Path) -> String {
    let o = Command::new("dcmdump")
        .args(["-Un", "+L"])
        .arg(file)
        .output()
        .expect("dcmdump runs (scripts/setup.sh installs dcmtk)");
    assert!(
        o.status.success(),
        "dcmdump {}: {}",
        file.display(),
        common::stderr(&o)
    );
    common::stdout(&o)
        .lines()
        .filter(|l| !l.starts_with("(7fe0,0010)"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn tag_value(dump: &str, tag: &str) -> String {
    let line = dump
        .lines()
        .find(|l| l.trim_start().starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} in\n{dump}"));
    line.split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or("")
        .to_string()
}

/// dciodvfy on each of a snapshot's four files (no error, the right IOD) and PixelMed's SR
/// validator on its report (no error, TID 1500 found).
fn check_snapshot_files(dir: &Path) {
    for (f, iod) in [
        ("image.dcm", "USImage"),
        ("overlay.dcm", "USImage"),
        ("seg.dcm", "Segmentation"),
        ("sr.dcm", "Comprehensive3DSR"),
    ] {
        dciodvfy_clean(&dir.join(f), iod);
    }
    let o = Command::new("java")
        .args([
            "-Djdk.xml.xpathExprOpLimit=0",
            "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0",
            "-cp",
            "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator",
        ])
        .arg(dir.join("sr.dcm"))
        .output()
        .expect("java runs (scripts/setup.sh installs default-jre-headless and libpixelmed-java)");
    let report = format!("{}{}", common::stdout(&o), common::stderr(&o));
    assert!(
        report.contains("Found Root Template TID_1500"),
        "PixelMed did not find TID 1500:\n{report}"
    );
    assert!(report.contains("IOD validation complete"), "{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.is_empty(),
        "PixelMed on {}:\n{report}",
        dir.display()
    );
}

/// dciodvfy on `p`: no error, and it checked the file as `iod`.
pub(crate) fn dciodvfy_clean(p: &Path, iod: &str) {
    assert!(p.is_file(), "{} missing", p.display());
    let o = Command::new("dciodvfy")
        .arg(p)
        .output()
        .expect("dciodvfy runs (scripts/setup.sh installs dicom3tools)");
    let report = format!("{}{}", common::stdout(&o), common::stderr(&o));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy {}:\n{report}", p.display());
    // It recognised the object it checked against its IOD.
    assert!(
        report.lines().any(|l| l.trim() == iod),
        "dciodvfy did not check {} as {iod}:\n{report}",
        p.display()
    );
}

/// What highdicom reads from a snapshot (tests/it/dicom_check.py).
fn highdicom_read(dir: &Path) -> serde_json::Value {
    highdicom_run(&[dir.as_os_str()])
}

/// tests/it/dicom_check.py with `args`; its JSON.
pub(crate) fn highdicom_run(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/dicom_check.py");
    let o = Command::new(common::python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    serde_json::from_str(&common::stdout(&o)).unwrap()
}

/// The measurement with concept code `code` (and the median's derivation when it has one)
/// among highdicom's groups.
fn measurement<'a>(found: &'a serde_json::Value, code: &str) -> &'a serde_json::Value {
    let all: Vec<&serde_json::Value> = found["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["measurements"].as_array().unwrap())
        .filter(|m| m["code"] == code)
        .collect();
    all.iter()
        .find(|m| m["derivation"] == "373099004")
        .or(all.first())
        .copied()
        .unwrap_or_else(|| panic!("no measurement {code} in {found}"))
}

/// A demo daemon with `args` (after `--source`), streaming and calibrated by its ruler.
fn calibrated_daemon(bus: &Bus, dir: &Path, args: &[&str]) -> Daemon {
    let d = Daemon::spawn(daemon_cmd(bus, true, &dir.join("state"), args), dir);
    wait_for("streaming", Duration::from_secs(60), || state_of(bus) == 1);
    wait_for("calibrated", Duration::from_secs(60), || {
        get(bus, "Calibrated").contains("true")
    });
    d
}

/// A snapshot's measurement.json.
fn record_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("measurement.json")).unwrap()).unwrap()
}

#[test]
#[ignore = "needs dicom3tools, dcmtk, PixelMed and highdicom from scripts/setup.sh; scripts/test.sh runs it"]
fn a_fetal_head_snapshot_reports_its_circumference_in_tid_1500() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = calibrated_daemon(
        &bus,
        tmp.path(),
        &[
            "--source",
            "demo?fps=15&task=region&furniture=1",
            "--model",
            "models/fetal-head.onnx",
        ],
    );
    let dir = snapshot_with_exam(&bus, &d, None);
    check_snapshot_files(&dir);
    let found = highdicom_read(&dir);
    let record = record_of(&dir);
    let hc = record["measurements"]["circumference_mm"]
        .as_f64()
        .unwrap_or_else(|| panic!("no circumference: {record}"));
    let m = measurement(&found, "11984-2");
    assert_eq!(m["scheme"], "LN", "{found}");
    assert_eq!(m["unit"], "mm", "{found}");
    assert!((m["value"].as_f64().unwrap() - hc).abs() < 1e-5, "{found}");
    assert_eq!(measurement(&found, "42798000")["unit"], "mm2", "{found}");
    let segments = found["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "{found}");
    assert_eq!(segments[0]["label"], "fetal head", "{found}");
    assert_eq!(segments[0]["type"], "69536005", "{found}");
    assert_eq!(segments[0]["equals_mask_png"], true, "{found}");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
#[ignore = "needs dicom3tools, dcmtk, PixelMed and highdicom from scripts/setup.sh; scripts/test.sh runs it"]
fn a_fascicle_model_snapshot_reports_length_and_angle_in_tid_1500() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = calibrated_daemon(
        &bus,
        tmp.path(),
        &[
            "--source",
            "demo?fps=15&furniture=1",
            "--model",
            "models/fascicle.onnx",
        ],
    );
    let dir = snapshot_with_exam(&bus, &d, None);
    check_snapshot_files(&dir);
    let found = highdicom_read(&dir);
    let record = record_of(&dir);
    let segments = found["segments"].as_array().unwrap();
    assert_eq!(segments[0]["label"], "fascicles", "{found}");
    assert_eq!(segments[0]["equals_mask_png"], true, "{found}");
    let groups = found["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "one model, one group: {found}");
    match record["measurements"]["pennation_angle_deg"].as_f64() {
        Some(angle) => {
            let m = measurement(&found, "1483009");
            assert_eq!(m["unit"], "deg", "{found}");
            assert!(
                (m["value"].as_f64().unwrap() - angle).abs() < 1e-5,
                "{found}"
            );
        }
        // Without aponeuroses of its own the fascicle model gives no pennation: then the
        // report has no angle either, and says why.
        None => assert!(
            !groups[0]["evaluations"].as_array().unwrap().is_empty(),
            "{found}"
        ),
    }
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
#[ignore = "needs dicom3tools, dcmtk, PixelMed and highdicom from scripts/setup.sh; scripts/test.sh runs it"]
fn snapshots_write_dicom_that_dciodvfy_pixelmed_and_highdicom_accept() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = calibrated_daemon(
        &bus,
        tmp.path(),
        &[
            "--source",
            "demo?fps=15&furniture=1",
            "--extra-model",
            "models/fascicle.onnx",
        ],
    );
    let anon = snapshot_with_exam(&bus, &d, None);
    let named = snapshot_with_exam(&bus, &d, Some(["PID-42", "DOE^JANE", "ACC7"]));
    // Only operators may set the exam: the policy gives SetExam no exception (checked with
    // the other methods in the daemon policy test); a bad value is refused with its name.
    let o = call(&bus, "SetExam", &["", "", "ACC-0123456789-XYZ"]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("accession"),
        "{}",
        common::stderr(&o)
    );

    for dir in [&anon, &named] {
        check_snapshot_files(dir);
    }
    // The report and the Segmentation read by a reference reader (highdicom): the thickness
    // with its code and unit, the fascicle numbers in their own group, and the mask's pixels.
    let found = highdicom_read(&named);
    let record = record_of(&named);
    let groups = found["groups"].as_array().unwrap();
    let thickness = record["measurements"]["thickness_mm"].as_f64().unwrap();
    let m = measurement(&found, "59089-3");
    assert_eq!(m["unit"], "mm", "{found}");
    assert_eq!(m["derivation"], "373099004", "the median: {found}");
    assert!(
        (m["value"].as_f64().unwrap() - thickness).abs() < 1e-5,
        "{thickness} {found}"
    );
    assert_eq!(groups[0]["frame"], 1, "{found}");
    let quality = groups[0]["evaluations"][0]["value"].as_str().unwrap();
    assert_eq!(quality, record["quality"].as_str().unwrap(), "{found}");
    if let Some(length) = record["measurements"]["fascicle_length_mm"].as_f64() {
        let f = measurement(&found, "410668003");
        assert_eq!(f["unit"], "mm", "{found}");
        assert!(
            (f["value"].as_f64().unwrap() - length).abs() < 1e-5,
            "{found}"
        );
        let angle = measurement(&found, "1483009");
        assert_eq!(angle["unit"], "deg", "{found}");
        assert_eq!(groups[1]["frame"], 2, "the fascicle mask's frame: {found}");
    } else {
        panic!("the demo with the fascicle model gave no fascicle length: {record}");
    }
    let segments = found["segments"].as_array().unwrap();
    assert_eq!(segments[0]["label"], "aponeuroses", "{found}");
    assert_eq!(segments[0]["equals_mask_png"], true, "{found}");
    assert!(segments[0]["pixels"].as_u64().unwrap() > 100, "{found}");
    assert_eq!(segments[1]["label"], "fascicles", "{found}");
    let a = dump(&anon.join("image.dcm"));
    assert_eq!(tag_value(&a, "(0010,0010)"), "ANONYMOUS");
    assert_eq!(tag_value(&a, "(0010,0020)"), "ANONYMOUS");
    assert_eq!(tag_value(&a, "(0008,0016)"), "1.2.840.10008.5.1.4.1.1.6.1");
    assert!(tag_value(&a, "(0020,000d)").starts_with("2.25."));
    // The ruler's scale travels as the US region calibration, in cm.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(anon.join("measurement.json")).unwrap())
            .unwrap();
    let mm_per_px = json["calibration"]["mm_per_px"].as_f64().unwrap();
    // dcmdump prints binary numbers without brackets: "(0018,602c) FD 0.0098...".
    let delta_cm: f64 = a
        .lines()
        .find(|l| l.trim_start().starts_with("(0018,602c) FD "))
        .and_then(|l| {
            l.trim_start()["(0018,602c) FD ".len()..]
                .split_whitespace()
                .next()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no PhysicalDeltaX in\n{a}"));
    assert!(
        (delta_cm * 10.0 - mm_per_px).abs() < 1e-9,
        "{delta_cm} cm vs {mm_per_px} mm"
    );

    let n = dump(&named.join("image.dcm"));
    assert_eq!(tag_value(&n, "(0010,0010)"), "DOE^JANE");
    assert_eq!(tag_value(&n, "(0010,0020)"), "PID-42");
    assert_eq!(tag_value(&n, "(0008,0050)"), "ACC7");
    assert_ne!(
        tag_value(&n, "(0020,000d)"),
        tag_value(&a, "(0020,000d)"),
        "SetExam starts a new study"
    );
    // The report: the model's sha256 and the calibration travel as the algorithm's version
    // and parameters.
    let sr_json = &record;
    let sr = dump(&named.join("sr.dcm"));
    assert!(sr.contains("[59089-3]") && sr.contains("[LN]"), "{sr}");
    assert!(sr.contains("[mm]") && sr.contains("[UCUM]"), "{sr}");
    assert!(
        sr.contains(sr_json["model_sha256"].as_str().unwrap()),
        "{sr}"
    );
    assert!(sr.contains("\"kind\":\"ruler\""), "{sr}");
    assert!(d.stop().success());
}

/// Orthanc on loopback with a temporary configuration and storage.
struct Orthanc {
    child: Option<Child>,
    dir: PathBuf,
    pub dicom_port: u16,
    pub http_port: u16,
    /// A folder of worklist files served by Orthanc's ModalityWorklists plugin.
    pub worklists: Option<PathBuf>,
    /// DICOM TLS: certificate, key and the CA it trusts (PEM).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Orthanc {
    fn new(dir: &Path) -> Self {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        Orthanc {
            child: None,
            dicom_port: free_port(),
            http_port: free_port(),
            dir,
            worklists: None,
            tls: None,
        }
    }

    fn start(&mut self) {
        let mut cfg = serde_json::json!({
            "Name": "pocusd-test",
            "StorageDirectory": self.dir.join("db"),
            "IndexDirectory": self.dir.join("db"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": true,
            "Plugins": [],
        });
        if let Some((cert, key, ca)) = &self.tls {
            cfg["DicomTlsEnabled"] = serde_json::json!(true);
            cfg["DicomTlsCertificate"] = serde_json::json!(cert);
            cfg["DicomTlsPrivateKey"] = serde_json::json!(key);
            cfg["DicomTlsTrustedCertificates"] = serde_json::json!(ca);
            cfg["DicomTlsRemoteCertificateRequired"] = serde_json::json!(false);
        }
        if let Some(w) = &self.worklists {
            cfg["Plugins"] =
                serde_json::json!(["/usr/share/orthanc/plugins/libModalityWorklists.so"]);
            cfg["Worklists"] = serde_json::json!({"Enable": true, "Database": w});
            // Orthanc answers worklist queries only from modalities it knows, or from anyone
            // with this.
            cfg["DicomAlwaysAllowFindWorklist"] = serde_json::json!(true);
        }
        let path = self.dir.join("orthanc.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let log = std::fs::File::create(self.dir.join("orthanc.log")).unwrap();
        let child = Command::new("Orthanc")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Orthanc runs (scripts/setup.sh installs orthanc)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.dicom_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "Orthanc did not start: {}",
                std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let (code, _, body) = http(addr, "GET", path, "");
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn instances(&self) -> u64 {
        self.get("/statistics")["CountInstances"].as_u64().unwrap()
    }

    fn peer(&self) -> String {
        format!("ORTHANC@127.0.0.1:{}", self.dicom_port)
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
#[ignore = "needs Orthanc from scripts/setup.sh; scripts/test.sh runs it"]
fn snapshots_reach_a_real_orthanc_by_hand_and_through_the_spool() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut orthanc = Orthanc::new(&tmp.path().join("orthanc"));
    orthanc.start();

    // By hand: `pocusd dicom send`.
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    let mut d = demo_daemon(&bus, &tmp.path().join("a"), "demo?fps=15");
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    let snap = snapshot_with_exam(&bus, &d, Some(["PID-1", "ROE^RICHARD", ""]));
    assert!(d.stop().success());
    let o = common::run(&[
        "dicom",
        "send",
        snap.to_str().unwrap(),
        "--to",
        &orthanc.peer(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        common::stdout(&o)
            .lines()
            .filter(|l| l.starts_with("stored "))
            .count(),
        4
    );
    assert_eq!(orthanc.instances(), 4);
    let studies = orthanc.get("/studies");
    assert_eq!(studies.as_array().unwrap().len(), 1);
    let patients = orthanc.get("/patients?expand");
    assert_eq!(
        patients[0]["MainDicomTags"]["PatientID"], "PID-1",
        "{patients}"
    );
    // A wrong AE title is refused with the peer named.
    let wrong = format!("NOTTHERE@127.0.0.1:{}", orthanc.dicom_port);
    let o = common::run(&["dicom", "send", snap.to_str().unwrap(), "--to", &wrong]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("NOTTHERE@"),
        "{}",
        common::stderr(&o)
    );

    // Automatic: Orthanc down, snapshots spool; back up, every one arrives once.
    orthanc.stop();
    let mut cmd = daemon_cmd(
        &bus,
        true,
        &tmp.path().join("b/state"),
        &["--source", "demo?fps=15"],
    );
    cmd.env("POCUSD__DICOM__STORE", orthanc.peer());
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let mut d = Daemon::spawn(cmd, &tmp.path().join("b"));
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    for _ in 0..2 {
        snapshot_with_exam(&bus, &d, None);
    }
    wait_for("two snapshots spooled", Duration::from_secs(20), || {
        get(&bus, "DicomQueue").contains("uint32 2")
    });
    let (st, human) = status(&bus, false);
    assert!(st.is_none());
    assert!(human.contains("DICOM: 2 snapshots waiting"), "{human}");
    assert!(
        human.contains(&format!("PACS: {} NOT ANSWERING", orthanc.peer()))
            && human.contains("never answered"),
        "{human}"
    );
    orthanc.start();
    wait_for(
        "the spool drained into Orthanc",
        Duration::from_secs(90),
        || get(&bus, "DicomQueue").contains("uint32 0"),
    );
    assert_eq!(orthanc.instances(), 4 + 8, "every spooled file arrived");
    let (_, human) = status(&bus, false);
    assert!(
        human.contains(&format!("PACS: {}, answered", orthanc.peer())),
        "{human}"
    );
    let log = d.log();
    assert_eq!(
        log.matches("stored 4 files of").count(),
        2,
        "each snapshot sent once:\n{log}"
    );
    assert!(log.contains("retried with backoff"), "{log}");
    assert!(d.stop().success());
}

/// Reads whole OpenIGTLink messages from `s` for `skip + secs` seconds; returns how many STRING
/// messages were completed in the last `secs`.
fn count_strings(s: &mut std::net::TcpStream, skip: f64, secs: f64) -> usize {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut buf, mut n) = (Vec::new(), 0);
    let from = Instant::now() + Duration::from_secs_f64(skip);
    let end = from + Duration::from_secs_f64(secs);
    let mut chunk = vec![0u8; 1 << 16];
    while Instant::now() < end {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => continue,
        }
        while buf.len() >= 58 {
            let size = u64::from_be_bytes(buf[42..50].try_into().unwrap()) as usize;
            if buf.len() < 58 + size {
                break;
            }
            if &buf[2..8] == b"STRING" && Instant::now() >= from {
                n += 1;
            }
            buf.drain(..58 + size);
        }
    }
    n
}

#[test]
fn igtl_max_fps_limits_each_client_and_an_open_address_is_warned_about() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, addr) = igtl_daemon(
        &bus,
        tmp.path(),
        "demo?fps=20",
        &[
            ("POCUSD__IGTL__LISTEN", "0.0.0.0:0"),
            ("POCUSD__IGTL__MAX_FPS", "4"),
        ],
    );
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        d.log().contains("no authentication"),
        "a non-loopback listen is warned about:\n{}",
        d.log()
    );
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Skip the first second (the first frame is sent at once), then count 4 s.
    let n = count_strings(&mut s, 1.0, 4.0);
    eprintln!("igtl max_fps 4: {n} frames in 4 s");
    assert!(
        (8..=20).contains(&n),
        "{n} frames in 4 s at max_fps = 4 (source 20 fps)"
    );
    assert!(d.stop().success());
}

/// Worklist files (dump2dcm) in `dir`: today's US step for station POCUSD, one for another
/// station and one CT step, which a query for this station must not list. Each is there for
/// today and for tomorrow (UTC, the day the daemon queries), so a test running across midnight
/// still finds its step after the daemon's next poll.
fn worklist_files(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let day = |when: &str| {
        let o = Command::new("date")
            .args(["-u", "-d", when, "+%Y%m%d"])
            .output()
            .unwrap();
        common::stdout(&o).trim().to_string()
    };
    let days = [("", day("now")), ("-next", day("tomorrow"))];
    for ((name, station, modality, pid), (suffix, today)) in [
        ("mine", "POCUSD", "US", "PID-77"),
        ("other", "OTHERCART", "US", "PID-88"),
        ("ct", "POCUSD", "CT", "PID-99"),
    ]
    .into_iter()
    .flat_map(|item| days.clone().map(|d| (item, d)))
    {
        let dump = format!(
            "(0008,0005) CS [ISO_IR 100]\n(0008,0050) SH [ACC-{pid}]\n(0010,0010) PN [ROE^ANNA]\n\
             (0010,0020) LO [{pid}]\n(0010,0030) DA [19800101]\n(0010,0040) CS [F]\n\
             (0020,000d) UI [1.2.826.0.1.3680043.2.1143.{}]\n(0032,1060) LO [Muscle ultrasound]\n\
             (0040,1001) SH [RP1]\n(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS [{modality}]\n\
             (0040,0001) AE [{station}]\n(0040,0002) DA [{today}]\n(0040,0003) TM [0930]\n\
             (0040,0007) LO [Quadriceps thickness]\n(0040,0009) SH [SPS-{name}]\n(fffe,e00d)\n(fffe,e0dd)\n",
            name.len()
        );
        let txt = dir.join(format!("{name}{suffix}.dump"));
        std::fs::write(&txt, dump).unwrap();
        let o = Command::new("dump2dcm")
            .arg(&txt)
            .arg(dir.join(format!("{name}{suffix}.wl")))
            .output()
            .expect("dump2dcm runs (scripts/setup.sh installs dcmtk)");
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::remove_file(txt).unwrap();
    }
}

fn listed(o: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", common::stderr(o));
    serde_json::from_str::<serde_json::Value>(&common::stdout(o))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
#[ignore = "needs dcmtk and orthanc from scripts/setup.sh; scripts/test.sh runs it"]
fn the_worklist_lists_this_stations_steps_from_wlmscpfs_and_orthanc_and_echo_checks_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wl, port) = wlmscpfs(tmp.path());
    let db = tmp.path().join("wl");
    let peer = format!("WORKLIST@127.0.0.1:{port}");
    let items = listed(&common::run(&[
        "dicom", "worklist", "--from", &peer, "--json",
    ]));
    let _ = wl.kill();
    let _ = wl.wait();
    assert_eq!(
        items.len(),
        1,
        "only today's US step of this station: {items:?}"
    );
    let i = &items[0];
    assert_eq!(i["PatientID"], "PID-77", "{i}");
    assert_eq!(i["PatientName"], "ROE^ANNA", "{i}");
    assert_eq!(i["AccessionNumber"], "ACC-PID-77", "{i}");
    assert_eq!(i["ScheduledProcedureStepID"], "SPS-mine", "{i}");
    assert_eq!(i["StudyInstanceUID"], "1.2.826.0.1.3680043.2.1143.4", "{i}");
    assert_eq!(i["Modality"], "US", "{i}");

    // Orthanc's ModalityWorklists plugin on the same files.
    let mut orthanc = Orthanc::new(&tmp.path().join("orthanc"));
    orthanc.worklists = Some(db.join("WORKLIST"));
    orthanc.start();
    let items = listed(&common::run(&[
        "dicom",
        "worklist",
        "--from",
        &orthanc.peer(),
        "--json",
    ]));
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["PatientID"], "PID-77");
    assert_eq!(items[0]["ScheduledProcedureStepID"], "SPS-mine");

    // C-ECHO: Orthanc answers; a closed port is named as unreachable.
    let o = common::run(&["dicom", "echo", "--to", &orthanc.peer()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stdout(&o).contains("answered C-ECHO"),
        "{}",
        common::stdout(&o)
    );
    let closed = format!("ORTHANC@127.0.0.1:{}", free_port());
    let o = common::run(&["dicom", "echo", "--to", &closed]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains(&closed) && e.contains("cannot reach"), "{e}");
    orthanc.stop();
}

/// wlmscpfs serving `worklist_files` as AE title WORKLIST on a free port; returns it and the port.
fn wlmscpfs(dir: &Path) -> (Child, u16) {
    let db = dir.join("wl");
    worklist_files(&db.join("WORKLIST"));
    std::fs::write(db.join("WORKLIST/lockfile"), "").unwrap();
    let port = free_port();
    let child = Command::new("wlmscpfs")
        .arg("-dfp")
        .arg(&db)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wlmscpfs runs (scripts/setup.sh installs dcmtk)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "wlmscpfs did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

#[test]
#[ignore = "needs dcmtk and chromium from scripts/setup.sh; scripts/test.sh runs it"]
fn the_daemon_lists_the_worklist_in_the_viewer_and_a_selected_item_fills_the_snapshots() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let (mut wl, port) = wlmscpfs(tmp.path());
    let mut cmd = daemon_cmd(
        &bus,
        true,
        &tmp.path().join("state"),
        &["--source", "demo?fps=15"],
    );
    cmd.env(
        "POCUSD__DICOM__WORKLIST",
        format!("WORKLIST@127.0.0.1:{port}"),
    );
    cmd.env("POCUSD__DICOM__WORKLIST_POLL_S", "5");
    let mut d = Daemon::spawn(cmd, tmp.path());
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    wait_for("the worklist answered", Duration::from_secs(60), || {
        get(&bus, "Worklist").contains("'items': <uint64 1>")
    });
    let addr = viewer_addr(&d);
    let (code, _, body) = http(addr, "GET", "/api/worklist", "");
    assert_eq!(code, 200);
    let w: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(w["items"][0]["PatientID"], "PID-77", "{w}");
    assert!(w["error"].is_null(), "{w}");
    // The viewer lists it, with the button that selects it.
    // Chromium dumps at the load event, which can come before the page's first worklist fetch
    // has answered: asked again (up to 10 times).
    let mut dom = String::new();
    for _ in 0..10 {
        dom = common::stdout(&chromium(&["--dump-dom"], &format!("http://{addr}/"), 4000));
        if dom.contains("ROE^ANNA (PID-77)") {
            break;
        }
    }
    assert!(dom.contains("ROE^ANNA (PID-77)"), "{dom}");
    assert!(dom.contains("data-accession=\"ACC-PID-77\""), "{dom}");
    assert!(dom.contains("data-step=\"SPS-mine\""), "{dom}");

    // Selecting (what the button posts) puts the item into the next snapshot's files.
    let (code, _, body) = http(
        addr,
        "POST",
        "/api/worklist/select?accession=ACC-PID-77&step_id=SPS-mine",
        "",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let dir = snapshot_with_exam(&bus, &d, None);
    for f in ["image.dcm", "seg.dcm", "sr.dcm"] {
        let t = dump(&dir.join(f));
        assert_eq!(tag_value(&t, "(0010,0020)"), "PID-77", "{f}");
        assert_eq!(tag_value(&t, "(0010,0010)"), "ROE^ANNA", "{f}");
        assert_eq!(tag_value(&t, "(0010,0030)"), "19800101", "{f}");
        assert_eq!(tag_value(&t, "(0008,0050)"), "ACC-PID-77", "{f}");
        assert_eq!(
            tag_value(&t, "(0020,000d)"),
            "1.2.826.0.1.3680043.2.1143.4",
            "{f}"
        );
        assert!(t.contains("[SPS-mine]") || f == "sr.dcm", "{f}: {t}");
        assert!(t.contains("[RP1]"), "{f}: {t}");
    }
    check_snapshot_files(&dir);
    // D-Bus: an unknown item is refused by name; a known one is accepted.
    let o = call(&bus, "SelectWorklistItem", &["NOPE", "SPS-mine"]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("NOPE"),
        "{}",
        common::stderr(&o)
    );
    let o = call(&bus, "SelectWorklistItem", &["ACC-PID-77", "SPS-mine"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    // The worklist goes down: the last list stays and status says so.
    let _ = wl.kill();
    let _ = wl.wait();
    let o = call(&bus, "RefreshWorklist", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    wait_for("the failure seen", Duration::from_secs(60), || {
        get(&bus, "Worklist").contains("cannot reach")
    });
    let (_, human) = status(&bus, false);
    assert!(
        human.contains("Worklist: WORKLIST@")
            && human.contains("NOT ANSWERING")
            && human.contains("1 scheduled steps; answered"),
        "{human}"
    );
    let (_, _, body) = http(addr, "GET", "/api/worklist", "");
    let w: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(w["items"].as_array().unwrap().len(), 1, "{w}");
    assert!(w["error"].as_str().unwrap().contains("cannot reach"), "{w}");
    // The viewer's form for carts without a worklist (SetExam): the order is gone with it.
    let (code, _, body) = http(
        addr,
        "POST",
        "/api/exam?patient_id=PID-9&patient_name=DOE%5EJOHN&accession=A9",
        "",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let t = dump(&snapshot_with_exam(&bus, &d, None).join("image.dcm"));
    assert_eq!(tag_value(&t, "(0010,0020)"), "PID-9");
    assert_eq!(tag_value(&t, "(0010,0010)"), "DOE^JOHN");
    assert!(!t.contains("[RP1]"), "{t}");
    assert!(d.stop().success(), "{}", d.log());
}

/// A CA (`NAME-ca.pem`) and a server certificate it signed for 127.0.0.1 (`srv.pem`, `srv.key`)
/// in `dir`, made with openssl; returns (ca, cert, key).
fn test_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(f);
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            common::stderr(&o)
        );
    };
    let ca = format!("{name}-ca.pem");
    let ca_key = format!("{name}-ca.key");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-days",
        "2",
        "-subj",
        "/CN=pocusd-test-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    ]);
    run(&a);
    std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "srv.pem",
    ]);
    (p(&ca), p("srv.pem"), p("srv.key"))
}

#[test]
#[ignore = "needs dcmtk, orthanc and openssl from scripts/setup.sh; scripts/test.sh runs it"]
fn dicom_over_tls_reaches_storescp_and_orthanc_and_a_wrong_ca_keeps_the_spool() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let (ca, cert, key) = test_pki(&pki, "good");
    let (other_ca, _, _) = test_pki(&tmp.path().join("other"), "other");
    // dcmtk's storescp over TLS.
    let received = tmp.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let port = free_port();
    let mut scp = Command::new("storescp")
        .arg("+tls")
        .arg(&key)
        .arg(&cert)
        .args(["-ic", "-od"])
        .arg(&received)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp runs (scripts/setup.sh installs dcmtk)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "storescp did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let peer = format!("STORESCP@127.0.0.1:{port}");
    // The daemon's spool sends a snapshot over TLS.
    let mut cmd = daemon_cmd(
        &bus,
        true,
        &tmp.path().join("a/state"),
        &["--source", "demo?fps=15"],
    );
    cmd.env("POCUSD__DICOM__STORE", &peer)
        .env("POCUSD__DICOM__TLS", "true")
        .env("POCUSD__DICOM__TLS_CA", &ca);
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    let mut d = Daemon::spawn(cmd, &tmp.path().join("a"));
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    let snap = snapshot_with_exam(&bus, &d, None);
    wait_for(
        "the snapshot stored over TLS",
        Duration::from_secs(60),
        || std::fs::read_dir(&received).map(|r| r.count()).unwrap_or(0) == 4,
    );
    let (_, human) = status(&bus, false);
    assert!(
        human.contains(&format!("PACS: {peer}, answered")),
        "{human}"
    );
    assert!(d.stop().success(), "{}", d.log());

    // A CA that did not sign the peer's certificate: refused naming the peer; the spool keeps
    // the snapshot.
    let mut cmd = daemon_cmd(
        &bus,
        true,
        &tmp.path().join("b/state"),
        &["--source", "demo?fps=15"],
    );
    cmd.env("POCUSD__DICOM__STORE", &peer)
        .env("POCUSD__DICOM__TLS", "true")
        .env("POCUSD__DICOM__TLS_CA", &other_ca);
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    let mut d = Daemon::spawn(cmd, &tmp.path().join("b"));
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    snapshot_with_exam(&bus, &d, None);
    wait_for("the refusal seen", Duration::from_secs(60), || {
        get(&bus, "Pacs").contains("TLS")
    });
    let (_, human) = status(&bus, false);
    assert!(
        human.contains(&format!("PACS: {peer} NOT ANSWERING")) && human.contains("dicom.tls_ca"),
        "{human}"
    );
    wait_for(
        "the snapshot waiting in the spool",
        Duration::from_secs(30),
        || get(&bus, "DicomQueue").contains("uint32 1"),
    );
    assert!(d.log().contains("1 snapshots wait in"), "{}", d.log());
    assert_eq!(
        std::fs::read_dir(&received).unwrap().count(),
        4,
        "nothing more arrived"
    );
    assert!(d.stop().success(), "{}", d.log());
    let _ = scp.kill();
    let _ = scp.wait();

    // Orthanc with DicomTlsEnabled: C-ECHO and `pocusd dicom send` over TLS.
    let mut orthanc = Orthanc::new(&tmp.path().join("orthanc"));
    orthanc.tls = Some((cert.clone(), key.clone(), ca.clone()));
    orthanc.start();
    let cfg = tmp.path().join("tls.toml");
    std::fs::write(
        &cfg,
        format!("[dicom]\ntls = true\ntls_ca = \"{}\"\n", ca.display()),
    )
    .unwrap();
    let cfg_s = cfg.to_string_lossy().to_string();
    let o = common::run(&["--config", &cfg_s, "dicom", "echo", "--to", &orthanc.peer()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::run(&[
        "--config",
        &cfg_s,
        "dicom",
        "send",
        snap.to_str().unwrap(),
        "--to",
        &orthanc.peer(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(orthanc.instances(), 4);
    // Plain DICOM to Orthanc's TLS port does not get through.
    let o = common::run(&["dicom", "echo", "--to", &orthanc.peer(), "--timeout-s", "5"]);
    assert!(!o.status.success());
    orthanc.stop();
}
