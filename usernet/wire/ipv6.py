"""IPv6 (RFC 8200) with the extension-header chain walked to the upper layer.

Layout: version/class/flow (4), payload length (2), next header (1), hop
limit (1), source (16), destination (16): 40 bytes. Extension headers walked:
hop-by-hop (0), routing (43), destination options (60) — each
``(next, hdr_ext_len)`` with length (hdr_ext_len+1)*8 — and fragment (44,
8 bytes: next, reserved, offset/M, identification). AH (51) has length
(len+2)*4. No-next-header (59) ends the chain with no upper layer. The walk
is bounded (at most 8 extension headers) so a crafted chain cannot loop.

A fragment header that makes a real fragment (offset or M set) ends the
walk: what follows it is the fragmentable part, a slice of the original
datagram's extension headers and upper layer, readable only once
reassembled; the returned protocol is the fragment header's next header and
the L4 offset points just past it. An atomic fragment (offset 0, M clear,
RFC 6946) is walked through like any other header.
"""

import struct

from . import ParseError

IPV6 = struct.Struct("!IHBB16s16s")
IPV6_LEN = 40
EXT_HDR = struct.Struct("!BB")
FRAG_HDR = struct.Struct("!BBHI")  # next, reserved, offset<<3 | M, ident

NH_HOPOPT = 0
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_AH = 51
NH_NONE = 59
NH_DSTOPTS = 60
MAX_EXT_HEADERS = 8


def parse_ipv6(buf, off: int = 0) -> tuple:
    """Return ``(src, dst, proto, hop_limit, frag, l4_offset, end)``.

    ``frag`` is None, or ``(ident, offset_bytes, more)`` for a fragment.
    ``l4_offset`` and ``end`` are absolute offsets into ``buf``.
    """
    n = len(buf) - off
    if n < IPV6_LEN:
        raise ParseError("ipv6_truncated")
    vtf, plen, nh, hlim, src, dst = IPV6.unpack_from(buf, off)
    if vtf >> 28 != 6:
        raise ParseError("ipv6_bad_version")
    if IPV6_LEN + plen > n:
        raise ParseError("ipv6_bad_length")
    end = off + IPV6_LEN + plen
    p = off + IPV6_LEN
    frag = None
    for _ in range(MAX_EXT_HEADERS + 1):  # each header, then the upper layer
        if nh == NH_HOPOPT or nh == NH_ROUTING or nh == NH_DSTOPTS:
            if end - p < 8:
                raise ParseError("ipv6_ext_truncated")
            nxt, hlen = EXT_HDR.unpack_from(buf, p)
            hlen = (hlen + 1) << 3
        elif nh == NH_AH:
            if end - p < 8:
                raise ParseError("ipv6_ext_truncated")
            nxt, hlen = EXT_HDR.unpack_from(buf, p)
            hlen = (hlen + 2) << 2
        elif nh == NH_FRAGMENT:
            if end - p < 8:
                raise ParseError("ipv6_ext_truncated")
            nxt, _res, offm, ident = FRAG_HDR.unpack_from(buf, p)
            frag = (ident, offm & 0xFFF8, offm & 1)
            if offm & 0xFFF9:
                return src, dst, nxt, hlim, frag, p + 8, end
            hlen = 8
        else:
            return src, dst, nh, hlim, frag, p, end
        if p + hlen > end:
            raise ParseError("ipv6_ext_truncated")
        p += hlen
        nh = nxt
    raise ParseError("ipv6_ext_chain_too_long")


def next_header_pointer(buf, off: int = 0) -> int:
    """Where, counted from the IPv6 header at ``off``, the Next Header field
    that names the upper layer sits: the pointer of an ICMPv6 parameter
    problem "unrecognized next header" (RFC 4443 3.4). Call it only on a
    packet :func:`parse_ipv6` accepted."""
    nh = buf[off + 6]
    at = 6
    p = off + IPV6_LEN
    for _ in range(MAX_EXT_HEADERS):
        if nh == NH_HOPOPT or nh == NH_ROUTING or nh == NH_DSTOPTS:
            hlen = (buf[p + 1] + 1) << 3
        elif nh == NH_AH:
            hlen = (buf[p + 1] + 2) << 2
        elif nh == NH_FRAGMENT:
            hlen = 8
        else:
            break
        at = p - off
        nh = buf[p]
        p += hlen
    return at


# Option actions (RFC 8200 4.2): the option type's two high bits.
OPT_PAD1 = 0
OPT_PADN = 1
OPT_ACT_SKIP = 0x00
OPT_ACT_DISCARD = 0x40
OPT_ACT_REPORT = 0x80           # discard, parameter problem code 2, even to multicast
OPT_ACT_REPORT_UNICAST = 0xC0   # discard, parameter problem code 2 unless multicast
# Parameter problem codes (RFC 4443 3.4).
PP_ERRONEOUS_HEADER = 0
PP_UNRECOGNIZED_NEXT_HEADER = 1
PP_UNRECOGNIZED_OPTION = 2
DISCARD = (-1, 0)               # drop silently


def ext_header_problem(buf, off: int, l4: int):
    """What a destination must do about the extension headers between the
    IPv6 header at ``off`` and ``l4`` (as :func:`parse_ipv6` walked them):
    None to carry on; :data:`DISCARD` to drop silently; or ``(code,
    pointer)`` for an ICMPv6 parameter problem, the pointer counted from the
    IPv6 header's start (RFC 4443 3.4). Checked, in RFC 8200's words:

    * 4.1: hop-by-hop options only immediately after the IPv6 header, else
      "unrecognized next header" pointing at the field that named it;
    * 4.2: each option in hop-by-hop and destination options: Pad1 and PadN
      are understood; any other type acts by its two high bits (skip,
      discard, discard and report "unrecognized option" pointing at it);
    * 4.4: a routing header with Segments Left non-zero names a route we do
      not take (we recognize no routing type): "erroneous header" pointing
      at the Routing Type.

    Never raises on what :func:`parse_ipv6` accepted; on anything else it
    stops at the first inconsistency and answers :data:`DISCARD`."""
    nh = buf[off + 6]
    at = 6                       # where the field naming the current header sits
    p = off + IPV6_LEN
    first = True
    for _ in range(MAX_EXT_HEADERS):
        if p >= l4:
            return None
        if l4 - p < 2:
            return DISCARD
        if nh == NH_HOPOPT or nh == NH_DSTOPTS:
            if nh == NH_HOPOPT and not first:
                return PP_UNRECOGNIZED_NEXT_HEADER, at
            hlen = (buf[p + 1] + 1) << 3
            if p + hlen > l4:
                return DISCARD
            q = p + 2
            while q < p + hlen:
                otype = buf[q]
                if otype == OPT_PAD1:
                    q += 1
                    continue
                if q + 2 > p + hlen:
                    return DISCARD
                olen = buf[q + 1]
                if otype != OPT_PADN:
                    act = otype & 0xC0
                    if act == OPT_ACT_DISCARD:
                        return DISCARD
                    if act != OPT_ACT_SKIP:
                        return PP_UNRECOGNIZED_OPTION, q - off
                q += 2 + olen
            if q != p + hlen:
                return DISCARD
        elif nh == NH_ROUTING:
            if l4 - p < 4:
                return DISCARD
            hlen = (buf[p + 1] + 1) << 3
            if buf[p + 3]:       # segments left
                return PP_ERRONEOUS_HEADER, p + 2 - off
        elif nh == NH_FRAGMENT:
            hlen = 8
        elif nh == NH_AH:
            hlen = (buf[p + 1] + 2) << 2
        else:
            return None
        first = False
        at = p - off
        nh = buf[p]
        p += hlen
    return None
