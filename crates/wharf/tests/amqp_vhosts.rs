//! Vhosts and users from the configuration, against the real `wharf` process through `lapin`: a configured
//! user logs in to the vhost it may open and is refused (530) elsewhere; unknown vhosts are 530; vhosts do not
//! see each other's queues; error texts name the vhost; a durable queue of a second vhost keeps its messages
//! across a restart.

mod support;

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::{BrokerProcess, AMQP_ONLY};

const CONFIG: &str = r#"
[amqp]
vhosts = ["/", "staging"]

[[amqp.users]]
name = "app"
password = "s3cret"
vhosts = ["staging"]
"#;

async fn connect(broker: &BrokerProcess, user: &str, vhost: &str) -> lapin::Result<Connection> {
    let uri = format!(
        "amqp://{user}@{}/{}",
        broker.addr("amqp"),
        vhost.replace('/', "%2f")
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_vhosts_and_users() {
    let mut broker = BrokerProcess::start_with_config(CONFIG, &AMQP_ONLY);
    {
        let app = connect(&broker, "app:s3cret", "staging").await.unwrap();
        let channel = app.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .queue_declare(
                "jobs".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                "".into(),
                "jobs".into(),
                BasicPublishOptions::default(),
                b"staged",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        // `/` has no queue "jobs": vhosts are separate.
        let guest = connect(&broker, "guest:guest", "/").await.unwrap();
        let err = support::queue_counts(&guest.create_channel().await.unwrap(), "jobs")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NOT_FOUND"), "{err}");
        assert!(err.to_string().contains("in vhost '/'"), "{err}");
        // Error texts name the vhost they happened in, as RabbitMQ's do.
        let err = support::queue_counts(&app.create_channel().await.unwrap(), "missing")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no queue 'missing' in vhost 'staging'"),
            "{err}"
        );
        let err = app
            .create_channel()
            .await
            .unwrap()
            .exchange_declare(
                "nowhere".into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no exchange 'nowhere' in vhost 'staging'"),
            "{err}"
        );
        // app may not open `/`; nobody may open a vhost that does not exist; a wrong password fails.
        for (user, vhost) in [
            ("app:s3cret", "/"),
            ("guest:guest", "nowhere"),
            ("app:wrong", "staging"),
        ] {
            assert!(
                connect(&broker, user, vhost).await.is_err(),
                "{user} on {vhost} must be refused"
            );
        }
        assert!(broker.terminate().success());
    }
    broker.restart();
    let app = connect(&broker, "app:s3cret", "staging").await.unwrap();
    let channel = app.create_channel().await.unwrap();
    let got = channel
        .basic_get("jobs".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the durable queue of `staging` kept its message");
    assert_eq!(got.delivery.data, b"staged");
}
