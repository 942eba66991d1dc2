//! Between burn's U-Net and ONNX. Export folds each batch norm into the convolution before it and
//! writes the graph through the project's own builder (`infer::onnx_build`), which emits
//! ConvTranspose upsampling (burn-onnx's exporter cannot) under initializer names equal to the
//! training model's parameter paths. `--init MODEL.onnx` goes the other way: folded weights are
//! loaded by those names into the convolutions, and the batch norms start as identities with the
//! folded bias as their shift. Must not depend on the training loop or on files beyond the bytes
//! handed in.

use std::collections::HashMap;

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor, TensorData};
use thiserror::Error;

use super::effnet::{EffEncoder, SKIP_BLOCKS};
use super::unet::{ConvBlock, Encoder, Unet, UnetArch};
use crate::infer::onnx_build::{
    attr_int, attr_ints, rename_output, unet_graph, GraphBuilder, UnetShape, UnetWeights,
};
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

/// `conv`'s weight and bias with `bn` (if any) folded in.
fn fold_conv(
    name: &str,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    let w = values(name, conv.weight.val())?;
    let cout = conv.weight.shape().dims::<4>()[0];
    let bias = match &conv.bias {
        Some(p) => values(name, p.val())?,
        None => vec![0.0; cout],
    };
    let Some(bn) = bn else { return Ok((w, bias)) };
    let gamma = values(name, bn.gamma.val())?;
    let beta = values(name, bn.beta.val())?;
    let mean = values(name, bn.running_mean.value())?;
    let var = values(name, bn.running_var.value())?;
    let per_out = w.len() / cout.max(1);
    let mut fw = w;
    let mut fb = vec![0.0f32; cout];
    for o in 0..cout.min(gamma.len()) {
        let scale = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
        for v in &mut fw[o * per_out..(o + 1) * per_out] {
            *v *= scale;
        }
        fb[o] = (bias.get(o).copied().unwrap_or(0.0) - mean[o]) * scale + beta[o];
    }
    Ok((fw, fb))
}

fn fold_block(
    out: &mut HashMap<String, (Vec<f32>, Vec<f32>)>,
    prefix: &str,
    b: &ConvBlock,
) -> Result<(), ExportError> {
    for (i, conv, bn) in [(1, &b.conv1, &b.bn1), (2, &b.conv2, &b.bn2)] {
        let name = format!("{prefix}.conv{i}");
        let folded = fold_conv(&name, conv, Some(bn))?;
        out.insert(name, folded);
    }
    Ok(())
}

/// The EfficientNet encoder's convolutions by name, each with what it reads and writes: (name,
/// convolution, batch norm, whether ReLU6 follows).
fn encoder_layers(e: &EffEncoder) -> Vec<(String, &Conv2d, &BatchNorm, bool)> {
    let mut out = vec![("encoder.stem".to_string(), &e.stem, &e.bn0, true)];
    for (i, b) in e.blocks.iter().enumerate() {
        let p = format!("encoder.blocks.{i}");
        if let (Some(ex), Some(b0)) = (&b.expand, &b.bn0) {
            out.push((format!("{p}.expand"), ex, b0, true));
        }
        out.push((format!("{p}.depthwise"), &b.depthwise, &b.bn1, true));
        out.push((format!("{p}.project"), &b.project, &b.bn2, false));
    }
    out
}

impl Folded {
    fn new(net: &Unet) -> Result<Self, ExportError> {
        let mut m = HashMap::new();
        for (i, b) in net.down.iter().enumerate() {
            fold_block(&mut m, &format!("down.{i}"), b)?;
        }
        if let Some(e) = &net.encoder {
            for (name, conv, bn, _) in encoder_layers(e) {
                let folded = fold_conv(&name, conv, Some(bn))?;
                m.insert(name, folded);
            }
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
    if let Some(e) = &net.encoder {
        return Ok(efficientnet_graph(net, e, &mut folded, spec));
    }
    let shape = UnetShape {
        depth: arch.depth,
        base_width: arch.base_width,
        conv_transpose: true,
    };
    let mut spec = spec.clone();
    spec.output_channels = arch.classes;
    Ok(unet_graph(&spec, shape, &mut folded))
}

/// A folded convolution node named `name` (weights from `folded`; stride, groups and symmetric
/// "same" padding from `conv`).
fn conv_node(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    conv: &Conv2d,
    folded: &mut Folded,
) -> String {
    let dims = conv.weight.shape().dims::<4>();
    let (w, b) = folded.take(name);
    let wn = g.named_constant(&format!("{name}.weight"), &dims, w);
    let bn = g.named_constant(&format!("{name}.bias"), &[dims[0]], b);
    let k = dims[2] as i64;
    let s = conv.stride[0] as i64;
    g.node(
        "Conv",
        &[x, &wn, &bn],
        vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[k / 2; 4]),
            attr_ints("strides", &[s, s]),
            attr_int("group", conv.groups as i64),
        ],
    )
}

fn block_node(g: &mut GraphBuilder, x: &str, name: &str, b: &ConvBlock, f: &mut Folded) -> String {
    let y = conv_node(g, x, &format!("{name}.conv1"), &b.conv1, f);
    let y = g.node("Relu", &[&y], vec![]);
    let y = conv_node(g, &y, &format!("{name}.conv2"), &b.conv2, f);
    g.node("Relu", &[&y], vec![])
}

/// The graph of a U-Net on the EfficientNet-lite0 encoder (ReLU6 as Clip, the blocks' residual
/// additions as Add), initializers named by the network's parameter paths.
fn efficientnet_graph(net: &Unet, e: &EffEncoder, f: &mut Folded, spec: &ModelSpec) -> Vec<u8> {
    let mut g = GraphBuilder::new();
    let (w, h, c) = (spec.input_width, spec.input_height, spec.channels);
    let classes = net.head.weight.shape().dims::<4>()[0];
    let zero = g.constant("zero", &[], vec![0.0]);
    let six = g.constant("six", &[], vec![6.0]);
    let mut skips = Vec::new();
    if let Some(b) = net.down.first() {
        skips.push(block_node(&mut g, "input", "down.0", b, f));
    }
    let layers = encoder_layers(e);
    let mut layer = layers.iter();
    let mut apply = |g: &mut GraphBuilder, x: &str, f: &mut Folded| -> String {
        let Some((name, conv, _, relu6)) = layer.next() else {
            return x.to_string();
        };
        let y = conv_node(g, x, name, conv, f);
        if *relu6 {
            g.node("Clip", &[&y, &zero, &six], vec![])
        } else {
            y
        }
    };
    let mut x = apply(&mut g, "input", f);
    for (i, b) in e.blocks.iter().enumerate() {
        let mut y = x.clone();
        if b.expand.is_some() {
            y = apply(&mut g, &y, f);
        }
        y = apply(&mut g, &y, f);
        y = apply(&mut g, &y, f);
        x = if b.residual() {
            g.node("Add", &[&y, &x], vec![])
        } else {
            y
        };
        if SKIP_BLOCKS.contains(&i) {
            skips.push(x.clone());
        }
    }
    let deepest = skips.pop().unwrap_or_default();
    let mut y = block_node(&mut g, &deepest, "bottom", &net.bottom, f);
    for (i, u) in net.up.iter().enumerate() {
        let Some(skip) = skips.pop() else { break };
        let [cin, cout, _, _] = u.up.weight.shape().dims::<4>();
        let name = format!("up.{i}.up");
        let (wu, bu) = f.take(&name);
        y = g.conv_transpose2_named(&y, &name, wu, bu, cin, cout);
        y = g.concat(&[&y, &skip], 1);
        y = block_node(&mut g, &y, &format!("up.{i}.block"), &u.block, f);
    }
    y = conv_node(&mut g, &y, "head", &net.head, f);
    y = if classes == 1 {
        g.node("Sigmoid", &[&y], vec![])
    } else {
        g.softmax(&y, 1)
    };
    let mut spec = spec.clone();
    spec.output_channels = classes;
    let meta = spec.to_metadata();
    rename_output(g, &y, "output").finish(
        ("input", &[Some(1), Some(c), Some(h), Some(w)]),
        ("output", &[Some(1), Some(classes), Some(h), Some(w)]),
        &meta,
    )
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
    let encoder = if inits.contains_key("encoder.stem.weight") {
        Encoder::EfficientnetLite0
    } else {
        Encoder::Unet
    };
    Ok(UnetArch {
        depth: if encoder == Encoder::Unet {
            depth
        } else {
            (0..)
                .take_while(|i| inits.contains_key(&format!("up.{i}.up.weight")))
                .count()
        },
        base_width: first.0[0],
        in_channels: first.0[1],
        classes: head.0[0],
        encoder,
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
    if arch.encoder != Encoder::Unet {
        return Err(ExportError::Foreign(
            origin.into(),
            "its encoder is EfficientNet-lite0, whose batch norms a folded file cannot give back; start from its run folder, or keep the unfolded copy (.bpk) beside it".into(),
        ));
    }
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
            ..Default::default()
        },
        device,
    );
    net.bottom
}
