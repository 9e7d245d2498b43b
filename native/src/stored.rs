//! A buffered fragment in native memory (`buffer.rs` holds these per trace): what a
//! `processors.fragment.Fragment` holds, its payload copied out of the Python heap and its
//! root span info unboxed, with the way back to Python objects for a trace that leaves.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::cache::TraceId;
use crate::fragment::{Fragment, RootInfo};
use crate::packed::{Frames, Packed};

/// A `processors.fragment.RootInfo`'s fields.
struct Root {
    service: Py<PyString>, // shared by the fragments of one request
    name: Py<PyString>, // interned by split: one object per distinct root name
    start: u64,
    end: u64,
}

/// Laid out small (80 bytes): a buffer holds one or more per trace.
pub struct Stored {
    pub payload: Packed,
    pub start: u64,
    pub end: u64,
    pub received: u64,
    root: Option<Box<Root>>,
    source: (i64, i64), // (partition, offset); partition NO_SOURCE: none
    spans: u32,         // of one request (the buffer refuses more than 2^32 - 1)
    pub error: bool,
}

const NO_SOURCE: i64 = i64::MIN;

impl Stored {
    /// From a `Fragment` of trace `id` (the object is not kept).
    pub fn read(py: Python<'_>, f: &Fragment, id: &TraceId, frames: &mut Frames) -> Self {
        Stored {
            payload: Packed::pack(f.payload.bind(py).as_bytes(), id, frames),
            spans: u32::try_from(f.span_count).expect("checked by the buffer"),
            start: f.start_ns,
            end: f.end_ns,
            error: f.has_error,
            root: f.root.as_ref().map(|root| {
                let root = root.borrow(py);
                Box::new(Root {
                    service: root.service.clone_ref(py),
                    name: root.name.clone_ref(py),
                    start: root.start_ns,
                    end: root.end_ns,
                })
            }),
            received: f.received_ns,
            source: f.source.unwrap_or((NO_SOURCE, 0)),
        }
    }

    pub fn spans(&self) -> u64 {
        u64::from(self.spans)
    }

    /// Where a durable queue holds it: (partition, offset), or None.
    pub fn source(&self) -> Option<(i64, i64)> {
        (self.source.0 != NO_SOURCE).then_some(self.source)
    }

    /// Start of the root span, if this fragment has it.
    pub fn root_start(&self) -> Option<u64> {
        self.root.as_ref().map(|r| r.start)
    }

    /// Its root span info as a new `RootInfo`, or None.
    pub fn root_info(&self, py: Python<'_>) -> PyResult<Option<Py<RootInfo>>> {
        self.root.as_ref().map(|r| Py::new(py, RootInfo {
            service: r.service.clone_ref(py), name: r.name.clone_ref(py), start_ns: r.start, end_ns: r.end,
        })).transpose()
    }

    /// The `Fragment` again, with ``root`` as its root span info.
    pub fn to_python(&self, py: Python<'_>, id: &TraceId, root: Option<Py<RootInfo>>) -> PyResult<Py<Fragment>> {
        Py::new(py, Fragment {
            trace_id: PyBytes::new(py, id).unbind(), payload: PyBytes::new(py, &self.payload.unpack(id)).unbind(), span_count: self.spans(),
            start_ns: self.start, end_ns: self.end, has_error: self.error, root, received_ns: self.received, source: self.source(),
        })
    }

    /// Bytes it holds outside the Python heap.
    pub fn native_bytes(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<Packed>() + self.payload.native_bytes() + self.root.as_ref().map_or(0, |_| std::mem::size_of::<Root>())
    }
}

// one or more per buffered trace: a layout change that grows it fails the build
const _: () = assert!(std::mem::size_of::<Stored>() == 80);
