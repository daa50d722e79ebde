"""DHCPv6 messages (RFC 8415), as far as a stateless server needs them.

usernet gives addresses by SLAAC (router advertisements); DHCPv6 only tells
the container its DNS server, in answer to an Information-request (RFC 8415
18.2.6, sent by clients when the RA's O flag is set).

Layout: msg-type (1), transaction-id (3), then options: option-code (2),
option-len (2), value. Options used:

* Client Identifier (1) and Server Identifier (2): a DUID; ours is DUID-LL
  (RFC 8415 11.4: type 3, hardware type 1, the MAC);
* Option Request (6): the codes the client asks for;
* DNS Recursive Name Server (23, RFC 3646): 16-byte addresses;
* Domain Search List (24, RFC 3646): DNS names, uncompressed.

Like every parser here: any bytes in, the result or
:class:`~usernet.wire.ParseError` out.
"""

import struct

from . import ParseError
from .dns import encode_name

DHCP6_HDR = struct.Struct("!I")       # msg-type << 24 | transaction-id
DHCP6_OPT = struct.Struct("!HH")      # option-code, option-len
DUID_LL = struct.Struct("!HH")        # DUID type, hardware type; then the link-layer address

SERVER_PORT = 547
CLIENT_PORT = 546

SOLICIT = 1
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
INFORMATION_REQUEST = 11

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_ORO = 6
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24

DUID_TYPE_LL = 3
HWTYPE_ETHER = 1


def parse_dhcpv6(buf) -> tuple:
    """Return ``(msg_type, xid, options)``; ``options`` maps each code to its
    raw value (a repeated option keeps the first, as a server needs only the
    client and server identifiers)."""
    n = len(buf)
    if n < 4:
        raise ParseError("dhcp6_truncated")
    (word,) = DHCP6_HDR.unpack_from(buf, 0)
    opts = {}
    p = 4
    while p < n:
        if n - p < 4:
            raise ParseError("dhcp6_bad_option")
        code, olen = DHCP6_OPT.unpack_from(buf, p)
        p += 4
        if p + olen > n:
            raise ParseError("dhcp6_bad_option")
        opts.setdefault(code, bytes(buf[p:p + olen]))
        p += olen
    return word >> 24, word & 0xFFFFFF, opts


def duid_ll(mac: bytes) -> bytes:
    return DUID_LL.pack(DUID_TYPE_LL, HWTYPE_ETHER) + mac


def _opt(code: int, value: bytes) -> bytes:
    return DHCP6_OPT.pack(code, len(value)) + value


def build_reply(xid: int, server_duid: bytes, client_id: bytes | None, dns: tuple = (),
                domains: tuple = ()) -> bytes:
    """A Reply: our server identifier, the client's identifier echoed (RFC
    8415 18.3.6 requires it when the client sent one), the DNS servers and
    search domains."""
    out = [DHCP6_HDR.pack((REPLY << 24) | (xid & 0xFFFFFF)), _opt(OPT_SERVERID, server_duid)]
    if client_id is not None:
        out.append(_opt(OPT_CLIENTID, client_id))
    if dns:
        out.append(_opt(OPT_DNS_SERVERS, b"".join(dns)))
    if domains:
        out.append(_opt(OPT_DOMAIN_LIST, b"".join(encode_name(d) for d in domains)))
    return b"".join(out)
