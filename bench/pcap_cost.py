#!/usr/bin/env python3
"""What ``--pcap`` costs: usernet's CPU seconds per GB of bulk TCP, capture off and on.

    sudo .venv/bin/python bench/pcap_cost.py [--mb 1024] [--rounds 3] [--no-offload]
    sudo .venv/bin/python bench/pcap_cost.py --against OTHER_CHECKOUT    # no capture: this vs that

A host loopback server sends (download) or takes (upload) MB megabytes on one
connection with a client inside ``usernet run``. The client reads usernet's
utime+stime from /proc/$PPID/stat (usernet is its parent; no PID namespace)
just before and after the transfer, so the figure is usernet's CPU alone,
not the client's or the server's. Rounds alternate off/on back to back; the
table prints the median CPU s/GB of each and their ratio. ``--against DIR``
compares this checkout with another one (capture off in both): what the
capture's hooks and the per-flow counters cost when no one captures. The capture goes to
a file in a temporary directory (tmpfs or disk: say which in a report).
CPU time, not wall time: the machine is shared.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 1 << 20

CLIENT = r"""
import os, socket, sys
mode, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / hz
s = socket.create_connection(("10.0.2.2", port), timeout=30)
s.sendall(mode.encode()[:1])
t0 = cpu()
n = 0
if mode == "down":
    buf = bytearray(1 << 20)
    while n < total:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
else:
    block = memoryview(bytes(1 << 20))
    while n < total:
        s.sendall(block)
        n += len(block)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
t1 = cpu()
print(n, t1 - t0)
"""


def server(lsock, total):
    block = memoryview(bytes(CHUNK))
    while True:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            mode = c.recv(1)
            if mode == b"d":
                sent = 0
                while sent < total:
                    c.sendall(block)
                    sent += CHUNK
            else:
                while c.recv(CHUNK):
                    pass
                c.sendall(b"!")


def one(mode, port, total, pcap, offload, repo=REPO):
    args = [sys.executable, "-m", "usernet", "run"]
    if not offload:
        args.append("--no-offload")
    if pcap:
        args += ["--pcap", pcap]
    args += ["--", sys.executable, "-c", CLIENT, mode, str(port), str(total)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=repo), cwd="/")
    if r.returncode != 0:
        raise SystemExit(f"usernet run failed: {r.stderr[-500:]}")
    n, cpu = r.stdout.split()
    assert int(n) >= total, (n, total)
    if pcap:
        os.unlink(pcap)
    return float(cpu) / (int(n) / 1e9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-offload", action="store_true")
    ap.add_argument("--against", metavar="DIR", help="another checkout: compare, capture off")
    a = ap.parse_args()
    total = a.mb * CHUNK
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    threading.Thread(target=server, args=(lsock, total), daemon=True).start()
    if a.against:
        res = {}
        for mode in ("down", "up"):
            for r in range(a.rounds):
                pair = (a.against, REPO)
                for repo in (pair if r % 2 == 0 else pair[::-1]):   # ABBA: no order bias
                    res.setdefault((mode, repo), []).append(one(mode, port, total, None,
                                                                not a.no_offload, repo))
        print(f"usernet CPU seconds per GB, no capture, {a.mb} MiB x {a.rounds} rounds")
        print(f"{'direction':<10} {'other':>9} {'this':>9} {'this/other':>10}")
        for mode in ("down", "up"):
            o = statistics.median(res[(mode, a.against)])
            t = statistics.median(res[(mode, REPO)])
            print(f"{mode:<10} {o:>9.3f} {t:>9.3f} {t / o:>10.2f}")
        print("samples:", {f"{m} {'this' if r == REPO else 'other'}": [round(x, 2) for x in v]
                           for (m, r), v in res.items()})
        return
    tmp = tempfile.mkdtemp(prefix="usernet-pcap-bench-")
    res = {}
    for mode in ("down", "up"):
        for r in range(a.rounds):
            for cap in ((False, True) if r % 2 == 0 else (True, False)):
                pcap = os.path.join(tmp, "c.pcap") if cap else None
                res.setdefault((mode, cap), []).append(one(mode, port, total, pcap,
                                                           not a.no_offload))
    os.rmdir(tmp)
    print(f"usernet CPU seconds per GB, {a.mb} MiB x {a.rounds} rounds, offload "
          f"{'off' if a.no_offload else 'on'}, capture file in {tempfile.gettempdir()}")
    print(f"{'direction':<10} {'pcap off':>9} {'pcap on':>9} {'on/off':>7}")
    for mode in ("down", "up"):
        off = statistics.median(res[(mode, False)])
        on = statistics.median(res[(mode, True)])
        print(f"{mode:<10} {off:>9.3f} {on:>9.3f} {on / off:>7.2f}")


if __name__ == "__main__":
    main()
