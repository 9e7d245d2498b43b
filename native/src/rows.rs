//! Rows for the spans of a kept trace, as ClickHouse `RowBinary` bytes in the column order
//! of `sql.SPAN_COLUMNS`, straight from the fragments' OTLP bytes: no protobuf object and
//! no Python list per span. `collector/rows.py` (`NativeRowBuilder`) is its Python face,
//! and its `RowBuilder` the reference that `tests/test_rows_contract.py` holds this to,
//! byte for byte.
//!
//! What Python still decides is passed in as callables, called per distinct value rather
//! than per span: a TraceState with its OTEP 235 threshold, the text of a composite
//! attribute (array, kvlist, bytes: JSON as the exporter writes it), a non-string
//! `service.name`. Doubles are rendered by Python's own `str(float)`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::attrs::{Helpers, Typed};
use crate::otlp::parts;
use crate::wire::{each, put_varint, Merged, Reader, Value};

/// Start times are clamped here (2100-01-01): see `collector/rows.py`.
pub const MAX_TIMESTAMP_NS: u64 = 4_102_444_800 * 1_000_000_000;
const KIND_NAMES: [&str; 6] = ["Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"];

/// A ClickHouse `String` (in `RowBinary` and `Native` alike): its length, then its bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(2 * b.len());
    for byte in b {
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 15) as usize]);
    }
}

fn put_hex(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, 2 * b.len() as u64);
    hex_into(out, b);
}

fn put_map<V: AsRef<[u8]>>(out: &mut Vec<u8>, pairs: &[(&[u8], V)]) {
    put_varint(out, pairs.len() as u64);
    for (k, v) in pairs {
        put_str(out, k);
        put_str(out, v.as_ref());
    }
}

fn hex(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(2 * b.len());
    hex_into(&mut out, b);
    String::from_utf8(out).expect("hex digits are ASCII")
}

struct Event<'a> {
    time: u64,
    name: &'a [u8],
    attrs: Typed<'a>,
}

struct Link<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    state: &'a [u8],
    attrs: Typed<'a>,
}

/// The arguments of one call: the trace, and what each of its rows carries.
pub struct Trace<'a> {
    pub trace_hex: &'a str,
    pub sample_rate: f64,
    pub rule: &'a str,
    pub tenant_key: &'a [u8],
    pub wanted: Vec<Vec<u8>>,
}

/// Per span: (row, span id hex, service, name, status, duration, wanted attributes or None,
/// where the CostUsd column starts); then the trace's tenant and the start times clamped.
pub fn span_rows<'py>(h: &mut Helpers<'py>, t: &Trace<'_>, payloads: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyTuple>> {
    let py = h.py;
    let out = PyList::empty(py);
    let mut tenant: Option<Vec<u8>> = None;
    let mut clamped = 0u64;
    let statuses = [PyString::intern(py, "Unset"), PyString::intern(py, "Ok"), PyString::intern(py, "Error")];
    for payload in payloads.iter() {
        let payload = payload.cast::<PyBytes>()?.as_bytes();
        let mut top = Reader::new(payload);
        while let Some((field, value)) = top.next().map_err(crate::malformed)? {
            let rs = match (field, value) {
                (1, Value::Bytes(b)) => b,
                _ => continue,
            };
            let (resource, scopes, _) = parts(rs).map_err(crate::malformed)?;
            let typed = Typed::read(h, resource.bytes(), 1)?;
            let service = h.service_of(resource.bytes())?;
            let resource_tenant = typed.get(t.tenant_key).unwrap_or_default().to_vec();
            if tenant.is_none() {
                tenant = Some(resource_tenant.clone());
            }
            let mut resource_cols = Vec::new();
            put_map(&mut resource_cols, &typed.values.items);
            let mut resource_types = Vec::new();
            put_map(&mut resource_types, &typed.types.items);
            let service_py = PyString::new(py, &String::from_utf8_lossy(&service));
            for ss in scopes {
                let (scope, spans, _) = parts(ss).map_err(crate::malformed)?;
                let (mut scope_name, mut scope_version): (&[u8], &[u8]) = (&[], &[]);
                each(scope.bytes(), |field, value| {
                    match (field, value) {
                        (1, Value::Bytes(b)) => scope_name = b,
                        (2, Value::Bytes(b)) => scope_version = b,
                        _ => {}
                    }
                    Ok(())
                })
                .map_err(crate::malformed)?;
                let mut scope_cols = Vec::new();
                put_str(&mut scope_cols, scope_name);
                put_str(&mut scope_cols, scope_version);
                for raw in spans {
                    let s = Span::read(h, raw)?;
                    if s.parent.is_empty() {
                        tenant = Some(resource_tenant.clone());
                    }
                    if s.start > MAX_TIMESTAMP_NS {
                        clamped += 1;
                    }
                    let state = h.trace_state(s.state)?;
                    let mut row = Vec::with_capacity(raw.len() + resource_cols.len() + 256);
                    row.extend_from_slice(&s.start.min(MAX_TIMESTAMP_NS).to_le_bytes());
                    put_str(&mut row, t.trace_hex.as_bytes());
                    put_hex(&mut row, s.span_id);
                    put_hex(&mut row, s.parent);
                    put_str(&mut row, &state);
                    put_str(&mut row, s.name);
                    put_str(&mut row, KIND_NAMES.get(s.kind as usize).copied().unwrap_or("Unspecified").as_bytes());
                    put_str(&mut row, &service);
                    row.extend_from_slice(&resource_cols);
                    row.extend_from_slice(&scope_cols);
                    put_map(&mut row, &s.attrs.values.items);
                    let duration = s.end.saturating_sub(s.start);
                    row.extend_from_slice(&duration.to_le_bytes());
                    let status = if (0..3).contains(&s.code) { s.code as usize } else { 0 };
                    put_str(&mut row, statuses[status].to_str()?.as_bytes());
                    put_str(&mut row, &s.message);
                    s.put_events(&mut row);
                    s.put_links(&mut row);
                    row.extend_from_slice(&t.sample_rate.to_le_bytes());
                    put_str(&mut row, t.rule.as_bytes());
                    let cost_at = row.len();
                    row.extend_from_slice(&0f64.to_le_bytes());
                    put_map(&mut row, &s.attrs.types.items);
                    row.extend_from_slice(&resource_types);
                    let wanted = PyDict::new(py);
                    for key in &t.wanted {
                        if let Some(v) = s.attrs.get(key) {
                            wanted.set_item(PyString::new(py, std::str::from_utf8(key)?), PyString::new(py, std::str::from_utf8(v)?))?;
                        }
                    }
                    let name = PyString::new(py, std::str::from_utf8(s.name)?);
                    let wanted = if wanted.is_empty() { py.None().into_bound(py) } else { wanted.into_any() };
                    let item = (PyBytes::new(py, &row), hex(s.span_id), &service_py, name, &statuses[status], duration,
                                wanted, cost_at);
                    out.append(item)?;
                }
            }
        }
    }
    let tenant = String::from_utf8_lossy(&tenant.unwrap_or_default()).into_owned();
    (out, tenant, clamped).into_pyobject(py)
}

struct Span<'a> {
    span_id: &'a [u8],
    parent: &'a [u8],
    state: &'a [u8],
    name: &'a [u8],
    kind: i32,
    start: u64,
    end: u64,
    code: i32,
    message: Vec<u8>,
    attrs: Typed<'a>,
    events: Vec<Event<'a>>,
    links: Vec<Link<'a>>,
}

impl<'a> Span<'a> {
    fn read(h: &Helpers<'_>, raw: &'a [u8]) -> PyResult<Self> {
        let mut s = Span { span_id: &[], parent: &[], state: &[], name: &[], kind: 0, start: 0, end: 0, code: 0,
                           message: Vec::new(), attrs: Typed::default(), events: Vec::new(), links: Vec::new() };
        let (mut status, mut events, mut links) = (Merged::default(), Vec::new(), Vec::new());
        each(raw, |field, value| {
            match (field, value) {
                (2, Value::Bytes(b)) => s.span_id = b,
                (3, Value::Bytes(b)) => s.state = b,
                (4, Value::Bytes(b)) => s.parent = b,
                (5, Value::Bytes(b)) => s.name = b,
                (6, Value::Varint(v)) => s.kind = v as i32,
                (7, Value::Fixed64(v)) => s.start = v,
                (8, Value::Fixed64(v)) => s.end = v,
                (11, Value::Bytes(b)) => events.push(b),
                (13, Value::Bytes(b)) => links.push(b),
                (15, Value::Bytes(b)) => status.push(b),
                _ => {}
            }
            Ok(())
        })
        .map_err(crate::malformed)?;
        s.attrs = Typed::read(h, raw, 9)?;
        each(status.bytes(), |field, value| {
            match (field, value) {
                (2, Value::Bytes(b)) => s.message = b.to_vec(),
                (3, Value::Varint(v)) => s.code = v as i32,
                _ => {}
            }
            Ok(())
        })
        .map_err(crate::malformed)?;
        for e in events {
            let mut event = Event { time: 0, name: &[], attrs: Typed::read(h, e, 3)? };
            each(e, |field, value| {
                match (field, value) {
                    (1, Value::Fixed64(v)) => event.time = v,
                    (2, Value::Bytes(b)) => event.name = b,
                    _ => {}
                }
                Ok(())
            })
            .map_err(crate::malformed)?;
            s.events.push(event);
        }
        for l in links {
            let mut link = Link { trace_id: &[], span_id: &[], state: &[], attrs: Typed::read(h, l, 4)? };
            each(l, |field, value| {
                match (field, value) {
                    (1, Value::Bytes(b)) => link.trace_id = b,
                    (2, Value::Bytes(b)) => link.span_id = b,
                    (3, Value::Bytes(b)) => link.state = b,
                    _ => {}
                }
                Ok(())
            })
            .map_err(crate::malformed)?;
            s.links.push(link);
        }
        Ok(s)
    }

    fn put_events(&self, row: &mut Vec<u8>) {
        let n = self.events.len() as u64;
        put_varint(row, n);
        for e in &self.events {
            row.extend_from_slice(&e.time.min(MAX_TIMESTAMP_NS).to_le_bytes());
        }
        put_varint(row, n);
        for e in &self.events {
            put_str(row, e.name);
        }
        put_varint(row, n);
        for e in &self.events {
            put_map(row, &e.attrs.values.items);
        }
        put_varint(row, n);
        for e in &self.events {
            put_map(row, &e.attrs.types.items);
        }
    }

    fn put_links(&self, row: &mut Vec<u8>) {
        let n = self.links.len() as u64;
        put_varint(row, n);
        for l in &self.links {
            put_hex(row, l.trace_id);
        }
        put_varint(row, n);
        for l in &self.links {
            put_hex(row, l.span_id);
        }
        put_varint(row, n);
        for l in &self.links {
            put_str(row, l.state);
        }
        put_varint(row, n);
        for l in &self.links {
            put_map(row, &l.attrs.values.items);
        }
    }
}
