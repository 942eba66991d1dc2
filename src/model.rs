//! What a segmentation model expects and produces: input size, channels, layout, normalisation,
//! CLAHE, output kind, classes and task ([`ModelSpec`]).
//!
//! Read from the ONNX file's `metadata_props` (keys prefixed `pocusd.`, versioned by
//! `pocusd.schema`; see docs/model-format.md), or, for models without them, inferred from the
//! graph's input/output shapes and final operator and completed by the `[model]` config section.
//! This module only interprets strings and shapes handed to it; it must not depend on tract or burn.

use std::collections::BTreeMap;

use thiserror::Error;

/// The metadata schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Prefix of every metadata key pocusd writes.
pub const META_PREFIX: &str = "pocusd.";

/// Errors in CLAHE parameters.
#[derive(Debug, Error, PartialEq)]
pub enum ClaheError {
    /// A tile grid dimension is zero or absurdly large.
    #[error("invalid tile grid {tiles_x}x{tiles_y}: both must be between 1 and {max}", max = MAX_TILES)]
    InvalidTiles { tiles_x: usize, tiles_y: usize },
    /// The clip limit is NaN or infinite.
    #[error("invalid clip limit {0}: must be a finite number (<= 0 disables clipping)")]
    InvalidClipLimit(f64),
}

/// Largest accepted tile count along one side (OpenCV accepts more, but a tile of less than one
/// pixel is meaningless and the tables would dwarf the image).
pub const MAX_TILES: usize = 256;

/// CLAHE parameters, OpenCV's `clipLimit` and `tileGridSize = (tiles_x, tiles_y)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaheParams {
    /// Contrast limit relative to a flat histogram; <= 0 disables clipping.
    pub clip_limit: f64,
    /// Tile columns.
    pub tiles_x: usize,
    /// Tile rows.
    pub tiles_y: usize,
}

impl ClaheParams {
    /// Checked parameters.
    pub fn new(clip_limit: f64, tiles_x: usize, tiles_y: usize) -> Result<Self, ClaheError> {
        if !clip_limit.is_finite() {
            return Err(ClaheError::InvalidClipLimit(clip_limit));
        }
        if tiles_x == 0 || tiles_y == 0 || tiles_x > MAX_TILES || tiles_y > MAX_TILES {
            return Err(ClaheError::InvalidTiles { tiles_x, tiles_y });
        }
        Ok(Self {
            clip_limit,
            tiles_x,
            tiles_y,
        })
    }
}

impl Default for ClaheParams {
    /// The values the seed workflow and most ultrasound pipelines use: clip 2.0 on an 8x8 grid.
    fn default() -> Self {
        Self {
            clip_limit: 2.0,
            tiles_x: 8,
            tiles_y: 8,
        }
    }
}

/// Parses "CxR" (C columns by R rows) or "N" (NxN) into (columns, rows).
pub fn parse_tiles(s: &str) -> Option<(usize, usize)> {
    let s = s.trim();
    let (c, r) = match s.split_once(['x', 'X']) {
        Some((c, r)) => (c.trim().parse().ok()?, r.trim().parse().ok()?),
        None => {
            let n = s.parse().ok()?;
            (n, n)
        }
    };
    Some((c, r))
}

/// Errors describing a model that does not fit.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    /// The input is not an image tensor pocusd can feed.
    #[error("model input {name:?} has shape {found}; expected [1, C, H, W] (NCHW) or [1, H, W, C] (NHWC) with C = 1 or 3")]
    BadInput { name: String, found: String },
    /// The output is not a per-pixel map matching the input.
    #[error("model output has shape {found}; expected {expected}")]
    BadOutput { found: String, expected: String },
    /// A metadata value cannot be understood.
    #[error("model metadata `{key}` = {value:?} is invalid: {allowed}")]
    BadMetadata {
        key: String,
        value: String,
        allowed: String,
    },
    /// Metadata from a newer pocusd.
    #[error("model metadata schema {found} is newer than this pocusd understands ({SCHEMA_VERSION}); upgrade pocusd")]
    NewerSchema { found: u32 },
    /// The model has more than one input or no output.
    #[error("model has {inputs} input(s) and {outputs} output(s); expected one image input and one output")]
    Arity { inputs: usize, outputs: usize },
}

/// Memory layout of the input and output tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [batch, channels, height, width] (PyTorch, burn).
    Nchw,
    /// [batch, height, width, channels] (Keras, tf2onnx).
    Nhwc,
}

impl Layout {
    /// The metadata spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// How 8-bit pixels become model input values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// x / 255.
    Unit,
    /// (x / 255 - mean) / std.
    MeanStd { mean: f32, std: f32 },
}

/// What the output holds per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One channel of probabilities (the graph ends in a sigmoid).
    Sigmoid,
    /// One channel of logits (sigmoid applied here).
    Logits,
    /// C channels of class probabilities (the graph ends in a softmax).
    Softmax,
    /// C channels of logits (softmax applied here).
    SoftmaxLogits,
}

impl OutputKind {
    /// The metadata spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputKind::Sigmoid => "sigmoid",
            OutputKind::Logits => "logits",
            OutputKind::Softmax => "softmax",
            OutputKind::SoftmaxLogits => "softmax_logits",
        }
    }

    /// Whether the output has one channel per class (as opposed to one foreground channel).
    pub fn is_multiclass(&self) -> bool {
        matches!(self, OutputKind::Softmax | OutputKind::SoftmaxLogits)
    }
}

/// What a model segments and which measurement its mask feeds (`pocusd.task`); the phantom
/// renders the same tasks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Two aponeurosis bands around a muscle belly; measured: muscle thickness.
    Aponeurosis,
    /// A filled ellipse (fetal head); measured: area and circumference.
    Region,
    /// Thin fascicle fragments in a muscle belly; measured (with the aponeuroses of the same
    /// frame): fascicle length and pennation angle.
    Fascicle,
}

impl Task {
    /// The name used in CLI flags, config and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Task::Aponeurosis => "aponeurosis",
            Task::Region => "region",
            Task::Fascicle => "fascicle",
        }
    }

    /// Every task, in the order they are listed to users.
    pub const ALL: [Task; 3] = [Task::Aponeurosis, Task::Region, Task::Fascicle];

    /// The task named `s` (its [`Task::as_str`] spelling).
    pub fn parse(s: &str) -> Option<Task> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The allowed names, for error messages: "aponeurosis, region or fascicle".
    pub fn allowed() -> &'static str {
        "aponeurosis, region or fascicle"
    }
}

/// The region-of-interest policy a model was trained with (`pocusd.roi`): the part of each frame
/// it expects to see. Part of the model's input contract, like CLAHE and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoiPolicy {
    /// The whole frame (training's `--roi none`; also every model without the key).
    #[default]
    Full,
    /// The ultrasound image found inside a scanner's screen grab (training's `--roi auto`).
    Auto,
}

impl RoiPolicy {
    /// The metadata spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoiPolicy::Full => "full",
            RoiPolicy::Auto => "auto",
        }
    }

    /// Parses the metadata spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "full" => Some(RoiPolicy::Full),
            "auto" => Some(RoiPolicy::Auto),
            _ => None,
        }
    }
}

/// Everything the pipeline needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub task: Task,
    pub input_width: usize,
    pub input_height: usize,
    /// 1 or 3 (a gray frame is replicated into 3).
    pub channels: usize,
    pub layout: Layout,
    pub normalisation: Normalisation,
    /// CLAHE before resizing, or `None` for off.
    pub clahe: Option<ClaheParams>,
    /// The region of interest the model was trained on (`pocusd.roi`; `Full` without the key).
    pub roi: RoiPolicy,
    /// How far the training masks' boundary lies outside the structure's clinical outline, in
    /// image pixels (`pocusd.contour_offset_px`, 0 without the key): the fitted ellipse's
    /// semi-axes are reduced by it before the circumference (HC18's masks lie ~0.92 px outside
    /// the ellipses of its CSV).
    pub contour_offset_px: f64,
    /// Mirrored-frame test-time averaging (`pocusd.tta = mirror`; off without the key): every
    /// frame also runs mirrored left to right and the two probability maps, the mirrored one
    /// flipped back, are averaged before the postprocessing.
    pub tta_mirror: bool,
    pub output: OutputKind,
    /// Output channels (1 for sigmoid/logits).
    pub output_channels: usize,
    /// Class names; for one-channel outputs `["background", <structure>]`.
    pub classes: Vec<String>,
    /// True when the spec came from pocusd metadata (the model owns its preprocessing).
    pub from_metadata: bool,
    /// Free-form provenance from metadata: training data, validation Dice, run id.
    pub trained_on: Option<String>,
    pub val_dice: Option<f64>,
    pub run_id: Option<String>,
}

/// A tensor shape as the graph states it: `None` for a symbolic dimension.
pub type Shape = Vec<Option<usize>>;

/// What the ONNX file says, gathered by `infer` (which alone reads ONNX) and interpreted here.
#[derive(Debug, Clone, Default)]
pub struct GraphFacts {
    pub input_name: String,
    pub input_shape: Shape,
    pub output_shape: Shape,
    /// Operator type of the node producing the output (`Sigmoid`, `Softmax`, `Conv`, ...).
    pub final_op: String,
    /// `metadata_props`, all of them.
    pub metadata: BTreeMap<String, String>,
    pub inputs: usize,
    pub outputs: usize,
}

/// Settings from the `[model]` config section for models without metadata (`None`: infer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecOverrides {
    pub task: Option<Task>,
    pub layout: Option<Layout>,
    pub output: Option<OutputKind>,
    pub normalisation: Option<Normalisation>,
    /// CLAHE for models without metadata (from `[preprocess]`).
    pub clahe: Option<Option<ClaheParams>>,
}

fn fmt_shape(s: &Shape) -> String {
    let dims: Vec<String> = s
        .iter()
        .map(|d| d.map(|v| v.to_string()).unwrap_or_else(|| "?".into()))
        .collect();
    format!("[{}]", dims.join(", "))
}

fn bad(key: &str, value: &str, allowed: &str) -> ModelError {
    ModelError::BadMetadata {
        key: format!("{META_PREFIX}{key}"),
        value: value.into(),
        allowed: allowed.into(),
    }
}

impl ModelSpec {
    /// Interprets the graph facts, preferring pocusd metadata, then the overrides, then what the
    /// shapes imply. Fails with a message saying what was expected and what was found.
    pub fn from_graph(facts: &GraphFacts, overrides: &SpecOverrides) -> Result<Self, ModelError> {
        if facts.inputs != 1 || facts.outputs != 1 {
            return Err(ModelError::Arity {
                inputs: facts.inputs,
                outputs: facts.outputs,
            });
        }
        let meta = |k: &str| {
            facts
                .metadata
                .get(&format!("{META_PREFIX}{k}"))
                .map(String::as_str)
        };
        let from_metadata = meta("schema").is_some();
        if let Some(v) = meta("schema") {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad("schema", v, "an integer version"))?;
            if n > SCHEMA_VERSION {
                return Err(ModelError::NewerSchema { found: n });
            }
        }

        // Input: rank 4, batch 1 (or symbolic), channels 1 or 3 in one of the two layouts.
        let bad_input = || ModelError::BadInput {
            name: facts.input_name.clone(),
            found: fmt_shape(&facts.input_shape),
        };
        let s = &facts.input_shape;
        if s.len() != 4 || !matches!(s[0], None | Some(1)) {
            return Err(bad_input());
        }
        let layout_meta = match meta("layout") {
            Some("NCHW") => Some(Layout::Nchw),
            Some("NHWC") => Some(Layout::Nhwc),
            Some(v) => return Err(bad("layout", v, "NCHW or NHWC")),
            None => None,
        };
        let is_ch = |d: Option<usize>| matches!(d, Some(1) | Some(3));
        let layout = match layout_meta.or(overrides.layout) {
            Some(l) => l,
            None if is_ch(s[1]) && !is_ch(s[3]) => Layout::Nchw,
            None if is_ch(s[3]) && !is_ch(s[1]) => Layout::Nhwc,
            // Both plausible (e.g. [1, 3, 3, 3]) or neither: PyTorch's order unless told.
            None if is_ch(s[1]) => Layout::Nchw,
            None => return Err(bad_input()),
        };
        let (c, h, w) = match layout {
            Layout::Nchw => (s[1], s[2], s[3]),
            Layout::Nhwc => (s[3], s[1], s[2]),
        };
        let (Some(channels), Some(mut height), Some(mut width)) = (c, h, w) else {
            // Symbolic spatial size: needs metadata or it cannot be fed.
            let (mw, mh) = match meta("input").and_then(parse_size) {
                Some(v) => v,
                None => return Err(bad_input()),
            };
            return Self::from_graph(
                &GraphFacts {
                    input_shape: match layout {
                        Layout::Nchw => vec![Some(1), c.or(Some(3)), Some(mh), Some(mw)],
                        Layout::Nhwc => vec![Some(1), Some(mh), Some(mw), c.or(Some(3))],
                    },
                    ..facts.clone()
                },
                overrides,
            );
        };
        if channels != 1 && channels != 3 {
            return Err(bad_input());
        }
        if let Some(v) = meta("input") {
            let (mw, mh) = parse_size(v).ok_or_else(|| bad("input", v, "WxH, e.g. 128x128"))?;
            if (mw, mh) != (width, height) {
                return Err(bad(
                    "input",
                    v,
                    &format!("the graph's input is {width}x{height}"),
                ));
            }
            (width, height) = (mw, mh);
        }

        // Output: same spatial size, 1 or C channels in the same layout.
        let o = &facts.output_shape;
        let (oc, oh, ow) = match (layout, o.len()) {
            (Layout::Nchw, 4) => (o[1], o[2], o[3]),
            (Layout::Nhwc, 4) => (o[3], o[1], o[2]),
            // [1, H, W] or [H, W]: a single map.
            (_, 3) => (Some(1), o[1], o[2]),
            (_, 2) => (Some(1), o[0], o[1]),
            _ => (None, None, None),
        };
        let expected_out = match layout {
            Layout::Nchw => format!("[1, 1 or C, {height}, {width}] like the NCHW input"),
            Layout::Nhwc => format!("[1, {height}, {width}, 1 or C] like the NHWC input"),
        };
        let bad_output = || ModelError::BadOutput {
            found: fmt_shape(o),
            expected: expected_out.clone(),
        };
        if oh.is_some_and(|v| v != height)
            || ow.is_some_and(|v| v != width)
            || oc.is_none() && o.len() != 4
        {
            return Err(bad_output());
        }
        let output_channels = oc.unwrap_or(1);
        if output_channels == 0 || output_channels > 64 {
            return Err(bad_output());
        }

        let output = match meta("output") {
            Some(v) => parse_output(v)
                .ok_or_else(|| bad("output", v, "sigmoid, logits, softmax or softmax_logits"))?,
            None => match overrides.output {
                Some(k) => k,
                None => match (facts.final_op.as_str(), output_channels) {
                    ("Sigmoid", _) => OutputKind::Sigmoid,
                    ("Softmax", c) if c > 1 => OutputKind::Softmax,
                    (_, 1) => OutputKind::Logits,
                    _ => OutputKind::SoftmaxLogits,
                },
            },
        };
        if output.is_multiclass() != (output_channels > 1) {
            return Err(ModelError::BadOutput {
                found: format!(
                    "{} with {} output channel(s)",
                    output.as_str(),
                    output_channels
                ),
                expected: "1 channel for sigmoid/logits, 2 or more for softmax".into(),
            });
        }

        let task = match meta("task") {
            Some(v) => match Task::parse(v) {
                Some(t) => t,
                None => return Err(bad("task", v, Task::allowed())),
            },
            None => overrides.task.unwrap_or(Task::Aponeurosis),
        };
        if let Some(v) = meta("channels") {
            if v.trim().parse::<usize>().ok() != Some(channels) {
                return Err(bad(
                    "channels",
                    v,
                    &format!("the graph's input has {channels}"),
                ));
            }
        }
        let normalisation = match meta("normalize") {
            Some("unit") => Normalisation::Unit,
            Some("mean_std") => {
                let f = |k: &str| -> Result<f32, ModelError> {
                    let v = meta(k).unwrap_or("");
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(k, v, "a finite number"))
                };
                let (mean, std) = (f("norm_mean")?, f("norm_std")?);
                if std <= 0.0 {
                    return Err(bad("norm_std", &std.to_string(), "a positive number"));
                }
                Normalisation::MeanStd { mean, std }
            }
            Some(v) => return Err(bad("normalize", v, "unit or mean_std")),
            None => overrides.normalisation.unwrap_or(Normalisation::Unit),
        };
        let clahe = if from_metadata {
            match meta("clahe") {
                None | Some("off") => None,
                Some(v) => Some(
                    parse_clahe(v)
                        .ok_or_else(|| bad("clahe", v, "off, or CLIP@CxR such as 2@8x8"))?,
                ),
            }
        } else {
            overrides.clahe.unwrap_or(Some(ClaheParams::default()))
        };
        let roi = match meta("roi") {
            None => RoiPolicy::Full,
            Some(v) => RoiPolicy::parse(v).ok_or_else(|| bad("roi", v, "auto or full"))?,
        };
        let contour_offset_px = match meta("contour_offset_px") {
            None => 0.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && x.abs() <= 10.0)
                .ok_or_else(|| bad("contour_offset_px", v, "a number of pixels from -10 to 10"))?,
        };
        let tta_mirror = match meta("tta").map(str::trim) {
            None | Some("off") => false,
            Some("mirror") => true,
            Some(v) => return Err(bad("tta", v, "off or mirror")),
        };
        let classes = match meta("classes") {
            Some(v) => v.split(',').map(|c| c.trim().to_string()).collect(),
            None if output_channels == 1 => vec!["background".into(), task.as_str().into()],
            None => (0..output_channels)
                .map(|i| {
                    if i == 0 {
                        "background".into()
                    } else {
                        format!("class{i}")
                    }
                })
                .collect(),
        };
        let expected_classes = output_channels.max(2);
        if classes.len() != expected_classes {
            return Err(bad(
                "classes",
                meta("classes").unwrap_or(""),
                &format!("{expected_classes} comma-separated names"),
            ));
        }
        Ok(ModelSpec {
            task,
            input_width: width,
            input_height: height,
            channels,
            layout,
            normalisation,
            clahe,
            roi,
            contour_offset_px,
            tta_mirror,
            output,
            output_channels,
            classes,
            from_metadata,
            trained_on: meta("trained_on").map(str::to_string),
            val_dice: meta("val_dice").and_then(|v| v.trim().parse().ok()),
            run_id: meta("run_id").map(str::to_string),
        })
    }

    /// The input tensor's shape.
    pub fn input_shape(&self) -> [usize; 4] {
        match self.layout {
            Layout::Nchw => [1, self.channels, self.input_height, self.input_width],
            Layout::Nhwc => [1, self.input_height, self.input_width, self.channels],
        }
    }

    /// The metadata pocusd writes for this spec (the exporter and test fixtures use it).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("{META_PREFIX}{k}"), v);
        };
        put("schema", SCHEMA_VERSION.to_string());
        put("task", self.task.as_str().into());
        put(
            "input",
            format!("{}x{}", self.input_width, self.input_height),
        );
        put("channels", self.channels.to_string());
        put("layout", self.layout.as_str().into());
        match self.normalisation {
            Normalisation::Unit => put("normalize", "unit".into()),
            Normalisation::MeanStd { mean, std } => {
                put("normalize", "mean_std".into());
                put("norm_mean", mean.to_string());
                put("norm_std", std.to_string());
            }
        }
        put(
            "clahe",
            match self.clahe {
                None => "off".into(),
                Some(p) => format!("{}@{}x{}", p.clip_limit, p.tiles_x, p.tiles_y),
            },
        );
        put("roi", self.roi.as_str().into());
        if self.contour_offset_px != 0.0 {
            put("contour_offset_px", self.contour_offset_px.to_string());
        }
        if self.tta_mirror {
            put("tta", "mirror".into());
        }
        put("output", self.output.as_str().into());
        put("classes", self.classes.join(","));
        if let Some(v) = &self.trained_on {
            put("trained_on", v.clone());
        }
        if let Some(v) = self.val_dice {
            put("val_dice", v.to_string());
        }
        if let Some(v) = &self.run_id {
            put("run_id", v.clone());
        }
        m
    }
}

/// "WxH" into (width, height).
pub fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (w, h) = s.trim().split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

fn parse_output(s: &str) -> Option<OutputKind> {
    Some(match s.trim() {
        "sigmoid" => OutputKind::Sigmoid,
        "logits" => OutputKind::Logits,
        "softmax" => OutputKind::Softmax,
        "softmax_logits" => OutputKind::SoftmaxLogits,
        _ => return None,
    })
}

/// "CLIP@CxR" (e.g. "2@8x8") into CLAHE parameters.
pub fn parse_clahe(s: &str) -> Option<ClaheParams> {
    let (clip, tiles) = s.trim().split_once('@')?;
    let clip: f64 = clip.trim().parse().ok()?;
    let (c, r) = parse_tiles(tiles)?;
    ClaheParams::new(clip, c, r).ok()
}

/// Parses config spellings of the overridable fields.
pub fn parse_layout(s: &str) -> Option<Layout> {
    match s.trim().to_ascii_uppercase().as_str() {
        "NCHW" => Some(Layout::Nchw),
        "NHWC" => Some(Layout::Nhwc),
        _ => None,
    }
}

/// Parses an output kind as written in config or metadata.
pub fn parse_output_kind(s: &str) -> Option<OutputKind> {
    parse_output(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(input: Shape, output: Shape, final_op: &str) -> GraphFacts {
        GraphFacts {
            input_name: "input".into(),
            input_shape: input,
            output_shape: output,
            final_op: final_op.into(),
            inputs: 1,
            outputs: 1,
            ..Default::default()
        }
    }

    #[test]
    fn infers_keras_style_nhwc_sigmoid() {
        let f = facts(
            vec![None, Some(128), Some(128), Some(3)],
            vec![None, Some(128), Some(128), Some(1)],
            "Sigmoid",
        );
        let s = ModelSpec::from_graph(&f, &SpecOverrides::default()).unwrap();
        assert_eq!(
            (s.layout, s.channels, s.input_width, s.output),
            (Layout::Nhwc, 3, 128, OutputKind::Sigmoid)
        );
        assert!(!s.from_metadata);
        assert_eq!(s.clahe, Some(ClaheParams::default()));
    }

    #[test]
    fn infers_nchw_softmax_and_roundtrips_metadata() {
        let f = facts(
            vec![Some(1), Some(1), Some(96), Some(160)],
            vec![Some(1), Some(3), Some(96), Some(160)],
            "Softmax",
        );
        let mut s = ModelSpec::from_graph(&f, &SpecOverrides::default()).unwrap();
        assert_eq!(
            (
                s.layout,
                s.output,
                s.output_channels,
                s.input_width,
                s.input_height
            ),
            (Layout::Nchw, OutputKind::Softmax, 3, 160, 96)
        );
        s.clahe = None;
        s.task = Task::Region;
        s.contour_offset_px = 0.92;
        let mut f2 = f.clone();
        f2.metadata = s.to_metadata();
        let back = ModelSpec::from_graph(&f2, &SpecOverrides::default()).unwrap();
        assert_eq!(
            back,
            ModelSpec {
                from_metadata: true,
                ..s.clone()
            }
        );
        // A contour offset that is not a small number of pixels is refused by name.
        for bad in ["wide", "NaN", "11", "-1e9"] {
            f2.metadata
                .insert("pocusd.contour_offset_px".into(), bad.into());
            let e = ModelSpec::from_graph(&f2, &SpecOverrides::default()).unwrap_err();
            assert!(e.to_string().contains("contour_offset_px"), "{bad}: {e}");
        }
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let o = SpecOverrides::default();
        let e = ModelSpec::from_graph(
            &facts(vec![Some(1), Some(128)], vec![Some(1)], "Sigmoid"),
            &o,
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected [1, C, H, W]"), "{e}");
        let e = ModelSpec::from_graph(
            &facts(
                vec![Some(1), Some(3), Some(64), Some(64)],
                vec![Some(1), Some(10)],
                "Softmax",
            ),
            &o,
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::BadOutput { .. }), "{e}");
        let e = ModelSpec::from_graph(
            &facts(
                vec![Some(1), Some(3), Some(64), Some(64)],
                vec![Some(1), Some(1), Some(32), Some(32)],
                "Sigmoid",
            ),
            &o,
        )
        .unwrap_err();
        assert!(e.to_string().contains("[1, 1, 32, 32]"), "{e}");
        let mut f = facts(
            vec![Some(1), Some(3), Some(64), Some(64)],
            vec![Some(1), Some(1), Some(64), Some(64)],
            "Sigmoid",
        );
        f.metadata.insert("pocusd.schema".into(), "9".into());
        assert!(matches!(
            ModelSpec::from_graph(&f, &o),
            Err(ModelError::NewerSchema { found: 9 })
        ));
    }

    #[test]
    fn parses_clahe_spelling() {
        assert_eq!(
            parse_clahe("2@8x8"),
            Some(ClaheParams::new(2.0, 8, 8).unwrap())
        );
        assert_eq!(
            parse_clahe("1.5@4x2"),
            Some(ClaheParams::new(1.5, 4, 2).unwrap())
        );
        assert_eq!(parse_clahe("2"), None);
    }
}
