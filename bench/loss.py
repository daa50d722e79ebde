#!/usr/bin/env python3
"""Loss recovery benchmark: goodput host -> container with ``--impair loss=F`` vs none.

    .venv/bin/python bench/loss.py           # 64 MiB, 3 runs, loss 0 and 0.01, offloads on/off
    .venv/bin/python bench/loss.py --mib 20 --runs 1 --loss 0.01,0.03

Each run is one ``usernet run --debug [--impair loss=F,seed=N] [--no-offload]`` whose
container reads ``--mib`` MiB from a server on host 127.0.0.1 (reached as 10.0.2.2) and checks
its sha256; the frames usernet sends toward the container are the ones whose losses usernet's
own TCP must repair (the impairment also drops the container's ACKs and data). Prints, per
configuration, the median goodput seen inside the container, its ratio to the loss-free run
(same offload setting, same session), and usernet's recovery counters summed over the runs:
loss repairs (fast recoveries entered and TLP probes; RACK-detected retransmissions shown
beside them) against retransmission timeouts. With offloads on a dropped frame is a whole
64 KiB segment, so it takes tens of MiB to see tens of losses. Goodput is wall-clock time
inside the container: on a shared machine compare rows of one run, not runs. Nothing leaves
the machine: the only target is host loopback.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
GUEST_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else PY

CLIENT = r"""
import hashlib, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("10.0.2.2", port), timeout=60)
h = hashlib.sha256()
got = 0
t0 = time.monotonic()
buf = bytearray(1 << 20)
while got < n:
    k = s.recv_into(buf)
    if not k:
        break
    h.update(memoryview(buf)[:k])
    got += k
dt = time.monotonic() - t0
print("result", got, h.hexdigest(), "%.6f" % dt)
"""

COUNTERS = ("impair_tx_dropped", "tcp_fast_retransmit", "tcp_fast_recoveries",
            "tcp_rack_retransmits", "tcp_tlp_probes", "tcp_recovery_probe",
            "tcp_retransmit_timeout", "tcp_retransmit")


def serve(data: bytes):
    """A loopback server that sends ``data`` to each client; returns (port, stop)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.5)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            with c:
                c.settimeout(60)
                try:
                    c.sendall(data)
                    c.shutdown(socket.SHUT_WR)
                    c.recv(1)
                except OSError:
                    pass
        ls.close()

    threading.Thread(target=loop, daemon=True).start()
    return ls.getsockname()[1], stop


def one(port: int, n: int, digest: str, loss: float, offload: bool, seed: int) -> tuple:
    args = ["--debug"]
    if loss:
        args += ["--impair", f"loss={loss},seed={seed}"]
    if not offload:
        args.append("--no-offload")
    argv = [PY, "-m", "usernet", "run", *args, "--", GUEST_PY, "-c", CLIENT, str(port), str(n)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd="/",
                       env=dict(os.environ, PYTHONPATH=ROOT))
    m = re.search(r"^result (\d+) (\w+) ([\d.]+)$", r.stdout, re.M)
    if r.returncode or not m:
        raise SystemExit(f"run failed rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}")
    if int(m.group(1)) != n or m.group(2) != digest:
        raise SystemExit(f"data mismatch: got {m.group(1)} bytes, sha256 {m.group(2)}")
    # The last counters line of the --debug log (usernet/log.py's key=value form: the one at
    # exit). None at all is an error, not zeros: the format this parses must keep up.
    found = re.findall(r"\bevent=counters counters=(\{.*\})$", r.stderr, re.M)
    if not found:
        raise SystemExit(f"no counters line in usernet's log:\n{r.stderr[-2000:]}")
    return n / float(m.group(3)), json.loads(found[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loss", default="0.01", help="comma-separated loss rates besides 0")
    ap.add_argument("--offload", default="on,off", help="on, off or on,off")
    a = ap.parse_args()
    n = a.mib << 20
    data = os.urandom(n)
    digest = hashlib.sha256(data).hexdigest()
    port, stop = serve(data)
    losses = [0.0] + [float(x) for x in a.loss.split(",") if x]
    offs = [x == "on" for x in a.offload.split(",")]
    res: dict = {}
    try:
        for run in range(a.runs):
            for off in offs:                    # interleaved: drift hits every row alike
                for loss in losses:
                    rate, c = one(port, n, digest, loss, off, seed=100 + run)
                    r = res.setdefault((off, loss), {"rates": [], "c": dict.fromkeys(COUNTERS, 0)})
                    r["rates"].append(rate)
                    for k in COUNTERS:
                        r["c"][k] += c.get(k, 0)
                    print(f"run {run + 1} offload={'on' if off else 'off'} loss={loss}: "
                          f"{rate * 8 / 1e9:.2f} Gbit/s", file=sys.stderr)
    finally:
        stop.set()
    hdr = ["offload", "loss", "Gbit/s (median)", "vs loss 0", "frames dropped", "fast rexmits",
           "fast recoveries", "RACK rexmits", "TLP probes", "recovery probes", "RTOs",
           "RTOs / repairs"]
    rows = []
    for off in offs:
        base = statistics.median(res[(off, 0.0)]["rates"])
        for loss in losses:
            r = res[(off, loss)]
            med = statistics.median(r["rates"])
            c = r["c"]
            # A loss repair: a fast recovery entered (however many holes it
            # resent) or a tail loss probe; without SACK, a fast retransmit.
            repairs = (c["tcp_fast_recoveries"] or c["tcp_fast_retransmit"]) + c["tcp_tlp_probes"]
            rto = c["tcp_retransmit_timeout"]
            rows.append(["on" if off else "off", f"{loss:g}", f"{med * 8 / 1e9:.2f}",
                         f"{med / base:.2f}x", str(c["impair_tx_dropped"]),
                         str(c["tcp_fast_retransmit"]),
                         str(c["tcp_fast_recoveries"]), str(c["tcp_rack_retransmits"]),
                         str(c["tcp_tlp_probes"]), str(c["tcp_recovery_probe"]), str(rto),
                         f"{rto / repairs:.3f}" if repairs else "-"])
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    print(f"host -> container, {a.mib} MiB per run, {a.runs} run(s); counters summed over runs")
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print("| " + " | ".join(v.ljust(w[i]) for i, v in enumerate(r)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
