//! Any bytes as a stream of AMQP frames: the frame reader (size checked before buffering, end octet,
//! nesting guard, remembered methods) and amq-protocol's method and content-header parsers must return frames or an error, never
//! panic, overflow the stack or abort. Property bytes of content headers are parsed again as the broker does
//! when it routes by headers.
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
        // One memo for the stream, as a connection keeps it (remembered publishes and acks).
        let mut memo = wharf_amqp::frame::MethodMemo::default();
        while let Ok(Some(frame)) = wharf_amqp::frame::next_frame_with(&mut b, frame_max, &mut memo) {
            if let wharf_amqp::frame::Frame::Header(_, _, raw) = frame {
                let _ = wharf_amqp::frame::parse_properties(&raw);
            }
        }
    }
    buf.clear();
});
