#!/usr/bin/env python3
"""idle-conns.py - RSS of a running server with N idle keep-alive connections.

Opens N connections to URL (over TLS with --tls, certificate not checked), sends one keep-alive GET on each (so every connection
has been through hyper's request path and holds its buffers), reads the answer,
then leaves them all open and idle, and prints the server's VmRSS (from
/proc/PID/status; --pid takes a comma-separated list, e.g. nginx's master and
workers, and sums them) before and with the connections, and, given the admin
/metrics, launchguard's cache bytes. Closes everything at the end.

    benches/wrk/idle-conns.py --pid PID --url http://127.0.0.1:8080/launch/ \
        --metrics http://127.0.0.1:9090/metrics --conns 15000
    benches/wrk/idle-conns.py --tls --label nginx --pid 1234,1235,1236 \
        --url https://127.0.0.1:8443/page.html --conns 15000
"""
import argparse
import asyncio
import re
import ssl
import urllib.parse
import urllib.request


def rss_kib(pids):
    total = 0
    for pid in str(pids).split(","):
        with open(f"/proc/{pid}/status") as f:
            rss = [int(line.split()[1]) for line in f if line.startswith("VmRSS:")]
        if not rss:
            raise SystemExit(f"no VmRSS for pid {pid}")
        total += rss[0]
    return total


def cache_bytes(url):
    if not url:
        return 0.0
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(r"^launchguard_cache_bytes (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def server_connections(url):
    """The server's own count of open public connections by state, when it has one."""
    if not url:
        return {}
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'^launchguard_http_connections\{state="(\w+)"\} (\S+)$', text, re.M)}


async def one(host, port, path, ready, send, tls):
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    if not send:
        ready.append(writer)
        return
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    await reader.readexactly(int(m.group(1)) if m else 0)
    ready.append(writer)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", required=True, help="PID, or PID,PID,... summed")
    ap.add_argument("--url", required=True)
    ap.add_argument("--metrics", default="", help="launchguard's admin /metrics URL")
    ap.add_argument("--tls", action="store_true", help="TLS (certificate not checked), ALPN http/1.1")
    ap.add_argument("--label", default="server")
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--no-request", action="store_true", help="connect only, send nothing")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    tls = None
    if a.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    before = rss_kib(a.pid)
    cache = cache_bytes(a.metrics)
    ready = []
    for start in range(0, a.conns, a.batch):
        n = min(a.batch, a.conns - start)
        await asyncio.gather(*(one(u.hostname, u.port, u.path or "/", ready, not a.no_request, tls) for _ in range(n)))
    await asyncio.sleep(2)  # let the server settle (allocator, buffers)
    with_conns = rss_kib(a.pid)
    cache_after = cache_bytes(a.metrics)
    print(f"{a.label}: connections open and idle: {len(ready)}{' (TLS)' if tls else ''}")
    states = server_connections(a.metrics)
    if states:
        print("server's count: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    print(f"{a.label}: RSS before: {before / 1024:.1f} MiB; with {len(ready)} idle connections: {with_conns / 1024:.1f} MiB; "
          f"delta {(with_conns - before) / 1024:.1f} MiB ({(with_conns - before) * 1024 / max(1, len(ready)):.0f} bytes per connection)")
    if not a.metrics:
        for w in ready:
            w.close()
        return
    print(f"cache bytes (launchguard_cache_bytes): {cache / 1048576:.3f} MiB before, {cache_after / 1048576:.3f} MiB after")
    print(f"RSS beyond the cache's own bytes: {(with_conns * 1024 - cache_after) / 1048576:.1f} MiB")
    for w in ready:
        w.close()


asyncio.run(main())
