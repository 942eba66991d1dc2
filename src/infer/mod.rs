//! Running segmentation models with tract: the only module that names tract types.
//!
//! A model file is read once, identified by its sha256, described ([`ModelSpec`], from its pocusd
//! metadata or its graph), given a fixed input shape, optimised (`into_optimized`) and made
//! runnable once; one `SimpleState` is kept and reused for every frame. Before a model is accepted
//! it runs on a probe input, and its output must have the expected size, be finite, and lie in
//! [0, 1] for probability heads. [`Engine::swap`] loads a new model completely before replacing the
//! running one, so a bad file leaves the old model serving. Must not depend on burn or zbus.

pub mod onnx_build;
pub mod onnx_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use thiserror::Error;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::SimpleState;

use crate::model::{GraphFacts, Layout, ModelError, ModelSpec, OutputKind, SpecOverrides};

/// Why a model could not be loaded or run. Messages name the file and what to do.
#[derive(Debug, Error)]
pub enum InferError {
    /// The file cannot be read.
    #[error("cannot read model {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not an ONNX protobuf (truncated, or another format).
    #[error("model {path} is not a valid ONNX file ({reason}); re-export it or copy it again")]
    NotOnnx { path: PathBuf, reason: String },
    /// The graph does not describe an image segmenter pocusd can feed.
    #[error("model {path} refused: {source}")]
    Refused { path: PathBuf, source: ModelError },
    /// tract cannot build or optimise the graph.
    #[error("model {path} cannot be prepared by tract: {reason}")]
    Tract { path: PathBuf, reason: String },
    /// The probe run gave an output the pipeline cannot use.
    #[error("model {path} failed its probe run: {reason}")]
    Probe { path: PathBuf, reason: String },
    /// A frame's run failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// Sets how many threads tract's matrix products use (process-wide; tract keeps one executor).
pub fn set_threads(threads: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    if threads > 1 {
        set_default_executor(Executor::multithread(threads));
    } else {
        set_default_executor(Executor::SingleThread);
    }
}

pub use crate::files::sha256_hex;

type Plan = Arc<TypedRunnableModel>;

/// A model ready to run, with its reused state and output buffers.
pub struct LoadedModel {
    spec: ModelSpec,
    sha256: String,
    path: PathBuf,
    plan: Plan,
    state: TypedSimpleState,
    /// The input tensor, reused for every frame (the plan drops its reference after each run).
    input: Arc<Tensor>,
    /// The output as the model wrote it (layout and channels of the model).
    raw: Vec<f32>,
    /// Foreground probability per model pixel (input height x width).
    probability: Vec<f32>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("spec", &self.spec)
            .finish()
    }
}

impl LoadedModel {
    /// Loads, checks and probes the model at `path`.
    pub fn load(path: &Path, overrides: &SpecOverrides) -> Result<Self, InferError> {
        let bytes = std::fs::read(path).map_err(|source| InferError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path, overrides)
    }

    /// Loads a model from bytes; `path` names it in messages.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        overrides: &SpecOverrides,
    ) -> Result<Self, InferError> {
        let p = || path.to_path_buf();
        let proto = pb::ModelProto::decode(bytes).map_err(|e| InferError::NotOnnx {
            path: p(),
            reason: e.to_string(),
        })?;
        let graph = proto.graph.as_ref().ok_or_else(|| InferError::NotOnnx {
            path: p(),
            reason: "no graph".into(),
        })?;
        if graph.node.is_empty() {
            return Err(InferError::NotOnnx {
                path: p(),
                reason: "the graph has no nodes".into(),
            });
        }
        let facts = graph_facts(&proto);
        let spec = ModelSpec::from_graph(&facts, overrides)
            .map_err(|source| InferError::Refused { path: p(), source })?;
        let tract_err = |e: TractError| InferError::Tract {
            path: p(),
            reason: format!("{e:#}"),
        };
        let model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(tract_err)?
            .with_input_fact(0, f32::fact(spec.input_shape()).into())
            .map_err(tract_err)?;
        let plan = model
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        let state = SimpleState::new(&plan).map_err(tract_err)?;
        let input = Arc::new(Tensor::zero::<f32>(&spec.input_shape()).map_err(tract_err)?);
        let mut loaded = LoadedModel {
            spec,
            sha256: sha256_hex(bytes),
            path: p(),
            plan,
            state,
            input,
            raw: Vec::new(),
            probability: Vec::new(),
        };
        loaded.probe()?;
        Ok(loaded)
    }

    /// Runs the model on a mid-grey input and checks what comes out.
    fn probe(&mut self) -> Result<(), InferError> {
        let n: usize = self.spec.input_shape().iter().product();
        let input = vec![0.5f32; n];
        let expected = self.spec.output_channels * self.spec.input_width * self.spec.input_height;
        let path = self.path.clone();
        let probe_err = |reason: String| InferError::Probe {
            path: path.clone(),
            reason,
        };
        self.run_raw(&input).map_err(|e| probe_err(e.to_string()))?;
        if self.raw.len() != expected {
            return Err(probe_err(format!(
                "output has {} values, expected {}",
                self.raw.len(),
                expected
            )));
        }
        if let Some(i) = self.raw.iter().position(|v| !v.is_finite()) {
            return Err(probe_err(format!(
                "output value {i} is {} (not finite)",
                self.raw[i]
            )));
        }
        if matches!(self.spec.output, OutputKind::Sigmoid | OutputKind::Softmax) {
            if let Some(v) = self.raw.iter().find(|v| !(-1e-4..=1.0 + 1e-4).contains(*v)) {
                return Err(probe_err(format!(
                    "a {} head produced {v}, outside [0, 1]; set [model] output = \"logits\" if the graph has no activation",
                    self.spec.output.as_str()
                )));
            }
        }
        Ok(())
    }

    fn run_raw(&mut self, input: &[f32]) -> Result<(), InferError> {
        let run_err = |e: TractError| InferError::Run(format!("{e:#}"));
        let expected = self.input.len();
        if input.len() != expected {
            return Err(InferError::Run(format!(
                "the input has {} values, the model takes {expected}",
                input.len()
            )));
        }
        // No allocation per frame: the kept tensor is written in place when nothing else holds it
        // (always, once the previous run has returned); a fresh one only if something does.
        match Arc::get_mut(&mut self.input) {
            Some(t) => t
                .try_as_plain_ram_mut()
                .map_err(run_err)?
                .as_slice_mut::<f32>()
                .map_err(run_err)?
                .copy_from_slice(input),
            None => {
                let shape = self.spec.input_shape();
                self.input = Arc::new(Tensor::from_shape(&shape, input).map_err(run_err)?);
            }
        }
        let tensor = TValue::from_const(Arc::clone(&self.input));
        let outputs = self
            .state
            .run(tvec!(tensor))
            .map_err(|e| InferError::Run(format!("{e:#}")))?;
        let out = outputs
            .first()
            .ok_or_else(|| InferError::Run("the model produced no output".into()))?;
        let view = out
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(|e| InferError::Run(format!("{e:#}")))?;
        self.raw.clear();
        self.raw.extend_from_slice(view);
        Ok(())
    }

    /// Runs one input tensor (shape `spec.input_shape()`) and returns the foreground probability per
    /// model pixel, `input_height x input_width`, row-major.
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        self.run_raw(input)?;
        let expected = self.spec.output_channels * self.spec.input_width * self.spec.input_height;
        if self.raw.len() != expected {
            return Err(InferError::Run(format!(
                "output has {} values, expected {expected}",
                self.raw.len()
            )));
        }
        foreground(&self.raw, &self.spec, &mut self.probability);
        Ok(&self.probability)
    }

    /// The foreground probability of the last [`LoadedModel::run`] (empty before the first).
    pub fn probability(&self) -> &[f32] {
        &self.probability
    }

    /// What the model expects and produces.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The model file's sha256 (hex), which identifies it everywhere.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of nodes in the optimised plan (for diagnostics).
    pub fn node_count(&self) -> usize {
        self.plan.model().nodes().len()
    }
}

/// Foreground probability per pixel from a raw output: sigmoid for logits, and for multi-class
/// heads (after softmax where needed) one minus the background class's probability.
pub fn foreground(raw: &[f32], spec: &ModelSpec, out: &mut Vec<f32>) {
    let (w, h, c) = (spec.input_width, spec.input_height, spec.output_channels);
    let n = w * h;
    out.resize(n, 0.0);
    match spec.output {
        OutputKind::Sigmoid => out.copy_from_slice(&raw[..n]),
        OutputKind::Logits => {
            for (o, &z) in out.iter_mut().zip(raw) {
                *o = 1.0 / (1.0 + (-z).exp());
            }
        }
        OutputKind::Softmax | OutputKind::SoftmaxLogits => {
            let at = |i: usize, k: usize| match spec.layout {
                Layout::Nchw => raw[k * n + i],
                Layout::Nhwc => raw[i * c + k],
            };
            for (i, o) in out.iter_mut().enumerate() {
                if spec.output == OutputKind::Softmax {
                    *o = 1.0 - at(i, 0);
                } else {
                    let m = (0..c).map(|k| at(i, k)).fold(f32::NEG_INFINITY, f32::max);
                    let total: f32 = (0..c).map(|k| (at(i, k) - m).exp()).sum();
                    *o = 1.0 - (at(i, 0) - m).exp() / total;
                }
            }
        }
    }
}

/// What the protobuf says about inputs, outputs, the final operator and metadata.
fn graph_facts(proto: &pb::ModelProto) -> GraphFacts {
    let mut facts = GraphFacts::default();
    facts.metadata = proto
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let Some(graph) = proto.graph.as_ref() else {
        return facts;
    };
    let initialisers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initialisers.contains(i.name.as_str()))
        .collect();
    facts.inputs = inputs.len();
    facts.outputs = graph.output.len();
    if let Some(i) = inputs.first() {
        facts.input_name = i.name.clone();
        facts.input_shape = shape_of(i);
    }
    if let Some(o) = graph.output.first() {
        facts.output_shape = shape_of(o);
        // Follow pass-through operators back to the one that decides the head.
        let mut name = o.name.clone();
        for _ in 0..16 {
            let Some(node) = graph
                .node
                .iter()
                .find(|n| n.output.iter().any(|x| *x == name))
            else {
                break;
            };
            if matches!(
                node.op_type.as_str(),
                "Identity" | "Transpose" | "Reshape" | "Squeeze" | "Unsqueeze"
            ) {
                if let Some(prev) = node.input.first() {
                    name = prev.clone();
                    continue;
                }
            }
            facts.final_op = node.op_type.clone();
            break;
        }
    }
    facts
}

fn shape_of(v: &pb::ValueInfoProto) -> Vec<Option<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The running model and the rule for replacing it.
#[derive(Debug)]
pub struct Engine {
    current: LoadedModel,
    overrides: SpecOverrides,
}

impl Engine {
    /// An engine serving `model`; later swaps use the same overrides.
    pub fn new(model: LoadedModel, overrides: SpecOverrides) -> Self {
        Self {
            current: model,
            overrides,
        }
    }

    /// Loads and probes the model at `path`; only if that succeeds does it replace the running
    /// one. On failure the running model keeps serving and the error is returned.
    pub fn swap(&mut self, path: &Path) -> Result<&LoadedModel, InferError> {
        let next = LoadedModel::load(path, &self.overrides)?;
        self.current = next;
        Ok(&self.current)
    }

    /// The running model.
    pub fn model(&self) -> &LoadedModel {
        &self.current
    }

    /// The running model, to run frames.
    pub fn model_mut(&mut self) -> &mut LoadedModel {
        &mut self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::onnx_build::{self, Breakage};
    use crate::model::{Layout, OutputKind, Task};

    /// Frame after frame the one input tensor is reused (the same allocation), and each run sees
    /// its own input, not the previous one's.
    #[test]
    fn the_input_tensor_is_reused_and_each_run_sees_its_own_input() {
        let spec =
            onnx_build::fixture_spec(Task::Region, 32, 24, 1, Layout::Nchw, OutputKind::Sigmoid);
        let bytes = onnx_build::brightness_model(&spec, 3, 0.5, 10.0, true, Breakage::None);
        let mut m = LoadedModel::from_bytes(&bytes, Path::new("t.onnx"), &SpecOverrides::default())
            .unwrap();
        let first = Arc::as_ptr(&m.input);
        let dark = vec![0.0f32; 32 * 24];
        let bright = vec![1.0f32; 32 * 24];
        for k in 0..4 {
            let (input, high) = if k % 2 == 0 {
                (&dark, false)
            } else {
                (&bright, true)
            };
            let p = m.run(input).unwrap();
            let mean = p.iter().sum::<f32>() / p.len() as f32;
            assert_eq!(mean > 0.5, high, "run {k}: mean probability {mean}");
            assert_eq!(
                Arc::as_ptr(&m.input),
                first,
                "run {k} allocated a new input"
            );
        }
        assert!(m.run(&dark[..10]).is_err(), "a short input is refused");
    }
}
