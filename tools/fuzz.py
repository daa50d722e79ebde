#!/usr/bin/env python3
"""Fuzz the stack at volume: hostile frames in, invariants checked after every step.

Theory of operation
-------------------
The target is the one the host driver drives: ``Gateway.receive_frame(frame,
now, csum_ok)`` after the virtio-net header is stripped exactly as
``HostDriver._on_readable`` strips it, then the driver's flush loop (write
``frames_out``, act on ``events_out`` until both are empty, report the TCP
backlog of the flows written to) and its timer (``handle_timer`` at
``get_timer()``). The host side is a fake (:class:`FakeHost`) that answers
every event plausibly: connects succeed, fail or hang, host data arrives and
is refused when the flow's queue is full, peers send EOF or reset, UDP and
echo replies come back, DNS upstreams answer, fail or stay silent, port
forwards open flows inward.

A *program* is a string of operations read from a byte source: a seed frame
(TCP, UDP, DNS, DHCP, ICMP, ARP, IPv6 with NDP/DHCPv6/extension headers and
fragments, VLAN; built with scapy at start) with a few mutations and maybe
its checksums fixed so the mutation gets past them; raw bytes; a segment
crafted in the window of a live TCP flow (what the container's own kernel
would send: the fuzz reaches every TCP state); a host-side action; a clock
step or jump (seconds to an hour). The byte source is either

* libFuzzer's input, through atheris (``--engine atheris``, coverage-guided:
  the stack and wire modules are instrumented, inputs that reach new edges
  are kept and mutated further); a fresh gateway per input; or
* a seeded ``random.Random`` (``--engine random``): one gateway lives for
  ``--epoch`` frames, so state piles up (flows to their limits, buffers full)
  the way a long hostile session would; used by the CI smoke test.

Invariants, checked after every operation (and the strict ones after a
"settle": the clock run two hours on, timer by timer, the host side silent):

* no exception escapes the gateway (every entry point is called bare);
* the timer never asks to run in the past after it ran (a spin);
* counts and buffers within their limits: flows per table, connects in
  flight, send queue and out-of-order bytes per TCP flow, reassembly bytes,
  neighbour tables and hold queues, DNS queries pending; the timer heap no
  bigger than a small multiple of the live timed things;
* no host socket outlives its flow and no connected flow lacks its socket;
* nothing outlives its timeout: after a settle there is no datagram flow,
  no DNS query pending, no partial datagram, no frame held for a neighbour,
  and every TCP flow left is one that legitimately waits for an
  application (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2) with no timer pending;
* memory: RSS sampled along the run must level off (``--rss-growth-mb``).

A failure raises :class:`InvariantError` (atheris: a crash, saved by
libFuzzer; random: reported with the step, the program bytes saved under
``--crash-dir`` for ``--replay``).

Usage::

    .venv/bin/python tools/fuzz.py --engine random --frames 20000 --seed 1
    .venv/bin/python tools/fuzz.py --engine atheris --frames 1000000 --corpus /tmp/fuzz-corpus
    .venv/bin/python tools/fuzz.py --coverage --frames 200000     # line coverage (needs `coverage`)
    .venv/bin/python tools/fuzz.py --replay crash-file

Scapy is imported only here (seeds); usernet never imports it.
"""

import argparse
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Imported lazily (after atheris's import hook is installed, when used).
Gateway = NetConfig = ev = None
tcpmod = arpmod = config = None
VNET_HDR_LEN = 10
_CSUM_DONE = 0


def _import_stack():
    global Gateway, NetConfig, ev, tcpmod, arpmod, config, VNET_HDR_LEN, _CSUM_DONE
    global build_tcp, build_tcp_options
    from usernet.stack import arp as arpmod_
    from usernet.stack import config as config_
    from usernet.stack import events as ev_
    from usernet.stack import tcp as tcpmod_
    from usernet.stack.config import NetConfig as NetConfig_
    from usernet.stack.gateway import Gateway as Gateway_
    from usernet.wire.frame import build_tcp as build_tcp_
    from usernet.wire.tcp import build_tcp_options as bto
    from usernet.wire.vnet import (VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                   VNET_HDR_LEN as VL)
    Gateway, NetConfig, ev, tcpmod, arpmod, config = (Gateway_, NetConfig_, ev_, tcpmod_,
                                                      arpmod_, config_)
    build_tcp, build_tcp_options = build_tcp_, bto
    VNET_HDR_LEN = VL
    _CSUM_DONE = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID


class InvariantError(AssertionError):
    pass


# ----------------------------------------------------------------- byte sources
class ByteSource:
    """Choices read from a byte string, front to back (libFuzzer's input, a
    replayed crash). Exhausted: every choice is its lowest value and
    ``done`` is set, which ends the program."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.done = False

    def _take(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        if len(b) < n:
            self.done = True
            b = b + bytes(n - len(b))
        return b

    def int_in_range(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        k = (span.bit_length() + 7) // 8
        return lo + int.from_bytes(self._take(k), "big") % (span + 1)

    def take_bytes(self, n: int) -> bytes:
        return self._take(n)


class RandomSource:
    """The same choices from a seeded RNG, recorded as the bytes a
    :class:`ByteSource` would need to replay them (``record``)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.record = bytearray()
        self.done = False

    def int_in_range(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        # Small values more often: they hit the interesting edges.
        r = self.rng.random()
        if r < 0.05:
            v = 0
        elif r < 0.1:
            v = span
        else:
            v = self.rng.randint(0, span)
        k = (span.bit_length() + 7) // 8
        self.record += v.to_bytes(k, "big")
        return lo + v

    def take_bytes(self, n: int) -> bytes:
        b = self.rng.randbytes(n)
        self.record += b
        return b


# ------------------------------------------------------------------------ seeds
GUEST_MAC = bytes.fromhex("525400123456")
GUEST_MAC_S = "52:54:00:12:34:56"
GW_MAC_S = "52:55:00:00:02:02"
GUEST4, GW4, DNS4 = "10.0.2.100", "10.0.2.2", "10.0.2.3"
GUEST6, GW6, DNS6 = "fd00::5054:ff:fe12:3456", "fd00::2", "fd00::3"
LL6 = "fe80::5054:ff:fe12:3456"


def build_seeds() -> list:
    """Real-looking frames of every kind the container sends, built with scapy."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dhcp6 import DHCP6_InfoRequest, DHCP6OptClientId, DHCP6OptOptReq
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
    from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RS,
                                    ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt,
                                    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                                    fragment6)
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Raw

    e = Ether(src=GUEST_MAC_S, dst=GW_MAC_S)
    bc = Ether(src=GUEST_MAC_S, dst="ff:ff:ff:ff:ff:ff")
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1000, 0)), ("NOP", None),
            ("WScale", 7)]
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (1010, 5))]
    seeds = []

    def add(p):
        seeds.append(bytes(p))

    # ARP
    add(bc / ARP(op=1, hwsrc=GUEST_MAC_S, psrc=GUEST4, pdst=GW4))
    add(bc / ARP(op=1, hwsrc=GUEST_MAC_S, psrc=GUEST4, pdst=GUEST4))
    add(e / ARP(op=2, hwsrc=GUEST_MAC_S, psrc=GUEST4, hwdst=GW_MAC_S, pdst=GW4))
    add(bc / ARP(op=1, hwsrc=GUEST_MAC_S, psrc=GUEST4, pdst=DNS4))
    for v6, (src, gw, dns) in ((False, (GUEST4, GW4, DNS4)), (True, (GUEST6, GW6, DNS6))):
        ip = (lambda **k: IPv6(src=src, **k)) if v6 else (lambda **k: IP(src=src, flags="DF", **k))
        # TCP to the host, to the DNS forwarder, to elsewhere (NAT)
        for dst, dport in ((gw, 80), (dns, 53), ("192.0.2.7" if not v6 else "2001:db8::7", 443)):
            add(e / ip(dst=dst) / TCP(sport=40000, dport=dport, flags="S", seq=1000,
                                      options=opts))
            add(e / ip(dst=dst) / TCP(sport=40000, dport=dport, flags="A", seq=1001, ack=5,
                                      options=ts))
            add(e / ip(dst=dst) / TCP(sport=40000, dport=dport, flags="PA", seq=1001, ack=5,
                                      options=ts) / Raw(b"GET / HTTP/1.0\r\n\r\n"))
            add(e / ip(dst=dst) / TCP(sport=40000, dport=dport, flags="FA", seq=1019, ack=5))
            add(e / ip(dst=dst) / TCP(sport=40000, dport=dport, flags="R", seq=1019))
        add(e / ip(dst=gw) / TCP(sport=40001, dport=80, flags="A", seq=1, ack=1,
                                 options=[("NOP", None), ("NOP", None),
                                          ("SAck", (100, 200, 300, 400))]))
        add(e / ip(dst=gw) / TCP(sport=40002, dport=80, flags="PA", seq=1, ack=1)
            / Raw(bytes(4000)))            # a GSO-sized segment
        # UDP: DNS queries, a datagram to the host, one elsewhere
        q = DNS(id=7, rd=1, qd=DNSQR(qname="example.test", qtype="AAAA" if v6 else "A"))
        add(e / ip(dst=dns) / UDP(sport=5353, dport=53) / q)
        add(e / ip(dst=dns) / UDP(sport=5354, dport=53)
            / DNS(id=8, rd=1, qd=DNSQR(qname="localhost", qtype="A")))
        for name, qt in (("host.containers.internal", "A"), ("host.usernet.internal", "AAAA"),
                         ("host.containers.internal", 255), ("HOST.usernet.internal.", "MX")):
            add(e / ip(dst=dns) / UDP(sport=5355, dport=53)
                / DNS(id=9, rd=1, qd=DNSQR(qname=name, qtype=qt)))
        add(e / ip(dst=gw) / UDP(sport=6000, dport=9999) / Raw(b"hello"))
        add(e / ip(dst="192.0.2.9" if not v6 else "2001:db8::9") / UDP(sport=6001, dport=7)
            / Raw(b"x" * 32))
        # fragments of a UDP datagram to the host
        big = e / ip(dst=gw) / UDP(sport=6002, dport=9999) / Raw(bytes(range(256)) * 12)
        if v6:
            frs = fragment6(IPv6(src=src, dst=gw) / IPv6ExtHdrFragment()
                            / UDP(sport=6002, dport=9999) / Raw(bytes(range(256)) * 12), 1280)
            for f in frs:
                add(e / f)
        else:
            for f in fragment(big[IP], fragsize=1000):
                add(e / f)
    # ICMP
    add(e / IP(src=GUEST4, dst=GW4) / ICMP(type=8, id=1, seq=1) / Raw(b"ping"))
    add(e / IP(src=GUEST4, dst="192.0.2.1") / ICMP(type=8, id=2, seq=1) / Raw(b"ping"))
    add(e / IP(src=GUEST4, dst=GW4) / ICMP(type=3, code=3) / IP(src=GW4, dst=GUEST4)
        / UDP(sport=53, dport=5353))
    add(e / IP(src=GUEST4, dst="10.0.2.77") / ICMP(type=8, id=3, seq=1))
    # DHCP
    for mt in ("discover", "request"):
        add(bc / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
            / BOOTP(chaddr=GUEST_MAC + bytes(10), xid=1234)
            / DHCP(options=[("message-type", mt), ("requested_addr", GUEST4),
                            ("server_id", GW4), ("param_req_list", [1, 3, 6, 15]), "end"]))
    # VLAN
    add(Ether(src=GUEST_MAC_S, dst=GW_MAC_S) / Dot1Q(vlan=5) / IP(src=GUEST4, dst=GW4)
        / TCP(sport=40003, dport=80, flags="S", options=opts))
    add(Ether(src=GUEST_MAC_S, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=5)
        / ARP(op=1, hwsrc=GUEST_MAC_S, psrc=GUEST4, pdst=GW4))
    # IPv6: NDP, DHCPv6, echo, extension headers
    mc = Ether(src=GUEST_MAC_S, dst="33:33:00:00:00:02")
    add(mc / IPv6(src=LL6, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S))
    add(Ether(src=GUEST_MAC_S, dst="33:33:ff:00:00:02")
        / IPv6(src=LL6, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=GW6)
        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S))
    add(Ether(src=GUEST_MAC_S, dst="33:33:ff:00:00:02")
        / IPv6(src="::", dst="ff02::1:ff12:3456", hlim=255) / ICMPv6ND_NS(tgt=GUEST6))
    add(e / IPv6(src=GUEST6, dst=GW6, hlim=255) / ICMPv6ND_NA(tgt=GUEST6, R=0, S=1, O=1))
    add(Ether(src=GUEST_MAC_S, dst="33:33:00:01:00:02") / IPv6(src=LL6, dst="ff02::1:2")
        / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=5)
        / DHCP6OptClientId() / DHCP6OptOptReq(reqopts=[23, 24]))
    add(e / IPv6(src=GUEST6, dst=GW6) / ICMPv6EchoRequest(id=1, seq=1, data=b"ping6"))
    add(e / IPv6(src=GUEST6, dst="2001:db8::1") / ICMPv6EchoRequest(id=2, seq=1))
    add(e / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / UDP(sport=6003, dport=9999) / Raw(b"ext"))
    add(e / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=1)
        / UDP(sport=6004, dport=9999))
    add(Ether(src=GUEST_MAC_S, dst=GW_MAC_S) / Dot1Q(vlan=7) / IPv6(src=GUEST6, dst=GW6)
        / TCP(sport=40004, dport=80, flags="S", options=opts))
    return seeds


# -------------------------------------------------------------------- checksums
def _ones(data) -> int:
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fix_checksums(f: bytearray) -> None:
    """Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum of a
    frame when its headers are consistent enough to find them, so a mutation
    deeper in the frame gets past the checks a real sender would pass."""
    off = 12
    if len(f) < 14:
        return
    et = f[12] << 8 | f[13]
    if et == 0x8100 and len(f) >= 18:
        et = f[16] << 8 | f[17]
        off = 16
    l3 = off + 2
    if et == 0x0800 and len(f) >= l3 + 20:
        ihl = (f[l3] & 15) * 4
        tot = f[l3 + 2] << 8 | f[l3 + 3]
        if ihl < 20 or len(f) < l3 + ihl:
            return
        f[l3 + 10:l3 + 12] = b"\0\0"
        c = ~_ones(f[l3:l3 + ihl]) & 0xFFFF
        f[l3 + 10:l3 + 12] = c.to_bytes(2, "big")
        proto = f[l3 + 9]
        end = min(len(f), l3 + tot)
        l4 = l3 + ihl
        if f[l3 + 6] & 0x3F or f[l3 + 7] or end < l4:   # a fragment: no L4 header here
            return
        pseudo = bytes(f[l3 + 12:l3 + 20]) + bytes([0, proto]) + (end - l4).to_bytes(2, "big")
        _fix_l4(f, proto, l4, end, pseudo, v6=False)
    elif et == 0x86DD and len(f) >= l3 + 40:
        plen = f[l3 + 4] << 8 | f[l3 + 5]
        proto = f[l3 + 6]
        end = min(len(f), l3 + 40 + plen)
        l4 = l3 + 40
        pseudo = bytes(f[l3 + 8:l3 + 40]) + (end - l4).to_bytes(4, "big") + bytes([0, 0, 0, proto])
        _fix_l4(f, proto, l4, end, pseudo, v6=True)


def _fix_l4(f, proto, l4, end, pseudo, v6) -> None:
    pos = {6: 16, 17: 6, 1: 2, 58: 2}.get(proto)
    if pos is None or end - l4 < pos + 2:
        return
    f[l4 + pos:l4 + pos + 2] = b"\0\0"
    ps = b"" if proto == 1 else pseudo
    c = ~_ones(ps + bytes(f[l4:end])) & 0xFFFF
    if proto == 17 and c == 0:
        c = 0xFFFF
    f[l4 + pos:l4 + pos + 2] = c.to_bytes(2, "big")


INTERESTING16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x5DC, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)


def mutate(src, seeds: list, frame: bytes) -> bytearray:
    f = bytearray(frame)
    for _ in range(src.int_in_range(0, 4)):
        kind = src.int_in_range(0, 6)
        n = len(f)
        if kind == 0 and n:
            f[src.int_in_range(0, n - 1)] = src.int_in_range(0, 255)
        elif kind == 1 and n:
            i = src.int_in_range(0, n - 1)
            f[i] ^= 1 << src.int_in_range(0, 7)
        elif kind == 2:
            del f[src.int_in_range(0, n):]
        elif kind == 3:
            i = src.int_in_range(0, n)
            f[i:i] = src.take_bytes(src.int_in_range(1, 64))
        elif kind == 4 and n >= 2:
            i = src.int_in_range(0, n - 2)
            v = INTERESTING16[src.int_in_range(0, len(INTERESTING16) - 1)]
            f[i:i + 2] = v.to_bytes(2, "big")
        elif kind == 5:
            other = seeds[src.int_in_range(0, len(seeds) - 1)]
            i = src.int_in_range(0, n)
            j = src.int_in_range(0, len(other))
            f[i:] = other[j:]
        elif kind == 6:
            # grow to a TSO-sized frame
            f += bytes(src.int_in_range(0, 3) * 20000)
    return f


# ----------------------------------------------------------------- the fake host
DNS_ANSWER = bytes.fromhex("0007818000010001000000000765786d706c650474657374000001000"
                           "1c00c000100010000003c00040a000001")


class FakeHost:
    """The host side, answering the stack's events as the real one would,
    with its choices read from the same byte source."""

    def __init__(self, gw, src, stats):
        self.gw = gw
        self.src = src
        self.stats = stats
        self.pending_connect = set()     # fids whose connect is in progress
        self.tcp = {}                    # fid -> dict(open socket state)
        self.udp = set()
        self.icmp = set()
        self.dns = {}                    # qid -> time asked
        self.written = set()
        self.inbound = set()
        h = {
            ev.TcpConnect: self.connect, ev.TcpConnectDns: self.connect,
            ev.TcpCancel: self.cancel, ev.TcpData: self.data, ev.TcpShutdown: self.shutdown,
            ev.TcpAbort: self.abort, ev.TcpClose: self.close, ev.TcpPause: self.pause,
            ev.TcpResume: self.resume, ev.TcpInboundConnected: self.inbound_connected,
            ev.TcpInboundRefused: self.inbound_refused,
            ev.UdpOpen: self.udp_open, ev.UdpSend: self.udp_send, ev.UdpClose: self.udp_close,
            ev.IcmpOpen: self.icmp_open, ev.IcmpSend: self.icmp_send,
            ev.IcmpClose: self.icmp_close, ev.DnsQuery: self.dns_query,
        }
        assert set(h) == set(ev.ALL_EVENTS), "the fake host must answer every event kind"
        self.handlers = h
        self.now = 0.0
        self.silent = False              # during a settle: the host side says nothing

    def choose(self, n: int) -> int:
        if self.silent:
            return 0
        return self.src.int_in_range(0, n - 1)

    # TCP
    def connect(self, e):
        c = self.choose(10)
        if c < 6:
            self._sock(e.fid)
            self.gw.tcp_connected(e.fid, self.now)
        elif c < 8:
            self.gw.tcp_refused(e.fid, self.now, ("refused", "unreachable", "timeout")[c - 6])
        else:
            self.pending_connect.add(e.fid)

    def _sock(self, fid):
        self.tcp[fid] = {"rx": 0, "paused": False, "held": b"", "backlog": 0, "shut": False}

    def cancel(self, e):
        self.pending_connect.discard(e.fid)

    def data(self, e):
        s = self.tcp.get(e.fid)
        if s is None:
            raise InvariantError(f"TcpData for flow {e.fid} with no host socket")
        s["rx"] += len(e.data)
        self.stats["host_rx_bytes"] += len(e.data)
        if self.choose(4) == 0:
            s["backlog"] = min(s["backlog"] + len(e.data), 1 << 22)
        self.written.add(e.fid)

    def shutdown(self, e):
        s = self.tcp.get(e.fid)
        if s is not None and self.choose(2) == 0:
            self.gw.tcp_host_eof(e.fid, self.now)

    def abort(self, e):
        self.tcp.pop(e.fid, None)

    def close(self, e):
        self.tcp.pop(e.fid, None)
        self.pending_connect.discard(e.fid)
        self.inbound.discard(e.fid)

    def pause(self, e):
        s = self.tcp.get(e.fid)
        if s is not None:
            s["paused"] = True

    def resume(self, e):
        s = self.tcp.get(e.fid)
        if s is None:
            return
        held = s["held"]
        if held:
            n = self.gw.tcp_host_data(e.fid, held, self.now)
            s["held"] = held[n:]
            if s["held"]:
                return
        s["paused"] = False

    def inbound_connected(self, e):
        if e.fid not in self.tcp:
            raise InvariantError(f"TcpInboundConnected for flow {e.fid} with no client socket")

    def inbound_refused(self, e):
        # the forwarder resets its client
        self.inbound.discard(e.fid)
        self.tcp.pop(e.fid, None)

    # UDP, ICMP, DNS
    def udp_open(self, e):
        self.udp.add(e.fid)

    def udp_send(self, e):
        if e.fid not in self.udp:
            raise InvariantError(f"UdpSend for flow {e.fid} with no host socket")
        c = self.choose(8)
        if c == 0:
            self.gw.udp_host_error(e.fid, e.data, self.now)
        elif c < 4:
            self.gw.udp_host_datagram(e.fid, e.data, self.now)

    def udp_close(self, e):
        self.udp.discard(e.fid)

    def icmp_open(self, e):
        self.icmp.add(e.fid)

    def icmp_send(self, e):
        c = self.choose(6)
        if c == 0:
            self.gw.icmp_host_unavailable(e.fid, e.seq, e.data, self.now)
        elif c < 4:
            self.gw.icmp_host_reply(e.fid, e.seq, e.data, self.now)

    def icmp_close(self, e):
        self.icmp.discard(e.fid)

    def dns_query(self, e):
        c = self.choose(6)
        if c == 0:
            self.gw.dns_failed(e.qid, self.now, "unreachable")
        elif c < 3:
            self.gw.dns_reply(e.qid, e.query[:2] + DNS_ANSWER[2:], self.now)
        else:
            self.dns[e.qid] = self.now

    # the driver's flush loop
    def flush(self):
        gw = self.gw
        frames, events = gw.frames_out, gw.events_out
        for _ in range(64):
            if frames:
                for item in frames:
                    self.stats["tx_frames"] += 1
                    # A TSO segment comes as (header, headers, payload): one frame.
                    check_frame_out(gw, item[0], item[1] if len(item) == 2
                                    else bytearray(b"".join(item[1:])))
                frames.clear()
            if events:
                batch = events[:]
                events.clear()
                for e in batch:
                    self.handlers[type(e)](e)
                continue
            if not self.written:
                break
            written, self.written = self.written, set()
            for fid in written:
                s = self.tcp.get(fid)
                if s is not None:
                    gw.tcp_host_backlog(fid, s["backlog"], self.now)
        else:
            raise InvariantError("flush did not settle in 64 rounds")

    # host-side actions chosen by the program
    def act(self):
        src, gw, now = self.src, self.gw, self.now
        kind = src.int_in_range(0, 9)
        if kind == 0 and self.pending_connect:
            fid = sorted(self.pending_connect)[src.int_in_range(0, len(self.pending_connect) - 1)]
            self.pending_connect.discard(fid)
            if src.int_in_range(0, 1):
                self._sock(fid)
                gw.tcp_connected(fid, now)
            else:
                gw.tcp_refused(fid, now, "refused")
        elif kind <= 4 and self.tcp:
            fid = sorted(self.tcp)[src.int_in_range(0, len(self.tcp) - 1)]
            s = self.tcp[fid]
            what = src.int_in_range(0, 5)
            if what <= 1 and not s["shut"]:
                size = (1, 100, 1448, 65536, 300000)[src.int_in_range(0, 4)]
                data = bytes([fid & 0xFF]) * size
                if s["paused"]:
                    s["held"] += data
                else:
                    n = gw.tcp_host_data(fid, data, now)
                    if n < len(data):
                        s["held"] += data[n:]
                        s["paused"] = True
            elif what == 2 and not s["shut"]:
                s["shut"] = True
                gw.tcp_host_eof(fid, now)
            elif what == 3:
                del self.tcp[fid]
                gw.tcp_host_reset(fid, now)
            else:
                s["backlog"] = (0, 0, 1000, 1 << 20)[src.int_in_range(0, 3)]
                gw.tcp_host_backlog(fid, s["backlog"], now)
        elif kind == 5 and self.udp:
            fid = sorted(self.udp)[src.int_in_range(0, len(self.udp) - 1)]
            size = (0, 10, 1472, 4000, 65507, 70000)[src.int_in_range(0, 5)]
            gw.udp_host_datagram(fid, bytes(size), now)
        elif kind == 6 and self.dns:
            qid = sorted(self.dns)[src.int_in_range(0, len(self.dns) - 1)]
            del self.dns[qid]
            if src.int_in_range(0, 1):
                gw.dns_reply(qid, src.take_bytes(src.int_in_range(0, 600)), now)
            else:
                gw.dns_failed(qid, now, "timeout")
        elif kind == 7:
            v6 = src.int_in_range(0, 1) and gw.config.enable_ipv6   # forwards: -6 only
            guest = gw.guest_ip6() if v6 else gw.config.guest_ip
            if guest is None:
                return
            port = (80, 22, 8080)[src.int_in_range(0, 2)]
            client = (bytes([127, 0, 0, 1]), None, bytes([192, 0, 2, 5]))[src.int_in_range(0, 2)]
            if client is not None and len(guest) == 16:
                client = bytes(15) + b"\1"
            if src.int_in_range(0, 1):
                fid = gw.tcp_open_inbound(guest, port, client, 50000 + src.int_in_range(0, 9), now)
                if fid is not None:
                    # the accepted client's socket exists from the start
                    self.inbound.add(fid)
                    self._sock(fid)
            else:
                r = gw.udp_inbound(client, 50000 + src.int_in_range(0, 9), guest, port,
                                   b"fwd", now)
                if r is not None:
                    self.udp.add(r[0])
        elif kind == 8 and self.icmp:
            fid = sorted(self.icmp)[src.int_in_range(0, len(self.icmp) - 1)]
            gw.icmp_host_reply(fid, src.int_in_range(0, 65535), b"pong", now)
        elif kind == 9:
            # the backlog of every written flow drains
            for s in self.tcp.values():
                s["backlog"] = 0
            for fid in list(self.tcp):
                gw.tcp_host_backlog(fid, 0, now)


# -------------------------------------------------------------------- invariants
OVERSIZE = {}      # (family, protocol, ICMP type or first L4 byte, MTU class) -> frames
STRICT_MTU = False


def check_frame_out(gw, hdr, f) -> None:
    """A frame the stack hands the TAP: the right header, no bigger than the
    link carries, and (unless its checksum is left to the kernel) every
    checksum right, recomputed here independently of usernet.wire."""
    if len(hdr) != VNET_HDR_LEN:
        raise InvariantError(f"vnet header of {len(hdr)} bytes")
    f = bytes(f)
    gso = hdr[1]
    limit = 14 + (65535 if gso else gw.config.mtu)
    if len(f) > limit:
        # A failure on any link of 576 bytes or more (every IPv4 host takes
        # 576-byte datagrams); below that some answers cannot fit (a DHCP
        # reply, an ICMP error's quote): known and left alone
        # (docs/reliability.md), counted by kind and reported;
        # --strict-mtu makes them failures too.
        et = f[12:14].hex()
        v4 = et == "0800"
        kind = ("ipv4" if v4 else "ipv6", f[23] if v4 else f[20], f[34] if v4 else f[54],
                "mtu<576" if gw.config.mtu < 576 else "mtu>=576")
        OVERSIZE[kind] = OVERSIZE.get(kind, 0) + 1
        if STRICT_MTU or gw.config.mtu >= 576:
            raise InvariantError(f"frame of {len(f)} bytes out (limit {limit}, gso {gso}): "
                                 f"{f[:64].hex()}")
    if len(f) < 14:
        raise InvariantError(f"runt frame out: {f.hex()}")
    if hdr[0] == 0:                        # plain: fully checksummed
        fixed = bytearray(f)
        fix_checksums(fixed)
        if fixed != f:
            raise InvariantError(f"bad checksum in a frame out: {f[:80].hex()}")


def buffered_bytes(gw, host) -> int:
    n = gw.reasm.bytes_held
    for f in gw.flows.tcp.by_id.values():
        n += len(f.conn._sndbuf) + f.conn._ooo_bytes
    for nc in (gw.neigh, gw.neigh6):
        for h in nc.held.values():
            n += sum(len(e[1]) for e in h.frames)
    n += sum(len(q[2]) for q in gw.dns_pending.values())
    return n


def check(gw, host, now, stats) -> None:
    cfg = gw.config
    fl = gw.flows

    def bad(msg):
        raise InvariantError(msg)

    if len(fl.tcp) > cfg.max_tcp_flows or len(fl.udp) > cfg.max_udp_flows \
            or len(fl.icmp) > cfg.max_icmp_flows:
        bad(f"flow table over its limit: tcp={len(fl.tcp)} udp={len(fl.udp)} icmp={len(fl.icmp)}")
    connecting = sum(1 for f in fl.tcp.by_id.values() if f.connecting)
    if connecting != fl.tcp_connecting or connecting > cfg.max_tcp_connects:
        bad(f"connects in flight: counted {fl.tcp_connecting}, flows say {connecting}")
    for t in (fl.tcp, fl.udp, fl.icmp):
        if len(t.by_key) != len(t.by_id):
            bad(f"flow table by_key {len(t.by_key)} != by_id {len(t.by_id)}")
        for fid, f in t.by_id.items():
            if t.by_key.get(f.key) is not f:
                bad(f"flow {fid} not found by its key")
    for fid, f in fl.tcp.by_id.items():
        c = f.conn
        if c.closed:
            bad(f"closed connection {fid} still in the table")
        if len(c._sndbuf) > c.snd_buf:
            bad(f"flow {fid}: send queue {len(c._sndbuf)} > {c.snd_buf}")
        if c._ooo_bytes > c.rcv_buf or len(c._ooo) > tcpmod.OOO_MAX_PIECES:
            bad(f"flow {fid}: out-of-order {c._ooo_bytes} bytes / {len(c._ooo)} pieces")
        if c._ooo_bytes != sum(len(d) for _s, d in c._ooo):
            bad(f"flow {fid}: out-of-order byte count wrong")
        t = f.deadline()
        if t is not None and t <= now:
            bad(f"flow {fid} ({c.state}): deadline {t} already passed at {now}")
        if t is not None and (f.armed is None or f.armed > t):
            bad(f"flow {fid} ({c.state}): deadline {t} has no timer (armed {f.armed})")
        if f.connecting and fid in host.tcp:
            bad(f"flow {fid} connecting but the host has its socket")
        if not f.connecting and c.state not in ("LISTEN", "SYN_SENT") and fid not in host.tcp:
            bad(f"flow {fid} ({c.state}) past its connect has no host socket")
    for fid in host.tcp:
        if fid not in fl.tcp.by_id:
            bad(f"host socket of flow {fid} outlives its flow")
    for fid in host.udp:
        if fid not in fl.udp.by_id:
            bad(f"host UDP socket of flow {fid} outlives its flow")
    for fid in host.icmp:
        if fid not in fl.icmp.by_id:
            bad(f"host ICMP socket of flow {fid} outlives its flow")
    for t, socks in ((fl.udp, host.udp), (fl.icmp, host.icmp)):
        for fid, f in t.by_id.items():
            if f.deadline is None or f.deadline <= now:
                bad(f"datagram flow {fid} past its idle deadline {f.deadline} at {now}")
            if f.armed is None or f.armed > f.deadline:
                bad(f"datagram flow {fid} has no timer at or before its deadline")
            if fid not in socks:
                bad(f"datagram flow {fid} has no host socket")
    if gw.reasm.bytes_held != sum(p.size for p in gw.reasm.partials.values()):
        bad("reassembly byte count wrong")
    if gw.reasm.bytes_held > gw.reasm.max_bytes or len(gw.reasm.partials) > gw.reasm.max_datagrams:
        bad("reassembly over its limits")
    for p in gw.reasm.partials.values():
        if p.deadline <= now:
            bad(f"partial datagram past its deadline {p.deadline} at {now}")
    for nc in (gw.neigh, gw.neigh6):
        if len(nc.table) > nc.max_entries:
            bad("neighbour table over its limit")
        for ip, h in nc.held.items():
            if len(h.frames) > nc.hold_max:
                bad("hold queue over its limit")
            if h.deadline <= now:
                bad(f"hold for {ip.hex()} past its retry deadline")
    if len(gw.dns_pending) > config.DNS_MAX_PENDING:
        bad("DNS queries pending over the limit")
    for qid in gw.dns_pending:
        asked = host.dns.get(qid)
        if asked is not None and asked + config.DNS_QUERY_TIMEOUT < now:
            bad(f"DNS query {qid} pending past its timeout")
    d = gw.get_timer()
    if d is not None and d <= now:
        bad(f"timer due at {d} left behind at {now}")
    live = (len(fl.tcp) + len(fl.udp) + len(fl.icmp) + len(gw.dns_pending)
            + len(gw.neigh.held) + len(gw.neigh6.held) + 4)
    heap = len(gw.timers)
    stats["heap_max"] = max(stats["heap_max"], heap)
    if heap > 8 * live + 256:
        bad(f"timer heap {heap} entries for {live} live timed things")
    b = buffered_bytes(gw, host)
    stats["buffered_max"] = max(stats["buffered_max"], b)
    per_flow = tcpmod.SND_BUF + tcpmod.RCV_BUF
    limit = (len(fl.tcp) * per_flow + config.FRAG_MAX_BYTES
             + (len(gw.neigh.held) + len(gw.neigh6.held)) * arpmod.HOLD_MAX * 70000
             + config.DNS_MAX_PENDING * 65536)
    if b > limit:
        bad(f"buffered {b} bytes over the bound {limit}")


WAITING_STATES = frozenset(("ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_2"))
SETTLE_SECONDS = 7200.0


def settle(gw, host, now, stats) -> float:
    """Run the clock two hours on, timer by timer, the host side silent;
    then everything with a timeout must be gone."""
    host.silent = True
    end = now + SETTLE_SECONDS
    for _ in range(100000):
        d = gw.get_timer()
        if d is None or d > end:
            break
        now = max(now, d)
        host.now = now
        gw.handle_timer(now)
        host.flush()
        d2 = gw.get_timer()
        if d2 is not None and d2 <= now:
            raise InvariantError(f"timer spin during settle: {d2} <= {now}")
    else:
        raise InvariantError("settle did not finish in 100000 timer runs")
    now = end
    host.now = now
    gw.handle_timer(now)
    host.flush()
    host.silent = False
    fl = gw.flows
    left = []
    if len(fl.udp) or len(fl.icmp):
        left.append(f"{len(fl.udp)} UDP / {len(fl.icmp)} ICMP flows")
    if gw.dns_pending:
        left.append(f"{len(gw.dns_pending)} DNS queries")
    if gw.reasm.partials:
        left.append(f"{len(gw.reasm.partials)} partial datagrams")
    if gw.neigh.held or gw.neigh6.held:
        left.append("frames held for a neighbour")
    for fid, f in fl.tcp.by_id.items():
        c = f.conn
        if c.state not in WAITING_STATES or c.get_timer() is not None or f.connecting:
            left.append(f"TCP flow {fid} in {c.state} (timer {c.get_timer()}, "
                        f"unacked {c.snd_max - c.snd_una}, queued {len(c._sndbuf)})")
            break
    if left:
        raise InvariantError("outlived its timeout after a 2-hour settle: " + "; ".join(left))
    stats["settles"] += 1
    stats["tcp_waiting_after_settle"] += len(fl.tcp)
    check(gw, host, now, stats)
    return now


# ----------------------------------------------------------------------- driver
class Harness:
    """One gateway and its fake host, fed operations from a byte source."""

    def __init__(self, src, seeds, stats, *, offload=None, ipv6=True):
        self.src = src
        self.seeds = seeds
        self.stats = stats
        if offload is None:
            offload = bool(src.int_in_range(0, 1))
        mtu = (1500, 1500, 65520, 1280, 576, 68)[src.int_in_range(0, 5)]
        small = src.int_in_range(0, 3) > 0
        cfg = NetConfig(enable_ipv6=ipv6 and mtu >= 1280, mtu=mtu,
                        host_loopback=bool(src.int_in_range(0, 3)),
                        enable_dns=bool(src.int_in_range(0, 5)),
                        enable_dhcp=bool(src.int_in_range(0, 5)),
                        max_tcp_flows=64 if small else config.MAX_TCP_FLOWS,
                        max_udp_flows=64 if small else config.MAX_UDP_FLOWS,
                        max_icmp_flows=16 if small else config.MAX_ICMP_FLOWS,
                        max_tcp_connects=16 if small else config.MAX_TCP_CONNECTS_IN_FLIGHT)
        self.gw = Gateway(cfg, seed=1, offload=offload)
        self.host = FakeHost(self.gw, src, stats)
        self.now = self.host.now = 1000.0

    def feed(self, frame: bytes, vnet: bytes) -> None:
        """The driver's read path: strip the virtio-net header, feed the frame."""
        data = vnet + frame
        self.stats["frames"] += 1
        if len(data) < VNET_HDR_LEN:
            return
        csum_ok = bool(data[0] & _CSUM_DONE)
        self.gw.receive_frame(memoryview(data)[VNET_HDR_LEN:], self.now, csum_ok)

    def advance(self, dt: float) -> None:
        self.now += dt
        self.host.now = self.now
        d = self.gw.get_timer()
        if d is not None and d <= self.now:
            # The driver's timer: one handle_timer at the deadline it armed
            # (or now, when the clock jumped past it).
            self.gw.handle_timer(self.now)

    def reflect(self) -> bytes | None:
        """A segment the container's kernel could send on a live flow."""
        src = self.src
        flows = list(self.gw.flows.tcp.by_id.values())
        if not flows:
            return None
        f = flows[src.int_in_range(0, len(flows) - 1)]
        c = f.conn
        flags = (0x10, 0x18, 0x11, 0x04, 0x14, 0x02, 0x12, 0x19)[src.int_in_range(0, 7)]
        size = (0, 0, 1, 100, 1448, 20000, 65000)[src.int_in_range(0, 6)]
        seq = (c.rcv_nxt + (0, 0, 0, 1, 1448, 100000, -1, -100)[src.int_in_range(0, 7)]) & 0xFFFFFFFF
        lo, hi = c.snd_una, c.snd_max
        ack = (lo, hi, (lo + hi) // 2, hi + 5, lo - 5)[src.int_in_range(0, 4)] & 0xFFFFFFFF
        win = (0, 1, 512, 65535)[src.int_in_range(0, 3)]
        opts = b""
        o = src.int_in_range(0, 3)
        if o == 1:
            opts = build_tcp_options(None, None, False, (int(self.now * 1000) & 0xFFFFFFFF, 0),
                                     None)
        elif o == 2:
            a = c.snd_una & 0xFFFFFFFF
            opts = build_tcp_options(None, None, False, None,
                                     (((a + 1000) & 0xFFFFFFFF, (a + 3000) & 0xFFFFFFFF),))
        elif o == 3 and flags & 0x02:
            opts = build_tcp_options(src.int_in_range(0, 1500), src.int_in_range(0, 15), True,
                                     None, None)
        mac = GUEST_MAC
        frame = build_tcp(self.gw.mac, mac, f.guest_ip, f.remote_ip, f.guest_port,
                          f.remote_port, seq, ack, flags, win, opts, bytes(size))
        return bytes(frame)

    def step(self) -> None:
        """One operation."""
        src = self.src
        op = src.int_in_range(0, 15)
        vnet = bytes(VNET_HDR_LEN)
        if op <= 6:
            frame = self.seeds[src.int_in_range(0, len(self.seeds) - 1)]
            f = mutate(src, self.seeds, frame)
            if src.int_in_range(0, 3):
                fix_checksums(f)
            if src.int_in_range(0, 2) == 0:
                vnet = bytes([1]) + bytes(VNET_HDR_LEN - 1)   # NEEDS_CSUM
            self.feed(bytes(f), vnet)
        elif op == 7:
            self.feed(src.take_bytes(src.int_in_range(0, 200)), vnet)
        elif op <= 10:
            f = self.reflect()
            if f is not None:
                if src.int_in_range(0, 1):
                    vnet = bytes([1]) + bytes(VNET_HDR_LEN - 1)
                self.feed(f, vnet)
        elif op <= 12:
            self.host.act()
        elif op == 13:
            self.advance(src.int_in_range(0, 500) / 1000.0)
        elif op == 14:
            self.advance(float((1, 5, 11, 61, 91, 130, 700, 3600)[src.int_in_range(0, 7)]))
        else:
            # the timer fires exactly at its deadline
            d = self.gw.get_timer()
            if d is not None:
                self.advance(max(0.0, d - self.now))
        self.host.flush()
        d = self.gw.get_timer()
        if d is not None and d <= self.now:
            # The driver re-arms and the loop runs it at once: fine once.
            self.gw.handle_timer(self.now)
            self.host.flush()
        check(self.gw, self.host, self.now, self.stats)


def new_stats() -> dict:
    return {"frames": 0, "tx_frames": 0, "host_rx_bytes": 0, "heap_max": 0, "buffered_max": 0,
            "settles": 0, "tcp_waiting_after_settle": 0, "programs": 0}


def run_program(data: bytes, seeds, stats, max_ops=200) -> None:
    """One libFuzzer input (or a replayed crash): a fresh gateway, the ops, a settle."""
    src = ByteSource(data)
    h = Harness(src, seeds, stats)
    for _ in range(max_ops):
        if src.done:
            break
        h.step()
    settle(h.gw, h.host, h.now, stats)
    stats["programs"] += 1


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_random(frames: int, seed: int, seeds, *, epoch=20000, settle_every=2000,
               crash_dir=None, report_every=100000, rss_growth_mb=None, quiet=False) -> dict:
    """Persistent gateways of ``epoch`` frames each, fed from a seeded RNG;
    a settle every ``settle_every`` frames. Raises InvariantError (or the
    escaped exception) on the first failure, after saving the program."""
    stats = new_stats()
    t0 = time.process_time()
    rss = []
    k = 0
    while stats["frames"] < frames:
        src = RandomSource(seed * 1000003 + k)
        k += 1
        h = Harness(src, seeds, stats)
        start = stats["frames"]
        next_settle = start + settle_every
        try:
            while stats["frames"] - start < epoch and stats["frames"] < frames:
                h.step()
                if stats["frames"] >= next_settle:
                    h.now = settle(h.gw, h.host, h.now, stats)
                    next_settle = stats["frames"] + settle_every
            settle(h.gw, h.host, h.now, stats)
        except BaseException:
            if crash_dir:
                os.makedirs(crash_dir, exist_ok=True)
                path = os.path.join(crash_dir, f"crash-seed{seed}-prog{k - 1}")
                with open(path, "wb") as fh:
                    fh.write(bytes(src.record))
                print(f"fuzz: failure in program {k - 1}; replay with --replay {path}",
                      file=sys.stderr)
            raise
        stats["programs"] += 1
        if report_every and stats["frames"] // report_every != start // report_every:
            rss.append((stats["frames"], rss_mb()))
            if not quiet:
                print(f"fuzz: {stats['frames']} frames, {stats['programs']} gateways, "
                      f"cpu {time.process_time() - t0:.0f}s, rss {rss[-1][1]:.1f} MB",
                      file=sys.stderr, flush=True)
    stats["cpu_s"] = time.process_time() - t0
    stats["rss_mb"] = rss
    if rss_growth_mb is not None and len(rss) >= 3:
        grew = rss[-1][1] - rss[len(rss) // 3][1]
        if grew > rss_growth_mb:
            raise InvariantError(f"RSS grew {grew:.1f} MB after the first third of the run")
    return stats


def coverage_run(frames: int, seed: int, corpus: str | None) -> None:
    import coverage
    cov = coverage.Coverage(source=[os.path.join(ROOT, "usernet", "stack"),
                                    os.path.join(ROOT, "usernet", "wire")])
    cov.start()
    _import_stack()
    seeds = build_seeds()
    stats = run_random(frames, seed, seeds, quiet=True)
    if corpus and os.path.isdir(corpus):
        for name in sorted(os.listdir(corpus)):
            with open(os.path.join(corpus, name), "rb") as fh:
                run_program(fh.read(), seeds, stats)
    cov.stop()
    print(f"coverage over {stats['frames']} frames ({stats['programs']} programs):")
    cov.report(show_missing=False, skip_covered=False)


def write_seed_corpus(corpus: str, seeds, n=64) -> None:
    """Programs from the random engine, recorded as bytes libFuzzer starts from."""
    os.makedirs(corpus, exist_ok=True)
    stats = new_stats()
    for i in range(n):
        src = RandomSource(7000 + i)
        h = Harness(src, seeds, stats)
        for _ in range(40):
            h.step()
        with open(os.path.join(corpus, f"seed-{i:03d}"), "wb") as fh:
            fh.write(bytes(src.record))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=("atheris", "random"), default=None)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", default=None, help="atheris: corpus directory")
    ap.add_argument("--crash-dir", default="/tmp/usernet-fuzz-crashes")
    ap.add_argument("--replay", default=None, help="run one saved program")
    ap.add_argument("--coverage", action="store_true",
                    help="random engine under coverage.py (plus --corpus replayed)")
    ap.add_argument("--rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--strict-mtu", action="store_true",
                    help="a frame out bigger than a link MTU below 576 is a failure too")
    args, rest = ap.parse_known_args(argv)
    global STRICT_MTU
    STRICT_MTU = args.strict_mtu

    if args.coverage:
        coverage_run(args.frames, args.seed, args.corpus)
        return 0
    if args.replay:
        _import_stack()
        seeds = build_seeds()
        with open(args.replay, "rb") as fh:
            data = fh.read()
        stats = new_stats()
        # a saved random-engine program replays as one long program
        src = ByteSource(data)
        h = Harness(src, seeds, stats)
        while not src.done:
            h.step()
        settle(h.gw, h.host, h.now, stats)
        print(f"replayed {stats['frames']} frames without failure")
        return 0

    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "random":
        _import_stack()
        seeds = build_seeds()
        stats = run_random(args.frames, args.seed, seeds, crash_dir=args.crash_dir,
                           rss_growth_mb=args.rss_growth_mb)
        print(f"fuzz (random): {stats['frames']} frames, {stats['programs']} gateways, "
              f"{stats['settles']} settles, {stats['tx_frames']} frames out, "
              f"cpu {stats['cpu_s']:.0f}s, heap max {stats['heap_max']}, "
              f"buffered max {stats['buffered_max']} B, rss {stats['rss_mb']}")
        print(f"frames out bigger than the MTU, by kind: {OVERSIZE}")
        return 0

    import atheris
    with atheris.instrument_imports(include=["usernet"]):
        _import_stack()
    seeds = build_seeds()
    stats = new_stats()
    corpus = args.corpus or "/tmp/usernet-fuzz-corpus"
    if not os.path.isdir(corpus) or not os.listdir(corpus):
        write_seed_corpus(corpus, seeds)
    t0 = time.process_time()
    last = [0]

    def one_input(data: bytes) -> None:
        run_program(data, seeds, stats)
        if stats["frames"] - last[0] >= 100000:
            last[0] = stats["frames"]
            print(f"fuzz: {stats['frames']} frames, {stats['programs']} inputs, "
                  f"cpu {time.process_time() - t0:.0f}s, rss {rss_mb():.1f} MB",
                  file=sys.stderr, flush=True)
        if stats["frames"] >= args.frames:
            print(f"fuzz (atheris): {stats['frames']} frames, {stats['programs']} inputs, "
                  f"{stats['settles']} settles, cpu {time.process_time() - t0:.0f}s, "
                  f"heap max {stats['heap_max']}, buffered max {stats['buffered_max']} B",
                  flush=True)
            print(f"frames out bigger than the MTU, by kind: {OVERSIZE}", flush=True)
            os._exit(0)

    atheris.Setup([sys.argv[0], "-max_len=8192", f"-artifact_prefix={args.crash_dir}/"]
                  + rest + [corpus], one_input)
    os.makedirs(args.crash_dir, exist_ok=True)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
