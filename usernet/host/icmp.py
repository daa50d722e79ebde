"""ICMP echo toward the host: ping sockets, a raw-socket fallback, or a clear no.

Linux lets an unprivileged user send echo requests through "ping sockets"
(``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``) when the user's group is in
``net.ipv4.ping_group_range``. One such socket per echo flow (the gateway
keys flows by container, identifier, destination and expires them when idle).
Quirk: the kernel overwrites the identifier of what we send with the socket's
"port", and delivers only replies carrying it; the gateway puts the
container's own identifier back on the replies.

When ping sockets are not permitted (EACCES) and we run as root, one shared
raw ICMP socket is used instead: requests go out with the container's
identifier and replies are matched on (source address, identifier). When
neither is possible, usernet says why once in the log and answers each echo
with ICMP "communication administratively prohibited", never silence.

IPv6 (a flow whose host address has a colon) is the same with
``AF_INET6``/``IPPROTO_ICMPV6``: echo request 128, reply 129; the same
``ping_group_range`` governs IPv6 ping sockets. The raw fallback is a second
raw socket, opened on the first IPv6 flow; a raw ICMPv6 socket delivers the
message without the IPv6 header, and the kernel fills in the checksum of
what it sends (RFC 3542 3.1).
"""

import logging
import socket

from ..stack.events import IcmpClose, IcmpOpen, IcmpSend
from ..wire.checksum import checksum
from ..wire.icmp import (ICMP, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP_ECHO_REPLY,
                         ICMP_ECHO_REQUEST, ICMP_LEN)
from .outbound import bind_outbound, is_host_local
from .udp import recv_batch

log = logging.getLogger("usernet")

RX_BATCH = 64


def _echo_request(ident: int, seq: int, data: bytes) -> bytes:
    """An echo request with its checksum (raw sockets send it as is)."""
    hdr = ICMP.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    c = checksum(hdr + data)
    return ICMP.pack(ICMP_ECHO_REQUEST, 0, c, ident, seq) + data


class IcmpHost:
    def __init__(self, driver):
        self.driver = driver
        self.mode = None          # "ping", "raw" or "none", decided on first use
        self.socks = {}           # flow id -> ping socket
        self.flows = {}           # flow id -> (host_addr, ident)
        self.refused = set()      # flow ids refused by policy (the host's own addresses)
        self.raw = None
        self.raw6 = None          # the IPv6 raw socket, opened on first use in raw mode
        self.raw_index = {}       # (host_addr, ident) -> flow id

    def prepare(self) -> None:
        """Choose between ping sockets and a raw socket now, if not yet
        chosen (a raw socket needs CAP_NET_RAW at creation: the sandbox
        calls this before dropping it)."""
        if self.mode is not None:
            return
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            s.close()
            self.mode = "ping"
            return
        except OSError as e:
            why = e.strerror
        try:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            bind_outbound(self.driver.outbound, self.raw)
            self.raw.setblocking(False)
            self.driver.loop.add_reader(self.raw.fileno(), self._on_raw)
            self.mode = "raw"
            log.info("ICMP echo: ping sockets not permitted (%s); using a raw socket", why)
            # Now too, while CAP_NET_RAW is still ours (the sandbox drops it).
            self._open_raw6()
        except OSError as e2:
            self.mode = "none"
            log.warning("ICMP echo to the outside is unavailable: ping sockets: %s "
                        "(net.ipv4.ping_group_range does not include our group); raw socket: %s. "
                        "Echo requests will be answered with 'administratively prohibited'.",
                        why, e2.strerror)

    def _open_raw6(self) -> bool:
        """The IPv6 raw socket of raw mode; False if it cannot be had."""
        if self.raw6 is not None:
            return True
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        except OSError as e:
            log.debug("raw ICMPv6 socket: %s", e)
            return False
        try:
            bind_outbound(self.driver.outbound, s)
            s.setblocking(False)
        except OSError as e:
            s.close()
            log.debug("raw ICMPv6 socket: %s", e)
            return False
        self.raw6 = s
        self.driver.loop.add_reader(s.fileno(), self._on_raw6)
        return True

    def open(self, ev: IcmpOpen) -> None:
        d = self.driver
        self.prepare()
        fid, host, ident = ev.fid, ev.host, ev.ident
        if not d.gw.config.host_loopback and is_host_local(host):
            # --disable-host-loopback: one of the host's own addresses (see
            # nat.py). Its echoes are answered "administratively prohibited".
            d.counters["policy_refused_host_local"] += 1
            self.refused.add(fid)
            return
        self.flows[fid] = (host, ident)
        v6 = ":" in host
        if self.mode == "ping":
            s = None
            try:
                if v6:
                    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
                else:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
                bind_outbound(d.outbound, s)
                s.setblocking(False)
                s.connect((host, 0))
            except OSError as e:
                # No socket for this flow: its echoes are answered with
                # "administratively prohibited" (see send).
                if s is not None:
                    s.close()
                d.counters["icmp_host_socket_error"] += 1
                log.debug("ping socket to %s: %s", host, e)
                return
            self.socks[fid] = s
            d.loop.add_reader(s.fileno(), self._on_ping, fid, s,
                              ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY)
        elif self.mode == "raw":
            if v6 and self.raw6 is None and not self._open_raw6():
                d.counters["icmp_host_socket_error"] += 1
                return
            # Two containers' flows with the same (address, identifier)
            # would share replies; the newest owns the key.
            self.raw_index[(host, ident)] = fid

    def send(self, ev: IcmpSend) -> None:
        d = self.driver
        fid, seq, data = ev.fid, ev.seq, ev.data
        info = self.flows.get(fid)
        if info is None and fid in self.refused:
            d.gw.icmp_host_unavailable(fid, seq, data, d.now())
            return
        if info is None:
            d.counters["drop_icmp_no_host_socket"] += 1
            return
        host, ident = info
        try:
            if self.mode == "ping":
                s = self.socks.get(fid)
                if s is None:
                    d.gw.icmp_host_unavailable(fid, seq, data, d.now())
                    return
                # The kernel fills in identifier and checksum of what a
                # ping socket sends.
                s.send(ICMP.pack(ICMP6_ECHO_REQUEST if ":" in host else ICMP_ECHO_REQUEST,
                                 0, 0, 0, seq) + data)
            elif self.mode == "raw":
                if ":" in host:
                    if self.raw6 is None:
                        d.gw.icmp_host_unavailable(fid, seq, data, d.now())
                        return
                    # The kernel computes an ICMPv6 raw socket's checksum.
                    self.raw6.sendto(ICMP.pack(ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + data,
                                     (host, 0))
                else:
                    self.raw.sendto(_echo_request(ident, seq, data), (host, 0))
            else:
                d.gw.icmp_host_unavailable(fid, seq, data, d.now())
                return
            d.counters["icmp_echo_host_tx"] += 1
        except OSError as e:
            # No route (e.g. IPv6 on a host without it): say so at once
            # rather than let the container's ping wait.
            d.counters["drop_icmp_host_send_error"] += 1
            log.debug("echo to %s: %s", host, e)
            d.gw.icmp_host_unavailable(fid, seq, data, d.now())

    def close_flow(self, ev: IcmpClose) -> None:
        d = self.driver
        fid = ev.fid
        self.refused.discard(fid)
        info = self.flows.pop(fid, None)
        if info is not None and self.raw_index.get(info) == fid:
            del self.raw_index[info]
        s = self.socks.pop(fid, None)
        if s is not None:
            d.loop.remove_reader(s.fileno())
            s.close()

    def _on_ping(self, fid, s, reply_type) -> None:
        d = self.driver
        for pkt in recv_batch(lambda: s.recv(65535), d.counters, "icmp_host_recv_error",
                              "ping socket recv", RX_BATCH):
            # A ping socket hands us the ICMP message without the IP header.
            if len(pkt) < ICMP_LEN:
                continue
            itype, _code, _c, _ident, seq = ICMP.unpack_from(pkt, 0)
            if itype == reply_type:
                d.gw.icmp_host_reply(fid, seq, pkt[ICMP_LEN:], d.now())
        d.flush()

    def _on_raw(self) -> None:
        d = self.driver
        for pkt, (src, _) in recv_batch(lambda: self.raw.recvfrom(65535), d.counters,
                                        "icmp_host_recv_error", "raw ICMP recv", RX_BATCH):
            # A raw socket includes the IP header.
            ihl = (pkt[0] & 15) * 4 if pkt else 0
            if len(pkt) < ihl + ICMP_LEN:
                continue
            itype, _code, _c, ident, seq = ICMP.unpack_from(pkt, ihl)
            if itype != ICMP_ECHO_REPLY:
                continue
            fid = self.raw_index.get((src, ident))
            if fid is not None:
                d.gw.icmp_host_reply(fid, seq, pkt[ihl + ICMP_LEN:], d.now())
        d.flush()

    def _on_raw6(self) -> None:
        d = self.driver
        for pkt, addr in recv_batch(lambda: self.raw6.recvfrom(65535), d.counters,
                                    "icmp_host_recv_error", "raw ICMPv6 recv", RX_BATCH):
            # No IPv6 header on a raw ICMPv6 socket; the address may carry a
            # scope ("fe80::1%lo"), never for the global/loopback ones we use.
            if len(pkt) < ICMP_LEN:
                continue
            itype, _code, _c, ident, seq = ICMP.unpack_from(pkt, 0)
            if itype != ICMP6_ECHO_REPLY:
                continue
            fid = self.raw_index.get((addr[0], ident))
            if fid is not None:
                d.gw.icmp_host_reply(fid, seq, pkt[ICMP_LEN:], d.now())
        d.flush()

    def close(self) -> None:
        loop = self.driver.loop
        for s in self.socks.values():
            loop.remove_reader(s.fileno())
            s.close()
        self.socks.clear()
        if self.raw is not None:
            loop.remove_reader(self.raw.fileno())
            self.raw.close()
            self.raw = None
        if self.raw6 is not None:
            loop.remove_reader(self.raw6.fileno())
            self.raw6.close()
            self.raw6 = None
