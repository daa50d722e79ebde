"""DNS messages (RFC 1035): the header, the question section, and replies.

This module owns just enough DNS for a forwarder that answers a few names
itself: parse a *query* (header + first question), build a *response* that
echoes that question with some answers, build error replies, and frame DNS
over TCP (RFC 1035 4.2.2: a 2-byte length before each message).

Layout of the header: id (2), flags (2), qdcount (2), ancount (2),
nscount (2), arcount (2): 12 bytes. Flags: QR(1) OPCODE(4) AA TC RD RA Z AD
CD RCODE(4).

Limits, on purpose:

* Only the first question is read (nobody sends QDCOUNT > 1 in practice,
  and RFC 9619 says not to). A reply echoes that one question.
* The answer, authority and additional sections of a query are ignored, so
  an EDNS OPT record in the query is not echoed; RFC 6891 6.2 allows a
  responder that does not do EDNS to omit it.
* Names are decoded to the usual presentation form: lowercase ASCII (DNS
  case-insensitivity is ASCII-only, RFC 4343), labels joined with ``.``, no
  trailing dot, the root name is ``""``; a ``.`` or ``\\`` inside a label and
  bytes outside printable ASCII are escaped as ``\\.``, ``\\\\``, ``\\DDD`` so
  two different names never decode to the same string.
* Compression pointers must point strictly backwards (RFC 1035 4.1.4 says a
  pointer refers to a *prior* occurrence), which alone makes every loop
  impossible; the hop count and the 255-byte name limit are checked too.

Like every parser in ``usernet.wire``: any bytes in, the result or
:class:`~usernet.wire.ParseError` out, nothing else.
"""

import struct
from typing import NamedTuple

from . import ParseError

DNS_HDR = struct.Struct("!HHHHHH")
DNS_HDR_LEN = 12
# type (2), class (2) after a question's name; type, class, TTL (4),
# RDLENGTH (2) after a resource record's name.
DNS_QFIXED = struct.Struct("!HH")
DNS_RRFIXED = struct.Struct("!HHIH")
_LEN16 = struct.Struct("!H")

# Flag bits (RFC 1035 4.1.1, RFC 2535/4035 for AD and CD).
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
RCODE_MASK = 0x000F

OPCODE_QUERY = 0

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_ANY = 255

CLASS_IN = 1
CLASS_ANY = 255

MAX_NAME_LEN = 255       # RFC 1035 2.3.4, in wire form
MAX_LABEL_LEN = 63
MAX_POINTER_HOPS = 32    # more than any honest name needs (127 labels max)
MAX_TCP_MESSAGE = 65535  # what a 2-byte length prefix can say

# A name in an answer is a pointer to the question's name, which always sits
# right after the header at offset 12 (RFC 1035 4.1.4).
_PTR_TO_QNAME = b"\xc0\x0c"


class DnsQuery(NamedTuple):
    id: int
    flags: int
    qname: str         # lowercase presentation form, no trailing dot
    qtype: int
    qclass: int
    question_end: int  # offset just past the first question

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11


def _label_text(label: bytes) -> str:
    out = []
    for b in label.lower():
        if b in (0x2E, 0x5C):               # "." and "\" inside a label
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\%03d" % b)
    return "".join(out)


def parse_name(buf, off: int) -> tuple[list[bytes], int]:
    """Read a (possibly compressed) name at ``off``.

    Return ``(labels, end)``: the labels as bytes in their original case,
    and the offset just past the name *where it started* (past the first
    pointer, if any), i.e. where the next field begins.
    """
    n = len(buf)
    labels = []
    wire_len = 1          # the root label's length byte
    end = -1
    hops = 0
    pos = off
    while True:
        if pos >= n:
            raise ParseError("dns_name_truncated")
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 2 > n:
                raise ParseError("dns_name_truncated")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if end < 0:
                end = pos + 2
            # Strictly backwards: a pointer to itself or forwards could loop.
            if target >= pos:
                raise ParseError("dns_name_bad_pointer")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise ParseError("dns_name_bad_pointer")
            pos = target
            continue
        if kind:
            # 0x40 (extended label types, RFC 6891) and 0x80 are not names.
            raise ParseError("dns_name_bad_label")
        if length == 0:
            if end < 0:
                end = pos + 1
            return labels, end
        if pos + 1 + length > n:
            raise ParseError("dns_name_truncated")
        wire_len += 1 + length
        if wire_len > MAX_NAME_LEN:
            raise ParseError("dns_name_too_long")
        labels.append(bytes(buf[pos + 1:pos + 1 + length]))
        pos += 1 + length


def name_text(labels: list[bytes]) -> str:
    """Presentation form of ``labels``: lowercase, dot-joined, no trailing dot."""
    return ".".join(_label_text(label) for label in labels)


def encode_name(name: str) -> bytes:
    """Wire form of a plain ASCII name (``"a.example"`` or ``"a.example."``).

    A builder, not a parser: an invalid name is a programming error here and
    raises ``ValueError``. No escapes are interpreted.
    """
    out = bytearray()
    name = name.rstrip(".")
    if name:
        for label in name.split("."):
            raw = label.encode("ascii")
            if not 0 < len(raw) <= MAX_LABEL_LEN:
                raise ValueError(f"bad DNS label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME_LEN:
        raise ValueError(f"DNS name too long: {name!r}")
    return bytes(out)


def parse_header(buf) -> tuple:
    """Return ``(id, flags, qdcount, ancount, nscount, arcount)``."""
    if len(buf) < DNS_HDR_LEN:
        raise ParseError("dns_truncated")
    return DNS_HDR.unpack_from(buf, 0)


def _parse_question(buf) -> tuple[DnsQuery, bytes]:
    """The query and its first question re-encoded without compression.

    Replies carry this re-encoding rather than the query's own bytes: a
    compression pointer in a query's question could only point into the
    query's header, which the reply rewrites. The labels keep their original
    case, so a resolver's 0x20 case randomisation survives the echo.
    """
    ident, flags, qdcount, _an, _ns, _ar = parse_header(buf)
    if flags & QR:
        raise ParseError("dns_not_query")
    if qdcount == 0:
        raise ParseError("dns_no_question")
    labels, pos = parse_name(buf, DNS_HDR_LEN)
    if pos + DNS_QFIXED.size > len(buf):
        raise ParseError("dns_truncated")
    qtype, qclass = DNS_QFIXED.unpack_from(buf, pos)
    wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    q = DnsQuery(ident, flags, name_text(labels), qtype, qclass, pos + DNS_QFIXED.size)
    return q, wire + DNS_QFIXED.pack(qtype, qclass)


def parse_query(buf) -> DnsQuery:
    """Parse a query's header and its first question.

    A message with QR set (a response) or with no question is a ParseError:
    neither is something a forwarder can answer or pass on as a query.
    """
    return _parse_question(buf)[0]


def check_query(buf) -> DnsQuery:
    """Parse a whole query, every section, as a forwarder must before relaying it.

    :func:`parse_query` reads the header and the first question; this also
    walks the answer, authority and additional records (an EDNS OPT, a TSIG,
    an UPDATE's prerequisites) record by record and insists the message ends
    exactly where its counts say. So what is relayed upstream is a DNS query
    in every byte, not arbitrary bytes behind a DNS-looking header. Exactly
    one question (RFC 9619); a response (QR set) is not a query.
    """
    q = parse_query(buf)
    _ident, _flags, qdcount, ancount, nscount, arcount = parse_header(buf)
    if qdcount != 1:
        raise ParseError("dns_bad_qdcount")
    pos = q.question_end
    n = len(buf)
    for _ in range(ancount + nscount + arcount):
        _labels, pos = parse_name(buf, pos)
        if pos + DNS_RRFIXED.size > n:
            raise ParseError("dns_truncated")
        rdlength = DNS_RRFIXED.unpack_from(buf, pos)[3]
        pos += DNS_RRFIXED.size + rdlength
        if pos > n:
            raise ParseError("dns_truncated")
    if pos != n:
        raise ParseError("dns_trailing_bytes")
    return q


def _reply_flags(qflags: int, rcode: int, aa: bool) -> int:
    # RFC 1035 4.1.1: QR set; OPCODE and RD copied from the query; RA says we
    # recurse (we forward, which to the client is the same); CD copied
    # (RFC 4035 3.2.2). TC, AD, Z clear.
    flags = QR | (qflags & (OPCODE_MASK | RD | CD)) | RA | (rcode & RCODE_MASK)
    if aa:
        flags |= AA
    return flags


def build_response(query, answers, rcode: int = RCODE_NOERROR, aa: bool = False) -> bytes:
    """A response to ``query`` (its bytes) with ``answers``.

    ``answers`` is a list of ``(rtype, ttl, rdata)``; each answer's owner is
    the question's name (a pointer to it) and its class the question's class.
    An empty list with ``rcode=0`` is a NODATA reply (the name exists, not
    that type). The query must parse (:func:`parse_query`), else ParseError.
    """
    q, question = _parse_question(query)
    out = bytearray(DNS_HDR.pack(q.id, _reply_flags(q.flags, rcode, aa), 1, len(answers), 0, 0))
    out += question
    for rtype, ttl, rdata in answers:
        out += _PTR_TO_QNAME
        out += DNS_RRFIXED.pack(rtype, q.qclass, ttl, len(rdata))
        out += rdata
    return bytes(out)


def build_error(query, rcode: int) -> bytes:
    """An error reply (``rcode``) to ``query``, as well as the query allows.

    If the first question parses it is echoed; if only the 12-byte header is
    readable the reply has no question (RFC 1035 leaves this open and
    resolvers accept it: the id is what they match on). Under 12 bytes there
    is no id to answer to: ParseError.
    """
    ident, flags, _qd, _an, _ns, _ar = parse_header(query)
    try:
        _q, question = _parse_question(query)
    except ParseError:
        return DNS_HDR.pack(ident, _reply_flags(flags, rcode, False), 0, 0, 0, 0)
    return DNS_HDR.pack(ident, _reply_flags(flags, rcode, False), 1, 0, 0, 0) + question


def build_servfail(query) -> bytes:
    return build_error(query, RCODE_SERVFAIL)


# --- DNS over TCP framing (RFC 1035 4.2.2, RFC 7766 8) --------------------

def frame_tcp(message) -> bytes:
    """``message`` with its 2-byte length prefix."""
    if not 0 < len(message) <= MAX_TCP_MESSAGE:
        raise ValueError("DNS message length out of range for TCP framing")
    return _LEN16.pack(len(message)) + bytes(message)


def split_tcp_messages(buf) -> tuple[list[bytes], int]:
    """Split complete length-prefixed messages off the front of ``buf``.

    Return ``(messages, consumed)``: the caller keeps ``buf[consumed:]`` for
    the next read. A zero length is garbage (no DNS message is empty) and a
    ParseError; the caller should close the stream. What is left over is
    always under 2 + 65535 bytes, so a stream buffer stays bounded.
    """
    messages = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        (length,) = _LEN16.unpack_from(buf, pos)
        if length == 0:
            raise ParseError("dns_tcp_empty")
        if n - pos - 2 < length:
            break
        messages.append(bytes(buf[pos + 2:pos + 2 + length]))
        pos += 2 + length
    return messages, pos


class DnsTcpFramer:
    """Stream buffer for one DNS-over-TCP connection: feed bytes, get messages."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data) -> list[bytes]:
        self._buf += data
        messages, consumed = split_tcp_messages(self._buf)
        if consumed:
            del self._buf[:consumed]
        return messages

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a message (< 65537)."""
        return len(self._buf)
