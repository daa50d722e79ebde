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

Limits: ``max_tcp_flows`` (a SYN past it is reset), ``max_tcp_connects``
host connects in flight (a SYN past it is dropped; the container retries).
"""

from ..wire.ether import ETH_LEN
from ..wire.frame import (P_ACK, P_DPORT, P_DST, P_FLAGS, P_OPTS, P_PAYLOAD, P_SEQ, P_SPORT,
                          P_SRC, P_SRC_MAC, P_WINDOW, build_tcp)
from ..wire.icmp import UNREACH_HOST
from ..wire.ipv4 import IPV4_LEN
from ..wire.ipv6 import IPV6_LEN
from ..wire.tcp import ACK, NO_OPTIONS, RST, SYN, TCP_LEN, build_tcp_options
from ..wire.vnet import VNET_HDR_NONE, tcp_offload_hdr
from .arp import UNRESOLVED
from .events import TcpCancel, TcpClose, TcpConnect, TcpConnectDns, TcpInboundRefused
from .flows import TcpFlow
from .tcp import SYN_SENT, TIME_WAIT, Segment, TcpConnection

# With TAP offloads, the most payload one TCP frame toward the container
# carries: an IPv4 datagram's 65535 bytes less the IP and TCP headers and the
# most options a segment can carry. The connection rounds it down to a
# multiple of its wire segment size (snd_mss), so the kernel cuts no runts.
TSO_MAX_SEG = 65535 - IPV4_LEN - TCP_LEN - 40


class TcpNat:
    def __init__(self, config, counters, flows, nat, neigh, timers, frames_out: list,
                 events_out: list, mac: bytes, rng, *, ident, unreachable, offload: bool):
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
        flows = self.flows
        flow = flows.tcp.by_key.get(key)
        seg = Segment(p[P_SEQ], p[P_ACK], p[P_FLAGS], p[P_WINDOW], p[P_OPTS], p[P_PAYLOAD])
        flags = seg.flags
        if flow is not None:
            flow.pkts_in += 1
            flow.last = now
            flow.conn.on_segment(seg, now)
            self.output(flow, now)
            if not (flags & SYN and not flags & ACK and flow.id not in flows.tcp.by_id):
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
                self._rst_for(p, seg)
            return
        if flows.tcp.full():
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

    def _new_flow(self, key: tuple, inbound: bool, now: float) -> TcpFlow:
        """The one way a TCP flow is made: its connection emits straight into ``events_out``."""
        fid = self.flows.new_id()
        # The MSS we offer: the link MTU less the IP and TCP headers (IPv6's
        # header is 20 bytes longer than IPv4's).
        v6 = len(key[0]) == 16
        mss = self.config.mss - (IPV6_LEN - IPV4_LEN if v6 else 0)
        conn = TcpConnection(now, self.rng.getrandbits(32), mss, self.counters,
                             max_seg=self._tcp_max_seg, fid=fid, events=self.events_out)
        flow = TcpFlow(fid, key, conn, inbound, self.neigh6 if v6 else self.neigh, now)
        self.flows.tcp.add(flow)
        return flow

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
        timestamp option); the container's kernel takes it whole."""
        conn = flow.conn
        segs = conn.segments_out
        if segs:
            gip, gport = flow.guest_ip, flow.guest_port
            rip, rport = flow.remote_ip, flow.remote_port
            neigh = flow.neigh
            mac = neigh.lookup(gip)
            dmac = mac or UNRESOLVED
            smac = self.mac
            offload = self.offload
            if offload:
                v6 = len(gip) == 16
                l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
                mss = conn.snd_mss
            output = neigh.output
            flow.pkts_out += len(segs)
            flow.last = now
            for s in segs:
                o = s.options
                if o is None or o is NO_OPTIONS:
                    ob = b""
                else:
                    ob = build_tcp_options(o.mss, o.wscale, o.sack_perm,
                                           None if o.ts_val is None else (o.ts_val, o.ts_ecr),
                                           o.sack_blocks)
                f = build_tcp(dmac, smac, rip, gip, rport, gport, s.seq, s.ack, s.flags,
                              s.window, ob, s.payload, ident=self._ident(), csum=not offload)
                if not offload:
                    hdr = VNET_HDR_NONE
                elif len(s.payload) > mss:
                    self.counters["tcp_tx_gso_segments"] += 1
                    hdr = tcp_offload_hdr(l4, l4 + TCP_LEN + len(ob), mss, v6)
                else:
                    hdr = tcp_offload_hdr(l4, l4 + TCP_LEN + len(ob))
                output(gip, mac, (hdr, f), now)
            segs.clear()
        if conn.closed:
            self._forget(flow)
            return
        if flow.inbound and flow.connect_deadline is not None and conn.state != SYN_SENT:
            flow.connect_deadline = None    # the container answered our SYN
        self._arm(flow)

    def _forget(self, flow: TcpFlow) -> None:
        if not self.flows.tcp.remove(flow):
            return
        if flow.connecting:
            flow.connecting = False
            self.flows.tcp_connecting -= 1
        self.counters["tcp_flow_closed"] += 1
        self.events_out.append(TcpClose(flow.id))

    def _timer(self, fid, d, now) -> None:
        flow = self.flows.tcp.by_id[fid]
        flow.armed = None
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
        self.output(flow, now)

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

    def host_data(self, fid: int, data, now: float) -> int:
        """Bytes read from the host socket; returns how many were taken. The
        caller keeps the rest until ``TcpResume``."""
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None:
            return len(data)
        n = flow.conn.send(data, now)
        self.output(flow, now)
        return n

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
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            flow.conn.set_host_backlog(nbytes, now)
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
        if self.flows.tcp.full():
            c["tcp_inbound_flow_limit"] += 1
            return None
        flow = self._new_flow(key, True, now)
        flow.connect_deadline = now + self.config.tcp_connect_timeout
        c["tcp_inbound_open"] += 1
        flow.conn.open_active(now)
        self.output(flow, now)
        return flow.id

    def active(self) -> int:
        """Flows still moving data or closing (TIME-WAIT ones are done)."""
        return sum(1 for f in self.flows.tcp.by_id.values() if f.conn.state != TIME_WAIT)
