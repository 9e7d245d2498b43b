//! The sampler's decision caches: what was decided for recently decided traces, so late
//! spans follow the decision and `tailsift explain` can say why.
//!
//! Kept and dropped decisions are remembered apart, each bounded by count with the oldest
//! forgotten first (Refinery's split): dropped traces are ~95% of traffic, and in one cache
//! they would push out the kept ones, whose late spans must still be stored. A dropped entry
//! is compact (rule index and rate, 24 bytes of key and value); a kept one holds its summary,
//! which late spans update. Part of `TraceBuffer` (`buffer.rs`), used by the event loop only.

use crate::Map;
use std::collections::VecDeque;
use std::mem::size_of;

use pyo3::prelude::*;

pub type TraceId = [u8; 16];

pub struct Decided {
    pub keep: bool,
    pub rule: i64,
    pub rate: f64,
    pub summary: Option<Py<PyAny>>,
}

/// A map bounded by count, forgetting the oldest insertion first.
struct Bounded<V> {
    map: Map<TraceId, V>,
    order: VecDeque<TraceId>,
    cap: usize,
}

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Bounded { map: Map::default(), order: VecDeque::new(), cap }
    }

    fn insert(&mut self, id: TraceId, value: V) {
        if self.cap == 0 {
            return;
        }
        if self.map.insert(id, value).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
    }

    fn native_bytes(&self) -> usize {
        self.map.capacity() * (size_of::<(TraceId, V)>() + 1) + self.order.capacity() * size_of::<TraceId>()
    }
}

pub struct DecisionCache {
    kept: Bounded<Decided>,
    dropped: Bounded<(i32, f32)>,
}

impl DecisionCache {
    /// At most `kept` kept and `dropped` dropped decisions (0: none of that kind).
    pub fn new(kept: usize, dropped: usize) -> Self {
        DecisionCache { kept: Bounded::new(kept), dropped: Bounded::new(dropped) }
    }

    /// (keep, rule index, rate, summary of a kept trace) of a remembered decision.
    pub fn get(&self, id: &TraceId) -> Option<(bool, i64, f64, Option<&Py<PyAny>>)> {
        if let Some(d) = self.kept.map.get(id) {
            return Some((true, d.rule, d.rate, d.summary.as_ref()));
        }
        self.dropped.map.get(id).map(|&(rule, rate)| (false, i64::from(rule), f64::from(rate), None))
    }

    pub fn contains(&self, id: &TraceId) -> bool {
        self.kept.map.contains_key(id) || self.dropped.map.contains_key(id)
    }

    /// Remember (or replace) a trace's decision, in the cache of its kind. A trace is decided
    /// once, so an id is in one cache only (were it in both, `get` reads the kept one).
    pub fn remember(&mut self, id: TraceId, decided: Decided) {
        if decided.keep {
            self.kept.insert(id, decided);
        } else {
            let rule = i32::try_from(decided.rule).unwrap_or(-1);
            self.dropped.insert(id, (rule, decided.rate as f32));
        }
    }

    /// Bytes its tables and queues allocated (outside the Python heap).
    pub fn native_bytes(&self) -> usize {
        self.kept.native_bytes() + self.dropped.native_bytes()
    }
}
