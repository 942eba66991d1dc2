//! The `Training` property: the newest record of `models_dir/history.jsonl` (what the nightly
//! loop or a rollback last did, and the version now current), re-read only when the file changed,
//! and the viewer's banner and the one `Fault("training")` for a nightly run that was not
//! promoted. Reads the history; must not write it, nor load or swap models (that is
//! [`super::models`]).

use super::dbus::{Val, Values};
use super::supervisor::Supervisor;

impl Supervisor {
    /// Re-reads the newest `history.jsonl` record when the file changed (a stat per tick).
    pub(super) fn poll_training(&mut self) {
        let store = crate::versions::Store::new(self.cfg.loop_.models_dir(&self.state_dir));
        let stamp = std::fs::metadata(store.history_path())
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp == self.training_stamp {
            return;
        }
        self.training_stamp = stamp;
        let last = match store.history() {
            Ok(h) => h.last().cloned(),
            Err(e) => {
                self.training = Values::from([("reason".to_string(), Val::S(e.to_string()))]);
                return;
            }
        };
        let current = store
            .current_record()
            .ok()
            .flatten()
            .and_then(|r| r.version);
        let Some(r) = last else {
            self.training = Values::new();
            return;
        };
        let mut v = Values::new();
        v.insert("time".into(), Val::S(r.time.clone()));
        v.insert("kind".into(), Val::S(r.kind.as_str().into()));
        v.insert("promoted".into(), Val::B(r.promoted));
        if let Some(a) = r.adaptation {
            v.insert("adaptation".into(), Val::S(a.as_str().into()));
        }
        v.insert("reason".into(), Val::S(r.reason.clone()));
        if let Some(x) = r.version {
            v.insert("version".into(), Val::U(u64::from(x)));
        }
        if let Some(x) = current {
            v.insert("current_version".into(), Val::U(u64::from(x)));
        }
        if r.kind == crate::versions::Kind::Nightly && !r.promoted {
            self.training_fault =
                Some(format!("last night's model was not promoted: {}", r.reason));
        }
        self.training = v;
    }

    /// The viewer's banner text for a nightly run that was not promoted.
    pub(super) fn training_warning(&self) -> Option<String> {
        match (
            self.training.get("kind"),
            self.training.get("promoted"),
            self.training.get("reason"),
        ) {
            (Some(Val::S(k)), Some(Val::B(false)), Some(Val::S(r))) if k == "nightly" => {
                Some(format!("last night's model was not promoted: {r}"))
            }
            _ => None,
        }
    }
}
