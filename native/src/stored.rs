//! A buffered fragment in native memory (`buffer.rs` holds these per trace): what a
//! `processors.fragment.Fragment` holds, its payload copied out of the Python heap and its
//! root span info unboxed, with the way back to Python objects for a trace that leaves.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::cache::TraceId;
use crate::fragment::{Fragment, RootInfo};

/// A `processors.fragment.RootInfo`'s fields.
struct Root {
    service: Py<PyString>, // shared by the fragments of one request
    name: Box<str>,
    start: u64,
    end: u64,
}

pub struct Stored {
    pub payload: Box<[u8]>,
    pub spans: u64,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    root: Option<Box<Root>>,
    pub received: u64,
    pub source: Option<(i64, i64)>,
}

impl Stored {
    /// From a `Fragment` (the object is not kept).
    pub fn read(py: Python<'_>, f: &Fragment) -> Self {
        Stored {
            payload: f.payload.bind(py).as_bytes().into(),
            spans: f.span_count,
            start: f.start_ns,
            end: f.end_ns,
            error: f.has_error,
            root: f.root.as_ref().map(|root| {
                let root = root.borrow(py);
                Box::new(Root {
                    service: root.service.clone_ref(py),
                    name: root.name.bind(py).to_string_lossy().into(),
                    start: root.start_ns,
                    end: root.end_ns,
                })
            }),
            received: f.received_ns,
            source: f.source,
        }
    }

    /// Start of the root span, if this fragment has it.
    pub fn root_start(&self) -> Option<u64> {
        self.root.as_ref().map(|r| r.start)
    }

    /// Its root span info as a new `RootInfo`, or None.
    pub fn root_info(&self, py: Python<'_>) -> PyResult<Option<Py<RootInfo>>> {
        self.root.as_ref().map(|r| Py::new(py, RootInfo {
            service: r.service.clone_ref(py), name: PyString::new(py, &r.name).unbind(), start_ns: r.start, end_ns: r.end,
        })).transpose()
    }

    /// The `Fragment` again, with ``root`` as its root span info.
    pub fn to_python(&self, py: Python<'_>, id: &TraceId, root: Option<Py<RootInfo>>) -> PyResult<Py<Fragment>> {
        Py::new(py, Fragment {
            trace_id: PyBytes::new(py, id).unbind(), payload: PyBytes::new(py, &self.payload).unbind(), span_count: self.spans,
            start_ns: self.start, end_ns: self.end, has_error: self.error, root, received_ns: self.received, source: self.source,
        })
    }

    /// Bytes it holds outside the Python heap.
    pub fn native_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.payload.len() + self.root.as_ref().map_or(0, |r| std::mem::size_of::<Root>() + r.name.len())
    }
}
