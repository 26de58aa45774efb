//! Flow control against the real `wharf` process: the memory alarm blocks a publishing connection
//! (connection.blocked, seen by `lapin`) until consumers drain the queue, and nothing is lost; it blocks a
//! connection when it publishes during the alarm, not one that published before and now only consumes; a slow
//! consumer that does not read its socket is held to `connection_pending_bytes_max` (raw socket) and then
//! gets everything once it reads; channel.flow pauses and resumes deliveries; `global` basic.qos is one
//! limit over all of a channel's consumers; a channel holding a delivery past the consumer timeout is closed
//! and its message goes to the next consumer.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use amq_protocol::protocol::{basic, AMQPClass};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ChannelFlowOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, PublisherConfirm};
use support::{BrokerProcess, RawClient, AMQP_ONLY};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker whose memory alarm goes off once 1 MiB of messages waits in memory.
fn broker_with_a_1_mib_memory_limit() -> BrokerProcess {
    BrokerProcess::start_with_config("[amqp]\nmemory_limit_bytes = 1048576\n", &AMQP_ONLY)
}

/// Publishes `body` to `queue` through the default exchange (resolves once written).
async fn publish(channel: &Channel, queue: &str, body: &[u8]) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
}

async fn declare(channel: &Channel, name: &str) {
    support::declare_queue(channel, name, Default::default(), FieldTable::default())
        .await
        .expect("queue.declare");
}

async fn ready(channel: &Channel, name: &str) -> u32 {
    support::queue_counts(channel, name)
        .await
        .expect("passive declare")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_alarm_blocks_publishers_until_consumers_catch_up() {
    // 1 MiB of messages may wait in memory.
    let broker = broker_with_a_1_mib_memory_limit();
    let (publisher_conn, publisher) = support::amqp_connect(&broker).await;
    let (_conn, observer) = support::amqp_connect(&broker).await;
    declare(&observer, "backlog").await;
    let body = vec![7u8; 64 * 1024];
    let publish = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for _ in 0..48 {
                publish(&publisher, "backlog", &body)
                    .await
                    .expect("publish");
            }
        })
    };
    // The broker stops reading the publisher once ~1 MiB is queued and tells it so.
    until_blocked(&publisher_conn).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = ready(&observer, "backlog").await;
    assert!((16..=24).contains(&held), "queued while blocked: {held}");
    // Consuming clears the alarm; every message arrives, none is lost.
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    while got < 48 {
        match observer
            .basic_get("backlog".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(_) => got += 1,
            None => {
                assert!(tokio::time::Instant::now() < deadline, "only {got} of 48");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tokio::time::timeout(OP_TIMEOUT, publish)
        .await
        .unwrap()
        .unwrap();
    assert!(!publisher_conn.status().blocked(), "unblocked again");
}

/// Waits until `connection` is told it is blocked.
async fn until_blocked(connection: &lapin::Connection) {
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    while !connection.status().blocked() {
        assert!(tokio::time::Instant::now() < deadline, "never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fills `queue` with 64 KiB messages through `channel` until its connection is told it is blocked.
async fn publish_until_blocked(connection: &lapin::Connection, channel: &Channel, queue: &str) {
    let body = vec![7u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    while !connection.status().blocked() {
        assert!(tokio::time::Instant::now() < deadline, "never blocked");
        // lapin's publish resolves once written: a blocked connection's further writes just wait unread.
        let _ =
            tokio::time::timeout(Duration::from_millis(50), publish(channel, queue, &body)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarm_blocks_a_connection_when_it_publishes_not_before() {
    // RabbitMQ's rule: a connection is blocked (told so, and no longer read) when it publishes while the
    // alarm is on. One that published only before, and now consumes and acks, keeps being served.
    let broker = broker_with_a_1_mib_memory_limit();
    let (worker_conn, worker) = support::amqp_connect(&broker).await;
    let (filler_conn, filler) = support::amqp_connect(&broker).await;
    let (_conn, observer) = support::amqp_connect(&broker).await;
    declare(&observer, "work").await;
    declare(&observer, "backlog").await;
    for n in 0..3u8 {
        publish(&worker, "work", &[n])
            .await
            .expect("publish before the alarm");
    }
    publish_until_blocked(&filler_conn, &filler, "backlog").await;
    // The worker published before the alarm: it is not blocked, and its acks are read (with prefetch 1 each
    // next message comes only after the previous one's ack).
    // (Bounded waits: a connection the broker wrongly stopped reading would never get its answers.)
    tokio::time::timeout(OP_TIMEOUT, worker.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos-ok never came: the worker is not read")
        .expect("qos");
    let mut deliveries = tokio::time::timeout(
        OP_TIMEOUT,
        worker.basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume-ok never came: the worker is not read")
    .expect("consume");
    for n in 0..3u8 {
        let delivery = tokio::time::timeout(OP_TIMEOUT, deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {n} never came: the worker's ack was not read"))
            .expect("a delivery")
            .expect("not an error");
        assert_eq!(delivery.data, [n]);
        tokio::time::timeout(OP_TIMEOUT, delivery.ack(BasicAckOptions::default()))
            .await
            .expect("ack never written")
            .expect("ack");
    }
    assert!(
        !worker_conn.status().blocked(),
        "a connection that did not publish during the alarm was told it is blocked"
    );
    // Publishing now blocks it too.
    publish_until_blocked(&worker_conn, &worker, "work").await;
    // Draining both queues clears the alarm (the publishes lapin still holds arrive once they are
    // unblocked, and are drained in turn): both are unblocked.
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    while filler_conn.status().blocked() || worker_conn.status().blocked() {
        assert!(tokio::time::Instant::now() < deadline, "never unblocked");
        let mut empty = true;
        for queue in ["backlog", "work"] {
            if observer
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
                .is_some()
            {
                got += 1;
                empty = false;
            }
        }
        if empty {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(got > 0, "the queues were never drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_alarm_a_publish_is_routed_up_to_its_first_content_frame() {
    // RabbitMQ checks the alarm after each content frame: a publish without a body (header only) is routed
    // before the connection blocks, one with a body waits, header read and body not, until the alarm clears.
    let broker = broker_with_a_1_mib_memory_limit();
    let (filler_conn, filler) = support::amqp_connect(&broker).await;
    let (late_conn, late) = support::amqp_connect(&broker).await;
    let (_conn, observer) = support::amqp_connect(&broker).await;
    for queue in ["backlog", "empty", "body"] {
        declare(&observer, queue).await;
    }
    publish_until_blocked(&filler_conn, &filler, "backlog").await;
    for (queue, body) in [("empty", &b""[..]), ("body", &b"x"[..])] {
        // Bounded: once lapin hears it is blocked it may hold the second publish back itself.
        let _ = tokio::time::timeout(Duration::from_millis(500), publish(&late, queue, body)).await;
    }
    until_blocked(&late_conn).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready(&observer, "empty").await, 1, "the empty publish");
    assert_eq!(ready(&observer, "body").await, 0, "the publish with a body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_a_connection_held_by_the_alarm() {
    // Shutdown sends connection.close to every connection, also to one the alarm holds (which then reads
    // again, to the client's close-ok), and the broker exits at once.
    let mut broker = broker_with_a_1_mib_memory_limit();
    let (filler_conn, filler) = support::amqp_connect(&broker).await;
    let (_conn, observer) = support::amqp_connect(&broker).await;
    declare(&observer, "backlog").await;
    publish_until_blocked(&filler_conn, &filler, "backlog").await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_is_held_to_the_pending_cap() {
    let broker = BrokerProcess::start_with_config(
        "[amqp]\nconnection_pending_bytes_max = 65536\n",
        &AMQP_ONLY,
    );
    let (_conn, publisher) = support::amqp_connect(&broker).await;
    declare(&publisher, "firehose").await;
    // A no-ack consumer on a raw socket that then stops reading.
    let mut raw = RawClient::open(std::net::TcpStream::connect(broker.addr("amqp")).unwrap());
    raw.send_on(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "firehose".into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    assert!(matches!(
        raw.method(),
        Some(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    ));
    let body = vec![1u8; 16 * 1024];
    for _ in 0..2000 {
        publish(&publisher, "firehose", &body).await.unwrap();
    }
    // 32 MB published; socket buffers take a few MB at most, the cap 64 KiB: most must still be queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = ready(&publisher, "firehose").await;
    assert!(waiting > 1000, "only {waiting} held back");
    // Once the consumer reads, everything arrives: at least 2000 bodies' worth of bytes, and the queue empties.
    raw.s
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    loop {
        match raw.s.read(&mut sink) {
            Ok(0) => panic!("socket closed after {seen} bytes"),
            Ok(n) => seen += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading deliveries: {e}"),
        }
        if seen >= 2000 * body.len() && ready(&publisher, "firehose").await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} bytes arrived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_pauses_and_resumes_deliveries() {
    let broker = support::start_amqp();
    let (conn, publisher) = support::amqp_connect(&broker).await;
    declare(&publisher, "paused").await;
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "paused".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&publisher, "paused", b"held").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "nothing while the channel's flow is off"
    );
    consumer_channel
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .unwrap();
    let d = tokio::time::timeout(OP_TIMEOUT, consumer.next())
        .await
        .expect("delivered once flow is on")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"held");
    d.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_limits_the_whole_channel() {
    let broker = support::start_amqp();
    let (conn, publisher) = support::amqp_connect(&broker).await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut streams = Vec::new();
    for q in ["g1", "g2"] {
        declare(&publisher, q).await;
        streams.push(
            channel
                .basic_consume(
                    q.into(),
                    q.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap(),
        );
        for i in 0..5 {
            publish(&publisher, q, format!("{q}-{i}").as_bytes())
                .await
                .unwrap();
        }
    }
    let mut merged = futures_util::stream::select_all(streams);
    let mut held = Vec::new();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(300), merged.next()).await
    {
        held.push(d);
    }
    assert_eq!(held.len(), 3, "three unacknowledged over both consumers");
    // Acknowledging makes room for exactly as many more, from either queue.
    let mut seen: HashSet<Vec<u8>> = held.iter().map(|d| d.data.clone()).collect();
    for d in held.drain(..) {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(300), merged.next()).await
    {
        seen.insert(d.data.clone());
        held.push(d);
    }
    assert_eq!(held.len(), 3);
    assert_eq!(seen.len(), 6);
}

/// The acknowledgement timeout (RabbitMQ's `consumer_timeout`, here 400 ms): a channel holding a delivery
/// past it is closed with 406 and RabbitMQ's reply text, its message goes to another consumer marked
/// redelivered, a channel that acks in time (and another channel of the same connection) stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_held_past_the_consumer_timeout_closes_its_channel_and_comes_back() {
    let broker =
        BrokerProcess::start_with_config("[amqp]\nconsumer_timeout_ms = 400\n", &AMQP_ONLY);
    let (conn, publisher) = support::amqp_connect(&broker).await;
    declare(&publisher, "slow-work").await;
    declare(&publisher, "fast-work").await;
    let publish = |queue: &'static str, body: &'static [u8]| {
        let publisher = publisher.clone();
        async move {
            publish(&publisher, queue, body)
                .await
                .expect("publish")
                .await
                .expect("written");
        }
    };
    // A stuck consumer: takes one message and never acks it.
    let stuck = conn.create_channel().await.unwrap();
    stuck
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut stuck_consumer = stuck
        .basic_consume(
            "slow-work".into(),
            "stuck".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A healthy consumer on another channel of the same connection, acking each message at once while
    // messages keep coming for longer than the timeout.
    let healthy = conn.create_channel().await.unwrap();
    let mut healthy_consumer = healthy
        .basic_consume(
            "fast-work".into(),
            "healthy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    publish("slow-work", b"job").await;
    let held = tokio::time::timeout(OP_TIMEOUT, stuck_consumer.next())
        .await
        .expect("delivered")
        .unwrap()
        .unwrap();
    assert_eq!(held.data, b"job");
    assert!(!held.redelivered);
    for _ in 0..12 {
        publish("fast-work", b"tick").await;
        let d = tokio::time::timeout(OP_TIMEOUT, healthy_consumer.next())
            .await
            .expect("the healthy consumer keeps receiving")
            .unwrap()
            .expect("the healthy channel stays open");
        d.ack(BasicAckOptions::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stuck channel was closed by the server, with RabbitMQ's code and words.
    let end = tokio::time::timeout(OP_TIMEOUT, stuck_consumer.next())
        .await
        .expect("the stuck consumer's stream ends");
    let error = match end {
        Some(Err(e)) => e.to_string(),
        other => panic!("expected the channel's close as an error, got {other:?}"),
    };
    assert!(
        error.contains("PRECONDITION_FAILED - delivery acknowledgement on channel")
            && error.contains("timed out. Timeout value used: 400 ms"),
        "close reason: {error}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the timeout"
    );
    assert!(!stuck.status().connected(), "the stuck channel is closed");
    assert!(healthy.status().connected(), "the other channel is open");
    assert!(conn.status().connected(), "the connection is open");
    // Its message went back to the queue and reaches the next consumer, marked redelivered.
    let (_conn2, next) = support::amqp_connect(&broker).await;
    let again = tokio::time::timeout(
        OP_TIMEOUT,
        next.basic_get("slow-work".into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get answered")
    .unwrap()
    .expect("the held message is back in its queue");
    assert_eq!(again.delivery.data, b"job");
    assert!(again.delivery.redelivered);
    again
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    // A late ack for the closed channel's delivery (lapin may or may not send it) changes nothing.
    let _ = held.ack(BasicAckOptions::default()).await;
    assert_eq!(ready(&publisher, "slow-work").await, 0);
    assert!(conn.status().connected(), "the connection is still open");
    assert!(
        healthy.status().connected(),
        "the other channel is still open"
    );
}
