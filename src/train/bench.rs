//! `pocusd bench train`: times one training step (augmentation, forward, loss, backward, Adam) of
//! the U-Net on synthetic model-resolution pairs, with the settings' backend, size and width.
//! Prints figures through the caller; touches no files. Must not depend on the daemon or sources.

use std::time::Instant;

use serde::Serialize;

use super::augment::Augmenter;
use super::settings::TrainSettings;
use super::trainer::{self, Prepared};
use super::unet::Unet;
use crate::synth::SplitMix64;

/// The figures of `pocusd bench train --json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub images_per_s: f64,
    pub step_ms_median: f64,
    pub batch: usize,
    pub input: [usize; 2],
    pub backend: &'static str,
    pub width: usize,
    pub depth: usize,
    /// `[train] encoder`.
    pub encoder: &'static str,
    pub augment: bool,
    pub steps: usize,
}

/// Runs `steps` timed steps after 2 untimed ones.
pub fn step_time(s: &TrainSettings, steps: usize, augment: bool) -> TrainBench {
    let (w, h) = (s.input_width, s.input_height);
    // Phantom-like data at model resolution: textured image, band mask.
    let mut rng = SplitMix64::new(7);
    let set: Vec<Prepared> = (0..32)
        .map(|k| Prepared {
            name: format!("{k}"),
            image: (0..w * h).map(|_| rng.next_f64() as f32).collect(),
            mask: (0..w * h)
                .map(|i| ((i / w + k) % 40 < 8) as u8 as f32)
                .collect(),
        })
        .collect();
    let device = trainer::device_for(s.backend).autodiff();
    let mut net = Unet::new(&s.arch, &device);
    let mut optim = burn::optim::AdamConfig::new().init();
    let mut aug = Augmenter::new(s.augment);
    let batch = s.batch;
    let steps = steps.max(1);
    let mut times = Vec::new();
    for step in 0..steps + 2 {
        let t0 = Instant::now();
        let idx: Vec<usize> = (0..batch).map(|i| (step * batch + i) % set.len()).collect();
        let (x, y) = trainer::batch_tensors(
            &set,
            &idx,
            w,
            h,
            augment.then_some(&mut aug),
            1,
            step,
            s.loss.is_reconstruction(),
            &device,
        );
        let logits = net.forward(x);
        let loss = s.loss.compute(logits, y);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-3, net, grads);
        if step >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = crate::stats::percentile(&mut times, 0.5);
    TrainBench {
        images_per_s: batch as f64 * 1e3 / median,
        step_ms_median: median,
        batch,
        input: [w, h],
        backend: s.backend.as_str(),
        width: s.arch.base_width,
        depth: s.arch.depth,
        encoder: s.arch.encoder.as_str(),
        augment,
        steps,
    }
}
