//! OpenTelemetry consistent probability sampling (OTEP 235), as
//! `processors/sampling/otep235.py` specifies it: 56-bit randomness R (the TraceState's
//! `ot` `rv`, else the trace id's last 7 bytes) kept when at or above the threshold
//! T = (1 - p) x 2^56. An incoming `th` says upstream kept p_up; a rule keeping p of what
//! arrives then keeps at p_up x p overall.

use memchr::memmem;

use crate::otlp::walk;
use crate::wire::Result;

pub const SPACE: f64 = 72057594037927936.0; // 2^56

/// The rejection threshold for keeping `p` of traces, exactly as Python rounds it.
pub fn threshold(p: f64) -> u64 {
    if p >= 1.0 {
        return 0;
    }
    if p <= 0.0 {
        return 1 << 56;
    }
    (((1.0 - p) * SPACE).round_ties_even() as u64).min((1 << 56) - 1) // Python's round()
}

pub fn keeps(r: u64, p: f64) -> bool {
    if p >= 1.0 {
        return true;
    }
    if p <= 0.0 {
        return false;
    }
    r >= threshold(p)
}

pub fn randomness(trace_id: &[u8]) -> u64 {
    trace_id[9..16].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 14 || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

/// (th, rv) of a TraceState's `ot` entry.
pub fn parse(trace_state: &[u8]) -> (Option<u64>, Option<u64>) {
    let (mut th, mut rv) = (None, None);
    for member in trace_state.split(|&b| b == b',') {
        let member = member.trim_ascii();
        let Some(value) = member.strip_prefix(b"ot=") else { continue };
        for item in value.split(|&b| b == b';') {
            // A malformed value is ignored; it does not erase a valid one before it.
            if let Some(text) = item.strip_prefix(b"th:") {
                th = hex(text).map(|n| n << (4 * (14 - text.len()))).or(th);
            } else if let Some(text) = item.strip_prefix(b"rv:").filter(|t| t.len() == 14) {
                rv = hex(text).or(rv);
            }
        }
    }
    (th, rv)
}

/// What upstream said of a trace, from its spans' TraceState (the root span's first, else
/// the first span with an `ot` entry): (p_up, R). Payloads without "ot=" are skipped
/// with one vectorised search, so the common case costs a scan of the bytes.
pub fn upstream(trace_id: &[u8], payloads: &[&[u8]]) -> Result<(f64, u64)> {
    let mut found: Option<(bool, (Option<u64>, Option<u64>))> = None;
    for payload in payloads {
        if memmem::find(payload, b"ot=").is_none() {
            continue;
        }
        walk(payload, |_, _, span| {
            let root = span.parent.is_empty();
            if !span.trace_state.is_empty() && found.as_ref().is_none_or(|(was_root, _)| root && !was_root) {
                let values = parse(span.trace_state);
                if values != (None, None) {
                    found = Some((root, values));
                }
            }
            Ok(())
        })?;
    }
    let (th, rv) = found.map_or((None, None), |(_, v)| v);
    let p_up = th.map_or(1.0, |t| ((1u64 << 56).saturating_sub(t)) as f64 / SPACE); // as Python's exact int division
    Ok((p_up, rv.unwrap_or_else(|| randomness(trace_id))))
}
