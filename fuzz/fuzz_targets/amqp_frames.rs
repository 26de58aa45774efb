//! Any bytes as a stream of AMQP frames: the frame reader (size checked before buffering, end octet,
//! nesting guard, remembered methods and content headers) and amq-protocol's method and content-header parsers
//! must return frames or an error, never panic, overflow the stack or abort. Property bytes of content headers
//! are parsed again as the broker does when it routes by headers. What the stream reads as through one memo (as
//! a connection keeps it) must be what each frame reads as parsed afresh.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same allocator as the broker.
#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    // A small frame_max first (what a client negotiates down to), then the default.
    for frame_max in [4096u32, 131_072] {
        let mut b = buf.clone();
        let mut fresh = buf.clone();
        // One memo for the stream, as a connection keeps it (remembered publishes, acks and headers).
        let mut memo = wharf_amqp::frame::MethodMemo::default();
        loop {
            let remembered = wharf_amqp::frame::next_frame_with(&mut b, frame_max, &mut memo);
            let parsed = wharf_amqp::frame::next_frame(&mut fresh, frame_max);
            match (&remembered, &parsed) {
                // Bodies are never remembered; comparing their debug text would only slow the fuzzer.
                (
                    Ok(Some(wharf_amqp::frame::Frame::Body(a, x))),
                    Ok(Some(wharf_amqp::frame::Frame::Body(b, y))),
                ) => assert!(a == b && x == y),
                _ => assert_eq!(format!("{remembered:?}"), format!("{parsed:?}")),
            }
            let Ok(Some(frame)) = remembered else {
                break;
            };
            if let wharf_amqp::frame::Frame::Header(_, _, raw) = frame {
                let _ = wharf_amqp::frame::parse_properties(&raw);
            }
        }
    }
    buf.clear();
});
