//! Training data: `images/` + `masks/` PNG pairs (the layout of ../shared/data and of
//! `pocusd synth`), loaded into memory with every problem counted rather than fatal: an unreadable
//! file, a mask of another size or a missing mask skips the pair with a warning; a mask with no
//! foreground is dropped (the seed recipe trains on labelled structures only). Validation takes
//! contiguous blocks of the sorted names, spread across the set, because neighbouring images are
//! usually the same subject. No I/O beyond reading the files; no burn.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::frame::GrayImage;
use crate::imageio;

/// Errors that stop loading altogether.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// A folder lacks `images/` or `masks/`.
    #[error("{dir} is not a dataset folder: it needs images/ and masks/ with the same file names ({reason})")]
    Layout { dir: PathBuf, reason: String },
    /// Nothing usable remained.
    #[error("no usable image/mask pairs in {dirs}: {report}")]
    Empty { dirs: String, report: String },
}

/// One labelled image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// File name (the key shared by image and mask).
    pub name: String,
    pub image: GrayImage,
    /// 0 or 255.
    pub mask: GrayImage,
}

/// What loading found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LoadReport {
    pub pairs: usize,
    pub unreadable: usize,
    pub size_mismatch: usize,
    pub unpaired: usize,
    pub empty_masks: usize,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pairs used; skipped {} unreadable, {} with image/mask size mismatch, {} without a mask; dropped {} empty masks",
            self.pairs, self.unreadable, self.size_mismatch, self.unpaired, self.empty_masks
        )
    }
}

/// Loads every pair of the given folders, sorted by folder then name. Warnings go to `warn`.
pub fn load(
    dirs: &[PathBuf],
    mut warn: impl FnMut(String),
) -> Result<(Vec<Sample>, LoadReport), DatasetError> {
    let mut samples = Vec::new();
    let mut report = LoadReport::default();
    for dir in dirs {
        let (images, masks) = (dir.join("images"), dir.join("masks"));
        let layout = |reason: String| DatasetError::Layout {
            dir: dir.clone(),
            reason,
        };
        if !masks.is_dir() {
            return Err(layout(format!("{} is missing", masks.display())));
        }
        let mut names: Vec<String> = std::fs::read_dir(&images)
            .map_err(|e| layout(format!("cannot list {}: {e}", images.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| has_image_ext(n))
            .collect();
        names.sort();
        for name in names {
            let mask_path = masks.join(&name);
            if !mask_path.exists() {
                report.unpaired += 1;
                warn(format!("{}: no mask {}", name, mask_path.display()));
                continue;
            }
            let (image, mask) = match (
                imageio::read_gray(&images.join(&name)),
                imageio::read_gray(&mask_path),
            ) {
                (Ok(i), Ok(m)) => (i, m),
                (Err(e), _) | (_, Err(e)) => {
                    report.unreadable += 1;
                    warn(format!("skipped: {e}"));
                    continue;
                }
            };
            if (image.width(), image.height()) != (mask.width(), mask.height()) {
                report.size_mismatch += 1;
                warn(format!(
                    "skipped {name}: image {}x{} but mask {}x{}",
                    image.width(),
                    image.height(),
                    mask.width(),
                    mask.height()
                ));
                continue;
            }
            let binary: Vec<u8> = mask
                .as_slice()
                .iter()
                .map(|&v| if v > 127 { 255 } else { 0 })
                .collect();
            if binary.iter().all(|&v| v == 0) {
                report.empty_masks += 1;
                continue;
            }
            let mask = match GrayImage::from_vec(mask.width(), mask.height(), binary) {
                Ok(m) => m,
                Err(_) => continue,
            };
            samples.push(Sample { name, image, mask });
        }
    }
    report.pairs = samples.len();
    if samples.is_empty() {
        let dirs = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DatasetError::Empty {
            dirs,
            report: report.to_string(),
        });
    }
    Ok((samples, report))
}

/// Whether a file name is a PNG or JPEG by its extension (any case).
pub fn has_image_ext(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Indices of the validation samples for `fraction` of `n` sorted samples: `blocks` contiguous runs
/// spread evenly over the list (fewer when the set is small). Deterministic; never empty when
/// `fraction > 0` and `n >= 2`, never everything.
pub fn validation_blocks(n: usize, fraction: f64, blocks: usize) -> Vec<usize> {
    if n < 2 || fraction <= 0.0 {
        return Vec::new();
    }
    let total = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let blocks = blocks.clamp(1, total);
    let mut out = Vec::with_capacity(total);
    for b in 0..blocks {
        // Lengths that add up to `total`; starts at the centres of equal slices of the list.
        let len = total / blocks + usize::from(b < total % blocks);
        let centre = (2 * b + 1) * n / (2 * blocks);
        let start = centre.saturating_sub(len / 2).min(n - len);
        out.extend(start..start + len);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_blocks_are_contiguous_spread_and_sized() {
        let v = validation_blocks(100, 0.2, 4);
        assert_eq!(v.len(), 20);
        // Four runs of five.
        let runs = v.windows(2).filter(|w| w[1] != w[0] + 1).count() + 1;
        assert_eq!(runs, 4);
        assert!(v[0] < 25 && *v.last().unwrap() > 75, "{v:?}");
        assert_eq!(validation_blocks(100, 0.2, 4), v, "deterministic");
        assert_eq!(validation_blocks(3, 0.5, 5).len(), 2);
        assert!(validation_blocks(1, 0.5, 5).is_empty());
        assert_eq!(validation_blocks(10, 1.0, 2).len(), 9, "never everything");
    }
}
