//! One walk over an OTLP `ExportTraceServiceRequest` (or `TracesData`: the same fields),
//! calling back once per span with the few fields the hot path reads.

use crate::wire::{each, Merged, Reader, Result, Value, WireError};

/// A `ResourceSpans` or `ScopeSpans` header: its resource or scope (merged occurrences) and
/// schema url, which the split writes once per fragment.
pub struct Header<'a> {
    pub index: usize,
    pub message: Merged<'a>,
    pub schema_url: &'a [u8],
}

/// The fields of one span the hot path reads; `raw` is the whole span, copied as is.
pub struct Span<'a> {
    pub raw: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent: &'a [u8],
    pub name: &'a [u8],
    pub start: u64,
    pub end: u64,
    pub code: i32,
    pub trace_state: &'a [u8],
    /// The stretch of `raw` from its first attribute (field 9) to the end of its last: the
    /// span metrics read attributes there, without walking the other fields again.
    pub attributes: &'a [u8],
}

fn read_span(raw: &[u8]) -> Result<Span<'_>> {
    let mut s = Span { raw, trace_id: &[], span_id: &[], parent: &[], name: &[], start: 0, end: 0, code: 0, trace_state: &[],
                       attributes: &[] };
    let mut status = Merged::default();
    let mut attributes = (usize::MAX, 0);
    let mut r = Reader::new(raw);
    loop {
        let at = r.position();
        let Some((field, value)) = r.next()? else { break };
        match (field, value) {
            (1, Value::Bytes(b)) => s.trace_id = b,
            (2, Value::Bytes(b)) => s.span_id = b,
            (3, Value::Bytes(b)) => s.trace_state = b,
            (4, Value::Bytes(b)) => s.parent = b,
            (5, Value::Bytes(b)) => s.name = b,
            (7, Value::Fixed64(v)) => s.start = v,
            (8, Value::Fixed64(v)) => s.end = v,
            (15, Value::Bytes(b)) => status.push(b),
            (9, Value::Bytes(_)) => attributes = (attributes.0.min(at), r.position()),
            _ => {}
        }
    }
    if attributes.0 != usize::MAX {
        s.attributes = &raw[attributes.0..attributes.1];
    }
    if status.present() {
        each(status.bytes(), |field, value| {
            if let (3, Value::Varint(v)) = (field, value) {
                s.code = v as i32; // an enum is an int32 on the wire
            }
            Ok(())
        })?;
    }
    if !s.name.is_ascii() && std::str::from_utf8(s.name).is_err() {
        return Err(WireError("span name is not valid UTF-8"));
    }
    Ok(s)
}

/// A `ResourceSpans` or `ScopeSpans`: its resource or scope (field 1, occurrences merged),
/// its children (field 2: scope spans or spans, in order) and its schema url (field 3).
pub fn parts(message: &[u8]) -> Result<(Merged<'_>, Vec<&[u8]>, &[u8])> {
    let (mut header, mut children, mut schema_url) = (Merged::default(), Vec::new(), &[][..]);
    each(message, |field, value| {
        match (field, value) {
            (1, Value::Bytes(b)) => header.push(b),
            (2, Value::Bytes(b)) => children.push(b),
            (3, Value::Bytes(b)) => schema_url = b,
            _ => {}
        }
        Ok(())
    })?;
    Ok((header, children, schema_url))
}

/// Calls `visit(resource, scope, span)` for every span, in request order.
pub fn walk<'a>(body: &'a [u8], mut visit: impl FnMut(&Header<'a>, &Header<'a>, &Span<'a>) -> Result<()>) -> Result<()> {
    let mut ri = 0;
    let mut top = Reader::new(body);
    while let Some((field, value)) = top.next()? {
        let rs = match (field, value) {
            (1, Value::Bytes(b)) => b,
            _ => continue,
        };
        let (message, scopes, schema_url) = parts(rs)?;
        let resource = Header { index: ri, message, schema_url };
        for (si, ss) in scopes.into_iter().enumerate() {
            let (message, spans, schema_url) = parts(ss)?;
            let scope = Header { index: si, message, schema_url };
            for raw in spans {
                visit(&resource, &scope, &read_span(raw)?)?;
            }
        }
        ri += 1;
    }
    Ok(())
}

/// `(key, value)` of every `KeyValue` in a list of attribute fields (field `number` of
/// `message`), value occurrences merged. Duplicate keys are all reported, in order.
pub fn attributes<'a>(message: &'a [u8], number: u32, mut f: impl FnMut(&'a [u8], Merged<'a>)) -> Result<()> {
    each(message, |field, value| {
        if let (n, Value::Bytes(kv)) = (field, value) {
            if n == number {
                let mut key: &[u8] = &[];
                let mut val = Merged::default();
                each(kv, |field, value| {
                    match (field, value) {
                        (1, Value::Bytes(b)) => key = b,
                        (2, Value::Bytes(b)) => val.push(b),
                        _ => {}
                    }
                    Ok(())
                })?;
                f(key, val);
            }
        }
        Ok(())
    })
}
