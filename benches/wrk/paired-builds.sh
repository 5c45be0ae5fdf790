#!/usr/bin/env bash
# paired-builds.sh - cache-HIT throughput and latency of two launchguard builds, in
# alternating wrk runs so both see the same background load. Both serve the demo site;
# the servers are pinned to CPU 0 and wrk to CPU 1. Use it to check that a change does
# not cost the HIT path, at few connections (CONNS=1, 8) as well as many.
#
#   BASE=/path/to/old/launchguard NEW=target/release/launchguard \
#     CONNS=8 ROUNDS=5 DURATION=5s benches/wrk/paired-builds.sh
#
# Without a cookie every request is a new visitor (the build mints an lg_v cookie for
# each, the worst case); VISITOR=returning sends the cookie each server gave on a first
# page view, as a browser does for every view after its first.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${BASE:?set BASE to the build to compare against}
NEW=${NEW:-target/release/launchguard}
CONNS=${CONNS:-8}; ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5s}; VISITOR=${VISITOR:-new}
S=$(mktemp -d "${TMPDIR:-/var/tmp}/paired-builds.XXXXXX"); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$S"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name bin -> prints the public port
    local pub adm; pub=$(port); adm=$(port)
    cat > "$S/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$pub"
admin_listen = "127.0.0.1:$adm"
data_dir = "$S/$1-state"
[origin]
static_dir = "$(pwd)/data/site"
[webhook]
secrets = ["bench"]
TOML
    taskset -c 0 "$2" --config "$S/$1.toml" serve > "$S/$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$pub/launch/" && break; sleep 0.1; done
    echo "$pub"
}
base_port=$(start base "$BASE"); new_port=$(start new "$NEW")
cookie() { # port -> the lg_v pair that server sets on a first page view (or none)
    curl -s -D - -o /dev/null "http://127.0.0.1:$1/launch/" | tr -d '\r' |
        awk -F'[:;] *' 'tolower($1) == "set-cookie" && $2 ~ /^lg_v=/ {print $2}'
}
base_cookie=""; new_cookie=""
if [ "$VISITOR" = returning ]; then base_cookie=$(cookie "$base_port"); new_cookie=$(cookie "$new_port"); fi
echo "# $(date -u +%FT%TZ) wrk -t1 -c$CONNS -d$DURATION /launch/ (HIT, $VISITOR visitors), base=$BASE new=$NEW"
for r in $(seq "$ROUNDS"); do
    order="base new"; [ $((r % 2)) -eq 0 ] && order="new base"
    for n in $order; do
        p=$base_port; c=$base_cookie; [ "$n" = new ] && { p=$new_port; c=$new_cookie; }
        taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency ${c:+-H "Cookie: $c"} "http://127.0.0.1:$p${URLPATH:-/launch/}" |
            awk -v n="$n" -v r="$r" '/Requests\/sec/ {rps=$2} / 50%/ {p50=$2} / 99%/ {p99=$2}
                END {printf "%s round=%s: %s req/s, p50 %s, p99 %s\n", n, r, rps, p50, p99}'
    done
done
