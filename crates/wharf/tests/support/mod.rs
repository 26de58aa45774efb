//! A real `wharf` process for integration tests: started on free ports in its own directory, found through
//! its ready file, and stopped gracefully (SIGTERM), killed (SIGKILL, as a crash) or restarted on the same
//! data directory.

#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{connection as conn_methods, AMQPClass};
use lapin::types::FieldTable;
use wharf_amqp::frame::{next_frame, write_method, Frame};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running broker; killed on drop.
pub struct BrokerProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    /// The ready file's contents: listener name → bound address.
    pub listeners: serde_json::Value,
    /// Starts so far in this directory (names each start's stderr file).
    starts: u32,
}

impl BrokerProcess {
    /// Starts `wharf serve --data-dir data <args> --ready-file ...` in a new temporary directory.
    pub fn start(args: &[&str]) -> BrokerProcess {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, listeners) = spawn(dir.path(), &args, 0);
        BrokerProcess {
            child,
            dir,
            args,
            listeners,
            starts: 1,
        }
    }

    /// Like [`Self::start`], with `config` (TOML) written to `wharf.toml` and passed as `--config`.
    pub fn start_with_config(config: &str, args: &[&str]) -> BrokerProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wharf.toml"), config).unwrap();
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".to_string(), "wharf.toml".to_string()]);
        let (child, listeners) = spawn(dir.path(), &args, 0);
        BrokerProcess {
            child,
            dir,
            args,
            listeners,
            starts: 1,
        }
    }

    /// The address bound by listener `name` (`amqp`, `kafka`, `http`).
    pub fn addr(&self, name: &str) -> String {
        self.listeners[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} listener in {}", self.listeners))
            .to_string()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr, over all its starts here.
    pub fn stderr(&self) -> String {
        (0..self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("stderr.{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with the pid of our own child, which we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wharf did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory (after [`Self::kill9`] or [`Self::terminate`]);
    /// listeners get new free ports.
    pub fn restart(&mut self) {
        let (child, listeners) = spawn(self.dir.path(), &self.args, self.starts);
        self.child = child;
        self.listeners = listeners;
        self.starts += 1;
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, args: &[String], start: u32) -> (Child, serde_json::Value) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let stderr = std::fs::File::create(dir.join(format!("stderr.{start}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .current_dir(dir)
        .args(["serve", "--data-dir", "data"])
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let listeners: serde_json::Value = serde_json::from_str(&text).unwrap();
            return (child, listeners);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join(format!("stderr.{start}.log")))
                .unwrap_or_default();
            panic!("wharf exited with {status}: {log}");
        }
        assert!(Instant::now() < deadline, "wharf not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The flags of a broker with only its AMQP listener open, on a free port.
pub const AMQP_ONLY: [&str; 6] = [
    "--kafka-listen",
    "off",
    "--http-listen",
    "off",
    "--amqp-listen",
    "127.0.0.1:0",
];

/// A broker with only its AMQP listener open, on a free port.
pub fn start_amqp() -> BrokerProcess {
    BrokerProcess::start(&AMQP_ONLY)
}

/// A `lapin` connection to the broker's AMQP listener (as guest) and one channel on it.
pub async fn amqp_connect(broker: &BrokerProcess) -> (lapin::Connection, lapin::Channel) {
    let uri = format!("amqp://guest:guest@{}/%2f", broker.addr("amqp"));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// A field table of `entries`.
pub fn field_table(entries: &[(&str, lapin::types::AMQPValue)]) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    for (k, v) in entries {
        t.insert(lapin::types::ShortString::from(*k), v.clone());
    }
    t
}

/// A hand-driven AMQP client on a raw socket (for what `lapin` will not do: bad input, not reading).
pub struct RawClient {
    pub s: TcpStream,
    buf: bytes::BytesMut,
}

impl RawClient {
    /// Sends `method` on `channel`.
    pub fn send_on(&mut self, channel: u16, method: AMQPClass) {
        let mut out = Vec::new();
        write_method(&mut out, channel, method).unwrap();
        self.s.write_all(&out).unwrap();
    }

    /// A client on `s`, which has sent nothing yet (or only what the caller wrote).
    pub fn attach(s: TcpStream) -> RawClient {
        RawClient {
            s,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Sends the protocol header and returns the client once the server's connection.start has arrived.
    pub fn connect(s: TcpStream) -> RawClient {
        let mut client = RawClient::attach(s);
        client.s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        assert!(matches!(
            client.method(),
            Some(AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)))
        ));
        client
    }

    /// Connects, sends the protocol header and start-ok (PLAIN guest/guest), and returns the client
    /// with the server's connection.tune.
    pub fn until_tune(s: TcpStream) -> (RawClient, conn_methods::Tune) {
        let mut client = RawClient::connect(s);
        client.send(AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(
            conn_methods::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            },
        )));
        match client.method() {
            Some(AMQPClass::Connection(conn_methods::AMQPMethod::Tune(tune))) => (client, tune),
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    pub fn send(&mut self, method: AMQPClass) {
        let mut out = Vec::new();
        write_method(&mut out, 0, method).unwrap();
        self.s.write_all(&out).unwrap();
    }

    /// Finishes the handshake (server's tune values, no heartbeats) and opens channel 1.
    pub fn open(s: TcpStream) -> RawClient {
        RawClient::open_with_frame_max(s, None)
    }

    /// Finishes the handshake with these `channel_max` and `frame_max` (the server's values where `None`, no
    /// heartbeats) and opens vhost `/`; no channel is opened.
    pub fn open_connection(
        s: TcpStream,
        channel_max: Option<u16>,
        frame_max: Option<u32>,
    ) -> RawClient {
        let (mut client, tune) = RawClient::until_tune(s);
        client.send(AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(
            conn_methods::TuneOk {
                channel_max: channel_max.unwrap_or(tune.channel_max),
                frame_max: frame_max.unwrap_or(tune.frame_max),
                heartbeat: 0,
            },
        )));
        client.send(AMQPClass::Connection(conn_methods::AMQPMethod::Open(
            conn_methods::Open {
                virtual_host: "/".into(),
            },
        )));
        assert!(matches!(
            client.method(),
            Some(AMQPClass::Connection(conn_methods::AMQPMethod::OpenOk(_)))
        ));
        client
    }

    /// As [`RawClient::open`], asking for `frame_max` instead of the server's value.
    pub fn open_with_frame_max(s: TcpStream, frame_max: Option<u32>) -> RawClient {
        let mut client = RawClient::open_connection(s, None, frame_max);
        let mut out = Vec::new();
        write_method(
            &mut out,
            1,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                amq_protocol::protocol::channel::Open {},
            )),
        )
        .unwrap();
        client.s.write_all(&out).unwrap();
        assert!(matches!(
            client.method(),
            Some(AMQPClass::Channel(
                amq_protocol::protocol::channel::AMQPMethod::OpenOk(_)
            ))
        ));
        client
    }

    /// Asserts that the server sends nothing and keeps the socket open for `wait`; `what` says what the
    /// caller expected, for the panic message. Leaves the read timeout at `wait`.
    pub fn assert_silent_for(&mut self, wait: Duration, what: &str) {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        match self.s.read(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("{what}: got {other:?} within {wait:?}"),
        }
    }

    /// The next frame, or None once the server closed the socket.
    pub fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = next_frame(&mut self.buf, 1 << 20).unwrap() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("socket still open: {e}"),
            }
        }
    }

    /// The next method, skipping heartbeats; None once the socket closed.
    pub fn method(&mut self) -> Option<AMQPClass> {
        loop {
            match self.frame()? {
                Frame::Method(_, class) => return Some(class),
                Frame::Heartbeat(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

/// queue.declare of `name` with `options` and `arguments`; returns (ready messages, consumers).
pub async fn declare_queue(
    channel: &lapin::Channel,
    name: &str,
    options: lapin::options::QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<(u32, u32)> {
    let ok = channel
        .queue_declare(name.into(), options, arguments)
        .await?;
    Ok((ok.message_count(), ok.consumer_count()))
}

/// (ready messages, consumers) of `name`, by a passive queue.declare (a missing queue closes the channel with
/// 404).
pub async fn queue_counts(channel: &lapin::Channel, name: &str) -> lapin::Result<(u32, u32)> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_queue(channel, name, passive, FieldTable::default()).await
}
