"""IPv6 neighbour discovery messages (RFC 4861) and their options.

These are ICMPv6 messages (types 133-136); this module reads and writes what
follows the ICMPv6 type/code/checksum word, and the frame builder
(:func:`usernet.wire.frame.build_icmp`) adds the ICMPv6 header, the IPv6
header (hop limit 255, RFC 4861 7.1) and the checksum.

Layouts (after type, code, checksum):

* Router Solicitation (133): reserved (4), options.
* Router Advertisement (134): cur hop limit (1), flags M/O (1), router
  lifetime (2), reachable time (4), retrans timer (4), options.
* Neighbor Solicitation (135): reserved (4), target address (16), options.
* Neighbor Advertisement (136): flags R/S/O + reserved (4), target (16),
  options.

Options are type (1), length in units of 8 bytes (1), value. Declared here:

* source / target link-layer address (1 / 2): a 6-byte MAC for Ethernet;
* prefix information (3, 32 bytes): prefix length, flags L/A, valid and
  preferred lifetimes, reserved, prefix (16);
* MTU (5, 8 bytes): reserved, MTU (4);
* recursive DNS server (25, RFC 8106): reserved, lifetime (4), addresses.

Parsing keeps what a router needs to answer (the target, the sender's
link-layer address) and checks what RFC 4861 7.1.1 / 6.1.1 tell a receiver
to check of the message itself: code 0, a long enough body, no option of
length 0 (which would loop a naive walker forever). The IPv6-level checks
(hop limit 255, source address rules) belong to the stack, which has the IP
header. Like every parser here: any bytes in, the result or
:class:`~usernet.wire.ParseError` out.
"""

import struct

from . import ParseError
from .icmp import ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT

ND_OPT = struct.Struct("!BB")                      # type, length in 8-byte units
ND_OPT_PREFIX = struct.Struct("!BBBBIII16s")       # type, len, prefix len, flags, valid, preferred, reserved, prefix
ND_OPT_MTU = struct.Struct("!BBHI")                # type, len, reserved, mtu
ND_OPT_RDNSS = struct.Struct("!BBHI")              # type, len, reserved, lifetime; then addresses
RA_BODY = struct.Struct("!II")                     # reachable time, retrans timer
ND_HOP_LIMIT = 255                                 # RFC 4861 7.1.1: anything else was routed

OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25

# Neighbor Advertisement flags (the top bits of the first 32-bit word).
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20
# Router Advertisement flags.
RA_MANAGED = 0x80
RA_OTHER = 0x40
# Prefix information flags.
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40

_MIN_BODY = {  # bytes after the 4-byte ICMPv6 header, before options
    ND_ROUTER_SOLICIT: 4,
    ND_ROUTER_ADVERT: 12,
    ND_NEIGHBOR_SOLICIT: 20,
    ND_NEIGHBOR_ADVERT: 20,
}


def parse_nd(itype: int, code: int, body) -> tuple:
    """Parse one neighbour-discovery message.

    ``body`` is the ICMPv6 message after its 4-byte type/code/checksum word.
    Returns ``(target, link_addr)``: the target address (16 bytes; None for
    router messages) and the link-layer address the message carries (the
    source link-layer option of RS/NS, the target link-layer option of NA;
    None when absent)."""
    need = _MIN_BODY.get(itype)
    if need is None:
        raise ParseError("nd_not_nd")
    if code != 0:
        raise ParseError("nd_bad_code")
    n = len(body)
    if n < need:
        raise ParseError("nd_truncated")
    target = bytes(body[4:20]) if need == 20 else None
    want = OPT_TARGET_LL if itype == ND_NEIGHBOR_ADVERT else OPT_SOURCE_LL
    link = None
    p = need
    while p < n:
        if n - p < 2:
            raise ParseError("nd_bad_option")
        otype, olen = ND_OPT.unpack_from(body, p)
        olen <<= 3
        if olen == 0 or p + olen > n:
            # RFC 4861 4.6: "Nodes MUST silently discard an ND packet that
            # contains an option with length zero."
            raise ParseError("nd_bad_option")
        if otype == want and olen >= 8:
            link = bytes(body[p + 2:p + 8])
        p += olen
    return target, link


def _ll_option(otype: int, mac: bytes) -> bytes:
    return ND_OPT.pack(otype, 1) + mac


def build_na(target: bytes, mac: bytes, flags: int = NA_SOLICITED | NA_OVERRIDE) -> tuple:
    """A Neighbor Advertisement for ``target`` at ``mac``: ``(rest_hi,
    rest_lo, data)`` for :func:`~usernet.wire.frame.build_icmp`."""
    return flags << 8, 0, target + _ll_option(OPT_TARGET_LL, mac)


def build_ns(target: bytes, mac: bytes) -> tuple:
    """A Neighbor Solicitation for ``target`` from a sender at ``mac``."""
    return 0, 0, target + _ll_option(OPT_SOURCE_LL, mac)


def build_ra(mac: bytes, *, prefix: bytes, prefix_len: int = 64, mtu: int = 0,
             dns: tuple = (), router_lifetime: int = 1800, valid: int = 86400,
             preferred: int = 14400, dns_lifetime: int = 1800, hop_limit: int = 64,
             flags: int = RA_OTHER) -> tuple:
    """A Router Advertisement offering ``prefix`` for SLAAC, this router as
    the default route, ``dns`` (addresses) as RDNSS and, when given, the
    link MTU. ``flags`` default: O set (DHCPv6 for other configuration,
    i.e. DNS, as RFC 8415 18.2.6's information-request), M clear (no
    stateful addresses)."""
    opts = [_ll_option(OPT_SOURCE_LL, mac),
            ND_OPT_PREFIX.pack(OPT_PREFIX_INFO, 4, prefix_len,
                               PREFIX_ON_LINK | PREFIX_AUTONOMOUS, valid, preferred, 0, prefix)]
    if mtu:
        opts.append(ND_OPT_MTU.pack(OPT_MTU, 1, 0, mtu))
    if dns:
        opts.append(ND_OPT_RDNSS.pack(OPT_RDNSS, 1 + 2 * len(dns), 0, dns_lifetime)
                    + b"".join(dns))
    return (hop_limit << 8) | flags, router_lifetime, RA_BODY.pack(0, 0) + b"".join(opts)
