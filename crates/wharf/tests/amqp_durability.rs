//! AMQP durability against the real `wharf` process, through `lapin`: durable exchanges, queues and
//! bindings survive a restart while non-durable ones and transient messages do not; persistent messages come
//! back in order, those delivered and not acknowledged marked redelivered, acknowledged ones never; and
//! across repeated SIGKILLs in the middle of a confirmed publishing stream, every confirmed message that was
//! not acknowledged is back, in order, exactly once.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use support::BrokerProcess;

const OP_TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> BrokerProcess {
    support::start_amqp()
}

async fn connect(broker: &BrokerProcess) -> (Connection, Channel) {
    support::amqp_connect(broker).await
}

async fn declare(channel: &Channel, name: &str, durable: bool) -> lapin::Result<u32> {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    Ok(
        support::declare_queue(channel, name, options, FieldTable::default())
            .await?
            .0,
    )
}

async fn passive(channel: &Channel, name: &str) -> lapin::Result<u32> {
    Ok(support::queue_counts(channel, name).await?.0)
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes `body` and waits for its confirm (the channel is in confirm mode).
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

/// Every message left in `queue`, by basic.get with acks: (body, redelivered).
async fn drain(channel: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_a_restart() {
    let mut broker = start();
    {
        let (_conn, channel) = connect(&broker).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .exchange_declare(
                "orders".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        declare(&channel, "work", true).await.unwrap();
        declare(&channel, "scratch", false).await.unwrap();
        for (queue, key) in [("work", "order.*"), ("scratch", "order.*")] {
            channel
                .queue_bind(
                    queue.into(),
                    "orders".into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        for i in 0..100 {
            let body = format!("m{i:03}");
            publish_confirmed(
                &channel,
                "orders",
                "order.new",
                body.as_bytes(),
                persistent(),
            )
            .await;
        }
        // Transient messages in a durable queue do not outlive the process.
        for i in 0..10 {
            let body = format!("t{i}");
            publish_confirmed(
                &channel,
                "orders",
                "order.new",
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        assert_eq!(passive(&channel, "work").await.unwrap(), 110);
        // 30 acknowledged, 10 more delivered and left unacknowledged.
        let consumer_channel = _conn.create_channel().await.unwrap();
        consumer_channel
            .basic_qos(10, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consumer_channel
            .basic_consume(
                "work".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut acked = 0;
        while acked < 30 {
            let d = tokio::time::timeout(OP_TIMEOUT, consumer.next())
                .await
                .expect("delivery in time")
                .expect("consumer open")
                .expect("delivery");
            assert_eq!(d.data, format!("m{acked:03}").as_bytes());
            d.ack(BasicAckOptions::default()).await.unwrap();
            acked += 1;
        }
        // The acks are processed before this round trip returns; prefetch 10 keeps 10 out unacknowledged.
        assert_eq!(passive(&channel, "work").await.unwrap(), 70);
        assert!(broker.terminate().success());
    }
    broker.restart();
    let (_conn, channel) = connect(&broker).await;
    assert_eq!(passive(&channel, "work").await.unwrap(), 70);
    let err = passive(&channel, "scratch").await.unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    let channel = _conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // The durable exchange and its binding to the durable queue came back.
    publish_confirmed(&channel, "orders", "order.late", b"late", persistent()).await;
    let got = drain(&channel, "work").await;
    let want: Vec<(String, bool)> = (30..100)
        .map(|i| (format!("m{i:03}"), i < 40))
        .chain(std::iter::once(("late".to_string(), false)))
        .collect();
    assert_eq!(got, want, "{}", broker.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_and_acknowledged_ones_stay_gone() {
    const CYCLES: usize = 3;
    let mut broker = start();
    // Every message confirmed so far, and those acknowledged by a consumer.
    let mut confirmed: BTreeSet<u64> = BTreeSet::new();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    for cycle in 0..CYCLES {
        let (conn, channel) = connect(&broker).await;
        declare(&channel, "ledger", true).await.unwrap();
        // Acknowledge the oldest half of what is there (the broker processes the acks before the passive
        // declare that follows returns; the journal reaches the page cache within milliseconds).
        let backlog = passive(&channel, "ledger").await.unwrap();
        for _ in 0..backlog / 2 {
            let m = channel
                .basic_get("ledger".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .expect("a message");
            let id: u64 = String::from_utf8_lossy(&m.delivery.data).parse().unwrap();
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
            acked.insert(id);
        }
        passive(&channel, "ledger").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Publish with confirms from another task and kill the broker in the middle of it.
        let publisher = conn.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirmed_now = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let confirmed_now = Arc::clone(&confirmed_now);
            let first = next_id;
            tokio::spawn(async move {
                let mut pending = std::collections::VecDeque::new();
                for id in first.. {
                    let body = id.to_string();
                    let Ok(confirm) = publisher
                        .basic_publish(
                            "".into(),
                            "ledger".into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            persistent(),
                        )
                        .await
                    else {
                        return;
                    };
                    pending.push_back((id, confirm));
                    // Up to 64 outstanding, as a pipelining publisher keeps them.
                    while pending.len() > 64 {
                        let Some((id, confirm)) = pending.pop_front() else {
                            break;
                        };
                        match confirm.await {
                            Ok(c) if c.is_ack() => confirmed_now.lock().unwrap().push(id),
                            _ => return,
                        }
                    }
                }
            })
        };
        // Kill in the middle of the stream, once it is under way: the first confirms back, then a pause. (A
        // fixed pause from the start was once too short on a loaded CI machine, where the first fsync after a
        // restart took longer: "nothing was confirmed in cycle 2".)
        let under_way = tokio::time::Instant::now() + OP_TIMEOUT;
        while confirmed_now.lock().unwrap().is_empty() && tokio::time::Instant::now() < under_way {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 150 * cycle as u64)).await;
        broker.kill9();
        let _ = tokio::time::timeout(OP_TIMEOUT, task).await;
        let now = confirmed_now.lock().unwrap().clone();
        assert!(!now.is_empty(), "nothing was confirmed in cycle {cycle}");
        next_id = now.iter().max().unwrap() + 1_000_000;
        confirmed.extend(now);
        drop(conn);
        broker.restart();
    }
    let (_conn, channel) = connect(&broker).await;
    let left: Vec<u64> = drain(&channel, "ledger")
        .await
        .into_iter()
        .map(|(body, _)| body.parse().unwrap())
        .collect();
    let mut sorted = left.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(left, sorted, "in publish order, each once");
    let left: BTreeSet<u64> = left.into_iter().collect();
    let lost: Vec<&u64> = confirmed
        .difference(&acked)
        .filter(|id| !left.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "confirmed and lost: {lost:?}\n{}",
        broker.stderr()
    );
    let back: Vec<&u64> = acked.intersection(&left).collect();
    assert!(back.is_empty(), "acknowledged and back: {back:?}");
    assert!(
        confirmed.len() > CYCLES * 10,
        "too few confirms to mean much: {}",
        confirmed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_taken_without_ack_do_not_come_back() {
    let mut broker = start();
    {
        let (_conn, channel) = connect(&broker).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&channel, "fire-and-forget", true).await.unwrap();
        for i in 0..6 {
            let body = format!("n{i}");
            publish_confirmed(
                &channel,
                "",
                "fire-and-forget",
                body.as_bytes(),
                persistent(),
            )
            .await;
        }
        // All taken by a no-ack consumer: settled as they leave.
        let mut consumer = channel
            .basic_consume(
                "fire-and-forget".into(),
                "c".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for _ in 0..6 {
            tokio::time::timeout(OP_TIMEOUT, consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        assert_eq!(passive(&channel, "fire-and-forget").await.unwrap(), 0);
        assert!(broker.terminate().success());
    }
    broker.restart();
    let (_conn, channel) = connect(&broker).await;
    assert_eq!(passive(&channel, "fire-and-forget").await.unwrap(), 0);
    assert!(drain(&channel, "fire-and-forget").await.is_empty());
}

/// Publishes `body` persistently to the queue `mixed` and waits for its confirm, failing as `what` if it takes
/// longer than [`OP_TIMEOUT`].
async fn publish_to_mixed_in_time(channel: &Channel, body: &str, what: &str) {
    tokio::time::timeout(
        OP_TIMEOUT,
        publish_confirmed(channel, "", "mixed", body.as_bytes(), persistent()),
    )
    .await
    .expect(what);
}

/// A consumer of the queue `mixed` with manual acks.
async fn consume_mixed(channel: &Channel, tag: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            "mixed".into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// A confirm of a persistent message that a consumer took at once waits for that consumer's ack (then no
/// fsync is needed) or, failing that, for the log's sync: confirms arrive whether the consumer acks, holds the
/// message, or there is none — and only what was not acked comes back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_arrive_whatever_consumers_do_and_only_unacked_messages_come_back() {
    let mut broker = start();
    {
        let (conn, channel) = connect(&broker).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&channel, "mixed", true).await.unwrap();
        let consumer_channel = conn.create_channel().await.unwrap();
        consumer_channel
            .basic_qos(5, BasicQosOptions::default())
            .await
            .unwrap();
        // A consumer that acks everything it gets, while each publish waits for its confirm.
        let mut acking = consume_mixed(&consumer_channel, "acking").await;
        let acker = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Ok(d)) = acking.next().await {
                seen.push(String::from_utf8_lossy(&d.data).into_owned());
                d.ack(BasicAckOptions::default()).await.unwrap();
                if seen.len() == 50 {
                    break;
                }
            }
            seen
        });
        for i in 0..50 {
            let body = format!("acked{i:02}");
            publish_to_mixed_in_time(&channel, &body, "confirm of a message its consumer acked")
                .await;
        }
        let seen = tokio::time::timeout(OP_TIMEOUT, acker)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            (0..50).map(|i| format!("acked{i:02}")).collect::<Vec<_>>()
        );
        consumer_channel
            .basic_cancel("acking".into(), Default::default())
            .await
            .unwrap();
        // A consumer that takes five and never acks them: their confirms come from the sync.
        let mut holding = consume_mixed(&consumer_channel, "holding").await;
        for i in 0..5 {
            let body = format!("held{i}");
            publish_to_mixed_in_time(
                &channel,
                &body,
                "confirm of a message delivered and not acked",
            )
            .await;
            let d = tokio::time::timeout(OP_TIMEOUT, holding.next())
                .await
                .expect("delivery in time")
                .expect("consumer open")
                .expect("delivery");
            assert_eq!(d.data, body.as_bytes());
        }
        // Its prefetch is used up: these wait in the queue, and their confirms come from the sync too.
        for i in 0..5 {
            let body = format!("ready{i}");
            publish_to_mixed_in_time(&channel, &body, "confirm of a message left waiting").await;
        }
        assert_eq!(passive(&channel, "mixed").await.unwrap(), 5);
        assert!(broker.terminate().success());
    }
    broker.restart();
    let (_conn, channel) = connect(&broker).await;
    let want: Vec<(String, bool)> = (0..5)
        .map(|i| (format!("held{i}"), true))
        .chain((0..5).map(|i| (format!("ready{i}"), false)))
        .collect();
    assert_eq!(drain(&channel, "mixed").await, want, "{}", broker.stderr());
}
