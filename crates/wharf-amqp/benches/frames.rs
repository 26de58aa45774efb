//! CPU cost of the frames of one 1 KiB message through the broker's AMQP codec path, per operation:
//! reading a publish (basic.publish, content header with delivery-mode 2, body), reading a basic.ack, and
//! writing a delivery (basic.deliver from the consumer's template, and encoded by amq-protocol in full).
//!
//! `cargo bench -p wharf-amqp --bench frames`

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wharf_amqp::frame::{next_frame, write_content, write_method, DeliverTemplate, Frame};

const FRAME_MAX: u32 = 131_072;

/// The frames a client sends to publish one 1 KiB persistent message to queue `q` via the default exchange.
fn publish_frames() -> Vec<u8> {
    let mut out = Vec::new();
    write_method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "wharf-bench-amqp-1234".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .unwrap();
    // Properties: flags with only delivery-mode set (bit 12), then the octet 2.
    let properties = [0x10, 0x00, 2];
    write_content(&mut out, 1, &properties, &[b'w'; 1024], FRAME_MAX);
    out
}

fn ack_frame() -> Vec<u8> {
    let mut out = Vec::new();
    write_method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 12345,
            multiple: false,
        })),
    )
    .unwrap();
    out
}

/// Reads every frame of `bytes`, as the connection does from its read buffer.
fn read_all(bytes: &[u8]) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    while let Some(frame) = next_frame(&mut buf, FRAME_MAX).unwrap() {
        black_box(&frame);
        if let Frame::Method(..) | Frame::Header(..) | Frame::Body(..) = frame {
            frames += 1;
        }
    }
    frames
}

fn frames(c: &mut Criterion) {
    let publish = publish_frames();
    assert_eq!(read_all(&publish), 3);
    c.bench_function("read publish (method, header, 1 KiB body)", |b| {
        b.iter(|| read_all(black_box(&publish)))
    });
    let ack = ack_frame();
    c.bench_function("read basic.ack", |b| b.iter(|| read_all(black_box(&ack))));

    let mut out = Vec::with_capacity(4096);
    let mut template = DeliverTemplate::default();
    let mut tag = 0u64;
    c.bench_function("write basic.deliver (template)", |b| {
        b.iter(|| {
            out.clear();
            tag += 1;
            template
                .write(
                    &mut out,
                    1,
                    "amq.ctag-abcdefgh",
                    tag,
                    false,
                    "",
                    "wharf-bench-amqp-1234",
                )
                .unwrap();
            black_box(&out);
        })
    });
    c.bench_function("write basic.deliver (amq-protocol encode)", |b| {
        b.iter(|| {
            out.clear();
            tag += 1;
            write_method(
                &mut out,
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "amq.ctag-abcdefgh".into(),
                    delivery_tag: tag,
                    redelivered: false,
                    exchange: "".into(),
                    routing_key: "wharf-bench-amqp-1234".into(),
                })),
            )
            .unwrap();
            black_box(&out);
        })
    });
}

criterion_group!(benches, frames);
criterion_main!(benches);
