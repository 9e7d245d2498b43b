//! `processors.fragment.Fragment` and `RootInfo` as compiled classes.
//!
//! A fragment (the spans of one trace from one request) is made for every trace of every
//! request and read again by the write-ahead log's packer and the sampler's buffer. As
//! Python dataclasses each one cost an `__init__` call in a Python loop, a garbage-collector
//! entry, and an attribute lookup per field for every compiled reader. As classes of this
//! extension, `split` makes them in its own loop, the packer and the buffer read their
//! fields directly, and the collector never tracks them (they hold no cycles).
//!
//! Python code sees the same thing as before: the same constructor (positional or by
//! keyword, `received_ns` defaulting to now), the same readable and settable attributes,
//! `size`, equality by value and a repr.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::basic::CompareOp;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// Bytes a fragment costs in a queue besides its payload (`FRAGMENT_OVERHEAD`).
pub const OVERHEAD: usize = 64;

/// The root span of a trace (the one with no parent), as the sampler sees it.
#[pyclass(module = "processors._wire", get_all, set_all)]
pub struct RootInfo {
    pub service: Py<PyString>,
    pub name: Py<PyString>,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[pymethods]
impl RootInfo {
    #[new]
    fn new(service: Py<PyString>, name: Py<PyString>, start_ns: u64, end_ns: u64) -> Self {
        RootInfo { service, name, start_ns, end_ns }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("RootInfo(service={}, name={}, start_ns={}, end_ns={})",
                repr(self.service.bind(py)), repr(self.name.bind(py)), self.start_ns, self.end_ns)
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        compare(self, other, op)
    }
}

impl ByValue for RootInfo {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (self.service.clone_ref(py), self.name.clone_ref(py), self.start_ns, self.end_ns).into_pyobject(py)
    }
}

/// The spans of one trace from one request, as serialized OTLP `TracesData` bytes plus the
/// few facts the sampler decides on.
#[pyclass(module = "processors._wire", get_all, set_all)]
pub struct Fragment {
    pub trace_id: Py<PyBytes>,
    pub payload: Py<PyBytes>,
    pub span_count: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub has_error: bool,
    pub root: Option<Py<RootInfo>>,
    pub received_ns: u64,
    /// (partition, offset) of the Kafka or write-ahead log record it came from, once it has one.
    pub source: Option<(i64, i64)>,
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[pymethods]
impl Fragment {
    #[new]
    #[pyo3(signature = (trace_id, payload, span_count, start_ns, end_ns, has_error, root, received_ns=None, source=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(trace_id: Py<PyBytes>, payload: Py<PyBytes>, span_count: u64, start_ns: u64, end_ns: u64, has_error: bool,
           root: Option<Py<RootInfo>>, received_ns: Option<u64>, source: Option<(i64, i64)>) -> Self {
        Fragment { trace_id, payload, span_count, start_ns, end_ns, has_error, root,
                   received_ns: received_ns.unwrap_or_else(now_ns), source }
    }

    /// Fragments this stands for when settled: one (a `Settled` may stand for several).
    #[getter]
    fn count(&self) -> u64 {
        1
    }

    /// Bytes this fragment costs in a queue: the payload dominates.
    #[getter]
    fn size(&self, py: Python<'_>) -> usize {
        self.payload.bind(py).as_bytes().len() + OVERHEAD
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let root = self.root.as_ref().map_or_else(|| "None".to_string(), |r| r.borrow(py).__repr__(py));
        format!("Fragment(trace_id={}, payload=<{} bytes>, span_count={}, start_ns={}, end_ns={}, has_error={}, \
                 root={root}, received_ns={}, source={:?})",
                repr(self.trace_id.bind(py)), self.payload.bind(py).as_bytes().len(), self.span_count, self.start_ns,
                self.end_ns, if self.has_error { "True" } else { "False" }, self.received_ns, self.source)
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        compare(self, other, op)
    }
}

impl ByValue for Fragment {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let root = self.root.as_ref().map(|r| r.clone_ref(py));
        (self.trace_id.clone_ref(py), self.payload.clone_ref(py), self.span_count, self.start_ns, self.end_ns,
         self.has_error, root, self.received_ns, self.source).into_pyobject(py)
    }
}

/// The bytes `fragments` cost in a queue (the sum of their `size`), in one call.
#[pyfunction]
pub fn total_size(fragments: &Bound<'_, PyList>) -> PyResult<usize> {
    let mut total = 0;
    for f in fragments.iter() {
        total += f.cast::<Fragment>()?.borrow().size(fragments.py());
    }
    Ok(total)
}

/// Sets `source` of every fragment to (partition, offset): the record they were logged in.
#[pyfunction]
pub fn stamp_source(fragments: &Bound<'_, PyList>, partition: i64, offset: i64) -> PyResult<()> {
    for f in fragments.iter() {
        f.cast::<Fragment>()?.borrow_mut().source = Some((partition, offset));
    }
    Ok(())
}

fn repr(value: &Bound<'_, PyAny>) -> String {
    value.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
}

/// A class compared by the tuple of its fields, as a dataclass is.
trait ByValue: pyo3::PyClass {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>>;
}

/// `__eq__` and `__ne__` of a `ByValue` class (order is not defined).
fn compare<T: ByValue>(this: &T, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
    let py = other.py();
    let Ok(other) = other.cast::<T>() else { return Ok(py.NotImplemented()) };
    let equal = this.fields(py)?.eq(other.borrow().fields(py)?)?;
    Ok(match op {
        CompareOp::Eq => equal.into_pyobject(py)?.to_owned().into_any().unbind(),
        CompareOp::Ne => (!equal).into_pyobject(py)?.to_owned().into_any().unbind(),
        _ => py.NotImplemented(),
    })
}

/// A fragment that is done with (its trace dropped, or stored before), as a queue needs it
/// to commit past its record: the sampler's buffer keeps no `Fragment`, so it reports these.
#[pyclass(module = "processors._wire", frozen, get_all)]
pub struct Settled {
    pub trace_id: Py<PyBytes>,
    pub source: (i64, i64),
    /// How many fragments of that record this stands for: the buffer reports the fragments of
    /// one record together, so a queue settles a request's traces with one object, not one each.
    pub count: u64,
}

#[pymethods]
impl Settled {
    #[new]
    #[pyo3(signature = (trace_id, source, count=1))]
    fn new(trace_id: Py<PyBytes>, source: (i64, i64), count: u64) -> Self {
        Settled { trace_id, source, count }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Settled(trace_id={}, source={:?}, count={})", repr(self.trace_id.bind(py)), self.source, self.count)
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        compare(self, other, op)
    }
}

impl ByValue for Settled {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (self.trace_id.clone_ref(py), self.source, self.count).into_pyobject(py)
    }
}
