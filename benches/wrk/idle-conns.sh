#!/usr/bin/env bash
# idle-conns.sh - start a release launchguard with the demo site, warm /launch/, and
# measure its RSS with CONNS idle keep-alive connections (benches/wrk/idle-conns.py).
#
#   cargo build --release && CONNS=15000 benches/wrk/idle-conns.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNS=${CONNS:-15000}
BIN=${BIN:-target/release/launchguard}
S=$(mktemp -d "${TMPDIR:-/var/tmp}/idle.XXXXXX")
PID=
trap '[ -n "$PID" ] && { kill -TERM "$PID"; wait "$PID" 2>/dev/null; }; rm -rf "$S"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PUB=$(port); ADM=$(port)
cat > "$S/launchguard.toml" <<TOML
[server]
listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
data_dir = "$S/state"
# Opening 15,000 connections takes longer than the default 10 s in which a silent
# connection must send its first request (--no-request would lose some).
header_timeout_ms = 120000
[webhook]
secrets = ["bench"]
TOML
ulimit -n $(( CONNS * 2 + 1000 )) 2>/dev/null || true
"$BIN" --config "$S/launchguard.toml" serve > "$S/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PUB") 2>/dev/null && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$PUB/launch/"
echo "# $(date -u +%FT%TZ) launchguard $(git rev-parse --short HEAD), $CONNS connections, ${*:-each after one GET /launch/ (a cache HIT)}"
python3 benches/wrk/idle-conns.py --pid "$PID" --url "http://127.0.0.1:$PUB/launch/" \
    --metrics "http://127.0.0.1:$ADM/metrics" --conns "$CONNS" "$@"
