//! The sampler's decision cache: what was decided for recently decided traces (kept ones
//! with their summary, which late spans update), bounded by count, oldest forgotten first.
//! Part of `TraceBuffer` (`buffer.rs`), and like it used by the event loop only.

use std::collections::{HashMap, VecDeque};

use pyo3::prelude::*;

pub type TraceId = [u8; 16];

pub struct Decided {
    pub keep: bool,
    pub rule: i64,
    pub rate: f64,
    pub summary: Option<Py<PyAny>>,
}

pub struct DecisionCache {
    map: HashMap<TraceId, Decided>,
    order: VecDeque<TraceId>,
    cap: usize,
}

impl DecisionCache {
    /// A cache of at most `cap` decisions (0: none are remembered).
    pub fn new(cap: usize) -> Self {
        DecisionCache { map: HashMap::new(), order: VecDeque::new(), cap }
    }

    pub fn get(&self, id: &TraceId) -> Option<&Decided> {
        self.map.get(id)
    }

    pub fn contains(&self, id: &TraceId) -> bool {
        self.map.contains_key(id)
    }

    /// Remember (or replace) a trace's decision, forgetting the oldest past the bound.
    pub fn remember(&mut self, id: TraceId, decided: Decided) {
        if self.cap == 0 {
            return;
        }
        if self.map.insert(id, decided).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
    }

    /// Bytes its table and queue allocated (outside the Python heap).
    pub fn native_bytes(&self) -> usize {
        use std::mem::size_of;
        self.map.capacity() * (size_of::<(TraceId, Decided)>() + 1) + self.order.capacity() * size_of::<TraceId>()
    }
}
