//! Between burn's U-Net and ONNX. Export folds each batch norm into the convolution before it and
//! writes the graph through the project's own builder (`infer::onnx_build`), which emits
//! ConvTranspose upsampling (burn-onnx's exporter cannot) under initializer names equal to the
//! training model's parameter paths. `--init MODEL.onnx` goes the other way: folded weights are
//! loaded by those names into the convolutions, and the batch norms start as identities with the
//! folded bias as their shift. Must not depend on the training loop or on files beyond the bytes
//! handed in.

use std::collections::HashMap;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use thiserror::Error;

use super::unet::{ConvBlock, Unet, UnetArch};
use crate::infer::onnx_build::{unet_graph, UnetShape, UnetWeights};
use crate::model::ModelSpec;

/// Export and import failures.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("cannot read tensor {0} of the network: {1}")]
    Data(String, String),
    #[error("{0} is not an ONNX file exported by pocusd: {1}")]
    Foreign(String, String),
}

fn values<const D: usize>(name: &str, t: Tensor<D>) -> Result<Vec<f32>, ExportError> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ExportError::Data(name.into(), format!("{e:?}")))
}

/// Folded (weight, bias) of every layer, by name.
struct Folded(HashMap<String, (Vec<f32>, Vec<f32>)>);

fn fold_block(
    out: &mut HashMap<String, (Vec<f32>, Vec<f32>)>,
    prefix: &str,
    b: &ConvBlock,
) -> Result<(), ExportError> {
    for (i, conv, bn) in [(1, &b.conv1, &b.bn1), (2, &b.conv2, &b.bn2)] {
        let name = format!("{prefix}.conv{i}");
        let w = values(&name, conv.weight.val())?;
        let bias = match &conv.bias {
            Some(p) => values(&name, p.val())?,
            None => Vec::new(),
        };
        let gamma = values(&name, bn.gamma.val())?;
        let beta = values(&name, bn.beta.val())?;
        let mean = values(&name, bn.running_mean.value())?;
        let var = values(&name, bn.running_var.value())?;
        let cout = gamma.len();
        let per_out = w.len() / cout.max(1);
        let mut fw = w;
        let mut fb = vec![0.0f32; cout];
        for o in 0..cout {
            let scale = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
            for v in &mut fw[o * per_out..(o + 1) * per_out] {
                *v *= scale;
            }
            let b0 = bias.get(o).copied().unwrap_or(0.0);
            fb[o] = (b0 - mean[o]) * scale + beta[o];
        }
        out.insert(name, (fw, fb));
    }
    Ok(())
}

impl Folded {
    fn new(net: &Unet) -> Result<Self, ExportError> {
        let mut m = HashMap::new();
        for (i, b) in net.down.iter().enumerate() {
            fold_block(&mut m, &format!("down.{i}"), b)?;
        }
        fold_block(&mut m, "bottom", &net.bottom)?;
        for (i, u) in net.up.iter().enumerate() {
            let name = format!("up.{i}.up");
            let w = values(&name, u.up.weight.val())?;
            let b = match &u.up.bias {
                Some(p) => values(&name, p.val())?,
                None => vec![0.0; u.up.channels[1]],
            };
            m.insert(name, (w, b));
            fold_block(&mut m, &format!("up.{i}.block"), &u.block)?;
        }
        let w = values("head", net.head.weight.val())?;
        let b = match &net.head.bias {
            Some(p) => values("head", p.val())?,
            None => vec![0.0; net.arch().classes],
        };
        m.insert("head".into(), (w, b));
        Ok(Self(m))
    }

    fn take(&mut self, name: &str) -> (Vec<f32>, Vec<f32>) {
        // Every name the graph asks for was inserted from the same architecture.
        self.0.remove(name).unwrap_or_default()
    }
}

impl UnetWeights for Folded {
    fn conv3(&mut self, name: &str, _: usize, _: usize) -> (Vec<f32>, Vec<f32>) {
        self.take(name)
    }
    fn up(&mut self, name: &str, _: usize, _: usize) -> (Vec<f32>, Vec<f32>) {
        self.take(name)
    }
    fn head(&mut self, name: &str, _: usize, _: usize) -> (Vec<f32>, Vec<f32>) {
        self.take(name)
    }
}

/// The ONNX bytes of `net` (an inference-mode network) with `spec`'s metadata.
pub fn to_onnx(net: &Unet, spec: &ModelSpec) -> Result<Vec<u8>, ExportError> {
    let arch = net.arch();
    let mut folded = Folded::new(net)?;
    let shape = UnetShape {
        depth: arch.depth,
        base_width: arch.base_width,
        conv_transpose: true,
    };
    let mut spec = spec.clone();
    spec.output_channels = arch.classes;
    Ok(unet_graph(&spec, shape, &mut folded))
}

/// The largest difference between `net` folded for export and the weights of an exported ONNX
/// file (`inits`), relative to 1 + |weight|: near 0 (rounding only) when the file was exported
/// from this very network, so an unfolded copy kept beside a file can be checked against it.
pub fn fold_difference(
    origin: &str,
    net: &Unet,
    inits: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<f32, ExportError> {
    let folded = Folded::new(net)?;
    let mut worst = 0.0f32;
    for (name, (w, b)) in &folded.0 {
        for (suffix, mine) in [("weight", w), ("bias", b)] {
            let key = format!("{name}.{suffix}");
            let (_, theirs) = inits.get(&key).ok_or_else(|| {
                ExportError::Foreign(origin.into(), format!("it has no weight named {key}"))
            })?;
            if theirs.len() != mine.len() {
                return Err(ExportError::Foreign(
                    origin.into(),
                    format!(
                        "weight {key} has {} values, the network {}",
                        theirs.len(),
                        mine.len()
                    ),
                ));
            }
            for (a, t) in mine.iter().zip(theirs) {
                worst = worst.max((a - t).abs() / (1.0 + t.abs()));
            }
        }
    }
    Ok(worst)
}

/// Initializers of a pocusd-exported ONNX file, by name.
pub fn onnx_initializers(
    origin: &str,
    bytes: &[u8],
) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>, ExportError> {
    let foreign = |why: &str| ExportError::Foreign(origin.into(), why.into());
    let inits =
        crate::infer::onnx_file::initializers(bytes).map_err(|e| foreign(&e.to_string()))?;
    if inits.producer != "pocusd" {
        return Err(foreign(&format!(
            "its producer is {:?}; --init takes a run folder or a model written by `pocusd export`",
            inits.producer
        )));
    }
    Ok(inits.tensors)
}

/// The architecture of a pocusd-exported U-Net, read from its initializer shapes.
pub fn onnx_arch(
    origin: &str,
    inits: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<UnetArch, ExportError> {
    let foreign = |why: String| ExportError::Foreign(origin.into(), why);
    let depth = (0..)
        .take_while(|i| inits.contains_key(&format!("down.{i}.conv1.weight")))
        .count();
    let first = inits
        .get("down.0.conv1.weight")
        .ok_or_else(|| foreign("it has no layer named down.0.conv1 (not a pocusd U-Net)".into()))?;
    let head = inits
        .get("head.weight")
        .ok_or_else(|| foreign("it has no layer named head".into()))?;
    Ok(UnetArch {
        depth,
        base_width: first.0[0],
        in_channels: first.0[1],
        classes: head.0[0],
    })
}

fn tensor<const D: usize>(
    origin: &str,
    inits: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
    want: [usize; D],
    device: &Device,
) -> Result<Tensor<D>, ExportError> {
    let (dims, data) = inits.get(name).ok_or_else(|| {
        ExportError::Foreign(origin.into(), format!("it has no weight named {name}"))
    })?;
    if dims.as_slice() != want.as_slice() || data.len() != want.iter().product::<usize>() {
        return Err(ExportError::Foreign(
            origin.into(),
            format!("weight {name} has shape {dims:?}, the network needs {want:?}"),
        ));
    }
    Ok(Tensor::from_data(
        TensorData::new(data.clone(), want),
        device,
    ))
}

fn load_block(
    origin: &str,
    inits: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
    b: ConvBlock,
    device: &Device,
) -> Result<ConvBlock, ExportError> {
    let mut b = b;
    for i in [1, 2] {
        let name = format!("{prefix}.conv{i}");
        let (conv, bn) = if i == 1 {
            (&mut b.conv1, &mut b.bn1)
        } else {
            (&mut b.conv2, &mut b.bn2)
        };
        let [o, c, kh, kw] = conv.weight.shape().dims();
        conv.weight = Param::from_tensor(tensor(
            origin,
            inits,
            &format!("{name}.weight"),
            [o, c, kh, kw],
            device,
        )?);
        bn.beta = Param::from_tensor(tensor(origin, inits, &format!("{name}.bias"), [o], device)?);
        bn.gamma = Param::from_tensor(Tensor::ones([o], device));
        bn.running_mean = RunningState::new(Tensor::zeros([o], device));
        // 1 - epsilon: normalising by the running statistics is then exactly the identity.
        bn.running_var = RunningState::new(Tensor::ones([o], device).mul_scalar(1.0 - bn.epsilon));
    }
    Ok(b)
}

/// Loads the weights of a pocusd-exported ONNX file into `net` (same architecture), by name.
pub fn load_onnx_weights(
    origin: &str,
    bytes: &[u8],
    net: Unet,
    device: &Device,
) -> Result<Unet, ExportError> {
    let inits = onnx_initializers(origin, bytes)?;
    let arch = onnx_arch(origin, &inits)?;
    if arch != net.arch() {
        return Err(ExportError::Foreign(
            origin.into(),
            format!(
                "its U-Net has depth {} and width {} ({} input, {} output channels); this run wants depth {} and width {} ({}, {}): set --depth/--width to match",
                arch.depth, arch.base_width, arch.in_channels, arch.classes,
                net.arch().depth, net.arch().base_width, net.arch().in_channels, net.arch().classes
            ),
        ));
    }
    let mut net = net;
    let mut down = Vec::new();
    for (i, b) in std::mem::take(&mut net.down).into_iter().enumerate() {
        down.push(load_block(origin, &inits, &format!("down.{i}"), b, device)?);
    }
    net.down = down;
    let bottom = std::mem::replace(&mut net.bottom, placeholder_block(device));
    net.bottom = load_block(origin, &inits, "bottom", bottom, device)?;
    let mut up = Vec::new();
    for (i, mut u) in std::mem::take(&mut net.up).into_iter().enumerate() {
        let name = format!("up.{i}.up");
        let [ci, co, kh, kw] = u.up.weight.shape().dims();
        u.up.weight = Param::from_tensor(tensor(
            origin,
            &inits,
            &format!("{name}.weight"),
            [ci, co, kh, kw],
            device,
        )?);
        u.up.bias = Some(Param::from_tensor(tensor(
            origin,
            &inits,
            &format!("{name}.bias"),
            [co],
            device,
        )?));
        u.block = load_block(origin, &inits, &format!("up.{i}.block"), u.block, device)?;
        up.push(u);
    }
    net.up = up;
    let [o, c, kh, kw] = net.head.weight.shape().dims();
    net.head.weight = Param::from_tensor(tensor(
        origin,
        &inits,
        "head.weight",
        [o, c, kh, kw],
        device,
    )?);
    net.head.bias = Some(Param::from_tensor(tensor(
        origin,
        &inits,
        "head.bias",
        [o],
        device,
    )?));
    Ok(net)
}

fn placeholder_block(device: &Device) -> ConvBlock {
    // A 1-channel block only to move the real one out; replaced at once.
    let net = Unet::new(
        &UnetArch {
            depth: 1,
            base_width: 1,
            in_channels: 1,
            classes: 1,
        },
        device,
    );
    net.bottom
}
