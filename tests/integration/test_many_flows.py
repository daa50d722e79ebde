"""Ten thousand concurrent TCP flows from one namespace (issue 15).

A real namespace through ``usernet run``; a client inside opens
``FLOWS`` TCP connections to a host loopback server (reached as 10.0.2.2),
each sends a few bytes and reads their echo, and keeps the connection open.
The host server (a ``selectors`` loop in a thread of this process) accepts
and holds every one. No packet leaves the machine.

What each test proves:

* ``test_ten_thousand_flows_within_budget`` (``--memory-budget 64M``): all
  ``FLOWS`` connections are established and echo through usernet at once
  (the ``tcp_flows`` gauge says so, and the client saw every echo); a NEW
  connection started while they are all open is served (its echo comes
  back) within a liveness bound, not a speed figure; no flow was refused or
  evicted (``tcp_syn_flow_limit_rst``, ``tcp_syn_budget_rst``,
  ``tcp_flow_evicted``, ``tcp_syn_connect_limit_drop``,
  ``tcp_host_connect_failed_*`` all zero); usernet's peak RSS
  (``/proc/PID/status`` VmHWM) stays under the budget plus ``OVERHEAD_MIB``
  (the interpreter, uvloop and usernet's modules, ~30 MiB, and the shared
  buffers); and the budget's own count is honest: RSS grew by no more than
  what the budget charged (``memory_used``, which includes
  ``TCP_FLOW_COST`` per flow) plus ``SLACK_MIB``.
* ``test_flows_past_the_budget_are_refused``: the same 10,000 with a budget
  (16M) that holds ~4,000 idle flows: those are served, the rest are reset
  at their SYN (``tcp_syn_budget_rst``) and usernet's peak RSS stays under
  that budget plus the same overhead.

Each prints the RSS per idle established flow, ``(RSS with the flows - RSS
before) / flows``; ``bench/many_flows.py`` prints it for any count.
"""

import json
import os
import queue
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, USERNET, need_tun

from usernet.stack.config import TCP_FLOW_COST

pytestmark = [pytest.mark.integration, need_tun]

PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
MiB = 1 << 20
FLOWS = int(os.environ.get("USERNET_TEST_FLOWS", "10000"))
BUDGET_MIB = 64           # --memory-budget for the run
OVERHEAD_MIB = 48         # the interpreter, uvloop, usernet's modules, the shared buffers
SLACK_MIB = 8             # RSS growth beyond what the budget charged (allocator slack)
LIVENESS = 10.0           # seconds for the new connection's echo (not a speed figure)
OPEN_SECONDS = 90.0       # bound on opening every flow

# The client inside the namespace. It raises its own RLIMIT_NOFILE, opens N
# connections with at most WINDOW connects in flight (usernet answers a SYN
# once the host connect is done, so a bounded window keeps the container's
# SYN retransmissions out of it), sends each a few bytes and reads the echo.
CLIENT = r"""
import resource, selectors, socket, sys, time
port, n, window, bound = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
print("baseline", flush=True)
sys.stdin.readline()
sel = selectors.DefaultSelector()
held, failed = [], 0
started = done = 0
t0 = time.monotonic()
end = t0 + bound

def start(i):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("10.0.2.2", port))
    sel.register(s, selectors.EVENT_WRITE, [i, b"f%07d\n" % i, b""])

while done < n and time.monotonic() < end:
    while started < n and started - done < window:
        start(started)
        started += 1
    for key, ev in sel.select(1.0):
        s, st = key.fileobj, key.data
        if ev & selectors.EVENT_WRITE:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sel.unregister(s); s.close(); failed += 1; done += 1
                continue
            s.send(st[1])
            sel.modify(s, selectors.EVENT_READ, st)
            continue
        try:
            b = s.recv(64)
        except OSError:
            b = b""
        if not b:
            sel.unregister(s); s.close(); failed += 1; done += 1
            continue
        st[2] += b
        if st[2] == st[1]:
            sel.unregister(s); held.append(s); done += 1
print("opened %d %d %.1f" % (len(held), failed, time.monotonic() - t0), flush=True)
sys.stdin.readline()
t = time.monotonic()
try:
    s = socket.create_connection(("10.0.2.2", port), timeout=%LIVENESS%)
    s.sendall(b"new\n")
    got = b""
    while not got.endswith(b"\n"):
        b = s.recv(64)
        if not b:
            break
        got += b
    s.close()
except ConnectionRefusedError:
    got = "refused"
print("new %r %.3f" % (got, time.monotonic() - t), flush=True)
sys.stdin.readline()
for s in held:
    s.close()
""".replace("%LIVENESS%", repr(LIVENESS))


class HoldServer:
    """Accepts on host loopback and holds every connection, echoing what arrives."""

    def __init__(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.old_limit = (soft, hard)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4096)
        self.ls.setblocking(False)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self.ls, selectors.EVENT_READ, None)
        while not self.stop.is_set():
            for key, _ in sel.select(0.2):
                if key.data is None:
                    for _ in range(256):
                        try:
                            c, _ = self.ls.accept()
                        except (BlockingIOError, OSError):
                            break
                        c.setblocking(False)
                        self.conns.append(c)
                        sel.register(c, selectors.EVENT_READ, c)
                    continue
                c = key.data
                try:
                    b = c.recv(4096)
                except OSError:
                    b = b""
                if not b:
                    sel.unregister(c)
                    continue
                try:
                    c.send(b)     # a few bytes: the send buffer always has room
                except OSError:
                    pass
        sel.close()

    def close(self):
        self.stop.set()
        self.th.join(5)
        self.ls.close()
        for c in self.conns:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, self.old_limit)


def rss_mib(pid, key="VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} for {pid}")


def api_stats(path) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(b'{"execute": "stats"}')
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    s.close()
    return json.loads(buf)["return"]


class Client:
    """``usernet run ARGS -- python3 -c CLIENT ...``, driven line by line."""

    def __init__(self, tmp_path, args, argv):
        self.err = open(tmp_path / "usernet.stderr", "w+")
        self.p = subprocess.Popen(
            USERNET + ["run", *args, "--", PY, "-c", CLIENT, *map(str, argv)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for ln in self.p.stdout:
            self.lines.put(ln.decode())
        self.lines.put("")

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def expect(self, prefix, timeout=60.0) -> str:
        try:
            ln = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} within {timeout} s\n{self.stderr()[-3000:]}") from None
        assert ln.startswith(prefix), f"{ln!r}, expected {prefix!r}\n{self.stderr()[-3000:]}"
        return ln.strip()

    def say(self):
        self.p.stdin.write(b"\n")
        self.p.stdin.flush()

    def finish(self, timeout=60):
        self.p.stdin.close()
        self.p.wait(timeout=timeout)
        assert self.p.returncode == 0, f"rc={self.p.returncode}\n{self.stderr()[-3000:]}"

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


REFUSALS = ("tcp_syn_flow_limit_rst", "tcp_syn_budget_rst", "tcp_flow_evicted",
            "tcp_syn_connect_limit_drop")


def run_many_flows(tmp_path, n, args=(), window=128, server_pid=None):
    """Open ``n`` flows through ``usernet run ARGS``; returns a dict of what was seen.
    ``server_pid``: the process serving the namespace when it is not the run
    process itself (a daemon); its RSS is the one measured."""
    need = n + 64
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit below {need}")
    api = tmp_path / "api.sock"
    srv = HoldServer()
    u = Client(tmp_path, ["--api-socket", str(api), *args], [srv.port, n, window, OPEN_SECONDS])
    pid = server_pid or u.p.pid
    try:
        u.expect("baseline")
        time.sleep(0.5)
        base = rss_mib(pid)
        u.say()
        opened = u.expect("opened", timeout=OPEN_SECONDS + 30).split()
        time.sleep(1.0)
        held = rss_mib(pid)
        stats = api_stats(api)
        u.say()
        new = u.expect("new", timeout=LIVENESS + 30).split()
        after = api_stats(api)
        peak = rss_mib(pid, "VmHWM")
        u.say()
        u.finish()
    finally:
        u.kill()
        accepted = len(srv.conns)
        srv.close()
    return {"base": base, "held": held, "peak": peak, "ok": int(opened[1]),
            "failed": int(opened[2]), "secs": float(opened[3]), "stats": stats,
            "after": after, "new": new, "accepted": accepted,
            "per_flow_kib": (held - base) * 1024 / max(1, int(opened[1]))}


def _report(name, r):
    s = r["stats"]
    print(f"\n{name}: {r['ok']} open in {r['secs']:.1f} s ({r['failed']} refused); "
          f"RSS baseline {r['base']:.1f} MiB, with the flows {r['held']:.1f} MiB, "
          f"peak {r['peak']:.1f} MiB: {r['per_flow_kib']:.2f} KiB per flow; "
          f"memory_used {s['memory_used'] / MiB:.1f} of {s['memory_budget'] / MiB:.0f} MiB; "
          f"new {r['new'][1:]}")


@pytest.fixture
def daemon(tmp_path):
    """A ``usernet daemon`` of this test's own: (its pid, its socket)."""
    sock = tmp_path / "d.sock"
    log = open(tmp_path / "daemon.log", "w+")
    d = subprocess.Popen(USERNET + ["daemon", "--socket", str(sock)], stdout=log,
                         stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    try:
        for _ in range(200):
            if sock.exists() or d.poll() is not None:
                break
            time.sleep(0.05)
        assert d.poll() is None and sock.exists(), "the daemon did not start"
        yield d.pid, sock
    finally:
        d.terminate()
        try:
            d.wait(30)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait(10)
        log.close()


@pytest.mark.parametrize("mode", ["run", "daemon"])
def test_ten_thousand_flows_within_budget(request, tmp_path, mode):
    """The same with one process for the namespace (``run``) and with the
    namespace served as one link of a daemon (``run --daemon``: the link's own
    budget, the daemon's RSS)."""
    args, pid = ["--memory-budget", f"{BUDGET_MIB}M"], None
    if mode == "daemon":
        pid, sock = request.getfixturevalue("daemon")
        args += ["--daemon-socket", str(sock)]
    r = run_many_flows(tmp_path, FLOWS, args, server_pid=pid)
    s, a = r["stats"], r["after"]
    _report("many flows", r)
    assert r["ok"] == FLOWS and r["failed"] == 0, r
    assert r["accepted"] >= FLOWS + 1, r["accepted"]
    assert s["tcp_flows"] >= FLOWS, s["tcp_flows"]
    assert r["new"][1] == repr(b"new\n") and float(r["new"][2]) < LIVENESS, r["new"]
    refused = {k: a[k] for k in REFUSALS if a.get(k)}
    refused.update({k: v for k, v in a.items() if k.startswith("tcp_host_connect_failed") and v})
    assert not refused, refused
    assert FLOWS * TCP_FLOW_COST <= s["memory_used"] < s["memory_budget"] == BUDGET_MIB * MiB, s
    assert r["held"] - r["base"] < s["memory_used"] / MiB + SLACK_MIB, r
    assert r["peak"] < BUDGET_MIB + OVERHEAD_MIB, r


def test_flows_past_the_budget_are_refused(tmp_path):
    budget = 16
    r = run_many_flows(tmp_path, FLOWS, ["--memory-budget", f"{budget}M"])
    s, a = r["stats"], r["after"]
    _report("past the budget", r)
    room = budget * MiB // TCP_FLOW_COST
    assert room // 2 < r["ok"] <= room and r["ok"] + r["failed"] == FLOWS, r
    assert a["tcp_syn_budget_rst"] >= r["failed"] > 0, a
    assert r["new"][1] == repr("refused") and float(r["new"][2]) < LIVENESS, r["new"]
    assert s["memory_used"] < s["memory_budget"] + FLOWS * 1500, s    # SYNs in flight
    assert r["peak"] < budget + OVERHEAD_MIB, r
