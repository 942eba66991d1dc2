//! The training dataset loader on folders with every kind of bad pair.

use pocusd::train::dataset::{self, DatasetError};

#[test]
fn bad_pairs_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    crate::common::synth_dataset(&ds, &["--count", "6", "--width", "96", "--height", "64"]);
    // Corrupt image, a mask of another size, an empty mask, an image without a mask.
    std::fs::write(ds.join("images/synth_00001.png"), b"\x89PNG broken").unwrap();
    pocusd::imageio::write_gray(
        &ds.join("masks/synth_00002.png"),
        &pocusd::frame::GrayImage::new(10, 10),
    )
    .unwrap();
    pocusd::imageio::write_gray(
        &ds.join("masks/synth_00003.png"),
        &pocusd::frame::GrayImage::new(96, 64),
    )
    .unwrap();
    std::fs::remove_file(ds.join("masks/synth_00004.png")).unwrap();
    let mut warnings = Vec::new();
    let (samples, report) = dataset::load(std::slice::from_ref(&ds), |w| warnings.push(w)).unwrap();
    assert_eq!(
        samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["synth_00000.png", "synth_00005.png"]
    );
    assert_eq!(
        (
            report.pairs,
            report.unreadable,
            report.size_mismatch,
            report.empty_masks,
            report.unpaired
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("synth_00001.png")));
    assert!(samples
        .iter()
        .all(|s| s.mask.as_slice().iter().all(|&v| v == 0 || v == 255)));
}

#[test]
fn unusable_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = dataset::load(&[tmp.path().to_path_buf()], |_| {}).unwrap_err();
    assert!(
        matches!(e, DatasetError::Layout { .. }) && e.to_string().contains("masks"),
        "{e}"
    );
    std::fs::create_dir_all(tmp.path().join("images")).unwrap();
    std::fs::create_dir_all(tmp.path().join("masks")).unwrap();
    let e = dataset::load(&[tmp.path().to_path_buf()], |_| {}).unwrap_err();
    assert!(
        matches!(e, DatasetError::Empty { .. }) && e.to_string().contains("0 pairs used"),
        "{e}"
    );
}
