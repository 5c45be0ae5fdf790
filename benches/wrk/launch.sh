#!/usr/bin/env bash
# launch.sh - replay a launch against a release build with wrk + Lua (the k6 scenario
# of benches/k6/launch.js, for machines without k6). Starts launchguard on a free
# loopback port with the demo site and a temp data dir, runs three wrk processes at
# once for DURATION (pages as fast as CONNS connections go; webhooks at about
# 50/s; beacons at about 150/s), prints each class's figures and statuses, the scale
# factor reached and the cache counters, then stops what it started by PID.
#
#   cargo build --release && benches/wrk/launch.sh
#   DURATION=30s CONNS=256 SERVER_CPU=0 LOAD_CPU=1 benches/wrk/launch.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-20s}
CONNS=${CONNS:-256}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BIN=${BIN:-target/release/launchguard}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/launch.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PUB=$(port); ADM=$(port)
SECRET=bench-secret-$RANDOM
cat > "$SCRATCH/launchguard.toml" <<TOML
[server]
listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
data_dir = "$SCRATCH/state"
[webhook]
secrets = ["$SECRET"]
TOML

# Signed webhooks, one unique id each: "sig<TAB>body" lines. Each carries the
# created_at of now, which launchguard accepts for webhook.tolerance_secs (300 s):
# runs longer than about four minutes would see their last webhooks refused (401).
python3 - "$SECRET" > "$SCRATCH/webhooks.tsv" <<'PY'
import hashlib, hmac, json, sys, time
key = sys.argv[1].encode()
kinds = ["upvote", "upvote", "upvote", "comment", "maker_comment"]
created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
for i in range(20000):
    body = json.dumps({"id": f"wrk-{i}", "event_type": kinds[i % 5], "created_at": created_at, "data": {"post": "launch"}}, separators=(",", ":"))
    sig = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    print(f"sha256={sig}\t{body}")
PY

taskset -c "$SERVER_CPU" "$BIN" --config "$SCRATCH/launchguard.toml" serve > "$SCRATCH/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PUB") 2>/dev/null && break; sleep 0.1; done
BASE=http://127.0.0.1:$PUB
LIMIT=$(( ${DURATION%s} + 20 ))
echo "# $(date -u +%FT%TZ) launchguard $(git rev-parse --short HEAD) on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU, $DURATION, pages c=$CONNS"
taskset -c "$LOAD_CPU" timeout "$LIMIT" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/wrk/launch.lua "$BASE" -- pages > "$SCRATCH/pages.txt" &
W1=$!
taskset -c "$LOAD_CPU" timeout "$LIMIT" wrk -t1 -c2 -d"$DURATION" --latency -s benches/wrk/launch.lua "$BASE" -- webhooks "$SCRATCH/webhooks.tsv" 40 > "$SCRATCH/webhooks.txt" &
W2=$!
taskset -c "$LOAD_CPU" timeout "$LIMIT" wrk -t1 -c8 -d"$DURATION" --latency -s benches/wrk/launch.lua "$BASE" -- beacons 50 > "$SCRATCH/beacons.txt" &
W3=$!
wait $W1 $W2 $W3
for class in pages webhooks beacons; do
    echo "## $class"
    grep -E "Latency|50%|99%|requests in|Requests/sec|Non-2xx|Socket|class " "$SCRATCH/$class.txt" | sed 's/^/    /'
done
echo "## factor and cache"
curl -s "http://127.0.0.1:$ADM/admin/factor"; echo
curl -s "http://127.0.0.1:$ADM/metrics" | grep -E '^launchguard_(cache_requests_total|backpressure_rejections_total|scale_factor|cache_bytes|webhooks_total)' | sed 's/^/    /'
