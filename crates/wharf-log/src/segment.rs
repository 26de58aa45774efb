//! One segment: a file of framed batches (`<base>.log`) and its index (`<base>.index`), plus the two
//! sequential passes over it: the recovery scan and the read path.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::BATCH_BYTES_MAX;
use crate::error::{LogError, Result};
use crate::file_cache::FileId;
use crate::frame::{header_bytes, FrameHeader, FRAME_HEADER_LEN};
use crate::fsio::read_at;
use crate::index::SegmentIndex;
use crate::tail::HeldBytes;

/// How much a scan or read pulls from the file per `pread`.
const READ_WINDOW_BYTES: u64 = 1024 * 1024;

/// One batch as read back: the payload exactly as appended, sharing one buffer with its neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Number of offsets the batch takes.
    pub record_count: u32,
    /// Largest timestamp given at append.
    pub max_timestamp: i64,
    /// The bytes given at append (after the stamping callback, if any).
    pub payload: Bytes,
}

impl Batch {
    /// Offset just past the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// File names of the segment starting at `base` in `dir`.
pub(crate) fn segment_paths(dir: &Path, base: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{base:020}.log")),
        dir.join(format!("{base:020}.index")),
    )
}

/// The base offset encoded in a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A segment as the log tracks it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub file_id: FileId,
    pub path: PathBuf,
    pub index_path: PathBuf,
    /// Bytes of valid data (active segment) or the file length found at open (sealed).
    pub size: u64,
    pub state: SegmentState,
}

#[derive(Debug)]
pub(crate) enum SegmentState {
    /// The segment appends go to; its index lives in memory and is extended on every append.
    Active {
        index: SegmentIndex,
        /// When the first append since the segment was created or reopened happened (for `segment_ms`; a
        /// monotonic clock, so a wall-clock jump neither rolls early nor holds a roll back).
        first_append: Option<Instant>,
    },
    /// A read-only segment; its index is loaded (and verified, or rebuilt) on first use.
    Sealed(Arc<SealedIndex>),
}

/// The lazily loaded index of a sealed segment. Loading happens outside the log's lock.
#[derive(Debug, Default)]
pub(crate) struct SealedIndex {
    pub loaded: Mutex<Option<Arc<SegmentIndex>>>,
}

impl SealedIndex {
    pub fn with(index: SegmentIndex) -> Arc<SealedIndex> {
        Arc::new(SealedIndex {
            loaded: Mutex::new(Some(Arc::new(index))),
        })
    }
}

/// Where a scan stopped early, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanStop {
    pub position: u64,
    pub reason: String,
}

/// Extends `index` by scanning `file` from the index's coverage to `file_len`, checking every frame (header
/// sanity, dense offsets, CRC). Stops at the first bad frame and says where.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    file_len: u64,
    mut index: SegmentIndex,
) -> Result<(SegmentIndex, Option<ScanStop>)> {
    let mut pos = index.coverage().position;
    let mut window = Window::new(READ_WINDOW_BYTES);
    while pos < file_len {
        let stop = |reason: &str| ScanStop {
            position: pos,
            reason: reason.to_string(),
        };
        if file_len - pos < FRAME_HEADER_LEN as u64 {
            return Ok((index, Some(stop("partial frame header at end of file"))));
        }
        let h = window.get(file, path, None, pos, FRAME_HEADER_LEN as u64, file_len)?;
        let Some(&hb) = header_bytes(&h) else {
            return Ok((index, Some(stop("short read"))));
        };
        let header = match FrameHeader::decode(&hb) {
            Ok(h) => h,
            Err(reason) => return Ok((index, Some(stop(reason)))),
        };
        if header.payload_len > BATCH_BYTES_MAX {
            return Ok((index, Some(stop("batch length over the limit"))));
        }
        let frame_end = pos + header.frame_len();
        if frame_end > file_len {
            return Ok((index, Some(stop("batch runs past the end of the file"))));
        }
        let expected = index.coverage().next_offset;
        if header.base_offset != expected {
            return Ok((
                index,
                Some(stop(&format!(
                    "base offset {} where {expected} was expected",
                    header.base_offset
                ))),
            ));
        }
        if header.next_offset() - index.base() > u64::from(u32::MAX) {
            return Ok((index, Some(stop("offsets overflow the segment"))));
        }
        let frame = window.get(file, path, None, pos, header.frame_len(), file_len)?;
        if !FrameHeader::crc_matches(&hb, &frame[FRAME_HEADER_LEN..]) {
            return Ok((index, Some(stop("CRC mismatch"))));
        }
        index.on_batch(
            header.base_offset,
            header.record_count,
            pos,
            header.frame_len(),
            header.max_timestamp,
        );
        pos = frame_end;
    }
    Ok((index, None))
}

/// A read window over a segment: serves byte ranges from one `pread` buffer, refilling when a range falls outside.
/// Served ranges are slices of the shared buffer, so batches are never copied after the read. Bytes at or past
/// the held tail's start come from the reader's copy of the held tail instead of the file.
struct Window {
    start: u64,
    buf: Bytes,
    /// How much to read at once when refilling.
    refill_bytes: u64,
}

impl Window {
    fn new(refill_bytes: u64) -> Window {
        Window {
            start: 0,
            buf: Bytes::new(),
            refill_bytes,
        }
    }

    /// Bytes `[pos, pos+len)`; the caller has checked that `pos + len <= limit`, the end of valid data.
    fn get(
        &mut self,
        file: &File,
        path: &Path,
        held: Option<&HeldBytes>,
        pos: u64,
        len: u64,
        limit: u64,
    ) -> Result<Bytes> {
        debug_assert!(pos + len <= limit);
        let have_end = self.start + self.buf.len() as u64;
        if pos < self.start || pos + len > have_end {
            let want = len.max(self.refill_bytes).min(limit - pos);
            self.buf = fill(file, path, held, pos, want)?;
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        Ok(self.buf.slice(from..from + len as usize))
    }
}

/// Reads `want` bytes of a segment at `pos`: from the file below the held tail's start, from the held copy at and
/// past it.
fn fill(file: &File, path: &Path, held: Option<&HeldBytes>, pos: u64, want: u64) -> Result<Bytes> {
    let Some(held) = held.filter(|h| pos + want > h.start) else {
        return Ok(Bytes::from(read_at(file, path, pos, want as usize)?));
    };
    // The caller never asks past the end of valid data, which is the held tail's end; a range that does is a
    // bug, reported like a read past the end of the file rather than a panic.
    let past_end = || LogError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "read past the end of the held tail",
        ),
    };
    if pos >= held.start {
        let from = (pos - held.start) as usize;
        let to = from + want as usize;
        if to > held.bytes.len() {
            return Err(past_end());
        }
        return Ok(held.bytes.slice(from..to));
    }
    let in_file = (held.start - pos) as usize;
    let mut buf = read_at(file, path, pos, in_file)?;
    let rest = held
        .bytes
        .get(..want as usize - in_file)
        .ok_or_else(past_end)?;
    buf.extend_from_slice(rest);
    Ok(Bytes::from(buf))
}

/// What a read of one segment needs, captured under the log's lock and used outside it.
#[derive(Debug, Clone)]
pub(crate) struct ReadSpan {
    pub path: PathBuf,
    /// Byte position of a frame boundary at or before the first wanted batch.
    pub start_pos: u64,
    /// Offset of the batch at `start_pos`.
    pub start_offset: u64,
    /// End of valid data in the segment.
    pub end_pos: u64,
    /// The active segment's held tail (bytes not, or not only, in the file), copied under the lock.
    pub held: Option<HeldBytes>,
}

/// Why a segment read stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadStop {
    /// The byte budget or the offset limit was reached: do not read further segments.
    Full,
    /// The segment's data ended: the next segment may continue.
    SegmentEnd,
}

/// Appends to `out` the batches of one segment that end after `from_offset` and start before `max_offset`,
/// until `*budget` bytes of payload are used (at least one batch is returned when `out` is empty, however
/// large, so that a reader always makes progress). Every returned batch has had its CRC checked.
pub(crate) fn read_span(
    file: &File,
    span: &ReadSpan,
    from_offset: u64,
    max_offset: u64,
    budget: &mut usize,
    out: &mut Vec<Batch>,
) -> Result<ReadStop> {
    let mut pos = span.start_pos;
    let mut expected = span.start_offset;
    let refill = (*budget as u64)
        .saturating_add(64 * 1024)
        .min(READ_WINDOW_BYTES * 16);
    let mut window = Window::new(refill);
    while pos < span.end_pos {
        let (hb, header) = checked_header_at(&mut window, file, span, pos, expected)?;
        if header.base_offset >= max_offset {
            return Ok(ReadStop::Full);
        }
        if header.next_offset() > from_offset {
            let len = header.payload_len as usize;
            if !out.is_empty() && len > *budget {
                return Ok(ReadStop::Full);
            }
            let frame = window.get(
                file,
                &span.path,
                span.held.as_ref(),
                pos,
                header.frame_len(),
                span.end_pos,
            )?;
            let payload = frame.slice(FRAME_HEADER_LEN..);
            if !FrameHeader::crc_matches(&hb, &payload) {
                return Err(corrupt_at(span, pos, expected, "CRC mismatch".into()));
            }
            out.push(Batch {
                base_offset: header.base_offset,
                record_count: header.record_count,
                max_timestamp: header.max_timestamp,
                payload,
            });
            *budget = budget.saturating_sub(len);
            if *budget == 0 {
                return Ok(ReadStop::Full);
            }
        }
        expected = header.next_offset();
        pos += header.frame_len();
    }
    Ok(ReadStop::SegmentEnd)
}

/// Finds, in one segment, the first batch ending after `min_offset` whose max timestamp is `>= timestamp`,
/// scanning from `span`.
pub(crate) fn find_time_in_span(
    file: &File,
    span: &ReadSpan,
    timestamp: i64,
    min_offset: u64,
) -> Result<Option<(u64, i64)>> {
    let mut pos = span.start_pos;
    let mut expected = span.start_offset;
    let mut window = Window::new(READ_WINDOW_BYTES);
    while pos < span.end_pos {
        let (_, header) = checked_header_at(&mut window, file, span, pos, expected)?;
        if header.max_timestamp >= timestamp && header.next_offset() > min_offset {
            return Ok(Some((header.base_offset, header.max_timestamp)));
        }
        expected = header.next_offset();
        pos += header.frame_len();
    }
    Ok(None)
}

/// Reads the frame header at `pos` of a span of verified data and checks it: decodable, holding offset
/// `expected`, and ending within the span. Anything else is corruption, reported with file and offset.
fn checked_header_at(
    window: &mut Window,
    file: &File,
    span: &ReadSpan,
    pos: u64,
    expected: u64,
) -> Result<([u8; FRAME_HEADER_LEN], FrameHeader)> {
    let corrupt = |reason: String| corrupt_at(span, pos, expected, reason);
    if span.end_pos - pos < FRAME_HEADER_LEN as u64 {
        return Err(corrupt("partial frame header".into()));
    }
    let h = window.get(
        file,
        &span.path,
        span.held.as_ref(),
        pos,
        FRAME_HEADER_LEN as u64,
        span.end_pos,
    )?;
    let hb = *header_bytes(&h).ok_or_else(|| corrupt("short read".into()))?;
    let header = FrameHeader::decode(&hb).map_err(|r| corrupt(r.into()))?;
    if header.base_offset != expected {
        return Err(corrupt(format!(
            "base offset {} where {expected} was expected",
            header.base_offset
        )));
    }
    if header.payload_len > BATCH_BYTES_MAX || pos + header.frame_len() > span.end_pos {
        return Err(corrupt(
            "batch length runs past the end of valid data".into(),
        ));
    }
    Ok((hb, header))
}

fn corrupt_at(span: &ReadSpan, position: u64, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        path: span.path.clone(),
        position,
        offset,
        reason,
    }
}
