"""Faults: what usernet does when a peer, the container, the namespace, a
signal or the TAP fails under it (issue 13, "Faults").

Real namespaces and real TCPs on both sides; the host side is loopback only.
Every test counts bytes: each TCP endpoint is ``PEER`` below, a small
program that streams a known pattern (byte ``i`` is ``PATTERN[i % 251]``) and
logs, after every send, how much it wrote and how much its own kernel says
the other side acknowledged (``written - SIOCOUTQ``), and, after every
receive, how much arrived, checked against the pattern. The checks:

* **acknowledged => delivered.** Bytes the container's TCP was told were
  delivered (usernet acknowledged them) reached the host socket: the host
  receiver counted at least that many, in order and intact. The other way
  round when the host's sender is the one told: the container received at
  least what the host kernel flushed before it died.
* **no disguised truncation**: a receiver that sees a clean EOF got every
  byte the sender wrote; a cut stream ends in a reset, not an EOF.
* **bounded**: the error reaches the survivor, the flows leave usernet's
  tables (API ``stats``) and its host sockets close, each within seconds.

The TAP-write fault has two forms: a real TAP whose link the container sets
down (every write fails with EIO for seconds, then it comes back), and, for
EAGAIN, the driver on a socketpair standing in for the TAP whose reader has
stopped (a real full queue of a real fd; this kernel's TAP drops rather than
answering EAGAIN).
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest

from conftest import REPO, USERNET, free_port, need_root, need_tun, tool
from usernet.api import request

pytestmark = [pytest.mark.integration, need_tun]

PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
ENV = dict(os.environ, PYTHONPATH=REPO)
SLIRP_ENTRY = os.path.join(REPO, ".venv", "bin", "usernet-slirp4netns")
MiB = 1 << 20
BOUND = 15.0           # seconds: any "within a bound" below

PEER = r'''
"""One TCP endpoint streaming/checking the pattern; state logged to LOG as JSON."""
import errno, fcntl, json, os, signal, socket, struct, sys, termios, threading, time

P = bytes((i * 7 + 3) % 251 for i in range(251))
BIG = P * (262144 // 251 + 2)
role, where, mode, log = sys.argv[1:5]
total = int(sys.argv[5]) if len(sys.argv) > 5 else -1        # -1: endless
slow = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0      # seconds per 16 KiB read
st = {"written": 0, "acked": 0, "received": 0, "bad": 0, "up": "", "down": "", "pid": os.getpid()}
lfd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o666)
lock = threading.Lock()

def dump():
    with lock:
        line = json.dumps(st).encode()
        os.pwrite(lfd, line + b" " * (511 - len(line)) + b"\n", 0)

def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__

if role == "listen":
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(where)))
    ls.listen(4)
    dump()
    s, _ = ls.accept()
else:
    host, port = where.rsplit(":", 1)
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.settimeout(None)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

def outq():
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]

stop = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: stop.set())
s.settimeout(0.1)

def up():
    try:
        while (total < 0 or st["written"] < total) and not stop.is_set():
            off = st["written"] % 251
            n = 65536 if total < 0 else min(65536, total - st["written"])
            try:
                k = s.send(BIG[off:off + n])
            except socket.timeout:
                continue
            st["written"] += k
            st["acked"] = st["written"] - outq()
            dump()
        if stop.is_set():
            return
        s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + 30
        while outq() and time.monotonic() < end:
            time.sleep(0.01)
        st["acked"] = st["written"] - outq()
        st["up"] = "done"
    except OSError as e:
        st["up"] = errname(e)
    dump()

def down():
    try:
        while not stop.is_set():
            try:
                d = s.recv(16384 if slow else 262144)
            except socket.timeout:
                continue
            if not d:
                st["down"] = "eof"
                break
            off = st["received"] % 251
            if d != BIG[off:off + len(d)]:
                st["bad"] += 1
            st["received"] += len(d)
            dump()
            if slow:
                time.sleep(slow)
    except OSError as e:
        st["down"] = errname(e)
    dump()

ts = [threading.Thread(target=f) for f in ((up,) if mode == "up" else (down,) if mode == "down" else (up, down))]
for t in ts:
    t.start()
for t in ts:
    while t.is_alive():
        t.join(0.1)
if stop.is_set():
    # SIGUSR1: an abortive close (RST), as a crashing peer's kernel would
    # send; no thread is inside a call on the socket any more.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    st["reset"] = True
dump()
'''


# ------------------------------------------------------------------ helpers
@pytest.fixture
def wd():
    d = tempfile.mkdtemp(prefix="usernet-faults-")
    os.chmod(d, 0o777)
    with open(os.path.join(d, "peer.py"), "w") as f:
        f.write(PEER)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def state(log) -> dict:
    try:
        with open(log) as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def wait_for(fn, what, timeout=BOUND, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def host_peer(wd, mode, total=-1, slow=0.0, name="host"):
    """The host side: PEER listening on 127.0.0.1 (a process of its own, so
    a test can kill it). Yields (Popen, port, log path)."""
    port = free_port()
    log = os.path.join(wd, f"{name}.log")
    p = subprocess.Popen([PY, os.path.join(wd, "peer.py"), "listen", str(port), mode, log,
                          str(total), str(slow)], cwd="/")
    try:
        wait_for(lambda: state(log) or p.poll() is not None, "the host peer to listen")
        yield p, port, log
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def guest_cmd(wd, port, mode, name="guest", total=-1, slow=0.0, host="10.0.2.2"):
    log = os.path.join(wd, f"{name}.log")
    return [PY, os.path.join(wd, "peer.py"), "connect", f"{host}:{port}", mode, log, str(total),
            str(slow)], log


def check_stream(rx: dict, tx: dict, what: str) -> None:
    """What ``tx`` was told was acknowledged reached ``rx``, intact; a clean
    EOF only after everything."""
    assert rx.get("bad") == 0, f"{what}: corrupted bytes: {rx}"
    assert rx["received"] >= tx["acked"], (
        f"{what}: the sender was told {tx['acked']} bytes were delivered, "
        f"the receiver got {rx['received']}: rx={rx} tx={tx}")
    assert rx["received"] <= tx["written"], f"{what}: more received than written: {rx} {tx}"
    if rx.get("down") == "eof" and not was_reset(rx):
        assert rx["received"] == tx["written"], f"{what}: EOF after a truncated stream: {rx} {tx}"


def was_reset(st: dict) -> bool:
    """The endpoint saw a reset. Linux reports it once (``sk_err``) to the
    first call that asks, send or recv; a later recv reads EOF."""
    return "ECONNRESET" in (st.get("up"), st.get("down")) or st.get("up") == "EPIPE"


def api_stats(sock) -> dict:
    return request(sock, {"execute": "stats"}, timeout=5)["return"]


def host_pid(root: int, ns_pid: int) -> int:
    """The host PID of the descendant of ``root`` that is ``ns_pid`` in its own
    PID namespace (``usernet run`` starts its command in a new one, so the pid
    the command logs is not the one to signal from here)."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next(ln.split()[1:] for ln in f if ln.startswith("NSpid:"))
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
        if pid != root and len(nspid) > 1 and int(nspid[-1]) == ns_pid:
            return pid
    raise AssertionError(f"no descendant of {root} is pid {ns_pid} in its namespace")


def fd_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockets(pid) -> int:
    """usernet's TCP sockets (host side of flows, listeners excluded is not
    needed: these tests publish nothing)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    n = 0
    for path in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                if line.split()[9] in inodes:
                    n += 1
    return n


class Run:
    """``usernet run --api-socket ... -- CMD`` in the background."""

    def __init__(self, wd, cmd, args=()):
        self.sock = os.path.join(wd, f"api-{uuid.uuid4().hex[:6]}.sock")
        self.out = open(os.path.join(wd, "usernet.log"), "w+")
        self.proc = subprocess.Popen(USERNET + ["run", "--api-socket", self.sock, *args, "--",
                                                *cmd], stdout=self.out, stderr=subprocess.STDOUT,
                                     cwd="/", env=ENV)
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None,
                 "the API socket")

    def output(self):
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()


@contextlib.contextmanager
def run(wd, cmd, args=()):
    r = Run(wd, cmd, args)
    try:
        yield r
    finally:
        r.close()


def flows_gone(sock):
    s = api_stats(sock)
    return s["tcp_flows"] == 0 and s["tcp_connecting"] == 0


# ------------------------------------------------------------ host peer faults
def test_host_peer_resets_mid_transfer(wd):
    """The host peer resets (SO_LINGER 0) while bytes flow both ways: the
    container gets ECONNRESET, not EOF; every byte usernet acknowledged to the
    container that the host read arrived intact, and what the host's kernel
    had flushed toward the container before the reset reached it; the flow
    is gone from usernet within seconds."""
    with host_peer(wd, "both") as (hp, port, hlog):
        cmd, glog = guest_cmd(wd, port, "both")
        # The shell stays: usernet outlives the client (its API answers).
        with run(wd, ["sh", "-c", " ".join(cmd) + "; sleep 60"]) as u:
            wait_for(lambda: state(hlog).get("received", 0) > 4 * MiB
                     and state(glog).get("received", 0) > 4 * MiB, "4 MiB each way")
            hp.send_signal(signal.SIGUSR1)
            wait_for(lambda: state(glog).get("up") and state(glog).get("down"),
                     "the container to see the reset")
            g = state(glog)
            assert was_reset(g), g
            assert g["bad"] == 0 and state(hlog)["bad"] == 0
            wait_for(lambda: flows_gone(u.sock), "the flow to leave usernet")
            assert tcp_sockets(u.proc.pid) == 0
            assert api_stats(u.sock)["tcp_host_reset"] >= 1


def test_host_server_killed(wd):
    """The host server is SIGKILLed mid-transfer. Downloading: its kernel
    flushes what the server wrote and sends FIN: the container receives every
    byte written, then a clean EOF. Uploading: the server's unread data makes
    its kernel reset: the container's sender gets ECONNRESET/EPIPE within
    seconds. Both flows leave usernet."""
    with host_peer(wd, "up", name="down-srv") as (dp, dport, dlog), \
            host_peer(wd, "down", name="up-srv", slow=0.001) as (up, uport, ulog):
        gdown, gdlog = guest_cmd(wd, dport, "down", name="g-down")
        gup, gulog = guest_cmd(wd, uport, "up", name="g-up")
        script = f"{' '.join(gdown)} & {' '.join(gup)} & wait; sleep 60"
        with run(wd, ["sh", "-c", script]) as u:
            wait_for(lambda: state(gdlog).get("received", 0) > 4 * MiB
                     and state(ulog).get("received", 0) > 2 * MiB, "both transfers to run")
            dp.kill()
            up.kill()
            dp.wait(timeout=10)
            up.wait(timeout=10)
            srv = state(dlog)
            wait_for(lambda: state(gdlog).get("down"), "the download to end")
            wait_for(lambda: state(gulog).get("up"), "the upload to fail")
            gd, gu = state(gdlog), state(gulog)
            # The kernel of the killed server flushed what it had written:
            # at least the logged count, and the EOF means all of it.
            assert gd["down"] == "eof", gd
            assert gd["bad"] == 0 and gd["received"] >= srv["written"], (gd, srv)
            assert gu["up"] in ("ECONNRESET", "EPIPE"), gu
            wait_for(lambda: flows_gone(u.sock), "both flows to leave usernet")
            assert tcp_sockets(u.proc.pid) == 0


DNS_QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c650474657374000001" "0001")


@pytest.mark.parametrize("upstream", ["refused", "silent"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_upstream_dead(wd, proto, upstream):
    """The only DNS upstream is dead (nothing listens: refused at once) or
    silent (a bound socket that never answers). UDP: SERVFAIL with the
    query's id, at once or after the forwarder's timeout, never silence.
    TCP to 10.0.2.3:53 ends in usernet's own DNS session (it relays message
    by message, never splices): SERVFAIL at once when the upstream refuses;
    a silent upstream leaves the container's own timeout to act (or the
    forwarder's SERVFAIL), and usernet keeps answering UDP meanwhile."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    port = free_port(kind)
    holder = None
    if upstream == "silent":
        holder = socket.socket(socket.AF_INET, kind)
        holder.bind(("127.0.0.1", port))
        if proto == "tcp":
            holder.listen(8)
    script = textwrap.dedent(f"""
        import socket, struct, sys, time
        q = bytes.fromhex({DNS_QUERY.hex()!r})
        t0 = time.monotonic()
        if {proto!r} == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(12)
            s.sendto(q, ("10.0.2.3", 53))
            a = s.recv(4096)
            print("rcode", a[3] & 15, "id", a[:2].hex(), "t", round(time.monotonic() - t0, 2))
        else:
            s = socket.socket()
            s.settimeout(4)
            try:
                s.connect(("10.0.2.3", 53))
                s.sendall(struct.pack("!H", len(q)) + q)
                a = s.recv(4096)
                print("answer", a[5] & 15, "id", a[2:4].hex(), "t", round(time.monotonic() - t0, 2))
            except ConnectionRefusedError:
                print("refused t", round(time.monotonic() - t0, 2))
            except socket.timeout:
                print("timeout")
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.settimeout(12)
            u.sendto(q, ("10.0.2.3", 53))
            a = u.recv(4096)
            print("udp rcode", a[3] & 15)
    """)
    try:
        dns_env = f"127.0.0.1:{port}"
        # UDP queries go to the same (dead) upstream as TCP ones.
        r = subprocess.run(USERNET + ["run", "--dns-upstream", dns_env, "--", PY, "-c", script],
                           capture_output=True, text=True, timeout=60, env=ENV, cwd="/")
    finally:
        if holder is not None:
            holder.close()
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.split()
    if proto == "udp":
        assert out[:4] == ["rcode", "2", "id", "abcd"], r.stdout
        t = float(out[5])
        assert t < (2 if upstream == "refused" else 10), r.stdout
    else:
        if upstream == "refused":
            assert out[:4] == ["answer", "2", "id", "abcd"] and float(out[5]) < 2, r.stdout
        else:
            assert out[0] in ("timeout", "answer"), r.stdout
        assert "udp rcode 2" in r.stdout, r.stdout


# ------------------------------------------------------------ container faults
@pytest.mark.parametrize("direction", ["up", "down"])
def test_container_process_killed_mid_transfer(wd, direction):
    """The container's process is SIGKILLed mid-transfer. Uploading: its
    kernel flushes and closes; the host receives at least what usernet had
    acknowledged, then EOF. Downloading: its unread data makes its kernel
    reset; the host sender gets the error. Either way the flow leaves
    usernet's table and its host socket is closed within seconds (usernet's
    fd count back to where it was)."""
    host_mode = "down" if direction == "up" else "up"
    with host_peer(wd, host_mode, slow=0.002 if direction == "up" else 0.0) as (hp, port, hlog):
        cmd, glog = guest_cmd(wd, port, direction)
        # The shell stays: the namespace and usernet outlive the client.
        with run(wd, ["sh", "-c", " ".join(cmd) + " & sleep 60"]) as u:
            wait_for(lambda: state(glog).get("written" if direction == "up" else "received", 0)
                     > 4 * MiB, "the transfer to run")
            fds = fd_count(u.proc.pid)
            g_pid = host_pid(u.proc.pid, state(glog)["pid"])
            os.kill(g_pid, signal.SIGKILL)
            wait_for(lambda: state(hlog).get("down" if direction == "up" else "up"),
                     "the host side to see the end")
            wait_for(lambda: flows_gone(u.sock), "the flow to leave usernet")
            wait_for(lambda: tcp_sockets(u.proc.pid) == 0, "usernet's host socket to close")
            assert fd_count(u.proc.pid) <= fds - 1
            h, g = state(hlog), state(glog)
            if direction == "up":
                check_stream(h, g, "container -> host")
                assert h["down"] == "eof", h
            else:
                assert h["up"] in ("ECONNRESET", "EPIPE"), h
                assert g["bad"] == 0


def _unshare_guest(wd, port, mode, name="guest"):
    """A network namespace whose only process is the guest PEER (it waits
    for the network, then connects to the host via 10.0.2.2)."""
    cmd, log = guest_cmd(wd, port, mode, name=name)
    p = subprocess.Popen(["unshare", "--net", *cmd], cwd="/")
    own = os.stat("/proc/self/ns/net").st_ino
    wait_for(lambda: os.stat(f"/proc/{p.pid}/ns/net").st_ino != own, "the namespace")
    return p, log


def _attach(wd, target_args, api=True):
    sock = os.path.join(wd, f"api-{uuid.uuid4().hex[:6]}.sock")
    out = open(os.path.join(wd, "usernet-attach.log"), "w+")
    p = subprocess.Popen(USERNET + ["attach", "--debug", "--api-socket", sock, *target_args], cwd="/",
                         env=ENV, stdout=out, stderr=subprocess.STDOUT)
    p.logfile = out
    wait_for(lambda: os.path.exists(sock) or p.poll() is not None, "the API socket")
    return p, sock


def _tail(p) -> str:
    p.logfile.flush()
    p.logfile.seek(0)
    return p.logfile.read()[-3000:]


def _kill(p):
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


@need_root
def test_namespace_disappears(wd):
    """The namespace goes away under ``usernet attach`` (its last process
    dies mid-upload): usernet exits 0 within seconds, its API socket is
    removed, the host socket is closed, and every byte usernet acknowledged
    reached the host (a slow host reader keeps some in usernet's buffers)."""
    tool("unshare")
    with host_peer(wd, "down", slow=0.002) as (hp, port, hlog):
        guest, glog = _unshare_guest(wd, port, "up")
        u, sock = _attach(wd, [str(guest.pid)])
        try:
            wait_for(lambda: state(hlog).get("received", 0) > 2 * MiB, "the upload to run")
            guest.kill()
            guest.wait(timeout=10)
            assert u.wait(timeout=BOUND) == 0, u.logfile.read()
            assert not os.path.exists(sock)
            wait_for(lambda: state(hlog).get("down"), "the host socket to close")
            check_stream(state(hlog), state(glog), "container -> host")
        finally:
            _kill(guest)
            _kill(u)


@need_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_attach_cleanly(wd, sig):
    """SIGTERM/SIGINT to ``usernet attach`` while bytes flow both ways: exit
    0 within seconds, API socket removed, the host peer's socket closed, and
    every byte usernet acknowledged to the container (up to its last
    acknowledgement) reached the host; what the host received is intact."""
    tool("unshare")
    with host_peer(wd, "both", slow=0.002) as (hp, port, hlog):
        guest, glog = _unshare_guest(wd, port, "both")
        u, sock = _attach(wd, [str(guest.pid)])
        try:
            wait_for(lambda: state(hlog).get("received", 0) > 2 * MiB
                     and state(glog).get("received", 0) > 2 * MiB, "bytes both ways")
            u.send_signal(sig)
            assert u.wait(timeout=BOUND) == 0, u.logfile.read()
            assert not os.path.exists(sock)
            wait_for(lambda: state(hlog).get("down"), "the host socket to close")
            # usernet reset the container's side as it left: its sender learns.
            wait_for(lambda: state(glog).get("up"), "the container to see the reset "
                     + _tail(u))
            h, g = state(hlog), state(glog)
            check_stream(h, g, "container -> host")
            assert g["bad"] == 0
            assert g["up"] in ("ECONNRESET", "EPIPE"), g
            # Cut short: the host peer must not take it for a complete stream.
            assert was_reset(h), h
        finally:
            _kill(guest)
            _kill(u)


@need_root
def test_exit_fd_closed(wd, tmp_path):
    """slirp4netns's exit fd (``-e``) closed while bytes flow: exit 0, API
    socket removed, host socket closed, acknowledged bytes delivered."""
    tool("unshare")
    tool("nsenter")
    if not os.path.exists(SLIRP_ENTRY):
        pytest.skip("usernet-slirp4netns not installed (tools/setup.sh)")
    ns = str(tmp_path / "ns")
    open(ns, "w").close()
    subprocess.run(["unshare", f"--net={ns}", "true"], check=True, timeout=10)
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()
    sock = os.path.join(wd, "api.sock")
    guest = None
    with host_peer(wd, "down", slow=0.002) as (hp, port, hlog):
        p = subprocess.Popen([SLIRP_ENTRY, "-c", "-e", str(exit_r), "-r", str(ready_w),
                              "--api-socket", sock, "--netns-type=path", ns, "tap0"],
                             pass_fds=(exit_r, ready_w), cwd="/", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ENV)
        os.close(exit_r)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"1"
            cmd, glog = guest_cmd(wd, port, "up")
            guest = subprocess.Popen(["nsenter", f"--net={ns}", *cmd], cwd="/")
            wait_for(lambda: state(hlog).get("received", 0) > 2 * MiB, "the upload to run")
            os.close(exit_w)
            exit_w = None
            assert p.wait(timeout=BOUND) == 0, p.stderr.read()
            assert not os.path.exists(sock)
            wait_for(lambda: state(hlog).get("down"), "the host socket to close")
            wait_for(lambda: state(glog).get("up"), "the container to see the reset")
            h, g = state(hlog), state(glog)
            check_stream(h, g, "container -> host")
            assert was_reset(h) and was_reset(g), (h, g)
        finally:
            if exit_w is not None:
                os.close(exit_w)
            os.close(ready_r)
            if guest is not None:
                _kill(guest)
            _kill(p)
            subprocess.run(["umount", ns], capture_output=True, timeout=10)


# ---------------------------------------------------------------- TAP faults
def test_tap_writes_fail_while_the_link_is_down(wd):
    """The container sets its TAP down for 3 s mid-transfer (both ways, 24
    MiB each): every write usernet makes fails (EIO) meanwhile; usernet
    counts them, keeps answering its API, and once the link is back both
    TCPs recover: both streams complete intact."""
    total = 24 * MiB
    with host_peer(wd, "both", total=total) as (hp, port, hlog):
        cmd, glog = guest_cmd(wd, port, "both", total=total)
        flap = textwrap.dedent(f"""
            import json, subprocess, sys, time
            p = subprocess.Popen({cmd!r})
            def st():
                try:
                    return json.loads(open({glog!r}).read())
                except Exception:
                    return {{}}
            while st().get("received", 0) < {total // 3} and p.poll() is None:
                time.sleep(0.01)
            subprocess.run(["ip", "link", "set", "tap0", "down"], check=True)
            open({os.path.join(wd, "down")!r}, "w").close()
            time.sleep(3)
            subprocess.run(["ip", "link", "set", "tap0", "up"], check=True)
            open({os.path.join(wd, "up")!r}, "w").close()
            sys.exit(p.wait())
        """)
        with run(wd, [PY, "-c", flap], args=["--no-offload"]) as u:
            wait_for(lambda: os.path.exists(os.path.join(wd, "down")), "the link to go down",
                     timeout=60)
            before = api_stats(u.sock)["drop_tx_error"]
            time.sleep(1.5)
            during = api_stats(u.sock)            # answered: not hung
            assert not os.path.exists(os.path.join(wd, "up"))
            assert during["drop_tx_error"] > before or during["drop_tx_error"] > 0, during
            assert u.proc.wait(timeout=90) == 0, u.output()[-3000:]
        h, g = state(hlog), state(glog)
        assert g["up"] == "done" and h["up"] == "done", (g, h)
        assert h["down"] == "eof" and g["down"] == "eof", (g, h)
        check_stream(h, g, "container -> host")
        check_stream(g, h, "host -> container")
        assert h["received"] == g["received"] == total


def test_tap_eagain_bounded_queue_drops_counted_no_hang():
    """EAGAIN from the TAP fd for seconds: a socketpair stands in for the
    TAP (one frame per datagram) and the container's end stops reading. A
    host UDP server floods the container's flow: the driver's queue stays
    within ``TX_QUEUE_MAX``, the excess is counted as dropped, the loop keeps
    running (a timer fires on time, ARP is still answered into the queue);
    once the reader resumes, the queue drains and a fresh request is
    answered."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    from usernet.host.driver import TX_QUEUE_MAX, HostDriver
    from usernet.stack.config import NetConfig
    from usernet.stack.gateway import Gateway
    from usernet.wire.vnet import VNET_HDR_LEN, VNET_HDR_NONE

    guest_mac = "02:00:00:00:00:64"

    async def main():
        loop = asyncio.get_running_loop()
        tap, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        gw = Gateway(NetConfig(guest_mac=bytes.fromhex("020000000064")), seed=1)
        driver = HostDriver(gw, tap.fileno(), vnet_hdr=True)
        driver.start(loop)
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        port = srv.getsockname()[1]
        try:
            # The container says hello once; the host answers with a flood.
            ours.send(VNET_HDR_NONE + bytes(Ether(src=guest_mac, dst="52:55:00:00:02:02")
                                            / IP(src="10.0.2.100", dst="10.0.2.2")
                                            / UDP(sport=5000, dport=port) / b"hi"))
            _, peer = await loop.sock_recvfrom(srv, 100)
            sent = 0
            t_end = loop.time() + 3.0       # "a long time": seconds of EAGAIN
            ticks = []
            while loop.time() < t_end:
                for _ in range(200):
                    try:
                        srv.sendto(b"x" * 1000, peer)
                        sent += 1
                    except BlockingIOError:
                        break
                ticks.append(loop.time())
                await asyncio.sleep(0.01)    # the loop is alive: we get scheduled
                assert len(driver._txq) <= TX_QUEUE_MAX
            c = driver.counters
            assert driver._writer_on and len(driver._txq) > 0
            assert c["drop_tx_queue_full"] > 0, dict(c)
            assert sent > TX_QUEUE_MAX
            # The loop never stalled for long while the TAP refused writes.
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert max(gaps) < 1.0, max(gaps)
            # The reader resumes: everything queued drains, and a new
            # request is answered.
            got = 0
            deadline = loop.time() + BOUND
            while driver._txq and loop.time() < deadline:
                try:
                    while True:
                        ours.recv(70000)
                        got += 1
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            assert not driver._txq and not driver._writer_on
            ours.send(VNET_HDR_NONE + bytes(Ether(src=guest_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
                op=1, hwsrc=guest_mac, psrc="10.0.2.100", pdst="10.0.2.2")))
            while loop.time() < deadline:
                try:
                    data = ours.recv(70000)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                f = Ether(data[VNET_HDR_LEN:])
                if ARP in f and f[ARP].op == 2:
                    break
            else:
                raise AssertionError("no ARP reply after the queue drained")
            # Accounting: every datagram read from the host socket became a
            # frame that was written, queued or counted as dropped.
            assert c["udp_rx_datagrams"] <= got + c["drop_tx_queue_full"] + c["tx_frames"]
        finally:
            driver.close()
            srv.close()
            tap.close()
            ours.close()

    asyncio.run(main())
