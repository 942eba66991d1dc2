//! The U-Net that `pocusd train` fits, in burn: `depth` levels of two 3x3 convolution + batch norm
//! + ReLU blocks with 2x2 max pooling, a bottleneck block, and a decoder that upsamples with 2x2
//! stride-2 transposed convolutions and concatenates the skip connection; a 1x1 head gives logits
//! (one channel: sigmoid; C channels: softmax). Parameter paths (`down.0.conv1.weight`, ...) are
//! the names the exporter writes into the ONNX file and `--init` matches. Must not depend on the
//! training loop, files or tract.

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::effnet::{EffEncoder, SKIP_CHANNELS};

/// Architecture of a U-Net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnetArch {
    /// Levels (poolings), 1..=6.
    pub depth: usize,
    /// Channels at the first level; doubled per level.
    pub base_width: usize,
    /// Input channels (1: grey).
    pub in_channels: usize,
    /// Output channels: 1 for a sigmoid head, C >= 2 for softmax over C classes.
    pub classes: usize,
    /// The encoder below the full-resolution level (`[train] encoder`).
    #[serde(default)]
    pub encoder: Encoder,
}

/// What computes the features at strides 2 to 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoder {
    /// The plain U-Net's levels of two 3x3 convolutions and max pooling.
    #[default]
    Unet,
    /// EfficientNet-lite0's stem and blocks 0 to 10 ([`EffEncoder`]); depth 4, the plain U-Net's
    /// first level kept as the full-resolution skip.
    EfficientnetLite0,
}

impl Encoder {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoder::Unet => "unet",
            Encoder::EfficientnetLite0 => "efficientnet-lite0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unet" => Some(Encoder::Unet),
            "efficientnet-lite0" => Some(Encoder::EfficientnetLite0),
            _ => None,
        }
    }
}

impl Default for UnetArch {
    fn default() -> Self {
        Self {
            depth: 4,
            base_width: 16,
            in_channels: 1,
            classes: 1,
            encoder: Encoder::Unet,
        }
    }
}

/// Two 3x3 convolutions (no bias; batch norm follows), each followed by batch norm and ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
}

impl ConvBlock {
    pub(crate) fn new(cin: usize, cout: usize, device: &Device) -> Self {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        Self {
            conv1: conv(cin, cout),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout),
            bn2: BatchNormConfig::new(cout).init(device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        relu(self.bn2.forward(self.conv2.forward(x)))
    }

    /// As `forward`, adding each batch norm's input to `acc` (conv1's, then conv2's); with
    /// `by_batch` each batch norm normalises by the batch's own statistics instead of its running
    /// ones.
    fn forward_moments(
        &self,
        x: Tensor<4>,
        acc: &mut Moments,
        at: &mut usize,
        by_batch: bool,
    ) -> Tensor<4> {
        let u = self.conv1.forward(x);
        let x = relu(recorded_norm(&self.bn1, u, acc, at, by_batch));
        let u = self.conv2.forward(x);
        relu(recorded_norm(&self.bn2, u, acc, at, by_batch))
    }

    fn bns_mut(&mut self) -> [&mut BatchNorm; 2] {
        [&mut self.bn1, &mut self.bn2]
    }
}

/// `bn` applied to `u` after adding `u`'s statistics to `acc` as layer `at` (then advanced); with
/// `by_batch`, normalised by the batch's own statistics.
pub(crate) fn recorded_norm(
    bn: &BatchNorm,
    u: Tensor<4>,
    acc: &mut Moments,
    at: &mut usize,
    by_batch: bool,
) -> Tensor<4> {
    acc.add(*at, &u);
    *at += 1;
    if by_batch {
        batch_normalised(bn, u)
    } else {
        bn.forward(u)
    }
}

/// Sets the batch norm's running statistics to the measured ones of layer `at` (scale and shift
/// kept): the mean, and the variance within a batch as training tracks it.
pub(crate) fn restate(bn: &mut BatchNorm, acc: &Moments, at: usize) {
    let (mean, var) = acc.mean_within_var(at);
    let device = bn.gamma.val().device();
    let c = mean.len();
    let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
    bn.running_mean = RunningState::new(t(mean));
    bn.running_var = RunningState::new(t(var));
}

/// Calibrated unfolding of one batch norm (see [`Unet::with_data_statistics`]).
pub(crate) fn calibrate(bn: &mut BatchNorm, acc: &Moments, at: usize) {
    let (mean, var) = acc.mean_var(at);
    let device = bn.gamma.val().device();
    let eps = bn.epsilon as f32;
    let beta: Vec<f32> = bn
        .beta
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    let c = mean.len();
    let gamma: Vec<f32> = var.iter().map(|v| (v + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c)
        .map(|i| mean[i] + beta.get(i).copied().unwrap_or(0.0))
        .collect();
    let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
    bn.gamma = Param::from_tensor(t(gamma));
    bn.beta = Param::from_tensor(t(shift));
    bn.running_mean = RunningState::new(t(mean));
    bn.running_var = RunningState::new(t(var));
}

/// Per-channel sums of every batch norm's input, in network order (encoder blocks, bottom,
/// decoder blocks; conv1 then conv2 of each).
#[derive(Debug, Default)]
pub struct Moments {
    layers: Vec<LayerMoments>,
}

#[derive(Debug, Default, Clone)]
struct LayerMoments {
    /// Sum and sum of squares per channel over everything seen.
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// Per channel: the variance within each batch times the values it counted, summed.
    within: Vec<f64>,
    /// Values counted per channel.
    count: f64,
}

impl Moments {
    pub(crate) fn add(&mut self, at: usize, u: &Tensor<4>) {
        let [n, c, h, w] = u.dims();
        let sum = |t: Tensor<4>| -> Vec<f32> {
            t.sum_dim(0)
                .sum_dim(2)
                .sum_dim(3)
                .reshape([c])
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .unwrap_or_default()
        };
        let s = sum(u.clone());
        let q = sum(u.clone().powi_scalar(2));
        if self.layers.len() <= at {
            self.layers.resize(at + 1, LayerMoments::default());
        }
        let layer = &mut self.layers[at];
        if layer.sum.len() != c {
            *layer = LayerMoments {
                sum: vec![0.0; c],
                sum_sq: vec![0.0; c],
                within: vec![0.0; c],
                count: 0.0,
            };
        }
        let k = (n * h * w) as f64;
        for i in 0..c.min(s.len()).min(q.len()) {
            let (s, q) = (f64::from(s[i]), f64::from(q[i]));
            layer.sum[i] += s;
            layer.sum_sq[i] += q;
            let m = s / k;
            layer.within[i] += (q - k * m * m).max(0.0);
        }
        layer.count += k;
    }

    /// Mean and (population) variance per channel of layer `at`.
    fn mean_var(&self, at: usize) -> (Vec<f32>, Vec<f32>) {
        let Some(l) = self.layers.get(at) else {
            return (Vec::new(), Vec::new());
        };
        let n = l.count.max(1.0);
        let mean: Vec<f64> = l.sum.iter().map(|v| v / n).collect();
        let var = l
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0)) as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), var)
    }

    /// Mean per channel of layer `at` and the variance within a batch, averaged over the batches
    /// (what a batch norm's running variance tracks in training: the spread between batches'
    /// means is not in it).
    fn mean_within_var(&self, at: usize) -> (Vec<f32>, Vec<f32>) {
        let Some(l) = self.layers.get(at) else {
            return (Vec::new(), Vec::new());
        };
        let n = l.count.max(1.0);
        (
            l.sum.iter().map(|v| (v / n) as f32).collect(),
            l.within.iter().map(|v| (v / n) as f32).collect(),
        )
    }

    /// Batch norms seen.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
}

/// Transposed-convolution upsampling, then a block over [upsampled, skip].
#[derive(Module, Debug)]
pub struct UpBlock {
    pub up: ConvTranspose2d,
    pub block: ConvBlock,
}

/// The network.
#[derive(Module, Debug)]
pub struct Unet {
    /// The encoder's levels; with an EfficientNet encoder only the full-resolution one.
    pub down: Vec<ConvBlock>,
    pub bottom: ConvBlock,
    /// Deepest first.
    pub up: Vec<UpBlock>,
    pub head: Conv2d,
    pub pool: MaxPool2d,
    /// `Encoder::EfficientnetLite0`: the features at strides 2 to 16 (absent in the plain U-Net,
    /// and in files written before it existed).
    pub encoder: Option<EffEncoder>,
}

impl Unet {
    /// A freshly initialised network (burn's default initialisers).
    pub fn new(arch: &UnetArch, device: &Device) -> Self {
        let eff = arch.encoder == Encoder::EfficientnetLite0;
        let depth = if eff { SKIP_CHANNELS.len() } else { arch.depth };
        let levels = if eff { 1 } else { depth };
        let mut down = Vec::with_capacity(levels);
        let mut cin = arch.in_channels;
        for level in 0..levels {
            let cout = arch.base_width << level;
            down.push(ConvBlock::new(cin, cout, device));
            cin = cout;
        }
        // Channels of the skip at each level and of the bottom block's input.
        let skip = |level: usize| {
            if eff && level > 0 {
                SKIP_CHANNELS[level - 1]
            } else {
                arch.base_width << level
            }
        };
        let bottom_in = if eff { SKIP_CHANNELS[depth - 1] } else { cin };
        let bottom_width = arch.base_width << depth;
        let bottom = ConvBlock::new(bottom_in, bottom_width, device);
        let mut up = Vec::with_capacity(depth);
        let mut cin = bottom_width;
        for level in (0..depth).rev() {
            let cout = arch.base_width << level;
            up.push(UpBlock {
                up: ConvTranspose2dConfig::new([cin, cout], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                block: ConvBlock::new(cout + skip(level), cout, device),
            });
            cin = cout;
        }
        let head = Conv2dConfig::new([cin, arch.classes], [1, 1]).init(device);
        Self {
            down,
            bottom,
            up,
            head,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            encoder: eff.then(|| EffEncoder::new(arch.in_channels, device)),
        }
    }

    /// Logits `[N, classes, H, W]` for input `[N, in_channels, H, W]` (H and W multiples of
    /// 2^depth).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut skips = Vec::with_capacity(self.up.len());
        let mut x = x;
        if let Some(enc) = &self.encoder {
            if let Some(block) = self.down.first() {
                skips.push(block.forward(x.clone()));
            }
            let mut features = enc.forward(x);
            let deepest = features.pop();
            skips.extend(features);
            x = self
                .bottom
                .forward(deepest.unwrap_or_else(|| skips[0].clone()));
        } else {
            for block in &self.down {
                let y = block.forward(x);
                x = self.pool.forward(y.clone());
                skips.push(y);
            }
            x = self.bottom.forward(x);
        }
        for up in &self.up {
            let skip = match skips.pop() {
                Some(s) => s,
                None => break,
            };
            let u = up.up.forward(x);
            x = up.block.forward(Tensor::cat(vec![u, skip], 1));
        }
        self.head.forward(x)
    }

    /// Foreground probability `[N, 1, H, W]`: sigmoid of one logit, or 1 - P(background) for a
    /// softmax head (what the engine reads from a multi-class output).
    pub fn probability(&self, x: Tensor<4>) -> Tensor<4> {
        let logits = self.forward(x);
        foreground_probability(logits)
    }

    /// Adds the input statistics of every batch norm for the images `x` to `acc` (the network
    /// computing as it is, its batch norms in inference mode on a non-autodiff device).
    pub fn accumulate_moments(&self, x: Tensor<4>, acc: &mut Moments) {
        self.moments(x, acc, false);
    }

    /// As [`Unet::accumulate_moments`], each batch norm normalising by the batch's own
    /// statistics (what training mode computes): every layer's input then has the statistics it
    /// would have with all earlier batch norms re-estimated on this data, in one pass.
    pub fn accumulate_batch_moments(&self, x: Tensor<4>, acc: &mut Moments) {
        self.moments(x, acc, true);
    }

    /// Batch norms in network order: the encoder's levels (the full-resolution block, then an
    /// EfficientNet encoder's in its order), the bottom, the decoder's blocks.
    fn moments(&self, x: Tensor<4>, acc: &mut Moments, by_batch: bool) {
        let mut at = 0;
        let mut skips = Vec::with_capacity(self.up.len());
        let mut x = x;
        if let Some(enc) = &self.encoder {
            if let Some(block) = self.down.first() {
                skips.push(block.forward_moments(x.clone(), acc, &mut at, by_batch));
            }
            let mut features = enc.forward_moments(x, acc, &mut at, by_batch);
            let deepest = features.pop();
            skips.extend(features);
            let Some(deepest) = deepest else { return };
            x = self.bottom.forward_moments(deepest, acc, &mut at, by_batch);
        } else {
            for block in &self.down {
                let y = block.forward_moments(x, acc, &mut at, by_batch);
                x = self.pool.forward(y.clone());
                skips.push(y);
            }
            x = self.bottom.forward_moments(x, acc, &mut at, by_batch);
        }
        for up in &self.up {
            let Some(skip) = skips.pop() else { break };
            let u = up.up.forward(x);
            x = up
                .block
                .forward_moments(Tensor::cat(vec![u, skip], 1), acc, &mut at, by_batch);
        }
    }

    /// Every batch norm, in the order of [`Unet::accumulate_moments`].
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let mut out: Vec<&mut BatchNorm> = Vec::new();
        for b in self.down.iter_mut() {
            out.extend(b.bns_mut());
        }
        if let Some(enc) = self.encoder.as_mut() {
            out.extend(enc.batch_norms_mut());
        }
        out.extend(self.bottom.bns_mut());
        for u in self.up.iter_mut() {
            out.extend(u.block.bns_mut());
        }
        out
    }

    /// Adaptation of the batch-norm statistics: every batch norm's running mean and variance
    /// become those measured over data (`acc`: the mean, and the variance within its batches),
    /// its learnt scale and shift unchanged, so the network normalises a new scanner's features
    /// as it learnt to normalise its training data's.
    pub fn with_running_statistics(mut self, acc: &Moments) -> Self {
        for (at, bn) in self.batch_norms_mut().into_iter().enumerate() {
            restate(bn, acc, at);
        }
        self
    }

    /// The running statistics of every batch norm, in network order: (mean, variance) per
    /// channel.
    pub fn running_statistics(&self) -> Vec<(Vec<f32>, Vec<f32>)> {
        let v = |t: Tensor<1>| {
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default()
        };
        self.clone()
            .batch_norms_mut()
            .into_iter()
            .map(|bn| (v(bn.running_mean.value()), v(bn.running_var.value())))
            .collect()
    }

    /// Calibrated unfolding: for a network loaded from a folded ONNX file (each batch norm an
    /// identity with the folded bias as its shift), gives every batch norm the mean and variance
    /// of its input over data (`acc`) as running statistics, with the scale and shift that keep
    /// the network's output unchanged in inference mode: gamma = sqrt(var + eps), beta = mean +
    /// the folded bias. Normalising by a batch of that data then computes nearly the same model,
    /// which a folded file alone cannot.
    pub fn with_data_statistics(mut self, acc: &Moments) -> Self {
        for (at, bn) in self.batch_norms_mut().into_iter().enumerate() {
            calibrate(bn, acc, at);
        }
        self
    }

    /// Every batch norm normalises by its running statistics and leaves them unchanged, in
    /// training too (`bn_stats = "frozen"`); scale and shift stay trainable.
    pub fn with_frozen_bn_stats(mut self) -> Self {
        for bn in self.batch_norms_mut() {
            bn.training = Param::from_bool(false);
        }
        self
    }

    /// Architecture read back from the weights.
    pub fn arch(&self) -> UnetArch {
        let [base, in_channels, _, _] = self.down[0].conv1.weight.shape().dims();
        let [classes, _, _, _] = self.head.weight.shape().dims();
        UnetArch {
            depth: self.up.len(),
            base_width: base,
            in_channels,
            classes,
            encoder: if self.encoder.is_some() {
                Encoder::EfficientnetLite0
            } else {
                Encoder::Unet
            },
        }
    }
}

/// `bn` applied with the statistics of `u` itself (per channel over batch and space), as a
/// batch norm computes in training, without touching its running statistics.
fn batch_normalised(bn: &BatchNorm, u: Tensor<4>) -> Tensor<4> {
    let [_, c, _, _] = u.dims();
    let mean = u.clone().mean_dim(0).mean_dim(2).mean_dim(3);
    let centred = u - mean;
    let var = centred
        .clone()
        .powi_scalar(2)
        .mean_dim(0)
        .mean_dim(2)
        .mean_dim(3);
    let scale = bn.gamma.val().reshape([1, c, 1, 1]);
    let shift = bn.beta.val().reshape([1, c, 1, 1]);
    centred / var.add_scalar(bn.epsilon).sqrt() * scale + shift
}

/// Foreground probability from logits (see [`Unet::probability`]).
pub fn foreground_probability(logits: Tensor<4>) -> Tensor<4> {
    let [_, c, _, _] = logits.dims();
    if c == 1 {
        burn::tensor::activation::sigmoid(logits)
    } else {
        let p = burn::tensor::activation::softmax(logits, 1);
        p.narrow(1, 0, 1).neg().add_scalar(1.0)
    }
}
