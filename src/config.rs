//! Layered configuration: embedded `config/default.toml`, then `/etc/pocusd/pocusd.toml`, then
//! `--config FILE`, then `POCUSD__SECTION__KEY` environment variables, merged with the `config`
//! crate and validated into a typed [`Config`].
//!
//! The embedded default file is also the schema: a key that it does not list is unknown, and the
//! error names the key, where it came from and the keys that exist. Types and ranges are checked
//! after merging, and errors name the key, the value and what is allowed. Must not depend on
//! tract, burn or zbus.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::Task;
use crate::model::{parse_layout, parse_output_kind, Normalisation, SpecOverrides};
use crate::postprocess::overlay::OverlayStyle;
use crate::postprocess::{Calibration, PostprocessConfig, Smoothing};
use crate::preprocess::calibration::RulerSettings;
use crate::preprocess::ClaheParams;

/// The embedded defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The system-wide configuration file, read when present.
pub const SYSTEM_CONFIG: &str = "/etc/pocusd/pocusd.toml";

/// Prefix of configuration environment variables (`POCUSD__SECTION__KEY`).
pub const ENV_PREFIX: &str = "POCUSD__";

/// What is wrong with the configuration. Every variant is a start-up failure (exit 78).
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("config file {origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// A key that does not exist.
    #[error("unknown config key `{key}` in {origin}; {hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: String,
    },
    /// A value of the wrong type.
    #[error("config key `{key}` has an invalid value: {message}")]
    Type { key: String, message: String },
    /// A value out of range.
    #[error("config key `{key}` = {value} is out of range: allowed {allowed}")]
    OutOfRange {
        key: String,
        value: String,
        allowed: String,
    },
    /// A frame source spec (`source.spec` or `--source`) that cannot work: an unknown kind, an
    /// unknown option or an option's value.
    #[error("{origin} {value:?} is invalid: {reason}")]
    BadSource {
        origin: String,
        value: String,
        reason: String,
    },
}

/// Parses and checks a source spec; `origin` names where it came from (`source.spec`,
/// `--source`) in the error, which stops start-up (exit 78) instead of a retry loop.
pub fn parse_source(origin: &str, raw: &str) -> Result<crate::source::SourceSpec, ConfigError> {
    let bad = |e: crate::source::SourceError| ConfigError::BadSource {
        origin: origin.into(),
        value: raw.chars().take(200).collect(),
        reason: e.to_string(),
    };
    let spec = crate::source::SourceSpec::parse(raw).map_err(bad)?;
    spec.validate().map_err(bad)?;
    Ok(spec)
}

/// The `[preprocess]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Apply CLAHE for models without CLAHE metadata.
    pub clahe: bool,
    /// OpenCV clipLimit.
    pub clahe_clip_limit: f64,
    /// Tile grid, "CxR" or "N".
    pub clahe_tiles: String,
    /// Threads for CLAHE.
    pub threads: u32,
}

/// The `[model]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub path: String,
    pub extra: Vec<String>,
    pub threads: u32,
    pub task: String,
    pub layout: String,
    pub output: String,
    pub normalize: String,
    pub norm_mean: f64,
    pub norm_std: f64,
}

/// The `[postprocess]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSection {
    pub threshold: f64,
    pub min_confidence: f64,
    pub max_uncertain_fraction: f64,
    pub min_area_fraction: f64,
    pub smoothing: String,
    pub smoothing_frames: u32,
    pub overlay_colour: String,
    pub overlay_alpha: f64,
}

/// The `[calibration]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    pub mode: String,
    pub ruler_spacing_mm: f64,
    pub ruler_check_frames: u64,
    pub mm_per_px_x: f64,
    pub mm_per_px_y: f64,
    pub depth_mm: f64,
}

/// The `[quality]` section as written: the verdict's settings (see
/// [`crate::postprocess::quality`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QualitySection {
    pub enabled: bool,
    pub min_overlap: f64,
    pub max_band_angle_deg: f64,
    pub max_thickness_spread: f64,
    pub min_between_span: f64,
    pub long_band_span: f64,
    pub max_deeper_gap_ratio: f64,
    pub max_jump: f64,
    pub history_frames: u64,
    pub mirror_tolerance: f64,
    pub mirror_every: u64,
    pub max_fit_residual: f64,
    pub min_fascicles: u64,
    pub max_fascicle_spread_deg: f64,
}

/// The `[source]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub spec: String,
    pub roi: String,
    pub no_signal_ms: u64,
    pub frozen_frames: u32,
    pub frozen_tolerance: f64,
    pub retry_max_ms: u64,
}

/// Validated source settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub spec: crate::source::SourceSpec,
    /// The user's region-of-interest choice; `Model` (the default) follows the model's metadata.
    pub roi: crate::preprocess::roi::RoiChoice,
    pub health: crate::source::HealthConfig,
    pub retry: crate::source::RetryPolicy,
}

/// The `[dbus]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbusSection {
    pub bus: String,
    pub measurement_hz: f64,
}

/// The `[storage]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub dir: String,
    pub max_days: u64,
    pub max_mb: u64,
}

/// The `[loop]` section as written (`pocusd loop nightly`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoopSection {
    pub site_data: String,
    pub base_data: String,
    pub test_data: String,
    pub test_mm_csv: String,
    pub models_dir: String,
    pub epochs: u64,
    pub lr: f64,
    pub loss: String,
    pub site_weight: f64,
    pub min_site_images: u64,
    pub site_val_fraction: f64,
    pub max_dice_drop: f64,
    pub site_max_mb: u64,
    pub auto_queue: bool,
    pub auto_queue_per_hour: u64,
    pub unlabelled_data: String,
    pub unlabelled_per_hour: u64,
    pub unlabelled_max_mb: u64,
    pub unlabelled_adaptation: String,
    pub min_unlabelled_frames: u64,
    pub max_unlabelled_frames: u64,
    pub unlabelled_held_back: f64,
    pub self_training_epochs: u64,
    pub self_training_lr: f64,
    pub phantom_images: u64,
    pub max_phantom_drop: f64,
}

/// Validated `[loop]` settings; folders left empty are `None` (their defaults live under the
/// state folder, resolved by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    pub site_data: Option<PathBuf>,
    pub base_data: Option<PathBuf>,
    pub test_data: Option<PathBuf>,
    pub test_mm_csv: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub epochs: u64,
    pub lr: f64,
    pub loss: String,
    pub site_weight: f64,
    pub min_site_images: u64,
    pub site_val_fraction: f64,
    pub max_dice_drop: f64,
    /// Cap of the site data folder; over it the oldest accepted labels are dropped.
    pub site_max_mb: u64,
    /// Snapshot frames the quality gate flags (no structure, one band, low confidence) by itself.
    pub auto_queue: bool,
    /// At most this many automatic snapshots an hour (spaced by 3600 / N seconds).
    pub auto_queue_per_hour: u64,
    /// Where the thinned sample of streamed frames goes (`None`: `STATE/unlabelled`).
    pub unlabelled_data: Option<PathBuf>,
    /// Streamed frames kept an hour for adaptation without labels (0: none).
    pub unlabelled_per_hour: u64,
    /// Cap of the unlabelled folder; over it the oldest frames are dropped.
    pub unlabelled_max_mb: u64,
    /// With too few accepted labels, adapt on the unlabelled frames (`bn-stats`), or not (`off`).
    pub unlabelled_adaptation: UnlabelledAdaptation,
    /// Fewer unlabelled frames than this: no adaptation without labels.
    pub min_unlabelled_frames: u64,
    /// The newest this many unlabelled frames are used (the nightly run's time is bounded by it).
    pub max_unlabelled_frames: u64,
    /// Fraction of the unlabelled frames (by a stable hash of the name) held back to judge the
    /// adapted model; the rest are adapted to.
    pub unlabelled_held_back: f64,
    /// Self-training: fine-tuning epochs and learning rate on the pseudo-labels.
    pub self_training_epochs: u64,
    pub self_training_lr: f64,
    /// Images of the project's phantom set a candidate adapted without labels is scored on.
    pub phantom_images: u64,
    /// Largest loss on the phantom set (Dice, and the task's error) a candidate adapted without
    /// labels may have.
    pub max_phantom_drop: f64,
}

/// What `pocusd loop nightly` does with the unlabelled frames when a site has too few labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlabelledAdaptation {
    Off,
    /// Re-estimate the batch-norm statistics on the site's frames.
    BnStats,
    /// The batch-norm statistics, then fine-tuning on the frames the gate marks ok, the model's
    /// own masks as labels.
    SelfTraining,
}

impl LoopConfig {
    /// `models_dir`, else `STATE/models`.
    pub fn models_dir(&self, state: &Path) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| state.join("models"))
    }

    /// `site_data`, else `STATE/labelled`.
    pub fn site_data(&self, state: &Path) -> PathBuf {
        self.site_data
            .clone()
            .unwrap_or_else(|| state.join("labelled"))
    }

    /// `unlabelled_data`, else `STATE/unlabelled`.
    pub fn unlabelled_data(&self, state: &Path) -> PathBuf {
        self.unlabelled_data
            .clone()
            .unwrap_or_else(|| state.join("unlabelled"))
    }
}

/// The `[http]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub enabled: bool,
    pub listen: String,
    pub token: String,
    pub jpeg_quality: u64,
    pub max_clients: u64,
    pub tls_cert: String,
    pub tls_key: String,
}

/// Validated `[http]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Required for Pause and Snapshot when `listen` is not a loopback address.
    pub token: Option<String>,
    pub jpeg_quality: u8,
    /// Concurrent `/stream.mjpg` and `/events` clients; more are answered 503.
    pub max_clients: usize,
    /// The certificate and key (PEM) to serve HTTPS with (`None`: a self-signed pair under
    /// STATE off loopback, plain HTTP on loopback).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The `[igtl]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IgtlSection {
    pub enabled: bool,
    pub listen: String,
    pub max_fps: f64,
    pub max_clients: u64,
}

/// Validated `[igtl]` settings: the OpenIGTLink server inside `pocusd run`.
#[derive(Debug, Clone, PartialEq)]
pub struct IgtlConfig {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Most frames per second to each client; 0: every processed frame.
    pub max_fps: f64,
    /// Concurrent clients; one more is closed at once with a log line.
    pub max_clients: usize,
}

/// The `[dicom]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DicomSection {
    pub store: String,
    pub calling_aet: String,
    pub spool_max_mb: u64,
    pub worklist: String,
    pub worklist_poll_s: u64,
    pub tls: bool,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
}

/// A DICOM peer, `AET@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomPeer {
    /// The called application entity title (1 to 16 characters).
    pub aet: String,
    /// `HOST:PORT` as written (resolved when connecting).
    pub addr: String,
}

impl DicomPeer {
    /// Parses `AET@HOST:PORT`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (aet, addr) = s.split_once('@').ok_or_else(|| {
            format!(
                "{s:?} has no '@': write the peer as AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242"
            )
        })?;
        check_aet(aet)?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr:?} has no port: write HOST:PORT, e.g. 127.0.0.1:4242"))?;
        if host.is_empty() {
            return Err(format!("{addr:?} has no host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        }
        Ok(Self {
            aet: aet.to_string(),
            addr: addr.to_string(),
        })
    }
}

impl std::fmt::Display for DicomPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.aet, self.addr)
    }
}

/// An application entity title: 1 to 16 characters of printable ASCII without a backslash, not
/// all spaces (DICOM PS3.5, VR AE).
pub fn check_aet(aet: &str) -> Result<(), String> {
    if aet.trim().is_empty() || aet.len() > 16 {
        return Err(format!("AE title {aet:?} must have 1 to 16 characters"));
    }
    if !aet.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return Err(format!(
            "AE title {aet:?} may hold only printable ASCII without a backslash"
        ));
    }
    Ok(())
}

/// Validated `[dicom]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomConfig {
    /// Send each snapshot to this peer through the spool (`None`: snapshots are only written).
    pub store: Option<DicomPeer>,
    /// Our own AE title in associations.
    pub calling_aet: String,
    /// The spool's cap; over it the oldest waiting snapshot is dropped and logged.
    pub spool_max_mb: u64,
    /// The Modality Worklist provider (`None`: no worklist; `SetExam` only).
    pub worklist: Option<DicomPeer>,
    /// How often the daemon asks the worklist again.
    pub worklist_poll_s: u64,
    /// TLS for the store and the worklist (`None`: plain DICOM).
    pub tls: Option<DicomTls>,
}

/// `[dicom] tls`: the CA that signs the peers' certificates, and our client certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomTls {
    pub ca: std::path::PathBuf,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The `[output]` section as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub ffmpeg: OutputFfmpegSection,
}

/// The `[output.ffmpeg]` table as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputFfmpegSection {
    pub url: String,
    pub codec: String,
    pub fps: u64,
}

/// Validated `[output.ffmpeg]`: `None` when `url` is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct FfmpegOutputConfig {
    pub url: String,
    /// "h264" or "mjpeg".
    pub codec: String,
    pub fps: u32,
}

/// Which message bus the daemon serves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    System,
    Session,
}

/// Validated `[dbus]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DbusConfig {
    pub bus: Bus,
    /// Most Measurement signals (and measurement-log lines) per second.
    pub measurement_hz: f64,
}

/// Validated `[storage]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// The state folder; `None`: `$STATE_DIRECTORY`, else /var/lib/pocusd for root, else
    /// `$XDG_STATE_HOME/pocusd` (or ~/.local/state/pocusd).
    pub dir: Option<PathBuf>,
    pub max_days: u64,
    pub max_mb: u64,
}

/// The whole file as written; printed by `pocusd config check`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub preprocess: PreprocessSection,
    pub model: ModelSection,
    pub postprocess: PostprocessSection,
    pub calibration: CalibrationSection,
    pub quality: QualitySection,
    pub source: SourceSection,
    pub dbus: DbusSection,
    pub storage: StorageSection,
    #[serde(rename = "loop")]
    pub loop_: LoopSection,
    pub http: HttpSection,
    pub igtl: IgtlSection,
    pub dicom: DicomSection,
    pub output: OutputSection,
    pub train: TrainSection,
}

/// The `[train]` section as written (`pocusd train`; every flag of that command has its key here).
/// Validated by the training module, which owns the meaning of each value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub data: Vec<String>,
    pub out: String,
    pub task: String,
    pub val: String,
    pub val_fraction: f64,
    pub val_blocks: u64,
    pub epochs: u64,
    pub batch: u64,
    pub input: String,
    pub width: u64,
    pub depth: u64,
    pub encoder: String,
    pub encoder_weights: String,
    pub head: String,
    pub loss: String,
    pub tversky_alpha: f64,
    pub tversky_beta: f64,
    pub lr: f64,
    pub lr_final_fraction: f64,
    pub swa_epochs: u64,
    pub swa_lr_fraction: f64,
    pub seed: u64,
    pub roi: String,
    pub backend: String,
    pub init: String,
    pub bn_stats: String,
    pub threads: u64,
    pub preview_augment: u64,
    pub preview_images: u64,
    pub aug_hflip_p: f64,
    pub aug_vflip_p: f64,
    pub aug_rotate_p: f64,
    pub aug_rotate_deg: f64,
    pub aug_scale_p: f64,
    pub aug_scale: f64,
    pub aug_elastic_p: f64,
    pub aug_elastic_px: f64,
    pub aug_noise_p: f64,
    pub aug_noise_sigma: f64,
    pub aug_blur_p: f64,
    pub aug_blur_sigma: f64,
    pub aug_brightness_contrast_p: f64,
    pub aug_brightness: f64,
    pub aug_contrast: f64,
    pub aug_gamma_p: f64,
    pub aug_gamma: f64,
    pub aug_depth_gain_p: f64,
    pub aug_depth_gain: f64,
    pub aug_lowres_p: f64,
    pub aug_lowres: f64,
    pub aug_crop_top_p: f64,
    pub aug_crop_top: f64,
}

/// Validated model settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Explicit model file, if any.
    pub path: Option<PathBuf>,
    /// Extra models run on the same preprocessed frame (`[model] extra`), by role = their task.
    pub extra: Vec<PathBuf>,
    pub threads: usize,
    /// Applied to models without metadata.
    pub overrides: SpecOverrides,
}

/// Validated preprocessing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// CLAHE parameters, `None` when CLAHE is off.
    pub clahe: Option<ClaheParams>,
    /// Threads for CLAHE.
    pub threads: usize,
}

/// The validated configuration the program runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub preprocess: PreprocessConfig,
    pub model: ModelConfig,
    pub postprocess: PostprocessConfig,
    pub overlay: OverlayStyle,
    pub source: SourceConfig,
    pub dbus: DbusConfig,
    pub storage: StorageConfig,
    pub loop_: LoopConfig,
    pub http: HttpConfig,
    pub igtl: IgtlConfig,
    pub dicom: DicomConfig,
    pub output_ffmpeg: Option<FfmpegOutputConfig>,
    /// The merged values as written, for printing.
    pub raw: RawConfig,
    /// The layers that contributed, in order (for `config check`).
    pub layers: Vec<String>,
}

/// Where to look for configuration layers. `Default` is what the binary uses.
#[derive(Debug, Clone)]
pub struct Sources {
    /// System file, read only when it exists.
    pub system_file: PathBuf,
    /// `--config FILE`, must exist when given.
    pub user_file: Option<PathBuf>,
    /// Environment variables to consider (name, value).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The binary's sources: the system file, an optional `--config`, and the process environment.
    pub fn from_process(user_file: Option<&Path>) -> Self {
        Self {
            system_file: PathBuf::from(SYSTEM_CONFIG),
            user_file: user_file.map(Path::to_path_buf),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .collect(),
        }
    }
}

/// Loads and validates the configuration from the process's layers.
pub fn load(user_file: Option<&Path>) -> Result<Config, ConfigError> {
    load_from(&Sources::from_process(user_file))
}

/// Loads and validates the configuration from explicit layers.
pub fn load_from(sources: &Sources) -> Result<Config, ConfigError> {
    let schema: toml::Table =
        DEFAULT_TOML
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                origin: "embedded default".into(),
                message: e.to_string(),
            })?;

    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    let mut layers = vec!["embedded default".to_string()];

    let mut files = Vec::new();
    if sources.system_file.exists() {
        files.push(sources.system_file.clone());
    }
    if let Some(f) = &sources.user_file {
        files.push(f.clone());
    }
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let origin = path.display().to_string();
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        check_known(&schema, &table, &origin)?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        layers.push(origin);
    }

    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let origin = format!("environment variable {name}");
        let key = parts.join(".");
        // POCUSD__SECTION__KEY, or POCUSD__SECTION__SUB__KEY for a [section.sub] table.
        let nested = parts.len() == 3
            && matches!(
                schema_value(&schema, &parts[0], &parts[1]),
                Some(toml::Value::Table(t)) if t.contains_key(&parts[2])
            );
        if (parts.len() != 2 && !nested) || parts.iter().any(String::is_empty) {
            return Err(ConfigError::UnknownKey {
                key,
                origin,
                hint: "environment variables must look like POCUSD__SECTION__KEY".into(),
            });
        }
        let like = if nested {
            match schema_value(&schema, &parts[0], &parts[1]) {
                Some(toml::Value::Table(t)) => t.get(&parts[2]),
                _ => None,
            }
        } else {
            known_key(&schema, &parts[0], &parts[1], &origin)?;
            schema_value(&schema, &parts[0], &parts[1])
        };
        let parsed = parse_env_value(value, like);
        builder = builder
            .set_override(key.as_str(), parsed)
            .map_err(|e| ConfigError::Type {
                key: key.clone(),
                message: e.to_string(),
            })?;
        layers.push(origin);
    }

    let merged = builder.build().map_err(|e| ConfigError::Syntax {
        origin: "merged layers".into(),
        message: e.to_string(),
    })?;
    let raw: RawConfig = merged.try_deserialize().map_err(type_error)?;
    let preprocess = validate_preprocess(&raw.preprocess)?;
    let model = validate_model(&raw.model, &preprocess)?;
    let (mut postprocess, overlay) = validate_postprocess(&raw.postprocess, &raw.calibration)?;
    postprocess.quality = validate_quality(&raw.quality)?;
    let source = validate_source(&raw.source)?;
    let dbus = validate_dbus(&raw.dbus)?;
    let storage = validate_storage(&raw.storage)?;
    let loop_ = validate_loop(&raw.loop_)?;
    let http = validate_http(&raw.http)?;
    let igtl = validate_igtl(&raw.igtl)?;
    let dicom = validate_dicom(&raw.dicom)?;
    let output_ffmpeg = validate_output(&raw.output.ffmpeg)?;
    Ok(Config {
        preprocess,
        model,
        postprocess,
        overlay,
        source,
        dbus,
        storage,
        loop_,
        http,
        igtl,
        dicom,
        output_ffmpeg,
        raw,
        layers,
    })
}

/// The effective configuration as TOML.
pub fn to_toml(raw: &RawConfig) -> String {
    toml::to_string_pretty(raw).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
}

fn validate_preprocess(p: &PreprocessSection) -> Result<PreprocessConfig, ConfigError> {
    let clip = p.clahe_clip_limit;
    if !(0.0..=1000.0).contains(&clip) {
        return Err(ConfigError::OutOfRange {
            key: "preprocess.clahe_clip_limit".into(),
            value: clip.to_string(),
            allowed: "0.0 to 1000.0 (0 disables clipping)".into(),
        });
    }
    let tiles_err = || ConfigError::OutOfRange {
        key: "preprocess.clahe_tiles".into(),
        value: format!("{:?}", p.clahe_tiles),
        allowed: "\"CxR\" or \"N\" with 1 to 256 tiles per side, e.g. \"8x8\"".into(),
    };
    let (tx, ty) = crate::preprocess::clahe::parse_tiles(&p.clahe_tiles).ok_or_else(tiles_err)?;
    let params = ClaheParams::new(clip, tx, ty).map_err(|_| tiles_err())?;
    if !(1..=64).contains(&p.threads) {
        return Err(ConfigError::OutOfRange {
            key: "preprocess.threads".into(),
            value: p.threads.to_string(),
            allowed: "1 to 64".into(),
        });
    }
    Ok(PreprocessConfig {
        clahe: p.clahe.then_some(params),
        threads: p.threads as usize,
    })
}

/// An integer within `lo..=hi`, or an error naming the key.
pub(crate) fn int_range(key: &str, v: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::OutOfRange {
            key: key.into(),
            value: v.to_string(),
            allowed: format!("{lo} to {hi}"),
        })
    }
}

pub(crate) fn range(
    key: &str,
    value: f64,
    lo: f64,
    hi: f64,
    allowed: &str,
) -> Result<f64, ConfigError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        })
    }
}

pub(crate) fn choice(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key: key.into(),
            value: format!("{value:?}"),
            allowed: allowed.join(" | "),
        })
    }
}

fn validate_model(m: &ModelSection, pre: &PreprocessConfig) -> Result<ModelConfig, ConfigError> {
    if !(1..=64).contains(&m.threads) {
        return Err(ConfigError::OutOfRange {
            key: "model.threads".into(),
            value: m.threads.to_string(),
            allowed: "1 to 64".into(),
        });
    }
    choice(
        "model.task",
        &m.task,
        &["auto", "aponeurosis", "region", "fascicle"],
    )?;
    choice("model.layout", &m.layout, &["auto", "NCHW", "NHWC"])?;
    choice(
        "model.output",
        &m.output,
        &["auto", "sigmoid", "logits", "softmax", "softmax_logits"],
    )?;
    choice("model.normalize", &m.normalize, &["unit", "mean_std"])?;
    range(
        "model.norm_mean",
        m.norm_mean,
        -1000.0,
        1000.0,
        "a finite number",
    )?;
    range(
        "model.norm_std",
        m.norm_std,
        1e-9,
        1000.0,
        "a positive number",
    )?;
    let overrides = SpecOverrides {
        task: Task::parse(&m.task),
        layout: parse_layout(&m.layout),
        output: parse_output_kind(&m.output),
        normalisation: Some(match m.normalize.as_str() {
            "mean_std" => Normalisation::MeanStd {
                mean: m.norm_mean as f32,
                std: m.norm_std as f32,
            },
            _ => Normalisation::Unit,
        }),
        clahe: Some(pre.clahe),
    };
    let path = (!m.path.trim().is_empty()).then(|| PathBuf::from(m.path.trim()));
    let mut extra = Vec::new();
    for (i, e) in m.extra.iter().enumerate() {
        if e.trim().is_empty() {
            return Err(ConfigError::OutOfRange {
                key: format!("model.extra[{i}]"),
                value: format!("{e:?}"),
                allowed: "the path of an ONNX model file".into(),
            });
        }
        extra.push(PathBuf::from(e.trim()));
    }
    Ok(ModelConfig {
        path,
        extra,
        threads: m.threads as usize,
        overrides,
    })
}

fn validate_postprocess(
    p: &PostprocessSection,
    c: &CalibrationSection,
) -> Result<(PostprocessConfig, OverlayStyle), ConfigError> {
    let threshold = range(
        "postprocess.threshold",
        p.threshold,
        0.01,
        0.99,
        "0.01 to 0.99",
    )?;
    let min_confidence = range(
        "postprocess.min_confidence",
        p.min_confidence,
        0.0,
        1.0,
        "0 to 1",
    )?;
    let max_uncertain = range(
        "postprocess.max_uncertain_fraction",
        p.max_uncertain_fraction,
        0.0,
        1.0,
        "0 to 1",
    )?;
    let min_area = range(
        "postprocess.min_area_fraction",
        p.min_area_fraction,
        0.0,
        0.5,
        "0 to 0.5",
    )?;
    choice(
        "postprocess.smoothing",
        &p.smoothing,
        &["off", "median", "ema"],
    )?;
    if !(1..=100).contains(&p.smoothing_frames) {
        return Err(ConfigError::OutOfRange {
            key: "postprocess.smoothing_frames".into(),
            value: p.smoothing_frames.to_string(),
            allowed: "1 to 100".into(),
        });
    }
    let n = p.smoothing_frames as usize;
    let smoothing = match p.smoothing.as_str() {
        "median" => Smoothing::Median(n),
        "ema" => Smoothing::Ema(2.0 / (n as f64 + 1.0)),
        _ => Smoothing::Off,
    };
    let colour = parse_colour(&p.overlay_colour).ok_or_else(|| ConfigError::OutOfRange {
        key: "postprocess.overlay_colour".into(),
        value: format!("{:?}", p.overlay_colour),
        allowed: "\"#rrggbb\" hex colour".into(),
    })?;
    let alpha = range(
        "postprocess.overlay_alpha",
        p.overlay_alpha,
        0.0,
        1.0,
        "0 to 1",
    )?;
    let x = range(
        "calibration.mm_per_px_x",
        c.mm_per_px_x,
        0.0,
        10.0,
        "0 (unknown) to 10",
    )?;
    let y = range(
        "calibration.mm_per_px_y",
        c.mm_per_px_y,
        0.0,
        10.0,
        "0 (unknown) to 10",
    )?;
    let depth = range(
        "calibration.depth_mm",
        c.depth_mm,
        0.0,
        500.0,
        "0 (unknown) to 500",
    )?;
    if (x > 0.0) != (y > 0.0) {
        return Err(ConfigError::OutOfRange {
            key: if x > 0.0 {
                "calibration.mm_per_px_y".into()
            } else {
                "calibration.mm_per_px_x".into()
            },
            value: "0".into(),
            allowed: "set both mm_per_px_x and mm_per_px_y, or neither".into(),
        });
    }
    if x > 0.0 && depth > 0.0 {
        return Err(ConfigError::OutOfRange {
            key: "calibration.depth_mm".into(),
            value: depth.to_string(),
            allowed: "0 when mm_per_px_x/y are set (give one calibration, not two)".into(),
        });
    }
    choice("calibration.mode", &c.mode, &["ruler", "manual"])?;
    let ruler = if c.mode == "ruler" {
        let spacing_mm = range(
            "calibration.ruler_spacing_mm",
            c.ruler_spacing_mm,
            0.1,
            100.0,
            "0.1 to 100 (mm between labelled ticks)",
        )?;
        if !(1..=100_000).contains(&c.ruler_check_frames) {
            return Err(ConfigError::OutOfRange {
                key: "calibration.ruler_check_frames".into(),
                value: c.ruler_check_frames.to_string(),
                allowed: "1 to 100000".into(),
            });
        }
        Some(RulerSettings {
            spacing_mm,
            check_frames: c.ruler_check_frames,
        })
    } else {
        None
    };
    let calibration = if x > 0.0 {
        Calibration::MmPerPx { x, y }
    } else if depth > 0.0 {
        Calibration::DepthMm(depth)
    } else {
        Calibration::None
    };
    Ok((
        PostprocessConfig {
            threshold: threshold as f32,
            min_confidence,
            max_uncertain_fraction: max_uncertain,
            min_area_fraction: min_area,
            smoothing,
            calibration,
            ruler,
            quality: crate::postprocess::quality::QualityConfig::default(),
        },
        OverlayStyle {
            colour,
            alpha: alpha as f32,
        },
    ))
}

fn validate_quality(
    q: &QualitySection,
) -> Result<crate::postprocess::quality::QualityConfig, ConfigError> {
    let frac = |key: &str, v: f64| range(key, v, 0.0, 1.0, "0 to 1");
    Ok(crate::postprocess::quality::QualityConfig {
        enabled: q.enabled,
        min_overlap: frac("quality.min_overlap", q.min_overlap)?,
        max_band_angle_deg: range(
            "quality.max_band_angle_deg",
            q.max_band_angle_deg,
            0.0,
            90.0,
            "0 to 90 (degrees)",
        )?,
        max_thickness_spread: range(
            "quality.max_thickness_spread",
            q.max_thickness_spread,
            0.0,
            10.0,
            "0 to 10",
        )?,
        min_between_span: frac("quality.min_between_span", q.min_between_span)?,
        long_band_span: frac("quality.long_band_span", q.long_band_span)?,
        max_deeper_gap_ratio: range(
            "quality.max_deeper_gap_ratio",
            q.max_deeper_gap_ratio,
            0.0,
            100.0,
            "0 to 100",
        )?,
        max_jump: range("quality.max_jump", q.max_jump, 0.0, 10.0, "0 to 10")?,
        history_frames: int_range("quality.history_frames", q.history_frames, 1, 100_000)?,
        mirror_tolerance: range(
            "quality.mirror_tolerance",
            q.mirror_tolerance,
            0.0,
            10.0,
            "0 to 10",
        )?,
        mirror_every: int_range("quality.mirror_every", q.mirror_every, 0, 100_000)?,
        max_fit_residual: frac("quality.max_fit_residual", q.max_fit_residual)?,
        min_fascicles: int_range("quality.min_fascicles", q.min_fascicles, 0, 1000)?,
        max_fascicle_spread_deg: range(
            "quality.max_fascicle_spread_deg",
            q.max_fascicle_spread_deg,
            0.0,
            90.0,
            "0 to 90 (degrees)",
        )?,
    })
}

fn validate_source(s: &SourceSection) -> Result<SourceConfig, ConfigError> {
    use std::time::Duration;
    let spec = parse_source("config key `source.spec` =", &s.spec)?;
    let int = int_range;
    let roi = crate::preprocess::roi::RoiChoice::parse(&s.roi).ok_or_else(|| {
        ConfigError::OutOfRange {
            key: "source.roi".into(),
            value: format!("{:?}", s.roi),
            allowed: "\"model\", \"full\", \"auto\" or \"x,y,w,h\" with w and h above 0".into(),
        }
    })?;
    let no_signal = int("source.no_signal_ms", s.no_signal_ms, 50, 60_000)?;
    let frozen_frames = int("source.frozen_frames", s.frozen_frames as u64, 2, 10_000)? as u32;
    let tol = range(
        "source.frozen_tolerance",
        s.frozen_tolerance,
        0.01,
        50.0,
        "0.01 to 50",
    )?;
    let retry = int("source.retry_max_ms", s.retry_max_ms, 100, 60_000)?;
    Ok(SourceConfig {
        spec,
        roi,
        health: crate::source::HealthConfig {
            no_signal: Duration::from_millis(no_signal),
            frozen_frames,
            frozen_tolerance: tol,
        },
        retry: crate::source::RetryPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_millis(retry),
        },
    })
}

fn validate_dbus(d: &DbusSection) -> Result<DbusConfig, ConfigError> {
    let bus = match d.bus.as_str() {
        "system" => Bus::System,
        "session" => Bus::Session,
        other => {
            return Err(ConfigError::OutOfRange {
                key: "dbus.bus".into(),
                value: format!("{other:?}"),
                allowed: "\"system\" or \"session\"".into(),
            })
        }
    };
    let measurement_hz = range(
        "dbus.measurement_hz",
        d.measurement_hz,
        0.1,
        1000.0,
        "0.1 to 1000",
    )?;
    Ok(DbusConfig {
        bus,
        measurement_hz,
    })
}

fn validate_output(o: &OutputFfmpegSection) -> Result<Option<FfmpegOutputConfig>, ConfigError> {
    if !matches!(o.codec.as_str(), "h264" | "mjpeg") {
        return Err(ConfigError::OutOfRange {
            key: "output.ffmpeg.codec".into(),
            value: format!("{:?}", o.codec),
            allowed: "\"h264\" or \"mjpeg\"".into(),
        });
    }
    let fps = int_range("output.ffmpeg.fps", o.fps, 1, 240)? as u32;
    let url = o.url.trim();
    Ok((!url.is_empty()).then(|| FfmpegOutputConfig {
        url: url.to_string(),
        codec: o.codec.clone(),
        fps,
    }))
}

/// A listening `address:port` key; the error shows `example`.
fn parse_listen(key: &str, v: &str, example: &str) -> Result<std::net::SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::OutOfRange {
        key: key.into(),
        value: format!("{v:?}"),
        allowed: format!("an address and port such as {example}"),
    })
}

fn validate_http(h: &HttpSection) -> Result<HttpConfig, ConfigError> {
    let listen = parse_listen(
        "http.listen",
        &h.listen,
        "\"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
    )?;
    let token = (!h.token.trim().is_empty()).then(|| h.token.trim().to_string());
    if h.enabled && !listen.ip().is_loopback() && token.is_none() {
        return Err(ConfigError::OutOfRange {
            key: "http.token".into(),
            value: "\"\"".into(),
            allowed: format!(
                "a secret of your choice: http.listen = {listen} is reachable from the network, and Pause and Snapshot need the token there"
            ),
        });
    }
    let jpeg_quality = int_range("http.jpeg_quality", h.jpeg_quality, 1, 100)? as u8;
    let max_clients = int_range("http.max_clients", h.max_clients, 1, 1024)? as usize;
    let tls = match (h.tls_cert.trim(), h.tls_key.trim()) {
        ("", "") => None,
        (c, k) if !c.is_empty() && !k.is_empty() => Some((c.into(), k.into())),
        (c, _) => {
            let (key, value) = if c.is_empty() {
                ("http.tls_cert", &h.tls_cert)
            } else {
                ("http.tls_key", &h.tls_key)
            };
            return Err(ConfigError::OutOfRange {
                key: key.into(),
                value: format!("{value:?}"),
                allowed: "a PEM file: http.tls_cert and http.tls_key are given together".into(),
            });
        }
    };
    Ok(HttpConfig {
        enabled: h.enabled,
        listen,
        token,
        jpeg_quality,
        max_clients,
        tls,
    })
}

fn validate_igtl(s: &IgtlSection) -> Result<IgtlConfig, ConfigError> {
    let listen = parse_listen("igtl.listen", &s.listen, "\"127.0.0.1:18944\"")?;
    let max_fps = range(
        "igtl.max_fps",
        s.max_fps,
        0.0,
        1000.0,
        "0 to 1000 (0: every processed frame)",
    )?;
    let max_clients = int_range("igtl.max_clients", s.max_clients, 1, 64)? as usize;
    Ok(IgtlConfig {
        enabled: s.enabled,
        listen,
        max_fps,
        max_clients,
    })
}

fn validate_dicom(s: &DicomSection) -> Result<DicomConfig, ConfigError> {
    let peer = |key: &str, v: &str| -> Result<Option<DicomPeer>, ConfigError> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        DicomPeer::parse(v)
            .map(Some)
            .map_err(|reason| ConfigError::OutOfRange {
                key: key.into(),
                value: format!("{v:?}"),
                allowed: format!("AET@HOST:PORT, e.g. \"ORTHANC@127.0.0.1:4242\" ({reason})"),
            })
    };
    let store = peer("dicom.store", &s.store)?;
    let worklist = peer("dicom.worklist", &s.worklist)?;
    check_aet(&s.calling_aet).map_err(|reason| ConfigError::OutOfRange {
        key: "dicom.calling_aet".into(),
        value: format!("{:?}", s.calling_aet),
        allowed: reason,
    })?;
    Ok(DicomConfig {
        store,
        calling_aet: s.calling_aet.clone(),
        spool_max_mb: int_range("dicom.spool_max_mb", s.spool_max_mb, 1, 10_000_000)?,
        worklist,
        worklist_poll_s: int_range("dicom.worklist_poll_s", s.worklist_poll_s, 5, 86_400)?,
        tls: validate_dicom_tls(s)?,
    })
}

fn validate_dicom_tls(s: &DicomSection) -> Result<Option<DicomTls>, ConfigError> {
    let (ca, cert, key) = (s.tls_ca.trim(), s.tls_cert.trim(), s.tls_key.trim());
    if !s.tls {
        return Ok(None);
    }
    if ca.is_empty() {
        return Err(ConfigError::OutOfRange {
            key: "dicom.tls_ca".into(),
            value: "\"\"".into(),
            allowed: "the PEM file of the CA that signs the PACS's and the worklist's certificates (dicom.tls = true needs it)".into(),
        });
    }
    let client = match (cert, key) {
        ("", "") => None,
        (c, k) if !c.is_empty() && !k.is_empty() => Some((c.into(), k.into())),
        (c, _) => {
            let (key, value) = if c.is_empty() {
                ("dicom.tls_cert", &s.tls_cert)
            } else {
                ("dicom.tls_key", &s.tls_key)
            };
            return Err(ConfigError::OutOfRange {
                key: key.into(),
                value: format!("{value:?}"),
                allowed: "a PEM file: dicom.tls_cert and dicom.tls_key are given together".into(),
            });
        }
    };
    Ok(Some(DicomTls {
        ca: ca.into(),
        client,
    }))
}

fn validate_storage(s: &StorageSection) -> Result<StorageConfig, ConfigError> {
    let int = int_range;
    Ok(StorageConfig {
        dir: (!s.dir.trim().is_empty()).then(|| PathBuf::from(s.dir.trim())),
        max_days: int("storage.max_days", s.max_days, 1, 36_500)?,
        max_mb: int("storage.max_mb", s.max_mb, 1, 10_000_000)?,
    })
}

fn validate_loop(l: &LoopSection) -> Result<LoopConfig, ConfigError> {
    let path = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()));
    let float = |key: &str, v: f64, lo: f64, hi: f64| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::OutOfRange {
                key: key.into(),
                value: v.to_string(),
                allowed: format!("{lo} to {hi}"),
            })
        }
    };
    if !["tversky", "dice-bce"].contains(&l.loss.as_str()) {
        return Err(ConfigError::OutOfRange {
            key: "loop.loss".into(),
            value: l.loss.clone(),
            allowed: "tversky or dice-bce".into(),
        });
    }
    Ok(LoopConfig {
        site_data: path(&l.site_data),
        base_data: path(&l.base_data),
        test_data: path(&l.test_data),
        test_mm_csv: path(&l.test_mm_csv),
        models_dir: path(&l.models_dir),
        epochs: int_range("loop.epochs", l.epochs, 1, 1000)?,
        lr: float("loop.lr", l.lr, 1e-7, 1.0)?,
        loss: l.loss.clone(),
        site_weight: float("loop.site_weight", l.site_weight, 1.0, 100.0)?,
        min_site_images: int_range("loop.min_site_images", l.min_site_images, 1, 100_000)?,
        site_val_fraction: float("loop.site_val_fraction", l.site_val_fraction, 0.05, 0.5)?,
        max_dice_drop: float("loop.max_dice_drop", l.max_dice_drop, 0.0, 1.0)?,
        site_max_mb: int_range("loop.site_max_mb", l.site_max_mb, 1, 10_000_000)?,
        auto_queue: l.auto_queue,
        auto_queue_per_hour: int_range("loop.auto_queue_per_hour", l.auto_queue_per_hour, 1, 3600)?,
        unlabelled_data: path(&l.unlabelled_data),
        unlabelled_per_hour: int_range("loop.unlabelled_per_hour", l.unlabelled_per_hour, 0, 3600)?,
        unlabelled_max_mb: int_range("loop.unlabelled_max_mb", l.unlabelled_max_mb, 1, 10_000_000)?,
        unlabelled_adaptation: match l.unlabelled_adaptation.as_str() {
            "off" => UnlabelledAdaptation::Off,
            "bn-stats" => UnlabelledAdaptation::BnStats,
            "self-training" => UnlabelledAdaptation::SelfTraining,
            other => {
                return Err(ConfigError::OutOfRange {
                    key: "loop.unlabelled_adaptation".into(),
                    value: other.into(),
                    allowed: "self-training, bn-stats or off".into(),
                })
            }
        },
        min_unlabelled_frames: int_range(
            "loop.min_unlabelled_frames",
            l.min_unlabelled_frames,
            1,
            1_000_000,
        )?,
        max_unlabelled_frames: int_range(
            "loop.max_unlabelled_frames",
            l.max_unlabelled_frames,
            1,
            1_000_000,
        )?,
        unlabelled_held_back: float(
            "loop.unlabelled_held_back",
            l.unlabelled_held_back,
            0.1,
            0.5,
        )?,
        self_training_epochs: int_range(
            "loop.self_training_epochs",
            l.self_training_epochs,
            1,
            100,
        )?,
        self_training_lr: float("loop.self_training_lr", l.self_training_lr, 1e-7, 1.0)?,
        phantom_images: int_range("loop.phantom_images", l.phantom_images, 4, 1000)?,
        max_phantom_drop: float("loop.max_phantom_drop", l.max_phantom_drop, 0.0, 1.0)?,
    })
}

/// "#rrggbb" into RGB.
pub fn parse_colour(s: &str) -> Option<[u8; 3]> {
    let h = s.trim().strip_prefix('#')?;
    if h.len() != 6 {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

fn check_known(schema: &toml::Table, table: &toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, value) in table {
        let Some(toml::Value::Table(keys)) = schema.get(section) else {
            return Err(ConfigError::UnknownKey {
                key: section.clone(),
                origin: origin.into(),
                hint: format!(
                    "known sections: {}",
                    schema
                        .keys()
                        .map(|k| format!("[{k}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let toml::Value::Table(given) = value else {
            return Err(ConfigError::Type {
                key: section.clone(),
                message: format!("`{section}` must be a [section] table in {origin}"),
            });
        };
        for key in given.keys() {
            if !keys.contains_key(key) {
                return Err(unknown_in_section(section, key, keys, origin));
            }
        }
    }
    Ok(())
}

fn known_key(
    schema: &toml::Table,
    section: &str,
    key: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    match schema.get(section) {
        Some(toml::Value::Table(keys)) if keys.contains_key(key) => Ok(()),
        Some(toml::Value::Table(keys)) => Err(unknown_in_section(section, key, keys, origin)),
        _ => Err(ConfigError::UnknownKey {
            key: format!("{section}.{key}"),
            origin: origin.into(),
            hint: format!(
                "known sections: {}",
                schema.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

fn unknown_in_section(section: &str, key: &str, keys: &toml::Table, origin: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: format!("{section}.{key}"),
        origin: origin.into(),
        hint: format!(
            "keys of [{section}]: {}",
            keys.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn schema_value<'a>(schema: &'a toml::Table, section: &str, key: &str) -> Option<&'a toml::Value> {
    schema.get(section)?.as_table()?.get(key)
}

/// Environment values are strings; convert them to the type the default has, so that a wrong
/// type is reported against the key rather than silently kept as text.
fn parse_env_value(value: &str, like: Option<&toml::Value>) -> config::Value {
    let v = value.trim();
    match like {
        Some(toml::Value::Boolean(_)) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true.into(),
            "false" | "0" | "no" | "off" => false.into(),
            _ => value.into(),
        },
        Some(toml::Value::Integer(_)) => v
            .parse::<i64>()
            .map(config::Value::from)
            .unwrap_or_else(|_| value.into()),
        Some(toml::Value::Float(_)) => v
            .parse::<f64>()
            .map(config::Value::from)
            .unwrap_or_else(|_| value.into()),
        _ => value.into(),
    }
}

fn type_error(e: config::ConfigError) -> ConfigError {
    let message = e.to_string();
    // The config crate phrases these as "... for key `section.key`"; pull the key out when present.
    let key = message
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("?")
        .to_string();
    ConfigError::Type { key, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(
        file: Option<&str>,
        env: &[(&str, &str)],
    ) -> (Sources, Option<tempfile::NamedTempFile>) {
        let tmp = file.map(|text| {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), text).unwrap();
            f
        });
        let s = Sources {
            system_file: PathBuf::from("/nonexistent/pocusd.toml"),
            user_file: tmp.as_ref().map(|f| f.path().to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        (s, tmp)
    }

    #[test]
    fn defaults_load() {
        let (s, _t) = sources(None, &[]);
        let c = load_from(&s).unwrap();
        assert_eq!(
            c.preprocess.clahe,
            Some(ClaheParams::new(2.0, 8, 8).unwrap())
        );
        assert_eq!(c.preprocess.threads, 1);
    }

    #[test]
    fn layers_override_in_order() {
        let (s, _t) = sources(
            Some("[preprocess]\nclahe_clip_limit = 3.5\nclahe_tiles = \"4x2\"\n"),
            &[
                ("POCUSD__PREPROCESS__CLAHE_CLIP_LIMIT", "5"),
                ("POCUSD__PREPROCESS__THREADS", "2"),
            ],
        );
        let c = load_from(&s).unwrap();
        assert_eq!(
            c.preprocess.clahe,
            Some(ClaheParams::new(5.0, 4, 2).unwrap())
        );
        assert_eq!(c.preprocess.threads, 2);
    }

    #[test]
    fn protocol_sections_validate() {
        let (s, _t) = sources(None, &[]);
        let c = load_from(&s).unwrap();
        assert!(!c.igtl.enabled);
        assert_eq!(c.igtl.listen.port(), 18944);
        assert_eq!(c.dicom.store, None);
        let (s, _t) = sources(
            Some("[dicom]\nstore = \"ORTHANC@pacs.local:4242\"\n[igtl]\nmax_fps = 20.0\n"),
            &[],
        );
        let c = load_from(&s).unwrap();
        let peer = c.dicom.store.unwrap();
        assert_eq!(
            (peer.aet.as_str(), peer.addr.as_str()),
            ("ORTHANC", "pacs.local:4242")
        );
        assert_eq!(c.igtl.max_fps, 20.0);
        for (env, bad, key) in [
            ("POCUSD__DICOM__STORE", "nope", "dicom.store"),
            (
                "POCUSD__DICOM__STORE",
                "A_TITLE_LONGER_THAN_16@h:1",
                "dicom.store",
            ),
            ("POCUSD__DICOM__STORE", "X@h:0", "dicom.store"),
            ("POCUSD__IGTL__LISTEN", "nope", "igtl.listen"),
            ("POCUSD__IGTL__MAX_FPS", "-1", "igtl.max_fps"),
            (
                "POCUSD__DICOM__CALLING_AET",
                "A_TITLE_LONGER_THAN_16",
                "dicom.calling_aet",
            ),
            ("POCUSD__DICOM__SPOOL_MAX_MB", "0", "dicom.spool_max_mb"),
            ("POCUSD__DICOM__WORKLIST", "WL@nohost", "dicom.worklist"),
            ("POCUSD__HTTP__TLS_CERT", "/etc/cert.pem", "http.tls_key"),
            ("POCUSD__DICOM__TLS", "true", "dicom.tls_ca"),
            (
                "POCUSD__DICOM__WORKLIST_POLL_S",
                "1",
                "dicom.worklist_poll_s",
            ),
        ] {
            let (s, _t) = sources(None, &[(env, bad)]);
            let e = load_from(&s).unwrap_err().to_string();
            assert!(e.contains(key), "{env}={bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let (s, _t) = sources(Some("[preprocess]\nclahe_clip = 3.0\n"), &[]);
        let e = load_from(&s).unwrap_err().to_string();
        assert!(e.contains("preprocess.clahe_clip"), "{e}");
        let (s, _t) = sources(Some("[preprocesss]\nclahe = true\n"), &[]);
        assert!(load_from(&s)
            .unwrap_err()
            .to_string()
            .contains("preprocesss"));
        let (s, _t) = sources(None, &[("POCUSD__PREPROCESS__NOPE", "1")]);
        let e = load_from(&s).unwrap_err().to_string();
        assert!(
            e.contains("preprocess.nope") && e.contains("POCUSD__PREPROCESS__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_and_ranges_are_named() {
        let (s, _t) = sources(Some("[preprocess]\nclahe = \"maybe\"\n"), &[]);
        let e = load_from(&s).unwrap_err().to_string();
        assert!(e.contains("preprocess.clahe"), "{e}");
        let (s, _t) = sources(None, &[("POCUSD__PREPROCESS__THREADS", "0")]);
        let e = load_from(&s).unwrap_err().to_string();
        assert!(
            e.contains("preprocess.threads") && e.contains("1 to 64"),
            "{e}"
        );
        let (s, _t) = sources(Some("[preprocess]\nclahe_tiles = \"0x4\"\n"), &[]);
        assert!(load_from(&s)
            .unwrap_err()
            .to_string()
            .contains("preprocess.clahe_tiles"));
        let (s, _t) = sources(Some("[preprocess]\nclahe_clip_limit = nan\n"), &[]);
        assert!(load_from(&s)
            .unwrap_err()
            .to_string()
            .contains("clahe_clip_limit"));
    }

    #[test]
    fn tiles_parse() {
        assert_eq!(crate::preprocess::clahe::parse_tiles("8"), Some((8, 8)));
        assert_eq!(crate::preprocess::clahe::parse_tiles("8x6"), Some((8, 6)));
        assert_eq!(crate::preprocess::clahe::parse_tiles("x6"), None);
    }
}
