//! A buffered fragment in native memory (`buffer.rs` holds these per trace): what a
//! `processors.fragment.Fragment` holds, its payload copied out of the Python heap and its
//! root span info unboxed, with the way back to Python objects for a trace that leaves.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::cache::TraceId;

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
    pub received: i64,
    pub source: Option<(i64, i64)>,
}

impl Stored {
    /// From a `Fragment` of ``spans`` spans (the object is not kept).
    pub fn read(f: &Bound<'_, PyAny>, spans: u64) -> PyResult<Self> {
        let py = f.py();
        let root = f.getattr(intern!(py, "root"))?;
        Ok(Stored {
            payload: f.getattr(intern!(py, "payload"))?.cast::<PyBytes>()?.as_bytes().into(),
            spans,
            start: f.getattr(intern!(py, "start_ns"))?.extract()?,
            end: f.getattr(intern!(py, "end_ns"))?.extract()?,
            error: f.getattr(intern!(py, "has_error"))?.extract()?,
            root: if root.is_none() { None } else {
                Some(Box::new(Root {
                    service: root.getattr(intern!(py, "service"))?.cast_into::<PyString>()?.unbind(),
                    name: root.getattr(intern!(py, "name"))?.extract::<String>()?.into_boxed_str(),
                    start: root.getattr(intern!(py, "start_ns"))?.extract()?,
                    end: root.getattr(intern!(py, "end_ns"))?.extract()?,
                }))
            },
            received: f.getattr(intern!(py, "received_ns"))?.extract()?,
            source: f.getattr(intern!(py, "source"))?.extract()?,
        })
    }

    /// Start of the root span, if this fragment has it.
    pub fn root_start(&self) -> Option<u64> {
        self.root.as_ref().map(|r| r.start)
    }

    /// Its root span info as a new `RootInfo` (``cls``), or None.
    pub fn root_info(&self, cls: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = cls.py();
        Ok(match &self.root {
            Some(r) => cls.call1((r.service.clone_ref(py), &*r.name, r.start, r.end))?.unbind(),
            None => py.None(),
        })
    }

    /// The `Fragment` (``cls``) again, with ``root`` as its root span info.
    pub fn to_python<'py>(&self, cls: &Bound<'py, PyAny>, id: &TraceId, root: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        cls.call1((PyBytes::new(py, id), PyBytes::new(py, &self.payload), self.spans, self.start, self.end, self.error,
                   root, self.received, self.source))
    }

    /// Bytes it holds outside the Python heap.
    pub fn native_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.payload.len() + self.root.as_ref().map_or(0, |r| std::mem::size_of::<Root>() + r.name.len())
    }
}
