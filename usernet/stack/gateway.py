"""The gateway: the whole virtual network as the container sees it, sans-IO.

Theory of operation
-------------------
The container has one NIC (a TAP). Everything on the other end of that wire is
this object: the router/host at network+2, the DNS forwarder at network+3,
the DHCP server, and — through NAT — every address on the internet. It is
driven like aioquic's QUIC core or h11:

* ``receive_frame(frame, now)`` for each frame read from the TAP;
* host-side notifications (``tcp_connected``, ``tcp_host_data``, ...), each
  with ``now``;
* after each call the driver drains ``frames_out`` (``(vnet_hdr, frame)``
  pairs for the TAP) and ``events_out`` (typed records from
  :mod:`usernet.stack.events`), both lists it empties in place, then re-arms
  its one timer from ``get_timer()`` and calls ``handle_timer(now)`` when due.

This module is the demultiplexer: it parses a frame once, checks it, and
hands it to the one place that owns it. The jobs live by name beside it:

* :mod:`usernet.stack.arp` -- the neighbour cache and the hold queue;
* :mod:`usernet.stack.nat` -- the address policy (what is ours, what is
  refused, where a flow goes on the host);
* :mod:`usernet.stack.flows` -- the TCP, UDP and ICMP echo flow tables;
* :mod:`usernet.stack.timers` -- the one heap and its kind-to-handler table;
* :mod:`usernet.stack.tcp` -- one TCP connection (it emits its own events);
* :mod:`usernet.stack.ipfrag`, :mod:`usernet.stack.dhcp`, :mod:`usernet.stack.dns`.

What it never does: I/O, clocks, sockets. It does not know whether a host
connect will work; it asks (``TcpConnect``) and answers the container only
when told (connect first, answer second). It owns both connect timeouts: the
host connect of an outbound flow (``tcp_connect_timeout``: cancel, RST the
container) and the container's answer to a port forward's SYN (the same
timeout: ``TcpInboundRefused(timed_out=True)``), and it picks the source port
a forwarded client is shown when the client's own cannot be used.

Frames toward the container are built with the neighbour's MAC already known
(:meth:`NeighbourCache.lookup`); only a frame held for ARP gets its MAC
written later. TCP frames with offloads on carry their own virtio-net header
(``NEEDS_CSUM``, maybe TSO); every other frame the plain all-zero one.

Timers (one :class:`Timers` heap): TCP flows (retransmission, persist,
delayed ACK, TIME-WAIT, the connect deadline), UDP and ICMP idle expiry, DNS
queries, ARP retries, reassembly expiry.

Limits (see ``usernet.stack.config``): flows per protocol, TCP connects in
flight, reassembly memory, frames held while ARP resolves, DNS queries
pending. Past a limit new work is refused with a counter; existing flows keep
working.
"""

import random

from ..wire import ParseError
from ..wire.arp import ARP_REPLY, ARP_REQUEST, parse_arp
from ..wire.checksum import checksum
from ..wire.dns import build_servfail
from ..wire.ether import BROADCAST, ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from ..wire.frame import (P_ACK, P_DPORT, P_DST, P_DST_MAC, P_END, P_ETHERTYPE, P_FLAGS,
                          P_FRAG, P_L3, P_L4, P_OPTS, P_PAYLOAD, P_PROTO, P_SEQ, P_SPORT, P_SRC,
                          P_SRC_MAC, P_TTL, P_WINDOW, build_arp, build_icmp, build_ipv4_fragment,
                          build_tcp, build_udp, ipv4_header_ok, l4_checksum_ok, parse_frame)
from ..wire.icmp import (ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                         UNREACH_ADMIN_PROHIBITED, UNREACH_FRAG_NEEDED, UNREACH_HOST,
                         UNREACH_PORT, UNREACH_PROTOCOL)
from ..wire.ipv4 import IPV4, IPV4_LEN, PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ..wire.ipv6 import IPV6_LEN
from ..wire.tcp import ACK, NO_OPTIONS, RST, SYN, TCP_LEN, build_tcp_options
from ..wire.vnet import VNET_HDR_NONE, tcp_offload_hdr
from .arp import NeighbourCache
from .config import (FRAG_MAX_BYTES, FRAG_MAX_DATAGRAMS, FRAG_TIMEOUT, ICMP_IDLE_TIMEOUT,
                     NetConfig)
from .counters import Counters
from .dhcp import DhcpServer
from .dns import LocalNames
from .events import (DnsQuery, IcmpOpen, IcmpSend, TcpCancel, TcpClose, TcpConnect, TcpConnectDns,
                     TcpInboundRefused, UdpOpen, UdpSend)
from .flows import Flows, IcmpFlow, TcpFlow, UdpFlow
from .ipfrag import Reassembler
from .nat import AddressPolicy
from .tcp import SYN_SENT, TIME_WAIT, Segment, TcpConnection
from .timers import Timers

_UDP_MAX_PAYLOAD = 65535 - IPV4_LEN - 8   # what one IPv4 datagram can carry
# RFC 1812 4.3.2.3: an ICMP error quotes as much of the datagram as fits in
# 576 bytes: 576 - 20 (IP) - 8 (ICMP) = 548.
ICMP_QUOTE_MAX = 548
DNS_QUERY_TIMEOUT = 5.0     # upstream silence this long -> SERVFAIL to the container
DNS_MAX_PENDING = 256       # queries waiting for upstream; past it -> SERVFAIL at once
# With TAP offloads, the most payload one TCP frame toward the container
# carries: an IPv4 datagram's 65535 bytes less the IP and TCP headers and the
# most options a segment can carry. The connection rounds it down to a
# multiple of its wire segment size (snd_mss), so the kernel cuts no runts.
TSO_MAX_SEG = 65535 - IPV4_LEN - TCP_LEN - 40
_UNRESOLVED = bytes(6)      # destination MAC of a frame held for ARP (written on resolve)
_ANY4 = b"\0\0\0\0"


class Gateway:
    def __init__(self, config: NetConfig | None = None, *, seed=None, counters=None,
                 offload: bool = False):
        self.config = cfg = config or NetConfig()
        # TAP offloads on (the driver's fd has TUN_F_CSUM|TSO4|TSO6): TCP
        # frames toward the container leave their checksum to the kernel and
        # carry up to ~64 KiB behind their own virtio-net header. Off: every
        # frame is plain and fully checksummed.
        self.offload = offload
        self._tcp_max_seg = TSO_MAX_SEG if offload else None
        self.counters = counters if counters is not None else Counters()
        # The two outputs. Both lists live as long as the gateway (parts of
        # the stack hold them): the driver empties them in place.
        self.frames_out: list[tuple] = []      # (vnet_hdr, frame)
        self.events_out: list = []             # usernet.stack.events records
        self.rng = random.Random(seed)
        self.mac = cfg.gateway_mac
        self.nat = AddressPolicy(cfg)
        self.timers = Timers()
        self.neigh = NeighbourCache(self.counters, self.frames_out, self.timers,
                                    self._arp_solicit, VNET_HDR_NONE)
        if cfg.guest_mac is not None:
            self.neigh.table[cfg.guest_ip] = cfg.guest_mac
        self.flows = Flows(cfg, self.counters)
        self.reasm = Reassembler(self.counters, FRAG_TIMEOUT, FRAG_MAX_DATAGRAMS, FRAG_MAX_BYTES)
        self._frag_armed = None
        self._ip_ident = self.rng.randrange(65536)
        t = self.timers
        self._t_tcp = t.kind(self._flow_live(self.flows.tcp), self._tcp_timer)
        self._t_udp = t.kind(self._flow_live(self.flows.udp), self._datagram_timer(
            self.flows.udp, lambda: self._t_udp))
        self._t_icmp = t.kind(self._flow_live(self.flows.icmp), self._datagram_timer(
            self.flows.icmp, lambda: self._t_icmp))
        self._t_dns = t.kind(lambda qid, d: qid in self.dns_pending,
                             lambda qid, d, now: self.dns_failed(qid, now, "timeout"))
        self._t_frag = t.kind(lambda _k, d: d == self._frag_armed, self._frag_timer)
        # Services answered by the stack itself, keyed by (address, UDP
        # port): callable(parsed, frame, now).
        self.udp_local_handlers: dict[tuple, object] = {}
        if cfg.enable_dhcp:
            self.dhcp = DhcpServer(cfg, self.counters)
            self.udp_local_handlers[(b"\xff\xff\xff\xff", 67)] = self._dhcp_input
            self.udp_local_handlers[(cfg.gateway_ip, 67)] = self._dhcp_input
        if cfg.enable_dns:
            self.local_names = LocalNames(cfg.gateway_ip if cfg.host_loopback else None)
            self.udp_local_handlers[(cfg.dns_ip, 53)] = self._dns_input
        # DNS queries waiting for upstream: id -> (guest_ip, guest_port, query)
        self.dns_pending: dict[int, tuple] = {}

    # ---------------------------------------------------------------- input
    def receive_frame(self, frame, now: float, csum_ok: bool = False) -> None:
        """One frame from the TAP. ``csum_ok``: the virtio-net header said the
        L4 checksum need not be verified (NEEDS_CSUM or DATA_VALID)."""
        c = self.counters
        c["rx_frames"] += 1
        try:
            p = parse_frame(frame)
        except ParseError as e:
            c["drop_" + e.reason] += 1
            return
        dst_mac = p[P_DST_MAC]
        if dst_mac != self.mac and not dst_mac[0] & 1:
            # Unicast to someone else (the container talking to a MAC we
            # never gave out): not ours.
            c["drop_eth_not_for_us"] += 1
            return
        etype = p[P_ETHERTYPE]
        if etype == ETH_P_IP:
            self._ipv4_input(p, frame, now, csum_ok)
        elif etype == ETH_P_ARP:
            self._arp_input(p, now)
        elif etype == ETH_P_IPV6:
            c["drop_ipv6_disabled"] += 1
        else:
            c["drop_eth_unknown_ethertype"] += 1

    # ------------------------------------------------------------------ ARP
    def _arp_input(self, p, now) -> None:
        c = self.counters
        try:
            a = parse_arp(p[P_PAYLOAD])
        except ParseError as e:
            c["drop_" + e.reason] += 1
            return
        # Learn the sender (RFC 826 "merge" step) when it is inside our
        # network; this also covers gratuitous ARP (spa == tpa).
        if self.nat.may_learn(a.spa):
            self.neigh.learn(a.spa, a.sha)
        if a.oper == ARP_REQUEST:
            if a.spa == a.tpa:
                c["arp_gratuitous"] += 1
            elif self.nat.is_ours(a.tpa):
                c["arp_reply_tx"] += 1
                self.frames_out.append((VNET_HDR_NONE, build_arp(
                    a.sha, self.mac, ARP_REPLY, self.mac, a.tpa, a.sha, a.spa)))
            else:
                c["arp_ignored_not_ours"] += 1
        elif a.oper == ARP_REPLY:
            c["arp_reply_rx"] += 1
        else:
            c["drop_arp_bad_oper"] += 1

    def _arp_solicit(self, ip: bytes) -> bytearray:
        return build_arp(BROADCAST, self.mac, ARP_REQUEST, self.mac, self.config.gateway_ip,
                         b"\0" * 6, ip)

    def _to_guest(self, ip: bytes, mac: bytes | None, frame, now: float) -> None:
        """A plain frame built for ``mac`` (``neigh.lookup(ip)``), or held."""
        self.neigh.output(ip, mac, (VNET_HDR_NONE, frame), now)

    # ----------------------------------------------------------------- IPv4
    def _ipv4_input(self, p, frame, now, csum_ok) -> None:
        c = self.counters
        cfg = self.config
        if not ipv4_header_ok(frame, p[P_L3], p[P_L4]):
            c["drop_ipv4_bad_checksum"] += 1
            return
        if p[P_TTL] == 0:
            c["drop_ipv4_ttl_zero"] += 1
            return
        src = p[P_SRC]
        if src not in self.neigh.table:
            if self.nat.bad_guest_source(src, p[P_PROTO] == PROTO_UDP and p[P_DPORT] == 67):
                c["drop_ipv4_bad_source"] += 1
                return
            if src != _ANY4:
                # Learn the guest's MAC from its IP traffic too (no ARP needed
                # for replies: the container always ARPs us first anyway).
                self.neigh.learn(src, p[P_SRC_MAC])
        if p[P_END] - p[P_L3] > cfg.mtu and frame[p[P_L3] + 6] & 0x40 and not csum_ok:
            # Bigger than the link MTU (someone raised the TAP's MTU inside the
            # container) with DF set: RFC 1191 says answer "fragmentation
            # needed" with the MTU we forward, so the sender's PMTU discovery
            # shrinks. (Offloaded GSO super-frames, which carry csum_ok, are
            # bigger by design and exempt.)
            self._unreachable(p, frame, UNREACH_FRAG_NEEDED, "icmp_frag_needed_tx",
                              next_hop_mtu=cfg.mtu)
            return
        if p[P_FRAG] is not None:
            self._ipv4_fragment(p, frame, now)
            return
        proto = p[P_PROTO]
        if proto != PROTO_TCP and proto != PROTO_UDP and proto != PROTO_ICMP:
            # RFC 1122 3.2.2.1: answer an unsupported protocol with ICMP
            # protocol unreachable.
            self._unreachable(p, frame, UNREACH_PROTOCOL, "ipv4_protocol_unreachable_tx")
            return
        if not csum_ok and not l4_checksum_ok(p, frame):
            c["drop_l4_bad_checksum"] += 1
            return
        if proto == PROTO_TCP:
            self._tcp_input(p, frame, now)
        elif proto == PROTO_UDP:
            self._udp_input(p, frame, now)
        else:
            self._icmp_input(p, frame, now)

    def _ipv4_fragment(self, p, frame, now) -> None:
        ident, offset, more = p[P_FRAG]
        src, dst, proto = p[P_SRC], p[P_DST], p[P_PROTO]
        whole = self.reasm.add((src, dst, proto, ident), offset, bool(more), p[P_PAYLOAD], now)
        self._arm_reasm()
        if whole is None:
            return
        if IPV4_LEN + len(whole) > 65535:
            # Fragments may tile up to 65535 bytes of payload, but a datagram
            # cannot carry more than 65515 after its header (the ping of death).
            self.counters["drop_frag_too_big"] += 1
            return
        # Rebuild an unfragmented frame and feed it back through the parser,
        # so the reassembled datagram meets exactly the checks a whole one does.
        l3 = p[P_L3]
        buf = bytearray(l3 + IPV4_LEN + len(whole))
        buf[0:l3] = frame[0:l3]
        IPV4.pack_into(buf, l3, 0x45, 0, IPV4_LEN + len(whole), ident, 0, p[P_TTL], proto, 0,
                       src, dst)
        cs = checksum(memoryview(buf)[l3:l3 + IPV4_LEN])
        buf[l3 + 10] = cs >> 8
        buf[l3 + 11] = cs & 0xFF
        buf[l3 + IPV4_LEN:] = whole
        self.receive_frame(buf, now)

    def _arm_reasm(self):
        d = self.reasm.next_deadline()
        if d is not None and (self._frag_armed is None or d < self._frag_armed):
            self._frag_armed = d
            self.timers.push(d, self._t_frag, 0)

    def _frag_timer(self, _key, d, now) -> None:
        self._frag_armed = None
        self.reasm.expire(now)
        self._arm_reasm()

    def _unreachable(self, p, frame, code, counter, next_hop_mtu: int = 0) -> None:
        """ICMP destination unreachable quoting the offending datagram
        (RFC 792: IP header + first 8 bytes; RFC 1812 allows more, we quote
        up to ICMP_QUOTE_MAX bytes so the whole reply stays under 576)."""
        if self.nat.no_icmp_error(p[P_DST], p[P_DST_MAC], p[P_SRC]):
            self.counters["icmp_error_suppressed_broadcast"] += 1
            return
        self.counters[counter] += 1
        quote = bytes(frame[p[P_L3]:p[P_L3] + ICMP_QUOTE_MAX])
        self.frames_out.append((VNET_HDR_NONE, build_icmp(
            p[P_SRC_MAC], self.mac, self.config.gateway_ip, p[P_SRC], ICMP_DEST_UNREACH, code, 0,
            next_hop_mtu, quote, ident=self._ident())))

    def _ident(self) -> int:
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        return self._ip_ident

    # ----------------------------------------------------------------- ICMP
    def _icmp_input(self, p, frame, now) -> None:
        c = self.counters
        dst = p[P_DST]
        if p[P_SPORT] != ICMP_ECHO_REQUEST:     # P_SPORT holds the ICMP type
            c["drop_icmp_unhandled_type"] += 1
            return
        if self.nat.is_ours(dst):
            c["icmp_echo_local_reply"] += 1
            self.frames_out.append((VNET_HDR_NONE, build_icmp(
                p[P_SRC_MAC], self.mac, dst, p[P_SRC], ICMP_ECHO_REPLY, 0, p[P_SEQ], p[P_ACK],
                p[P_PAYLOAD], ident=self._ident())))
            return
        if self.nat.unroutable(dst):
            self._unreachable(p, frame, UNREACH_HOST, "icmp_dest_unreachable_local")
            return
        # An echo flow is (container, identifier, destination); replies come
        # back with the container's identifier whatever the host socket used.
        key = (p[P_SRC], p[P_SEQ], dst, 0)
        table = self.flows.icmp
        flow = table.by_key.get(key)
        if flow is None:
            host = self.nat.host_target(dst)
            if host is None:
                self._unreachable(p, frame, UNREACH_HOST, "icmp_echo_refused_policy")
                return
            flow = self.flows.open_datagram(IcmpFlow, table, key, ICMP_IDLE_TIMEOUT)
            if flow is None:
                return
            self.events_out.append(IcmpOpen(flow.id, host, flow.guest_port))
        self._touch(flow, self._t_icmp, now)
        c["icmp_echo_forward"] += 1
        self.events_out.append(IcmpSend(flow.id, p[P_ACK], bytes(p[P_PAYLOAD])))

    def icmp_host_reply(self, fid: int, seq: int, data, now: float) -> None:
        """An echo reply from the host side; it goes to the container with
        the container's own identifier (Linux ping sockets rewrite it)."""
        flow = self.flows.icmp.by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, self._t_icmp, now)
        self.counters["icmp_echo_reply_rx"] += 1
        mac = self.neigh.lookup(flow.guest_ip)
        self._to_guest(flow.guest_ip, mac, build_icmp(
            mac or _UNRESOLVED, self.mac, flow.remote_ip, flow.guest_ip, ICMP_ECHO_REPLY, 0,
            flow.guest_port, seq, data, ident=self._ident()), now)

    def icmp_host_unavailable(self, fid: int, seq: int, data, now: float) -> None:
        """Neither a ping socket nor a raw socket can be had: answer the echo
        with "communication administratively prohibited" rather than silence."""
        flow = self.flows.icmp.by_id.get(fid)
        if flow is None:
            return
        self.counters["icmp_echo_admin_prohibited_tx"] += 1
        orig = build_icmp(BROADCAST, BROADCAST, flow.guest_ip, flow.remote_ip, ICMP_ECHO_REQUEST,
                          0, flow.guest_port, seq, bytes(data)[:64])
        self._icmp_error_to_guest(flow, self.config.gateway_ip, UNREACH_ADMIN_PROHIBITED, orig,
                                  now)

    def _icmp_error_to_guest(self, flow, src_ip: bytes, code: int, orig, now: float) -> None:
        """Destination unreachable ``code`` toward a flow's guest, quoting
        ``orig`` (a frame rebuilt as the guest sent it)."""
        mac = self.neigh.lookup(flow.guest_ip)
        self._to_guest(flow.guest_ip, mac, build_icmp(
            mac or _UNRESOLVED, self.mac, src_ip, flow.guest_ip, ICMP_DEST_UNREACH, code, 0, 0,
            bytes(orig[ETH_LEN:ETH_LEN + ICMP_QUOTE_MAX]), ident=self._ident()), now)

    # ------------------------------------------------------------------ TCP
    def _tcp_input(self, p, frame, now) -> None:
        key = (p[P_SRC], p[P_SPORT], p[P_DST], p[P_DPORT])
        flows = self.flows
        flow = flows.tcp.by_key.get(key)
        seg = Segment(p[P_SEQ], p[P_ACK], p[P_FLAGS], p[P_WINDOW], p[P_OPTS], p[P_PAYLOAD])
        flags = seg.flags
        if flow is not None:
            flow.conn.on_segment(seg, now)
            self._tcp_output(flow, now)
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
            self._tcp_rst_for(p, seg)
            return
        cfg = self.config
        dst, dport = p[P_DST], p[P_DPORT]
        if dst == cfg.dns_ip:
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
                self._tcp_rst_for(p, seg)
            return
        if flows.tcp.full():
            c["tcp_syn_flow_limit_rst"] += 1
            self._tcp_rst_for(p, seg)
            return
        if flows.tcp_connecting >= cfg.max_tcp_connects:
            # Drop, don't refuse: the container's SYN retransmission retries
            # once a connect slot frees up.
            c["tcp_syn_connect_limit_drop"] += 1
            return
        flow = self._tcp_new_flow(key, False, now)
        flow.conn.on_syn(seg, now)
        flow.connecting = True
        flow.connect_deadline = now + cfg.tcp_connect_timeout
        flows.tcp_connecting += 1
        c["tcp_syn_connect"] += 1
        self.events_out.append(TcpConnectDns(flow.id) if host is TcpConnectDns
                               else TcpConnect(flow.id, host, dport))
        self._tcp_output(flow, now)

    def _tcp_new_flow(self, key: tuple, inbound: bool, now: float) -> TcpFlow:
        """The one way a TCP flow is made: its connection emits straight into ``events_out``."""
        fid = self.flows.new_id()
        conn = TcpConnection(now, self.rng.getrandbits(32), self.config.mss, self.counters,
                             max_seg=self._tcp_max_seg, fid=fid, events=self.events_out)
        flow = TcpFlow(fid, key, conn, inbound)
        self.flows.tcp.add(flow)
        return flow

    def _tcp_rst_for(self, p, seg) -> None:
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

    def _tcp_output(self, flow: TcpFlow, now: float) -> None:
        """Frame what the connection wants sent; forget it once closed; re-arm.

        With offloads every segment leaves its checksum to the kernel
        (``csum=False``: the pseudo-header sum in the field, ``NEEDS_CSUM``)
        and one carrying more than ``snd_mss`` bytes goes as a TSO
        super-segment (``gso_size = snd_mss``, which already accounts for the
        timestamp option); the container's kernel takes it whole."""
        conn = flow.conn
        segs = conn.segments_out
        if segs:
            gip, gport, rip, rport = flow.guest_ip, flow.guest_port, flow.remote_ip, flow.remote_port
            mac = self.neigh.lookup(gip)
            dmac = mac or _UNRESOLVED
            smac = self.mac
            offload = self.offload
            if offload:
                v6 = len(gip) == 16
                l4 = ETH_LEN + (IPV6_LEN if v6 else IPV4_LEN)
                mss = conn.snd_mss
            output = self.neigh.output
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
            self._tcp_forget(flow)
            return
        if flow.inbound and flow.connect_deadline is not None and conn.state != SYN_SENT:
            flow.connect_deadline = None    # the container answered our SYN
        self._arm(flow, self._t_tcp)

    def _tcp_forget(self, flow: TcpFlow) -> None:
        if not self.flows.tcp.remove(flow):
            return
        if flow.connecting:
            flow.connecting = False
            self.flows.tcp_connecting -= 1
        self.counters["tcp_flow_closed"] += 1
        self.events_out.append(TcpClose(flow.id))

    def _tcp_timer(self, fid, d, now) -> None:
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
                self.tcp_refused(fid, now, "timeout")
                return
        else:
            flow.conn.handle_timer(now)
        self._tcp_output(flow, now)

    # host-side notifications for TCP
    def tcp_connected(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None or not flow.connecting:
            return
        flow.connecting = False
        flow.connect_deadline = None
        self.flows.tcp_connecting -= 1
        self.counters["tcp_host_connected"] += 1
        flow.conn.host_connected(now)
        self._tcp_output(flow, now)

    def tcp_refused(self, fid: int, now: float, reason: str = "refused") -> None:
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
        self._tcp_output(flow, now)

    def tcp_host_data(self, fid: int, data, now: float) -> int:
        """Bytes read from the host socket; returns how many were taken. The
        caller keeps the rest until ``TcpResume``."""
        flow = self.flows.tcp.by_id.get(fid)
        if flow is None:
            return len(data)
        n = flow.conn.send(data, now)
        self._tcp_output(flow, now)
        return n

    def tcp_host_eof(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            flow.conn.shutdown_host_eof(now)
            self._tcp_output(flow, now)

    def tcp_host_reset(self, fid: int, now: float) -> None:
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            self.counters["tcp_host_reset"] += 1
            flow.conn.abort(now)
            self._tcp_output(flow, now)

    def tcp_host_backlog(self, fid: int, nbytes: int, now: float) -> None:
        """Bytes waiting in the host socket's write buffer (the host side
        reports it once per flush for every flow it wrote to)."""
        flow = self.flows.tcp.by_id.get(fid)
        if flow is not None:
            flow.conn.set_host_backlog(nbytes, now)
            self._tcp_output(flow, now)

    def tcp_open_inbound(self, guest_ip: bytes, guest_port: int, src_ip: bytes | None,
                         src_port: int | None, now: float) -> int | None:
        """Port forwarding: open a connection into the container from
        ``src_ip:src_port`` (the real client). The address policy may show
        the gateway instead (:meth:`AddressPolicy.inbound_source`; ``src_ip``
        None asks for it); the port is picked when none is given or the
        4-tuple is already a flow. Returns the flow id, or None at the flow
        limit or with no free port. The container's answer comes as
        ``TcpInboundConnected`` / ``TcpInboundRefused``."""
        key = self._inbound_key(self.flows.tcp, guest_ip, guest_port, src_ip, src_port, "tcp")
        c = self.counters
        if key is None:
            return None
        if self.flows.tcp.full():
            c["tcp_inbound_flow_limit"] += 1
            return None
        flow = self._tcp_new_flow(key, True, now)
        flow.connect_deadline = now + self.config.tcp_connect_timeout
        c["tcp_inbound_open"] += 1
        flow.conn.open_active(now)
        self._tcp_output(flow, now)
        return flow.id

    def _inbound_key(self, table, guest_ip, guest_port, src_ip, src_port, proto) -> tuple | None:
        """The flow key for a forwarded client: its own address and port
        when the policy allows and the tuple is free, else the gateway's
        address with a port we pick (counted)."""
        c = self.counters
        gw_ip = self.config.gateway_ip
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
            c[proto + "_inbound_source_port_picked"] += 1
        port = self.flows.pick_source_port(table, guest_ip, guest_port, gw_ip)
        if port is None:
            c[proto + "_inbound_no_source_port"] += 1
            return None
        return (guest_ip, guest_port, gw_ip, port)

    def tcp_active(self) -> int:
        """Flows still moving data or closing (TIME-WAIT ones are done)."""
        return sum(1 for f in self.flows.tcp.by_id.values() if f.conn.state != TIME_WAIT)

    # ------------------------------------------------------------------ UDP
    def _udp_input(self, p, frame, now) -> None:
        dst, dport = p[P_DST], p[P_DPORT]
        handler = self.udp_local_handlers.get((dst, dport))
        if handler is not None:
            handler(p, frame, now)
            return
        nat = self.nat
        if dst == self.config.dns_ip:
            self._unreachable(p, frame, UNREACH_PORT, "udp_port_unreachable_local")
            return
        if nat.is_broadcast(dst):
            self.counters["drop_udp_broadcast"] += 1
            return
        key = (p[P_SRC], p[P_SPORT], dst, dport)
        table = self.flows.udp
        flow = table.by_key.get(key)
        if flow is None:
            host = nat.host_target(dst)
            if host is None:
                if nat.on_link_unowned(dst):
                    self._unreachable(p, frame, UNREACH_HOST, "icmp_dest_unreachable_local")
                else:
                    self._unreachable(p, frame, UNREACH_PORT, "udp_refused_policy")
                return
            cfg = self.config
            idle = cfg.udp_dns_idle_timeout if dport == 53 else cfg.udp_idle_timeout
            flow = self.flows.open_datagram(UdpFlow, table, key, idle)
            if flow is None:
                return
            self.events_out.append(UdpOpen(flow.id, host, dport))
        self._touch(flow, self._t_udp, now)
        self.counters["udp_tx_datagrams"] += 1
        self.events_out.append(UdpSend(flow.id, bytes(p[P_PAYLOAD])))

    def udp_inbound(self, src_ip: bytes | None, src_port: int | None, guest_ip: bytes,
                    guest_port: int, data, now: float) -> tuple | None:
        """Port forwarding: a datagram from a new client ``src_ip:src_port``
        for the container's ``guest_port`` (shown as the policy and free
        tuples allow, like :meth:`tcp_open_inbound`). The flow is keyed like
        an outbound one, so the container's replies find it; the host side
        sends them back through its listener (no ``UdpOpen``). Returns
        ``(flow id, (address, port) shown)``, or None at the flow limit or
        with no free port. Later datagrams of the client go to
        :meth:`udp_forward`."""
        table = self.flows.udp
        key = self._inbound_key(table, guest_ip, guest_port, src_ip, src_port, "udp")
        if key is None:
            return None
        flow = self.flows.open_datagram(UdpFlow, table, key, self.config.udp_idle_timeout)
        if flow is None:
            return None
        self.counters["udp_inbound_flow_open"] += 1
        self.udp_forward(flow.id, data, now)
        return flow.id, (key[2], key[3])

    def udp_forward(self, fid: int, data, now: float) -> bool:
        """A datagram from a port forward's client on flow ``fid``; False if
        the flow expired (the caller opens a new one with :meth:`udp_inbound`)."""
        flow = self.flows.udp.by_id.get(fid)
        if flow is None:
            return False
        self._touch(flow, self._t_udp, now)
        self.udp_send_to_guest(flow.remote_ip, flow.remote_port, flow.guest_ip, flow.guest_port,
                               data, now)
        return True

    def udp_host_datagram(self, fid: int, data, now: float) -> None:
        flow = self.flows.udp.by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, self._t_udp, now)
        self.udp_send_to_guest(flow.remote_ip, flow.remote_port, flow.guest_ip, flow.guest_port,
                               data, now)

    def udp_send_to_guest(self, src_ip: bytes, src_port: int, guest_ip: bytes, guest_port: int,
                          data, now: float) -> None:
        """Send a datagram to the guest, fragmenting it when it exceeds the MTU."""
        c = self.counters
        if len(data) > _UDP_MAX_PAYLOAD:
            # e.g. a jumbo answer from an IPv6 upstream: IPv4 cannot carry it.
            c["drop_udp_too_big_for_ipv4"] += 1
            return
        c["udp_rx_datagrams"] += 1
        mac = self.neigh.lookup(guest_ip)
        dmac = mac or _UNRESOLVED
        f = build_udp(dmac, self.mac, src_ip, guest_ip, src_port, guest_port, data,
                      ident=self._ident())
        mtu = self.config.mtu
        if len(f) - ETH_LEN <= mtu:
            self._to_guest(guest_ip, mac, f, now)
            return
        payload = memoryview(f)[ETH_LEN + IPV4_LEN:]
        step = (mtu - IPV4_LEN) & ~7
        ident = self._ident()
        for off in range(0, len(payload), step):
            chunk = payload[off:off + step]
            more = off + step < len(payload)
            c["udp_tx_fragments"] += 1
            self._to_guest(guest_ip, mac, build_ipv4_fragment(
                dmac, self.mac, src_ip, guest_ip, PROTO_UDP, ident, off, more, chunk), now)

    def udp_host_error(self, fid: int, quote_payload, now: float) -> None:
        """The host socket got ICMP port unreachable (ECONNREFUSED): tell the
        container with ICMP port unreachable quoting a datagram of the flow."""
        flow = self.flows.udp.by_id.get(fid)
        if flow is None:
            return
        # Rebuild the offending datagram's headers as the container sent them.
        orig = build_udp(BROADCAST, BROADCAST, flow.guest_ip, flow.remote_ip, flow.guest_port,
                         flow.remote_port, quote_payload[:512])
        self.counters["udp_port_unreachable_tx"] += 1
        self._icmp_error_to_guest(flow, flow.remote_ip, UNREACH_PORT, orig, now)

    # ------------------------------------------------- datagram flow timers
    def _touch(self, flow, kind: int, now: float) -> None:
        """Traffic on a datagram flow: push its idle deadline out."""
        flow.deadline = now + flow.idle
        self._arm(flow, kind)

    def _arm(self, flow, kind: int) -> None:
        """Make sure the heap holds an entry at or before the flow's deadline.

        A deadline that moved later keeps the entry it has: that entry fires
        early, finds nothing due, and re-arms. So a flow pushes only when its
        deadline moves earlier, not on every datagram or ACK (which would
        grow the heap by one entry per packet)."""
        d = flow.deadline() if kind == self._t_tcp else flow.deadline
        if d is not None and (flow.armed is None or d < flow.armed):
            flow.armed = d
            self.timers.push(d, kind, flow.id)

    @staticmethod
    def _flow_live(table):
        by_id = table.by_id

        def live(fid, d) -> bool:
            flow = by_id.get(fid)
            return flow is not None and flow.armed == d
        return live

    def _datagram_timer(self, table, kind):
        """The idle timer of one datagram table (``kind()``: its timer kind)."""
        def fire(fid, d, now) -> None:
            flow = table.by_id[fid]
            flow.armed = None
            if flow.deadline > now:
                self._arm(flow, kind())      # traffic since: not idle yet
                return
            table.remove(flow)
            self.counters[flow.EXPIRED] += 1
            self.events_out.append(flow.CLOSE(flow.id))
        return fire

    # ----------------------------------------------------------- DHCP, DNS
    def _dhcp_input(self, p, frame, now) -> None:
        """UDP to port 67 at the limited broadcast or gateway address."""
        reply = self.dhcp.handle_payload(p[P_PAYLOAD], now)
        if reply is None:
            return
        # RFC 2131 4.1: the client may not have its address yet, so the reply
        # goes straight to the MAC the server chose (chaddr or broadcast),
        # never through ARP.
        self.frames_out.append((VNET_HDR_NONE, build_udp(
            reply.dst_mac, self.mac, self.config.gateway_ip, reply.dst_ip, 67, 68, reply.payload,
            ident=self._ident())))

    def _dns_input(self, p, frame, now) -> None:
        c = self.counters
        query = bytes(p[P_PAYLOAD])
        local = self.local_names.answer(query)
        if local is not None:
            c["dns_local_answer"] += 1
            self._dns_send(p[P_SRC], p[P_SPORT], local, now)
            return
        if len(self.dns_pending) >= DNS_MAX_PENDING:
            c["dns_servfail_too_many_pending"] += 1
            self._dns_servfail(p[P_SRC], p[P_SPORT], query, now)
            return
        qid = self.flows.new_id()
        self.dns_pending[qid] = (p[P_SRC], p[P_SPORT], query)
        self.timers.push(now + DNS_QUERY_TIMEOUT, self._t_dns, qid)
        c["dns_query_forwarded"] += 1
        self.events_out.append(DnsQuery(qid, query))

    def _dns_send(self, guest_ip, guest_port, payload, now) -> None:
        self.udp_send_to_guest(self.config.dns_ip, 53, guest_ip, guest_port, payload, now)

    def _dns_servfail(self, guest_ip, guest_port, query, now) -> None:
        try:
            reply = build_servfail(query)
        except ParseError:
            self.counters["drop_dns_unparsable_query"] += 1
            return
        self.counters["dns_servfail_tx"] += 1
        self._dns_send(guest_ip, guest_port, reply, now)

    def dns_reply(self, qid: int, answer, now: float) -> None:
        """The upstream resolver answered query ``qid``."""
        q = self.dns_pending.pop(qid, None)
        if q is None:
            self.counters["dns_late_answer"] += 1
            return
        self.counters["dns_answer_rx"] += 1
        self._dns_send(q[0], q[1], answer, now)

    def dns_failed(self, qid: int, now: float, reason: str = "error") -> None:
        """No upstream could answer query ``qid``: SERVFAIL, not silence."""
        q = self.dns_pending.pop(qid, None)
        if q is None:
            return
        self.counters["dns_upstream_failed_" + reason] += 1
        self._dns_servfail(q[0], q[1], q[2], now)

    def dns_is_pending(self, qid: int) -> bool:
        """Still waiting for an answer (not yet answered, failed or timed out)."""
        return qid in self.dns_pending

    # --------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.timers.run(now)

    # ---------------------------------------------------------------- stats
    def gauges(self) -> dict:
        """What the stack holds right now (beside the counters)."""
        f = self.flows
        return {"tcp_flows": len(f.tcp), "tcp_connecting": f.tcp_connecting,
                "udp_flows": len(f.udp), "icmp_flows": len(f.icmp),
                "frag_in_progress": len(self.reasm.partials),
                "dns_pending": len(self.dns_pending)}
