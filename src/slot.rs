//! "Latest value wins" hand-over between two threads: a writer never waits and never queues; a
//! value that was not taken before the next one arrives is dropped and counted. The reader can wait
//! with a timeout (blocking threads) or be woken through a [`tokio::sync::Notify`] (async tasks).
//! Must not depend on anything that does I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A one-place mailbox that keeps the newest value.
#[derive(Debug, Default)]
pub struct Slot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
    notify: tokio::sync::Notify,
    dropped: AtomicU64,
    put: AtomicU64,
}

impl<T> Slot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self {
            value: Mutex::new(None),
            ready: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
            put: AtomicU64::new(0),
        }
    }

    /// Stores `value`, replacing (and counting as dropped) one that was never taken.
    pub fn put(&self, value: T) {
        let mut guard = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if guard.replace(value).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.put.fetch_add(1, Ordering::Relaxed);
        drop(guard);
        self.ready.notify_one();
        self.notify.notify_one();
    }

    /// Takes the value if there is one.
    pub fn take(&self) -> Option<T> {
        self.value.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits up to `timeout` for a value and takes it.
    pub fn take_timeout(&self, timeout: Duration) -> Option<T> {
        let guard = self.value.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |v| v.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.take()
    }

    /// Resolves when a value may be ready (a permit is kept if nobody was waiting).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Values replaced before they were taken.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Values stored.
    pub fn put_count(&self) -> u64 {
        self.put.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let s = Slot::new();
        s.put(1);
        s.put(2);
        s.put(3);
        assert_eq!(s.take(), Some(3));
        assert_eq!(s.take(), None);
        assert_eq!(s.dropped(), 2);
        assert_eq!(s.put_count(), 3);
    }

    #[test]
    fn a_waiting_reader_is_woken() {
        let s = Arc::new(Slot::new());
        let w = {
            let s = s.clone();
            std::thread::spawn(move || s.take_timeout(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.put(7u32);
        assert_eq!(w.join().unwrap(), Some(7));
        assert_eq!(s.take_timeout(Duration::from_millis(5)), None);
    }
}
