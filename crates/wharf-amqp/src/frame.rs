//! Frames in and out.
//!
//! Reading: the 7-byte frame header (type, channel, payload size) is read here, and the size is checked
//! against `frame_max` *before* the payload is buffered, so a client cannot make the broker allocate more
//! than one frame. The payload is then handed to `amq-protocol`'s parsers (methods, content headers);
//! body payloads stay as `Bytes` slices of the read buffer (amq-protocol's `AMQPFrame::Body` would copy
//! each into a `Vec`). Writing: method frames go through `amq-protocol`'s `gen_frame`, straight into the
//! connection's output buffer. Content frames are the exception: a delivery's content header carries the
//! properties exactly as the publisher sent them (kept as bytes by the queue model), so its envelope — the
//! 7-byte frame header, class id, weight and body size — is written here around those bytes, and body frames
//! are the header, a slice of the stored body and the end octet. Decoding and re-encoding every delivered
//! message's properties, and copying its body three times, was most of the cost of a delivery.

use std::sync::Arc;

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic::AMQPProperties, parse_class, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, Bytes, BytesMut};

/// Type, channel and payload size.
pub const FRAME_HEADER_BYTES: usize = 7;
/// The frame-end octet after each payload.
pub const FRAME_END: u8 = amq_protocol::protocol::constants::FRAME_END;
/// Header and end octet: what a frame adds to its payload.
pub const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1;
/// The protocol header a 0-9-1 client sends first, and what the server answers to any other.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// The header of AMQP 0-9 (the older numbering: class 1, instance 1, version 0-9), which 0-9-1 is wire-compatible
/// with for everything a client of it sends; RabbitMQ serves it as 0-9-1, and Perl's Net::AMQP / AnyEvent::RabbitMQ
/// send it.
pub const PROTOCOL_HEADER_0_9: [u8; 8] = *b"AMQP\x01\x01\x00\x09";

/// A frame read off the wire.
///
/// A method is held by value, not boxed: a publish is a method, a header and a body and an ack is a method, so
/// a box per frame was two or three allocations per message, while the frame only moves from the reader to its
/// handler. A content header's parsed properties are the exception (see [`ContentHeader`]).
#[derive(Debug)]
pub enum Frame {
    Method(u16, AMQPClass),
    /// A content header, and its properties as received (kept opaque for the queue model).
    Header(u16, ContentHeader, Bytes),
    Body(u16, Bytes),
    Heartbeat(u16),
    /// A well-formed method asking for what the broker does not implement, in a field the codec does not
    /// keep: basic.qos with a `prefetch_size` (RabbitMQ answers 540). `(channel, class, method, text)`.
    NotImplemented(u16, u16, u16, String),
}

/// A content header as the broker uses it. The parsed properties are shared: ~300 bytes, they made every
/// `Frame` that size when held inline (copied on each move), and a header repeating the last one's properties
/// gets the same `Arc` from the [`MethodMemo`] (no parse, no copy, no allocation).
#[derive(Debug)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: Arc<AMQPProperties>,
}

/// Why a frame could not be read; each closes the connection (framing is lost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes is larger than frame_max {frame_max}")]
    TooLarge { size: u64, frame_max: u32 },
    #[error("frame does not end with 0xCE (found {0:#04x})")]
    BadEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("cannot parse {what} on channel {channel}")]
    Syntax { what: &'static str, channel: u16 },
    #[error("field tables nested deeper than {FIELD_NESTING_MAX} on channel {channel}")]
    TooDeep { channel: u16 },
}

/// Deepest nesting of field tables and arrays accepted in a frame (a 502 syntax error beyond).
///
/// Why it matters: the codec parses nested tables recursively, and a 105 KB frame of tables nested 15 000
/// deep overflowed a worker thread's stack and aborted the whole broker. A frame can only nest as deep as it
/// has `F` (table) and `A` (array) type octets, so a frame with at most this many of them is parsed as usual;
/// any other is parsed on a fresh stack sized for its worst case, its depth measured there, and refused if too
/// deep — dropped there too, since dropping a deep value recurses as well.
pub const FIELD_NESTING_MAX: usize = 64;

/// Stack bytes given per possible nesting level when a frame is parsed on a fresh stack. Measured: a release
/// build parses tables nested 18 000 deep in 2 KiB a level (and overflows 1 KiB a level); a debug build of the
/// broker needs more than 8 KiB. Only touched pages are ever committed.
const STACK_BYTES_PER_LEVEL: usize = if cfg!(debug_assertions) {
    64 * 1024
} else {
    8 * 1024
};
/// Fewest bytes one level of nesting takes: a table entry is a key (length octet), the `F` type octet and a
/// 4-byte table length; an array element an `A` and a 4-byte length.
const BYTES_PER_LEVEL_MIN: usize = 5;

/// An upper bound of the nesting depth in `payload`: every level takes one `F` or `A` type octet.
fn nesting_bound(payload: &[u8]) -> usize {
    payload.iter().filter(|&&b| b == b'F' || b == b'A').count()
}

/// The nesting depth of a table (1 for a flat one), walked without recursion.
fn table_depth(table: &FieldTable) -> usize {
    let mut deepest = 1;
    let mut todo: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = todo.pop() {
        deepest = deepest.max(depth);
        match value {
            AMQPValue::FieldTable(t) => todo.extend(t.inner().values().map(|v| (v, depth + 1))),
            AMQPValue::FieldArray(a) => todo.extend(a.as_slice().iter().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// The field tables a method carries.
fn method_tables(class: &AMQPClass) -> Vec<&FieldTable> {
    use amq_protocol::protocol::{basic, connection, exchange, queue};
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Start(m)) => vec![&m.server_properties],
        AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => vec![&m.client_properties],
        AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => vec![&m.arguments],
        AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => vec![&m.arguments],
        AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => vec![&m.arguments],
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => vec![&m.arguments],
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => vec![&m.arguments],
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => vec![&m.arguments],
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => vec![&m.arguments],
        _ => Vec::new(),
    }
}

/// The `prefetch-size` field of a basic.qos payload (class, method, then this long), which `amq-protocol`
/// parses and drops.
fn qos_prefetch_size(payload: &[u8]) -> Option<u32> {
    let field: [u8; 4] = payload.get(4..8)?.try_into().ok()?;
    Some(u32::from_be_bytes(field))
}

/// Parses a method or content-header payload with `parse`, guarding the stack (see [`FIELD_NESTING_MAX`]):
/// `None` when it does not parse, `Err` when it nests too deep.
fn parse_guarded<T>(
    payload: &[u8],
    channel: u16,
    parse: impl FnOnce(&[u8]) -> Option<T>,
    tables: impl Fn(&T) -> Vec<&FieldTable>,
) -> Result<Option<T>, FrameError> {
    let bound = nesting_bound(payload);
    if bound <= FIELD_NESTING_MAX {
        return Ok(parse(payload));
    }
    let levels = bound.min(payload.len() / BYTES_PER_LEVEL_MIN);
    let stack = STACK_BYTES_PER_LEVEL
        .saturating_mul(levels)
        .saturating_add(256 * 1024);
    stacker::grow(stack, || {
        let parsed = parse(payload);
        match &parsed {
            Some(value)
                if tables(value)
                    .into_iter()
                    .any(|t| table_depth(t) > FIELD_NESTING_MAX) =>
            {
                drop(parsed);
                Err(FrameError::TooDeep { channel })
            }
            _ => Ok(parsed),
        }
    })
}

/// Class and method ids of basic.publish and basic.ack, as the first four octets of a method payload.
const BASIC_PUBLISH_IDS: [u8; 4] = [0, 60, 0, 40];
const BASIC_ACK_IDS: [u8; 4] = [0, 60, 0, 80];
/// A basic.ack payload: ids, delivery-tag (long-long), one octet of bits (`multiple` is bit 0). The reader's
/// memo and the confirm writer's template both find the fields here.
const ACK_PAYLOAD_BYTES: usize = 4 + 8 + 1;
/// Where an ack's delivery-tag and bits octet sit in its payload.
const ACK_TAG: std::ops::Range<usize> = 4..12;
const ACK_BITS: usize = 12;
/// Longest basic.publish payload remembered (ids, ticket, two short strings and bits fit in 520 octets).
const PUBLISH_MEMO_BYTES_MAX: usize = 520;
/// A content header's octets before its property flags: class id (2), weight (2), body size (8).
const HEADER_PREFIX_BYTES: usize = 12;
/// Where the class id and weight sit in a content header.
const HEADER_CLASS_AND_WEIGHT: std::ops::Range<usize> = 0..4;
/// Where the body size sits in a content header.
const HEADER_BODY_SIZE: std::ops::Range<usize> = 4..12;
/// Longest property list remembered (content type, delivery mode and a few short headers fit).
const HEADER_MEMO_PROPERTIES_MAX: usize = 512;

/// What one connection's reader remembers of the methods and content headers it parsed, to spare
/// amq-protocol's parser the frames that come once per message (parsing the two methods was ~10 % of the
/// broker's CPU for a 1 KiB message: nom combinators and a vector of flags per method; the content header was
/// ~8 % of its instructions under callgrind, the properties' flags parsed one by one).
///
/// - basic.publish: a publisher sends the same method (exchange, routing key, flags) again and again; a payload
///   equal, octet for octet, to the last one parsed is the same method, and its parse is cloned. The parse is
///   kept only once a payload came twice in a row, so a publisher that changes its routing key every time pays
///   a comparison and a reference count, not a clone, per publish.
/// - basic.ack: consecutive acks differ only in the delivery-tag. Once amq-protocol has parsed an ack whose
///   payload shows the tag and the bits octet where the 0-9-1 grammar puts them (after the ids; checked against
///   the parsed values, as [`DeliverTemplate`] checks its encoding), a payload of the same length, ids and bits
///   octet is that ack with the tag found there. Anything else is parsed in full.
/// - content header: a publisher's messages mostly carry the same properties (content type, delivery mode) and
///   differ in body size. Once amq-protocol has parsed a header whose body size sits where the grammar puts it
///   (checked against the parse), a header with the same class, weight and property octets, twice in a row as
///   for basic.publish, is that parse with the body size found there. Properties that change per message (a
///   message id, a timestamp) cost a comparison of the property octets.
#[derive(Debug, Default)]
pub struct MethodMemo {
    /// The last basic.publish payload parsed and, once it came twice in a row, its parse.
    publish: Option<(Bytes, Option<amq_protocol::protocol::basic::Publish>)>,
    /// The bits octet of the last ack parsed, when its layout was confirmed.
    ack_bits: Option<u8>,
    /// The last content header parsed, without its body size (class id and weight, then the property
    /// octets; empty when its layout was not confirmed), and, once the same came twice in a row, its parse.
    header: (Vec<u8>, Option<Arc<AMQPProperties>>),
}

impl MethodMemo {
    /// The method `payload` encodes, when it repeats what was learnt; `None` means "parse it".
    fn recall(&self, payload: &[u8]) -> Option<AMQPClass> {
        use amq_protocol::protocol::basic::{AMQPMethod, Ack};
        let ids = payload.get(..4)?;
        if ids == BASIC_PUBLISH_IDS {
            let (known, Some(publish)) = self.publish.as_ref()? else {
                return None;
            };
            return (known.as_ref() == payload)
                .then(|| AMQPClass::Basic(AMQPMethod::Publish(publish.clone())));
        }
        if ids == BASIC_ACK_IDS && payload.len() == ACK_PAYLOAD_BYTES {
            let bits = self.ack_bits?;
            let tag: [u8; 8] = payload.get(ACK_TAG)?.try_into().ok()?;
            return (payload.get(ACK_BITS) == Some(&bits)).then(|| {
                AMQPClass::Basic(AMQPMethod::Ack(Ack {
                    delivery_tag: u64::from_be_bytes(tag),
                    multiple: bits & 1 == 1,
                }))
            });
        }
        None
    }

    /// Remembers what amq-protocol parsed `payload` as, when it is one of the two methods.
    fn learn(&mut self, payload: &Bytes, class: &AMQPClass) {
        use amq_protocol::protocol::basic::AMQPMethod;
        match class {
            AMQPClass::Basic(AMQPMethod::Publish(publish)) => {
                let again = self
                    .publish
                    .as_ref()
                    .is_some_and(|(known, _)| known == payload);
                self.publish = (payload.len() <= PUBLISH_MEMO_BYTES_MAX)
                    .then(|| (payload.clone(), again.then(|| publish.clone())));
            }
            AMQPClass::Basic(AMQPMethod::Ack(ack)) => {
                let laid_out_as_expected = payload.len() == ACK_PAYLOAD_BYTES
                    && payload.get(ACK_TAG) == Some(&ack.delivery_tag.to_be_bytes()[..])
                    && payload.get(ACK_BITS) == Some(&u8::from(ack.multiple));
                self.ack_bits = laid_out_as_expected.then_some(u8::from(ack.multiple));
            }
            _ => {}
        }
    }

    /// The content header `payload` encodes, when it repeats what was learnt but for its body size.
    fn recall_header(&self, payload: &[u8]) -> Option<ContentHeader> {
        let (known, Some(properties)) = &self.header else {
            return None;
        };
        if !same_header(known, payload) {
            return None;
        }
        let class_id = payload.get(..2)?.try_into().ok()?;
        let size = payload.get(HEADER_BODY_SIZE)?.try_into().ok()?;
        Some(ContentHeader {
            class_id: u16::from_be_bytes(class_id),
            body_size: u64::from_be_bytes(size),
            properties: Arc::clone(properties),
        })
    }

    /// Remembers the content header amq-protocol parsed `payload` as.
    fn learn_header(&mut self, payload: &[u8], header: &ContentHeader) {
        let laid_out_as_expected = payload.get(..2) == Some(&header.class_id.to_be_bytes()[..])
            && payload.get(HEADER_BODY_SIZE) == Some(&header.body_size.to_be_bytes()[..])
            && payload.len().saturating_sub(HEADER_PREFIX_BYTES) <= HEADER_MEMO_PROPERTIES_MAX;
        let (known, parse) = &mut self.header;
        if !laid_out_as_expected {
            known.clear();
            *parse = None;
            return;
        }
        if !known.is_empty() && same_header(known, payload) {
            *parse = Some(Arc::clone(&header.properties));
            return;
        }
        // The octets are kept in a buffer of the memo's own (reused), not as a slice of the read buffer, which
        // would keep that whole buffer from being reused.
        known.clear();
        known.extend_from_slice(payload.get(HEADER_CLASS_AND_WEIGHT).unwrap_or_default());
        known.extend_from_slice(payload.get(HEADER_PREFIX_BYTES..).unwrap_or_default());
        *parse = None;
    }
}

/// Whether a content header `payload` has the class, weight and property octets `known` holds.
fn same_header(known: &[u8], payload: &[u8]) -> bool {
    let (class_and_weight, properties) =
        known.split_at(known.len().min(HEADER_CLASS_AND_WEIGHT.end));
    payload.get(HEADER_CLASS_AND_WEIGHT) == Some(class_and_weight)
        && payload.get(HEADER_PREFIX_BYTES..) == Some(properties)
}

/// Takes one whole frame off the front of `buf`, or returns `None` when more bytes are needed. Nothing
/// past the 7-byte header is waited for unless the frame fits in `frame_max`.
pub fn next_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    next_frame_with(buf, frame_max, &mut MethodMemo::default())
}

/// [`next_frame`] for a connection's stream of frames: the frames a publisher and a consumer send once per
/// message (basic.publish, basic.ack, the content header) are taken from `memo` when they repeat the last one
/// parsed.
pub fn next_frame_with(
    buf: &mut BytesMut,
    frame_max: u32,
    memo: &mut MethodMemo,
) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut h = header;
    let frame_type = h.get_u8();
    let channel = h.get_u16();
    let size = h.get_u32();
    let total = u64::from(size) + FRAME_OVERHEAD_BYTES as u64;
    if total > u64::from(frame_max) {
        return Err(FrameError::TooLarge {
            size: total,
            frame_max,
        });
    }
    // `total` fits in usize: it is at most frame_max.
    let total = total as usize;
    if buf.len() < total {
        // Make room for the rest of this frame once, rather than growing step by step.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf.get(total - 1).copied().unwrap_or(0);
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    if frame_type == amq_protocol::protocol::constants::FRAME_METHOD {
        // A method the memo recognises needs no bytes of its own: it is read in place and skipped, without
        // splitting the frame off the read buffer (a reference count up and down per frame).
        let recalled = buf
            .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + size as usize)
            .and_then(|payload| memo.recall(payload));
        if let Some(class) = recalled {
            buf.advance(total);
            return Ok(Some(Frame::Method(channel, class)));
        }
    }
    let mut frame = buf.split_to(total);
    frame.advance(FRAME_HEADER_BYTES);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    match frame_type {
        amq_protocol::protocol::constants::FRAME_METHOD => {
            let parsed = parse_guarded(
                &payload,
                channel,
                |p| match parse_class(p) {
                    Ok(([], class)) => Some(class),
                    _ => None,
                },
                method_tables,
            )?;
            if let Some(AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Qos(_))) =
                &parsed
            {
                let size = qos_prefetch_size(&payload).unwrap_or(0);
                if size != 0 {
                    return Ok(Some(Frame::NotImplemented(
                        channel,
                        60,
                        10,
                        format!("prefetch_size!=0 ({size})"),
                    )));
                }
            }
            match parsed {
                Some(class) => {
                    memo.learn(&payload, &class);
                    Ok(Some(Frame::Method(channel, class)))
                }
                None => Err(FrameError::Syntax {
                    what: "method",
                    channel,
                }),
            }
        }
        amq_protocol::protocol::constants::FRAME_HEADER => {
            // class id, weight, body size: the properties follow.
            let properties = || payload.slice(HEADER_PREFIX_BYTES.min(payload.len())..);
            if let Some(header) = memo.recall_header(&payload) {
                return Ok(Some(Frame::Header(channel, header, properties())));
            }
            let parsed = parse_guarded(
                &payload,
                channel,
                // Into the `Arc` where they are parsed, so the ~300 bytes are copied once, not on every move.
                |p| match amq_protocol::frame::parsing::parse_content_header(p) {
                    Ok(([], header)) => Some(ContentHeader {
                        class_id: header.class_id,
                        body_size: header.body_size,
                        properties: Arc::new(header.properties),
                    }),
                    _ => None,
                },
                |h| h.properties.headers().iter().collect(),
            )?;
            match parsed {
                Some(header) => {
                    memo.learn_header(&payload, &header);
                    Ok(Some(Frame::Header(channel, header, properties())))
                }
                None => Err(FrameError::Syntax {
                    what: "content header",
                    channel,
                }),
            }
        }
        amq_protocol::protocol::constants::FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        amq_protocol::protocol::constants::FRAME_HEARTBEAT => Ok(Some(Frame::Heartbeat(channel))),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// Parses properties the queue model kept as received.
pub fn parse_properties(raw: &[u8]) -> AMQPProperties {
    amq_protocol::protocol::basic::parse_properties(raw)
        .map(|(_, p)| p)
        .unwrap_or_default()
}

/// Encodes content-header properties (used when the broker must change them, e.g. to drop `BCC`).
pub fn encode_properties(properties: &AMQPProperties) -> Result<Vec<u8>, String> {
    let encoded =
        amq_protocol::protocol::basic::gen_properties(properties)(WriteContext::from(Vec::new()))
            .map_err(|e| format!("cannot encode properties: {e:?}"))?;
    Ok(encoded.into_inner().0)
}

/// Appends `frame`, encoded by amq-protocol, to `out`. Fails only for values the codec cannot encode (and
/// then leaves `out` as it was).
pub fn write_frame(out: &mut Vec<u8>, frame: &AMQPFrame) -> Result<(), String> {
    thread_local! {
        // The encoder needs an owned, seekable buffer (it back-patches the frame size); reusing one per
        // thread spares an allocation per frame.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = std::mem::take(&mut *scratch.borrow_mut());
        buf.clear();
        let encoded = gen_frame(frame)(WriteContext::from(buf))
            .map_err(|e| format!("cannot encode {frame}: {e:?}"))?;
        let buf = encoded.into_inner().0;
        out.extend_from_slice(&buf);
        if buf.capacity() <= 64 * 1024 {
            *scratch.borrow_mut() = buf;
        }
        Ok(())
    })
}

/// Appends a frame header of `frame_type` on `channel` for a payload of `size` bytes.
fn put_frame_header(out: &mut Vec<u8>, frame_type: u8, channel: u16, size: usize) {
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    // Payload sizes here are bounded by frame_max (body chunks) or by a content header's properties,
    // which arrived in one frame.
    out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
}

/// Appends a method frame.
pub fn write_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) -> Result<(), String> {
    write_frame(out, &AMQPFrame::Method(channel, method))
}

/// Appends a basic.ack frame (a publisher confirm): amq-protocol's encoding of an ack, made once per process and
/// patched with the channel, delivery-tag and `multiple` bit — encoding each in full cost ~1 700 instructions, a
/// few percent of the broker's CPU per persistent confirmed message. The template is used only if patching it
/// reproduces amq-protocol's own encoding of a probe ack whose every field differs from the template's, so a
/// codec change falls back to full encoding rather than writing a wrong frame.
pub fn write_basic_ack(out: &mut Vec<u8>, channel: u16, delivery_tag: u64, multiple: bool) {
    static TEMPLATE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let mut template = Vec::new();
        write_method(&mut template, 0, basic_ack(0, false)).ok()?;
        let (channel, tag, multiple) = (0x0102, 0x0102_0304_0506_0708, true);
        let mut probe = Vec::new();
        write_method(&mut probe, channel, basic_ack(tag, multiple)).ok()?;
        let mut patched = Vec::new();
        patch_basic_ack(&mut patched, &template, channel, tag, multiple)?;
        (patched == probe).then_some(template)
    });
    let written = template
        .as_deref()
        .and_then(|t| patch_basic_ack(out, t, channel, delivery_tag, multiple));
    if written.is_none() {
        // Not reached with the amq-protocol this was built against (the probe above would have matched).
        let _ = write_method(out, channel, basic_ack(delivery_tag, multiple));
    }
}

/// Where the general frame format puts the channel: after the frame type.
const FRAME_CHANNEL: std::ops::Range<usize> = 1..3;

/// Appends `template` (an encoded ack frame) with the fields set where the grammar puts them (the payload's
/// [`ACK_TAG`] and [`ACK_BITS`], after the frame header); `None`, with nothing appended, if it does not fit.
fn patch_basic_ack(
    out: &mut Vec<u8>,
    template: &[u8],
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
) -> Option<()> {
    let start = out.len();
    out.extend_from_slice(template);
    let patched = (|| {
        let frame = out.get_mut(start..)?;
        frame
            .get_mut(FRAME_CHANNEL)?
            .copy_from_slice(&channel.to_be_bytes());
        let payload = frame.get_mut(FRAME_HEADER_BYTES..)?;
        payload
            .get_mut(ACK_TAG)?
            .copy_from_slice(&delivery_tag.to_be_bytes());
        *payload.get_mut(ACK_BITS)? = u8::from(multiple);
        Some(())
    })();
    if patched.is_none() {
        out.truncate(start);
    }
    patched
}

fn basic_ack(delivery_tag: u64, multiple: bool) -> AMQPClass {
    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Ack(
        amq_protocol::protocol::basic::Ack {
            delivery_tag,
            multiple,
        },
    ))
}

/// A consumer's basic.deliver frame as amq-protocol encodes it, for the last exchange and routing key delivered:
/// consecutive deliveries to one consumer usually differ only in delivery-tag and redelivered, so the frame is
/// copied and those two fields patched instead of being encoded anew (encoding built three strings and a flag
/// vector per delivery: ~7 % of the broker's CPU for a transient 1 KiB message).
///
/// The two fields sit where the 0-9-1 grammar puts them, right after the consumer tag: delivery-tag (long-long)
/// at [`FRAME_HEADER_BYTES`] + 4 (class and method ids) + 1 + the tag's length, then one octet of bits with
/// redelivered as bit 0. A template whose encoding does not show them there is not used (every delivery is then
/// encoded in full), so a codec change cannot make this write a wrong frame.
#[derive(Debug, Default)]
pub struct DeliverTemplate {
    frame: Vec<u8>,
    channel: u16,
    exchange: String,
    routing_key: String,
    /// Offset of the delivery-tag in `frame`; `None` while no usable template is held.
    tag_at: Option<usize>,
}

impl DeliverTemplate {
    /// Appends a basic.deliver frame for this consumer (`consumer_tag` must be the same on every call).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        out: &mut Vec<u8>,
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), String> {
        let fits = self.tag_at.is_some()
            && self.channel == channel
            && self.exchange == exchange
            && self.routing_key == routing_key;
        if !fits {
            self.rebuild(channel, consumer_tag, exchange, routing_key)?;
        }
        let Some(tag_at) = self.tag_at else {
            return write_method(
                out,
                channel,
                deliver_method(
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                ),
            );
        };
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let frame = &mut out[start..];
        frame[tag_at..tag_at + 8].copy_from_slice(&delivery_tag.to_be_bytes());
        frame[tag_at + 8] = u8::from(redelivered);
        Ok(())
    }

    fn rebuild(
        &mut self,
        channel: u16,
        consumer_tag: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), String> {
        self.tag_at = None;
        self.frame.clear();
        write_method(
            &mut self.frame,
            channel,
            deliver_method(consumer_tag, 0, false, exchange, routing_key),
        )?;
        let tag_at = FRAME_HEADER_BYTES + 4 + 1 + consumer_tag.len();
        let laid_out_as_expected = self.frame.get(tag_at..tag_at + 9) == Some(&[0u8; 9][..])
            && self.frame.get(FRAME_HEADER_BYTES + 4) == Some(&(consumer_tag.len() as u8))
            && self.frame.get(FRAME_HEADER_BYTES + 5..tag_at) == Some(consumer_tag.as_bytes());
        if laid_out_as_expected {
            self.channel = channel;
            exchange.clone_into(&mut self.exchange);
            routing_key.clone_into(&mut self.routing_key);
            self.tag_at = Some(tag_at);
        }
        Ok(())
    }
}

fn deliver_method(
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) -> AMQPClass {
    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(
        amq_protocol::protocol::basic::Deliver {
            consumer_tag: consumer_tag.into(),
            delivery_tag,
            redelivered,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        },
    ))
}

/// Appends a content header holding `properties` — encoded properties (flags and list), as a publisher sent
/// them or as amq-protocol encoded them — and the body frames (each payload at most `frame_max` - 8 bytes).
pub fn write_content(
    out: &mut Vec<u8>,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let chunk = (frame_max as usize)
        .saturating_sub(FRAME_OVERHEAD_BYTES)
        .max(1);
    out.reserve(
        2 * FRAME_OVERHEAD_BYTES
            + 12
            + properties.len()
            + body.len()
            + body.len() / chunk * FRAME_OVERHEAD_BYTES,
    );
    put_frame_header(
        out,
        amq_protocol::protocol::constants::FRAME_HEADER,
        channel,
        12 + properties.len(),
    );
    out.extend_from_slice(&60u16.to_be_bytes()); // class basic
    out.extend_from_slice(&0u16.to_be_bytes()); // weight
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(properties);
    out.push(FRAME_END);
    for part in body.chunks(chunk) {
        put_frame_header(
            out,
            amq_protocol::protocol::constants::FRAME_BODY,
            channel,
            part.len(),
        );
        out.extend_from_slice(part);
        out.push(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_methods_read_as_amq_protocol_parses_them() {
        use amq_protocol::protocol::basic::{AMQPMethod, Ack, Nack, Publish};
        let publish = |routing_key: &str, mandatory: bool| {
            AMQPClass::Basic(AMQPMethod::Publish(Publish {
                exchange: "x".into(),
                routing_key: routing_key.into(),
                mandatory,
                immediate: false,
            }))
        };
        let ack = |delivery_tag: u64, multiple: bool| {
            AMQPClass::Basic(AMQPMethod::Ack(Ack {
                delivery_tag,
                multiple,
            }))
        };
        // Repeats, changes of key, flags and tag, and a nack (same shape as an ack but other ids) between them.
        let mut sent = Vec::new();
        for i in 0..200u64 {
            sent.push(match i % 11 {
                0 => publish("other", false),
                1 => publish("k", true),
                2 => AMQPClass::Basic(AMQPMethod::Nack(Nack {
                    delivery_tag: i,
                    multiple: false,
                    requeue: true,
                })),
                3 | 4 => ack(u64::MAX - i, i % 2 == 0),
                5..=7 => publish("k", false),
                _ => ack(i * 1_000_003, false),
            });
        }
        sent.push(publish("k", false));
        sent.push(publish("k", false));
        let mut wire = Vec::new();
        for class in &sent {
            write_method(&mut wire, 1, class.clone()).unwrap();
        }
        let mut buf = BytesMut::from(&wire[..]);
        let mut memo = MethodMemo::default();
        let mut read = Vec::new();
        while let Some(frame) = next_frame_with(&mut buf, 1 << 20, &mut memo).unwrap() {
            match frame {
                Frame::Method(1, class) => read.push(class),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(read, sent);
        // The memo was used: it holds the last publish's parse and an ack layout.
        assert!(memo.publish.as_ref().is_some_and(|(_, p)| p.is_some()));
        assert!(memo.ack_bits.is_some());
    }

    #[test]
    fn remembered_content_headers_read_as_amq_protocol_parses_them() {
        use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
        let json = AMQPProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        let mut table = FieldTable::default();
        table.insert("k".into(), AMQPValue::LongLongInt(-7));
        let with_headers = json.clone().with_headers(table);
        // Repeats with other body sizes (0, small, past 2^32), changes of properties, and a property that
        // changes every time (a message id).
        let mut sent = Vec::new();
        for i in 0..120u64 {
            let (props, size) = match i % 9 {
                0 => (AMQPProperties::default(), 0),
                1 | 2 => (with_headers.clone(), i * 3),
                3 => (
                    json.clone()
                        .with_message_id(ShortString::from(format!("m{i}"))),
                    5,
                ),
                _ => (json.clone(), (1 << 33) + i),
            };
            sent.push((props, size));
        }
        let mut wire = Vec::new();
        for (props, size) in &sent {
            let raw = encode_properties(props).unwrap();
            let mut frame = Vec::new();
            write_content(&mut frame, 2, &raw, &[], 1 << 20);
            // write_content's header says an empty body; put this message's size where the grammar puts it.
            frame[FRAME_HEADER_BYTES + 4..FRAME_HEADER_BYTES + 12]
                .copy_from_slice(&size.to_be_bytes());
            wire.extend_from_slice(&frame);
        }
        let mut buf = BytesMut::from(&wire[..]);
        let mut memo = MethodMemo::default();
        let mut read = Vec::new();
        while let Some(frame) = next_frame_with(&mut buf, 1 << 20, &mut memo).unwrap() {
            let Frame::Header(2, header, raw) = frame else {
                panic!("unexpected {frame:?}");
            };
            assert_eq!(raw, encode_properties(&header.properties).unwrap());
            read.push(((*header.properties).clone(), header.body_size));
        }
        assert_eq!(read, sent);
        // The memo was used: it holds the last header's parse.
        assert!(memo.header.1.is_some());
    }

    #[test]
    fn a_publisher_that_changes_its_key_every_time_is_not_cloned_for() {
        use amq_protocol::protocol::basic::{AMQPMethod, Publish};
        let mut memo = MethodMemo::default();
        for i in 0..3 {
            let mut wire = Vec::new();
            let class = AMQPClass::Basic(AMQPMethod::Publish(Publish {
                exchange: "".into(),
                routing_key: format!("key-{i}").as_str().into(),
                mandatory: false,
                immediate: false,
            }));
            write_method(&mut wire, 1, class.clone()).unwrap();
            let frame = next_frame_with(&mut BytesMut::from(&wire[..]), 1 << 20, &mut memo);
            assert!(matches!(frame, Ok(Some(Frame::Method(1, c))) if c == class));
            assert!(memo.publish.as_ref().is_some_and(|(_, p)| p.is_none()));
        }
    }

    #[test]
    fn basic_ack_template_writes_what_amq_protocol_encodes() {
        for (channel, tag, multiple) in [
            (0u16, 0u64, false),
            (1, 1, false),
            (1, 2, true),
            (2047, u64::MAX, true),
            (u16::MAX, 1 << 40, false),
        ] {
            let mut expected = vec![9u8];
            write_method(&mut expected, channel, basic_ack(tag, multiple)).unwrap();
            let mut written = vec![9u8];
            write_basic_ack(&mut written, channel, tag, multiple);
            assert_eq!(
                written, expected,
                "channel {channel} tag {tag} multiple {multiple}"
            );
        }
    }

    #[test]
    fn deliver_template_writes_what_amq_protocol_encodes() {
        let mut template = DeliverTemplate::default();
        let cases = [
            (1u16, "ctag-1", 1u64, false, "", "q"),
            (1, "ctag-1", 2, true, "", "q"),
            (1, "ctag-1", u64::MAX, false, "", "q"),
            (1, "ctag-1", 7, false, "amq.topic", "a.b.c"),
            (2, "ctag-1", 8, true, "amq.topic", "a.b.c"),
            (2, "", 9, false, "x", ""),
            (
                2,
                &"t".repeat(255),
                1 << 40,
                true,
                &"e".repeat(255),
                &"k".repeat(255),
            ),
        ];
        for (channel, ctag, tag, redelivered, exchange, key) in cases {
            let mut expected = Vec::new();
            write_method(
                &mut expected,
                channel,
                deliver_method(ctag, tag, redelivered, exchange, key),
            )
            .unwrap();
            let mut out = vec![0xAA];
            template
                .write(&mut out, channel, ctag, tag, redelivered, exchange, key)
                .unwrap();
            assert_eq!(
                &out[1..],
                &expected[..],
                "{channel} {ctag} {tag} {redelivered}"
            );
            assert!(template.tag_at.is_some(), "the template was not usable");
        }
    }

    #[test]
    fn oversized_frame_refused_from_its_header_alone() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0x40, 0, 0, 0][..]);
        assert!(matches!(
            next_frame(&mut buf, 131_072),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(
            buf.capacity() < 1 << 20,
            "nothing buffered for the claimed size"
        );
    }

    #[test]
    fn heartbeat_and_bad_end() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCE, 8, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            next_frame(&mut buf, 4096),
            Ok(Some(Frame::Heartbeat(0)))
        ));
        assert_eq!(
            next_frame(&mut buf, 4096).unwrap_err(),
            FrameError::BadEnd(0)
        );
        let mut partial = BytesMut::from(&[1u8, 0][..]);
        assert!(matches!(next_frame(&mut partial, 4096), Ok(None)));
    }

    #[test]
    fn content_frames_read_back_as_written() {
        use amq_protocol::types::ShortString;
        let props = AMQPProperties::default()
            .with_content_type(ShortString::from("text/plain"))
            .with_delivery_mode(2);
        let raw = encode_properties(&props).unwrap();
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_content(&mut out, 5, &raw, &body, 8192);
        let mut buf = BytesMut::from(&out[..]);
        let Some(Frame::Header(5, header, back)) = next_frame(&mut buf, 8192).unwrap() else {
            panic!("a content header first");
        };
        assert_eq!(header.body_size, 20_000);
        assert_eq!(*header.properties, props);
        assert_eq!(&back[..], &raw[..]);
        let mut got = Vec::new();
        while let Some(frame) = next_frame(&mut buf, 8192).unwrap() {
            let Frame::Body(5, part) = frame else {
                panic!("body frames follow");
            };
            assert!(part.len() <= 8192 - FRAME_OVERHEAD_BYTES);
            got.extend_from_slice(&part);
        }
        assert_eq!(got, body);
        // An empty body has a header and no body frame.
        let mut out = Vec::new();
        write_content(&mut out, 1, &raw, &[], 8192);
        let mut buf = BytesMut::from(&out[..]);
        assert!(matches!(
            next_frame(&mut buf, 8192),
            Ok(Some(Frame::Header(1, ..)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn method_round_trip() {
        use amq_protocol::protocol::channel;
        let mut out = Vec::new();
        write_method(
            &mut out,
            3,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        )
        .unwrap();
        let mut buf = BytesMut::from(&out[..]);
        assert!(matches!(
            next_frame(&mut buf, 4096),
            Ok(Some(Frame::Method(3, _)))
        ));
    }
}
