//! Fascicle length and pennation angle on the phantom's masks (so the measurement is checked apart
//! from any model): the aponeurosis mask gives the aponeuroses, the fascicle mask of the same
//! geometry gives the fragments, and the numbers are compared with the phantom's analytic truth
//! (from its parameters, never from measurement code).

use pocusd::frame::{GrayImage, Rect};
use pocusd::model::Task;
use pocusd::postprocess::{Calibration, Flag, PostprocessConfig, Postprocessor};
use pocusd::synth::{self, PhantomConfig};

fn probability(mask: &GrayImage) -> Vec<f32> {
    mask.as_slice()
        .iter()
        .map(|&v| if v > 127 { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn pennation_within_one_degree_and_length_within_five_percent_of_the_truth() {
    let (mut worst_angle, mut worst_len) = (0.0f64, 0.0f64);
    for i in 0..30u64 {
        let base = PhantomConfig {
            width: 640,
            height: 480,
            furniture: i % 3 == 0,
            depth_mm: 40.0 + i as f64,
            task: Task::Aponeurosis,
            seed: 500 + i,
            ..Default::default()
        };
        let apo = synth::sample(base, i);
        let fasc = synth::sample(
            PhantomConfig {
                task: Task::Fascicle,
                ..base
            },
            i,
        );
        assert_eq!(apo.geometry, fasc.geometry, "same geometry for both tasks");
        assert!(
            fasc.mask.as_slice().iter().any(|&v| v > 0),
            "sample {i}: no fragments drawn"
        );
        let full = Rect::full(640, 480);
        let mm = apo.geometry.mm_per_px;
        let cfg = PostprocessConfig {
            calibration: Calibration::MmPerPx { x: mm, y: mm },
            ..Default::default()
        };
        let mut a = Postprocessor::new(Task::Aponeurosis, cfg);
        a.process_full(&probability(&apo.mask), full);
        let lines = a.aponeuroses();
        assert!(lines.is_some(), "sample {i}: no aponeuroses");
        let mut f = Postprocessor::new(Task::Fascicle, cfg);
        f.set_aponeuroses(lines);
        let r = f.process_full(&probability(&fasc.mask), full).clone();
        let m = &r.measurements;
        let t = fasc.truth;
        let (angle, len_px, len_mm) = (
            m.pennation_angle_deg
                .unwrap_or_else(|| panic!("sample {i}: no pennation {r:?}")),
            m.fascicle_length_px.unwrap(),
            m.fascicle_length_mm.unwrap(),
        );
        let (ta, tl) = (
            t.pennation_angle_deg.unwrap(),
            t.fascicle_length_px.unwrap(),
        );
        assert!(m.fascicle_count.unwrap() >= 3, "sample {i}: {m:?}");
        assert!(
            (angle - ta).abs() <= 1.0,
            "sample {i}: pennation {angle:.2} deg, truth {ta:.2}"
        );
        assert!(
            (len_px / tl - 1.0).abs() <= 0.05,
            "sample {i}: length {len_px:.1} px, truth {tl:.1}"
        );
        let tl_mm = t.fascicle_length_mm.unwrap();
        assert!(
            (len_mm / tl_mm - 1.0).abs() <= 0.05,
            "{len_mm} vs {tl_mm} mm"
        );
        assert_eq!(r.fascicles.len() as u64, m.fascicle_count.unwrap());
        worst_angle = worst_angle.max((angle - ta).abs());
        worst_len = worst_len.max((len_px / tl - 1.0).abs());
    }
    eprintln!(
        "30 phantom mask pairs: worst pennation error {worst_angle:.3} deg, worst length error {:.2} %",
        100.0 * worst_len
    );
}

#[test]
fn fragments_without_aponeuroses_give_orientation_only_and_stray_fragments_are_dropped() {
    let cfg = PhantomConfig {
        task: Task::Fascicle,
        seed: 9,
        ..Default::default()
    };
    let s = synth::sample(cfg, 2);
    let mut p = probability(&s.mask);
    // A stray blob-free fragment across the dominant direction: vertical, 40 px.
    let (w, _) = (640usize, 480usize);
    for y in 200..240 {
        p[y * w + 600] = 1.0;
    }
    let mut f = Postprocessor::new(Task::Fascicle, PostprocessConfig::default());
    let r = f.process_full(&p, Rect::full(640, 480)).clone();
    let g = s.geometry;
    let want = g.band_angle_deg + g.pennation_deg;
    let got = r.measurements.fascicle_orientation_deg.unwrap();
    assert!((got - want).abs() < 1.0, "orientation {got} vs {want}");
    assert_eq!(r.measurements.fascicle_count, Some(0));
    assert!(r.measurements.pennation_angle_deg.is_none());
    assert_eq!(r.flag, Some(Flag::OneBand));
    // Nothing at all: no structure.
    let r = f
        .process_full(&vec![0.0; 640 * 480], Rect::full(640, 480))
        .clone();
    assert_eq!(r.flag, Some(Flag::NoStructure));
}

mod daemon {
    use std::time::Duration;

    use crate::common;
    use crate::daemon_support::*;

    fn unet(path: &std::path::Path, seed: &str) {
        common::small_unet_with(path, &["--task", "fascicle", "--seed", seed]);
    }

    fn fascicle_sha(bus: &Bus) -> String {
        let m = get(bus, "Models");
        let at = m
            .find("'fascicle'")
            .unwrap_or_else(|| panic!("no fascicle role: {m}"));
        let rest = &m[at..];
        let s = rest.find("'sha256': <'").unwrap() + 12;
        rest[s..s + 64].to_string()
    }

    #[test]
    fn an_extra_model_runs_beside_the_primary_and_swaps_by_role() {
        let bus = Bus::session();
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("fa.onnx"), tmp.path().join("fb.onnx"));
        unet(&a, "1");
        unet(&b, "2");
        // An extra model of the primary's own task stops start-up with what to do.
        let o = daemon_cmd(
            &bus,
            true,
            &tmp.path().join("s0"),
            &[
                "--source",
                "demo?fps=10",
                "--extra-model",
                "models/aponeurosis.onnx",
                "--frames",
                "1",
            ],
        )
        .output()
        .unwrap();
        assert!(!o.status.success());
        assert!(
            common::stderr(&o).contains("like the primary model"),
            "{}",
            common::stderr(&o)
        );

        let mut d = Daemon::spawn(
            daemon_cmd(
                &bus,
                true,
                &tmp.path().join("state"),
                &[
                    "--source",
                    "demo?fps=15&furniture=1",
                    "--extra-model",
                    a.to_str().unwrap(),
                ],
            ),
            tmp.path(),
        );
        wait_for("the daemon to stream", Duration::from_secs(60), || {
            name_has_owner(&bus) && state_of(&bus) == 1
        });
        let models = get(&bus, "Models");
        assert!(
            models.contains("'primary'") && models.contains("'fascicle'"),
            "{models}"
        );
        assert!(models.contains("'task': <'fascicle'>"), "{models}");
        let sha_a = fascicle_sha(&bus);
        // The primary is still the aponeurosis model and still measures in mm from the ruler.
        wait_for("a measurement", Duration::from_secs(60), || {
            get(&bus, "LastMeasurement").contains("'thickness_mm'")
        });
        assert!(get(&bus, "Model").contains("'task': <'aponeurosis'>"));

        // Refusals keep the running extra model.
        let corrupt = tmp.path().join("corrupt.onnx");
        std::fs::write(&corrupt, b"not an onnx file").unwrap();
        let o = call(
            &bus,
            "LoadExtraModel",
            &["fascicle", corrupt.to_str().unwrap()],
        );
        assert!(!o.status.success());
        assert!(
            common::stderr(&o).contains("ModelRejected"),
            "{}",
            common::stderr(&o)
        );
        let o = call(
            &bus,
            "LoadExtraModel",
            &["aponeurosis", b.to_str().unwrap()],
        );
        assert!(
            common::stderr(&o).contains("InvalidArgument"),
            "{}",
            common::stderr(&o)
        );
        let o = call(&bus, "LoadExtraModel", &["region", b.to_str().unwrap()]);
        assert!(
            common::stderr(&o).contains("not a region model"),
            "{}",
            common::stderr(&o)
        );
        assert_eq!(fascicle_sha(&bus), sha_a);

        // A good one replaces it in its role.
        let o = call(&bus, "LoadExtraModel", &["fascicle", b.to_str().unwrap()]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        wait_for(
            "the Models property to change",
            Duration::from_secs(10),
            || fascicle_sha(&bus) != sha_a,
        );
        let sha_b = fascicle_sha(&bus);
        let (v, text) = status(&bus, true);
        let v = v.unwrap();
        assert_eq!(v["models"]["fascicle"]["sha256"], sha_b.as_str());
        assert!(text.contains("\"fascicle\""));
        let (_, text) = status(&bus, false);
        assert!(text.contains("Extra: fascicle:"), "{text}");
        // Frames keep flowing with both models.
        let seq = |bus: &Bus| -> u64 {
            let lm = get(bus, "LastMeasurement");
            lm.split("'seq': <uint64 ")
                .nth(1)
                .and_then(|r| r.split('>').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let n0 = seq(&bus);
        wait_for("more frames", Duration::from_secs(30), || {
            seq(&bus) > n0 + 5
        });
        // The lane's drops are a Prometheus counter.
        let addr = crate::viewer::viewer_addr(&d);
        let (st, _, body) = crate::viewer::http(addr, "GET", "/metrics", "");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(st, 200);
        let dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("pocusd_extra_jobs_dropped_total "))
            .unwrap_or_else(|| panic!("no lane counter in /metrics:\n{text}"));
        assert!(dropped.trim().parse::<u64>().is_ok(), "{dropped}");
        assert!(d.stop().success(), "{}", d.log());
    }

    /// The shipped aponeurosis and fascicle models live on the demo with furniture: every
    /// measurement has the fascicle keys in mm (the ruler's scale), near the phantom's truth.
    #[test]
    fn the_shipped_models_measure_fascicles_on_the_demo_live() {
        let bus = Bus::session();
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Daemon::spawn(
            daemon_cmd(
                &bus,
                true,
                &tmp.path().join("state"),
                &[
                    "--source",
                    "demo?fps=10&furniture=1&seed=5",
                    "--extra-model",
                    "models/fascicle.onnx",
                ],
            ),
            tmp.path(),
        );
        wait_for("the daemon to stream", Duration::from_secs(60), || {
            name_has_owner(&bus) && state_of(&bus) == 1
        });
        let mut seen = std::collections::BTreeSet::new();
        let (mut angle_err, mut len_err) = (Vec::new(), Vec::new());
        // The fascicle model runs in its own lane: its keys join from its first finished frame.
        wait_for("10 measurements", Duration::from_secs(90), || {
            let (v, _) = status(&bus, true);
            let lm = v.unwrap()["last_measurement"].clone();
            if let Some(seq) = lm["seq"].as_u64().filter(|_| lm["fascicle_count"].is_u64()) {
                if seen.insert(seq) {
                    assert!(lm["fascicle_lag_frames"].as_u64().unwrap() <= 30, "{lm}");
                    let f = |k: &str| lm[k].as_f64().unwrap_or_else(|| panic!("{k}: {lm}"));
                    assert!(lm["fascicle_count"].as_u64().unwrap() >= 3, "{lm}");
                    angle_err
                        .push((f("pennation_angle_deg") - f("phantom_pennation_angle_deg")).abs());
                    len_err.push(
                        (f("fascicle_length_mm") / f("phantom_fascicle_length_mm") - 1.0).abs(),
                    );
                }
            }
            seen.len() >= 10
        });
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, l) = (med(&mut angle_err), med(&mut len_err));
        eprintln!(
            "live demo: median pennation error {a:.2} deg, median length error {:.1} %",
            100.0 * l
        );
        // The model learnt real muscle (fascicles up to about 26 degrees from the image axis);
        // the phantom draws them up to 34, which it reads a little flat: 1.4 degrees here
        // against 0.1 on the phantom's masks (the measurement's own test above).
        assert!(a <= 2.5, "pennation {a}");
        assert!(l <= 0.10, "length {l}");
        assert!(d.stop().success(), "{}", d.log());
    }
}
