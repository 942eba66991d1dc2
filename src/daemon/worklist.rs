//! The daemon's Modality Worklist: one thread (`pocusd-worklist`) asks `[dicom] worklist` for
//! today's US steps of this station at start, every `worklist_poll_s` and when asked
//! (`RefreshWorklist()`, `POST /api/worklist/refresh`), and keeps the last list it got. A query
//! that fails keeps that list and records the error and when, so the viewer and `pocusd status`
//! say the provider is down while the operator can still pick from what it last said. Selection
//! (`SelectWorklistItem`) reads the items from here. Must not depend on D-Bus or HTTP types.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::DicomPeer;
use crate::dicom::worklist::WorklistItem;
use crate::publish::measurement::{Val, Values};
use crate::slot::Slot;

/// How long one query may wait for the provider at each step.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worklist last said, and how the last query went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorklistState {
    /// The provider, `AET@HOST:PORT`.
    pub peer: String,
    /// The items of the last answer (kept when a later query fails).
    pub items: Vec<WorklistItem>,
    /// When the provider last answered, CLOCK_REALTIME µs (`None`: never).
    pub last_answer_us: Option<i64>,
    /// When the last query was made.
    pub last_query_us: Option<i64>,
    /// Why the last query failed (`None`: it succeeded, or none was made yet).
    pub error: Option<String>,
}

impl WorklistState {
    /// The D-Bus `Worklist` property: `peer` (s), `items` (u), `last_answer_us` (x, 0: never),
    /// `error` (s, empty when the last query answered).
    pub fn values(&self) -> Values {
        let mut v = peer_values(&self.peer, self.last_answer_us, self.error.as_deref());
        v.insert("items".to_string(), Val::U(self.items.len() as u64));
        v
    }
}

/// A DICOM peer's reachability as D-Bus properties carry it (`Worklist`, `Pacs`): `peer` (s),
/// `last_answer_us` (x, 0: never), `error` (s, empty when it last answered).
pub fn peer_values(peer: &str, last_answer_us: Option<i64>, error: Option<&str>) -> Values {
    Values::from([
        ("peer".to_string(), Val::S(peer.to_string())),
        (
            "last_answer_us".to_string(),
            Val::I(last_answer_us.unwrap_or(0)),
        ),
        (
            "error".to_string(),
            Val::S(error.unwrap_or_default().to_string()),
        ),
    ])
}

/// The worklist and its polling thread.
#[derive(Debug)]
pub struct Worklist {
    state: Mutex<WorklistState>,
    wake: Slot<()>,
}

impl Worklist {
    /// Starts polling `peer` as `calling_aet` (also the Scheduled Station AE Title asked for)
    /// every `poll`, until `stop`.
    pub fn start(
        peer: DicomPeer,
        calling_aet: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        poll: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Self>> {
        let w = Arc::new(Self {
            state: Mutex::new(WorklistState {
                peer: peer.to_string(),
                ..Default::default()
            }),
            wake: Slot::new(),
        });
        let me = w.clone();
        std::thread::Builder::new()
            .name("pocusd-worklist".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let woken = me.wake.take_timeout(crate::publish::TICK * 5).is_some();
                    if !woken && Instant::now() < next {
                        continue;
                    }
                    me.query_once(&peer, &calling_aet, tls.as_ref());
                    next = Instant::now() + poll;
                }
            })?;
        // The first query at start.
        w.refresh();
        Ok(w)
    }

    fn query_once(
        &self,
        peer: &DicomPeer,
        calling_aet: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) {
        let now_us = crate::clock::realtime_us();
        let (y, m, d, ..) = crate::clock::utc_parts(now_us.div_euclid(1_000_000));
        let date = format!("{y:04}{m:02}{d:02}");
        let answer = crate::dicom::worklist::query(
            peer,
            calling_aet,
            calling_aet,
            &date,
            QUERY_TIMEOUT,
            tls,
        );
        let mut s = self.lock();
        s.last_query_us = Some(now_us);
        match answer {
            Ok(items) => {
                if s.error.is_some() || s.items != items {
                    eprintln!(
                        "pocusd: worklist {peer}: {} scheduled US steps",
                        items.len()
                    );
                }
                s.items = items;
                s.last_answer_us = Some(crate::clock::realtime_us());
                s.error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if s.error.as_deref() != Some(&e) {
                    eprintln!(
                        "pocusd: worklist query failed: {e} (keeping the last list of {} items)",
                        s.items.len()
                    );
                }
                s.error = Some(e);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WorklistState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the provider again now (returns at once; the answer lands in the state).
    pub fn refresh(&self) {
        self.wake.put(());
    }

    /// A copy of the state.
    pub fn state(&self) -> WorklistState {
        self.lock().clone()
    }

    /// The item with this accession number and scheduled procedure step id.
    pub fn find(&self, accession: &str, step_id: &str) -> Option<WorklistItem> {
        self.lock()
            .items
            .iter()
            .find(|i| i.accession_number == accession && i.scheduled_procedure_step_id == step_id)
            .cloned()
    }
}
