"""Port forwarding into the container (``-p`` and the API's ``add_hostfwd``).

Theory of operation
-------------------
A forward is a host listener on ``HOST_ADDR:HOST_PORT`` (IPv4) whose
connections or datagram flows are carried to the container's
``GUEST_ADDR:GUEST_PORT``. usernet plays the *client* toward the container:
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
2. ``EV_TCP_INBOUND_CONNECTED`` (the container's SYN-ACK): resume reading;
   from here on the flow is an ordinary one.
3. ``EV_TCP_INBOUND_REFUSED`` (the container answered RST: nothing listens),
   or no answer within ``connect_timeout``: the host-side connection is
   closed at once with an abortive reset (``SO_LINGER`` 0), so the client
   fails fast with ``ECONNRESET`` instead of hanging. The kernel had already
   completed the client's handshake (we only learn about the container after
   ``accept``), so a reset is the best a plain listener can say; with
   ``only_when_bound`` the listener exists only while the container has the
   port bound, and the client gets a true ``ECONNREFUSED``.

UDP: one unconnected socket per forward. A datagram from a new client
address opens a gateway flow (``gw.udp_inbound``); a :class:`_UdpReturn` is
registered for that flow id with ``UdpHost.register`` so the container's
replies go back with ``sendto(client)`` from the listener's socket. Idle
expiry is the gateway's (``EV_UDP_CLOSE`` -> ``_UdpReturn.close``).

The client's address. By default the container sees the client's real
address and port (like slirp4netns with ``--enable-sandbox`` off and pasta),
so logs and access control inside work. Exceptions map to the gateway
address, because the container could not answer them otherwise: host
loopback (127.0.0.0/8: the container's own loopback would swallow the reply)
and any address inside the virtual network (the guest's own, the gateway's,
the DNS forwarder's). With ``real_client_addr=False`` everything comes from
the gateway with a port usernet picks. If the chosen 4-tuple is already a
flow (two loopback clients with the same port, a stale flow), a port is
picked instead: the gateway refuses a clashing tuple.

``only_when_bound``: every ``BIND_POLL`` seconds the container's
``/proc/PID/net/{tcp,tcp6,udp,udp6}`` (PID is any process in its network
namespace) says which ports are bound; a forward's host socket is open only
while its guest port is bound on the guest address or the wildcard.

Counters (``fwd_*``, in the gateway's shared Counter, so ``stats`` shows
them) name every decision and drop.
"""

import ipaddress
import logging
import socket
import struct

from ..api import (DESC_ADD_FAILED, DESC_BAD_GUEST_ADDR, DESC_BAD_HOST_ADDR, DESC_REMOVE_BAD_ID,
                   ApiError)
from ..stack import gateway as gwmod
from .tcp import FlowProtocol, abort_with_rst

log = logging.getLogger("usernet")

LISTEN_BACKLOG = 128
UDP_RX_BATCH = 64            # datagrams drained per wake-up of a UDP listener
UDP_RX_MAX = 65535
BIND_POLL = 1.0              # seconds between /proc/PID/net reads (only_when_bound)
PICK_PORTS = (49152, 65535)  # source ports usernet picks when the client's own cannot be used
PICK_TRIES = 64
_TCP_LISTEN = "0A"           # /proc/net/tcp st column: TCP_LISTEN


class PublishError(OSError):
    """A forward could not be set up (port in use, bad address): one clear line."""

    def __str__(self):
        return self.args[0] if self.args else "cannot publish"


def _proc_addr(hexaddr: str) -> bytes:
    """An address from /proc/net/{tcp,udp}[6]: 32-bit words in host byte order."""
    words = [int(hexaddr[i:i + 8], 16) for i in range(0, len(hexaddr), 8)]
    return struct.pack("=%dI" % len(words), *words)


def read_bound_ports(pid: int) -> dict:
    """``{"tcp": {port: {addr, ...}}, "udp": {...}}`` for the network namespace of ``pid``:
    TCP sockets in LISTEN, unconnected UDP sockets. IPv6 addresses ``::`` and
    ``::ffff:a.b.c.d`` are folded to IPv4 (a dual-stack socket takes IPv4 too);
    other IPv6 addresses are left out. Raises OSError if ``pid`` is gone."""
    out = {"tcp": {}, "udp": {}}
    for proto in ("tcp", "udp"):
        for suffix in ("", "6"):
            try:
                with open(f"/proc/{pid}/net/{proto}{suffix}") as f:
                    lines = f.read().splitlines()[1:]
            except FileNotFoundError:
                if suffix:
                    continue   # no IPv6 in this kernel
                raise
            for line in lines:
                parts = line.split()
                if len(parts) < 4:
                    continue
                local, remote, st = parts[1], parts[2], parts[3]
                if proto == "tcp" and st != _TCP_LISTEN:
                    continue
                if proto == "udp" and not remote.endswith(":0000"):
                    continue   # a connected UDP socket takes no forwarded datagrams
                haddr, _, hport = local.rpartition(":")
                addr = _proc_addr(haddr)
                if len(addr) == 16:
                    if addr == bytes(16):
                        addr = bytes(4)
                    elif addr[:12] == b"\0" * 10 + b"\xff\xff":
                        addr = addr[12:]
                    else:
                        continue
                out[proto].setdefault(int(hport, 16), set()).add(addr)
    return out


def _bind(proto: str, host_addr: str, host_port: int) -> socket.socket:
    """A bound (and for TCP listening) non-blocking IPv4 socket; OSError as is."""
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, typ)
    try:
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
    """The host side of one forwarded TCP connection. Reading stays paused
    until the container has accepted the connection."""

    def __init__(self, fwd: "_TcpForward"):
        super().__init__(fwd.owner.driver.tcp, None)
        self.fwd = fwd

    def connection_made(self, transport):
        super().connection_made(transport)
        # Nothing may go to the container before its SYN-ACK: hold the bytes
        # in the host socket (the client's window closes, as it should).
        self.paused = True
        transport.pause_reading()
        self.fwd.owner._tcp_accepted(self.fwd, self)


class _Forward:
    """One forward: its spec, its id, and its host socket (open or not)."""

    proto = ""

    def __init__(self, owner, fid, host_addr, host_port, guest_addr, guest_port):
        self.owner = owner
        self.id = fid
        self.host_addr = host_addr
        self.host_port = host_port
        self.guest_addr = guest_addr
        self.guest_ip = ipaddress.IPv4Address(guest_addr).packed
        self.guest_port = guest_port
        self.removed = False

    def entry(self) -> dict:
        return {"id": self.id, "proto": self.proto, "host_addr": self.host_addr,
                "host_port": self.host_port, "guest_addr": self.guest_addr,
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
    """All forwards of one usernet, and the API :class:`~usernet.api.Backend`.

    ``real_client_addr``: show the container the client's address (see the
    module docstring). ``only_when_bound``: keep host sockets open only while
    the container has the guest port bound (needs ``ns_pid``).
    ``connect_timeout``: how long the container may leave our SYN unanswered
    before the client is reset.
    """

    def __init__(self, driver, *, real_client_addr: bool = True, only_when_bound: bool = False,
                 ns_pid: int | None = None, connect_timeout: float | None = None):
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
        self.connect_timeout = connect_timeout or self.cfg.tcp_connect_timeout
        self.forwards: dict[int, _Forward] = {}
        self._next_id = 1
        self._pending: dict[int, tuple] = {}   # flow id -> (protocol, timeout handle)
        self._next_pick = PICK_PORTS[0]
        self._poll_handle = None
        self._bound = None                      # last read_bound_ports() result
        driver.forwarder = self
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
            ipaddress.IPv4Address(host_addr)
        except ValueError:
            raise ValueError(f"host address {host_addr!r}: only IPv4 forwards are "
                             "supported") from None
        guest_addr = guest_addr or self.cfg.guest_str
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
            ip = ipaddress.IPv4Address(guest_addr).packed
        except ValueError:
            raise ValueError(f"guest address {guest_addr!r} is not IPv4") from None
        cfg = self.cfg
        if not cfg.in_network(ip) or ip in (cfg.gateway_ip, cfg.dns_ip, cfg.broadcast_ip,
                                           cfg.network.network_address.packed):
            raise ValueError(f"guest address {guest_addr} is not a container address in "
                             f"{cfg.cidr}")

    def remove(self, fid: int) -> None:
        fwd = self.forwards.pop(fid, None)
        if fwd is None:
            raise KeyError(fid)
        fwd.removed = True
        fwd.close()
        self.counters["fwd_removed"] += 1

    def close(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        for fid in list(self.forwards):
            self.remove(fid)
        for proto, handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        if getattr(self.driver, "forwarder", None) is self:
            self.driver.forwarder = None

    # ------------------------------------------------------ API backend
    def add_hostfwd(self, proto, host_addr, host_port, guest_addr, guest_port) -> int:
        if ":" in host_addr:
            raise ApiError(DESC_BAD_HOST_ADDR)   # IPv6: not supported (yet)
        try:
            return self.add(proto, host_addr, host_port, guest_addr, guest_port)
        except PublishError as e:
            log.info("add_hostfwd: %s", e)
            raise ApiError(DESC_ADD_FAILED) from None
        except ValueError as e:
            log.info("add_hostfwd: %s", e)
            raise ApiError(DESC_BAD_GUEST_ADDR) from None

    def list_hostfwd(self) -> list:
        return [f.entry() for f in self.forwards.values()]

    def remove_hostfwd(self, id: int) -> None:  # noqa: A002 - the API's name
        try:
            self.remove(id)
        except KeyError:
            raise ApiError(DESC_REMOVE_BAD_ID) from None

    def stats(self) -> dict:
        s = self.gw.stats()
        fwds = self.forwards.values()
        s["fwd_count"] = len(self.forwards)
        s["fwd_tcp_count"] = sum(1 for f in fwds if f.proto == "tcp")
        s["fwd_udp_count"] = sum(1 for f in fwds if f.proto == "udp")
        s["fwd_listening"] = sum(1 for f in fwds if f.listening)
        s["fwd_tcp_connecting"] = len(self._pending)
        s["fwd_udp_clients"] = sum(len(f.clients) for f in fwds if f.proto == "udp")
        return s

    # -------------------------------------------------- client addresses
    def _source_ip(self, client_ip: str) -> bytes:
        """The address the container sees for a host-side client."""
        cfg = self.cfg
        if not self.real_client_addr:
            return cfg.gateway_ip
        ip = ipaddress.IPv4Address(client_ip).packed
        # The container must be able to answer the address through us:
        # loopback would stay inside it, and addresses in the virtual network
        # are on its own link (or are itself).
        if ip[0] == 127 or ip[0] == 0 or ip[0] >= 224 or cfg.in_network(ip):
            self.counters["fwd_client_addr_as_gateway"] += 1
            return cfg.gateway_ip
        return ip

    def _pick_port(self, busy) -> int | None:
        """A source port (on the gateway address) for which ``busy(port)`` is false."""
        lo, hi = PICK_PORTS
        for _ in range(PICK_TRIES):
            p = self._next_pick
            self._next_pick = lo if p >= hi else p + 1
            if not busy(p):
                return p
        return None

    # --------------------------------------------------------------- TCP
    def _tcp_accepted(self, fwd: _TcpForward, proto: ForwardProtocol) -> None:
        c = self.counters
        d = self.driver
        gw = self.gw
        now = d.now()
        c["fwd_tcp_accepted"] += 1
        peer = proto.transport.get_extra_info("peername") or ("0.0.0.0", 0)
        src_ip = self._source_ip(peer[0])
        src_port = peer[1] if self.real_client_addr else None
        gip, gport = fwd.guest_ip, fwd.guest_port
        if src_port is None or (gip, gport, src_ip, src_port) in gw.tcp_flows:
            if src_port is not None:
                c["fwd_tcp_source_port_busy_picked"] += 1
            # A tuple that is already a flow would be refused by the gateway;
            # from the gateway address with a port of ours it is unique.
            src_ip = self.cfg.gateway_ip
            src_port = self._pick_port(lambda p: (gip, gport, src_ip, p) in gw.tcp_flows)
        fid = None
        if src_port is not None:
            fid = gw.tcp_open_inbound(gip, gport, src_ip, src_port, now)
        if fid is None:
            # Flow limit (or no free port): refuse at once, as a reset.
            c["fwd_tcp_open_refused_rst"] += 1
            proto.closed = True
            abort_with_rst(proto.transport)
            d.flush()
            return
        proto.fid = fid
        d.tcp.adopt(fid, proto)
        handle = d.loop.call_later(self.connect_timeout, self._tcp_connect_timeout, fid)
        self._pending[fid] = (proto, handle)
        d.flush()

    def handle_event(self, ev) -> None:
        """``EV_TCP_INBOUND_CONNECTED`` / ``EV_TCP_INBOUND_REFUSED`` from TcpHost."""
        kind, fid = ev[0], ev[1]
        entry = self._pending.pop(fid, None)
        if entry is None:
            self.counters["fwd_tcp_event_no_pending_" + kind] += 1
            return
        proto, handle = entry
        handle.cancel()
        if kind == gwmod.EV_TCP_INBOUND_CONNECTED:
            self.counters["fwd_tcp_guest_connected"] += 1
            if not proto.closed:
                proto.resume()    # let the client's bytes flow
        else:
            # The container answered RST (nothing listens on the port) or
            # never answered within the stack's SYN retries.
            self.counters["fwd_tcp_guest_refused"] += 1
            self._reset_client(proto)

    def _tcp_connect_timeout(self, fid: int) -> None:
        entry = self._pending.pop(fid, None)
        if entry is None:
            return
        proto = entry[0]
        d = self.driver
        self.counters["fwd_tcp_guest_timeout"] += 1
        self._reset_client(proto)
        # Forget the flow in the stack (no RST to the container: it never
        # answered; a late SYN-ACK finds no flow and is reset by the gateway).
        d.gw.tcp_host_reset(fid, d.now())
        d.flush()

    def _reset_client(self, proto: ForwardProtocol) -> None:
        # Mark closed and unregister *before* the gateway's EV_TCP_CLOSE for
        # the flow arrives, which would otherwise close gracefully (FIN).
        if proto.closed:
            return
        proto.closed = True
        self.driver.tcp.protocols.pop(proto.fid, None)
        abort_with_rst(proto.transport)

    # --------------------------------------------------------------- UDP
    def _udp_readable(self, fwd: _UdpForward) -> None:
        d = self.driver
        gw = self.gw
        c = self.counters
        now = d.now()
        gip, gport = fwd.guest_ip, fwd.guest_port
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
            src = ret.src if ret is not None else self._udp_source(fwd, client)
            if src is None:
                continue
            fid = gw.udp_inbound(src[0], src[1], gip, gport, data, now)
            if fid is None:
                c["fwd_udp_drop_flow_limit"] += 1
                continue
            if ret is None or ret.fid != fid:
                # A new client, or the gateway expired the old flow and made
                # a new one before its EV_UDP_CLOSE reached us: (re)register
                # the way back under the flow's id.
                if ret is None:
                    c["fwd_udp_client_new"] += 1
                    ret = _UdpReturn(fwd, client, fid, src)
                    fwd.clients[client] = ret
                else:
                    # Unregister the stale id without closing (that would
                    # forget the client we are still serving).
                    d.udp.socks.pop(ret.fid, None)
                ret.fid = fid
                d.udp.register(fid, ret)
        d.flush()

    def _udp_source(self, fwd: _UdpForward, client: tuple):
        """(address, port) the container sees for a new UDP client, or None."""
        gw = self.gw
        gip, gport = fwd.guest_ip, fwd.guest_port
        src_ip = self._source_ip(client[0])
        src_port = client[1] if self.real_client_addr else None
        if src_port is not None and (gip, gport, src_ip, src_port) not in gw.udp_flows:
            return src_ip, src_port
        if src_port is not None:
            # Another client already maps to this tuple (two loopback
            # clients with the same port): replies would go to the wrong one.
            self.counters["fwd_udp_source_port_busy_picked"] += 1
        gw_ip = self.cfg.gateway_ip
        port = self._pick_port(lambda p: (gip, gport, gw_ip, p) in gw.udp_flows)
        if port is None:
            self.counters["fwd_udp_drop_no_source_port"] += 1
            return None
        return gw_ip, port

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
        bound = bytes(4) in addrs or fwd.guest_ip in addrs
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
