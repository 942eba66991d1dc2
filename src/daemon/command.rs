//! The supervisor's command vocabulary: what an output may ask of the daemon (D-Bus methods and
//! the viewer's HTTP actions send the same [`Command`]s), the answers' errors, and [`ask`], which
//! sends one and waits for the reply. The error names are the D-Bus interface's
//! (`org.pocusd.Daemon1.Error.*`); HTTP maps them to status codes. Depends on tokio channels and
//! zbus's error derive only.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

/// The errors methods answer with.
#[derive(Debug, Clone, zbus::DBusError)]
#[zbus(prefix = "org.pocusd.Daemon1.Error")]
pub enum Error {
    InvalidArgument(String),
    NotFound(String),
    ModelRejected(String),
    Io(String),
}

/// A method call forwarded to the supervisor.
#[derive(Debug)]
pub enum Command {
    LoadModel(PathBuf, oneshot::Sender<Result<(), Error>>),
    /// An extra model for a role (its task).
    LoadExtraModel(String, PathBuf, oneshot::Sender<Result<(), Error>>),
    SetThreshold(f64, oneshot::Sender<Result<(), Error>>),
    Pause(bool, oneshot::Sender<Result<(), Error>>),
    Snapshot(oneshot::Sender<Result<String, Error>>),
    Reload(oneshot::Sender<Result<(), Error>>),
    /// Starts an exam: patient id, patient name, accession (empty: not given).
    SetExam(String, String, String, oneshot::Sender<Result<(), Error>>),
    /// Asks the worklist again now.
    RefreshWorklist(oneshot::Sender<Result<(), Error>>),
    /// Starts the exam of a worklist item: accession number, scheduled procedure step id.
    SelectWorklistItem(String, String, oneshot::Sender<Result<(), Error>>),
    /// Roll back to a model version (`None`: the previous one); answers the version now current.
    RollbackModel(Option<u32>, oneshot::Sender<Result<u32, Error>>),
}

/// Sends a command to the supervisor and waits for its answer (D-Bus methods and the viewer's
/// actions alike).
pub async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
) -> Result<T, Error> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| Error::Io("the daemon is shutting down".into()))?;
    rx.await
        .map_err(|_| Error::Io("the daemon is shutting down".into()))?
}
