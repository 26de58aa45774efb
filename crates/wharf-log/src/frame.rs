//! The on-disk frame around each appended batch.
//!
//! The log never interprets payloads, so it wraps each one in a fixed 32-byte header of its own:
//!
//! | bytes  | field          | why                                                         |
//! |--------|----------------|-------------------------------------------------------------|
//! | 0..4   | crc32c         | over bytes 4..32 and the payload: detects torn and rotten data |
//! | 4..8   | payload_len    | u32 LE; checked against the file length before allocating   |
//! | 8..16  | base_offset    | u64 LE; must equal the previous batch's end (dense offsets)  |
//! | 16..20 | record_count   | u32 LE, at least 1                                           |
//! | 20..28 | max_timestamp  | i64 LE; drives the time index and age retention              |
//! | 28     | format version | [`FRAME_VERSION`]                                            |
//! | 29..32 | reserved       | zero                                                         |
//!
//! The CRC comes first so that a zeroed region (the usual shape of a torn write on ext4) never checks out.

/// Length of the frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 32;
/// Below this many bytes a [`KnownCrc`] is ignored: reading them (~22 GB/s with the CPU's CRC instruction)
/// costs less than deriving the frame CRC from the known one (~0.1–0.2 µs).
pub const KNOWN_CRC_MIN_BYTES: usize = 4096;

/// The CRC32C of the end of a payload, `payload[from..]`, that the caller has already computed over the very
/// bytes it appends: the frame CRC is then derived from it instead of re-reading those bytes (see
/// [`crate::Log::append_with_known_crc`]). A Kafka record batch carries one over its bytes 21.. (after the
/// base offset, length, leader epoch, magic and the CRC itself), which the broker verifies before appending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownCrc {
    /// Where the covered part of the payload starts.
    pub from: usize,
    /// CRC32C (Castagnoli, as `crc32c::crc32c` computes it) of `payload[from..]`.
    pub crc32c: u32,
}
/// Version byte of the frame format written by this build.
pub const FRAME_VERSION: u8 = 1;

/// The decoded frame header of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// CRC32C over header bytes 4..32 and the payload.
    pub crc: u32,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// Offset of the first record of the batch.
    pub base_offset: u64,
    /// Number of records (offsets) the batch takes.
    pub record_count: u32,
    /// Largest timestamp of the batch (caller's unit; milliseconds for Kafka and AMQP).
    pub max_timestamp: i64,
}

impl FrameHeader {
    /// Offset just past the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Bytes the batch takes on disk, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// Encodes the header for `payload`, computing the CRC.
    pub fn encode(
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        payload: &[u8],
    ) -> [u8; FRAME_HEADER_LEN] {
        Self::encode_with_known_crc(base_offset, record_count, max_timestamp, payload, None)
    }

    /// Like [`FrameHeader::encode`], but derives the CRC from `known` (the CRC32C of `payload[known.from..]`,
    /// trusted, not checked here) when that is cheaper than reading those bytes.
    pub fn encode_with_known_crc(
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        payload: &[u8],
        known: Option<KnownCrc>,
    ) -> [u8; FRAME_HEADER_LEN] {
        let mut h = Self::encode_unsealed(base_offset, record_count, max_timestamp, payload.len());
        let head = crc32c::crc32c(&h[4..]);
        let split = known.and_then(|k| {
            let (prefix, suffix) = payload.split_at_checked(k.from)?;
            let suffix_len = u32::try_from(suffix.len()).ok()?;
            (suffix.len() >= KNOWN_CRC_MIN_BYTES).then_some((prefix, k.crc32c, suffix_len))
        });
        let crc = match split {
            Some((prefix, suffix_crc, suffix_len)) => {
                crate::crc::combine(crc32c::crc32c_append(head, prefix), suffix_crc, suffix_len)
            }
            None => crc32c::crc32c_append(head, payload),
        };
        h[0..4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header of a batch of `payload_len` bytes with its CRC field still zero: [`FrameHeader::seal`] fills
    /// it in once the payload's CRC32C is known.
    pub(crate) fn encode_unsealed(
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        payload_len: usize,
    ) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        let payload_len = u32::try_from(payload_len).unwrap_or(u32::MAX);
        h[4..8].copy_from_slice(&payload_len.to_le_bytes());
        h[8..16].copy_from_slice(&base_offset.to_le_bytes());
        h[16..20].copy_from_slice(&record_count.to_le_bytes());
        h[20..28].copy_from_slice(&max_timestamp.to_le_bytes());
        h[28] = FRAME_VERSION;
        h
    }

    /// Completes a header from [`FrameHeader::encode_unsealed`] given `payload_crc`, the CRC32C of the whole
    /// payload (computed elsewhere, e.g. in parts by [`crate::crc_helper`]): the frame CRC covers header bytes
    /// 4..32 followed by the payload.
    pub(crate) fn seal(mut h: [u8; FRAME_HEADER_LEN], payload_crc: u32) -> [u8; FRAME_HEADER_LEN] {
        let payload_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let crc = crate::crc::combine(crc32c::crc32c(&h[4..]), payload_crc, payload_len);
        h[0..4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and sanity-checks a header; the CRC is checked separately with [`FrameHeader::crc_matches`]
    /// once the payload is at hand.
    pub fn decode(h: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, &'static str> {
        if h[28] != FRAME_VERSION {
            return Err("unknown frame version");
        }
        if h[29..32] != [0, 0, 0] {
            return Err("reserved header bytes are not zero");
        }
        let header = FrameHeader {
            crc: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            payload_len: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            base_offset: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            record_count: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
            max_timestamp: i64::from_le_bytes([
                h[20], h[21], h[22], h[23], h[24], h[25], h[26], h[27],
            ]),
        };
        if header.record_count == 0 {
            return Err("record count is zero");
        }
        Ok(header)
    }

    /// Whether the stored CRC matches the header bytes and the payload.
    pub fn crc_matches(h: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> bool {
        let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        crc32c::crc32c_append(crc32c::crc32c(&h[4..]), payload) == stored
    }
}

/// Copies the first 32 bytes of `buf` into a header array; `None` if `buf` is shorter.
pub fn header_bytes(buf: &[u8]) -> Option<&[u8; FRAME_HEADER_LEN]> {
    buf.get(..FRAME_HEADER_LEN).and_then(|s| s.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc() {
        let payload = b"hello";
        let h = FrameHeader::encode(42, 3, 1234, payload);
        let d = FrameHeader::decode(&h).unwrap();
        assert_eq!(d.base_offset, 42);
        assert_eq!(d.record_count, 3);
        assert_eq!(d.max_timestamp, 1234);
        assert_eq!(d.payload_len, 5);
        assert_eq!(d.next_offset(), 45);
        assert!(FrameHeader::crc_matches(&h, payload));
        assert!(!FrameHeader::crc_matches(&h, b"hellp"));
        let mut bad = h;
        bad[9] ^= 1;
        assert!(!FrameHeader::crc_matches(&bad, payload));
    }

    #[test]
    fn a_known_crc_gives_the_same_frame() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let computed = FrameHeader::encode(5, 2, 77, &payload);
        for from in [0, 21, 100, payload.len() - KNOWN_CRC_MIN_BYTES] {
            let known = KnownCrc {
                from,
                crc32c: crc32c::crc32c(&payload[from..]),
            };
            let h = FrameHeader::encode_with_known_crc(5, 2, 77, &payload, Some(known));
            assert_eq!(h, computed, "from {from}");
        }
        // A wrong known CRC is trusted (the log checks it in debug builds): the frame fails its check on read.
        let wrong = KnownCrc {
            from: 21,
            crc32c: crc32c::crc32c(&payload[21..]) ^ 1,
        };
        let h = FrameHeader::encode_with_known_crc(5, 2, 77, &payload, Some(wrong));
        assert!(!FrameHeader::crc_matches(&h, &payload));
        // Too short a suffix, or one past the end: computed, the known CRC is not used.
        let short = KnownCrc {
            from: payload.len() - 10,
            crc32c: 0,
        };
        let past = KnownCrc {
            from: payload.len() + 1,
            crc32c: 0,
        };
        for k in [short, past] {
            assert_eq!(
                FrameHeader::encode_with_known_crc(5, 2, 77, &payload, Some(k)),
                computed
            );
        }
    }

    #[test]
    fn a_header_sealed_with_the_payload_crc_equals_the_computed_one() {
        for len in [0usize, 1, 4095, 300_000] {
            let payload: Vec<u8> = (0..len as u32).map(|i| (i * 13 + 5) as u8).collect();
            let unsealed = FrameHeader::encode_unsealed(9, 4, -3, payload.len());
            let sealed = FrameHeader::seal(unsealed, crc32c::crc32c(&payload));
            assert_eq!(sealed, FrameHeader::encode(9, 4, -3, &payload), "len {len}");
            assert!(FrameHeader::crc_matches(&sealed, &payload));
            // A wrong payload CRC gives a frame that fails its check.
            let wrong = FrameHeader::seal(unsealed, crc32c::crc32c(&payload) ^ 0x100);
            assert!(!FrameHeader::crc_matches(&wrong, &payload));
        }
    }

    #[test]
    fn zeroed_header_is_rejected() {
        let z = [0u8; FRAME_HEADER_LEN];
        assert!(FrameHeader::decode(&z).is_err());
    }
}
