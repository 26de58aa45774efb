//! Random bodies for every served API and version go through header parsing and the codec's decoder (as the
//! fuzz targets in `fuzz/` do for longer): errors are fine, panics and aborts are not. Runs in CI; the fuzz
//! targets run for longer by hand (`cargo +nightly fuzz run kafka_request`).

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use wharf_kafka::apis;
use wharf_kafka::codec::{decode_and_check, parse_request};

#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

fn frame(key: i16, version: i16, body: &[u8]) -> Bytes {
    let mut f = BytesMut::new();
    f.put_i16(key);
    f.put_i16(version);
    f.put_i32(1);
    f.put_slice(body);
    f.freeze()
}

fn served() -> Vec<(i16, i16)> {
    apis::supported()
        .into_iter()
        .flat_map(|(k, r)| (r.min..=r.max).map(move |v| (k as i16, v)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
    #[test]
    fn random_bodies_never_panic(pick in 0usize..1000, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let all = served();
        let (key, version) = all[pick % all.len()];
        if let Ok(mut request) = parse_request(frame(key, version, &body)) {
            let _ = decode_and_check(&mut request);
        }
    }

    #[test]
    fn huge_counts_at_every_position_never_abort(pick in 0usize..1000, at in 0usize..40, fill in prop_oneof![Just(0xffu8), Just(0x7fu8), Just(0x41u8)]) {
        // A well-formed-looking prefix with a run of bytes that read as enormous array or string lengths.
        let all = served();
        let (key, version) = all[pick % all.len()];
        let mut body = vec![0u8; 48];
        for b in body.iter_mut().skip(at).take(5) {
            *b = fill;
        }
        if let Ok(mut request) = parse_request(frame(key, version, &body)) {
            let _ = decode_and_check(&mut request);
        }
    }
}

#[test]
fn the_delete_topics_trap_is_refused_cleanly() {
    let trap = Bytes::from_static(&[
        0x00, 0x14, 0x00, 0x01, 0x41, 0x00, 0x01, 0x41, 0x00, 0x00, 0x41, 0x2c, 0x00, 0x00,
    ]);
    let mut request = parse_request(trap).expect("the header is valid");
    assert!(decode_and_check(&mut request).is_err());
}
