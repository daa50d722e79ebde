"""The address policy: the one place that knows which addresses are what.

Theory of operation
-------------------
Every decision the stack makes about an address asks :class:`AddressPolicy`:

* where a flow from the container goes on the host (:meth:`host_target`):
  network+2 (the gateway) is host loopback ``127.0.0.1`` unless host
  loopback is disabled; loopback (all of 127/8), "this network" (0/8, so
  0.0.0.0, which Linux delivers locally), multicast, broadcast and the
  reserved class E block, and the rest of the virtual network are refused;
  link-local 169.254.0.0/16 is refused unless ``--allow-link-local`` (a
  cloud's metadata service lives at 169.254.169.254: a container must not
  read its host's credentials by default); everything else goes out to the
  same address. Why a flow was refused is :meth:`refusal`, counted as
  ``policy_refused_<reason>``. The host's *own* addresses (an address of
  one of its interfaces, which its kernel delivers locally, like loopback)
  change at run time and are not known here: with host loopback disabled
  the host side refuses them when it opens the flow
  (``host/outbound.py`` ``is_host_local``, ``policy_refused_host_local``);
* which addresses the stack answers itself (:meth:`is_ours`: the gateway, and
  the DNS forwarder when enabled);
* which sources a guest frame may carry (:meth:`bad_guest_source`) and which
  datagrams must never draw an ICMP error (RFC 1122 3.2.2:
  :meth:`no_icmp_error`);
* which destinations are broadcast or multicast (:meth:`is_broadcast`);
* what address the container sees for a host-side client of a port forward
  (:meth:`inbound_source`) and which guest addresses a forward may target
  (:meth:`is_guest_addr`).

IPv6 (``--enable-ipv6``) has its rules beside these, chosen by the address
length (16 bytes) inside the same methods, so no caller changes: prefix::2
is host ``::1`` unless host loopback is disabled; prefix::3 is the DNS
forwarder; the rest of the /64, link-local (fe80::/10), multicast
(ff00::/8), loopback, the unspecified address and IPv4-mapped addresses
(::ffff:0:0/96, which would reach the host's IPv4 loopback behind the
policy's back) are never sent to the host. The length test runs only on
calls that are not per TCP segment (flow opens, UDP datagrams, errors).
Pure functions of the config: no state, no counters, no clock.
"""

import ipaddress

from .config import NetConfig

#: Why a destination is refused (``policy_refused_<reason>``); "host_local"
#: and "dns_port" are decided outside :meth:`AddressPolicy.host_target`.
REFUSAL_REASONS = ("gateway", "loopback", "this_network", "multicast", "link_local", "v4_mapped",
                   "own_network", "host_local", "dns_port")

_ANY4 = b"\0\0\0\0"
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"


_V4_MAPPED = bytes(10) + b"\xff\xff"
_LOOPBACK6 = bytes(15) + b"\x01"
_UNSPECIFIED6 = bytes(16)


def _special6(ip: bytes) -> bool:
    """Multicast, link-local, loopback, unspecified or IPv4-mapped: never a
    NAT destination nor a client the container could answer."""
    return (ip[0] == 0xFF or (ip[0] == 0xFE and ip[1] & 0xC0 == 0x80) or ip == _LOOPBACK6
            or ip == _UNSPECIFIED6 or ip[:12] == _V4_MAPPED)


def _multicast_or_reserved(ip: bytes) -> bool:
    # 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 with it.
    return ip[0] >= 224


class AddressPolicy:
    __slots__ = ("cfg", "gateway_ip", "dns_ip", "network_addr", "_ours", "_not_guest",
                 "gateway6", "dns6", "prefix6", "_ours6")

    def __init__(self, cfg: NetConfig):
        self.cfg = cfg
        self.gateway_ip = cfg.gateway_ip
        self.dns_ip = cfg.dns_ip
        self.network_addr = cfg.network.network_address.packed
        self._ours = frozenset((cfg.gateway_ip, cfg.dns_ip) if cfg.enable_dns
                               else (cfg.gateway_ip,))
        # Our own addresses, the network and broadcast addresses: a guest
        # frame from one of these is spoofed or confused, its replies would go
        # nowhere.
        self._not_guest = frozenset((cfg.gateway_ip, cfg.dns_ip, cfg.broadcast_ip,
                                     self.network_addr))
        self.gateway6 = cfg.gateway6
        self.dns6 = cfg.dns6
        self.prefix6 = cfg.prefix6[:8]
        # Our IPv6 addresses (the link-local one, fe80::2, included) and the
        # subnet-router anycast prefix::0 (RFC 4291 2.6.1), none a guest's.
        self._ours6 = frozenset((cfg.gateway6, cfg.dns6, cfg.prefix6,
                                 bytes.fromhex("fe800000000000000000000000000002")))

    def in_prefix6(self, ip: bytes) -> bool:
        return ip[:8] == self.prefix6

    def bad_guest_source6(self, src: bytes) -> bool:
        """An IPv6 source the container may not use: outside the /64 and not
        link-local, or one of ours. (The unspecified address is legal only
        in neighbour discovery, which the gateway checks before this.)"""
        if src[:8] == self.prefix6:
            return src in self._ours6
        return not (src[0] == 0xFE and src[1] & 0xC0 == 0x80) or src in self._ours6

    def is_ours(self, ip: bytes) -> bool:
        """Answered by the stack itself (ARP, ping): the gateway, the DNS forwarder."""
        return ip in self._ours

    def is_broadcast(self, ip: bytes) -> bool:
        """Broadcast or multicast: a datagram nobody on the host side takes."""
        if len(ip) == 16:
            return ip[0] == 0xFF
        return ip == self.cfg.broadcast_ip or ip == _LIMITED_BROADCAST or \
            _multicast_or_reserved(ip)

    def on_link_unowned(self, ip: bytes) -> bool:
        """Inside the virtual network but neither the gateway nor the DNS
        forwarder: nobody answers it (ICMP host unreachable)."""
        if len(ip) == 16:
            return ip[:8] == self.prefix6 and ip != self.gateway6 and ip != self.dns6
        return self.cfg.in_network(ip) and ip != self.gateway_ip and ip != self.dns_ip

    def unroutable(self, ip: bytes) -> bool:
        """Inside the virtual network, or multicast/reserved: never sent to the host."""
        if len(ip) == 16:
            return ip[:8] == self.prefix6 or _special6(ip)
        return self.cfg.in_network(ip) or _multicast_or_reserved(ip)

    def bad_guest_source(self, src: bytes, dhcp_client: bool) -> bool:
        """A source the container may not use. 0.0.0.0 is legal only for a DHCP
        client asking for an address (RFC 2131 4.1: ``dhcp_client``)."""
        if not self.cfg.in_network(src):
            return not (src == _ANY4 and dhcp_client)
        return src in self._not_guest

    def may_learn(self, ip: bytes) -> bool:
        """An ARP sender address the neighbour cache may record."""
        return self.cfg.in_network(ip) and ip not in self._not_guest

    def no_icmp_error(self, dst: bytes, dst_mac: bytes, src: bytes) -> bool:
        """RFC 1122 3.2.2: no ICMP error about a datagram sent to a broadcast
        or multicast address (IP or link layer), nor from 0.0.0.0."""
        return (_multicast_or_reserved(dst) or dst == self.cfg.broadcast_ip
                or dst_mac[0] & 1 or dst == self.network_addr or src == _ANY4)

    def host_target(self, dst: bytes) -> str | None:
        """Where a flow to ``dst`` goes on the host, or None if refused."""
        cfg = self.cfg
        if len(dst) == 16:
            if dst == self.gateway6:
                return "::1" if cfg.host_loopback else None
            if dst[:8] == self.prefix6 or _special6(dst):
                return None
            return str(ipaddress.IPv6Address(dst))
        if dst == cfg.gateway_ip:
            return "127.0.0.1" if cfg.host_loopback else None
        if dst[0] == 127 or dst[0] == 0 or _multicast_or_reserved(dst) or cfg.in_network(dst):
            return None
        if dst[0] == 169 and dst[1] == 254 and not cfg.allow_link_local:
            return None
        return str(ipaddress.ip_address(dst))

    def refusal(self, dst: bytes) -> str:
        """Why :meth:`host_target` refused ``dst``: one of ``REFUSAL_REASONS``
        (called only on a refusal, for its counter)."""
        if len(dst) == 16:
            if dst == self.gateway6:
                return "gateway"
            if dst == _LOOPBACK6:
                return "loopback"
            if dst == _UNSPECIFIED6:
                return "this_network"
            if dst[0] == 0xFF:
                return "multicast"
            if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
                return "link_local"
            if dst[:12] == _V4_MAPPED:
                return "v4_mapped"
            return "own_network"
        if dst == self.gateway_ip:
            return "gateway"
        if dst[0] == 127:
            return "loopback"
        if dst[0] == 0:
            return "this_network"
        if _multicast_or_reserved(dst) or dst == self.cfg.broadcast_ip:
            return "multicast"
        if dst[0] == 169 and dst[1] == 254:
            return "link_local"
        return "own_network"

    def inbound_source(self, client: bytes) -> bytes | None:
        """The address the container sees for a port forward's client, or
        None when it must be the gateway's: host loopback would stay inside
        the container, and an address of the virtual network is on its own
        link (or is itself), so it could not answer either through us."""
        if len(client) == 16:
            return None if client[:8] == self.prefix6 or _special6(client) else client
        if client[0] == 127 or client[0] == 0 or _multicast_or_reserved(client) \
                or self.cfg.in_network(client):
            return None
        return client

    def is_guest_addr(self, ip: bytes) -> bool:
        """An address a port forward may target: in the network, not ours."""
        if len(ip) == 16:
            return ip[:8] == self.prefix6 and ip not in self._ours6
        return self.cfg.in_network(ip) and ip not in self._not_guest
