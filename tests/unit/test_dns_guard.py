"""The DNS forwarder forwards DNS only (issue 13, part 6).

Three levels: the screen every message passes (``check_query``,
``screen_query``), the gateway's UDP path (garbage never becomes a
``DnsQuery`` event), and the host side in process (DNS over TCP through a
fake TAP to loopback upstreams that speak only UDP or only TCP; garbage
never reaches them; local names answered over TCP too).
"""

import asyncio
import errno
import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from usernet.host import dns as hdns
from usernet.stack.config import DNS_MAX_QUERY_SIZE
from usernet.stack.dns import DROP, FORWARD, REPLY, screen_query
from usernet.stack.events import DnsQuery
from usernet.wire import ParseError
from usernet.wire.dns import (RCODE_FORMERR, RCODE_NOTIMP, TC, TYPE_A, build_response,
                              check_query, frame_tcp, parse_header)

from test_host import GUEST, GUEST_MAC, GW_MAC, is_tcp, run

DNS_IP = "10.0.2.3"


def query(name="web.usernet.test", qtype="A", id=0x4242, **kw) -> bytes:
    return bytes(DNS(id=id, rd=1, qd=DNSQR(qname=name, qtype=qtype), **kw))


def rcode(msg: bytes) -> int:
    return parse_header(msg)[1] & 0xF


# --- the screen -----------------------------------------------------------------

def test_check_query_accepts_edns_and_walks_every_section():
    q = query(ar=DNSRROPT(rclass=4096))
    assert check_query(q).qname == "web.usernet.test"
    with pytest.raises(ParseError) as e:
        check_query(q + b"\x00")
    assert e.value.reason == "dns_trailing_bytes"
    with pytest.raises(ParseError) as e:
        check_query(q[:-3])                    # the OPT record cut short
    assert e.value.reason == "dns_truncated"
    q1 = query("a.test")
    two = q1[:4] + b"\x00\x02" + q1[6:] + q1[12:]      # QDCOUNT 2, two questions
    with pytest.raises(ParseError) as e:
        check_query(two)
    assert e.value.reason == "dns_bad_qdcount"


@pytest.mark.parametrize("msg, action, rc, counter", [
    (query(), FORWARD, None, "dns_query_ok"),
    (b"GET / HTTP/1.1\r\n\r\n", REPLY, RCODE_FORMERR, "dns_query_formerr"),
    (query() + b"junk", REPLY, RCODE_FORMERR, "dns_query_formerr"),
    (b"\x12\x34" + b"\x00" * 9, DROP, None, "drop_dns_query_malformed"),
    (bytes(DNS(id=5, qr=1, qd=DNSQR(qname="a.test"))), DROP, None, "drop_dns_query_is_response"),
    (bytes(DNS(id=5, opcode=5, qd=DNSQR(qname="a.test"))), REPLY, RCODE_NOTIMP, "dns_query_notimp"),
    (query(ar=DNSRR(rrname="x", type="TXT", rdata="a" * 200) * 30), REPLY, RCODE_FORMERR,
     "dns_query_too_large_formerr"),
])
def test_screen_query(msg, action, rc, counter):
    got, reply, why = screen_query(msg)
    assert (got, why) == (action, counter)
    if rc is None:
        assert reply is None
    else:
        assert rcode(reply) == rc and reply[:2] == msg[:2]
    if counter == "dns_query_too_large_formerr":
        assert len(msg) > DNS_MAX_QUERY_SIZE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_screen_any_bytes(data):
    """Arbitrary bytes: forwarded only if the whole message is a query."""
    action, reply, _why = screen_query(data)
    if action == FORWARD:
        check_query(data)
    elif action == REPLY:
        assert reply[:2] == data[:2] and parse_header(reply)[1] & 0x8000
    else:
        assert reply is None


# --- the gateway's UDP path -------------------------------------------------------

def _gw():
    from usernet.stack.config import NetConfig
    from usernet.stack.gateway import Gateway
    return Gateway(NetConfig(guest_mac=bytes.fromhex("020000000064")), seed=1)


def _udp_to_dns(gw, payload: bytes):
    f = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=DNS_IP) / UDP(
        sport=5353, dport=53) / Raw(payload)
    gw.receive_frame(bytes(f), 1.0)
    out = [Ether(bytes(fr)) for _h, fr in gw.frames_out]
    ev = list(gw.events_out)
    gw.frames_out.clear()
    gw.events_out.clear()
    return out, ev


def test_udp_garbage_is_never_forwarded():
    gw = _gw()
    out, ev = _udp_to_dns(gw, b"\x01\x02\x03")
    assert out == [] and ev == []
    assert gw.counters["drop_dns_query_malformed"] == 1
    out, ev = _udp_to_dns(gw, b"\xab\xcd" + b"\x01\x00" + b"\xff" * 40)
    assert ev == [] and len(out) == 1
    reply = bytes(out[0][UDP].payload)
    assert reply[:2] == b"\xab\xcd" and rcode(reply) == RCODE_FORMERR
    assert gw.counters["dns_query_formerr"] == 1
    out, ev = _udp_to_dns(gw, query())
    assert [type(e) for e in ev] == [DnsQuery] and gw.counters["dns_query_ok"] == 1


# --- the host side, DNS over TCP ----------------------------------------------------

def _answer(q: bytes) -> bytes:
    return build_response(q, [(TYPE_A, 30, socket.inet_aton("192.0.2.10"))], aa=True)


class Upstream:
    """A loopback resolver speaking UDP, TCP or both; records every message."""

    def __init__(self, udp=True, tcp=True, truncate_udp=False):
        self.messages = []
        self.udp = self.tcp = None
        self.truncate_udp = truncate_udp
        self.port = None
        self._want = (udp, tcp)

    async def start(self):
        # UDP and TCP on one port: the UDP socket takes a free port and keeps
        # it while TCP binds the same number; if another process holds that
        # TCP port (tests run beside others), try another one.
        for _ in range(50):
            try:
                return await self._start()
            except OSError as e:
                self.close()
                self.udp = self.tcp = None
                if e.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "no port free for UDP and TCP at once")

    async def _start(self):
        loop = asyncio.get_running_loop()
        udp, tcp = self._want
        self.port = 0
        if udp:
            up = self

            class P(asyncio.DatagramProtocol):
                def connection_made(self, t):
                    self.t = t

                def datagram_received(self, data, addr):
                    up.messages.append(("udp", data))
                    a = bytearray(_answer(data))
                    if up.truncate_udp:
                        a[2] |= TC >> 8
                    self.t.sendto(bytes(a), addr)
            self.udp, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
            self.port = self.udp.get_extra_info("sockname")[1]
        if tcp:
            async def serve(reader, writer):
                try:
                    while True:
                        (n,) = struct.unpack("!H", await reader.readexactly(2))
                        msg = await reader.readexactly(n)
                        self.messages.append(("tcp", msg))
                        writer.write(frame_tcp(_answer(msg)))
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                writer.close()
            self.tcp = await asyncio.start_server(serve, "127.0.0.1", self.port)
            self.port = self.tcp.sockets[0].getsockname()[1]
        return self

    def close(self):
        if self.udp:
            self.udp.close()
        if self.tcp:
            self.tcp.close()


class DnsClient:
    """The container's TCP connection to 10.0.2.3:53, segment by segment."""

    def __init__(self, guest, sport):
        self.g, self.sport = guest, sport

    def seg(self, flags, payload=b""):
        p = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=DNS_IP) / TCP(
            sport=self.sport, dport=53, flags=flags, seq=self.seq, ack=self.ack, window=65535,
            options=[("MSS", 1460)] if "S" in flags else [])
        self.g.send(p / Raw(payload) if payload else p)
        self.seq += len(payload) + (1 if "S" in flags or "F" in flags else 0)

    async def connect(self):
        self.seq, self.ack = 1000, 0
        self.seg("S")
        sa = await self.g.recv(lambda f: is_tcp(f) and f[TCP].dport == self.sport)
        assert sa[TCP].flags == "SA", sa[TCP].flags
        self.ack = sa[TCP].seq + 1
        self.seg("A")
        self.buf = b""

    async def recv_message(self):
        while True:
            if len(self.buf) >= 2:
                (n,) = struct.unpack("!H", self.buf[:2])
                if len(self.buf) >= 2 + n:
                    m, self.buf = self.buf[2:2 + n], self.buf[2 + n:]
                    return m
            f = await self.g.recv(lambda f: is_tcp(f) and f[TCP].dport == self.sport)
            if f[TCP].flags.R:
                return None
            data = bytes(f[TCP].payload)
            if data and f[TCP].seq == self.ack:
                self.buf += data
                self.ack += len(data)
                self.seg("A")

    async def recv_flags(self, flag):
        while True:
            f = await self.g.recv(lambda f: is_tcp(f) and f[TCP].dport == self.sport)
            if flag in str(f[TCP].flags):
                return f


def _with_upstream(body, **up_kw):
    async def outer(driver, guest):
        up = await Upstream(**up_kw).start()
        driver.attach_dns(hdns.DnsForwarder(driver, [("127.0.0.1", up.port)]))
        try:
            return await body(driver, guest, up)
        finally:
            up.close()
    return run(outer)


@pytest.mark.parametrize("kind", ["udp-only", "tcp-only", "both"])
def test_tcp_dns_relayed_message_by_message(kind):
    """Two pipelined queries in one segment: each reaches the upstream as one
    whole message (over TCP, or UDP where TCP is refused) and both answers
    come back framed."""
    kw = {"udp-only": dict(tcp=False), "tcp-only": dict(udp=False),
          "both": dict(truncate_udp=True)}[kind]

    async def body(driver, guest, up):
        c = DnsClient(guest, 41000)
        await c.connect()
        q1, q2 = query(id=1), query("db.usernet.test", id=2)
        c.seg("PA", frame_tcp(q1) + frame_tcp(q2))
        got = {(await c.recv_message())[:2], (await c.recv_message())[:2]}
        assert got == {b"\x00\x01", b"\x00\x02"}
        msgs = {m for _t, m in up.messages}
        assert msgs == {q1, q2}, up.messages
        if kind == "udp-only":
            assert {t for t, _m in up.messages} == {"udp"}
            assert driver.counters["dns_tcp_relayed_udp"] == 2
        else:
            assert {t for t, _m in up.messages} == {"tcp"}
            assert driver.counters["dns_tcp_relayed_tcp"] == 2
        c.seg("FA")
        await c.recv_flags("F")
    _with_upstream(body, **kw)


def test_tcp_dns_garbage_never_reaches_upstream():
    """Bytes that are not DNS: FORMERR where a header is readable, a reset
    where the stream is not DNS at all; the upstream sees nothing."""
    async def body(driver, guest, up):
        c = DnsClient(guest, 41001)
        await c.connect()
        junk = b"\xbe\xef" + b"\x01\x00" + b"\x00\x01" + b"\xff" * 50
        c.seg("PA", frame_tcp(junk))
        reply = await c.recv_message()
        assert reply[:2] == b"\xbe\xef" and rcode(reply) == RCODE_FORMERR
        # A response message: not a DNS client; the connection is reset.
        c.seg("PA", frame_tcp(bytes(DNS(id=9, qr=1, qd=DNSQR(qname="x.test")))))
        assert await c.recv_message() is None
        # A zero length prefix: bad framing, reset.
        c2 = DnsClient(guest, 41002)
        await c2.connect()
        c2.seg("PA", b"\x00\x00GET / HTTP/1.0\r\n\r\n")
        await c2.recv_flags("R")
        await asyncio.sleep(0.1)
        assert up.messages == []
        k = driver.counters
        assert k["dns_query_formerr"] == 1 and k["dns_tcp_closed_on_garbage"] == 1
        assert k["dns_tcp_bad_framing"] == 1
    _with_upstream(body)


def test_tcp_dns_local_names_answered_without_upstream():
    async def body(driver, guest, up):
        c = DnsClient(guest, 41003)
        await c.connect()
        c.seg("PA", frame_tcp(query("host.containers.internal", id=77)))
        a = DNS(await c.recv_message())
        assert a.id == 77 and a.an[0].rdata == "10.0.2.2"
        assert up.messages == [] and driver.counters["dns_tcp_local_answer"] == 1
    _with_upstream(body)


def test_tcp_dns_message_limit_then_fin(monkeypatch):
    monkeypatch.setattr(hdns, "DNS_TCP_MAX_MESSAGES", 3)

    async def body(driver, guest, up):
        c = DnsClient(guest, 41004)
        await c.connect()
        c.seg("PA", b"".join(frame_tcp(query(id=i)) for i in range(5)))
        ids = {(await c.recv_message())[:2] for _ in range(3)}
        assert ids == {b"\x00\x00", b"\x00\x01", b"\x00\x02"}
        await c.recv_flags("F")
        assert driver.counters["dns_tcp_message_limit"] == 1
        assert len(up.messages) == 3
    _with_upstream(body, tcp=False)


def test_tcp_dns_total_inflight_bound(monkeypatch):
    """Past the total of queries in flight, SERVFAIL at once (counted)."""
    monkeypatch.setattr(hdns, "DNS_TCP_MAX_INFLIGHT_TOTAL", 1)

    async def body(driver, guest, up):
        c = DnsClient(guest, 41005)
        await c.connect()
        c.seg("PA", frame_tcp(query(id=1)) + frame_tcp(query(id=2)))
        first = await c.recv_message()
        assert first[:2] == b"\x00\x02" and rcode(first) == 2     # SERVFAIL, at once
        second = await c.recv_message()
        assert second[:2] == b"\x00\x01" and rcode(second) == 0
        assert driver.counters["dns_tcp_servfail_too_many_inflight"] == 1
    _with_upstream(body, tcp=False)


def test_tcp_dns_reset_mid_query_frees_every_slot():
    """The container resets its connection while queries are at a silent
    upstream: the tasks are cancelled and the in-flight count drops to zero."""
    async def body(driver, guest, up):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))            # takes queries, never answers
        driver.dns.fixed = [silent.getsockname()]
        c = DnsClient(guest, 41006)
        await c.connect()
        c.seg("PA", b"".join(frame_tcp(query(id=i)) for i in range(3)))
        await asyncio.sleep(0.2)
        assert driver.dns.tcp_inflight == 3
        c.seg("R")
        for _ in range(50):
            await asyncio.sleep(0.02)
            if driver.dns.tcp_inflight == 0:
                break
        assert driver.dns.tcp_inflight == 0, sorted((k, v) for k, v in driver.counters.items() if v)
        silent.close()
    _with_upstream(body, tcp=False)


def test_tcp_dns_udp_only_upstream_truncated_answer_passed_on():
    async def body(driver, guest, up):
        c = DnsClient(guest, 41007)
        await c.connect()
        c.seg("PA", frame_tcp(query(id=9)))
        a = await c.recv_message()
        assert a[:2] == b"\x00\x09" and a[2] & (TC >> 8)
        assert driver.counters["dns_tcp_upstream_truncated"] == 1
    _with_upstream(body, tcp=False, truncate_udp=True)
