//! Weight averaging for `[train] swa_epochs` (stochastic weight averaging, Izmailov et al. 2018;
//! averaged densely over steps as in SWAD, Cha et al. 2021): the running mean of a network's
//! weights over training steps, and the batch-norm statistics of such a mean measured afresh on
//! images (the averaged weights were never trained with the running statistics they would
//! otherwise carry). Must not depend on files, the training loop or tract.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::unet::{Moments, Unet};

/// The running mean of a network's weights (every float tensor the network holds, running
/// statistics included: those are measured again by [`settle_statistics`] before use).
#[derive(Debug, Default)]
pub struct WeightMean {
    mean: Option<Unet>,
    count: u64,
}

struct Collect(Vec<TensorData>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Moves each float tensor of the mean `weight` of the way to the matching one of `next`.
struct Blend {
    next: std::vec::IntoIter<TensorData>,
    weight: f64,
    device: Device,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(data) = self.next.next() else {
            return param;
        };
        let next = Tensor::<D>::from_data(data, &self.device);
        let w = self.weight;
        param.map(|t| t.clone() + (next - t) * w)
    }
}

impl WeightMean {
    /// Continues a mean of `count` networks held by `mean` (a resumed run).
    pub fn resume(mean: Unet, count: u64) -> Self {
        Self {
            mean: Some(mean),
            count,
        }
    }

    /// Adds `net` (a network of the same architecture) to the mean.
    pub fn add(&mut self, net: &Unet) {
        self.count += 1;
        let Some(mean) = self.mean.take() else {
            self.mean = Some(net.clone());
            return;
        };
        let mut c = Collect(Vec::new());
        net.visit(&mut c);
        let device = mean.devices().first().cloned().unwrap_or_default();
        self.mean = Some(mean.map(&mut Blend {
            next: c.0.into_iter(),
            weight: 1.0 / self.count as f64,
            device,
        }));
    }

    /// How many networks the mean holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean so far (its batch-norm statistics not yet meaningful).
    pub fn mean(&self) -> Option<&Unet> {
        self.mean.as_ref()
    }
}

/// `net` with every batch norm's running statistics measured on `batches` (each `[n, channels,
/// h, w]`; each batch norm normalising by the batch's own statistics as in training; the running
/// variance is the variance within such batches; batches of one image are passed over).
/// Unchanged when no batch has two images.
pub fn settle_statistics(net: Unet, batches: impl IntoIterator<Item = Tensor<4>>) -> Unet {
    let mut acc = Moments::default();
    for x in batches {
        if x.dims()[0] >= 2 {
            net.accumulate_batch_moments(x, &mut acc);
        }
    }
    if acc.layers() == 0 {
        return net;
    }
    net.with_running_statistics(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::unet::UnetArch;

    fn net(depth: usize, base_width: usize) -> (Unet, Device) {
        let device = crate::train::trainer::device_for(crate::train::settings::Backend::Flex);
        let arch = UnetArch {
            depth,
            base_width,
            in_channels: 1,
            classes: 1,
            ..Default::default()
        };
        (Unet::new(&arch, &device), device)
    }

    fn weights(net: &Unet) -> Vec<Vec<f32>> {
        let mut c = Collect(Vec::new());
        net.visit(&mut c);
        c.0.into_iter()
            .map(|d| d.convert::<f32>().try_to_vec::<f32>().unwrap_or_default())
            .collect()
    }

    #[test]
    fn the_mean_of_networks_is_the_mean_of_each_weight() {
        let nets: Vec<Unet> = (0..3).map(|_| net(2, 4).0).collect();
        let mut m = WeightMean::default();
        for n in &nets {
            m.add(n);
        }
        assert_eq!(m.count(), 3);
        let all: Vec<_> = nets.iter().map(weights).collect();
        let got = weights(m.mean().unwrap());
        assert_eq!(got.len(), all[0].len());
        let mut checked = 0;
        for (t, g) in got.iter().enumerate() {
            for (k, v) in g.iter().enumerate() {
                let want = (all[0][t][k] + all[1][t][k] + all[2][t][k]) / 3.0;
                assert!(
                    (v - want).abs() < 1e-5,
                    "tensor {t} value {k}: {v} against {want}"
                );
                checked += 1;
            }
        }
        // The networks differ (random initialisation), so the mean is not one of them.
        assert!(checked > 100);
        assert!(all[0][0] != all[1][0]);
    }

    #[test]
    fn settled_statistics_are_those_of_the_images() {
        let (net, device) = net(1, 2);
        let before = net.running_statistics();
        let (w, h) = (8, 8);
        let imgs: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                (0..w * h)
                    .map(|k| ((k * 7 + i * 3) % 11) as f32 / 11.0 + 2.0)
                    .collect()
            })
            .collect();
        let batch = |from: usize, n: usize| {
            let x: Vec<f32> = imgs[from..from + n].iter().flatten().copied().collect();
            Tensor::<4>::from_data(TensorData::new(x, [n, 1, h, w]), &device)
        };
        let net = settle_statistics(net, [batch(0, 2), batch(2, 2)]);
        let after = net.running_statistics();
        // Fresh batch norms hold mean 0; inputs near 2 give the first one's input a mean of
        // the convolution of them, which is not 0 for random weights.
        assert_ne!(before[0].0, after[0].0);
        // One image only: nothing to measure, unchanged.
        let one = settle_statistics(net, [batch(0, 1)]);
        assert_eq!(one.running_statistics(), after);
    }
}
