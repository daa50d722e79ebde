"""The DHCP server on the virtual network (RFC 2131, options RFC 2132).

Theory of operation
-------------------
The TAP is a point-to-point link with one container behind it, so this is
the only DHCP server the client can ever hear, and it acts as the
authoritative one. It owns a small pool of addresses starting at the
configured guest address (network + 100 by default: 10.0.2.100, what
slirp4netns hands out), ``pool_size`` long (16 by default), and one lease
table with at most one entry per pool address, so the table is bounded by
construction.

Addresses are tied to the client's MAC (``chaddr``), not to option 61
(client identifier): the MAC is what stays put when a different DHCP client
(dhclient, systemd-networkd, udhcpc, each with its own client-id scheme) runs
in the same container, and "the same MAC always gets the same address" is
the promise. A MAC keeps its association after its lease expires or is
released; the address goes to another MAC only when the pool has nothing
never-used left, and then the longest-expired address is taken first.

The server is sans-IO: :meth:`DhcpServer.handle` takes a parsed
:class:`~usernet.wire.dhcp.DhcpMessage` and ``now`` (seconds, any monotonic
clock) and returns the reply payload or ``None``. The gateway wraps the
reply in UDP (67 -> 68), IPv4 (from the server address) and Ethernet, sent
where :func:`reply_destination` says (RFC 2131 4.1). A unicast reply goes
to an address the client has not configured yet: the gateway must address
the Ethernet frame to ``chaddr`` directly and not ARP for it.

Every decision bumps a named counter in the shared ``collections.Counter``:
``dhcp_discover``, ``dhcp_offer``, ``dhcp_request``, ``dhcp_ack``,
``dhcp_nak``, ``dhcp_release``, ``dhcp_decline``, ``dhcp_inform``,
``dhcp_pool_exhausted``, ``dhcp_request_other_server`` and the drops
``dhcp_drop_bad`` (did not parse; also ``drop_<reason>``),
``dhcp_drop_not_request``, ``dhcp_drop_no_type``, ``dhcp_drop_relayed``,
``dhcp_drop_bad_chaddr``, ``dhcp_drop_bad_type``, ``dhcp_drop_bad_request``.

Not done, on purpose: relay agents (no relay can exist on a TAP: relayed
messages are dropped), BOOTP without the DHCP message type, static
reservations, option 82.
"""

from collections import Counter
from typing import NamedTuple

from ..wire import ParseError
from ..wire.dhcp import (
    BOOTREQUEST, DHCPACK, DHCPDECLINE, DHCPDISCOVER, DHCPINFORM, DHCPNAK, DHCPOFFER,
    DHCPRELEASE, DHCPREQUEST, OPT_BROADCAST, OPT_DNS, OPT_DOMAIN_NAME, OPT_DOMAIN_SEARCH,
    OPT_LEASE_TIME, OPT_MESSAGE, OPT_MESSAGE_TYPE, OPT_MTU, OPT_ROUTER, OPT_SERVER_ID,
    OPT_SUBNET_MASK, OPT_T1, OPT_T2, ZERO_IP, DhcpMessage, build_dhcp, encode_domain_search,
    parse_dhcp,
)

DEFAULT_LEASE_TIME = 86400    # seconds; slirp4netns and most home routers use a day
DEFAULT_POOL_SIZE = 16        # one container per TAP; a few spare for restarts/clones
OFFER_HOLD = 60               # seconds an offered address stays reserved (RFC 2131 4.3.1)
DECLINE_HOLD = 600            # seconds a declined address is kept out of the pool (4.3.3)

BROADCAST_IP = b"\xff\xff\xff\xff"
BROADCAST_MAC = b"\xff" * 6

# Lease states.
OFFERED = "offered"
BOUND = "bound"
RELEASED = "released"
DECLINED = "declined"


class DhcpConfig(NamedTuple):
    """What :class:`DhcpServer` serves; :meth:`from_net` derives it from the
    stack's ``NetConfig``."""
    gateway_ip: bytes
    dns_ip: bytes
    guest_ip: bytes
    prefixlen: int = 24
    mtu: int = 1500
    pool_size: int = DEFAULT_POOL_SIZE
    lease_time: int = DEFAULT_LEASE_TIME
    dns_search: tuple = ()

    @classmethod
    def from_net(cls, net) -> "DhcpConfig":
        return cls(net.gateway_ip, net.dns_ip, net.guest_ip, net.prefixlen, net.mtu,
                   net.dhcp_pool_size, dns_search=tuple(net.dns_search))


class Lease(NamedTuple):
    """A snapshot of one lease-table entry (``mac`` is None once declined)."""
    ip: bytes
    mac: bytes | None
    state: str
    expires: float


class DhcpReply(NamedTuple):
    payload: bytes
    dst_ip: bytes
    dst_mac: bytes


class _Entry:
    __slots__ = ("mac", "state", "expires")

    def __init__(self, mac, state, expires):
        self.mac = mac
        self.state = state
        self.expires = expires


def _ip(value: int) -> bytes:
    return value.to_bytes(4, "big")


def reply_destination(request: DhcpMessage, reply: bytes) -> tuple[bytes, bytes]:
    """``(dst_ip, dst_mac)`` for ``reply`` to ``request`` (RFC 2131 4.1).

    giaddr is always zero here (relayed requests are dropped), so: a DHCPNAK
    is broadcast; if the client has an address (ciaddr, when renewing or
    after INFORM) the reply is unicast to it; else if the client set the
    BROADCAST flag (it cannot receive unicast before it is configured) the
    reply is broadcast; else it is unicast to yiaddr at chaddr.
    """
    msg = parse_dhcp(reply)
    if msg.msg_type == DHCPNAK:
        return BROADCAST_IP, BROADCAST_MAC
    if request.ciaddr != ZERO_IP:
        return request.ciaddr, request.chaddr
    if request.broadcast or msg.yiaddr == ZERO_IP:
        return BROADCAST_IP, BROADCAST_MAC
    return msg.yiaddr, request.chaddr


class DhcpServer:
    def __init__(self, config: DhcpConfig, counters: Counter | None = None):
        self.counters = counters if counters is not None else Counter()
        self.server_ip = bytes(config.gateway_ip)
        self.dns_ip = bytes(config.dns_ip)
        mask = (0xFFFFFFFF << (32 - config.prefixlen)) & 0xFFFFFFFF
        self.netmask = _ip(mask)
        self.mtu = config.mtu
        self.lease_time = int(config.lease_time)
        self.dns_search = tuple(config.dns_search)
        size = config.pool_size

        gateway = int.from_bytes(self.server_ip, "big")
        network = gateway & mask
        broadcast = network | (~mask & 0xFFFFFFFF)
        self.broadcast_ip = _ip(broadcast)
        first = int.from_bytes(config.guest_ip, "big")
        reserved = {network, broadcast, gateway, int.from_bytes(self.dns_ip, "big")}
        # The pool is clipped to the subnet and never holds the network,
        # broadcast, gateway or DNS address, whatever the configuration says.
        self.pool = [a for a in range(first, first + size)
                     if a & mask == network and a not in reserved]
        self._pool_set = set(self.pool)
        self._table: dict[int, _Entry] = {}     # pool address -> entry
        self._by_mac: dict[bytes, int] = {}     # MAC -> its address (kept after expiry)

        self._common_options = [
            (OPT_SUBNET_MASK, self.netmask),
            (OPT_ROUTER, self.server_ip),
            (OPT_DNS, self.dns_ip),
            (OPT_BROADCAST, self.broadcast_ip),
            (OPT_MTU, self.mtu.to_bytes(2, "big")),
        ]
        if self.dns_search:
            self._common_options.append((OPT_DOMAIN_NAME, self.dns_search[0].encode("ascii")))
            self._common_options.append((OPT_DOMAIN_SEARCH, encode_domain_search(self.dns_search)))

    # --- entry points -----------------------------------------------------

    def handle_payload(self, payload, now: float) -> DhcpReply | None:
        """Parse a UDP payload sent to port 67 and handle it; the gateway's one call."""
        try:
            msg = parse_dhcp(payload)
        except ParseError as e:
            self.counters["dhcp_drop_bad"] += 1
            self.counters["drop_" + e.reason] += 1
            return None
        reply = self.handle(msg, now)
        if reply is None:
            return None
        dst_ip, dst_mac = reply_destination(msg, reply)
        return DhcpReply(reply, dst_ip, dst_mac)

    def handle(self, msg: DhcpMessage, now: float) -> bytes | None:
        """The reply payload to ``msg``, or None when RFC 2131 says stay silent."""
        c = self.counters
        if msg.op != BOOTREQUEST:
            c["dhcp_drop_not_request"] += 1
            return None
        if msg.msg_type is None:
            c["dhcp_drop_no_type"] += 1
            return None
        if msg.giaddr != ZERO_IP:
            c["dhcp_drop_relayed"] += 1
            return None
        if msg.chaddr[0] & 1 or msg.chaddr == b"\0" * 6:
            # A multicast or zero MAC cannot be a client's address.
            c["dhcp_drop_bad_chaddr"] += 1
            return None
        t = msg.msg_type
        if t == DHCPDISCOVER:
            return self._discover(msg, now)
        if t == DHCPREQUEST:
            return self._request(msg, now)
        if t == DHCPRELEASE:
            self._release(msg, now)
            return None
        if t == DHCPDECLINE:
            self._decline(msg, now)
            return None
        if t == DHCPINFORM:
            return self._inform(msg)
        c["dhcp_drop_bad_type"] += 1
        return None

    def leases(self, now: float) -> list[Lease]:
        """The live (unexpired) entries, for stats and tests."""
        return [Lease(_ip(a), e.mac, e.state, e.expires)
                for a, e in sorted(self._table.items()) if e.expires > now]

    def address_of(self, mac: bytes) -> bytes | None:
        """The address associated with ``mac`` (live or expired), if any."""
        a = self._by_mac.get(bytes(mac))
        return None if a is None else _ip(a)

    # --- the lease table --------------------------------------------------

    def _available(self, addr: int, mac: bytes, now: float) -> bool:
        """May ``mac`` have ``addr``? In the pool, and unused, ours, or expired."""
        if addr not in self._pool_set:
            return False
        e = self._table.get(addr)
        return e is None or e.mac == mac or e.expires <= now

    def _choose(self, msg: DhcpMessage, now: float) -> int | None:
        # RFC 2131 4.3.1 order: the client's current or previous binding, the
        # address it asks for if free, then a new one from the pool.
        mac = msg.chaddr
        addr = self._by_mac.get(mac)
        if addr is not None:
            return addr
        if msg.requested_ip is not None:
            want = int.from_bytes(msg.requested_ip, "big")
            if self._available(want, mac, now):
                return want
        for a in self.pool:
            if a not in self._table:
                return a
        # Nothing never-used is left: take the longest-expired address, so
        # other MACs keep their sticky address as long as possible.
        expired = [(e.expires, a) for a, e in self._table.items() if e.expires <= now]
        return min(expired)[1] if expired else None

    def _assign(self, addr: int, mac: bytes, state: str, expires: float) -> None:
        e = self._table.get(addr)
        if e is not None and e.mac is not None and e.mac != mac:
            self._by_mac.pop(e.mac, None)          # reclaimed from an expired lease
        old = self._by_mac.get(mac)
        if old is not None and old != addr:
            # One address per MAC: moving frees the old one outright.
            self._table.pop(old, None)
        self._table[addr] = _Entry(mac, state, expires)
        self._by_mac[mac] = addr

    # --- message handlers -------------------------------------------------

    def _discover(self, msg: DhcpMessage, now: float) -> bytes | None:
        self.counters["dhcp_discover"] += 1
        addr = self._choose(msg, now)
        if addr is None:
            self.counters["dhcp_pool_exhausted"] += 1
            return None
        e = self._table.get(addr)
        if not (e is not None and e.mac == msg.chaddr and e.state == BOUND and e.expires > now):
            # Reserve it briefly; a client's live binding is left alone.
            self._assign(addr, msg.chaddr, OFFERED, now + OFFER_HOLD)
        self.counters["dhcp_offer"] += 1
        return self._reply(msg, DHCPOFFER, _ip(addr), lease=True)

    def _request(self, msg: DhcpMessage, now: float) -> bytes | None:
        # RFC 2131 4.3.2 tells the client's state from the fields present.
        self.counters["dhcp_request"] += 1
        if msg.server_id is not None:
            # SELECTING: the client answers one server's offer.
            if msg.server_id != self.server_ip:
                self.counters["dhcp_request_other_server"] += 1
                addr = self._by_mac.get(msg.chaddr)
                e = self._table.get(addr) if addr is not None else None
                if e is not None and e.state == OFFERED:
                    e.expires = now                # give the reservation back
                return None
            want = msg.requested_ip
        elif msg.requested_ip is not None:
            want = msg.requested_ip                # INIT-REBOOT
        elif msg.ciaddr != ZERO_IP:
            want = msg.ciaddr                      # RENEWING / REBINDING
        else:
            want = None
        if want is None:
            self.counters["dhcp_drop_bad_request"] += 1
            return None
        addr = int.from_bytes(want, "big")
        if not self._available(addr, msg.chaddr, now):
            # Wrong network, outside the pool, or someone else's live lease.
            # As the only server on the link we NAK rather than stay silent,
            # so the client restarts at DISCOVER at once.
            self.counters["dhcp_nak"] += 1
            return self._nak(msg, "requested address not available")
        self._assign(addr, msg.chaddr, BOUND, now + self.lease_time)
        self.counters["dhcp_ack"] += 1
        return self._reply(msg, DHCPACK, want, lease=True)

    def _release(self, msg: DhcpMessage, now: float) -> None:
        # RFC 2131 4.3.4: mark the address free but remember the client.
        self.counters["dhcp_release"] += 1
        if msg.server_id is not None and msg.server_id != self.server_ip:
            return
        addr = int.from_bytes(msg.ciaddr, "big")
        e = self._table.get(addr)
        if e is not None and e.mac == msg.chaddr:
            e.state = RELEASED
            e.expires = now

    def _decline(self, msg: DhcpMessage, now: float) -> None:
        # RFC 2131 4.3.3: the client found the address in use; keep it out
        # of the pool for a while and forget this client's association.
        self.counters["dhcp_decline"] += 1
        if msg.requested_ip is None:
            return
        addr = int.from_bytes(msg.requested_ip, "big")
        e = self._table.get(addr)
        if e is not None and e.mac == msg.chaddr:
            self._by_mac.pop(msg.chaddr, None)
            self._table[addr] = _Entry(None, DECLINED, now + DECLINE_HOLD)

    def _inform(self, msg: DhcpMessage) -> bytes:
        # RFC 2131 4.3.5: configuration only; no yiaddr, no lease times.
        self.counters["dhcp_inform"] += 1
        self.counters["dhcp_ack"] += 1
        return self._reply(msg, DHCPACK, ZERO_IP, lease=False)

    # --- building replies -------------------------------------------------

    def _reply(self, msg: DhcpMessage, mtype: int, yiaddr: bytes, lease: bool) -> bytes:
        options = [(OPT_MESSAGE_TYPE, bytes((mtype,))), (OPT_SERVER_ID, self.server_ip)]
        if lease:
            # T1 = 0.5 and T2 = 0.875 of the lease: RFC 2131 4.4.5's defaults.
            options += [
                (OPT_LEASE_TIME, self.lease_time.to_bytes(4, "big")),
                (OPT_T1, (self.lease_time // 2).to_bytes(4, "big")),
                (OPT_T2, (self.lease_time * 7 // 8).to_bytes(4, "big")),
            ]
        options += self._common_options
        # RFC 2131 table 3: ciaddr echoed in ACK (0 in OFFER), flags and
        # giaddr copied from the request.
        ciaddr = msg.ciaddr if mtype == DHCPACK else ZERO_IP
        return build_dhcp(msg.xid, msg.chaddr, options, yiaddr=yiaddr, ciaddr=ciaddr,
                          flags=msg.flags, giaddr=msg.giaddr)

    def _nak(self, msg: DhcpMessage, why: str) -> bytes:
        options = [(OPT_MESSAGE_TYPE, bytes((DHCPNAK,))), (OPT_SERVER_ID, self.server_ip),
                   (OPT_MESSAGE, why.encode("ascii"))]
        return build_dhcp(msg.xid, msg.chaddr, options, flags=msg.flags, giaddr=msg.giaddr)
