//! Split by trace: validate ids, group spans by trace id, and write each group as one
//! serialized OTLP `TracesData` (a *fragment*), copying span bytes as they arrived.

use crate::Map;

use crate::otlp::{walk, Header, Span};
use crate::wire::{chunk_lens, field_len, put_chunk, put_field, Framing, Result};

pub const BAD_TRACE: &str = "trace_id must be 16 bytes and not all zero";
pub const BAD_SPAN: &str = "span_id must be 8 bytes and not all zero";
pub const BAD_PARENT: &str = "parent_span_id must be empty or 8 bytes";

pub struct Root<'a> {
    pub resource: usize,
    /// Valid UTF-8: `read_span` refuses a span whose name is not.
    pub name: &'a [u8],
    pub start: u64,
    pub end: u64,
}

/// One trace's spans of a request. Its payload is written on demand (`Split::payload`),
/// so a caller can write every payload into one reused buffer.
pub struct Fragment<'a> {
    pub trace_id: [u8; 16],
    pub spans: u64,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    pub root: Option<Root<'a>>,
    /// The trace's spans of its first (resource, scope), then of any other, each in arrival order.
    first: Chunk,
    more: Vec<Chunk>,
}

/// Spans of one trace under one (resource, scope): a list threaded through `Split::links`.
#[derive(Clone, Copy)]
struct Chunk {
    key: (usize, usize),
    head: usize,
    tail: usize,
    bytes: usize,
}

pub struct Split<'a> {
    pub fragments: Vec<Fragment<'a>>,
    pub rejected: u64,
    pub expired: u64,
    pub reason: Option<&'static str>,
    framing: Map<(usize, usize), [Vec<u8>; 4]>,
    /// Every accepted span, in arrival order, with the index of its chunk's next span
    /// (usize::MAX: the last). One list for the whole request: no allocation per trace.
    links: Vec<(&'a [u8], usize)>,
}

impl Split<'_> {
    /// Writes fragment `f`'s payload (a serialized `TracesData`) into `out`, after clearing it.
    pub fn payload(&self, f: &Fragment, out: &mut Vec<u8>) {
        out.clear();
        let chunks = std::iter::once(&f.first).chain(&f.more);
        let frame = |c: &Chunk| -> Framing { self.framing[&c.key].each_ref().map(Vec::as_slice) };
        out.reserve(chunks.clone().map(|c| field_len(chunk_lens(&frame(c), c.bytes).1)).sum());
        for c in chunks {
            let framing = frame(c);
            put_chunk(out, &framing, chunk_lens(&framing, c.bytes), |out| {
                let mut at = c.head;
                while at != usize::MAX {
                    let (raw, next) = self.links[at];
                    put_field(out, 2, raw);
                    at = next;
                }
            });
        }
    }
}

fn invalid(span: &Span) -> Option<&'static str> {
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|&b| b == 0) {
        return Some(BAD_TRACE);
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|&b| b == 0) {
        return Some(BAD_SPAN);
    }
    if !span.parent.is_empty() && span.parent.len() != 8 {
        return Some(BAD_PARENT);
    }
    None
}

/// Splits a request; spans that start before `oldest_ns` are rejected as expired.
pub fn split(body: &[u8], oldest_ns: u64) -> Result<Split<'_>> {
    split_with(body, oldest_ns, |_, _| Ok(()))
}

/// `split`, calling `each(resource, span)` for every span of the request first (rejected
/// ones too): the span metrics count in the same walk (`metrics::Groups::visit`).
pub fn split_with<'a>(body: &'a [u8], oldest_ns: u64, mut each: impl FnMut(&Header<'a>, &Span<'a>) -> Result<()>)
                      -> Result<Split<'a>> {
    let mut fragments: Vec<Fragment> = Vec::new();
    let mut index: Map<[u8; 16], usize> = Map::default();
    let mut framing: Map<(usize, usize), [Vec<u8>; 4]> = Map::default();
    let mut links: Vec<(&[u8], usize)> = Vec::with_capacity(body.len() / 64);
    let (mut rejected, mut expired, mut reason) = (0u64, 0u64, None);
    let mut last_key: Option<(usize, usize)> = None;
    walk(body, |resource, scope, span| {
        each(resource, span)?;
        if let Some(why) = invalid(span) {
            rejected += 1;
            reason = reason.or(Some(why));
            return Ok(());
        }
        if span.start < oldest_ns {
            rejected += 1;
            expired += 1;
            return Ok(());
        }
        let key = (resource.index, scope.index);
        if last_key != Some(key) {
            last_key = Some(key);
            framing.entry(key).or_insert_with(|| {
                [resource.message.bytes().to_vec(), resource.schema_url.to_vec(), scope.message.bytes().to_vec(),
                 scope.schema_url.to_vec()]
            });
        }
        let at = links.len();
        links.push((span.raw, usize::MAX));
        let bytes = field_len(span.raw.len());
        let trace_id: [u8; 16] = span.trace_id.try_into().unwrap();
        let fresh = Chunk { key, head: at, tail: at, bytes };
        let (f, new) = match index.get(&trace_id) {
            Some(&i) => (&mut fragments[i], false),
            None => {
                index.insert(trace_id, fragments.len());
                fragments.push(Fragment { trace_id, spans: 0, start: span.start, end: span.end, error: false,
                                          root: None, first: fresh, more: Vec::new() });
                (fragments.last_mut().expect("pushed"), true)
            }
        };
        f.spans += 1;
        f.start = f.start.min(span.start);
        f.end = f.end.max(span.end);
        f.error |= span.code == 2;
        if span.parent.is_empty() {
            f.root = Some(Root { resource: resource.index, name: span.name, start: span.start, end: span.end });
        }
        if new {
            return Ok(()); // its first chunk is this span
        }
        let chunk = if f.first.key == key { Some(&mut f.first) } else { f.more.iter_mut().find(|c| c.key == key) };
        match chunk {
            Some(c) => {
                links[c.tail].1 = at;
                c.tail = at;
                c.bytes += bytes;
            }
            None => f.more.push(fresh),
        }
        Ok(())
    })?;
    Ok(Split { fragments, rejected, expired, reason, framing, links })
}
