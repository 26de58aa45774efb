//! Other AMQP clients than `lapin` against the real `wharf` process, each installed by scripts/test.sh:
//! - pika 1.3.2, the client of RabbitMQ's own Python tutorials — confirms, mandatory returns, durable
//!   topology, acks and requeue, dead-lettering with x-death, a 406 redeclare and direct reply-to
//!   (tests/clients/pika_smoke.py);
//! - the RabbitMQ Java client 5.0.0 (Debian's librabbitmq-client-java) and Node's amqplib 2.3.1 and 0.10.5 (the
//!   older one asks for frame_max 4096): capabilities, routing of every exchange type including headers
//!   matched across numeric types, properties and nested headers, confirms and returns, prefetch, acks and
//!   requeue, basic.get, dead-lettering, `user_id` checks, `amq.*` rules, unbind, 404, server-side cancel,
//!   1 MiB and empty bodies, transactions, direct reply-to and the 540 for a `prefetch_size`
//!   (tests/clients/JavaSmoke.java, tests/clients/amqplib_smoke.js);
//! - amqp091-go 1.5.0, the Go client RabbitMQ maintains (Debian's golang-github-rabbitmq-amqp091-go-dev, built
//!   offline in GOPATH mode): 186 checks, from the default Dial's negotiation through every exchange kind and
//!   queue argument, the Go types of headers, confirms, transactions, the channel and connection errors Go apps
//!   see through NotifyClose, to 20 graceful closes reported without an error (tests/clients/go_smoke/main.go);
//! - aio-pika 10.2.1 (asyncio; aiormq 7.2.4 over the pamqp 4.0.1 codec): typed headers and properties, the
//!   queue iterator with `message.process()` acks and a requeue, prefetch across two consumers, mandatory returns,
//!   a 404 that closes only its channel, transactions, per-message TTL with dead-lettering, and aio-pika's RPC
//!   (expired calls dead-lettered back through a headers exchange) and Master/Worker patterns
//!   (tests/clients/aio_pika_smoke.py);
//! - Celery 5.7.0 over kombu and py-amqp (tests/clients/celery_smoke.py): a worker process and a client, results
//!   through the `rpc://` backend, groups, chains, retries, exceptions, countdown tasks, remote control through
//!   the pidbox fanout exchange, late acks across a worker killed with SIGKILL mid-task, purge, warm shutdown.
//!
//! Each script was checked against RabbitMQ 3.10.8, where every check passes.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

/// Where scripts/test.sh installs the clients that do not come from the system's package manager
/// (`WHARF_TEST_CLIENTS`, default `target/test-clients` of the workspace).
fn clients_dir() -> PathBuf {
    std::env::var_os("WHARF_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/test-clients"
            ))
        })
}

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn assert_passed(what: &str, out: std::io::Result<Output>, broker: &support::BrokerProcess) {
    let out = out.unwrap_or_else(|e| {
        panic!("{what} did not start ({e}); scripts/test.sh installs what it needs")
    });
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}\nbroker stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.stderr()
    );
}

#[test]
fn java_client_works() {
    let broker = support::start_amqp();
    let classpath = [
        "/usr/share/java/amqp-client.jar",
        "/usr/share/java/slf4j-api.jar",
        "/usr/share/java/slf4j-nop.jar",
    ]
    .join(":");
    let out = Command::new("java")
        .args([
            "-cp",
            &classpath,
            &script("JavaSmoke.java"),
            &broker.addr("amqp"),
        ])
        .output();
    assert_passed("the Java client's smoke test", out, &broker);
}

#[test]
fn amqp091_go_works() {
    let broker = support::start_amqp();
    std::fs::create_dir_all(clients_dir()).expect("the clients directory");
    let binary = clients_dir().join("go_smoke");
    let dir = script("go_smoke");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", clients_dir().join("go-cache"))
        .output();
    assert_passed("building the amqp091-go smoke test", built, &broker);
    let out = Command::new(&binary).arg(broker.addr("amqp")).output();
    assert_passed("the amqp091-go smoke test", out, &broker);
}

#[test]
fn amqplib_works_current_and_with_the_old_default_frame_max() {
    let broker = support::start_amqp();
    for version in ["2.3.1", "0.10.5"] {
        let modules = clients_dir().join(format!("amqplib-{version}/node_modules"));
        assert!(
            modules.join("amqplib").is_dir(),
            "amqplib {version} is not in {}; scripts/test.sh installs it",
            modules.display()
        );
        let out = Command::new("node")
            .arg(script("amqplib_smoke.js"))
            .arg(broker.addr("amqp"))
            .env("NODE_PATH", &modules)
            .output();
        assert_passed(&format!("amqplib {version}'s smoke test"), out, &broker);
    }
}

/// Runs a Python smoke script (tests/clients/NAME) against a fresh broker.
fn python_smoke_test_passes(name: &str, what: &str) {
    let broker = support::start_amqp();
    let out = Command::new("python3")
        .arg(script(name))
        .arg(broker.addr("amqp"))
        .output();
    assert_passed(what, out, &broker);
}

#[test]
fn pika_client_works() {
    python_smoke_test_passes("pika_smoke.py", "pika's smoke test");
}

#[test]
fn aio_pika_works() {
    python_smoke_test_passes("aio_pika_smoke.py", "aio-pika's smoke test");
}

#[test]
fn celery_works() {
    python_smoke_test_passes("celery_smoke.py", "Celery's smoke test");
}
