//! Queue arguments against the real `wharf` process, through `lapin`: dead-lettering on reject, TTL (queue
//! and per message) and max-length, with `x-death` as RabbitMQ writes it; `x-overflow` reject-publish
//! nacking the publisher; priority queues (in memory and durable, across a restart); single active consumer;
//! consumer priorities; `x-expires`; redeclare with other arguments (406) and the queue types not built yet.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use support::BrokerProcess;

const OP_TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> BrokerProcess {
    support::start_amqp()
}

async fn connect(broker: &BrokerProcess) -> (Connection, Channel) {
    support::amqp_connect(broker).await
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    support::field_table(entries)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_with(
    channel: &Channel,
    name: &str,
    durable: bool,
    arguments: FieldTable,
) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    support::declare_queue(channel, name, options, arguments)
        .await
        .map(|_| ())
}

async fn publish(channel: &Channel, queue: &str, body: &str, properties: BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .expect("basic.publish");
}

async fn get(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
}

async fn bodies(channel: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(channel, queue).await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

/// Waits until `queue` holds a message, and takes it.
async fn wait_get(channel: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    loop {
        if let Some(m) = get(channel, queue).await {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached {queue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first `x-death` entry of a dead-lettered message: (reason, queue, count).
fn first_death(m: &lapin::message::BasicGetMessage) -> (String, String, i64) {
    let headers = m.delivery.properties.headers().as_ref().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death in {headers:?}");
    };
    let Some(AMQPValue::FieldTable(entry)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    let field = |k: &str| match entry.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    };
    let count = match entry.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("count: {other:?}"),
    };
    (field("reason"), field("queue"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_reject_ttl_and_max_length_with_x_death() {
    let broker = start();
    let (_conn, channel) = connect(&broker).await;
    channel
        .exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    declare_with(&channel, "dead", false, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            "dead".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dlx = ("x-dead-letter-exchange", text("dlx"));
    declare_with(&channel, "rej", false, args(std::slice::from_ref(&dlx)))
        .await
        .unwrap();
    declare_with(
        &channel,
        "ttl",
        false,
        args(&[dlx.clone(), ("x-message-ttl", AMQPValue::LongInt(100))]),
    )
    .await
    .unwrap();
    declare_with(
        &channel,
        "len",
        false,
        args(&[dlx.clone(), ("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();

    // Rejected without requeue.
    publish(&channel, "rej", "r1", BasicProperties::default()).await;
    let m = get(&channel, "rej").await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = wait_get(&channel, "dead").await;
    assert_eq!(dead.delivery.data, b"r1");
    assert_eq!(
        first_death(&dead),
        ("rejected".to_string(), "rej".to_string(), 1)
    );
    assert_eq!(
        dead.delivery.routing_key.as_str(),
        "rej",
        "keeps its routing key"
    );
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // Expired by the queue's TTL, with nobody consuming.
    publish(&channel, "ttl", "t1", BasicProperties::default()).await;
    let dead = wait_get(&channel, "dead").await;
    assert_eq!(dead.delivery.data, b"t1");
    assert_eq!(first_death(&dead).0, "expired");
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // Expired by its own expiration property, in a queue without a TTL.
    publish(
        &channel,
        "rej",
        "e1",
        BasicProperties::default().with_expiration(ShortString::from("50")),
    )
    .await;
    let dead = wait_get(&channel, "dead").await;
    assert_eq!(dead.delivery.data, b"e1");
    assert_eq!(first_death(&dead).0, "expired");
    assert!(
        dead.delivery.properties.expiration().is_none(),
        "expiration moves into x-death"
    );
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // Over the length limit: the oldest goes (drop-head).
    for body in ["l1", "l2", "l3"] {
        publish(&channel, "len", body, BasicProperties::default()).await;
    }
    let dead = wait_get(&channel, "dead").await;
    assert_eq!(dead.delivery.data, b"l1");
    assert_eq!(
        first_death(&dead),
        ("maxlen".to_string(), "len".to_string(), 1)
    );
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(bodies(&channel, "len").await, ["l2", "l3"]);
    assert!(get(&channel, "dead").await.is_none());
}

/// A TTL of 0 means "now or never", as in RabbitMQ: a message goes to a consumer that can take it at once,
/// and is dead-lettered (reason `expired`) when none can — for the queue's `x-message-ttl` and for a
/// message's `expiration` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_of_zero_delivers_to_a_ready_consumer_and_expires_otherwise() {
    let broker = start();
    let (conn, channel) = connect(&broker).await;
    declare_with(&channel, "zero.dead", false, FieldTable::default())
        .await
        .unwrap();
    let dlx = [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("zero.dead")),
    ];
    let mut queue_ttl = dlx.to_vec();
    queue_ttl.push(("x-message-ttl", AMQPValue::LongInt(0)));
    declare_with(&channel, "zero.queue", false, args(&queue_ttl))
        .await
        .unwrap();
    declare_with(&channel, "zero.message", false, args(&dlx))
        .await
        .unwrap();
    let expire_now = BasicProperties::default().with_expiration("0".into());

    // Nobody consuming: dead-lettered at once, whichever TTL says 0.
    publish(
        &channel,
        "zero.queue",
        "nobody-q",
        BasicProperties::default(),
    )
    .await;
    publish(&channel, "zero.message", "nobody-m", expire_now.clone()).await;
    for (queue, body) in [("zero.queue", "nobody-q"), ("zero.message", "nobody-m")] {
        let dead = wait_get(&channel, "zero.dead").await;
        assert_eq!(String::from_utf8_lossy(&dead.delivery.data), body);
        assert_eq!(
            first_death(&dead),
            ("expired".to_string(), queue.to_string(), 1)
        );
        dead.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }

    // A consumer with credit on each queue: both messages are delivered, nothing is dead-lettered.
    let consumer_channel = conn.create_channel().await.unwrap();
    let mut consumers = Vec::new();
    for queue in ["zero.queue", "zero.message"] {
        consumers.push(
            consumer_channel
                .basic_consume(
                    queue.into(),
                    format!("c-{queue}").as_str().into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap(),
        );
    }
    publish(
        &channel,
        "zero.queue",
        "ready-q",
        BasicProperties::default(),
    )
    .await;
    publish(&channel, "zero.message", "ready-m", expire_now).await;
    for (consumer, body) in consumers.iter_mut().zip(["ready-q", "ready-m"]) {
        let delivery = tokio::time::timeout(OP_TIMEOUT, consumer.next())
            .await
            .expect("a TTL-0 message reaches the ready consumer")
            .expect("consumer stream open")
            .expect("delivery");
        assert_eq!(String::from_utf8_lossy(&delivery.data), body);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        get(&channel, "zero.dead").await.is_none(),
        "a delivered TTL-0 message was also dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_overflow_nacks_the_publisher() {
    let broker = start();
    let (_conn, channel) = connect(&broker).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_with(
        &channel,
        "bounded",
        false,
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await
    .unwrap();
    let mut outcomes = Vec::new();
    for body in ["a", "b"] {
        let confirm = channel
            .basic_publish(
                "".into(),
                "bounded".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        outcomes.push(confirm.is_ack());
    }
    assert_eq!(outcomes, [true, false], "the second publish is nacked");
    assert_eq!(bodies(&channel, "bounded").await, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queues_deliver_highest_first_in_memory_and_durable() {
    let mut broker = start();
    let priorities = [1u8, 5, 3, 9, 0, 5, 200];
    // 200 counts as the maximum (10), as in RabbitMQ; equal priorities keep their order.
    let want = ["p200", "p9", "p5a", "p5b", "p3", "p1", "p0"];
    {
        let (_conn, channel) = connect(&broker).await;
        for (queue, durable) in [("prio", false), ("prio-durable", true)] {
            declare_with(
                &channel,
                queue,
                durable,
                args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
            )
            .await
            .unwrap();
            let mut fives = ["p5a", "p5b"].into_iter();
            for p in priorities {
                let body = if p == 5 {
                    fives.next().unwrap().to_string()
                } else {
                    format!("p{p}")
                };
                let props = BasicProperties::default()
                    .with_priority(p)
                    .with_delivery_mode(2);
                publish(&channel, queue, &body, props).await;
            }
        }
        assert_eq!(bodies(&channel, "prio").await, want);
        assert!(broker.terminate().success());
    }
    broker.restart();
    let (_conn, channel) = connect(&broker).await;
    assert_eq!(bodies(&channel, "prio-durable").await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_gets_everything_until_it_leaves() {
    let broker = start();
    let (conn, channel) = connect(&broker).await;
    declare_with(
        &channel,
        "sac",
        false,
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await
    .unwrap();
    let first_channel = conn.create_channel().await.unwrap();
    let second_channel = conn.create_channel().await.unwrap();
    let consume = |ch: Channel, tag: &'static str| async move {
        ch.basic_qos(5, BasicQosOptions::default()).await.unwrap();
        ch.basic_consume(
            "sac".into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
    };
    let mut first = consume(first_channel.clone(), "first").await;
    let mut second = consume(second_channel, "second").await;
    for i in 0..6 {
        publish(
            &channel,
            "sac",
            &format!("m{i}"),
            BasicProperties::default(),
        )
        .await;
    }
    for i in 0..6 {
        let d = tokio::time::timeout(OP_TIMEOUT, first.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
    }
    first_channel
        .basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&channel, "sac", "after", BasicProperties::default()).await;
    let d = tokio::time::timeout(OP_TIMEOUT, second.next())
        .await
        .expect("the second consumer takes over")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumers_are_served_first() {
    let broker = start();
    let (conn, channel) = connect(&broker).await;
    declare_with(&channel, "cp", false, FieldTable::default())
        .await
        .unwrap();
    let low_ch = conn.create_channel().await.unwrap();
    let high_ch = conn.create_channel().await.unwrap();
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut low = low_ch
        .basic_consume("cp".into(), "low".into(), opts, FieldTable::default())
        .await
        .unwrap();
    let mut high = high_ch
        .basic_consume(
            "cp".into(),
            "high".into(),
            opts,
            args(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap();
    for i in 0..5 {
        publish(&channel, "cp", &format!("m{i}"), BasicProperties::default()).await;
    }
    for _ in 0..5 {
        tokio::time::timeout(OP_TIMEOUT, high.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), low.next())
            .await
            .is_err(),
        "the low-priority consumer gets nothing while the high one has credit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_expires_deletes_an_unused_queue_and_redeclare_must_match() {
    let broker = start();
    let (conn, channel) = connect(&broker).await;
    declare_with(
        &channel,
        "lease",
        false,
        args(&[("x-expires", AMQPValue::LongInt(200))]),
    )
    .await
    .unwrap();
    // Redeclaring with other arguments is 406 and closes only the channel.
    let err = declare_with(
        &channel,
        "lease",
        false,
        args(&[("x-expires", AMQPValue::LongInt(300))]),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    assert!(err.to_string().contains("x-expires"), "{err}");
    let channel = conn.create_channel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = channel
        .queue_declare(
            "lease".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_and_stream_queues_are_refused_clearly() {
    let broker = start();
    let (conn, _) = connect(&broker).await;
    for kind in ["quorum", "stream"] {
        let channel = conn.create_channel().await.unwrap();
        let err = declare_with(&channel, "q", true, args(&[("x-queue-type", text(kind))]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("PRECONDITION_FAILED") && text.contains("not supported"),
            "{text}"
        );
    }
    let channel = conn.create_channel().await.unwrap();
    declare_with(
        &channel,
        "q",
        true,
        args(&[("x-queue-type", text("classic"))]),
    )
    .await
    .unwrap();
}
