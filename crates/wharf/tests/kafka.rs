//! The Kafka protocol against the real `wharf` process, through librdkafka (the `rdkafka` crate) and raw
//! sockets: produce and consume, partitions and keys, compression codecs, headers and nulls, a 1 MiB record,
//! seek by timestamp, topic admin and configs, retention, restart, long polling, and malformed requests that
//! must close only their own connection.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use support::BrokerProcess;

const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// The flags of a broker with only its Kafka listener open, on a free port.
const KAFKA_ONLY: [&str; 6] = [
    "--amqp-listen",
    "off",
    "--http-listen",
    "off",
    "--kafka-listen",
    "127.0.0.1:0",
];

/// A running broker with a Kafka listener on a free port (a [`BrokerProcess`]), and clients for it.
struct Wharf {
    broker: BrokerProcess,
    kafka: String,
}

impl Wharf {
    fn start(extra: &[&str]) -> Wharf {
        let args: Vec<&str> = KAFKA_ONLY.iter().chain(extra).copied().collect();
        let broker = BrokerProcess::start(&args);
        let kafka = broker.addr("kafka");
        Wharf { broker, kafka }
    }

    fn stderr(&self) -> String {
        self.broker.stderr()
    }

    /// SIGTERM, wait for a clean exit, start again on the same data directory.
    fn restart(&mut self) {
        let status = self.broker.terminate();
        assert!(
            status.success(),
            "unclean exit {status}; stderr:\n{}",
            self.stderr()
        );
        self.broker.restart();
        self.kafka = self.broker.addr("kafka");
    }

    fn alive(&mut self) -> bool {
        self.broker.alive()
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka)
            .set("broker.address.family", "v4")
            .set("log_level", "4");
        c
    }

    fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut c = self.config();
        c.set("acks", "all").set("linger.ms", "5");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().expect("producer")
    }

    fn consumer(&self, extra: &[(&str, &str)]) -> BaseConsumer {
        let mut c = self.config();
        // librdkafka's assign() needs a group id even when no group protocol is used; tests that use a
        // group override it.
        c.set("group.id", "wharf-test")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().expect("consumer")
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.config().create().expect("admin client")
    }
}

/// Consumes `count` messages from the given partitions, from the beginning; returns them as
/// (partition, offset, key, payload, headers).
type Got = (
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn consume(consumer: &BaseConsumer, topic: &str, partitions: &[i32], count: usize) -> Vec<Got> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + OP_TIMEOUT;
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "consumed only {} of {count}",
            got.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                            .collect()
                    })
                    .unwrap_or_default();
                got.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(|k| k.to_vec()),
                    m.payload().map(|p| p.to_vec()),
                    headers,
                ));
            }
        }
    }
    got
}

async fn send(producer: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) -> (i32, i64) {
    producer
        .send(record, Timeout::After(OP_TIMEOUT))
        .await
        .map(|d| (d.partition, d.offset))
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"))
}

async fn create_topic(w: &Wharf, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = w
        .admin()
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results[0].is_ok(), "create {name}: {:?}", results[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_round_trip_with_headers_and_nulls() {
    let w = Wharf::start(&[]);
    let producer = w.producer(&[]);
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let value = format!("value-{i}").into_bytes();
        let key = format!("key-{i}").into_bytes();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dup",
                value: Some(b"first".as_slice()),
            })
            .insert(Header {
                key: "dup",
                value: Some(b"second".as_slice()),
            })
            .insert(Header {
                key: "none",
                value: None::<&[u8]>,
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to("round-trip").headers(headers);
        // Every 10th record has a null key, every 15th a null value.
        if i % 10 != 0 {
            record = record.key(&key);
        }
        if i % 15 != 0 {
            record = record.payload(&value);
        }
        let (partition, offset) = send(&producer, record).await;
        assert_eq!((partition, offset), (0, i64::from(i)));
        expected.push(((i % 10 != 0).then_some(key), (i % 15 != 0).then_some(value)));
    }
    let got = consume(&w.consumer(&[]), "round-trip", &[0], 200);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.1, i as i64);
        assert_eq!((&g.2, &g.3), (&e.0, &e.1), "record {i}");
        assert_eq!(
            g.4,
            vec![
                ("dup".to_string(), Some(b"first".to_vec())),
                ("dup".to_string(), Some(b"second".to_vec())),
                ("none".to_string(), None)
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_stay_on_one_partition() {
    let w = Wharf::start(&[]);
    create_topic(&w, "keyed", 3, &[]).await;
    let producer = w.producer(&[("partitioner", "murmur2_random")]);
    let mut sent = std::collections::HashMap::new();
    for i in 0..300u32 {
        let key = format!("k{}", i % 12);
        let payload = i.to_string();
        let (partition, _) = send(
            &producer,
            FutureRecord::to("keyed")
                .key(key.as_bytes())
                .payload(payload.as_bytes()),
        )
        .await;
        let first = *sent.entry(key.clone()).or_insert(partition);
        assert_eq!(first, partition, "key {key} moved partitions");
    }
    let used: std::collections::HashSet<i32> = sent.values().copied().collect();
    assert!(used.len() > 1, "12 keys all hashed to one of 3 partitions");
    let got = consume(&w.consumer(&[]), "keyed", &[0, 1, 2], 300);
    for (partition, _, key, _, _) in &got {
        let key = String::from_utf8(key.clone().unwrap()).unwrap();
        assert_eq!(sent[&key], *partition);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    let w = Wharf::start(&[]);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let producer = w.producer(&[("compression.type", codec), ("linger.ms", "50")]);
        let payloads: Vec<String> = (0..100)
            .map(|i| format!("{codec} record {i} {}", "x".repeat(200)))
            .collect();
        let sends: Vec<_> = payloads
            .iter()
            .map(|p| {
                producer.send(
                    FutureRecord::<[u8], [u8]>::to(&topic).payload(p.as_bytes()),
                    Timeout::After(OP_TIMEOUT),
                )
            })
            .collect();
        for s in sends {
            s.await.unwrap_or_else(|(e, _)| panic!("{codec}: {e}"));
        }
        let got = consume(&w.consumer(&[]), &topic, &[0], 100);
        let values: Vec<String> = got
            .iter()
            .map(|g| String::from_utf8(g.3.clone().unwrap()).unwrap())
            .collect();
        assert_eq!(values, payloads, "{codec}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_record_needs_and_gets_a_larger_topic_limit() {
    let w = Wharf::start(&[]);
    let big = vec![7u8; 1024 * 1024];
    let producer = w.producer(&[
        ("message.max.bytes", "4000000"),
        ("compression.type", "none"),
    ]);
    // The broker default (1048588 bytes per batch) refuses it, as Kafka does.
    let refused = producer
        .send(
            FutureRecord::<[u8], [u8]>::to("small-limit").payload(&big),
            Timeout::After(OP_TIMEOUT),
        )
        .await;
    match refused {
        Err((e, _)) => assert!(
            e.to_string().contains("too large") || e.to_string().contains("MSG_SIZE_TOO_LARGE"),
            "{e}"
        ),
        Ok(d) => panic!("1 MiB record accepted under the default limit: {d:?}"),
    }
    create_topic(&w, "big", 1, &[("max.message.bytes", "2097152")]).await;
    send(&producer, FutureRecord::to("big").payload(big.as_slice())).await;
    let got = consume(
        &w.consumer(&[("fetch.message.max.bytes", "1048576")]),
        "big",
        &[0],
        1,
    );
    assert_eq!(got[0].3.as_deref(), Some(big.as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_by_timestamp_finds_the_first_later_record() {
    let w = Wharf::start(&[]);
    let producer = w.producer(&[("linger.ms", "0")]);
    let base = 1_700_000_000_000i64;
    // Two batches of records with increasing timestamps (each batch holds several records).
    for batch in 0..2 {
        let sends: Vec<_> = (0..5)
            .map(|i| {
                let ts = base + (batch * 5 + i) * 1000;
                producer.send(
                    FutureRecord::<[u8], [u8]>::to("times")
                        .payload(b"x".as_slice())
                        .timestamp(ts),
                    Timeout::After(OP_TIMEOUT),
                )
            })
            .collect();
        for s in sends {
            s.await.unwrap();
        }
    }
    let consumer = w.consumer(&[]);
    for (query, want) in [
        (base - 1, 0),
        (base + 2500, 3),
        (base + 7000, 7),
        (base + 9000, 9),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(query))
            .unwrap();
        let found = consumer.offsets_for_times(tpl, OP_TIMEOUT).unwrap();
        let offset = found.find_partition("times", 0).unwrap().offset();
        assert_eq!(offset, Offset::Offset(want), "query {query}");
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("times", 0, Offset::Offset(base + 60_000))
        .unwrap();
    let found = consumer.offsets_for_times(tpl, OP_TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition("times", 0).unwrap().offset(),
        Offset::End
    );
}

async fn describe_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Vec<(String, Option<String>, bool)> {
    let r = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = r.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .map(|e| (e.name, e.value, e.is_default))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_create_describe_alter_grow_delete() {
    let w = Wharf::start(&[]);
    let admin = w.admin();
    let opts = AdminOptions::new();
    create_topic(&w, "admin-t", 2, &[("retention.ms", "3600000")]).await;
    // Errors: existing topic, illegal name, compaction, replication factor 3.
    let dup = admin
        .create_topics(
            &[NewTopic::new("admin-t", 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        format!("{:?}", dup[0]).contains("TopicAlreadyExists"),
        "{dup:?}"
    );
    let bad = admin
        .create_topics(
            &[NewTopic::new("bad/name", 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(format!("{:?}", bad[0]).contains("InvalidTopic"), "{bad:?}");
    let compact = admin
        .create_topics(
            &[NewTopic::new("compacted", 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        format!("{:?}", compact[0]).contains("InvalidConfig"),
        "{compact:?}"
    );
    let rf = admin
        .create_topics(
            &[NewTopic::new("rf3", 1, TopicReplication::Fixed(3))],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        format!("{:?}", rf[0]).contains("InvalidReplicationFactor"),
        "{rf:?}"
    );

    let before = describe_topic(&admin, "admin-t").await;
    assert!(
        before.contains(&("retention.ms".into(), Some("3600000".into()), false)),
        "{before:?}"
    );
    assert!(
        before.contains(&("cleanup.policy".into(), Some("delete".into()), true)),
        "{before:?}"
    );
    let alter =
        AlterConfig::new(ResourceSpecifier::Topic("admin-t")).set("segment.bytes", "1048576");
    let altered = admin.alter_configs(&[alter], &opts).await.unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    let after = describe_topic(&admin, "admin-t").await;
    assert!(
        after.contains(&("segment.bytes".into(), Some("1048576".into()), false)),
        "{after:?}"
    );

    let grown = admin
        .create_partitions(&[NewPartitions::new("admin-t", 5)], &opts)
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let shrink = admin
        .create_partitions(&[NewPartitions::new("admin-t", 3)], &opts)
        .await
        .unwrap();
    assert!(shrink[0].is_err(), "{shrink:?}");
    let meta = w
        .consumer(&[])
        .fetch_metadata(Some("admin-t"), OP_TIMEOUT)
        .unwrap();
    assert_eq!(meta.topics()[0].partitions().len(), 5);

    let deleted = admin.delete_topics(&["admin-t"], &opts).await.unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let again = admin.delete_topics(&["admin-t"], &opts).await.unwrap();
    assert!(
        format!("{:?}", again[0]).contains("UnknownTopicOrPart"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_acknowledged_records_survive_a_restart() {
    let mut w = Wharf::start(&[]);
    create_topic(&w, "durable", 2, &[("retention.ms", "-1")]).await;
    {
        let producer = w.producer(&[]);
        for i in 0..50u32 {
            let p = (i % 2) as i32;
            send(
                &producer,
                FutureRecord::to("durable")
                    .partition(p)
                    .payload(i.to_string().as_bytes()),
            )
            .await;
        }
    }
    w.restart();
    let got = consume(&w.consumer(&[]), "durable", &[0, 1], 50);
    assert_eq!(got.iter().filter(|g| g.0 == 0).count(), 25);
    let described = w
        .admin()
        .describe_configs(&[ResourceSpecifier::Topic("durable")], &AdminOptions::new())
        .await
        .unwrap();
    let entries = &described[0].as_ref().unwrap().entries;
    assert!(entries
        .iter()
        .any(|e| e.name == "retention.ms" && e.value.as_deref() == Some("-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[storage]\nretention_check_interval_ms = 100\n",
    )
    .unwrap();
    let w = Wharf::start(&["--config", config.path().to_str().unwrap()]);
    // Segments of 4 KiB (the engine's smallest), at most 8 KiB kept per partition.
    create_topic(
        &w,
        "ret",
        1,
        &[("segment.bytes", "4096"), ("retention.bytes", "8192")],
    )
    .await;
    let producer = w.producer(&[("linger.ms", "0"), ("compression.type", "none")]);
    let value = vec![1u8; 1000];
    for _ in 0..100 {
        send(&producer, FutureRecord::to("ret").payload(value.as_slice())).await;
    }
    let consumer = w.consumer(&[]);
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        let (low, high) = consumer.fetch_watermarks("ret", 0, OP_TIMEOUT).unwrap();
        assert_eq!(high, 100);
        if low >= 80 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log start still {low} after retention should have run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reading from the beginning starts at the new log start.
    let got = consume(&consumer, "ret", &[0], 1);
    assert!(got[0].1 >= 80, "first offset read {}", got[0].1);
}

/// Sends one raw request (size prefix added) and reads one response body, or `None` if the broker closed.
fn raw_round_trip(stream: &mut TcpStream, request: &[u8]) -> Option<Vec<u8>> {
    let mut framed = (request.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    stream.write_all(&framed).ok()?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn connect(w: &Wharf) -> TcpStream {
    let s = TcpStream::connect(&w.kafka).unwrap();
    s.set_read_timeout(Some(OP_TIMEOUT)).unwrap();
    s
}

/// True once the broker has closed `stream` (EOF or reset).
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_close_only_their_connection() {
    let mut w = Wharf::start(&[]);
    // A client with an established connection must keep working throughout.
    let producer = w.producer(&[]);
    send(
        &producer,
        FutureRecord::to("survivor").payload(b"before".as_slice()),
    )
    .await;

    // The kafka-protocol allocation trap: DeleteTopics v1 whose topic array claims ~1.1 billion entries.
    let mut s = connect(&w);
    assert_eq!(
        raw_round_trip(
            &mut s,
            &[0x00, 0x14, 0x00, 0x01, 0x41, 0x00, 0x01, 0x41, 0x00, 0x00, 0x41, 0x2c, 0x00, 0x00]
        ),
        None
    );
    // The same claim in a flexible version (compact array of u32::MAX - 1 entries): CreateTopics v5.
    let mut s = connect(&w);
    let mut req = vec![0x00, 0x13, 0x00, 0x05, 0, 0, 0, 1, 0x00, 0x00, 0x00];
    req.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(raw_round_trip(&mut s, &req), None);
    // A Metadata request claiming 9 MiB: above non_produce_request_max_bytes, refused from its key alone.
    let mut s = connect(&w);
    s.write_all(&(9u32 * 1024 * 1024).to_be_bytes()).unwrap();
    s.write_all(&[0, 3, 0, 9]).unwrap();
    assert!(closed(&mut s), "a 9 MiB Metadata request was not refused");
    // A size prefix above socket.request.max.bytes, a negative one, and one too short for a header.
    for prefix in [200u32 * 1024 * 1024, 0xffff_fff0, 3] {
        let mut s = connect(&w);
        s.write_all(&prefix.to_be_bytes()).unwrap();
        if prefix == 3 {
            s.write_all(&[0, 0, 0]).unwrap();
        }
        assert!(
            closed(&mut s),
            "size prefix {prefix:#x} did not close the connection"
        );
    }
    // An unknown API key, and a served API at a version it does not serve.
    for header in [
        [0x03, 0xe7, 0, 0, 0, 0, 0, 1],
        [0x00, 0x00, 0x00, 0x63, 0, 0, 0, 1],
    ] {
        let mut s = connect(&w);
        let mut req = header.to_vec();
        req.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(raw_round_trip(&mut s, &req), None, "{header:?}");
    }
    // Random garbage of many sizes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [8usize, 9, 16, 33, 64, 500, 4000] {
        for key in [0u8, 1, 3, 18, 19, 20, 32, 44] {
            let mut req = vec![0, key, 0, 1, 0, 0, 0, 9];
            for _ in 8..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                req.push(seed as u8);
            }
            let mut s = connect(&w);
            let _ = raw_round_trip(&mut s, &req);
        }
    }
    assert!(w.alive(), "broker died; stderr:\n{}", w.stderr());
    // The established client still works, and new clients are served.
    send(
        &producer,
        FutureRecord::to("survivor").payload(b"after".as_slice()),
    )
    .await;
    let got = consume(&w.consumer(&[]), "survivor", &[0], 2);
    assert_eq!(got[1].3.as_deref(), Some(b"after".as_slice()));
}

/// ApiVersions v0 request header: api key 18, the version, correlation id 1, client id "t".
fn api_versions_request(version: i16) -> Vec<u8> {
    let mut r = vec![0, 18];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 1, 0, 1, b't']);
    if version >= 3 {
        // Header v2 tagged fields, then compact strings client software name/version and body tagged fields.
        r.extend_from_slice(&[0, 2, b'x', 2, b'1', 0]);
    }
    r
}

#[test]
fn api_versions_newer_than_served_gets_error_35_in_v0() {
    let w = Wharf::start(&[]);
    let mut s = connect(&w);
    let body = raw_round_trip(&mut s, &api_versions_request(99))
        .expect("a v0 answer, not a closed connection");
    // v0: correlation id, error code, array of (key, min, max).
    assert_eq!(&body[0..4], &[0, 0, 0, 1]);
    assert_eq!(i16::from_be_bytes([body[4], body[5]]), 35);
    let count = i32::from_be_bytes([body[6], body[7], body[8], body[9]]) as usize;
    assert!(count >= 10);
    assert_eq!(body.len(), 10 + count * 6);
    // The connection stays usable: a v3 request now succeeds.
    let body = raw_round_trip(&mut s, &api_versions_request(3)).expect("v3 answer");
    assert_eq!(&body[0..4], &[0, 0, 0, 1]);
    assert_eq!(i16::from_be_bytes([body[4], body[5]]), 0);
}

/// A broker whose groups rebalance without the initial delay, so group tests do not wait 3 s per group.
fn start_for_groups() -> (Wharf, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[kafka]\ngroup_initial_rebalance_delay_ms = 0\n",
    )
    .unwrap();
    let w = Wharf::start(&["--config", config.path().to_str().unwrap()]);
    (w, config)
}

fn group_consumer(w: &Wharf, group: &str) -> BaseConsumer {
    w.consumer(&[
        ("group.id", group),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "200"),
    ])
}

fn assigned(c: &BaseConsumer) -> Vec<i32> {
    let mut parts: Vec<i32> = c
        .assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    parts.sort();
    parts
}

/// Polls every consumer until `done` holds for their assignments, failing after OP_TIMEOUT.
fn poll_until(consumers: &[&BaseConsumer], what: &str, done: impl Fn(&[Vec<i32>]) -> bool) {
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
        let assignments: Vec<Vec<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        if done(&assignments) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: assignments {assignments:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_splits_partitions_and_rebalances_when_one_leaves() {
    let (w, _config) = start_for_groups();
    create_topic(&w, "shared", 4, &[]).await;
    let a = group_consumer(&w, "pair");
    a.subscribe(&["shared"]).unwrap();
    poll_until(&[&a], "first member gets every partition", |s| {
        s[0] == [0, 1, 2, 3]
    });
    let b = group_consumer(&w, "pair");
    b.subscribe(&["shared"]).unwrap();
    poll_until(&[&a, &b], "two members split the partitions", |s| {
        let mut all: Vec<i32> = s.iter().flatten().copied().collect();
        all.sort();
        s[0].len() == 2 && s[1].len() == 2 && all == [0, 1, 2, 3]
    });
    // ListGroups + DescribeGroups, as a lag tool reads them.
    let groups = a.fetch_group_list(Some("pair"), OP_TIMEOUT).unwrap();
    let g = &groups.groups()[0];
    assert_eq!(
        (g.name(), g.state(), g.protocol_type()),
        ("pair", "Stable", "consumer")
    );
    assert_eq!(g.members().len(), 2);
    // A closing consumer sends LeaveGroup: the other takes everything back without waiting for a session
    // timeout.
    drop(b);
    poll_until(&[&a], "the remaining member gets every partition", |s| {
        s[0] == [0, 1, 2, 3]
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_resumed_after_a_broker_restart() {
    let (mut w, _config) = start_for_groups();
    create_topic(&w, "resume", 1, &[]).await;
    let producer = w.producer(&[]);
    for i in 0..20u32 {
        send(
            &producer,
            FutureRecord::to("resume").payload(i.to_string().as_bytes()),
        )
        .await;
    }
    drop(producer);
    {
        let c = group_consumer(&w, "resumers");
        c.subscribe(&["resume"]).unwrap();
        let mut seen = 0;
        let deadline = Instant::now() + OP_TIMEOUT;
        while seen < 10 {
            assert!(Instant::now() < deadline, "consumed {seen}");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                assert_eq!(m.offset(), seen);
                seen += 1;
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("resume", 0, Offset::Offset(10))
            .unwrap();
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
    }
    w.restart();
    let c = group_consumer(&w, "resumers");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("resume", 0);
    let committed = c.committed_offsets(tpl, OP_TIMEOUT).unwrap();
    assert_eq!(
        committed.find_partition("resume", 0).unwrap().offset(),
        Offset::Offset(10)
    );
    c.subscribe(&["resume"]).unwrap();
    let deadline = Instant::now() + OP_TIMEOUT;
    let first = loop {
        assert!(Instant::now() < deadline, "nothing consumed after restart");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            break m.unwrap().offset();
        }
    };
    assert_eq!(first, 10, "the group resumed from its committed offset");
    drop(c);
    // With no members left the group can be deleted, and its offsets go with it.
    let deleted = w
        .admin()
        .delete_groups(&["resumers"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let c = group_consumer(&w, "resumers");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("resume", 0);
    let committed = c.committed_offsets(tpl, OP_TIMEOUT).unwrap();
    assert_eq!(
        committed.find_partition("resume", 0).unwrap().offset(),
        Offset::Invalid
    );
}

/// Sends `body` as a request of `key` at `version` and decodes the response, through the kafka-protocol codec.
fn call<Req, Resp>(stream: &mut TcpStream, key: i16, version: i16, body: &Req) -> Resp
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    let api = ApiKey::try_from(key).unwrap();
    let mut out = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("raw")))
        .encode(&mut out, api.request_header_version(version))
        .unwrap();
    body.encode(&mut out, version).unwrap();
    let response = raw_round_trip(stream, &out).expect("a response");
    let mut bytes = bytes::Bytes::from(response);
    ResponseHeader::decode(&mut bytes, api.response_header_version(version)).unwrap();
    Resp::decode(&mut bytes, version).unwrap()
}

/// An uncompressed batch of `count` one-byte records from an idempotent producer.
fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> bytes::Bytes {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::new();
    b.put_i64(0);
    b.put_i32(0);
    b.put_i32(-1);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(0);
    b.put_i32(count - 1);
    b.put_i64(1000);
    b.put_i64(1000);
    b.put_i64(producer_id);
    b.put_i16(epoch);
    b.put_i32(first_seq);
    b.put_i32(count);
    for i in 0..count {
        // length 7: attributes, ts delta 0, offset delta i, null key, 1-byte value, no headers (zigzag varints)
        b.put_slice(&[14, 0, 0, (i as u8) << 1, 1, 2, b'x', 0]);
    }
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

fn produce_idempotent(stream: &mut TcpStream, topic: &str, batch: bytes::Bytes) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response: ProduceResponse = call(stream, 0, 7, &request);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn init_producer_id(stream: &mut TcpStream, reuse: Option<(i64, i16)>) -> (i64, i16) {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let mut request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    if let Some((id, epoch)) = reuse {
        request = request
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch);
    }
    let response: InitProducerIdResponse = call(stream, 22, 4, &request);
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_written_once_even_across_a_restart() {
    let mut w = Wharf::start(&[]);
    create_topic(&w, "idem", 1, &[]).await;
    let mut s = connect(&w);
    let (pid, epoch) = init_producer_id(&mut s, None);
    assert_eq!(epoch, 0);
    // A batch, then the same batch again as a retry after a lost response: same offsets, written once.
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 0, 0, 3)),
        (0, 0)
    );
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 0, 0, 3)),
        (0, 0)
    );
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 0, 3, 2)),
        (0, 3)
    );
    // A gap in the sequence is refused.
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 0, 9, 1)).0,
        45
    );
    // A new epoch fences the old one.
    let (_, epoch1) = init_producer_id(&mut s, Some((pid, 0)));
    assert_eq!(epoch1, 1);
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 1, 0, 1)),
        (0, 5)
    );
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 0, 5, 1)).0,
        47
    );
    // The producer state survives a restart: the last batch retried afterwards is still a duplicate.
    drop(s);
    w.restart();
    let mut s = connect(&w);
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 1, 0, 1)),
        (0, 5)
    );
    assert_eq!(
        produce_idempotent(&mut s, "idem", idempotent_batch(pid, 1, 1, 1)),
        (0, 6)
    );
    let consumer = w.consumer(&[]);
    assert_eq!(
        consumer.fetch_watermarks("idem", 0, OP_TIMEOUT).unwrap(),
        (0, 7)
    );
    // New producer ids are never reused after a restart.
    let (pid2, _) = init_producer_id(&mut s, None);
    assert_ne!(pid2, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_idempotent_producer_round_trips() {
    let w = Wharf::start(&[]);
    let producer = w.producer(&[("enable.idempotence", "true"), ("linger.ms", "2")]);
    let payloads: Vec<String> = (0..500u32).map(|i| i.to_string()).collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|p| {
            producer.send(
                FutureRecord::<[u8], [u8]>::to("idem-rd").payload(p.as_bytes()),
                Timeout::After(OP_TIMEOUT),
            )
        })
        .collect();
    for s in sends {
        s.await.unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    let got = consume(&w.consumer(&[]), "idem-rd", &[0], 500);
    let values: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8(g.3.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(values, (0..500).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// kafka-python, a pure-Python client that shares no code with librdkafka and infers the broker's version from
/// ApiVersions (installed by scripts/test.sh): admin, gzip producer with headers, group consumer, commit and
/// resume, group listing — see tests/clients/kafka_python_smoke.py.
#[test]
fn kafka_python_client_works() {
    let (w, _config) = start_for_groups();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/kafka_python_smoke.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&w.kafka)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "kafka-python smoke test failed:\n{}\n{}\nbroker stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.stderr()
    );
}

#[test]
fn idle_connections_are_closed_after_connections_max_idle_ms() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[kafka]\nconnections_max_idle_ms = 300\n").unwrap();
    let w = Wharf::start(&["--config", config.path().to_str().unwrap()]);
    let mut idle = connect(&w);
    assert!(raw_round_trip(&mut idle, &api_versions_request(0)).is_some());
    let started = Instant::now();
    assert!(closed(&mut idle), "the idle connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
    // A connection that keeps sending is not idle.
    let mut busy = connect(&w);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(raw_round_trip(&mut busy, &api_versions_request(0)).is_some());
    }
}
