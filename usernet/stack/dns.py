"""The DNS forwarder's local part: names usernet answers itself, and resolv.conf.

:class:`LocalNames` answers the names by which a container reaches its host,
``host.containers.internal`` (Podman's name) and ``host.usernet.internal``,
with the gateway address, which usernet maps to the host's loopback. Every
other query gets ``None``: the caller forwards it upstream unchanged. When
host loopback is disabled (``--disable-host-loopback``) the gateway does not
reach the host, so the names are not answered locally either (pass
``gateway_ip=None``) and go upstream like any other name. A link on a named
network (``LocalNames.network``, set by :mod:`usernet.stack.switch`) also
answers the names of that network's links (``web``, ``web.NETWORK``, their
reverse names) and NXDOMAIN for the rest of ``.NETWORK``.

:func:`parse_resolv_conf` reads the host's ``/etc/resolv.conf`` text (the
host side reads the file; this module never does I/O) into the upstream
servers the forwarder uses.

Pure and sans-IO, like the rest of ``usernet.stack``.
"""

import ipaddress

from ..wire import ParseError
from ..wire.dns import (
    CLASS_ANY, CLASS_IN, DNS_HDR_LEN, OPCODE_MASK, OPCODE_QUERY, QR, RCODE_FORMERR, RCODE_NOTIMP,
    TYPE_A, TYPE_AAAA, TYPE_ANY, build_error, build_response, check_query, parse_query,
)
from .config import DNS_MAX_QUERY_SIZE

HOST_NAMES = frozenset({"host.containers.internal", "host.usernet.internal"})
LOCAL_TTL = 60      # seconds: short, so a restarted usernet with new addresses is seen soon
DNS_PORT = 53


class LocalNames:
    def __init__(self, gateway_ip: bytes | None, gateway_ip6: bytes | None = None):
        if gateway_ip is not None and len(gateway_ip) != 4:
            raise ValueError("gateway_ip must be 4 bytes")
        if gateway_ip6 is not None and len(gateway_ip6) != 16:
            raise ValueError("gateway_ip6 must be 16 bytes")
        self.gateway_ip = gateway_ip
        self.gateway_ip6 = gateway_ip6
        # The named network this link is on (usernet/stack/switch.py
        # Network, set when the link joins it): its links' names are
        # answered here too.
        self.network = None

    def answer(self, query) -> bytes | None:
        """The response to ``query`` (bytes) if it is for a local name, else None.

        A query that does not parse is not ours either (None): the forwarder
        decides what to do with garbage.
        """
        if self.gateway_ip is None and self.network is None:
            return None
        try:
            q = parse_query(query)
        except ParseError:
            return None
        if q.opcode != OPCODE_QUERY or q.qclass not in (CLASS_IN, CLASS_ANY):
            return None
        name = q.qname.rstrip(".")
        if self.gateway_ip is None or name not in HOST_NAMES:
            if self.network is None:
                return None
            # A link's name on the network (web, web.NETWORK), its reverse
            # name, or NXDOMAIN inside the network's zone.
            found = self.network.resolve(name, q.qtype)
            if found is None:
                return None
            rcode, answers = found
            return build_response(query, answers, rcode=rcode, aa=True)
        answers = []
        if q.qtype in (TYPE_A, TYPE_ANY):
            answers.append((TYPE_A, LOCAL_TTL, self.gateway_ip))
        if q.qtype in (TYPE_AAAA, TYPE_ANY) and self.gateway_ip6 is not None:
            answers.append((TYPE_AAAA, LOCAL_TTL, self.gateway_ip6))
        # No answers is NODATA (NOERROR, empty answer section): the name
        # exists, just not with this type. We are its authority, hence AA.
        return build_response(query, answers, aa=True)


# What screen_query decides.
FORWARD = 0     # a well-formed query: answer locally or relay upstream
REPLY = 1       # answer the container with the error reply given
DROP = 2        # not even an id to answer to, or a response: say nothing


def screen_query(query, max_size: int = DNS_MAX_QUERY_SIZE) -> tuple[int, bytes | None, str]:
    """Decide what happens to one DNS message from the container, over UDP or TCP.

    Only well-formed queries reach the upstream resolver, which is often on
    the host's loopback (127.0.0.53) and must not become a port the
    container can send arbitrary bytes to. Returns ``(action, reply,
    counter)``: ``FORWARD`` for a query that parses in full
    (:func:`~usernet.wire.dns.check_query`) with opcode QUERY; ``REPLY`` with
    FORMERR (RFC 1035 4.1.1: "unable to interpret the query") for one whose
    header is readable but the rest is not, or that is bigger than
    ``max_size``, and NOTIMP for other opcodes (NOTIFY, UPDATE: nothing a
    stub resolver sends); ``DROP`` for fewer than 12 bytes (no id to answer)
    and for responses (QR set: answering them could loop between two
    resolvers). ``counter`` names the decision.
    """
    n = len(query)
    if n < DNS_HDR_LEN:
        return DROP, None, "drop_dns_query_malformed"
    flags = (query[2] << 8) | query[3]
    if flags & QR:
        return DROP, None, "drop_dns_query_is_response"
    if n > max_size:
        return REPLY, build_error(query, RCODE_FORMERR), "dns_query_too_large_formerr"
    try:
        check_query(query)
    except ParseError:
        return REPLY, build_error(query, RCODE_FORMERR), "dns_query_formerr"
    if (flags & OPCODE_MASK) >> 11 != OPCODE_QUERY:
        return REPLY, build_error(query, RCODE_NOTIMP), "dns_query_notimp"
    return FORWARD, None, "dns_query_ok"


def parse_resolv_conf(text: str) -> list[tuple[str, int]]:
    """Upstream servers from resolv.conf text: ``[(address, 53), ...]``.

    Reads ``nameserver`` lines (IPv4 or IPv6, an IPv6 zone like ``%eth0``
    kept), in file order, without duplicates; comments (``#`` or ``;``),
    other keywords and malformed addresses are skipped. Addresses come back
    in canonical text form. No cap on the count: glibc reads only three
    (MAXNS), but the forwarder may use more.
    """
    servers: list[tuple[str, int]] = []
    seen = set()
    for line in text.splitlines():
        for mark in "#;":
            line = line.split(mark, 1)[0]
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = str(ipaddress.ip_address(fields[1]))
        except ValueError:
            continue
        if addr not in seen:
            seen.add(addr)
            servers.append((addr, DNS_PORT))
    return servers
