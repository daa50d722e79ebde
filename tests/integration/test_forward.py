"""Port forwarding into the container (-p, the API socket) against real namespaces.

Each scenario runs ``usernet run -p ... -- SERVER`` (or adds forwards over the API) and talks to
the published port from host loopback, or from a test host in a namespace the test made itself
(veth), never anything off this machine. Every subprocess has a timeout; every test runs as root
and once more as an unprivileged user (uid 65534).
"""

import contextlib
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest

from usernet.api import request

from conftest import (NOBODY, REPO, USERNET, free_port, need_root, need_tun, tool,
                      usernet_run)

pytestmark = [pytest.mark.integration, need_tun]

TIMEOUT = 30
# The container's python: the system one, which uid 65534 (root inside its user namespace, but
# nobody to the host's files) can run; the venv's may live under a private home directory.
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture(params=["root", "nobody"])
def user(request):
    """Run usernet as root, then as uid 65534."""
    if request.param == "nobody":
        request.getfixturevalue("unprivileged")
        return "nobody"
    return None


@pytest.fixture
def workdir():
    """A directory both root and uid 65534 can use (scripts, API socket, triggers); pytest's
    tmp_path lives under a 0700 directory."""
    d = tempfile.mkdtemp(prefix="usernet-fwd-")
    os.chmod(d, 0o777)
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _script(workdir, name, text):
    p = workdir / name
    p.write_text(textwrap.dedent(text))
    os.chmod(p, 0o644)
    return str(p)


class Usernet:
    """``usernet run ARGS -- CMD`` in the background; output goes to files."""

    def __init__(self, workdir, args, cmd, *, user=None, netns=None):
        self.out = open(workdir / f"usernet-{uuid.uuid4().hex[:6]}.log", "w+")
        argv = USERNET + ["run", *args, "--", *cmd]
        if user == "nobody":
            argv = NOBODY + argv
        if netns is not None:
            argv = ["ip", "netns", "exec", netns] + argv
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd="/",
                                     env=dict(os.environ, PYTHONPATH=REPO))
        # ip netns exec and setpriv exec, so this is usernet's own pid.
        self.pid = self.proc.pid

    def output(self) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    def vm_hwm_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # usernet passes it to CMD, then exits
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        return self.proc.returncode

    def close(self):
        self.stop()
        self.out.close()


@contextlib.contextmanager
def usernet(workdir, args, cmd, **kw):
    u = Usernet(workdir, args, cmd, **kw)
    try:
        yield u
    finally:
        u.close()


def wait_for(fn, what, timeout=TIMEOUT, interval=0.1):
    """Call ``fn`` until it returns a true value (exceptions count as false)."""
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
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def curl(url, *, netns=None, timeout=10):
    argv = ["curl", "-sS", "--max-time", str(timeout), "-o", "/dev/null", "-w", "%{http_code}",
            url]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)


def http_ok(url, **kw):
    r = curl(url, **kw)
    return r.returncode == 0 and r.stdout == "200"


def api(path, execute, **arguments):
    req = {"execute": execute}
    if arguments:
        req["arguments"] = arguments
    return request(path, req, timeout=10)


def http_server_cmd(port):
    return [PY, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", "/"]


# ----------------------------------------------------------------------------- TCP, loopback
def test_http_loopback_client_seen_as_gateway(workdir, user):
    tool("curl")
    hp = free_port()
    with usernet(workdir, ["-p", f"{hp}:8080"], http_server_cmd(8080), user=user) as u:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{hp}/"), "the forwarded HTTP server")
        assert http_ok(f"http://127.0.0.1:{hp}/")
        u.stop()
        out = u.output()
    # http.server logs the client address on stderr: loopback clients are the gateway.
    assert '10.0.2.2 - - [' in out and '"GET / HTTP/1.1" 200' in out, out


def test_port_in_use_is_one_line_and_status_1(workdir, user):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        hp = busy.getsockname()[1]
        t0 = time.monotonic()
        r = usernet_run(["-p", f"{hp}:80"], ["true"], user=user, timeout=TIMEOUT)
    assert r.returncode == 1
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("usernet: ") and "attached" not in ln]
    assert len(errs) == 1 and errs[0].startswith(
        f"usernet: cannot publish tcp port 0.0.0.0:{hp}: Address already in use; fix: "), r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t0 < TIMEOUT


# ----------------------------------------------------------------------- TCP, a veth test host
@pytest.fixture
def veth_scene():
    """An outer namespace (where usernet runs) and a client namespace joined
    by a veth pair: outer 192.168.77.1/24, client 192.168.77.2/24. Nothing
    touches the host's own namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    tool("ip")
    tag = uuid.uuid4().hex[:6]
    outer, client = f"unfo-{tag}", f"unfc-{tag}"

    def ip(*a):
        subprocess.run(["ip", *a], check=True, capture_output=True, timeout=TIMEOUT)

    try:
        ip("netns", "add", outer)
        ip("netns", "add", client)
        ip("link", "add", f"vo{tag}", "netns", outer, "type", "veth", "peer", "name", f"vc{tag}",
           "netns", client)
        ip("-n", outer, "addr", "add", "192.168.77.1/24", "dev", f"vo{tag}")
        ip("-n", client, "addr", "add", "192.168.77.2/24", "dev", f"vc{tag}")
        for ns, dev in ((outer, f"vo{tag}"), (client, f"vc{tag}")):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield outer, client
    finally:
        for ns in (outer, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)


@need_root
def test_http_real_client_address_via_veth(workdir, user, veth_scene):
    tool("curl")
    outer, client = veth_scene
    hp = 18080
    with usernet(workdir, ["-p", f"{hp}:8080"], http_server_cmd(8080), user=user,
                 netns=outer) as u:
        # From the test host: the container sees 192.168.77.2 itself.
        wait_for(lambda: http_ok(f"http://192.168.77.1:{hp}/", netns=client),
                 "the forward from the veth test host")
        # From the outer namespace's loopback: the gateway.
        assert http_ok(f"http://127.0.0.1:{hp}/", netns=outer)
        u.stop()
        out = u.output()
    assert '192.168.77.2 - - [' in out, out
    assert '10.0.2.2 - - [' in out, out

    # --publish-from-gateway: everything comes from the gateway address, on a
    # port usernet picks.
    with usernet(workdir, ["--publish-from-gateway", "-p", f"192.168.77.1:{hp}:8080"],
                 http_server_cmd(8080), user=user, netns=outer) as u:
        wait_for(lambda: http_ok(f"http://192.168.77.1:{hp}/", netns=client),
                 "the forward from the veth test host")
        u.stop()
        out = u.output()
    assert '192.168.77.2 - - [' not in out, out
    assert '10.0.2.2 - - [' in out, out


# ------------------------------------------------------------------------------------- UDP
UDP_ECHO = """
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    while True:
        q, peer = s.recvfrom(65535)
        # Answer like a DNS server: same id, QR set, the question echoed, and
        # one A record whose address is the client's as seen here.
        ident, flags, qd = struct.unpack_from("!HHH", q)
        ans = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(peer[0])
        s.sendto(struct.pack("!HHHHHH", ident, flags | 0x8000, qd, 1, 0, 0) + q[12:] + ans, peer)
"""


def dns_query(ident, name):
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)


def test_udp_forward_dns_style(workdir, user):
    hp = free_port(socket.SOCK_DGRAM)
    srv = _script(workdir, "udp_echo.py", UDP_ECHO)
    with usernet(workdir, ["-p", f"{hp}:5353/udp"], [PY, srv, "5353"], user=user):
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for i, c in enumerate(clients):
                c.connect(("127.0.0.1", hp))
                c.settimeout(0.5)
                q = dns_query(0x1000 + i, f"host{i}.example.test")

                def ask(c=c, q=q):
                    c.send(q)
                    return c.recv(65535)
                r = wait_for(ask, "a UDP answer")     # the server may not be bound yet
                ident, flags, qd, an = struct.unpack_from("!HHHH", r)
                assert (ident, flags & 0x8000, qd, an) == (0x1000 + i, 0x8000, 1, 1)
                assert r[12:len(q)] == q[12:]
                # A loopback client is the gateway inside.
                assert socket.inet_ntoa(r[-4:]) == "10.0.2.2"
            # Interleaved: every client gets its own answers.
            for _ in range(5):
                for i, c in enumerate(clients):
                    c.send(dns_query(0x2000 + i, "again.example.test"))
                for i, c in enumerate(clients):
                    c.settimeout(5)
                    r = c.recv(65535)
                    assert struct.unpack_from("!H", r)[0] == 0x2000 + i
        finally:
            for c in clients:
                c.close()


# ------------------------------------------------------------- closed port, fails fast, no leak
def test_closed_guest_port_fails_fast(workdir, user):
    tool("curl")
    hp = free_port()
    sock = str(workdir / "api.sock")
    with usernet(workdir, ["-p", f"{hp}:7777", "--api-socket", sock], ["sleep", "120"],
                 user=user) as u:
        wait_for(lambda: api(sock, "stats"), "the API socket")
        # The host kernel completes the client's handshake; the reset
        # follows as soon as the container refuses, so the client sees
        # ECONNRESET from connect() (a non-blocking connect's SO_ERROR, when
        # the reset is that quick) or from its first recv().
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError):
                with socket.create_connection(("127.0.0.1", hp), timeout=5) as c:
                    c.recv(100)
            assert time.monotonic() - t0 < 1.0
        # curl fails at once: "(56) Recv failure: Connection reset by peer", or
        # "(7) Failed to connect" when the reset lands while it still checks its
        # non-blocking connect (about half the time on loopback).
        for _ in range(3):
            t0 = time.monotonic()
            r = curl(f"http://127.0.0.1:{hp}/")
            assert (r.returncode == 56 and "Connection reset by peer" in r.stderr) or \
                (r.returncode == 7 and "Failed to connect" in r.stderr), r
            assert time.monotonic() - t0 < 2.0
        s = wait_for(lambda: (lambda s: s if s["tcp_flows"] == 0 else None)(
            api(sock, "stats")["return"]), "tcp_flows back to 0", timeout=5)
        assert s["fwd_tcp_guest_refused"] == 6
        assert s["fwd_tcp_connecting"] == 0
        assert u.proc.poll() is None


BIND_ON_TRIGGER = """
    import os, socket, sys, time
    trig = sys.argv[1]
    def wait(name):
        while not os.path.exists(os.path.join(trig, name)):
            time.sleep(0.05)
    wait("bind")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080))
    s.listen()
    s.settimeout(0.05)
    while not os.path.exists(os.path.join(trig, "unbind")):
        try:
            c, _ = s.accept()
        except OSError:
            continue
        c.sendall(b"hi\\n")
        c.close()
    s.close()
    time.sleep(120)
"""


def test_publish_only_when_bound_gives_econnrefused(workdir, user):
    hp = free_port()
    srv = _script(workdir, "bind_on_trigger.py", BIND_ON_TRIGGER)
    sock = str(workdir / "api.sock")

    def connect():
        with socket.create_connection(("127.0.0.1", hp), timeout=5) as c:
            return c.recv(10)

    def refused():
        try:
            connect()
        except ConnectionRefusedError:
            return True
        return False

    with usernet(workdir, ["--publish-only-when-bound", "-p", f"{hp}:8080",
                           "--api-socket", sock], [PY, srv, str(workdir)], user=user):
        wait_for(lambda: api(sock, "stats"), "the API socket")
        # Nothing bound inside: the host port does not even listen.
        assert refused()
        [e] = api(sock, "list_hostfwd")["entries"]
        assert e["listening"] is False and e["host_port"] == hp
        (workdir / "bind").touch()
        assert wait_for(lambda: connect() == b"hi\n", "the port to open", timeout=10)
        (workdir / "unbind").touch()
        wait_for(refused, "the port to close again", timeout=10)
        s = api(sock, "stats")["return"]
        assert s["fwd_opened_guest_bound"] == 1 and s["fwd_closed_guest_unbound"] == 2


# ---------------------------------------------------------------------- 1 GiB each direction
BULK_SERVER = """
    import hashlib, random, socket, sys
    BLOCK = 1 << 20
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 9000))
    s.listen()
    def serve(c):
        cmd = c.recv(1)
        if cmd == b"U":           # upload: hash what arrives until EOF
            h = hashlib.sha256()
            n = 0
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                h.update(d)
                n += len(d)
            c.sendall(f"{n} {h.hexdigest()}".encode())
        elif cmd == b"D":         # download: N blocks of the seeded stream
            seed, blocks = (int(x) for x in c.recv(64).split())
            base = bytearray(random.Random(seed).randbytes(BLOCK))
            for i in range(blocks):
                base[0:8] = i.to_bytes(8, "big")
                c.sendall(base)
    while True:
        c, _ = s.accept()
        try:
            serve(c)
        except OSError as e:
            print("bulk server:", e, file=sys.stderr)
        c.close()
"""

BLOCK = 1 << 20


def _stream(seed, blocks):
    base = bytearray(random.Random(seed).randbytes(BLOCK))
    for i in range(blocks):
        base[0:8] = i.to_bytes(8, "big")
        yield base


@pytest.mark.slow
def test_1gib_each_way_intact_with_bounded_memory(workdir, user):
    blocks = int(os.environ.get("USERNET_BULK_MIB", "1024"))
    hp = free_port()
    srv = _script(workdir, "bulk.py", BULK_SERVER)
    with usernet(workdir, ["-p", f"{hp}:9000"], [PY, srv], user=user) as u:
        def ready():
            with socket.create_connection(("127.0.0.1", hp), timeout=5) as c:
                c.sendall(b"D1 0")
                return c.recv(10) == b""   # the server's clean close: it is up
        wait_for(ready, "the bulk server")

        # host -> container
        t0 = time.monotonic()
        want = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", hp), timeout=60) as c:
            c.sendall(b"U")
            for b in _stream(1, blocks):
                want.update(b)
                c.sendall(b)
            c.shutdown(socket.SHUT_WR)
            got = c.recv(200).decode()
        up = time.monotonic() - t0
        assert got == f"{blocks * BLOCK} {want.hexdigest()}"

        # container -> host
        t0 = time.monotonic()
        want = hashlib.sha256()
        for b in _stream(2, blocks):
            want.update(b)
        h = hashlib.sha256()
        n = 0
        with socket.create_connection(("127.0.0.1", hp), timeout=60) as c:
            c.sendall(b"D")
            c.sendall(b"2 %d" % blocks)
            buf = bytearray(1 << 20)
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                h.update(memoryview(buf)[:k])
                n += k
        down = time.monotonic() - t0
        assert n == blocks * BLOCK and h.hexdigest() == want.hexdigest()

        hwm = u.vm_hwm_kib()
        mib = blocks * BLOCK / (1 << 20)
        print(f"\nbulk {mib:.0f} MiB: up {mib / up:.0f} MiB/s, down {mib / down:.0f} MiB/s, "
              f"usernet VmHWM {hwm / 1024:.1f} MiB ({user or 'root'})")
        assert hwm < 400 * 1024


# ------------------------------------------------------------------------------ the API socket
API_SERVERS = """
    import socket, sys, threading
    def tcp(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen()
        while True:
            c, peer = s.accept()
            c.sendall(f"tcp {port} {peer[0]}\\n".encode())
            c.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            d, peer = s.recvfrom(65535)
            s.sendto(b"udp " + d, peer)
    for p in (8080, 8081):
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
    udp(5353)
"""


def test_api_add_list_remove_and_traffic(workdir, user):
    sock = str(workdir / "api.sock")
    srv = _script(workdir, "servers.py", API_SERVERS)
    p_port, a_port, u_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)

    def hello(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.settimeout(5)
            return c.recv(100).decode()

    with usernet(workdir, ["-p", f"127.0.0.1:{p_port}:8080", "--api-socket", sock],
                 [PY, srv], user=user):
        wait_for(lambda: api(sock, "stats"), "the API socket")
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        # -p forwards are listed, id 1.
        e1 = {"id": 1, "proto": "tcp", "host_addr": "127.0.0.1", "host_port": p_port,
              "guest_addr": "10.0.2.100", "guest_port": 8080, "listening": True}
        assert api(sock, "list_hostfwd")["entries"] == [e1]
        assert wait_for(lambda: hello(p_port), "the -p forward") == "tcp 8080 10.0.2.2\n"

        # add: guest_addr "" is the container; host_addr "" is 0.0.0.0.
        r = api(sock, "add_hostfwd", proto="tcp", host_addr="", host_port=a_port,
                guest_addr="", guest_port=8081)
        assert r == {"return": {"id": 2}}
        assert hello(a_port) == "tcp 8081 10.0.2.2\n"
        # A port in use: the slirp4netns error, and no id used.
        r = api(sock, "add_hostfwd", proto="tcp", host_addr="127.0.0.1", host_port=p_port,
                guest_port=8081)
        assert r == {"error": {"desc": "bad request: add_hostfwd: slirp_add_hostfwd failed"}}
        # Bad arguments.
        assert "error" in api(sock, "add_hostfwd", proto="sctp", host_port=1, guest_port=1)
        assert api(sock, "add_hostfwd", proto="tcp", host_addr="::1", host_port=a_port + 1,
                   guest_port=1)["error"]["desc"].endswith("bad arguments.host_addr")
        assert api(sock, "add_hostfwd", proto="tcp", host_port=free_port(),
                   guest_addr="192.0.2.1", guest_port=1)["error"]["desc"].endswith(
                       "bad arguments.guest_addr")
        # UDP over the API.
        r = api(sock, "add_hostfwd", proto="udp", host_addr="127.0.0.1", host_port=u_port,
                guest_addr="10.0.2.100", guest_port=5353)
        assert r == {"return": {"id": 3}}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.connect(("127.0.0.1", u_port))
            c.settimeout(5)
            c.send(b"ping")
            assert c.recv(100) == b"udp ping"

        entries = api(sock, "list_hostfwd")["entries"]
        assert [e["id"] for e in entries] == [1, 2, 3]
        s = api(sock, "stats")["return"]
        assert s["fwd_count"] == 3 and s["fwd_tcp_count"] == 2 and s["fwd_udp_count"] == 1
        assert s["fwd_tcp_guest_connected"] >= 2 and "rx_frames" in s

        # remove: the port stops; the id is gone; ids are never reused.
        assert api(sock, "remove_hostfwd", id=2) == {"return": {}}
        with pytest.raises(ConnectionRefusedError):
            hello(a_port)
        assert api(sock, "remove_hostfwd", id=2) == {
            "error": {"desc": "bad request: remove_hostfwd: bad arguments.id"}}
        r = api(sock, "add_hostfwd", proto="tcp", host_addr="127.0.0.1", host_port=a_port,
                guest_port=8080)
        assert r == {"return": {"id": 4}}
        assert hello(a_port) == "tcp 8080 10.0.2.2\n"
        assert [e["id"] for e in api(sock, "list_hostfwd")["entries"]] == [1, 3, 4]

        # The CLI client, end to end.
        def cli(*a):
            return subprocess.run(USERNET + ["fwd", *a, "--api-socket", sock], capture_output=True,
                                  text=True, timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=REPO))
        b_port = free_port()
        r = cli("add", f"127.0.0.1:{b_port}:8081")
        assert r.returncode == 0 and json.loads(r.stdout) == {"return": {"id": 5}}, r
        assert hello(b_port) == "tcp 8081 10.0.2.2\n"
        r = cli("list")
        assert r.returncode == 0 and [e["id"] for e in json.loads(r.stdout)["entries"]] == \
            [1, 3, 4, 5]
        r = cli("add", f"127.0.0.1:{b_port}:8081")
        assert r.returncode == 1 and "slirp_add_hostfwd failed" in r.stdout
        assert cli("rm", "5").returncode == 0
        assert cli("rm", "5").returncode == 1
        r = cli("stats")
        assert r.returncode == 0 and json.loads(r.stdout)["return"]["fwd_count"] == 3
        with pytest.raises(ConnectionRefusedError):
            hello(b_port)
