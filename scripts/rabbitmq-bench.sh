#!/usr/bin/env bash
# Wharf against RabbitMQ through `wharf-bench amqp`, side by side, on loopback only.
#
# Installs RabbitMQ from Debian if it is missing, starts a private RabbitMQ node (wharfbench@localhost, AMQP on
# 127.0.0.1:${RABBITMQ_PORT:-5673}, every file in a temp dir, no plugins) and a release Wharf on free ports, runs
# four scenarios against both (interleaved rounds; each broker's CPU per message from its pid), then stops both.
#
#   ./scripts/rabbitmq-bench.sh                 # 3 rounds of 2 s per broker and scenario
#   BENCH_SECONDS=5 BENCH_ROUNDS=5 ./scripts/rabbitmq-bench.sh --producers 2 --consumers 2
#   WHARF=/path/to/wharf WHARF_BENCH=/path/to/wharf-bench ./scripts/rabbitmq-bench.sh   # no cargo build
#
# Extra arguments go to every `wharf-bench amqp` run. Scenarios (1 producer, 1 consumer, 1 KiB by default):
# transient messages as fast as possible; --confirm --persistent as fast as possible; --rate 1000 for latency,
# transient and then with --confirm --persistent (the cost of a confirm that waits for the disk, unbatched).
#
# WHARF_ARGS adds flags to `wharf serve` (e.g. WHARF_ARGS="--worker-threads 1").
# RabbitMQ's Erlang schedulers busy-wait by default, which on a small machine takes CPU from the client and
# inflates its CPU per message; RMQ_ERL_ARGS turns that off (set it to "" to keep RabbitMQ's default).
set -euo pipefail
cd "$(dirname "$0")/.."

RABBITMQ_PORT="${RABBITMQ_PORT:-5673}"
BENCH_SECONDS="${BENCH_SECONDS:-2}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
RMQ_ERL_ARGS="${RMQ_ERL_ARGS-+sbwt none +sbwtdcpu none +sbwtdio none}"
NODE=wharfbench@localhost

if ! command -v rabbitmqctl >/dev/null 2>&1 || [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  echo "installing rabbitmq-server"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q rabbitmq-server >/dev/null || {
    $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q rabbitmq-server >/dev/null
  }
fi
# Debian's /usr/sbin wrappers switch to the rabbitmq user; the private node runs as the caller instead.
RMQ_BIN=/usr/lib/rabbitmq/bin

if [ -z "${WHARF:-}" ] || [ -z "${WHARF_BENCH:-}" ]; then
  cargo build --release -p wharf -p wharf-bench
  target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  WHARF="${WHARF:-$target_dir/release/wharf}"
  WHARF_BENCH="${WHARF_BENCH:-$target_dir/release/wharf-bench}"
fi

tmp="$(mktemp -d -t wharf-rabbitmq-bench.XXXXXX)"
rmq_job=""
rmq_pid=""
wharf_pid=""
epmd_was_running=0
pgrep -x epmd >/dev/null 2>&1 && epmd_was_running=1

# The node's cookie lives in a private HOME; only RabbitMQ's own commands see it.
mkdir -p "$tmp/rmq-home" "$tmp/mnesia" "$tmp/log"
touch "$tmp/rabbitmq-env.conf" "$tmp/rabbitmq.conf"
echo "[]." >"$tmp/enabled_plugins"
echo "[]." >"$tmp/advanced.config"
rmq_env=(
  HOME="$tmp/rmq-home"
  RABBITMQ_NODENAME="$NODE"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  RABBITMQ_NODE_PORT="$RABBITMQ_PORT"
  RABBITMQ_DIST_PORT="$((RABBITMQ_PORT + 20000))"
  RABBITMQ_CONF_ENV_FILE="$tmp/rabbitmq-env.conf"
  RABBITMQ_CONFIG_FILE="$tmp/rabbitmq"
  RABBITMQ_ADVANCED_CONFIG_FILE="$tmp/advanced.config"
  RABBITMQ_ENABLED_PLUGINS_FILE="$tmp/enabled_plugins"
  RABBITMQ_MNESIA_BASE="$tmp/mnesia"
  RABBITMQ_LOG_BASE="$tmp/log"
  RABBITMQ_PID_FILE="$tmp/rabbitmq.pid"
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} $RMQ_ERL_ARGS"
  ERL_EPMD_ADDRESS=127.0.0.1
)
rmqctl() { env "${rmq_env[@]}" "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"; }

cleanup() {
  set +e
  if [ -n "$wharf_pid" ] && kill -0 "$wharf_pid" 2>/dev/null; then
    kill -TERM "$wharf_pid"
    wait "$wharf_pid"
    echo "wharf stopped (exit $?)"
  fi
  if [ -n "$rmq_pid" ] && kill -0 "$rmq_pid" 2>/dev/null; then
    rmqctl stop >/dev/null 2>&1 || kill -TERM "$rmq_pid"
    for _ in $(seq 1 300); do
      kill -0 "$rmq_pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "rabbitmq stopped"
  fi
  [ -n "$rmq_job" ] && wait "$rmq_job" 2>/dev/null
  # rabbitmq-server starts an epmd daemon when none runs; stop the one it started.
  if [ "$epmd_was_running" = 0 ] && pgrep -x epmd >/dev/null 2>&1; then
    env ERL_EPMD_ADDRESS=127.0.0.1 epmd -kill >/dev/null 2>&1
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "starting RabbitMQ ($NODE on 127.0.0.1:$RABBITMQ_PORT, files in $tmp)"
env "${rmq_env[@]}" "$RMQ_BIN/rabbitmq-server" >"$tmp/rabbitmq.out" 2>&1 &
rmq_job=$!
rmq_pid=$rmq_job
# await_startup fails at once while the node is not reachable yet, so ask again until it answers.
started=0
for _ in $(seq 1 120); do
  if rmqctl await_startup --timeout 60 >/dev/null 2>&1; then
    started=1
    break
  fi
  kill -0 "$rmq_pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$started" = 0 ]; then
  echo "RabbitMQ did not start; its output:" >&2
  tail -n 40 "$tmp/rabbitmq.out" >&2
  exit 1
fi
# The node's own OS pid (beam.smp; not the background job's pid, which only started it).
[ -s "$tmp/rabbitmq.pid" ] && rmq_pid="$(cat "$tmp/rabbitmq.pid")"
echo "RabbitMQ $(rmqctl version 2>/dev/null || echo '?') running, pid $rmq_pid"

echo "starting Wharf ($WHARF)"
"$WHARF" serve --data-dir "$tmp/wharf-data" --amqp-listen 127.0.0.1:0 --kafka-listen off \
  --http-listen 127.0.0.1:0 --ready-file "$tmp/wharf-ready.json" --log-level warn ${WHARF_ARGS:-} \
  >"$tmp/wharf.out" 2>&1 &
wharf_pid=$!
for _ in $(seq 1 200); do
  [ -s "$tmp/wharf-ready.json" ] && break
  kill -0 "$wharf_pid" 2>/dev/null || { echo "wharf exited:" >&2; cat "$tmp/wharf.out" >&2; exit 1; }
  sleep 0.05
done
wharf_amqp="$(sed -n 's/.*"amqp":"\([^"]*\)".*/\1/p' "$tmp/wharf-ready.json")"
[ -n "$wharf_amqp" ] || { echo "no amqp address in the ready file" >&2; exit 1; }
echo "Wharf running on $wharf_amqp, pid $wharf_pid"

status=0
bench() {
  echo
  echo "== wharf-bench amqp $*"
  "$WHARF_BENCH" amqp \
    --url "amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f" --label rabbitmq --broker-pid "$rmq_pid" \
    --url2 "amqp://guest:guest@$wharf_amqp/%2f" --label2 wharf --broker-pid2 "$wharf_pid" \
    --rounds "$BENCH_ROUNDS" "$@" || status=1
}
# --messages N in the extra arguments replaces --seconds.
duration=(--seconds "$BENCH_SECONDS")
for a in "$@"; do
  if [[ "$a" == --messages* ]]; then duration=(); fi
done
bench "${duration[@]}" "$@"
bench --confirm --persistent "${duration[@]}" "$@"
bench --rate 1000 "${duration[@]}" "$@"
bench --rate 1000 --confirm --persistent "${duration[@]}" "$@"

if ! kill -0 "$wharf_pid" 2>/dev/null; then
  echo "wharf is no longer running; its output:" >&2
  tail -n 40 "$tmp/wharf.out" >&2
  status=1
fi
if grep -qiE "panick|error" "$tmp/wharf.out"; then
  echo "wharf logged:" >&2
  grep -iE "panick|error" "$tmp/wharf.out" | tail -n 20 >&2
fi
exit "$status"
