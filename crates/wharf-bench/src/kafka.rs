//! `wharf-bench kafka`: producer throughput, consumer throughput and end-to-end latency at a fixed rate,
//! through librdkafka, against any Kafka-protocol broker.
//!
//! - produce: `--records` records of `--record-size` bytes as fast as the client can send them, with the given
//!   acks, linger, batch size and compression; reports records/s and MB/s (payload bytes);
//! - consume: reads the records back from the beginning of every partition; reports records/s and MB/s;
//! - latency: sends `--rate` records/s for `--seconds`, each carrying its send time, while a consumer reads
//!   them; reports end-to-end p50 / p99 / p99.9 / max.
//!
//! Every result line repeats the parameters it was measured with. With `--broker-pid` the broker's CPU time
//! per record is reported too.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::stats::{cpu_time, percentile};

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Producer throughput.
    Produce,
    /// Consumer throughput of records already in `--topic` (e.g. from an earlier `produce` run).
    Consume,
    /// End-to-end latency at `--rate`.
    Latency,
    /// produce, then consume, then latency.
    All,
}

/// Options of `wharf-bench kafka`.
#[derive(clap::Args, Debug)]
pub struct KafkaArgs {
    /// Bootstrap address of the broker under test.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// Topic to use (created with `--partitions` if missing); a fresh name per run avoids old data.
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Payload size of each record in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records to produce (and consume).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Producer `acks`: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Producer `linger.ms`.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Producer `batch.size` in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: u64,
    /// Producer `compression.type`: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Latency mode: records per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Latency mode: how long to send.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The broker's pid, to report its CPU time per record.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Free text printed with every result (e.g. the broker's durability policy).
    #[arg(long, default_value = "")]
    pub label: String,
}

struct Counting;

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            eprintln!("delivery failed: {e}");
            std::process::exit(1);
        }
    }
}

fn base_config(args: &KafkaArgs) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.bootstrap)
        .set("broker.address.family", "v4");
    c
}

fn producer(args: &KafkaArgs, linger_ms: u64) -> anyhow::Result<ThreadedProducer<Counting>> {
    let mut c = base_config(args);
    c.set("acks", &args.acks)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "message.max.bytes",
            (args.batch_size + 1024 * 1024).to_string(),
        );
    Ok(c.create_with_context(Counting)?)
}

fn consumer(args: &KafkaArgs) -> anyhow::Result<BaseConsumer> {
    let mut c = base_config(args);
    c.set("group.id", "wharf-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", "52428800");
    Ok(c.create()?)
}

fn ensure_topic(args: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(args).create()?;
    let runtime = futures_lite_block_on(admin.create_topics(
        &[NewTopic::new(
            topic,
            args.partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in runtime {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {name}: {code}");
            }
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (rdkafka's admin futures need no runtime).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn params(args: &KafkaArgs) -> String {
    format!(
        "record_size={} partitions={} acks={} linger_ms={} batch_size={} compression={}{}",
        args.record_size,
        args.partitions,
        args.acks,
        args.linger_ms,
        args.batch_size,
        args.compression,
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", args.label)
        }
    )
}

fn cpu_per_record(pid: Option<u32>, before: Option<Duration>, records: u64) -> String {
    match (pid.and_then(cpu_time), before) {
        (Some(after), Some(before)) if records > 0 => {
            let per = (after.saturating_sub(before)).as_secs_f64() * 1e9 / records as f64;
            format!(" broker_cpu={per:.0}ns/record")
        }
        _ => String::new(),
    }
}

/// Runs the selected measurements.
pub fn run(args: KafkaArgs) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("wharf-bench-{now}"));
    ensure_topic(&args, &topic).context("creating the topic")?;
    if matches!(args.mode, Mode::Produce | Mode::All) {
        produce(&args, &topic)?;
    }
    if matches!(args.mode, Mode::Consume | Mode::All) {
        consume(&args, &topic)?;
    }
    if matches!(args.mode, Mode::Latency | Mode::All) {
        latency(&args, &format!("{topic}-latency"))?;
    }
    Ok(())
}

fn produce(args: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    let p = producer(args, args.linger_ms)?;
    let payload = vec![b'w'; args.record_size];
    let cpu_before = args.broker_pid.and_then(cpu_time);
    let start = Instant::now();
    let mut partition = 0;
    for _ in 0..args.records {
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&payload)
            .partition(partition);
        partition = (partition + 1) % args.partitions.max(1);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => bail!("produce failed: {e}"),
            }
        }
    }
    p.flush(Timeout::After(Duration::from_secs(120)))?;
    let secs = start.elapsed().as_secs_f64();
    let mb = args.records as f64 * args.record_size as f64 / 1e6;
    println!(
        "produce: {} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s ({}){}",
        args.records,
        args.records as f64 / secs,
        mb / secs,
        params(args),
        cpu_per_record(args.broker_pid, cpu_before, args.records)
    );
    Ok(())
}

fn consume(args: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    let c = consumer(args)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let cpu_before = args.broker_pid.and_then(cpu_time);
    let start = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut idle_since = Instant::now();
    while records < args.records {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64;
                idle_since = Instant::now();
            }
            Some(Err(e)) => bail!("consume failed: {e}"),
            None if idle_since.elapsed() > Duration::from_secs(10) => {
                bail!("consumer idle for 10 s after {records} records")
            }
            None => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "consume: {records} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s ({}){}",
        records as f64 / secs,
        bytes as f64 / 1e6 / secs,
        params(args),
        cpu_per_record(args.broker_pid, cpu_before, records)
    );
    Ok(())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn latency(args: &KafkaArgs, topic: &str) -> anyhow::Result<()> {
    ensure_topic(args, topic)?;
    let c = consumer(args)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    c.assign(&tpl)?;
    // Let the consumer reach the end before sending.
    for _ in 0..20 {
        c.poll(Duration::from_millis(50));
    }
    let total = args.rate * args.seconds;
    let reader = std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
        let mut samples = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(total / 10);
        while (samples.len() as u64) < total && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m?;
                if let Some(p) = m.payload() {
                    if p.len() >= 8 {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p[..8]);
                        samples.push(now_micros().saturating_sub(u64::from_be_bytes(ts)));
                    }
                }
            }
        }
        Ok(samples)
    });
    // Latency is measured with linger 0, as a latency-sensitive producer would run.
    let p = producer(args, 0)?;
    let mut payload = vec![b'w'; args.record_size.max(8)];
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        payload[..8].copy_from_slice(&now_micros().to_be_bytes());
        let partition = (i % args.partitions.max(1) as u64) as i32;
        if let Err((e, _)) = p.send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&payload)
                .partition(partition),
        ) {
            bail!("latency produce failed: {e}");
        }
    }
    p.flush(Timeout::After(Duration::from_secs(60)))?;
    let mut samples = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    samples.sort_unstable();
    let ms = |q: f64| {
        percentile(&samples, q).map_or("-".into(), |us| format!("{:.2}", us as f64 / 1000.0))
    };
    println!(
        "latency: {} of {total} records at {} records/s ({:.1} MB/s): p50={} ms p99={} ms p99.9={} ms max={} ms ({} linger_ms=0 for this run)",
        samples.len(),
        args.rate,
        args.rate as f64 * args.record_size as f64 / 1e6,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        ms(1.0),
        params(args)
    );
    Ok(())
}
