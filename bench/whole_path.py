#!/usr/bin/env python3
"""Whole-path benchmark: usernet beside slirp4netns, pasta and a veth pair, in the same run.

    .venv/bin/python bench/whole_path.py                 # 3 runs x 5 s per test, medians
    .venv/bin/python bench/whole_path.py --quick         # 1 run x 2 s
    .venv/bin/python bench/whole_path.py --only rr,ping --configs usernet,slirp4netns

Configurations (columns): usernet default (MTU 1500, offloads on), usernet --mtu 65520,
slirp4netns --mtu 1500 and 65520, pasta (its default MTU, 65520) when installed, and a veth pair
between two namespaces as the physical reference. Tests (rows): TCP container -> host, TCP host
-> container through a forwarded port and with `iperf3 -R`, 1-byte request/response on one
connection (tx/s, p50 latency), connections/s, UDP at full blast, ping, redis-benchmark with 50
clients (when redis is installed), and TCP over IPv6 both ways for usernet and slirp4netns
(both started with their -6; fd00::2 is the host's ::1); plus each user-space provider's CPU seconds per GB moved in
the bulk TCP tests and its peak RSS (VmHWM). Prints one table of medians, the spread over the
runs, and usernet's ratio to each peer (the median of the ratios within each run).

Nothing leaves the machine: the script first moves itself into a new network namespace (it must
run as root) that holds only `lo` and a dummy interface carrying a default route, so "host
loopback" is that namespace's loopback and the only targets are 10.0.2.2 (which every provider
maps to it) and, for veth, a namespace the script made. Each container is an
`unshare --user --map-root-user --net` process; usernet (`usernet attach`), slirp4netns
(`--configure`, port forward through its API socket) and pasta (`pasta PID`) attach to it, like
a container engine does. Every command has a timeout; every process the script starts is killed
on exit, Ctrl-C or failure, which also ends every namespace.

Run order interleaves configurations within each run (run 1: test A on every configuration, test
B on every configuration, ...), so the machine's drift and neighbours' load hit all alike.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ECHO = os.path.join(HERE, "echo.py")
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")

GW = "10.0.2.2"          # the gateway: host loopback for the NAT providers
GUEST = "10.0.2.100"
HOST_ADDR = "198.51.100.2"  # the outer namespace's own address (on a link that goes nowhere)
GUEST_PORT = 5201        # the iperf3 server inside the container, behind the forward

# (key, row label, lower-is-better)
ROWS = [
    ("c2h", "TCP container -> host, Gbit/s", False),
    ("fwd", "TCP host -> container, forwarded port, Gbit/s", False),
    ("rev", "TCP host -> container, iperf3 -R, Gbit/s", False),
    ("c2h6", "TCP over IPv6 container -> host, Gbit/s", False),
    ("rev6", "TCP over IPv6 host -> container (-R), Gbit/s", False),
    ("rr", "1-byte request/response, tx/s", False),
    ("rr_p50", "request/response p50 latency, us", True),
    ("crr", "connections/s (connect, 1 B each way, close)", False),
    ("udp", "UDP container -> host, received Gbit/s", False),
    ("udp_loss", "UDP loss, %", True),
    ("ping", "ping 10.0.2.2 average, ms", True),
    ("redis", "redis-benchmark -c 50 GET, req/s", False),
    ("rr_cpu", "provider CPU us per request/response", True),
    ("crr_cpu", "provider CPU us per connection", True),
    ("redis_cpu", "provider CPU us per redis GET", True),
    ("cpu_gb", "provider CPU s per GB (bulk TCP)", True),
    ("rss", "provider peak RSS (VmHWM), MiB", True),
]
TESTS = ["c2h", "fwd", "rev", "c2h6", "rev6", "rr", "crr", "udp", "ping", "redis"]
BULK = ("c2h", "fwd", "rev", "c2h6", "rev6")
# IPv6 (the c2h6/rev6 rows): usernet and slirp4netns with their -6, where fd00::2 is host ::1.
# pasta and the veth pair are left out of those rows (—): their IPv6 set-up differs.
GW6 = "fd00::2"
IPV6_CONFIGS = ("usernet", "slirp4netns")
CONFIGS = ["usernet", "usernet-65520", "slirp4netns", "slirp4netns-65520", "pasta", "veth"]
LABELS = {"usernet": "usernet", "usernet-65520": "usernet 65520",
          "slirp4netns": "slirp 1500", "slirp4netns-65520": "slirp 65520",
          "pasta": "pasta", "veth": "veth"}

PROCS: list[subprocess.Popen] = []   # everything we started, killed at exit
VERBOSE = False
USERNET_EXE = None   # --usernet: another build to measure (an A/B against main)


def log(*a):
    if VERBOSE:
        print("#", *a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

def spawn(cmd, **kw) -> subprocess.Popen:
    log("spawn", " ".join(map(str, cmd)))
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
    PROCS.append(p)
    return p


def kill(p: subprocess.Popen, grace: float = 2.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    for f in (p.stdout, p.stderr):
        if f:
            f.close()
    if p in PROCS:
        PROCS.remove(p)


def kill_all() -> None:
    for p in reversed(list(PROCS)):
        kill(p, 1.0)


def run(cmd, timeout: float, check: bool = True) -> str:
    """Run to completion (own session, killed on timeout); return stdout."""
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(p)
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}")
    except BaseException:  # Ctrl-C: do not leave the client running
        kill(p)
        raise
    PROCS.remove(p)
    if check and p.returncode != 0:
        raise BenchError(f"exit {p.returncode}: {' '.join(map(str, cmd))}: {(err or out).strip()[-300:]}")
    return out


def listening(pid: int | str, port: int) -> bool:
    """Is something listening on TCP `port` in the network namespace of `pid`?"""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise BenchError(f"{what}: process exited ({proc.returncode}) {str(err).strip()[-300:]}")
        if time.monotonic() > end:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise BenchError("no VmHWM")


# ---------------------------------------------------------------- namespaces

def enter_outer_namespace() -> None:
    """Move this process into a fresh network namespace with only lo and a dummy default route."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise BenchError(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    for cmd in (["ip", "link", "set", "lo", "up"],
                # pasta wants an interface with a default route to copy. This one goes nowhere:
                # a veth pair whose other end is down (this kernel has no dummy driver)
                ["ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
                ["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "bench0"],
                ["ip", "link", "set", "bench0", "up"],
                ["ip", "route", "add", "default", "via", "198.51.100.1"]):
        run(cmd, 10)
    sysctls = {
        # ICMP echo through ping sockets (pasta; in this namespace only)
        "net/ipv4/ping_group_range": "0 2147483647",
        # thousands of connections per second for several runs: TIME_WAIT must not run out of ports
        "net/ipv4/ip_local_port_range": "1024 65000",
        "net/ipv4/tcp_tw_reuse": "1",
    }
    for k, v in sysctls.items():
        with open(f"/proc/sys/{k}", "w") as f:
            f.write(v)


def holder(userns: bool) -> subprocess.Popen:
    """A process sitting in a new network (and user) namespace: the container."""
    cmd = ["unshare", "--net"] + (["--user", "--map-root-user"] if userns else [])
    p = spawn(cmd + ["--", "sh", "-c", "echo ready; exec sleep 1000000"],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "ready":
        raise BenchError(f"unshare failed: {p.stderr.read().strip()}")
    return p


class Config:
    """One column: a container namespace, its network provider, and where the 'host' is."""

    def __init__(self, name: str, tmp: str):
        self.name = name
        self.tmp = tmp
        self.provider: subprocess.Popen | None = None
        self.host_pid: int | str = "self"   # whose netns the host-side servers live in
        self.host_prefix: list[str] = []    # how to run a command there
        self.host_bind = "127.0.0.1"        # the address host servers bind
        self.fwd = ("127.0.0.1", free_port())  # where the host connects to reach GUEST_PORT
        self.cpu = 0.0
        self.moved = 0
        self.ping_target = GW

    def start(self) -> None:
        kind = self.name.split("-")[0]
        mtu = "65520" if self.name.endswith("65520") else "1500"
        if kind == "veth":
            return self._start_veth()
        self.ns = holder(userns=True)
        pid = self.ns.pid
        self.prefix = ["nsenter", "-t", str(pid), "-U", "-n", "--preserve-credentials", "--"]
        if kind == "usernet":
            exe = USERNET_EXE or os.path.join(os.path.dirname(PY), "usernet")
            self.provider = spawn([exe, "attach", "-6", "--mtu", mtu, "-p",
                                   f"127.0.0.1:{self.fwd[1]}:{GUEST_PORT}", pid, "tap0"],
                                  stderr=subprocess.PIPE, text=True)
        elif kind == "slirp4netns":
            api = os.path.join(self.tmp, f"{self.name}.sock")
            self.provider = spawn(["slirp4netns", "--configure", "--enable-ipv6", "--mtu", mtu,
                                   "--api-socket", api,
                                   pid, "tap0"], stderr=subprocess.PIPE, text=True)
            wait_for(lambda: os.path.exists(api), 10, self.name, self.provider)
        elif kind == "pasta":
            # -a/-n/-g: the same addressing as the others; pasta maps the gateway address to
            # the host (loopback) by default (--no-map-gw turns that off).
            self.provider = spawn(["pasta", "-f", "-q", "--config-net", "-I", "tap0",
                                   "-a", GUEST, "-n", "24", "-g", GW, "--runas", "0",
                                   "-t", f"127.0.0.1/{self.fwd[1]}:{GUEST_PORT}",
                                   "-u", "none", "-T", "none", "-U", "none", pid],
                                  stderr=subprocess.PIPE, text=True)
        if kind == "pasta":
            # This pasta (2023-03) maps TCP and UDP for the gateway address to the host, not ICMP:
            # an echo to 10.0.2.2 leaves by the default route. Ping the host's own address instead,
            # which the host kernel answers through loopback.
            self.ping_target = HOST_ADDR
        wait_for(self._configured, 15, f"{self.name}: tap0 configured", self.provider)
        if kind in IPV6_CONFIGS:
            # slirp4netns's IPv6 address comes by SLAAC, after its first router advertisement
            wait_for(self._configured6, 15, f"{self.name}: tap0 IPv6 address", self.provider)
        if kind == "slirp4netns":
            self._slirp_hostfwd(api)
        wait_for(lambda: listening("self", self.fwd[1]), 10, f"{self.name}: port forward",
                 self.provider)
        self._tune(self.prefix)
        self.pid = pid

    def _configured(self) -> bool:
        out = subprocess.run(self.prefix + ["ip", "-4", "-o", "addr", "show", "dev", "tap0"],
                             capture_output=True, text=True, timeout=10).stdout
        return GUEST in out

    def _configured6(self) -> bool:
        out = subprocess.run(self.prefix + ["ip", "-6", "-o", "addr", "show", "dev", "tap0",
                                            "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
        return "fd00:" in out and "tentative" not in out

    def _slirp_hostfwd(self, api: str) -> None:
        req = {"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": "127.0.0.1", "host_port": self.fwd[1],
            "guest_port": GUEST_PORT}}
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(api)
            s.sendall(json.dumps(req).encode())
            s.shutdown(socket.SHUT_WR)
            reply = s.recv(4096)
        if b'"return"' not in reply:
            raise BenchError(f"slirp4netns add_hostfwd: {reply!r}")

    def _tune(self, prefix) -> None:
        # connections/s: TIME_WAIT ports (per-netns sysctls, ours to set)
        run(prefix + ["sh", "-c", "echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range;"
                                  " echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse"], 10)

    def _start_veth(self) -> None:
        self.hostns = holder(userns=False)
        self.ns = holder(userns=False)
        h, c = str(self.hostns.pid), str(self.ns.pid)
        self.host_prefix = ["nsenter", "-t", h, "-n", "--"]
        self.prefix = ["nsenter", "-t", c, "-n", "--"]
        self.host_pid = h
        self.host_bind = GW
        self.fwd = (GUEST, GUEST_PORT)  # no NAT: the host reaches the container directly
        hp, cp = self.host_prefix, self.prefix
        for cmd in (hp + ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "tap0",
                          "netns", c],
                    hp + ["ip", "addr", "add", f"{GW}/24", "dev", "veth0"],
                    hp + ["ip", "link", "set", "veth0", "up"],
                    hp + ["ip", "link", "set", "lo", "up"],
                    cp + ["ip", "addr", "add", f"{GUEST}/24", "dev", "tap0"],
                    cp + ["ip", "link", "set", "tap0", "up"],
                    cp + ["ip", "link", "set", "lo", "up"],
                    cp + ["ip", "route", "add", "default", "via", GW]):
            run(cmd, 10)
        self._tune(hp)
        self._tune(cp)
        self.pid = c
        # wait for the link (DAD is IPv6 only; IPv4 is usable once both ends are up)
        wait_for(lambda: subprocess.run(cp + ["ping", "-c", "1", "-W", "1", GW],
                                        capture_output=True).returncode == 0, 10, "veth link")

    def cpu_now(self) -> float | None:
        return proc_cpu(self.provider.pid) if self.provider else None

    def stop(self) -> None:
        for p in (self.provider, getattr(self, "ns", None), getattr(self, "hostns", None)):
            if p is not None:
                kill(p)


# ---------------------------------------------------------------- tests

def iperf(cfg: Config, dur: float, *, reverse=False, forwarded=False, udp=False,
          v6=False) -> dict:
    """One iperf3 test; the server is a one-off, started fresh. ``v6``: the container reaches
    the host's [::1] through fd00::2."""
    if forwarded:   # server in the container, client on the host through the forward
        port = GUEST_PORT
        srv_prefix, srv_pid, srv_bind = cfg.prefix, cfg.pid, None
        cli_prefix, target, tport = cfg.host_prefix, cfg.fwd[0], cfg.fwd[1]
    else:           # server on the host, client in the container
        port = free_port() if cfg.host_pid == "self" else 5300
        srv_prefix, srv_pid, srv_bind = cfg.host_prefix, cfg.host_pid, cfg.host_bind
        cli_prefix, target, tport = cfg.prefix, GW, port
        if v6:
            srv_bind, target = "::1", GW6
    srv_cmd = srv_prefix + ["iperf3", "-s", "-1", "-p", str(port)]
    if srv_bind:
        srv_cmd += ["-B", srv_bind]
    srv = spawn(srv_cmd)
    try:
        wait_for(lambda: listening(srv_pid, port), 10, "iperf3 server", srv)
        cmd = cli_prefix + ["iperf3", "-c", target, "-p", str(tport), "-t", str(dur), "-J",
                            "--connect-timeout", "5000"]
        if reverse:
            cmd.append("-R")
        if udp:
            # full blast, 1400-byte datagrams whatever the MTU, so every column sends the same
            cmd += ["-u", "-b", "0", "-l", "1400"]
        out = run(cmd, dur + 20, check=False)
        try:
            res = json.loads(out)
        except ValueError:
            raise BenchError(f"iperf3: no JSON: {out[-300:]!r}")
        if res.get("error"):
            raise BenchError(f"iperf3: {res['error']}")
        return res["end"]
    finally:
        kill(srv)


def t_bulk(cfg, dur, key):
    end = iperf(cfg, dur, reverse=key in ("rev", "rev6"), forwarded=(key == "fwd"),
                v6=key.endswith("6"))
    recv = end["sum_received"]
    return {key: recv["bits_per_second"] / 1e9}, recv["bytes"]


def t_udp(cfg, dur):
    end = iperf(cfg, dur, udp=True)
    got = end["sum_received"]   # the server's count: what arrived, and the datagrams lost
    return {"udp": got["bits_per_second"] / 1e9, "udp_loss": got["lost_percent"]}


class HostServer:
    """A server on the host side of a configuration, kept for the whole run."""

    def __init__(self, cfg: Config, kind: str):
        self.port = free_port() if cfg.host_pid == "self" else (5400 if kind == "echo" else 5401)
        if kind == "echo":
            cmd = [PY, ECHO, "server", "--bind", cfg.host_bind, "--port", self.port]
        else:
            cmd = ["redis-server", "--bind", cfg.host_bind, "--port", self.port, "--save", "",
                   "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                   "--logfile", ""]
        self.proc = spawn(cfg.host_prefix + cmd)
        wait_for(lambda: listening(cfg.host_pid, self.port), 10, f"{kind} server", self.proc)


def t_echo(cfg, dur, mode, server):
    out = run(cfg.prefix + [PY, ECHO, mode, "--host", GW, "--port", server.port,
                            "--duration", dur], dur + 30)
    r = json.loads(out)
    if mode == "rr":
        return {"rr": r["tx_per_s"], "rr_p50": r["p50_us"]}, r["tx"] + 200  # + the warm-up
    return {"crr": r["conns_per_s"]}, r["conns"]


def t_ping(cfg, dur):
    count = max(50, int(dur * 50))
    out = run(cfg.prefix + ["ping", "-q", "-n", "-c", count, "-i", "0.01", "-W", "1",
                            cfg.ping_target],
              dur + 30, check=False)
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not m:
        raise BenchError(f"ping: no reply ({out.strip().splitlines()[-1:]})")
    return {"ping": float(m.group(1))}


def t_redis(cfg, dur, server):
    n = int(40000 * dur)
    out = run(cfg.prefix + ["redis-benchmark", "-h", GW, "-p", server.port, "-c", "50",
                            "-n", n, "-t", "get", "--csv"], dur * 6 + 30)
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0] == "GET":
            return {"redis": float(cells[1])}, n
    raise BenchError(f"redis-benchmark: no GET line: {out[-300:]!r}")


# ---------------------------------------------------------------- table

def fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key in ("rr", "crr", "redis"):
        return f"{v:,.0f}"
    if key in ("rr_p50", "rss", "rr_cpu", "crr_cpu", "redis_cpu"):
        return f"{v:.0f}"
    if key == "udp_loss":
        return f"{v:.0f}"
    if key == "ping":
        return f"{v:.3f}"
    return f"{v:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- main

def main() -> int:
    global VERBOSE, USERNET_EXE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run x 2 s per test")
    ap.add_argument("--duration", type=float, help="seconds per test (default 5, --quick 2)")
    ap.add_argument("--runs", type=int, help="runs per test, medians reported (default 3, --quick 1)")
    ap.add_argument("--only", help=f"comma-separated tests: {','.join(TESTS)}")
    ap.add_argument("--configs", help=f"comma-separated configurations: {','.join(CONFIGS)}")
    ap.add_argument("--json", metavar="PATH", help="also write every run's figures here")
    ap.add_argument("--usernet", metavar="EXE",
                    help="the usernet command to run (default: the one beside this Python)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each step to stderr")
    a = ap.parse_args()
    VERBOSE = a.verbose
    USERNET_EXE = a.usernet
    dur = a.duration or (2.0 if a.quick else 5.0)
    runs = a.runs or (1 if a.quick else 3)
    tests = a.only.split(",") if a.only else list(TESTS)
    names = a.configs.split(",") if a.configs else list(CONFIGS)
    for t in tests:
        if t not in TESTS:
            ap.error(f"unknown test {t!r}")
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown configuration {n!r}")
    if os.geteuid() != 0:
        ap.error("run as root: the script makes its own network namespaces and a veth pair")

    notes: dict[str, str] = {}
    missing = {"slirp4netns": "slirp4netns", "pasta": "pasta"}
    for n in list(names):
        tool = missing.get(n.split("-")[0])
        if tool and not shutil.which(tool):
            notes[n] = f"{tool} not installed"
    if "redis" in tests and not (shutil.which("redis-server") and shutil.which("redis-benchmark")):
        notes["redis"] = "redis-server/redis-benchmark not installed"
        tests.remove("redis")

    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_term)   # even when started in the background (SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    results: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    by_run: dict[tuple[str, str, int], float] = {}   # (config, figure, run) -> value, for ratios
    errors: dict[tuple[str, str], str] = {}
    configs: dict[str, Config] = {}
    servers: dict[tuple[str, str], HostServer] = {}
    tmp = tempfile.mkdtemp(prefix="whole_path.")
    t0 = time.monotonic()
    try:
        enter_outer_namespace()
        for n in names:
            if n in notes:
                continue
            c = Config(n, tmp)
            try:
                c.start()
            except BenchError as e:
                notes[n] = f"did not start: {e}"
                c.stop()
                continue
            configs[n] = c
            try:
                for kind, wanted in (("echo", "rr" in tests or "crr" in tests),
                                     ("redis", "redis" in tests)):
                    if wanted:
                        # one server per host-side namespace: the NAT columns share host loopback
                        shared = ("self" if c.host_pid == "self" else n, kind)
                        if shared not in servers:
                            servers[shared] = HostServer(c, kind)
                        servers[n, kind] = servers[shared]
            except BenchError as e:
                notes[n] = f"host servers did not start: {e}"
                configs.pop(n).stop()
        print(f"# {len(configs)} configurations up in {time.monotonic() - t0:.1f} s; "
              f"{runs} run(s) x {dur:g} s per test", file=sys.stderr, flush=True)

        for r in range(runs):
            for t in tests:
                for n, c in configs.items():
                    if t.endswith("6") and n.split("-")[0] not in IPV6_CONFIGS:
                        continue    # the IPv6 rows: usernet and slirp4netns only (see IPV6_CONFIGS)
                    log(f"run {r + 1}/{runs} {t} {n}")
                    cpu0 = c.cpu_now()
                    try:
                        if t in BULK:
                            figs, moved = t_bulk(c, dur, t)
                            if cpu0 is not None:
                                c.cpu += c.cpu_now() - cpu0
                                c.moved += moved
                        elif t == "udp":
                            figs = t_udp(c, dur)
                        elif t in ("rr", "crr", "redis"):
                            if t == "redis":
                                figs, count = t_redis(c, dur, servers[n, "redis"])
                            else:
                                figs, count = t_echo(c, dur, t, servers[n, "echo"])
                            if cpu0 is not None and count:
                                # CPU per transaction: steadier than a rate on a busy machine
                                figs[t + "_cpu"] = (c.cpu_now() - cpu0) / count * 1e6
                        elif t == "ping":
                            figs = t_ping(c, dur)
                    except BenchError as e:
                        errors[n, t] = str(e)
                        log(f"  failed: {e}")
                        continue
                    for k, v in figs.items():
                        results[n].setdefault(k, []).append(v)
                        by_run[n, k, r] = v
                    log("  " + " ".join(f"{k}={v:.4g}" for k, v in figs.items()))
            print(f"# run {r + 1}/{runs} done at {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

        for n, c in configs.items():
            if c.provider is not None:
                if c.moved:
                    results[n]["cpu_gb"] = [c.cpu / (c.moved / 1e9)]
                results[n]["rss"] = [proc_hwm_mib(c.provider.pid)]
    except KeyboardInterrupt:
        print("# interrupted: cleaning up", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"whole_path: {e}", file=sys.stderr)
        return 2
    finally:
        for c in configs.values():
            c.stop()
        kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- the table
    cols = [n for n in names]
    med = {n: {k: median(v) for k, v in results[n].items()} for n in cols}
    shown = [(k, label, low) for k, label, low in ROWS if any(med[n].get(k) is not None for n in cols)
             or (k == "redis" and "redis" in notes)]
    rows = [[label] + [fmt(k, med[n].get(k)) for n in cols] for k, label, _ in shown]
    print(f"Whole path, medians of {runs} run(s) x {dur:g} s "
          f"(iperf3 {iperf_version()}; {machine()})")
    print()
    print(table(["test"] + [LABELS[n] for n in cols], rows))
    if runs > 1:
        print()
        print("Spread: lowest-highest of the runs")
        print()
        srows = [[label] + [("—" if not results[n].get(k) else
                             f"{fmt(k, min(results[n][k]))}-{fmt(k, max(results[n][k]))}")
                            for n in cols]
                 for k, label, _ in shown if k not in ("cpu_gb", "rss")]
        print(table(["test"] + [LABELS[n] for n in cols], srows))
    # ---- ratios
    for base in ("usernet", "usernet-65520"):
        if base not in configs:
            continue
        peers = [n for n in cols if not n.startswith("usernet") and n in configs]
        if not peers:
            continue
        print()
        print(f"{LABELS[base]} / peer, median of the per-run ratios (higher is better for rates; "
              f"for latency, CPU and RSS rows lower is better):")
        print()
        rrows = []
        for k, label, low in shown:
            if k == "udp_loss":  # a ratio of loss percentages says little; the row above has it
                continue
            cells = []
            for p in peers:
                # paired: usernet and the peer measured in the same run, minutes apart; the
                # median of those ratios is steadier than a ratio of medians on a drifting VM
                pairs = [by_run[base, k, r] / by_run[p, k, r] for r in range(runs)
                         if by_run.get((base, k, r)) is not None and by_run.get((p, k, r))]
                if k in ("cpu_gb", "rss"):  # one figure per configuration for the whole run
                    b, v = med[base].get(k), med[p].get(k)
                    pairs = [b / v] if b is not None and v else []
                cells.append(f"{median(pairs):.2f}x" if pairs else "—")
            rrows.append([label] + cells)
        print(table(["test"] + [LABELS[p] for p in peers], rrows))
    # ---- notes
    extra = []
    for n in cols:
        if n in notes:
            extra.append(f"{LABELS[n]}: {notes[n]}")
    if "redis" in notes:
        extra.append(f"redis row: {notes['redis']}")
    if any(c.provider for c in configs.values()):
        extra.append("CPU s per GB: the provider process's user+system time (/proc/PID/stat) over "
                     "the bulk TCP tests, per GB iperf3 received; CPU us per transaction: the same "
                     "time over the rr, crr and redis tests, per transaction the client counted; "
                     "RSS: its VmHWM at the end of the run")
    if "veth" in configs:
        extra.append("veth: the kernel does the work; no provider process (CPU, RSS: —); "
                     "'forwarded port' is a direct connection to the container's address")
    if "pasta" in configs:
        extra.append("pasta: its default MTU (65520); -t forward bound to 127.0.0.1; ping goes to "
                     f"the host's own address {HOST_ADDR}, as this pasta does not map ICMP to "
                     "the gateway address (TCP and UDP to 10.0.2.2 do reach host loopback)")
    if any(n.split("-")[0] in IPV6_CONFIGS for n in configs):
        extra.append("IPv6 rows: usernet -6 and slirp4netns --enable-ipv6, iperf3 to [fd00::2] "
                     "(the host's [::1]); not measured for pasta and veth (—)")
    for (n, t), e in sorted(errors.items()):
        extra.append(f"{LABELS[n]} {t}: {e}")
    if extra:
        print()
        for e in extra:
            print(f"- {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"duration": dur, "runs": runs, "results": results,
                       "errors": {f"{n} {t}": e for (n, t), e in errors.items()},
                       "notes": notes, "machine": machine()}, f, indent=1)
    return 1 if errors else 0


def iperf_version() -> str:
    try:
        return subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                              timeout=5).stdout.split()[1]
    except Exception:
        return "?"


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
