//! The held tail of the active segment: the bytes past the last aligned boundary, kept in memory so that every
//! append writes whole, aligned blocks only — a small write buffer in front of the page cache.
//!
//! Why: the kernel's cost of a buffered write is mostly per call and per folio (page-cache unit) touched, and it
//! uses large folios only for writes that start on a boundary of their size. A frame is a 32-byte header plus the
//! payload, so writing each frame whole ends nearly every write mid-page: the next write touches that page again
//! and starts off any larger boundary, so it gets 4 KiB folios. Measured on the benchmark machine (kernel 6.18,
//! ext4, page cache): a loop of 16 KiB + 32 B writes ran at 65 % of the bandwidth of a loop of 16 KiB writes, and
//! 16 KiB writes 4 KiB off their alignment at 65 % too; 16 KiB frames gathered into aligned 32 KiB and 64 KiB
//! writes ran at 111 % and 129 % of the 16 KiB loop.
//!
//! So an append sends the held bytes, its header and its payload up to the last boundary in one `pwritev`
//! (`[held bytes, header, payload prefix]`) and keeps the rest; a frame that passes no boundary is only copied.
//! The boundary is the largest power of two not above 64 frames of the current size, between 4 KiB (a page)
//! and 64 KiB ([`ALIGN_MAX_BYTES`]): frames of 1 KiB and more go out as aligned 64 KiB writes (1 MiB frames end
//! on 64 KiB boundaries), 100-byte frames a page at a time. A busy log therefore holds less than 128 KiB, an
//! idle one nothing. (Gathering four frames, as first built, wrote 1 KiB AMQP messages a page per `pwritev`,
//! with 4 KiB folios: 64 KiB writes cost the broker 5–14 % less CPU per persistent confirmed message, measured
//! with interleaved `wharf-bench amqp` runs at 8 000 msg/s and at the maximum rate.)
//!
//! The price is that held bytes are in this process's memory only, not in the page cache: a process crash loses
//! them. They are therefore written out before anything is claimed durable (every sync round, seal, checkpoint,
//! truncation, close and drop) and, under `interval` and `os`, by the manager's tail flusher within
//! `tail_flush_interval` of being appended (see [`crate::tail_flush`]). Logs opened without a manager hold nothing.
//!
//! Invariants: the file holds every byte of the segment below `start`; `buf` holds the bytes `start..end`, of which
//! the first `written` are in the file too. The file is therefore always a prefix of the segment, and recovery
//! needs no change.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use bytes::Bytes;

use crate::frame::FRAME_HEADER_LEN;
use crate::fsio::write_all_at_vectored;

/// Smallest alignment of a write: a page (4 KiB on x86-64 and usually on arm64; on a larger-page kernel writes
/// of small frames stay 4 KiB-aligned, which only costs part of the gain).
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Largest alignment of a write, and so (about) the most a busy log holds back.
pub(crate) const ALIGN_MAX_BYTES: u64 = 64 * 1024;
/// Slices one frame is appended as (header and payload).
const MAX_FRAME_PARTS: usize = 2;

/// Frames of one size a write may gather (see [`alignment`] and the module docs).
const GATHER_FRAMES: u64 = 64;

/// The boundary writes of a frame of `len` bytes end on: the largest power of two not above
/// [`GATHER_FRAMES`] frames, within [`PAGE_BYTES`]..=[`ALIGN_MAX_BYTES`].
fn alignment(len: u64) -> u64 {
    let span = len.saturating_mul(GATHER_FRAMES).max(1);
    (1u64 << span.ilog2()).clamp(PAGE_BYTES, ALIGN_MAX_BYTES)
}

/// The held tail of one log's active segment.
#[derive(Debug)]
pub(crate) struct HeldTail {
    start: u64,
    buf: Vec<u8>,
    written: usize,
    /// When the oldest byte of `buf[written..]` was appended; `None` when everything held is in the file.
    dirty_since: Option<Instant>,
    /// Whether the log has an entry in the tail flusher's queue (so it is queued at most once).
    pub queued: bool,
}

/// A reader's copy of the held bytes, taken under the log's lock.
#[derive(Debug, Clone)]
pub(crate) struct HeldBytes {
    /// Segment position of the first held byte: the file holds everything before it.
    pub start: u64,
    /// The bytes `start..start + bytes.len()` of the segment.
    pub bytes: Bytes,
}

impl HeldTail {
    /// A tail holding nothing, for a segment whose file holds exactly `pos` bytes.
    pub fn at(pos: u64) -> HeldTail {
        HeldTail {
            start: pos,
            buf: Vec::new(),
            written: 0,
            dirty_since: None,
            queued: false,
        }
    }

    /// Starts over at `pos` (a new or cut segment whose file holds `pos` bytes). Keeps `queued`: an entry
    /// already in the flusher's queue is still there and finds nothing to do.
    pub fn reset(&mut self, pos: u64) {
        let queued = self.queued;
        *self = HeldTail::at(pos);
        self.queued = queued;
    }

    /// Logical end of the segment: the file's bytes plus the held ones.
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// How many bytes of the segment are known to be in the file.
    pub fn file_end(&self) -> u64 {
        self.start + self.written as u64
    }

    /// When the oldest held byte not yet in the file was appended.
    pub fn dirty_since(&self) -> Option<Instant> {
        self.dirty_since
    }

    /// Appends `parts` (one frame) to the segment. With `hold`, writes only up to the last boundary (see
    /// [`alignment`]) and keeps the rest; without, writes everything. On error nothing changed here, but the file
    /// may hold part of the write past [`HeldTail::file_end`]: the caller cuts it off. `now` is the time of
    /// the append.
    pub fn append(
        &mut self,
        file: &File,
        parts: &[&[u8]],
        hold: bool,
        now: Instant,
    ) -> io::Result<()> {
        if parts.len() > MAX_FRAME_PARTS {
            return Err(io::Error::other("too many slices in one frame"));
        }
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let end = self.end() + len;
        let cut = if hold {
            end - end % alignment(len)
        } else {
            end
        };
        if cut <= self.end() {
            // No boundary is passed beyond what is already held: hold the frame whole, no system call.
            if self.buf.capacity() == 0 {
                self.buf
                    .reserve(usize::try_from(alignment(len)).unwrap_or(0));
            }
            for part in parts {
                self.buf.extend_from_slice(part);
            }
            self.dirty_since.get_or_insert(now);
            return Ok(());
        }
        // The rest of `buf` goes out, then the frame up to `cut`. Held bytes already in the file are re-sent
        // from the page holding the first unwritten one (from `start`, a boundary, when none was written), so
        // the write begins on a page boundary, yet no whole page that a sync may have made durable is dirtied
        // again.
        let (from, skip) = self.resend_from();
        let mut to_frame = cut - self.end();
        let mut taken = [0usize; MAX_FRAME_PARTS];
        let mut iov: [&[u8]; MAX_FRAME_PARTS + 1] = [&self.buf[skip..], &[], &[]];
        for ((slot, take), part) in iov[1..].iter_mut().zip(&mut taken).zip(parts) {
            *take = usize::try_from(to_frame).map_or(part.len(), |t| t.min(part.len()));
            *slot = &part[..*take];
            to_frame -= *take as u64;
        }
        write_all_at_vectored(file, &iov, from)?;
        self.buf.clear();
        for (part, take) in parts.iter().zip(taken) {
            self.buf.extend_from_slice(&part[take..]);
        }
        self.start = cut;
        self.written = 0;
        self.dirty_since = (!self.buf.is_empty()).then_some(now);
        Ok(())
    }

    /// Where a write of the held bytes starts: `(segment position, index into buf)`.
    fn resend_from(&self) -> (u64, usize) {
        let from = (self.file_end() / PAGE_BYTES * PAGE_BYTES).max(self.start);
        (from, usize::try_from(from - self.start).unwrap_or(0))
    }

    /// Like [`HeldTail::append`] for the frame `[header, payload]`, for a header that is known only after the
    /// payload has been written (its CRC is computed meanwhile; see [`crate::crc_helper`]): writes the held
    /// bytes, a zeroed placeholder for the header and the payload up to the boundary as one write, then calls
    /// `header` and writes it over the placeholder. When the header would be held (a frame shorter than a
    /// boundary), calls `header` first and appends as [`HeldTail::append`].
    ///
    /// Between the two writes the file holds the frame behind a zeroed header, which fails its checks (version
    /// 0; the CRC field is zero too): a crash there leaves a torn tail that recovery truncates, as it does a frame
    /// written in part. On error nothing changed here, and as with [`HeldTail::append`] the file may hold bytes
    /// past [`HeldTail::file_end`]: the caller cuts them off.
    pub fn append_header_last(
        &mut self,
        file: &File,
        payload: &[u8],
        hold: bool,
        now: Instant,
        header: impl FnOnce() -> [u8; FRAME_HEADER_LEN],
    ) -> io::Result<()> {
        let header_len = FRAME_HEADER_LEN as u64;
        let frame_at = self.end();
        let end = frame_at + header_len + payload.len() as u64;
        let cut = if hold {
            end - end % alignment(end - frame_at)
        } else {
            end
        };
        if cut < frame_at + header_len {
            let h = header();
            return self.append(file, &[&h, payload], hold, now);
        }
        let taken = usize::try_from(cut - frame_at - header_len)
            .map_err(|_| io::Error::other("frame larger than the address space"))?;
        let (Some(written), Some(rest)) = (payload.get(..taken), payload.get(taken..)) else {
            return Err(io::Error::other("write boundary outside the frame"));
        };
        let (from, skip) = self.resend_from();
        write_all_at_vectored(
            file,
            &[&self.buf[skip..], &[0u8; FRAME_HEADER_LEN], written],
            from,
        )?;
        file.write_all_at(&header(), frame_at)?;
        self.buf.clear();
        self.buf.extend_from_slice(rest);
        self.start = cut;
        self.written = 0;
        self.dirty_since = (!self.buf.is_empty()).then_some(now);
        Ok(())
    }

    /// Writes the held bytes that are not in the file yet; `true` if there were any. Keeps them held, so the
    /// next append still begins on a boundary.
    pub fn write_out(&mut self, file: &File) -> io::Result<bool> {
        let Some(unwritten) = self.buf.get(self.written..).filter(|b| !b.is_empty()) else {
            return Ok(false);
        };
        file.write_all_at(unwritten, self.file_end())?;
        self.written = self.buf.len();
        self.dirty_since = None;
        Ok(true)
    }

    /// Drops the buffer once everything held is in the file, so an idle log keeps no memory for it. The next
    /// append then begins off a boundary once.
    pub fn release(&mut self) {
        if self.written == self.buf.len() {
            self.start = self.end();
            self.buf = Vec::new();
            self.written = 0;
        }
    }

    /// A copy of the held bytes for a reader, `None` when nothing is held.
    #[cfg(test)]
    pub fn snapshot(&self) -> Option<HeldBytes> {
        self.snapshot_from(self.start)
    }

    /// A copy of the held bytes at and past segment position `pos`, for a reader that reads nothing before it
    /// (a read starts at an indexed batch and moves forward): a reader near the end copies only what it can
    /// read, not the whole held tail (up to 64 KiB; a priority queue reads its log once per delivery). `None`
    /// when nothing is held there.
    pub fn snapshot_from(&self, pos: u64) -> Option<HeldBytes> {
        let skip = usize::try_from(pos.saturating_sub(self.start))
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let bytes = self.buf.get(skip..).filter(|b| !b.is_empty())?;
        Some(HeldBytes {
            start: self.start + skip as u64,
            bytes: Bytes::copy_from_slice(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(file: &File) -> Vec<u8> {
        let len = file.metadata().unwrap().len() as usize;
        let mut v = vec![0u8; len];
        file.read_exact_at(&mut v, 0).unwrap();
        v
    }

    /// Appends frames of the given payload lengths, checking after each that only whole aligned blocks reached
    /// the file, that file and held bytes together are the log, and that the buffer stays small.
    fn check_frames(file: &File, tail: &mut HeldTail, logical: &mut Vec<u8>, lens: &[usize]) {
        for (n, &len) in lens.iter().enumerate() {
            let header = [n as u8; 32];
            let payload = vec![(n as u8).wrapping_add(100); len];
            let before = tail.end();
            let start_before = tail.start;
            tail.append(file, &[&header, &payload], true, Instant::now())
                .unwrap();
            logical.extend_from_slice(&header);
            logical.extend_from_slice(&payload);
            let on_file = file_bytes(file);
            assert_eq!(on_file.len() as u64, tail.file_end());
            if tail.start != start_before {
                let align = alignment(32 + len as u64);
                assert_eq!(
                    tail.start % align,
                    0,
                    "a write ends on a boundary of {align}"
                );
            }
            assert_eq!(tail.end(), logical.len() as u64);
            assert!(tail.end() - tail.file_end() < 2 * ALIGN_MAX_BYTES);
            assert!(tail.end() - tail.start < (before - start_before) + alignment(32 + len as u64));
            assert_eq!(on_file.as_slice(), &logical[..on_file.len()]);
            let held = tail.snapshot().map_or(Vec::new(), |h| h.bytes.to_vec());
            assert_eq!(held.as_slice(), &logical[tail.start as usize..]);
        }
    }

    #[test]
    fn alignment_follows_the_frame_size() {
        assert_eq!(alignment(0), PAGE_BYTES);
        assert_eq!(alignment(40), PAGE_BYTES);
        assert_eq!(alignment(100), 4096);
        assert_eq!(alignment(300), 16_384);
        // An AMQP message of 1 KiB with its properties and frame header, and larger frames: 64 KiB.
        assert_eq!(alignment(1056), ALIGN_MAX_BYTES);
        assert_eq!(alignment(4096 + 32), ALIGN_MAX_BYTES);
        assert_eq!(alignment(16_384 + 32), ALIGN_MAX_BYTES);
        assert_eq!(alignment(1 << 20), ALIGN_MAX_BYTES);
    }

    #[test]
    fn holds_the_tail_and_writes_aligned_blocks() {
        let file = tempfile::tempfile().unwrap();
        let mut tail = HeldTail::at(0);
        let mut logical = Vec::new();
        // Small, page-sized, 16 KiB and 1 MiB frames, then small ones again after large ones.
        let lens = [
            10,
            4000,
            100,
            5000,
            8192,
            1,
            4095,
            3,
            20_000,
            16_384,
            16_384,
            16_384,
            1 << 20,
            1 << 20,
            100,
            100,
            3000,
            70_000,
            10,
            16_352,
        ];
        check_frames(&file, &mut tail, &mut logical, &lens);
        assert!(tail.dirty_since().is_some());
        assert!(tail.write_out(&file).unwrap());
        assert!(!tail.write_out(&file).unwrap(), "nothing left to write");
        assert_eq!(file_bytes(&file), logical);
        assert!(tail.dirty_since().is_none());
        // Still held after write_out: the next append re-sends it and stays aligned.
        check_frames(&file, &mut tail, &mut logical, &[16_384, 16_384]);
        tail.write_out(&file).unwrap();
        tail.release();
        assert!(tail.snapshot().is_none());
        assert_eq!(tail.end(), logical.len() as u64);
        assert_eq!(file_bytes(&file), logical);
    }

    #[test]
    fn frames_of_16_kib_are_written_as_aligned_64_kib_blocks() {
        let file = tempfile::tempfile().unwrap();
        let mut tail = HeldTail::at(0);
        let mut logical = Vec::new();
        check_frames(&file, &mut tail, &mut logical, &[16_384; 100]);
        // 100 frames of 16 KiB + 32 B (1 641 600 B): 25 aligned 64 KiB blocks written, the rest held.
        assert_eq!(tail.file_end(), 25 * 65_536);
        assert_eq!(tail.end() - tail.file_end(), 1_641_600 - 25 * 65_536);
    }

    #[test]
    fn held_pages_already_written_are_not_written_again() {
        let file = tempfile::tempfile().unwrap();
        let mut tail = HeldTail::at(0);
        let mut logical = Vec::new();
        // Three 16 KiB frames: held (no 64 KiB boundary passed), then written out by a "sync".
        check_frames(&file, &mut tail, &mut logical, &[16_384; 3]);
        assert_eq!(tail.file_end(), 0);
        tail.write_out(&file).unwrap();
        assert_eq!(tail.file_end(), 3 * 16_416);
        // Scribble over the written pages: if the next append re-sent them, the scribble would be overwritten.
        use std::os::unix::fs::FileExt as _;
        file.write_all_at(&[0xEE; 4096], 4096).unwrap();
        check_frames_unchecked(&file, &mut tail, &[16_384]);
        let on_file = file_bytes(&file);
        assert_eq!(
            &on_file[4096..8192],
            &[0xEE; 4096][..],
            "whole written pages are not re-sent"
        );
        // The partially written page (the one holding the first unwritten byte) is re-sent whole.
        let page = (3 * 16_416 / 4096) * 4096;
        assert_eq!(
            &on_file[page..65_536],
            &logical_with(&logical, 16_384)[page..65_536]
        );
    }

    /// Appends one frame per length like [`check_frames`], without checking the file against the log.
    fn check_frames_unchecked(file: &File, tail: &mut HeldTail, lens: &[usize]) {
        for (n, &len) in lens.iter().enumerate() {
            let header = [(n + 3) as u8; 32];
            let payload = vec![((n + 3) as u8).wrapping_add(100); len];
            tail.append(file, &[&header, &payload], true, Instant::now())
                .unwrap();
        }
    }

    /// `logical` followed by the frame `check_frames_unchecked` appends as its first.
    fn logical_with(logical: &[u8], len: usize) -> Vec<u8> {
        let mut v = logical.to_vec();
        v.extend_from_slice(&[3u8; 32]);
        v.extend(std::iter::repeat_n(103u8, len));
        v
    }

    /// Appends frames of the given payload lengths with [`HeldTail::append_header_last`], checking what
    /// [`check_frames`] checks and that, when `header` is called, the header's place in the file holds zeros
    /// (or is not written at all).
    fn check_frames_header_last(
        file: &File,
        tail: &mut HeldTail,
        logical: &mut Vec<u8>,
        lens: &[usize],
        hold: bool,
    ) {
        for (n, &len) in lens.iter().enumerate() {
            let header = [(n as u8) | 0x80; 32];
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + n) as u8).collect();
            let frame_at = tail.end();
            let start_before = tail.start;
            let file_end_before = tail.file_end();
            tail.append_header_last(file, &payload, hold, Instant::now(), || {
                // Called once the payload is written (when the header is, too): the header's place holds zeros.
                let on_file = file_bytes(file);
                if on_file.len() as u64 > frame_at {
                    assert!(
                        on_file.len() as u64 >= frame_at + 32,
                        "written with a placeholder"
                    );
                    assert_eq!(
                        &on_file[frame_at as usize..frame_at as usize + 32],
                        &[0u8; 32]
                    );
                }
                assert!(on_file.len() as u64 >= file_end_before);
                header
            })
            .unwrap();
            logical.extend_from_slice(&header);
            logical.extend_from_slice(&payload);
            let on_file = file_bytes(file);
            assert_eq!(on_file.len() as u64, tail.file_end());
            if hold && tail.start != start_before {
                let align = alignment(32 + len as u64);
                assert_eq!(tail.start % align, 0, "a write ends on a boundary");
            }
            if !hold {
                assert_eq!(tail.file_end(), tail.end(), "everything written");
            }
            assert_eq!(tail.end(), logical.len() as u64);
            assert_eq!(on_file.as_slice(), &logical[..on_file.len()]);
            let held = tail.snapshot().map_or(Vec::new(), |h| h.bytes.to_vec());
            assert_eq!(held.as_slice(), &logical[tail.start as usize..]);
        }
    }

    #[test]
    fn header_last_appends_write_the_same_file() {
        for hold in [true, false] {
            let file = tempfile::tempfile().unwrap();
            let mut tail = HeldTail::at(0);
            let mut logical = Vec::new();
            // Large frames at every offset from a boundary, small ones in between (the fallback), then a
            // write-out (a sync) before more large ones.
            let lens = [
                1 << 20,
                100,
                300_000,
                (1 << 20) - 32,
                65_536,
                16_384,
                262_144,
                70_000,
                10,
                2 << 20,
            ];
            check_frames_header_last(&file, &mut tail, &mut logical, &lens, hold);
            tail.write_out(&file).unwrap();
            check_frames(&file, &mut tail, &mut logical, &[5000, 16_384]);
            check_frames_header_last(&file, &mut tail, &mut logical, &[500_000, 1 << 20], hold);
            tail.write_out(&file).unwrap();
            assert_eq!(file_bytes(&file), logical, "hold {hold}");
        }
    }

    #[test]
    fn a_snapshot_from_a_position_copies_only_what_lies_past_it() {
        let file = tempfile::tempfile().unwrap();
        let mut tail = HeldTail::at(0);
        let mut logical = Vec::new();
        check_frames(&file, &mut tail, &mut logical, &[1000; 70]);
        let all = tail.snapshot().unwrap();
        assert_eq!(all.start, 65_536);
        for pos in [0, 65_536, 70_000, logical.len() as u64 - 1] {
            let part = tail.snapshot_from(pos).unwrap();
            assert_eq!(part.start, pos.max(65_536));
            assert_eq!(part.bytes.as_ref(), &logical[part.start as usize..]);
        }
        assert!(tail.snapshot_from(logical.len() as u64).is_none());
        assert!(tail.snapshot_from(u64::MAX).is_none());
    }

    #[test]
    fn without_hold_everything_is_written_at_once() {
        let file = tempfile::tempfile().unwrap();
        let mut tail = HeldTail::at(0);
        tail.append(&file, &[&[1u8; 32], &[2u8; 100]], false, Instant::now())
            .unwrap();
        assert_eq!(file_bytes(&file).len(), 132);
        assert!(tail.snapshot().is_none());
        assert!(tail.dirty_since().is_none());
        // After a release mid-page, holding starts again unaligned and realigns at the next boundary.
        tail.append(&file, &[&[3u8; 32], &[4u8; 70_000]], true, Instant::now())
            .unwrap();
        assert_eq!(file_bytes(&file).len() as u64, 65_536);
        assert_eq!(tail.end(), 132 + 70_032);
        tail.release(); // not everything is in the file: keeps the held bytes
        assert_eq!(tail.snapshot().unwrap().bytes.len(), 132 + 70_032 - 65_536);
    }
}
