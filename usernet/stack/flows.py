"""The flow tables: TCP, UDP and ICMP echo flows, one id space, one way to open.

Theory of operation
-------------------
A flow is the stack's half of one NAT mapping. Its *key* is the container's
view, ``(guest_ip, guest_port, remote_ip, remote_port)`` (for ICMP echo:
``(guest_ip, ident, remote_ip, 0)``, the identifier standing for the port);
its *id* is what the host side knows it by (every event carries it). Ids come
from one counter for all kinds, so an id never names two live flows.

:class:`FlowTable` holds one kind, by key and by id, with a limit; past the
limit :meth:`Flows.open_datagram` refuses with the kind's counter and TCP
refuses at its SYN -- but only after trying to evict: a full datagram table
forgets the flow nearest its idle expiry among the oldest
(:meth:`Flows.evict_datagram`), a full TCP table its oldest half-closed or
long-silent flow (``TcpNat._evict``). Every datagram flow is opened through
:meth:`Flows.open_datagram`, every TCP flow through :meth:`Flows.add_tcp`:
one path each.

:class:`UdpFlow` and :class:`IcmpFlow` are separate types over one base
(:class:`DatagramFlow`: an idle deadline pushed out by traffic); each names
its table's event and counters as class attributes, so nothing is patched
after construction. :class:`TcpFlow` wraps a
:class:`~usernet.stack.tcp.TcpConnection` with the gateway's bookkeeping:
the host connect in progress (outbound) or the container's answer awaited
(``inbound``, a port forward), each with a ``connect_deadline``.

Source ports. A port forward's client is shown to the container as itself
when the address policy (:mod:`usernet.stack.nat`) lets the container answer
it and the 4-tuple is free; else from the gateway address, with a port
picked round-robin from ``PICK_PORTS`` when needed, skipping any that would
clash with a live flow of that table (:meth:`Flows.inbound_key`). IPv6 flows
share these tables (a 16-byte address is a different key), and so this code;
an IPv6 flow shown from the gateway is shown from prefix::2.
"""

from .config import EVICT_SCAN
from .events import IcmpClose, UdpClose

PICK_PORTS = (49152, 65535)  # source ports the stack picks when the client's own cannot be used
PICK_TRIES = 64


class TcpFlow:
    """One TCP flow's gateway-side bookkeeping; the protocol lives in ``conn``."""

    __slots__ = ("id", "key", "conn", "guest_ip", "guest_port", "remote_ip", "remote_port",
                 "connecting", "connect_deadline", "armed", "inbound", "neigh",
                 "charged", "backlog", "host_held", "squeezed", "last_rx", "ka_at", "probes", "probe_sent",
                 "asum", "opened", "last", "pkts_in", "pkts_out", "tpl", "tpl_mac",
                 "rsize", "rs_qmax", "rs_state")

    def __init__(self, fid, key, conn, inbound: bool, neigh=None, now: float = 0.0):
        self.id = fid
        # For list_flows: when it opened, its last segment either way, and
        # segments from / to the container (bytes come from the connection's
        # sequence numbers: no per-byte count).
        self.opened = self.last = now
        self.pkts_in = self.pkts_out = 0
        self.key = key
        self.conn = conn
        self.guest_ip, self.guest_port, self.remote_ip, self.remote_port = key
        self.connecting = False       # outbound: host connect in progress (counted)
        self.connect_deadline = None  # host connect (outbound) / guest answer (inbound) due
        self.armed = None
        self.inbound = inbound        # a port forward: we opened toward the container
        self.neigh = neigh            # the neighbour cache of its family (ARP or NDP)
        # The memory budget (stack/budget.py): bytes this flow has charged,
        # the host write backlog last reported, and whether its window is
        # held small because the budget is spent.
        self.charged = 0
        self.backlog = 0
        self.host_held = 0            # bytes read from the host socket and not taken yet
        self.squeezed = False
        # Liveness of the container side (stack/tcpnat.py keepalive): when
        # it last sent anything, the next check, probes sent unanswered.
        self.last_rx = now
        self.ka_at = None
        self.probes = 0
        self.probe_sent = 0.0
        self.asum = None              # IPv4: the address words' sum, for frame.build_tcp4
        # IPv4 with offloads: the header template of the flow's common frame
        # (frame.tcp4_ts_template), made at its first such frame, and the
        # neighbour MAC it was made for.
        self.tpl = None
        self.tpl_mac = None
        # The host side's read size (TcpNat.read_advice): what read_size
        # answers while the send queue's buffer holds at most rs_qmax bytes
        # and the connection stays in state rs_state (the state output last
        # saw); -1: none, ask.
        self.rsize = -1
        self.rs_qmax = -1
        self.rs_state = None

    def deadline(self):
        t = self.conn.get_timer()
        d = self.connect_deadline
        if d is not None and (t is None or d < t):
            t = d
        d = self.ka_at
        if d is not None and (t is None or d < t):
            t = d
        return t


class DatagramFlow:
    """A flow with an idle deadline that traffic pushes out."""

    __slots__ = ("id", "key", "guest_ip", "guest_port", "remote_ip", "remote_port", "deadline",
                 "armed", "idle", "opened", "pkts_in", "pkts_out", "bytes_in", "bytes_out")
    CLOSE = None            # the event the host side gets when the flow expires
    OPENED = EXPIRED = LIMIT = EVICTED = BUDGET = ""   # counter names

    def __init__(self, fid, key, idle: float, now: float = 0.0):
        self.id = fid
        self.key = key
        self.guest_ip, self.guest_port, self.remote_ip, self.remote_port = key
        self.idle = idle
        self.deadline = None
        self.armed = None
        # For list_flows (the last activity is deadline - idle): datagrams
        # and payload bytes from ("in") and to ("out") the container.
        self.opened = now
        self.pkts_in = self.pkts_out = self.bytes_in = self.bytes_out = 0


class UdpFlow(DatagramFlow):
    __slots__ = ()
    CLOSE = UdpClose
    OPENED, EXPIRED, LIMIT = "udp_flow_open", "udp_flow_expired", "drop_udp_flow_limit"
    EVICTED, BUDGET = "udp_flow_evicted", "drop_udp_budget"


class IcmpFlow(DatagramFlow):
    """An echo flow; ``guest_port`` is the container's echo identifier."""
    __slots__ = ()
    CLOSE = IcmpClose
    OPENED, EXPIRED, LIMIT = "icmp_flow_open", "icmp_flow_expired", "drop_icmp_flow_limit"
    EVICTED, BUDGET = "icmp_flow_evicted", "drop_icmp_budget"


class FlowTable:
    """Flows of one kind by key and by id, with a limit."""

    __slots__ = ("by_key", "by_id", "limit", "picked_counter", "no_port_counter")

    def __init__(self, limit: int, picked_counter: str = "", no_port_counter: str = ""):
        self.by_key: dict = {}
        self.by_id: dict = {}
        self.limit = limit
        # Port forwards (Flows.inbound_key): a port picked for a client, none free.
        self.picked_counter = picked_counter
        self.no_port_counter = no_port_counter

    def __len__(self) -> int:
        return len(self.by_id)

    def full(self) -> bool:
        return len(self.by_id) >= self.limit

    def add(self, flow) -> None:
        self.by_key[flow.key] = flow
        self.by_id[flow.id] = flow

    def remove(self, flow) -> bool:
        """Forget ``flow``; False if it was already gone."""
        if self.by_id.pop(flow.id, None) is None:
            return False
        self.by_key.pop(flow.key, None)
        return True


class Flows:
    """The three tables and the id space."""

    def __init__(self, cfg, counters, nat, budget=None, events_out: list | None = None):
        self.counters = counters
        self.budget = budget            # the stack's MemoryBudget (None: unbounded)
        self.events_out = events_out if events_out is not None else []
        self.nat = nat
        self.gateway_ip = cfg.gateway_ip
        self.gateway6 = cfg.gateway6
        self.tcp = FlowTable(cfg.max_tcp_flows, "tcp_inbound_source_port_picked",
                             "tcp_inbound_no_source_port")
        self.udp = FlowTable(cfg.max_udp_flows, "udp_inbound_source_port_picked",
                             "udp_inbound_no_source_port")
        self.icmp = FlowTable(cfg.max_icmp_flows)
        self.tcp_connecting = 0          # outbound flows waiting for their host connect
        self._next_id = 1
        self._next_pick = PICK_PORTS[0]

    def new_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def open_datagram(self, cls, table: FlowTable, key: tuple, idle: float, now: float = 0.0):
        """Register a new UDP or ICMP echo flow, or count the drop and return
        None past the memory budget or at the table's limit when no flow
        could be evicted."""
        b = self.budget
        if b is not None and b.over():
            self.counters[cls.BUDGET] += 1
            return None
        if table.full() and not self.evict_datagram(table):
            self.counters[cls.LIMIT] += 1
            return None
        flow = cls(self.new_id(), key, idle, now)
        table.add(flow)
        self.counters[cls.OPENED] += 1
        return flow

    def evict_datagram(self, table: FlowTable) -> bool:
        """Make room in a full datagram table: forget the flow nearest its
        idle expiry among the :data:`EVICT_SCAN` oldest (conntrack's
        early drop). Its host side gets the flow's close event. False if the
        table is empty."""
        best = None
        n = 0
        for flow in table.by_id.values():
            d = flow.deadline or 0.0
            if best is None or d < best.deadline:
                best = flow
            n += 1
            if n >= EVICT_SCAN:
                break
        if best is None:
            return False
        table.remove(best)
        self.counters[best.EVICTED] += 1
        self.events_out.append(best.CLOSE(best.id))
        return True

    def inbound_key(self, table: FlowTable, guest_ip: bytes, guest_port: int,
                    src_ip: bytes | None, src_port: int | None) -> tuple | None:
        """The key of a new port-forward flow: the client's own address and
        port when the address policy lets the container answer it and the
        tuple is free; else the gateway's address (with the client's port
        while it is free) or a port picked from ``PICK_PORTS``; ``src_ip``
        None asks for the gateway and a picked port. None when no port is
        free. Counted as ``<kind>_inbound_source_port_picked`` /
        ``<kind>_inbound_no_source_port``."""
        c = self.counters
        gw_ip = self.gateway6 if len(guest_ip) == 16 else self.gateway_ip
        if src_ip is None:
            src_port = None
        elif self.nat.inbound_source(src_ip) is None:
            c["fwd_client_addr_as_gateway"] += 1
            src_ip = gw_ip
        if src_port is not None:
            key = (guest_ip, guest_port, src_ip, src_port)
            if key not in table.by_key:
                return key
            # Two loopback clients with the same port, a stale flow: the
            # tuple would mix them up.
            c[table.picked_counter] += 1
        lo, hi = PICK_PORTS
        by_key = table.by_key
        for _ in range(PICK_TRIES):
            p = self._next_pick
            self._next_pick = lo if p >= hi else p + 1
            if (guest_ip, guest_port, gw_ip, p) not in by_key:
                return (guest_ip, guest_port, gw_ip, p)
        c[table.no_port_counter] += 1
        return None


def flow_info(flows: Flows, now: float) -> list:
    """Every live flow as a plain dict, for the API's ``list_flows`` (the
    top layer adds the host side and formats addresses): ``proto``, ``id``,
    ``container`` and ``remote`` (address bytes, port; the container's view),
    ``inbound`` (a port forward), ``state``, ``bytes_in``/``pkts_in`` (from
    the container), ``bytes_out``/``pkts_out`` (to it), ``age``, ``idle``
    (seconds), ``retransmits``. TCP bytes are sequence space: acknowledged
    by the receiver, SYN and FIN not counted."""
    out = []
    for f in flows.tcp.by_id.values():
        c = f.conn
        rin, sout = c.transferred()
        out.append({"proto": "tcp", "id": f.id, "container": (f.guest_ip, f.guest_port),
                    "remote": (f.remote_ip, f.remote_port), "inbound": f.inbound,
                    "state": "CONNECTING" if f.connecting else c.state,
                    "bytes_in": rin, "pkts_in": f.pkts_in,
                    "bytes_out": sout, "pkts_out": f.pkts_out,
                    "age": now - f.opened, "idle": now - f.last,
                    "retransmits": c.rexmits})
    for proto, table in (("udp", flows.udp), ("icmp", flows.icmp)):
        for f in table.by_id.values():
            last = f.deadline - f.idle if f.deadline is not None else f.opened
            out.append({"proto": proto, "id": f.id, "container": (f.guest_ip, f.guest_port),
                        "remote": (f.remote_ip, f.remote_port),
                        "inbound": False, "state": "OPEN",
                        "bytes_in": f.bytes_in, "pkts_in": f.pkts_in,
                        "bytes_out": f.bytes_out, "pkts_out": f.pkts_out,
                        "age": now - f.opened, "idle": max(0.0, now - last), "retransmits": 0})
    return out
