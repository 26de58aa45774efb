//! `wharf-bench amqp`: publish and consume throughput, end-to-end latency and publisher-confirm latency through
//! `lapin`, against any AMQP 0-9-1 broker, in the spirit of RabbitMQ's PerfTest.
//!
//! One run declares a fresh queue, starts `--consumers` consumers (each on its own connection, `--prefetch`,
//! acking every message or every `--multi-ack`th with `multiple`) and then `--producers` producers (each on its
//! own connection) that publish `--size`-byte messages to the queue through the default exchange, as fast as
//! they can or at `--rate` messages/s in total, for `--seconds` or until `--messages` are sent, with up to
//! `--pipeline` publishes handed to the client before the oldest is written (each with a reused body buffer).
//! Every message carries its send time in its first 8 bytes (big-endian nanoseconds since an `Instant` taken at
//! start-up; the producers and consumers share the process), so the consumers measure end-to-end latency. With
//! `--confirm` every channel is in confirm mode, at most `--confirm-window` publishes per producer are
//! unconfirmed at any time, and the time from publish to basic.ack is reported. With `--persistent` the queue is
//! durable and the messages have delivery-mode 2. Once the producers are done (and confirmed), the consumers get
//! up to `DRAIN_TIMEOUT` to receive everything published; then the queue is deleted.
//!
//! - publish msg/s: messages published (and, with `--confirm`, confirmed) over the time the producers took;
//! - consume msg/s: messages received over the time from the start to the last delivery;
//! - e2e: publish → delivery, p50 / p99 / p99.9; confirm: publish → basic.ack, the same;
//! - broker CPU per message (published, delivered and acked) with `--broker-pid`, and this process's own CPU per
//!   message (lapin is not free: when the client's CPU nears a core, the client is what was measured).
//!
//! With `--url2` the same scenario runs against a second broker, interleaved (A, B, A, B, … for `--rounds`
//! rounds) so that both see the same machine conditions, and a table of the medians and their ratio ends the
//! output. Every result line repeats the parameters it was measured with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::stats::{cpu_time, percentile};

/// How long a connection, a queue operation, one publish or one confirm may take before the run fails.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the consumers may take, after the producers are done, to receive every published message.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `wharf-bench amqp`.
#[derive(clap::Args, Debug)]
pub struct AmqpArgs {
    /// AMQP URI of the broker under test (A).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub url: String,
    /// AMQP URI of a second broker (B), measured side by side with the first.
    #[arg(long)]
    pub url2: Option<String>,
    /// Name of the first broker in the results (default: its host:port).
    #[arg(long)]
    pub label: Option<String>,
    /// Name of the second broker in the results (default: its host:port).
    #[arg(long)]
    pub label2: Option<String>,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers, each on its own connection (0: publish only).
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes (at least 8: the send time).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Publisher confirms: put every producer channel in confirm mode and report confirm latency.
    #[arg(long)]
    pub confirm: bool,
    /// With --confirm: most unconfirmed publishes per producer.
    #[arg(long, default_value_t = 1000)]
    pub confirm_window: u32,
    /// Publishes each producer hands to the client before waiting for the oldest to be written (each has a body
    /// buffer of its own). lapin's basic_publish waits for its I/O thread to write the frames; one at a time (1)
    /// that costs the client more CPU than the broker, unlike a Java client whose basicPublish returns once the
    /// frames are in the socket buffer.
    #[arg(long, default_value_t = 8)]
    pub pipeline: u32,
    /// Durable queue and persistent messages (delivery-mode 2).
    #[arg(long)]
    pub persistent: bool,
    /// basic.qos prefetch count of each consumer (0: unlimited).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Ack every Nth delivery with `multiple` instead of each one (0 or 1: each one).
    #[arg(long, default_value_t = 0)]
    pub multi_ack: u32,
    /// Total publish rate in messages/s over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Messages to publish in total (instead of --seconds).
    #[arg(long, conflicts_with = "seconds")]
    pub messages: Option<u64>,
    /// How long the producers publish.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Queue to use: deleted, declared fresh, and deleted at the end (default: wharf-bench-amqp-<pid>).
    #[arg(long)]
    pub queue: Option<String>,
    /// Leave the queue and its messages in place at the end (to measure a broker holding a backlog).
    #[arg(long)]
    pub keep_queue: bool,
    /// With --url2: runs against each broker, interleaved A, B, A, B, …
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The first broker's pid, to report its CPU time per message.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// The second broker's pid.
    #[arg(long)]
    pub broker_pid2: Option<u32>,
}

/// One broker under test.
struct Target {
    label: String,
    url: String,
    pid: Option<u32>,
}

/// The figures of one run against one broker.
#[derive(Clone, Debug, Default)]
struct RunResult {
    published: u64,
    nacked: u64,
    consumed: u64,
    publish_secs: f64,
    consume_secs: f64,
    /// End-to-end latency p50, p99, p99.9 in nanoseconds.
    e2e: [Option<u64>; 3],
    /// Confirm latency p50, p99, p99.9 in nanoseconds.
    confirm: [Option<u64>; 3],
    broker_cpu_ns_per_msg: Option<f64>,
    /// This process's CPU time per message: when it nears 1 s per second of run, the client is the bottleneck.
    client_cpu_ns_per_msg: Option<f64>,
    left_in_queue: u32,
}

impl RunResult {
    fn publish_rate(&self) -> f64 {
        self.published as f64 / self.publish_secs.max(1e-9)
    }

    fn consume_rate(&self) -> Option<f64> {
        (self.consume_secs > 0.0).then(|| self.consumed as f64 / self.consume_secs)
    }
}

const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

fn quantiles(samples: &mut [u64]) -> [Option<u64>; 3] {
    samples.sort_unstable();
    QUANTILES.map(|q| percentile(samples, q))
}

/// The instant every message timestamp counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// `host:port` of an AMQP URI, for a default label.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn params(args: &AmqpArgs) -> String {
    let amount = match args.messages {
        Some(n) => format!("messages={n}"),
        None => format!("seconds={}", args.seconds),
    };
    let rate = if args.rate == 0 {
        "max".to_string()
    } else {
        args.rate.to_string()
    };
    let ack = if args.multi_ack > 1 {
        format!("multi-{}", args.multi_ack)
    } else {
        "each".to_string()
    };
    let confirm = if args.confirm {
        format!("on(window={})", args.confirm_window)
    } else {
        "off".to_string()
    };
    format!(
        "size={} producers={} consumers={} pipeline={} prefetch={} ack={ack} confirm={confirm} persistent={} \
         rate={rate} {amount}",
        args.size,
        args.producers,
        args.consumers,
        args.pipeline,
        args.prefetch,
        if args.persistent { "on" } else { "off" },
    )
}

fn ms(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |ns| format!("{:.3}", ns as f64 / 1e6))
}

/// Runs the scenario against one or two brokers and prints the results.
pub fn run(args: AmqpArgs) -> anyhow::Result<()> {
    if args.size < 8 {
        bail!("--size must be at least 8 (the send time)");
    }
    if args.producers == 0 {
        bail!("--producers must be at least 1");
    }
    if args.confirm && args.confirm_window == 0 {
        bail!("--confirm-window must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.prefetch > 0 && args.multi_ack > u32::from(args.prefetch) {
        bail!(
            "--multi-ack {} above --prefetch {} would never ack",
            args.multi_ack,
            args.prefetch
        );
    }
    epoch();
    let mut targets = vec![Target {
        label: args.label.clone().unwrap_or_else(|| authority(&args.url)),
        url: args.url.clone(),
        pid: args.broker_pid,
    }];
    if let Some(url2) = &args.url2 {
        targets.push(Target {
            label: args.label2.clone().unwrap_or_else(|| authority(url2)),
            url: url2.clone(),
            pid: args.broker_pid2,
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_all(&args, &targets))
}

async fn run_all(args: &AmqpArgs, targets: &[Target]) -> anyhow::Result<()> {
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("wharf-bench-amqp-{}", std::process::id()));
    let mut results: Vec<Vec<Option<RunResult>>> = targets.iter().map(|_| Vec::new()).collect();
    let mut failures = 0;
    for round in 1..=args.rounds {
        for (target, results) in targets.iter().zip(results.iter_mut()) {
            let what = format!("amqp [{}] round {round}/{}", target.label, args.rounds);
            match run_once(args, target, &queue).await {
                Ok(r) => {
                    print_run(&what, args, target, &r);
                    results.push(Some(r));
                }
                Err(e) => {
                    println!("{what}: FAILED: {e:#} ({})", params(args));
                    failures += 1;
                    results.push(None);
                }
            }
        }
    }
    print_summary(args, targets, &results);
    if failures > 0 {
        bail!("{failures} run(s) failed");
    }
    Ok(())
}

fn print_run(what: &str, args: &AmqpArgs, target: &Target, r: &RunResult) {
    let mut line = format!(
        "{what}: published {} in {:.2} s = {:.0} msg/s",
        r.published,
        r.publish_secs,
        r.publish_rate()
    );
    if r.nacked > 0 {
        line += &format!(" ({} nacked)", r.nacked);
    }
    if args.consumers > 0 {
        line += &format!(
            ", consumed {} in {:.2} s = {} msg/s, e2e p50={} p99={} p99.9={} ms",
            r.consumed,
            r.consume_secs,
            r.consume_rate().map_or("-".into(), |v| format!("{v:.0}")),
            ms(r.e2e[0]),
            ms(r.e2e[1]),
            ms(r.e2e[2]),
        );
    }
    if args.confirm {
        line += &format!(
            ", confirm p50={} p99={} p99.9={} ms",
            ms(r.confirm[0]),
            ms(r.confirm[1]),
            ms(r.confirm[2]),
        );
    }
    if let Some(ns) = r.broker_cpu_ns_per_msg {
        line += &format!(", broker_cpu={ns:.0}ns/msg");
    } else if target.pid.is_some() {
        line += ", broker_cpu=?";
    }
    if let Some(ns) = r.client_cpu_ns_per_msg {
        line += &format!(", client_cpu={ns:.0}ns/msg");
    }
    if r.left_in_queue > 0 {
        line += &format!(", {} left in the queue", r.left_in_queue);
    }
    println!("{line} ({})", params(args));
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians over the successful rounds of every target, one row per metric, with B/A when there are two.
fn print_summary(args: &AmqpArgs, targets: &[Target], results: &[Vec<Option<RunResult>>]) {
    type Metric = (&'static str, fn(&RunResult) -> Option<f64>);
    let mut metrics: Vec<Metric> = vec![("publish msg/s", |r| Some(r.publish_rate()))];
    if args.consumers > 0 {
        metrics.push(("consume msg/s", |r| r.consume_rate()));
        metrics.push(("e2e p50 ms", |r| r.e2e[0].map(|n| n as f64 / 1e6)));
        metrics.push(("e2e p99 ms", |r| r.e2e[1].map(|n| n as f64 / 1e6)));
        metrics.push(("e2e p99.9 ms", |r| r.e2e[2].map(|n| n as f64 / 1e6)));
    }
    if args.confirm {
        metrics.push(("confirm p50 ms", |r| r.confirm[0].map(|n| n as f64 / 1e6)));
        metrics.push(("confirm p99 ms", |r| r.confirm[1].map(|n| n as f64 / 1e6)));
        metrics.push(("confirm p99.9 ms", |r| r.confirm[2].map(|n| n as f64 / 1e6)));
    }
    if targets.iter().any(|t| t.pid.is_some()) {
        metrics.push(("broker CPU us/msg", |r| {
            r.broker_cpu_ns_per_msg.map(|n| n / 1e3)
        }));
    }
    metrics.push(("client CPU us/msg", |r| {
        r.client_cpu_ns_per_msg.map(|n| n / 1e3)
    }));
    let fmt = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    };
    let ok: Vec<usize> = results
        .iter()
        .map(|r| r.iter().filter(|r| r.is_some()).count())
        .collect();
    println!();
    println!(
        "amqp summary: median of {} round(s) ({})",
        args.rounds,
        params(args)
    );
    let names: Vec<String> = targets
        .iter()
        .zip(&ok)
        .map(|(t, ok)| {
            if *ok < args.rounds as usize {
                format!("{} ({ok} ok)", t.label)
            } else {
                t.label.clone()
            }
        })
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(12);
    let ratio = (targets.len() == 2).then(|| format!("{}/{}", targets[1].label, targets[0].label));
    let mut header = format!("{:<20}", "metric");
    for name in &names {
        header += &format!(" {name:>width$}");
    }
    if let Some(ratio) = &ratio {
        header += &format!(" {ratio:>10}");
    }
    println!("{header}");
    for (name, get) in metrics {
        let medians: Vec<Option<f64>> = results
            .iter()
            .map(|rs| median(rs.iter().flatten().filter_map(get).collect()))
            .collect();
        let mut row = format!("{name:<20}");
        for m in &medians {
            row += &format!(" {:>width$}", fmt(*m));
        }
        if let (Some(ratio), [Some(a), Some(b)]) = (&ratio, &medians[..]) {
            if *a > 0.0 {
                let r = b / a;
                let digits = if r < 0.1 { 3 } else { 2 };
                row += &format!(" {r:>w$.digits$}", w = ratio.len().max(10));
            }
        }
        println!("{row}");
    }
    if let (Some(ratio), [a, b]) = (&ratio, results) {
        let by_round = cpu_ratio_by_round(a, b);
        if let Some(m) = median(by_round.clone()) {
            let list: Vec<String> = by_round.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "broker CPU {ratio} round by round: {} (median {m:.3})",
                list.join(" ")
            );
        }
    }
}

/// B's broker CPU per message over A's, for each round both completed. Each round runs A and B back to back, so
/// these ratios drift less than the ratio of the medians when the machine's speed changes during the run (a
/// shared VM's does, by tens of percent within minutes).
fn cpu_ratio_by_round(a: &[Option<RunResult>], b: &[Option<RunResult>]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| {
            let a = a.as_ref()?.broker_cpu_ns_per_msg?;
            let b = b.as_ref()?.broker_cpu_ns_per_msg?;
            (a > 0.0).then(|| b / a)
        })
        .collect()
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        OP_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url}: timed out"))?
    .with_context(|| format!("connecting to {url}"))
}

async fn timed<T, E>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer in {OP_TIMEOUT:?}"))?
        .with_context(|| what.to_string())
}

/// Deletes `queue` if it exists (on a channel of its own: a broker may close it) and declares it afresh.
async fn fresh_queue(conn: &Connection, queue: &str, durable: bool) -> anyhow::Result<()> {
    let ch = timed("channel.open", conn.create_channel()).await?;
    let _ = tokio::time::timeout(
        OP_TIMEOUT,
        ch.queue_delete(queue.into(), QueueDeleteOptions::default()),
    )
    .await;
    let _ = ch.close(200, "ok".into()).await;
    let ch = timed("channel.open", conn.create_channel()).await?;
    timed(
        "queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// What one producer did.
struct ProducerOut {
    published: u64,
    nacked: u64,
    confirm_ns: Vec<u64>,
    end: Instant,
}

/// What one consumer saw.
struct ConsumerOut {
    e2e_ns: Vec<u64>,
    last: Option<Instant>,
}

/// Parameters of one producer.
struct ProducerPlan {
    size: usize,
    persistent: bool,
    confirm_window: Option<usize>,
    pipeline: usize,
    /// Interval between two publishes of this producer at a fixed rate.
    interval: Option<Duration>,
    limit: Option<u64>,
    deadline: Option<Instant>,
}

async fn run_once(args: &AmqpArgs, target: &Target, queue: &str) -> anyhow::Result<RunResult> {
    let admin = connect(&target.url).await?;
    fresh_queue(&admin, queue, args.persistent).await?;
    let queue_name: ShortString = queue.into();

    // Consumers first, so that none of the messages waits for one to arrive.
    let (stop_tx, stop_rx) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let expected = args
        .messages
        .unwrap_or(if args.rate > 0 {
            args.rate.saturating_mul(args.seconds)
        } else {
            1 << 20
        })
        .min(1 << 22);
    let per_consumer = (expected / u64::from(args.consumers.max(1)) + 1) as usize;
    let mut connections = Vec::new();
    let mut consumers: Vec<JoinHandle<anyhow::Result<ConsumerOut>>> = Vec::new();
    for i in 0..args.consumers {
        let conn = connect(&target.url).await?;
        let ch = timed("channel.open", conn.create_channel()).await?;
        timed(
            "basic.qos",
            ch.basic_qos(args.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            "basic.consume",
            ch.basic_consume(
                queue_name.clone(),
                format!("wharf-bench-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        consumers.push(tokio::spawn(consume(
            consumer,
            stop_rx.clone(),
            received.clone(),
            args.multi_ack.max(1),
            per_consumer,
        )));
        connections.push(conn);
    }

    let mut channels = Vec::new();
    for _ in 0..args.producers {
        let conn = connect(&target.url).await?;
        let ch = timed("channel.open", conn.create_channel()).await?;
        if args.confirm {
            timed(
                "confirm.select",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        }
        channels.push(ch);
        connections.push(conn);
    }

    let cpu_before = target.pid.and_then(cpu_time);
    let client_cpu_before = cpu_time(std::process::id());
    let start = Instant::now();
    let producers: Vec<JoinHandle<anyhow::Result<ProducerOut>>> = channels
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let n = u64::from(args.producers);
            let plan = ProducerPlan {
                size: args.size,
                persistent: args.persistent,
                confirm_window: args.confirm.then_some(args.confirm_window as usize),
                pipeline: args.pipeline as usize,
                interval: (args.rate > 0)
                    .then(|| Duration::from_secs_f64(n as f64 / args.rate as f64)),
                limit: args.messages.map(|m| m / n + u64::from((i as u64) < m % n)),
                deadline: args
                    .messages
                    .is_none()
                    .then(|| start + Duration::from_secs(args.seconds)),
            };
            tokio::spawn(produce(ch, queue_name.clone(), plan, start))
        })
        .collect();

    let mut result = RunResult::default();
    let mut confirm_ns = Vec::new();
    let mut publish_end = start;
    let mut first_error = None;
    for p in producers {
        match p.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(out) => {
                result.published += out.published;
                result.nacked += out.nacked;
                confirm_ns.extend(out.confirm_ns);
                publish_end = publish_end.max(out.end);
            }
            Err(e) => {
                first_error.get_or_insert(e.context("producer"));
            }
        }
    }
    if first_error.is_none() && args.consumers > 0 {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while received.load(Ordering::Relaxed) < result.published
            && Instant::now() < deadline
            && !consumers.iter().any(|c| c.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut e2e_ns = Vec::new();
    let mut last_delivery = None;
    for c in consumers {
        match c.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(out) => {
                e2e_ns.extend(out.e2e_ns);
                last_delivery = last_delivery.max(out.last);
            }
            Err(e) => {
                first_error.get_or_insert(e.context("consumer"));
            }
        }
    }
    let cpu_after = target.pid.and_then(cpu_time);
    let client_cpu_after = cpu_time(std::process::id());
    for conn in &connections {
        let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "bye".into())).await;
    }
    let keep = args.keep_queue;
    let left = async {
        let ch = timed("channel.open", admin.create_channel()).await?;
        if keep {
            let ok = timed(
                "queue.declare (passive)",
                ch.queue_declare(
                    queue_name.clone(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            return Ok(ok.message_count());
        }
        timed(
            "queue.delete",
            ch.queue_delete(queue_name.clone(), QueueDeleteOptions::default()),
        )
        .await
    }
    .await;
    let _ = tokio::time::timeout(OP_TIMEOUT, admin.close(200, "bye".into())).await;
    if let Some(e) = first_error {
        return Err(e);
    }
    result.left_in_queue = left?;
    result.consumed = e2e_ns.len() as u64;
    if args.consumers > 0 && result.consumed < result.published {
        eprintln!(
            "amqp [{}]: only {} of {} published messages arrived within {DRAIN_TIMEOUT:?} after publishing",
            target.label, result.consumed, result.published
        );
    }
    result.publish_secs = publish_end.duration_since(start).as_secs_f64();
    result.consume_secs = last_delivery.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    result.e2e = quantiles(&mut e2e_ns);
    result.confirm = quantiles(&mut confirm_ns);
    let per_msg = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) if result.published > 0 => {
            Some(a.saturating_sub(b).as_secs_f64() * 1e9 / result.published as f64)
        }
        _ => None,
    };
    result.broker_cpu_ns_per_msg = per_msg(cpu_before, cpu_after);
    result.client_cpu_ns_per_msg = per_msg(client_cpu_before, client_cpu_after);
    Ok(result)
}

/// Publishes until the plan's limit or deadline, with up to `pipeline` publishes handed to the client at once
/// (each with its own reused body buffer); with confirms, keeps at most the window unconfirmed.
async fn produce(
    ch: Channel,
    queue: ShortString,
    plan: ProducerPlan,
    start: Instant,
) -> anyhow::Result<ProducerOut> {
    let properties = if plan.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let window = plan
        .confirm_window
        .map(|w| (Arc::new(Semaphore::new(w)), w));
    let (confirms, collector) = match &window {
        Some((permits, w)) => {
            let (tx, rx) = mpsc::channel(*w);
            let capacity = plan.limit.unwrap_or(1 << 20).min(1 << 22) as usize;
            let collector = tokio::spawn(collect_confirms(rx, permits.clone(), capacity));
            (Some(tx), Some(collector))
        }
        None => (None, None),
    };
    // Body buffers not in use by a publish in flight; each goes back here when its publish is written.
    let mut spare: Vec<Vec<u8>> = (0..plan.pipeline.max(1))
        .map(|_| vec![b'w'; plan.size])
        .collect();
    let publish = |body: Vec<u8>, sent_at: Instant| {
        let (ch, queue, properties) = (&ch, queue.clone(), properties.clone());
        async move {
            let confirm = ch
                .basic_publish(
                    ShortString::default(),
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await;
            (confirm, body, sent_at)
        }
    };
    let mut in_flight = FuturesOrdered::new();
    let mut published = 0u64;
    let outcome = async {
        // Completes the oldest publish in flight: its buffer is free again, its confirm goes to the collector.
        macro_rules! complete_one {
            () => {
                if let Some((confirm, body, sent_at)) =
                    tokio::time::timeout(OP_TIMEOUT, in_flight.next())
                        .await
                        .map_err(|_| anyhow!("basic.publish: not written in {OP_TIMEOUT:?}"))?
                {
                    spare.push(body);
                    let confirm: lapin::Result<PublisherConfirm> = confirm;
                    let confirm = confirm.context("basic.publish")?;
                    match &confirms {
                        Some(tx) => tx
                            .send((sent_at, confirm))
                            .await
                            .map_err(|_| anyhow!("the confirm collector stopped"))?,
                        // Resolves at once; dropped unawaited it would wait in the channel for wait_for_confirms.
                        None => {
                            confirm.await.context("basic.publish")?;
                        }
                    }
                }
            };
        }
        loop {
            if plan.limit.is_some_and(|l| published >= l) {
                break;
            }
            let now = Instant::now();
            if plan.deadline.is_some_and(|d| now >= d) {
                break;
            }
            if let Some(interval) = plan.interval {
                let due = start + interval.mul_f64(published as f64);
                if due > now {
                    // Nothing may wait unsent while this producer sleeps.
                    while !in_flight.is_empty() {
                        complete_one!();
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            if let Some((permits, _)) = &window {
                if let Ok(permit) = permits.try_acquire() {
                    permit.forget();
                } else {
                    // The window is full: hand every confirm to the collector, then wait for one to come back.
                    while !in_flight.is_empty() {
                        complete_one!();
                    }
                    timed("waiting for a confirm", permits.acquire())
                        .await?
                        .forget();
                }
            }
            let mut body = loop {
                if let Some(body) = spare.pop() {
                    break body;
                }
                complete_one!();
            };
            let sent_at = Instant::now();
            body[..8].copy_from_slice(&nanos_since_epoch(sent_at).to_be_bytes());
            in_flight.push_back(publish(body, sent_at));
            published += 1;
        }
        while !in_flight.is_empty() {
            complete_one!();
        }
        anyhow::Ok(())
    }
    .await;
    drop(confirms);
    let (nacked, confirm_ns) = match collector {
        Some(c) if outcome.is_ok() => c.await??,
        Some(c) => {
            c.abort();
            (0, Vec::new())
        }
        None => (0, Vec::new()),
    };
    outcome?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(ProducerOut {
        published,
        nacked,
        confirm_ns,
        end: Instant::now(),
    })
}

/// Awaits the confirms in publish order, recording publish → basic.ack and returning a window permit for each.
async fn collect_confirms(
    mut rx: mpsc::Receiver<(Instant, PublisherConfirm)>,
    permits: Arc<Semaphore>,
    capacity: usize,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let mut samples = Vec::with_capacity(capacity);
    let mut nacked = 0;
    while let Some((sent_at, confirm)) = rx.recv().await {
        match timed("publisher confirm", confirm).await? {
            Confirmation::Ack(_) => {}
            Confirmation::Nack(_) => nacked += 1,
            Confirmation::NotRequested => bail!("the broker did not confirm a publish"),
        }
        samples.push(sent_at.elapsed().as_nanos() as u64);
        permits.add_permits(1);
    }
    Ok((nacked, samples))
}

/// Receives and acks until told to stop, recording each message's end-to-end latency. Acks are handed to the
/// client without waiting for each to be written (as a Java client's basicAck returns once it is in the socket
/// buffer); at most `ACKS_IN_FLIGHT` are unwritten at a time.
async fn consume(
    mut consumer: lapin::Consumer,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
    ack_every: u32,
    capacity: usize,
) -> anyhow::Result<ConsumerOut> {
    const ACKS_IN_FLIGHT: usize = 256;
    let ack = |acker: lapin::Acker, multiple: bool| async move {
        acker.ack(BasicAckOptions { multiple }).await
    };
    let mut acks = FuturesUnordered::new();
    let mut e2e_ns = Vec::with_capacity(capacity);
    let mut last = None;
    let mut unacked = 0u32;
    let mut pending = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(done) = acks.next(), if !acks.is_empty() => {
                let done: lapin::Result<bool> = done;
                done.context("basic.ack")?;
            }
            delivery = consumer.next(), if acks.len() < ACKS_IN_FLIGHT => {
                let delivery = match delivery {
                    Some(d) => d.context("delivery")?,
                    None => bail!("the broker cancelled the consumer"),
                };
                let now = Instant::now();
                if let Some(ts) = delivery.data.get(..8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(ts);
                    e2e_ns.push(nanos_since_epoch(now).saturating_sub(u64::from_be_bytes(b)));
                }
                last = Some(now);
                received.fetch_add(1, Ordering::Relaxed);
                unacked += 1;
                if unacked >= ack_every {
                    acks.push(ack(delivery.acker, ack_every > 1));
                    unacked = 0;
                    pending = None;
                } else {
                    pending = Some(delivery.acker);
                }
            }
        }
    }
    if let Some(acker) = pending {
        acks.push(ack(acker, true));
    }
    let _ = tokio::time::timeout(OP_TIMEOUT, async {
        while let Some(done) = acks.next().await {
            done?;
        }
        lapin::Result::Ok(())
    })
    .await;
    Ok(ConsumerOut { e2e_ns, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_uris() {
        assert_eq!(
            authority("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(authority("amqp://localhost:5673"), "localhost:5673");
    }

    #[test]
    fn cpu_ratios_pair_rounds_and_skip_failed_ones() {
        let cpu = |ns: f64| {
            Some(RunResult {
                broker_cpu_ns_per_msg: Some(ns),
                ..RunResult::default()
            })
        };
        let a = vec![cpu(100.0), None, cpu(80.0), cpu(50.0)];
        let b = vec![cpu(10.0), cpu(9.0), None, cpu(6.0)];
        assert_eq!(cpu_ratio_by_round(&a, &b), vec![0.1, 0.12]);
        let no_pid = vec![Some(RunResult::default())];
        assert!(cpu_ratio_by_round(&no_pid, &no_pid).is_empty());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
