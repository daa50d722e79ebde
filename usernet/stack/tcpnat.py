"""TCP through NAT: the gateway's TCP flows, from SYN to forget.

Theory of operation
-------------------
:class:`TcpNat` owns the TCP side of the flow tables. The gateway hands it
every parsed TCP segment (:meth:`TcpNat.input`); it finds the flow by the
container's 4-tuple and feeds the flow's
:class:`~usernet.stack.tcp.TcpConnection`, or, for a SYN with no flow, asks
the address policy where it goes and opens a flow (connect first, answer
second: ``TcpConnect`` / ``TcpConnectDns``, then ``connected`` or
``refused``). After every call into a connection, :meth:`output` frames
what it wants sent (with the neighbour's MAC; with TAP offloads, behind a
``NEEDS_CSUM``/TSO virtio-net header), forgets the flow once the connection
is closed (``TcpClose``), and re-arms the flow's timer. The connection emits
its own host events (``TcpData``, ``TcpShutdown``, ...) straight into the
gateway's ``events_out``: nothing here translates them.

Framing: the common segment of an IPv4 flow with offloads (one segment,
the timestamp option alone, at most one wire segment of payload, to a
resolved neighbour) is patched into the flow's header template
(``frame.tcp4_ts_template`` / ``build_tcp4_ts``: addresses, ports and
option kinds written once per flow) instead of built field by field; any
other goes through ``build_tcp4`` / ``build_tcp``. Same bytes either way
(a unit test compares them).

Port forwards open flows the other way (:meth:`open_inbound`): the key is
chosen by :meth:`Flows.inbound_key`, the SYN is the connection's, and the
container's answer comes back as the connection's ``TcpInboundConnected`` /
``TcpInboundRefused``.

Timers: one kind in the gateway's :class:`~usernet.stack.timers.Timers`,
keyed by flow id, at the earlier of the connection's own deadline and the
flow's connect deadline: ``tcp_connect_timeout`` for the host connect of an
outbound flow (``TcpCancel``, then RST to the container), and the same for
the container's answer to a port forward's SYN
(``TcpInboundRefused(timed_out=True)``; no RST, the container never spoke).

Limits: ``max_tcp_flows`` (a SYN past it is reset, once no flow could be
evicted: :meth:`TcpNat._evict` takes the longest-silent half-closed,
closing or unanswered-handshake flow, or an established one silent for
``TCP_EVICT_IDLE``, among the ``EVICT_SCAN`` oldest), ``max_tcp_connects``
host connects in flight (a SYN past it is dropped; the container retries).

Memory budget (stack/budget.py): every flow is charged ``TCP_FLOW_COST``
(its objects, here and on the host side) from its SYN until it is
forgotten, and :meth:`output` charges its held bytes (send queue,
out-of-order pieces, host write backlog, and what the host side read but
we did not take) by difference;
past the budget a SYN is reset (``tcp_syn_budget_rst``), a port forward
refused, the window toward the container held to ``BUDGET_FLOW_WINDOW``
less the host write backlog (``tcp_budget_window_squeezed``) and the send
queue toward it to ``BUDGET_FLOW_WINDOW`` (``tcp_budget_send_capped``). A
squeezed window reopens on the flow's next segment once the budget has
room again; while it is shut by a backlog, each segment from the container
(its zero-window probes) asks the host side for a fresh backlog report (an
empty ``TcpData``), since a small backlog drains without one.

Liveness (the container side gone): every flow remembers when the container
last sent anything (``last_rx``, one store per segment). A flow the
container half-closed (CLOSE-WAIT: its FIN in, the host peer still open) is
probed after ``tcp_fin_timeout`` of silence, an established one (or
FIN-WAIT-2) after ``tcp_keepalive_idle``: the probe is an ACK for old data
(``SND.UNA - 1``, Linux's keepalive), which a live socket answers with an
ACK and a gone one with RST (the connection then aborts as for any RST).
``tcp_keepalive_probes`` unanswered probes ``tcp_keepalive_intvl`` apart
abort the flow (RST both ways: ``tcp_keepalive_timeout``). The check is
one timer per flow at most once per ``tcp_fin_timeout``.
"""

from ..wire.ether import ETH_LEN
import struct

from ..wire.frame import (P_ACK, P_DPORT, P_DST, P_FLAGS, P_OPTS, P_PAYLOAD, P_SEQ, P_SPORT,
                          P_SRC, P_SRC_MAC, P_WINDOW, TCP4_TS_HDR_LEN, addr_sum4, build_tcp,
                          build_tcp4, build_tcp4_ts, tcp4_ts_template)
from ..wire.icmp import UNREACH_HOST
from ..wire.ipv4 import IPV4_LEN
from ..wire.ipv6 import IPV6_LEN
from ..wire.tcp import (ACK, NO_OPTIONS, O_MSS, O_SACK_BLOCKS, O_SACK_PERM, O_TS_ECR, O_TS_VAL,
                        O_WSCALE, OPT_NOP, OPT_TIMESTAMP, RST, SYN, TCP_LEN, build_tcp_options)
from ..wire.vnet import VNET_HDR_NONE, tcp_offload_hdr
from .arp import UNRESOLVED
from .events import (TcpAbort, TcpCancel, TcpClose, TcpConnect, TcpConnectDns, TcpData,
                     TcpInboundRefused)
from .budget import MemoryBudget
from .config import BUDGET_FLOW_WINDOW, EVICT_SCAN, TCP_EVICT_IDLE, TCP_FLOW_COST
from .flows import TcpFlow
from .tcp import (CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, LAST_ACK,
                  SYN_RECEIVED, SYN_SENT, TIME_WAIT, Segment, TcpConnection)

#: States in which the segment size is negotiated (segment_size).
_SIZED = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK))
#: States in which the container's side is probed when silent.
_PROBED = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2))
#: States a full table may evict at any age: the container half-closed or
#: the flow is closing, or our SYN-ACK went unanswered (half-open).
_EVICTABLE = frozenset((CLOSE_WAIT, FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT))

# With TAP offloads, the most payload one TCP frame toward the container
# carries: an IPv4 datagram's 65535 bytes less the IP and TCP headers and the
# most options a segment can carry. The connection rounds it down to a
# multiple of its wire segment size (snd_mss), so the kernel cuts no runts.
TSO_MAX_SEG = 65535 - IPV4_LEN - TCP_LEN - 40
# The virtio-net headers of offloaded TCP frames that are no TSO segment
# (NEEDS_CSUM only): bytes, by (L4 offset << 16 | header length). At most a
# few dozen: two L4 offsets, options in 4-byte steps up to 40.
_CSUM_HDRS: dict = {}
#: Frame the common segment from the flow's header template (output). Only
#: tests turn it off, to check that it gives the general builder's bytes.
FRAME_TEMPLATE = True
# ... and the one of the template-built frame (IPv4, timestamps alone).
_CSUM_HDR_TS4 = tcp_offload_hdr(ETH_LEN + IPV4_LEN, TCP4_TS_HDR_LEN)
# tuple.__new__(Segment, fields): a Segment without the NamedTuple's
# Python-level __new__ (TcpNat.input runs for every TCP frame).
_new_tuple = tuple.__new__
# How long the ACK of pushed data from the container waits for the host's
# answer to ride on (TcpConnection's push_ack_delay). A host on loopback
# answers a request in tens of microseconds; one that takes longer gets the
# ACK sent alone, so a container sending behind Nagle waits at most this
# (Linux's own delayed ACK: 40 ms). Not shorter: each flow's timer entry
# left behind by an ACK that rode on an answer fires once per this period
# (and re-arms); at 2 ms, 50 busy connections cost ~7% more CPU per request
# than at 10 ms (redis-benchmark -c 50, best of 3).
PUSH_ACK_DELAY = 0.01
# The options of nearly every segment of an established flow: NOP, NOP,
# timestamps (what build_tcp_options gives for ts alone, packed directly).
_TS_ONLY = struct.Struct("!BBBBII")


class _NoReadAdvice:
    """TcpNat.read_advice's flow when there is none: ask every time."""
    __slots__ = ()
    rsize = -1


NO_READ_ADVICE = _NoReadAdvice()
# Segment(seq, ack, flags, window, options, payload) is this slice of a
# parse_frame tuple (TcpNat.input: one slice instead of six subscripts).
_SEG_FIELDS = slice(P_SEQ, P_PAYLOAD + 1)
assert (P_SEQ, P_ACK, P_FLAGS, P_WINDOW, P_OPTS, P_PAYLOAD) == tuple(range(P_SEQ, P_PAYLOAD + 1))
assert Segment._fields == ("seq", "ack", "flags", "window", "options", "payload")
# Distinct addresses TcpNat._addr keeps one copy of (then it starts again:
# a container talking to many hosts only loses the sharing, never a flow).
ADDR_CACHE_MAX = 1024


class TcpNat:
    def __init__(self, config, counters, flows, nat, neigh, timers, frames_out: list,
                 events_out: list, mac: bytes, rng, *, ident, unreachable, offload: bool,
                 budget: MemoryBudget | None = None):
        """``ident()``: the next IPv4 identification; ``unreachable(p, frame,
        code, counter)``: the gateway's ICMP destination unreachable about a
        parsed frame (sent for a SYN to an address nobody on the link owns)."""
        self.config = config
        self.counters = counters
        self.flows = flows
        self.nat = nat
        self.neigh = neigh
        self.timers = timers
        self.frames_out = frames_out
        self.events_out = events_out
        self.mac = mac
        self.rng = rng
        self._ident = ident
        self._unreachable = unreachable
        self.offload = offload
        self._tcp_max_seg = TSO_MAX_SEG if offload else None
        self._kind = timers.kind(self._live, self._timer)
        self.neigh6 = neigh      # the gateway sets its IPv6 neighbour cache here
        self.budget = budget if budget is not None else MemoryBudget(config.memory_budget)
        self._addrs: dict = {}   # address -> the one bytes object flows keep (_addr)
        # The TCP table's two dicts (FlowTable never replaces them): a lookup
        # per segment and per host notification, two attribute loads less.
        self._by_key = flows.tcp.by_key
        self._by_id = flows.tcp.by_id

    def _live(self, fid, d) -> bool:
        flow = self.flows.tcp.by_id.get(fid)
        return flow is not None and flow.armed == d

    def _arm(self, flow: TcpFlow) -> None:
        """Make sure the heap holds an entry at or before the flow's deadline
        (a later one keeps its entry, which fires early and re-arms: no push
        per ACK)."""
        d = flow.deadline()
        if d is not None and (flow.armed is None or d < flow.armed):
            flow.armed = d
            self.timers.push(d, self._kind, flow.id)

    def input(self, p, frame, now) -> None:
        key = (p[P_SRC], p[P_SPORT], p[P_DST], p[P_DPORT])
        flow = self._by_key.get(key)
        # The Segment's fields lie in the parse tuple in the same order.
        seg = _new_tuple(Segment, p[_SEG_FIELDS])
        flags = p[P_FLAGS]
        if flow is not None:
            flow.last_rx = flow.last = now
            flow.pkts_in += 1
            flow.conn.on_segment(seg, now)
            if flow.squeezed and flow.backlog:
                # Its window is held shut by a backlog that may drain
                # without a report (only a backlog past the host's high-water
                # mark brings one): an empty TcpData makes the host side
                # report it at the end of this flush.
                self.events_out.append(TcpData(flow.id, b""))
            self.output(flow, now)
            if not (flags & SYN and not flags & ACK and flow.id not in self._by_id):
                return
            # A new SYN ended an old flow in TIME-WAIT (RFC 9293 3.10.7.4 lets
            # a SYN reopen it): treat it as the new connection it is, now,
            # instead of making the container wait a SYN retransmission.
            self.counters["tcp_syn_reopened_time_wait"] += 1
        c = self.counters
        if flags & RST:
            c["tcp_drop_rst_no_flow"] += 1
            return
        if not flags & SYN or flags & ACK:
            # RFC 9293 3.10.7.1 (CLOSED): "an incoming segment not containing
            # a RST causes a RST to be sent in response".
            c["tcp_rst_no_flow"] += 1
            self._rst_for(p, seg)
            return
        cfg = self.config
        flows = self.flows
        dst, dport = p[P_DST], p[P_DPORT]
        if dst == cfg.dns_ip or (dst == cfg.dns6 and cfg.enable_ipv6):
            host = None
            if cfg.enable_dns and dport == 53:
                host = TcpConnectDns
        else:
            host = self.nat.host_target(dst)
        if host is None:
            if self.nat.on_link_unowned(dst):
                self._unreachable(p, frame, UNREACH_HOST, "icmp_dest_unreachable_local")
            else:
                c["tcp_syn_refused_policy"] += 1
                c["policy_refused_" + ("dns_port" if dst == cfg.dns_ip or dst == cfg.dns6
                                       else self.nat.refusal(dst))] += 1
                self._rst_for(p, seg)
            return
        if self.budget.over():
            c["tcp_syn_budget_rst"] += 1
            self._rst_for(p, seg)
            return
        if flows.tcp.full() and not self._evict(now):
            c["tcp_syn_flow_limit_rst"] += 1
            self._rst_for(p, seg)
            return
        if flows.tcp_connecting >= cfg.max_tcp_connects:
            # Drop, don't refuse: the container's SYN retransmission retries
            # once a connect slot frees up.
            c["tcp_syn_connect_limit_drop"] += 1
            return
        flow = self._new_flow(key, False, now)
        flow.pkts_in = 1
        flow.conn.on_syn(seg, now)
        flow.connecting = True
        flow.connect_deadline = now + cfg.tcp_connect_timeout
        flows.tcp_connecting += 1
        c["tcp_syn_connect"] += 1
        self.events_out.append(TcpConnectDns(flow.id) if host is TcpConnectDns
                               else TcpConnect(flow.id, host, dport))
        self.output(flow, now)

    def _addr(self, a: bytes) -> bytes:
        """One bytes object per address for every flow that names it: the
        parser's copies (37 bytes each, two a flow) would otherwise live as
        long as the flow, though nearly every flow names the same two."""
        cache = self._addrs
        b = cache.get(a)
        if b is None:
            if len(cache) >= ADDR_CACHE_MAX:
                cache.clear()
            cache[a] = b = a
        return b

    def _new_flow(self, key: tuple, inbound: bool, now: float) -> TcpFlow:
        """The one way a TCP flow is made: its connection emits straight into ``events_out``."""
        key = (self._addr(key[0]), key[1], self._addr(key[2]), key[3])
        fid = self.flows.new_id()
        # The MSS we offer: the link MTU less the IP and TCP headers (IPv6's
        # header is 20 bytes longer than IPv4's).
        v6 = len(key[0]) == 16
        mss = self.config.mss - (IPV6_LEN - IPV4_LEN if v6 else 0)
        conn = TcpConnection(now, self.rng.getrandbits(32), mss, self.counters,
                             max_seg=self._tcp_max_seg, fid=fid, events=self.events_out,
                             push_ack_delay=PUSH_ACK_DELAY)
        flow = TcpFlow(fid, key, conn, inbound, self.neigh6 if v6 else self.neigh, now)
        if not v6:
            flow.asum = addr_sum4(flow.remote_ip, flow.guest_ip)
        cfg = self.config
        flow.ka_at = now + min(cfg.tcp_fin_timeout, cfg.tcp_keepalive_idle)
        self.flows.tcp.add(flow)
        # The flow's own objects are charged from now until it is forgotten.
        flow.charged = TCP_FLOW_COST
        self.budget.used += TCP_FLOW_COST
        return flow

    def _evict(self, now: float) -> bool:
        """Make room in a full table: abort the flow silent longest among the
        ``EVICT_SCAN`` oldest that is half-closed, closing, an unanswered
        handshake, or established but silent for ``TCP_EVICT_IDLE``. The
        flows looked at and kept move to the table's young end, so the next
        eviction looks further. False if none qualified."""
        by_id = self.flows.tcp.by_id
        best = None
        seen = []
        for flow in by_id.values():
            st = flow.conn.state
            if (st in _EVICTABLE or (st == SYN_RECEIVED and not flow.connecting)
                    or now - flow.last_rx >= TCP_EVICT_IDLE):
                if best is None or flow.last_rx < best.last_rx:
                    best = flow
            else:
                seen.append(flow)
            if len(seen) + (best is not None) >= EVICT_SCAN:
                break
        for flow in seen:
            del by_id[flow.id]
            by_id[flow.id] = flow
        if best is None:
            return False
        self.counters["tcp_flow_evicted"] += 1
        if best.conn.state != TIME_WAIT:
            self.events_out.append(TcpAbort(best.id))
        best.conn.abort(now)
        self.output(best, now)
        return True

    def _rst_for(self, p, seg) -> None:
        """RFC 9293 3.10.7.1: answer a segment that has no connection.

        If the ACK bit is off: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>;
        if on: <SEQ=SEG.ACK><CTL=RST>.
        """
        if seg.flags & ACK:
            seq, ack, flags = seg.ack, 0, RST
        else:
            seglen = len(seg.payload) + (1 if seg.flags & SYN else 0) + (seg.flags & 1)
            seq, ack, flags = 0, seg.seq + seglen, RST | ACK
        self.counters["tcp_rst_tx"] += 1
        self.frames_out.append((VNET_HDR_NONE, build_tcp(
            p[P_SRC_MAC], self.mac, p[P_DST], p[P_SRC], p[P_DPORT], p[P_SPORT], seq, ack, flags, 0,
            ident=self._ident())))

    def output(self, flow: TcpFlow, now: float) -> None:
        """Frame what the connection wants sent; forget it once closed; re-arm.

        With offloads every segment leaves its checksum to the kernel
        (``csum=False``: the pseudo-header sum in the field, ``NEEDS_CSUM``)
        and one carrying more than ``snd_mss`` bytes goes as a TSO
        super-segment (``gso_size = snd_mss``, which already accounts for the
        timestamp option); the container's kernel takes it whole. A TSO
        segment is queued as ``(vnet_hdr, headers, payload)``: the frame is
        the two pieces after the virtio-net header, which the driver's
        ``writev`` joins, so its payload is never copied into a frame here."""
        conn = flow.conn
        segs = conn.segments_out
        if segs and len(segs) == 1 and flow.asum is not None and self.offload and FRAME_TEMPLATE:
            # The common frame (header prediction's send side): one segment
            # of an IPv4 flow with the timestamp option alone (the
            # connection's cached options object) and no more than one wire
            # segment of payload, to a resolved neighbour: patched into the
            # flow's header template instead of built field by field.
            seq, ack, flags, window, o, payload = segs[0]
            mac = flow.neigh.table.get(flow.guest_ip)
            if o is conn._opts and o is not NO_OPTIONS and mac is not None \
                    and len(payload) <= conn.snd_mss:
                tpl = flow.tpl
                if tpl is None or flow.tpl_mac != mac:
                    tpl = flow.tpl = tcp4_ts_template(mac, self.mac, flow.remote_ip, flow.guest_ip,
                                                      flow.remote_port, flow.guest_port)
                    flow.tpl_mac = mac
                self.frames_out.append((_CSUM_HDR_TS4, build_tcp4_ts(
                    tpl, flow.asum, seq, ack, flags, window, o[4], o[5], payload, self._ident())))
                flow.pkts_out += 1
                flow.last = now
                segs.clear()
        if segs:
            gip, gport = flow.guest_ip, flow.guest_port
            rip, rport = flow.remote_ip, flow.remote_port
            neigh = flow.neigh
            mac = neigh.table.get(gip)       # neigh.lookup, a call less
            dmac = mac or UNRESOLVED
            smac = self.mac
            offload = self.offload
            if offload:
                v6 = len(gip) == 16
                l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
                mss = conn.snd_mss
            output = neigh.output
            asum = flow.asum
            flow.pkts_out += len(segs)
            flow.last = now
            for s in segs:
                o = s.options
                if o is None or o is NO_OPTIONS:
                    ob = b""
                elif o[O_TS_VAL] is not None and o[O_MSS] is None and o[O_WSCALE] is None \
                        and not o[O_SACK_PERM] and not o[O_SACK_BLOCKS]:
                    ob = _TS_ONLY.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, o[O_TS_VAL],
                                       o[O_TS_ECR])
                else:
                    ob = build_tcp_options(o.mss, o.wscale, o.sack_perm,
                                           None if o.ts_val is None else (o.ts_val, o.ts_ecr),
                                           o.sack_blocks)
                payload = s.payload
                if offload and len(payload) > mss:
                    # A TSO super-segment: the headers alone, the payload
                    # written after them by the same writev (no 64 KiB frame
                    # allocated and copied into per segment).
                    plen = len(payload)
                    if asum is not None:
                        f = build_tcp4(dmac, smac, rip, gip, asum, rport, gport, s.seq, s.ack,
                                       s.flags, s.window, ob, b"", self._ident(), False, plen)
                    else:
                        f = build_tcp(dmac, smac, rip, gip, rport, gport, s.seq, s.ack, s.flags,
                                      s.window, ob, ident=self._ident(), csum=False, plen=plen)
                    self.counters["tcp_tx_gso_segments"] += 1
                    output(gip, mac, (tcp_offload_hdr(l4, l4 + TCP_LEN + len(ob), mss, v6), f,
                                      payload), now)
                    continue
                if asum is not None:
                    f = build_tcp4(dmac, smac, rip, gip, asum, rport, gport, s.seq, s.ack,
                                   s.flags, s.window, ob, payload, self._ident(), not offload)
                else:
                    f = build_tcp(dmac, smac, rip, gip, rport, gport, s.seq, s.ack, s.flags,
                                  s.window, ob, payload, ident=self._ident(), csum=not offload)
                if not offload:
                    hdr = VNET_HDR_NONE
                else:
                    # One of a handful of headers (by L4 offset and header
                    # length): each made once.
                    hlen = l4 + TCP_LEN + len(ob)
                    hdr = _CSUM_HDRS.get(l4 << 16 | hlen)
                    if hdr is None:
                        hdr = _CSUM_HDRS[l4 << 16 | hlen] = tcp_offload_hdr(l4, hlen)
                output(gip, mac, (hdr, f), now)
            segs.clear()
        if conn.closed:
            self._forget(flow)
            return
        if conn.state is not flow.rs_state:
            # The read advice holds in the state it was given in only.
            flow.rsize = -1
            flow.rs_state = conn.state
        # The memory budget: what the flow holds now, charged by difference.
        # The send queue's bytes not yet acknowledged: acknowledged ones stay at
        # its front until the host side's next send (TcpConnection.send), at
        # most one flight, within the queue's bound all the same.
        queued = len(conn._sndbuf)
        if queued:
            una = conn.snd_una - conn._buf_seq
            if una > 0:
                queued -= una
        held = TCP_FLOW_COST + queued + conn._ooo_bytes + flow.backlog + flow.host_held
        charged = flow.charged
        if held != charged:
            b = self.budget
            b.used += held - charged
            flow.charged = held
            if flow.squeezed and b.used < b.limit:
                flow.squeezed = False
                conn.set_host_backlog(flow.backlog, now)
        elif flow.squeezed and self.budget.used < self.budget.limit:
            flow.squeezed = False
            conn.set_host_backlog(flow.backlog, now)
        # self._arm(flow), with flow.deadline() written out (once per segment).
        d = conn.get_timer()
        cd = flow.connect_deadline
        if cd is not None:
            if flow.inbound and conn.state != SYN_SENT:
                flow.connect_deadline = None     # the container answered our SYN
            elif d is None or cd < d:
                d = cd
        # The liveness check's deadline: every flow has one (_new_flow sets
        # it, _keepalive moves it), so d is never None past this.
        x = flow.ka_at
        if d is None or x < d:
            d = x
        armed = flow.armed
        if armed is None or d < armed:
            flow.armed = d
            self.timers.push(d, self._kind, flow.id)

    def _forget(self, flow: TcpFlow) -> None:
        if not self.flows.tcp.remove(flow):
            return
        flow.rsize = 0          # read_size's answer for a flow gone (read_advice)
        self.budget.used -= flow.charged
        flow.charged = 0
        if flow.connecting:
            flow.connecting = False
            self.flows.tcp_connecting -= 1
        self.counters["tcp_flow_closed"] += 1
        self.events_out.append(TcpClose(flow.id))

    def _timer(self, fid, d, now) -> None:
        flow = self.flows.tcp.by_id[fid]
        flow.armed = None
        nd = flow.deadline()
        if nd is not None and nd > now:
            # An early entry (the flow's deadline moved later since it was
            # pushed: an ACK that rode on an answer, an RTO restarted):
            # nothing is due, only re-arm.
            self._arm(flow)
            return
        if flow.connect_deadline is not None and flow.connect_deadline <= now:
            flow.connect_deadline = None
            if flow.inbound:
                # The container never answered a port forward's SYN: the
                # client is reset; no RST to the container (it never spoke;
                # a late SYN-ACK finds no flow and is reset then).
                self.counters["tcp_inbound_connect_timeout"] += 1
                self.events_out.append(TcpInboundRefused(fid, True))
                flow.conn.abort(now)
            else:
                self.events_out.append(TcpCancel(fid))
                self.refused(fid, now, "timeout")
                return
        else:
            flow.conn.handle_timer(now)
            if flow.ka_at is not None and flow.ka_at <= now and not flow.conn.closed:
                self._keepalive(flow, now)
        self.output(flow, now)

    def _keepalive(self, flow: TcpFlow, now: float) -> None:
        """Is the container's side of a silent flow still there? See the
        module docstring (liveness)."""
        cfg = self.config
        conn = flow.conn
        st = conn.state
        if flow.probes and flow.last_rx >= flow.probe_sent:
            flow.probes = 0                  # it answered
        if st not in _PROBED:
            flow.probes = 0
            flow.ka_at = now + cfg.tcp_fin_timeout
            return
        limit = cfg.tcp_fin_timeout if st == CLOSE_WAIT else cfg.tcp_keepalive_idle
        if not flow.probes and now - flow.last_rx < limit:
            flow.ka_at = min(flow.last_rx + limit, now + cfg.tcp_fin_timeout)
            return
        if flow.probes >= cfg.tcp_keepalive_probes:
            self.counters["tcp_keepalive_timeout"] += 1
            self.events_out.append(TcpAbort(flow.id))
            conn.abort(now)
            return
        if not flow.probes:
            flow.probe_sent = now
        flow.probes += 1
        self.counters["tcp_keepalive_probe_tx"] += 1
        conn.send_keepalive(now)
        flow.ka_at = now + cfg.tcp_keepalive_intvl

    def connected(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None or not flow.connecting:
            return
        flow.connecting = False
        flow.connect_deadline = None
        self.flows.tcp_connecting -= 1
        self.counters["tcp_host_connected"] += 1
        flow.conn.host_connected(now)
        self.output(flow, now)

    def refused(self, fid: int, now: float, reason: str = "refused") -> None:
        """The host connect failed (``reason`` names the errno, e.g.
        "refused", "timeout", "unreachable"): RST the container."""
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None:
            return
        if flow.connecting:
            flow.connecting = False
            flow.connect_deadline = None
            self.flows.tcp_connecting -= 1
        self.counters["tcp_host_connect_failed_" + reason] += 1
        flow.conn.host_refused(now)
        self.output(flow, now)

    def host_data(self, fid: int, data, now: float, more: bool = False) -> int:
        """Bytes read from the host socket; returns how many were taken. The
        caller keeps the rest until ``TcpResume``. ``more``: the read filled
        the host side's buffer, so more bytes are likely at once
        (``TcpConnection.send``)."""
        flow = self._by_id.get(fid)
        if flow is None:
            return len(data)
        conn = flow.conn
        b = self.budget
        if b.used >= b.limit:
            # Past the budget the queue toward the container stays small; the
            # host side keeps the rest (reading paused) until TcpResume.
            queued = len(conn._sndbuf)
            if queued and conn.snd_una > conn._buf_seq:
                queued -= conn.snd_una - conn._buf_seq      # acknowledged, not yet dropped
            room = BUDGET_FLOW_WINDOW - queued
            if room < len(data):
                self.counters["tcp_budget_send_capped"] += 1
                n = conn.send(memoryview(data)[:room], now) if room > 0 else 0
                if queued + n and not conn.closed:
                    conn._paused = True      # its ACKs bring the TcpResume
                flow.host_held = len(data) - n
                if len(conn._sndbuf) > flow.rs_qmax:
                    flow.rsize = -1          # the read advice may no longer hold
                self.output(flow, now)
                return n
        n = conn.send(data, now, more)
        flow.host_held = len(data) - n       # the host side keeps these until TcpResume
        if len(conn._sndbuf) > flow.rs_qmax:
            # The queue may now leave less room than the read advice's cap
            # (the only way room shrinks: read_advice).
            flow.rsize = -1
        self.output(flow, now)
        return n

    def segment_size(self, fid: int) -> int:
        """Payload bytes of a whole data segment toward the container (a TSO
        super-segment with offloads), once the handshake set it; 0 when
        unknown."""
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None or flow.conn.state not in _SIZED:
            return 0
        return flow.conn._seg_size

    def read_size(self, fid: int, cap: int) -> int:
        """How many bytes the host side should read from the flow's socket
        now (at most ``cap``): what the send queue has room for, in whole
        segments when one fits, so a bulk stream is cut into whole segments
        (no runt per read) and a read is never more than the queue takes
        (no bytes held back and offered again, no extra pause and resume).
        0: no advice (the flow is not established yet, or is gone)."""
        flow = self._by_id.get(fid)
        if flow is None:
            return 0
        conn = flow.conn
        if conn.state not in _SIZED:
            return 0
        queued = len(conn._sndbuf)
        if queued and conn.snd_una > conn._buf_seq:
            queued -= conn.snd_una - conn._buf_seq
        room = conn.snd_buf - queued
        if room > cap:
            room = cap
        seg = conn._seg_size
        if room >= seg:
            return room - room % seg
        return room if room > 0 else cap

    def read_advice(self, fid: int, cap: int) -> tuple:
        """``(flow, read_size(fid, cap))``, for a host side that keeps asking
        with the same ``cap``: it may read ``flow.rsize`` instead of asking
        again while that is not negative (``flow`` is :data:`NO_READ_ADVICE`
        for a flow gone).

        The answer is kept (``rsize``) when it cannot change until the send
        queue's room falls under ``cap`` or the state changes: then it is
        ``cap`` in whole segments whatever the queue holds. The queue's
        bytearray bounds what it holds, so the advice stands while that
        holds at most ``snd_buf - cap`` bytes (``rs_qmax``; host_data, the
        only place it grows, withdraws it past that) and the state is the
        one it was given in (output withdraws it on a change; _forget makes
        it 0, the answer for a flow gone)."""
        n = self.read_size(fid, cap)
        flow = self._by_id.get(fid)
        if flow is None:
            return NO_READ_ADVICE, n
        conn = flow.conn
        qmax = conn.snd_buf - cap
        if conn.state in _SIZED and len(conn._sndbuf) <= qmax:
            flow.rsize = n
            flow.rs_qmax = qmax
            flow.rs_state = conn.state
        return flow, n

    def host_eof(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            flow.conn.shutdown_host_eof(now)
            self.output(flow, now)

    def host_reset(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            self.counters["tcp_host_reset"] += 1
            flow.conn.abort(now)
            self.output(flow, now)

    def host_backlog(self, fid: int, nbytes: int, now: float) -> None:
        """Bytes waiting in the host socket's write buffer (the host side
        reports it once per flush for every flow it wrote to)."""
        flow = self._by_id.get(fid)
        if flow is not None:
            old_backlog = flow.backlog
            flow.backlog = nbytes
            conn = flow.conn
            b = self.budget
            if b.used >= b.limit:
                # Shrink the window: none while the host peer is behind, a
                # small one while it keeps up.
                self.counters["tcp_budget_window_squeezed"] += 1
                flow.squeezed = True
                # window = BUDGET_FLOW_WINDOW - backlog, at least 0
                nbytes = min(conn.rcv_buf, max(0, conn.rcv_buf - BUDGET_FLOW_WINDOW) + nbytes)
            conn.set_host_backlog(nbytes, now)
            # Frame and re-arm only when there is something to do: a window
            # update to send, a charge that moved, a squeeze to lift.
            if conn.segments_out or flow.backlog != old_backlog or flow.squeezed:
                self.output(flow, now)

    def open_inbound(self, guest_ip: bytes, guest_port: int, src_ip: bytes | None,
                         src_port: int | None, now: float) -> int | None:
        """Port forwarding: open a connection into the container from
        ``src_ip:src_port`` (the real client). The address policy may show
        the gateway instead (:meth:`AddressPolicy.inbound_source`; ``src_ip``
        None asks for it); the port is picked when none is given or the
        4-tuple is already a flow. Returns the flow id, or None at the flow
        limit or with no free port. The container's answer comes as
        ``TcpInboundConnected`` / ``TcpInboundRefused``."""
        key = self.flows.inbound_key(self.flows.tcp, guest_ip, guest_port, src_ip, src_port)
        c = self.counters
        if key is None:
            return None
        if self.budget.over():
            c["tcp_inbound_budget_refused"] += 1
            return None
        if self.flows.tcp.full() and not self._evict(now):
            c["tcp_inbound_flow_limit"] += 1
            return None
        flow = self._new_flow(key, True, now)
        flow.connect_deadline = now + self.config.tcp_connect_timeout
        c["tcp_inbound_open"] += 1
        flow.conn.open_active(now)
        self.output(flow, now)
        return flow.id

    def reset_all(self, now: float) -> None:
        """usernet is stopping: reset every flow toward the container (RFC
        9293 3.10.5 ABORT), so its applications learn now instead of
        retransmitting into a link nobody serves any more. Flows in TIME-WAIT
        are finished and left alone."""
        for flow in list(self.flows.tcp.by_id.values()):
            if flow.conn.state == TIME_WAIT:
                continue
            self.counters["tcp_exit_reset"] += 1
            flow.conn.abort(now)
            self.output(flow, now)

    def active(self) -> int:
        """Flows still moving data or closing (TIME-WAIT ones are done)."""
        return sum(1 for f in self.flows.tcp.by_id.values() if f.conn.state != TIME_WAIT)
