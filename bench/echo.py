#!/usr/bin/env python3
"""Small-message load for bench/whole_path.py: a 1-byte echo server and its clients.

    echo.py server --bind ADDR --port P        echo every byte back; close on EOF
    echo.py rr  --host H --port P --duration S  1-byte request/response on one connection
    echo.py crr --host H --port P --duration S  connect, 1 byte each way, close; repeat

Both sides are single-threaded, blocking or epoll, standard library only (the clients run inside
the namespaces with whatever Python is at hand). The clients print one JSON line. Every run is
bounded by --duration (plus the socket timeout below).
"""
import argparse
import json
import selectors
import socket
import sys
import time

TIMEOUT = 5.0  # no single transaction may hang a run longer than this


def server(bind: str, port: int) -> int:
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((bind, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, 1)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                try:
                    sock.send(data)  # 1-byte messages: the send buffer is never full
                except OSError:
                    data = b""
            if not data:
                sel.unregister(sock)
                sock.close()


def rr(host: str, port: int, duration: float) -> dict:
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter_ns
    send, recv = s.send, s.recv
    lat = []
    add = lat.append
    for _ in range(200):  # warm-up, not counted
        send(b"x")
        recv(1)
    start = clock()
    end = start + int(duration * 1e9)
    t = start
    while t < end:
        send(b"x")
        if not recv(1):
            raise ConnectionError("echo server closed the connection")
        now = clock()
        add(now - t)
        t = now
    s.close()
    lat.sort()
    n = len(lat)
    return {"tx": n, "tx_per_s": n / ((t - start) / 1e9),
            "p50_us": lat[n // 2] / 1e3, "p99_us": lat[min(n - 1, n * 99 // 100)] / 1e3}


def crr(host: str, port: int, duration: float) -> dict:
    clock = time.monotonic
    start = clock()
    end = start + duration
    n = 0
    t = start
    while t < end:
        s = socket.create_connection((host, port), timeout=TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.send(b"x")
        if not s.recv(1):
            raise ConnectionError("echo server closed the connection")
        s.close()
        n += 1
        t = clock()
    return {"conns": n, "conns_per_s": n / (t - start)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["server", "rr", "crr"])
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--host", default="10.0.2.2")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    if a.mode == "server":
        return server(a.bind, a.port)
    fn = rr if a.mode == "rr" else crr
    print(json.dumps(fn(a.host, a.port, a.duration)), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
