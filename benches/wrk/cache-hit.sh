#!/usr/bin/env bash
# cache-hit.sh - launchguard's cache-HIT path with wrk, shaped like the nginx
# proxy_cache anchor (../shared/anchors/nginx-proxy-cache.sh) so the two compare:
# the same 5 KB page (anchors/page.html, served as /launch/ from a temp static dir),
# wrk 2 threads, CONNS connections, DURATION per run, RUNS runs, server pinned to
# SERVER_CPU and wrk to LOAD_CPU. The cache is warmed first and the run checks that
# the page is a HIT; the summary rows use the anchor's format.
#
#   cargo build --release && benches/wrk/cache-hit.sh
#   RUNS=3 DURATION=10s CONNS="64 256" benches/wrk/cache-hit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-"64 256"}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BIN=${BIN:-target/release/launchguard}
PAGE=${PAGE:-../shared/anchors/page.html}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/cachehit.XXXXXX")
SERVER=
cleanup() {
    [ -n "$SERVER" ] && { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PUB=$(port); ADM=$(port)
mkdir -p "$SCRATCH/site/launch"
cp "$PAGE" "$SCRATCH/site/launch/index.html"
echo '<html><body>not found</body></html>' > "$SCRATCH/site/404.html"
cat > "$SCRATCH/launchguard.toml" <<TOML
[server]
listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
data_dir = "$SCRATCH/state"
[origin]
static_dir = "$SCRATCH/site"
[webhook]
secrets = ["bench"]
TOML
taskset -c "$SERVER_CPU" "$BIN" --config "$SCRATCH/launchguard.toml" serve > "$SCRATCH/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PUB") 2>/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PUB/launch/
curl -s -o /dev/null "$URL"
status=$(curl -s -D - -o /dev/null "$URL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
[ "$status" = HIT ] || { echo "cache not warm: X-Cache=$status" >&2; exit 1; }
echo "# $(date -u +%FT%TZ) launchguard $(git rev-parse --short HEAD), $(wc -c < "$PAGE")-byte page, server CPU $SERVER_CPU, wrk CPU $LOAD_CPU, uptime:$(uptime | sed 's/.*load average//')"
echo "# load: taskset -c $LOAD_CPU wrk -t2 -c<conns> -d$DURATION --latency $URL"
for c in $CONNS; do
    for run in $(seq "$RUNS"); do
        out="$SCRATCH/wrk-$c-$run.txt"
        before=$(curl -s "http://127.0.0.1:$ADM/metrics" | awk '/^launchguard_cache_requests_total\{result="miss"\}/{print $2}')
        taskset -c "$LOAD_CPU" timeout $(( ${DURATION%s} + 20 )) wrk -t2 -c"$c" -d"$DURATION" --latency "$URL" > "$out"
        after=$(curl -s "http://127.0.0.1:$ADM/metrics" | awk '/^launchguard_cache_requests_total\{result="miss"\}/{print $2}')
        rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
        p50=$(awk '/^ +50%/{print $2}' "$out"); p99=$(awk '/^ +99%/{print $2}' "$out")
        n=$(awk '/ requests in /{print $1}' "$out"); err=$(grep -cE "Non-2xx|Socket errors" "$out" || true)
        echo "launchguard HIT pinned c=$c run=$run: $rps req/s, p50 $p50, p99 $p99, $n requests, error lines $err, misses $(( ${after:-0} - ${before:-0} ))"
    done
done
echo "# RSS after the runs: $(awk '/VmRSS/{print $2, $3}' /proc/$SERVER/status)"
