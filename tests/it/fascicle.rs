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
