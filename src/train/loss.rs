//! Training losses on logits and the hard scores reported per epoch. Dice + BCE (the seed's first
//! phase) and Tversky (its fine-tuning phase, alpha weighting false positives and beta false
//! negatives). Soft Dice and Tversky are computed per image and averaged, so small structures
//! count as much as large ones. Reconstruct is the self-supervised pretraining objective: the mean
//! squared difference between the output and a grey-level target (the clean image). Must not
//! depend on files or the training loop.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::unet::foreground_probability;

/// Smoothing term of the soft overlap losses (in pixels).
const SMOOTH: f64 = 1.0;

/// Which loss to minimise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Loss {
    /// Soft Dice + binary cross-entropy, equally weighted.
    DiceBce,
    /// 1 - Tversky index: TP / (TP + alpha FP + beta FN).
    Tversky { alpha: f64, beta: f64 },
    /// Self-supervised pretraining: mean squared difference between the output probability and
    /// a 0..1 grey-level target (the uncorrupted image), over every pixel.
    Reconstruct,
}

impl Loss {
    /// The name used on the command line and in `metrics.csv`.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::DiceBce => "dice-bce",
            Loss::Tversky { .. } => "tversky",
            Loss::Reconstruct => "reconstruct",
        }
    }

    /// Whether the target is an image to reconstruct rather than a mask.
    pub fn is_reconstruction(&self) -> bool {
        matches!(self, Loss::Reconstruct)
    }

    /// Scalar loss for logits `[N, C, H, W]` and a target `[N, 1, H, W]` (0/1, or 0..1 grey
    /// levels for [`Loss::Reconstruct`]).
    pub fn compute(&self, logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
        let [n, c, _, _] = logits.dims();
        let p = foreground_probability(logits.clone());
        let pf = p.reshape([n as i32, -1]);
        let tf = target.clone().reshape([n as i32, -1]);
        match *self {
            Loss::DiceBce => {
                let inter = (pf.clone() * tf.clone()).sum_dim(1);
                let denom = pf.clone().sum_dim(1) + tf.clone().sum_dim(1);
                let dice = (inter.mul_scalar(2.0).add_scalar(SMOOTH)) / denom.add_scalar(SMOOTH);
                let dice_loss = dice.neg().add_scalar(1.0).mean();
                let bce = if c == 1 {
                    // max(z, 0) - z t + log(1 + exp(-|z|)), stable for any logit.
                    let z = logits.reshape([n as i32, -1]);
                    let softplus = z.clone().abs().neg().exp().add_scalar(1.0).log();
                    (z.clone().clamp_min(0.0) - z * tf + softplus).mean()
                } else {
                    let p = pf.clamp(1e-7, 1.0 - 1e-7);
                    let pos = tf.clone() * p.clone().log();
                    let neg = tf.neg().add_scalar(1.0) * p.neg().add_scalar(1.0).log();
                    (pos + neg).mean().neg()
                };
                dice_loss + bce
            }
            Loss::Tversky { alpha, beta } => {
                let tp = (pf.clone() * tf.clone()).sum_dim(1);
                let fp = (pf.clone() * tf.clone().neg().add_scalar(1.0)).sum_dim(1);
                let fn_ = (pf.neg().add_scalar(1.0) * tf).sum_dim(1);
                let index = tp.clone().add_scalar(SMOOTH)
                    / (tp + fp.mul_scalar(alpha) + fn_.mul_scalar(beta)).add_scalar(SMOOTH);
                index.neg().add_scalar(1.0).mean()
            }
            Loss::Reconstruct => {
                let d = pf - tf;
                (d.clone() * d).mean()
            }
        }
    }
}

/// Hard Dice and IoU of one probability map against a 0/1 mask, thresholded at `threshold`.
/// Both empty counts as a perfect match.
pub fn dice_iou(prob: &[f32], mask: &[f32], threshold: f32) -> (f64, f64) {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (&p, &m) in prob.iter().zip(mask) {
        let (pred, truth) = (p >= threshold, m >= 0.5);
        match (pred, truth) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    if tp + fp + fn_ == 0 {
        return (1.0, 1.0);
    }
    let dice = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
    let iou = tp as f64 / (tp + fp + fn_) as f64;
    (dice, iou)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_scores() {
        let p = [0.9, 0.9, 0.1, 0.1];
        let m = [1.0, 0.0, 1.0, 0.0];
        let (d, i) = dice_iou(&p, &m, 0.5);
        assert!((d - 0.5).abs() < 1e-12 && (i - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(dice_iou(&[0.0; 4], &[0.0; 4], 0.5), (1.0, 1.0));
    }
}
