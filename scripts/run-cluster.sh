#!/usr/bin/env bash
# Starts a local multi-process memring cluster on etcd: one etcd, three shard nodes, two routers
# and the control plane, each with its own port, data directory and log file under
# ./data-cluster. The shards are put into the ring with explicit layout changes (cluster mode
# never joins nodes by itself). Ctrl-C (or SIGTERM) stops everything cleanly.
# Everything is locked as in production: etcd runs with authentication (memring's user may only
# touch /memring/), internal traffic carries the cluster token, routers and the control plane
# want API keys. The secrets are files under ./data-cluster/secrets (mode 0600), made once.
#   etcd           http://127.0.0.1:2479
#   routers        http://127.0.0.1:7701  http://127.0.0.1:7702
#   shard-1..3     http://127.0.0.1:7721-7723
#   control plane  http://127.0.0.1:7801
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CARGO_TARGET_DIR:-target}/release"
DATA="${MEMRING_DATA:-data-cluster}"
ETCD_URL=http://127.0.0.1:2479
mkdir -p "$DATA/logs"
for tool in etcd etcdctl; do
  command -v $tool >/dev/null || { echo "run-cluster: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done
for b in memring-shard memring-router memring-control; do
  [ -x "$BIN/$b" ] || { echo "run-cluster: $BIN/$b missing; run 'make build'" >&2; exit 1; }
done
for port in 2479 2480 7701 7702 7721 7722 7723 7801; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-cluster: port $port is already in use" >&2
    exit 1
  fi
done

pids=()
stop() {
  echo
  echo "stopping the cluster…"
  # Routers and the control plane first, then shards, etcd last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
  echo "stopped; data kept in $DATA/"
}
trap stop INT TERM

wait_http() {
  local name=$1 url=$2
  for _ in $(seq 1 300); do
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "run-cluster: $name did not come up; see $DATA/logs/$name.log" >&2
  stop; exit 1
}

SECRETS="$DATA/secrets"
mkdir -p "$SECRETS" && chmod 700 "$SECRETS"
secret() { [ -s "$SECRETS/$1" ] || (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SECRETS/$1"); }
secret etcd-root-password
secret etcd-password
[ -s "$SECRETS/cluster-token" ] || "$BIN/memring-control" token generate "$SECRETS/cluster-token"
ETCD_AUTH=(--etcd "$ETCD_URL" --etcd-user memring --etcd-password-file "$SECRETS/etcd-password")
TOKEN=(--cluster-token-file "$SECRETS/cluster-token")

etcd --name memring --data-dir "$DATA/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls http://127.0.0.1:2480 --initial-advertise-peer-urls http://127.0.0.1:2480 \
  --initial-cluster memring=http://127.0.0.1:2480 --initial-cluster-state new >>"$DATA/logs/etcd.log" 2>&1 &
pids+=($!)
wait_http etcd "$ETCD_URL/health"
if [ ! -e "$SECRETS/etcd-auth-on" ]; then
  # First start: a root user, a memring user whose role reaches only /memring/, then auth on.
  ctl() { etcdctl --endpoints "$ETCD_URL" "$@" >/dev/null; }
  ctl user add "root:$(cat "$SECRETS/etcd-root-password")"
  ctl user grant-role root root
  ctl role add memring
  ctl role grant-permission memring --prefix=true readwrite /memring/
  ctl user add "memring:$(cat "$SECRETS/etcd-password")"
  ctl user grant-role memring memring
  ctl auth enable
  touch "$SECRETS/etcd-auth-on"
fi

for i in 1 2 3; do
  "$BIN/memring-shard" --node-id "shard-$i" --listen "127.0.0.1:772$i" --data-dir "$DATA/shard-$i" \
    "${ETCD_AUTH[@]}" "${TOKEN[@]}" >>"$DATA/logs/shard-$i.log" 2>&1 &
  pids+=($!)
  wait_http "shard-$i" "http://127.0.0.1:772$i/ready"
  # Idempotent: adding a node that is already in the layout with this address changes nothing.
  "$BIN/memring-control" "${ETCD_AUTH[@]}" layout add-node "shard-$i" "127.0.0.1:772$i" >/dev/null
done
for i in 1 2; do
  "$BIN/memring-router" --listen "127.0.0.1:770$i" "${ETCD_AUTH[@]}" "${TOKEN[@]}" >>"$DATA/logs/router-$i.log" 2>&1 &
  pids+=($!)
  wait_http "router-$i" "http://127.0.0.1:770$i/ready"
done
"$BIN/memring-control" "${ETCD_AUTH[@]}" "${TOKEN[@]}" serve --listen 127.0.0.1:7801 --auto-rebalance true >>"$DATA/logs/control.log" 2>&1 &
pids+=($!)
wait_http control http://127.0.0.1:7801/ready
# Cluster mode requires API keys: the first admin key is made straight in etcd, once, and kept
# in the secrets folder (revoke keys with `shardctl keys list` / `shardctl keys revoke ID`).
if [ ! -s "$SECRETS/admin-key" ]; then
  (umask 077; "$BIN/memring-control" "${ETCD_AUTH[@]}" keys bootstrap --label make-cluster >"$SECRETS/admin-key")
fi
ADMIN_KEY=$(cat "$SECRETS/admin-key")

cat <<MSG

memring cluster on etcd is running.
  routers        http://127.0.0.1:7701  http://127.0.0.1:7702
  shard nodes    http://127.0.0.1:7721  :7722  :7723
  control plane  MEMRING_API_KEY=\$(cat $SECRETS/admin-key) $BIN/shardctl --control http://127.0.0.1:7801 status
                 (operator page http://127.0.0.1:7801/ : any user name, an admin or operator key as password)
  etcd           $ETCD_URL (auth on; user memring, password in $SECRETS/etcd-password)
  admin API key  $ADMIN_KEY
                 (curl -H "Authorization: Bearer \$KEY" ...; tenant keys: shardctl keys create --tenant T)
  secrets        $SECRETS/ (cluster token, etcd passwords, the admin key)
  data and logs  $DATA/
Press Ctrl-C to stop.
MSG
wait
