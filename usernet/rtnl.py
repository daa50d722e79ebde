"""The few rtnetlink requests usernet makes, spoken directly over AF_NETLINK.

Theory of operation
===================

Configuring the TAP inside the container's namespace takes five kinds of
request: set a link's flags (up), MTU and MAC (RTM_NEWLINK); add an address
(RTM_NEWADDR); add a default route (RTM_NEWROUTE); read a link's MAC
(RTM_GETLINK); and, for ``--outbound-addr IFNAME``, list addresses
(RTM_GETADDR dump). A general netlink library does all of this and far more,
but importing one costs more CPU than the rest of usernet's start-up put
together (it was most of ``usernet run -- true``), so these messages are
built here with ``struct``, as ``linux/netlink.h`` and ``linux/rtnetlink.h``
lay them out:

    nlmsghdr   len:u32 type:u16 flags:u16 seq:u32 pid:u32
    ifinfomsg  family:u8 pad:u8 type:u16 index:i32 flags:u32 change:u32
    ifaddrmsg  family:u8 prefixlen:u8 flags:u8 scope:u8 index:u32
    rtmsg      family dst_len src_len tos table protocol scope type: u8 each, flags:u32
    rtattr     len:u16 type:u16 value, padded to 4 bytes

All in host byte order. Each request asks for an acknowledgement
(NLM_F_ACK); the kernel answers NLMSG_ERROR with error 0 for success or
``-errno``, raised here as :class:`NetlinkError` (an OSError, so its
``strerror`` reads like ip(8)'s "RTNETLINK answers: File exists").

A :class:`Rtnl` socket talks to the network namespace its creator was in
when it was made: make it after ``setns``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

# linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what ip(8) and slirp4netns leave on a route they add
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

# linux/if_link.h, linux/if_addr.h, linux/rtnetlink.h attribute types
IFLA_ADDRESS = 1
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5

IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")
_NLMSGERR = struct.Struct("=i")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


class NetlinkError(OSError):
    """The kernel refused a request: ``errno`` and ``strerror`` as for any OSError."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to a 4-byte boundary."""
    n = _RTATTR.size + len(value)
    return _RTATTR.pack(n, kind) + value + b"\0" * (_align(n) - n)


def parse_attrs(data: bytes, offset: int = 0) -> dict:
    """{type: value bytes} of the rtattrs in ``data[offset:]`` (the first of each type)."""
    out = {}
    while offset + _RTATTR.size <= len(data):
        n, kind = _RTATTR.unpack_from(data, offset)
        if n < _RTATTR.size:
            break
        out.setdefault(kind & 0x3FFF, bytes(data[offset + _RTATTR.size:offset + n]))
        offset += _align(n)
    return out


def _addr_bytes(address: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, socket.inet_pton(family, address)


class Rtnl:
    """An rtnetlink socket in the current network namespace (a context manager)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ transport
    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, self.seq, 0) + body)
        return self.seq

    def _replies(self, seq: int):
        """Yield ``(type, payload)`` of each reply to ``seq`` until DONE or the ACK;
        raises NetlinkError on a negative acknowledgement."""
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                n, kind, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                if n < _NLMSGHDR.size:
                    raise NetlinkError(errno.EPROTO, "bad netlink message length")
                payload = data[off + _NLMSGHDR.size:off + n]
                off += _align(n)
                if rseq != seq:
                    continue  # not ours (a late reply to an earlier request)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(payload)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                    return
                yield kind, payload

    def request(self, kind: int, body: bytes, flags: int = 0) -> None:
        """Send one request and wait for its acknowledgement."""
        for _ in self._replies(self._send(kind, NLM_F_REQUEST | NLM_F_ACK | flags, body)):
            pass

    def dump(self, kind: int, body: bytes) -> list:
        """Every ``(type, payload)`` of a dump request."""
        return list(self._replies(self._send(kind, NLM_F_REQUEST | NLM_F_DUMP, body)))

    # ------------------------------------------------------------ requests
    def link_set(self, index: int, *, up: bool | None = None, mtu: int | None = None,
                 mac: bytes | None = None) -> None:
        """``ip link set dev INDEX [up|down] [mtu N] [address MAC]``."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if mtu is not None:
            body += attr(IFLA_MTU, _U32.pack(mtu))
        if mac is not None:
            body += attr(IFLA_ADDRESS, bytes(mac))
        self.request(RTM_NEWLINK, body)

    def link_mac(self, index: int) -> bytes:
        """The link's hardware address."""
        self._send(RTM_GETLINK, NLM_F_REQUEST, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))
        for kind, payload in self._replies(self.seq):
            if kind == RTM_NEWLINK:
                mac = parse_attrs(payload, _IFINFOMSG.size).get(IFLA_ADDRESS)
                if mac:
                    return mac
        raise NetlinkError(errno.ENODEV, f"link {index} has no hardware address")

    def addr_add(self, index: int, address: str, prefixlen: int) -> None:
        """``ip addr add ADDRESS/PREFIXLEN dev INDEX`` (no broadcast, as ip(8) without ``brd``)."""
        family, raw = _addr_bytes(address)
        body = _IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        if family == socket.AF_INET:
            body += attr(IFA_LOCAL, raw)
        body += attr(IFA_ADDRESS, raw)
        self.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def route_add_default(self, gateway: str, index: int, proto: int = RTPROT_BOOT) -> None:
        """``ip route add default via GATEWAY dev INDEX proto PROTO`` in the main table."""
        family, raw = _addr_bytes(gateway)
        body = (_RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                + attr(RTA_GATEWAY, raw) + attr(RTA_OIF, _U32.pack(index)))
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def addresses(self, family: int, index: int | None = None) -> list[str]:
        """``family`` addresses (IFA_ADDRESS, as text) of link ``index`` (or of all links)."""
        out = []
        for kind, payload in self.dump(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0)):
            if kind != RTM_NEWADDR:
                continue
            fam, _plen, _flags, _scope, idx = _IFADDRMSG.unpack_from(payload)
            if fam != family or (index is not None and idx != index):
                continue
            raw = parse_attrs(payload, _IFADDRMSG.size).get(IFA_ADDRESS)
            if raw:
                out.append(socket.inet_ntop(family, raw))
        return out
