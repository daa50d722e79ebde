"""The address policy: the one place that knows which addresses are what.

Theory of operation
-------------------
Every decision the stack makes about an address asks :class:`AddressPolicy`:

* where a flow from the container goes on the host (:meth:`host_target`):
  network+2 (the gateway) is host loopback ``127.0.0.1`` unless host
  loopback is disabled; loopback, "this network" (0/8), multicast and the
  reserved class E block, and the rest of the virtual network are refused;
  everything else goes out to the same address;
* which addresses the stack answers itself (:meth:`is_ours`: the gateway, and
  the DNS forwarder when enabled);
* which sources a guest frame may carry (:meth:`bad_guest_source`) and which
  datagrams must never draw an ICMP error (RFC 1122 3.2.2:
  :meth:`no_icmp_error`);
* which destinations are broadcast or multicast (:meth:`is_broadcast`);
* what address the container sees for a host-side client of a port forward
  (:meth:`inbound_source`) and which guest addresses a forward may target
  (:meth:`is_guest_addr`).

IPv4 only for now; IPv6 adds its rules here (``::1``, ``ff00::/8``,
link-local), beside these, so no caller changes. Pure functions of the
config: no state, no counters, no clock.
"""

import ipaddress

from .config import NetConfig

_ANY4 = b"\0\0\0\0"
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"


def _multicast_or_reserved(ip: bytes) -> bool:
    # 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 with it.
    return ip[0] >= 224


class AddressPolicy:
    __slots__ = ("cfg", "gateway_ip", "dns_ip", "network_addr", "_ours", "_not_guest")

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

    def is_ours(self, ip: bytes) -> bool:
        """Answered by the stack itself (ARP, ping): the gateway, the DNS forwarder."""
        return ip in self._ours

    def is_broadcast(self, ip: bytes) -> bool:
        """Broadcast or multicast: a datagram nobody on the host side takes."""
        return ip == self.cfg.broadcast_ip or ip == _LIMITED_BROADCAST or \
            _multicast_or_reserved(ip)

    def on_link_unowned(self, ip: bytes) -> bool:
        """Inside the virtual network but neither the gateway nor the DNS
        forwarder: nobody answers it (ICMP host unreachable)."""
        return self.cfg.in_network(ip) and ip != self.gateway_ip and ip != self.dns_ip

    def unroutable(self, ip: bytes) -> bool:
        """Inside the virtual network, or multicast/reserved: never sent to the host."""
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
        if dst == cfg.gateway_ip:
            return "127.0.0.1" if cfg.host_loopback else None
        if dst[0] == 127 or dst[0] == 0 or _multicast_or_reserved(dst) or cfg.in_network(dst):
            return None
        return str(ipaddress.ip_address(dst))

    def inbound_source(self, client: bytes) -> bytes | None:
        """The address the container sees for a port forward's client, or
        None when it must be the gateway's: host loopback would stay inside
        the container, and an address of the virtual network is on its own
        link (or is itself), so it could not answer either through us."""
        if client[0] == 127 or client[0] == 0 or _multicast_or_reserved(client) \
                or self.cfg.in_network(client):
            return None
        return client

    def is_guest_addr(self, ip: bytes) -> bool:
        """An address a port forward may target: in the network, not ours."""
        return self.cfg.in_network(ip) and ip not in self._not_guest
