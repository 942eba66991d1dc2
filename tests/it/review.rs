//! Issue 15's labelling page on a real daemon, driven by headless Chromium through the DevTools
//! protocol (tests/cdp_review.py): open a snapshot on `/review`, paint a stroke with mouse (and
//! touch) input, click Accept; the label in the site folder differs from the predicted mask where
//! the stroke was and nowhere else, and its image is the snapshot's frame. The HTTP side: the
//! list, the token rule, a wrong-size mask, a hostile id.

use std::path::Path;
use std::time::Duration;

use crate::common;
use crate::daemon_support as ds;
use crate::viewer::{http, viewer_addr};

fn snapshot(bus: &ds::Bus) -> String {
    let o = ds::call(bus, "Snapshot", &[]);
    assert!(o.status.success(), "Snapshot: {}", common::stderr(&o));
    // ('/path/to/snapshots/ID',)
    let out = common::stdout(&o);
    let path = out.split('\'').nth(1).unwrap().to_string();
    Path::new(&path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A horizontal stroke (frame pixels) over rows where the predicted mask is empty, with a margin.
fn empty_band(mask: &pocusd::frame::GrayImage, r: f64) -> (f64, f64, f64) {
    let (w, h) = (mask.width(), mask.height());
    let (x0, x1) = (w as f64 * 0.3, w as f64 * 0.6);
    let m = (r + 3.0).ceil() as usize;
    for y in m..h - m {
        let clear = (y - m..=y + m)
            .all(|yy| (x0 as usize - m..=x1 as usize + m).all(|x| mask.get(x, yy) == Some(0)));
        if clear {
            return (x0, x1, y as f64);
        }
    }
    panic!("no empty band in the predicted mask");
}

fn dist_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

fn paint_and_accept(addr: std::net::SocketAddr, state: &Path, id: &str, kind: &str) {
    let snap = state.join("snapshots").join(id);
    let predicted = pocusd::imageio::read_gray(&snap.join("mask.png")).unwrap();
    let r = 4.0; // the page's default brush is 8 px across
    let (x0, x1, y) = empty_band(&predicted, r);
    let o = std::process::Command::new("timeout")
        .args(["120", "python3"])
        .arg(ds::repo().join("tests/cdp_review.py"))
        .arg(format!("http://{addr}/review?id={id}"))
        .args([x0, y, x1, y].map(|v| format!("{v}")))
        .arg(kind)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cdp_review.py ({kind}): {}",
        common::stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["accepted"], format!("{id}.png"));
    assert_eq!(v["radius_px"], r);
    let site = state.join("labelled");
    let label_png = site.join("masks").join(format!("{id}.png"));
    let label = pocusd::imageio::read_gray(&label_png).unwrap();
    // The label as DICOM: a MANUAL Segmentation of the snapshot's image, read back by
    // highdicom with the accepted pixels.
    let seg = snap.join("label-seg.dcm");
    crate::protocols::dciodvfy_clean(&seg, "Segmentation");
    let found = crate::protocols::highdicom_run(&[
        "--seg".as_ref(),
        seg.as_os_str(),
        "--mask".as_ref(),
        label_png.as_os_str(),
    ]);
    let s = &found["segments"][0];
    assert_eq!(s["algorithm_type"], "MANUAL", "{found}");
    assert_eq!(s["equals_mask_png"], true, "{found}");
    assert_eq!(
        (label.width(), label.height()),
        (predicted.width(), predicted.height())
    );
    let (mut painted, mut inside) = (0, 0);
    for yy in 0..label.height() {
        for xx in 0..label.width() {
            let d = dist_to_segment((xx as f64, yy as f64), (x0, y), (x1, y));
            let (got, was) = (label.get(xx, yy).unwrap(), predicted.get(xx, yy).unwrap());
            assert!(
                got == 0 || got == 255,
                "{kind}: label pixel ({xx},{yy}) is {got}"
            );
            if d > r + 1.5 {
                assert_eq!(
                    got,
                    if was >= 128 { 255 } else { 0 },
                    "{kind}: ({xx},{yy}) changed away from the stroke"
                );
            } else if d <= r - 1.0 {
                inside += 1;
                painted += (got == 255) as usize;
            }
        }
    }
    assert!(
        inside > 100 && painted == inside,
        "{kind}: {painted} of {inside} stroke pixels painted"
    );
    assert_eq!(
        std::fs::read(site.join("images").join(format!("{id}.png"))).unwrap(),
        std::fs::read(snap.join("frame.png")).unwrap(),
        "the label's image is the snapshot's frame"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(j["snapshot"], id);
    assert!(
        j["model_sha256"].as_str().is_some_and(|s| s.len() == 64),
        "{j}"
    );
}

#[test]
#[ignore = "needs chromium, dicom3tools and the virtualenv's highdicom from scripts/setup.sh; scripts/test.sh runs it"]
fn review_page_in_chromium_paints_a_stroke_and_accepting_writes_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let bus = ds::Bus::session();
    let mut d = ds::demo_daemon(&bus, dir.path(), "demo?fps=20");
    let addr = viewer_addr(&d);
    ds::wait_for(
        "the daemon to process frames",
        Duration::from_secs(60),
        || ds::state_of(&bus) == 1,
    );
    let state = dir.path().join("state");
    let a = snapshot(&bus);
    std::thread::sleep(Duration::from_millis(1100));
    let b = snapshot(&bus);
    assert_ne!(a, b);

    // The list: both queued, newest first.
    let (code, _, body) = http(addr, "GET", "/api/review", "");
    assert_eq!(code, 200);
    let l: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = l["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.as_str(), a.as_str()]);
    assert!(l["snapshots"][0]["measurement"].is_array(), "{l}");
    let (code, _, _) = http(addr, "GET", "/review", "");
    assert_eq!(code, 200);
    // Hostile and unknown ids, a body that is not a PNG.
    let (code, _, _) = http(addr, "GET", "/api/review/..%2F..%2Fetc/frame.png", "");
    assert_eq!(code, 404);
    let (code, _, body) = http(addr, "POST", &format!("/api/review/{a}/accept"), "");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));

    paint_and_accept(addr, &state, &a, "mouse");
    paint_and_accept(addr, &state, &b, "touch");

    let (_, _, body) = http(addr, "GET", "/api/review", "");
    let l: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        l["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "accepted"),
        "{l}"
    );
    let (code, _, _) = http(addr, "POST", &format!("/api/review/{a}/reject"), "");
    assert_eq!(code, 200);
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn review_actions_follow_the_viewer_token_rule() {
    let dir = tempfile::tempdir().unwrap();
    let bus = ds::Bus::session();
    let mut cmd = ds::daemon_cmd(
        &bus,
        true,
        &dir.path().join("state"),
        &["--source", "demo?fps=20"],
    );
    cmd.env("POCUSD__HTTP__TOKEN", "s3cret");
    let mut d = ds::Daemon::spawn(cmd, dir.path());
    let addr = viewer_addr(&d);
    ds::wait_for(
        "the daemon to process frames",
        Duration::from_secs(60),
        || ds::state_of(&bus) == 1,
    );
    let id = snapshot(&bus);
    let (code, _, _) = http(addr, "POST", &format!("/api/review/{id}/reject"), "");
    assert_eq!(code, 401);
    let (code, _, _) = http(
        addr,
        "POST",
        &format!("/api/review/{id}/reject"),
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(code, 200);
    // Reading the queue and the page needs no token, like the viewer.
    let (code, _, _) = http(addr, "GET", "/api/review", "");
    assert_eq!(code, 200);
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn doubtful_frames_are_queued_by_themselves_within_the_hourly_budget() {
    let dir = tempfile::tempdir().unwrap();
    let bus = ds::Bus::session();
    // The aponeurosis model on the fetal-head phantom: the quality gate flags every frame.
    let state = dir.path().join("state");
    let mut cmd = ds::daemon_cmd(&bus, true, &state, &["--source", "demo?fps=20&task=region"]);
    cmd.env("POCUSD__LOOP__AUTO_QUEUE", "true")
        .env("POCUSD__LOOP__AUTO_QUEUE_PER_HOUR", "3600");
    let mut d = ds::Daemon::spawn(cmd, dir.path());
    let addr = viewer_addr(&d);
    let count = || {
        std::fs::read_dir(state.join("snapshots"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("queued.json").is_file())
                    .count()
            })
            .unwrap_or(0)
    };
    ds::wait_for("three automatic snapshots", Duration::from_secs(60), || {
        count() >= 3
    });
    let t0 = std::time::Instant::now();
    let n0 = count();
    std::thread::sleep(Duration::from_secs(3));
    let (n1, secs) = (count(), t0.elapsed().as_secs_f64());
    // At most one a second (3600 an hour), however many frames are flagged (20 a second).
    assert!(
        n1 - n0 <= secs.ceil() as usize + 1,
        "{} snapshots in {secs:.1} s",
        n1 - n0
    );
    let (_, _, body) = http(addr, "GET", "/api/review", "");
    let l: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let first = &l["snapshots"][0];
    assert_eq!(first["queued_by"], "auto_queue", "{l}");
    // Queued because its verdict was doubtful; the reasons travel to the review list.
    assert_eq!(first["quality"], "doubtful", "{l}");
    let reasons: Vec<&str> = first["doubt"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    assert!(
        !reasons.is_empty()
            && reasons
                .iter()
                .all(|c| pocusd::postprocess::quality::Doubt::parse(c).is_some()),
        "{l}"
    );
    assert!(d.stop().success(), "{}", d.log());
    assert!(d.log().contains("queued for review"), "{}", d.log());
}

/// Issue 27, part 1: the daemon keeps a thinned sample of the streamed frames for adaptation
/// without labels: the region of interest's pixels with the verdict beside them, spaced by
/// `[loop] unlabelled_per_hour`, in `[loop] unlabelled_data`.
#[test]
fn streamed_frames_are_kept_thinned_for_unlabelled_adaptation() {
    let dir = tempfile::tempdir().unwrap();
    let bus = ds::Bus::session();
    let state = dir.path().join("state");
    let unlabelled = dir.path().join("unlabelled");
    let mut cmd = ds::daemon_cmd(&bus, true, &state, &["--source", "demo?fps=20&furniture=1"]);
    cmd.env("POCUSD__LOOP__UNLABELLED_PER_HOUR", "3600")
        .env("POCUSD__LOOP__UNLABELLED_DATA", &unlabelled);
    let mut d = ds::Daemon::spawn(cmd, dir.path());
    let pngs = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&unlabelled)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "png"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    ds::wait_for("three unlabelled frames", Duration::from_secs(60), || {
        pngs().len() >= 3
    });
    let t0 = std::time::Instant::now();
    let n0 = pngs().len();
    std::thread::sleep(Duration::from_secs(3));
    let (n1, secs) = (pngs().len(), t0.elapsed().as_secs_f64());
    // One a second at most (3600 an hour), from a stream of 20 frames a second.
    assert!(
        n1 - n0 <= secs.ceil() as usize + 1,
        "{} frames in {secs:.1} s",
        n1 - n0
    );
    assert!(d.stop().success(), "{}", d.log());
    let mut seqs = std::collections::BTreeSet::new();
    for png in pngs() {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(png.with_extension("json")).unwrap())
                .unwrap();
        let img = pocusd::imageio::read_gray(&png).unwrap();
        // The region of interest only (the phantom's image inside its screen), not the frame.
        assert_eq!(
            (img.width() as u64, img.height() as u64),
            (
                record["roi"]["w"].as_u64().unwrap(),
                record["roi"]["h"].as_u64().unwrap()
            ),
            "{record}"
        );
        assert!(img.width() < 640 && img.height() < 480, "{record}");
        assert_eq!(record["quality"], "ok", "{record}");
        assert!(
            record["model_sha256"]
                .as_str()
                .is_some_and(|s| s.len() == 64),
            "{record}"
        );
        assert!(
            seqs.insert(record["seq"].as_u64().unwrap()),
            "a frame kept twice: {record}"
        );
    }
    // Nothing of it in the snapshots (it is not a review queue).
    assert!(
        !state.join("snapshots").exists()
            || std::fs::read_dir(state.join("snapshots")).unwrap().count() == 0
    );
}
