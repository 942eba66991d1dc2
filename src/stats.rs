//! Statistics for what the daemon publishes and the benchmarks print: the one nearest-rank
//! [`percentile`], latency percentiles over the most recent values ([`Window`]), and events per
//! second over a sliding window ([`Rate`]). Plain numbers, no I/O, no clocks of its own (callers
//! pass instants), so they are testable. Depends on std only.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `capacity` values of one latency, in milliseconds.
#[derive(Debug, Clone)]
pub struct Window {
    values: VecDeque<f64>,
    capacity: usize,
    scratch: Vec<f64>,
}

/// p50, p99 and max of a window, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of `v` (sorted in place); zeros when empty.
    pub fn of(v: &mut [f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        Self {
            p50: percentile(v, 0.50),
            p99: percentile(v, 0.99),
            max: percentile(v, 1.0),
        }
    }
}

/// The `q` quantile (0..=1) of `v` by nearest rank (sorts `v`); NaN when empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            values: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            scratch: Vec::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(ms);
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// Nearest-rank percentiles; zeros when empty.
    pub fn percentiles(&mut self) -> Percentiles {
        if self.values.is_empty() {
            return Percentiles::default();
        }
        self.scratch.clear();
        self.scratch.extend(self.values.iter().copied());
        Percentiles::of(&mut self.scratch)
    }
}

/// Events per second over the last `span`.
#[derive(Debug, Clone)]
pub struct Rate {
    times: VecDeque<Instant>,
    span: Duration,
}

impl Rate {
    pub fn new(span: Duration) -> Self {
        Self {
            times: VecDeque::new(),
            span,
        }
    }

    pub fn tick(&mut self, now: Instant) {
        self.times.push_back(now);
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.span)
        {
            self.times.pop_front();
        }
    }

    /// Rate at `now`; 0 when fewer than two events are in the window.
    pub fn per_second(&mut self, now: Instant) -> f64 {
        self.expire(now);
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) if self.times.len() >= 2 && b > a => {
                (self.times.len() - 1) as f64 / b.duration_since(*a).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut w = Window::new(100);
        for i in 1..=100 {
            w.push(i as f64);
        }
        assert_eq!(
            w.percentiles(),
            Percentiles {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        w.push(1000.0);
        assert_eq!(w.percentiles().max, 1000.0);
        assert_eq!(Window::new(4).percentiles(), Percentiles::default());
    }

    #[test]
    fn rate_counts_the_window() {
        let t0 = Instant::now();
        let mut r = Rate::new(Duration::from_secs(2));
        for i in 0..=30 {
            r.tick(t0 + Duration::from_millis(i * 33));
        }
        let fps = r.per_second(t0 + Duration::from_millis(990));
        assert!((fps - 30.3).abs() < 0.5, "{fps}");
        assert_eq!(r.per_second(t0 + Duration::from_secs(10)), 0.0);
    }
}
