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
* after each call the driver drains ``frames_out`` (frames for the TAP) and
  ``events_out`` (tuples for the host side, see ``EV_*`` below), then re-arms
  its one timer from ``get_timer()`` and calls ``handle_timer(now)`` when due.

What it owns: the ARP table, IPv4 reassembly, the TCP flow table (one
:class:`usernet.stack.tcp.TcpConnection` per flow, keyed by the 4-tuple), the
UDP and ICMP echo flow tables, and the named counters (``self.counters``).
What it never does: I/O, clocks, sockets. It does not know whether a host
connect will work; it asks (``EV_TCP_CONNECT``) and answers the container
only when told (connect first, answer second).

Policy (NAT)
------------
* network+2 (the gateway) maps to host 127.0.0.1 unless host loopback is
  disabled, in which case it and 127.0.0.0/8 are refused (RST / port
  unreachable).
* network+3 port 53 is the DNS forwarder (UDP and TCP); other ports there are
  refused.
* Other addresses inside the virtual network: nobody owns them; ICMP host
  unreachable.
* Everything else goes out through host sockets to the same address.

Timers
------
One heap of (deadline, kind, key) entries, lazily invalidated: each flow
remembers the deadline it armed; a popped entry that no longer matches is
stale. Kinds: tcp/udp/icmp flows (key: flow id), dns queries (query id),
arp retries (guest address), frag (reassembly expiry). Plus the reassembly deadline and the pending-connect deadlines, which
are just TCP flows' deadlines while they wait for the host.

Limits (see ``usernet.stack.config``): flows per protocol, TCP connects in
flight, reassembly memory, frames held while ARP resolves. Past a limit new
work is refused with a counter; existing flows keep working.
"""

import heapq
import ipaddress
import random
from collections import Counter

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
from ..wire.tcp import ACK, NO_OPTIONS, RST, SYN, TCP_LEN, build_tcp_options
from ..wire.vnet import tcp_offload_hdr
from .config import (FRAG_MAX_BYTES, FRAG_MAX_DATAGRAMS, FRAG_TIMEOUT, ICMP_IDLE_TIMEOUT,
                     NetConfig)
from .dhcp import DhcpServer
from .dns import LocalNames
from .ipfrag import Reassembler
from .tcp import Segment, TcpConnection

# Events for the host side: (kind, flow_id, ...). The host driver dispatches
# on the kind; the stack never sees a socket.
EV_TCP_CONNECT = "tcp_connect"      # (kind, id, host_addr, port)
EV_TCP_CANCEL = "tcp_cancel"        # (kind, id): give up a connect in progress
EV_TCP_DATA = "tcp_data"            # (kind, id, bytes)
EV_TCP_SHUTDOWN = "tcp_shutdown"    # (kind, id): container sent FIN -> shutdown(SHUT_WR)
EV_TCP_ABORT = "tcp_abort"          # (kind, id): container sent RST -> abortive close
EV_TCP_CLOSE = "tcp_close"          # (kind, id): flow gone; close the socket if still open
EV_TCP_PAUSE = "tcp_pause"          # (kind, id): stop reading the host socket
EV_TCP_RESUME = "tcp_resume"        # (kind, id)
EV_TCP_INBOUND_CONNECTED = "tcp_inbound_connected"  # (kind, id): port forward reached the guest
EV_TCP_INBOUND_REFUSED = "tcp_inbound_refused"      # (kind, id): guest RST / no answer
EV_UDP_OPEN = "udp_open"            # (kind, id, host_addr, port)
EV_UDP_SEND = "udp_send"            # (kind, id, bytes)
EV_UDP_CLOSE = "udp_close"          # (kind, id)
EV_ICMP_OPEN = "icmp_open"          # (kind, id, host_addr): an echo flow (guest, ident, dst)
EV_ICMP_SEND = "icmp_send"          # (kind, id, seq, data): one echo request
EV_ICMP_CLOSE = "icmp_close"        # (kind, id)
EV_DNS_QUERY = "dns_query"          # (kind, query_id, bytes): forward upstream, answer dns_reply

_ARP_HOLD_MAX = 64          # frames held for the guest while its MAC is unknown
ARP_RETRY = 1.0             # seconds between ARP requests for a held address
ARP_TRIES = 3               # requests before the held frames are dropped
_UDP_MAX_PAYLOAD = 65535 - 20 - 8   # what one IPv4 datagram can carry
_ARP_TABLE_MAX = 256        # addresses learned; a spoofing container cannot grow it further
DNS_QUERY_TIMEOUT = 5.0     # upstream silence this long -> SERVFAIL to the container
DNS_MAX_PENDING = 256       # queries waiting for upstream; past it -> SERVFAIL at once
# With TAP offloads, the most payload one TCP frame toward the container
# carries: an IPv4 datagram's 65535 bytes less the IP and TCP headers and the
# most options a segment can carry. The connection rounds it down to a
# multiple of its wire segment size (snd_mss), so the kernel cuts no runts.
TSO_MAX_SEG = 65535 - IPV4_LEN - TCP_LEN - 40


def _ip_str(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


class TcpFlow:
    """One TCP flow's gateway-side bookkeeping; the protocol lives in ``conn``."""

    __slots__ = ("id", "key", "conn", "guest_ip", "guest_port", "remote_ip", "remote_port",
                 "connecting", "connect_deadline", "armed", "inbound")

    def __init__(self, fid, key, conn, guest_ip, guest_port, remote_ip, remote_port, inbound):
        self.id = fid
        self.key = key
        self.conn = conn
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.connecting = False
        self.connect_deadline = None
        self.armed = None
        self.inbound = inbound

    def deadline(self):
        t = self.conn.get_timer()
        d = self.connect_deadline
        if d is not None and (t is None or d < t):
            return d
        return t


class UdpFlow:
    """A datagram flow with an idle deadline: UDP (ports) or ICMP echo
    (``guest_port`` is the container's echo identifier)."""

    __slots__ = ("id", "key", "guest_ip", "guest_port", "remote_ip", "remote_port", "deadline",
                 "armed", "idle", "kind")

    def __init__(self, fid, key, guest_ip, guest_port, remote_ip, remote_port, idle):
        self.id = fid
        self.key = key
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.idle = idle
        self.deadline = None
        self.armed = None
        self.kind = "udp"


class Gateway:
    def __init__(self, config: NetConfig | None = None, *, seed=None, counters: Counter = None,
                 offload: bool = False):
        self.config = cfg = config or NetConfig()
        # TAP offloads on (the driver's fd has TUN_F_CSUM|TSO4|TSO6): TCP
        # frames toward the container leave their checksum to the kernel and
        # carry up to ~64 KiB, each as a (vnet header, frame) pair in
        # frames_out. Off: every frame is plain and fully checksummed.
        self.offload = offload
        self._tcp_max_seg = TSO_MAX_SEG if offload else None
        self.counters = counters if counters is not None else Counter()
        # Frames for the TAP: a bytearray (written behind an all-zero
        # virtio-net header), or, for offloaded TCP frames, a
        # (vnet_header_bytes, bytearray) tuple written as is.
        self.frames_out: list = []
        self.events_out: list = []
        self.rng = random.Random(seed)
        self.mac = cfg.gateway_mac
        self.arp_table: dict[bytes, bytes] = {}
        if cfg.guest_mac is not None:
            self.arp_table[cfg.guest_ip] = cfg.guest_mac
        # Frames for a guest address whose MAC is not known yet, waiting for
        # ARP: ip -> [frames, tries, deadline]; retried every ARP_RETRY seconds.
        self._arp_hold: dict[bytes, list] = {}
        self.now = 0.0   # the ``now`` of the call in progress (for ARP retries)
        self._network_addr = cfg.network.network_address.packed
        self._not_guest_sources = frozenset((cfg.gateway_ip, cfg.dns_ip, cfg.broadcast_ip,
                                             cfg.network.network_address.packed))
        self._frag_armed = None
        self.reasm = Reassembler(self.counters, FRAG_TIMEOUT, FRAG_MAX_DATAGRAMS, FRAG_MAX_BYTES)
        self._next_id = 1
        self.tcp_flows: dict[tuple, TcpFlow] = {}
        self.tcp_by_id: dict[int, TcpFlow] = {}
        self.tcp_connecting = 0
        self.udp_flows: dict[tuple, UdpFlow] = {}
        self.udp_by_id: dict[int, UdpFlow] = {}
        self.icmp_flows: dict[tuple, UdpFlow] = {}   # (guest, ident, dst): same shape as UDP
        self.icmp_by_id: dict[int, UdpFlow] = {}
        self._heap: list = []
        self._ip_ident = self.rng.randrange(65536)
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
        self.dns_pending: dict[int, list] = {}

    # ------------------------------------------------------------------ ids
    def _new_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    # ---------------------------------------------------------------- input
    def receive_frame(self, frame, now: float, csum_ok: bool = False) -> None:
        """One frame from the TAP. ``csum_ok``: the virtio-net header said the
        L4 checksum need not be verified (NEEDS_CSUM or DATA_VALID)."""
        self.now = now
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
            self._arp_input(p, frame)
        elif etype == ETH_P_IPV6:
            c["drop_ipv6_disabled"] += 1
        else:
            c["drop_eth_unknown_ethertype"] += 1

    # ------------------------------------------------------------------ ARP
    def _arp_input(self, p, frame) -> None:
        c = self.counters
        try:
            a = parse_arp(p[P_PAYLOAD])
        except ParseError as e:
            c["drop_" + e.reason] += 1
            return
        cfg = self.config
        # Learn the sender (RFC 826 "merge" step) when it is inside our
        # network; this also covers gratuitous ARP (spa == tpa).
        if cfg.in_network(a.spa) and a.spa not in self._not_guest_sources:
            known = self.arp_table.get(a.spa)
            if known != a.sha:
                if known is None and len(self.arp_table) >= _ARP_TABLE_MAX:
                    c["arp_table_full"] += 1
                else:
                    c["arp_learned"] += 1
                    self._learn(a.spa, a.sha)
        if a.oper == ARP_REQUEST:
            if a.spa == a.tpa:
                c["arp_gratuitous"] += 1
                return
            if a.tpa == cfg.gateway_ip or (a.tpa == cfg.dns_ip and cfg.enable_dns):
                c["arp_reply_tx"] += 1
                self.frames_out.append(build_arp(a.sha, self.mac, ARP_REPLY, self.mac, a.tpa,
                                                 a.sha, a.spa))
            else:
                c["arp_ignored_not_ours"] += 1
        elif a.oper == ARP_REPLY:
            c["arp_reply_rx"] += 1
        else:
            c["drop_arp_bad_oper"] += 1

    def _learn(self, ip: bytes, mac: bytes) -> None:
        """Record ip -> mac and release the frames waiting for it."""
        self.arp_table[ip] = mac
        hold = self._arp_hold.pop(ip, None)
        if hold:
            for f in hold[0]:
                (f[1] if type(f) is tuple else f)[0:6] = mac
                self.frames_out.append(f)

    def _to_guest(self, guest_ip: bytes, frame: bytearray, vnet_hdr: bytes | None = None) -> None:
        """Queue a frame for the TAP, resolving the guest's MAC by ARP first.
        ``vnet_hdr``: the virtio-net header an offloaded frame needs."""
        mac = self.arp_table.get(guest_ip)
        if mac is not None:
            frame[0:6] = mac
        if vnet_hdr is not None:
            frame = (vnet_hdr, frame)
        if mac is not None:
            self.frames_out.append(frame)
            return
        hold = self._arp_hold.get(guest_ip)
        if hold is None:
            hold = self._arp_hold[guest_ip] = [[], 0, None]  # frames, tries, retry deadline
            self._arp_request(guest_ip, hold)
        if len(hold[0]) >= _ARP_HOLD_MAX:
            self.counters["drop_arp_hold_full"] += 1
            return
        hold[0].append(frame)

    def _arp_request(self, ip: bytes, hold: list) -> None:
        hold[1] += 1
        self.counters["arp_request_tx"] += 1
        self.frames_out.append(build_arp(BROADCAST, self.mac, ARP_REQUEST, self.mac,
                                         self.config.gateway_ip, b"\0" * 6, ip))
        hold[2] = self.now + ARP_RETRY
        heapq.heappush(self._heap, (hold[2], "arp", ip))

    def _arp_timeout(self, ip: bytes) -> None:
        hold = self._arp_hold.get(ip)
        if hold is None:
            return
        if hold[1] < ARP_TRIES:
            self._arp_request(ip, hold)
            return
        del self._arp_hold[ip]
        self.counters["drop_arp_unresolved"] += len(hold[0])

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
        if not cfg.in_network(src):
            # 0.0.0.0 is a legal source only for a DHCP client asking for
            # an address (RFC 2131 4.1).
            if src != b"\0\0\0\0" or p[P_PROTO] != PROTO_UDP or p[P_DPORT] != 67:
                c["drop_ipv4_bad_source"] += 1
                return
        elif src in self._not_guest_sources:
            # Our own addresses, the network and broadcast addresses: a
            # spoofed or confused source whose replies would go nowhere.
            c["drop_ipv4_bad_source"] += 1
            return
        elif src not in self.arp_table:
            # Learn the guest's MAC from its IP traffic too (no ARP needed
            # for replies: the container always ARPs us first anyway).
            if len(self.arp_table) < _ARP_TABLE_MAX:
                self._learn(src, p[P_SRC_MAC])
            else:
                c["arp_table_full"] += 1
        if p[P_END] - p[P_L3] > cfg.mtu and frame[p[P_L3] + 6] & 0x40 and not csum_ok:
            # Bigger than the link MTU (someone raised the TAP's MTU inside the
            # container) with DF set: RFC 1191 says answer "fragmentation
            # needed" with the MTU we forward, so the sender's PMTU discovery
            # shrinks. (Offloaded GSO super-frames, which carry csum_ok, are
            # bigger by design and exempt.)
            self._unreachable(p, frame, UNREACH_FRAG_NEEDED, "icmp_frag_needed_tx",
                              next_hop_mtu=cfg.mtu)
            return
        frag = p[P_FRAG]
        if frag is not None:
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
            heapq.heappush(self._heap, (d, "frag", 0))

    # ----------------------------------------------------------------- ICMP
    def _icmp_input(self, p, frame, now) -> None:
        c = self.counters
        cfg = self.config
        itype = p[P_SPORT]
        dst = p[P_DST]
        if itype != ICMP_ECHO_REQUEST:
            c["drop_icmp_unhandled_type"] += 1
            return
        if dst == cfg.gateway_ip or (dst == cfg.dns_ip and cfg.enable_dns):
            c["icmp_echo_local_reply"] += 1
            reply = build_icmp(p[P_SRC_MAC], self.mac, dst, p[P_SRC], ICMP_ECHO_REPLY, 0,
                               p[P_SEQ], p[P_ACK], p[P_PAYLOAD], ident=self._ident())
            self.frames_out.append(reply)
            return
        if cfg.in_network(dst) or dst[0] >= 224:
            self._unreachable(p, frame, UNREACH_HOST, "icmp_dest_unreachable_local")
            return
        # An echo flow is (container, identifier, destination); replies come
        # back with the container's identifier whatever the host socket used.
        key = (p[P_SRC], p[P_SEQ], dst)
        flow = self.icmp_flows.get(key)
        if flow is None:
            host = self.host_target(dst)
            if host is None:
                self._unreachable(p, frame, UNREACH_HOST, "icmp_echo_refused_policy")
                return
            flow = self._new_datagram_flow("icmp", key, p[P_SEQ], 0, ICMP_IDLE_TIMEOUT)
            if flow is None:
                return
            self.events_out.append((EV_ICMP_OPEN, flow.id, host))
        self._touch(flow, now)
        c["icmp_echo_forward"] += 1
        self.events_out.append((EV_ICMP_SEND, flow.id, p[P_ACK], bytes(p[P_PAYLOAD])))

    def _unreachable(self, p, frame, code, counter, next_hop_mtu: int = 0) -> None:
        """ICMP destination unreachable quoting the offending datagram
        (RFC 792: IP header + first 8 bytes; RFC 1812 allows more, we quote
        up to 548 bytes so the whole reply stays under 576).

        RFC 1122 3.2.2: never about a datagram sent to a broadcast or
        multicast address (IP or link layer), nor from 0.0.0.0."""
        dst = p[P_DST]
        if (dst[0] >= 224 or dst == self.config.broadcast_ip or p[P_DST_MAC][0] & 1
                or dst == self._network_addr or p[P_SRC] == b"\0\0\0\0"):
            self.counters["icmp_error_suppressed_broadcast"] += 1
            return
        self.counters[counter] += 1
        quote = bytes(frame[p[P_L3]:p[P_L3] + 548])
        self.frames_out.append(build_icmp(p[P_SRC_MAC], self.mac, self.config.gateway_ip,
                                          p[P_SRC], ICMP_DEST_UNREACH, code, 0, next_hop_mtu,
                                          quote, ident=self._ident()))

    def _ident(self) -> int:
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        return self._ip_ident

    # ------------------------------------------------------------ NAT policy
    def host_target(self, dst: bytes) -> str | None:
        """Where a flow to ``dst`` goes on the host, or None if refused."""
        cfg = self.config
        if dst == cfg.gateway_ip:
            return "127.0.0.1" if cfg.host_loopback else None
        if dst[0] == 127:
            return None
        if cfg.in_network(dst) or dst[0] >= 224 or dst[0] == 0:
            return None
        return _ip_str(dst)

    # ------------------------------------------------------------------ TCP
    def _tcp_input(self, p, frame, now) -> None:
        key = (p[P_SRC], p[P_SPORT], p[P_DST], p[P_DPORT])
        flow = self.tcp_flows.get(key)
        seg = Segment(p[P_SEQ], p[P_ACK], p[P_FLAGS], p[P_WINDOW], p[P_OPTS], p[P_PAYLOAD])
        flags = seg.flags
        if flow is not None:
            flow.conn.on_segment(seg, now)
            self._tcp_flush(flow, now)
            if not (flags & SYN and not flags & ACK and flow.id not in self.tcp_by_id):
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
        dst = p[P_DST]
        if dst == cfg.dns_ip:
            host = "dns" if (cfg.enable_dns and p[P_DPORT] == 53) else None
        else:
            host = self.host_target(dst)
        if host is None:
            if cfg.in_network(dst) and dst != cfg.gateway_ip and dst != cfg.dns_ip:
                self._unreachable(p, frame, UNREACH_HOST,
                                  "icmp_dest_unreachable_local")
            else:
                c["tcp_syn_refused_policy"] += 1
                self._tcp_rst_for(p, seg)
            return
        if len(self.tcp_flows) >= cfg.max_tcp_flows:
            c["tcp_syn_flow_limit_rst"] += 1
            self._tcp_rst_for(p, seg)
            return
        if self.tcp_connecting >= cfg.max_tcp_connects:
            # Drop, don't refuse: the container's SYN retransmission retries
            # once a connect slot frees up.
            c["tcp_syn_connect_limit_drop"] += 1
            return
        fid = self._new_id()
        conn = TcpConnection(now, self.rng.getrandbits(32), cfg.mss, c,
                             max_seg=self._tcp_max_seg)
        flow = TcpFlow(fid, key, conn, p[P_SRC], p[P_SPORT], dst, p[P_DPORT], False)
        self.tcp_flows[key] = flow
        self.tcp_by_id[fid] = flow
        conn.on_syn(seg, now)
        flow.connecting = True
        flow.connect_deadline = now + cfg.tcp_connect_timeout
        self.tcp_connecting += 1
        c["tcp_syn_connect"] += 1
        self.events_out.append((EV_TCP_CONNECT, fid, host, p[P_DPORT]))
        self._tcp_flush(flow, now)

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
        self.frames_out.append(build_tcp(p[P_SRC_MAC], self.mac, p[P_DST], p[P_SRC], p[P_DPORT],
                                         p[P_SPORT], seq, ack, flags, 0, ident=self._ident()))

    def _tcp_flush(self, flow: TcpFlow, now: float) -> None:
        """Frame what the connection wants sent; turn its events into host events.

        With offloads every segment leaves its checksum to the kernel
        (``csum=False``: the pseudo-header sum in the field, ``NEEDS_CSUM``)
        and one carrying more than ``snd_mss`` bytes goes as a TSO
        super-segment (``gso_size = snd_mss``, which already accounts for the
        timestamp option); the container's kernel takes it whole."""
        conn = flow.conn
        segs = conn.segments_out
        if segs:
            gip, gport, rip, rport = flow.guest_ip, flow.guest_port, flow.remote_ip, flow.remote_port
            mac = self.mac
            offload = self.offload
            if offload:
                v6 = len(gip) == 16
                l4 = ETH_LEN + (40 if v6 else IPV4_LEN)
                mss = conn.snd_mss
            for s in segs:
                o = s.options
                if o is None or o is NO_OPTIONS:
                    ob = b""
                else:
                    ob = build_tcp_options(o.mss, o.wscale, o.sack_perm,
                                           None if o.ts_val is None else (o.ts_val, o.ts_ecr),
                                           o.sack_blocks)
                f = build_tcp(BROADCAST, mac, rip, gip, rport, gport, s.seq, s.ack, s.flags,
                              s.window, ob, s.payload, ident=self._ident(), csum=not offload)
                if not offload:
                    self._to_guest(gip, f)
                    continue
                if len(s.payload) > mss:
                    self.counters["tcp_tx_gso_segments"] += 1
                    hdr = tcp_offload_hdr(l4, l4 + TCP_LEN + len(ob), mss, v6)
                else:
                    hdr = tcp_offload_hdr(l4, l4 + TCP_LEN + len(ob))
                self._to_guest(gip, f, hdr)
            segs.clear()
        evs = conn.events
        if evs:
            fid = flow.id
            out = self.events_out
            for ev in evs:
                kind = ev[0]
                if kind == "data":
                    out.append((EV_TCP_DATA, fid, ev[1]))
                elif kind == "eof":
                    out.append((EV_TCP_SHUTDOWN, fid))
                elif kind == "reset" or kind == "aborted":
                    # Container RST, or we gave up on the container: the host
                    # peer must see a reset too, not a clean FIN.
                    out.append((EV_TCP_ABORT, fid))
                elif kind == "pause_reading":
                    out.append((EV_TCP_PAUSE, fid))
                elif kind == "resume_reading":
                    out.append((EV_TCP_RESUME, fid))
                elif kind == "connected":
                    out.append((EV_TCP_INBOUND_CONNECTED, fid))
                elif kind == "refused":
                    out.append((EV_TCP_INBOUND_REFUSED, fid))
                elif kind == "closed":
                    self._tcp_forget(flow)
            evs.clear()
        if flow.id in self.tcp_by_id:
            self._arm(flow)

    def _tcp_forget(self, flow: TcpFlow) -> None:
        if self.tcp_by_id.pop(flow.id, None) is None:
            return
        self.tcp_flows.pop(flow.key, None)
        if flow.connecting:
            flow.connecting = False
            self.tcp_connecting -= 1
        self.counters["tcp_flow_closed"] += 1
        self.events_out.append((EV_TCP_CLOSE, flow.id))

    def _arm(self, flow) -> None:
        """Make sure the heap holds an entry at or before the flow's deadline.

        A deadline that moved later keeps the entry it has: that entry fires
        early, finds nothing due, and re-arms. So a flow pushes only when its
        deadline moves earlier, not on every datagram or ACK (which would
        grow the heap by one entry per packet)."""
        if isinstance(flow, TcpFlow):
            d = flow.deadline()
            kind = "tcp"
        else:
            d = flow.deadline
            kind = flow.kind
        if d is not None and (flow.armed is None or d < flow.armed):
            flow.armed = d
            heapq.heappush(self._heap, (d, kind, flow.id))

    # host-side notifications for TCP
    def tcp_connected(self, fid: int, now: float) -> None:
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is None or not flow.connecting:
            return
        flow.connecting = False
        flow.connect_deadline = None
        self.tcp_connecting -= 1
        self.counters["tcp_host_connected"] += 1
        flow.conn.host_connected(now)
        self._tcp_flush(flow, now)

    def tcp_refused(self, fid: int, now: float, reason: str = "refused") -> None:
        """The host connect failed (``reason`` names the errno, e.g.
        "refused", "timeout", "unreachable"): RST the container."""
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is None:
            return
        if flow.connecting:
            flow.connecting = False
            flow.connect_deadline = None
            self.tcp_connecting -= 1
        self.counters["tcp_host_connect_failed_" + reason] += 1
        flow.conn.host_refused(now)
        self._tcp_flush(flow, now)
        self._tcp_forget(flow)

    def tcp_host_data(self, fid: int, data, now: float) -> int:
        """Bytes read from the host socket; returns how many were taken. The
        caller keeps the rest until ``EV_TCP_RESUME``."""
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is None:
            return len(data)
        n = flow.conn.send(data, now)
        self._tcp_flush(flow, now)
        return n

    def tcp_host_eof(self, fid: int, now: float) -> None:
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is not None:
            flow.conn.shutdown_host_eof(now)
            self._tcp_flush(flow, now)

    def tcp_host_reset(self, fid: int, now: float) -> None:
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is not None:
            self.counters["tcp_host_reset"] += 1
            flow.conn.abort(now)
            self._tcp_flush(flow, now)
            self._tcp_forget(flow)

    def tcp_host_backlog(self, fid: int, nbytes: int, now: float) -> None:
        self.now = now
        flow = self.tcp_by_id.get(fid)
        if flow is not None:
            flow.conn.set_host_backlog(nbytes, now)
            self._tcp_flush(flow, now)

    def tcp_open_inbound(self, guest_ip: bytes, guest_port: int, src_ip: bytes, src_port: int,
                         now: float) -> int | None:
        """Port forwarding: open a connection into the container from
        ``src_ip:src_port`` (the real client, or the gateway). Returns the
        flow id, or None when a limit or a clashing 4-tuple refuses it."""
        self.now = now
        c = self.counters
        key = (guest_ip, guest_port, src_ip, src_port)
        if key in self.tcp_flows:
            c["tcp_inbound_tuple_busy"] += 1
            return None
        if len(self.tcp_flows) >= self.config.max_tcp_flows:
            c["tcp_inbound_flow_limit"] += 1
            return None
        fid = self._new_id()
        conn = TcpConnection(now, self.rng.getrandbits(32), self.config.mss, c,
                             max_seg=self._tcp_max_seg)
        flow = TcpFlow(fid, key, conn, guest_ip, guest_port, src_ip, src_port, True)
        self.tcp_flows[key] = flow
        self.tcp_by_id[fid] = flow
        c["tcp_inbound_open"] += 1
        conn.open_active(now)
        self._tcp_flush(flow, now)
        return fid

    # ------------------------------------------------------------------ UDP
    def _udp_input(self, p, frame, now) -> None:
        c = self.counters
        cfg = self.config
        dst, dport = p[P_DST], p[P_DPORT]
        handler = self.udp_local_handlers.get((dst, dport))
        if handler is not None:
            handler(p, frame, now)
            return
        if dst == cfg.dns_ip:
            self._unreachable(p, frame, UNREACH_PORT, "udp_port_unreachable_local")
            return
        if dst == cfg.broadcast_ip or dst == b"\xff\xff\xff\xff" or dst[0] >= 224:
            c["drop_udp_broadcast"] += 1
            return
        key = (p[P_SRC], p[P_SPORT], dst, dport)
        flow = self.udp_flows.get(key)
        if flow is None:
            host = self.host_target(dst)
            if host is None:
                if cfg.in_network(dst) and dst != cfg.gateway_ip:
                    self._unreachable(p, frame, UNREACH_HOST, "icmp_dest_unreachable_local")
                else:
                    self._unreachable(p, frame, UNREACH_PORT, "udp_refused_policy")
                return
            idle = cfg.udp_dns_idle_timeout if dport == 53 else cfg.udp_idle_timeout
            flow = self._new_datagram_flow("udp", key, p[P_SPORT], dport, idle)
            if flow is None:
                return
            self.events_out.append((EV_UDP_OPEN, flow.id, host, dport))
        self._touch(flow, now)
        c["udp_tx_datagrams"] += 1
        self.events_out.append((EV_UDP_SEND, flow.id, bytes(p[P_PAYLOAD])))

    def _new_datagram_flow(self, kind: str, key: tuple, guest_port: int, remote_port: int,
                           idle: float) -> UdpFlow | None:
        """Register a UDP or ICMP echo flow keyed ``(guest_ip, _, remote_ip,
        ...)``, or count the drop and return None at the flow limit."""
        if kind == "udp":
            table, by_id, limit = self.udp_flows, self.udp_by_id, self.config.max_udp_flows
        else:
            table, by_id, limit = self.icmp_flows, self.icmp_by_id, self.config.max_icmp_flows
        if len(table) >= limit:
            self.counters[f"drop_{kind}_flow_limit"] += 1
            return None
        # Both key shapes start (guest_ip, port or ident, remote_ip, ...).
        flow = UdpFlow(self._new_id(), key, key[0], guest_port, key[2], remote_port, idle)
        flow.kind = kind
        table[key] = flow
        by_id[flow.id] = flow
        self.counters[f"{kind}_flow_open"] += 1
        return flow

    def _touch(self, flow: UdpFlow, now: float) -> None:
        """Traffic on a datagram flow: push its idle deadline out."""
        flow.deadline = now + flow.idle
        self._arm(flow)

    def udp_inbound(self, src_ip: bytes, src_port: int, guest_ip: bytes, guest_port: int, data,
                    now: float) -> int | None:
        """Port forwarding: a datagram from ``src_ip:src_port`` (the real
        client, or the gateway) for the container's ``guest_port``. The flow
        is keyed like an outbound one, so the container's replies find it;
        the host side sends them back through its listener (no
        ``EV_UDP_OPEN`` is emitted: the forwarder registers the flow's
        sender itself). Returns the flow id, or None at the flow limit."""
        self.now = now
        key = (guest_ip, guest_port, src_ip, src_port)
        flow = self.udp_flows.get(key)
        if flow is None:
            flow = self._new_datagram_flow("udp", key, guest_port, src_port,
                                           self.config.udp_idle_timeout)
            if flow is None:
                return None
            self.counters["udp_inbound_flow_open"] += 1
        self._touch(flow, now)
        self.udp_send_to_guest(src_ip, src_port, guest_ip, guest_port, data)
        return flow.id

    def udp_host_datagram(self, fid: int, data, now: float) -> None:
        self.now = now
        flow = self.udp_by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, now)
        self.udp_send_to_guest(flow.remote_ip, flow.remote_port, flow.guest_ip, flow.guest_port,
                               data)

    def udp_send_to_guest(self, src_ip: bytes, src_port: int, guest_ip: bytes, guest_port: int,
                          data) -> None:
        """Send a datagram to the guest, fragmenting it when it exceeds the MTU."""
        c = self.counters
        if len(data) > _UDP_MAX_PAYLOAD:
            # e.g. a jumbo answer from an IPv6 upstream: IPv4 cannot carry it.
            c["drop_udp_too_big_for_ipv4"] += 1
            return
        c["udp_rx_datagrams"] += 1
        f = build_udp(BROADCAST, self.mac, src_ip, guest_ip, src_port, guest_port, data,
                      ident=self._ident())
        mtu = self.config.mtu
        if len(f) - ETH_LEN <= mtu:
            self._to_guest(guest_ip, f)
            return
        payload = memoryview(f)[ETH_LEN + IPV4_LEN:]
        step = (mtu - IPV4_LEN) & ~7
        ident = self._ident()
        for off in range(0, len(payload), step):
            chunk = payload[off:off + step]
            more = off + step < len(payload)
            c["udp_tx_fragments"] += 1
            self._to_guest(guest_ip, build_ipv4_fragment(BROADCAST, self.mac, src_ip, guest_ip,
                                                         PROTO_UDP, ident, off, more, chunk))

    def udp_host_error(self, fid: int, quote_payload, now: float) -> None:
        """The host socket got ICMP port unreachable (ECONNREFUSED): tell the
        container with ICMP port unreachable quoting a datagram of the flow."""
        self.now = now
        flow = self.udp_by_id.get(fid)
        if flow is None:
            return
        # Rebuild the offending datagram's headers as the container sent them.
        orig = build_udp(BROADCAST, BROADCAST, flow.guest_ip, flow.remote_ip, flow.guest_port,
                         flow.remote_port, quote_payload[:512])
        self.counters["udp_port_unreachable_tx"] += 1
        f = build_icmp(BROADCAST, self.mac, flow.remote_ip, flow.guest_ip, ICMP_DEST_UNREACH,
                       UNREACH_PORT, 0, 0, bytes(orig[ETH_LEN:ETH_LEN + 548]),
                       ident=self._ident())
        self._to_guest(flow.guest_ip, f)

    def _udp_forget(self, flow: UdpFlow) -> None:
        """Expire an idle UDP or ICMP echo flow."""
        if flow.kind == "icmp":
            table, by_id, ev = self.icmp_flows, self.icmp_by_id, EV_ICMP_CLOSE
        else:
            table, by_id, ev = self.udp_flows, self.udp_by_id, EV_UDP_CLOSE
        if by_id.pop(flow.id, None) is not None:
            table.pop(flow.key, None)
            self.counters[flow.kind + "_flow_expired"] += 1
            self.events_out.append((ev, flow.id))

    # ----------------------------------------------------------- DHCP, DNS
    def _dhcp_input(self, p, frame, now) -> None:
        """UDP to port 67 at the limited broadcast or gateway address."""
        reply = self.dhcp.handle_payload(p[P_PAYLOAD], now)
        if reply is None:
            return
        # RFC 2131 4.1: the client may not have its address yet, so the reply
        # goes straight to the MAC the server chose (chaddr or broadcast),
        # never through ARP.
        self.frames_out.append(build_udp(reply.dst_mac, self.mac, self.config.gateway_ip,
                                         reply.dst_ip, 67, 68, reply.payload,
                                         ident=self._ident()))

    def _dns_input(self, p, frame, now) -> None:
        c = self.counters
        query = bytes(p[P_PAYLOAD])
        local = self.local_names.answer(query)
        if local is not None:
            c["dns_local_answer"] += 1
            self._dns_send(p[P_SRC], p[P_SPORT], local)
            return
        if len(self.dns_pending) >= DNS_MAX_PENDING:
            c["dns_servfail_too_many_pending"] += 1
            self._dns_servfail(p[P_SRC], p[P_SPORT], query)
            return
        qid = self._new_id()
        deadline = now + DNS_QUERY_TIMEOUT
        self.dns_pending[qid] = (p[P_SRC], p[P_SPORT], query)
        heapq.heappush(self._heap, (deadline, "dns", qid))
        c["dns_query_forwarded"] += 1
        self.events_out.append((EV_DNS_QUERY, qid, query))

    def _dns_send(self, guest_ip, guest_port, payload) -> None:
        self.udp_send_to_guest(self.config.dns_ip, 53, guest_ip, guest_port, payload)

    def _dns_servfail(self, guest_ip, guest_port, query) -> None:
        try:
            reply = build_servfail(query)
        except ParseError:
            self.counters["drop_dns_unparsable_query"] += 1
            return
        self.counters["dns_servfail_tx"] += 1
        self._dns_send(guest_ip, guest_port, reply)

    def dns_reply(self, qid: int, answer, now: float) -> None:
        """The upstream resolver answered query ``qid``."""
        self.now = now
        q = self.dns_pending.pop(qid, None)
        if q is None:
            self.counters["dns_late_answer"] += 1
            return
        self.counters["dns_answer_rx"] += 1
        self._dns_send(q[0], q[1], answer)

    def dns_failed(self, qid: int, now: float, reason: str = "error") -> None:
        """No upstream could answer query ``qid``: SERVFAIL, not silence."""
        self.now = now
        q = self.dns_pending.pop(qid, None)
        if q is None:
            return
        self.counters["dns_upstream_failed_" + reason] += 1
        self._dns_servfail(q[0], q[1], q[2])

    # ----------------------------------------------------------------- ICMP
    def icmp_host_reply(self, fid: int, seq: int, data, now: float) -> None:
        """An echo reply from the host side; it goes to the container with
        the container's own identifier (Linux ping sockets rewrite it)."""
        self.now = now
        flow = self.icmp_by_id.get(fid)
        if flow is None:
            return
        self._touch(flow, now)
        self.counters["icmp_echo_reply_rx"] += 1
        f = build_icmp(BROADCAST, self.mac, flow.remote_ip, flow.guest_ip, ICMP_ECHO_REPLY, 0,
                       flow.guest_port, seq, data, ident=self._ident())
        self._to_guest(flow.guest_ip, f)

    def icmp_host_unavailable(self, fid: int, seq: int, data, now: float) -> None:
        """Neither a ping socket nor a raw socket can be had: answer the echo
        with "communication administratively prohibited" rather than silence."""
        self.now = now
        flow = self.icmp_by_id.get(fid)
        if flow is None:
            return
        self.counters["icmp_echo_admin_prohibited_tx"] += 1
        orig = build_icmp(BROADCAST, BROADCAST, flow.guest_ip, flow.remote_ip, ICMP_ECHO_REQUEST,
                          0, flow.guest_port, seq, bytes(data)[:64])
        f = build_icmp(BROADCAST, self.mac, self.config.gateway_ip, flow.guest_ip,
                       ICMP_DEST_UNREACH, UNREACH_ADMIN_PROHIBITED, 0, 0,
                       bytes(orig[ETH_LEN:ETH_LEN + 548]), ident=self._ident())
        self._to_guest(flow.guest_ip, f)

    # --------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            d, kind, fid = heap[0]
            if kind == "tcp":
                flow = self.tcp_by_id.get(fid)
            elif kind == "udp":
                flow = self.udp_by_id.get(fid)
            elif kind == "icmp":
                flow = self.icmp_by_id.get(fid)
            elif kind == "dns":
                if fid in self.dns_pending:
                    return d
                heapq.heappop(heap)
                continue
            elif kind == "arp":
                hold = self._arp_hold.get(fid)
                if hold is not None and hold[2] == d:
                    return d
                heapq.heappop(heap)
                continue
            else:
                if d == self._frag_armed:
                    return d
                heapq.heappop(heap)
                continue
            if flow is not None and flow.armed == d:
                return d
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        self.now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, kind, fid = heapq.heappop(heap)
            if kind == "frag":
                if d == self._frag_armed:
                    self._frag_armed = None
                    self.reasm.expire(now)
                    self._arm_reasm()
                continue
            if kind == "dns":
                if fid in self.dns_pending:
                    self.dns_failed(fid, now, "timeout")
                continue
            if kind == "arp":
                hold = self._arp_hold.get(fid)
                if hold is not None and hold[2] == d:
                    self._arp_timeout(fid)
                continue
            if kind == "udp" or kind == "icmp":
                flow = (self.udp_by_id if kind == "udp" else self.icmp_by_id).get(fid)
                if flow is None or flow.armed != d:
                    continue
                flow.armed = None
                if flow.deadline <= now:
                    self._udp_forget(flow)
                else:
                    self._arm(flow)
                continue
            flow = self.tcp_by_id.get(fid)
            if flow is None or flow.armed != d:
                continue
            flow.armed = None
            if flow.connect_deadline is not None and flow.connect_deadline <= now:
                self.events_out.append((EV_TCP_CANCEL, fid))
                self.tcp_refused(fid, now, "timeout")
                continue
            flow.conn.handle_timer(now)
            self._tcp_flush(flow, now)

    def tcp_active(self) -> int:
        """Flows still moving data or closing (TIME-WAIT ones are done)."""
        return sum(1 for f in self.tcp_by_id.values() if f.conn.state != "TIME_WAIT")

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict:
        s = dict(self.counters)
        s["tcp_flows"] = len(self.tcp_by_id)
        s["tcp_connecting"] = self.tcp_connecting
        s["udp_flows"] = len(self.udp_by_id)
        s["icmp_flows"] = len(self.icmp_by_id)
        s["frag_in_progress"] = len(self.reasm.partials)
        s["dns_pending"] = len(self.dns_pending)
        return s

