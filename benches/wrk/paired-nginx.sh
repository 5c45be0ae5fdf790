#!/usr/bin/env bash
# paired-nginx.sh - cache-HIT throughput of launchguard and of the nginx proxy_cache
# anchor, measured in alternating runs so both see the same background load on a
# shared machine. Both servers run at once, pinned to SERVER_CPU (nginx with the
# anchor's config and 5 KB page, via ../shared/anchors/lib.sh; launchguard serving
# the same page as /launch/ from its static origin); wrk is pinned to LOAD_CPU and
# loads one server at a time. Each round runs both, in alternating order, and
# prints the ratio; the summary gives medians of req/s and p99 and the median ratio.
#
#   cargo build --release && ROUNDS=5 DURATION=8s CONNS=64 benches/wrk/paired-nginx.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
ROUNDS=${ROUNDS:-5}
export DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
BIN=${BIN:-$ROOT/target/release/launchguard}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
. "$ANCHORS/lib.sh"
need nginx nginx
need wrk wrk

machine
mode=pinned
nport=$(free_port); oport=$(free_port)
nginx_start nginx-proxy-cache "$mode" "$nport" "$oport"
NURL="http://127.0.0.1:$nport/page.html"
curl -s -o /dev/null "$NURL"

lport=$(free_port); aport=$(free_port)
mkdir -p "$SCRATCH/lg/site/launch"
cp "$ANCHORS/page.html" "$SCRATCH/lg/site/launch/index.html"
echo '<html><body>not found</body></html>' > "$SCRATCH/lg/site/404.html"
cat > "$SCRATCH/lg/launchguard.toml" <<TOML
[server]
listen = "127.0.0.1:$lport"
admin_listen = "127.0.0.1:$aport"
data_dir = "$SCRATCH/lg/state"
[origin]
static_dir = "$SCRATCH/lg/site"
[webhook]
secrets = ["bench"]
TOML
$(pin server "$mode") "$BIN" --config "$SCRATCH/lg/launchguard.toml" serve > "$SCRATCH/lg/server.log" 2>&1 &
LG_PID=$!
PIDS+=("$LG_PID")
wait_port "$lport"
LURL="http://127.0.0.1:$lport/launch/"
curl -s -o /dev/null "$LURL"
[ "$(curl -s -D - -o /dev/null "$LURL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')" = HIT ] || { echo "launchguard cache not warm" >&2; exit 1; }
echo "# launchguard $(git rev-parse --short HEAD) pid $LG_PID affinity $(taskset -cp "$LG_PID" | awk '{print $NF}'); nginx master $NGINX_PID"
echo "# each run: taskset -c $LOAD_CPU wrk -t${THREADS:-2} -c$CONNS -d$DURATION --latency URL; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

one() { # NAME URL ROUND
    local out="$SCRATCH/$1-$3.txt"
    local snap; snap=$(cpu_snap)
    wrk_run "$mode" "$CONNS" "$2" "$out"
    local util; util=$(cpu_busy "$snap" "$(cpu_snap)")
    read -r rps p50 p99 n err < <(wrk_parse "$out")
    echo "$1 round=$3: $rps req/s, p50 ${p50}us, p99 ${p99}us, $n requests, $err errors, $util, load $(cut -d' ' -f1 /proc/loadavg)" >&2
    printf '%s\t%s\t%s\t%s\n' "$1 HIT pinned c=$CONNS" "$rps" "$p50" "$p99" >> "$SCRATCH/results.tsv"
    echo "$rps"
}

ratios=()
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
        n=$(one nginx "$NURL" "$r"); l=$(one launchguard "$LURL" "$r")
    else
        l=$(one launchguard "$LURL" "$r"); n=$(one nginx "$NURL" "$r")
    fi
    ratio=$(awk -v l="$l" -v n="$n" 'BEGIN { printf "%.2f", n ? l / n : 0 }')
    ratios+=("$ratio")
    echo "round $r: launchguard / nginx = $ratio" >&2
done
echo
sort -t$'\t' -k1,1 -s "$SCRATCH/results.tsv" | summarize
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "\nratio launchguard/nginx req/s per round: median %s (min %s, max %s, %d rounds)\n", (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2), a[1], a[NR], NR }'
echo "# launchguard RSS after the runs: $(awk '/VmRSS/{print $2, $3}' /proc/$LG_PID/status)"
