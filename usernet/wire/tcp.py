"""TCP header and options (RFC 9293, RFC 7323, RFC 2018).

Layout: sport (2), dport (2), seq (4), ack (4), data offset/reserved/flags
(2), window (2), checksum (2), urgent pointer (2); options to offset*4.

Options understood: EOL (0), NOP (1), MSS (2, len 4), window scale (3,
len 3), SACK-permitted (4, len 2), SACK blocks (5, len 2+8n, n 1..4),
timestamps (8, len 10). Unknown kinds with a sane length are skipped. A length
byte below 2, or one running past the options area, is a ParseError. A known
option with the wrong length is a ParseError too (Linux drops such options;
we refuse the segment, which the peer's retransmission makes harmless).

Hot-path note: Linux puts ``NOP NOP TS(10)`` (12 bytes) on every segment once
timestamps are agreed, and ``MSS SACK-permitted TS NOP WSCALE`` (20 bytes) on
its SYNs, so :func:`parse_tcp_options` checks for exactly those first and
answers each with one ``unpack_from``.
"""

import struct
from typing import NamedTuple

from . import ParseError

TCP = struct.Struct("!HHIIHHHH")
TCP_LEN = 20
# The options area Linux sends on every segment once timestamps are agreed:
# NOP NOP TS(8, 10) tsval tsecr, read as one big-endian word and two more.
TS_FAST = struct.Struct("!III")  # 0x0101080a, tsval, tsecr
TS_FAST_MAGIC = 0x0101080A
# Linux's SYN / SYN-ACK options, 20 bytes: MSS(2, 4) mss | SACK-permitted(4, 2)
# TS(8, 10) tsval tsecr | NOP WSCALE(3, 3) shift -- checked as one template.
_SYN_FAST = struct.Struct("!HHIIII")  # 0x0204, mss, 0x0402080a, tsval, tsecr, 0x010303xx
# The options with a value, each laid out once for the parser and the builder.
_MSS_OPT = struct.Struct("!BBH")  # kind 2, length 4, MSS
_TS_OPT = struct.Struct("!BBII")  # kind 8, length 10, TSval, TSecr
_SACK_BLOCK = struct.Struct("!II")  # left edge, right edge (after kind 5, length 2+8n)

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8


class TcpOptions(NamedTuple):
    """TCP options; a field is None (or False / ()) when absent.

    The parsers (:func:`parse_tcp_options`, and ``parse_frame`` for every
    segment) return *plain tuples* of this layout, not TcpOptions: making a
    NamedTuple costs ~0.35 us more per frame than a tuple, a fifth of the
    whole parse. Code that reads parsed options indexes them with the
    ``O_*`` constants below; TcpOptions (equal to a plain tuple of the same
    values) names the fields where options are built.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_perm: bool = False
    sack_blocks: tuple = ()
    ts_val: int | None = None
    ts_ecr: int | None = None


# Indexes into parsed options (plain tuples of the TcpOptions layout).
O_MSS, O_WSCALE, O_SACK_PERM, O_SACK_BLOCKS, O_TS_VAL, O_TS_ECR = range(6)
NO_OPTIONS = TcpOptions()


def parse_tcp_options(buf) -> tuple:
    """Parse the options area (bytes between the fixed header and data) into a
    plain tuple of the TcpOptions layout (index it with ``O_*``)."""
    n = len(buf)
    if n == 12:
        magic, tsval, tsecr = TS_FAST.unpack_from(buf, 0)
        if magic == TS_FAST_MAGIC:
            return (None, None, False, (), tsval, tsecr)
    elif n == 20:
        k_mss, mss, k_ts, tsval, tsecr, nop_ws = _SYN_FAST.unpack_from(buf, 0)
        if k_mss == 0x0204 and k_ts == 0x0402080A and nop_ws >> 8 == 0x010303:
            # RFC 7323 2.3: a shift above 14 is used as 14.
            return (mss, min(nop_ws & 0xFF, 14), True, (), tsval, tsecr)
    mss = wscale = tsval = tsecr = None
    sack_perm = False
    sack = ()
    i = 0
    while i < n:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("tcp_opt_truncated")
        olen = buf[i + 1]
        if olen < 2 or i + olen > n:
            raise ParseError("tcp_opt_bad_length")
        if kind == OPT_MSS:
            if olen != 4:
                raise ParseError("tcp_opt_bad_length", "mss")
            mss = _MSS_OPT.unpack_from(buf, i)[2]
        elif kind == OPT_WSCALE:
            if olen != 3:
                raise ParseError("tcp_opt_bad_length", "wscale")
            # RFC 7323 2.3: a shift above 14 is used as 14.
            wscale = min(buf[i + 2], 14)
        elif kind == OPT_SACK_PERM:
            if olen != 2:
                raise ParseError("tcp_opt_bad_length", "sack_perm")
            sack_perm = True
        elif kind == OPT_SACK:
            if (olen - 2) % 8 or olen == 2:
                raise ParseError("tcp_opt_bad_length", "sack")
            sack = tuple(_SACK_BLOCK.unpack_from(buf, j) for j in range(i + 2, i + olen, 8))
        elif kind == OPT_TIMESTAMP:
            if olen != 10:
                raise ParseError("tcp_opt_bad_length", "timestamp")
            _kind, _len, tsval, tsecr = _TS_OPT.unpack_from(buf, i)
        i += olen
    return (mss, wscale, sack_perm, sack, tsval, tsecr)


def build_tcp_options(mss: int | None = None, wscale: int | None = None, sack_perm: bool = False,
                      ts: tuple | None = None, sack_blocks=()) -> bytes:
    """Encode options, NOP-padded to a multiple of 4, in Linux's order.

    ``ts`` is ``(ts_val, ts_ecr)``. At most 4 SACK blocks fit alone, 3 with
    timestamps (40-byte options limit); extra blocks are dropped.
    """
    out = bytearray()
    if mss is not None:
        out += _MSS_OPT.pack(OPT_MSS, 4, mss)
    if sack_perm and ts is not None:
        out += b"\x04\x02"  # SACK-permitted, then timestamps: 12 bytes, no padding
        out += _TS_OPT.pack(OPT_TIMESTAMP, 10, ts[0], ts[1])
    else:
        if sack_perm:
            out += b"\x01\x01\x04\x02"
        if ts is not None:
            out += b"\x01\x01"
            out += _TS_OPT.pack(OPT_TIMESTAMP, 10, ts[0], ts[1])
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    if sack_blocks:
        room = (40 - len(out) - 4) // 8
        blocks = tuple(sack_blocks)[:max(0, min(4, room))]
        if blocks:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
            for left, right in blocks:
                out += _SACK_BLOCK.pack(left, right)
    while len(out) & 3:
        out.append(OPT_NOP)
    return bytes(out)
