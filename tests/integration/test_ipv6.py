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

from conftest import http_server, need_tun, tool, usernet_run
from test_tcp_nat import (IMPAIR, OFFLOAD, PY, _check_parallel, _out, _scratch, check_offload,
                          counters_of, sha256_file, wdir)  # noqa: F401 (wdir: a fixture)

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


class _Dns6:
    """A tiny UDP DNS server on [::1]: answers every AAAA question with 2001:db8::42."""

    def __init__(self):
        from scapy.layers.dns import DNS
        self.DNS = DNS
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind(("::1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        from scapy.layers.dns import DNSRR
        while not self.stop:
            try:
                b, a = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            q = self.DNS(b)
            self.queries += 1
            ans = self.DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd,
                           an=DNSRR(rrname=q.qd.qname, type="AAAA", ttl=60,
                                    rdata="2001:db8::42"))
            self.sock.sendto(bytes(ans), a)

    def close(self):
        self.stop = True
        self.t.join(timeout=2)
        self.sock.close()


@need_v6
@pytest.mark.parametrize("user", USERS)
def test_dig_aaaa_via_fd00_3_reaches_v6_upstream(request, user):
    tool("dig")
    user = _user(request, user)
    dns = _Dns6()
    try:
        r = usernet_run(["-6", "--dns-upstream", f"[::1]:{dns.port}"],
                        ["dig", "+tries=1", "+time=5", "AAAA", "host.example", "@fd00::3"],
                        user=user, timeout=TIMEOUT)
    finally:
        dns.close()
    assert r.returncode == 0, _out(r)
    assert "2001:db8::42" in r.stdout and "status: NOERROR" in r.stdout, _out(r)
    assert dns.queries >= 1


# ------------------------------------------------------------ bulk integrity
@need_v6
@pytest.mark.parametrize("offload", OFFLOAD)
def test_curl_200mib_v6(wdir, offload):  # noqa: F811 (wdir is the fixture)
    """The 200 MiB integrity test of test_tcp_nat.py over IPv6."""
    tool("curl")
    d, sums = wdir
    out = _scratch(d, "big6")
    with http_server(d, host="::1") as port:
        url = f"http://[{GW6}]:{port}"
        script = (f"curl -6 -gsS --max-time 100 -o {out}/big.bin {url}/big.bin && "
                  f"curl -6 -gsS --max-time 100 -T {d}/big.bin {url}/upload")
        r = usernet_run(["-6", "--debug"] + ([] if offload else ["--no-offload"]),
                        ["sh", "-c", script], timeout=150)
    assert r.returncode == 0, _out(r)
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
    assert sha256_file(f"{out}/mid.bin") == sums["mid.bin"]
    with open(f"{out}/mid.up") as fh:
        assert fh.read().strip() == sums["mid.bin"]
    _check_parallel(out, sums, n)
    shutil.rmtree(out, ignore_errors=True)
    c = counters_of(r.stderr)
    assert c.get("impair_tx_dropped", 0) > 0 and c.get("tcp_retransmit", 0) > 0, c
    check_offload(c, offload)
