#!/usr/bin/env python3
"""Where usernet's CPU goes per transaction: user vs kernel time, syscalls, A/B of builds.

    .venv/bin/python bench/cpu_split.py                          # as root; rr, crr, redis, bulk
    .venv/bin/python bench/cpu_split.py --tests rr --runs 5 --duration 3
    .venv/bin/python bench/cpu_split.py --usernet pure=EXE1 --usernet compiled=EXE2
    .venv/bin/python bench/cpu_split.py --tests rr --strace      # + syscalls per transaction

For each usernet build (`--usernet NAME=EXE`, any number; default the one in this .venv) a
container (`unshare --user --map-root-user --net`) gets `usernet attach` and runs the loads of
bench/whole_path.py against servers on this namespace's loopback (reached as 10.0.2.2):

    rr     bench/echo.py rr (1-byte request/response on one connection)
    crr    bench/echo.py crr (connect, 1 byte each way, close)
    redis  redis-benchmark -c 50 GET (when redis is installed)
    c2h    iperf3 -c 10.0.2.2 (container -> host), per GB
    rev    iperf3 -c 10.0.2.2 -R (host -> container), per GB
    fwd    iperf3 -c 127.0.0.1 on the host through a forwarded port (`attach -p`) to
           `iperf3 -s` inside (host -> container), per GB

and reads the provider's utime and stime (/proc/PID/stat) around each: CPU µs per transaction
(per GB for the bulk loads) split into user time (the Python stack, host code, the interpreter,
uvloop's own C) and system time (the kernel doing the provider's syscalls: TAP reads and writes,
socket sends and receives, epoll). Runs interleave the builds (run 1: test A on every build,
then test B ...), so drift hits all alike; the table shows the median and the range over runs.
`--strace` adds one run per build under `strace -c -f` for the syscall counts per transaction
(strace slows the provider; its CPU figures are not used).

Nothing leaves the machine: servers bind 127.0.0.1, the containers' only target is 10.0.2.2.
Every process is started in its own session and killed at the end; every command has a timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(HERE, "echo.py")
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
GW = "10.0.2.2"
FWD_GUEST_PORT = 5201
PROCS: list[subprocess.Popen] = []
BULK = ("c2h", "rev", "fwd")        # loads measured per GB


def spawn(cmd, **kw) -> subprocess.Popen:
    p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
    PROCS.append(p)
    return p


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def listening(port: int, pid="self", addr: str = "0100007F") -> bool:
    """A listener on addr:port in PID's network namespace (default 127.0.0.1 here), without
    connecting to it (iperf3 -s -1 takes one client)."""
    want = f"{addr}:{port:04X}"
    with open(f"/proc/{pid}/net/tcp") as f:
        return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in list(f)[1:])


def ut_st(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


class Box:
    """A container namespace with one usernet build attached."""

    def __init__(self, exe: str):
        self.ns = spawn(["unshare", "--net", "--user", "--map-root-user", "--", "sh", "-c",
                         "echo ready; exec sleep 100000"], stdout=subprocess.PIPE, text=True)
        if self.ns.stdout.readline().strip() != "ready":
            raise RuntimeError("unshare failed")
        self.prefix = ["nsenter", "-t", str(self.ns.pid), "-U", "-n", "--preserve-credentials", "--"]
        # The host port forwarded to the container's FWD_GUEST_PORT (the fwd load).
        self.fwd = free_port()
        self.prov = spawn([exe, "attach", "--mtu", "1500", "-p", f"127.0.0.1:{self.fwd}:{FWD_GUEST_PORT}",
                           str(self.ns.pid), "tap0"], stderr=subprocess.DEVNULL)
        wait_for(self._ready, 20, "tap0 configured")
        wait_for(lambda: listening(self.fwd), 10, "the forwarded port")
        # crr opens thousands of connections a second, run after run: the
        # container's TIME-WAIT ports toward 10.0.2.2 must not run out (these
        # sysctls are the namespace's own). This sat unreachable after a
        # return in compiled(); without it a crr run slowed to a few hundred
        # connections/s after ~13,000 connections, whatever the build.
        for k, v in (("net/ipv4/ip_local_port_range", "1024 65000"), ("net/ipv4/tcp_tw_reuse", "1")):
            subprocess.run(self.prefix + ["sh", "-c", f"echo '{v}' > /proc/sys/{k}"], timeout=10,
                           check=True)

    def compiled(self) -> str:
        """Which of usernet's modules run compiled: the extension modules the provider maps."""
        with open(f"/proc/{self.prov.pid}/maps") as f:
            return " ".join(sorted({ln.split()[-1].rsplit("/", 1)[-1].split(".")[0] for ln in f
                                    if ("/usernet/" in ln or "__mypyc" in ln) and ln.rstrip().endswith(".so")})) or "none"

    def _ready(self) -> bool:
        if self.prov.poll() is not None:
            raise RuntimeError("usernet attach exited")
        out = subprocess.run(self.prefix + ["ip", "-4", "-o", "addr", "show", "dev", "tap0"],
                             capture_output=True, text=True, timeout=10).stdout
        return "10.0.2.100" in out

    def run(self, cmd, timeout) -> str:
        return subprocess.run(self.prefix + [str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, check=True).stdout


def load(box: Box, test: str, dur: float, ports: dict) -> float:
    """Run one load; return its units (transactions, or GB for the bulk tests)."""
    if test in ("rr", "crr"):
        r = json.loads(box.run([PY, ECHO, test, "--host", GW, "--port", ports["echo"],
                                "--duration", dur], dur + 30))
        return r["tx"] + 200 if test == "rr" else r["conns"]
    if test == "redis":
        n = int(30000 * dur)
        box.run(["redis-benchmark", "-h", GW, "-p", ports["redis"], "-c", "50", "-n", n, "-t", "get",
                 "--csv"], dur * 8 + 30)
        return n
    if test == "fwd":
        srv = spawn(box.prefix + ["iperf3", "-s", "-1", "-B", "0.0.0.0", "-p", FWD_GUEST_PORT], stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: listening(FWD_GUEST_PORT, box.ns.pid, "00000000"), 10,
                     "iperf3 server in the container")
            out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(box.fwd), "-t", str(dur), "-J"],
                                 capture_output=True, text=True, timeout=dur + 30, check=True).stdout
        finally:
            kill(srv)
        return json.loads(out)["end"]["sum_received"]["bytes"] / 1e9
    port = free_port()
    srv = spawn(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", port], stdout=subprocess.DEVNULL)
    wait_for(lambda: listening(port), 10, "iperf3 server")
    try:
        out = box.run(["iperf3", "-c", GW, "-p", port, "-t", dur, "-J"] + (["-R"] if test == "rev" else []),
                      dur + 30)
    finally:
        kill(srv)
    return json.loads(out)["end"]["sum_received"]["bytes"] / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--usernet", action="append", metavar="NAME=EXE",
                    help="a build to measure (repeat for A/B); default this .venv's usernet")
    ap.add_argument("--tests", default="rr,crr,redis,c2h,rev,fwd")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--strace", action="store_true", help="also count syscalls per transaction")
    a = ap.parse_args()
    builds = {}
    for spec in a.usernet or [f"usernet={os.path.join(os.path.dirname(PY), 'usernet')}"]:
        name, _, exe = spec.partition("=")
        builds[name] = exe
    tests = a.tests.split(",")
    if "redis" in tests and not shutil.which("redis-server"):
        tests.remove("redis")
    ports = {"echo": free_port(), "redis": free_port()}
    spawn([PY, ECHO, "server", "--bind", "127.0.0.1", "--port", ports["echo"]], stdout=subprocess.DEVNULL)
    if "redis" in tests:
        spawn(["redis-server", "--bind", "127.0.0.1", "--port", ports["redis"], "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--logfile", ""], stdout=subprocess.DEVNULL)
    wait_for(lambda: all(listening(ports[k]) for k in ports if k != "redis" or "redis" in tests),
             10, "servers")
    res: dict = {}
    try:
        boxes = {name: Box(exe) for name, exe in builds.items()}
        for run in range(a.runs):
            for test in tests:
                # alternate the order, so neither build always runs right after the other
                for name, box in (list(boxes.items())[::-1] if run % 2 else boxes.items()):
                    u0, s0 = ut_st(box.prov.pid)
                    units = load(box, test, a.duration, ports)
                    u1, s1 = ut_st(box.prov.pid)
                    scale = 1e6 if test not in BULK else 1.0  # us per tx, s per GB
                    res.setdefault((test, name), []).append(((u1 - u0) / units * scale,
                                                             (s1 - s0) / units * scale))
                    print(f"run {run + 1} {test:5} {name:10} user {res[(test, name)][-1][0]:8.2f} "
                          f"sys {res[(test, name)][-1][1]:8.2f}", file=sys.stderr, flush=True)
        compiled = {name: box.compiled() for name, box in boxes.items()}
        sc = {}
        if a.strace:
            for test in tests:
                for name, box in boxes.items():
                    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
                        st = spawn(["strace", "-c", "-f", "-o", out.name, "-p", box.prov.pid],
                                   stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                        units = load(box, test, a.duration, ports)
                        os.kill(st.pid, signal.SIGINT)
                        st.wait(10)
                        calls = {}
                        for line in out.read().splitlines():
                            f = line.split()
                            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                                calls[f[-1]] = int(f[3])
                        sc[(test, name)] = (units, calls)
    finally:
        for p in reversed(PROCS):
            kill(p)
    for name, mods in compiled.items():
        print(f"{name}: {builds[name]}; compiled modules in use: {mods}")
    print(f"\nprovider CPU per transaction (rr, crr, redis: us; c2h, rev, fwd: s per GB), "
          f"median [min-max] of {a.runs} runs x {a.duration:g} s")
    print(f"{'test':6} {'build':12} {'user':>22} {'sys':>22} {'total':>8} {'sys share':>9}")
    for (test, name), xs in res.items():
        us = [x[0] for x in xs]
        ss = [x[1] for x in xs]
        tot = statistics.median([x[0] + x[1] for x in xs])
        print(f"{test:6} {name:12} {statistics.median(us):8.2f} [{min(us):5.2f}-{max(us):5.2f}] "
              f"{statistics.median(ss):8.2f} [{min(ss):5.2f}-{max(ss):5.2f}] {tot:8.2f} "
              f"{statistics.median(ss) / tot:8.0%}")
    names = list(builds)
    if len(names) > 1:
        print(f"\ntotal CPU per unit / {names[0]}'s, median of the per-run ratios (the builds ran back "
              f"to back within each run) [min-max]")
        for test in tests:
            base = [u + s for u, s in res[(test, names[0])]]
            for name in names[1:]:
                r = [(u + s) / b for (u, s), b in zip(res[(test, name)], base)]
                print(f"{test:6} {name:12} {statistics.median(r):6.3f} [{min(r):.3f}-{max(r):.3f}]")
    for (test, name), (units, calls) in sc.items():
        tot = sum(calls.values())
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
        per = "  ".join(f"{k} {v / units:.2f}" for k, v in top)
        print(f"syscalls per {'GB' if test in BULK else 'transaction'}, {test} {name}: "
              f"{tot / units:.2f} ({per})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
