//! Any bytes as one Kafka request frame (after the size prefix): header parsing, the served-version check and
//! the codec's body decoder for every served API must return an error, never panic or abort. Produce bodies
//! that decode also go through Wharf's own record-batch checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same allocator as the broker: lying array counts must cost address space, not an abort.
#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let frame = bytes::Bytes::copy_from_slice(data);
    if let Ok(mut request) = wharf_kafka::codec::parse_request(frame) {
        let _ = wharf_kafka::codec::decode_and_check(&mut request);
    }
});
