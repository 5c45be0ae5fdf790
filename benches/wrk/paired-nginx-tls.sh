#!/usr/bin/env bash
# paired-nginx-tls.sh - the HTTPS edge against the nginx TLS proxy_cache anchor
# (../shared/anchors/nginx-tls-proxy-cache.conf), in alternating runs so both see the
# same background load on a shared machine. Both servers run at once on SERVER_CPU
# with the same self-signed ECDSA P-256 certificate (made here with openssl, as the
# anchor does) and the same 5 KB page (launchguard serves it as /launch/ from its
# static origin, nginx as /page.html through proxy_cache); the load generator runs on
# LOAD_CPU and loads one server at a time. Each round runs every load on both, in
# alternating order, and prints the ratios:
#   keepalive  wrk -c$CONNS over TLS, keep-alive (cache HIT)
#   handshake  wrk -c32 -H "Connection: close": a new TCP + full TLS handshake per request
#   h2         h2load -c$H2_CLIENTS -m$H2_STREAMS, HTTP/2 by ALPN
# With IDLE=N (default 15000, 0 = skip) it then measures the RSS of each server with N
# idle TLS keep-alive connections (benches/wrk/idle-conns.py --tls), one server at a time.
#
#   cargo build --release && ROUNDS=5 DURATION=8s benches/wrk/paired-nginx-tls.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
ROUNDS=${ROUNDS:-5}
export DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
H2_CLIENTS=${H2_CLIENTS:-16}
H2_STREAMS=${H2_STREAMS:-16}
LOADS=${LOADS:-"keepalive handshake h2"}
IDLE=${IDLE:-15000}
BIN=${BIN:-$ROOT/target/release/launchguard}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
. "$ANCHORS/lib.sh"
need nginx nginx
need wrk wrk
need h2load nghttp2-client
need openssl openssl

machine
mode=pinned
nport=$(free_port); oport=$(free_port)
NGINX_PREFIX="$SCRATCH/nginx-tls-proxy-cache-$mode"
mkdir -p "$NGINX_PREFIX"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$NGINX_PREFIX/key.pem" -out "$NGINX_PREFIX/cert.pem" 2>/dev/null
nginx_start nginx-tls-proxy-cache "$mode" "$nport" "$oport"
NURL="https://127.0.0.1:$nport/page.html"
curl -sk -o /dev/null "$NURL"
[ "$(curl -sk -D - -o /dev/null "$NURL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status"{print $2}')" = HIT ] || { echo "nginx cache not warm" >&2; exit 1; }

lport=$(free_port); tport=$(free_port); aport=$(free_port)
mkdir -p "$SCRATCH/lg/site/launch"
cp "$ANCHORS/page.html" "$SCRATCH/lg/site/launch/index.html"
echo '<html><body>not found</body></html>' > "$SCRATCH/lg/site/404.html"
cat > "$SCRATCH/lg/launchguard.toml" <<TOML
[server]
listen = "127.0.0.1:$lport"
admin_listen = "127.0.0.1:$aport"
data_dir = "$SCRATCH/lg/state"
# Opening 15,000 idle connections takes longer than the default 10 s in which a
# connection must send its first request.
header_timeout_ms = 120000
[origin]
static_dir = "$SCRATCH/lg/site"
[webhook]
secrets = ["bench"]
[tls]
listen = "127.0.0.1:$tport"
cert_file = "$NGINX_PREFIX/cert.pem"
key_file = "$NGINX_PREFIX/key.pem"
TOML
ulimit -n $(( IDLE * 2 + 1000 )) 2>/dev/null || true
$(pin server "$mode") "$BIN" --config "$SCRATCH/lg/launchguard.toml" serve > "$SCRATCH/lg/server.log" 2>&1 &
LG_PID=$!
PIDS+=("$LG_PID")
wait_port "$tport"
LURL="https://127.0.0.1:$tport/launch/"
curl -sk -o /dev/null "$LURL"
[ "$(curl -sk -D - -o /dev/null "$LURL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')" = HIT ] || { echo "launchguard cache not warm" >&2; exit 1; }
echo "# launchguard $(git rev-parse --short HEAD) pid $LG_PID affinity $(taskset -cp "$LG_PID" | awk '{print $NF}'); nginx master $NGINX_PID"
echo "# ALPN: launchguard $(curl -sk -o /dev/null -w '%{http_version}' --http2 "$LURL"), nginx $(curl -sk -o /dev/null -w '%{http_version}' --http2 "$NURL"); page $(curl -sk "$LURL" | wc -c) bytes vs $(curl -sk "$NURL" | wc -c)"
echo "# loads on CPU $LOAD_CPU: wrk -t${THREADS:-2} -c$CONNS; wrk -t${THREADS:-2} -c32 -H 'Connection: close'; h2load -c$H2_CLIENTS -m$H2_STREAMS; $DURATION each; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

limit=$(( $(seconds "$DURATION") + 20 ))
# nginx's CPU: the master and its workers (not the cache loader, which exits).
NGINX_PIDS=$(echo "$NGINX_PID" $(ps -o pid=,args= --ppid "$NGINX_PID" | awk '/worker process/ { print $1 }') | tr ' ' ',')
HZ=$(getconf CLK_TCK)
# child_ticks: sets CT to the CPU time (user + system, clock ticks) of this shell's
# waited-for children. (`times` must run in this shell: not in a pipe or `$(...)`.)
child_ticks() {
    local f="$SCRATCH/times.$BASHPID"
    times > "$f"
    CT=$(awk -v hz="$HZ" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%d\n", t * hz + 0.5 }' "$f")
}
# ticks PID,PID...: the CPU time (user + system, clock ticks) the processes used so far.
ticks() {
    local t=0 pid
    for pid in ${1//,/ }; do
        [ -r "/proc/$pid/stat" ] && t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat") ))
    done
    echo "$t"
}
one() { # NAME LOAD URL ROUND -> req/s on stdout, a line on stderr
    local name=$1 load=$2 url=$3 round=$4 out="$SCRATCH/$1-$2-$4.txt"
    local snap; snap=$(cpu_snap)
    local pids=$LG_PID; [ "$name" = nginx ] && pids=$NGINX_PIDS
    local t0; t0=$(ticks "$pids")
    local CT; child_ticks; local c0=$CT
    local rps p50 p99 n err
    case $load in
        keepalive)
            wrk_run "$mode" "$CONNS" "$url" "$out"
            read -r rps p50 p99 n err < <(wrk_parse "$out") ;;
        handshake)
            $(pin load "$mode") timeout "$limit" wrk -t"${THREADS:-2}" -c32 -d"$DURATION" --latency \
                -H "Connection: close" "$url" > "$out"
            read -r rps p50 p99 n err < <(wrk_parse "$out") ;;
        h2)
            $(pin load "$mode") timeout "$limit" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" \
                -D"$(seconds "$DURATION")" "$url" > "$out" 2>&1 || true
            rps=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) { v = $(i-1); gsub(/,/, "", v); print int(v) } }' "$out")
            p50=$(awk '/^time for request:/ { v = $5; if (v ~ /ms$/) v = v * 1000; else if (v ~ /us$/) v = v + 0; else if (v ~ /s$/) v = v * 1e6; print int(v) }' "$out")
            p99=0
            n=$(awk '/^requests:/ { print $8 }' "$out")
            err=$(awk '/^requests:/ { print $10 + $12 }' "$out") ;;
    esac
    local util; util=$(cpu_busy "$snap" "$(cpu_snap)")
    # The server's own CPU time per request served: what background load on the
    # shared machine moves least.
    local cpu; cpu=$(awk -v t="$(( $(ticks "$pids") - t0 ))" -v hz="$HZ" -v n="${n:-0}" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
    child_ticks
    # And the load generator's, which is the bottleneck when the server is not busy.
    local ccpu; ccpu=$(awk -v t="$(( CT - c0 ))" -v hz="$HZ" -v n="${n:-0}" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
    echo "$name $load cpu $cpu" >> "$SCRATCH/cpu.txt"
    echo "$name $load client $ccpu" >> "$SCRATCH/cpu.txt"
    echo "$name $load round=$round: ${rps:-0} req/s, p50 ${p50:-0}us, p99 ${p99:-0}us, ${n:-0} requests, ${err:-?} errors, server CPU ${cpu} us/request, client ${ccpu} us/request, $util, load $(cut -d' ' -f1 /proc/loadavg)" >&2
    printf '%s\t%s\t%s\t%s\n' "$name https-$load HIT pinned" "${rps:-0}" "${p50:-0}" "${p99:-0}" >> "$SCRATCH/results.tsv"
    echo "${rps:-0}"
}

for r in $(seq "$ROUNDS"); do
    for load in $LOADS; do
        if [ $((r % 2)) -eq 1 ]; then
            n=$(one nginx "$load" "$NURL" "$r"); l=$(one launchguard "$load" "$LURL" "$r")
        else
            l=$(one launchguard "$load" "$LURL" "$r"); n=$(one nginx "$load" "$NURL" "$r")
        fi
        ratio=$(awk -v l="$l" -v n="$n" 'BEGIN { printf "%.2f", n ? l / n : 0 }')
        echo "$load $ratio" >> "$SCRATCH/ratios.txt"
        echo "round $r $load: launchguard / nginx = $ratio" >&2
    done
done
echo
sort -t$'\t' -k1,1 -s "$SCRATCH/results.tsv" | summarize
echo "# h2 rows: the p50 column is h2load's mean time per request; p99 is not reported"
for load in $LOADS; do
    awk -v L="$load" '$1 == L { print $2 }' "$SCRATCH/ratios.txt" | sort -n |
        awk -v L="$load" '{ a[NR] = $1 } END { printf "ratio launchguard/nginx %s req/s per round: median %s (min %s, max %s, %d rounds)\n", L, (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2), a[1], a[NR], NR }'
    for name in launchguard nginx; do
        for who in cpu client; do
            awk -v N="$name" -v L="$load" -v W="$who" '$1 == N && $2 == L && $3 == W { print $4 }' "$SCRATCH/cpu.txt" | sort -n |
                awk -v N="$name" -v L="$load" -v W="$who" '{ a[NR] = $1 } END { if (NR) printf "%s CPU per request %s %s: median %s us (min %s, max %s)\n", (W == "cpu" ? "server" : "load generator"), N, L, (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2), a[1], a[NR] }'
        done
    done
done

if [ "$IDLE" -gt 0 ]; then
    echo
    echo "# idle TLS keep-alive connections, one server at a time (the other is idle)"
    nginx_pids=$(echo "$NGINX_PID" $(pgrep -P "$NGINX_PID") | tr ' ' ',')
    python3 benches/wrk/idle-conns.py --tls --label nginx --pid "$nginx_pids" --url "$NURL" --conns "$IDLE"
    python3 benches/wrk/idle-conns.py --tls --label launchguard --pid "$LG_PID" --url "$LURL" \
        --metrics "http://127.0.0.1:$aport/metrics" --conns "$IDLE"
fi
