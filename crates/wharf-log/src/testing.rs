//! Support for the crash and stress tests (the `wharf-log-torture` binary and the tests that check its
//! output). Not part of the storage API.

/// A self-describing payload: the 8-byte id (little endian) followed by `len` pseudo-random bytes derived
/// from it, so a reader can tell an intact batch from a damaged one without any other record.
pub fn pattern(id: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&id.to_le_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    out.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    out
}

/// Whether `payload` is an intact [`pattern`]; returns its id.
pub fn check_pattern(payload: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    (pattern(id, payload.len() - 8) == payload).then_some(id)
}
