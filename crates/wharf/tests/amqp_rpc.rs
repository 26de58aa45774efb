//! RabbitMQ tutorial 6 (RPC) against the real `wharf` process through `lapin`: a server consuming requests
//! and replying to each request's `reply_to` with its `correlation_id`, called through a server-named
//! exclusive reply queue and through direct reply-to (`amq.rabbitmq.reply-to`), including the rules
//! RabbitMQ enforces on the latter.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

const OP_TIMEOUT: Duration = Duration::from_secs(10);

fn fib(n: u64) -> u64 {
    (0..n).fold((0u64, 1u64), |(a, b), _| (b, a + b)).0
}

/// The tutorial's server: reads `n` from each request on `rpc_queue`, replies `fib(n)` to `reply_to` with
/// the request's correlation id, then acks the request.
async fn serve_rpc(channel: Channel) {
    channel
        .queue_declare(
            "rpc_queue".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(
            "rpc_queue".into(),
            "rpc-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let n: u64 = String::from_utf8_lossy(&request.data).parse().unwrap_or(0);
            let reply_to = request
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default();
            let mut props = BasicProperties::default();
            if let Some(id) = request.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            channel
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    fib(n).to_string().as_bytes(),
                    props,
                )
                .await
                .unwrap();
            request.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
}

/// Sends requests for 0..10 with correlation ids `c<n>` and `reply_to`, and checks every reply (in any
/// order) against its request.
async fn call_all(client: &Channel, reply_to: &str, replies: &mut lapin::Consumer) {
    for n in 0..10u64 {
        client
            .basic_publish(
                "".into(),
                "rpc_queue".into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                BasicProperties::default()
                    .with_reply_to(ShortString::from(reply_to))
                    .with_correlation_id(ShortString::from(format!("c{n}"))),
            )
            .await
            .unwrap();
    }
    let mut answered = [false; 10];
    for _ in 0..10 {
        let reply = tokio::time::timeout(OP_TIMEOUT, replies.next())
            .await
            .expect("reply in time")
            .unwrap()
            .unwrap();
        let id = reply.properties.correlation_id().as_ref().unwrap().as_str();
        let n: usize = id.trim_start_matches('c').parse().unwrap();
        assert_eq!(
            reply.data,
            fib(n as u64).to_string().as_bytes(),
            "reply to {id}"
        );
        assert!(!answered[n], "one reply per request");
        answered[n] = true;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_with_an_exclusive_reply_queue_and_correlation_ids() {
    let broker = support::start_amqp();
    let (conn, server) = support::amqp_connect(&broker).await;
    serve_rpc(server).await;
    let client = conn.create_channel().await.unwrap();
    let reply_queue = client
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
    let name = reply_queue.name().as_str().to_string();
    let mut replies = client
        .basic_consume(
            name.as_str().into(),
            "replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    call_all(&client, &name, &mut replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_with_direct_reply_to() {
    let broker = support::start_amqp();
    let (server_conn, server) = support::amqp_connect(&broker).await;
    serve_rpc(server).await;
    let (client_conn, client) = support::amqp_connect(&broker).await;
    // The feature can be probed with a passive declare, as with RabbitMQ.
    client
        .queue_declare(
            "amq.rabbitmq.reply-to".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "direct".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    call_all(&client, "amq.rabbitmq.reply-to", &mut replies).await;

    // Publishing with reply_to = amq.rabbitmq.reply-to on a channel that does not consume from it is 406.
    let other = client_conn.create_channel().await.unwrap();
    let _ = other
        .basic_publish(
            "".into(),
            "rpc_queue".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await;
    let err = other
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect_err("the publish closed the channel with 406");
    // Either the 406 answers the qos, or the close got there first and lapin refuses to send.
    assert!(
        err.to_string().contains("PRECONDITION_FAILED")
            || (err.to_string().contains("invalid channel state") && !other.status().connected()),
        "{err}"
    );
    // The reply consumer must be no-ack.
    let acking = client_conn.create_channel().await.unwrap();
    let err = acking
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "acking".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    drop(server_conn);
}
