//! Kafka record batches (magic 2) as the broker sees them: a 61-byte header it reads and checks, and records
//! it never decodes.
//!
//! Produce hands the broker `records` bytes holding one or more batches back to back. Each is checked here —
//! magic, lengths, CRC32C, record count — and then stored *as received*; the only bytes the broker writes are
//! the base offset and partition leader epoch (outside the CRC) and, under `LogAppendTime`, the timestamp type
//! bit and max timestamp (after which the CRC is recomputed). Compressed batches stay compressed.
//!
//! Layout (all big-endian): baseOffset i64 @0, batchLength i32 @8 (bytes after this field),
//! partitionLeaderEpoch i32 @12, magic i8 @16, crc u32 @17 (CRC32C of bytes 21..end), attributes i16 @21,
//! lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43,
//! producerEpoch i16 @51, baseSequence i32 @53, recordCount i32 @57, records @61.

use kafka_protocol::ResponseError;

/// Where the batch CRC's coverage starts: everything the broker may stamp (base offset, leader epoch) lies
/// before it, so the checked CRC still describes `batch[CRC_FROM..]` after stamping under `CreateTime`.
pub const CRC_FROM: usize = 21;
/// Size of the v2 batch header; also the smallest legal batch.
pub const HEADER_LEN: usize = 61;
/// Offset of the magic byte — at the same place in message sets v0/v1, so old formats are recognised.
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// Attribute bit: timestamps are the broker's (LogAppendTime).
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit: part of a transaction.
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: a control batch (transaction markers), which only the broker writes.
const ATTR_CONTROL: i16 = 1 << 5;

fn be_i16(b: &[u8], at: usize) -> i16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    i16::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The header fields of one batch that the broker needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total size of the batch in bytes (header and records).
    pub size: usize,
    /// The batch's CRC32C of bytes 21.. (checked by [`check`]).
    pub crc: u32,
    /// Attribute bits (compression codec in bits 0–2).
    pub attributes: i16,
    /// Offset delta of the last record; `record_count - 1` for every batch a producer builds.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// The producer fields, for batches of an idempotent producer (`producer_id >= 0`).
    pub fn producer(&self) -> Option<wharf_core::BatchProducer> {
        if self.producer_id < 0 {
            return None;
        }
        // The last sequence wraps past i32::MAX like the sequence itself.
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        let last_seq = if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        };
        Some(wharf_core::BatchProducer {
            producer_id: self.producer_id,
            epoch: self.producer_epoch,
            first_seq: self.base_sequence,
            last_seq,
            max_timestamp: self.max_timestamp,
        })
    }

    /// True when the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
}

/// Why a batch was refused, with the Kafka error code the produce response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// The Kafka error.
    pub error: ResponseError,
    /// A message for the client (`error_message` in Produce v8+) and the log.
    pub message: String,
}

fn refuse(error: ResponseError, message: impl Into<String>) -> BatchError {
    BatchError {
        error,
        message: message.into(),
    }
}

/// Checks the batch at the start of `bytes` and returns its header. Never reads past `bytes`.
pub fn check(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    if bytes.len() <= MAGIC_AT {
        return Err(refuse(
            ResponseError::CorruptMessage,
            "record data is too short for a batch header",
        ));
    }
    let magic = bytes[MAGIC_AT];
    if magic != 2 {
        return Err(refuse(
            ResponseError::UnsupportedForMessageFormat,
            format!("message format v{magic} is not supported; producers must use record batches (magic 2)"),
        ));
    }
    if bytes.len() < HEADER_LEN {
        return Err(refuse(
            ResponseError::CorruptMessage,
            "record batch header is truncated",
        ));
    }
    let batch_length = be_i32(bytes, 8);
    let size = usize::try_from(batch_length)
        .ok()
        .and_then(|l| l.checked_add(12))
        .filter(|&s| s >= HEADER_LEN)
        .ok_or_else(|| {
            refuse(
                ResponseError::CorruptMessage,
                format!("invalid batch length {batch_length}"),
            )
        })?;
    if size > bytes.len() {
        return Err(refuse(
            ResponseError::CorruptMessage,
            format!(
                "batch claims {size} bytes but only {} were sent",
                bytes.len()
            ),
        ));
    }
    if size > max_batch_bytes {
        return Err(refuse(
            ResponseError::MessageTooLarge,
            format!("batch of {size} bytes exceeds max.message.bytes ({max_batch_bytes})"),
        ));
    }
    let batch = &bytes[..size];
    let stored_crc = be_i32(batch, CRC_AT) as u32;
    let crc = crc32c::crc32c(&batch[CRC_FROM..]);
    if crc != stored_crc {
        return Err(refuse(
            ResponseError::CorruptMessage,
            format!("batch CRC mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"),
        ));
    }
    let header = header_of(batch);
    if header.record_count < 1
        || i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1
    {
        return Err(refuse(
            ResponseError::InvalidRecord,
            format!(
                "batch has {} records but last offset delta {}",
                header.record_count, header.last_offset_delta
            ),
        ));
    }
    if header.attributes & ATTR_CONTROL != 0 {
        return Err(refuse(
            ResponseError::InvalidRecord,
            "producers may not send control batches",
        ));
    }
    Ok(header)
}

/// Splits `records` into the batches it holds, checking each. An empty `records` is refused as Kafka does.
pub fn split(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(usize, BatchHeader)>, BatchError> {
    if records.is_empty() {
        return Err(refuse(
            ResponseError::InvalidRecord,
            "produce request without record batches",
        ));
    }
    let mut batches = Vec::with_capacity(1);
    let mut at = 0;
    while at < records.len() {
        let header = check(&records[at..], max_batch_bytes)?;
        batches.push((at, header));
        at += header.size;
    }
    Ok(batches)
}

/// Writes the broker's fields into a checked batch: base offset and leader epoch (outside the CRC) and, under
/// `LogAppendTime`, the timestamp-type bit and `max_timestamp = now_ms` with a recomputed CRC.
pub fn stamp(
    batch: &mut [u8],
    base_offset: u64,
    leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) {
    debug_assert!(batch.len() >= HEADER_LEN, "stamp() on an unchecked batch");
    batch[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now) = log_append_time_ms {
        let attributes = be_i16(batch, 21) | ATTR_LOG_APPEND_TIME;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
        batch[35..43].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_FROM..]);
        batch[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
    }
}

/// The idempotent-producer fields of a stored batch, for rebuilding producer state at start-up; `None` for
/// batches without a producer id (or too short to be a batch, which a checked log never holds).
pub fn producer_fields(stored: &[u8]) -> Option<wharf_core::BatchProducer> {
    if stored.len() < HEADER_LEN || stored[MAGIC_AT] != 2 {
        return None;
    }
    let header = header_of(stored);
    header.producer().filter(|p| p.producer_id >= 0)
}

fn header_of(batch: &[u8]) -> BatchHeader {
    BatchHeader {
        size: batch.len(),
        crc: be_i32(batch, CRC_AT) as u32,
        attributes: be_i16(batch, 21),
        last_offset_delta: be_i32(batch, 23),
        base_timestamp: be_i64(batch, 27),
        max_timestamp: be_i64(batch, 35),
        producer_id: be_i64(batch, 43),
        producer_epoch: be_i16(batch, 51),
        base_sequence: be_i32(batch, 53),
        record_count: be_i32(batch, 57),
    }
}

/// Reads a zigzag varint (as in Kafka records) from `b` at `*at`, advancing it.
fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

/// Within one stored batch, the first record whose timestamp is `>= timestamp`, as `(offset, timestamp)`.
///
/// Only uncompressed batches are walked (records are never decompressed on the broker); for a compressed
/// batch, and for `LogAppendTime` batches where every record carries the batch's time, the batch's own base
/// offset and max timestamp are the answer. `None` if the batch is malformed or holds no such record.
pub fn first_record_at_or_after(batch: &[u8], timestamp: i64) -> Option<(i64, i64)> {
    if batch.len() < HEADER_LEN {
        return None;
    }
    let base_offset = be_i64(batch, 0);
    let attributes = be_i16(batch, 21);
    let base_timestamp = be_i64(batch, 27);
    let max_timestamp = be_i64(batch, 35);
    if attributes & 0x07 != 0 || attributes & ATTR_LOG_APPEND_TIME != 0 {
        return (max_timestamp >= timestamp).then_some((base_offset, max_timestamp));
    }
    let mut at = HEADER_LEN;
    for _ in 0..be_i32(batch, 57) {
        let length = usize::try_from(varint(batch, &mut at)?).ok()?;
        let end = at.checked_add(length)?;
        let mut field = at + 1; // skip the record's attributes byte
        let ts = base_timestamp.checked_add(varint(batch, &mut field)?)?;
        let offset = base_offset.checked_add(varint(batch, &mut field)?)?;
        if ts >= timestamp {
            return Some((offset, ts));
        }
        at = end;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid uncompressed batch of `count` records (the records themselves are opaque filler).
    pub(crate) fn make_batch(count: i32, max_ts: i64, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b.extend_from_slice(body);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&max_ts.to_be_bytes());
        b[35..43].copy_from_slice(&max_ts.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn accepts_valid_batches_and_splits_them() {
        let mut two = make_batch(3, 10, b"abc");
        two.extend(make_batch(1, 11, b""));
        let batches = split(&two, 1 << 20).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].1.record_count, 3);
        assert_eq!(batches[1].0, HEADER_LEN + 3);
        assert_eq!(batches[1].1.max_timestamp, 11);
    }

    #[test]
    fn refuses_bad_batches_with_kafka_codes() {
        let good = make_batch(2, 5, b"xy");
        let mut flipped = good.clone();
        flipped[62] ^= 1;
        assert_eq!(
            check(&flipped, 1 << 20).unwrap_err().error,
            ResponseError::CorruptMessage
        );
        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(
            check(&old, 1 << 20).unwrap_err().error,
            ResponseError::UnsupportedForMessageFormat
        );
        assert_eq!(
            check(&good, 10).unwrap_err().error,
            ResponseError::MessageTooLarge
        );
        assert_eq!(
            check(&good[..40], 1 << 20).unwrap_err().error,
            ResponseError::CorruptMessage
        );
        let mut long = good.clone();
        long[8..12].copy_from_slice(&1000i32.to_be_bytes());
        assert_eq!(
            check(&long, 1 << 20).unwrap_err().error,
            ResponseError::CorruptMessage
        );
        let mut negative = good.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            check(&negative, 1 << 20).unwrap_err().error,
            ResponseError::CorruptMessage
        );
        assert_eq!(
            split(&[], 1 << 20).unwrap_err().error,
            ResponseError::InvalidRecord
        );
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let mut b = make_batch(2, 5, b"xy");
        stamp(&mut b, 42, 0, Some(999));
        let h = check(&b, 1 << 20).unwrap();
        assert_eq!(h.max_timestamp, 999);
        assert_eq!(be_i64(&b, 0), 42);
        assert_ne!(h.attributes & ATTR_LOG_APPEND_TIME, 0);
    }

    /// Appends one record (no key, value `v`, no headers) with the given deltas, as a producer encodes it.
    fn push_record(out: &mut Vec<u8>, ts_delta: i64, offset_delta: i64, v: &[u8]) {
        fn zz(out: &mut Vec<u8>, n: i64) {
            let mut raw = ((n << 1) ^ (n >> 63)) as u64;
            loop {
                let byte = (raw & 0x7f) as u8;
                raw >>= 7;
                if raw == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        let mut body = vec![0u8];
        zz(&mut body, ts_delta);
        zz(&mut body, offset_delta);
        zz(&mut body, -1);
        zz(&mut body, v.len() as i64);
        body.extend_from_slice(v);
        zz(&mut body, 0);
        zz(out, body.len() as i64);
        out.extend(body);
    }

    #[test]
    fn finds_the_first_record_at_or_after_a_timestamp() {
        let mut records = Vec::new();
        push_record(&mut records, 0, 0, b"a");
        push_record(&mut records, 100, 1, b"b");
        push_record(&mut records, 200, 2, b"c");
        let mut b = make_batch(3, 1200, &records);
        b[27..35].copy_from_slice(&1000i64.to_be_bytes());
        stamp(&mut b, 50, 0, None);
        assert_eq!(first_record_at_or_after(&b, 900), Some((50, 1000)));
        assert_eq!(first_record_at_or_after(&b, 1050), Some((51, 1100)));
        assert_eq!(first_record_at_or_after(&b, 1200), Some((52, 1200)));
        assert_eq!(first_record_at_or_after(&b, 1201), None);
        assert_eq!(first_record_at_or_after(&b[..70], 1100), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = split(&bytes, 1 << 20);
        }
    }
}
