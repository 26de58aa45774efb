#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every test.
# Used by README.md and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Toolchain pieces the checks need (the machine ships rustup's stable toolchain).
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The Kafka tests use librdkafka, which the rdkafka crate builds from source with gcc and make; it links
# zlib through pkg-config. Install those from Debian if this machine lacks them.
if ! pkg-config --exists zlib 2>/dev/null; then
  echo "installing zlib1g-dev and pkg-config for librdkafka"
  apt-get install -y -q zlib1g-dev pkg-config >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q zlib1g-dev pkg-config >/dev/null
  }
fi

# kafka-python, a second, independent Kafka client (pure Python) for crates/wharf/tests/kafka.rs.
if ! python3 -c "import kafka" 2>/dev/null; then
  echo "installing kafka-python"
  python3 -m pip install -q "kafka-python==3.0.12"
fi

# pika, the Python AMQP client of RabbitMQ's tutorials, for crates/wharf/tests/amqp_clients.rs.
if ! python3 -c "import pika" 2>/dev/null; then
  echo "installing pika"
  python3 -m pip install -q "pika==1.3.2"
fi

# aio-pika (asyncio, over aiormq and the pamqp codec) for crates/wharf/tests/amqp_clients.rs.
if ! python3 -c "import aio_pika" 2>/dev/null; then
  echo "installing aio-pika"
  python3 -m pip install -q "aio-pika==10.2.1" "aiormq==7.2.4" "pamqp==4.0.1"
fi

# Celery (with kombu and py-amqp), the most common way Python applications use RabbitMQ, for
# crates/wharf/tests/amqp_clients.rs.
if ! python3 -c "import celery" 2>/dev/null; then
  echo "installing celery"
  python3 -m pip install -q "celery==5.7.0"
fi

# The RabbitMQ Java client (Debian's package; run as a single-file program by the JDK the machine has) for
# crates/wharf/tests/amqp_clients.rs.
if [ ! -f /usr/share/java/amqp-client.jar ] || [ ! -f /usr/share/java/slf4j-nop.jar ]; then
  echo "installing librabbitmq-client-java and libslf4j-java"
  apt-get install -y -q librabbitmq-client-java libslf4j-java >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q librabbitmq-client-java libslf4j-java >/dev/null
  }
fi
if ! command -v java >/dev/null 2>&1; then
  echo "installing a JDK"
  apt-get install -y -q default-jdk-headless >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q default-jdk-headless >/dev/null
  }
fi

# Go and amqp091-go (Debian's packaged sources, built offline) for crates/wharf/tests/amqp_clients.rs.
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ]; then
  echo "installing golang-go and golang-github-rabbitmq-amqp091-go-dev"
  apt-get install -y -q golang-go golang-github-rabbitmq-amqp091-go-dev >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q golang-go golang-github-rabbitmq-amqp091-go-dev >/dev/null
  }
fi

# Node's amqplib, current and 0.10.5 (whose default frame_max is 4096), from the npm registry, each in its
# own directory under target/ (WHARF_TEST_CLIENTS), for crates/wharf/tests/amqp_clients.rs.
export WHARF_TEST_CLIENTS="${WHARF_TEST_CLIENTS:-$PWD/target/test-clients}"
if ! command -v node >/dev/null 2>&1; then
  echo "installing nodejs and npm"
  apt-get install -y -q nodejs npm >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null
  }
fi
for version in 2.3.1 0.10.5; do
  if [ ! -d "$WHARF_TEST_CLIENTS/amqplib-$version/node_modules/amqplib" ]; then
    echo "installing amqplib $version"
    npm install --silent --no-audit --no-fund --prefix "$WHARF_TEST_CLIENTS/amqplib-$version" "amqplib@$version" >/dev/null
  fi
done

# 50 SIGKILL cycles of the crash test unless the caller asks for more or fewer.
export WHARF_CRASH_CYCLES="${WHARF_CRASH_CYCLES:-50}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last often a 0-test doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
