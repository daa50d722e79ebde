"""Host sockets for TCP flows: asyncio Protocols that feed the gateway.

One :class:`FlowProtocol` per flow. It is an ``asyncio.BufferedProtocol``:
the loop reads the host socket straight into one preallocated buffer that
every flow shares (``READ_MAX`` bytes; each read is consumed before the
callback returns, so one buffer serves them all), and that view goes to
``gw.tcp_host_data``, whose send queue copies what it takes: no bytes
object per read. It answers how much it took; the rest is copied into
``pending`` (at most one read's worth) with the transport's reading paused
until the gateway says ``TcpResume``. Data from the container
is written with ``transport.write``; the transport's write buffer size is
reported back (``gw.tcp_host_backlog``, once per driver flush for every flow
written to) so the window advertised to the container shrinks when the host
side is slow, and reopens on ``resume_writing``. Memory per flow is therefore bounded by the stack's
buffers plus one read (``READ_MAX``) plus the transport's high-water mark.

Half-close: ``eof_received`` returns True so the transport stays open for
writing (the container may still send); the container's FIN becomes
``write_eof()`` (``shutdown(SHUT_WR)``). A container RST becomes an abortive
close (``SO_LINGER`` 0, so the host peer sees a reset, not a clean FIN).
"""

import asyncio
import errno
import fcntl
import logging
import socket
import struct
import termios

from ..stack.events import (TcpAbort, TcpCancel, TcpClose, TcpConnect, TcpConnectDns, TcpData,
                            TcpInboundConnected, TcpInboundRefused, TcpPause, TcpResume,
                            TcpShutdown)
from ..stack.tcp import RCV_BUF
from .dns import DnsTcpSession
from .outbound import is_host_local, local_addr

log = logging.getLogger("usernet")

# The transport's write buffer limits. The high-water mark must stay at or
# below half the flow's receive buffer: the flow's window is rcv_buf minus
# the backlog last reported, and it reopens only by at least min(rcv_buf/2,
# MSS) at a time (receiver SWS avoidance). The backlog is reported after each
# write and on pause/resume_writing, never as the buffer drains quietly; so a
# backlog able to shut the window must be one that paused the transport, or
# nothing would ever report its drain and the window would stay shut (a
# deadlock seen with 64 KiB offloaded segments when the high-water mark was
# the whole 256 KiB: a backlog just under it, then only zero-window probes
# answered "zero" forever).
WRITE_HIGH_WATER = RCV_BUF // 2
WRITE_LOW_WATER = 64 * 1024
assert WRITE_LOW_WATER < WRITE_HIGH_WATER <= RCV_BUF // 2
_LINGER_RST = struct.pack("ii", 1, 0)
# One read from a host socket, at most: big reads mean fewer calls per byte
# toward the container (its send queue takes up to SND_BUF at once).
READ_MAX = 256 * 1024

_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "refused",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTUNREACH: "unreachable",
    errno.ETIMEDOUT: "timeout",
    errno.EACCES: "denied",
    errno.EPERM: "denied",
    errno.EADDRNOTAVAIL: "unreachable",
    # Out of file descriptors (ours or the system's): the flow limit was set
    # past RLIMIT_NOFILE, or UDP and the rest took the room (serve.py).
    errno.EMFILE: "fd_limit",
    errno.ENFILE: "fd_limit",
}


def abort_with_rst(transport) -> None:
    """Close so the peer gets a RST: SO_LINGER {on, 0} then close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


class FlowProtocol(asyncio.BufferedProtocol):
    # One per host socket, so slots (no instance dict): what an idle flow
    # costs counts ten thousand times (usernet/stack/config.py TCP_FLOW_COST).
    __slots__ = ("host", "fid", "transport", "pending", "paused", "eof_pending", "eof_seen",
                 "closed")

    def __init__(self, host: "TcpHost", fid: int):
        self.host = host
        self.fid = fid
        self.transport = None
        self.pending = None        # bytes the flow could not take yet
        self.paused = False        # the gateway asked us to stop reading
        self.eof_pending = False   # host EOF arrived while data was pending
        self.eof_seen = False      # host EOF already passed to the gateway
        self.closed = False

    # asyncio callbacks
    def connection_made(self, transport):
        # No TCP_NODELAY here: both uvloop's and asyncio's TCP transports set
        # it themselves when they are made; asking again cost every
        # connection a getsockname (the "socket" extra info) and a setsockopt.
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    def get_buffer(self, sizehint):
        return self.host.read_buf

    def buffer_updated(self, nbytes):
        d = self.host.driver
        data = self.host.read_buf[:nbytes]
        n = d.gw.tcp_host_data(self.fid, data, d.now())
        if n < nbytes:
            # The shared buffer is reused by the next read: keep a copy.
            self.pending = bytes(data[n:])
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
        d.flush()

    def eof_received(self):
        d = self.host.driver
        if self.pending:
            self.eof_pending = True
        else:
            self._eof()
            d.flush()
        return True  # keep the write side open: half-close

    def _eof(self):
        if not self.eof_seen:
            self.eof_seen = True
            d = self.host.driver
            d.gw.tcp_host_eof(self.fid, d.now())

    def connection_lost(self, exc):
        if self.closed:
            return
        self.closed = True
        self.host.protocols.pop(self.fid, None)
        d = self.host.driver
        if exc is not None:
            # ECONNRESET and friends: the host peer reset us; pass it on.
            d.gw.tcp_host_reset(self.fid, d.now())
        else:
            self._eof()
        d.flush()

    def pause_writing(self):
        # Called from inside transport.write (the buffer crossed the
        # high-water mark): mark the flow; the driver reports its backlog
        # once the events in hand are done, not in the middle of them.
        self.host.written.add(self.fid)

    def resume_writing(self):
        # The buffer drained below the low-water mark, from the event loop:
        # report at once, or the window stays shut.
        d = self.host.driver
        d.gw.tcp_host_backlog(self.fid, self.transport.get_write_buffer_size(), d.now())
        d.flush()

    # gateway events
    def resume(self):
        d = self.host.driver
        data = self.pending
        if data:
            n = d.gw.tcp_host_data(self.fid, data, d.now())
            self.pending = data[n:] if n < len(data) else None
            if self.pending:
                return
        if self.eof_pending:
            self.eof_pending = False
            self._eof()
            return
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()


class TcpHost:
    """Owns the host side of every TCP flow: connects, protocols, closes.

    One method per event kind (the driver's table maps each event type to
    one of them). Data from the container is written at once; the backlog
    of every flow written to is reported to the gateway once per flush
    (:meth:`report_backlog`), zero included: the flow counts delivered bytes
    against its window until told they left."""

    def __init__(self, driver):
        self.driver = driver
        self.protocols: dict[int, FlowProtocol] = {}
        self.connecting: dict[int, asyncio.Task] = {}
        self.written: set[int] = set()      # flows whose backlog is due to be reported
        # Every flow's socket reads land here (FlowProtocol.get_buffer).
        self.read_buf = memoryview(bytearray(READ_MAX))

    # ------------------------------------------------------------ events
    def connect(self, ev: TcpConnect) -> None:
        d = self.driver
        if not d.gw.config.host_loopback and is_host_local(ev.host):
            # --disable-host-loopback: the host's own addresses are its
            # loopback by another name (nat.py: the stack cannot know them).
            d.counters["policy_refused_host_local"] += 1
            d.gw.tcp_refused(ev.fid, d.now(), "denied")
            return
        self.connecting[ev.fid] = d.loop.create_task(self._connect(ev.fid, ev.host, ev.port))

    def connect_dns(self, ev: TcpConnectDns) -> None:
        # TCP DNS to the forwarder address ends here, in a session that
        # reads DNS messages and relays them one by one (host/dns.py), never
        # a byte stream spliced to the upstream resolver.
        d = self.driver
        if d.dns is None:
            d.gw.tcp_refused(ev.fid, d.now(), "refused")
            return
        d.counters["dns_tcp_session_open"] += 1
        self.protocols[ev.fid] = DnsTcpSession(self, d.dns, ev.fid)
        d.gw.tcp_connected(ev.fid, d.now())

    def cancel(self, ev: TcpCancel) -> None:
        t = self.connecting.pop(ev.fid, None)
        if t is not None:
            t.cancel()

    def _open(self, fid: int):
        proto = self.protocols.get(fid)
        return proto if proto is not None and not proto.closed else None

    def data(self, ev: TcpData) -> None:
        proto = self._open(ev.fid)
        if proto is None:
            self.driver.counters["tcp_host_data_after_close"] += 1
            return
        proto.transport.write(ev.data)
        self.written.add(ev.fid)

    def shutdown(self, ev: TcpShutdown) -> None:
        proto = self._open(ev.fid)
        if proto is not None and proto.transport.can_write_eof():
            proto.transport.write_eof()

    def abort(self, ev: TcpAbort) -> None:
        proto = self._open(ev.fid)
        if proto is not None:
            self.forget(proto)
            abort_with_rst(proto.transport)

    def close_flow(self, ev: TcpClose) -> None:
        t = self.connecting.pop(ev.fid, None)
        if t is not None:
            t.cancel()
        proto = self.protocols.pop(ev.fid, None)
        if proto is not None and not proto.closed:
            proto.closed = True
            proto.transport.close()   # flushes what is buffered, then FIN

    def pause(self, ev: TcpPause) -> None:
        proto = self._open(ev.fid)
        if proto is not None and not proto.paused:
            proto.paused = True
            proto.transport.pause_reading()

    def resume(self, ev: TcpResume) -> None:
        proto = self._open(ev.fid)
        if proto is not None:
            proto.resume()

    def inbound_connected(self, ev: TcpInboundConnected) -> None:
        # Only a port forward's protocol (host/forward.py) opens inbound flows.
        proto = self._open(ev.fid)
        if proto is not None:
            proto.guest_connected()

    def inbound_refused(self, ev: TcpInboundRefused) -> None:
        proto = self._open(ev.fid)
        if proto is not None:
            proto.guest_refused(ev.timed_out)

    # ---------------------------------------------------------- plumbing
    def report_backlog(self, now: float) -> bool:
        """Tell the gateway the write backlog of every flow written to since
        the last report. True if there was anything to report."""
        written = self.written
        if not written:
            return False
        self.written = set()
        gw = self.driver.gw
        protocols = self.protocols
        for fid in written:
            proto = protocols.get(fid)
            if proto is not None and not proto.closed:
                gw.tcp_host_backlog(fid, proto.transport.get_write_buffer_size(), now)
        return True

    def forget(self, proto: FlowProtocol) -> None:
        """Mark a protocol closed and drop it, before the flow's ``TcpClose``
        arrives (which would close gracefully, with a FIN)."""
        proto.closed = True
        if self.protocols.get(proto.fid) is proto:
            del self.protocols[proto.fid]

    def backlog(self) -> int:
        """Bytes still waiting in host sockets' write buffers."""
        return sum(p.transport.get_write_buffer_size() for p in self.protocols.values()
                   if not p.closed and p.transport is not None)

    def unsent(self) -> int:
        """Bytes not yet acknowledged by host peers: write buffers plus each
        socket's kernel send queue (SIOCOUTQ)."""
        n = 0
        for p in self.protocols.values():
            if p.closed or p.transport is None:
                continue
            n += p.transport.get_write_buffer_size()
            sock = p.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                        b"\0\0\0\0"))[0]
                except (OSError, ValueError):
                    pass
        return n

    def adopt(self, fid: int, proto: FlowProtocol) -> None:
        """Register a protocol created elsewhere (a port forward's accepted socket)."""
        self.protocols[fid] = proto

    async def _connect(self, fid: int, host: str, port: int) -> None:
        d = self.driver
        loop = d.loop
        try:
            _, proto = await loop.create_connection(lambda: FlowProtocol(self, fid), host, port,
                                                    local_addr=local_addr(d.outbound, host))
        except asyncio.CancelledError:
            return
        except OSError as e:
            self.connecting.pop(fid, None)
            reason = _CONNECT_ERRORS.get(e.errno, "error")
            log.debug("connect %s:%d failed: %s", host, port, e)
            d.gw.tcp_refused(fid, d.now(), reason)
            d.flush()
            return
        if self.connecting.pop(fid, None) is None:
            # The flow died while we were connecting (container gave up).
            abort_with_rst(proto.transport)
            return
        self.protocols[fid] = proto
        d.gw.tcp_connected(fid, d.now())
        d.flush()

    def close_all(self) -> None:
        for t in self.connecting.values():
            t.cancel()
        self.connecting.clear()
        for proto in list(self.protocols.values()):
            if not proto.closed:
                # Still open after the exit drain: a reset, so the host peer
                # cannot mistake a cut-off transfer for a complete one.
                proto.closed = True
                abort_with_rst(proto.transport)
        self.protocols.clear()
