//! The write-ahead log's and Kafka's record body: fragments as a `tailsift.v1.Batch`
//! (proto/tailsift/v1/envelope.proto), written straight from the `Fragment` objects
//! instead of through one protobuf object per fragment, their fields read directly. Canonical proto3: fields at their
//! default are left out; a root that is present is written even when empty.

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::fragment::Fragment;
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

fn envelope(py: Python<'_>, f: &Fragment, out: &mut Vec<u8>) {
    put_bytes(out, 1, f.trace_id.bind(py).as_bytes());
    put_fixed64(out, 2, f.received_ns);
    put_bytes(out, 3, f.payload.bind(py).as_bytes());
    if f.span_count != 0 {
        put_varint(out, 4 << 3);
        put_varint(out, f.span_count);
    }
    put_fixed64(out, 5, f.start_ns);
    put_fixed64(out, 6, f.end_ns);
    if f.has_error {
        out.extend_from_slice(&[7 << 3, 1]);
    }
    if let Some(root) = &f.root {
        let root = root.borrow(py);
        let mut r = Vec::new();
        put_bytes(&mut r, 1, root.service.bind(py).to_string_lossy().as_bytes());
        put_bytes(&mut r, 2, root.name.bind(py).to_string_lossy().as_bytes());
        put_fixed64(&mut r, 3, root.start_ns);
        put_fixed64(&mut r, 4, root.end_ns);
        put_field(out, 8, &r);
    }
}

/// `tailsift.v1.Batch` of the fragments, serialized.
pub fn pack(fragments: &Bound<'_, PyList>) -> PyResult<Vec<u8>> {
    let py = fragments.py();
    let mut size = 0;
    let fragments: Vec<Bound<'_, Fragment>> = fragments.iter().map(|f| f.cast_into::<Fragment>().map_err(PyErr::from))
        .collect::<PyResult<_>>()?;
    let fragments: Vec<PyRef<'_, Fragment>> = fragments.iter().map(Bound::borrow).collect();
    for f in &fragments {
        size += f.payload.bind(py).as_bytes().len() + 160; // ids, times, root, framing
    }
    let mut out = Vec::with_capacity(size); // one allocation, not growth by doubling
    let mut one = Vec::new();
    for f in &fragments {
        one.clear();
        envelope(py, f, &mut one);
        put_field(&mut out, 1, &one);
    }
    Ok(out)
}
