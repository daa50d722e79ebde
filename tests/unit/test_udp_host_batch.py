"""host/udp.py: a flush's datagrams leave in UDP GSO sends, and arrive exactly as sent.

Real loopback sockets: the receiver must see every datagram, in order, with its own
boundaries, whatever the mix of sizes; a kernel refusal of UDP_SEGMENT falls back to single
sends for that flow.
"""

import errno
import socket
import types

import pytest

from usernet.host import udp
from usernet.stack.counters import Counters


class _Gw:
    def __init__(self):
        self.errors = []

    def udp_host_error(self, fid, data, now):
        self.errors.append((fid, data))


def _host():
    driver = types.SimpleNamespace(counters=Counters(), gw=_Gw(), now=lambda: 0.0,
                                   loop=types.SimpleNamespace(remove_reader=lambda fd: None))
    return udp.UdpHost(driver)


@pytest.fixture(params=["127.0.0.1", "::1"])
def pair(request):
    fam = socket.AF_INET6 if ":" in request.param else socket.AF_INET
    rx = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        rx.bind((request.param, 0))
    except OSError as e:
        rx.close()
        pytest.skip(f"no {request.param} here: {e}")
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    tx = socket.socket(fam, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    rx.settimeout(5)
    yield tx, rx
    tx.close()
    rx.close()


def _received(rx, n):
    return [rx.recv(65535) for _ in range(n)]


def _flow(host, tx):
    fs = udp._UdpFlowSocket(host, 7, tx)
    host.socks[7] = fs
    return fs


# (sizes queued in one flush, GSO sends expected)
SIZES = [
    ([1400] * 10, 1),                       # one run
    ([1400] * 10 + [300], 1),               # a short last segment joins the run
    ([1400] * 3 + [300, 300, 1400], 1),     # a short one ends a run; the rest go singly
    ([100] * 200, 4),                       # GSO_MAX_SEGMENTS per send: 64, 64, 64, 8
    ([60000, 60000, 10], 1),                # not both in one send (GSO_MAX_BYTES)
    ([0, 5, 0], 0),                         # empty datagrams are datagrams too, sent singly
    ([1200], 0),
]


@pytest.mark.parametrize("sizes,gso_sends", SIZES, ids=lambda s: str(s)[:20])
def test_a_flush_arrives_exactly_as_queued(pair, sizes, gso_sends):
    tx, rx = pair
    host = _host()
    fs = _flow(host, tx)
    sent = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    for d in sent:
        fs.send(d)
    assert host.pending == [fs]
    host.flush_pending()
    assert host.pending == [] and fs.queue is None
    assert _received(rx, len(sent)) == sent
    c = host.driver.counters
    assert c["drop_udp_host_send_error"] == c["drop_udp_host_send_eagain"] == 0
    assert c["udp_gso_sends"] == gso_sends
    assert fs.last == sent[-1]


def test_equal_runs_take_one_send_per_64(pair):
    tx, rx = pair
    host = _host()
    fs = _flow(host, tx)
    for i in range(130):
        fs.send(bytes([i]) * 100)
    host.flush_pending()
    assert host.driver.counters["udp_gso_sends"] == 3        # 64, 64, 2
    assert _received(rx, 130) == [bytes([i]) * 100 for i in range(130)]


class _RefusingSocket:
    """A socket whose kernel says EIO to UDP_SEGMENT (no checksum offload on the route)."""

    def __init__(self, real):
        self.real = real

    def sendmsg(self, *a):
        raise OSError(errno.EIO, "Input/output error")

    def send(self, data):
        return self.real.send(data)


def test_a_refused_gso_send_goes_singly_and_the_flow_stays_single(pair):
    tx, rx = pair
    host = _host()
    fs = _flow(host, _RefusingSocket(tx))
    data = [bytes([i]) * 500 for i in range(5)]
    for d in data:
        fs.send(d)
    host.flush_pending()
    c = host.driver.counters
    assert c["udp_gso_refused"] == 1 and c["udp_gso_sends"] == 0 and not fs.gso
    for d in data:
        fs.send(d)
    host.flush_pending()
    assert c["udp_gso_refused"] == 1                          # not tried again
    assert _received(rx, 10) == data + data


def test_close_sends_what_is_queued_first(pair):
    tx, rx = pair
    host = _host()
    fs = _flow(host, tx)
    fs.send(b"a" * 10)
    fs.send(b"b" * 10)
    rx_copy = rx
    fs.close()
    host.flush_pending()                                      # nothing left to send twice
    assert _received(rx_copy, 2) == [b"a" * 10, b"b" * 10]
    rx.settimeout(0.2)
    with pytest.raises(socket.timeout):
        rx.recv(10)


def test_refused_port_becomes_port_unreachable_for_the_last_datagram():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    addr = rx.getsockname()
    rx.close()                                                # nobody listens there now
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(addr)
    tx.setblocking(False)
    try:
        host = _host()
        fs = _flow(host, tx)
        fs.send(b"first")
        host.flush_pending()                                  # draws the ICMP error
        for d in (b"x" * 50, b"y" * 50):
            fs.send(d)
        host.flush_pending()                                  # ECONNREFUSED reported now
        assert host.driver.gw.errors and host.driver.gw.errors[-1][0] == 7
    finally:
        tx.close()
