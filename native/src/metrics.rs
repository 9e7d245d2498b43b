//! Span metrics by label set: calls, errors, summed duration and duration buckets, and sums
//! of integer token counts, per distinct (service, span name, status code, wanted
//! attribute values). Python turns each group into its labels once per request.

use crate::Map;

use crate::otlp::{attributes, walk, Header, Span};
use crate::wire::{each, Merged, Result, Value};

pub const MAX_TOKENS: i64 = 1_000_000_000_000;

/// What one wanted attribute holds on a span (the span's own value, else its resource's).
pub enum Part {
    Absent,
    /// An integer token count: summed here, clamped to [0, MAX_TOKENS] per span.
    Int(u128),
    /// Anything else, as its `AnyValue` bytes, for Python to read.
    Raw(Vec<u8>),
}

pub struct Group {
    pub service: u32,
    pub name: String,
    pub code: i32,
    pub parts: Vec<Part>,
    pub calls: u64,
    pub errors: u64,
    pub duration_ns: u128,
    pub buckets: Vec<u64>,
}

/// The integer of an `AnyValue` whose set member is `int_value`, else None.
fn as_int(value: &[u8]) -> Option<i64> {
    let mut last: Option<Option<i64>> = None;
    each(value, |field, v| {
        match (field, v) {
            (3, Value::Varint(n)) => last = Some(Some(n as i64)),
            (1 | 5 | 6 | 7, Value::Bytes(_)) | (2, Value::Varint(_)) | (4, Value::Fixed64(_)) => last = Some(None),
            _ => {}
        }
        Ok(())
    })
    .ok()?;
    last.flatten()
}

fn wanted_values<'a>(message: &'a [u8], number: u32, keys: &[Vec<u8>], out: &mut [Option<Merged<'a>>]) -> Result<()> {
    attributes(message, number, |key, value| {
        if let Some(i) = keys.iter().position(|k| k.as_slice() == key) {
            out[i] = Some(value); // the last of duplicate keys wins, as in a dict
        }
    })
}

/// What one request's spans add up to, fed span by span (`visit`), so that split's walk can
/// count them on its way (`split::split_with`) instead of a second walk over the request.
/// `services[i]`: the service slot of the i-th resource (equal names share a slot).
/// `summable[k]`: wanted key k is a token count, summed when it is an integer.
pub struct Groups<'a, 's> {
    services: &'s [u32],
    keys: &'s [Vec<u8>],
    summable: &'s [bool],
    bounds: &'s [f64],
    out: Vec<Group>,
    index: Map<Vec<u8>, usize>,
    resource_at: usize,
    resource_values: Vec<Option<Vec<u8>>>,
    span_values: Vec<Option<Merged<'a>>>,
    ints: Vec<Option<i64>>,
    key: Vec<u8>,
}

impl<'a, 's> Groups<'a, 's> {
    pub fn new(services: &'s [u32], keys: &'s [Vec<u8>], summable: &'s [bool], bounds: &'s [f64]) -> Self {
        Groups { services, keys, summable, bounds, out: Vec::new(), index: Map::default(), resource_at: usize::MAX,
                 resource_values: vec![None; keys.len()], span_values: vec![None; keys.len()], ints: vec![None; keys.len()],
                 key: Vec::with_capacity(128) }
    }

    /// Counts one span (every span of the request, rejected ones too).
    pub fn visit(&mut self, resource: &Header, span: &Span<'a>) -> Result<()> {
        let keys = self.keys;
        if resource.index != self.resource_at {
            self.resource_at = resource.index;
            let mut resource_found: Vec<Option<Merged>> = vec![None; keys.len()];
            wanted_values(resource.message.bytes(), 1, keys, &mut resource_found)?;
            for (owned, found) in self.resource_values.iter_mut().zip(&resource_found) {
                *owned = found.as_ref().map(|m| m.bytes().to_vec());
            }
        }
        let span_values = &mut self.span_values;
        span_values.iter_mut().for_each(|v| *v = None);
        wanted_values(span.attributes, 9, keys, span_values)?;
        let (span_values, resource_values) = (&self.span_values, &self.resource_values);
        let value = |k: usize| span_values[k].as_ref().map(|m| m.bytes()).or(resource_values[k].as_deref());
        let service = *self.services.get(resource.index).unwrap_or(&u32::MAX);
        let key = &mut self.key;
        key.clear();
        key.extend_from_slice(&service.to_le_bytes());
        key.extend_from_slice(&span.code.to_le_bytes());
        key.extend_from_slice(&(span.name.len() as u64).to_le_bytes());
        key.extend_from_slice(span.name);
        for k in 0..keys.len() {
            self.ints[k] = None;
            match value(k) {
                None => key.push(0),
                Some(v) => match as_int(v).filter(|_| self.summable[k]) {
                    Some(n) => {
                        self.ints[k] = Some(n);
                        key.push(1);
                    }
                    None => {
                        key.push(2);
                        key.extend_from_slice(&(v.len() as u64).to_le_bytes());
                        key.extend_from_slice(v);
                    }
                },
            }
        }
        let at = match self.index.get(key.as_slice()) {
            Some(&at) => at,
            None => {
                let parts = (0..keys.len()).map(|k| match (value(k), self.ints[k]) {
                    (None, _) => Part::Absent,
                    (Some(_), Some(_)) => Part::Int(0),
                    (Some(v), None) => Part::Raw(v.to_vec()),
                }).collect();
                self.out.push(Group { service, name: String::from_utf8_lossy(span.name).into_owned(), code: span.code,
                                      parts, calls: 0, errors: 0, duration_ns: 0,
                                      buckets: vec![0; self.bounds.len() + 1] });
                self.index.insert(key.clone(), self.out.len() - 1);
                self.out.len() - 1
            }
        };
        let g = &mut self.out[at];
        let ns = span.end.saturating_sub(span.start); // both u64: a negative duration is 0
        let seconds = ns as f64 / 1e9; // from u64, one instruction (from u128, a library call)
        g.calls += 1;
        g.errors += u64::from(span.code == 2);
        g.duration_ns += u128::from(ns);
        g.buckets[self.bounds.partition_point(|&b| b < seconds)] += 1;
        for (part, n) in g.parts.iter_mut().zip(&self.ints) {
            if let (Part::Int(sum), Some(n)) = (part, n) {
                *sum += (*n).clamp(0, MAX_TOKENS) as u128;
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Vec<Group> {
        self.out
    }
}

/// The groups of a whole request, in its own walk.
pub fn groups(body: &[u8], services: &[u32], keys: &[Vec<u8>], summable: &[bool], bounds: &[f64]) -> Result<Vec<Group>> {
    let mut groups = Groups::new(services, keys, summable, bounds);
    walk(body, |resource, _scope, span| groups.visit(resource, span))?;
    Ok(groups.finish())
}

/// The distinct span names of a request, in order of first use.
pub fn span_names(body: &[u8]) -> Result<Vec<String>> {
    let mut seen: Map<&[u8], ()> = Map::default();
    let mut out = Vec::new();
    walk(body, |_r, _s, span| {
        if seen.insert(span.name, ()).is_none() {
            out.push(String::from_utf8_lossy(span.name).into_owned());
        }
        Ok(())
    })?;
    Ok(out)
}
