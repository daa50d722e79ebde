"""IPv4 (RFC 791).

Layout: version/IHL (1), DSCP/ECN (1), total length (2), identification (2),
flags/fragment offset (2), TTL (1), protocol (1), header checksum (2),
source (4), destination (4); options to IHL*4 (skipped, never interpreted).

Validation in :func:`parse_ipv4`: version 4, IHL >= 5, IHL*4 <= total length
<= bytes present (trailing Ethernet padding beyond total length is ignored),
and optionally the header checksum. A fragment (MF set or offset > 0) is
flagged; its payload is not an L4 header.
"""

import struct

from . import ParseError
from .checksum import checksum

IPV4 = struct.Struct("!BBHHHBBH4s4s")
IPV4_LEN = 20

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58


def parse_ipv4(buf, off: int = 0, verify_checksum: bool = False) -> tuple:
    """Return ``(src, dst, proto, ttl, ident, flags_frag, hdr_len, total_len)``.

    ``hdr_len`` and ``total_len`` are relative to ``off``.
    """
    n = len(buf) - off
    if n < IPV4_LEN:
        raise ParseError("ipv4_truncated")
    vihl, _tos, total, ident, ff, ttl, proto, _csum, src, dst = IPV4.unpack_from(buf, off)
    if vihl >> 4 != 4:
        raise ParseError("ipv4_bad_version")
    hl = (vihl & 15) << 2
    if hl < IPV4_LEN:
        raise ParseError("ipv4_bad_ihl")
    if total < hl or total > n:
        raise ParseError("ipv4_bad_length")
    if verify_checksum and checksum(buf[off:off + hl]) != 0:
        raise ParseError("ipv4_bad_checksum")
    return src, dst, proto, ttl, ident, ff, hl, total


def build_ipv4_into(buf, off: int, src: bytes, dst: bytes, proto: int, payload_len: int,
                    ident: int = 0, ttl: int = 64, flags_frag: int = IP_DF, tos: int = 0) -> int:
    """Write a 20-byte IPv4 header with its checksum; return the payload offset."""
    total = IPV4_LEN + payload_len
    IPV4.pack_into(buf, off, 0x45, tos, total, ident, flags_frag, ttl, proto, 0, src, dst)
    c = checksum(memoryview(buf)[off:off + IPV4_LEN])
    buf[off + 10] = c >> 8
    buf[off + 11] = c & 0xFF
    return off + IPV4_LEN
