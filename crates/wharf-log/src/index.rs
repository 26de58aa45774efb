//! The sparse offset index and the time index of one segment, and their file.
//!
//! Both live in memory for the active segment and are written whole to `<base>.index` at checkpoints (roll,
//! periodic checkpoint, close), atomically (temp file + rename). The file header records how far into the
//! segment the index is known to be true (its *coverage*): recovery trusts the segment up to there and scans only
//! the rest, so start-up time grows with the unflushed tail, not with the size of the log. The whole file carries a
//! CRC32C, so a flipped bit, a truncation or a zeroed block makes the index be rebuilt, never trusted.
//!
//! File layout (little endian): 48-byte header, then offset entries (8 bytes), then time entries (12 bytes).
//!
//! | bytes  | field                                       |
//! |--------|---------------------------------------------|
//! | 0..4   | magic `WIDX`                                |
//! | 4..8   | format version ([`INDEX_VERSION`])          |
//! | 8..16  | coverage: byte position in the segment      |
//! | 16..24 | coverage: next offset at that position      |
//! | 24..32 | coverage: largest timestamp up to there     |
//! | 32..36 | number of offset entries                    |
//! | 36..40 | number of time entries                      |
//! | 40..44 | CRC32C of bytes 0..40 and all entries       |
//! | 44..48 | reserved, zero                              |

/// Version of the index file format written by this build.
pub const INDEX_VERSION: u32 = 1;
const MAGIC: &[u8; 4] = b"WIDX";
const HEADER_LEN: usize = 48;
const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

/// One sparse offset-index entry: the batch starting at `base + rel_offset` starts at byte `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment base.
    pub rel_offset: u32,
    /// Byte position of that batch's frame in the segment file.
    pub position: u32,
}

/// One time-index entry: every batch before `base + rel_offset` has a max timestamp `<= timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp of all batches before `rel_offset`.
    pub timestamp: i64,
    /// Offset relative to the segment base; it also has an offset entry.
    pub rel_offset: u32,
}

/// How far an index (or a scan) has verified a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// Byte position just past the last verified batch.
    pub position: u64,
    /// Offset just past the last verified batch.
    pub next_offset: u64,
    /// Largest timestamp of the verified batches (`i64::MIN` when there are none).
    pub max_timestamp: i64,
}

impl Coverage {
    /// The coverage of an empty segment starting at `base`.
    pub fn empty(base: u64) -> Coverage {
        Coverage {
            position: 0,
            next_offset: base,
            max_timestamp: i64::MIN,
        }
    }
}

/// The in-memory index of one segment plus the state needed to extend it as batches are appended.
#[derive(Clone, Debug)]
pub struct SegmentIndex {
    base: u64,
    interval_bytes: u64,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    coverage: Coverage,
    /// Bytes appended since the last offset entry (or the segment start).
    bytes_since_entry: u64,
}

impl SegmentIndex {
    /// An empty index for a segment starting at `base`.
    pub fn new(base: u64, interval_bytes: u64) -> SegmentIndex {
        SegmentIndex {
            base,
            interval_bytes: interval_bytes.max(1),
            offsets: Vec::new(),
            times: Vec::new(),
            coverage: Coverage::empty(base),
            bytes_since_entry: 0,
        }
    }

    /// The segment's base offset.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// What the index has seen so far.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// Number of offset entries (for memory accounting and tests).
    pub fn entry_count(&self) -> usize {
        self.offsets.len()
    }

    /// Records a batch appended at `position`. Batches must come in order.
    pub fn on_batch(
        &mut self,
        base_offset: u64,
        record_count: u32,
        position: u64,
        frame_len: u64,
        max_timestamp: i64,
    ) {
        debug_assert_eq!(
            position, self.coverage.position,
            "batches are indexed in order"
        );
        debug_assert_eq!(base_offset, self.coverage.next_offset, "offsets are dense");
        if self.bytes_since_entry >= self.interval_bytes {
            let rel_offset = rel(self.base, base_offset);
            let position32 = u32::try_from(position).unwrap_or(u32::MAX);
            self.offsets.push(OffsetEntry {
                rel_offset,
                position: position32,
            });
            let before = self.coverage.max_timestamp;
            if before != i64::MIN && self.times.last().is_none_or(|t| before > t.timestamp) {
                self.times.push(TimeEntry {
                    timestamp: before,
                    rel_offset,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += frame_len;
        self.coverage.position = position + frame_len;
        self.coverage.next_offset = base_offset + u64::from(record_count);
        self.coverage.max_timestamp = self.coverage.max_timestamp.max(max_timestamp);
    }

    /// The greatest indexed `(offset, position)` at or before `offset`; the segment start if none.
    pub fn lookup_offset(&self, offset: u64) -> (u64, u64) {
        let target = offset.saturating_sub(self.base);
        let idx = self
            .offsets
            .partition_point(|e| u64::from(e.rel_offset) <= target);
        match idx.checked_sub(1).and_then(|i| self.offsets.get(i)) {
            Some(e) => (self.base + u64::from(e.rel_offset), u64::from(e.position)),
            None => (self.base, 0),
        }
    }

    /// Where to start scanning for the first batch whose max timestamp is `>= timestamp`: an `(offset, position)`
    /// before which every batch is older.
    pub fn lookup_time(&self, timestamp: i64) -> (u64, u64) {
        let idx = self.times.partition_point(|e| e.timestamp < timestamp);
        match idx.checked_sub(1).and_then(|i| self.times.get(i)) {
            Some(e) => self.lookup_offset(self.base + u64::from(e.rel_offset)),
            None => (self.base, 0),
        }
    }

    /// Drops every entry at or past byte `position` and resets the coverage to `coverage` (used by truncation).
    pub fn truncate(&mut self, coverage: Coverage) {
        let pos = coverage.position;
        self.offsets.retain(|e| u64::from(e.position) < pos);
        let last_rel = rel(self.base, coverage.next_offset);
        self.times.retain(|t| t.rel_offset < last_rel);
        self.coverage = coverage;
        self.bytes_since_entry = pos - self.offsets.last().map_or(0, |e| u64::from(e.position));
    }

    /// Serialises the index into the file format described in the module doc.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.offsets.len() * OFFSET_ENTRY_LEN + self.times.len() * TIME_ENTRY_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&self.coverage.position.to_le_bytes());
        out.extend_from_slice(&self.coverage.next_offset.to_le_bytes());
        out.extend_from_slice(&self.coverage.max_timestamp.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.times.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]); // CRC and reserved, filled below
        for e in &self.offsets {
            out.extend_from_slice(&e.rel_offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
        }
        for t in &self.times {
            out.extend_from_slice(&t.timestamp.to_le_bytes());
            out.extend_from_slice(&t.rel_offset.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..40]), &out[HEADER_LEN..]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an index file. Any inconsistency is an error (the caller rebuilds); a version this build does not
    /// know is reported as `Err(IndexDecodeError::Version)` so that it is never silently rebuilt over.
    pub fn decode(
        base: u64,
        interval_bytes: u64,
        bytes: &[u8],
    ) -> Result<SegmentIndex, IndexDecodeError> {
        use IndexDecodeError::Invalid;
        let header = bytes
            .get(..HEADER_LEN)
            .ok_or(Invalid("shorter than its header"))?;
        if &header[0..4] != MAGIC {
            return Err(Invalid("bad magic"));
        }
        let version = le_u32(header, 4);
        if version != INDEX_VERSION {
            return Err(IndexDecodeError::Version(version));
        }
        if header[44..48] != [0, 0, 0, 0] {
            return Err(Invalid("reserved header bytes are not zero"));
        }
        let stored_crc = le_u32(header, 40);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..40]), &bytes[HEADER_LEN..]);
        if crc != stored_crc {
            return Err(Invalid("CRC mismatch"));
        }
        let coverage = Coverage {
            position: le_u64(header, 8),
            next_offset: le_u64(header, 16),
            max_timestamp: le_u64(header, 24) as i64,
        };
        let n_offsets = le_u32(header, 32) as usize;
        let n_times = le_u32(header, 36) as usize;
        let expected = n_offsets
            .checked_mul(OFFSET_ENTRY_LEN)
            .and_then(|a| {
                n_times
                    .checked_mul(TIME_ENTRY_LEN)
                    .and_then(|b| a.checked_add(b))
            })
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or(Invalid("entry counts overflow"))?;
        if expected != bytes.len() {
            return Err(Invalid("length does not match entry counts"));
        }
        if coverage.next_offset < base {
            return Err(Invalid("coverage before segment base"));
        }
        let body = &bytes[HEADER_LEN..];
        let mut offsets = Vec::with_capacity(n_offsets);
        for chunk in body[..n_offsets * OFFSET_ENTRY_LEN].chunks_exact(OFFSET_ENTRY_LEN) {
            let e = OffsetEntry {
                rel_offset: le_u32(chunk, 0),
                position: le_u32(chunk, 4),
            };
            if let Some(prev) = offsets.last() {
                let prev: &OffsetEntry = prev;
                if e.rel_offset <= prev.rel_offset || e.position <= prev.position {
                    return Err(Invalid("offset entries not increasing"));
                }
            }
            if u64::from(e.position) >= coverage.position
                || base + u64::from(e.rel_offset) >= coverage.next_offset
            {
                return Err(Invalid("offset entry past coverage"));
            }
            offsets.push(e);
        }
        let mut times: Vec<TimeEntry> = Vec::with_capacity(n_times);
        for chunk in body[n_offsets * OFFSET_ENTRY_LEN..].chunks_exact(TIME_ENTRY_LEN) {
            let t = TimeEntry {
                timestamp: le_u64(chunk, 0) as i64,
                rel_offset: le_u32(chunk, 8),
            };
            if times
                .last()
                .is_some_and(|p| t.timestamp <= p.timestamp || t.rel_offset <= p.rel_offset)
            {
                return Err(Invalid("time entries not increasing"));
            }
            if base + u64::from(t.rel_offset) >= coverage.next_offset {
                return Err(Invalid("time entry past coverage"));
            }
            times.push(t);
        }
        let bytes_since_entry =
            coverage.position - offsets.last().map_or(0, |e| u64::from(e.position));
        Ok(SegmentIndex {
            base,
            interval_bytes: interval_bytes.max(1),
            offsets,
            times,
            coverage,
            bytes_since_entry,
        })
    }
}

/// Why an index file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexDecodeError {
    /// Damaged or inconsistent: rebuild it from the segment.
    Invalid(&'static str),
    /// Written by another format version: refuse to guess.
    Version(u32),
}

fn rel(base: u64, offset: u64) -> u32 {
    debug_assert!(offset >= base && offset - base <= u64::from(u32::MAX));
    u32::try_from(offset - base).unwrap_or(u32::MAX)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut idx = SegmentIndex::new(100, 64);
        let mut pos = 0;
        for i in 0..50u64 {
            idx.on_batch(100 + i * 2, 2, pos, 40, 1000 + i as i64);
            pos += 40;
        }
        idx
    }

    #[test]
    fn encode_decode_round_trip() {
        let idx = sample();
        assert!(idx.entry_count() > 10);
        let bytes = idx.encode();
        let back = SegmentIndex::decode(100, 64, &bytes).unwrap();
        assert_eq!(back.offsets, idx.offsets);
        assert_eq!(back.times, idx.times);
        assert_eq!(back.coverage, idx.coverage);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                SegmentIndex::decode(100, 64, &b).is_err(),
                "bit {i} not detected"
            );
        }
        assert!(SegmentIndex::decode(100, 64, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn lookups() {
        let idx = sample();
        let (o, p) = idx.lookup_offset(100);
        assert_eq!((o, p), (100, 0));
        let (o, p) = idx.lookup_offset(150);
        assert!(o <= 150 && p == (o - 100) / 2 * 40);
        let (o, _) = idx.lookup_time(1030);
        // everything before o is older than 1030
        assert!(1000 + ((o - 100) / 2) as i64 <= 1030);
    }
}
