"""IPv6 (RFC 8200) with the extension-header chain walked to the upper layer.

Layout: version/class/flow (4), payload length (2), next header (1), hop
limit (1), source (16), destination (16): 40 bytes. Extension headers walked:
hop-by-hop (0), routing (43), destination options (60) — each
``(next, hdr_ext_len)`` with length (hdr_ext_len+1)*8 — and fragment (44,
8 bytes: next, reserved, offset/M, identification). AH (51) has length
(len+2)*4. No-next-header (59) ends the chain with no upper layer. The walk
is bounded (at most 8 extension headers) so a crafted chain cannot loop.
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
            hlen = 8
        else:
            return src, dst, nh, hlim, frag, p, end
        if p + hlen > end:
            raise ParseError("ipv6_ext_truncated")
        p += hlen
        nh = nxt
    raise ParseError("ipv6_ext_chain_too_long")
