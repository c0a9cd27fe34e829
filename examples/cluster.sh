#!/usr/bin/env bash
# The seeds' production picture on one machine, with no NGINX:
#
#   clients ──▶ gateway :8000 ──▶ items_service :8001 ┐
#               (limit, cache,  ├─▶ items_service :8002 ├─▶ one SQLite file (WAL)
#                gzip, shed)    └─▶ items_service :8003 ┘
#                        └───────────── one Redis :6380 (limits, invalidations)
#
# Builds the two examples, starts redis-server, the three replicas and the gateway, and
# stops them all on Ctrl-C. Needs redis-server on PATH.
#
#   bash examples/cluster.sh
#   cargo run --release --example loadgen        # in another terminal
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT="${REDIS_PORT:-6380}"
DATA_DIR="${DATA_DIR:-target/cluster}"
REPLICAS=(8001 8002 8003)

if ! command -v redis-server >/dev/null 2>&1; then
    echo "cluster.sh needs redis-server on PATH (apt-get install redis-server)" >&2
    exit 2
fi
cargo build --release --example items_service --example gateway
mkdir -p "$DATA_DIR"

pids=()
stop() {
    trap - EXIT INT TERM HUP
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM HUP

# Waits until the process just started ($!) listens on 127.0.0.1:$1, for at most 10 s.
# Fails if that process exits first (say, because something else holds the port).
wait_for() {
    local pid=$!
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the process for port $1 exited; is the port taken?" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on port $1 after 10 s" >&2
    exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
wait_for "$REDIS_PORT"

upstreams=()
for port in "${REPLICAS[@]}"; do
    target/release/examples/items_service \
        --bind "127.0.0.1:$port" \
        --database-url "sqlite://$DATA_DIR/items.db" \
        --redis-url "redis://127.0.0.1:$REDIS_PORT" \
        --trust-proxy 127.0.0.1/32 &
    pids+=($!)
    # One at a time: the first creates the schema, the others find it.
    wait_for "$port"
    upstreams+=(--upstream "127.0.0.1:$port")
done

target/release/examples/gateway \
    --bind 127.0.0.1:8000 \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    "${upstreams[@]}" &
pids+=($!)
wait_for 8000
echo "cluster up: gateway on http://127.0.0.1:8000, replicas on ${REPLICAS[*]}; Ctrl-C stops it"
# Until Ctrl-C, or until one of them exits: then the others are stopped too.
wait -n
echo "a process of the cluster exited; stopping the others" >&2
exit 1
