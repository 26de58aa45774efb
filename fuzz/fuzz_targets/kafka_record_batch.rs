//! Any bytes as the `records` of a produce request, and as a stored batch read back: Wharf's own record-batch
//! parsing (header checks, CRC, producer fields, the record walk of timestamp lookups) must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wharf_kafka::batch::split(data, 1 << 20);
    let _ = wharf_kafka::batch::producer_fields(data);
    if data.len() >= 8 {
        let ts = i64::from_be_bytes([data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7]]);
        let _ = wharf_kafka::batch::first_record_at_or_after(data, ts);
    }
});
