"""usernet.wire's one promise about bad input, held with Hypothesis.

**The invariant** (``usernet/wire/__init__.py``): every parser, given any
bytes at all, returns its result or raises ``usernet.wire.ParseError`` --
never IndexError, struct.error, ValueError from somewhere deep, or a loop
that does not end. The stack counts a ``ParseError`` as a named drop; any
other exception would take the whole driver down on one hostile frame.

Inputs: arbitrary bytes, bytes behind a plausible header (so the fuzz reaches
past the first length check), and valid frames with random byte mutations,
single-bit flips and truncations. Plus truncation at every length of a set of
valid frames: a prefix either parses or raises ParseError, and a prefix
shorter than the frame's L3 packet always raises (the IPv4 total length / the
IPv6 payload length make it inconsistent).
"""

import struct

from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from test_wire import options_from_bodies
from usernet.wire import ParseError
from usernet.wire.arp import parse_arp
from usernet.wire.ether import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from usernet.wire.frame import (P_END, P_ETHERTYPE, P_FRAG, P_L3, P_L4, P_OPTS, P_PAYLOAD, P_PROTO,
                                build_arp, build_icmp, build_ipv4_fragment, build_tcp, build_udp,
                                ipv4_header_ok, l4_checksum_ok, parse_frame)
from usernet.wire.ipv6 import parse_ipv6
from usernet.wire.tcp import TcpOptions, build_tcp_options, parse_tcp_options

FUZZ = settings(max_examples=500, deadline=None)

MAC1, MAC2 = bytes.fromhex("525400123456"), bytes.fromhex("52550a000202")
A4, B4 = bytes([10, 0, 2, 100]), bytes([10, 0, 2, 2])
A6, B6 = bytes.fromhex("fd00" + "00" * 13 + "64"), bytes.fromhex("fd00" + "00" * 13 + "02")
ETH = Ether(src="52:54:00:12:34:56", dst="52:55:0a:00:02:02")
LINUX_SYN = build_tcp_options(mss=1460, sack_perm=True, ts=(1, 2), wscale=7)


def _valid_frames() -> dict:
    """Valid frames of every shape the parser has a branch for."""
    return {
        "tcp4 ts": bytes(build_tcp(MAC2, MAC1, A4, B4, 40000, 443, 1, 2, 0x18, 502,
                                   build_tcp_options(ts=(5, 6)), b"x" * 40)),
        "tcp4 syn": bytes(build_tcp(MAC2, MAC1, A4, B4, 40000, 80, 1, 0, 0x02, 64240, LINUX_SYN)),
        "tcp4 sack": bytes(build_tcp(MAC2, MAC1, A4, B4, 1, 2, 3, 4, 0x10, 5,
                                     build_tcp_options(ts=(7, 8), sack_blocks=((1, 2), (3, 4))))),
        "tcp6 ts": bytes(build_tcp(MAC2, MAC1, A6, B6, 40000, 22, 9, 9, 0x10, 64,
                                   build_tcp_options(ts=(1, 1)), b"data")),
        "tcp4 bare": bytes(build_tcp(MAC2, MAC1, A4, B4, 1, 2, 3, 4, 0x04, 0)),
        "udp4": bytes(build_udp(MAC2, MAC1, A4, B4, 5353, 53, b"q" * 21)),
        "udp6": bytes(build_udp(MAC2, MAC1, A6, B6, 5353, 53, b"q" * 9)),
        "icmp4": bytes(build_icmp(MAC2, MAC1, A4, B4, 8, 0, 1, 2, b"ping")),
        "icmp6": bytes(build_icmp(MAC2, MAC1, A6, B6, 128, 0, 1, 2, b"ping")),
        "arp": bytes(build_arp(MAC2, MAC1, 1, MAC1, A4, bytes(6), B4)),
        "frag4": bytes(build_ipv4_fragment(MAC2, MAC1, A4, B4, 17, 7, 1480, True, b"f" * 24)),
        "ipv4 options, padded": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.2",
                                               options=b"\x94\x04\x00\x00") / UDP() / b"hi")
                                      + bytes(18),  # Ethernet padding to the 60-byte minimum
        "vlan tcp4": bytes(Ether(src="52:54:00:12:34:56", dst="52:55:0a:00:02:02") / Dot1Q(vlan=7)
                           / IP(src="10.0.2.100", dst="10.0.2.2")
                           / TCP(options=[("MSS", 1460), ("SAck", (1, 2))]) / b"v"),
        "vlan icmp6": bytes(ETH / Dot1Q(vlan=8) / IPv6(src="fd00::64", dst="fd00::2")
                            / ICMPv6EchoRequest(data=b"x")),
        "ipv6 ext frag": bytes(ETH / IPv6(src="fd00::64", dst="fd00::2") / IPv6ExtHdrHopByHop()
                               / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
                               / IPv6ExtHdrFragment(m=1, id=5) / UDP() / Raw(b"z" * 16)),
        "ipv6 ext udp": bytes(ETH / IPv6(src="fd00::64", dst="fd00::2") / IPv6ExtHdrHopByHop()
                              / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / b"z"),
        "icmp4 scapy": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.2") / ICMP(id=3, seq=4) / b"e"),
        "lldp": bytes.fromhex("0180c200000e52540012345688cc0207045254001234"),
    }


VALID = _valid_frames()
frames = st.sampled_from(sorted(VALID)).map(VALID.__getitem__)


def parses_or_parse_error(fn, *args):
    """Call a parser: its result, or None if it raised ParseError (anything else propagates)."""
    try:
        return fn(*args)
    except ParseError as e:
        assert isinstance(e.reason, str) and e.reason
        return None


NO_FAST_PATH = 1 << 62  # parse_frame(buf, _fast_min=NO_FAST_PATH) takes the general path only


def comparable(p):
    return None if p is None else p[:P_PAYLOAD] + (bytes(p[P_PAYLOAD]),) + p[P_PAYLOAD + 1:]


def check_frame(buf) -> None:
    """parse_frame(buf) obeys the invariant, with and without its fast paths, and
    a successful parse is self-consistent."""
    p = parses_or_parse_error(parse_frame, buf)
    assert comparable(p) == comparable(parses_or_parse_error(parse_frame, buf, NO_FAST_PATH))
    if p is None:
        return
    assert len(p) == 20
    assert 0 <= p[P_L3] <= p[P_L4] <= p[P_END] <= len(buf)
    assert isinstance(p[P_PAYLOAD], memoryview) and len(p[P_PAYLOAD]) <= p[P_END] - p[P_L3]
    # Parsed options: a plain tuple of the TcpOptions layout.
    assert type(p[P_OPTS]) in (tuple, TcpOptions) and len(p[P_OPTS]) == 6
    if p[P_ETHERTYPE] == ETH_P_ARP:
        parses_or_parse_error(parse_arp, p[P_PAYLOAD])
    if p[P_ETHERTYPE] in (ETH_P_IP, ETH_P_IPV6) and p[P_FRAG] is None:
        # the checksum helpers take any parsed tuple without raising
        assert l4_checksum_ok(p, buf) in (True, False)
        if p[P_ETHERTYPE] == ETH_P_IP:
            assert ipv4_header_ok(buf, p[P_L3], p[P_L4]) in (True, False)


def check_all_parsers(buf, off: int, end: int) -> None:
    """The parsers the stack calls besides parse_frame (ARP, the IPv6 header
    walk, a TCP options area) obey the invariant at any offset / end inside ``buf``."""
    parses_or_parse_error(parse_arp, buf, off)
    parses_or_parse_error(parse_ipv6, buf, off)
    parses_or_parse_error(parse_tcp_options, buf[off:end])


# Plausible starts, so random tails get past the EtherType / version checks.
HEADS = [
    b"", VALID["tcp4 ts"][:14], VALID["tcp4 ts"][:34], VALID["tcp6 ts"][:14], VALID["tcp6 ts"][:54],
    VALID["vlan tcp4"][:18], VALID["arp"][:14], VALID["ipv6 ext udp"][:54],
    VALID["tcp4 ts"][:14] + b"\x4f",  # IHL 15
    VALID["tcp6 ts"][:20] + b"\x00", VALID["tcp6 ts"][:20] + b"\x2c",  # hop-by-hop / fragment next
]
fuzz_bytes = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(HEADS), st.binary(max_size=200)).map(lambda t: t[0] + t[1]),
)


@FUZZ
@given(fuzz_bytes)
def test_parse_frame_arbitrary_bytes(buf):
    """Arbitrary bytes (bare or behind a plausible header) into parse_frame: a tuple or ParseError."""
    check_frame(buf)
    check_frame(bytearray(buf))
    check_frame(memoryview(buf))


@FUZZ
@given(frames, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1,
                        max_size=6))
def test_parse_frame_mutated_frames(frame, edits):
    """Valid frames with random bytes overwritten (lengths, IHL, offsets, option
    bytes, next headers...): a tuple or ParseError."""
    buf = bytearray(frame)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    check_frame(bytes(buf))


@FUZZ
@given(frames, st.integers(0, 100_000))
def test_parse_frame_single_bit_flips(frame, bit):
    """Every single-bit flip of a valid frame: a tuple or ParseError."""
    buf = bytearray(frame)
    bit %= 8 * len(buf)
    buf[bit // 8] ^= 1 << (bit % 8)
    check_frame(bytes(buf))


@FUZZ
@given(frames, st.integers(0, 2000), st.binary(max_size=40))
def test_parse_frame_truncated_and_extended(frame, cut, tail):
    """A valid frame cut anywhere, optionally with junk appended: a tuple or ParseError."""
    check_frame(frame[:cut % (len(frame) + 1)] + tail)


@FUZZ
@given(fuzz_bytes, st.integers(0, 320), st.integers(0, 320))
def test_sub_parsers_arbitrary_bytes(buf, off, end):
    """parse_arp/ipv6/tcp_options on arbitrary bytes at any offset and end inside
    the buffer: a result or ParseError."""
    off, end = min(off, len(buf)), min(end, len(buf))
    check_all_parsers(buf, off, end)
    check_all_parsers(memoryview(buf), off, end)


@FUZZ
@given(frames, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
       st.data())
def test_sub_parsers_mutated_frames(frame, edits, data):
    """The sub-parsers at a valid frame's real offsets, after random byte edits."""
    buf = bytearray(frame)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    off = data.draw(st.sampled_from([14, 18, 34, 38, 54, 78]))
    check_all_parsers(bytes(buf), min(off, len(buf)), len(buf))


option_tokens = st.one_of(
    st.sampled_from([b"\x00", b"\x01", b"\x01\x01", b"\x04\x02"]),
    st.builds(lambda v: struct.pack("!BBH", 2, 4, v), st.integers(0, 0xFFFF)),
    st.builds(lambda v: bytes([3, 3, v]), st.integers(0, 255)),
    st.builds(lambda a, b: struct.pack("!BBII", 8, 10, a, b), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(lambda n: bytes([5, 2 + 8 * n]) + bytes(8 * n), st.integers(0, 5)),
    st.builds(lambda k, n: bytes([k, n]) + bytes(max(0, n - 2)), st.integers(0, 255),
              st.integers(0, 255)),
    st.binary(min_size=1, max_size=4),
)


@FUZZ
@given(st.one_of(st.binary(max_size=60),
                 st.lists(option_tokens, max_size=10).map(b"".join)))
def test_parse_tcp_options_arbitrary(buf):
    """Arbitrary option areas, and ones stitched from (mostly) well-formed option
    tokens with bad lengths mixed in: TcpOptions or ParseError."""
    for b in (buf, buf[:40], bytearray(buf), memoryview(buf)):
        opts = parses_or_parse_error(parse_tcp_options, b)
        assert opts is None or (isinstance(opts, tuple) and len(opts) == 6)


@FUZZ
@given(st.lists(st.sampled_from([0, 43, 44, 51, 60, 59, 6, 17, 58, 255]), min_size=1, max_size=12),
       st.lists(st.integers(0, 255), min_size=12, max_size=12), st.binary(max_size=64))
def test_ipv6_extension_chains(chain, lengths, tail):
    """IPv6 with arbitrary chains of extension headers (long, looping, lying about
    their lengths, AH, no-next-header): parse_frame answers or raises ParseError."""
    body = bytearray()
    for i, nh in enumerate(chain[1:] + [59]):
        body += bytes([nh, lengths[i] % 4]) + bytes(6) + bytes(8 * (lengths[i] % 4))
    body += tail
    for plen in (len(body), len(body) + 8, max(0, len(body) - 8)):
        frame = (bytes(6) * 2 + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, plen, chain[0], 64)
                 + A6 + B6 + bytes(body))
        check_frame(frame)


def test_every_prefix_of_valid_frames():
    """Truncation at every length: each prefix of each valid frame parses or raises
    ParseError; an IP frame cut short of its L3 end always raises; a prefix that
    keeps the whole L3 packet (cutting only padding) parses to the same fields."""
    for name, frame in VALID.items():
        full = parse_frame(frame)
        for n in range(len(frame) + 1):
            prefix = frame[:n]
            check_frame(prefix)
            check_all_parsers(prefix, min(14, n), n)
            if n < 14:
                assert parses_or_parse_error(parse_frame, prefix) is None, (name, n)
            elif full[P_ETHERTYPE] in (ETH_P_IP, ETH_P_IPV6):
                p = parses_or_parse_error(parse_frame, prefix)
                if n < full[P_END]:
                    assert p is None, f"{name}: a {n}-byte prefix parsed"
                else:
                    assert p[:P_PAYLOAD] == full[:P_PAYLOAD] and p[P_PAYLOAD + 1:] == full[P_PAYLOAD + 1:]
                    assert bytes(p[P_PAYLOAD]) == bytes(full[P_PAYLOAD])
            elif full[P_ETHERTYPE] == ETH_P_ARP:
                a = parses_or_parse_error(parse_arp, parse_frame(prefix)[P_PAYLOAD])
                assert (a is None) == (n < 14 + 28), (name, n)


def test_prefixes_of_every_tcp_options_area():
    """Every prefix of every valid options area parses or raises ParseError, and the
    whole area parses to what parse_frame reported."""
    for frame in VALID.values():
        p = parse_frame(frame)
        if p[P_PROTO] != 6 or p[P_FRAG] is not None:
            continue
        area = frame[p[P_L4] + 20:p[P_L4] + ((frame[p[P_L4] + 12] >> 4) * 4)]
        assert parse_tcp_options(area) == p[P_OPTS]
        for n in range(len(area) + 1):
            parses_or_parse_error(parse_tcp_options, area[:n])


# ---------------------------------------------------------------------------
# parse_frame's one-unpack fast paths against its general path.

def fast_path_agrees(buf) -> None:
    """parse_frame answers as its general path does: the same fields, or a
    ParseError where the general path raises one."""
    assert comparable(parses_or_parse_error(parse_frame, buf)) == comparable(
        parses_or_parse_error(parse_frame, buf, NO_FAST_PATH))


@FUZZ
@given(frames, st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
       st.none() | st.integers(0, 2000))
def test_fast_paths_equal_general_path(frame, edits, cut):
    """The fast paths accept exactly the frames the general path accepts, with the
    same fields (mutated and cut valid frames: header bytes get edited, so near
    misses of the fast paths are covered)."""
    buf = bytearray(frame)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    fast_path_agrees(bytes(buf if cut is None else buf[:cut % (len(buf) + 1)]))


@FUZZ
@given(fuzz_bytes)
def test_fast_paths_equal_general_path_arbitrary(buf):
    """The same differential check on arbitrary bytes behind plausible headers."""
    fast_path_agrees(buf)


# ---------------------------------------------------------------------------
# parse_frame against a plain reference written from the RFCs. The fast paths
# are checked against the general path above; this checks the general path's
# own rules (which frames it accepts, which fields it reports) against code
# that shares nothing with usernet.wire but the tuple layout.

def reference_parse(buf) -> tuple:
    """parse_frame's tuple the slow, plain way: every field read with
    int.from_bytes at the offset the RFCs give; a refusal is ParseError."""
    n = len(buf)

    def u(at: int, size: int) -> int:
        if at + size > n:
            raise ParseError("short")
        return int.from_bytes(buf[at:at + size], "big")

    def refuse():
        raise ParseError("refused")

    if n < 14:
        refuse()
    dst_mac, src_mac, et, l3 = bytes(buf[0:6]), bytes(buf[6:12]), u(12, 2), 14
    if et in (0x8100, 0x88A8):  # one 802.1Q / 802.1ad tag
        et, l3 = u(16, 2), 18
    mv = memoryview(buf)
    if et == ETH_P_IP:  # RFC 791
        if n - l3 < 20 or buf[l3] >> 4 != 4 or buf[l3] & 15 < 5:
            refuse()
        hl, total = (buf[l3] & 15) * 4, u(l3 + 2, 2)
        if total < hl or l3 + total > n:
            refuse()
        ident, ff, ttl, proto = u(l3 + 4, 2), u(l3 + 6, 2), buf[l3 + 8], buf[l3 + 9]
        src, dst = bytes(buf[l3 + 12:l3 + 16]), bytes(buf[l3 + 16:l3 + 20])
        l4, end = l3 + hl, l3 + total
        frag = (ident, (ff & 0x1FFF) * 8, 1 if ff & 0x2000 else 0) if ff & 0x3FFF else None
    elif et == ETH_P_IPV6:  # RFC 8200
        if n - l3 < 40 or buf[l3] >> 4 != 6 or 40 + u(l3 + 4, 2) > n - l3:
            refuse()
        end, proto, ttl = l3 + 40 + u(l3 + 4, 2), buf[l3 + 6], buf[l3 + 7]
        src, dst = bytes(buf[l3 + 8:l3 + 24]), bytes(buf[l3 + 24:l3 + 40])
        l4, frag, walked = l3 + 40, None, 0
        while proto in (0, 43, 44, 51, 60):  # extension headers, at most 8
            walked += 1
            if walked > 8 or end - l4 < 8:
                refuse()
            if proto == 44:  # fragment: offset (8-byte units) and M, identification
                frag, size = (u(l4 + 4, 4), u(l4 + 2, 2) & 0xFFF8, u(l4 + 2, 2) & 1), 8
            elif proto == 51:  # AH counts 4-byte words, less 2
                size = (buf[l4 + 1] + 2) * 4
            else:
                size = (buf[l4 + 1] + 1) * 8
            if l4 + size > end:
                refuse()
            proto, l4 = buf[l4], l4 + size
        if frag is not None and not (frag[1] or frag[2]):
            frag = None  # an atomic fragment is a whole datagram
    else:
        if et < 0x0600 or et in (0x8100, 0x88A8):  # 802.3 length; a second tag
            refuse()
        return (dst_mac, src_mac, et, None, None, 0, 0, None, 0, 0, 0, 0, 0, 0, TcpOptions(),
                mv[l3:], l3, l3, n, 0)
    head = (dst_mac, src_mac, et, src, dst, proto, ttl)
    if frag is not None:
        return head + (frag, 0, 0, 0, 0, 0, 0, TcpOptions(), mv[l4:end], l3, l4, end, 0)
    if proto == 6:  # RFC 9293
        thl = (buf[l4 + 12] >> 4) * 4 if end - l4 >= 20 else 0
        if thl < 20 or l4 + thl > end:
            refuse()
        return head + (None, u(l4, 2), u(l4 + 2, 2), u(l4 + 4, 4), u(l4 + 8, 4), buf[l4 + 13],
                       u(l4 + 14, 2), reference_tcp_options(buf[l4 + 20:l4 + thl]),
                       mv[l4 + thl:end], l3, l4, end, u(l4 + 16, 2))
    if proto == 17:  # RFC 768
        length = u(l4 + 4, 2) if end - l4 >= 8 else 0
        if length < 8 or length > end - l4:
            refuse()
        return head + (None, u(l4, 2), u(l4 + 2, 2), 0, 0, 0, 0, TcpOptions(),
                       mv[l4 + 8:l4 + length], l3, l4, l4 + length, u(l4 + 6, 2))
    if proto in (1, 58):  # RFC 792, RFC 4443: type, code, checksum, id, seq
        if end - l4 < 8:
            refuse()
        return head + (None, buf[l4], buf[l4 + 1], u(l4 + 4, 2), u(l4 + 6, 2), 0, 0, TcpOptions(),
                       mv[l4 + 8:end], l3, l4, end, u(l4 + 2, 2))
    return head + (None, 0, 0, 0, 0, 0, 0, TcpOptions(), mv[l4:end], l3, l4, end, 0)


def same_as_reference(buf) -> None:
    assert comparable(parses_or_parse_error(parse_frame, buf, NO_FAST_PATH)) == comparable(
        parses_or_parse_error(reference_parse, buf))


@FUZZ
@given(frames, st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
       st.none() | st.integers(0, 2000))
def test_general_path_equals_reference(frame, edits, cut):
    """parse_frame's general path accepts exactly the frames the plain reference
    accepts, with the same fields (valid frames with header bytes edited and
    cut anywhere)."""
    buf = bytearray(frame)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    same_as_reference(bytes(buf if cut is None else buf[:cut % (len(buf) + 1)]))


@FUZZ
@given(fuzz_bytes)
def test_general_path_equals_reference_arbitrary(buf):
    """The same on arbitrary bytes behind plausible headers."""
    same_as_reference(buf)


@FUZZ
@given(st.lists(st.sampled_from([0, 43, 44, 51, 60, 59, 6, 17, 58]), min_size=1, max_size=11),
       st.lists(st.integers(0, 3), min_size=11, max_size=11), st.booleans())
def test_ipv6_extension_walk_equals_reference(chain, lengths, tagged):
    """IPv6 extension header chains up to and past the limit of 8, tagged or not,
    before a UDP header: the same upper layer, offsets and fragment, or both refuse."""
    body = bytearray()
    for i, nh in enumerate(chain[1:] + [17]):
        body += bytes([nh, lengths[i]]) + bytes(6 + 8 * lengths[i])
    body += struct.pack("!HHHH", 1, 2, 12, 0) + b"data"
    frame = (MAC2 + MAC1 + (b"\x81\x00\x00\x07" if tagged else b"") + b"\x86\xdd"
             + struct.pack("!IHBB", 6 << 28, len(body), chain[0], 64) + A6 + B6 + bytes(body))
    same_as_reference(frame)


def reference_tcp_options(buf) -> TcpOptions:
    """RFC 9293 3.2's option walk, written plainly (no fast paths), with
    parse_tcp_options' documented rules for bad lengths."""
    pairs = []
    i = 0
    while i < len(buf):
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(buf) or buf[i + 1] < 2 or i + buf[i + 1] > len(buf):
            raise ParseError("tcp_opt_bad_length")
        length, body = buf[i + 1], bytes(buf[i + 2:i + buf[i + 1]])
        want = {2: (4,), 3: (3,), 4: (2,), 5: (10, 18, 26, 34), 8: (10,)}.get(kind)
        if want is not None and length not in want:
            raise ParseError("tcp_opt_bad_length")
        pairs.append((kind, body))
        i += length
    return options_from_bodies(pairs)


OPTION_TEMPLATES = [build_tcp_options(ts=(0x01020304, 0x05060708)), LINUX_SYN,
                    build_tcp_options(mss=536, sack_perm=True, wscale=15),
                    build_tcp_options(ts=(1, 2), sack_blocks=((1, 2), (3, 4), (5, 6)))]


@FUZZ
@given(st.sampled_from(OPTION_TEMPLATES),
       st.lists(st.tuples(st.integers(0, 39), st.integers(0, 255)), max_size=3),
       st.integers(0, 40))
def test_parse_tcp_options_equals_reference(template, edits, cut):
    """parse_tcp_options -- its one-unpack templates for Linux's NOP NOP TS and SYN
    options included -- gives what a plain option walk gives, or raises where it
    raises, for mutated and cut option areas."""
    buf = bytearray(template)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    buf = bytes(buf[:cut] if cut < len(buf) else buf)
    assert parses_or_parse_error(parse_tcp_options, buf) == parses_or_parse_error(
        reference_tcp_options, buf)
