"""Port forwarding into the container (``-p`` and the API's ``add_hostfwd``).

Theory of operation
-------------------
A forward is a host listener on ``HOST_ADDR:HOST_PORT`` (IPv4 or IPv6)
whose connections or datagram flows are carried to the container's
``GUEST_ADDR:GUEST_PORT`` (IPv4 or, with ``--enable-ipv6``, IPv6: either
family of listener reaches either family of guest address). A forward on
an IPv6 host address with no guest address given goes to the container's
IPv6 address when IPv6 is on, resolved at each new connection or client
(:meth:`Gateway.guest_ip6`: the SLAAC address of its MAC), so it follows
the container; an IPv6 listener is ``IPV6_V6ONLY``, so ``[::]:P`` and
``0.0.0.0:P`` can both be published. usernet plays the *client* toward the container:
its own TCP opens the connection, with the same flow control and
backpressure as outbound flows (the same :class:`~usernet.host.tcp.FlowProtocol`
moves the bytes).

TCP, one accepted connection:

1. The listener is an ``asyncio`` server on a socket bound synchronously (so
   a port in use is an error at once, for ``-p`` and for the API alike).
   Its protocol factory makes a :class:`ForwardProtocol`; in
   ``connection_made`` the host socket's reading is **paused** and
   ``gw.tcp_open_inbound`` sends the SYN into the container (retransmitted
   per RFC 6298 by the stack). The protocol is registered with
   ``TcpHost.adopt`` so data/close events find it like any other flow.
2. ``TcpInboundConnected`` (the container's SYN-ACK; ``TcpHost`` calls the
   protocol's ``guest_connected``): resume reading; from here on the flow
   is an ordinary one.
3. ``TcpInboundRefused`` (the container answered RST: nothing listens, or
   did not answer within the stack's connect timeout: ``timed_out``): the
   host-side connection is closed at once with an abortive reset
   (``SO_LINGER`` 0), so the client
   fails fast with ``ECONNRESET`` instead of hanging. The kernel had already
   completed the client's handshake (we only learn about the container after
   ``accept``), so a reset is the best a plain listener can say; with
   ``only_when_bound`` the listener exists only while the container has the
   port bound, and the client gets a true ``ECONNREFUSED``.

UDP: one unconnected socket per forward. A datagram from a new client
address opens a gateway flow (``gw.udp_inbound``); a :class:`_UdpReturn` is
registered for that flow id with ``UdpHost.register`` so the container's
replies go back with ``sendto(client)`` from the listener's socket. Idle
expiry is the gateway's (``UdpClose`` -> ``_UdpReturn.close``).

The client's address. By default the container sees the client's real
address and port (like slirp4netns with ``--enable-sandbox`` off and pasta),
so logs and access control inside work; the stack's address policy maps
the ones the container could not answer (host loopback, addresses of the
virtual network) to the gateway's, and the stack picks a port when the
4-tuple would clash with a flow (:meth:`Gateway.tcp_open_inbound`). With
``real_client_addr=False`` everything comes from the gateway with a port
the stack picks.

``only_when_bound``: every ``BIND_POLL`` seconds the container's
``/proc/PID/net/{tcp,tcp6,udp,udp6}`` (PID is any process in its network
namespace) says which ports are bound; a forward's host socket is open only
while its guest port is bound on the guest address or the wildcard.

Counters (``fwd_*``, in the gateway's shared Counter, so ``stats`` shows
them) name every decision and drop. The slirp4netns API on top of this
(``add_hostfwd`` ...) is the top layer's: ``usernet.api.ForwarderBackend``.
"""

import ipaddress
import logging
import socket

from .procnet import read_bound_ports
from .tcp import FlowProtocol, abort_with_rst

log = logging.getLogger("usernet")

LISTEN_BACKLOG = 128
UDP_RX_BATCH = 64            # datagrams drained per wake-up of a UDP listener
UDP_RX_MAX = 65535
BIND_POLL = 1.0              # seconds between /proc/PID/net reads (only_when_bound)
AUTO6 = "auto6"              # guest_addr of a forward to the container's IPv6 address, whatever it is


class PublishError(OSError):
    """A forward could not be set up (port in use, bad address): one clear line."""

    def __str__(self):
        return self.args[0] if self.args else "cannot publish"


def _bind(proto: str, host_addr: str, host_port: int) -> socket.socket:
    """A bound (and for TCP listening) non-blocking socket; OSError as is."""
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    v6 = ":" in host_addr
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, typ)
    try:
        if v6:
            # Only IPv6: "[::]:P" must not take IPv4's "0.0.0.0:P" too.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto == "tcp":
            # Rebinding right after a previous listener (ours, or a restart)
            # must not wait for TIME_WAIT; Linux still refuses two listeners.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_addr, host_port))
        if proto == "tcp":
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ForwardProtocol(FlowProtocol):
    """The host side of one forwarded TCP connection. Nothing reaches the
    container before it has accepted the connection (its SYN-ACK)."""

    def __init__(self, fwd: "_TcpForward"):
        super().__init__(fwd.owner.driver.tcp, None)
        self.fwd = fwd

    def connection_made(self, transport):
        super().connection_made(transport)
        # Nothing may go to the container before its SYN-ACK. On asyncio's
        # loop this pause holds the bytes in the host socket. uvloop ignores
        # a pause asked inside connection_made (it starts reading once this
        # returns), so there the first reads go to the connection's send
        # buffer: TcpConnection.send takes them in SYN_SENT, up to snd_buf,
        # and they leave after the handshake; when the buffer is full,
        # buffer_updated pauses the socket for real and the client's window
        # closes, as it should.
        self.paused = True
        transport.pause_reading()
        self.fwd.owner._tcp_accepted(self.fwd, self)

    def guest_connected(self) -> None:
        """The container accepted (``TcpInboundConnected``): let the client's bytes flow."""
        owner = self.fwd.owner
        owner.connecting.discard(self.fid)
        owner.counters["fwd_tcp_guest_connected"] += 1
        self.resume()

    def guest_refused(self, timed_out: bool) -> None:
        """The container answered RST (nothing listens on the port) or never
        answered: reset the client at once."""
        owner = self.fwd.owner
        owner.connecting.discard(self.fid)
        owner.counters["fwd_tcp_guest_timeout" if timed_out else "fwd_tcp_guest_refused"] += 1
        self.host.forget(self)
        abort_with_rst(self.transport)

    def connection_lost(self, exc):
        self.fwd.owner.connecting.discard(self.fid)
        super().connection_lost(exc)


class _Forward:
    """One forward: its spec, its id, and its host socket (open or not)."""

    proto = ""

    def __init__(self, owner, fid, host_addr, host_port, guest_addr, guest_port):
        self.owner = owner
        self.id = fid
        self.host_addr = host_addr
        self.host_port = host_port
        self.guest_addr = guest_addr
        # None: the container's IPv6 address, looked up when needed (AUTO6).
        self.guest_ip = None if guest_addr == AUTO6 else ipaddress.ip_address(guest_addr).packed
        self.guest_port = guest_port
        self.removed = False

    def target_ip(self) -> bytes | None:
        """The guest address to open toward now (None: IPv6 guest not yet known)."""
        if self.guest_ip is not None:
            return self.guest_ip
        return self.owner.gw.guest_ip6()

    def entry(self) -> dict:
        ip = self.target_ip()
        guest = str(ipaddress.ip_address(ip)) if ip is not None else self.guest_addr
        return {"id": self.id, "proto": self.proto, "host_addr": self.host_addr,
                "host_port": self.host_port, "guest_addr": guest,
                "guest_port": self.guest_port, "listening": self.listening}

    def name(self) -> str:
        return (f"{self.proto} {self.host_addr}:{self.host_port} -> "
                f"{self.guest_addr}:{self.guest_port}")


class _TcpForward(_Forward):
    proto = "tcp"

    def __init__(self, *a):
        super().__init__(*a)
        self.server = None      # asyncio Server while listening
        self._starting = None   # the create_server task, until it is done
        self._sock = None       # bound socket not yet owned by a Server

    @property
    def listening(self) -> bool:
        return self.server is not None or self._starting is not None

    def open(self) -> None:
        """Bind now (errors surface synchronously); serve from the next loop turn."""
        sock = _bind("tcp", self.host_addr, self.host_port)
        self._sock = sock
        loop = self.owner.driver.loop
        # The socket already listens: connections that arrive before the
        # server starts wait in the kernel's backlog, none is lost.
        self._starting = loop.create_task(
            loop.create_server(lambda: ForwardProtocol(self), sock=sock, backlog=LISTEN_BACKLOG))
        self._starting.add_done_callback(self._started)

    def _started(self, task) -> None:
        if self._starting is not task:
            return
        self._starting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.owner.counters["fwd_tcp_listen_error"] += 1
            log.warning("forward %s: cannot serve: %s", self.name(), exc)
            self._close_sock()
            return
        self._sock = None        # the Server owns it now
        self.server = task.result()

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Stop listening. Connections already accepted keep working, as
        closing a listening socket leaves its accepted sockets alone."""
        if self._starting is not None:
            t, self._starting = self._starting, None
            t.cancel()
        if self.server is not None:
            self.server.close()
            self.server = None
        self._close_sock()


class _UdpForward(_Forward):
    proto = "udp"

    def __init__(self, *a):
        super().__init__(*a)
        self.sock = None
        self.clients: dict[tuple, "_UdpReturn"] = {}

    @property
    def listening(self) -> bool:
        return self.sock is not None

    def open(self) -> None:
        self.sock = _bind("udp", self.host_addr, self.host_port)
        self.owner.driver.loop.add_reader(self.sock.fileno(), self.owner._udp_readable, self)

    def close(self) -> None:
        """Close the socket. Flows stay in the gateway until idle; replies
        meanwhile are dropped (and counted) by their :class:`_UdpReturn`."""
        if self.sock is not None:
            self.owner.driver.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


class _UdpReturn:
    """The way back for one forwarded UDP flow: the container's replies are
    sent to the client from the forward's listening socket."""

    __slots__ = ("fwd", "client", "fid", "src")

    def __init__(self, fwd: _UdpForward, client: tuple, fid: int, src: tuple):
        self.fwd = fwd
        self.client = client
        self.fid = fid
        self.src = src      # (address bytes, port) the container sees

    def send(self, data) -> None:
        c = self.fwd.owner.counters
        sock = self.fwd.sock
        if sock is None:
            c["fwd_udp_drop_reply_not_listening"] += 1
            return
        try:
            sock.sendto(data, self.client)
            c["fwd_udp_reply_tx"] += 1
        except BlockingIOError:
            c["fwd_udp_drop_reply_eagain"] += 1
        except OSError as e:
            c["fwd_udp_drop_reply_error"] += 1
            log.debug("forward %s: reply to %s: %s", self.fwd.name(), self.client, e)

    def close(self) -> None:
        # The gateway expired the flow: forget the client.
        if self.fwd.clients.get(self.client) is self:
            del self.fwd.clients[self.client]


class Forwarder:
    """All forwards of one usernet: plain methods (``add``, ``remove``,
    ``entries``, ``gauges``) and plain errors (:class:`PublishError`,
    ValueError, KeyError); the top layer turns them into API replies.

    ``real_client_addr``: show the container the client's address (see the
    module docstring). ``only_when_bound``: keep host sockets open only while
    the container has the guest port bound (needs ``ns_pid``).
    """

    def __init__(self, driver, *, real_client_addr: bool = True, only_when_bound: bool = False,
                 ns_pid: int | None = None):
        self.driver = driver
        self.gw = driver.gw
        self.cfg = driver.gw.config
        self.counters = driver.counters
        self.real_client_addr = real_client_addr
        self.only_when_bound = only_when_bound
        self.ns_pid = ns_pid
        if only_when_bound and ns_pid is None:
            raise ValueError("--publish-only-when-bound needs the container's PID "
                             "(usernet run, or attach by PID)")
        self.forwards: dict[int, _Forward] = {}
        self._next_id = 1
        self.connecting: set[int] = set()       # flow ids waiting for the container's answer
        self._poll_handle = None
        self._bound = None                      # last read_bound_ports() result
        if only_when_bound:
            self._poll_handle = driver.loop.call_later(BIND_POLL, self._poll)

    # ---------------------------------------------------------- the table
    def add(self, proto: str, host_addr: str, host_port: int, guest_addr: str,
            guest_port: int) -> int:
        """Start a forward; return its id. Raises :class:`PublishError` (an
        OSError) if the host socket cannot be bound, ValueError for addresses
        we cannot forward. A failed add uses no id."""
        if proto not in ("tcp", "udp"):
            raise ValueError(f"protocol {proto!r} is not tcp or udp")
        try:
            v6 = ipaddress.ip_address(host_addr).version == 6
        except ValueError:
            raise ValueError(f"host address {host_addr!r} is not an IP address") from None
        if v6 and not self.cfg.enable_ipv6:
            raise ValueError(f"host address {host_addr}: IPv6 forwards need --enable-ipv6")
        if not guest_addr:
            guest_addr = AUTO6 if v6 and self.cfg.enable_ipv6 else self.cfg.guest_str
        if guest_addr != AUTO6:
            self._check_guest(guest_addr)
        cls = _TcpForward if proto == "tcp" else _UdpForward
        fwd = cls(self, self._next_id, host_addr, host_port, guest_addr, guest_port)
        try:
            fwd.open()
        except OSError as e:
            self.counters["fwd_add_bind_failed"] += 1
            err = PublishError(f"cannot publish {proto} port {host_addr}:{host_port}: "
                               f"{e.strerror or e}")
            err.errno = e.errno
            raise err from None
        self._next_id += 1
        self.forwards[fwd.id] = fwd
        self.counters["fwd_added"] += 1
        log.debug("forward %d: %s", fwd.id, fwd.name())
        if self.only_when_bound:
            # The port was free when we looked; whether it stays open now
            # depends on the container.
            self._apply_bound(fwd)
        return fwd.id

    def _check_guest(self, guest_addr: str) -> None:
        try:
            ip = ipaddress.ip_address(guest_addr).packed
        except ValueError:
            raise ValueError(f"guest address {guest_addr!r} is not an IP address") from None
        if len(ip) == 16 and not self.cfg.enable_ipv6:
            raise ValueError(f"guest address {guest_addr}: IPv6 is not enabled (--enable-ipv6)")
        if not self.gw.nat.is_guest_addr(ip):
            net = self.cfg.network6 if len(ip) == 16 else self.cfg.cidr
            raise ValueError(f"guest address {guest_addr} is not a container address in {net}")

    def remove(self, fid: int) -> None:
        """Stop forward ``fid``; KeyError if there is none."""
        fwd = self.forwards.pop(fid, None)
        if fwd is None:
            raise KeyError(fid)
        fwd.removed = True
        fwd.close()
        self.counters["fwd_removed"] += 1

    def entries(self) -> list:
        return [f.entry() for f in self.forwards.values()]

    def close(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        for fid in list(self.forwards):
            self.remove(fid)
        self.connecting.clear()

    def gauges(self) -> dict:
        """What the forwards hold right now (for stats)."""
        fwds = self.forwards.values()
        return {"fwd_count": len(self.forwards),
                "fwd_tcp_count": sum(1 for f in fwds if f.proto == "tcp"),
                "fwd_udp_count": sum(1 for f in fwds if f.proto == "udp"),
                "fwd_listening": sum(1 for f in fwds if f.listening),
                "fwd_tcp_connecting": len(self.connecting),
                "fwd_udp_clients": sum(len(f.clients) for f in fwds if f.proto == "udp")}

    def _client(self, addr: tuple, guest_ip: bytes) -> tuple:
        """``(address bytes, port)`` of a host-side client to show the
        container, or ``(None, None)``: the stack shows the gateway (also
        when the client's family is not the guest address's)."""
        if not self.real_client_addr:
            return None, None
        try:
            ip = ipaddress.ip_address(addr[0].partition("%")[0]).packed
        except ValueError:
            return None, None
        if len(ip) != len(guest_ip):
            return None, None
        return ip, addr[1]

    # --------------------------------------------------------------- TCP
    def _tcp_accepted(self, fwd: _TcpForward, proto: ForwardProtocol) -> None:
        c = self.counters
        d = self.driver
        c["fwd_tcp_accepted"] += 1
        peer = proto.transport.get_extra_info("peername") or ("0.0.0.0", 0)
        guest_ip = fwd.target_ip()
        fid = None
        if guest_ip is None:
            c["fwd_guest6_unknown"] += 1
        else:
            src_ip, src_port = self._client(peer, guest_ip)
            fid = self.gw.tcp_open_inbound(guest_ip, fwd.guest_port, src_ip, src_port, d.now())
        if fid is None:
            # Flow limit (or no free port): refuse at once, as a reset.
            c["fwd_tcp_open_refused_rst"] += 1
            proto.closed = True
            abort_with_rst(proto.transport)
            d.flush()
            return
        proto.fid = fid
        d.tcp.adopt(fid, proto)
        self.connecting.add(fid)
        d.flush()

    # --------------------------------------------------------------- UDP
    def _udp_readable(self, fwd: _UdpForward) -> None:
        d = self.driver
        gw = self.gw
        c = self.counters
        now = d.now()
        for _ in range(UDP_RX_BATCH):
            sock = fwd.sock
            if sock is None:
                break
            try:
                data, client = sock.recvfrom(UDP_RX_MAX)
            except BlockingIOError:
                break
            except OSError as e:
                c["fwd_udp_recv_error"] += 1
                log.debug("forward %s: recv: %s", fwd.name(), e)
                break
            c["fwd_udp_rx_datagrams"] += 1
            ret = fwd.clients.get(client)
            if ret is not None and gw.udp_forward(ret.fid, data, now):
                continue
            # A new client, or the gateway expired the old flow before its
            # UdpClose reached us: open a flow and (re)register the way back.
            guest_ip = fwd.target_ip()
            if guest_ip is None:
                c["fwd_guest6_unknown"] += 1
                continue
            src_ip, src_port = self._client(client, guest_ip)
            opened = gw.udp_inbound(src_ip, src_port, guest_ip, fwd.guest_port, data, now)
            if opened is None:
                c["fwd_udp_drop_flow_limit"] += 1
                continue
            fid, src = opened
            if ret is None:
                c["fwd_udp_client_new"] += 1
                ret = _UdpReturn(fwd, client, fid, src)
                fwd.clients[client] = ret
            else:
                # Unregister the stale id without closing (that would
                # forget the client we are still serving).
                d.udp.unregister(ret.fid)
                ret.fid, ret.src = fid, src
            d.udp.register(fid, ret)
        d.flush()

    # --------------------------------------------------- only_when_bound
    def _poll(self) -> None:
        self._poll_handle = None
        try:
            self._bound = read_bound_ports(self.ns_pid)
        except OSError as e:
            # The namespace's process is gone: usernet is about to stop.
            self.counters["fwd_bound_poll_error"] += 1
            log.debug("reading /proc/%d/net: %s", self.ns_pid, e)
            return
        for fwd in list(self.forwards.values()):
            self._apply_bound(fwd)
        self._poll_handle = self.driver.loop.call_later(BIND_POLL, self._poll)

    def poll_now(self) -> None:
        """Read the container's bound ports at once (setup, tests)."""
        if self._poll_handle is not None:
            self._poll_handle.cancel()
        self._poll()

    def _apply_bound(self, fwd: _Forward) -> None:
        if self._bound is None:
            try:
                self._bound = read_bound_ports(self.ns_pid)
            except OSError:
                return
        addrs = self._bound[fwd.proto].get(fwd.guest_port, ())
        bound = bytes(4) in addrs or fwd.target_ip() in addrs
        if bound and not fwd.listening:
            try:
                fwd.open()
            except OSError as e:
                # Someone else took the host port meanwhile; try again later.
                self.counters["fwd_reopen_failed"] += 1
                log.warning("forward %s: cannot listen again: %s", fwd.name(), e.strerror or e)
                return
            self.counters["fwd_opened_guest_bound"] += 1
            log.debug("forward %s: guest port bound, listening", fwd.name())
        elif not bound and fwd.listening:
            fwd.close()
            self.counters["fwd_closed_guest_unbound"] += 1
            log.debug("forward %s: guest port not bound, host port closed", fwd.name())
