"""NetConfig: the virtual network's addresses and limits, derived from --cidr.

Defaults are slirp4netns's, so nothing that depends on them breaks: network
10.0.2.0/24, gateway (the host) .2, DNS forwarder .3, the container .100.
"""

import ipaddress
from dataclasses import dataclass, field

# Limits with named defaults (DESIGN.md section 2: past a limit new flows are
# refused cleanly, old ones keep working).
DEFAULT_CIDR = "10.0.2.0/24"
DEFAULT_MTU = 1500
MIN_MTU = 68
IPV6_MIN_MTU = 1280               # RFC 8200 5: every IPv6 link carries 1280-byte packets
MAX_MTU = 65520
# TCP flows at once (--max-tcp-flows). Each holds one host socket (a file
# descriptor) and TCP_FLOW_COST bytes of usernet's own memory, which the
# memory budget charges: the budget and the fd limit are the real bounds
# (serve.fit_flow_limit lowers this one to what RLIMIT_NOFILE allows, as
# pasta sizes its table by the fd limit; slirp4netns has no cap but the fds).
# The default is what the default budget holds of idle flows (256 MiB / 4 KiB),
# a round number far past what one container needs.
MAX_TCP_FLOWS = 65536
MAX_TCP_FLOWS_CEILING = 1 << 20      # the most --max-tcp-flows accepts (the kernel's nr_open)
# What one TCP flow costs usernet while it holds no data, charged to the
# memory budget from its SYN to its end: the connection and flow objects, the
# table entries, the host socket's asyncio transport and protocol. Measured
# (bench/many_flows.py, RSS with 10,000 idle established flows less RSS
# before, per flow): 3.9 KiB with uvloop. The kernel's socket buffers are not
# usernet's RSS and are not counted.
TCP_FLOW_COST = 4 << 10
MAX_TCP_CONNECTS_IN_FLIGHT = 256
TCP_CONNECT_TIMEOUT = 10.0        # seconds to wait for the host connect() before RST
MAX_UDP_FLOWS = 1024
UDP_IDLE_TIMEOUT = 90.0           # general UDP flows
UDP_DNS_IDLE_TIMEOUT = 10.0       # flows to port 53
MAX_ICMP_FLOWS = 256
ICMP_IDLE_TIMEOUT = 10.0
# IPv4 reassembly (RFC 791 suggests a 15 s timer; a container's fragments
# arrive back to back, so a short one suffices and frees memory sooner).
FRAG_TIMEOUT = 5.0
FRAG_MAX_DATAGRAMS = 64
FRAG_MAX_BYTES = 1 << 20
DNS_QUERY_TIMEOUT = 5.0           # upstream silence this long -> SERVFAIL to the container
DNS_MAX_PENDING = 256             # queries waiting for upstream; past it -> the oldest is
                                  # answered SERVFAIL and the new one takes its place,
DNS_EVICT_AGE = 1.0               # if it has waited this long (else the new one: SERVFAIL)

# A query bigger than this is refused with FORMERR, never relayed: queries
# are a question plus an EDNS record (and at most a TSIG); 4096 is the EDNS
# buffer size RFC 6891 6.2.5 starts from, far above any honest query.
DNS_MAX_QUERY_SIZE = 4096

# The global memory budget (usernet/stack/budget.py): bytes buffered across
# every flow in both directions (stack queues and host write queues),
# reassembly, neighbour holds and DNS in flight, plus TCP_FLOW_COST for every
# TCP flow. Past it new work is refused
# (SYN -> RST, new UDP/echo flow -> dropped and counted, DNS -> SERVFAIL)
# and windows shrink; existing flows keep moving.
DEFAULT_MEMORY_BUDGET = 256 << 20
MIN_MEMORY_BUDGET = 1 << 20
# Past the budget a TCP flow still gets this much window (container -> host)
# while its host peer keeps up, and this much send queue (host -> container):
# it keeps moving, slowly, and what it can hold is bounded by the flow count.
BUDGET_FLOW_WINDOW = 16 * 1024
# TCP flows whose container side may be gone (stack/tcpnat.py, like Linux's
# tcp_fin_timeout and keepalive): a flow the container half-closed (its FIN
# in, the host peer still open) is probed after this much silence from the
# container; an established one after TCP_KEEPALIVE_IDLE. A probe is an ACK
# for old data: a live socket answers with an ACK, a gone one with RST (torn
# down at once); TCP_KEEPALIVE_PROBES unanswered probes TCP_KEEPALIVE_INTVL
# apart tear it down too.
TCP_FIN_TIMEOUT = 60.0
TCP_KEEPALIVE_IDLE = 600.0
TCP_KEEPALIVE_INTVL = 5.0
TCP_KEEPALIVE_PROBES = 3
# A full table evicts before it refuses: the oldest among this many flows
# from the table's old end (a full scan per new flow would make a flood
# quadratic). TCP takes half-closed, closing and unanswered-handshake flows
# at any age, established ones silent for TCP_EVICT_IDLE.
EVICT_SCAN = 64
TCP_EVICT_IDLE = 120.0
# The least MSS accepted from the container (smaller ones are raised to it,
# never above our own link's MSS). RFC 9293 3.7.1 / RFC 1122 3.3.3: every
# IPv4 host takes 576-byte datagrams, i.e. a 536-byte MSS; the container's
# link is the TAP whose MTU usernet chose, so a smaller MSS buys nothing but
# frames (MSS 1 made ~343,000 frames for 48 KB). Linux's floor is 48
# (tcp_min_snd_mss); ours is higher because each frame costs Python ~10x.
TCP_MIN_PEER_MSS = 536

# Addresses the DHCP server may hand out from the container's address on
# (one container per TAP: a few spare for restarts and clones).
DHCP_POOL_SIZE = 16

DEFAULT_IPV6_PREFIX = "fd00::/64"   # slirp4netns's
GATEWAY_MAC = bytes.fromhex("525500000202")  # locally administered; slirp's habit: 52:55:...


def _ip4(addr) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """The virtual network: a network address with its prefix, /1../25 (room for
    .2, .3 and .100). Raises ValueError with a message for the user."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if "/" not in text:
        raise ValueError(f"{text!r}: give a prefix length, e.g. {DEFAULT_CIDR}")
    if not 1 <= net.prefixlen <= 25:
        raise ValueError(f"{text!r}: prefix length must be 1..25")
    return net


def _guest_addr(net: ipaddress.IPv4Network, text: str) -> bytes:
    """The container's address ``text`` inside ``net``: not the network or
    broadcast address, not the gateway (+2) or the DNS forwarder (+3)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if addr not in net:
        raise ValueError(f"{addr} is not inside {net}")
    host = int(addr) - int(net.network_address)
    if addr in (net.network_address, net.broadcast_address) or host in (2, 3):
        raise ValueError(f"{addr} cannot be the container's address in {net} "
                         "(network, broadcast, gateway +2 or DNS +3)")
    return addr.packed


def check_mtu(mtu: int) -> int:
    """``mtu`` if the stack can run a link of that MTU; else ValueError."""
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU must be {MIN_MTU}..{MAX_MTU}, got {mtu}")
    return mtu


@dataclass
class NetConfig:
    """Addresses are 4-byte ``bytes`` (what the parser returns), strings via ``*_str``."""

    cidr: str = DEFAULT_CIDR
    mtu: int = DEFAULT_MTU
    host_loopback: bool = True
    allow_link_local: bool = False     # --allow-link-local: 169.254.0.0/16 reachable on the host side
    gateway_mac: bytes = GATEWAY_MAC
    guest_mac: bytes | None = None     # --macaddress; else learned from the first frame
    enable_dns: bool = True
    enable_dhcp: bool = True
    max_tcp_flows: int = MAX_TCP_FLOWS
    max_tcp_connects: int = MAX_TCP_CONNECTS_IN_FLIGHT
    tcp_connect_timeout: float = TCP_CONNECT_TIMEOUT
    max_udp_flows: int = MAX_UDP_FLOWS
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    udp_dns_idle_timeout: float = UDP_DNS_IDLE_TIMEOUT
    max_icmp_flows: int = MAX_ICMP_FLOWS
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    tcp_fin_timeout: float = TCP_FIN_TIMEOUT
    tcp_keepalive_idle: float = TCP_KEEPALIVE_IDLE
    tcp_keepalive_intvl: float = TCP_KEEPALIVE_INTVL
    tcp_keepalive_probes: int = TCP_KEEPALIVE_PROBES
    frag_max_datagrams: int = FRAG_MAX_DATAGRAMS
    frag_max_bytes: int = FRAG_MAX_BYTES
    dns_max_pending: int = DNS_MAX_PENDING
    enable_ipv6: bool = False
    ipv6_prefix: str = DEFAULT_IPV6_PREFIX
    # The container's address, when not network+100: a link on a named
    # network (usernet/stack/switch.py) gets the one its network allocated,
    # and its DHCP server hands out that one alone (dhcp_pool_size 1).
    guest_addr: str | None = None
    dhcp_pool_size: int = DHCP_POOL_SIZE
    # DHCP's domain search list (option 119): a named network's name, so
    # "web" also finds "web.NETWORK" for a resolver that asks with dots.
    dns_search: tuple = ()
    network: ipaddress.IPv4Network = field(init=False)

    def __post_init__(self):
        net = parse_cidr(self.cidr)
        check_mtu(self.mtu)
        if not 1 <= self.max_tcp_flows <= MAX_TCP_FLOWS_CEILING:
            raise ValueError(f"max_tcp_flows must be 1..{MAX_TCP_FLOWS_CEILING}, "
                             f"got {self.max_tcp_flows}")
        if self.memory_budget < MIN_MEMORY_BUDGET:
            raise ValueError(f"the memory budget must be at least {MIN_MEMORY_BUDGET} bytes, "
                             f"got {self.memory_budget}")
        if self.enable_ipv6 and self.mtu < IPV6_MIN_MTU:
            # The container's kernel turns IPv6 off on such a link anyway.
            raise ValueError(f"IPv6 needs an MTU of at least {IPV6_MIN_MTU}, got {self.mtu}")
        self.network = net
        base = int(net.network_address)
        self.gateway_ip = _ip4(base + 2)
        self.dns_ip = _ip4(base + 3)
        self.guest_ip = _ip4(base + 100)
        if self.guest_addr is not None:
            self.guest_ip = _guest_addr(net, self.guest_addr)
        if not 1 <= self.dhcp_pool_size <= 256:
            raise ValueError(f"the DHCP pool must hold 1..256 addresses, got {self.dhcp_pool_size}")
        self.broadcast_ip = net.broadcast_address.packed
        self.netmask = net.netmask.packed
        self.prefixlen = net.prefixlen
        self._net_int = base
        self._mask_int = int(net.netmask)
        # IPv6 (used when enable_ipv6): the /64, the gateway prefix::2 and the
        # DNS forwarder prefix::3, as slirp4netns numbers them.
        net6 = ipaddress.IPv6Network(self.ipv6_prefix, strict=True)
        if net6.prefixlen != 64:
            raise ValueError(f"the IPv6 prefix must be a /64 (SLAAC), got /{net6.prefixlen}")
        if net6.is_multicast or net6.is_link_local or net6.network_address.is_loopback:
            raise ValueError(f"{self.ipv6_prefix} cannot be the container's network")
        base6 = int(net6.network_address)
        self.network6 = net6
        self.prefix6 = net6.network_address.packed
        self.gateway6 = ipaddress.IPv6Address(base6 + 2).packed
        self.dns6 = ipaddress.IPv6Address(base6 + 3).packed

    # Strings for logs, sockets and the kernel.
    @property
    def gateway_str(self) -> str:
        return str(ipaddress.IPv4Address(self.gateway_ip))

    @property
    def dns_str(self) -> str:
        return str(ipaddress.IPv4Address(self.dns_ip))

    @property
    def guest_str(self) -> str:
        return str(ipaddress.IPv4Address(self.guest_ip))

    @property
    def mss(self) -> int:
        return self.mtu - 40

    def in_network(self, addr: bytes) -> bool:
        return len(addr) == 4 and (int.from_bytes(addr, "big") & self._mask_int) == self._net_int
