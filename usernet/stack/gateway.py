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

This module is the demultiplexer: it parses a frame once, checks what
every frame must pass (Ethernet destination, IPv4 header checksum, TTL,
source, MTU, fragments, L4 checksum), answers what is its own (ARP, echo to
the gateway, DHCP, DNS, ICMP errors) and hands the rest to the one place
that owns it, by protocol:

* :mod:`usernet.stack.tcpnat` -- TCP flows (:class:`TcpNat`), each driving a
  :class:`usernet.stack.tcp.TcpConnection` that emits its own events;
* :mod:`usernet.stack.datagrams` -- UDP and ICMP echo flows (:class:`DatagramNat`);
* :mod:`usernet.stack.arp` -- the neighbour cache and the hold queue;
* :mod:`usernet.stack.nat` -- the address policy (what is ours, what is
  refused, where a flow goes on the host);
* :mod:`usernet.stack.flows` -- the flow tables, one id space;
* :mod:`usernet.stack.timers` -- the one heap and its kind-to-handler table;
* :mod:`usernet.stack.ipfrag`, :mod:`usernet.stack.dhcp`, :mod:`usernet.stack.dns`.

IPv6 (``NetConfig.enable_ipv6``; off, every IPv6 frame is counted
``drop_ipv6_disabled``) has its own input path, ``_ipv6_input``, bound at
construction so IPv4 frames never test for it: source checks, routing
checks for what is not ours (hop limit, MTU), extension headers
(:func:`usernet.wire.ipv6.ext_header_problem`), reassembly, and then the
same TCP/UDP/echo NAT as IPv4; neighbour discovery, router advertisements
and DHCPv6 are :class:`usernet.stack.ndp.Ipv6Router`'s, the neighbours
``neigh6`` (a second :class:`NeighbourCache`). ICMPv6 errors follow RFC
4443 (``_icmp6_error``); the NAT modules' "unreachable" calls are mapped to
ICMPv6 for an IPv6 packet. See docs/internals.md, "IPv6".

The host-side notifications of the contract are the gateway's attributes;
the TCP, UDP and ICMP ones are bound to the owning object's methods at
construction (``gw.tcp_host_data is gw.tcp.host_data``), so a call costs no
extra hop.

What it never does: I/O, clocks, sockets. It does not know whether a host
connect will work; it asks (``TcpConnect``) and answers the container only
when told (connect first, answer second).

Frames toward the container are built with the neighbour's MAC already known
(:meth:`NeighbourCache.lookup`); only a frame held for ARP gets its MAC
written later. TCP frames with offloads on carry their own virtio-net header
(``NEEDS_CSUM``, maybe TSO); every other frame the plain all-zero one.

Timers (one :class:`Timers` heap): TCP flows (retransmission, persist,
delayed ACK, TIME-WAIT, connect deadlines), UDP and ICMP idle expiry, DNS
queries, ARP and NS retries, reassembly expiry, router advertisements.

Limits (see ``usernet.stack.config``): flows per protocol, TCP connects in
flight, reassembly memory, frames held while ARP resolves, DNS queries
pending. Past a limit new work is refused with a counter; existing flows keep
working.
"""

import random
from itertools import count

from ..wire import ParseError
from ..wire.arp import ARP_REPLY, ARP_REQUEST, parse_arp
from ..wire.checksum import checksum
from ..wire.dns import build_servfail
from ..wire.ether import BROADCAST, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from ..wire.frame import (P_ACK, P_DPORT, P_DST, P_DST_MAC, P_END, P_ETHERTYPE, P_FRAG, P_L3,
                          P_L4, P_PAYLOAD, P_PROTO, P_SEQ, P_SPORT, P_SRC, P_SRC_MAC, P_TTL,
                          build_arp, build_icmp, build_udp, l4_checksum_ok,
                          parse_frame)
from ..wire.dhcpv6 import SERVER_PORT as DHCP6_SERVER_PORT
from ..wire.icmp import (ICMP6_DEST_UNREACH, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST,
                         ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED, ICMP_DEST_UNREACH,
                         ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ND_NEIGHBOR_ADVERT,
                         ND_NEIGHBOR_SOLICIT, ND_ROUTER_SOLICIT, UNREACH_ADMIN_PROHIBITED, UNREACH_FRAG_NEEDED,
                         UNREACH_HOST, UNREACH_PORT, UNREACH_PROTOCOL)
from ..wire.ipv4 import IPV4, IPV4_LEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from ..wire.ipv6 import DISCARD, IPV6, IPV6_LEN, NH_NONE, ext_header_problem, next_header_pointer
from ..wire.ndp import ND_HOP_LIMIT, build_ns
from ..wire.vnet import VNET_HDR_NONE
from .arp import NDP_NAMES, NeighbourCache
from .budget import MemoryBudget
from .config import DNS_EVICT_AGE, DNS_QUERY_TIMEOUT, FRAG_TIMEOUT, NetConfig
from .counters import Counters
from .datagrams import ICMP_QUOTE_MAX, DatagramNat
from .dhcp import DhcpConfig, DhcpServer
from .dns import FORWARD as DNS_FORWARD, LocalNames, screen_query
from .events import DnsQuery
from .flows import Flows
from .ipfrag import Reassembler
from .nat import AddressPolicy
from .tcpnat import TcpNat
from .ndp import LINK_LOCAL_GW, Ipv6Router, multicast_mac
from .timers import Timers

_ANY4 = b"\0\0\0\0"
_from_bytes = int.from_bytes
_ANY6 = bytes(16)
ALL_DHCP_SERVERS = bytes.fromhex("ff020000000000000000000000010002")  # RFC 8415 7.1
# ICMPv6 (RFC 4443): an error quotes as much of the offending packet as fits
# in the minimum MTU, 1280 - 40 (IPv6) - 8 (ICMPv6) bytes.
ICMP6_QUOTE_MAX = 1232
ICMP6_PARAM_PROBLEM = 4
PARAM_UNRECOGNIZED_NEXT_HEADER = 1
# The ICMPv4 unreachable codes the NAT modules speak, in ICMPv6 (RFC 4443
# 3.1): (type, code).
_UNREACH_V6 = {
    UNREACH_HOST: (ICMP6_DEST_UNREACH, 3),              # address unreachable
    UNREACH_PORT: (ICMP6_DEST_UNREACH, 4),              # port unreachable
    UNREACH_ADMIN_PROHIBITED: (ICMP6_DEST_UNREACH, 1),  # administratively prohibited
    UNREACH_FRAG_NEEDED: (ICMP6_PACKET_TOO_BIG, 0),
}


class Gateway:
    def __init__(self, config: NetConfig | None = None, *, seed=None, counters=None,
                 offload: bool = False, budget: MemoryBudget | None = None):
        self.config = cfg = config or NetConfig()
        # TAP offloads on (the driver's fd has TUN_F_CSUM|TSO4|TSO6): TCP
        # frames toward the container leave their checksum to the kernel and
        # carry up to ~64 KiB behind their own virtio-net header. Off: every
        # frame is plain and fully checksummed.
        self.offload = offload
        self.counters = counters if counters is not None else Counters()
        # The two outputs. Both lists live as long as the gateway (parts of
        # the stack hold them): the driver empties them in place.
        self.frames_out: list[tuple] = []      # (vnet_hdr, frame)
        self.events_out: list = []             # usernet.stack.events records
        self.rng = random.Random(seed)
        self.mac = cfg.gateway_mac
        self.nat = AddressPolicy(cfg)
        self.timers = Timers()
        # The one memory accountant (stack/budget.py): every buffer below
        # charges it; past its limit new work is refused. The daemon passes
        # a PooledBudget, so many gateways also share one global limit.
        self.budget = budget = budget if budget is not None else MemoryBudget(cfg.memory_budget)
        self.neigh = NeighbourCache(self.counters, self.frames_out, self.timers,
                                    self._arp_solicit, VNET_HDR_NONE, budget=budget)
        if cfg.guest_mac is not None:
            self.neigh.table[cfg.guest_ip] = cfg.guest_mac
        # IPv6's neighbour cache: the same structure, Neighbor Solicitations
        # instead of ARP requests, its own counters.
        self.neigh6 = NeighbourCache(self.counters, self.frames_out, self.timers,
                                     self._nd_solicit, VNET_HDR_NONE, names=NDP_NAMES,
                                     budget=budget)
        self.flows = Flows(cfg, self.counters, self.nat, budget, self.events_out)
        self.reasm = Reassembler(self.counters, FRAG_TIMEOUT, cfg.frag_max_datagrams,
                                 cfg.frag_max_bytes, budget)
        self._frag_armed = None
        # The IPv4 identification of the next datagram we send: one more each
        # time, from a random start, modulo 2**16. A C iterator (no Python
        # frame per frame built): ``_ident()`` is ``next`` on it.
        self._ident = map((0xFFFF).__and__, count(self.rng.randrange(65536) + 1)).__next__
        t = self.timers
        self.tcp = TcpNat(cfg, self.counters, self.flows, self.nat, self.neigh, t,
                          self.frames_out, self.events_out, self.mac, self.rng,
                          ident=self._ident, unreachable=self._unreachable, offload=offload,
                          budget=budget)
        # The host side's TCP notifications are TcpNat's; the contract names them here.
        tcp = self.tcp
        self.tcp_connected, self.tcp_refused = tcp.connected, tcp.refused
        self.tcp_host_data, self.tcp_host_eof = tcp.host_data, tcp.host_eof
        self.tcp_host_reset, self.tcp_host_backlog = tcp.host_reset, tcp.host_backlog
        self.tcp_open_inbound, self.tcp_active = tcp.open_inbound, tcp.active
        self.tcp_reset_all = tcp.reset_all
        self.tcp_segment_size, self.tcp_read_size = tcp.segment_size, tcp.read_size
        self.tcp_read_advice = tcp.read_advice
        self.tcp.neigh6 = self.neigh6
        self._tcp_input = tcp.input
        # The IPv4 neighbour table (receive_frame's source check; the cache
        # never replaces its dict).
        self._neigh4 = self.neigh.table
        self.datagrams = dg = DatagramNat(cfg, self.counters, self.flows, self.nat, self.neigh,
                                          t, self.events_out, self.mac, ident=self._ident,
                                          unreachable=self._unreachable, neigh6=self.neigh6)
        # ... and the UDP and ICMP ones DatagramNat's.
        self.udp_inbound, self.udp_forward = dg.inbound, dg.forward
        self.udp_host_datagram, self.udp_host_error = dg.host_datagram, dg.host_error
        self.udp_send_to_guest = dg.send_to_guest
        self.icmp_host_reply, self.icmp_host_unavailable = dg.echo_reply, dg.echo_unavailable
        self._t_dns = t.kind(lambda qid, d: qid in self.dns_pending,
                             lambda qid, d, now: self.dns_failed(qid, now, "timeout"))
        self._t_frag = t.kind(lambda _k, d: d == self._frag_armed, self._frag_timer)
        # Services answered by the stack itself, keyed by (address, UDP
        # port): callable(parsed, frame, now).
        self.udp_local_handlers: dict[tuple, object] = {}
        if cfg.enable_dhcp:
            self.dhcp = DhcpServer(DhcpConfig.from_net(cfg), self.counters)
            self.udp_local_handlers[(b"\xff\xff\xff\xff", 67)] = self._dhcp_input
            self.udp_local_handlers[(cfg.gateway_ip, 67)] = self._dhcp_input
        if cfg.enable_dns:
            self.local_names = LocalNames(cfg.gateway_ip if cfg.host_loopback else None)
            self.udp_local_handlers[(cfg.dns_ip, 53)] = self._dns_input
        # DNS queries waiting for upstream: id -> (guest_ip, guest_port,
        # query, asked at), oldest first (dicts keep insertion order).
        self.dns_pending: dict[int, tuple] = {}
        self.router6 = None
        if cfg.enable_ipv6:
            self._init_ipv6(cfg)
        else:
            self._ipv6_input = self._ipv6_disabled

    def _init_ipv6(self, cfg) -> None:
        """IPv6 on: the router's link services, the RA timer, the local UDP
        services, the addresses we answer for."""
        dns6 = cfg.dns6 if cfg.enable_dns else None
        self.router6 = Ipv6Router(cfg.prefix6, self.mac, gateway=cfg.gateway6, dns=dns6,
                                  mtu=cfg.mtu, counters=self.counters)
        # Addresses answered here (echo): the gateway, the DNS forwarder, fe80::2.
        self._local6 = self.router6.addresses
        self._t_ra = self.timers.kind(lambda _k, d: d == self._ra_armed, self._ra_timer)
        self._ra_armed = self.router6.get_timer()
        self.timers.push(self._ra_armed, self._t_ra, 0)
        h = self.udp_local_handlers
        for addr in (cfg.gateway6, LINK_LOCAL_GW, ALL_DHCP_SERVERS):
            h[(addr, DHCP6_SERVER_PORT)] = self._dhcp6_input
        if cfg.enable_dns:
            h[(cfg.dns6, 53)] = self._dns_input

    # ---------------------------------------------------------------- input
    def receive_frame(self, frame, now: float, csum_ok: bool = False) -> None:
        """One frame from the TAP. ``csum_ok``: the virtio-net header said the
        L4 checksum need not be verified (NEEDS_CSUM or DATA_VALID).

        IPv4 is checked here, inline (every frame of a TCP flow comes this
        way: a method call less per frame), in the order of the checks every
        datagram must pass: header checksum, TTL, source, MTU, fragments,
        protocol, L4 checksum."""
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
        if etype != ETH_P_IP:
            if etype == ETH_P_ARP:
                self._arp_input(p, now)
            elif etype == ETH_P_IPV6:
                self._ipv6_input(p, frame, now, csum_ok)
            else:
                c["drop_eth_unknown_ethertype"] += 1
            return
        # IPv4. The header checksum: ipv4_header_ok(frame, l3, l4) written
        # out (the header read as one integer is a non-zero multiple of
        # 0xFFFF exactly when its ones'-complement sum is 0xFFFF).
        x = _from_bytes(frame[p[P_L3]:p[P_L4]], "big")
        if not x or x % 0xFFFF:
            c["drop_ipv4_bad_checksum"] += 1
            return
        if p[P_TTL] == 0:
            c["drop_ipv4_ttl_zero"] += 1
            return
        if self._neigh4.get(p[P_SRC]) != p[P_SRC_MAC] and not self._ipv4_source(p):
            return
        if not csum_ok and p[P_END] - p[P_L3] > self.config.mtu and frame[p[P_L3] + 6] & 0x40:
            # Bigger than the link MTU (someone raised the TAP's MTU inside the
            # container) with DF set: RFC 1191 says answer "fragmentation
            # needed" with the MTU we forward, so the sender's PMTU discovery
            # shrinks. (Offloaded GSO super-frames, which carry csum_ok, are
            # bigger by design and exempt.)
            self._unreachable(p, frame, UNREACH_FRAG_NEEDED, "icmp_frag_needed_tx",
                              next_hop_mtu=self.config.mtu)
            return
        if p[P_FRAG] is not None:
            self._ipv4_fragment(p, frame, now)
            return
        proto = p[P_PROTO]
        if proto == PROTO_TCP:
            if csum_ok or l4_checksum_ok(p, frame):
                self._tcp_input(p, frame, now)
            else:
                c["drop_l4_bad_checksum"] += 1
        elif proto != PROTO_UDP and proto != PROTO_ICMP:
            # RFC 1122 3.2.2.1: answer an unsupported protocol with ICMP
            # protocol unreachable.
            self._unreachable(p, frame, UNREACH_PROTOCOL, "ipv4_protocol_unreachable_tx")
        elif not csum_ok and not l4_checksum_ok(p, frame):
            c["drop_l4_bad_checksum"] += 1
        elif proto == PROTO_UDP:
            self._udp_input(p, frame, now)
        else:
            self._icmp_input(p, frame, now)

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

    # ----------------------------------------------------------------- IPv4
    def _ipv4_source(self, p) -> bool:
        """An IPv4 source whose MAC is not the one the neighbour cache holds
        for it (receive_frame): a new one is checked and learnt, a known one
        that moved is followed. False: drop the datagram."""
        src = p[P_SRC]
        known = self.neigh.table.get(src)
        if known is None:
            if self.nat.bad_guest_source(src, p[P_PROTO] == PROTO_UDP and p[P_DPORT] == 67):
                self.counters["drop_ipv4_bad_source"] += 1
                return False
            if src != _ANY4:
                # Learn the guest's MAC from its IP traffic too (no ARP needed
                # for replies: the container always ARPs us first anyway).
                self.neigh.learn(src, p[P_SRC_MAC])
        else:
            # Its IP traffic says where it is now (a forged ARP cannot move
            # an entry; a real MAC change is followed at once).
            self.neigh.learn(src, p[P_SRC_MAC], True)
        return True

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
        up to ICMP_QUOTE_MAX bytes so the whole reply stays under 576).
        About an IPv6 packet, the ICMPv6 error that says the same."""
        if p[P_ETHERTYPE] == ETH_P_IPV6:
            itype, code6 = _UNREACH_V6[code]
            self._icmp6_error(p, frame, itype, code6, next_hop_mtu, counter)
            return
        if self.nat.no_icmp_error(p[P_DST], p[P_DST_MAC], p[P_SRC]):
            self.counters["icmp_error_suppressed_broadcast"] += 1
            return
        self.counters[counter] += 1
        quote = bytes(frame[p[P_L3]:p[P_L3] + ICMP_QUOTE_MAX])
        self.frames_out.append((VNET_HDR_NONE, build_icmp(
            p[P_SRC_MAC], self.mac, self.config.gateway_ip, p[P_SRC], ICMP_DEST_UNREACH, code, 0,
            next_hop_mtu, quote, ident=self._ident())))

    def _icmp_input(self, p, frame, now) -> None:
        if p[P_SPORT] != ICMP_ECHO_REQUEST:     # P_SPORT holds the ICMP type
            self.counters["drop_icmp_unhandled_type"] += 1
            return
        dst = p[P_DST]
        if not self.nat.is_ours(dst):
            self.datagrams.echo_input(p, frame, now)
            return
        self.counters["icmp_echo_local_reply"] += 1
        # A reassembled request gets a reply bigger than the MTU: fragmented.
        self.datagrams.to_guest_ip(build_icmp(
            p[P_SRC_MAC], self.mac, dst, p[P_SRC], ICMP_ECHO_REPLY, 0, p[P_SEQ], p[P_ACK],
            p[P_PAYLOAD], ident=self._ident()), dst, p[P_SRC], p[P_SRC_MAC], PROTO_ICMP, now)

    def _udp_input(self, p, frame, now) -> None:
        handler = self.udp_local_handlers.get((p[P_DST], p[P_DPORT]))
        if handler is not None:
            handler(p, frame, now)
        elif p[P_DST] == self.config.dns_ip:
            self.counters["policy_refused_dns_port"] += 1
            self._unreachable(p, frame, UNREACH_PORT, "udp_port_unreachable_local")
        else:
            self.datagrams.udp_input(p, frame, now)

    # ----------------------------------------------------------------- IPv6
    def _ipv6_disabled(self, p, frame, now, csum_ok) -> None:
        self.counters["drop_ipv6_disabled"] += 1

    def _ipv6_input(self, p, frame, now, csum_ok, reassembled=False) -> None:
        """One IPv6 packet (``--enable-ipv6``); extension headers already
        walked by the parser (P_PROTO is the upper layer, P_L4 its offset).
        ``reassembled``: rebuilt from fragments, so bigger than the MTU by
        right (the container fragmented it to fit)."""
        c = self.counters
        src = p[P_SRC]
        known = self.neigh6.table.get(src)
        if known is not None:
            if known != p[P_SRC_MAC] and not (
                    p[P_PROTO] == PROTO_ICMPV6
                    and ND_ROUTER_SOLICIT <= p[P_SPORT] <= ND_NEIGHBOR_ADVERT):
                # As for IPv4; but neighbour discovery itself is what a
                # forged advertisement would use, so it never moves an entry.
                self.neigh6.learn(src, p[P_SRC_MAC], True)
        else:
            if src == _ANY6:
                # The unspecified source is only for a node that has no
                # address yet: duplicate-address probes and router
                # solicitations (RFC 4861 4.1/4.3, RFC 4862 5.4.2).
                if p[P_PROTO] != PROTO_ICMPV6 or not ND_ROUTER_SOLICIT <= p[P_SPORT] \
                        <= ND_NEIGHBOR_ADVERT:
                    c["drop_ipv6_bad_source"] += 1
                    return
            elif self.nat.bad_guest_source6(src):
                c["drop_ipv6_bad_source"] += 1
                return
            else:
                # Learn the guest's MAC from its traffic, as for IPv4.
                self.neigh6.learn(src, p[P_SRC_MAC])
        dst = p[P_DST]
        local = dst in self._local6 or dst[0] == 0xFF
        if not local:
            # Everything else is routed through us (NAT): RFC 8200 3 / RFC
            # 4443 3.3, a router that would decrement the hop limit to zero
            # discards the packet and says so.
            if p[P_TTL] <= 1:
                self._icmp6_error(p, frame, ICMP6_TIME_EXCEEDED, 0, 0, "icmp6_time_exceeded_tx")
                return
            if p[P_END] - p[P_L3] > self.config.mtu and not csum_ok and not reassembled:
                # Bigger than the link MTU (the container raised its own):
                # RFC 8201, packet too big with the MTU we forward.
                self._icmp6_error(p, frame, ICMP6_PACKET_TOO_BIG, 0, self.config.mtu,
                                  "icmp6_packet_too_big_tx")
                return
        l3 = p[P_L3]
        if p[P_L4] - l3 != IPV6_LEN:
            # Extension headers: what RFC 8200 asks of their receiver
            # (options we do not know, routing we do not do, misplaced
            # hop-by-hop), checked only on packets that carry them.
            problem = ext_header_problem(frame, l3, p[P_L4])
            if problem is not None:
                if problem is DISCARD:
                    c["drop_ipv6_ext_header"] += 1
                else:
                    self._icmp6_error(p, frame, ICMP6_PARAM_PROBLEM, problem[0], problem[1],
                                      "icmp6_param_problem_tx")
                return
        if p[P_FRAG] is not None:
            self._ipv6_fragment(p, frame, now)
            return
        proto = p[P_PROTO]
        if proto != PROTO_TCP and proto != PROTO_UDP and proto != PROTO_ICMPV6:
            if proto == NH_NONE:
                c["drop_ipv6_no_next_header"] += 1
                return
            # RFC 8200 4 / RFC 4443 3.4: parameter problem, code 1, pointing
            # at the Next Header field that named what we cannot process.
            self._icmp6_error(p, frame, ICMP6_PARAM_PROBLEM, PARAM_UNRECOGNIZED_NEXT_HEADER,
                              next_header_pointer(frame, p[P_L3]), "icmp6_param_problem_tx")
            return
        if not csum_ok and not l4_checksum_ok(p, frame):
            c["drop_l4_bad_checksum"] += 1
            return
        if proto == PROTO_TCP:
            if local and dst[0] == 0xFF:
                c["drop_ipv6_bad_destination"] += 1    # TCP to a multicast group
                return
            self.tcp.input(p, frame, now)
        elif proto == PROTO_UDP:
            handler = self.udp_local_handlers.get((dst, p[P_DPORT]))
            if handler is not None:
                handler(p, frame, now)
            elif dst == self.config.dns6 or dst == LINK_LOCAL_GW:
                # Ours, no service there (the gateway's ports are the host's:
                # NAT below, like 10.0.2.2).
                self._unreachable(p, frame, UNREACH_PORT, "udp6_port_unreachable_local")
            elif dst[0] == 0xFF:
                c["drop_udp_broadcast"] += 1
            else:
                self.datagrams.udp_input(p, frame, now)
        else:
            self._icmp6_input(p, frame, now, local)

    def _icmp6_input(self, p, frame, now, local) -> None:
        c = self.counters
        itype = p[P_SPORT]                      # P_SPORT holds the ICMP type
        if ND_ROUTER_SOLICIT <= itype <= ND_NEIGHBOR_ADVERT:
            l4 = p[P_L4]
            reply, learned = self.router6.receive_nd(itype, p[P_DPORT], frame[l4 + 4:p[P_END]],
                                                     p[P_SRC], p[P_SRC_MAC], p[P_TTL])
            if learned is not None and not self.nat.bad_guest_source6(learned[0]):
                self.neigh6.learn(learned[0], learned[1])
            if reply is not None:
                self._send_icmp6(reply)
            return
        if itype == ICMP6_ECHO_REQUEST:
            dst = p[P_DST]
            if not local:
                self.datagrams.echo_input(p, frame, now)
                return
            if dst[0] == 0xFF:
                c["drop_ipv6_bad_destination"] += 1    # ping to all-nodes: not a service
                return
            c["icmp6_echo_local_reply"] += 1
            self.datagrams.to_guest_ip(build_icmp(
                p[P_SRC_MAC], self.mac, dst, p[P_SRC], ICMP6_ECHO_REPLY, 0, p[P_SEQ], p[P_ACK],
                p[P_PAYLOAD]), dst, p[P_SRC], p[P_SRC_MAC], PROTO_ICMPV6, now)
            return
        if itype < 128:
            c["drop_icmp6_error_rx"] += 1   # an error from the container: no flow needs it
        else:
            c["drop_icmp6_unhandled_type"] += 1

    def _send_icmp6(self, msg) -> None:
        """Frame one of the router's ICMPv6 messages (ND: hop limit 255)."""
        itype, rest_hi, rest_lo, data, src, dst, dst_mac = msg
        self.frames_out.append((VNET_HDR_NONE, build_icmp(
            dst_mac, self.mac, src, dst, itype, 0, rest_hi, rest_lo, data, ttl=ND_HOP_LIMIT)))

    def _ra_timer(self, _key, d, now) -> None:
        for msg in self.router6.handle_timer(now):
            self._send_icmp6(msg)
        self._ra_armed = self.router6.get_timer()
        self.timers.push(self._ra_armed, self._t_ra, 0)

    def _nd_solicit(self, ip: bytes) -> bytearray:
        """A Neighbor Solicitation for ``ip`` to its solicited-node group
        (RFC 4861 7.2.2), from our link-local address."""
        group = bytes.fromhex("ff0200000000000000000001ff") + ip[13:]
        rest_hi, rest_lo, data = build_ns(ip, self.mac)
        return build_icmp(multicast_mac(group), self.mac, LINK_LOCAL_GW, group,
                          ND_NEIGHBOR_SOLICIT, 0, rest_hi, rest_lo, data, ttl=ND_HOP_LIMIT)

    def _icmp6_error(self, p, frame, itype, code, rest, counter) -> None:
        """An ICMPv6 error about a parsed packet, quoting as much of it as
        fits in 1280 bytes (RFC 4443 2.4(c)). Never about a packet to a
        multicast address (link or IP), from the unspecified or a multicast
        address, or about an ICMPv6 error (RFC 4443 2.4(e))."""
        src, dst = p[P_SRC], p[P_DST]
        if (dst[0] == 0xFF or p[P_DST_MAC][0] & 1 or src == _ANY6 or src[0] == 0xFF
                or (p[P_PROTO] == PROTO_ICMPV6 and p[P_FRAG] is None and p[P_SPORT] < 128)):
            self.counters["icmp6_error_suppressed"] += 1
            return
        self.counters[counter] += 1
        # From the gateway, or from fe80::2 to a link-local source (whose
        # scope the global gateway address would not match).
        me = LINK_LOCAL_GW if src[0] == 0xFE else self.config.gateway6
        quote = bytes(frame[p[P_L3]:p[P_L3] + ICMP6_QUOTE_MAX])
        self.frames_out.append((VNET_HDR_NONE, build_icmp(
            p[P_SRC_MAC], self.mac, me, src, itype, code, rest >> 16, rest & 0xFFFF, quote)))

    def _ipv6_fragment(self, p, frame, now) -> None:
        """RFC 8200 4.5: reassemble in the same bounded reassembler as IPv4
        (keys with 16-byte addresses never meet IPv4 ones), then feed the
        whole packet back through the parser."""
        ident, offset, more = p[P_FRAG]
        src, dst, proto = p[P_SRC], p[P_DST], p[P_PROTO]
        self.counters["frag6_received"] += 1
        whole = self.reasm.add((src, dst, proto, ident), offset, bool(more), p[P_PAYLOAD], now)
        self._arm_reasm()
        if whole is None:
            return
        if len(whole) > 65535:
            self.counters["drop_frag_too_big"] += 1
            return
        # The unfragmentable part's extension headers (hop-by-hop, routing)
        # have been walked; the rebuilt packet carries the fragmentable part
        # right after its IPv6 header.
        l3 = p[P_L3]
        buf = bytearray(l3 + IPV6_LEN + len(whole))
        buf[0:l3] = frame[0:l3]
        IPV6.pack_into(buf, l3, 0x60000000, len(whole), proto, p[P_TTL], src, dst)
        buf[l3 + IPV6_LEN:] = whole
        try:
            p = parse_frame(buf)
        except ParseError as e:
            self.counters["drop_" + e.reason] += 1
            return
        self._ipv6_input(p, buf, now, False, True)

    def _dhcp6_input(self, p, frame, now) -> None:
        """UDP to port 547: DHCPv6 information-request (RFC 8415 18.3.6)."""
        reply = self.router6.receive_dhcpv6(p[P_PAYLOAD])
        if reply is None:
            return
        # Answered from our link-local address straight to the client's MAC
        # (the client speaks from its link-local address, RFC 8415 13.1).
        self.frames_out.append((VNET_HDR_NONE, build_udp(
            p[P_SRC_MAC], self.mac, LINK_LOCAL_GW, p[P_SRC], DHCP6_SERVER_PORT, p[P_SPORT],
            reply)))

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
        action, reply, why = screen_query(query)
        c[why] += 1
        if action != DNS_FORWARD:
            if reply is not None:
                self._dns_send(p[P_SRC], p[P_SPORT], reply, now)
            return
        local = self.local_names.answer(query)
        if local is not None:
            c["dns_local_answer"] += 1
            self._dns_send(p[P_SRC], p[P_SPORT], local, now)
            return
        pending = self.dns_pending
        if self.budget.over():
            c["dns_servfail_budget"] += 1
            self._dns_servfail(p[P_SRC], p[P_SPORT], query, now)
            return
        if len(pending) >= self.config.dns_max_pending:
            # Full: the oldest query, if it has waited DNS_EVICT_AGE, gets
            # its SERVFAIL now and the new one takes its place (a burst of
            # unanswerable names must not lock out every later one).
            oldest = next(iter(pending))
            if now - pending[oldest][3] < DNS_EVICT_AGE:
                c["dns_servfail_too_many_pending"] += 1
                self._dns_servfail(p[P_SRC], p[P_SPORT], query, now)
                return
            c["dns_pending_evicted"] += 1
            self.dns_failed(oldest, now, "evicted")
        qid = self.flows.new_id()
        pending[qid] = (p[P_SRC], p[P_SPORT], query, now)
        self.budget.used += len(query)
        self.timers.push(now + DNS_QUERY_TIMEOUT, self._t_dns, qid)
        c["dns_query_forwarded"] += 1
        self.events_out.append(DnsQuery(qid, query))

    def _dns_send(self, guest_ip, guest_port, payload, now) -> None:
        cfg = self.config
        me = cfg.dns6 if len(guest_ip) == 16 else cfg.dns_ip
        self.datagrams.send_to_guest(me, 53, guest_ip, guest_port, payload, now)

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
        self.budget.used -= len(q[2])
        self.counters["dns_answer_rx"] += 1
        self._dns_send(q[0], q[1], answer, now)

    def dns_failed(self, qid: int, now: float, reason: str = "error") -> None:
        """No upstream could answer query ``qid``: SERVFAIL, not silence."""
        q = self.dns_pending.pop(qid, None)
        if q is None:
            return
        self.budget.used -= len(q[2])
        self.counters["dns_upstream_failed_" + reason] += 1
        self._dns_servfail(q[0], q[1], q[2], now)

    def dns_is_pending(self, qid: int) -> bool:
        """Still waiting for an answer (not yet answered, failed or timed out)."""
        return qid in self.dns_pending

    def guest_ip6(self) -> bytes | None:
        """The container's IPv6 address in the /64, for port forwards: the
        SLAAC (modified EUI-64, RFC 4291 appendix A) address of its MAC when
        the MAC is known (``--macaddress``, or learned from any of its
        frames), else the first address of the /64 it was seen using; None
        before it has said anything."""
        cfg = self.config
        mac = cfg.guest_mac or self.neigh.table.get(cfg.guest_ip)
        prefix = cfg.prefix6[:8]
        if mac is None:
            for ip, m in self.neigh6.table.items():
                if ip[0] == 0xFE:               # its link-local address: same MAC
                    mac = m
                    break
        if mac is not None:
            return prefix + bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
        for ip in self.neigh6.table:
            if ip[:8] == prefix:
                return ip
        return None

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
                "neighbours6": len(self.neigh6.table),
                "dns_pending": len(self.dns_pending),
                "memory_budget": self.budget.limit, "memory_used": self.budget.used,
                "memory_peak": max(self.budget.peak, self.budget.used)}
