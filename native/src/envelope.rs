//! The write-ahead log's and Kafka's record body: fragments as a `tailsift.v1.Batch`
//! (proto/tailsift/v1/envelope.proto), written straight from the `Fragment` objects
//! instead of through one protobuf object per fragment. Canonical proto3: fields at their
//! default are left out; a root that is present is written even when empty.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::wire::{put_field, put_varint};

fn put_fixed64(out: &mut Vec<u8>, number: u32, value: u64) {
    if value != 0 {
        put_varint(out, u64::from(number) << 3 | 1);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, number: u32, value: &[u8]) {
    if !value.is_empty() {
        put_field(out, number, value);
    }
}

fn envelope(f: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    let py = f.py();
    let trace_id: Vec<u8> = f.getattr(intern!(py, "trace_id"))?.extract()?;
    let payload = f.getattr(intern!(py, "payload"))?;
    let payload: &[u8] = payload.extract()?;
    put_bytes(out, 1, &trace_id);
    put_fixed64(out, 2, f.getattr(intern!(py, "received_ns"))?.extract()?);
    put_bytes(out, 3, payload);
    let spans: u32 = f.getattr(intern!(py, "span_count"))?.extract()?;
    if spans != 0 {
        put_varint(out, 4 << 3);
        put_varint(out, u64::from(spans));
    }
    put_fixed64(out, 5, f.getattr(intern!(py, "start_ns"))?.extract()?);
    put_fixed64(out, 6, f.getattr(intern!(py, "end_ns"))?.extract()?);
    if f.getattr(intern!(py, "has_error"))?.extract::<bool>()? {
        out.extend_from_slice(&[7 << 3, 1]);
    }
    let root = f.getattr(intern!(py, "root"))?;
    if !root.is_none() {
        let mut r = Vec::new();
        let service: String = root.getattr(intern!(py, "service"))?.extract()?;
        let name: String = root.getattr(intern!(py, "name"))?.extract()?;
        put_bytes(&mut r, 1, service.as_bytes());
        put_bytes(&mut r, 2, name.as_bytes());
        put_fixed64(&mut r, 3, root.getattr(intern!(py, "start_ns"))?.extract()?);
        put_fixed64(&mut r, 4, root.getattr(intern!(py, "end_ns"))?.extract()?);
        put_field(out, 8, &r);
    }
    Ok(())
}

/// `tailsift.v1.Batch` of the fragments, serialized.
pub fn pack(fragments: &Bound<'_, PyList>) -> PyResult<Vec<u8>> {
    let py = fragments.py();
    let mut size = 0;
    for f in fragments.iter() {
        size += f.getattr(intern!(py, "payload"))?.len()? + 160; // ids, times, root, framing
    }
    let mut out = Vec::with_capacity(size); // one allocation, not growth by doubling
    let mut one = Vec::new();
    for f in fragments.iter() {
        one.clear();
        envelope(&f, &mut one)?;
        put_field(&mut out, 1, &one);
    }
    Ok(out)
}
