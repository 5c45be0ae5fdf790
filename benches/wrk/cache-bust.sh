#!/usr/bin/env bash
# cache-bust.sh - what a cache-busting crowd costs launchguard: `/launch/?bust=<unique>`
# is a new cache key on every request, so each one is a MISS that fetches the page from
# the origin and stores it (with whatever the store does at insert, such as making the
# gzip and br variants). Same 5 KB page as cache-hit.sh (../shared/anchors/page.html as
# /launch/ from a temp static dir), server pinned to SERVER_CPU, wrk to LOAD_CPU, every
# wrk paced to a fixed total rate by rate.lua (delay() hands out send slots).
#
# Each of RUNS runs measures, on one server started once:
#   1. server CPU per request (utime+stime of the process from /proc/PID/stat, before
#      and after, / requests wrk completed) for DURATION at RATE req/s over CONNS_BUST
#      connections: first busting MISSes, then plain HITs of /launch/ (the HTTP cost) at
#      the rate the MISS run reached (RATE, unless the server fell behind); "net" is MISS
#      minus HIT, the cost of the miss itself. A rate not reached is listed at the end.
#   2. HIT latency (wrk --latency) of /launch/ at HIT_RATE req/s over HIT_CONNS: alone,
#      then while a busting flood of FLOOD_RATE req/s (CONNS_BUST connections, a second
#      wrk on the same LOAD_CPU, from 1 s before to 1 s after) runs beside it; p99
#      flooded / alone.
# X-Cache of every answer is counted by rate.lua, so each row shows what it measured.
# Output: markdown (the command line, a table per part with every run, medians).
#
#   cargo build --release && benches/wrk/cache-bust.sh
#   BIN=/path/to/old/launchguard RUNS=3 DURATION=10s RATE=300 benches/wrk/cache-bust.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=benches/wrk
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
RATE=${RATE:-300}
CONNS_BUST=${CONNS_BUST:-10}
HIT_RATE=${HIT_RATE:-2000}
HIT_CONNS=${HIT_CONNS:-20}
FLOOD_RATE=${FLOOD_RATE:-300}
THREADS=${THREADS:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
QUIET_WAIT=${QUIET_WAIT:-30}
BIN=${BIN:-target/release/launchguard}
PAGE=${PAGE:-../shared/anchors/page.html}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set BIN)" >&2; exit 1; }
[ -r "$PAGE" ] || { echo "no page at $PAGE (needs ../shared/anchors)" >&2; exit 1; }
case $DURATION in *s) SECS=${DURATION%s} ;; *) echo "DURATION in seconds, such as 10s" >&2; exit 1 ;; esac
[ "$SECS" -ge 1 ] && [ "$SECS" -le 120 ] || { echo "DURATION between 1s and 120s" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
TCK=$(getconf CLK_TCK)
CMD="RUNS=$RUNS DURATION=$DURATION RATE=$RATE CONNS_BUST=$CONNS_BUST HIT_RATE=$HIT_RATE HIT_CONNS=$HIT_CONNS FLOOD_RATE=$FLOOD_RATE THREADS=$THREADS SERVER_CPU=$SERVER_CPU LOAD_CPU=$LOAD_CPU BIN=$BIN $HERE/cache-bust.sh"

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/cachebust.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then echo "<!-- scratch kept in $SCRATCH -->" >&2; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
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
PIDS+=("$SERVER")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PUB") 2>/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PUB/launch/

# ticks: utime+stime of the server, all threads, in clock ticks (/proc/PID/stat fields 14, 15).
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$SERVER/stat"; }
xcache() { curl -s -D - -o /dev/null -H 'Accept-Encoding: gzip, br' "$1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}'; }
# warm: until /launch/ answers HIT (it goes STALE after the TTL; the next one is a HIT again).
warm() {
    local s
    for _ in $(seq 50); do
        s=$(xcache "$URL")
        [ "$s" = HIT ] && return 0
        sleep 0.1
    done
    echo "/launch/ is not a HIT: X-Cache=$s" >&2
    exit 1
}
# quiet: wait (QUIET_WAIT s at most) until the machine is under 10% busy; say so if never.
cpu_total() { awk '/^cpu /{ t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
quiet() {
    local a b busy
    for _ in $(seq "$QUIET_WAIT"); do
        a=$(cpu_total); sleep 1; b=$(cpu_total)
        busy=$(echo "$a $b" | awk '{ printf "%.0f", ($4 > $2 ? 100 * ($3 - $1) / ($4 - $2) : 0) }')
        [ "$busy" -lt 10 ] && { echo "$busy%"; return 0; }
    done
    echo "$busy% (top: $(ps -eo comm --sort=-pcpu | sed -n 2p))"
}
# paced OUT RATE CONNS MODE [--latency]: one wrk (bounded by timeout) through rate.lua.
paced() {
    local out=$1 rate=$2 conns=$3 mode=$4 lat=${5:-}
    taskset -c "$LOAD_CPU" timeout $((SECS + 20)) wrk -t"$THREADS" -c"$conns" -d"$DURATION" $lat \
        -s "$HERE/rate.lua" "$URL" -- "$rate" "$THREADS" "$mode" "$(date +%s%N)" "$conns" > "$out"
}
# parse FILE: "requests req/s p50_us p99_us errors xcache-line"
parse() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /m$/)  return v * 60e6
            if (v ~ /s$/)  return v * 1e6
            return v + 0
        }
        /^ +50%/ { p50 = us($2) }
        /^ +99%/ { p99 = us($2) }
        / requests in / { n = $1 }
        /Socket errors/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx/ { err += $NF }
        /^Requests\/sec:/ { rps = $2 }
        /^xcache:/ { sub(/^xcache: /, ""); gsub(/ /, ","); xc = $0 }
        END { printf "%d %.0f %.0f %.0f %d %s\n", n, rps, p50, p99, err, (xc == "" ? "-" : xc) }
    ' "$1"
}
ms() { awk -v t="$1" -v n="$2" -v k="$TCK" 'BEGIN { printf "%.3f", n ? 1000 * t / k / n : 0 }'; }
lat() { awk -v u="$1" 'BEGIN { printf (u >= 1000 ? "%.2f ms" : "%.0f us"), (u >= 1000 ? u / 1000 : u) }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Checks: a bust URL is a MISS, then a HIT (so each new one is a stored miss); /launch/ warm.
probe="$URL?bust=probe-$(date +%s%N)"
first=$(xcache "$probe"); second=$(xcache "$probe")
[ "$first" = MISS ] || { echo "a bust URL answered X-Cache=$first, not MISS" >&2; exit 1; }
curl -s -o /dev/null "$URL"; warm
t0=$(ticks); sleep "$SECS"; idle=$(( $(ticks) - t0 ))

echo "## cache-bust: $("$BIN" --version 2>/dev/null || echo launchguard) ($BIN), $(date -u +%FT%TZ)"
echo
echo "\`$CMD\`"
echo
echo "$(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); $(wc -c < "$PAGE")-byte page as /launch/;" \
    "server pid $SERVER on CPU $(taskset -cp "$SERVER" | awk '{print $NF}'), both wrk on CPU $LOAD_CPU (-t$THREADS, rate.lua, Accept-Encoding: gzip, br); CLK_TCK $TCK."
echo "Probe: a new bust URL answered X-Cache $first, then $second; /launch/ HIT. Server idle: $(ms "$idle" "$SECS") ms CPU per second."
echo

declare -a HIT_MS MISS_MS NET_MS U50 U99 F50 F99 RATIO
P1=(); P2=(); SHORT=()
for run in $(seq "$RUNS"); do
    busy=$(quiet)
    # Part 1a: busting MISSes at RATE.
    b=$(ticks); paced "$SCRATCH/bust-$run.txt" "$RATE" "$CONNS_BUST" bust; m=$(( $(ticks) - b ))
    read -r mn mrps _ _ merr mxc < <(parse "$SCRATCH/bust-$run.txt")
    # Part 1b: HITs at the rate the busting run reached (RATE unless the server fell
    # behind), so that both carry the same per-request HTTP and wake-up cost.
    hrate=$(( mrps < RATE ? (mrps > 0 ? mrps : 1) : RATE ))
    warm
    b=$(ticks); paced "$SCRATCH/hit-$run.txt" "$hrate" "$CONNS_BUST" fixed; h=$(( $(ticks) - b ))
    read -r hn hrps _ _ herr hxc < <(parse "$SCRATCH/hit-$run.txt")
    hm=$(ms "$h" "$hn"); mm=$(ms "$m" "$mn"); net=$(awk -v a="$mm" -v b="$hm" 'BEGIN { printf "%.3f", a - b }')
    HIT_MS+=("$hm"); MISS_MS+=("$mm"); NET_MS+=("$net")
    mcpu=$(awk -v t="$m" -v k="$TCK" -v s="$SECS" 'BEGIN { printf "%.0f", 100 * t / k / s }')
    [ "$mrps" -lt $((RATE * 95 / 100)) ] && SHORT+=("run $run: the busting run reached $mrps of $RATE req/s (server CPU $mcpu% of a core): the server cannot keep up with that many misses, so CPU/miss is its cost at saturation and the HIT baseline ran at $hrate req/s")
    P1+=("| $run | $mrps | $mn | $mxc | $mcpu% | $mm | $hrps | $hn | $hxc | $hm | **$net** | $merr / $herr | $busy |")

    # Part 2a: HIT latency at HIT_RATE, alone.
    warm
    b=$(ticks); paced "$SCRATCH/lat-$run.txt" "$HIT_RATE" "$HIT_CONNS" fixed --latency; u=$(( $(ticks) - b ))
    read -r un urps u50 u99 uerr uxc < <(parse "$SCRATCH/lat-$run.txt")
    # Part 2b: the same beside a busting flood (started 1 s before, ends 1 s after).
    warm
    # (not through paced(): $! must be timeout's PID, which passes a TERM on to wrk)
    taskset -c "$LOAD_CPU" timeout $((SECS + 22)) wrk -t"$THREADS" -c"$CONNS_BUST" -d"$((SECS + 2))s" \
        -s "$HERE/rate.lua" "$URL" -- "$FLOOD_RATE" "$THREADS" bust "$(date +%s%N)" "$CONNS_BUST" > "$SCRATCH/flood-$run.txt" &
    FLOOD=$!; PIDS+=("$FLOOD")
    sleep 1
    b=$(ticks); paced "$SCRATCH/latf-$run.txt" "$HIT_RATE" "$HIT_CONNS" fixed --latency; f=$(( $(ticks) - b ))
    wait "$FLOOD"
    read -r fn frps f50 f99 ferr fxc < <(parse "$SCRATCH/latf-$run.txt")
    read -r _ flrps _ _ flerr flxc < <(parse "$SCRATCH/flood-$run.txt")
    ratio=$(awk -v a="$f99" -v b="$u99" 'BEGIN { printf "%.2f", b ? a / b : 0 }')
    U50+=("$u50"); U99+=("$u99"); F50+=("$f50"); F99+=("$f99"); RATIO+=("$ratio")
    ucpu=$(awk -v t="$u" -v k="$TCK" -v s="$SECS" 'BEGIN { printf "%.0f", 100 * t / k / s }')
    fcpu=$(awk -v t="$f" -v k="$TCK" -v s="$SECS" 'BEGIN { printf "%.0f", 100 * t / k / s }')
    [ "$flrps" -lt $((FLOOD_RATE * 95 / 100)) ] && SHORT+=("run $run: the flood reached $flrps of $FLOOD_RATE req/s")
    [ "$frps" -lt $((HIT_RATE * 95 / 100)) ] && SHORT+=("run $run: the flooded HIT wrk reached $frps of $HIT_RATE req/s: its connections waited on slow answers and wrk skipped the send slots meanwhile, so the flooded latencies understate what an open stream of visitors would see (coordinated omission)")
    P2+=("| $run | $urps | $(lat "$u50") | $(lat "$u99") | $uxc | $frps | $(lat "$f50") | $(lat "$f99") | $fxc | **${ratio}×** | $flrps ($flxc) | $ucpu% / $fcpu% | $uerr / $ferr / $flerr |")
done

echo "### Part 1: server CPU per request, busting at $RATE req/s over $CONNS_BUST connections, then HITs at the rate that reached, $DURATION each"
echo
echo "| run | bust req/s | bust requests | bust X-Cache | server CPU | bust CPU ms/req | HIT req/s | HIT requests | HIT X-Cache | HIT CPU ms/req | net CPU ms per miss | errors bust / HIT | machine busy before |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${P1[@]}"
echo "| median | | | | | $(printf '%s\n' "${MISS_MS[@]}" | median) | | | | $(printf '%s\n' "${HIT_MS[@]}" | median) | **$(printf '%s\n' "${NET_MS[@]}" | median)** | | |"
echo
echo "### Part 2: HIT /launch/ at $HIT_RATE req/s over $HIT_CONNS connections, alone and beside a $FLOOD_RATE req/s busting flood"
echo
echo "| run | alone req/s | alone p50 | alone p99 | alone X-Cache | flooded req/s | flooded p50 | flooded p99 | flooded X-Cache | p99 flooded / alone | flood req/s (X-Cache) | server CPU alone / flooded | errors alone / flooded / flood |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${P2[@]}"
echo "| median | | $(lat "$(printf '%s\n' "${U50[@]}" | median)") | $(lat "$(printf '%s\n' "${U99[@]}" | median)") | | | $(lat "$(printf '%s\n' "${F50[@]}" | median)") | $(lat "$(printf '%s\n' "${F99[@]}" | median)") | | **$(printf '%s\n' "${RATIO[@]}" | median)×** | | | |"
echo
echo "Medians of $RUNS runs: CPU per busting miss $(printf '%s\n' "${MISS_MS[@]}" | median) ms" \
    "(HIT at the same rate $(printf '%s\n' "${HIT_MS[@]}" | median) ms, net $(printf '%s\n' "${NET_MS[@]}" | median) ms);" \
    "HIT p99 alone $(lat "$(printf '%s\n' "${U99[@]}" | median)"), beside the flood $(lat "$(printf '%s\n' "${F99[@]}" | median)")," \
    "ratio $(printf '%s\n' "${RATIO[@]}" | median)× (median of the per-run ratios)."
echo "Server RSS after the runs: $(awk '/VmRSS/{print $2, $3}' "/proc/$SERVER/status"); cache bytes $(curl -s "http://127.0.0.1:$ADM/metrics" | awk '/^launchguard_cache_bytes /{print $2}')."
if [ "${#SHORT[@]}" -gt 0 ]; then
    echo
    echo "Rates not reached:"
    echo
    printf -- '- %s\n' "${SHORT[@]}"
fi
