//! The tail sampler's buffer and decision cache, with no Python object per trace while it
//! waits: per trace a compact entry (counts, time range, error, root, Kafka position) and
//! its fragments' bytes and facts (`Stored`: the `Fragment` objects are let go once
//! buffered, and made again only for a trace that leaves as a `Decision`, kept or under
//! dry run); two arrival queues with lazy deletion stand in for ordered dicts. Rules
//! that only read the error flag and the duration are evaluated here; any other rule is
//! handed to Python (`evaluate`), trace by trace. Python sees each decided trace once, as
//! the `Decision` it builds (`processors/sampling/sampler.py` is the component around it).
//!
//! Threads: the event loop's only (the sampler and the query API's `decision_for` run
//! there). Nothing here is shared with the storage thread; were it ever used from two
//! threads at once, PyO3's borrow flag would refuse the second caller rather than race.
//! The `evaluate` callback must not call back into the buffer (it reads rules and counts).

use crate::Map;
use std::collections::{HashSet, VecDeque};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::cache::{Decided, DecisionCache, TraceId};
use crate::fragment::{Fragment, Settled, OVERHEAD};
use crate::packed::Frames;
use crate::rules::RuleSet;
use crate::entry::Entry;
use crate::stored::Stored;

#[derive(Default)]
struct Counts {
    received: u64,
    root_quiet: u64,
    wait_elapsed: u64,
    max_traces: u64,
    max_spans_per_trace: u64,
    max_buffered_spans: u64,
    max_buffered_bytes: u64,
    on_shutdown: u64,
    forgotten: u64,
}

#[pyclass(module = "processors._wire")]
pub struct TraceBuffer {
    traces: Map<TraceId, Box<Entry>>,
    arrivals: VecDeque<(TraceId, u32)>,     // (trace, its serial) in order of arrival
    rooted: VecDeque<(TraceId, u32, u32)>, // (trace, serial, touch) in order of its newest root
    serial: u32,
    spans: u64,
    bytes: u64,
    decided: DecisionCache,
    frames: Frames,
    rules: RuleSet,
    dry_run: bool,           // dropped traces keep their fragments (unsettled): the sampler stores them anyway
    settled: Vec<(TraceId, (i64, i64))>, // fragments from a durable queue, done with: (trace, source)
    counts: Counts,
    decisions: Map<(i64, bool), u64>,
    limits: (u64, u64, u64, u64, usize, usize), // traces, spans per trace, spans, bytes, kept and dropped cached
    classes: (Py<PyAny>, Py<PyAny>), // TraceSummary, Decision
    evaluate: Py<PyAny>,
}

fn trace_id(bytes: &[u8]) -> PyResult<TraceId> {
    bytes.try_into().map_err(|_| PyValueError::new_err("a trace id is 16 bytes"))
}

#[pymethods]
impl TraceBuffer {
    /// rules: [(conditions or None, keep probability or None)], conditions being
    /// [("error",) | ("duration", op, bound_ns)]; limits: (max_traces, max_spans_per_trace,
    /// max_buffered_spans, max_buffered_bytes, decision_cache_size, dropped_cache_size); evaluate(trace_id,
    /// summary, fragments) -> (keep, rule index or -1, rate) runs the Python rules;
    /// classes: (TraceSummary, Decision).
    #[new]
    fn new(rules: Vec<(Option<Vec<Bound<'_, PyTuple>>>, Option<f64>, String)>, limits: (u64, u64, u64, u64, usize, usize),
           classes: (Py<PyAny>, Py<PyAny>), evaluate: Py<PyAny>) -> PyResult<Self> {
        let mut buffer = TraceBuffer {
            traces: Map::default(), arrivals: VecDeque::new(), rooted: VecDeque::new(), serial: 0, spans: 0, bytes: 0,
            decided: DecisionCache::new(limits.4, limits.5), frames: Frames::default(), rules: RuleSet::default(),
            dry_run: false, settled: Vec::new(), counts: Counts::default(), decisions: Map::default(), limits,
            classes, evaluate,
        };
        buffer.set_rules(rules)?;
        Ok(buffer)
    }

    /// `sampling.dry_run`: decide and count as usual, but hand every trace over with its
    /// fragments, dropped ones too, for the sampler to store.
    fn set_dry_run(&mut self, on: bool) {
        self.dry_run = on;
    }

    /// Replace the rules (a configuration reload): buffered traces are decided by the new
    /// ones; decisions already made keep the names of the rules that made them.
    fn set_rules(&mut self, rules: Vec<(Option<Vec<Bound<'_, PyTuple>>>, Option<f64>, String)>) -> PyResult<()> {
        self.rules.set(rules)
    }

    #[getter]
    fn traces(&self) -> usize {
        self.traces.len()
    }

    #[getter]
    fn spans(&self) -> u64 {
        self.spans
    }

    #[getter]
    fn size(&self) -> u64 {
        self.bytes
    }

    /// Bytes this buffer holds outside the Python heap (tables, queues, entries), from the
    /// capacities it allocated: what tracemalloc cannot see.
    #[getter]
    fn native_bytes(&self) -> usize {
        use std::mem::size_of;
        let table = |cap: usize, item: usize| cap * (item + 1);
        table(self.traces.capacity(), size_of::<(TraceId, Box<Entry>)>())
            + self.traces.values().map(|e| e.native_bytes()).sum::<usize>()
            + self.arrivals.capacity() * size_of::<(TraceId, u32)>()
            + self.rooted.capacity() * size_of::<(TraceId, u32, u32)>()
            + self.decided.native_bytes()
            + self.frames.native_bytes()
            + self.settled.capacity() * size_of::<(TraceId, (i64, i64))>()
    }

    /// Buffer fragments (none of them of a decided trace: the caller routes those).
    /// Returns the decisions bounds forced, and fragments of traces decided in this call.
    fn add<'py>(&mut self, py: Python<'py>, fragments: Vec<Bound<'py, Fragment>>, now: i64)
                -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let out = PyList::empty(py);
        let late = PyList::empty(py);
        let (max_traces, max_spans_per_trace, max_spans, max_bytes, _, _) = self.limits;
        if fragments.iter().any(|f| f.borrow().span_count > u64::from(u32::MAX)) {
            // checked before any is taken in; a request this large is refused long before
            return Err(PyValueError::new_err("a fragment holds at most 2**32 - 1 spans"));
        }
        for f in fragments {
            let frag = f.borrow();
            let id = trace_id(frag.trace_id.bind(py).as_bytes())?;
            let spans = frag.span_count;
            self.counts.received += spans;
            if self.decided.contains(&id) {
                drop(frag);
                late.append(f)?;
                continue;
            }
            if !self.traces.contains_key(&id) {
                if self.traces.len() as u64 >= max_traces {
                    self.counts.max_traces += 1;
                    self.decide_oldest(py, &out)?;
                }
                self.serial = self.serial.wrapping_add(1);
                self.traces.insert(id, Entry::new(self.serial, now));
                self.arrivals.push_back((id, self.serial));
            }
            let size = (frag.payload.bind(py).as_bytes().len() + OVERHEAD) as u64; // as `Fragment.size` counts it
            let stored = Stored::read(py, &frag, &id, &mut self.frames);
            let e = self.traces.get_mut(&id).expect("inserted above");
            e.absorb(stored, size, now);
            self.spans += spans;
            self.bytes += size;
            if e.root_at().is_some() {
                e.touch = e.touch.wrapping_add(1);
                self.rooted.push_back((id, e.serial, e.touch));
            }
            if e.spans >= max_spans_per_trace {
                self.counts.max_spans_per_trace += 1;
                self.decide_into(py, &id, &out, true)?;
            }
            while self.spans > max_spans && !self.traces.is_empty() {
                self.counts.max_buffered_spans += 1;
                self.decide_oldest(py, &out)?;
            }
            while self.bytes > max_bytes && !self.traces.is_empty() {
                self.counts.max_buffered_bytes += 1;
                self.decide_oldest(py, &out)?;
            }
        }
        self.compact();
        Ok((out, late))
    }

    /// Decide the traces whose quiet period (root seen) or wait has passed, at most `limit`.
    /// Returns their decisions (`dropped`: all; else the kept ones only, the others being
    /// counted and settled here without a Python object) and how many traces were decided.
    #[pyo3(signature = (now, wait, quiet, limit, dropped = true))]
    fn due<'py>(&mut self, py: Python<'py>, now: i64, wait: i64, quiet: i64, limit: usize, dropped: bool)
                -> PyResult<(Bound<'py, PyList>, usize)> {
        let out = PyList::empty(py);
        let mut decided = 0;
        while decided < limit {
            let Some(id) = self.first_rooted() else { break };
            if self.traces[&id].last_seen.saturating_add(quiet) > now {
                break;
            }
            self.counts.root_quiet += 1;
            self.decide_into(py, &id, &out, dropped)?;
            decided += 1;
        }
        while decided < limit {
            let Some(id) = self.first_arrival() else { break };
            if self.traces[&id].first_seen.saturating_add(wait) > now {
                break;
            }
            self.counts.wait_elapsed += 1;
            self.decide_into(py, &id, &out, dropped)?;
            decided += 1;
        }
        Ok((out, decided))
    }

    /// Decide everything buffered, oldest first (shutdown); `dropped` as in `due`.
    #[pyo3(signature = (dropped = true))]
    fn flush<'py>(&mut self, py: Python<'py>, dropped: bool) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        self.counts.on_shutdown += self.traces.len() as u64;
        while let Some(id) = self.first_arrival() {
            self.decide_into(py, &id, &out, dropped)?;
        }
        Ok(out)
    }

    /// Drop, undecided, the traces with a fragment read from these partitions; their
    /// settled-but-untaken fragments too. Returns how many traces.
    fn forget(&mut self, partitions: HashSet<i64>) -> usize {
        let from = |source: &Option<(i64, i64)>| source.is_some_and(|(p, _)| partitions.contains(&p));
        let mut gone = Vec::new();
        for (id, e) in &self.traces {
            if e.fragments.iter().any(|f| from(&f.source())) {
                gone.push(*id);
            }
        }
        for id in &gone {
            let e = self.traces.remove(id).expect("listed above");
            self.spans -= e.spans;
            self.bytes -= e.bytes;
        }
        self.settled.retain(|(_, source)| !from(&Some(*source)));
        self.counts.forgotten += gone.len() as u64;
        self.compact();
        gone.len()
    }

    /// Fragments (from a durable queue) finished without storage since the last call, as
    /// `Settled(trace_id, source, count)`: fragments of one record that were settled one
    /// after another are reported together (a request's traces mostly are).
    fn take_settled<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut runs: Vec<(TraceId, (i64, i64), u64)> = Vec::new();
        for (id, source) in self.settled.drain(..) {
            match runs.last_mut() {
                Some(last) if last.1 == source => last.2 += 1,
                _ => runs.push((id, source, 1)),
            }
        }
        let settled = runs.into_iter()
            .map(|(id, source, count)| Py::new(py, Settled { trace_id: PyBytes::new(py, &id).unbind(), source, count }))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, settled) // one allocation: appending thousands grew the list by reallocation
    }

    /// (keep, rule name, sample rate, summary or None) of a decided trace, or None.
    fn decided<'py>(&self, py: Python<'py>, trace: &[u8]) -> PyResult<Option<(bool, String, f64, Py<PyAny>)>> {
        let Ok(id) = TraceId::try_from(trace) else { return Ok(None) };
        Ok(self.decided.get(&id).map(|(keep, rule, rate, summary)| {
            (keep, self.rules.name(rule), rate, summary.map_or_else(|| py.None(), |s| s.clone_ref(py)))
        }))
    }

    fn is_buffered(&self, trace: &[u8]) -> bool {
        TraceId::try_from(trace).is_ok_and(|id| self.traces.contains_key(&id))
    }

    /// Remember a decision (kept traces: with their summary, which late spans update).
    fn remember(&mut self, trace: &[u8], keep: bool, rule: String, rate: f64, summary: Option<Py<PyAny>>) -> PyResult<()> {
        let id = TraceId::try_from(trace).map_err(|_| PyValueError::new_err("a trace id is 16 bytes"))?;
        let rule = self.rules.intern(rule);
        self.decided.remember(id, Decided { keep, rule, rate, summary });
        Ok(())
    }

    /// Counts since the last call: (events by name, decisions as (rule name, keep, count)).
    fn take_counts(&mut self) -> (Vec<(&'static str, u64)>, Vec<(String, bool, u64)>) {
        let c = std::mem::take(&mut self.counts);
        let events = [("spans_received", c.received), ("decided_root_quiet", c.root_quiet),
                      ("decided_wait_elapsed", c.wait_elapsed), ("decided_early_max_traces", c.max_traces),
                      ("decided_early_max_spans_per_trace", c.max_spans_per_trace),
                      ("decided_early_max_buffered_spans", c.max_buffered_spans),
                      ("decided_early_max_buffered_bytes", c.max_buffered_bytes), ("decided_on_shutdown", c.on_shutdown),
                      ("forgotten_on_rebalance", c.forgotten)];
        let counted = std::mem::take(&mut self.decisions);
        let decisions = counted.into_iter().map(|((rule, keep), n)| (self.rules.name(rule), keep, n)).collect();
        (events.into_iter().filter(|(_, n)| *n > 0).collect(), decisions)
    }
}

impl TraceBuffer {
    fn first_arrival(&mut self) -> Option<TraceId> {
        while let Some(&(id, serial)) = self.arrivals.front() {
            if self.traces.get(&id).is_some_and(|e| e.serial == serial) {
                return Some(id);
            }
            self.arrivals.pop_front();
        }
        None
    }

    fn first_rooted(&mut self) -> Option<TraceId> {
        while let Some(&(id, serial, touch)) = self.rooted.front() {
            if self.traces.get(&id).is_some_and(|e| e.serial == serial && e.touch == touch) {
                return Some(id);
            }
            self.rooted.pop_front();
        }
        None
    }

    /// Drops stale queue entries once they outnumber live ones (a trace that keeps getting
    /// fragments leaves one stale entry per fragment behind its newest).
    fn compact(&mut self) {
        let live = self.traces.len() + 1024;
        if self.rooted.len() > 2 * live {
            let traces = &self.traces;
            self.rooted.retain(|(id, s, t)| traces.get(id).is_some_and(|e| e.serial == *s && e.touch == *t));
        }
        if self.arrivals.len() > 2 * live {
            let traces = &self.traces;
            self.arrivals.retain(|(id, s)| traces.get(id).is_some_and(|e| e.serial == *s));
        }
    }

    fn decide_oldest(&mut self, py: Python<'_>, out: &Bound<'_, PyList>) -> PyResult<()> {
        if let Some(id) = self.first_arrival() {
            self.decide_into(py, &id, out, true)?;
        }
        Ok(())
    }

    fn decide_into(&mut self, py: Python<'_>, id: &TraceId, out: &Bound<'_, PyList>, dropped: bool) -> PyResult<()> {
        if let Some(d) = self.decide(py, id, dropped)? {
            out.append(d)?;
        }
        Ok(())
    }

    /// Takes a trace out of the buffer and decides it; returns its `Decision`, or None for
    /// a dropped trace when `dropped` is false (no summary is built for a trace the native
    /// rules drop: the common case, ~95% of traffic).
    fn decide<'py>(&mut self, py: Python<'py>, id: &TraceId, dropped: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let e = self.traces.remove(id).expect("decided traces are buffered");
        self.spans -= e.spans;
        self.bytes -= e.bytes;
        let root = match e.root_at() {
            Some(at) => e.fragments[at].root_info(py)?,
            None => None,
        };
        let summary_cls = self.classes.0.clone_ref(py);
        let make_summary = || {
            let trace = PyBytes::new(py, id);
            summary_cls.bind(py).call1((trace, e.spans, e.start, e.end, e.error, root.as_ref().map(|r| r.clone_ref(py)), i64::from(e.partition), e.offset))
        };
        let fragments = || -> PyResult<Bound<'py, PyList>> {
            let out = PyList::empty(py);
            for (i, f) in e.fragments.iter().enumerate() {
                // the trace's root is one object, shared with its summary, as it arrived
                let root = if e.root_at() == Some(i) {
                    root.as_ref().map(|r| r.clone_ref(py))
                } else {
                    f.root_info(py)?
                };
                out.append(f.to_python(py, id, root)?)?;
            }
            Ok(out)
        };
        let upstream = {
            // the common case, no span with an "ot=" trace state, unpacks nothing
            let payloads: Vec<_> = e.fragments.iter().filter(|f| f.payload.may_contain(b"ot=")).map(|f| f.payload.unpack(id)).collect();
            let views: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            crate::ot::upstream(id, &views).map_err(|err| PyValueError::new_err(err.0))?
        };
        let mut made = None; // the fragments as the Python rules saw them, reused if kept
        let (keep, rule, rate, summary) = match self.rules.decide(upstream, e.error, e.duration()) {
            Some((keep, rule, rate)) => (keep, rule, rate, None),
            None => {
                let summary = make_summary()?;
                let list = made.insert(fragments()?);
                let args = (&summary, list.clone(), upstream.0, upstream.1);
                let decided: (bool, i64, f64) = self.evaluate.bind(py).call1(args)?.extract()?;
                (decided.0, self.rules.id(decided.1), decided.2, Some(summary))
            }
        };
        *self.decisions.entry((rule, keep)).or_insert(0) += 1;
        let cached = if keep { Some(make_summary()?.unbind()) } else { None };
        self.decided.remember(*id, Decided { keep, rule, rate, summary: cached });
        let store = keep || self.dry_run;
        let kept = match (store, made) {
            (true, Some(list)) => list,
            (true, None) => fragments()?,
            (false, _) => PyList::empty(py),
        };
        if !store {
            self.settled.extend(e.fragments.iter().filter_map(|f| f.source().map(|source| (*id, source))));
            if !dropped {
                return Ok(None);
            }
        }
        let summary = match summary {
            Some(s) => s,
            None => make_summary()?,
        };
        Ok(Some(self.classes.1.bind(py).call1((summary, keep, self.rules.name(rule), rate, kept))?))
    }
}
