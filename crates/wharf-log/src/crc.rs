//! CRC32C of a concatenation from the CRCs of its parts, without reading the second part again.
//!
//! Why: a caller that has already computed the CRC32C of most of a payload (a Kafka record batch carries one over
//! its bytes 21.., which the broker must verify anyway) can hand it to the log, and the frame CRC is then derived in
//! ~0.1 µs instead of re-reading the payload (~40 µs per MiB). See [`crate::KnownCrc`].
//!
//! `crc(A ++ B) = crc(A) · x^(8·|B|) mod P  xor  crc(B)`: the pre- and post-conditioning of CRC32C cancel out, so
//! only the multiplication by `x^(8·|B|)` is needed. It is done as in zlib's `crc32_combine` (polynomials in
//! reflected bit order, `multmodp`), with the powers `x^(8·j·256^k)` precomputed for every byte value `j` of the
//! length (a 4 KiB table), so a length costs at most 4 multiplications (one per non-zero byte).

/// The CRC32C (Castagnoli) polynomial in reflected bit order, `x^32` implied.
const POLY: u32 = 0x82F6_3B78;
/// Bytes of a `u32` length.
const DIGITS: usize = 4;

/// `a · b mod P`, both in reflected bit order (bit 31 is `x^0`).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `POWERS[k][j - 1] = x^(8 · j · 256^k) mod P`: the shift by `j · 256^k` bytes.
const POWERS: [[u32; 255]; DIGITS] = {
    let mut table = [[0u32; 255]; DIGITS];
    // x^8, the shift by one byte (x^1 is 1 << 30 in reflected order; square three times).
    let mut x8 = 1u32 << 30;
    let mut i = 0;
    while i < 3 {
        x8 = mult_mod_p(x8, x8);
        i += 1;
    }
    let mut base = x8; // x^(8 · 256^k)
    let mut k = 0;
    while k < DIGITS {
        let mut acc = base;
        let mut j = 0;
        while j < 255 {
            table[k][j] = acc;
            acc = mult_mod_p(acc, base);
            j += 1;
        }
        // acc is now base^256.
        base = acc;
        k += 1;
    }
    table
};

/// `crc` shifted past `len` zero bytes without conditioning: `crc · x^(8·len) mod P`.
fn shift(crc: u32, len: u32) -> u32 {
    let mut crc = crc;
    let mut rest = len;
    for row in &POWERS {
        let digit = (rest & 0xff) as usize;
        if let Some(&power) = digit.checked_sub(1).and_then(|j| row.get(j)) {
            crc = mult_mod_p(power, crc);
        }
        rest >>= 8;
    }
    crc
}

/// The CRC32C of `A ++ B` given `crc_a = crc32c(A)`, `crc_b = crc32c(B)` and `len_b = |B|` (a batch is shorter
/// than 4 GiB: see [`crate::BATCH_BYTES_MAX`]).
pub(crate) fn combine(crc_a: u32, crc_b: u32, len_b: u32) -> u32 {
    shift(crc_a, len_b) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn combine_equals_the_crc_of_the_concatenation() {
        let d = data(300_000);
        for (a, b) in [
            (0, 0),
            (0, 5),
            (7, 0),
            (28, 1),
            (49, 16_363),
            (1, 65_536),
            (3, 299_997),
            (1000, 4096),
            (21, 0x2_0000 + 0xF_0F0),
        ] {
            let whole = crc32c::crc32c(&d[..a + b]);
            let crc_a = crc32c::crc32c(&d[..a]);
            let crc_b = crc32c::crc32c(&d[a..a + b]);
            assert_eq!(combine(crc_a, crc_b, b as u32), whole, "a={a} b={b}");
            assert_eq!(crc32c::crc32c_combine(crc_a, crc_b, b), whole);
        }
    }

    #[test]
    fn agrees_with_the_crate_for_every_digit() {
        for len in [
            1u32,
            0xF,
            0x10,
            0xFF,
            0x100,
            0x00FF_0001,
            0xFFFF_FFFF,
            0x8000_0000,
            0x1234_5678,
            0x0FED_CBA9,
        ] {
            assert_eq!(
                combine(0x1234_5678, 0x9abc_def0, len),
                crc32c::crc32c_combine(0x1234_5678, 0x9abc_def0, len as usize),
                "len={len:#x}"
            );
        }
    }
}
