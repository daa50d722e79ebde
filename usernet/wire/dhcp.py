"""BOOTP/DHCP messages (RFC 951, RFC 2131, options RFC 2132).

Layout of the fixed BOOTP part (236 bytes): op (1), htype (1), hlen (1),
hops (1), xid (4), secs (2), flags (2), ciaddr (4), yiaddr (4), siaddr (4),
giaddr (4), chaddr (16), sname (64), file (128). Then the magic cookie
99.130.83.99 and the options: code (1), length (1), value; code 0 is a pad
byte, code 255 ends the list.

What :func:`parse_dhcp` accepts: Ethernet clients only (htype 1, hlen 6,
the only hardware a TAP has); the magic cookie must be there (plain BOOTP
is not served). Options may overflow into ``file``/``sname`` (option 52,
RFC 2131 4.1) and an option repeated is one long option, its values
concatenated (RFC 3396). A missing END is tolerated (end of packet ends the
list). The few options a server acts on are checked for their fixed length
(53: 1 byte; 50, 54: 4 bytes); the rest are kept raw in ``options``.

:func:`build_dhcp` builds a BOOTREPLY; it pads to the 300-byte minimum of
RFC 1542 2.1 because some old clients drop anything shorter.

Like every parser in ``usernet.wire``: any bytes in, the result or
:class:`~usernet.wire.ParseError` out, nothing else.
"""

import struct
from typing import NamedTuple

from . import ParseError
from .dns import encode_name

BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
BOOTP_LEN = 236
MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTIONS_OFFSET = BOOTP_LEN + 4
SNAME_OFFSET = 44
FILE_OFFSET = 108
BOOTP_MIN_LEN = 300           # RFC 1542 2.1

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHER = 1
FLAG_BROADCAST = 0x8000       # RFC 2131 2, figure 2

SERVER_PORT = 67
CLIENT_PORT = 68

# Message types, option 53 (RFC 2132 9.6).
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

# Option codes (RFC 2132 unless noted).
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST = 55
OPT_MESSAGE = 56
OPT_MAX_MESSAGE_SIZE = 57
OPT_T1 = 58
OPT_T2 = 59
OPT_CLIENT_ID = 61
OPT_DOMAIN_SEARCH = 119       # RFC 3397
OPT_END = 255

ZERO_IP = b"\0\0\0\0"


class DhcpMessage(NamedTuple):
    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes                 # 6 bytes: the client's MAC
    msg_type: int | None          # option 53; None for plain BOOTP-style
    requested_ip: bytes | None    # option 50
    server_id: bytes | None       # option 54
    param_request: bytes          # option 55, one code per byte; b"" if absent
    client_id: bytes | None       # option 61
    hostname: bytes | None        # option 12, raw bytes (not necessarily text)
    options: dict                 # every option seen: code -> raw value

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


def _read_options(buf, off: int, end: int, into: dict) -> None:
    """Collect options from ``buf[off:end]`` into ``into``: code -> [parts].

    The parts of a repeated option are joined later (RFC 3396); keeping a
    list avoids quadratic copying on a packet full of tiny repeats.
    """
    while off < end:
        code = buf[off]
        if code == OPT_PAD:
            off += 1
            continue
        if code == OPT_END:
            return
        if off + 2 > end:
            raise ParseError("dhcp_bad_option", f"option {code} truncated")
        length = buf[off + 1]
        if off + 2 + length > end:
            raise ParseError("dhcp_bad_option", f"option {code} overruns")
        into.setdefault(code, []).append(bytes(buf[off + 2:off + 2 + length]))
        off += 2 + length


def _fixed(options: dict, code: int, size: int) -> bytes | None:
    value = options.get(code)
    if value is not None and len(value) != size:
        raise ParseError("dhcp_bad_option", f"option {code} length {len(value)}")
    return value


def parse_dhcp(buf) -> DhcpMessage:
    """Parse a DHCP message (the UDP payload)."""
    if len(buf) < OPTIONS_OFFSET:
        raise ParseError("dhcp_truncated")
    (op, htype, hlen, _hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, _sname, _file) = BOOTP.unpack_from(buf, 0)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise ParseError("dhcp_bad_op")
    if htype != HTYPE_ETHER or hlen != 6:
        raise ParseError("dhcp_unsupported_htype", f"htype={htype} hlen={hlen}")
    if bytes(buf[BOOTP_LEN:OPTIONS_OFFSET]) != MAGIC_COOKIE:
        raise ParseError("dhcp_no_cookie")

    parts: dict = {}
    _read_options(buf, OPTIONS_OFFSET, len(buf), parts)
    # Option overload: 1 = options continue in "file", 2 = in "sname",
    # 3 = both; RFC 2131 4.1 says read "file" before "sname".
    if OPT_OVERLOAD in parts:
        overload = b"".join(parts[OPT_OVERLOAD])
        if len(overload) != 1:
            raise ParseError("dhcp_bad_option", "option 52 length")
        if overload[0] & 1:
            _read_options(buf, FILE_OFFSET, FILE_OFFSET + 128, parts)
        if overload[0] & 2:
            _read_options(buf, SNAME_OFFSET, SNAME_OFFSET + 64, parts)
    options = {code: b"".join(p) for code, p in parts.items()}

    mtype = _fixed(options, OPT_MESSAGE_TYPE, 1)
    return DhcpMessage(
        op, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr[:6],
        mtype[0] if mtype is not None else None,
        _fixed(options, OPT_REQUESTED_IP, 4),
        _fixed(options, OPT_SERVER_ID, 4),
        options.get(OPT_PARAM_REQUEST, b""),
        options.get(OPT_CLIENT_ID),
        options.get(OPT_HOSTNAME),
        options,
    )


def encode_options(options) -> bytes:
    """Encode ``[(code, value bytes), ...]`` and the END option.

    A value over 255 bytes is split into several options with the same code
    (RFC 3396), which a client joins back together.
    """
    out = bytearray()
    for code, value in options:
        value = bytes(value)
        if not value:
            out += bytes((code, 0))
        for i in range(0, len(value), 255):
            chunk = value[i:i + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    out.append(OPT_END)
    return bytes(out)


def build_dhcp(xid: int, chaddr: bytes, options, *, op: int = BOOTREPLY, yiaddr: bytes = ZERO_IP,
               ciaddr: bytes = ZERO_IP, siaddr: bytes = ZERO_IP, giaddr: bytes = ZERO_IP,
               flags: int = 0, secs: int = 0) -> bytes:
    """A DHCP message (default a BOOTREPLY) with ``options``.

    ``options`` is ``[(code, value bytes), ...]`` in the order to send; put
    option 53 first (RFC 2131 doesn't require it, some clients expect it).
    """
    head = BOOTP.pack(op, HTYPE_ETHER, 6, 0, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
                      bytes(chaddr[:6]), b"", b"")
    msg = head + MAGIC_COOKIE + encode_options(options)
    if len(msg) < BOOTP_MIN_LEN:
        msg += bytes(BOOTP_MIN_LEN - len(msg))
    return msg


def encode_domain_search(names) -> bytes:
    """Option 119's value (RFC 3397): the names in DNS wire form, uncompressed."""
    return b"".join(encode_name(name) for name in names)
