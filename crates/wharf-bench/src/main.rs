//! `wharf-bench`: benchmarks a broker through real client libraries (`rdkafka` for Kafka, `lapin` for AMQP 0-9-1)
//! in the spirit of Kafka's producer/consumer perf tests and RabbitMQ's PerfTest, against any broker address, so
//! that Wharf and a reference broker are measured side by side in one run.
//!
//! It must not depend on Wharf's internals: it talks to brokers only over the network. The log engine's own
//! benchmark is `cargo bench -p wharf-log`.

mod amqp;
mod kafka;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wharf-bench",
    about = "Benchmarks a broker through real client libraries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kafka producer and consumer throughput, and end-to-end latency at a fixed rate (librdkafka).
    Kafka(kafka::KafkaArgs),
    /// AMQP 0-9-1 publish and consume throughput, end-to-end and confirm latency, against one broker or two side
    /// by side (lapin).
    Amqp(amqp::AmqpArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Kafka(args) => kafka::run(args),
        Command::Amqp(args) => amqp::run(args),
    }
}
