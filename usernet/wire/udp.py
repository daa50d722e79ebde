"""UDP (RFC 768). Layout: sport (2), dport (2), length (2), checksum (2)."""

import struct

from . import ParseError

UDP = struct.Struct("!HHHH")
UDP_LEN = 8


def parse_udp(buf, off: int, end: int) -> tuple:
    """Return ``(sport, dport, checksum, payload_start, payload_end)``."""
    if end - off < UDP_LEN:
        raise ParseError("udp_truncated")
    sport, dport, length, csum = UDP.unpack_from(buf, off)
    if length < UDP_LEN or length > end - off:
        raise ParseError("udp_bad_length")
    return sport, dport, csum, off + UDP_LEN, off + length
