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
        Val::L(l) => OwnedVariant::try_from(zbus::Variant::from(l.clone()))
            .unwrap_or_else(|_| OwnedVariant::from(Str::from(l.join(",")))),
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
    /// Role (`primary`, and each extra model's task) to the same dictionary as `model`.
    pub models: std::collections::BTreeMap<String, Values>,
    pub fps: f64,
    pub latency_ms: Values,
    pub dropped_frames: u64,
    /// Frames skipped because the source delivered them broken.
    pub corrupt_frames: u64,
    pub calibrated: bool,
    /// Where the scale comes from (see `publish::measurement::calibration_values`).
    pub calibration: Values,
    pub last_measurement: Values,
    /// The newest record of `models_dir/history.jsonl` (empty without one).
    pub training: Values,
    /// Snapshots waiting in the DICOM spool.
    pub dicom_queue: u32,
    /// The OpenIGTLink server: listen (s), clients (u), frames_sent (t), frames_dropped (t);
    /// empty when `[igtl]` is off.
    pub igtl: Values,
    /// The Modality Worklist: peer (s), items (u), last_answer_us (x, 0: never), error (s,
    /// empty when the last query answered); empty without `[dicom] worklist`.
    pub worklist: Values,
    /// The PACS of `[dicom] store`: peer (s), last_answer_us (x, 0: never), error (s, empty
    /// when it last answered); empty without a store.
    pub pacs: Values,
    /// The viewer: url (s), tls (b), self_signed (b), cert_sha256 (s), spki_sha256 (s);
    /// empty without one.
    pub viewer: Values,
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
    fn models(&self) -> HashMap<String, HashMap<String, OwnedVariant>> {
        self.props()
            .models
            .iter()
            .map(|(k, v)| (k.clone(), to_dict(v)))
            .collect()
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
    fn calibration(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().calibration)
    }

    #[zbus(property)]
    fn last_measurement(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().last_measurement)
    }

    #[zbus(property)]
    fn training(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().training)
    }

    #[zbus(property)]
    fn dicom_queue(&self) -> u32 {
        self.props().dicom_queue
    }

    #[zbus(property)]
    fn worklist(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().worklist)
    }

    #[zbus(property)]
    fn pacs(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().pacs)
    }

    #[zbus(property)]
    fn viewer(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().viewer)
    }

    #[zbus(property)]
    fn igtl(&self) -> HashMap<String, OwnedVariant> {
        to_dict(&self.props().igtl)
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

    async fn load_extra_model(&self, role: String, path: String) -> Result<(), Error> {
        self.ask(|tx| Command::LoadExtraModel(role, PathBuf::from(path), tx))
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

    async fn set_exam(
        &self,
        patient_id: String,
        patient_name: String,
        accession: String,
    ) -> Result<(), Error> {
        self.ask(|tx| Command::SetExam(patient_id, patient_name, accession, tx))
            .await
    }

    /// Asks the Modality Worklist again now (`[dicom] worklist`).
    async fn refresh_worklist(&self) -> Result<(), Error> {
        self.ask(Command::RefreshWorklist).await
    }

    /// Starts the exam of the worklist item with this accession number and scheduled
    /// procedure step id: its patient, study and order go into every object that follows.
    async fn select_worklist_item(&self, accession: String, step_id: String) -> Result<(), Error> {
        self.ask(|tx| Command::SelectWorklistItem(accession, step_id, tx))
            .await
    }

    async fn reload(&self) -> Result<(), Error> {
        self.ask(Command::Reload).await
    }

    /// Makes an earlier model version current (negative: the one the current version replaced).
    #[zbus(out_args("current"))]
    async fn rollback_model(&self, version: i32) -> Result<u32, Error> {
        let target = u32::try_from(version).ok();
        self.ask(|tx| Command::RollbackModel(target, tx)).await
    }
}

/// What the daemon serves at [`OBJECT_PATH`]: [`Daemon1`] held to the committed contract where
/// the generated dispatch is lenient. `Properties.Set` on one of its (all read-only) properties
/// answers `org.freedesktop.DBus.Error.PropertyReadOnly` (zbus alone answers `UnknownProperty`),
/// and a method call whose arguments do not match the XML's `in` signature (`Snapshot` with an
/// argument, `Pause` with two) is refused with `InvalidArgs` naming both signatures before it
/// reaches the handler.
pub struct Strict {
    pub inner: Daemon1,
    in_signatures: HashMap<String, String>,
}

impl Strict {
    pub fn new(inner: Daemon1) -> Self {
        Self {
            inner,
            in_signatures: method_in_signatures(INTERFACE_XML),
        }
    }
}

/// Each method of an introspection document with the concatenated types of its `in` arguments.
pub fn method_in_signatures(xml: &str) -> HashMap<String, String> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let at = tag.find(&key)? + key.len();
        let len = tag[at..].find('"')?;
        Some(tag[at..at + len].to_string())
    };
    let mut text = xml.to_string();
    while let Some(a) = text.find("<!--") {
        let b = text[a..].find("-->").map_or(text.len(), |e| a + e + 3);
        text.replace_range(a..b, "");
    }
    let mut out = HashMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("<method ") {
        rest = &rest[at..];
        let head_end = rest.find('>').unwrap_or(rest.len());
        // A self-closing `<method name="X"/>` has no arguments; otherwise up to its `</method>`.
        let end = if rest[..head_end].ends_with('/') {
            head_end
        } else {
            rest.find("</method>").unwrap_or(rest.len())
        };
        let body = &rest[..end];
        if let Some(name) = attr(&rest[..head_end], "name") {
            let mut sig = String::new();
            for arg in body.split("<arg ").skip(1) {
                let tag = &arg[..arg.find('>').unwrap_or(arg.len())];
                if attr(tag, "direction").as_deref() != Some("out") {
                    sig.push_str(&attr(tag, "type").unwrap_or_default());
                }
            }
            out.insert(name, sig);
        }
        rest = &rest[end.max(1)..];
    }
    out
}

/// Whether a body signature as zbus prints it (`(sb)` for two arguments, `s` for one) is `want`.
fn same_signature(body: &str, want: &str) -> bool {
    let body = body
        .strip_prefix('(')
        .and_then(|b| b.strip_suffix(')'))
        .filter(|_| want.len() != body.len())
        .unwrap_or(body);
    body == want
}

#[async_trait::async_trait]
impl zbus::object_server::Interface for Strict {
    fn name() -> zbus::names::InterfaceName<'static> {
        <Daemon1 as zbus::object_server::Interface>::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &zbus::ObjectServer,
        connection: &zbus::Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, zbus::BoxDBusError>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &zbus::ObjectServer,
        connection: &zbus::Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call zbus::Variant<'_>,
        server: &'call zbus::ObjectServer,
        connection: &'call zbus::Connection,
        header: Option<&'call zbus::message::Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> zbus::object_server::DispatchResult<'call> {
        use zbus::object_server::DispatchResult;
        match self
            .inner
            .set(property_name, value, server, connection, header, emitter)
        {
            DispatchResult::NotFound => DispatchResult::Async(Box::pin(async move {
                let exists = self
                    .inner
                    .get(property_name, server, connection, header, emitter)
                    .await
                    .is_some();
                Err(if exists {
                    zbus::fdo::Error::PropertyReadOnly(format!(
                        "property '{property_name}' is read-only"
                    ))
                } else {
                    zbus::fdo::Error::UnknownProperty(format!("unknown property '{property_name}'"))
                }
                .into())
            })),
            other => other,
        }
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &zbus::Variant<'_>,
        server: &zbus::ObjectServer,
        connection: &zbus::Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), zbus::BoxDBusError>> {
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call zbus::ObjectServer,
        connection: &'call zbus::Connection,
        msg: &'call zbus::Message,
        name: zbus::names::MemberName<'call>,
    ) -> zbus::object_server::DispatchResult<'call> {
        if let Some(want) = self.in_signatures.get(name.as_str()) {
            let got = msg.body().signature().to_string();
            if !same_signature(&got, want) {
                let err = zbus::fdo::Error::InvalidArgs(format!(
                    "{name} takes ({want}), the call carried ({})",
                    got.trim_start_matches('(').trim_end_matches(')')
                ));
                return zbus::object_server::DispatchResult::Async(Box::pin(async move {
                    Err(err.into())
                }));
            }
        }
        self.inner.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call zbus::ObjectServer,
        connection: &'call zbus::Connection,
        msg: &'call zbus::Message,
        name: zbus::names::MemberName<'call>,
    ) -> zbus::object_server::DispatchResult<'call> {
        self.inner.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_signatures_of_the_committed_interface() {
        let m = method_in_signatures(INTERFACE_XML);
        let mut got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("LoadExtraModel", "ss"),
                ("LoadModel", "s"),
                ("Pause", "b"),
                ("RefreshWorklist", ""),
                ("Reload", ""),
                ("RollbackModel", "i"),
                ("SelectWorklistItem", "ss"),
                ("SetExam", "sss"),
                ("SetThreshold", "d"),
                ("Snapshot", "")
            ]
        );
        // A self-closing method followed by one with arguments keeps none of them.
        let m = method_in_signatures(
            "<method name=\"R\"/><method name=\"S\"><arg type=\"i\" direction=\"in\"/></method>",
        );
        assert_eq!((m["R"].as_str(), m["S"].as_str()), ("", "i"));
        let m = method_in_signatures(
            "<!-- <method name=\"Old\"/> --><method name=\"A\"><arg type=\"s\" direction=\"in\"/><arg type=\"u\" direction=\"out\"/><arg type=\"b\"/></method>",
        );
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m["A"], "sb");
        assert!(
            same_signature("(sb)", "sb") && same_signature("s", "s") && !same_signature("(s)", "")
        );
    }
}
