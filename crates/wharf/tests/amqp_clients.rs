//! Other AMQP clients than `lapin` against the real `wharf` process: pika 1.3.2 (installed by
//! scripts/test.sh), the client of RabbitMQ's own Python tutorials — confirms, mandatory returns, durable
//! topology, acks and requeue, dead-lettering with x-death, a 406 redeclare and direct reply-to; see
//! tests/clients/pika_smoke.py.

mod support;

use std::process::Command;

#[test]
fn pika_client_works() {
    let broker = support::start_amqp();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pika_smoke.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(broker.addr("amqp"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pika smoke test failed:\n{}\n{}\nbroker stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.stderr()
    );
}
