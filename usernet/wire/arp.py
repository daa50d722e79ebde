"""ARP for IPv4 over Ethernet (RFC 826).

Layout after the Ethernet header: htype (2), ptype (2), hlen (1), plen (1),
oper (2), sha (6), spa (4), tha (6), tpa (4): 28 bytes. Only Ethernet/IPv4
ARP (htype 1, ptype 0x0800, hlen 6, plen 4) parses; anything else is a
ParseError.
"""

import struct
from typing import NamedTuple

from . import ParseError

ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = 28
ARP_REQUEST = 1
ARP_REPLY = 2


class ArpPacket(NamedTuple):
    oper: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def parse_arp(buf, off: int = 0) -> ArpPacket:
    if len(buf) - off < ARP_LEN:
        raise ParseError("arp_truncated")
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = ARP.unpack_from(buf, off)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise ParseError("arp_unsupported", f"htype={htype} ptype={ptype:#x}")
    return ArpPacket(oper, sha, spa, tha, tpa)


def build_arp_into(buf, off: int, oper: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> int:
    ARP.pack_into(buf, off, 1, 0x0800, 6, 4, oper, sha, spa, tha, tpa)
    return off + ARP_LEN
