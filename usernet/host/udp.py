"""Host sockets for UDP flows.

One connected, non-blocking UDP socket per flow (the gateway keys flows by
the container's 4-tuple and expires them when idle). A connected socket is
what makes the kernel report ICMP port unreachable as ``ECONNREFUSED`` on the
next recv, which we turn into ICMP port unreachable toward the container
(``gw.udp_host_error``), so ``dig``/``nc -u`` fail fast.

Sends never block: a full socket buffer (EAGAIN) drops the datagram with a
counter, as a router would. Reads drain up to ``RX_BATCH`` datagrams a wake-up.
"""

import logging
import socket

from ..stack.events import UdpClose, UdpOpen, UdpSend
from .outbound import bind_outbound, is_host_local

log = logging.getLogger("usernet")

RX_BATCH = 64
RX_MAX = 65535


def recv_batch(recv, counters, counter: str, what: str, batch: int):
    """Up to ``batch`` results of ``recv()`` (one datagram each), stopping
    when the socket has nothing more (EAGAIN); any other OSError is counted
    as ``counter``, logged as ``what`` and ends the batch."""
    for _ in range(batch):
        try:
            yield recv()
        except BlockingIOError:
            return
        except OSError as e:
            counters[counter] += 1
            log.debug("%s: %s", what, e)
            return


class _UdpFlowSocket:
    """An outbound flow's connected socket. Inbound (port-forwarded) flows
    register another object with the same ``send``/``close`` methods
    (:meth:`UdpHost.register`)."""

    __slots__ = ("fid", "sock", "last", "host")

    def __init__(self, host, fid, sock):
        self.host = host
        self.fid = fid
        self.sock = sock
        self.last = b""   # the last datagram sent, quoted in port unreachable

    def send(self, data) -> None:
        d = self.host.driver
        self.last = data
        try:
            self.sock.send(data)
        except BlockingIOError:
            d.counters["drop_udp_host_send_eagain"] += 1
        except ConnectionRefusedError:
            # A port unreachable from an earlier datagram, reported now.
            d.gw.udp_host_error(self.fid, data, d.now())
        except OSError as e:
            d.counters["drop_udp_host_send_error"] += 1
            log.debug("UDP send: %s", e)

    def close(self) -> None:
        self.host.driver.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class UdpHost:
    def __init__(self, driver):
        self.driver = driver
        self.socks: dict[int, _UdpFlowSocket] = {}
        # Flows whose host socket could not be opened (e.g. an IPv6 flow on
        # a host without IPv6): each datagram is answered "unreachable" so
        # the container's application fails fast instead of waiting.
        self.failed: set[int] = set()

    def open(self, ev: UdpOpen) -> None:
        d = self.driver
        host, port = ev.host, ev.port
        if not d.gw.config.host_loopback and is_host_local(host):
            # --disable-host-loopback: one of the host's own addresses (see
            # nat.py). No socket: each datagram gets port unreachable.
            d.counters["policy_refused_host_local"] += 1
            self.failed.add(ev.fid)
            return
        try:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
        except OSError as e:
            d.counters["udp_host_socket_error"] += 1
            log.debug("UDP flow to %s:%d: %s", host, port, e)
            return
        try:
            bind_outbound(d.outbound, sock)
            sock.setblocking(False)
            sock.connect((host, port))
        except OSError as e:
            sock.close()
            d.counters["udp_host_socket_error"] += 1
            self.failed.add(ev.fid)
            log.debug("UDP flow to %s:%d: %s", host, port, e)
            return
        fs = _UdpFlowSocket(self, ev.fid, sock)
        self.socks[ev.fid] = fs
        d.loop.add_reader(sock.fileno(), self._on_readable, fs)

    def send(self, ev: UdpSend) -> None:
        fs = self.socks.get(ev.fid)
        if fs is None:
            d = self.driver
            d.counters["drop_udp_no_host_socket"] += 1
            if ev.fid in self.failed:
                d.gw.udp_host_error(ev.fid, ev.data, d.now())
            return
        fs.send(ev.data)

    def close_flow(self, ev: UdpClose) -> None:
        self.failed.discard(ev.fid)
        fs = self.socks.pop(ev.fid, None)
        if fs is not None:
            fs.close()

    def _on_readable(self, fs: _UdpFlowSocket) -> None:
        d = self.driver
        gw = d.gw
        now = d.now()
        for _ in range(RX_BATCH):
            try:
                data = fs.sock.recv(RX_MAX)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                gw.udp_host_error(fs.fid, fs.last, now)
                break
            except OSError as e:
                d.counters["udp_host_recv_error"] += 1
                log.debug("UDP recv: %s", e)
                break
            gw.udp_host_datagram(fs.fid, data, now)
        d.flush()

    def register(self, fid: int, sender) -> None:
        """Attach a sender (``send(data)``, ``close()``) to a flow the host
        side created itself (a UDP port forward)."""
        self.socks[fid] = sender

    def unregister(self, fid: int) -> None:
        """Detach a registered sender without closing it (a forward's client
        moved to a new flow id)."""
        self.socks.pop(fid, None)

    def close_all(self) -> None:
        for fid in list(self.socks):
            self.socks.pop(fid).close()
