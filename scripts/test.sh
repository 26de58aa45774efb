#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every test.
# Used by README.md and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Toolchain pieces the checks need (the machine ships rustup's stable toolchain).
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Nothing else to install yet: the log engine and the binary need only cargo. (The Kafka and AMQP issues add
# their client libraries here: librdkafka builds from the rdkafka crate with gcc and make.)

# 50 SIGKILL cycles of the crash test unless the caller asks for more or fewer.
export WHARF_CRASH_CYCLES="${WHARF_CRASH_CYCLES:-50}"
cargo test --workspace --locked
