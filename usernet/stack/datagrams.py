"""UDP and ICMP echo through NAT: the datagram flows, opened by traffic, closed by idleness.

Theory of operation
-------------------
:class:`DatagramNat` takes the container's datagrams for addresses that are
not the gateway's own services (the gateway's demultiplexer has already
answered DHCP, DNS and echo requests to itself). A UDP datagram finds its
flow by the container's 4-tuple, an echo request by (container,
identifier, destination); a new one asks the address policy where it goes
(refused: ICMP unreachable), opens a flow (``UdpOpen`` / ``IcmpOpen``) and
every datagram is handed over (``UdpSend`` / ``IcmpSend``). The host side's
answers come back through :meth:`host_datagram`, :meth:`host_error` (ICMP
port unreachable quoting the flow's datagram), :meth:`echo_reply` (with the
container's own identifier: Linux ping sockets rewrite it) and
:meth:`echo_unavailable`. Port forwards open UDP flows from the host side
(:meth:`inbound`, :meth:`forward`); the key is :meth:`Flows.inbound_key`'s.

Toward the container, a datagram larger than the MTU is fragmented (RFC
791; over IPv6 with fragment headers, RFC 8200 4.5, the source being us);
one that IP cannot carry at all is dropped and counted.

IPv6 flows take the same paths: the address length picks the neighbour
cache (ARP or NDP), the ICMP types (echo 128/129 instead of 8/0; errors
through the gateway's ``unreachable``, which speaks ICMPv6 for an IPv6
packet) and the fragmentation.

Timers: one kind per table in the gateway's
:class:`~usernet.stack.timers.Timers`: the idle expiry (``udp_idle_timeout``,
``udp_dns_idle_timeout`` for port 53, ``ICMP_IDLE_TIMEOUT``), pushed out by
traffic without a heap push per datagram; an expired flow is forgotten and
the host side told (``UdpClose`` / ``IcmpClose``).
"""

from ..wire.ether import BROADCAST, ETH_LEN
from ..wire.frame import (P_ACK, P_DPORT, P_DST, P_PAYLOAD, P_SEQ, P_SPORT, P_SRC,
                          build_icmp, build_ipv4_fragment, build_ipv6_fragment, build_udp)
from ..wire.icmp import (ICMP6_DEST_UNREACH, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST,
                         ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
                         UNREACH_ADMIN_PROHIBITED, UNREACH_HOST, UNREACH_PORT)
from ..wire.ipv6 import IPV6_LEN
from ..wire.ipv4 import IPV4_LEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP
from ..wire.vnet import VNET_HDR_NONE
from .arp import UNRESOLVED
from .config import ICMP_IDLE_TIMEOUT
from .events import IcmpOpen, IcmpSend, UdpOpen, UdpSend
from .flows import IcmpFlow, UdpFlow

_UDP_MAX_PAYLOAD = 65535 - IPV4_LEN - 8   # what one IPv4 datagram can carry
_UDP6_MAX_PAYLOAD = 65535 - 8             # IPv6's payload length excludes its header
# ICMPv6 destination unreachable codes (RFC 4443 3.1) for the ICMPv4 ones used here.
_UNREACH6 = {UNREACH_PORT: 4, UNREACH_ADMIN_PROHIBITED: 1, UNREACH_HOST: 3}
# RFC 1812 4.3.2.3: an ICMP error quotes as much of the datagram as fits in
# 576 bytes: 576 - 20 (IP) - 8 (ICMP) = 548.
ICMP_QUOTE_MAX = 548


class DatagramNat:
    def __init__(self, config, counters, flows, nat, neigh, timers, events_out: list,
                 mac: bytes, *, ident, unreachable, neigh6=None):
        """``ident()``: the next IPv4 identification; ``unreachable(p, frame,
        code, counter)``: the gateway's ICMP destination unreachable about a
        parsed frame."""
        self.config = config
        self.counters = counters
        self.flows = flows
        self.nat = nat
        self.neigh = neigh
        self.neigh6 = neigh6 if neigh6 is not None else neigh
        self.events_out = events_out
        self.mac = mac
        self._ident = ident
        self._unreachable = unreachable
        self.timers = timers
        self._t_udp = timers.kind(self._flow_live(flows.udp),
                                  self._datagram_timer(flows.udp, lambda: self._t_udp))
        self._t_icmp = timers.kind(self._flow_live(flows.icmp),
                                   self._datagram_timer(flows.icmp, lambda: self._t_icmp))

    def _to_guest(self, ip: bytes, mac: bytes | None, frame, now: float) -> None:
        """A plain frame built for ``mac`` (:meth:`_lookup`), or held."""
        (self.neigh6 if len(ip) == 16 else self.neigh).output(ip, mac, (VNET_HDR_NONE, frame),
                                                              now)

    def _lookup(self, ip: bytes) -> bytes | None:
        return (self.neigh6 if len(ip) == 16 else self.neigh).lookup(ip)

    # ----------------------------------------------------------------- ICMP
    def echo_input(self, p, frame, now) -> None:
        """An echo request for an address not ours: NAT it through an echo flow."""
        c = self.counters
        dst = p[P_DST]
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
                c["policy_refused_" + self.nat.refusal(dst)] += 1
                self._unreachable(p, frame, UNREACH_HOST, "icmp_echo_refused_policy")
                return
            flow = self.flows.open_datagram(IcmpFlow, table, key, ICMP_IDLE_TIMEOUT, now)
            if flow is None:
                return
            self.events_out.append(IcmpOpen(flow.id, host, flow.guest_port))
        self._touch(flow, self._t_icmp, now)
        c["icmp_echo_forward"] += 1
        data = bytes(p[P_PAYLOAD])
        flow.pkts_in += 1
        flow.bytes_in += len(data)
        self.events_out.append(IcmpSend(flow.id, p[P_ACK], data))

    def echo_reply(self, fid: int, seq: int, data, now: float) -> None:
        """An echo reply from the host side; it goes to the container with
        the container's own identifier (Linux ping sockets rewrite it)."""
        flow = self.flows.icmp.by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, self._t_icmp, now)
        self.counters["icmp_echo_reply_rx"] += 1
        flow.pkts_out += 1
        flow.bytes_out += len(data)
        mac = self._lookup(flow.guest_ip)
        v6 = len(flow.guest_ip) == 16
        self.to_guest_ip(build_icmp(
            mac or UNRESOLVED, self.mac, flow.remote_ip, flow.guest_ip,
            ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY, 0,
            flow.guest_port, seq, data, ident=self._ident()), flow.remote_ip, flow.guest_ip, mac,
            PROTO_ICMPV6 if v6 else PROTO_ICMP, now)

    def echo_unavailable(self, fid: int, seq: int, data, now: float) -> None:
        """Neither a ping socket nor a raw socket can be had: answer the echo
        with "communication administratively prohibited" rather than silence."""
        flow = self.flows.icmp.by_id.get(fid)
        if flow is None:
            return
        self.counters["icmp_echo_admin_prohibited_tx"] += 1
        v6 = len(flow.guest_ip) == 16
        orig = build_icmp(BROADCAST, BROADCAST, flow.guest_ip, flow.remote_ip,
                          ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST,
                          0, flow.guest_port, seq, bytes(data)[:64])
        cfg = self.config
        self._icmp_error_to_guest(flow, cfg.gateway6 if v6 else cfg.gateway_ip,
                                  UNREACH_ADMIN_PROHIBITED, orig, now)

    def _icmp_error_to_guest(self, flow, src_ip: bytes, code: int, orig, now: float) -> None:
        """Destination unreachable ``code`` toward a flow's guest, quoting
        ``orig`` (a frame rebuilt as the guest sent it); over IPv6 the
        ICMPv6 destination unreachable with the same meaning."""
        mac = self._lookup(flow.guest_ip)
        itype = ICMP_DEST_UNREACH
        if len(flow.guest_ip) == 16:
            itype, code = ICMP6_DEST_UNREACH, _UNREACH6[code]
        self._to_guest(flow.guest_ip, mac, build_icmp(
            mac or UNRESOLVED, self.mac, src_ip, flow.guest_ip, itype, code, 0, 0,
            bytes(orig[ETH_LEN:ETH_LEN + ICMP_QUOTE_MAX]), ident=self._ident()), now)

    # ------------------------------------------------------------------ UDP
    def udp_input(self, p, frame, now) -> None:
        """A datagram for an address not ours: NAT it through a UDP flow."""
        dst, dport = p[P_DST], p[P_DPORT]
        nat = self.nat
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
                    self.counters["policy_refused_" + nat.refusal(dst)] += 1
                    self._unreachable(p, frame, UNREACH_PORT, "udp_refused_policy")
                return
            cfg = self.config
            idle = cfg.udp_dns_idle_timeout if dport == 53 else cfg.udp_idle_timeout
            flow = self.flows.open_datagram(UdpFlow, table, key, idle, now)
            if flow is None:
                return
            self.events_out.append(UdpOpen(flow.id, host, dport))
        self._touch(flow, self._t_udp, now)
        self.counters["udp_tx_datagrams"] += 1
        data = bytes(p[P_PAYLOAD])
        flow.pkts_in += 1
        flow.bytes_in += len(data)
        self.events_out.append(UdpSend(flow.id, data))

    def inbound(self, src_ip: bytes | None, src_port: int | None, guest_ip: bytes,
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
        key = self.flows.inbound_key(table, guest_ip, guest_port, src_ip, src_port)
        if key is None:
            return None
        flow = self.flows.open_datagram(UdpFlow, table, key, self.config.udp_idle_timeout, now)
        if flow is None:
            return None
        self.counters["udp_inbound_flow_open"] += 1
        self.forward(flow.id, data, now)
        return flow.id, (key[2], key[3])

    def forward(self, fid: int, data, now: float) -> bool:
        """A datagram from a port forward's client on flow ``fid``; False if
        the flow expired (the caller opens a new one with :meth:`udp_inbound`)."""
        flow = self.flows.udp.by_id.get(fid)
        if flow is None:
            return False
        self._touch(flow, self._t_udp, now)
        flow.pkts_out += 1
        flow.bytes_out += len(data)
        self.send_to_guest(flow.remote_ip, flow.remote_port, flow.guest_ip, flow.guest_port,
                               data, now)
        return True

    def host_datagram(self, fid: int, data, now: float) -> None:
        flow = self.flows.udp.by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, self._t_udp, now)
        flow.pkts_out += 1
        flow.bytes_out += len(data)
        self.send_to_guest(flow.remote_ip, flow.remote_port, flow.guest_ip, flow.guest_port,
                               data, now)

    def send_to_guest(self, src_ip: bytes, src_port: int, guest_ip: bytes, guest_port: int,
                          data, now: float) -> None:
        """Send a datagram to the guest, fragmenting it when it exceeds the MTU."""
        c = self.counters
        v6 = len(guest_ip) == 16
        if len(data) > (_UDP6_MAX_PAYLOAD if v6 else _UDP_MAX_PAYLOAD):
            # e.g. a jumbo answer from an IPv6 upstream: IPv4 cannot carry it.
            c["drop_udp_too_big_for_ipv6" if v6 else "drop_udp_too_big_for_ipv4"] += 1
            return
        c["udp_rx_datagrams"] += 1
        mac = self._lookup(guest_ip)
        dmac = mac or UNRESOLVED
        f = build_udp(dmac, self.mac, src_ip, guest_ip, src_port, guest_port, data,
                      ident=self._ident())
        self.to_guest_ip(f, src_ip, guest_ip, mac, PROTO_UDP, now)

    def to_guest_ip(self, f, src_ip: bytes, guest_ip: bytes, mac, proto: int,
                    now: float) -> None:
        """A plain IP frame for the guest (built for ``mac``, the result of
        :meth:`_lookup`): whole when it fits the link MTU, else cut into
        fragments, as a router does for IPv4 (RFC 791) and as the source
        must for IPv6 (RFC 8200 4.5). Bigger-than-MTU datagrams are UDP
        answers and echo replies to reassembled requests (``ping -s 3000``)."""
        mtu = self.config.mtu
        if len(f) - ETH_LEN <= mtu:
            self._to_guest(guest_ip, mac, f, now)
            return
        counter = "udp_tx_fragments" if proto == PROTO_UDP else "icmp_tx_fragments"
        dmac = mac or UNRESOLVED
        ident = self._ident()
        if len(guest_ip) == 16:
            payload = memoryview(f)[ETH_LEN + IPV6_LEN:]
            step = (mtu - IPV6_LEN - 8) & ~7
            for off in range(0, len(payload), step):
                self.counters[counter] += 1
                self._to_guest(guest_ip, mac, build_ipv6_fragment(
                    dmac, self.mac, src_ip, guest_ip, proto, ident, off,
                    off + step < len(payload), payload[off:off + step]), now)
            return
        payload = memoryview(f)[ETH_LEN + IPV4_LEN:]
        step = (mtu - IPV4_LEN) & ~7
        for off in range(0, len(payload), step):
            self.counters[counter] += 1
            self._to_guest(guest_ip, mac, build_ipv4_fragment(
                dmac, self.mac, src_ip, guest_ip, proto, ident, off,
                off + step < len(payload), payload[off:off + step]), now)

    def host_error(self, fid: int, quote_payload, now: float) -> None:
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

    # ------------------------------------------------------------- timers
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
        d = flow.deadline
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
