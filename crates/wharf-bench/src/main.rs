//! `wharf-bench`: benchmarks a broker through real client libraries (`lapin` for AMQP, `rdkafka` for Kafka) in
//! the spirit of RabbitMQ's PerfTest, against any AMQP URL or Kafka bootstrap address, so that Wharf and a
//! reference broker are measured side by side in one run.
//!
//! Filled by the Kafka (issue 3) and AMQP (issue 4) issues. It must not depend on Wharf's internals: it talks to
//! brokers only over the network. The log engine's own benchmark is `cargo bench -p wharf-log`.

fn main() {
    eprintln!(
        "wharf-bench: no broker benchmark is built yet (they arrive with the Kafka and AMQP protocols); \
         for the storage engine run `cargo bench -p wharf-log --bench log_bench`"
    );
    std::process::exit(2);
}
