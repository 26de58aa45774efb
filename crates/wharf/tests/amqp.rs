//! AMQP 0-9-1 against the real `wharf` process, through `lapin` and raw sockets: hello world, a work queue
//! with fair dispatch under prefetch 1, redelivery of unacknowledged messages after a channel closes,
//! basic.get, a channel error that leaves the connection working, empty and 5 MiB messages, and bad input
//! (wrong protocol header, garbage, an oversized frame) that closes only its own connection. Exchanges:
//! RabbitMQ tutorials 3 (fanout), 4 (direct) and 5 (topics), a headers exchange, exchange-to-exchange
//! bindings, an alternate exchange, mandatory returns, `CC` / `BCC`, and exchange errors that close only
//! their channel. Publisher confirms (routed, unroutable-mandatory, a bulk run, one `multiple` ack for a
//! burst) and transactions (publish and ack, commit and rollback, the 406 mode switches); auto-delete and
//! deleted queues ending their consumers; tune-ok above the server's limits and a silent client cut off
//! by heartbeats, through raw sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

mod support;

/// A running broker with only its AMQP listener open, on a free port; killed on drop.
struct Wharf {
    process: support::BrokerProcess,
    amqp: String,
}

impl Wharf {
    fn start() -> Wharf {
        let process = support::start_amqp();
        let amqp = process.addr("amqp");
        Wharf { process, amqp }
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    async fn connect(&self) -> Connection {
        tokio::time::timeout(
            OP_TIMEOUT,
            Connection::connect(&self.uri(), ConnectionProperties::default()),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// A raw socket with a read timeout.
    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(&self.amqp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

/// A broker, a connection to it and one channel: the start of most tests.
async fn open() -> (Wharf, Connection, Channel) {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let channel = conn.create_channel().await.unwrap();
    (wharf, conn, channel)
}

/// (ready messages, consumers) of `queue`, by a passive queue.declare (a missing queue closes the
/// channel with 404).
async fn counts(channel: &Channel, queue: &str) -> lapin::Result<(u32, u32)> {
    support::queue_counts(channel, queue).await
}

async fn declare(channel: &Channel, name: &str) {
    support::declare_queue(channel, name, Default::default(), FieldTable::default())
        .await
        .expect("queue.declare");
}

async fn publish(channel: &Channel, queue: &str, body: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_content_type("text/plain".into()),
        )
        .await
        .expect("basic.publish");
}

/// Next delivery of `consumer`, or None after `wait`.
async fn next(consumer: &mut lapin::Consumer, wait: Duration) -> Option<lapin::message::Delivery> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(other) => panic!("consumer ended: {other:?}"),
        Err(_) => None,
    }
}

async fn consume(channel: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_declare_publish_consume_ack() {
    let (_wharf, conn, channel) = open().await;
    declare(&channel, "hello").await;
    publish(&channel, "hello", b"Hello World!").await;
    let mut consumer = consume(&channel, "hello", "hello-consumer").await;
    let delivery = next(&mut consumer, OP_TIMEOUT).await.expect("a delivery");
    assert_eq!(delivery.data, b"Hello World!");
    assert_eq!(delivery.routing_key.as_str(), "hello");
    assert!(!delivery.redelivered);
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    // Acked: a second channel finds the queue empty with one consumer.
    let other = conn.create_channel().await.unwrap();
    assert_eq!(counts(&other, "hello").await.unwrap(), (0, 1));
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_prefetch_1_dispatches_fairly() {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "tasks").await;
    let slow = conn.create_channel().await.unwrap();
    let fast = conn.create_channel().await.unwrap();
    for ch in [&slow, &fast] {
        ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    }
    let mut slow_consumer = consume(&slow, "tasks", "slow").await;
    let mut fast_consumer = consume(&fast, "tasks", "fast").await;
    for i in 0..10 {
        publish(&setup, "tasks", format!("task {i}").as_bytes()).await;
    }
    // The slow worker holds its one message unacknowledged; with prefetch 1 it gets nothing else, and
    // the fast worker, acking each, does the other nine.
    let held = next(&mut slow_consumer, OP_TIMEOUT)
        .await
        .expect("slow gets one");
    let mut fast_got = Vec::new();
    while fast_got.len() < 9 {
        let d = next(&mut fast_consumer, OP_TIMEOUT)
            .await
            .expect("fast gets the rest");
        fast_got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(next(&mut slow_consumer, Duration::from_millis(300))
        .await
        .is_none());
    let mut all: Vec<String> = fast_got;
    all.push(String::from_utf8(held.data.clone()).unwrap());
    all.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("task {i}")).collect();
    expected.sort();
    assert_eq!(all, expected);
    held.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_redelivered_after_the_channel_closes() {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let first = conn.create_channel().await.unwrap();
    declare(&first, "jobs").await;
    for i in 0..3 {
        publish(&first, "jobs", format!("job {i}").as_bytes()).await;
    }
    let mut consumer = consume(&first, "jobs", "worker-1").await;
    for i in 0..3 {
        let d = next(&mut consumer, OP_TIMEOUT).await.expect("delivery");
        assert_eq!(d.data, format!("job {i}").as_bytes());
        assert!(!d.redelivered);
    }
    first.close(200, "crash".into()).await.unwrap();

    let second = conn.create_channel().await.unwrap();
    let mut consumer = consume(&second, "jobs", "worker-2").await;
    for i in 0..3 {
        let d = next(&mut consumer, OP_TIMEOUT).await.expect("redelivery");
        assert_eq!(d.data, format!("job {i}").as_bytes(), "original order");
        assert!(d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_and_get_empty() {
    let (_wharf, conn, channel) = open().await;
    declare(&channel, "pull").await;
    publish(&channel, "pull", b"one").await;
    publish(&channel, "pull", b"two").await;
    let get = |channel: Channel| async move {
        channel
            .basic_get("pull".into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
    };
    let first = get(channel.clone()).await.expect("a message");
    assert_eq!(
        (first.delivery.data.as_slice(), first.message_count),
        (&b"one"[..], 1)
    );
    let second = get(channel.clone()).await.expect("a message");
    assert_eq!(
        (second.delivery.data.as_slice(), second.message_count),
        (&b"two"[..], 0)
    );
    assert!(get(channel.clone()).await.is_none(), "get-empty");
    channel
        .basic_ack(
            second.delivery.delivery_tag,
            BasicAckOptions { multiple: true },
        )
        .await
        .unwrap();
    // Acking the same tag again is a 406 channel error.
    let _ = channel
        .basic_ack(second.delivery.delivery_tag, BasicAckOptions::default())
        .await;
    let declared = tokio::time::timeout(
        OP_TIMEOUT,
        channel.queue_declare(
            "pull".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(declared.is_err(), "the channel was closed by the 406");
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_a_missing_queue_closes_only_the_channel() {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let bystander = conn.create_channel().await.unwrap();
    let doomed = conn.create_channel().await.unwrap();
    let err = doomed
        .queue_declare(
            "no-such-queue".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    let text = err.to_string();
    assert!(text.contains("404") || text.contains("NOT_FOUND"), "{text}");
    assert!(!doomed.status().connected());
    // The connection and its other channel work; so does a new channel.
    assert!(conn.status().connected());
    declare(&bystander, "alive").await;
    publish(&bystander, "alive", b"still here").await;
    let fresh = conn.create_channel().await.unwrap();
    let got = fresh
        .basic_get("alive".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("message");
    assert_eq!(got.delivery.data, b"still here");
    // Redeclaring with different flags is 406 and also closes only that channel.
    let err = fresh
        .queue_declare(
            "alive".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert!(err.to_string().contains("406") || err.to_string().contains("PRECONDITION"));
    declare(&bystander, "alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_5_mib_messages() {
    let (_wharf, _conn, channel) = open().await;
    declare(&channel, "sizes").await;
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    publish(&channel, "sizes", b"").await;
    publish(&channel, "sizes", &big).await;
    let mut consumer = consume(&channel, "sizes", "sizes").await;
    let empty = next(&mut consumer, OP_TIMEOUT)
        .await
        .expect("empty message");
    assert!(empty.data.is_empty());
    let large = next(&mut consumer, OP_TIMEOUT)
        .await
        .expect("5 MiB message");
    assert_eq!(large.data.len(), big.len());
    assert!(large.data == big, "5 MiB body intact");
    large.ack(BasicAckOptions { multiple: true }).await.unwrap();
}

/// Reads until EOF (or a reset); panics if the server keeps the socket open past the read timeout.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("socket still open after {} bytes: {e}", got.len()),
        }
    }
}

#[test]
fn wrong_protocol_header_gets_ours_back_then_close() {
    let wharf = Wharf::start();
    for header in [&b"AMQP\x00\x00\x08\x00"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut s = wharf.raw();
        s.write_all(header).unwrap();
        assert_eq!(read_to_close(&mut s), b"AMQP\x00\x00\x09\x01");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_their_connection() {
    let (wharf, conn, channel) = open().await;
    declare(&channel, "steady").await;

    let bad_inputs: [&[u8]; 3] = [
        // Garbage after a good header.
        b"\xde\xad\xbe\xef not a frame at all \x00\x01\x02",
        // A method frame claiming 2 GiB, far above frame_max: refused from its 7-byte header.
        b"\x01\x00\x00\x7f\xff\xff\xff",
        // A frame with a bad end octet.
        b"\x08\x00\x00\x00\x00\x00\x00\x00",
    ];
    for bad in bad_inputs {
        let amqp = wharf.amqp.clone();
        let bad = bad.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&amqp).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
            let mut first = [0u8; 7];
            s.read_exact(&mut first).unwrap();
            assert_eq!(first[0], 1, "connection.start first");
            let started = Instant::now();
            s.write_all(&bad).unwrap();
            read_to_close(&mut s);
            assert!(started.elapsed() < Duration::from_secs(4));
        })
        .await
        .unwrap();
        // The established client is not disturbed.
        publish(&channel, "steady", b"ok").await;
        let got = channel
            .basic_get("steady".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("message");
        assert_eq!(got.delivery.data, b"ok");
    }
    assert!(conn.status().connected());
    // A new connection still gets connection.start at once.
    let again = wharf.connect().await;
    again.close(200, "bye".into()).await.unwrap();
    let stderr = wharf.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------
// Exchanges and routing.

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    arguments: FieldTable,
) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("exchange.declare");
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            arguments,
        )
        .await
        .expect("queue.bind");
}

async fn publish_to(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .expect("basic.publish");
}

/// Every message ready in `queue`, as text, taken with basic.get. Frames on one connection are handled
/// in order, so everything published before on the same connection has been routed.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8_lossy(&got.delivery.data).into_owned());
    }
    bodies
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    support::field_table(entries)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn assert_refused(err: lapin::Error, code: u16, name: &str) {
    let text = err.to_string();
    assert!(
        text.contains(&code.to_string()) || text.contains(name),
        "expected {code} {name}, got {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_3_publish_subscribe_with_fanout() {
    let (wharf, conn, channel) = open().await;
    declare_exchange(
        &channel,
        "logs",
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    let mut consumers = Vec::new();
    for tag in ["c1", "c2"] {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let name = queue.name().as_str().to_string();
        assert!(name.starts_with("amq.gen-"), "{name}");
        bind(&channel, &name, "logs", "", FieldTable::default()).await;
        consumers.push(consume(&channel, &name, tag).await);
    }
    let publisher = wharf.connect().await.create_channel().await.unwrap();
    for i in 0..3 {
        publish_to(
            &publisher,
            "logs",
            "ignored",
            &format!("log {i}"),
            BasicProperties::default(),
        )
        .await;
    }
    for consumer in &mut consumers {
        for i in 0..3 {
            let d = next(consumer, OP_TIMEOUT)
                .await
                .expect("every subscriber gets every log");
            assert_eq!(d.data, format!("log {i}").as_bytes());
            assert_eq!(d.exchange.as_str(), "logs");
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    // The exclusive queues (and their bindings) go with their connection: nothing routes any more.
    conn.close(200, "bye".into()).await.unwrap();
    let returned = publisher
        .basic_publish(
            "logs".into(),
            "".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"nobody",
            BasicProperties::default(),
        )
        .await;
    assert!(returned.is_ok());
    declare(&publisher, "sync").await;
    let returns = publisher.wait_for_confirms().await.unwrap();
    assert_eq!(returns.len(), 1, "the fanout had no queue left: returned");
    assert_eq!(returns[0].reply_code, 312);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_4_routing_with_direct() {
    let (_wharf, _conn, channel) = open().await;
    declare_exchange(
        &channel,
        "direct_logs",
        ExchangeKind::Direct,
        FieldTable::default(),
    )
    .await;
    declare(&channel, "errors").await;
    declare(&channel, "console").await;
    bind(
        &channel,
        "errors",
        "direct_logs",
        "error",
        FieldTable::default(),
    )
    .await;
    for severity in ["info", "warning", "error"] {
        bind(
            &channel,
            "console",
            "direct_logs",
            severity,
            FieldTable::default(),
        )
        .await;
    }
    for severity in ["info", "error", "debug", "warning"] {
        publish_to(
            &channel,
            "direct_logs",
            severity,
            severity,
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(drain(&channel, "errors").await, ["error"]);
    assert_eq!(
        drain(&channel, "console").await,
        ["info", "error", "warning"]
    );
    channel
        .queue_unbind(
            "console".into(),
            "direct_logs".into(),
            "info".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_to(
        &channel,
        "direct_logs",
        "info",
        "info",
        BasicProperties::default(),
    )
    .await;
    assert!(drain(&channel, "console").await.is_empty());
    // The predeclared amq.direct works the same way.
    bind(&channel, "errors", "amq.direct", "e", FieldTable::default()).await;
    publish_to(
        &channel,
        "amq.direct",
        "e",
        "via amq.direct",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&channel, "errors").await, ["via amq.direct"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_5_topics() {
    let (_wharf, _conn, channel) = open().await;
    declare_exchange(
        &channel,
        "topic_logs",
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await;
    for (queue, keys) in [
        ("q1", &["*.orange.*"][..]),
        ("q2", &["*.*.rabbit", "lazy.#"][..]),
        ("all", &["#"][..]),
    ] {
        declare(&channel, queue).await;
        for key in keys {
            bind(&channel, queue, "topic_logs", key, FieldTable::default()).await;
        }
    }
    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "",
    ];
    for key in keys {
        publish_to(&channel, "topic_logs", key, key, BasicProperties::default()).await;
    }
    assert_eq!(
        drain(&channel, "q1").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    assert_eq!(
        drain(&channel, "q2").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit", // matches both bindings, delivered once
            "lazy.orange.new.rabbit",
        ]
    );
    assert_eq!(
        drain(&channel, "all").await,
        keys,
        "# matches everything, even the empty key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_and_any() {
    let (_wharf, _conn, channel) = open().await;
    declare_exchange(
        &channel,
        "docs",
        ExchangeKind::Headers,
        FieldTable::default(),
    )
    .await;
    declare(&channel, "all").await;
    declare(&channel, "any").await;
    let pattern = |mode: &str| {
        table(&[
            ("x-match", text(mode)),
            ("format", text("pdf")),
            ("type", text("report")),
        ])
    };
    bind(&channel, "all", "docs", "", pattern("all")).await;
    bind(&channel, "any", "docs", "", pattern("any")).await;
    let with =
        |entries: &[(&str, AMQPValue)]| BasicProperties::default().with_headers(table(entries));
    publish_to(
        &channel,
        "docs",
        "",
        "both",
        with(&[
            ("format", text("pdf")),
            ("type", text("report")),
            ("extra", text("x")),
        ]),
    )
    .await;
    publish_to(
        &channel,
        "docs",
        "",
        "one",
        with(&[("format", text("pdf")), ("type", text("log"))]),
    )
    .await;
    publish_to(
        &channel,
        "docs",
        "",
        "typed",
        with(&[("format", AMQPValue::LongInt(1))]),
    )
    .await;
    publish_to(&channel, "docs", "", "none", BasicProperties::default()).await;
    assert_eq!(drain(&channel, "all").await, ["both"]);
    assert_eq!(drain(&channel, "any").await, ["both", "one"]);
    // amq.match is a predeclared headers exchange; an invalid x-match is refused with 406.
    let err = channel
        .queue_bind(
            "all".into(),
            "amq.match".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", text("most"))]),
        )
        .await
        .expect_err("406");
    assert_refused(err, 406, "PRECONDITION_FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_binding_delivers_once() {
    let (_wharf, _conn, channel) = open().await;
    declare_exchange(&channel, "up", ExchangeKind::Topic, FieldTable::default()).await;
    declare_exchange(
        &channel,
        "down",
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    declare(&channel, "q").await;
    channel
        .exchange_bind(
            "down".into(),
            "up".into(),
            "a.#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.bind");
    bind(&channel, "q", "down", "", FieldTable::default()).await;
    // A second route to the same queue: directly from `up`.
    bind(&channel, "q", "up", "a.b", FieldTable::default()).await;
    publish_to(
        &channel,
        "up",
        "a.b",
        "converging",
        BasicProperties::default(),
    )
    .await;
    publish_to(
        &channel,
        "up",
        "a.c",
        "through down",
        BasicProperties::default(),
    )
    .await;
    publish_to(&channel, "up", "b", "nowhere", BasicProperties::default()).await;
    assert_eq!(drain(&channel, "q").await, ["converging", "through down"]);
    channel
        .exchange_unbind(
            "down".into(),
            "up".into(),
            "a.#".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.unbind");
    publish_to(&channel, "up", "a.c", "unbound", BasicProperties::default()).await;
    assert!(drain(&channel, "q").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_catches_unroutable_messages() {
    let (_wharf, _conn, channel) = open().await;
    declare_exchange(
        &channel,
        "unrouted",
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    declare_exchange(
        &channel,
        "orders",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", text("unrouted"))]),
    )
    .await;
    declare(&channel, "paid").await;
    declare(&channel, "lost").await;
    bind(&channel, "paid", "orders", "paid", FieldTable::default()).await;
    bind(&channel, "lost", "unrouted", "", FieldTable::default()).await;
    for key in ["paid", "refunded"] {
        channel
            .basic_publish(
                "orders".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(drain(&channel, "paid").await, ["paid"]);
    assert_eq!(drain(&channel, "lost").await, ["refunded"]);
    assert!(
        channel.wait_for_confirms().await.unwrap().is_empty(),
        "the alternate exchange routed it: not returned"
    );
    // Without an alternate exchange a mandatory message that routes nowhere comes back.
    channel
        .basic_publish(
            "amq.direct".into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"back",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    declare(&channel, "sync").await;
    let returns = channel.wait_for_confirms().await.unwrap();
    assert_eq!(returns.len(), 1);
    assert_eq!(returns[0].reply_code, 312);
    assert_eq!(returns[0].delivery.data, b"back");
    // Redeclaring with another alternate exchange is 406.
    let err = channel
        .exchange_declare(
            "orders".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            table(&[("alternate-exchange", text("other"))]),
        )
        .await
        .expect_err("406");
    assert_refused(err, 406, "PRECONDITION_FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_add_routes_and_bcc_is_hidden() {
    let (_wharf, _conn, channel) = open().await;
    for q in ["to", "cc", "bcc"] {
        declare(&channel, q).await;
    }
    let list = |names: &[&str]| {
        AMQPValue::FieldArray(FieldArray::from(
            names.iter().map(|n| text(n)).collect::<Vec<_>>(),
        ))
    };
    let properties = BasicProperties::default().with_headers(table(&[
        ("CC", list(&["cc", "to"])),
        ("BCC", list(&["bcc"])),
    ]));
    publish_to(&channel, "", "to", "memo", properties).await;
    for q in ["to", "cc", "bcc"] {
        let got = channel
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{q} got the memo"));
        assert_eq!(got.delivery.data, b"memo");
        assert_eq!(got.delivery.routing_key.as_str(), "to");
        let headers = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(headers.inner().contains_key("CC"), "CC stays");
        assert!(
            !headers.inner().contains_key("BCC"),
            "BCC is removed before delivery"
        );
        assert!(drain(&channel, q).await.is_empty(), "one copy each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_errors_close_only_their_channel() {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let setup = conn.create_channel().await.unwrap();
    declare_exchange(&setup, "logs", ExchangeKind::Fanout, FieldTable::default()).await;
    declare(&setup, "q").await;
    bind(&setup, "q", "logs", "", FieldTable::default()).await;

    let fresh = || async {
        conn.create_channel()
            .await
            .expect("a new channel after a channel error")
    };
    // 403: amq.* names are reserved; the default exchange cannot be bound.
    let ch = fresh().await;
    let err = ch
        .exchange_declare(
            "amq.custom".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_refused(err, 403, "ACCESS_REFUSED");
    assert!(!ch.status().connected());
    let err = fresh()
        .await
        .queue_bind(
            "q".into(),
            "".into(),
            "q".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("403");
    assert_refused(err, 403, "ACCESS_REFUSED");
    // 406: redeclare with another type; delete if-unused while bound.
    let err = fresh()
        .await
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_refused(err, 406, "PRECONDITION_FAILED");
    let err = fresh()
        .await
        .exchange_delete(
            "logs".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("406");
    assert_refused(err, 406, "PRECONDITION_FAILED");
    // 404: passive declare, bind and publish to a missing exchange.
    let err = fresh()
        .await
        .exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_refused(err, 404, "NOT_FOUND");
    let err = fresh()
        .await
        .queue_bind(
            "q".into(),
            "missing".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_refused(err, 404, "NOT_FOUND");
    let ch = fresh().await;
    let _ = ch
        .basic_publish(
            "missing".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let err = ch
        .queue_declare(
            "after".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the publish closed the channel with 404");
    // Either the 404 arrives as the answer to the declare, or the close got there first and lapin refuses
    // to send on a closed channel; both mean the publish closed (only) this channel.
    if err.to_string().contains("invalid channel state") {
        assert!(!ch.status().connected());
    } else {
        assert_refused(err, 404, "NOT_FOUND");
    }
    // The connection and the first channel still work: passive declares of what exists succeed, the
    // binding still routes, and a delete removes the exchange with its bindings. (A passive declare of the
    // default exchange is 403 in RabbitMQ: see amqp_compat.rs.)
    assert!(conn.status().connected());
    for name in ["logs", "amq.topic"] {
        setup
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare of '{name}': {e}"));
    }
    publish_to(
        &setup,
        "logs",
        "",
        "still routed",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&setup, "q").await, ["still routed"]);
    setup
        .exchange_delete("logs".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let err = setup
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("deleted");
    assert_refused(err, 404, "NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------------
// Publisher confirms and transactions.

async fn publish_opts(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    options: BasicPublishOptions,
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            options,
            body,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_for_routed_and_unroutable_messages() {
    let (_wharf, _conn, channel) = open().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&channel, "confirmed").await;
    let routed = publish_opts(&channel, "", "confirmed", b"a", Default::default())
        .await
        .await
        .unwrap();
    assert!(routed.is_ack());
    assert!(routed.take_message().is_none());
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    // Unroutable and mandatory: basic.return, then basic.ack (as RabbitMQ).
    let unroutable = publish_opts(&channel, "", "nowhere", b"b", mandatory)
        .await
        .await
        .unwrap();
    assert!(unroutable.is_ack());
    let returned = unroutable.take_message().expect("returned with its ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"b");
    // Unroutable, not mandatory: just acked.
    let dropped = publish_opts(&channel, "", "nowhere", b"c", Default::default())
        .await
        .await
        .unwrap();
    assert!(dropped.is_ack());
    assert_eq!(counts(&channel, "confirmed").await.unwrap(), (1, 0));
    // A confirm channel cannot become transactional.
    assert_refused(
        channel.tx_select().await.unwrap_err(),
        406,
        "PRECONDITION_FAILED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_confirms_with_wait_for_confirms() {
    let (_wharf, _conn, channel) = open().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&channel, "bulk").await;
    let mut pending = Vec::new();
    for i in 0..2000 {
        let body = format!("m{i}");
        pending.push(publish_opts(&channel, "", "bulk", body.as_bytes(), Default::default()).await);
    }
    let returns = tokio::time::timeout(OP_TIMEOUT, channel.wait_for_confirms())
        .await
        .expect("confirmed in time")
        .unwrap();
    assert!(returns.is_empty());
    for confirm in pending {
        assert!(confirm.await.unwrap().is_ack());
    }
    assert_eq!(counts(&channel, "bulk").await.unwrap(), (2000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_delivers_and_rollback_does_not() {
    let (_wharf, conn, channel) = open().await;
    declare(&channel, "txq").await;
    let observer = conn.create_channel().await.unwrap();
    channel.tx_select().await.unwrap();
    publish(&channel, "txq", b"t1").await;
    assert_eq!(
        counts(&observer, "txq").await.unwrap(),
        (0, 0),
        "held until commit"
    );
    channel.tx_commit().await.unwrap();
    assert_eq!(counts(&observer, "txq").await.unwrap(), (1, 0));
    publish(&channel, "txq", b"t2").await;
    channel.tx_rollback().await.unwrap();
    channel.tx_commit().await.unwrap();
    assert_eq!(drain(&observer, "txq").await, ["t1"]);
    // A tx channel cannot enter confirm mode.
    assert_refused(
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap_err(),
        406,
        "PRECONDITION_FAILED",
    );
    // Commit and rollback without tx.select are 406.
    let plain = conn.create_channel().await.unwrap();
    assert_refused(
        plain.tx_commit().await.unwrap_err(),
        406,
        "PRECONDITION_FAILED",
    );
    let plain = conn.create_channel().await.unwrap();
    assert_refused(
        plain.tx_rollback().await.unwrap_err(),
        406,
        "PRECONDITION_FAILED",
    );
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_acks_apply_at_commit() {
    let (_wharf, conn, channel) = open().await;
    declare(&channel, "txack").await;
    publish(&channel, "txack", b"a").await;
    publish(&channel, "txack", b"b").await;
    let tx = conn.create_channel().await.unwrap();
    tx.tx_select().await.unwrap();
    let get = || async {
        tx.basic_get("txack".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message")
            .delivery
    };
    let a = get().await;
    assert_eq!(a.data, b"a");
    let ack = |tag| tx.basic_ack(tag, BasicAckOptions::default());
    ack(a.delivery_tag).await.unwrap();
    // Rolled back: the ack is undone and the delivery is unacknowledged again, so it can be acked again.
    tx.tx_rollback().await.unwrap();
    ack(a.delivery_tag).await.unwrap();
    tx.tx_commit().await.unwrap();
    let b = get().await;
    assert_eq!(b.data, b"b");
    ack(b.delivery_tag).await.unwrap();
    // Never committed: closing the channel puts "b" back; "a" stays acknowledged.
    tx.close(200, "bye".into()).await.unwrap();
    assert_eq!(drain(&channel, "txack").await, ["b"]);
}

// ---------------------------------------------------------------------------------------------------
// Consumer lifecycle.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let (_wharf, conn, channel) = open().await;
    channel
        .queue_declare(
            "fleeting".into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _one = consume(&channel, "fleeting", "one").await;
    let _two = consume(&channel, "fleeting", "two").await;
    let cancel = |tag: &'static str| {
        channel.basic_cancel(tag.into(), lapin::options::BasicCancelOptions::default())
    };
    cancel("one").await.unwrap();
    assert_eq!(counts(&channel, "fleeting").await.unwrap(), (0, 1));
    cancel("two").await.unwrap();
    let checker = conn.create_channel().await.unwrap();
    assert_refused(
        counts(&checker, "fleeting").await.unwrap_err(),
        404,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let (_wharf, conn, channel) = open().await;
    declare(&channel, "doomed").await;
    let mut consumer = consume(&channel, "doomed", "watcher").await;
    let other = conn.create_channel().await.unwrap();
    other
        .queue_delete("doomed".into(), Default::default())
        .await
        .unwrap();
    // lapin declares consumer_cancel_notify: the server's basic.cancel ends the consumer's stream.
    let end = tokio::time::timeout(OP_TIMEOUT, consumer.next())
        .await
        .expect("consumer ended in time");
    assert!(end.is_none(), "stream ended, got {end:?}");
    assert!(channel.status().connected(), "the channel stays open");
}

// ---------------------------------------------------------------------------------------------------
// Tuning and heartbeats, through a raw socket (frames encoded by amq-protocol).

use amq_protocol::protocol::{connection as conn_methods, AMQPClass};
use support::RawClient;
use wharf_amqp::frame::{write_method, Frame};

/// A hand-driven AMQP client, for what lapin will not send.

#[test]
fn tune_ok_above_the_servers_limits_is_refused() {
    let wharf = Wharf::start();
    for (channel_max, frame_max) in [(2048, 131_072), (2047, 131_073)] {
        let (mut client, tune) = RawClient::until_tune(wharf.raw());
        assert_eq!((tune.channel_max, tune.frame_max), (2047, 131_072));
        client.send(AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(
            conn_methods::TuneOk {
                channel_max,
                frame_max,
                heartbeat: 0,
            },
        )));
        match client.method() {
            Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
                assert_eq!(close.reply_code, 530, "{close:?}");
            }
            other => panic!("expected connection.close 530, got {other:?}"),
        }
    }
}

#[test]
fn frame_max_down_to_the_specs_minimum_of_4096_is_accepted() {
    use amq_protocol::protocol::{basic, queue};
    let wharf = Wharf::start();
    // 4095 is below the specification's frame-min-size: refused with 530, as RabbitMQ does.
    let (mut client, _) = RawClient::until_tune(wharf.raw());
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(
        conn_methods::TuneOk {
            channel_max: 0,
            frame_max: 4095,
            heartbeat: 0,
        },
    )));
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 530, "{close:?}");
        }
        other => panic!("expected connection.close 530, got {other:?}"),
    }
    // 4096 (what amqplib before 0.10.6 asks for by default) is accepted, and a 10 000-byte message comes
    // back in frames of at most 4096 bytes.
    let mut client = RawClient::open_with_frame_max(wharf.raw(), Some(4096));
    client.send_on(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "frame-max-4096".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    write_method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "frame-max-4096".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .unwrap();
    wharf_amqp::frame::write_content(&mut out, 1, &[0, 0], &body, 4096);
    client.s.write_all(&out).unwrap();
    client.send_on(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "frame-max-4096".into(),
            no_ack: true,
        })),
    );
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
    ));
    assert!(matches!(client.frame(), Some(Frame::Header(1, ..))));
    let mut received = Vec::new();
    while received.len() < body.len() {
        match client.frame() {
            Some(Frame::Body(1, part)) => {
                assert!(
                    part.len() + 8 <= 4096,
                    "a body frame of {} bytes",
                    part.len() + 8
                );
                received.extend_from_slice(&part);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(received, body);
}

/// A raw client through the handshake with `heartbeat` seconds tuned, and when its connection opened.
fn open_with_heartbeat(wharf: &Wharf, heartbeat: u16) -> (RawClient, Instant) {
    let (mut client, _) = RawClient::until_tune(wharf.raw());
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(
        conn_methods::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat,
        },
    )));
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::Open(
        conn_methods::Open {
            virtual_host: "/".into(),
        },
    )));
    let opened = Instant::now();
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::OpenOk(_)))
    ));
    (client, opened)
}

#[test]
fn a_client_without_heartbeats_is_disconnected() {
    let wharf = Wharf::start();
    let (mut client, opened) = open_with_heartbeat(&wharf, 1);
    // From now on the client sends nothing; the server keeps sending heartbeats and, after three silent
    // intervals (RabbitMQ's measured behaviour for a client silent from the start), closes the socket.
    let mut heartbeats = 0;
    while let Some(frame) = client.frame() {
        assert!(matches!(frame, Frame::Heartbeat(0)), "{frame:?}");
        heartbeats += 1;
    }
    let silent_for = opened.elapsed();
    assert!(heartbeats >= 1, "the server sent heartbeats");
    assert!(
        silent_for >= Duration::from_millis(2500) && silent_for < Duration::from_secs(5),
        "disconnected after {silent_for:?}"
    );
}

#[test]
fn a_client_that_stops_its_heartbeats_is_dropped_at_rabbitmq_s_second_empty_check() {
    // RabbitMQ checks for received bytes once per interval from tune-ok and drops the peer at the second
    // check in a row that saw none: with a 2 s interval and the last heartbeat at 3.5 s, the checks at 4 s
    // and 6 s pass or miss, and 8 s ends it (RabbitMQ 3.10.8 dropped such a client at 8.0 s; "three silent
    // intervals from the last byte" would wait until 9.5 s).
    let wharf = Wharf::start();
    let (mut client, opened) = open_with_heartbeat(&wharf, 2);
    for at_ms in [1000, 2000, 3000, 3500] {
        std::thread::sleep(
            (opened + Duration::from_millis(at_ms)).saturating_duration_since(Instant::now()),
        );
        client.s.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).unwrap();
    }
    while let Some(frame) = client.frame() {
        assert!(matches!(frame, Frame::Heartbeat(0)), "{frame:?}");
    }
    let dropped_at = opened.elapsed();
    assert!(
        dropped_at >= Duration::from_millis(7000) && dropped_at < Duration::from_millis(9000),
        "dropped {dropped_at:?} after opening"
    );
}

#[test]
fn a_burst_of_publishes_is_confirmed_by_one_multiple_ack() {
    use amq_protocol::protocol::{basic, confirm};
    let wharf = Wharf::start();
    let mut client = RawClient::open(wharf.raw());
    let mut out = Vec::new();
    write_method(
        &mut out,
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .unwrap();
    client.s.write_all(&out).unwrap();
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
    ));
    // Three publishes to the default exchange (unroutable, not mandatory), written at once: the server
    // handles them in one pass and confirms them with a single basic.ack, multiple, tag 3.
    let mut out = Vec::new();
    for _ in 0..3 {
        write_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "nowhere".into(),
                mandatory: false,
                immediate: false,
            })),
        )
        .unwrap();
        // No properties: two zero flag bytes.
        wharf_amqp::frame::write_content(&mut out, 1, &[0, 0], b"x", 131_072);
    }
    client.s.write_all(&out).unwrap();
    let mut acks = Vec::new();
    while acks.last().map(|a: &basic::Ack| a.delivery_tag) != Some(3) {
        match client.method() {
            Some(AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => acks.push(ack),
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    // Normally one frame; a slow socket may split the burst, but tags only grow and end at 3.
    assert!(
        acks.last().is_some_and(|a| a.multiple) || acks.len() == 3,
        "{acks:?}"
    );
}

/// A durability wait belongs to the channel opening that started it: a channel closed while its transaction's
/// persistent messages are still being synced and reopened under the same number must not get the old
/// opening's tx.commit-ok (a reply to a method the new opening never sent).
#[test]
fn a_reopened_channel_gets_no_replies_meant_for_its_earlier_opening() {
    use amq_protocol::protocol::{basic, channel, queue, tx};
    let wharf = Wharf::start();
    let mut client = RawClient::open(wharf.raw());
    client.send_on(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "reopened".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));
    client.send_on(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(_)))
    ));
    // Eight persistent 1 MiB messages (milliseconds of fdatasync), tx.commit and channel.close in one write:
    // the close is answered before the messages are durable, and the commit-ok is then no longer owed.
    let mut out = Vec::new();
    let body = vec![b'p'; 1 << 20];
    for _ in 0..8 {
        write_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "reopened".into(),
                mandatory: false,
                immediate: false,
            })),
        )
        .unwrap();
        // Properties: delivery-mode 2 only (flag bit 12).
        wharf_amqp::frame::write_content(&mut out, 1, &[0x10, 0x00, 2], &body, 131_072);
    }
    write_method(
        &mut out,
        1,
        AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
    )
    .unwrap();
    write_method(
        &mut out,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .unwrap();
    client.s.write_all(&out).unwrap();
    // A commit-ok before the close-ok is fine; nothing of the old opening may come after it.
    loop {
        match client.method() {
            Some(AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => break,
            Some(AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))) => continue,
            other => panic!("expected channel.close-ok, got {other:?}"),
        }
    }
    client.send_on(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
    ));
    // The new opening has asked nothing more: within a second (the old syncs take milliseconds) nothing comes.
    client.assert_silent_for(
        Duration::from_secs(1),
        "the reopened channel got something it never asked for",
    );
    // The committed messages are all in the queue.
    client
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_on(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "reopened".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    match client.method() {
        Some(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.message_count, 8)
        }
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// A field table nested `depth` deep (each level one entry `k` holding the next table), encoded by hand:
/// encoding it with amq-protocol would recurse as deep in this test.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut table = vec![0u8; 4];
    for _ in 0..depth {
        let mut inner = vec![1, b'k', b'F'];
        inner.extend_from_slice(&table);
        table = (inner.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&inner);
    }
    table
}

/// One frame of `frame_type` on `channel` around `payload`.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![frame_type];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_field_tables_are_a_syntax_error_not_a_crash() {
    let wharf = Wharf::start();
    // 15 000 levels in a ~105 KB queue.declare once overflowed a worker's stack and aborted the broker.
    let mut client = RawClient::open(wharf.raw());
    let mut deep = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    deep.extend_from_slice(&nested_table(15_000));
    client.s.write_all(&raw_frame(1, 1, &deep)).unwrap();
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 502, "{close:?}")
        }
        other => panic!("expected connection.close 502, got {other:?}"),
    }
    // The same in a content header's headers, and in start-ok (where the socket just closes).
    let mut client = RawClient::open(wharf.raw());
    let mut publish = Vec::new();
    write_method(
        &mut publish,
        1,
        AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(
            amq_protocol::protocol::basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: false,
                immediate: false,
            },
        )),
    )
    .unwrap();
    let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 0x00]; // flags: headers only
    header.extend_from_slice(&nested_table(12_000));
    publish.extend_from_slice(&raw_frame(2, 1, &header));
    client.s.write_all(&publish).unwrap();
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 502, "{close:?}")
        }
        other => panic!("expected connection.close 502, got {other:?}"),
    }
    // Moderate nesting (10 levels) in queue.declare arguments is fine.
    let mut client = RawClient::open(wharf.raw());
    let mut moderate = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    moderate.extend_from_slice(&nested_table(10));
    client.s.write_all(&raw_frame(1, 1, &moderate)).unwrap();
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Queue(
            amq_protocol::protocol::queue::AMQPMethod::DeclareOk(_)
        ))
    ));
    // And the broker still serves everyone.
    let conn = wharf.connect().await;
    let channel = conn.create_channel().await.unwrap();
    declare(&channel, "still-here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_channels_on_one_connection() {
    let wharf = Wharf::start();
    let conn = wharf.connect().await;
    let mut channels = Vec::new();
    for i in 0..100 {
        let ch = conn.create_channel().await.unwrap();
        declare(&ch, &format!("ch-{i}")).await;
        channels.push(ch);
    }
    // Every channel publishes to the next one's queue, then reads its own.
    for (i, ch) in channels.iter().enumerate() {
        let to = format!("ch-{}", (i + 1) % 100);
        publish(ch, &to, format!("from {i}").as_bytes()).await;
    }
    for (i, ch) in channels.iter().enumerate() {
        let got = ch
            .basic_get(
                format!("ch-{i}").as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
            .expect("one message per queue");
        assert_eq!(
            got.delivery.data,
            format!("from {}", (i + 99) % 100).as_bytes()
        );
        got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // A channel error on one of them leaves the other 99 working.
    let err = counts(&channels[42], "ch-missing").await.unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    for (i, ch) in channels.iter().enumerate().filter(|(i, _)| *i != 42) {
        assert_eq!(counts(ch, &format!("ch-{i}")).await.unwrap(), (0, 0));
    }
    assert!(conn.status().connected());
}
