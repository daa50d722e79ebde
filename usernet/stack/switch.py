"""The virtual switch: links on one named network share an Ethernet segment, sans-IO.

Theory of operation
-------------------
A *link* is one container's TAP with its own :class:`~usernet.stack.gateway.Gateway`
(its own addresses, flows, forwards, counters). Links started on the same
named network (``usernet network create NAME``, ``--network NAME``) are the
*ports* of one :class:`Network`: a learning switch that lives in the stack,
with no kernel bridge and no privilege. Every frame a port's container
sends goes through :meth:`Port.receive` instead of straight into its
gateway; the switch decides where it goes:

* **to the port's own gateway** when addressed to the gateway MAC (every
  gateway has the same MAC and the same addresses, network+2 and +3, so
  each container talks to its own router, DHCP server and DNS forwarder,
  and NAT to the host is exactly what it is without a network);
* **to the learned port** of a unicast destination MAC (written to that
  port's TAP through its gateway's ``frames_out``, virtio-net header and
  all, so TSO super-frames and partial checksums pass between two
  offloading TAPs untouched);
* **broadcast and multicast** (ARP requests, neighbour solicitations, DHCP
  discovers): to the sender's own gateway *and* flooded to every other
  port's TAP, but never to another port's gateway: a DHCP discover must
  be answered by the sender's own server alone (each one hands out the
  address its network allocated to that link), and an ARP request for
  network+2 by the sender's own router;
* **unknown unicast** (a destination not learned, or aged out): flooded to
  the other ports' TAPs (their kernels drop what is not theirs).

Flooding costs every other port, so each port may flood ``FLOOD_RATE``
frames a second (a token bucket of ``FLOOD_BURST``); past it the flood is
dropped (``switch_drop_flood_limit``) while the sender's own gateway still
gets its broadcasts.

*Learning and aging.* A port's source MAC is learned on its first frame and
pinned for the port's life (or given up front, ``--macaddress``); further
MACs a port uses (a bridge inside the container) are learned with an
``MAC_AGE`` idle timeout, at most ``MAX_MACS_PER_PORT`` per port
(``switch_drop_mac_limit`` past it). Aging is lazy: an entry is checked
when it is looked up, and a full port sheds its aged entries before it
refuses a new one, so there is no timer.

*Anti-spoofing.* A port can never claim what belongs to another port:

* a source MAC owned by another port (pinned, or learned and not aged), a
  multicast or all-zero source, or the gateway MAC: ``switch_drop_mac_spoof``;
* IPv4: the network allocated each link one address (its gateway's
  ``NetConfig.guest_ip``, the one its DHCP server hands out); an IPv4
  packet's source and an ARP sender address must be that address or
  0.0.0.0 (a DHCP client, an ARP probe), and an ARP sender MAC one of the
  port's own: ``switch_drop_ip_spoof``;
* IPv6: sources must be link-local or in the network's /64 and never one
  of the gateway's addresses; each is learned per port like a MAC (the
  SLAAC and link-local addresses of the pinned MAC are pinned, others age,
  at most ``MAX_IP6_PER_PORT``); a source, or the target of a Neighbor
  Advertisement, that another port holds is ``switch_drop_ip_spoof``.

*Names.* A link may have a name (``--name web``); the network's table maps
it to the port, and every port's DNS forwarder answers ``web`` and
``web.NETWORK`` from it (:meth:`Network.resolve`, consulted by
:class:`usernet.stack.dns.LocalNames` before anything goes upstream): A
with the link's address, AAAA with its SLAAC address when that link has
IPv6, PTR for the network's reverse names (in-addr.arpa and ip6.arpa).
Other names under ``.NETWORK`` are NXDOMAIN (the network is their only
authority); every other name, including the names of other networks'
links, is not ours and goes upstream as before.

*Output.* The switch appends to the target port's ``tap_out`` (its gateway's
``frames_out``: the list its host driver writes to the TAP) and lists the
port in :attr:`Network.dirty` once; the host side flushes those ports after
each batch (:meth:`Network.take_dirty`). Nothing here does I/O or reads a
clock: ``now`` comes with every frame.

Cost: a link on no network never meets this module (its driver feeds its
gateway directly). A port's frames to its own gateway from its pinned MAC
and address take a two-compare fast path in :meth:`Port.receive`.
"""

import ipaddress
import re

from ..wire.checksum import checksum
from ..wire.dns import RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_PTR, \
    encode_name
from ..wire.ether import ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from ..wire.vnet import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN, VNET_HDR_NONE
from .config import GATEWAY_MAC, parse_cidr

MAC_AGE = 300.0              # seconds a learned (not pinned) MAC or IPv6 address lives idle
MAX_MACS_PER_PORT = 8        # the pinned MAC included
MAX_IP6_PER_PORT = 16        # SLAAC, link-local, temporary addresses of one container
# Frames one port may flood to every other port (broadcast, multicast,
# unknown unicast): a token bucket, so a container's broadcast storm costs
# the others (their kernels, the daemon's loop) a bounded rate; ARP, ND and
# DHCP need a few a second.
FLOOD_RATE = 2000.0          # frames per second, sustained
FLOOD_BURST = 500.0          # frames at once
NAME_TTL = 10                # seconds: links come and go, answers must not linger
# Host numbers of the network the switch never hands out (slirp4netns's
# layout: .2 the gateway, .3 the DNS forwarder; .1 kept free so a habit of
# "the router is .1" does not meet a container there).
RESERVED_HOSTS = (0, 1, 2, 3)
FIRST_HOST = 100             # allocation starts where slirp4netns's single guest sits

# A link or network name: one DNS label (RFC 1123 2.1), compared without case.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Names that mean something else to every resolver.
RESERVED_NAMES = frozenset({"localhost", "local", "arpa", "invalid"})

_ANY4 = bytes(4)
_ANY6 = bytes(16)
_ZERO_MAC = bytes(6)
_ETH_IP = ETH_P_IP.to_bytes(2, "big")
_NDP_NA = 136
_PROTO_ICMPV6 = 58
_UDP_CSUM_OFFSET = 6
_REVERSE4 = ".in-addr.arpa"
_REVERSE6 = ".ip6.arpa"


def check_name(name: str, what: str = "name") -> str:
    """``name`` as the switch stores it (lowercase), or ValueError saying why."""
    low = name.lower()
    if not NAME_RE.match(low):
        raise ValueError(f"{what} {name!r}: use letters, digits and '-' (one DNS label, "
                         "at most 63 characters, not starting or ending with '-')")
    if low in RESERVED_NAMES:
        raise ValueError(f"{what} {name!r} is reserved in DNS; choose another")
    return low


def slaac(prefix8: bytes, mac: bytes) -> bytes:
    """The modified EUI-64 address of ``mac`` in a /64 (RFC 4291 appendix A)."""
    return prefix8 + bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]


_LINK_LOCAL8 = bytes.fromhex("fe80000000000000")


class Port:
    """One link on a network: its gateway, its address, what it owns.

    ``receive(hdr, frame, now, csum_ok)`` takes every frame its container
    sends (``hdr``: the frame's virtio-net header as read, VNET_HDR_NONE
    without one). Frames must not be changed after they are handed in: the
    switch may queue the same object for several TAPs."""

    __slots__ = ("net", "gw", "counters", "name", "ip4", "ipv6", "mac", "macs", "ip6s",
                 "tap_out", "vnet", "gw_mac", "dirty", "owner", "live", "nat_key",
                 "flood_tokens", "flood_at")

    def __init__(self, net, gw, ip4: bytes, name: str | None, vnet: bool):
        self.net = net
        self.gw = gw
        self.counters = gw.counters
        self.name = name
        self.ip4 = ip4
        self.ipv6 = gw.config.enable_ipv6
        self.mac = None            # the pinned MAC: first frame's source, or --macaddress
        self.macs: set = set()     # every MAC this port owns (pinned included)
        self.ip6s: set = set()     # IPv6 addresses this port owns
        self.tap_out = gw.frames_out
        self.vnet = vnet
        self.gw_mac = gw.mac
        self.dirty = False
        self.owner = None          # the host side's handle (its driver), opaque here
        self.live = True           # False once removed: its frames reach its gateway only
        # The first 14 bytes of its IPv4 frames to its gateway (gateway MAC,
        # pinned MAC, EtherType), set when the MAC is pinned: one compare.
        self.nat_key = None
        self.flood_tokens = FLOOD_BURST
        self.flood_at = None

    def receive(self, hdr, frame, now: float, csum_ok: bool = False) -> None:
        # The NAT path: IPv4 from the pinned MAC and the link's own address
        # to its own gateway. Everything else takes the switch's full path.
        if frame[0:14] == self.nat_key and frame[26:30] == self.ip4:
            self.gw.receive_frame(frame, now, csum_ok)
            return
        self.net.forward(self, hdr, frame, now, csum_ok)

    def ip6(self) -> bytes | None:
        """Its SLAAC address in the network's /64 (what its AAAA says), when
        it has IPv6 and its MAC is known."""
        if not self.ipv6 or self.mac is None or self.net.prefix6 is None:
            return None
        return slaac(self.net.prefix6, self.mac)

    def info(self) -> dict:
        """For ``usernet daemon status``: what the network knows of this link."""
        ip6 = self.ip6()
        return {"network": self.net.name, "name": self.name,
                "address": str(ipaddress.IPv4Address(self.ip4)),
                "address6": str(ipaddress.IPv6Address(ip6)) if ip6 else None,
                "mac": self.mac.hex(":") if self.mac else None, "macs": len(self.macs)}


class Network:
    """One named network: its addresses, its ports, its MAC and name tables."""

    def __init__(self, name: str, cidr: str, ipv6_prefix: str | None = None):
        self.name = check_name(name, "network name")
        self.network = net = parse_cidr(cidr)
        self.cidr = str(net)
        base = int(net.network_address)
        self._base = base
        self._mask = int(net.netmask)
        self.gateway_ip = (base + 2).to_bytes(4, "big")
        self.dns_ip = (base + 3).to_bytes(4, "big")
        self.ipv6_prefix = None
        self.prefix6 = None
        self._gw6 = frozenset()
        if ipv6_prefix is not None:
            net6 = ipaddress.IPv6Network(ipv6_prefix, strict=True)
            if net6.prefixlen != 64:
                raise ValueError(f"the IPv6 prefix must be a /64, got /{net6.prefixlen}")
            self.ipv6_prefix = str(net6)
            self.prefix6 = p8 = net6.network_address.packed[:8]
            # The gateway's IPv6 addresses (prefix::2, ::3, fe80::2) and the
            # subnet-router anycast prefix::0: no container's.
            self._gw6 = frozenset((p8 + bytes(8), p8 + bytes(7) + b"\x02", p8 + bytes(7) + b"\x03",
                                   _LINK_LOCAL8 + bytes(7) + b"\x02"))
        self.ports: list[Port] = []
        self.macs: dict = {}       # MAC -> [port, last seen, pinned]
        self.ip4: dict = {}        # bound IPv4 address -> port
        self.reserved4: set = set()  # allocated, not yet bound to a port
        self.ip6: dict = {}        # IPv6 address -> [port, last seen, pinned]
        self.names: dict = {}      # lowercase link name -> port
        self.dirty: list[Port] = []  # ports whose TAP got frames since take_dirty()
        self._next = FIRST_HOST

    # -------------------------------------------------------------- links
    def _candidates(self):
        """Host numbers in allocation order: +100 up to the broadcast
        address, then +4 up to +99 (a /25 has room for both)."""
        last = self.network.num_addresses - 1          # the broadcast address
        yield from range(FIRST_HOST, last)
        yield from range(RESERVED_HOSTS[-1] + 1, min(FIRST_HOST, last))

    def allocate(self) -> bytes:
        """Reserve a free address for a new link (from network+100 up, then
        from +4): pass it to the link's NetConfig (``guest_addr``) and then to
        :meth:`add_port`, or give it back with :meth:`release`. ValueError
        when the network is full."""
        taken = self.ip4.keys() | self.reserved4
        for h in self._candidates():
            ip = (self._base + h).to_bytes(4, "big")
            if ip not in taken:
                self.reserved4.add(ip)
                return ip
        raise ValueError(f"network {self.name} ({self.cidr}) has no free address left")

    def release(self, ip: bytes) -> None:
        """Give back an address :meth:`allocate` reserved but no port took."""
        self.reserved4.discard(ip)

    def config_fields(self, ip: bytes) -> dict:
        """The NetConfig fields a link on this network must have (its
        addresses, one-address DHCP pool, the network as DNS search domain)."""
        fields = {"cidr": self.cidr, "guest_addr": str(ipaddress.IPv4Address(ip)),
                  "dhcp_pool_size": 1, "dns_search": (self.name,)}
        if self.ipv6_prefix is not None:
            fields["ipv6_prefix"] = self.ipv6_prefix
        return fields

    def add_port(self, gw, *, name: str | None = None, vnet: bool = True) -> Port:
        """Plug ``gw`` (a Gateway built with :meth:`config_fields`) into the
        switch; ``name`` is its DNS name here. ValueError (nothing changed)
        when its config does not fit the network, its address or MAC is
        another link's, or the name is taken."""
        cfg = gw.config
        if cfg.network != self.network:
            raise ValueError(f"link's network {cfg.network} is not network {self.name}'s "
                             f"{self.cidr}")
        if cfg.enable_ipv6 and (self.prefix6 is None or cfg.prefix6[:8] != self.prefix6):
            raise ValueError(f"network {self.name} has no IPv6 prefix {cfg.ipv6_prefix}")
        ip = cfg.guest_ip
        if ip in self.ip4:
            raise ValueError(f"{ipaddress.IPv4Address(ip)} is already a link's on network "
                             f"{self.name}")
        if (int.from_bytes(ip, "big") - self._base) in RESERVED_HOSTS:
            raise ValueError(f"{ipaddress.IPv4Address(ip)} is reserved on network {self.name}")
        if name is not None:
            name = check_name(name, "link name")
            if name in self.names:
                raise ValueError(f"the name {name!r} is taken on network {self.name}")
        mac = cfg.guest_mac
        if mac is not None:
            e = self.macs.get(mac)
            if e is not None:
                raise ValueError(f"MAC {mac.hex(':')} is already a link's on network "
                                 f"{self.name}")
        port = Port(self, gw, ip, name, vnet)
        self.reserved4.discard(ip)
        self.ip4[ip] = port
        if name is not None:
            self.names[name] = port
        self.ports.append(port)
        if mac is not None:
            self._pin(port, mac)
        ln = getattr(gw, "local_names", None)
        if ln is not None:
            ln.network = self
        return port

    def remove_port(self, port: Port) -> None:
        """The link is gone: free its address, name, MACs and IPv6 addresses
        for others. Frames queued for its TAP go with its gateway."""
        if port not in self.ports:
            return
        self.ports.remove(port)
        port.live = False
        if self.ip4.get(port.ip4) is port:
            del self.ip4[port.ip4]
        if port.name is not None and self.names.get(port.name) is port:
            del self.names[port.name]
        for mac in port.macs:
            if self.macs.get(mac, (None,))[0] is port:
                del self.macs[mac]
        for ip in port.ip6s:
            if self.ip6.get(ip, (None,))[0] is port:
                del self.ip6[ip]
        port.macs.clear()
        port.ip6s.clear()
        if port.dirty:
            self.dirty.remove(port)
            port.dirty = False
        ln = getattr(port.gw, "local_names", None)
        if ln is not None and ln.network is self:
            ln.network = None

    def take_dirty(self) -> list:
        """The ports whose TAP got frames since the last call (each once)."""
        d = self.dirty
        if not d:
            return d
        self.dirty = []
        for p in d:
            p.dirty = False
        return d

    # ------------------------------------------------------------ forwarding
    def forward(self, port: Port, hdr, frame, now: float, csum_ok: bool) -> None:
        """Everything but the NAT fast path: check the source, then deliver."""
        c = port.counters
        if len(frame) < 14:
            c["switch_drop_runt"] += 1
            return
        if not port.live:
            # The link left the network (it is draining its flows): its
            # frames reach its own gateway, nobody else.
            if frame[0:6] == port.gw_mac:
                port.gw.receive_frame(frame, now, csum_ok)
            else:
                c["switch_drop_port_gone"] += 1
            return
        dst = bytes(frame[0:6])
        src = bytes(frame[6:12])
        if src != port.mac and not self._source_mac(port, src, now, c):
            return
        if not self._source_ip(port, frame, now, c):
            return
        if dst == port.gw_mac:
            port.gw.receive_frame(frame, now, csum_ok)
            return
        if dst[0] & 1:
            # Broadcast/multicast: the sender's own gateway answers what is
            # its (ARP for +2, DHCP, router solicitations); the other
            # containers hear it on their TAPs; other gateways never do.
            c["switch_flooded"] += 1
            port.gw.receive_frame(frame, now, csum_ok)
            self._flood(port, hdr, frame, c, now)
            return
        e = self.macs.get(dst)
        if e is not None:
            if e[2] or now - e[1] < MAC_AGE:
                q = e[0]
                if q is port:
                    # Its own MAC: a container never needs us to hand its
                    # frame back to it.
                    c["switch_drop_hairpin"] += 1
                    return
                c["switch_unicast"] += 1
                self._deliver(q, hdr, frame, c)
                return
            self._forget(self.macs, dst, e)
            c["switch_mac_aged"] += 1
        c["switch_unknown_unicast_flooded"] += 1
        self._flood(port, hdr, frame, c, now)

    def _flood(self, port, hdr, frame, c, now) -> None:
        # The token bucket: refilled by the time since the last flood.
        tokens = port.flood_tokens
        if port.flood_at is not None:
            tokens = min(FLOOD_BURST, tokens + (now - port.flood_at) * FLOOD_RATE)
        port.flood_at = now
        if tokens < 1.0:
            port.flood_tokens = tokens
            c["switch_drop_flood_limit"] += 1
            return
        port.flood_tokens = tokens - 1.0
        for q in self.ports:
            if q is not port:
                self._deliver(q, hdr, frame, c)

    def _deliver(self, q: Port, hdr, frame, c) -> None:
        if not q.vnet and hdr is not VNET_HDR_NONE and (hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM
                                                         or hdr[1]):
            # A TAP without a virtio-net header takes only finished frames:
            # complete a partial checksum here; a TSO super-frame cannot be
            # cut here (the daemon opens every TAP with offloads, so this is
            # a misconfiguration, counted).
            if hdr[1]:
                c["switch_drop_gso_to_plain"] += 1
                return
            frame = _finish_checksum(hdr, frame)
            if frame is None:
                c["switch_drop_bad_vnet_hdr"] += 1
                return
            hdr = VNET_HDR_NONE
        q.tap_out.append((hdr, frame))
        q.counters["switch_delivered"] += 1
        if not q.dirty:
            q.dirty = True
            self.dirty.append(q)

    # ---------------------------------------------------------- anti-spoof
    def _pin(self, port: Port, mac: bytes) -> None:
        """``mac`` is the port's for good; so are its SLAAC and link-local
        IPv6 addresses (whoever learned them meanwhile loses them)."""
        port.mac = mac
        port.nat_key = port.gw_mac + mac + _ETH_IP
        port.macs.add(mac)
        self.macs[mac] = [port, 0.0, True]
        addrs = [slaac(_LINK_LOCAL8, mac)]
        if self.prefix6 is not None:
            addrs.append(slaac(self.prefix6, mac))
        for ip in addrs:
            e = self.ip6.get(ip)
            if e is not None and e[0] is not port:
                e[0].ip6s.discard(ip)
            self.ip6[ip] = [port, 0.0, True]
            port.ip6s.add(ip)

    def _forget(self, table, key, e) -> None:
        """Drop an aged entry from ``table`` and from its port's own set."""
        del table[key]
        owned = e[0].macs if table is self.macs else e[0].ip6s
        owned.discard(key)

    def _shed(self, port: Port, table, owned, now: float) -> None:
        """Forget ``port``'s aged, unpinned entries of ``table``."""
        for key in [k for k in owned if not table[k][2] and now - table[k][1] >= MAC_AGE]:
            del table[key]
            owned.discard(key)

    def _source_mac(self, port: Port, src: bytes, now: float, c) -> bool:
        """A source MAC the port does not own yet: pin it (first frame),
        learn it, or refuse it (another port's, or invalid)."""
        if src[0] & 1 or src == _ZERO_MAC or src == port.gw_mac or src == GATEWAY_MAC:
            c["switch_drop_mac_spoof"] += 1
            return False
        e = self.macs.get(src)
        if e is not None:
            if e[0] is port:
                e[1] = now
                return True
            if e[2] or now - e[1] < MAC_AGE:
                c["switch_drop_mac_spoof"] += 1
                return False
            self._forget(self.macs, src, e)
            c["switch_mac_aged"] += 1
        if port.mac is None:
            self._pin(port, src)
            c["switch_mac_learned"] += 1
            return True
        if len(port.macs) >= MAX_MACS_PER_PORT:
            self._shed(port, self.macs, port.macs, now)
            if len(port.macs) >= MAX_MACS_PER_PORT:
                c["switch_drop_mac_limit"] += 1
                return False
        self.macs[src] = [port, now, False]
        port.macs.add(src)
        c["switch_mac_learned"] += 1
        return True

    def _source_ip(self, port: Port, frame, now: float, c) -> bool:
        """The frame's network-layer source (and ARP sender, ND target) is
        the port's own: its allocated IPv4 address, its IPv6 addresses."""
        n = len(frame)
        off = 14
        etype = (frame[12] << 8) | frame[13]
        if etype == ETH_P_8021Q:
            if n < 18:
                c["switch_drop_runt"] += 1
                return False
            etype = (frame[16] << 8) | frame[17]
            off = 18
        if etype == ETH_P_IP:
            if n < off + 20:
                c["switch_drop_runt"] += 1
                return False
            s = bytes(frame[off + 12:off + 16])
            if s != port.ip4 and s != _ANY4:
                c["switch_drop_ip_spoof"] += 1
                return False
        elif etype == ETH_P_ARP:
            if n < off + 28:
                c["switch_drop_runt"] += 1
                return False
            spa = bytes(frame[off + 14:off + 18])
            if (spa != port.ip4 and spa != _ANY4) or bytes(frame[off + 8:off + 14]) \
                    not in port.macs:
                c["switch_drop_ip_spoof"] += 1
                return False
        elif etype == ETH_P_IPV6:
            if n < off + 40:
                c["switch_drop_runt"] += 1
                return False
            s = bytes(frame[off + 8:off + 24])
            if s != _ANY6 and not self._claim6(port, s, now, c, learn=True):
                return False
            if frame[off + 6] == _PROTO_ICMPV6 and n >= off + 64 and frame[off + 40] == _NDP_NA:
                # A Neighbor Advertisement speaks for its target address:
                # another port's address must not be advertised from here.
                if not self._claim6(port, bytes(frame[off + 48:off + 64]), now, c, learn=False):
                    return False
        return True

    def _claim6(self, port: Port, ip: bytes, now: float, c, learn: bool) -> bool:
        link_local = ip[0] == 0xFE and ip[1] & 0xC0 == 0x80
        if ip in self._gw6 or not (link_local or ip[:8] == self.prefix6):
            c["switch_drop_ip_spoof"] += 1
            return False
        e = self.ip6.get(ip)
        if e is not None:
            if e[0] is port:
                if not e[2]:
                    e[1] = now
                return True
            if e[2] or now - e[1] < MAC_AGE:
                c["switch_drop_ip_spoof"] += 1
                return False
            self._forget(self.ip6, ip, e)
        if not learn:
            return True
        if len(port.ip6s) >= MAX_IP6_PER_PORT:
            self._shed(port, self.ip6, port.ip6s, now)
            if len(port.ip6s) >= MAX_IP6_PER_PORT:
                c["switch_drop_ip6_limit"] += 1
                return False
        self.ip6[ip] = [port, now, False]
        port.ip6s.add(ip)
        c["switch_ip6_learned"] += 1
        return True

    # ----------------------------------------------------------------- DNS
    def resolve(self, qname: str, qtype: int):
        """The network's answer for a DNS question, or None when the name is
        not the network's (the forwarder relays it). An answer is
        ``(rcode, [(rtype, ttl, rdata), ...])``: a link's name (``web``,
        ``web.NETWORK``) gives its A (and AAAA when it has IPv6; no record
        of the type asked is NODATA); other names under ``NETWORK`` are
        NXDOMAIN; ``NETWORK`` itself NODATA; the reverse name of an address
        inside the network its link's name, or NXDOMAIN."""
        name = qname.lower().rstrip(".")
        zone = self.name
        if name == zone:
            return RCODE_NOERROR, []
        if name.endswith("." + zone):
            host = name[:-len(zone) - 1]
            port = self.names.get(host)
            if port is None:
                return RCODE_NXDOMAIN, []
        else:
            port = self.names.get(name)
            if port is None:
                if name.endswith(_REVERSE4):
                    return self._reverse(name, qtype)
                if name.endswith(_REVERSE6):
                    return self._reverse6(name, qtype)
                return None
        answers = []
        if qtype == TYPE_A or qtype == TYPE_ANY:
            answers.append((TYPE_A, NAME_TTL, port.ip4))
        if qtype == TYPE_AAAA or qtype == TYPE_ANY:
            ip6 = port.ip6()
            if ip6 is not None:
                answers.append((TYPE_AAAA, NAME_TTL, ip6))
        return RCODE_NOERROR, answers

    def _reverse(self, name: str, qtype: int):
        labels = name[:-len(_REVERSE4)].split(".")
        if len(labels) != 4 or not all(x.isdigit() and len(x) <= 3 for x in labels):
            return None
        octets = [int(x) for x in reversed(labels)]
        if any(o > 255 for o in octets):
            return None
        ip = bytes(octets)
        if (int.from_bytes(ip, "big") & self._mask) != self._base:
            return None                 # not this network's: upstream's to answer
        port = self.ip4.get(ip)
        if port is None or port.name is None:
            return RCODE_NXDOMAIN, []
        if qtype != TYPE_PTR and qtype != TYPE_ANY:
            return RCODE_NOERROR, []
        return RCODE_NOERROR, [(TYPE_PTR, NAME_TTL, encode_name(f"{port.name}.{self.name}"))]

    def _reverse6(self, name: str, qtype: int):
        """RFC 3596 2.5: 32 nibble labels, least significant first."""
        labels = name[:-len(_REVERSE6)].split(".")
        if self.prefix6 is None or len(labels) != 32 or \
                not all(len(x) == 1 and x in "0123456789abcdef" for x in labels):
            return None
        ip = bytes.fromhex("".join(reversed(labels)))
        if ip[:8] != self.prefix6:
            return None                 # not this network's
        for port in self.ports:
            if port.name is not None and port.ip6() == ip:
                if qtype != TYPE_PTR and qtype != TYPE_ANY:
                    return RCODE_NOERROR, []
                return RCODE_NOERROR, [(TYPE_PTR, NAME_TTL,
                                        encode_name(f"{port.name}.{self.name}"))]
        return RCODE_NXDOMAIN, []

    # ---------------------------------------------------------------- stats
    def info(self) -> dict:
        return {"name": self.name, "subnet": self.cidr, "ipv6_prefix": self.ipv6_prefix,
                "links": len(self.ports), "macs": len(self.macs), "names": sorted(self.names)}


def _finish_checksum(hdr, frame):
    """A copy of ``frame`` with the checksum its virtio-net header left
    partial (NEEDS_CSUM: the field holds the pseudo-header sum) completed,
    for a TAP that cannot be told; None when the header's offsets do not fit."""
    if len(hdr) < VNET_HDR_LEN:
        return None
    start, offset = VNET_HDR.unpack_from(hdr)[4:6]
    at = start + offset
    if at + 2 > len(frame) or start >= len(frame):
        return None
    buf = bytearray(frame)
    cs = checksum(memoryview(buf)[start:])
    if cs == 0 and offset == _UDP_CSUM_OFFSET:
        cs = 0xFFFF                     # RFC 768: a computed zero is sent as all ones
    buf[at] = cs >> 8
    buf[at + 1] = cs & 0xFF
    return bytes(buf)
