"""The hot path: one frame in, everything the stack routes on out, in one pass.

:func:`parse_frame` takes an Ethernet frame (``bytes``, ``bytearray`` or
``memoryview``) and returns a plain tuple whose fields are named by the
``P_*`` constants below. Plain tuples because building one costs ~60 ns and a
class instance ~1 µs (DESIGN.md section 3). The payload is a ``memoryview``
slice of the caller's buffer: nothing is copied.

=========  ==============================================================
field      meaning
=========  ==============================================================
DST_MAC    6 bytes
SRC_MAC    6 bytes
ETHERTYPE  inner EtherType (one 802.1Q tag is skipped)
SRC, DST   L3 addresses (4 or 16 bytes), None for non-IP
PROTO      IP protocol / IPv6 upper-layer next header (0 for non-IP)
TTL        IPv4 TTL / IPv6 hop limit
FRAG       None, or ``(ident, offset_bytes, more_fragments)`` for a fragment;
           then PAYLOAD is the fragment's data and no L4 field is parsed
SPORT      TCP/UDP source port; ICMP type
DPORT      TCP/UDP destination port; ICMP code
SEQ        TCP sequence number; ICMP echo identifier
ACK        TCP acknowledgment number; ICMP echo sequence
FLAGS      TCP flags
WINDOW     TCP window (unscaled)
OPTS       TCP options as ``TcpOptions`` (``NO_OPTIONS`` when none)
PAYLOAD    memoryview of the L4 payload (for non-IP: the L3 bytes)
L3, L4     offsets of the L3 and L4 headers in the frame
END        offset of the end of the L3 packet (Ethernet padding excluded)
CSUM       the L4 checksum field as received (0 when there is none)
=========  ==============================================================

Invariant (see :mod:`usernet.wire`): any input returns a tuple or raises
:class:`~usernet.wire.ParseError`, nothing else. L4 checksums are not verified
here (the TAP's virtio-net header decides whether they must be: see
``usernet.stack``); :func:`l4_checksum_ok` does it on demand.

The builders at the bottom write whole frames into a fresh ``bytearray``
(headers packed in place, checksums computed, or left as the pseudo-header sum
for a ``NEEDS_CSUM`` offload when ``csum=False``).
"""

import struct

from . import ParseError
from .arp import ARP_LEN, build_arp_into
from .checksum import checksum, ones_sum, pseudo_sum_v4, pseudo_sum_v6
from .ether import ETH, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, VLAN_TAG
from .icmp import ICMP, ICMP_LEN
from .ipv4 import IP_DF, IP_MF, IP_OFFMASK, IPV4, IPV4_LEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from .ipv6 import FRAG_HDR, IPV6, IPV6_LEN, NH_FRAGMENT, parse_ipv6
from .tcp import NO_OPTIONS, TCP, TCP_LEN, TS_FAST, TS_FAST_MAGIC, parse_tcp_options
from .udp import UDP, UDP_LEN

_from_bytes = int.from_bytes

(P_DST_MAC, P_SRC_MAC, P_ETHERTYPE, P_SRC, P_DST, P_PROTO, P_TTL, P_FRAG, P_SPORT, P_DPORT,
 P_SEQ, P_ACK, P_FLAGS, P_WINDOW, P_OPTS, P_PAYLOAD, P_L3, P_L4, P_END, P_CSUM) = range(20)

# Ethernet + IPv4 in one unpack: the common case costs one call. Composed from
# the two declared layouts, not restated.
_ETH_IPV4 = struct.Struct(ETH.format + IPV4.format.lstrip("!"))
_ETH_IPV4_LEN = ETH_LEN + IPV4_LEN
_L4_V4 = ETH_LEN + IPV4_LEN  # L4 offset of an untagged IPv4 frame without IP options
_eth_ipv4_unpack = _ETH_IPV4.unpack_from
_eth_unpack = ETH.unpack_from
_ipv4_unpack = IPV4.unpack_from
_tcp_unpack = TCP.unpack_from
_udp_unpack = UDP.unpack_from
_icmp_unpack = ICMP.unpack_from

# The two commonest frames once a connection is up -- TCP carrying Linux's
# NOP NOP TS options (every segment once timestamps are agreed), over untagged
# IPv4 with IHL 5 and over IPv6 without extension headers -- each in ONE
# unpack. These are the declared layouts ETH + IPV4/IPV6 + TCP + TS_FAST laid
# end to end, with the fields the parse tuple does not carry read as pad bytes
# (fewer objects made): IPv4 TOS, ident, protocol, checksum; IPv6 next header;
# the TCP data-offset byte (peeked before: 0x80) and urgent pointer.
# parse_frame peeks at the protocol and data-offset bytes before choosing
# this, and re-checks everything the general path would check; any other
# frame (or a near miss) takes the general path.
_FAST_V4 = struct.Struct("!6s6sH" "B1xH2xHB1x2x4s4s" "HHII1xBHH2x" "III")
_FAST_V6 = struct.Struct("!6s6sH" "IH1xB16s16s" "HHII1xBHH2x" "III")
assert _FAST_V4.size == ETH.size + IPV4.size + TCP.size + TS_FAST.size == 66
assert _FAST_V6.size == ETH.size + IPV6.size + TCP.size + TS_FAST.size == 86
# A pure ACK (a third of a bulk transfer's frames) carries no payload: one
# shared empty memoryview instead of two new objects per frame.
_EMPTY = memoryview(b"")
_from_bytes = int.from_bytes
_V4_TS_END = _FAST_V4.size  # where the payload starts
_V6_TS_END = _FAST_V6.size
_V6_L4 = ETH_LEN + IPV6_LEN
_V4_PROTO_AT = ETH_LEN + 9  # the IPv4 protocol byte
_V4_THL_AT = _L4_V4 + 12  # the TCP data-offset byte: 0x80 = a 32-byte header
_V6_NH_AT = ETH_LEN + 6  # the IPv6 next-header byte
_V6_THL_AT = _V6_L4 + 12


def parse_frame(buf, _fast_min=_V4_TS_END, _fast_v4=_FAST_V4.unpack_from,
                _fast_v6=_FAST_V6.unpack_from, _mv=memoryview) -> tuple:
    """Parse one Ethernet frame; see the module docstring for the fields.

    (The keyword defaults only cache lookups for speed; pass ``buf`` alone.
    The tests pass a huge ``_fast_min`` to switch the one-unpack fast paths
    off and check that the general path gives the same answers.)
    """
    n = len(buf)
    # The fast paths spell their offsets and constants as literals: on the
    # hottest lines a LOAD_CONST beats a LOAD_GLOBAL, ~10 ns each. Each
    # literal is asserted equal to its named constant below the function.
    if n >= _fast_min:  # _V4_TS_END
        if buf[23] == 6 and buf[46] == 0x80:  # _V4_PROTO_AT is TCP, _V4_THL_AT: 32-byte header
            (dst_mac, src_mac, etype, vihl, total, ff, ttl, src, dst, sport, dport, seq, ack,
             flags, win, csum, magic, tsval, tsecr) = _fast_v4(buf, 0)
            end = 14 + total  # ETH_LEN
            if (etype == 0x0800 and vihl == 0x45 and magic == 0x0101080A  # ETH_P_IP, TS_FAST_MAGIC
                    and not ff & 0x3FFF and 66 <= end <= n):
                return (dst_mac, src_mac, 0x0800, src, dst, 6, ttl, None, sport, dport,
                        seq, ack, flags, win, (None, None, False, (), tsval, tsecr),
                        _mv(buf)[66:end] if end != 66 else _EMPTY, 14, 34, end, csum)
        elif buf[20] == 6 and n >= 86 and buf[66] == 0x80:  # _V6_NH_AT, _V6_TS_END, _V6_THL_AT
            (dst_mac, src_mac, etype, vtf, plen, hlim, src, dst, sport, dport, seq, ack,
             flags, win, csum, magic, tsval, tsecr) = _fast_v6(buf, 0)
            end = 54 + plen  # _V6_L4
            if (etype == 0x86DD and vtf >> 28 == 6 and magic == 0x0101080A
                    and 86 <= end <= n):
                return (dst_mac, src_mac, 0x86DD, src, dst, 6, hlim, None, sport,
                        dport, seq, ack, flags, win, (None, None, False, (), tsval, tsecr),
                        _mv(buf)[86:end] if end != 86 else _EMPTY, 14, 54, end, csum)

    # The general path: every frame the fast paths did not answer. Each header
    # is checked once, here: L2 (802.1Q skipped), then L3 (IPv4 inline, IPv6
    # through parse_ipv6), then one L4 section for both address families.
    l3 = 14  # ETH_LEN
    if n >= 34:  # _ETH_IPV4_LEN: Ethernet + IPv4 in one unpack, the common case
        (dst_mac, src_mac, etype, vihl, _tos, total, ident, ff, ttl, proto, _c, src,
         dst) = _eth_ipv4_unpack(buf, 0)
    elif n < 14:
        raise ParseError("eth_truncated")
    else:
        dst_mac, src_mac, etype = _eth_unpack(buf, 0)
        if etype == 0x0800:
            # Too short for Ethernet + IPv4: without this a truncated IPv4
            # frame came out as "non-IP, EtherType 0x0800".
            raise ParseError("ipv4_truncated")
    if etype != 0x0800:  # ETH_P_IP
        if etype == ETH_P_8021Q or etype == ETH_P_8021AD:
            if n < 18:
                raise ParseError("eth_truncated", "vlan tag")
            _tci, etype = VLAN_TAG.unpack_from(buf, 14)
            l3 = 18  # ETH_LEN + the tag
            if etype == 0x0800:
                if n < 38:
                    raise ParseError("ipv4_truncated")
                vihl, _tos, total, ident, ff, ttl, proto, _c, src, dst = _ipv4_unpack(buf, 18)
        if etype == ETH_P_IPV6:
            src, dst, proto, ttl, frag, l4, end = parse_ipv6(buf, l3)
            if frag is not None and (frag[1] or frag[2]):  # not an atomic fragment
                return (dst_mac, src_mac, etype, src, dst, proto, ttl, frag, 0, 0, 0, 0, 0, 0,
                        NO_OPTIONS, _mv(buf)[l4:end], l3, l4, end, 0)
        elif etype != 0x0800:
            if etype < 0x0600:
                # An 802.3 length field, not an EtherType (LLC/SNAP): not for us.
                raise ParseError("eth_not_ethernet_ii")
            if etype == ETH_P_8021Q or etype == ETH_P_8021AD:  # a second tag
                raise ParseError("eth_vlan_stacked")
            return (dst_mac, src_mac, etype, None, None, 0, 0, None, 0, 0, 0, 0, 0, 0,
                    NO_OPTIONS, _mv(buf)[l3:], l3, l3, n, 0)
    if etype == 0x0800:
        # IPv4: version 4, IHL >= 5, IHL*4 <= total length <= bytes present
        # (Ethernet padding past the total length is not part of the packet).
        # The header checksum is ipv4_header_ok's job.
        if vihl == 0x45:
            l4 = l3 + 20  # IPV4_LEN
        elif vihl >> 4 != 4:
            raise ParseError("ipv4_bad_version")
        else:
            l4 = (vihl & 15) << 2
            if l4 < 20:  # IPV4_LEN
                raise ParseError("ipv4_bad_ihl")
            l4 += l3
        end = l3 + total
        if end < l4 or end > n:
            raise ParseError("ipv4_bad_length")
        if ff & 0x3FFF:  # IP_MF | IP_OFFMASK: a fragment, its data no L4 header
            return (dst_mac, src_mac, 0x0800, src, dst, proto, ttl,
                    (ident, (ff & 0x1FFF) << 3, 1 if ff & 0x2000 else 0), 0, 0, 0, 0, 0, 0,
                    NO_OPTIONS, _mv(buf)[l4:end], l3, l4, end, 0)
    mv = _mv(buf)
    if proto == 6:  # PROTO_TCP
        if end - l4 < 20:  # TCP_LEN
            raise ParseError("tcp_truncated")
        sport, dport, seq, ack, offflags, win, csum, _urg = _tcp_unpack(buf, l4)
        thl = (offflags >> 10) & 0x3C
        if thl == 20:
            opts = NO_OPTIONS
        elif thl < 20 or l4 + thl > end:
            raise ParseError("tcp_bad_offset")
        else:
            opts = parse_tcp_options(mv[l4 + 20:l4 + thl])
        return (dst_mac, src_mac, etype, src, dst, 6, ttl, None, sport, dport, seq, ack,
                offflags & 0xFF, win, opts, mv[l4 + thl:end], l3, l4, end, csum)
    if proto == 17:  # PROTO_UDP (DNS, QUIC)
        if end - l4 < 8:  # UDP_LEN
            raise ParseError("udp_truncated")
        sport, dport, length, csum = _udp_unpack(buf, l4)
        if length < 8 or length > end - l4:
            # IPv6 jumbograms (length 0) are not supported: the MTU caps at 65520.
            raise ParseError("udp_bad_length")
        return (dst_mac, src_mac, etype, src, dst, 17, ttl, None, sport, dport, 0, 0, 0, 0,
                NO_OPTIONS, mv[l4 + 8:l4 + length], l3, l4, l4 + length, csum)
    if proto == 1 or proto == 58:  # PROTO_ICMP, PROTO_ICMPV6
        if end - l4 < 8:  # ICMP_LEN
            raise ParseError("icmp_truncated")
        itype, code, csum, ident, iseq = _icmp_unpack(buf, l4)
        return (dst_mac, src_mac, etype, src, dst, proto, ttl, None, itype, code, ident, iseq, 0, 0,
                NO_OPTIONS, mv[l4 + 8:end], l3, l4, end, csum)
    return (dst_mac, src_mac, etype, src, dst, proto, ttl, None, 0, 0, 0, 0, 0, 0, NO_OPTIONS,
            mv[l4:end], l3, l4, end, 0)


# The literals parse_frame spells, checked against their names.
assert (_V4_TS_END, _V4_PROTO_AT, _V4_THL_AT, _ETH_IPV4_LEN, _L4_V4) == (66, 23, 46, 34, 34)
assert (_V6_TS_END, _V6_NH_AT, _V6_THL_AT, _V6_L4) == (86, 20, 66, 54)
assert (ETH_LEN, IPV4_LEN, TCP_LEN, UDP_LEN, ICMP_LEN) == (14, 20, 20, 8, 8)
assert (ETH_P_IP, ETH_P_IPV6, TS_FAST_MAGIC) == (0x0800, 0x86DD, 0x0101080A)
assert (PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6) == (1, 6, 17, 58)
assert (IP_MF | IP_OFFMASK, IP_OFFMASK, IP_MF) == (0x3FFF, 0x1FFF, 0x2000)


def ipv4_header_ok(frame, l3: int, l4: int) -> bool:
    """True when the IPv4 header checksum of ``frame[l3:l4]`` is correct.

    ``checksum(hdr) == 0`` written out in one call (it runs on every IPv4
    frame from the container): the header is a whole number of 16-bit words,
    and its ones'-complement sum is 0xFFFF exactly when the header read as
    one integer is a non-zero multiple of 0xFFFF (see wire/checksum.py)."""
    x = _from_bytes(frame[l3:l4], "big")
    return x != 0 and x % 0xFFFF == 0


def l4_checksum_ok(p: tuple, frame) -> bool:
    """Verify the L4 checksum of a parsed, unfragmented frame.

    UDP over IPv4 with checksum 0 means "none" (RFC 768) and passes; ICMPv4
    has no pseudo-header. ``frame`` is the same buffer ``p`` was parsed from.
    """
    proto = p[P_PROTO]
    l4 = p[P_L4]
    seg = frame[l4:p[P_END]]
    if p[P_ETHERTYPE] == ETH_P_IP:
        if proto == PROTO_ICMP:
            return checksum(seg) == 0
        if proto == PROTO_UDP and p[P_CSUM] == 0:
            return True
        return checksum(seg, pseudo_sum_v4(p[P_SRC], p[P_DST], proto, len(seg))) == 0
    return checksum(seg, pseudo_sum_v6(p[P_SRC], p[P_DST], proto, len(seg))) == 0


# ---------------------------------------------------------------------------
# Builders. Each returns a new bytearray holding the whole frame; headers are
# packed in place with the declared Structs.

def _l3_into(buf, v6: bool, src: bytes, dst: bytes, proto: int, l4len: int, ttl: int,
             ident: int, flags_frag: int) -> int:
    """Pack the IP header at ETH_LEN; return the L4 offset."""
    if v6:
        IPV6.pack_into(buf, ETH_LEN, 0x60000000, l4len, proto, ttl, src, dst)
        return ETH_LEN + IPV6_LEN
    IPV4.pack_into(buf, ETH_LEN, 0x45, 0, IPV4_LEN + l4len, ident, flags_frag, ttl, proto, 0, src,
                   dst)
    c = checksum(memoryview(buf)[ETH_LEN:ETH_LEN + IPV4_LEN])
    buf[ETH_LEN + 10] = c >> 8
    buf[ETH_LEN + 11] = c & 0xFF
    return ETH_LEN + IPV4_LEN


def _pseudo(v6: bool, src: bytes, dst: bytes, proto: int, length: int) -> int:
    if v6:
        return pseudo_sum_v6(src, dst, proto, length)
    return pseudo_sum_v4(src, dst, proto, length)


def build_tcp(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int,
              seq: int, ack: int, flags: int, window: int, options: bytes = b"", payload=b"",
              *, ttl: int = 64, ident: int = 0, csum: bool = True, plen: int = 0) -> bytearray:
    """A whole TCP frame (IPv4 or IPv6 chosen by the address length).

    With ``csum=False`` the checksum field holds the pseudo-header sum, as a
    virtio-net ``NEEDS_CSUM`` frame wants (csum_start = L4 offset,
    csum_offset = 16). ``plen``: the headers alone for a payload of that many
    bytes written after them (``writev``; ``csum=False`` only), none copied here.
    """
    assert not (plen and csum), "a separate payload leaves its checksum to the kernel"
    v6 = len(src) == 16
    thl = TCP_LEN + len(options)
    l4len = thl + len(payload) + plen
    l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
    buf = bytearray(l4 + l4len - plen)
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IPV6 if v6 else ETH_P_IP)
    _l3_into(buf, v6, src, dst, PROTO_TCP, l4len, ttl, ident, IP_DF)
    TCP.pack_into(buf, l4, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                  (thl << 10) | flags, window, 0, 0)
    if options:
        buf[l4 + TCP_LEN:l4 + thl] = options
    if payload:
        buf[l4 + thl:] = payload
    ps = _pseudo(v6, src, dst, PROTO_TCP, l4len)
    c = checksum(memoryview(buf)[l4:], ps) if csum else ps
    buf[l4 + 16] = c >> 8
    buf[l4 + 17] = c & 0xFF
    return buf


# The TCP-over-IPv4 frames of established flows, the per-packet case: the
# three headers in one pack, the IPv4 header checksum and the pseudo-header
# sum from the flow's address sum (``addr_sum4``) instead of a pass over the
# bytes. Same bytes as ``build_tcp`` (TTL 64, DF); the tests compare them.
_TCP4_HDRS = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIHHHH")
_TCP4_HDRS_LEN = ETH_LEN + IPV4_LEN + TCP_LEN
assert _TCP4_HDRS.size == _TCP4_HDRS_LEN
# The IPv4 header words that never change here: version/IHL, DF, TTL/protocol.
_TCP4_IP_CONST = 0x4500 + IP_DF + (64 << 8 | PROTO_TCP)


def addr_sum4(src: bytes, dst: bytes) -> int:
    """The plain (unfolded) sum of the 16-bit words of two IPv4 addresses."""
    a = _from_bytes(src, "big")
    b = _from_bytes(dst, "big")
    return (a >> 16) + (a & 0xFFFF) + (b >> 16) + (b & 0xFFFF)


def build_tcp4(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, asum: int, sport: int,
               dport: int, seq: int, ack: int, flags: int, window: int, options: bytes, payload,
               ident: int, csum: bool, plen: int = 0) -> bytearray:
    """``build_tcp`` for IPv4 with ``asum = addr_sum4(src, dst)`` known (``plen``
    as there: the headers alone, for ``plen`` payload bytes written after them)."""
    olen = len(options)
    thl = TCP_LEN + olen
    l4len = thl + len(payload) + plen
    x = _TCP4_IP_CONST + asum + IPV4_LEN + l4len + ident
    r = x % 0xFFFF                       # ones_sum's fold (x is never 0 here)
    ipcs = ~(r if r else 0xFFFF) & 0xFFFF
    x = asum + PROTO_TCP + l4len
    ps = x % 0xFFFF or 0xFFFF
    buf = bytearray(_TCP4_HDRS_LEN + l4len - TCP_LEN - plen)
    _TCP4_HDRS.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IP, 0x45, 0, IPV4_LEN + l4len, ident,
                         IP_DF, 64, PROTO_TCP, ipcs, src, dst, sport, dport, seq & 0xFFFFFFFF,
                         ack & 0xFFFFFFFF, (thl << 10) | flags, window, 0 if csum else ps, 0)
    if olen:
        buf[_TCP4_HDRS_LEN:_TCP4_HDRS_LEN + olen] = options
    if payload:
        buf[_TCP4_HDRS_LEN + olen:] = payload
    if csum:
        c = checksum(memoryview(buf)[ETH_LEN + IPV4_LEN:], ps)
        buf[ETH_LEN + IPV4_LEN + 16] = c >> 8
        buf[ETH_LEN + IPV4_LEN + 17] = c & 0xFF
    return buf


# The per-flow header template of an IPv4 TCP frame with the timestamp
# option alone (the segment nearly every established flow sends): Ethernet,
# IPv4 and TCP headers with addresses, ports and option kinds filled once;
# build_tcp4_ts patches the rest, in two writes (the IPv4 fields from total
# length to the checksum; the TCP fields from SEQ to TSecr).
TCP4_TS_HDR_LEN = _TCP4_HDRS_LEN + 12
_TS4_IP = struct.Struct("!HHHBBH").pack_into            # at 16: length .. header checksum
_TS4_TCP = struct.Struct("!IIHHHHBBBBII").pack_into     # at 38: SEQ .. TSecr


def tcp4_ts_template(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int,
                     dport: int) -> bytearray:
    """The constant bytes of a flow's timestamp-only IPv4 TCP frame (see
    build_tcp4_ts; a bytearray, so that ``tpl + payload`` is one too; never
    written to)."""
    return build_tcp4(dst_mac, src_mac, src, dst, 0, sport, dport, 0, 0, 0, 0,
                      b"\x01\x01\x08\x0a" + bytes(8), b"", 0, False)


def build_tcp4_ts(tpl: bytearray, asum: int, seq: int, ack: int, flags: int, window: int,
                  tsval: int, tsecr: int, payload, ident: int) -> bytearray:
    """``build_tcp4(..., options=NOP NOP TS(tsval, tsecr), csum=False)`` from
    the flow's ``tcp4_ts_template``: the same bytes, with the pseudo-header sum
    in the TCP checksum field (the checksum left to the TAP: NEEDS_CSUM)."""
    l4len = 32 + len(payload)                     # TCP header with 12 option bytes
    r = (_TCP4_IP_CONST + 20 + asum + l4len + ident) % 0xFFFF   # IPV4_LEN; ones_sum's fold
    buf = tpl + payload
    _TS4_IP(buf, 16, 20 + l4len, ident, 0x4000, 64, 6,   # IP_DF, TTL, PROTO_TCP
            ~(r if r else 0xFFFF) & 0xFFFF)
    _TS4_TCP(buf, 38, seq, ack, 0x8000 | flags, window,   # data offset 8 words
             (asum + 6 + l4len) % 0xFFFF or 0xFFFF, 0, 1, 1, 8, 10, tsval, tsecr)
    return buf


assert IP_DF == 0x4000 and PROTO_TCP == 6 and IPV4_LEN == 20 and TCP_LEN + 12 == 32


def build_udp(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int,
              payload=b"", *, ttl: int = 64, ident: int = 0, flags_frag: int = 0,
              csum: bool = True) -> bytearray:
    """A whole UDP frame. A computed checksum of 0 is sent as 0xFFFF (RFC 768)."""
    v6 = len(src) == 16
    l4len = UDP_LEN + len(payload)
    l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
    buf = bytearray(l4 + l4len)
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IPV6 if v6 else ETH_P_IP)
    _l3_into(buf, v6, src, dst, PROTO_UDP, l4len, ttl, ident, flags_frag)
    UDP.pack_into(buf, l4, sport, dport, l4len, 0)
    if payload:
        buf[l4 + UDP_LEN:] = payload
    ps = _pseudo(v6, src, dst, PROTO_UDP, l4len)
    if csum:
        c = checksum(memoryview(buf)[l4:], ps) or 0xFFFF
    else:
        c = ps
    buf[l4 + 6] = c >> 8
    buf[l4 + 7] = c & 0xFF
    return buf


def build_icmp(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, itype: int, code: int,
               rest_hi: int = 0, rest_lo: int = 0, data=b"", *, ttl: int = 64,
               ident: int = 0) -> bytearray:
    """A whole ICMPv4 (4-byte addresses) or ICMPv6 (16-byte) frame.

    ``rest_hi``/``rest_lo`` are the two 16-bit halves of the "rest of header"
    word: identifier and sequence for echo, 0 and the MTU for "fragmentation
    needed" / "packet too big" (where the MTU is 32 bits on v6: pass it whole
    as rest_lo when < 65536).
    """
    v6 = len(src) == 16
    l4len = ICMP_LEN + len(data)
    l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
    buf = bytearray(l4 + l4len)
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IPV6 if v6 else ETH_P_IP)
    proto = PROTO_ICMPV6 if v6 else PROTO_ICMP
    _l3_into(buf, v6, src, dst, proto, l4len, ttl, ident, 0)
    ICMP.pack_into(buf, l4, itype, code, 0, rest_hi, rest_lo)
    if data:
        buf[l4 + ICMP_LEN:] = data
    ps = pseudo_sum_v6(src, dst, proto, l4len) if v6 else 0
    c = checksum(memoryview(buf)[l4:], ps)
    buf[l4 + 2] = c >> 8
    buf[l4 + 3] = c & 0xFF
    return buf


def build_arp(dst_mac: bytes, src_mac: bytes, oper: int, sha: bytes, spa: bytes, tha: bytes,
              tpa: bytes) -> bytearray:
    """A whole ARP frame, padded to the 60-byte Ethernet minimum like a NIC would."""
    buf = bytearray(max(60, ETH_LEN + ARP_LEN))
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_ARP)
    build_arp_into(buf, ETH_LEN, oper, sha, spa, tha, tpa)
    return buf


def build_ipv4_fragment(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int,
                        ident: int, offset: int, more: bool, data, *, ttl: int = 64) -> bytearray:
    """One IPv4 fragment carrying ``data`` at byte ``offset`` (a multiple of 8)."""
    buf = bytearray(ETH_LEN + IPV4_LEN + len(data))
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IP)
    _l3_into(buf, False, src, dst, proto, len(data), ttl, ident,
             (IP_MF if more else 0) | (offset >> 3))
    buf[ETH_LEN + IPV4_LEN:] = data
    return buf


def build_ipv6_fragment(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int,
                        ident: int, offset: int, more: bool, data, *,
                        hop_limit: int = 64) -> bytearray:
    """One IPv6 fragment (RFC 8200 4.5): the IPv6 header, a fragment header
    naming ``proto``, and ``data`` at byte ``offset`` (a multiple of 8) of
    the fragmentable part."""
    buf = bytearray(ETH_LEN + IPV6_LEN + 8 + len(data))
    ETH.pack_into(buf, 0, dst_mac, src_mac, ETH_P_IPV6)
    IPV6.pack_into(buf, ETH_LEN, 0x60000000, 8 + len(data), NH_FRAGMENT, hop_limit, src, dst)
    FRAG_HDR.pack_into(buf, ETH_LEN + IPV6_LEN, proto, 0, offset | (1 if more else 0), ident)
    buf[ETH_LEN + IPV6_LEN + 8:] = data
    return buf


__all__ = [name for name in dir() if name.startswith(("P_", "parse_", "build_"))] + [
    "ipv4_header_ok", "l4_checksum_ok", "ones_sum"]
