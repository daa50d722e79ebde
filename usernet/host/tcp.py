"""Host sockets for TCP flows: asyncio Protocols that feed the gateway.

One :class:`FlowProtocol` per flow. It is an ``asyncio.BufferedProtocol``:
the loop reads the host socket straight into one preallocated buffer that
every flow shares (``READ_MAX`` bytes; each read is consumed before the
callback returns, so one buffer serves them all), and that view goes to
``gw.tcp_host_data``, whose send queue copies what it takes: no bytes
object per read. Each read asks for what the flow's send queue takes now,
in whole segments toward the container (``gw.tcp_read_size``): a bulk stream
is cut into whole TSO frames, a read is rarely more than the queue takes, and
one that filled its buffer tells the stack more follows (``more``). The
gateway answers how much it took; the rest is copied into
``pending`` (at most one read's worth) with the transport's reading paused
until the gateway says ``TcpResume``. Data from the container
is written with ``transport.write``; the transport's write buffer size is
reported back (``gw.tcp_host_backlog``, once per driver flush for every flow
written to) so the window advertised to the container shrinks when the host
side is slow, and reopens on ``resume_writing``. Memory per flow is therefore bounded by the stack's
buffers plus one read (``READ_MAX``) plus the transport's high-water mark.

Connect: the socket is made and connected here, not by ``create_connection``:
to a loopback or local peer the connect is over before ``connect()`` returns,
so the gateway hears ``tcp_connected`` in the same pass as the SYN (see
:meth:`TcpHost.connect`); the loop's transport is made around the socket
right after, with :class:`EarlyTransport` standing in until it arrives.

Half-close: ``eof_received`` returns True so the transport stays open for
writing (the container may still send); the container's FIN becomes
``write_eof()`` (``shutdown(SHUT_WR)``). A container RST becomes an abortive
close (``SO_LINGER`` 0, so the host peer sees a reset, not a clean FIN).
"""

import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import termios

from ..stack.events import (TcpAbort, TcpCancel, TcpClose, TcpConnect, TcpConnectDns, TcpData,
                            TcpInboundConnected, TcpInboundRefused, TcpPause, TcpResume,
                            TcpShutdown)
from ..stack.tcp import RCV_BUF
from ..stack.tcpnat import NO_READ_ADVICE
from .dns import DnsTcpSession
from .outbound import bind_outbound, is_host_local

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
READ_VIEWS_MAX = 64      # read sizes whose view of the read buffer is kept (TcpHost.read_view)

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


class EarlyTransport:
    """Stands in for a flow's transport between the host connect finishing
    and the event loop's transport arriving (``connection_made``).

    A connect to a loopback or local address completes inside ``connect()``
    itself, so the flow is answered (SYN-ACK) in the same pass as the SYN;
    the loop's transport is made around the connected socket on the next
    pass. Whatever the gateway asks meanwhile is recorded here and replayed
    on the real transport, in order (:meth:`FlowProtocol.connection_made`).
    The event loop runs callbacks it was handed before it polls again, so in
    practice nothing arrives in between; this keeps it correct if it does."""

    __slots__ = ("ops", "size", "reading")

    def __init__(self):
        self.ops = []          # ("write", data) / ("write_eof",) / ("close",) / ("abort",)
        self.size = 0          # bytes written, held here
        self.reading = True

    def write(self, data) -> None:
        data = bytes(data)
        self.size += len(data)
        self.ops.append(("write", data))

    def write_eof(self) -> None:
        self.ops.append(("write_eof",))

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.ops.append(("close",))

    def abort(self) -> None:
        self.ops.append(("abort",))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.size

    def get_extra_info(self, name, default=None):
        return default

    def replay(self, transport) -> None:
        """Do on ``transport`` what was asked of this stand-in."""
        if not self.reading:
            transport.pause_reading()
        for op in self.ops:
            if op[0] == "write":
                transport.write(op[1])
            elif op[0] == "write_eof":
                if transport.can_write_eof():
                    transport.write_eof()
            elif op[0] == "close":
                transport.close()
            else:
                abort_with_rst(transport)
        self.ops = []


class FlowProtocol(asyncio.BufferedProtocol):
    # One per host socket, so slots (no instance dict): what an idle flow
    # costs counts ten thousand times (usernet/stack/config.py TCP_FLOW_COST).
    __slots__ = ("host", "fid", "transport", "pending", "paused", "eof_pending", "eof_seen",
                 "closed", "rbuf", "advice")

    def __init__(self, host: "TcpHost", fid: int):
        self.host = host
        self.fid = fid
        self.transport = None
        self.pending = None        # bytes the flow could not take yet
        self.paused = False        # the gateway asked us to stop reading
        self.eof_pending = False   # host EOF arrived while data was pending
        self.eof_seen = False      # host EOF already passed to the gateway
        self.closed = False
        self.rbuf = None           # this flow's reads land here (get_buffer)
        # The stack's read advice (gw.tcp_read_advice): its rsize is the
        # read size while not negative, kept fresh by the stack.
        self.advice = NO_READ_ADVICE

    # asyncio callbacks
    def connection_made(self, transport):
        # No TCP_NODELAY here: both uvloop's and asyncio's TCP transports set
        # it themselves when they are made; asking again cost every
        # connection a getsockname (the "socket" extra info) and a setsockopt.
        early = self.transport
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        if early is not None and early.__class__ is EarlyTransport:
            early.replay(transport)
            if early.size and not self.closed:
                # Its backlog moved from the stand-in to the real buffer.
                self.host.written.add(self.fid)
                self.host.driver.flush()

    def get_buffer(self, sizehint):
        # As much as the flow's send queue takes now, in whole segments
        # toward the container (gw.tcp_read_size): a read that fills it is
        # that many TSO frames and no runt, and nothing is held back. The
        # stack's advice says it without a call while it holds (nearly
        # always: it changes only when the queue nears full or the state
        # changes); then the last buffer is the one if its size is right.
        n = self.advice.rsize
        if n < 0:
            if self.fid is None:
                n = 0
            else:
                self.advice, n = self.host.driver.gw.tcp_read_advice(self.fid, READ_MAX)
        buf = self.rbuf
        if buf is not None and len(buf) == n:
            return buf
        buf = self.rbuf = self.host.read_view(n) if n else self.host.read_buf
        return buf

    def buffer_updated(self, nbytes):
        d = self.host.driver
        buf = self.rbuf
        if buf is None:
            buf = self.host.read_buf
        data = buf[:nbytes]
        # A read that filled the buffer: the socket likely holds more, which
        # the loop reads at once; the stack may hold a partial segment for it.
        n = d.gw.tcp_host_data(self.fid, data, d.loop.time(), nbytes == len(buf))
        if n < nbytes:
            # The shared buffer is reused by the next read: keep a copy.
            self.pending = bytes(data[n:])
            # Pause even if already marked paused: a pause asked of the
            # stand-in transport (EarlyTransport) is replayed inside
            # connection_made, where uvloop ignores it (it starts reading
            # after connection_made returns). pause_reading is idempotent.
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
        # fid -> (create_connection coroutine, socket): connected sockets
        # the event loop is still wrapping in a transport (_wrap_step).
        self.wrapping: dict[int, tuple] = {}
        self.written: set[int] = set()      # flows whose backlog is due to be reported
        self._written_spare: set[int] = set()
        # Every flow's socket reads land here (FlowProtocol.get_buffer).
        self.read_buf = memoryview(bytearray(READ_MAX))
        self._read_views: dict = {}         # read size -> read_buf[:size]

    def read_view(self, n: int):
        """The first ``n`` bytes of the shared read buffer (at most all of
        it); the views of whole-segment sizes are kept (a handful of sizes)."""
        view = self._read_views.get(n)
        if view is None:
            view = self.read_buf[:n]
            if len(self._read_views) < READ_VIEWS_MAX:
                self._read_views[n] = view
        return view

    # ------------------------------------------------------------ events
    def connect(self, ev: TcpConnect) -> None:
        d = self.driver
        if not d.gw.config.host_loopback and is_host_local(ev.host):
            # --disable-host-loopback: the host's own addresses are its
            # loopback by another name (nat.py: the stack cannot know them).
            d.counters["policy_refused_host_local"] += 1
            d.gw.tcp_refused(ev.fid, d.now(), "denied")
            return
        fid = ev.fid
        try:
            # proto IPPROTO_TCP, not 0: asyncio's transport sets TCP_NODELAY
            # only on sockets that say so (uvloop's sets it on any).
            sock = socket.socket(socket.AF_INET6 if ":" in ev.host else socket.AF_INET,
                                 socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 socket.IPPROTO_TCP)
        except OSError as e:
            self._refused(fid, ev.host, ev.port, e.errno, e)
            return
        addr = (ev.host, ev.port)
        try:
            bind_outbound(d.outbound, sock)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                # A loopback or local peer has already answered by now: a
                # second connect() tells (EISCONN) without a trip through the
                # event loop; EALREADY means a real network is on the way.
                err = sock.connect_ex(addr)
        except OSError as e:
            err = e.errno
        if err in (0, errno.EISCONN):
            self._connected_now(fid, sock)
        elif err in (errno.EALREADY, errno.EINPROGRESS):
            self.connecting[fid] = d.loop.create_task(self._connect(fid, sock, ev.host, ev.port))
        else:
            sock.close()
            self._refused(fid, ev.host, ev.port, err, os.strerror(err) if err else "no error")

    def _refused(self, fid: int, host: str, port: int, err, why) -> None:
        d = self.driver
        log.debug("connect %s:%d failed: %s", host, port, why)
        d.gw.tcp_refused(fid, d.now(), _CONNECT_ERRORS.get(err, "error"))

    def _connected_now(self, fid: int, sock: socket.socket) -> None:
        """The connect is done: tell the gateway at once (its SYN-ACK leaves
        in this flush) and have the event loop wrap the socket in a
        transport (the protocol's stand-in holds what comes before it)."""
        d = self.driver
        proto = FlowProtocol(self, fid)
        proto.transport = EarlyTransport()
        self.protocols[fid] = proto
        coro = d.loop.create_connection(lambda: proto, sock=sock)
        self.wrapping[fid] = (coro, sock)
        if self._wrap_step(fid, coro, proto, sock, first=True):
            d.gw.tcp_connected(fid, d.now())
        else:
            # The loop would not take the socket: the container has not been
            # answered yet, so it gets what a failed connect gets.
            d.gw.tcp_refused(fid, d.now(), "error")

    def _wrap_step(self, fid: int, coro, proto: "FlowProtocol", sock: socket.socket,
                   first: bool = False) -> bool:
        """Run ``create_connection(sock=...)`` to its next wait, here and now.

        Its first step makes the transport at once; an asyncio Task would run
        it only on the loop's next pass, after the loop has polled again, so
        the container's first bytes would always find the stand-in. The
        coroutine then waits for the transport's ``connection_made`` (one
        future) and finishes; this steps it as a Task would, without one."""
        try:
            fut = coro.send(None)
        except StopIteration:
            self.wrapping.pop(fid, None)
            return True
        except BaseException as e:
            self.wrapping.pop(fid, None)
            log.debug("wrapping the socket of flow %d failed: %r", fid, e)
            sock.close()
            if first:
                self.forget(proto)
            else:
                self._wrap_failed(proto)
            if not isinstance(e, Exception):
                raise
            return False
        if fut is None:         # a bare yield: go on at the next pass
            self.driver.loop.call_soon(self._wrap_step, fid, coro, proto, sock)
        else:
            fut.add_done_callback(lambda _f: self._wrap_step(fid, coro, proto, sock))
        return True

    def _wrap_failed(self, proto: "FlowProtocol") -> None:
        # The loop could not take the socket after all: to the container the
        # flow was open, so this is a reset.
        if not proto.closed:
            self.forget(proto)
            d = self.driver
            d.gw.tcp_host_reset(proto.fid, d.now())
            d.flush()

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
        proto = self.protocols.get(ev.fid)      # self._open, inline: once per write
        if proto is None or proto.closed:
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
        if len(written) == 1:
            # One flow (request/response traffic): taken out first, so a flow
            # written to while it is reported waits for the next report, as
            # below.
            fid = written.pop()
            proto = self.protocols.get(fid)
            if proto is not None and not proto.closed:
                self.driver.gw.tcp_host_backlog(fid, proto.transport.get_write_buffer_size(), now)
            return True
        # Two sets take turns (no set made per flush); a flow written to
        # while these are reported goes into the other one.
        self.written = self._written_spare
        backlog = self.driver.gw.tcp_host_backlog
        protocols = self.protocols
        for fid in written:
            proto = protocols.get(fid)
            if proto is not None and not proto.closed:
                backlog(fid, proto.transport.get_write_buffer_size(), now)
        written.clear()
        self._written_spare = written
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

    async def _connect(self, fid: int, sock: socket.socket, host: str, port: int) -> None:
        """A connect still in progress: wait for the socket to be writable,
        then read its outcome (SO_ERROR) and wrap it in a transport."""
        d = self.driver
        loop = d.loop
        fd = sock.fileno()
        try:
            ready = loop.create_future()
            loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_writer(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            _, proto = await loop.create_connection(lambda: FlowProtocol(self, fid), sock=sock)
        except asyncio.CancelledError:
            sock.close()
            return
        except OSError as e:
            sock.close()
            self.connecting.pop(fid, None)
            self._refused(fid, host, port, e.errno, e)
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
        for coro, sock in self.wrapping.values():
            coro.close()    # the loop drops its half-made transport
            sock.close()
        self.wrapping.clear()
        for proto in list(self.protocols.values()):
            if not proto.closed:
                # Still open after the exit drain: a reset, so the host peer
                # cannot mistake a cut-off transfer for a complete one.
                proto.closed = True
                abort_with_rst(proto.transport)
        self.protocols.clear()
