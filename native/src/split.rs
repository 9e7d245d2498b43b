//! Split by trace: validate ids, group spans by trace id, and write each group as one
//! serialized OTLP `TracesData` (a *fragment*), copying span bytes as they arrived.

use crate::Map;

use crate::otlp::{walk, Span};
use crate::wire::{chunk_lens, field_len, put_chunk, put_field, Framing, Result};

pub const BAD_TRACE: &str = "trace_id must be 16 bytes and not all zero";
pub const BAD_SPAN: &str = "span_id must be 8 bytes and not all zero";
pub const BAD_PARENT: &str = "parent_span_id must be empty or 8 bytes";

pub struct Root {
    pub resource: usize,
    pub name: String,
    pub start: u64,
    pub end: u64,
}

pub struct Fragment {
    pub trace_id: [u8; 16],
    pub payload: Vec<u8>,
    pub spans: u64,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    pub root: Option<Root>,
}

pub struct Split {
    pub fragments: Vec<Fragment>,
    pub rejected: u64,
    pub expired: u64,
    pub reason: Option<&'static str>,
}

struct Group<'a> {
    fragment: Fragment,
    /// (resource index, scope index) → that scope's spans of this trace, in arrival order.
    chunks: Vec<((usize, usize), Vec<&'a [u8]>)>,
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
pub fn split(body: &[u8], oldest_ns: u64) -> Result<Split> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: Map<[u8; 16], usize> = Map::default();
    let mut framing: Map<(usize, usize), [Vec<u8>; 4]> = Map::default();
    let (mut rejected, mut expired, mut reason) = (0u64, 0u64, None);
    let mut last_key: Option<(usize, usize)> = None;
    walk(body, |resource, scope, span| {
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
        let trace_id: [u8; 16] = span.trace_id.try_into().unwrap();
        let at = *index.entry(trace_id).or_insert_with(|| {
            groups.push(Group {
                fragment: Fragment { trace_id, payload: Vec::new(), spans: 0, start: span.start, end: span.end,
                                     error: false, root: None },
                chunks: Vec::new(),
            });
            groups.len() - 1
        });
        let group = &mut groups[at];
        let f = &mut group.fragment;
        f.spans += 1;
        f.start = f.start.min(span.start);
        f.end = f.end.max(span.end);
        f.error |= span.code == 2;
        if span.parent.is_empty() {
            let name = String::from_utf8_lossy(span.name).into_owned();
            f.root = Some(Root { resource: resource.index, name, start: span.start, end: span.end });
        }
        match group.chunks.iter_mut().find(|(k, _)| *k == key) {
            Some((_, spans)) => spans.push(span.raw),
            None => group.chunks.push((key, vec![span.raw])),
        }
        Ok(())
    })?;
    // Each payload is written once, into a buffer of its exact size: no scratch copies of
    // the spans, no growth by doubling (a request of large spans would otherwise hold
    // several copies of each at once).
    let mut fragments = Vec::with_capacity(groups.len());
    for mut group in groups {
        let mut parts = Vec::with_capacity(group.chunks.len());
        let mut total = 0;
        for (key, spans) in &group.chunks {
            let frame: Framing = framing[key].each_ref().map(Vec::as_slice);
            let lens = chunk_lens(&frame, spans.iter().map(|s| field_len(s.len())).sum());
            total += field_len(lens.1);
            parts.push((frame, lens));
        }
        let payload = &mut group.fragment.payload;
        payload.reserve_exact(total);
        for ((_, spans), (frame, lens)) in group.chunks.iter().zip(parts) {
            put_chunk(payload, &frame, lens, |out| {
                for s in spans {
                    put_field(out, 2, s);
                }
            });
        }
        debug_assert_eq!(payload.len(), total);
        fragments.push(group.fragment);
    }
    Ok(Split { fragments, rejected, expired, reason })
}
