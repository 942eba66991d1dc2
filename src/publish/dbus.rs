//! The D-Bus face of the daemon: interface `org.pocusd.Daemon1` at `/org/pocusd/Daemon1` (the
//! contract is the committed `systemd/org.pocusd.Daemon1.xml`). Properties are read from a
//! snapshot the supervisor publishes; methods are forwarded to the supervisor as `Command`s and
//! answered with its reply, so this module owns no state. Errors are
//! `org.pocusd.Daemon1.Error.{InvalidArgument, NotFound, ModelRejected, Io}`. Must not depend on
//! the pipeline's threads or the file system.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use zbus::object_server::SignalEmitter;
use zbus::{interface, OwnedVariant, Str};

/// The well-known bus name.
pub const BUS_NAME: &str = "org.pocusd.Daemon1";
/// The object path.
pub const OBJECT_PATH: &str = "/org/pocusd/Daemon1";
/// The interface name.
pub const INTERFACE: &str = "org.pocusd.Daemon1";
/// The committed introspection contract.
pub const INTERFACE_XML: &str = include_str!("../../systemd/org.pocusd.Daemon1.xml");

/// The published daemon states (the `State` property's codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Starting = 0,
    Streaming = 1,
    NoSignal = 2,
    Frozen = 3,
    Reconnecting = 4,
    Paused = 5,
    Error = 6,
}

impl State {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Streaming => "streaming",
            State::NoSignal => "no_signal",
            State::Frozen => "frozen",
            State::Reconnecting => "reconnecting",
            State::Paused => "paused",
            State::Error => "error",
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        [
            State::Starting,
            State::Streaming,
            State::NoSignal,
            State::Frozen,
            State::Reconnecting,
            State::Paused,
            State::Error,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

pub use super::measurement::{Val, Values};

fn variant(v: &Val) -> OwnedVariant {
    match v {
        Val::F(x) => OwnedVariant::from(*x),
        Val::U(x) => OwnedVariant::from(*x),
        Val::I(x) => OwnedVariant::from(*x),
        Val::S(s) => OwnedVariant::from(Str::from(s.clone())),
        Val::B(b) => OwnedVariant::from(*b),
    }
}

/// `a{sv}` for the bus.
pub fn to_dict(v: &Values) -> HashMap<String, OwnedVariant> {
    v.iter().map(|(k, x)| (k.clone(), variant(x))).collect()
}

/// What the properties show; written only by the supervisor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Props {
    pub state: State,
    pub state_text: String,
    pub source: String,
    pub model: Values,
    pub fps: f64,
    pub latency_ms: Values,
    pub dropped_frames: u64,
    /// Frames skipped because the source delivered them broken.
    pub corrupt_frames: u64,
    pub calibrated: bool,
    pub last_measurement: Values,
}

pub use crate::daemon::command::{ask, Command, Error};

/// The exported object.
pub struct Daemon1 {
    props: Arc<Mutex<Props>>,
    commands: mpsc::Sender<Command>,
}

impl Daemon1 {
    pub fn new(props: Arc<Mutex<Props>>, commands: mpsc::Sender<Command>) -> Self {
        Self { props, commands }
    }

    fn props(&self) -> std::sync::MutexGuard<'_, Props> {
        self.props.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        ask(&self.commands, make).await
    }
}

#[interface(name = "org.pocusd.Daemon1", introspection_docs = false)]
impl Daemon1 {
    #[zbus(property)]
    fn state(&self) -> u32 {
        self.props().state.code()
    }

    #[zbus(property)]
    fn state_text(&self) -> String {
        self.props().state_text.clone()
    }

    #[zbus(property)]
    fn source(&self) -> String {
        self.props().source.clone()
    }

    #[zbus(property)]
    fn model(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().model)
    }

    #[zbus(property)]
    fn fps(&self) -> f64 {
        self.props().fps
    }

    #[zbus(property, name = "LatencyMs")]
    fn latency_ms(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().latency_ms)
    }

    #[zbus(property)]
    fn dropped_frames(&self) -> u64 {
        self.props().dropped_frames
    }

    #[zbus(property)]
    fn corrupt_frames(&self) -> u64 {
        self.props().corrupt_frames
    }

    #[zbus(property)]
    fn calibrated(&self) -> bool {
        self.props().calibrated
    }

    #[zbus(property)]
    fn last_measurement(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().last_measurement)
    }

    #[zbus(signal)]
    pub async fn measurement(
        emitter: &SignalEmitter<'_>,
        seq: u64,
        timestamp_us: i64,
        values: HashMap<String, OwnedVariant>,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn fault(emitter: &SignalEmitter<'_>, code: &str, message: &str) -> zbus::Result<()>;

    async fn load_model(&self, path: String) -> Result<(), Error> {
        self.ask(|tx| Command::LoadModel(PathBuf::from(path), tx))
            .await
    }

    async fn set_threshold(&self, probability: f64) -> Result<(), Error> {
        self.ask(|tx| Command::SetThreshold(probability, tx)).await
    }

    async fn pause(&self, paused: bool) -> Result<(), Error> {
        self.ask(|tx| Command::Pause(paused, tx)).await
    }

    #[zbus(out_args("path"))]
    async fn snapshot(&self) -> Result<String, Error> {
        self.ask(Command::Snapshot).await
    }

    async fn reload(&self) -> Result<(), Error> {
        self.ask(Command::Reload).await
    }
}
