"""The stack's events for the host side: one small typed record per kind.

The stack appends these to ``Gateway.events_out``; the host driver looks
each one up by its type in a table it builds once (``type(ev) -> handler``),
so there is no string dispatch and no second translation. Each record is
emitted once, by whoever knows the fact: a TCP connection emits its own
data/shutdown/abort/pause/resume/inbound events (it knows its flow id), the
gateway emits the ones about flows as a whole (connect, close, UDP, ICMP, DNS).

Each kind is a ``__slots__`` class made by :func:`_event` from one row
below (a dataclass's ``__init__``, ``__eq__`` and ``__repr__``, without its import-time cost):
construction costs about what a tuple did, equality compares the
type (a ``TcpClose`` never equals a ``UdpClose``), fields are read by name,
and ``KIND`` names the event in counters (``host_event_error_<KIND>``).

Addresses in events (``host``) are the host-side target as a string the
socket layer takes (``"127.0.0.1"``, ``"2001:db8::1"``); the DNS forwarder
is not an address but its own event (``TcpConnectDns``).
"""

class _Event:
    """What every event shares: equality by type and fields, a readable repr."""

    __slots__ = ()

    def __eq__(self, other):
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None     # mutable records, as a dataclass with eq

    def __repr__(self):
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


def _event(name: str, kind: str, fields: str, doc: str):
    """A record type ``name`` with the space-separated ``fields``. Made by hand, not with
    ``dataclasses.make_dataclass``: that costs ~0.3 ms per type at import, 6 ms of every start
    for these eighteen, and a helper's start is time a container waits."""
    names = tuple(fields.split())
    ns: dict = {}
    exec(f"def __init__(self, {', '.join(names)}):\n"        # noqa: S102 - our own field names
         + "".join(f"    self.{f} = {f}\n" for f in names), ns)
    return type(name, (_Event,), {"__slots__": names, "__init__": ns["__init__"],
                                  "__match_args__": names, "KIND": kind, "__doc__": doc,
                                  "__module__": __name__})


# --- TCP (fid: the flow id the gateway gave the flow) --------------------------
TcpConnect = _event("TcpConnect", "tcp_connect", "fid host port", """The container sent a
    SYN: connect to ``host:port``, then ``gw.tcp_connected`` or ``gw.tcp_refused``.""")
TcpConnectDns = _event("TcpConnectDns", "tcp_connect_dns", "fid", """A SYN to the DNS
    forwarder's port 53: splice to an upstream resolver over TCP.""")
TcpCancel = _event("TcpCancel", "tcp_cancel", "fid", """Give up a connect in progress
    (the stack's connect timeout fired).""")
TcpData = _event("TcpData", "tcp_data", "fid data", """In-order bytes from the container
    for the host socket.""")
TcpShutdown = _event("TcpShutdown", "tcp_shutdown", "fid", """The container sent FIN:
    ``shutdown(SHUT_WR)`` the host socket.""")
TcpAbort = _event("TcpAbort", "tcp_abort", "fid", """The container reset the flow, or the
    stack gave up on it: abortive close, so the host peer sees a reset, not a FIN.""")
TcpClose = _event("TcpClose", "tcp_close", "fid", """The flow is gone from the stack:
    close the socket if still open (buffered bytes first, then FIN).""")
TcpPause = _event("TcpPause", "tcp_pause", "fid", """The flow's send queue toward the
    container is full: stop reading the host socket.""")
TcpResume = _event("TcpResume", "tcp_resume", "fid", """The send queue has room again:
    offer what was held back, then read again.""")
TcpInboundConnected = _event("TcpInboundConnected", "tcp_inbound_connected", "fid", """A
    port-forwarded connection reached the container (its SYN-ACK).""")
TcpInboundRefused = _event("TcpInboundRefused", "tcp_inbound_refused", "fid timed_out", """A
    port-forwarded connection did not: the container answered RST, or
    (``timed_out``) did not answer within the connect timeout.""")

# --- UDP -------------------------------------------------------------------------
UdpOpen = _event("UdpOpen", "udp_open", "fid host port", """A new outbound UDP flow: open
    a host socket connected to ``host:port``.""")
UdpSend = _event("UdpSend", "udp_send", "fid data", """One datagram from the container
    for the flow's host socket.""")
UdpClose = _event("UdpClose", "udp_close", "fid", """The flow idled out: close its host
    socket (or forget a port forward's return path).""")

# --- ICMP echo ---------------------------------------------------------------------
IcmpOpen = _event("IcmpOpen", "icmp_open", "fid host ident", """A new echo flow
    (container, identifier, destination) toward ``host``; ``ident`` is the
    container's echo identifier (a raw socket sends it).""")
IcmpSend = _event("IcmpSend", "icmp_send", "fid seq data", "One echo request of the flow.")
IcmpClose = _event("IcmpClose", "icmp_close", "fid", "The echo flow idled out.")

# --- DNS -------------------------------------------------------------------------
DnsQuery = _event("DnsQuery", "dns_query", "qid query", """A query for the upstream
    resolvers; answer with ``gw.dns_reply(qid, ...)`` or ``gw.dns_failed(qid, ...)``.""")

#: Every event type, for tables and tests.
ALL_EVENTS = (TcpConnect, TcpConnectDns, TcpCancel, TcpData, TcpShutdown, TcpAbort, TcpClose,
              TcpPause, TcpResume, TcpInboundConnected, TcpInboundRefused, UdpOpen, UdpSend,
              UdpClose, IcmpOpen, IcmpSend, IcmpClose, DnsQuery)
