"""UDP NAT, the DNS forwarder and ICMP echo end to end (issue 5 "Done when").

Real namespaces and real clients (dig, getent, ping, a Python UDP client run
inside). No packet leaves the machine: the DNS upstream is a tiny resolver
this file runs on 127.0.0.1 that knows a few made-up names under
``usernet.test``; the echo target is a test host in a namespace made here
(veth, 192.168.78.0/24); UDP goes to host loopback via 10.0.2.2.
"""

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from conftest import (REPO, USERNET, free_port, need_root, need_tun, reopen_for_nobody, tool,
                      usernet_run)
from usernet.wire.dns import (RCODE_NXDOMAIN, TYPE_A, build_error, build_response, check_query,
                              frame_tcp, parse_query)

pytestmark = [pytest.mark.integration, need_tun]

TIMEOUT = 60
NAMES = {"web.usernet.test": "192.0.2.10", "db.usernet.test": "192.0.2.11"}


def _out(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


# ------------------------------------------------------------ upstream DNS
def _answer(query: bytes) -> bytes | None:
    try:
        q = parse_query(query)
    except Exception:  # noqa: BLE001 - garbage: no answer
        return None
    addr = NAMES.get(q.qname.rstrip("."))
    if addr is None:
        return build_error(query, RCODE_NXDOMAIN)
    answers = [(TYPE_A, 30, socket.inet_aton(addr))] if q.qtype == TYPE_A else []
    return build_response(query, answers, aa=True)


class FakeDns:
    """A threaded DNS server on HOST:PORT (127.0.0.1 or ::1), UDP and TCP on the
    same port, answering with ``answer(query) -> bytes | None``.
    ``silent=True``: it reads queries and never answers. ``queries`` counts them
    all, ``by_transport`` per "udp"/"tcp"."""

    def __init__(self, silent=False, host="127.0.0.1", answer=_answer):
        self.silent = silent
        self.answer = answer
        self.queries = 0
        self.by_transport = {"udp": 0, "tcp": 0}
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(20):
            u = socket.socket(fam, socket.SOCK_DGRAM)
            u.bind((host, 0))
            port = u.getsockname()[1]
            t = socket.socket(fam, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind((host, port))
            except OSError:
                u.close()
                t.close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        t.listen(16)
        self.udp, self.tcp, self.port = u, t, port
        self.stop = False
        self.threads = [threading.Thread(target=self._udp_loop, daemon=True),
                        threading.Thread(target=self._tcp_loop, daemon=True)]
        for th in self.threads:
            th.start()

    def _udp_loop(self):
        self.udp.settimeout(0.2)
        while not self.stop:
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            self.by_transport["udp"] += 1
            a = None if self.silent else self.answer(data)
            if a is not None:
                self.udp.sendto(a, peer)

    def _tcp_loop(self):
        self.tcp.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(c,), daemon=True).start()

    def _tcp_conn(self, c):
        c.settimeout(10)
        buf = b""
        try:
            with c:
                while not self.stop:
                    chunk = c.recv(65535)
                    if not chunk:
                        return
                    buf += chunk
                    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                        n = struct.unpack("!H", buf[:2])[0]
                        msg, buf = buf[2:2 + n], buf[2 + n:]
                        self.queries += 1
                        self.by_transport["tcp"] += 1
                        a = None if self.silent else self.answer(msg)
                        if a is not None:
                            c.sendall(frame_tcp(a))
        except OSError:
            pass

    def close(self):
        self.stop = True
        self.udp.close()
        self.tcp.close()
        for th in self.threads:
            th.join(timeout=2)


@pytest.fixture
def dns_upstream():
    srv = FakeDns()
    try:
        yield srv
    finally:
        srv.close()




def _dig(*args):
    return ["dig", "+tries=1", "+time=8", *args]


def _status(out):
    m = re.search(r"status: (\w+)", out)
    return m and m.group(1)


# --------------------------------------------------------------------- DNS
def test_dns_udp_answer_via_forwarder(dns_upstream):
    """dig @10.0.2.3 over UDP gets the upstream's answer; NXDOMAIN passes through."""
    tool("dig")
    r = usernet_run(["--dns-upstream", f"127.0.0.1:{dns_upstream.port}"],
                    ["sh", "-c", "dig +tries=2 +time=3 @10.0.2.3 web.usernet.test +short; echo @@@; "
                                 "dig +tries=2 +time=3 @10.0.2.3 nope.usernet.test"],
                    timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    short, full = r.stdout.split("@@@\n")
    assert short.split() == ["192.0.2.10"], r.stdout
    assert _status(full) == "NXDOMAIN", full
    assert dns_upstream.queries >= 2


def test_dns_tcp_answer_via_forwarder(dns_upstream):
    """dig +tcp @10.0.2.3: DNS over TCP to the forwarder reaches the upstream over TCP."""
    tool("dig")
    r = usernet_run(["--dns-upstream", f"127.0.0.1:{dns_upstream.port}"],
                    _dig("+tcp", "@10.0.2.3", "db.usernet.test", "+short"), timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    assert r.stdout.split() == ["192.0.2.11"], _out(r)


_GARBAGE_CLIENT = textwrap.dedent(r"""
    import os, random, socket, struct, sys
    rng = random.Random(1234)
    blobs = [b"GET / HTTP/1.0\r\n\r\n", b"\x00", b"\xff" * 11, os.urandom(0)]
    blobs += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(200)]
    blobs = [b for b in blobs if b]
    for b in blobs:                                  # over UDP, one datagram each
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.05)
        s.sendto(b, ("10.0.2.3", 53))
        try:
            s.recv(4096)
        except OSError:
            pass
        s.close()
    sent = 0
    for i in range(0, len(blobs), 20):               # over TCP: raw bytes and framed garbage
        for payload in (b"".join(blobs[i:i + 20]),
                        b"".join(struct.pack("!H", len(b)) + b for b in blobs[i:i + 20])):
            c = socket.create_connection(("10.0.2.3", 53), timeout=3)
            try:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                while c.recv(65535):
                    pass
            except OSError:
                pass
            c.close()
            sent += 1
    print("sent", len(blobs), sent, flush=True)
""")


def test_dns_forwarder_passes_only_dns(dns_upstream):
    """Arbitrary bytes to 10.0.2.3:53, over UDP and TCP, never reach the
    loopback upstream; every message it does get is a well-formed query (the
    valid ones sent afterwards, answered over UDP and TCP)."""
    tool("dig")
    seen = []

    def recording(query):
        seen.append(bytes(query))
        return _answer(query)
    dns_upstream.answer = recording
    script = (f"{sys.executable} -c {_shq(_GARBAGE_CLIENT)} && "
              "dig +tries=1 +time=5 @10.0.2.3 web.usernet.test +short && "
              "dig +tcp +tries=1 +time=5 @10.0.2.3 db.usernet.test +short")
    r = usernet_run(["--disable-host-loopback", "--dns-upstream", f"127.0.0.1:{dns_upstream.port}"],
                    ["sh", "-c", script], timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    lines = r.stdout.split()
    assert lines[-2:] == ["192.0.2.10", "192.0.2.11"], _out(r)
    # Only the two dig queries arrived (dig may retry; nothing else).
    assert seen, _out(r)
    names = set()
    for q in seen:
        check_query(q)
        names.add(parse_query(q).qname)
    assert names == {"web.usernet.test", "db.usernet.test"}, names
    assert dns_upstream.queries == len(seen)


def _shq(text):
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.parametrize("user", [None, "nobody"])
def test_getent_via_mounted_resolv_conf(request, dns_upstream, user):
    """getent hosts (libc, the bind-mounted resolv.conf) resolves upstream and local names."""
    tool("getent")
    if user == "nobody":
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    r = usernet_run(["--dns-upstream", f"127.0.0.1:{dns_upstream.port}"],
                    ["sh", "-c", "getent hosts web.usernet.test; getent hosts host.containers.internal"],
                    user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    lines = [line.split() for line in r.stdout.splitlines()]
    assert lines == [["192.0.2.10", "web.usernet.test"],
                     ["10.0.2.2", "host.containers.internal"]], _out(r)


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_dns_dead_upstream_servfail(kind):
    """An upstream that refuses (closed port) or never answers: SERVFAIL within ~6 s, not silence."""
    tool("dig")
    silent = None
    if kind == "closed":
        port = free_port(socket.SOCK_DGRAM)
    else:
        silent = FakeDns(silent=True)
        port = silent.port
    try:
        script = ("s=$(date +%s.%N); dig +tries=1 +time=10 @10.0.2.3 web.usernet.test; "
                  "e=$(date +%s.%N); echo elapsed=$(echo \"$e - $s\" | awk '{print $1 - $3}')")
        r = usernet_run(["--dns-upstream", f"127.0.0.1:{port}"], ["sh", "-c", script],
                        timeout=TIMEOUT)
    finally:
        if silent is not None:
            silent.close()
    assert _status(r.stdout) == "SERVFAIL", _out(r)
    elapsed = float(re.search(r"elapsed=([\d.]+)", r.stdout).group(1))
    assert elapsed < (1.0 if kind == "closed" else 6.5), r.stdout
    if silent is not None:
        assert silent.queries >= 1


def test_dns_silent_first_upstream_fails_over(dns_upstream):
    """With a silent first upstream, the query is retried on the next one and answered (~2 s)."""
    tool("dig")
    silent = FakeDns(silent=True)
    try:
        t0 = time.monotonic()
        r = usernet_run(["--dns-upstream", f"127.0.0.1:{silent.port}",
                         "--dns-upstream", f"127.0.0.1:{dns_upstream.port}"],
                        _dig("@10.0.2.3", "web.usernet.test", "+short"), timeout=TIMEOUT)
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert r.returncode == 0, _out(r)
    assert r.stdout.split() == ["192.0.2.10"], _out(r)
    assert silent.queries >= 1
    assert elapsed < 8, elapsed


def _fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_dns_silent_upstream_does_not_leak_sockets():
    """Queries to a silent upstream leave no socket behind once SERVFAILed (fd count flat)."""
    tool("dig")
    silent = FakeDns(silent=True)
    script = ("echo ready; read _; for i in $(seq 30); do "
              "dig +tries=1 +time=1 @10.0.2.3 q$i.usernet.test >/dev/null; done; echo done; read _")
    argv = USERNET + ["run", "--dns-upstream", f"127.0.0.1:{silent.port}", "--", "sh", "-c", script]
    p = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=REPO), cwd="/", text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == "ready"
        before = _fd_count(p.pid)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        during = _fd_count(p.pid)
        time.sleep(7.5)   # the gateway's 5 s deadline, then the forwarder lets go
        after = _fd_count(p.pid)
        p.stdin.write("go\n")
        p.stdin.close()
        p.wait(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        silent.close()
    assert silent.queries >= 30
    assert during > before, (before, during, after)   # the queries were in flight
    assert after <= before + 1, (before, during, after)


# -------------------------------------------------------------------- ICMP
def _ping_ok(text, count):
    seqs = [int(m) for m in re.findall(r"icmp_seq=(\d+) ttl=", text)]
    assert seqs == list(range(1, count + 1)), text
    assert "DUP" not in text and "wrong data" not in text, text
    assert f"{count} received" in text, text


@contextlib.contextmanager
def _test_host():
    """A test host in its own netns, 192.168.78.2/24, behind a veth whose
    host end is 192.168.78.1/24. Yields the test host's address."""
    tag = uuid.uuid4().hex[:6]
    ns, vh, vt = f"usernet-th-{tag}", f"unh{tag}", f"unt{tag}"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True, timeout=20)  # noqa: E731
    busy = subprocess.run(["ip", "-4", "route", "show", "192.168.78.0/24"], capture_output=True,
                          text=True, timeout=20).stdout.strip()
    if busy:
        pytest.skip(f"192.168.78.0/24 already routed here: {busy}")
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", vh, "type", "veth", "peer", "name", vt)
        run("ip", "link", "set", vt, "netns", ns)
        run("ip", "addr", "add", "192.168.78.1/24", "dev", vh)
        run("ip", "link", "set", vh, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", "192.168.78.2/24", "dev", vt)
        run("ip", "netns", "exec", ns, "ip", "link", "set", vt, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield "192.168.78.2"
    finally:
        subprocess.run(["ip", "link", "del", vh], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@need_root
@pytest.mark.parametrize("user", [None, "nobody"])
def test_ping_gateway_and_test_host(request, user):
    """ping .2 (answered by the stack) and a test host behind a veth (host ping/raw socket):
    sequence 1..3, identifiers right (ping accepts the replies), no DUP or wrong data."""
    tool("ping")
    tool("ip")
    if user == "nobody":
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    with _test_host() as th:
        r = usernet_run([], ["sh", "-c", f"ping -c 3 -W 3 10.0.2.2; echo @@@; ping -c 3 -W 3 {th}"],
                        user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    gw, host = r.stdout.split("@@@\n")
    _ping_ok(gw, 3)
    _ping_ok(host, 3)
    assert f"from {th}" in host


@need_root
def test_ping_without_ping_or_raw_socket(request):
    """As nobody with ping_group_range closed: echo is answered 'prohibited' at once, one warning."""
    tool("ping")
    tool("ip")
    request.getfixturevalue("unprivileged")
    reopen_for_nobody()
    pgr = "/proc/sys/net/ipv4/ping_group_range"
    with open(pgr) as f:
        old = f.read().strip()
    try:
        with open(pgr, "w") as f:
            f.write("1 0")
        with _test_host() as th:
            t0 = time.monotonic()
            r = usernet_run([], ["ping", "-c", "2", "-W", "3", th], user="nobody", timeout=TIMEOUT)
            elapsed = time.monotonic() - t0
    finally:
        with open(pgr, "w") as f:
            f.write(old)
    assert r.returncode != 0, _out(r)
    assert re.search(r"From 10\.0\.2\.2 icmp_seq=1 .*(prohibited|filtered|Unreachable)", r.stdout,
                     re.I), _out(r)
    assert " 0 received" in r.stdout, r.stdout
    assert elapsed < 10, elapsed
    warnings = [line for line in r.stderr.splitlines() if "ICMP echo" in line]
    assert len(warnings) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_unowned_address_in_subnet_unreachable():
    """10.0.2.77 (in the subnet, nobody's): TCP connect and ping fail with host unreachable, fast;
    with a static neighbour entry the frames reach usernet, which answers ICMP host unreachable."""
    tool("ping")
    script = textwrap.dedent("""
        import errno, socket, subprocess, sys, time
        def connect():
            s = socket.socket(); s.settimeout(15); t = time.monotonic()
            try:
                s.connect(("10.0.2.77", 80)); err = 0
            except OSError as e:
                err = e.errno
            return err, time.monotonic() - t
        print("arp", *connect())
        subprocess.run(["ip", "neigh", "replace", "10.0.2.77", "lladdr", "52:55:00:00:02:02",
                        "dev", "tap0", "nud", "permanent"], check=True)
        print("neigh", *connect())
        sys.stdout.flush()
        r = subprocess.run(["ping", "-c", "1", "-W", "3", "10.0.2.77"], capture_output=True,
                           text=True)
        print(r.stdout)
    """)
    r = usernet_run([], [sys.executable, "-c", script], timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    arp = r.stdout.splitlines()[0].split()
    neigh = r.stdout.splitlines()[1].split()
    # No ARP answer for .77: the container's own kernel gives up after its ARP tries.
    assert int(arp[1]) == 113 and float(arp[2]) < 8, r.stdout    # EHOSTUNREACH
    # Sent to the gateway's MAC anyway: usernet's ICMP host unreachable, at once.
    assert int(neigh[1]) == 113 and float(neigh[2]) < 1.5, r.stdout
    assert re.search(r"From 10\.0\.2\.2 icmp_seq=1 Destination Host Unreachable", r.stdout), r.stdout


# --------------------------------------------------------------------- UDP
class UdpEcho:
    """A UDP echo server on 127.0.0.1 (a thread)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.stop = False
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.count += 1
            self.sock.sendto(data, peer)

    def close(self):
        self.stop = True
        self.th.join(timeout=2)
        self.sock.close()


UDP_CLIENT = textwrap.dedent("""
    import json, os, random, socket, struct, sys, time, zlib
    port, n, mtu = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    WINDOW, BIG, NBIG = 32, 8192, 12
    rng = random.Random(5)
    sizes = [rng.randint(1, mtu - 28) for _ in range(n - NBIG)]
    sizes[:7] = range(1, 8)
    for i in range(NBIG):
        sizes.insert(rng.randrange(len(sizes)), BIG)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(("10.0.2.2", port))
    s.settimeout(1.0)

    def make(seq, size):
        if size < 8:   # too small for a header: a pattern fixed by the length
            return bytes((0xA0 + size + i) & 0xFF for i in range(size))
        body = rng.randbytes(size - 8)
        return struct.pack("!II", seq, zlib.crc32(body)) + body

    out = {}          # key -> size, outstanding
    arrived = corrupt = big_ok = lost = 0
    seq = 0
    deadline = time.monotonic() + 100

    def key_of(d):
        if len(d) < 8:
            return ("tiny", len(d))
        return struct.unpack_from("!I", d)[0]

    def receive():
        global arrived, corrupt, big_ok
        d = s.recv(65535)
        k = key_of(d)
        size = out.pop(k, None)
        if size is None or len(d) != size:
            corrupt += 1
            return
        if len(d) < 8:
            ok = d == make(0, len(d))
        else:
            ok = zlib.crc32(d[8:]) == struct.unpack_from("!I", d, 4)[0]
        if ok:
            arrived += 1
            big_ok += size == BIG
        else:
            corrupt += 1

    for size in sizes:
        while len(out) >= WINDOW or (size < 8 and ("tiny", size) in out):
            try:
                receive()
            except socket.timeout:
                lost += len(out)     # nothing came back for a second: the rest is lost
                out.clear()
        if time.monotonic() > deadline:
            break
        d = make(seq, size)
        out[key_of(d)] = size
        seq += 1
        s.send(d)
    end = time.monotonic() + 3
    while out and time.monotonic() < end:
        try:
            receive()
        except socket.timeout:
            break
    lost += len(out)
    print(json.dumps({"sent": seq, "arrived": arrived, "corrupt": corrupt, "lost": lost,
                      "big_ok": big_ok, "nbig": NBIG}))
""")


def test_udp_echo_10000_mixed_sizes():
    """10,000 paced datagrams (1 B .. MTU-28, some 8 KiB that fragment) via 10.0.2.2 to a host
    echo server: >= 99 % come back, every one intact, every 8 KiB one whole."""
    echo = UdpEcho()
    try:
        t0 = time.monotonic()
        r = usernet_run([], [sys.executable, "-c", UDP_CLIENT, str(echo.port), "10000", "1500"],
                        timeout=180)
        elapsed = time.monotonic() - t0
    finally:
        echo.close()
    assert r.returncode == 0, _out(r)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["sent"] == 10000, res
    assert res["corrupt"] == 0, res
    assert res["arrived"] >= 9900, res
    assert res["big_ok"] == res["nbig"], res
    assert elapsed < 150, elapsed


def test_udp_closed_port_refused():
    """A connected UDP socket to a closed host port via 10.0.2.2 gets ECONNREFUSED (ICMP port
    unreachable from usernet), fast."""
    port = free_port(socket.SOCK_DGRAM)
    script = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.0.2.2", {port}))
        s.settimeout(5)
        t = time.monotonic()
        s.send(b"hello?")
        try:
            s.recv(100)
            print("answered")
        except ConnectionRefusedError:
            print("refused", round(time.monotonic() - t, 3))
        except socket.timeout:
            print("timeout")
    """)
    r = usernet_run([], [sys.executable, "-c", script], timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    words = r.stdout.split()
    assert words[0] == "refused", _out(r)
    assert float(words[1]) < 2, r.stdout
