//! Validation of an OTLP `ExportTraceServiceRequest`, at least as strict as upb's parse,
//! and the little the receiver reads before it knows whether it must decode the request.
//!
//! Most requests need no change (no secret, no name to normalise): for them the receiver
//! works on the bytes alone, and upb's full decode (objects for every span and attribute)
//! is skipped. What the decode guaranteed must hold all the same, so this walk descends
//! into every message field of the OTLP schema and checks what upb checks: the wire format,
//! UTF-8 in every `string` field, and the nesting limit.
//!
//! Where upb's rules are finer than this walk cares to be (groups, over-long tags or
//! lengths), it refuses, and the caller hands the body to upb as before: a body this walk
//! accepts, upb accepts; the converse is not promised. `tests/test_wire_contract.py` holds
//! it to that, and to giving what the decoded request gives.

use crate::wire::{Result, WireError};
use crate::Map;

/// upb's nesting limit: messages below this depth (the request is at 0) are refused.
const MAX_DEPTH: u32 = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
}

/// What a length-delimited field of a message is, in the OTLP schema (opentelemetry-proto
/// as the installed `opentelemetry-proto` package has it; the test walks its descriptors).
enum Kind {
    Text,
    /// `AnyValue.bytes_value`: no UTF-8 to check, but a secret can hide in it all the same.
    Bytes,
    Message(Msg),
    Other,
}

fn kind(m: Msg, field: u32) -> Kind {
    use Msg::*;
    match (m, field) {
        (Request, 1) => Kind::Message(ResourceSpans),
        (ResourceSpans, 1) => Kind::Message(Resource),
        (ResourceSpans, 2) => Kind::Message(ScopeSpans),
        (Resource, 1) | (Scope, 3) | (KvList, 1) | (Span, 9) | (Event, 3) | (Link, 4) => Kind::Message(KeyValue),
        (Resource, 3) => Kind::Message(EntityRef),
        (KeyValue, 2) | (ArrayValue, 1) => Kind::Message(AnyValue),
        (AnyValue, 5) => Kind::Message(ArrayValue),
        (AnyValue, 7) => Kind::Bytes,
        (AnyValue, 6) => Kind::Message(KvList),
        (ScopeSpans, 1) => Kind::Message(Scope),
        (ScopeSpans, 2) => Kind::Message(Span),
        (Span, 11) => Kind::Message(Event),
        (Span, 13) => Kind::Message(Link),
        (Span, 15) => Kind::Message(Status),
        (ResourceSpans, 3) | (KeyValue, 1) | (AnyValue, 1) | (EntityRef, 1..=4) | (ScopeSpans, 3) | (Scope, 1 | 2)
        | (Span, 3 | 5) | (Event, 2) | (Link, 3) | (Status, 2) => Kind::Text,
        _ => Kind::Other,
    }
}

/// A varint of at most `max` bytes (upb's limit for tags and lengths is 5).
#[inline]
fn varint(buf: &[u8], pos: &mut usize, max: usize) -> Result<u64> {
    if let Some(&byte) = buf.get(*pos) {
        if byte < 0x80 {
            *pos += 1; // most tags and lengths fit in one byte
            return Ok(u64::from(byte));
        }
    }
    let mut out = 0u64;
    for i in 0..max {
        let byte = *buf.get(*pos).ok_or(WireError("truncated varint"))?;
        *pos += 1;
        if i < 10 {
            out |= u64::from(byte & 0x7f) << (7 * i).min(63);
        }
        if byte & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(WireError("varint too long"))
}

/// A request's span count, its distinct span names (in order of first use), each
/// `ResourceSpans`' resource, and its text: every string and `bytes_value` field, each
/// followed by a newline. The redactor's prefilter scans the text instead of the body: every
/// place a secret can be is in it, and the ids, timestamps and framing (about half of a
/// typical body) are not, so the scan costs half as much.
pub struct Survey<'a> {
    pub spans: usize,
    pub names: Vec<&'a [u8]>,
    seen: Map<&'a [u8], ()>,
    pub resources: Vec<&'a [u8]>,
    pub text: Vec<u8>,
}

fn check<'a>(buf: &'a [u8], m: Msg, depth: u32, s: &mut Survey<'a>) -> Result<()> {
    let mut pos = 0;
    let mut name: &'a [u8] = &[];
    while pos < buf.len() {
        let tag = varint(buf, &mut pos, 5)?;
        let field = u32::try_from(tag >> 3).map_err(|_| WireError("invalid field number"))?;
        if field == 0 || tag > u64::from(u32::MAX) {
            return Err(WireError("invalid field number"));
        }
        match tag & 7 {
            0 => {
                varint(buf, &mut pos, 10)?;
            }
            1 | 5 => {
                pos += if tag & 7 == 1 { 8 } else { 4 };
                if pos > buf.len() {
                    return Err(WireError("truncated field"));
                }
            }
            2 => {
                let n = varint(buf, &mut pos, 5)?;
                let n = usize::try_from(n).ok().filter(|&n| n <= i32::MAX as usize).ok_or(WireError("length overflows"))?;
                let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or(WireError("truncated field"))?;
                let value = &buf[pos..end];
                pos = end;
                match kind(m, field) {
                    text @ (Kind::Text | Kind::Bytes) => {
                        // ASCII (most text) is checked a word at a time, without from_utf8's call
                        if matches!(text, Kind::Text) && !value.is_ascii() {
                            std::str::from_utf8(value).map_err(|_| WireError("a string field is not valid UTF-8"))?;
                        }
                        s.text.extend_from_slice(value);
                        s.text.push(b'\n');
                        if m == Msg::Span && field == 5 {
                            name = value; // the last occurrence wins
                        }
                    }
                    Kind::Message(sub) => {
                        if depth + 1 > MAX_DEPTH {
                            return Err(WireError("messages nested too deep"));
                        }
                        check(value, sub, depth + 1, s)?;
                        if m == Msg::Request {
                            s.resources.push(value);
                        }
                    }
                    Kind::Other => {}
                }
            }
            _ => return Err(WireError("a group or an invalid wire type: left to the full parser")),
        }
    }
    if m == Msg::Span {
        s.spans += 1;
        if s.seen.insert(name, ()).is_none() {
            s.names.push(name);
        }
    }
    Ok(())
}

/// Validates `body` and surveys it (see the module's documentation).
pub fn survey(body: &[u8]) -> Result<Survey<'_>> {
    let mut s = Survey { spans: 0, names: Vec::new(), seen: Map::default(), resources: Vec::new(),
                         text: Vec::with_capacity(body.len() / 2) };
    check(body, Msg::Request, 0, &mut s)?;
    Ok(s)
}
