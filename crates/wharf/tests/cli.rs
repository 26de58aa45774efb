//! The `wharf` binary's contract with outside tools, checked against the real process: options and their
//! precedence, the ready file, `/healthz`, signals, the data-directory lock and format check, exit codes.
//!
//! Every test runs in its own temporary directory (also the child's working directory, so the default
//! `./wharf-data` lands there), listens only on port 0 or not at all, and kills its child if it panics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

const ENV_VARS: [&str; 8] = [
    "WHARF_DATA_DIR",
    "WHARF_AMQP_LISTEN",
    "WHARF_KAFKA_LISTEN",
    "WHARF_HTTP_LISTEN",
    "WHARF_CONFIG",
    "WHARF_LOG_LEVEL",
    "WHARF_READY_FILE",
    "WHARF_WORKER_THREADS",
];

/// How long a broker may take to become ready, or to fail at start-up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The contract: a clean shutdown finishes within the default shutdown timeout.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A `wharf` command isolated from the test's environment, running in `cwd`.
fn wharf(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for name in ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A running `wharf` process; killed when dropped, so a failing test leaves nothing behind.
struct Broker {
    child: Child,
    stderr_path: PathBuf,
}

impl Broker {
    /// Starts `cmd` with stderr going to `stderr_path` (a file, so a chatty child never blocks on a pipe).
    fn spawn(mut cmd: Command, stderr_path: &Path) -> Self {
        let stderr = std::fs::File::create(stderr_path).unwrap();
        let child = cmd.stderr(stderr).spawn().unwrap();
        Self {
            child,
            stderr_path: stderr_path.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wharf did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the ready file and returns its JSON object, failing the test if the process exits first.
    fn wait_ready(&mut self, ready_file: &Path) -> Map<String, Value> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready_file) {
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|err| panic!("ready file is not JSON ({err}): {text:?}"));
                return value
                    .as_object()
                    .expect("ready file is not an object")
                    .clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "wharf exited with {status} before it was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no ready file after {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and checks for a clean exit (status 0) within the shutdown timeout.
    fn stop_cleanly(&mut self, signal: libc::c_int) {
        let started = Instant::now();
        self.signal(signal);
        let status = self.wait_exit(SHUTDOWN_TIMEOUT);
        assert_eq!(
            status.code(),
            Some(0),
            "exit after signal {signal}: {status}; stderr:\n{}",
            self.stderr()
        );
        assert!(started.elapsed() < SHUTDOWN_TIMEOUT);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a `wharf` that is expected to exit by itself and returns its status and stderr.
fn run_to_exit(cmd: Command, dir: &Path) -> (ExitStatus, String) {
    let mut broker = Broker::spawn(cmd, &dir.join("run-to-exit.stderr"));
    let status = broker.wait_exit(START_TIMEOUT);
    (status, broker.stderr())
}

/// One HTTP/1.1 request over a raw socket; returns (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed response {response:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line in {head:?}"));
    (status, body.to_string())
}

/// A port that was free a moment ago (bind port 0, read the port, release it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_addr(ready: &Map<String, Value>) -> String {
    ready
        .get("http")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no http address in ready file {ready:?}"))
        .to_string()
}

/// `wharf serve` in `dir` with its data in `dir/data`, HTTP on port 0, and a ready file in `dir`.
fn serve_cmd(dir: &Path) -> (Command, PathBuf) {
    let ready_file = dir.join("ready.json");
    let mut cmd = wharf(dir);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--amqp-listen", "127.0.0.1:0"])
        .args(["--kafka-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready_file);
    (cmd, ready_file)
}

#[test]
fn serves_healthz_on_port_0_and_writes_the_ready_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (cmd, ready_file) = serve_cmd(tmp.path());
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let ready = broker.wait_ready(&ready_file);

    // AMQP, HTTP and Kafka are all open, each with its bound port.
    assert_eq!(
        ready.keys().collect::<Vec<_>>(),
        ["amqp", "http", "kafka"],
        "{ready:?}"
    );
    let kafka: SocketAddr = ready["kafka"].as_str().unwrap().parse().unwrap();
    assert!(kafka.ip().is_loopback() && kafka.port() != 0, "{ready:?}");
    // The Kafka listener accepts connections as soon as the ready file exists.
    TcpStream::connect(kafka).expect("Kafka listener accepts");
    let amqp: SocketAddr = ready["amqp"].as_str().unwrap().parse().unwrap();
    assert!(amqp.ip().is_loopback() && amqp.port() != 0, "{ready:?}");
    // The AMQP listener answers a protocol header with connection.start (a method frame) at once.
    {
        use std::io::{Read, Write};
        let mut amqp = TcpStream::connect(amqp).expect("AMQP listener accepts");
        amqp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        amqp.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        let mut first = [0u8; 7];
        amqp.read_exact(&mut first).unwrap();
        assert_eq!(&first[..3], &[1, 0, 0], "a method frame on channel 0");
    }
    let addr: SocketAddr = http_addr(&ready).parse().unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0, "the ready file must hold the bound port");

    assert_eq!(
        http_get(&addr.to_string(), "/healthz"),
        (200, "ok".to_string())
    );
    assert_eq!(http_get(&addr.to_string(), "/no-such-path").0, 404);

    let data = tmp.path().join("data");
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "wharf-data-format 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("LOCK")).unwrap().trim(),
        broker.pid().to_string()
    );
    assert!(!tmp.path().join("ready.json.tmp").exists());
    let stderr = broker.stderr();
    assert!(!stderr.contains("is not built yet"), "{stderr}");

    broker.stop_cleanly(libc::SIGTERM);
}

#[test]
fn exits_0_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (cmd, ready_file) = serve_cmd(tmp.path());
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let addr = http_addr(&broker.wait_ready(&ready_file));
    broker.stop_cleanly(libc::SIGTERM);
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting after exit"
    );
    assert!(
        !ready_file.exists(),
        "ready file left after a clean shutdown"
    );
}

#[test]
fn exits_0_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let (cmd, ready_file) = serve_cmd(tmp.path());
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    broker.wait_ready(&ready_file);
    broker.stop_cleanly(libc::SIGINT);
    assert!(broker.stderr().contains("SIGINT"), "{}", broker.stderr());
}

#[test]
fn restarts_on_the_same_data_dir_after_a_clean_stop() {
    let tmp = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (cmd, ready_file) = serve_cmd(tmp.path());
        let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
        broker.wait_ready(&ready_file);
        broker.stop_cleanly(libc::SIGTERM);
    }
}

#[test]
fn second_instance_on_the_same_data_dir_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (cmd, ready_file) = serve_cmd(tmp.path());
    let mut first = Broker::spawn(cmd, &tmp.path().join("first.stderr"));
    let addr = http_addr(&first.wait_ready(&ready_file));
    let ready_before = std::fs::read_to_string(&ready_file).unwrap();

    let data = tmp.path().join("data");
    let mut second = wharf(tmp.path());
    second
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready_file);
    let started = Instant::now();
    let (status, stderr) = run_to_exit(second, tmp.path());
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: data directory {} is in use by another wharf process (pid {})",
            data.display(),
            first.pid()
        )),
        "{stderr}"
    );

    // The first one is untouched and keeps serving.
    assert_eq!(std::fs::read_to_string(&ready_file).unwrap(), ready_before);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok".to_string()));
    first.stop_cleanly(libc::SIGTERM);
}

#[test]
fn unknown_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("FORMAT"), "wharf-data-format 99\n").unwrap();
    let (cmd, ready_file) = serve_cmd(tmp.path());
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("format version 99"), "{stderr}");
    assert!(
        stderr.contains("supports only format versions 1 to 2"),
        "{stderr}"
    );
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(!ready_file.exists());
    // Refusing must not rewrite the file.
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "wharf-data-format 99\n"
    );
}

#[test]
fn unparseable_format_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("FORMAT"), "not a format\n").unwrap();
    let (cmd, _ready_file) = serve_cmd(tmp.path());
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreadable format file"), "{stderr}");
    assert!(stderr.contains("not a format"), "{stderr}");
    assert!(
        stderr.contains("supports only format versions 1 to 2"),
        "{stderr}"
    );
}

/// Starts a broker with `cmd`, returns the HTTP port from its ready file, and stops it.
fn http_port_of(cmd: Command, dir: &Path, ready_file: &Path) -> u16 {
    let mut broker = Broker::spawn(cmd, &dir.join("stderr"));
    let ready = broker.wait_ready(ready_file);
    broker.stop_cleanly(libc::SIGTERM);
    http_addr(&ready).parse::<SocketAddr>().unwrap().port()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = tmp.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"file-data\"\n[listen]\namqp = \"off\"\nkafka = \"off\"\n\
             http = \"127.0.0.1:{file_port}\"\n"
        ),
    )
    .unwrap();
    let ready_file = tmp.path().join("ready.json");
    let base = || {
        let mut cmd = wharf(tmp.path());
        cmd.arg("serve").arg("--ready-file").arg(&ready_file);
        cmd
    };

    // File over defaults (data_dir too: relative to the working directory).
    let mut cmd = base();
    cmd.arg("--config").arg(&config);
    assert_eq!(http_port_of(cmd, tmp.path(), &ready_file), file_port);
    assert!(tmp.path().join("file-data/FORMAT").exists());
    assert!(!tmp.path().join("wharf-data").exists());

    // Env over file (the config file itself named through the environment).
    let mut cmd = base();
    cmd.env("WHARF_CONFIG", &config)
        .env("WHARF_HTTP_LISTEN", format!("127.0.0.1:{env_port}"));
    assert_eq!(http_port_of(cmd, tmp.path(), &ready_file), env_port);

    // Flag over env.
    let mut cmd = base();
    cmd.env("WHARF_CONFIG", &config)
        .env("WHARF_HTTP_LISTEN", format!("127.0.0.1:{env_port}"))
        .arg("--http-listen")
        .arg(format!("localhost:{flag_port}"));
    assert_eq!(http_port_of(cmd, tmp.path(), &ready_file), flag_port);
}

#[test]
fn worker_threads_come_from_the_flag_the_environment_or_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "worker_threads = 3\n").unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    for (args, env, want) in [
        (vec![], None, cores),
        (vec!["--worker-threads", "1"], Some("2"), 1),
        (vec![], Some("2"), 2),
        (vec!["--config", config.to_str().unwrap()], None, 3),
    ] {
        let (mut cmd, ready_file) = serve_cmd(tmp.path());
        cmd.args(&args);
        if let Some(threads) = env {
            cmd.env("WHARF_WORKER_THREADS", threads);
        }
        let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
        let ready = broker.wait_ready(&ready_file);
        assert_eq!(
            http_get(&http_addr(&ready), "/healthz"),
            (200, "ok".to_string())
        );
        broker.stop_cleanly(libc::SIGTERM);
        // The start-up log says how many the runtime has.
        let stderr = broker.stderr();
        assert!(
            stderr.contains(&format!("worker_threads={want}")),
            "{args:?} env {env:?}: {stderr}"
        );
    }
    // Out of bounds is refused at start-up, naming the key.
    let (status, stderr) = run_to_exit(
        {
            let mut cmd = wharf(tmp.path());
            cmd.args(["serve", "--worker-threads", "100000"]);
            cmd
        },
        tmp.path(),
    );
    assert!(!status.success());
    assert!(stderr.contains("worker_threads"), "{stderr}");
}

#[test]
fn plain_wharf_serves_with_environment_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let ready_file = tmp.path().join("ready.json");
    let mut cmd = wharf(tmp.path());
    cmd.env("WHARF_HTTP_LISTEN", "127.0.0.1:0")
        .env("WHARF_AMQP_LISTEN", "off")
        .env("WHARF_KAFKA_LISTEN", "off")
        .env("WHARF_READY_FILE", &ready_file);
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let addr = http_addr(&broker.wait_ready(&ready_file));
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    // No --data-dir anywhere: the default, relative to the working directory.
    assert!(tmp.path().join("wharf-data/FORMAT").exists());
    broker.stop_cleanly(libc::SIGTERM);
}

#[test]
fn http_off_leaves_no_http_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ready_file = tmp.path().join("ready.json");
    let mut cmd = wharf(tmp.path());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--http-listen", "off", "--amqp-listen", "off"])
        .args(["--kafka-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready_file);
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let ready = broker.wait_ready(&ready_file);
    assert_eq!(ready.keys().collect::<Vec<_>>(), ["kafka"], "{ready:?}");
    broker.stop_cleanly(libc::SIGTERM);
}

#[test]
fn serve_help_mentions_every_option_and_env_var() {
    let tmp = tempfile::tempdir().unwrap();
    let output = wharf(tmp.path())
        .args(["serve", "--help"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--data-dir",
        "--amqp-listen",
        "--kafka-listen",
        "--http-listen",
        "--config",
        "--log-level",
        "--ready-file",
        "--worker-threads",
    ] {
        assert!(help.contains(option), "help lacks {option}:\n{help}");
    }
    for var in ENV_VARS {
        assert!(help.contains(var), "help lacks {var}:\n{help}");
    }
    for default in [
        "./wharf-data",
        "127.0.0.1:5672",
        "127.0.0.1:9092",
        "127.0.0.1:15672",
    ] {
        assert!(help.contains(default), "help lacks {default}:\n{help}");
    }
    assert!(!tmp.path().join("wharf-data").exists());
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();

    let mut cmd = wharf(tmp.path());
    cmd.args(["serve", "--http-listen", "127.0.0.1:http"]);
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid listen address '127.0.0.1:http'"),
        "{stderr}"
    );

    let mut cmd = wharf(tmp.path());
    cmd.arg("serve").env("WHARF_KAFKA_LISTEN", "nowhere");
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid listen address 'nowhere'"),
        "{stderr}"
    );
    assert!(stderr.contains("WHARF_KAFKA_LISTEN=nowhere"), "{stderr}");

    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "[listen]\namqp = \"999.0.0.1:5672\"\n").unwrap();
    let mut cmd = wharf(tmp.path());
    cmd.arg("serve").arg("--config").arg(&config);
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid listen address '999.0.0.1:5672'"),
        "{stderr}"
    );

    // Configuration is checked before anything touches the disk.
    assert!(!tmp.path().join("wharf-data").exists());
}

#[test]
fn unknown_config_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "[storage]\nsegment_size = 10\n").unwrap();
    let mut cmd = wharf(tmp.path());
    cmd.arg("serve").arg("--config").arg(&config);
    let (status, stderr) = run_to_exit(cmd, tmp.path());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `segment_size`"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

#[test]
fn example_config_file_starts_a_broker() {
    // The sample with its listeners moved to port 0 / off, so the test never needs a fixed port.
    let tmp = tempfile::tempdir().unwrap();
    let sample = include_str!("../../../wharf.example.toml");
    let config = tmp.path().join("wharf.toml");
    let replaced = sample
        .replace("\"127.0.0.1:5672\"", "\"off\"")
        .replace("\"127.0.0.1:9092\"", "\"off\"")
        .replace("\"127.0.0.1:15672\"", "\"127.0.0.1:0\"");
    assert_ne!(replaced, sample);
    std::fs::write(&config, replaced).unwrap();
    let ready_file = tmp.path().join("ready.json");
    let mut cmd = wharf(tmp.path());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_file);
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let addr = http_addr(&broker.wait_ready(&ready_file));
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    broker.stop_cleanly(libc::SIGTERM);
}

#[test]
fn shutdown_past_the_timeout_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "[limits]\nshutdown_timeout_ms = 300\n").unwrap();
    let (mut cmd, ready_file) = serve_cmd(tmp.path());
    cmd.arg("--config").arg(&config);
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let addr = http_addr(&broker.wait_ready(&ready_file));

    // A request still in flight (its head never completes) keeps the HTTP server draining.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    sleep(Duration::from_millis(100)); // let the server start reading it

    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(SHUTDOWN_TIMEOUT);
    let stderr = broker.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shutdown did not finish within 300 ms"),
        "{stderr}"
    );
    drop(stalled);
}

#[test]
fn plain_wharf_takes_the_serve_flags_and_opens_the_log_store() {
    let tmp = tempfile::tempdir().unwrap();
    let ready_file = tmp.path().join("ready.json");
    let data = tmp.path().join("data");
    let mut cmd = wharf(tmp.path());
    cmd.arg("--data-dir")
        .arg(&data)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "off",
            "--kafka-listen",
            "off",
        ])
        .arg("--ready-file")
        .arg(&ready_file);
    let mut broker = Broker::spawn(cmd, &tmp.path().join("stderr"));
    let addr = http_addr(&broker.wait_ready(&ready_file));
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert!(data.join("FORMAT").exists());
    assert!(
        data.join("logs").is_dir(),
        "the log store lives under <data-dir>/logs"
    );
    broker.stop_cleanly(libc::SIGTERM);
}
