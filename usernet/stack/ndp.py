"""IPv6 link services: the router's side of neighbour discovery, and DHCPv6.

Theory of operation
-------------------
With IPv6 on, the container's link has one router, usernet, with three
addresses: the gateway (prefix::2, which reaches the host), the DNS forwarder
(prefix::3) and the link-local ``fe80::2`` that router advertisements come
from (RFC 4861 6.1.2: an RA's source must be link-local). This object
answers, sans-IO, everything the container asks of that router before any
flow exists:

* Neighbor Solicitation for one of our addresses -> Neighbor Advertisement
  (solicited, override, router). A solicitation from the unspecified
  address is a duplicate-address probe (RFC 4862 5.4.3): answered to
  all-nodes, and never for an address that is not ours.
* Router Solicitation -> a Router Advertisement at once (RFC 4861 6.2.6
  lets a router delay it; one container on a point-to-point link gains
  nothing from waiting); otherwise an unsolicited RA every ``RA_INTERVAL``
  seconds, the first ``RA_INITIAL_COUNT`` of them ``RA_INITIAL_INTERVAL``
  apart (6.2.4) so a container that missed the first still configures fast.
  The RA offers the /64 prefix for SLAAC, this router as the default route,
  the link MTU and the DNS forwarder (RDNSS, RFC 8106), and sets O so that
  clients ask DHCPv6 for "other configuration".
* DHCPv6 Information-request -> Reply with the DNS server (RFC 8415 18.3.6).
  Stateful messages (Solicit, Request, ...) are counted and ignored: the RA's
  M flag is clear, so a conforming client does not send them, and addresses
  come from SLAAC.

What it returns are ICMPv6 message parts (``(type, rest_hi, rest_lo, data,
src_ip, dst_ip, dst_mac)``) or a DHCPv6 payload; the gateway frames them with its
builders, and owns the neighbour cache (the link-layer address a message
carries is returned to it for learning). Every decision bumps a named
counter. Timers: one deadline, the next unsolicited RA.
"""

from collections import Counter

from ..wire import ParseError
from ..wire.dhcpv6 import (INFORMATION_REQUEST, OPT_CLIENTID, OPT_SERVERID, build_reply, duid_ll,
                           parse_dhcpv6)
from ..wire.icmp import (ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_ROUTER_ADVERT,
                         ND_ROUTER_SOLICIT)
from ..wire.ndp import NA_OVERRIDE, NA_ROUTER, NA_SOLICITED, build_na, build_ra, parse_nd

RA_INTERVAL = 200.0            # seconds between unsolicited RAs (RFC 4861 6.2.1: 4..1800)
RA_INITIAL_INTERVAL = 16.0     # MAX_INITIAL_RTR_ADVERT_INTERVAL (RFC 4861 10)
RA_INITIAL_COUNT = 3           # MAX_INITIAL_RTR_ADVERTISEMENTS
ROUTER_LIFETIME = 1800         # seconds the container keeps us as its default router

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
LINK_LOCAL_GW = bytes.fromhex("fe800000000000000000000000000002")


def multicast_mac(addr: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast group (RFC 2464 7)."""
    return b"\x33\x33" + addr[12:]


class Ipv6Router:
    def __init__(self, prefix: bytes, mac: bytes, *, gateway: bytes, dns: bytes | None, mtu: int,
                 counters: Counter, now: float = 0.0):
        self.prefix = prefix
        self.mac = mac
        self.gateway = gateway
        self.dns = dns
        self.mtu = mtu
        self.counters = counters
        self.addresses = frozenset(a for a in (gateway, dns, LINK_LOCAL_GW) if a is not None)
        self.duid = duid_ll(mac)
        self._ra_sent = 0
        self._next_ra = now   # the first RA goes out on the first timer run

    # ------------------------------------------------------------ timers
    def get_timer(self) -> float:
        return self._next_ra

    def handle_timer(self, now: float) -> list:
        """Unsolicited RAs when due: a list of zero or one message."""
        if now < self._next_ra:
            return []
        self._ra_sent += 1
        gap = RA_INITIAL_INTERVAL if self._ra_sent < RA_INITIAL_COUNT else RA_INTERVAL
        self._next_ra = now + gap
        self.counters["ndp_ra_unsolicited"] += 1
        return [self._ra(ALL_NODES, ALL_NODES_MAC)]

    # ------------------------------------------------------------ ICMPv6 ND
    def receive_nd(self, itype: int, code: int, body, src: bytes, src_mac: bytes,
                   hop_limit: int) -> tuple:
        """One ND message from the container. Returns ``(reply, learned)``:
        the message to send (or None) and ``(address, mac)`` to put in the
        neighbour cache (or None)."""
        if hop_limit != 255:
            # RFC 4861 7.1.1/6.1.1: a hop limit below 255 means it was routed.
            self.counters["drop_nd_hop_limit"] += 1
            return None, None
        try:
            target, link = parse_nd(itype, code, body)
        except ParseError as e:
            self.counters["drop_" + e.reason] += 1
            return None, None
        learned = (src, link) if link is not None and src != UNSPECIFIED else None
        if itype == ND_NEIGHBOR_SOLICIT:
            if target not in self.addresses:
                self.counters["ndp_ns_not_ours"] += 1
                return None, learned
            self.counters["ndp_na_sent"] += 1
            if src == UNSPECIFIED:
                # A duplicate-address probe for one of our addresses: say it
                # is taken, to all nodes, not solicited (RFC 4861 7.2.4).
                return (ND_NEIGHBOR_ADVERT,) + build_na(target, self.mac, NA_ROUTER | NA_OVERRIDE) \
                    + (target, ALL_NODES, ALL_NODES_MAC), None
            return (ND_NEIGHBOR_ADVERT,) + build_na(
                target, self.mac, NA_ROUTER | NA_SOLICITED | NA_OVERRIDE) \
                + (target, src, link or src_mac), learned
        if itype == ND_ROUTER_SOLICIT:
            self.counters["ndp_ra_solicited"] += 1
            if src == UNSPECIFIED:
                return self._ra(ALL_NODES, ALL_NODES_MAC), None
            return self._ra(src, link or src_mac), learned
        if itype == ND_NEIGHBOR_ADVERT:
            self.counters["ndp_na_received"] += 1
            return None, (target, link) if link is not None else None
        self.counters["ndp_ra_from_container"] += 1   # a second router on the link: ignored
        return None, None

    def _ra(self, dst: bytes, dst_mac: bytes) -> tuple:
        rest_hi, rest_lo, data = build_ra(self.mac, prefix=self.prefix, mtu=self.mtu,
                                          dns=(self.dns,) if self.dns else (),
                                          router_lifetime=ROUTER_LIFETIME)
        return ND_ROUTER_ADVERT, rest_hi, rest_lo, data, LINK_LOCAL_GW, dst, dst_mac

    # ------------------------------------------------------------ DHCPv6
    def receive_dhcpv6(self, payload) -> bytes | None:
        """A datagram to UDP port 547; the reply payload, or None."""
        try:
            mtype, xid, opts = parse_dhcpv6(payload)
        except ParseError as e:
            self.counters["drop_" + e.reason] += 1
            return None
        server = opts.get(OPT_SERVERID)
        if server is not None and server != self.duid:
            self.counters["dhcp6_other_server"] += 1    # meant for another server
            return None
        client = opts.get(OPT_CLIENTID)
        dns = (self.dns,) if self.dns else ()
        if mtype == INFORMATION_REQUEST:
            self.counters["dhcp6_information_request"] += 1
            return build_reply(xid, self.duid, client, dns=dns)
        self.counters["dhcp6_ignored"] += 1
        return None
