//! `processors._wire`: tailsift's per-span work over OTLP bytes, so that Python runs per
//! request and per trace, never per span. `processors/wire.py` is its typed face, and
//! `processors/reference.py` the pure-Python reference that tests hold it to.

/// The extension's own allocations (payloads, buffer entries, per-request scratch) come
/// from mimalloc, not glibc's malloc: a request makes a few allocations per trace, and with
/// glibc they were about a tenth of the collector's CPU (`_int_malloc`, `unlink_chunk`); libc
/// fell from 14% to 4% of a `perf` profile's samples under `benchmarks/peer`'s load
/// (benchmarks/README.md, step 7). Python objects still come from Python's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for the extension's memory. mimalloc asks for them on its
/// arenas; the collector's allocations churn (a request's scratch, the buffer's payloads),
/// and after mimalloc hands freed memory back, the next touch faults in a whole 2 MiB page
/// that the kernel zeroes first: `clear_page_erms` under huge-page faults was ~3.8% of the
/// pinned collector's CPU under `benchmarks/peer`'s load. Set before the extension's first
/// allocation maps an arena (`tests/test_native_memory.py` checks that none is huge). Other
/// libraries' memory (chDB's) is left as it was; mimalloc's own switch, `MIMALLOC_ALLOW_THP=0`,
/// is read at load time and turns huge pages off for the whole process.
fn no_huge_pages() {
    const ALLOW_THP: std::ffi::c_int = 43; // `mi_option_allow_thp` in mimalloc v3's mimalloc.h (pinned by Cargo.toml and Cargo.lock)
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: sets one integer option, which mimalloc reads whenever it maps memory.
    unsafe { mi_option_set(ALLOW_THP, 0) }
}

/// release_memory(): give the extension's freed memory back to the operating system now.
///
/// mimalloc keeps freed pages for a second (`purge_delay`) before it returns them, so that
/// memory churned by requests is reused without page faults. When the trace buffer decides
/// a wave of traces, their payloads are copied into Python and freed here, and for that
/// second they count twice in RSS: 512 KiB spans took the collector over its memory limit
/// that way. The memory limiter calls this above its soft limit (`collector/memory.py`).
#[pyfunction]
fn release_memory(py: Python<'_>) {
    extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mimalloc's own entry point, safe from any thread; with `force` it purges the
    // freed pages of every arena (the whole process's extension memory), not only this thread's.
    py.detach(|| unsafe { mi_collect(true) })
}

mod attrs;
mod block;
mod buffer;
mod cache;
mod entry;
mod envelope;
mod fragment;
mod metrics;
mod ot;
mod otlp;
mod packed;
mod rows;
mod rules;
mod split;
mod stored;
mod survey;
mod syncer;
mod wire;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// The hash map of the hot path: aHash, randomly keyed per process (trace ids and attribute
/// values come from clients, so the hash must resist chosen collisions), several times
/// faster than the standard SipHash on short keys.
pub type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

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
    let mut payload = Vec::new();
    for f in &out.fragments {
        out.payload(f, &mut payload);
        let root = f.root.as_ref().map(|r| (r.resource, String::from_utf8_lossy(r.name), r.start, r.end));
        fragments.append((PyBytes::new(py, &f.trace_id), PyBytes::new(py, &payload), f.spans, f.start, f.end,
                          f.error, root))?;
    }
    (fragments, out.rejected, out.expired, out.reason).into_pyobject(py)
}

/// split_fragments(body, oldest_ns, received_ns, service) -> (fragments, rejected, expired,
/// reason): `split`, its fragments made as `Fragment` objects here; `service(i)` names the
/// service of the i-th resource (asked once per resource that holds a root span).
#[pyfunction]
fn split_fragments<'py>(py: Python<'py>, body: &[u8], oldest_ns: u64, received_ns: u64, service: Bound<'py, PyAny>)
                        -> PyResult<Bound<'py, PyTuple>> {
    let out = py.detach(|| split::split(body, oldest_ns)).map_err(malformed)?;
    let fragments = make_fragments(py, &out, received_ns, &service)?;
    (fragments, out.rejected, out.expired, out.reason).into_pyobject(py)
}

/// split_counting(body, oldest_ns, received_ns, service, services, keys, summable, bounds) ->
/// (fragments, rejected, expired, reason, groups): `split_fragments` and `metric_groups` of
/// the same body in one walk over it.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn split_counting<'py>(py: Python<'py>, body: &[u8], oldest_ns: u64, received_ns: u64, service: Bound<'py, PyAny>,
                       services: Vec<u32>, keys: Vec<Vec<u8>>, summable: Vec<bool>, bounds: Vec<f64>)
                       -> PyResult<Bound<'py, PyTuple>> {
    one_flag_per_key(&keys, &summable)?;
    let (out, groups) = py.detach(|| {
        let mut groups = metrics::Groups::new(&services, &keys, &summable, &bounds);
        let out = split::split_with(body, oldest_ns, |resource, span| groups.visit(resource, span))?;
        Ok((out, groups.finish()))
    }).map_err(malformed)?;
    let fragments = make_fragments(py, &out, received_ns, &service)?;
    (fragments, out.rejected, out.expired, out.reason, groups_list(py, groups)?).into_pyobject(py)
}

/// `split`'s fragments as `Fragment` objects.
fn make_fragments<'py>(py: Python<'py>, out: &split::Split, received_ns: u64, service: &Bound<'py, PyAny>)
                       -> PyResult<Bound<'py, PyList>> {
    let mut services: Vec<Option<Py<PyString>>> = Vec::new();
    // Root names, interned: a buffered trace holds its root's name, so one string per
    // distinct name, made once per request and not once per trace.
    let mut names: Map<&[u8], Py<PyString>> = Map::default();
    let mut payload = Vec::new();
    let fragments = PyList::empty(py);
    for f in &out.fragments {
        let root = match &f.root {
            None => None,
            Some(r) => {
                if services.len() <= r.resource {
                    services.resize_with(r.resource + 1, || None);
                }
                let named = match &services[r.resource] {
                    Some(named) => named.clone_ref(py),
                    None => services[r.resource].insert(service.call1((r.resource,))?.cast_into::<PyString>()?.unbind())
                        .clone_ref(py),
                };
                let name = names.entry(r.name).or_insert_with(|| {
                    PyString::intern(py, std::str::from_utf8(r.name).unwrap_or_default()).unbind()
                }).clone_ref(py);
                Some(Py::new(py, fragment::RootInfo { service: named, name, start_ns: r.start, end_ns: r.end })?)
            }
        };
        out.payload(f, &mut payload);
        fragments.append(Py::new(py, fragment::Fragment {
            trace_id: PyBytes::new(py, &f.trace_id).unbind(), payload: PyBytes::new(py, &payload).unbind(),
            span_count: f.spans, start_ns: f.start, end_ns: f.end, has_error: f.error, root, received_ns, source: None,
        })?)?;
    }
    Ok(fragments)
}

/// span_names(body) -> distinct span names, in order of first use.
#[pyfunction]
fn span_names(py: Python<'_>, body: &[u8]) -> PyResult<Vec<String>> {
    py.detach(|| metrics::span_names(body)).map_err(malformed)
}

/// survey(body) -> (span count, distinct span names in order of first use, each resource's
/// `service.name`: a str, or the `AnyValue` bytes of one that is not a string, the text
/// every string and `bytes_value` field holds, newline after each). Raises
/// ValueError for a body upb would refuse, and for some it would not (see `survey.rs`).
#[pyfunction(name = "survey")]
fn survey_request<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    let (spans, names, services, text) = py
        .detach(|| -> wire::Result<_> {
            let s = survey::survey(body)?;
            let services = s.resources.iter()
                .map(|rs| attrs::service_name(otlp::parts(rs)?.0.bytes()))
                .collect::<wire::Result<Vec<_>>>()?;
            Ok((s.spans, s.names, services, s.text))
        })
        .map_err(malformed)?;
    let names = names.iter().map(|n| Ok(PyString::new(py, std::str::from_utf8(n)?))).collect::<PyResult<Vec<_>>>()?;
    let out = PyList::empty(py);
    for service in services {
        match service {
            Ok(text) => out.append(PyString::new(py, std::str::from_utf8(&text)?))?,
            Err(raw) => out.append(PyBytes::new(py, &raw))?,
        }
    }
    (spans, names, out, PyBytes::new(py, &text)).into_pyobject(py)
}

/// metric_groups(body, services, keys, summable, bounds) -> [(service slot, name, code,
/// values, calls, errors, duration_ns, buckets)]; values[k] is None (absent), bytes (an
/// `AnyValue`) or, for a summable key holding integers, their clamped sum.
#[pyfunction]
fn metric_groups<'py>(py: Python<'py>, body: &[u8], services: Vec<u32>, keys: Vec<Vec<u8>>, summable: Vec<bool>,
                      bounds: Vec<f64>) -> PyResult<Bound<'py, PyList>> {
    one_flag_per_key(&keys, &summable)?;
    let groups = py.detach(|| metrics::groups(body, &services, &keys, &summable, &bounds)).map_err(malformed)?;
    groups_list(py, groups)
}

fn one_flag_per_key(keys: &[Vec<u8>], summable: &[bool]) -> PyResult<()> {
    if summable.len() != keys.len() {
        return Err(PyValueError::new_err("summable must have one flag per key"));
    }
    Ok(())
}

/// Groups as `metric_groups` returns them: (slot, name, code, values, calls, errors, duration, buckets).
fn groups_list(py: Python<'_>, groups: Vec<metrics::Group>) -> PyResult<Bound<'_, PyList>> {
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

/// ot_upstream(trace_id, payloads) -> (p_up, randomness): what upstream kept of a trace and
/// its 56-bit randomness, from its spans' TraceState (see `ot.rs`).
#[pyfunction]
fn ot_upstream(trace_id: &[u8], payloads: Vec<Vec<u8>>) -> PyResult<(f64, u64)> {
    if trace_id.len() != 16 {
        return Err(pyo3::exceptions::PyValueError::new_err("a trace id is 16 bytes"));
    }
    let views: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    ot::upstream(trace_id, &views).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.0))
}

/// crc32(data) -> the CRC-32 (ISO-HDLC, as zlib.crc32) of `data`: the write-ahead log's
/// record checksum, with the CPU's carry-less multiply (zlib's took ~2% of the collector's
/// CPU at 64 KiB a request).
#[pyfunction]
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// ot_threshold(p) -> the OTEP 235 rejection threshold for keeping p of traces.
#[pyfunction]
fn ot_threshold(p: f64) -> u64 {
    ot::threshold(p)
}

/// span_rows(payloads, trace_hex, sample_rate, rule, tenant_key, wanted, state, render,
/// service) -> ([(row, span_hex, service, name, status, duration_ns, wanted attributes or
/// None, cost offset)], tenant, clamped): a kept trace's `otel_traces` rows as RowBinary
/// (see `rows.rs`).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn span_rows<'py>(py: Python<'py>, payloads: &Bound<'py, PyList>, trace_hex: &str, sample_rate: f64, rule: &str,
                  tenant_key: &[u8], wanted: Vec<Vec<u8>>, state: Bound<'py, PyAny>, render: Bound<'py, PyAny>,
                  service: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let mut helpers = attrs::helpers(py, state, render, service);
    let trace = rows::Trace { trace_hex, sample_rate, rule, tenant_key, wanted };
    rows::span_rows(&mut helpers, &trace, payloads)
}

#[pymodule]
fn _wire(m: &Bound<'_, PyModule>) -> PyResult<()> {
    no_huge_pages();
    m.add_function(wrap_pyfunction!(split_request, m)?)?;
    m.add_function(wrap_pyfunction!(split_fragments, m)?)?;
    m.add_function(wrap_pyfunction!(split_counting, m)?)?;
    m.add_function(wrap_pyfunction!(span_names, m)?)?;
    m.add_function(wrap_pyfunction!(survey_request, m)?)?;
    m.add_function(wrap_pyfunction!(metric_groups, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(ot_upstream, m)?)?;
    m.add_function(wrap_pyfunction!(ot_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(span_rows, m)?)?;
    m.add_function(wrap_pyfunction!(crc32, m)?)?;
    m.add_function(wrap_pyfunction!(release_memory, m)?)?;
    m.add_function(wrap_pyfunction!(fragment::total_size, m)?)?;
    m.add_function(wrap_pyfunction!(fragment::stamp_source, m)?)?;
    m.add_class::<block::NativeEncoder>()?;
    m.add_class::<buffer::TraceBuffer>()?;
    m.add_class::<fragment::Fragment>()?;
    m.add_class::<fragment::RootInfo>()?;
    m.add_class::<fragment::Settled>()?;
    m.add_class::<syncer::Syncer>()?;
    m.add("FRAGMENT_OVERHEAD", fragment::OVERHEAD)?;
    Ok(())
}
