//! Writing ONNX files from Rust with `tract_onnx::pb` + prost: a small graph builder, the U-Net of
//! the default architecture (ConvTranspose upsampling), and the hand-weighted fixture models the
//! tests use (a brightness segmenter in every layout, channel count and head; deliberately broken
//! models). Lives under `infer` because it names tract's protobuf types.

use std::collections::BTreeMap;

use prost::Message;
use tract_onnx::pb;

use crate::model::Task;
use crate::model::{Layout, ModelSpec, Normalisation, OutputKind};
use crate::synth::SplitMix64;

/// ONNX opset written.
pub const OPSET: i64 = 13;

const FLOAT: i32 = 1; // TensorProto.DataType.FLOAT

/// Builds one graph node by node; names are generated.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    next: usize,
}

pub(crate) fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 3,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[Option<usize>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam(format!("d{i}")),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_{}", self.next)
    }

    /// Adds a float constant and returns its name.
    pub fn constant(&mut self, prefix: &str, dims: &[usize], data: Vec<f32>) -> String {
        let name = self.name(prefix);
        self.named_constant(&name, dims, data)
    }

    /// Adds a node with the given inputs and attributes; returns its output's name.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        let out = self.name(&op.to_ascii_lowercase());
        self.nodes.push(pb::NodeProto {
            name: out.clone(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attributes,
            ..Default::default()
        });
        out
    }

    /// Adds a float constant under an exact name.
    pub fn named_constant(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            float_data: data,
            ..Default::default()
        });
        name.into()
    }

    /// [`Self::conv`] with initializers named `{name}.weight` and `{name}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_named(
        &mut self,
        x: &str,
        name: &str,
        weights: Vec<f32>,
        bias: Vec<f32>,
        out_ch: usize,
        in_ch: usize,
        k: usize,
    ) -> String {
        let w = self.named_constant(&format!("{name}.weight"), &[out_ch, in_ch, k, k], weights);
        let b = self.named_constant(&format!("{name}.bias"), &[out_ch], bias);
        let p = (k / 2) as i64;
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[k as i64, k as i64]),
                attr_ints("pads", &[p, p, p, p]),
            ],
        )
    }

    /// [`Self::conv_transpose2`] with initializers named `{name}.weight` and `{name}.bias`.
    pub fn conv_transpose2_named(
        &mut self,
        x: &str,
        name: &str,
        weights: Vec<f32>,
        bias: Vec<f32>,
        in_ch: usize,
        out_ch: usize,
    ) -> String {
        let w = self.named_constant(&format!("{name}.weight"), &[in_ch, out_ch, 2, 2], weights);
        let b = self.named_constant(&format!("{name}.bias"), &[out_ch], bias);
        self.node(
            "ConvTranspose",
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        )
    }

    /// `Conv` with square kernel `k`, "same" padding and the given weights `[out, in, k, k]`
    /// (initializers named after a generated layer name).
    pub fn conv(
        &mut self,
        x: &str,
        weights: Vec<f32>,
        bias: Vec<f32>,
        out_ch: usize,
        in_ch: usize,
        k: usize,
    ) -> String {
        let name = self.name("conv");
        self.conv_named(x, &name, weights, bias, out_ch, in_ch, k)
    }

    /// `ConvTranspose` 2x2 with stride 2 (doubles height and width); weights `[in, out, 2, 2]`.
    pub fn conv_transpose2(
        &mut self,
        x: &str,
        weights: Vec<f32>,
        bias: Vec<f32>,
        in_ch: usize,
        out_ch: usize,
    ) -> String {
        let name = self.name("convt");
        self.conv_transpose2_named(x, &name, weights, bias, in_ch, out_ch)
    }

    /// 2x2 max pooling with stride 2.
    pub fn max_pool2(&mut self, x: &str) -> String {
        self.node(
            "MaxPool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        )
    }

    /// `Transpose` with a permutation.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, vec![attr_int("axis", axis)])
    }

    /// `Softmax` along `axis`.
    pub fn softmax(&mut self, x: &str, axis: i64) -> String {
        self.node("Softmax", &[x], vec![attr_int("axis", axis)])
    }

    /// `Resize` by 2 (nearest), the op Keras-style exports use for upsampling.
    pub fn upsample2(&mut self, x: &str) -> String {
        let roi = self.constant("roi", &[0], vec![]);
        let scales = self.constant("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]);
        self.node(
            "Resize",
            &[x, &roi, &scales],
            vec![attr_str("mode", "nearest")],
        )
    }

    /// Serialises the graph with `input` (shape) and `output` (shape) and metadata.
    pub fn finish(
        self,
        input: (&str, &[Option<usize>]),
        output: (&str, &[Option<usize>]),
        metadata: &BTreeMap<String, String>,
    ) -> Vec<u8> {
        let graph = pb::GraphProto {
            name: "pocusd".into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1)],
            output: vec![value_info(output.0, output.1)],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "pocusd".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// A spec for fixtures and random U-Nets: 1-channel sigmoid unless changed.
pub fn fixture_spec(
    task: Task,
    width: usize,
    height: usize,
    channels: usize,
    layout: Layout,
    output: OutputKind,
) -> ModelSpec {
    let output_channels = if output.is_multiclass() { 2 } else { 1 };
    ModelSpec {
        task,
        input_width: width,
        input_height: height,
        channels,
        layout,
        normalisation: Normalisation::Unit,
        clahe: None,
        roi: crate::model::RoiPolicy::Full,
        contour_offset_px: 0.0,
        tta_mirror: false,
        output,
        output_channels,
        classes: vec!["background".into(), task.as_str().into()],
        from_metadata: true,
        trained_on: Some("hand-set weights (test fixture)".into()),
        val_dice: None,
        run_id: None,
    }
}

/// How a fixture is deliberately broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// A working model.
    None,
    /// The output is NaN everywhere.
    NanOutput,
    /// The output is a vector, not an image.
    VectorOutput,
    /// The input has rank 2.
    FlatInput,
}

/// A hand-weighted segmenter: foreground where the local mean brightness (a `k`x`k` box over the
/// normalised input) exceeds `threshold` (0..1), with a sigmoid of slope `gain`. Honours the spec's
/// layout, channels and head (sigmoid, logits, 2-class softmax); `with_metadata` writes pocusd
/// metadata from the spec.
pub fn brightness_model(
    spec: &ModelSpec,
    k: usize,
    threshold: f32,
    gain: f32,
    with_metadata: bool,
    breakage: Breakage,
) -> Vec<u8> {
    let (w, h, c) = (spec.input_width, spec.input_height, spec.channels);
    let mut g = GraphBuilder::new();
    let input_shape: Vec<Option<usize>> = match (breakage, spec.layout) {
        (Breakage::FlatInput, _) => vec![Some(1), Some(w * h * c)],
        (_, Layout::Nchw) => vec![Some(1), Some(c), Some(h), Some(w)],
        (_, Layout::Nhwc) => vec![Some(1), Some(h), Some(w), Some(c)],
    };
    let mut x = "input".to_string();
    if spec.layout == Layout::Nhwc {
        x = g.transpose(&x, &[0, 3, 1, 2]);
    }
    let multi = spec.output.is_multiclass();
    let out_ch = if multi { 2 } else { 1 };
    let per = gain / (k * k * c) as f32;
    let mut weights = Vec::with_capacity(out_ch * c * k * k);
    let mut bias = Vec::new();
    for o in 0..out_ch {
        // For two classes the logits are -z/2 and +z/2, so softmax gives sigmoid(z) for class 1.
        let sign = if multi {
            if o == 0 {
                -0.5
            } else {
                0.5
            }
        } else {
            1.0
        };
        weights.extend(std::iter::repeat_n(per * sign, c * k * k));
        bias.push(-gain * threshold * sign);
    }
    x = g.conv(&x, weights, bias, out_ch, c, k);
    x = match spec.output {
        OutputKind::Sigmoid => g.node("Sigmoid", &[&x], vec![]),
        OutputKind::Softmax => g.softmax(&x, 1),
        OutputKind::Logits | OutputKind::SoftmaxLogits => x,
    };
    if breakage == Breakage::NanOutput {
        // After the head, so no activation can absorb it.
        let nan = g.constant("nan", &[1], vec![f32::NAN]);
        x = g.node("Add", &[&x, &nan], vec![]);
    }
    let mut output_shape = vec![Some(1), Some(out_ch), Some(h), Some(w)];
    if breakage == Breakage::VectorOutput {
        x = g.node("GlobalAveragePool", &[&x], vec![]);
        x = g.node("Flatten", &[&x], vec![]);
        output_shape = vec![Some(1), Some(out_ch)];
    } else if spec.layout == Layout::Nhwc {
        x = g.transpose(&x, &[0, 2, 3, 1]);
        output_shape = vec![Some(1), Some(h), Some(w), Some(out_ch)];
    }
    let meta = if with_metadata {
        spec.to_metadata()
    } else {
        BTreeMap::new()
    };
    rename_output(g, &x, "output").finish(("input", &input_shape), ("output", &output_shape), &meta)
}

/// Makes the final value's name `name` with an Identity node.
pub(crate) fn rename_output(mut g: GraphBuilder, x: &str, name: &str) -> GraphBuilder {
    g.nodes.push(pb::NodeProto {
        name: name.into(),
        op_type: "Identity".into(),
        input: vec![x.into()],
        output: vec![name.into()],
        ..Default::default()
    });
    g
}

/// U-Net settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnetShape {
    /// Levels (poolings).
    pub depth: usize,
    /// Channels at the first level; doubled per level.
    pub base_width: usize,
    /// Upsample with ConvTranspose (true) or nearest Resize + conv (false).
    pub conv_transpose: bool,
}

impl Default for UnetShape {
    /// The default architecture: 4 levels, 16 base channels, ConvTranspose upsampling.
    fn default() -> Self {
        Self {
            depth: 4,
            base_width: 16,
            conv_transpose: true,
        }
    }
}

/// Where the weights of a U-Net graph come from: random numbers (benchmarks, tests) or a trained
/// network (the exporter). Every call names the layer by its parameter path in the training model
/// (`down.0.conv1`, `up.1.up`, `head`); batch norm is already folded into the convolutions.
pub trait UnetWeights {
    /// 3x3 convolution `[cout, cin, 3, 3]` and bias `[cout]`.
    fn conv3(&mut self, name: &str, cin: usize, cout: usize) -> (Vec<f32>, Vec<f32>);
    /// Upsampling: for ConvTranspose `[cin, cout, 2, 2]`, for Resize + conv `[cout, cin, 3, 3]`;
    /// bias `[cout]`.
    fn up(&mut self, name: &str, cin: usize, cout: usize) -> (Vec<f32>, Vec<f32>);
    /// 1x1 head `[classes, cin, 1, 1]` and bias `[classes]`.
    fn head(&mut self, name: &str, cin: usize, classes: usize) -> (Vec<f32>, Vec<f32>);
}

/// He-initialised random weights.
pub struct RandomWeights {
    rng: SplitMix64,
    conv_transpose: bool,
}

impl RandomWeights {
    pub fn new(seed: u64, conv_transpose: bool) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            conv_transpose,
        }
    }

    fn normal(&mut self) -> f32 {
        // Box-Muller.
        let (u1, u2) = (1.0 - self.rng.next_f64(), self.rng.next_f64());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn fill(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

impl UnetWeights for RandomWeights {
    fn conv3(&mut self, _: &str, cin: usize, cout: usize) -> (Vec<f32>, Vec<f32>) {
        let w = self.fill(cout * cin * 9, (2.0 / (cin * 9) as f32).sqrt());
        (w, self.fill(cout, 0.01))
    }

    fn up(&mut self, _: &str, cin: usize, cout: usize) -> (Vec<f32>, Vec<f32>) {
        let w = if self.conv_transpose {
            self.fill(cin * cout * 4, (1.0 / (cin * 4) as f32).sqrt())
        } else {
            self.fill(cout * cin * 9, (2.0 / (cin * 9) as f32).sqrt())
        };
        (w, vec![0.0; cout])
    }

    fn head(&mut self, _: &str, cin: usize, classes: usize) -> (Vec<f32>, Vec<f32>) {
        (
            self.fill(classes * cin, (1.0 / cin as f32).sqrt()),
            vec![0.0; classes],
        )
    }
}

/// A U-Net of the given shape with random He-initialised weights (batch norm folded into the
/// convolutions, as an inference export has it), NCHW, sigmoid head, with pocusd metadata from
/// `spec`. For benchmarks and tests before trained models exist.
pub fn random_unet(spec: &ModelSpec, shape: UnetShape, seed: u64) -> Vec<u8> {
    unet_graph(
        spec,
        shape,
        &mut RandomWeights::new(seed, shape.conv_transpose),
    )
}

/// The U-Net graph of `shape` for `spec` (NCHW; `spec.output_channels` 1: sigmoid head, C >= 2:
/// softmax over C classes) with weights from `weights`. Initializer names are the layer names with
/// `.weight` / `.bias`.
pub fn unet_graph(spec: &ModelSpec, shape: UnetShape, weights: &mut dyn UnetWeights) -> Vec<u8> {
    let mut g = GraphBuilder::new();
    let conv_relu = |g: &mut GraphBuilder,
                     x: &str,
                     name: &str,
                     cin: usize,
                     cout: usize,
                     weights: &mut dyn UnetWeights| {
        let (w, b) = weights.conv3(name, cin, cout);
        let y = g.conv_named(x, name, w, b, cout, cin, 3);
        g.node("Relu", &[&y], vec![])
    };
    let (w, h, c) = (spec.input_width, spec.input_height, spec.channels);
    let classes = spec.output_channels.max(1);
    let mut x = "input".to_string();
    let mut skips = Vec::new();
    let mut cin = c;
    for level in 0..shape.depth {
        let cout = shape.base_width << level;
        x = conv_relu(
            &mut g,
            &x,
            &format!("down.{level}.conv1"),
            cin,
            cout,
            weights,
        );
        x = conv_relu(
            &mut g,
            &x,
            &format!("down.{level}.conv2"),
            cout,
            cout,
            weights,
        );
        skips.push((x.clone(), cout));
        x = g.max_pool2(&x);
        cin = cout;
    }
    let bottom = shape.base_width << shape.depth;
    x = conv_relu(&mut g, &x, "bottom.conv1", cin, bottom, weights);
    x = conv_relu(&mut g, &x, "bottom.conv2", bottom, bottom, weights);
    cin = bottom;
    for (i, (skip, cout)) in skips.into_iter().rev().enumerate() {
        let name = format!("up.{i}.up");
        let (wu, bu) = weights.up(&name, cin, cout);
        x = if shape.conv_transpose {
            g.conv_transpose2_named(&x, &name, wu, bu, cin, cout)
        } else {
            let up = g.upsample2(&x);
            g.conv_named(&up, &name, wu, bu, cout, cin, 3)
        };
        x = g.concat(&[&x, &skip], 1);
        x = conv_relu(
            &mut g,
            &x,
            &format!("up.{i}.block.conv1"),
            cout * 2,
            cout,
            weights,
        );
        x = conv_relu(
            &mut g,
            &x,
            &format!("up.{i}.block.conv2"),
            cout,
            cout,
            weights,
        );
        cin = cout;
    }
    let (hw, hb) = weights.head("head", cin, classes);
    x = g.conv_named(&x, "head", hw, hb, classes, cin, 1);
    x = if classes == 1 {
        g.node("Sigmoid", &[&x], vec![])
    } else {
        g.softmax(&x, 1)
    };
    let meta = spec.to_metadata();
    rename_output(g, &x, "output").finish(
        ("input", &[Some(1), Some(c), Some(h), Some(w)]),
        ("output", &[Some(1), Some(classes), Some(h), Some(w)]),
        &meta,
    )
}
