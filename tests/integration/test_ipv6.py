"""IPv6 end to end: ``usernet run --enable-ipv6`` against real clients.

The container's IPv6 targets are host loopback ``[::1]`` reached through the
gateway fd00::2, and the DNS forwarder fd00::3 with a test upstream on
``[::1]``: no packet leaves this machine. Root and uid 65534.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

from conftest import REPO, USERNET, http_server, need_tun, tool, usernet_run
from test_forward import _script, usernet, wait_for, workdir  # noqa: F401 (workdir: a fixture)
from test_udp_dns_icmp import FakeDns
from test_tcp_nat import (IMPAIR, OFFLOAD, PY, _check_impaired_transfers, _check_parallel, _out,
                          _scratch, check_offload, counters_of, sha256_file, wdir)  # noqa: F401 (wdir: a fixture)

pytestmark = [pytest.mark.integration, need_tun]

GW6 = "fd00::2"
DNS6 = "fd00::3"
USERS = [None, "nobody"]
TIMEOUT = 90


def _has_loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


need_v6 = pytest.mark.skipif(not _has_loopback6(), reason="host loopback has no ::1")


def _user(request, user):
    if user == "nobody":
        request.getfixturevalue("unprivileged")
    return user


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize("user", USERS)
def test_address_and_default_route_at_once_and_ping_gateway(request, user):
    """The SLAAC address in fd00::/64 and the default route are there when
    the command starts (no DAD, no waiting for an RA); ping -6 fd00::2 is
    answered by the stack."""
    tool("ip")
    tool("ping")
    user = _user(request, user)
    r = usernet_run(["-6", "--debug"], ["sh", "-c",
                    "ip -6 addr show dev tap0 scope global; echo @@@; ip -6 route show default;"
                    " echo @@@; ping -6 -c 2 -W 3 fd00::2"], user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    addr, route, ping = r.stdout.split("@@@\n")
    assert "inet6 fd00::" in addr and "/64 scope global" in addr and "tentative" not in addr
    assert "default via fe80::2 dev tap0" in route
    assert "2 received" in ping
    c = counters_of(r.stderr)
    assert c["icmp6_echo_local_reply"] >= 2 and c["ndp_na_sent"] >= 1, c
    assert c["drop_ipv6_disabled"] == 0, c


def test_custom_prefix():
    tool("ip")
    r = usernet_run(["--enable-ipv6", "--ipv6-prefix", "fd42:1:2:3::/64"],
                    ["sh", "-c", "ip -6 addr show dev tap0 scope global; ping -6 -c 1 -W 3 "
                     "fd42:1:2:3::2"], timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    assert "inet6 fd42:1:2:3:" in r.stdout and "1 received" in r.stdout


def test_without_the_flag_no_ipv6_address_and_frames_dropped():
    tool("ip")
    r = usernet_run(["--debug"], ["sh", "-c", "ip -6 addr show dev tap0 scope global; "
                                  "ping -6 -c 1 -W 1 fd00::2 || echo unreachable"],
                    timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    assert "fd00::" not in r.stdout.split("PING")[0] and "unreachable" in r.stdout


def test_bad_prefix_is_a_usage_error():
    r = usernet_run(["-6", "--ipv6-prefix", "fd00::/48"], ["true"], timeout=30)
    assert r.returncode != 0 and "must be a /64" in r.stderr


# ------------------------------------------------------------ TCP
@need_v6
@pytest.mark.parametrize("offload", OFFLOAD)
@pytest.mark.parametrize("user", USERS)
def test_curl_to_host_loopback_v6(request, user, offload):
    """curl -6 http://[fd00::2]:PORT/ reaches a server on [::1]; 8 MiB down
    and up with sha256 equal on both ends."""
    tool("curl")
    user = _user(request, user)
    d = tempfile.mkdtemp(prefix="usernet-v6-", dir="/tmp")    # uid 65534 reads it too
    os.chmod(d, 0o755)
    data = os.urandom(8 << 20)
    with open(os.path.join(d, "f.bin"), "wb") as f:
        f.write(data)
    os.chmod(os.path.join(d, "f.bin"), 0o644)
    want = hashlib.sha256(data).hexdigest()
    with http_server(d, host="::1") as port:
        url = f"http://[{GW6}]:{port}"
        script = (f"curl -6 -gsS --max-time 60 {url}/f.bin | sha256sum; "
                  f"curl -6 -gsS --max-time 60 -T {d}/f.bin {url}/up; "
                  f"curl -6 -gsS --max-time 60 -o /dev/null {url}/none")
        r = usernet_run(["-6", "--debug"] + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script], user=user, timeout=TIMEOUT)
    shutil.rmtree(d, ignore_errors=True)
    assert r.returncode == 0, _out(r)
    assert r.stdout.count(want) == 2, _out(r)
    c = counters_of(r.stderr)
    assert c["tcp_syn_connect"] == 3 and c["tcp_host_connected"] == 3, c
    check_offload(c, offload)


@need_v6
def test_closed_port_on_host_is_refused_fast():
    """Nothing listens on [::1]:PORT: the connect fails at once with RST."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    script = ("import socket, time\nt = time.monotonic()\n"
              "try:\n    socket.create_connection(('fd00::2', %d), timeout=10)\n"
              "except ConnectionRefusedError:\n    print('refused', time.monotonic() - t)\n" % port)
    r = usernet_run(["-6"], [PY, "-c", script], timeout=TIMEOUT)
    assert r.returncode == 0 and "refused" in r.stdout, _out(r)
    assert float(r.stdout.split()[1]) < 3


def test_no_host_loopback_v6_refused():
    script = ("import socket\ntry:\n    socket.create_connection(('fd00::2', 80), timeout=10)\n"
              "except ConnectionRefusedError:\n    print('refused')\n")
    r = usernet_run(["-6", "--disable-host-loopback"], [PY, "-c", script], timeout=TIMEOUT)
    assert r.returncode == 0 and "refused" in r.stdout, _out(r)


# ------------------------------------------------------------ UDP, DNS
class _UdpEcho:
    """Echo every datagram back, on [::1]."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind(("::1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                b, a = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.sock.sendto(b, a)

    def close(self):
        self.stop = True
        self.t.join(timeout=2)
        self.sock.close()


_UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
ok = 0
for n in (1, 100, 1400, 3000, 9000):
    msg = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    for _ in range(3):
        s.sendto(msg, ("fd00::2", int(sys.argv[1])))
        try:
            if s.recv(65535) == msg:
                ok += 1
                break
        except socket.timeout:
            pass
print("ok", ok)
"""


@need_v6
@pytest.mark.parametrize("user", USERS)
def test_udp_exchange_with_host_echo_server(request, user):
    """Datagrams of 1 to 9000 bytes to [fd00::2]:PORT come back intact
    (the bigger ones fragmented both ways)."""
    user = _user(request, user)
    echo = _UdpEcho()
    try:
        r = usernet_run(["-6", "--debug"], [PY, "-c", _UDP_CLIENT, str(echo.port)], user=user,
                        timeout=TIMEOUT)
    finally:
        echo.close()
    assert r.returncode == 0 and "ok 5" in r.stdout, _out(r)
    c = counters_of(r.stderr)
    assert c["udp_tx_fragments"] > 0 and c["frag_reassembled"] > 0, c


def _aaaa_answer(query):
    """Every question answered with the AAAA record 2001:db8::42."""
    from scapy.layers.dns import DNS, DNSRR
    q = DNS(query)
    return bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd,
                     an=DNSRR(rrname=q.qd[0].qname, type="AAAA", ttl=60, rdata="2001:db8::42")))


@need_v6
@pytest.mark.parametrize("user", USERS)
def test_dig_aaaa_via_fd00_3_reaches_v6_upstream(request, user):
    """dig AAAA @fd00::3, over UDP and over TCP, reaches the test upstream on
    [::1] (--dns-upstream [::1]:PORT) and brings its answer back."""
    tool("dig")
    user = _user(request, user)
    dns = FakeDns(host="::1", answer=_aaaa_answer)
    try:
        dig = "dig +tries=1 +time=5 AAAA host.example @fd00::3"
        r = usernet_run(["-6", "--dns-upstream", f"[::1]:{dns.port}"],
                        ["sh", "-c", f"{dig}; echo @@@; {dig} +tcp"], user=user, timeout=TIMEOUT)
    finally:
        dns.close()
    assert r.returncode == 0, _out(r)
    udp, tcp = r.stdout.split("@@@\n")
    for out in (udp, tcp):
        assert "2001:db8::42" in out and "status: NOERROR" in out, _out(r)
    assert dns.by_transport["udp"] >= 1 and dns.by_transport["tcp"] >= 1, dns.by_transport


_UDP_CLOSED = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect(("fd00::2", int(sys.argv[1])))
t = time.monotonic()
for _ in range(3):
    u.send(b"anyone?")
    try:
        u.recv(100)
        print("answered?!")
    except ConnectionRefusedError:
        print("refused %.2f" % (time.monotonic() - t))
        break
    except socket.timeout:
        print("timeout")
"""


@need_v6
def test_udp_to_closed_host_port_is_refused():
    """Nothing listens on [::1]:PORT: the host's port unreachable becomes
    ICMPv6 port unreachable, so the container's socket sees ECONNREFUSED."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    r = usernet_run(["-6", "--debug"], [PY, "-c", _UDP_CLOSED, str(port)], timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.startswith("refused"), _out(r)
    assert counters_of(r.stderr)["udp_port_unreachable_tx"] >= 1


# ------------------------------------------------------------ bulk integrity
@need_v6
@pytest.mark.parametrize("offload", OFFLOAD)
@pytest.mark.parametrize("user", USERS)
def test_curl_200mib_v6(request, wdir, user, offload):  # noqa: F811 (wdir is the fixture)
    """The 200 MiB integrity test of test_tcp_nat.py over IPv6."""
    tool("curl")
    user = _user(request, user)
    d, sums = wdir
    out = _scratch(d, "big6")
    with http_server(d, host="::1") as port:
        url = f"http://[{GW6}]:{port}"
        script = (f"curl -6 -gsS --max-time 100 -o {out}/big.bin "
                  f"-w 'down %{{speed_download}}\\n' {url}/big.bin && "
                  f"curl -6 -gsS --max-time 100 -T {d}/big.bin "
                  f"-w '\\nup %{{speed_upload}}\\n' {url}/upload")
        r = usernet_run(["-6", "--debug"] + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script], user=user, timeout=150)
    assert r.returncode == 0, _out(r)
    words = r.stdout.split()
    print(f"\n200 MiB over IPv6 as {user or 'root'}{'' if offload else ' --no-offload'}: down "
          f"{float(words[words.index('down') + 1]) / 1e6:.1f} MB/s, up "
          f"{float(words[words.index('up') + 1]) / 1e6:.1f} MB/s")
    assert sha256_file(f"{out}/big.bin") == sums["big.bin"]
    assert sums["big.bin"] in r.stdout, _out(r)
    shutil.rmtree(out, ignore_errors=True)
    c = counters_of(r.stderr)
    assert c["tcp_syn_connect"] == 2 and c["tcp_host_connected"] == 2, c
    check_offload(c, offload)


@need_v6
def test_curl_100_parallel_v6(wdir):  # noqa: F811
    tool("curl")
    d, sums = wdir
    out = _scratch(d, "par6")
    with http_server(d, host="::1") as port:
        r = usernet_run(["-6", "--debug"], ["sh", f"{d}/par.sh", d, f"http://[{GW6}]:{port}",
                                            out, "100"], timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, _out(r)
    _check_parallel(out, sums, 100)
    shutil.rmtree(out, ignore_errors=True)
    assert counters_of(r.stderr)["tcp_host_connected"] == 200


@need_v6
@pytest.mark.parametrize("offload", OFFLOAD)
def test_impaired_v6(wdir, offload):  # noqa: F811
    """3% loss, duplication and reordering both ways over IPv6: every byte intact."""
    tool("curl")
    d, sums = wdir
    out = _scratch(d, "imp6")
    n = 30
    url = f"http://[{GW6}]:{{port}}"
    script = (f"curl -6 -gsS --max-time 80 -o {out}/mid.bin {url}/mid.bin && "
              f"curl -6 -gsS --max-time 80 -T {d}/mid.bin -o {out}/mid.up {url}/upload && "
              f"sh {d}/par.sh {d} {url} {out} {n}")
    with http_server(d, host="::1") as port:
        r = usernet_run(["-6", "--debug", "--impair", IMPAIR.format(seed=6)]
                        + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script.format(port=port)], timeout=170)
    assert r.returncode == 0 and "ok" in r.stdout, _out(r)
    _check_impaired_transfers(out, sums, n)
    c = counters_of(r.stderr)
    assert c.get("impair_tx_dropped", 0) > 0 and c.get("tcp_retransmit", 0) > 0, c
    check_offload(c, offload)


# ------------------------------------------------------------ port forwards

HTTP6 = [PY, "-m", "http.server", "8080", "--bind", "::", "--directory", "/"]


def _curl6(url, netns=None):
    argv = ["curl", "-6", "-gsS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", url]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    return r.returncode == 0 and r.stdout == "200"


@need_v6
@pytest.mark.parametrize("user", USERS)
def test_published_on_v6_loopback_reaches_server_inside_over_ipv6(request, workdir, user):
    """-p [::1]:HP:8080 with a server inside on [::]:8080: the connection
    goes in over IPv6 (the container's SLAAC address); a loopback client is
    shown as the gateway fd00::2."""
    tool("curl")
    user = _user(request, user)
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        hp = s.getsockname()[1]
    with usernet(workdir, ["-6", "-p", f"[::1]:{hp}:8080"], HTTP6, user=user) as u:
        wait_for(lambda: _curl6(f"http://[::1]:{hp}/"), "the forwarded HTTP server over IPv6")
        u.stop()
        out = u.output()
    assert 'fd00::2 - - [' in out and '"GET / HTTP/1.1" 200' in out, out


UDP6_ECHO = """
    import socket, sys
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", int(sys.argv[1])))
    while True:
        q, peer = s.recvfrom(65535)
        s.sendto(q + b" from " + peer[0].encode(), peer)
"""


@need_v6
@pytest.mark.parametrize("user", USERS)
def test_udp_published_on_v6_loopback(request, workdir, user):
    user = _user(request, user)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        hp = s.getsockname()[1]
    srv = _script(workdir, "udp6_echo.py", UDP6_ECHO)
    with usernet(workdir, ["-6", "-p", f"[::1]:{hp}:5353/udp"], [PY, srv, "5353"], user=user):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
            c.connect(("::1", hp))
            c.settimeout(0.5)

            def ask():
                c.send(b"hello")
                return c.recv(65535)
            assert wait_for(ask, "a UDP answer over IPv6") == b"hello from fd00::2"


@pytest.fixture
def veth6_scene():
    """An outer namespace (usernet's) and a client namespace joined by a
    veth pair with IPv6 only: outer fd99::1/64, client fd99::2/64 (no DAD)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    tool("ip")
    import uuid
    tag = uuid.uuid4().hex[:6]
    outer, client = f"un6o-{tag}", f"un6c-{tag}"

    def ip(*a):
        subprocess.run(["ip", *a], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", outer)
        ip("netns", "add", client)
        ip("link", "add", f"vo{tag}", "netns", outer, "type", "veth", "peer", "name", f"vc{tag}",
           "netns", client)
        ip("-n", outer, "addr", "add", "fd99::1/64", "dev", f"vo{tag}", "nodad")
        ip("-n", client, "addr", "add", "fd99::2/64", "dev", f"vc{tag}", "nodad")
        for ns, dev in ((outer, f"vo{tag}"), (client, f"vc{tag}")):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield outer, client
    finally:
        for ns in (outer, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_published_v6_shows_the_real_client_address(workdir, veth6_scene):
    """A client at fd99::2 reaching -p [fd99::1]:HP:8080 is seen inside as
    fd99::2 itself; with --publish-from-gateway as fd00::2."""
    tool("curl")
    outer, client = veth6_scene
    hp = 18086
    for extra, seen in (([], "fd99::2"), (["--publish-from-gateway"], "fd00::2")):
        with usernet(workdir, ["-6", *extra, "-p", f"[fd99::1]:{hp}:8080"], HTTP6,
                     netns=outer) as u:
            wait_for(lambda: _curl6(f"http://[fd99::1]:{hp}/", netns=client),
                     "the forward from the veth test host")
            u.stop()
            out = u.output()
        assert f'{seen} - - [' in out, out


@need_v6
def test_api_add_hostfwd_on_v6_host_address(workdir):
    """The API takes an IPv6 host_addr with --enable-ipv6; guest_addr ""
    is the container's IPv6 address, listed resolved; an explicit IPv4 guest
    address works from an IPv6 listener too."""
    from test_forward import api
    tool("curl")
    sock = str(workdir / "api.sock")
    with socket.socket(socket.AF_INET6) as s1, socket.socket(socket.AF_INET6) as s2:
        s1.bind(("::1", 0))
        s2.bind(("::1", 0))
        p1, p2 = s1.getsockname()[1], s2.getsockname()[1]
    cmd = [PY, "-m", "http.server", "8080", "--bind", "::", "--directory", "/"]
    with usernet(workdir, ["-6", "--api-socket", sock], cmd) as u:
        wait_for(lambda: api(sock, "stats"), "the API socket")
        r = api(sock, "add_hostfwd", proto="tcp", host_addr="::1", host_port=p1,
                guest_addr="", guest_port=8080)
        assert r == {"return": {"id": 1}}, r
        r = api(sock, "add_hostfwd", proto="tcp", host_addr="::1", host_port=p2,
                guest_addr="10.0.2.100", guest_port=8080)
        assert r == {"return": {"id": 2}}, r
        wait_for(lambda: _curl6(f"http://[::1]:{p1}/"), "the API forward over IPv6")
        assert _curl6(f"http://[::1]:{p2}/")
        entries = api(sock, "list_hostfwd")["entries"]
        assert entries[0]["host_addr"] == "::1" and entries[0]["guest_addr"].startswith("fd00::")
        assert entries[1]["guest_addr"] == "10.0.2.100"
        u.stop()
        out = u.output()
    assert 'fd00::2 - - [' in out and '10.0.2.2 - - [' in out, out


# ------------------------------------------------------------ a host without IPv6
_NO_V6_CLIENT = r"""
import socket, subprocess, time
t = time.monotonic()
try:
    socket.create_connection(("fd00::2", 80), timeout=10)
    print("tcp connected?!")
except ConnectionRefusedError:
    print("tcp refused %.2f" % (time.monotonic() - t))
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect(("fd00::2", 9))
t = time.monotonic()
for _ in range(2):
    u.send(b"x")
    try:
        u.recv(100)
        print("udp answered?!")
    except ConnectionRefusedError:
        print("udp refused %.2f" % (time.monotonic() - t))
        break
    except socket.timeout:
        print("udp timeout")
r = subprocess.run(["ping", "-6", "-c", "1", "-W", "5", "2001:db8::1"], capture_output=True,
                   text=True)
print("ping rc", r.returncode, "%.2f" % (time.monotonic() - t), r.stdout.replace("\n", " | "))
"""


def test_host_without_ipv6_fails_fast():
    """usernet's own namespace has no IPv6 on loopback (no ::1, no route):
    TCP to fd00::2 is reset at once, UDP gets ICMPv6 port unreachable, an
    echo outside is answered unreachable; nothing waits for a timeout."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    tool("ip")
    tool("ping")
    import uuid
    ns = f"un6n-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.lo.disable_ipv6=1"], check=True, timeout=30)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        argv = ["ip", "netns", "exec", ns, *USERNET, "run", "-6", "--debug", "--",
                PY, "-c", _NO_V6_CLIENT]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
                           env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    assert r.returncode == 0, _out(r)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("tcp refused") and float(lines[0].split()[2]) < 2, _out(r)
    assert lines[1].startswith("udp refused") and float(lines[1].split()[2]) < 2, _out(r)
    assert lines[2].startswith("ping rc 1") and float(lines[2].split()[3]) < 4, _out(r)
    c = counters_of(r.stderr)
    assert c["tcp_host_connect_failed_unreachable"] == 1, c
    assert c["udp_port_unreachable_tx"] >= 1 and c["icmp_echo_admin_prohibited_tx"] == 1, c


# ------------------------------------------------------------ attach
@pytest.mark.parametrize("user", USERS)
def test_attach_pid_with_ipv6(request, user):
    """attach -6 PID configures the SLAAC address and route at once; ping -6
    fd00::2 from inside; SIGTERM ends it cleanly."""
    from test_run import _in_target, _start_attach, _stop, _unshare_target, _wait_for
    tool("unshare")
    tool("nsenter")
    tool("ping")
    user = _user(request, user)
    target = _unshare_target(user)
    p = None
    try:
        p = _start_attach(["-6", str(target.pid)], user)

        def configured():
            assert p.poll() is None, p.stderr.read()
            r = _in_target(target.pid, "ip", "-6", "-o", "addr", "show", "dev", "tap0",
                           "scope", "global", user=user)
            return "inet6 fd00::" in r.stdout
        _wait_for(configured, 20, "tap0 to get its IPv6 address")
        r = _in_target(target.pid, "ip", "-6", "route", "show", "default", user=user)
        assert "default via fe80::2 dev tap0" in r.stdout, r.stdout
        r = _in_target(target.pid, "ping", "-6", "-c", "2", "-W", "3", "fd00::2", user=user)
        assert r.returncode == 0 and "2 received" in r.stdout, r.stdout + r.stderr
        rc, err = _stop(p, timeout=5)
        assert rc == 0, err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        target.kill()
        target.wait(timeout=10)


# ------------------------------------------------------------ echo through the host
@pytest.mark.parametrize("user", USERS)
def test_ping6_test_host_through_host_echo_socket(request, workdir, veth6_scene, user):
    """ping -6 a test host (fd99::2, behind a veth in the namespace usernet
    runs in): the echo goes out through an ICMPv6 ping socket (uid 65534,
    ping_group_range open there) or the raw ICMPv6 socket (root, ping
    sockets closed there), and the replies come back with the container's
    identifier and sequence."""
    tool("ping")
    user = _user(request, user)
    outer, _client = veth6_scene
    group = "0 2147483647" if user == "nobody" else "1 0"
    subprocess.run(["ip", "netns", "exec", outer, "sysctl", "-qw",
                    f"net.ipv4.ping_group_range={group}"], check=True, timeout=30)
    if user == "nobody":
        from conftest import reopen_for_nobody
        reopen_for_nobody()
    out = workdir / "ping.out"
    script = f"ping -6 -c 3 -W 3 fd99::2 > {out} 2>&1; echo rc $? >> {out}"
    with usernet(workdir, ["-6", "--debug"], ["sh", "-c", script], user=user,
                 netns=outer) as u:
        u.proc.wait(timeout=TIMEOUT)
        log = u.output()
    text = out.read_text()
    assert "rc 0" in text and "3 received" in text, text + log
    for seq in (1, 2, 3):
        assert f"from fd99::2: icmp_seq={seq} " in text, text
    assert "DUP" not in text
    c = counters_of(log)
    assert c["icmp_echo_forward"] == 3 and c["icmp_echo_reply_rx"] == 3, c
