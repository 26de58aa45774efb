#!/usr/bin/env bash
# The AMQP memory goals of issue 4, measured on a release build:
#  1. a backlog of MESSAGES (default 10 million) persistent 1 KiB messages, published with confirms into one
#     durable queue with no consumer: the broker's RSS while publishing (sampled every 2 s), after, and after a
#     restart (with the time the restart took);
#  2. 1000 idle AMQP connections (pika, heartbeats off): the RSS they add.
# Usage: scripts/amqp-memory.sh  (WHARF=path WHARF_BENCH=path to skip the build; MESSAGES=n; CONNECTIONS=n)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES="${MESSAGES:-10000000}"
CONNECTIONS="${CONNECTIONS:-1000}"
if [[ -z "${WHARF:-}" || -z "${WHARF_BENCH:-}" ]]; then
  cargo build --release -q -p wharf -p wharf-bench
  WHARF="${WHARF:-target/release/wharf}"
  WHARF_BENCH="${WHARF_BENCH:-target/release/wharf-bench}"
fi
python3 -c "import pika" 2>/dev/null || python3 -m pip install -q "pika==1.3.2"
ulimit -n 65536 2>/dev/null || ulimit -n 4096
dir=$(mktemp -d /tmp/wharf-memory.XXXXXX)
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

start() {
  rm -f "$dir/ready.json"
  local t0; t0=$(date +%s.%N)
  "$WHARF" serve --data-dir "$dir/data" --amqp-listen 127.0.0.1:0 --kafka-listen off --http-listen off \
    --ready-file "$dir/ready.json" 2>>"$dir/wharf.log" &
  pid=$!
  until [[ -s "$dir/ready.json" ]]; do sleep 0.05; done
  addr=$(python3 -c "import json;print(json.load(open('$dir/ready.json'))['amqp'])")
  echo "broker ready in $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s (pid $pid, $addr)"
}
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }

echo "== backlog: $MESSAGES persistent 1 KiB messages, confirms, one durable queue, no consumer"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start
echo "RSS idle: $(rss_mib) MiB"
( peak=0; while kill -0 "$pid" 2>/dev/null; do r=$(rss_mib); echo "$r" >> "$dir/rss.samples"; sleep 2; done ) &
sampler=$!
"$WHARF_BENCH" amqp --url "amqp://guest:guest@$addr/%2f" --consumers 0 --persistent --confirm \
  --messages "$MESSAGES" --rounds 1 --queue backlog --keep-queue --broker-pid "$pid" | grep -v '^$' | tail -n 12
echo "RSS after publishing: $(rss_mib) MiB; peak (VmHWM): $(hwm_mib) MiB; max sampled: $(sort -n "$dir/rss.samples" | tail -1) MiB"
du -sh "$dir/data" | awk '{print "data on disk: " $1}'
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; kill "$sampler" 2>/dev/null || true
start
python3 - "$addr" <<'EOF'
import sys, pika
host, port = sys.argv[1].rsplit(":", 1)
c = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=int(port)))
q = c.channel().queue_declare("backlog", durable=True, passive=True)
print(f"after restart: {q.method.message_count} messages in the queue")
c.close()
EOF
echo "RSS after restart: $(rss_mib) MiB"

echo "== $CONNECTIONS idle connections (pika, heartbeat 0)"
before=$(rss_mib)
python3 - "$addr" "$CONNECTIONS" "$dir/conns.ready" <<'EOF' &
import sys, time, pika
host, port = sys.argv[1].rsplit(":", 1)
conns = [pika.BlockingConnection(pika.ConnectionParameters(host=host, port=int(port), heartbeat=0))
         for _ in range(int(sys.argv[2]))]
open(sys.argv[3], "w").write(str(len(conns)))
time.sleep(30)
EOF
client=$!
until [[ -s "$dir/conns.ready" ]]; do sleep 0.2; done
sleep 1
after=$(rss_mib)
echo "RSS with $(cat "$dir/conns.ready") idle connections: $after MiB (was $before MiB: +$(python3 -c "print(round($after - $before, 1))") MiB)"
kill "$client" 2>/dev/null || true
