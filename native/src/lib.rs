//! `processors._wire`: tailsift's per-span work over OTLP bytes, so that Python runs per
//! request and per trace, never per span. `processors/wire.py` is its typed face, and
//! `processors/reference.py` the pure-Python reference that tests hold it to.

mod buffer;
mod cache;
mod envelope;
mod metrics;
mod otlp;
mod rules;
mod split;
mod wire;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

fn malformed(err: wire::WireError) -> PyErr {
    PyValueError::new_err(format!("malformed OTLP protobuf: {}", err.0))
}

/// split(body, oldest_ns) -> (fragments, rejected, expired, reason)
///
/// fragments: [(trace_id, payload, spans, start, end, error, root)] where root is None or
/// (resource index, name, start, end). reason: why the first rejected span was invalid.
#[pyfunction(name = "split")]
fn split_request<'py>(py: Python<'py>, body: &[u8], oldest_ns: u64) -> PyResult<Bound<'py, PyTuple>> {
    let out = py.detach(|| split::split(body, oldest_ns)).map_err(malformed)?;
    let fragments = PyList::empty(py);
    for f in out.fragments {
        let root = f.root.map(|r| (r.resource, r.name, r.start, r.end));
        fragments.append((PyBytes::new(py, &f.trace_id), PyBytes::new(py, &f.payload), f.spans, f.start, f.end,
                          f.error, root))?;
    }
    (fragments, out.rejected, out.expired, out.reason).into_pyobject(py)
}

/// span_names(body) -> distinct span names, in order of first use.
#[pyfunction]
fn span_names(py: Python<'_>, body: &[u8]) -> PyResult<Vec<String>> {
    py.detach(|| metrics::span_names(body)).map_err(malformed)
}

/// metric_groups(body, services, keys, summable, bounds) -> [(service slot, name, code,
/// values, calls, errors, duration_ns, buckets)]; values[k] is None (absent), bytes (an
/// `AnyValue`) or, for a summable key holding integers, their clamped sum.
#[pyfunction]
fn metric_groups<'py>(py: Python<'py>, body: &[u8], services: Vec<u32>, keys: Vec<Vec<u8>>, summable: Vec<bool>,
                      bounds: Vec<f64>) -> PyResult<Bound<'py, PyList>> {
    if summable.len() != keys.len() {
        return Err(PyValueError::new_err("summable must have one flag per key"));
    }
    let groups = py.detach(|| metrics::groups(body, &services, &keys, &summable, &bounds)).map_err(malformed)?;
    let out = PyList::empty(py);
    for g in groups {
        let values = PyList::empty(py);
        for part in g.parts {
            match part {
                metrics::Part::Absent => values.append(py.None())?,
                metrics::Part::Int(sum) => values.append(sum)?,
                metrics::Part::Raw(bytes) => values.append(PyBytes::new(py, &bytes))?,
            }
        }
        out.append((g.service, g.name, g.code, values, g.calls, g.errors, g.duration_ns, g.buckets))?;
    }
    Ok(out)
}

/// pack(fragments) -> the fragments as a serialized `tailsift.v1.Batch`.
#[pyfunction]
fn pack<'py>(py: Python<'py>, fragments: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &envelope::pack(fragments)?))
}

/// trace_hash(trace_id) -> the 8-byte BLAKE2b digest of the id as a big-endian integer
/// (`hashlib.blake2b(trace_id, digest_size=8)`): the sampler's deterministic coin.
#[pyfunction]
fn trace_hash(trace_id: &[u8]) -> u64 {
    hash64(trace_id)
}

pub(crate) fn hash64(data: &[u8]) -> u64 {
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(8).expect("8 is a valid BLAKE2b output size");
    hasher.update(data);
    let mut out = [0u8; 8];
    hasher.finalize_variable(&mut out).expect("the buffer is the output size");
    u64::from_be_bytes(out)
}

#[pymodule]
fn _wire(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(split_request, m)?)?;
    m.add_function(wrap_pyfunction!(span_names, m)?)?;
    m.add_function(wrap_pyfunction!(metric_groups, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(trace_hash, m)?)?;
    m.add_class::<buffer::TraceBuffer>()?;
    Ok(())
}
