"""The stack's events for the host side: one small typed record per kind.

The stack appends these to ``Gateway.events_out``; the host driver looks
each one up by its type in a table it builds once (``type(ev) -> handler``),
so there is no string dispatch and no second translation. Each record is
emitted once, by whoever knows the fact: a TCP connection emits its own
data/shutdown/abort/pause/resume/inbound events (it knows its flow id), the
gateway emits the ones about flows as a whole (connect, close, UDP, ICMP, DNS).

``__slots__`` dataclasses: construction costs about what a tuple with a
name string did once the old per-event translation is gone, equality
compares the type (a ``TcpClose`` never equals a ``UdpClose``), and
``KIND`` names the event in counters (``host_event_error_<KIND>``).

Addresses in events (``host``) are the host-side target as a string the
socket layer takes (``"127.0.0.1"``, ``"2001:db8::1"``); the DNS forwarder
is not an address but its own event (``TcpConnectDns``).
"""

from dataclasses import dataclass
from typing import ClassVar

# --- TCP ---------------------------------------------------------------------


@dataclass(slots=True)
class TcpConnect:
    """The container sent a SYN: connect to ``host:port`` and answer with
    ``gw.tcp_connected`` or ``gw.tcp_refused``."""
    KIND: ClassVar[str] = "tcp_connect"
    fid: int
    host: str
    port: int


@dataclass(slots=True)
class TcpConnectDns:
    """A SYN to the DNS forwarder's port 53: splice to an upstream resolver over TCP."""
    KIND: ClassVar[str] = "tcp_connect_dns"
    fid: int


@dataclass(slots=True)
class TcpCancel:
    """Give up a connect in progress (the stack's connect timeout fired)."""
    KIND: ClassVar[str] = "tcp_cancel"
    fid: int


@dataclass(slots=True)
class TcpData:
    """In-order bytes from the container for the host socket."""
    KIND: ClassVar[str] = "tcp_data"
    fid: int
    data: bytes


@dataclass(slots=True)
class TcpShutdown:
    """The container sent FIN: ``shutdown(SHUT_WR)`` the host socket."""
    KIND: ClassVar[str] = "tcp_shutdown"
    fid: int


@dataclass(slots=True)
class TcpAbort:
    """The container reset the flow, or the stack gave up on it: abortive
    close, so the host peer sees a reset, not a clean FIN."""
    KIND: ClassVar[str] = "tcp_abort"
    fid: int


@dataclass(slots=True)
class TcpClose:
    """The flow is gone from the stack: close the socket if still open."""
    KIND: ClassVar[str] = "tcp_close"
    fid: int


@dataclass(slots=True)
class TcpPause:
    """The flow's send queue toward the container is full: stop reading the host socket."""
    KIND: ClassVar[str] = "tcp_pause"
    fid: int


@dataclass(slots=True)
class TcpResume:
    """The send queue has room again: offer what was held back, then read again."""
    KIND: ClassVar[str] = "tcp_resume"
    fid: int


@dataclass(slots=True)
class TcpInboundConnected:
    """A port-forwarded connection reached the container (its SYN-ACK)."""
    KIND: ClassVar[str] = "tcp_inbound_connected"
    fid: int


@dataclass(slots=True)
class TcpInboundRefused:
    """A port-forwarded connection did not: the container answered RST, or
    (``timed_out``) did not answer within the connect timeout."""
    KIND: ClassVar[str] = "tcp_inbound_refused"
    fid: int
    timed_out: bool = False


# --- UDP ---------------------------------------------------------------------


@dataclass(slots=True)
class UdpOpen:
    """A new outbound UDP flow: open a host socket connected to ``host:port``."""
    KIND: ClassVar[str] = "udp_open"
    fid: int
    host: str
    port: int


@dataclass(slots=True)
class UdpSend:
    """One datagram from the container for the flow's host socket."""
    KIND: ClassVar[str] = "udp_send"
    fid: int
    data: bytes


@dataclass(slots=True)
class UdpClose:
    """The flow idled out: close its host socket (or forget its return path)."""
    KIND: ClassVar[str] = "udp_close"
    fid: int


# --- ICMP echo ---------------------------------------------------------------


@dataclass(slots=True)
class IcmpOpen:
    """A new echo flow (container, identifier, destination) toward ``host``."""
    KIND: ClassVar[str] = "icmp_open"
    fid: int
    host: str
    ident: int          # the container's echo identifier (raw sockets send it)


@dataclass(slots=True)
class IcmpSend:
    """One echo request of the flow."""
    KIND: ClassVar[str] = "icmp_send"
    fid: int
    seq: int
    data: bytes


@dataclass(slots=True)
class IcmpClose:
    KIND: ClassVar[str] = "icmp_close"
    fid: int


# --- DNS ---------------------------------------------------------------------


@dataclass(slots=True)
class DnsQuery:
    """A query for the upstream resolvers; answer ``gw.dns_reply(qid, ...)``
    or ``gw.dns_failed(qid, ...)``."""
    KIND: ClassVar[str] = "dns_query"
    qid: int
    query: bytes


#: Every event type, for tables and tests.
ALL_EVENTS = (TcpConnect, TcpConnectDns, TcpCancel, TcpData, TcpShutdown, TcpAbort, TcpClose,
              TcpPause, TcpResume, TcpInboundConnected, TcpInboundRefused, UdpOpen, UdpSend,
              UdpClose, IcmpOpen, IcmpSend, IcmpClose, DnsQuery)
