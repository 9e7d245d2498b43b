//! Buffered payloads, packed: what the trace buffer keeps of a fragment's bytes while the
//! trace waits for its decision.
//!
//! A fragment's payload is a whole OTLP `TracesData` for one trace: its resource and scope
//! are written out again in every fragment, and every span repeats the trace id the buffer
//! already files it under. For the LLM shape that is ~90 bytes of framing a trace and 18
//! bytes a span, about a third more than the spans' share of the request. Packed, a payload
//! in split's own form (one resource, one scope: what split writes for a trace whose spans
//! came under one scope) keeps its framing once per distinct framing, shared by reference
//! count, and each span without a leading trace id field equal to the key. `unpack` gives
//! the payload back byte for byte (`put_chunk` writes it, as split did); a payload in any
//! other form is kept as it came.

use std::borrow::{Borrow, Cow};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::mem::size_of;
use std::sync::Arc;

use crate::cache::TraceId;
use crate::wire::{chunk_lens, field_len, get_varint as varint, put_chunk, put_field, put_header, put_varint, varint_len, Framing};

/// A framing as `Frames::intern` keys it, shared: a thin pointer (8 bytes in each packed
/// payload, where an `Arc<[u8]>` would take 16), equal and hashed as its bytes.
#[derive(Clone)]
struct Frame(Arc<Box<[u8]>>);

impl Borrow<[u8]> for Frame {
    fn borrow(&self) -> &[u8] {
        &self.0[..]
    }
}

impl Hash for Frame {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0[..].hash(state) // as the `[u8]` it is looked up by
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}

impl Eq for Frame {}

/// The framings of buffered payloads, each held once (`Arc`'s count says by how many).
#[derive(Default)]
pub struct Frames {
    set: HashSet<Frame, ahash::RandomState>,
    swept: usize,
    scratch: Vec<u8>, // the key being looked up: no allocation for a framing already held
}

impl Frames {
    fn intern(&mut self, frame: &Framing) -> Frame {
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        for (number, part) in (1..).zip(frame) {
            put_field(&mut key, number, part);
        }
        let frame = match self.set.get(&key[..]) {
            Some(frame) => frame.clone(),
            None => {
                if self.set.len() >= 2 * self.swept + 64 {
                    // framings no payload holds any more (amortised: at most once per doubling)
                    self.set.retain(|frame| Arc::strong_count(&frame.0) > 1);
                    self.swept = self.set.len();
                }
                let frame = Frame(Arc::new(key[..].into()));
                self.set.insert(frame.clone());
                frame
            }
        };
        self.scratch = key;
        frame
    }

    pub fn native_bytes(&self) -> usize {
        // each: a table slot, then the Arc's counts and box, then the bytes
        self.set.capacity() * (size_of::<Frame>() + 1) + self.set.iter().map(|f| 32 + f.0.len()).sum::<usize>()
    }
}

pub struct Packed {
    frame: Option<Frame>, // None: `bytes` is the payload as it came
    bytes: Box<[u8]>,     // else per span: varint(length << 1 | trace id left out), the span's bytes
}

/// Reads field `tag` (a one-byte tag of a length-delimited field) at `at`, its length a
/// minimal varint (as `put_header` writes it), or None.
fn field<'a>(buf: &'a [u8], at: &mut usize, tag: u8) -> Option<&'a [u8]> {
    if buf.get(*at) != Some(&tag) {
        return None;
    }
    let mut pos = *at + 1;
    let len = varint(buf, &mut pos)?;
    if pos - *at - 1 != varint_len(len) {
        return None;
    }
    let end = pos.checked_add(usize::try_from(len).ok()?)?;
    let out = buf.get(pos..end)?;
    *at = end;
    Some(out)
}

/// A non-empty optional field at the end of `buf` (split leaves empty ones out).
fn last_optional<'a>(buf: &'a [u8], at: &mut usize, tag: u8) -> Option<&'a [u8]> {
    if *at == buf.len() {
        return Some(&[]);
    }
    field(buf, at, tag).filter(|s| !s.is_empty() && *at == buf.len())
}

/// A payload in split's form: (its framing, its ScopeSpans, where the span fields begin
/// and end in it), or None.
fn canonical(payload: &[u8]) -> Option<(Framing<'_>, &[u8], usize, usize)> {
    let mut at = 0;
    let rs = field(payload, &mut at, 0x0a).filter(|_| at == payload.len())?;
    let mut i = 0;
    let resource = field(rs, &mut i, 0x0a)?;
    let ss = field(rs, &mut i, 0x12)?;
    let rs_schema = last_optional(rs, &mut i, 0x1a)?;
    let mut j = 0;
    let scope = field(ss, &mut j, 0x0a)?;
    let begin = j;
    while ss.get(j) == Some(&0x12) {
        field(ss, &mut j, 0x12)?;
    }
    let end = j;
    let ss_schema = last_optional(ss, &mut j, 0x1a)?;
    Some(([resource, rs_schema, scope, ss_schema], ss, begin, end))
}

/// A framing as `Frames::intern` keys it.
fn frame_parts(key: &[u8]) -> Framing<'_> {
    let mut at = 0;
    let mut part = |tag| field(key, &mut at, tag).expect("written by intern");
    [part(0x0a), part(0x12), part(0x1a), part(0x22)]
}

impl Packed {
    pub fn pack(payload: &[u8], id: &TraceId, frames: &mut Frames) -> Packed {
        let Some((frame, ss, begin, end)) = canonical(payload) else {
            return Packed { frame: None, bytes: payload.into() };
        };
        // each span: (its head, the bytes kept); walked twice, to allocate the exact size
        let spans = || {
            let mut at = begin;
            std::iter::from_fn(move || {
                (at < end).then(|| {
                    let span = field(ss, &mut at, 0x12).expect("checked by canonical");
                    let left_out = span.len() >= 18 && span[..2] == [0x0a, 0x10] && span[2..18] == id[..];
                    let kept = if left_out { &span[18..] } else { span };
                    ((kept.len() as u64) << 1 | u64::from(left_out), kept)
                })
            })
        };
        let mut bytes = Vec::with_capacity(spans().map(|(head, kept)| varint_len(head) + kept.len()).sum());
        for (head, kept) in spans() {
            put_varint(&mut bytes, head);
            bytes.extend_from_slice(kept);
        }
        Packed { frame: Some(frames.intern(&frame)), bytes: bytes.into_boxed_slice() }
    }

    /// Whether the payload may contain `needle` outside its framing.
    pub fn may_contain(&self, needle: &[u8]) -> bool {
        memchr::memmem::find(&self.bytes, needle).is_some()
    }

    /// Each span: (whether its trace id field was left out, its kept bytes).
    fn spans(&self) -> impl Iterator<Item = (bool, &[u8])> {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at == self.bytes.len() {
                return None;
            }
            let head = varint(&self.bytes, &mut at).expect("written by pack");
            let len = (head >> 1) as usize;
            at += len;
            Some((head & 1 == 1, &self.bytes[at - len..at]))
        })
    }

    /// The payload as it was given to `pack`.
    pub fn unpack(&self, id: &TraceId) -> Cow<'_, [u8]> {
        let Some(key) = &self.frame else { return Cow::Borrowed(&self.bytes) };
        let frame = frame_parts(&key.0);
        let full = |(left_out, kept): (bool, &[u8])| kept.len() + if left_out { 18 } else { 0 };
        let lens = chunk_lens(&frame, self.spans().map(|s| field_len(full(s))).sum());
        let mut out = Vec::with_capacity(field_len(lens.1));
        put_chunk(&mut out, &frame, lens, |out| {
            for span in self.spans() {
                put_header(out, 2, full(span));
                if span.0 {
                    put_field(out, 1, id);
                }
                out.extend_from_slice(span.1);
            }
        });
        Cow::Owned(out)
    }

    /// Bytes it holds outside the Python heap, its shared framing not included.
    pub fn native_bytes(&self) -> usize {
        size_of::<Self>() + self.bytes.len()
    }
}
