//! Attribute values as the span rows store them (`rows.rs`): an `AnyValue`'s text and type
//! name exactly as `processors.otlp_values.typed_attributes` gives them, and a `KeyValue`
//! list as its two ordered maps. What only Python can say (a double's `str`, a composite's
//! JSON, a TraceState with its threshold, an odd `service.name`) is asked of it through
//! `Helpers`, once per distinct TraceState.

use crate::Map;
use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyString};

use crate::otlp::attributes;
use crate::wire::{each, Merged, Result, Value, WireError};

/// An `AnyValue`'s set member: the last one on the wire wins, as in upb.
pub enum Any<'a> {
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Composite(&'static str),
}

pub fn any(value: &[u8]) -> Result<Any<'_>> {
    let mut out = Any::Empty;
    each(value, |field, v| {
        out = match (field, v) {
            (1, Value::Bytes(b)) => Any::Str(b),
            (2, Value::Varint(n)) => Any::Bool(n != 0),
            (3, Value::Varint(n)) => Any::Int(n as i64),
            (4, Value::Fixed64(n)) => Any::Double(f64::from_bits(n)),
            (5, Value::Bytes(_)) => Any::Composite("array"),
            (6, Value::Bytes(_)) => Any::Composite("kvlist"),
            (7, Value::Bytes(_)) => Any::Composite("bytes"),
            _ => return Ok(()),
        };
        Ok(())
    })?;
    Ok(out)
}

/// Calls into Python, with what they returned remembered for the rest of the trace.
pub struct Helpers<'py> {
    pub py: Python<'py>,
    state: Bound<'py, PyAny>,
    render: Bound<'py, PyAny>,
    service: Bound<'py, PyAny>,
    states: Map<Vec<u8>, Vec<u8>>,
}

impl<'py> Helpers<'py> {
    pub fn text(&self, f: &Bound<'py, PyAny>, arg: Bound<'py, PyAny>) -> PyResult<Vec<u8>> {
        Ok(f.call1((arg,))?.cast::<PyString>()?.to_str()?.as_bytes().to_vec())
    }

    /// A resource's `service.name` as the reference reads it (see [`service_name`]), a
    /// value that is not a string rendered by Python's `str` of it (through `service`).
    pub fn service_of(&self, resource: &[u8]) -> PyResult<Vec<u8>> {
        match service_name(resource).map_err(crate::malformed)? {
            Ok(text) => Ok(text),
            Err(raw) => self.text(&self.service, PyBytes::new(self.py, &raw).into_any()),
        }
    }

    /// The stored text of an attribute value and its type name (None for a string or unset).
    pub fn value<'a>(&self, raw: &'a [u8]) -> PyResult<(Cow<'a, [u8]>, Option<&'static str>)> {
        Ok(match any(raw).map_err(crate::malformed)? {
            Any::Empty => (Cow::Borrowed(&[]), None),
            Any::Str(s) => (Cow::Borrowed(s), None),
            Any::Bool(b) => (Cow::Borrowed(if b { b"true" } else { b"false" }), Some("bool")),
            Any::Int(n) => (Cow::Owned(n.to_string().into_bytes()), Some("int")),
            Any::Double(x) => (Cow::Owned(PyFloat::new(self.py, x).str()?.to_str()?.as_bytes().to_vec()), Some("double")),
            Any::Composite(kind) => (Cow::Owned(self.text(&self.render, PyBytes::new(self.py, raw).into_any())?), Some(kind)),
        })
    }

    pub fn trace_state(&mut self, raw: &[u8]) -> PyResult<Vec<u8>> {
        if let Some(done) = self.states.get(raw) {
            return Ok(done.clone());
        }
        let text = std::str::from_utf8(raw).map_err(|_| crate::malformed(WireError("TraceState is not UTF-8")))?;
        let done = self.text(&self.state, PyString::new(self.py, text).into_any())?;
        self.states.insert(raw.to_vec(), done.clone());
        Ok(done)
    }
}

/// A `KeyValue` list as the two maps the reference builds: values by key (first position,
/// last value) and the types of non-string values (first position among them, last type).
#[derive(Default)]
pub struct Typed<'a> {
    pub values: Ordered<'a, Cow<'a, [u8]>>,
    pub types: Ordered<'a, &'static str>,
}

/// Pairs in order of each key's first use; a hash index once there are many (a span with
/// thousands of attributes must not cost a quadratic scan).
pub struct Ordered<'a, V> {
    pub items: Vec<(&'a [u8], V)>,
    /// Made only past `INDEX_FROM` pairs: a hasher's random state costs more than the scan.
    index: Option<Map<&'a [u8], usize>>,
}

impl<V> Default for Ordered<'_, V> {
    fn default() -> Self {
        Ordered { items: Vec::new(), index: None }
    }
}

const INDEX_FROM: usize = 16;

impl<'a, V> Ordered<'a, V> {
    fn position(&self, key: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.items.iter().position(|(k, _)| *k == key),
        }
    }

    fn upsert(&mut self, key: &'a [u8], value: V) {
        match self.position(key) {
            Some(i) => self.items[i].1 = value,
            None => {
                self.items.push((key, value));
                let at = self.items.len() - 1;
                match &mut self.index {
                    Some(index) => {
                        index.insert(key, at);
                    }
                    None if self.items.len() > INDEX_FROM => {
                        self.index = Some(self.items.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect());
                    }
                    None => {}
                }
            }
        }
    }
}

impl<'a> Typed<'a> {
    pub fn read(h: &Helpers<'_>, message: &'a [u8], number: u32) -> PyResult<Self> {
        let mut pairs: Vec<(&'a [u8], Merged<'a>)> = Vec::new();
        attributes(message, number, |key, value| pairs.push((key, value))).map_err(crate::malformed)?;
        let mut out = Typed::default();
        for &(key, ref value) in &pairs {
            let (text, kind) = match value.borrowed() {
                Some(raw) => h.value(raw)?,
                None => {
                    let (text, kind) = h.value(value.bytes())?;
                    (Cow::Owned(text.into_owned()), kind)
                }
            };
            out.values.upsert(key, text);
            if let Some(kind) = kind {
                out.types.upsert(key, kind);
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values.position(key).map(|i| self.values.items[i].1.as_ref())
    }
}

/// A resource's `service.name` as `processors.otlp_values.service_name` reads it: the first
/// such key, its text if it is a string (Ok), else its `AnyValue` bytes for Python to render
/// (Err); `unknown_service` without one.
pub fn service_name(resource: &[u8]) -> Result<std::result::Result<Vec<u8>, Vec<u8>>> {
    let mut first: Option<Merged<'_>> = None;
    attributes(resource, 1, |key, value| {
        if first.is_none() && key == b"service.name" {
            first = Some(value);
        }
    })?;
    let Some(value) = first else { return Ok(Ok(b"unknown_service".to_vec())) };
    Ok(match any(value.bytes())? {
        Any::Str(text) => Ok(text.to_vec()),
        _ => Err(value.bytes().to_vec()),
    })
}

pub fn helpers<'py>(py: Python<'py>, state: Bound<'py, PyAny>, render: Bound<'py, PyAny>, service: Bound<'py, PyAny>) -> Helpers<'py> {
    Helpers { py, state, render, service, states: Map::default() }
}
