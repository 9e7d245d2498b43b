//! A protobuf wire-format reader over borrowed bytes: no allocation, no copies.
//!
//! Semantics follow the protobuf spec as upb (Python's parser) applies them, so that what
//! this reads agrees with the decoded request: the last occurrence of a scalar field wins,
//! occurrences of a message field merge (callers concatenate them), a known field with an
//! unexpected wire type is an unknown field, and unknown fields (groups included) are
//! skipped.

pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
    Group,
}

#[derive(Debug)]
pub struct WireError(pub &'static str);

pub type Result<T> = std::result::Result<T, WireError>;

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Where the next field starts.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    fn varint(&mut self) -> Result<u64> {
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1; // most tags and lengths fit in one byte
                return Ok(u64::from(byte));
            }
        }
        let mut out: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(WireError("truncated varint"))?;
            self.pos += 1;
            if shift < 64 {
                out |= u64::from(byte & 0x7f) << shift;
            }
            if byte & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(WireError("length overflows"))?;
        let out = self.buf.get(self.pos..end).ok_or(WireError("truncated field"))?;
        self.pos = end;
        Ok(out)
    }

    /// Skips a group's fields up to its end tag (nested groups included).
    fn skip_group(&mut self, number: u64, depth: u32) -> Result<()> {
        if depth > 64 {
            return Err(WireError("groups nested too deep"));
        }
        loop {
            if self.pos >= self.buf.len() {
                return Err(WireError("unterminated group"));
            }
            let tag = self.varint()?;
            let (field, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = self.varint()? as usize;
                    self.take(n)?;
                }
                3 => self.skip_group(field, depth + 1)?,
                4 if field == number => return Ok(()),
                5 => {
                    self.take(4)?;
                }
                _ => return Err(WireError("bad wire type in group")),
            }
        }
    }

    /// The next (field number, value), or None at the end.
    #[inline]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(WireError("invalid field number"));
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| WireError("length overflows"))?;
                Value::Bytes(self.take(n)?)
            }
            3 => {
                self.skip_group(field, 0)?;
                Value::Group
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return Err(WireError("invalid wire type")),
        };
        Ok(Some((field as u32, value)))
    }
}

/// Calls `f` with every (field, value) of a message.
pub fn each<'a>(buf: &'a [u8], mut f: impl FnMut(u32, Value<'a>) -> Result<()>) -> Result<()> {
    let mut r = Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        f(field, value)?;
    }
    Ok(())
}

/// The varint at `at` (moved past it), or None if it is cut short or over 64 bits long.
pub fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n > 0x7f {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field (wire type 2).
pub fn put_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_header(out, number, payload.len());
    out.extend_from_slice(payload);
}

/// The tag and length of a length-delimited field whose `len` bytes follow.
pub fn put_header(out: &mut Vec<u8>, number: u32, len: usize) {
    put_varint(out, u64::from(number) << 3 | 2);
    put_varint(out, len as u64);
}

pub fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n > 0x7f {
        n >>= 7;
        len += 1;
    }
    len
}

/// Bytes a length-delimited field with a payload of `len` bytes takes (field numbers < 16).
pub fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// One resource's scope, as a fragment frames its spans: [resource, the resource's
/// schema_url, scope, the scope's schema_url] (empty schema URLs are left out).
pub type Framing<'a> = [&'a [u8]; 4];

/// The (ScopeSpans, ResourceSpans) lengths around span fields that take `spans` bytes.
pub fn chunk_lens(frame: &Framing, spans: usize) -> (usize, usize) {
    let [resource, rs_schema, scope, ss_schema] = frame;
    let optional = |s: &[u8]| if s.is_empty() { 0 } else { field_len(s.len()) };
    let ss_len = field_len(scope.len()) + spans + optional(ss_schema);
    (ss_len, field_len(resource.len()) + field_len(ss_len) + optional(rs_schema))
}

/// Writes one `ResourceSpans` (a `TracesData` field) holding one `ScopeSpans`, whose span
/// fields `spans` writes; `lens` from `chunk_lens`. Split and the buffer's packed payloads
/// write fragments with this, so a payload unpacked is byte for byte the one split wrote.
pub fn put_chunk(out: &mut Vec<u8>, frame: &Framing, lens: (usize, usize), spans: impl FnOnce(&mut Vec<u8>)) {
    let [resource, rs_schema, scope, ss_schema] = frame;
    put_header(out, 1, lens.1);
    put_field(out, 1, resource);
    put_header(out, 2, lens.0);
    put_field(out, 1, scope);
    spans(out);
    if !ss_schema.is_empty() {
        put_field(out, 3, ss_schema);
    }
    if !rs_schema.is_empty() {
        put_field(out, 3, rs_schema);
    }
}

/// An embedded message: occurrences of the same field merge, which concatenating their
/// bytes expresses exactly. Borrowed while there is one occurrence (the common case).
#[derive(Default, Clone)]
pub struct Merged<'a> {
    first: Option<&'a [u8]>,
    more: Option<Vec<u8>>,
}

impl<'a> Merged<'a> {
    pub fn push(&mut self, part: &'a [u8]) {
        match (&mut self.more, self.first) {
            (Some(more), _) => more.extend_from_slice(part),
            (None, None) => self.first = Some(part),
            (None, Some(first)) => {
                let mut v = first.to_vec();
                v.extend_from_slice(part);
                self.more = Some(v);
            }
        }
    }

    /// The bytes, borrowed from the message, while there was one occurrence.
    pub fn borrowed(&self) -> Option<&'a [u8]> {
        if self.more.is_none() { self.first } else { None }
    }

    pub fn present(&self) -> bool {
        self.first.is_some()
    }

    pub fn bytes(&self) -> &[u8] {
        match (&self.more, self.first) {
            (Some(v), _) => v,
            (None, Some(b)) => b,
            (None, None) => &[],
        }
    }
}
