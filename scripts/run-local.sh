#!/usr/bin/env bash
# Starts a local memring cluster on the embedded ring store: three shard nodes, one router and
# the control plane, each with its own port, data directory and log file under ./data. Ctrl-C
# stops them all cleanly; running it again finds every memory again.
#   router        http://127.0.0.1:7700   (the API)
#   shard-1..3    http://127.0.0.1:7711-7713
#   control plane http://127.0.0.1:7800   (GET /v1/cluster; shardctl status)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CARGO_TARGET_DIR:-target}/release"
DATA="${MEMRING_DATA:-data}"
mkdir -p "$DATA/logs"

for b in memring-shard memring-router memring-control; do
  [ -x "$BIN/$b" ] || { echo "run-local: $BIN/$b is missing; run 'make run' (it builds first)" >&2; exit 1; }
done
for port in 7700 7711 7712 7713 7800; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-local: port $port is already in use; stop whatever listens there (another memring?) first" >&2
    exit 1
  fi
done

pids=()
stop() {
  echo
  echo "stopping memring…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped; data kept in $DATA/"
}
trap stop INT TERM

wait_ready() {
  local name=$1 url=$2
  for _ in $(seq 1 300); do
    if curl -fsS "$url/ready" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "run-local: $name did not become ready; see $DATA/logs/$name.log" >&2
  tail -20 "$DATA/logs/$name.log" >&2 || true
  stop
  exit 1
}

for i in 1 2 3; do
  "$BIN/memring-shard" --node-id "shard-$i" --listen "127.0.0.1:771$i" \
    --data-dir "$DATA/shard-$i" --ring-dir "$DATA/ring" >>"$DATA/logs/shard-$i.log" 2>&1 &
  pids+=($!)
  wait_ready "shard-$i" "http://127.0.0.1:771$i"
done
"$BIN/memring-router" --listen 127.0.0.1:7700 --ring-dir "$DATA/ring" --embedder builtin >>"$DATA/logs/router.log" 2>&1 &
pids+=($!)
wait_ready router http://127.0.0.1:7700
"$BIN/memring-control" --ring-dir "$DATA/ring" serve --listen 127.0.0.1:7800 --auto-rebalance true >>"$DATA/logs/control.log" 2>&1 &
pids+=($!)
wait_ready control http://127.0.0.1:7800

cat <<MSG

memring is running (auth is off in this single-machine setup: any tenant id is accepted).
  API            http://127.0.0.1:7700   e.g. curl -s localhost:7700/v1/ring
  shard nodes    http://127.0.0.1:7711  :7712  :7713
  control plane  http://127.0.0.1:7800   $BIN/shardctl status
  metrics        /metrics on every port above
  data and logs  $DATA/   (logs in $DATA/logs/)
Press Ctrl-C to stop.
MSG
wait
