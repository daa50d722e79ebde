"""usernet.wire: golden bytes, cross-checks against scapy and dpkt, builders, checksums.

Three kinds of test, each guarding a different promise:

* golden frames written out by hand in hex (one line per header field group),
  parsed by ``parse_frame`` with every ``P_*`` field asserted: the layout is
  what the RFCs say, independent of any other library;
* Hypothesis properties: frames built by scapy with generated fields parse to
  the same fields with usernet, scapy and dpkt; frames built by usernet are
  accepted by scapy with the checksums scapy itself computes; build -> parse
  -> build round trips are byte-identical;
* the checksum helpers against a word-by-word reference and against scapy.

The "never raises anything but ParseError" invariant and truncation are in
``test_wire_fuzz.py``.
"""

import ipaddress
import re
import struct

import dpkt
import pytest
from hypothesis import assume, given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum, in4_pseudoheader
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, in6_chksum,
                                in6_pseudoheader)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from usernet.wire import ParseError
from usernet.wire.arp import ARP_REPLY, ARP_REQUEST, parse_arp
from usernet.wire.checksum import checksum, ones_sum, pseudo_sum_v4, pseudo_sum_v6
from usernet.wire.ether import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from usernet.wire.frame import (
    P_ACK, P_DPORT, P_DST, P_DST_MAC, P_END, P_ETHERTYPE, P_FLAGS, P_FRAG, P_L3, P_L4,
    P_OPTS, P_PAYLOAD, P_PROTO, P_SEQ, P_SPORT, P_SRC, P_SRC_MAC, P_TTL, P_WINDOW, build_arp,
    build_icmp, build_ipv4_fragment, build_tcp, build_udp, ipv4_header_ok, l4_checksum_ok,
    parse_frame,
)
from usernet.wire.tcp import (ACK, FIN, NO_OPTIONS, PSH, SYN, TcpOptions, build_tcp_options,
                              parse_tcp_options)

PROPERTY = settings(max_examples=300, deadline=None)


def h(text: str) -> bytes:
    """Bytes from hex written one field group per line; ``#`` starts a comment."""
    return bytes.fromhex("".join(re.sub(r"#.*", "", line) for line in text.splitlines()))


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


GUEST_MAC = h("52 54 00 12 34 56")
GW_MAC = h("52 55 0a 00 02 02")
GUEST4, GW4, DNS4 = ip("10.0.2.100"), ip("10.0.2.2"), ip("10.0.2.3")
GUEST6, GW6 = ip("fd00::64"), ip("fd00::2")


# ---------------------------------------------------------------------------
# Golden frames. The checksums in them are the real ones (each test also
# asserts that l4_checksum_ok / ipv4_header_ok agree).

ETH_LLDP = h("""
01 80 c2 00 00 0e  52 54 00 12 34 56  88 cc   # dst, src, EtherType LLDP
02 07 04 52 54 00 12 34 56                    # chassis-id TLV (not parsed)
""")

VLAN_UDP = h("""
52 55 0a 00 02 02  52 54 00 12 34 56          # dst, src
81 00  a0 64  08 00                           # 802.1Q: TPID, PCP 5 VID 100, inner EtherType IPv4
45 00 00 20  00 01 40 00  40 11 22 66         # v4 IHL 5, len 32, id 1, DF, TTL 64, UDP, csum
0a 00 02 64  0a 00 02 03                      # 10.0.2.100 -> 10.0.2.3
14 e9 00 35  00 0c 0d 8b                      # 5353 -> 53, len 12, csum
61 62 63 64                                   # "abcd"
""")

ARP_REQ = h("""
ff ff ff ff ff ff  52 54 00 12 34 56  08 06   # broadcast, src, ARP
00 01  08 00  06 04  00 01                    # Ethernet/IPv4, hlen 6, plen 4, request
52 54 00 12 34 56  0a 00 02 64                # sha, spa 10.0.2.100
00 00 00 00 00 00  0a 00 02 02                # tha, tpa 10.0.2.2
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00   # padding to 60 bytes
""")

IPV4_OPTIONS_UDP = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
46 00 00 22  12 34 00 00  01 11 fa 2d         # IHL 6 (24 bytes), len 34, id 0x1234, TTL 1, UDP
0a 00 02 64  0a 00 02 02
94 04 00 00                                   # option: Router Alert (RFC 2113)
d4 31 04 d2  00 0a a6 07                      # 54321 -> 1234, len 10
68 69                                         # "hi"
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00   # Ethernet padding
""")

IPV4_FRAGMENT = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 24  ab cd 20 b9  40 11 95 dd         # len 36, id 0xabcd, MF + offset 185 (1480 B), UDP
0a 00 02 64  0a 00 02 02
66 72 61 67 6d 65 6e 74  2d 64 61 74 61 2d 31 36   # "fragment-data-16" (not a UDP header)
""")

IPV6_EXT_FRAGMENT = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  86 dd
60 00 00 00  00 28  00  40                    # v6, payload len 40, next: hop-by-hop, hlim 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02
3c 00  01 04 00 00 00 00                      # hop-by-hop: next dest-opts, len 8, PadN
2c 00  01 04 00 00 00 00                      # dest-opts: next fragment, len 8, PadN
11 00  00 01  de ad be ef                     # fragment: next UDP, offset 0, M=1, id 0xdeadbeef
75 64 70 20 68 64 72 2b  66 69 72 73 74 2d 38 42   # first fragment's data
""")

IPV6_EXT_ATOMIC_UDP = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  86 dd
60 00 00 00  00 24  00  40                    # payload len 36, next: hop-by-hop
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02
3c 00  01 04 00 00 00 00                      # hop-by-hop -> dest-opts
2c 00  01 04 00 00 00 00                      # dest-opts -> fragment
11 00  00 00  00 00 00 2a                     # atomic fragment (offset 0, M=0) -> UDP
13 88 13 89  00 0c 47 06                      # 5000 -> 5001, len 12
76 36 21 21                                   # "v6!!"
""")

ICMP4_ECHO = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 24  00 02 00 00  40 01 62 72         # len 36, id 2, TTL 64, ICMP
0a 00 02 64  0a 00 02 02
08 00 32 22  12 34 00 01                      # echo request, csum, id 0x1234, seq 1
75 73 65 72 64 61 74 61                       # "userdata"
""")

ICMP6_ECHO = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  86 dd
60 00 00 00  00 0c  3a  40                    # payload len 12, next ICMPv6, hlim 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02
80 00 e7 89  be ef 00 07                      # echo request, csum, id 0xbeef, seq 7
70 69 6e 67                                   # "ping"
""")

UDP4_DNS = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 29  00 03 40 00  40 11 22 5b         # len 41, id 3, DF, UDP
0a 00 02 64  0a 00 02 03
c3 50 00 35  00 15 77 09                      # 50000 -> 53, len 21
ab cd 01 00 00 01 00 00 00 00 00 00 00        # a DNS header (13 bytes, odd on purpose)
""")

TCP4_ALL_OPTIONS = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 4c  00 04 40 00  40 06 22 43         # len 76, TCP
0a 00 02 64  0a 00 02 02
9c 40 01 bb                                   # 40000 -> 443
01 02 03 04  a0 b0 c0 d0                      # seq, ack
e0 12  fa f0  ff 04  00 00                    # offset 14 (56 B), SYN|ACK, window 64240, csum, urg
02 04 05 b4                                   # MSS 1460
01                                            # NOP
03 03 07                                      # window scale 7
04 02                                         # SACK permitted
08 0a 00 00 00 01 00 00 00 02                 # timestamps 1, 2
05 0a 00 00 10 00 00 00 20 00                 # SACK block [0x1000, 0x2000)
fe 04 be ef                                   # unknown kind 254 (experimental), length 4: skipped
00 00                                         # EOL, padding
""")

TCP4_TS_SACK3 = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 54  00 05 40 00  40 06 22 3a         # len 84
0a 00 02 64  0a 00 02 02
9c 40 01 bb  00 00 00 64  00 00 00 c8         # 40000 -> 443, seq 100, ack 200
f0 10  01 f6  f2 d5  00 00                    # offset 15 (60 B), ACK, window 502
01 01 08 0a  11 11 11 11  22 22 22 22         # NOP NOP TS 0x11111111 0x22222222
01 01 05 1a                                   # NOP NOP SACK, 3 blocks
00 00 01 00 00 00 02 00  00 00 03 00 00 00 04 00  00 00 05 00 00 00 06 00
64 61 74 61                                   # "data"
""")

TCP4_TS = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  08 00
45 00 00 39  00 06 40 00  40 06 22 54         # len 57
0a 00 02 64  0a 00 02 02
9c 40 01 bb  ff ff ff ff  80 00 00 00         # seq 2**32-1, ack 2**31
80 18  ff ff  fc 4e  00 00                    # offset 8 (32 B), PSH|ACK, window 65535
01 01 08 0a  00 0a 00 0b  00 0c 00 0d         # NOP NOP TS (Linux's every-segment options)
68 65 6c 6c 6f                                # "hello"
""")

TCP6_TS = h("""
52 55 0a 00 02 02  52 54 00 12 34 56  86 dd
60 00 00 00  00 22  06  3f                    # payload len 34, TCP, hlim 63
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 64
fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02
9c 41 00 16  00 00 00 01  00 00 00 02         # 40001 -> 22, seq 1, ack 2
80 11  00 40  70 46  00 00                    # offset 8, FIN|ACK, window 64
01 01 08 0a  00 00 00 03  00 00 00 04         # NOP NOP TS 3, 4
6f 6b                                         # "ok"
""")


def fields(p: tuple) -> dict:
    """The parse tuple as a dict keyed by field name (payload as bytes)."""
    names = ("dst_mac src_mac ethertype src dst proto ttl frag sport dport seq ack flags window "
             "opts payload l3 l4 end csum").split()
    d = dict(zip(names, p))
    d["payload"] = bytes(d["payload"])
    return d


def assert_parses(frame: bytes, **expected) -> tuple:
    """parse_frame(frame) has the expected fields (bytes, bytearray and memoryview alike)."""
    p = parse_frame(frame)
    got = fields(p)
    for key, value in expected.items():
        assert got[key] == value, f"{key}: {got[key]!r} != {value!r}"
    assert fields(parse_frame(bytearray(frame))) == got
    assert fields(parse_frame(memoryview(frame))) == got
    assert isinstance(p[P_PAYLOAD], memoryview)
    return p


# ---------------------------------------------------------------------------
# Golden frames

def test_golden_ethernet_non_ip():
    """A non-IP EtherType parses with no L3 fields and its L3 bytes as payload."""
    assert_parses(ETH_LLDP, dst_mac=h("0180c200000e"), src_mac=GUEST_MAC, ethertype=0x88CC,
                  src=None, dst=None, proto=0, frag=None, opts=NO_OPTIONS,
                  payload=h("02 07 04 52 54 00 12 34 56"), l3=14, l4=14, end=len(ETH_LLDP))


def test_golden_vlan_tagged_udp():
    """One 802.1Q tag is skipped: the inner EtherType and L3 at offset 18 are reported."""
    p = assert_parses(VLAN_UDP, dst_mac=GW_MAC, src_mac=GUEST_MAC, ethertype=ETH_P_IP, src=GUEST4,
                      dst=DNS4, proto=17, ttl=64, frag=None, sport=5353, dport=53, csum=0x0D8B,
                      payload=b"abcd", l3=18, l4=38, end=50)
    assert ipv4_header_ok(VLAN_UDP, p[P_L3], p[P_L4])
    assert l4_checksum_ok(p, VLAN_UDP)


def test_golden_arp_request():
    """ARP is not parsed by parse_frame (payload = the ARP packet); parse_arp reads it."""
    p = assert_parses(ARP_REQ, dst_mac=b"\xff" * 6, src_mac=GUEST_MAC, ethertype=ETH_P_ARP,
                      src=None, l3=14, end=60)
    a = parse_arp(p[P_PAYLOAD])
    assert a == (ARP_REQUEST, GUEST_MAC, GUEST4, bytes(6), GW4)


def test_golden_ipv4_with_options():
    """IHL 6: L4 starts after the options; Ethernet padding past total length is ignored."""
    p = assert_parses(IPV4_OPTIONS_UDP, ethertype=ETH_P_IP, src=GUEST4, dst=GW4, proto=17, ttl=1,
                      sport=54321, dport=1234, csum=0xA607, payload=b"hi", l3=14, l4=38, end=48)
    assert len(IPV4_OPTIONS_UDP) == 72  # 24 bytes of padding were not payload
    assert ipv4_header_ok(IPV4_OPTIONS_UDP, p[P_L3], p[P_L4])
    assert l4_checksum_ok(p, IPV4_OPTIONS_UDP)
    assert (p[P_L4] - p[P_L3], p[P_END] - p[P_L3]) == (24, 34)  # header, total length


def test_golden_ipv4_fragment():
    """A fragment reports (ident, offset in bytes, MF) and its data, with no L4 parsed."""
    p = assert_parses(IPV4_FRAGMENT, src=GUEST4, dst=GW4, proto=17, ttl=64,
                      frag=(0xABCD, 1480, 1), sport=0, dport=0, csum=0,
                      payload=b"fragment-data-16", l4=34, end=50)
    assert ipv4_header_ok(IPV4_FRAGMENT, p[P_L3], p[P_L4])


def test_golden_ipv6_extension_headers_fragment():
    """Hop-by-hop, destination options and fragment headers are walked; a first
    fragment (M=1) reports the upper-layer protocol and (ident, 0, 1)."""
    assert_parses(IPV6_EXT_FRAGMENT, ethertype=ETH_P_IPV6, src=GUEST6, dst=GW6, proto=17, ttl=64,
                  frag=(0xDEADBEEF, 0, 1), sport=0, payload=b"udp hdr+first-8B", l3=14, l4=78,
                  end=94)


def test_golden_ipv6_extension_headers_atomic_fragment_udp():
    """An atomic fragment (offset 0, M=0) after two option headers is an ordinary datagram."""
    p = assert_parses(IPV6_EXT_ATOMIC_UDP, ethertype=ETH_P_IPV6, src=GUEST6, dst=GW6, proto=17,
                      frag=None, sport=5000, dport=5001, csum=0x4706, payload=b"v6!!", l4=78,
                      end=90)
    assert l4_checksum_ok(p, IPV6_EXT_ATOMIC_UDP)


def test_golden_icmpv4_echo():
    """ICMP echo: SPORT/DPORT carry type/code, SEQ/ACK carry identifier/sequence."""
    p = assert_parses(ICMP4_ECHO, src=GUEST4, dst=GW4, proto=1, ttl=64, sport=8, dport=0,
                      seq=0x1234, ack=1, csum=0x3222, payload=b"userdata", l4=34, end=50)
    assert l4_checksum_ok(p, ICMP4_ECHO)
    assert ipv4_header_ok(ICMP4_ECHO, p[P_L3], p[P_L4])


def test_golden_icmpv6_echo():
    """ICMPv6 echo request; its checksum covers the IPv6 pseudo-header."""
    p = assert_parses(ICMP6_ECHO, ethertype=ETH_P_IPV6, src=GUEST6, dst=GW6, proto=58, ttl=64,
                      sport=128, dport=0, seq=0xBEEF, ack=7, csum=0xE789, payload=b"ping", l4=54,
                      end=66)
    assert l4_checksum_ok(p, ICMP6_ECHO)


def test_golden_udp():
    """UDP over IPv4 with an odd-length payload; the checksum verifies."""
    p = assert_parses(UDP4_DNS, src=GUEST4, dst=DNS4, proto=17, sport=50000, dport=53,
                      payload=h("ab cd 01 00 00 01 00 00 00 00 00 00 00"), l4=34, end=55)
    assert l4_checksum_ok(p, UDP4_DNS)
    assert ipv4_header_ok(UDP4_DNS, p[P_L3], p[P_L4])


def test_golden_tcp_every_option_kind():
    """MSS, NOP, window scale, SACK-permitted, timestamps, a SACK block, an
    unknown kind (skipped) and EOL, in one 56-byte header."""
    p = assert_parses(TCP4_ALL_OPTIONS, proto=6, sport=40000, dport=443, seq=0x01020304,
                      ack=0xA0B0C0D0, flags=SYN | ACK, window=64240, payload=b"", l4=34, end=90,
                      opts=TcpOptions(mss=1460, wscale=7, sack_perm=True,
                                      sack_blocks=((0x1000, 0x2000),), ts_val=1, ts_ecr=2))
    assert l4_checksum_ok(p, TCP4_ALL_OPTIONS)


def test_golden_tcp_timestamps_and_three_sack_blocks():
    """A 40-byte options area: NOP NOP TS then NOP NOP SACK with three blocks."""
    assert_parses(TCP4_TS_SACK3, seq=100, ack=200, flags=ACK, window=502, payload=b"data",
                  opts=TcpOptions(sack_blocks=((0x100, 0x200), (0x300, 0x400), (0x500, 0x600)),
                                  ts_val=0x11111111, ts_ecr=0x22222222))


def test_golden_tcp_linux_timestamps_v4_and_v6():
    """Linux's NOP NOP TS segments (the one-unpack fast path), over IPv4 and IPv6."""
    p = assert_parses(TCP4_TS, src=GUEST4, dst=GW4, sport=40000, dport=443, seq=2**32 - 1,
                      ack=2**31, flags=PSH | ACK, window=65535, ttl=64, frag=None,
                      opts=TcpOptions(ts_val=0x000A000B, ts_ecr=0x000C000D), payload=b"hello",
                      l3=14, l4=34, end=71)
    assert l4_checksum_ok(p, TCP4_TS)
    p = assert_parses(TCP6_TS, ethertype=ETH_P_IPV6, src=GUEST6, dst=GW6, proto=6, ttl=63,
                      sport=40001, dport=22, seq=1, ack=2, flags=FIN | ACK, window=64,
                      opts=TcpOptions(ts_val=3, ts_ecr=4), payload=b"ok", l3=14, l4=54, end=88)
    assert l4_checksum_ok(p, TCP6_TS)


def test_golden_checksums_detect_corruption():
    """Flipping one payload bit in each golden frame makes its L4 checksum fail."""
    for frame in (VLAN_UDP, IPV4_OPTIONS_UDP, ICMP4_ECHO, ICMP6_ECHO, UDP4_DNS, TCP4_ALL_OPTIONS,
                  TCP4_TS, TCP6_TS, IPV6_EXT_ATOMIC_UDP):
        bad = bytearray(frame)
        bad[parse_frame(frame)[P_END] - 1] ^= 0x01
        assert not l4_checksum_ok(parse_frame(bad), bad)


def test_tcp_option_edge_cases():
    """Window scale above 14 reads as 14 (RFC 7323 2.3); malformed lengths are ParseError."""
    assert TcpOptions(*parse_tcp_options(h("03 03 0f 00"))).wscale == 14
    assert parse_tcp_options(h("00 02 04 05 b4")) == NO_OPTIONS  # EOL ends the list
    assert parse_tcp_options(h("fd 02 01 01")) == NO_OPTIONS  # unknown kind, length 2
    for bad in ("02", "02 01", "02 03 05", "02 05 05 b4 00", "03 02", "04 03 00", "05 02",
                "05 0b" + " 00" * 9, "08 09" + " 00" * 7, "fe 00", "fe 09 00"):
        with pytest.raises(ParseError):
            parse_tcp_options(h(bad))


def _patch(at: int, value: str):
    """An edit: the bytes at ``at`` replaced by ``value`` (hex)."""
    return lambda f: f[:at] + h(value) + f[at + len(h(value)):]


def _tagged(frame: bytes) -> bytes:
    """The frame with an 802.1Q tag (VID 7) between the MACs and the EtherType."""
    return frame[:12] + h("81 00 00 07") + frame[12:]


_TCP4 = bytes(build_tcp(GW_MAC, GUEST_MAC, GUEST4, GW4, 1, 2, 3, 4, ACK, 5,
                        build_tcp_options(ts=(1, 2)), b"data"))  # a fast-path frame
_UDP4 = bytes(build_udp(GW_MAC, GUEST_MAC, GUEST4, DNS4, 1, 53, b"query"))
_ICMP4 = bytes(build_icmp(GW_MAC, GUEST_MAC, GUEST4, GW4, 8, 0, 1, 2, b"ping"))
_ICMP6 = bytes(build_icmp(GW_MAC, GUEST_MAC, GUEST6, GW6, 128, 0, 1, 2, b"ping"))
# IPv6 with eight hop-by-hop headers before UDP: as many as the walk allows
# (MAX_EXT_HEADERS). Offset 110 is the last one's next header, 118 the UDP header.
_V6_EIGHT_EXT = (GW_MAC + GUEST_MAC + h("86 dd  60 00 00 00  00 48  00 40") + GUEST6 + GW6
                 + h("00 00 00 00 00 00 00 00") * 7 + h("11 00 00 00 00 00 00 00")
                 + h("13 88 13 89  00 08  00 00"))
_TCP6 = bytes(build_tcp(GW_MAC, GUEST_MAC, GUEST6, GW6, 1, 2, 3, 4, ACK, 5,
                        build_tcp_options(ts=(1, 2)), b"data"))

# (reason, frame, edit): parse_frame raises ParseError(reason) on edit(frame),
# and on the same frame 802.1Q-tagged (the IPv4 checks are the same code).
BAD_FRAMES = [
    ("eth_truncated", _TCP4, lambda f: f[:13]),
    ("eth_not_ethernet_ii", _UDP4, _patch(12, "05 dc")),  # an 802.3 length field
    ("ipv4_truncated", _TCP4, lambda f: f[:33]),
    ("ipv4_bad_version", _TCP4, _patch(14, "65")),
    ("ipv4_bad_ihl", _TCP4, _patch(14, "44")),
    ("ipv4_bad_length", _TCP4, _patch(16, "00 13")),  # total length below the header
    ("ipv4_bad_length", _TCP4, lambda f: f[:-1]),  # total length past the frame
    ("ipv6_bad_version", _TCP6, _patch(14, "50")),
    ("ipv6_truncated", _TCP6, lambda f: f[:53]),
    ("ipv6_bad_length", _TCP6, lambda f: f[:-1]),
    ("ipv6_ext_truncated", IPV6_EXT_ATOMIC_UDP, _patch(55, "05")),  # a 48-byte hop-by-hop
    ("ipv6_ext_truncated", IPV6_EXT_ATOMIC_UDP, lambda f: _patch(18, "00 04")(f)[:58]),
    ("ipv6_ext_chain_too_long", _V6_EIGHT_EXT,  # a ninth hop-by-hop where UDP was
     lambda f: _patch(118, "11 00")(_patch(110, "00")(f))),
    ("tcp_truncated", _TCP4, _patch(16, "00 27")),  # 19 bytes left for TCP
    ("tcp_bad_offset", _TCP4, _patch(46, "40")),  # 16-byte header
    ("tcp_bad_offset", _TCP4, _patch(46, "f0")),  # 60-byte header past the end
    ("tcp_opt_bad_length", _TCP4, _patch(54, "02 03 05 b4")),  # MSS of length 3
    ("tcp_opt_bad_length", _TCP4, _patch(54, "01 01 08 0b")),  # timestamps past the area
    ("tcp_opt_truncated", _TCP4, _patch(54, "01 01 01 01 01 01 01 01 01 01 01 08")),
    ("udp_truncated", _UDP4, _patch(16, "00 1b")),  # 7 bytes left for UDP
    ("udp_bad_length", _UDP4, _patch(38, "00 07")),
    ("udp_bad_length", _UDP4, _patch(38, "00 0e")),  # past the IPv4 total length
    ("udp_bad_length", IPV4_OPTIONS_UDP, _patch(42, "00 0b")),  # into the Ethernet padding
    ("icmp_truncated", _ICMP4, _patch(16, "00 1b")),
    ("icmp_truncated", _ICMP6, lambda f: _patch(18, "00 07")(f)[:61]),  # 7 bytes of ICMPv6
    ("udp_bad_length", IPV6_EXT_ATOMIC_UDP, _patch(82, "00 0d")),  # UDP over IPv6
]


@pytest.mark.parametrize("reason, frame, edit", BAD_FRAMES)
@pytest.mark.parametrize("tag", [False, True], ids=["untagged", "802.1q"])
def test_bad_frames_raise_their_reason(reason, frame, edit, tag):
    """Each malformed header gives its own ParseError reason (the stack's drop
    counter), from the fast and the general path alike, tagged or not."""
    bad = edit(frame)
    if tag:
        bad = _tagged(bad)
    for fast_min in (66, 1 << 62):  # with the one-unpack fast paths, and without
        with pytest.raises(ParseError) as e:
            parse_frame(bad, fast_min)
        assert e.value.reason == reason
    parse_frame(_tagged(frame) if tag else frame)  # the unedited frame parses


def test_stacked_vlan_tags_and_bad_ipv4_header_checksum():
    """A second 802.1Q tag is refused; a bad IPv4 header checksum is not a parse
    error but ipv4_header_ok's answer (the gateway counts drop_ipv4_bad_checksum)."""
    with pytest.raises(ParseError) as e:
        parse_frame(_tagged(_tagged(ETH_LLDP)))
    assert e.value.reason == "eth_vlan_stacked"
    with pytest.raises(ParseError) as e:
        parse_frame(_tagged(ETH_LLDP)[:17])  # the tag cut short
    assert e.value.reason == "eth_truncated"
    for frame in (_TCP4, _tagged(_TCP4)):
        p = parse_frame(frame)
        assert ipv4_header_ok(frame, p[P_L3], p[P_L4])
        bad = bytearray(frame)
        bad[p[P_L3] + 8] ^= 1  # the TTL
        assert not ipv4_header_ok(bad, p[P_L3], p[P_L4])


# ---------------------------------------------------------------------------
# Cross-checks: scapy builds, usernet / scapy / dpkt parse, all agree.

macs = st.binary(min_size=6, max_size=6)
v4addrs = st.binary(min_size=4, max_size=4)
v6addrs = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ttls = st.integers(0, 255)
payloads = st.binary(max_size=300)


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def addr_str(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


def scapy_option(kind, draw):
    """One scapy TCP option of ``kind`` with drawn values, and its length on the wire."""
    if kind == "MSS":
        return ("MSS", draw(ports)), 4
    if kind == "WScale":
        return ("WScale", draw(st.integers(0, 14))), 3
    if kind == "SAckOK":
        return ("SAckOK", b""), 2
    if kind == "SAck":
        n = draw(st.integers(1, 4))
        return ("SAck", tuple(draw(st.lists(u32, min_size=2 * n, max_size=2 * n)))), 2 + 8 * n
    if kind == "Timestamp":
        return ("Timestamp", (draw(u32), draw(u32))), 10
    return ("NOP", None), 1


@st.composite
def scapy_tcp_options(draw):
    """A scapy option list: Linux's two common layouts or any mix (each kind once, <= 40 B)."""
    shape = draw(st.sampled_from(["linux-ts", "linux-syn", "any"]))
    if shape == "linux-ts":
        return [("NOP", None), ("NOP", None), scapy_option("Timestamp", draw)[0]]
    if shape == "linux-syn":
        return [scapy_option(k, draw)[0] for k in ("MSS", "SAckOK", "Timestamp", "NOP", "WScale")]
    kinds = draw(st.lists(st.sampled_from(["MSS", "WScale", "SAckOK", "SAck", "Timestamp", "NOP"]),
                          max_size=8))
    opts, size, seen = [], 0, set()
    for kind in kinds:
        if kind in seen:
            continue
        opt, length = scapy_option(kind, draw)
        if size + length <= 40:
            opts.append(opt)
            size += length
            if kind != "NOP":
                seen.add(kind)
    return opts


def options_from_scapy(opts) -> TcpOptions:
    o = {}
    for name, val in opts:
        if name == "MSS":
            o["mss"] = val
        elif name == "WScale":
            o["wscale"] = val
        elif name == "SAckOK":
            o["sack_perm"] = True
        elif name == "SAck":
            o["sack_blocks"] = tuple(zip(val[::2], val[1::2]))
        elif name == "Timestamp":
            o["ts_val"], o["ts_ecr"] = val
    return TcpOptions(**o)


def options_from_bodies(pairs) -> TcpOptions:
    """TcpOptions from ``(kind, body)`` pairs -- each option's bytes after its kind
    and length -- decoded plainly (RFC 9293 3.2, RFC 7323, RFC 2018); other kinds
    are ignored. Also the decoding half of test_wire_fuzz's reference option walk."""
    o = {}
    for kind, body in pairs:
        if kind == 2:
            o["mss"] = int.from_bytes(body, "big")
        elif kind == 3:
            o["wscale"] = min(body[0], 14)  # RFC 7323 2.3
        elif kind == 4:
            o["sack_perm"] = True
        elif kind == 5:
            words = struct.unpack(f"!{len(body) // 4}I", body)
            o["sack_blocks"] = tuple(zip(words[::2], words[1::2]))
        elif kind == 8:
            o["ts_val"], o["ts_ecr"] = struct.unpack("!II", body)
    return TcpOptions(**o)


def options_from_dpkt(opts) -> TcpOptions:
    return options_from_bodies(dpkt.tcp.parse_opts(opts))


KEYS = ("dst_mac", "src_mac", "ethertype", "src", "dst", "proto", "ttl", "sport", "dport", "seq",
        "ack", "flags", "window", "opts", "payload")


def usernet_view(frame: bytes) -> dict:
    d = fields(parse_frame(frame))
    return {k: d[k] for k in KEYS}


def scapy_view(frame: bytes) -> dict:
    pkt = Ether(frame)
    l3 = pkt[Dot1Q].payload if Dot1Q in pkt else pkt.payload
    et = pkt[Dot1Q].type if Dot1Q in pkt else pkt.type
    d = dict(dst_mac=h(pkt.dst.replace(":", "")), src_mac=h(pkt.src.replace(":", "")), ethertype=et,
             src=ip(l3.src), dst=ip(l3.dst), ttl=l3.ttl if et == ETH_P_IP else l3.hlim,
             proto=l3.proto if et == ETH_P_IP else l3.nh, seq=0, ack=0, flags=0, window=0,
             opts=NO_OPTIONS)
    l4 = l3.payload
    if TCP in pkt:
        d.update(sport=l4.sport, dport=l4.dport, seq=l4.seq, ack=l4.ack, flags=int(l4.flags),
                 window=l4.window, opts=options_from_scapy(l4.options))
    elif UDP in pkt:
        d.update(sport=l4.sport, dport=l4.dport)
    else:  # ICMP / ICMPv6 echo
        d.update(sport=l4.type, dport=l4.code, seq=l4.id, ack=l4.seq)
        if et == ETH_P_IPV6:
            d["payload"] = bytes(l4.data)
            return d
    d["payload"] = bytes(l4.payload)
    return d


DPKT_L3 = {dpkt.ip.IP: ETH_P_IP, dpkt.ip6.IP6: ETH_P_IPV6}


def dpkt_view(frame: bytes) -> dict:
    eth = dpkt.ethernet.Ethernet(frame)
    l3 = eth.data
    et = DPKT_L3[type(l3)]
    d = dict(dst_mac=eth.dst, src_mac=eth.src, ethertype=et, src=l3.src, dst=l3.dst, proto=l3.p,
             ttl=l3.ttl if et == ETH_P_IP else l3.hlim, seq=0, ack=0, flags=0, window=0,
             opts=NO_OPTIONS)
    l4 = l3.data
    if isinstance(l4, dpkt.tcp.TCP):
        d.update(sport=l4.sport, dport=l4.dport, seq=l4.seq, ack=l4.ack, flags=l4.flags,
                 window=l4.win, opts=options_from_dpkt(l4.opts), payload=bytes(l4.data))
    elif isinstance(l4, dpkt.udp.UDP):
        d.update(sport=l4.sport, dport=l4.dport, payload=bytes(l4.data))
    else:
        echo = l4.data
        d.update(sport=l4.type, dport=l4.code, seq=echo.id, ack=echo.seq, payload=bytes(echo.data))
    return d


def agree(frame: bytes, **expected) -> None:
    """usernet, scapy and dpkt read the same fields, and they are the generated ones."""
    u, s, d = usernet_view(frame), scapy_view(frame), dpkt_view(frame)
    assert u == s, (u, s)
    assert u == d, (u, d)
    for key, value in expected.items():
        assert u[key] == value, key


@st.composite
def l2l3(draw):
    """Ethernet (maybe 802.1Q-tagged) + IPv4 or IPv6 scapy layers, and the values used."""
    dst_mac, src_mac, ttl = draw(macs), draw(macs), draw(ttls)
    v6 = draw(st.booleans())
    src, dst = (draw(v6addrs), draw(v6addrs)) if v6 else (draw(v4addrs), draw(v4addrs))
    layers = Ether(dst=mac_str(dst_mac), src=mac_str(src_mac))
    if draw(st.integers(0, 4)) == 0:
        layers = layers / Dot1Q(vlan=draw(st.integers(0, 4095)))
    if v6:
        layers = layers / IPv6(src=addr_str(src), dst=addr_str(dst), hlim=ttl)
    else:
        layers = layers / IP(src=addr_str(src), dst=addr_str(dst), ttl=ttl,
                             id=draw(st.integers(0, 0xFFFF)), flags=draw(st.sampled_from([0, 2])))
    return layers, dict(dst_mac=dst_mac, src_mac=src_mac, src=src, dst=dst, ttl=ttl,
                        ethertype=ETH_P_IPV6 if v6 else ETH_P_IP)


@PROPERTY
@given(l2l3(), ports, ports, u32, u32, st.integers(0, 255), ports, scapy_tcp_options(), payloads)
def test_scapy_tcp_frames_parse_alike(base, sport, dport, seq, ack, flags, window, opts, payload):
    """TCP over IPv4/IPv6 (maybe VLAN-tagged) with generated header fields and
    options: usernet, scapy and dpkt extract the same fields."""
    layers, exp = base
    frame = bytes(layers / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                               window=window, options=opts) / Raw(payload))
    agree(frame, **exp, proto=6, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
          window=window, opts=options_from_scapy(opts), payload=payload)
    assert l4_checksum_ok(parse_frame(frame), frame)


@PROPERTY
@given(l2l3(), ports, ports, payloads)
def test_scapy_udp_frames_parse_alike(base, sport, dport, payload):
    """UDP over IPv4/IPv6: the three parsers agree and the checksum verifies."""
    layers, exp = base
    frame = bytes(layers / UDP(sport=sport, dport=dport) / Raw(payload))
    agree(frame, **exp, proto=17, sport=sport, dport=dport, payload=payload)
    assert l4_checksum_ok(parse_frame(frame), frame)


@PROPERTY
@given(l2l3(), st.booleans(), ports, ports, payloads)
def test_scapy_icmp_echo_frames_parse_alike(base, reply, ident, seq, data):
    """ICMPv4 / ICMPv6 echo request and reply: type, code, id, seq, data agree."""
    layers, exp = base
    if exp["ethertype"] == ETH_P_IPV6:
        echo = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=seq, data=data)
        itype, proto = (129 if reply else 128), 58
    else:
        echo = ICMP(type=0 if reply else 8, id=ident, seq=seq) / Raw(data)
        itype, proto = (0 if reply else 8), 1
    frame = bytes(layers / echo)
    agree(frame, **exp, proto=proto, sport=itype, dport=0, seq=ident, ack=seq, payload=data)
    assert l4_checksum_ok(parse_frame(frame), frame)


@PROPERTY
@given(macs, macs, st.sampled_from([1, 2]), macs, v4addrs, macs, v4addrs)
def test_scapy_arp_frames_parse_alike(dst_mac, src_mac, op, sha, spa, tha, tpa):
    """ARP: parse_frame's Ethernet fields and parse_arp's fields match scapy and dpkt."""
    frame = bytes(Ether(dst=mac_str(dst_mac), src=mac_str(src_mac)) / ARP(
        op=op, hwsrc=mac_str(sha), psrc=addr_str(spa), hwdst=mac_str(tha), pdst=addr_str(tpa)))
    p = parse_frame(frame)
    assert (p[P_DST_MAC], p[P_SRC_MAC], p[P_ETHERTYPE]) == (dst_mac, src_mac, ETH_P_ARP)
    mine = parse_arp(p[P_PAYLOAD])
    assert mine == (op, sha, spa, tha, tpa)
    s = Ether(frame)[ARP]
    assert (s.op, s.hwsrc, s.psrc, s.hwdst, s.pdst) == (op, mac_str(sha), addr_str(spa),
                                                        mac_str(tha), addr_str(tpa))
    d = dpkt.ethernet.Ethernet(frame)
    assert (d.dst, d.src, d.type) == (dst_mac, src_mac, ETH_P_ARP)
    assert (d.data.op, d.data.sha, d.data.spa, d.data.tha, d.data.tpa) == tuple(mine)


@PROPERTY
@given(st.booleans(), st.booleans(), payloads)
def test_scapy_ipv6_extension_header_chains(frag, m_flag, payload):
    """Hop-by-hop + destination options (+ fragment) before UDP: usernet finds the
    upper layer where scapy and dpkt do; a real fragment reports its ident."""
    pkt = (Ether(dst=mac_str(GW_MAC), src=mac_str(GUEST_MAC))
           / IPv6(src="fd00::64", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt())
    if frag:
        pkt = pkt / IPv6ExtHdrFragment(id=0x01020304, m=int(m_flag))
    frame = bytes(pkt / UDP(sport=1, dport=2) / Raw(payload))
    p = parse_frame(frame)
    d = dpkt.ethernet.Ethernet(frame).data
    assert p[P_PROTO] == d.p == 17
    assert p[P_L4] == 14 + 40 + 16 + (8 if frag else 0)
    if frag and m_flag:
        assert p[P_FRAG] == (0x01020304, 0, 1)
        assert bytes(p[P_PAYLOAD]) == frame[p[P_L4]:]
    else:
        assert p[P_FRAG] is None
        assert (p[P_SPORT], p[P_DPORT], bytes(p[P_PAYLOAD])) == (1, 2, payload)
        assert bytes(p[P_PAYLOAD]) == bytes(d.data.data)
        assert l4_checksum_ok(p, frame)


# ---------------------------------------------------------------------------
# usernet's builders, checked by scapy.

@st.composite
def usernet_tcp_options(draw):
    """(options bytes from build_tcp_options, the TcpOptions they should parse to)."""
    mss = draw(st.none() | ports)
    wscale = draw(st.none() | st.integers(0, 14))
    sack_perm = draw(st.booleans())
    ts = draw(st.none() | st.tuples(u32, u32))
    blocks = tuple(draw(st.lists(st.tuples(u32, u32), max_size=4)))
    raw = build_tcp_options(mss=mss, wscale=wscale, sack_perm=sack_perm, ts=ts, sack_blocks=blocks)
    room = (40 - len(build_tcp_options(mss=mss, wscale=wscale, sack_perm=sack_perm, ts=ts)) - 4) // 8
    expected = TcpOptions(mss, wscale, sack_perm, blocks[:max(0, min(4, room))],
                          ts[0] if ts else None, ts[1] if ts else None)
    return raw, expected


@st.composite
def addresses(draw):
    return (draw(v6addrs), draw(v6addrs)) if draw(st.booleans()) else (draw(v4addrs), draw(v4addrs))


def scapy_recomputed(frame: bytes, l4_layer) -> Ether:
    """``frame`` as scapy re-serialises it with every checksum recomputed by scapy."""
    pkt = Ether(frame)
    del pkt[l4_layer].chksum
    if IP in pkt:
        del pkt[IP].chksum
    return Ether(bytes(pkt))


@PROPERTY
@given(macs, macs, addresses(), ports, ports, u32, u32, st.integers(0, 255), ports,
       usernet_tcp_options(), payloads, ttls, st.integers(0, 0xFFFF))
def test_build_tcp_accepted_by_scapy(dst_mac, src_mac, addrs, sport, dport, seq, ack, flags, window,
                                     opts, payload, ttl, ident):
    """build_tcp (v4 and v6): scapy reads the fields and recomputes the same IP and TCP
    checksums; l4_checksum_ok / ipv4_header_ok agree; parse -> build gives the same bytes."""
    src, dst = addrs
    raw_opts, exp_opts = opts
    frame = bytes(build_tcp(dst_mac, src_mac, src, dst, sport, dport, seq, ack, flags, window,
                            raw_opts, payload, ttl=ttl, ident=ident))
    pkt = Ether(frame)
    again = scapy_recomputed(frame, TCP)
    assert bytes(again) == frame  # scapy's checksums are byte-for-byte ours
    assert (pkt[TCP].sport, pkt[TCP].dport, pkt[TCP].seq, pkt[TCP].ack, int(pkt[TCP].flags),
            pkt[TCP].window) == (sport, dport, seq, ack, flags, window)
    assert options_from_scapy(pkt[TCP].options) == exp_opts
    assert bytes(pkt[TCP].payload) == payload
    p = parse_frame(frame)
    assert l4_checksum_ok(p, frame)
    if len(src) == 4:
        assert ipv4_header_ok(frame, p[P_L3], p[P_L4])
        assert (pkt[IP].ttl, pkt[IP].id) == (ttl, ident)
    assert p[P_OPTS] == exp_opts
    # round trip: build -> parse -> build
    o = TcpOptions(*p[P_OPTS])  # parsed options are plain tuples of this layout
    rebuilt = build_tcp(p[P_DST_MAC], p[P_SRC_MAC], p[P_SRC], p[P_DST], p[P_SPORT], p[P_DPORT],
                        p[P_SEQ], p[P_ACK], p[P_FLAGS], p[P_WINDOW],
                        build_tcp_options(o.mss, o.wscale, o.sack_perm,
                                          None if o.ts_val is None else (o.ts_val, o.ts_ecr),
                                          o.sack_blocks),
                        p[P_PAYLOAD], ttl=p[P_TTL],
                        ident=pkt[IP].id if len(src) == 4 else 0)
    assert bytes(rebuilt) == frame


@PROPERTY
@given(macs, macs, addresses(), ports, ports, u32, u32, st.integers(0, 255), ports, payloads)
def test_build_tcp_without_checksum_leaves_pseudo_header_sum(dst_mac, src_mac, addrs, sport, dport,
                                                            seq, ack, flags, window, payload):
    """csum=False (virtio NEEDS_CSUM): the field holds the pseudo-header sum, and
    finishing the checksum over csum_start..end as a NIC would gives build_tcp's frame."""
    src, dst = addrs
    args = (dst_mac, src_mac, src, dst, sport, dport, seq, ack, flags, window, b"", payload)
    full = build_tcp(*args)
    partial = build_tcp(*args, csum=False)
    l4 = parse_frame(partial)[P_L4]
    pseudo = (pseudo_sum_v6 if len(src) == 16 else pseudo_sum_v4)(src, dst, 6, len(partial) - l4)
    assert int.from_bytes(partial[l4 + 16:l4 + 18], "big") == pseudo
    c = checksum(partial[l4:])  # what the device does: sum from csum_start, store at +16
    partial[l4 + 16:l4 + 18] = c.to_bytes(2, "big")
    assert partial == full


@PROPERTY
@given(macs, macs, addresses(), ports, ports, payloads, ttls)
def test_build_udp_accepted_by_scapy(dst_mac, src_mac, addrs, sport, dport, payload, ttl):
    """build_udp (v4 and v6): scapy recomputes the same checksums; round trip is exact."""
    src, dst = addrs
    frame = bytes(build_udp(dst_mac, src_mac, src, dst, sport, dport, payload, ttl=ttl))
    assert bytes(scapy_recomputed(frame, UDP)) == frame
    pkt = Ether(frame)
    assert (pkt[UDP].sport, pkt[UDP].dport, bytes(pkt[UDP].payload)) == (sport, dport, payload)
    p = parse_frame(frame)
    assert l4_checksum_ok(p, frame)
    rebuilt = build_udp(p[P_DST_MAC], p[P_SRC_MAC], p[P_SRC], p[P_DST], p[P_SPORT], p[P_DPORT],
                        p[P_PAYLOAD], ttl=p[P_TTL])
    assert bytes(rebuilt) == frame


@PROPERTY
@given(macs, macs, addresses(), st.sampled_from(["tcp", "udp", "icmp"]), payloads,
       st.integers(0, 10**6))
def test_checksum_checks_agree_with_scapy_on_corruption(dst_mac, src_mac, addrs, kind, payload, bit):
    """One flipped bit anywhere in a built frame's L4 segment (or its IPv4 header):
    l4_checksum_ok (ipv4_header_ok) says no, and the checksum scapy computes for the
    corrupted segment differs from the one it carries."""
    src, dst = addrs
    v6 = len(src) == 16
    if kind == "tcp":
        frame = build_tcp(dst_mac, src_mac, src, dst, 1, 2, 3, 4, ACK, 5, b"", payload)
        proto, at_csum = 6, 16
    elif kind == "udp":
        frame = build_udp(dst_mac, src_mac, src, dst, 1, 2, payload)
        proto, at_csum = 17, 6
    else:
        frame = build_icmp(dst_mac, src_mac, src, dst, 128 if v6 else 8, 0, 1, 2, payload)
        proto, at_csum = (58 if v6 else 1), 2
    p = parse_frame(bytes(frame))
    l4, end = p[P_L4], p[P_END]
    bad = bytearray(frame)
    at = l4 * 8 + bit % (8 * (end - l4))
    bad[at // 8] ^= 0x80 >> (at % 8)
    stored = int.from_bytes(bad[l4 + at_csum:l4 + at_csum + 2], "big")
    if kind == "udp" and not v6 and stored == 0:
        return  # the flip made the UDP checksum 0: "no checksum" (RFC 768), valid as such
    assert not l4_checksum_ok(p, bad)
    seg = bytes(bad[l4:l4 + at_csum]) + b"\0\0" + bytes(bad[l4 + at_csum + 2:end])
    if v6:
        theirs = in6_chksum(proto, IPv6(src=addr_str(src), dst=addr_str(dst)), seg)
    elif proto == 1:
        theirs = scapy_checksum(seg)
    else:
        theirs = in4_chksum(proto, IP(src=addr_str(src), dst=addr_str(dst)), seg)
    if kind == "udp" and theirs == 0:
        theirs = 0xFFFF
    assert theirs != stored
    if not v6:
        hdr = bytearray(frame)
        hdr[14 + (bit // 8) % 20] ^= 1 << (bit % 8)
        assert not ipv4_header_ok(hdr, 14, 34)


def test_build_udp_zero_checksum_is_sent_as_ffff():
    """RFC 768: a computed UDP checksum of 0 goes on the wire as 0xFFFF, which verifies."""
    args = (GW_MAC, GUEST_MAC, DNS4, GUEST4, 53, 40000)
    c0 = int.from_bytes(build_udp(*args, b"\x00\x00")[40:42], "big")
    word = (0xFFFF - (~c0 & 0xFFFF)) % 0xFFFF  # adding it makes the sum 0xFFFF: checksum 0
    frame = bytes(build_udp(*args, word.to_bytes(2, "big")))
    assert frame[40:42] == b"\xff\xff"
    assert l4_checksum_ok(parse_frame(frame), frame)
    assert bytes(scapy_recomputed(frame, UDP)) == frame


@PROPERTY
@given(macs, macs, addresses(), st.booleans(), ports, ports, payloads, ttls)
def test_build_icmp_echo_accepted_by_scapy(dst_mac, src_mac, addrs, reply, ident, seq, data, ttl):
    """build_icmp echo (ICMPv4, and ICMPv6 with its pseudo-header): scapy agrees on
    fields and checksum; round trip is exact."""
    src, dst = addrs
    v6 = len(src) == 16
    itype = (129 if reply else 128) if v6 else (0 if reply else 8)
    frame = bytes(build_icmp(dst_mac, src_mac, src, dst, itype, 0, ident, seq, data, ttl=ttl))
    pkt = Ether(frame)
    layer = pkt.getlayer(ICMPv6EchoReply if reply else ICMPv6EchoRequest) if v6 else pkt[ICMP]
    assert (layer.type, layer.id, layer.seq) == (itype, ident, seq)
    again = Ether(frame)
    if v6:
        del again[layer.__class__].cksum
    else:
        del again[ICMP].chksum
        del again[IP].chksum
    assert bytes(Ether(bytes(again))) == frame
    p = parse_frame(frame)
    assert l4_checksum_ok(p, frame)
    rebuilt = build_icmp(p[P_DST_MAC], p[P_SRC_MAC], p[P_SRC], p[P_DST], p[P_SPORT], p[P_DPORT],
                         p[P_SEQ], p[P_ACK], p[P_PAYLOAD], ttl=p[P_TTL])
    assert bytes(rebuilt) == frame


@PROPERTY
@given(macs, macs, st.sampled_from([ARP_REQUEST, ARP_REPLY]), macs, v4addrs, macs, v4addrs)
def test_build_arp_accepted_by_scapy(dst_mac, src_mac, oper, sha, spa, tha, tpa):
    """build_arp: a 60-byte frame scapy reads back; parse_arp -> build_arp is exact."""
    frame = bytes(build_arp(dst_mac, src_mac, oper, sha, spa, tha, tpa))
    assert len(frame) == 60
    a = Ether(frame)[ARP]
    assert (a.hwtype, a.ptype, a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (
        1, 0x0800, oper, mac_str(sha), addr_str(spa), mac_str(tha), addr_str(tpa))
    p = parse_frame(frame)
    assert bytes(build_arp(p[P_DST_MAC], p[P_SRC_MAC], *parse_arp(p[P_PAYLOAD]))) == frame


@PROPERTY
@given(macs, macs, v4addrs, v4addrs, st.sampled_from([1, 6, 17]), st.integers(0, 0xFFFF),
       st.integers(0, 0x1FFF), st.booleans(), st.binary(min_size=1, max_size=200))
def test_build_ipv4_fragment_accepted_by_scapy(dst_mac, src_mac, src, dst, proto, ident, off8, more,
                                               data):
    """build_ipv4_fragment: scapy reads MF/offset/id and recomputes the header checksum;
    parse_frame reports the fragment; round trip is exact."""
    assume(off8 or more)  # offset 0 without MF is a whole datagram, not a fragment
    frame = bytes(build_ipv4_fragment(dst_mac, src_mac, src, dst, proto, ident, off8 * 8, more, data))
    pkt = Ether(frame)
    assert (pkt[IP].id, pkt[IP].frag, bool(pkt[IP].flags.MF), pkt[IP].proto) == (ident, off8, more,
                                                                                 proto)
    again = Ether(frame)
    del again[IP].chksum
    assert bytes(Ether(bytes(again)))[:34] == frame[:34]
    p = parse_frame(frame)
    assert ipv4_header_ok(frame, p[P_L3], p[P_L4])
    assert p[P_FRAG] == (ident, off8 * 8, int(more))
    assert bytes(p[P_PAYLOAD]) == data
    rebuilt = build_ipv4_fragment(p[P_DST_MAC], p[P_SRC_MAC], p[P_SRC], p[P_DST], p[P_PROTO],
                                  p[P_FRAG][0], p[P_FRAG][1], bool(p[P_FRAG][2]), p[P_PAYLOAD],
                                  ttl=p[P_TTL])
    assert bytes(rebuilt) == frame


@PROPERTY
@given(usernet_tcp_options())
def test_tcp_options_round_trip(opts):
    """parse_tcp_options(build_tcp_options(x)) == x (SACK blocks cut to what fits), and
    building again from the parse gives the same bytes; the area is 4-aligned and <= 40 B."""
    raw, expected = opts
    assert len(raw) % 4 == 0 and len(raw) <= 40
    parsed = TcpOptions(*parse_tcp_options(raw))
    assert parsed == expected
    assert parse_tcp_options(memoryview(raw)) == expected
    ts = None if parsed.ts_val is None else (parsed.ts_val, parsed.ts_ecr)
    assert build_tcp_options(parsed.mss, parsed.wscale, parsed.sack_perm, ts,
                             parsed.sack_blocks) == raw


# ---------------------------------------------------------------------------
# Checksums

def reference_ones_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_checksum_rfc1071_example():
    """RFC 1071 section 3's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2."""
    data = h("00 01 f2 03 f4 f5 f6 f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D
    assert checksum(data + h("22 0d")) == 0  # a buffer carrying its checksum sums to zero
    assert ones_sum(b"") == 0 and checksum(b"") == 0xFFFF
    assert ones_sum(b"\xff\xff") == 0xFFFF  # negative zero stays 0xFFFF
    assert ones_sum(b"\x01") == 0x0100  # odd length: padded with a zero byte


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 0x3FFFF))
def test_ones_sum_matches_reference_and_scapy(data, initial):
    """ones_sum / checksum agree with a word-by-word RFC 1071 sum (odd lengths
    included) and with scapy's checksum."""
    assert ones_sum(data, initial) == reference_ones_sum(data, initial)
    assert checksum(data) == scapy_checksum(data)
    assert checksum(memoryview(data)) == checksum(bytearray(data)) == checksum(data)


@PROPERTY
@given(v4addrs, v4addrs, v6addrs, v6addrs, st.sampled_from([6, 17, 58]), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFFF))
def test_pseudo_header_sums_match_scapy(s4, d4, s6, d6, proto, len4, len6):
    """pseudo_sum_v4/v6 equal the ones' sum of scapy's pseudo-header bytes (v6 lengths > 64 KiB too)."""
    u4 = IP(src=addr_str(s4), dst=addr_str(d4))
    assert pseudo_sum_v4(s4, d4, proto, len4) == ones_sum(in4_pseudoheader(proto, u4, len4))
    u6 = IPv6(src=addr_str(s6), dst=addr_str(d6))
    assert pseudo_sum_v6(s6, d6, proto, len6) == ones_sum(in6_pseudoheader(proto, u6, len6))


# ---------------------------------------------------------------------------
# The virtio-net header (TAP offloads)

def test_vnet_header_builder_golden_bytes():
    """Little-endian fields in the linux/virtio_net.h order; the TCP offload
    header is NEEDS_CSUM at the L4 offset with the checksum 16 bytes in."""
    from usernet.wire import vnet
    assert vnet.VNET_HDR.pack(0, 0, 0, 0, 0, 0) == bytes(10) == vnet.VNET_HDR_NONE
    assert vnet.VNET_HDR.pack(1, 1, 66, 1448, 34, 16) == h("01 01 4200 a805 2200 1000")
    # A plain NEEDS_CSUM frame (payload within one segment): no GSO.
    assert vnet.tcp_offload_hdr(34, 66) == h("01 00 4200 0000 2200 1000")
    assert vnet.VNET_HDR.unpack(vnet.tcp_offload_hdr(34, 66, 1448)) == (
        vnet.VIRTIO_NET_HDR_F_NEEDS_CSUM, vnet.VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 34, 16)
    assert vnet.tcp_offload_hdr(54, 86, 1428, v6=True) == h("01 04 5600 9405 3600 1000")
    assert len(vnet.tcp_offload_hdr(34, 54)) == vnet.VNET_HDR_LEN
