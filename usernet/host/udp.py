"""Host sockets for UDP flows.

One connected, non-blocking UDP socket per flow (the gateway keys flows by
the container's 4-tuple and expires them when idle). A connected socket is
what makes the kernel report ICMP port unreachable as ``ECONNREFUSED`` on the
next recv, which we turn into ICMP port unreachable toward the container
(``gw.udp_host_error``), so ``dig``/``nc -u`` fail fast.

Sends never block: a full socket buffer (EAGAIN) drops the datagram with a
counter, as a router would. Reads drain up to ``RX_BATCH`` datagrams a wake-up.

Sends are batched. A flow's datagrams of one flush (one drain of the TAP) are
queued on the flow and sent when the driver calls :meth:`UdpHost.flush_pending`:
a run of datagrams of one size (the last may be shorter) goes out in one
``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO, Linux 4.18): the kernel cuts it into
the same datagrams, so the receiver sees exactly what the container sent, at a
fraction of the per-datagram cost (one pass through the socket layer, routing
and netfilter instead of one per datagram; on loopback the segments are cut
at the receiving socket). A send the kernel refuses that way (a path MTU below
the datagram, a device without checksum offload: EINVAL, EIO, EMSGSIZE) is
repeated datagram by datagram, and that flow sends singly from then on
(``udp_gso_refused``).
"""

import errno
import logging
import socket
import struct

from ..stack.events import UdpClose, UdpOpen, UdpSend
from .outbound import bind_outbound, is_host_local

log = logging.getLogger("usernet")

RX_BATCH = 64
RX_MAX = 65535

#: linux/udp.h: the cmsg (level SOL_UDP) giving the size of each datagram of a GSO send.
UDP_SEGMENT = 103
SOL_UDP = 17
#: linux/udp.h UDP_MAX_SEGMENTS (64 until Linux 6.9): datagrams in one GSO send.
GSO_MAX_SEGMENTS = 64
#: Bytes of payload in one GSO send: it is one IP datagram on its way down (65535 less the
#: IPv6/IPv4 and UDP headers).
GSO_MAX_BYTES = 65535 - 40 - 8
_GSO_REFUSED = frozenset((errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT,
                          errno.EOPNOTSUPP))
_U16 = struct.Struct("=H")


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

    __slots__ = ("fid", "sock", "last", "host", "queue", "gso")

    def __init__(self, host, fid, sock):
        self.host = host
        self.fid = fid
        self.sock = sock
        self.last = b""   # the last datagram sent, quoted in port unreachable
        self.queue = None  # this flush's datagrams, in order (None: not in host.pending)
        self.gso = True    # False once the kernel refused a UDP_SEGMENT send of this flow

    def send(self, data) -> None:
        """Queue ``data`` for this flush's :meth:`flush`."""
        q = self.queue
        if q is None:
            self.queue = [data]
            self.host.pending.append(self)
        else:
            q.append(data)

    def flush(self) -> None:
        """Send what is queued: runs of equal-size datagrams as GSO sends, the rest singly."""
        q, self.queue = self.queue, None
        if not q:
            return
        n = len(q)
        i = 0
        while i < n:
            size = len(q[i])
            j, total = i + 1, size
            if self.gso and size:
                limit = min(n, i + GSO_MAX_SEGMENTS)
                while j < limit and len(q[j]) == size and total + size <= GSO_MAX_BYTES:
                    j += 1
                    total += size
                # The kernel's last segment may be shorter than gso_size.
                if j < limit and 0 < len(q[j]) < size and total + len(q[j]) <= GSO_MAX_BYTES:
                    total += len(q[j])
                    j += 1
            if j - i > 1:
                self._send_gso(q, i, j, size)
            else:
                self._send(q[i], 1)
            i = j

    def _send_gso(self, q, i, j, size) -> None:
        d = self.host.driver
        try:
            self.sock.sendmsg([b"".join(q[i:j])], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))])
        except OSError as e:
            if e.errno in _GSO_REFUSED:
                # Not this flow's path (or kernel): say it once, send these one by one.
                self.gso = False
                d.counters["udp_gso_refused"] += 1
                log.debug("UDP GSO refused (%s): sending datagram by datagram", e)
                for k in range(i, j):
                    self._send(q[k], 1)
                return
            self._failed(e, q[j - 1], j - i)
        else:
            d.counters["udp_gso_sends"] += 1
            self.last = q[j - 1]

    def _send(self, data, count: int) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            self._failed(e, data, count)
        else:
            self.last = data

    def _failed(self, e: OSError, data, count: int) -> None:
        """``count`` datagrams (the last ``data``) were not sent."""
        d = self.host.driver
        self.last = data
        if isinstance(e, BlockingIOError):
            d.counters["drop_udp_host_send_eagain"] += count
        elif isinstance(e, ConnectionRefusedError):
            # A port unreachable from an earlier datagram, reported now.
            d.gw.udp_host_error(self.fid, data, d.now())
        else:
            d.counters["drop_udp_host_send_error"] += count
            log.debug("UDP send: %s", e)

    def close(self) -> None:
        self.flush()        # datagrams queued before the close go first
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
        # Flows with datagrams queued in this flush (see flush_pending).
        self.pending: list[_UdpFlowSocket] = []

    def flush_pending(self) -> None:
        """Send every flow's queued datagrams (the driver calls this once a flush's events are
        done). A flow closed meanwhile has sent its queue already."""
        pending, self.pending = self.pending, []
        for fs in pending:
            fs.flush()

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
