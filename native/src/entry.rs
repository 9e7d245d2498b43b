//! One buffered trace (`buffer.rs` keeps one per trace id, boxed): what the rules and the
//! bounds need to know of it, kept up to date as fragments arrive, and the fragments.
//!
//! Laid out small because there is one per buffered trace: the map's slot is a pointer (a
//! table at 7/8 load with 160-byte slots cost more than the LLM shape's spans themselves),
//! stamps are 32 bits (compared for equality only, so wrapping is harmless) and the root
//! is an index and a start rather than an `Option` of a pair.

use std::mem::size_of;

use crate::stored::Stored;

const NO_START: u64 = 1 << 63;
const NO_ROOT: u32 = u32::MAX;

pub struct Entry {
    pub first_seen: i64,
    pub last_seen: i64,
    pub spans: u64,
    pub start: u64,
    pub end: u64,
    pub bytes: u64,
    pub offset: i64,    // the newest Kafka offset among its fragments, -1: none
    root_start: u64,    // the newest root span's start
    pub serial: u32,    // its `arrivals` stamp
    pub touch: u32,     // its `rooted` stamp, one more for each fragment with a root
    pub partition: i32, // its Kafka partition (a 32-bit number in Kafka), -1: none
    root_at: u32,       // index in `fragments` of the newest root's fragment, NO_ROOT: none yet
    pub error: bool,
    pub fragments: Vec<Stored>,
}

impl Entry {
    pub fn new(serial: u32, now: i64) -> Box<Self> {
        Box::new(Entry {
            first_seen: now, last_seen: now, spans: 0, start: NO_START, end: 0, bytes: 0, offset: -1, root_start: 0,
            serial, touch: 0, partition: -1, root_at: NO_ROOT, error: false, fragments: Vec::new(),
        })
    }

    /// Takes in a fragment of `size` bytes (as the bounds count them), seen at `now`.
    pub fn absorb(&mut self, stored: Stored, size: u64, now: i64) {
        if let Some((partition, offset)) = stored.source() {
            self.partition = i32::try_from(partition).unwrap_or(i32::MAX);
            self.offset = self.offset.max(offset);
        }
        self.spans += stored.spans();
        self.start = self.start.min(stored.start);
        self.end = self.end.max(stored.end);
        self.error |= stored.error;
        if let Some(start) = stored.root_start() {
            self.root_at = self.fragments.len() as u32;
            self.root_start = start;
        }
        self.last_seen = now;
        self.bytes += size;
        if self.fragments.len() == self.fragments.capacity() {
            // Most traces have one fragment: no room for four (a Vec's first growth).
            self.fragments.reserve_exact((self.fragments.len() / 2).max(1));
        }
        self.fragments.push(stored);
    }

    /// Index in `fragments` of the newest fragment with a root span.
    pub fn root_at(&self) -> Option<usize> {
        (self.root_at != NO_ROOT).then_some(self.root_at as usize)
    }

    /// From the root span's start (else the earliest span's) to the latest end.
    pub fn duration(&self) -> u64 {
        let begin = if self.root_at().is_some() { self.root_start } else { self.start };
        self.end.saturating_sub(begin)
    }

    /// Bytes it holds (its map slot not included).
    pub fn native_bytes(&self) -> usize {
        size_of::<Self>() + (self.fragments.capacity() - self.fragments.len()) * size_of::<Stored>()
            + self.fragments.iter().map(Stored::native_bytes).sum::<usize>()
    }
}
