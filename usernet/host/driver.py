"""The host driver: the asyncio side of usernet.

Theory of operation
-------------------
One event loop (uvloop when installed) runs everything:

* The TAP fd is read with ``loop.add_reader``; each wake-up drains up to
  ``RX_BATCH`` frames (no Task, Future or Queue per packet), strips the
  virtio-net header, and feeds each frame to the sans-IO
  :class:`~usernet.stack.gateway.Gateway` with ``now = loop.time()``.
* After every batch or notification, :meth:`HostDriver.flush` runs the loop
  of the design: write ``gw.frames_out`` to the TAP, act on
  ``gw.events_out`` through one table (event type -> method of ``TcpHost``,
  ``UdpHost``, ``IcmpHost``, ``DnsForwarder``; built once, at start), report
  the write backlog of the TCP flows written to, and re-arm the one timer
  from ``gw.get_timer()``.
* Host sockets are asyncio Protocols (``host/tcp.py``, ``host/udp.py``):
  their callbacks turn into gateway notifications.

Writes to the TAP: ``os.writev((vnet_hdr, frame))``. Every entry of
``gw.frames_out`` is such a pair: the all-zero header for a plain, fully
checksummed frame, or, with TAP offloads on, the header the gateway built
for an offloaded TCP frame (``NEEDS_CSUM``, maybe TSO: see
``usernet.wire.vnet``). Reading, the header's
``NEEDS_CSUM``/``DATA_VALID`` becomes the gateway's ``csum_ok``, and TSO
super-frames from the container (up to 64 KiB, IPv4 total length = the whole
frame) are fed whole (``rx_gso_frames`` counts them). A TUN/TAP write does not
normally block (the kernel queues into the netns or drops), but if it ever
answers EAGAIN, frames wait in a bounded deque (``TX_QUEUE_MAX``) drained by
``add_writer``; past the bound they are dropped and counted.

The impairment hook (``Impairment``) sits between the TAP and the gateway in
both directions, for tests: this kernel has no netem.

A link on a named network (the daemon's ``--network``) reads its TAP with
``_on_readable_switched`` instead (bound once, by :meth:`HostDriver.attach_port`):
each frame goes to its switch port (``usernet.stack.switch``), which hands
it to the gateway or to other links' TAPs; the links written to are flushed
after the batch. A link on no network never runs that code.
"""

import asyncio
import errno
import ipaddress
import logging
import os
import random
from collections import deque

from ..stack import events as ev
from ..wire.vnet import (VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN,
                         VNET_HDR_NONE)
from .tcp import TcpHost
from .udp import UdpHost

log = logging.getLogger("usernet")

RX_BATCH = 256           # frames drained per TAP wake-up
# A wake-up that found exactly one frame (its second read answered EAGAIN)
# is request/response traffic: the next wake-ups read one frame each and
# return without that second read (a syscall and a BlockingIOError per
# transaction). The loop's reader is level-triggered, so a frame left in the
# queue wakes us again at once: nothing waits, it only costs a loop turn.
# Every RX_PROBE_EVERY-th wake-up drains as usual (that is how a burst
# switches back to draining), and so does any TSO super-frame (bulk).
RX_PROBE_EVERY = 4
# One read: the largest frame, a 65535-byte IP packet (a TSO super-frame) +
# Ethernet + one VLAN tag, plus the vnet header; a bigger read is truncated
# by the kernel (and then fails the IP length check).
RX_BUF = 65536 + 64
assert RX_BUF >= VNET_HDR_LEN + 14 + 4 + 65535
TX_QUEUE_MAX = 4096      # frames waiting for the TAP to become writable
DRAIN_TIMEOUT = 5.0      # seconds at exit to let in-flight TCP data finish
DRAIN_POLL = 0.02
# At exit, after the drain: seconds to let bytes already acknowledged to the
# container leave usernet for the host peers before their sockets are reset.
EXIT_FLUSH_TIMEOUT = 2.0
FLUSH_ROUNDS_MAX = 64    # write/dispatch rounds in one flush (normal cascades take 2-3)
DEBUG_COUNTERS_EVERY = 2.0   # seconds between "counters moved" lines with --debug
_CSUM_DONE = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID


class Impairment:
    """Drop, duplicate and reorder frames with given probabilities (a seed
    makes a run repeatable). Reordering holds a frame back and releases it
    after the next one (or on the next flush tick)."""

    def __init__(self, loss=0.0, dup=0.0, reorder=0.0, seed=None, counters=None, name=""):
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.rng = random.Random(seed)
        self.counters = counters
        self.name = name
        self.held = []

    def apply(self, frame) -> list:
        r = self.rng.random
        c = self.counters
        if r() < self.loss:
            c[f"impair_{self.name}_dropped"] += 1
            return []
        # Items are passed through as they are (a frame, or a (frame,
        # csum_ok) pair on receive): nothing mutates a frame once queued.
        out = [frame]
        if r() < self.dup:
            c[f"impair_{self.name}_duplicated"] += 1
            out.append(frame)
        if self.held:
            out.extend(self.held)
            self.held = []
        elif r() < self.reorder:
            c[f"impair_{self.name}_reordered"] += 1
            self.held = out
            return []
        return out

    def release(self) -> list:
        held, self.held = self.held, []
        return held

    @classmethod
    def parse(cls, spec: str, counters, name: str, seed_offset: int = 0):
        """``loss=0.03,dup=0.01,reorder=0.02,seed=7``; ValueError on anything else."""
        kw = {}
        for part in spec.split(","):
            if not part.strip():
                continue
            k, _, v = part.partition("=")
            k = k.strip()
            if k in ("loss", "dup", "reorder"):
                x = float(v)
                if not 0.0 <= x < 1.0:
                    raise ValueError(f"{k} must be in [0, 1), got {v}")
                kw[k] = x
            elif k == "seed":
                kw["seed"] = int(v) + seed_offset
            else:
                raise ValueError(f"unknown impairment {k!r} (loss, dup, reorder, seed)")
        return cls(counters=counters, name=name, **kw)


class HostDriver:
    def __init__(self, gateway, tap_fd: int, *, vnet_hdr: bool = True, impair: str | None = None,
                 dns=None, outbound: dict | None = None):
        self.gw = gateway
        self.counters = gateway.counters
        self.fd = tap_fd
        self.vnet_hdr = vnet_hdr
        self.vnet_hdr_len = VNET_HDR_LEN
        # The TAP read function; --pcap swaps it (and _tap_write) for a
        # recording one (usernet/pcap.py), so no capture costs nothing.
        self._read = os.read
        self.loop = None
        self._timer = None
        self._timer_at = None
        # The stack's timer heap (Gateway.timers), to skip re-asking for the
        # next deadline when nothing was pushed (_arm_timer); None: always ask.
        self._stack_timers = getattr(gateway, "timers", None)
        self._pushes_seen = -1
        self._txq = deque()
        self._rx_single = 0    # wake-ups left that read one frame (RX_PROBE_EVERY)
        self._writer_on = False
        self._closed = False
        self.tcp = TcpHost(self)
        self.udp = UdpHost(self)
        self.dns = dns
        self.icmp = None
        self.rx_impair = self.tx_impair = None
        self._impair_tick = None
        self._debug_tick = None
        self._flow_log_exit = None
        if impair:
            self.rx_impair = Impairment.parse(impair, self.counters, "rx")
            self.tx_impair = Impairment.parse(impair, self.counters, "tx", seed_offset=1)
        # The one-frame wake-up's written-out path applies (_on_readable):
        # frames behind a virtio-net header, no impairment in between.
        self._rx_direct = vnet_hdr and self.rx_impair is None
        # What flush watches to skip _arm_timer (the stack's heap), or None:
        # always call it (no heap to watch, or impairments, whose held
        # frames need their tick armed there).
        self._timer_watch = self._stack_timers if self.rx_impair is None else None
        # The gateway's two output lists (they live as long as it does).
        self._frames = gateway.frames_out
        self._events = gateway.events_out
        self.stopped = None
        self.port = None               # a switch port (attach_port), on a named network
        self._handlers: dict = {}      # event type -> method, built at start()
        # --outbound-addr[6]: address family -> source address of outbound
        # sockets (host/outbound.py); empty: the kernel chooses.
        self.outbound = dict(outbound or {})

    def attach_port(self, port) -> None:
        """Feed the container's frames to ``port`` (a link on a named network:
        ``usernet.stack.switch``) instead of straight to the gateway. Call
        before :meth:`start`. A driver with no port never runs this path."""
        if self.rx_impair is not None:
            raise ValueError("--impair is not supported on a link on a network")
        self.port = port
        port.owner = self
        self._on_readable = self._on_readable_switched

    def attach_dns(self, dns) -> None:
        """Serve the stack's DNS queries with ``dns`` (a ``DnsForwarder``)."""
        self.dns = dns
        if self._handlers:
            self._handlers[ev.DnsQuery] = dns.query

    # ------------------------------------------------------------ lifecycle
    def start(self, loop=None, *, read_tap: bool = True) -> None:
        """Start serving; ``read_tap=False`` leaves the container's frames queued in the TAP
        until :meth:`read_tap` (serve() first puts the sandbox in force)."""
        self.loop = loop or asyncio.get_running_loop()
        self.stopped = self.loop.create_future()
        os.set_blocking(self.fd, False)
        if read_tap:
            self.read_tap()
        if self.icmp is None:
            from .icmp import IcmpHost
            self.icmp = IcmpHost(self)
        self._handlers = self._build_handlers()
        if log.isEnabledFor(logging.DEBUG):
            self._log_flow_events()
            # --debug: every few seconds, log the counters that moved (drops
            # included), so a trace shows what the stack decided and why.
            self._debug_last = {}
            self._debug_tick = self.loop.call_later(DEBUG_COUNTERS_EVERY, self._log_counters)

    def read_tap(self) -> None:
        """Begin reading the container's frames."""
        self.loop.add_reader(self.fd, self._on_readable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flow_log_exit is not None:
            self._flow_log_exit()          # --debug: the flows still open at exit
        loop = self.loop
        if loop is not None:
            loop.remove_reader(self.fd)
            if self._writer_on:
                loop.remove_writer(self.fd)
        if self._timer is not None:
            self._timer.cancel()
        if self._impair_tick is not None:
            self._impair_tick.cancel()
        if self._debug_tick is not None:
            self._debug_tick.cancel()
        self.tcp.close_all()
        if loop is not None and not (self.stopped is not None and self.stopped.done()):
            # The host sockets are reset; reset the container's side too, so
            # its applications do not retransmit into a link nobody serves.
            gw = self.gw
            gw.tcp_reset_all(loop.time())
            for entry in gw.frames_out:
                try:
                    self._tap_write(entry)
                except OSError:
                    self.counters["drop_tx_error"] += 1
            gw.frames_out.clear()
            gw.events_out.clear()
        self.udp.close_all()
        if self.icmp is not None:
            self.icmp.close()
        if self.dns is not None:
            self.dns.close()

    async def drain(self, timeout: float) -> bool:
        """Keep serving until every TCP flow has finished (or sits in
        TIME-WAIT) and every host socket has flushed its write buffer, or
        ``timeout`` passes. Used at exit: the command may have exited with
        data still in flight (its kernel keeps sending for closed sockets),
        and aborting at once would lose it. True when fully drained."""
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and not self.stopped.done():
            if not self.gw.tcp_active() and not self.tcp.backlog():
                return True
            await asyncio.sleep(DRAIN_POLL)
        self.counters["exit_drain_timeout"] += 1
        return False

    async def flush_host(self, timeout: float) -> bool:
        """At exit, before the host sockets are reset: stop reading the TAP
        (nothing more from the container is acknowledged) and wait, at most
        ``timeout``, until every byte already acknowledged to the container
        has left usernet: host write buffers empty and each socket's kernel
        send queue acknowledged by the host peer. A reset throws away a
        socket's unsent queue, but the peer's kernel keeps what it received
        and its reader gets all of it before ECONNRESET. True when flushed."""
        if not self._closed and self.loop is not None:
            self.loop.remove_reader(self.fd)
        deadline = self.loop.time() + timeout
        while self.tcp.unsent():
            if self.loop.time() >= deadline:
                self.counters["exit_flush_timeout"] += 1
                return False
            await asyncio.sleep(DRAIN_POLL)
        return True

    def _log_flow_events(self) -> None:
        """--debug: a line when a flow opens and when it closes (with what it
        carried), by wrapping the handlers of the events that open and close
        flows. The table is built once, so without --debug nothing here runs."""
        flows = self.gw.flows
        live = {}          # fid -> (proto, flow object): still readable after the stack forgets it
        h = self._handlers

        def addr(ip, port):
            a = ipaddress.ip_address(bytes(ip))
            return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"

        def opened(proto, table, handler, direction="out"):
            def on(e):
                f = table.by_id.get(e.fid)
                if f is not None:
                    live[e.fid] = (proto, f)
                    log.debug("", extra={"event": "flow_open", "fields": {
                        "proto": proto, "id": e.fid, "dir": direction,
                        "container": addr(f.guest_ip, f.guest_port),
                        "remote": addr(f.remote_ip, f.remote_port),
                        "host": f"{e.host}:{e.port}" if hasattr(e, "port") else
                        getattr(e, "host", None)}})
                handler(e)
            return on

        def log_close(fid, reason):
            proto, f = live.pop(fid, (None, None))
            if f is None:
                return
            fields = {"proto": proto, "id": fid, "reason": reason,
                      "container": addr(f.guest_ip, f.guest_port),
                      "remote": addr(f.remote_ip, f.remote_port)}
            if proto == "tcp":
                rin, sout = f.conn.transferred()
                fields.update(state=f.conn.state, tx_bytes=rin, rx_bytes=sout,
                              tx_packets=f.pkts_in, rx_packets=f.pkts_out,
                              retransmits=f.conn.rexmits)
            else:
                fields.update(tx_bytes=f.bytes_in, rx_bytes=f.bytes_out,
                              tx_packets=f.pkts_in, rx_packets=f.pkts_out)
            fields["age"] = round(self.loop.time() - f.opened, 3)
            log.debug("", extra={"event": "flow_close", "fields": fields})

        def closed(handler, reason):
            def on(e):
                handler(e)
                log_close(e.fid, reason)
            return on

        def at_exit():
            for fid in list(live):
                log_close(fid, "exit")
        self._flow_log_exit = at_exit

        h[ev.TcpConnect] = opened("tcp", flows.tcp, h[ev.TcpConnect])
        h[ev.TcpConnectDns] = opened("tcp", flows.tcp, h[ev.TcpConnectDns])
        h[ev.TcpInboundConnected] = opened("tcp", flows.tcp, h[ev.TcpInboundConnected], "in")
        h[ev.UdpOpen] = opened("udp", flows.udp, h[ev.UdpOpen])
        h[ev.IcmpOpen] = opened("icmp", flows.icmp, h[ev.IcmpOpen])
        h[ev.TcpClose] = closed(h[ev.TcpClose], "closed")
        h[ev.UdpClose] = closed(h[ev.UdpClose], "idle")
        h[ev.IcmpClose] = closed(h[ev.IcmpClose], "idle")

    def _log_counters(self) -> None:
        cur = dict(self.counters)
        moved = {k: v - self._debug_last.get(k, 0) for k, v in cur.items()
                 if v != self._debug_last.get(k, 0)}
        if moved:
            log.debug("", extra={"event": "counters_moved", "fields": {"moved": moved}})
        self._debug_last = cur
        self._debug_tick = self.loop.call_later(DEBUG_COUNTERS_EVERY, self._log_counters)

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------------- rx
    def _on_readable(self) -> None:
        single = self._rx_single
        if single and self._rx_direct:
            # One frame per wake-up while the traffic is request/response (see
            # RX_PROBE_EVERY): the loop below with limit 1, written out (it is
            # every wake-up of such traffic).
            self._rx_single = single - 1
            now = self.loop.time()
            try:
                data = self._read(self.fd, RX_BUF)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EINTR:
                    log.info("TAP read failed (%s): the namespace is gone, stopping", e.strerror)
                    self._stop()
                    return
            else:
                if len(data) < VNET_HDR_LEN:
                    if not data:
                        self._stop()
                        return
                    self.counters["drop_vnet_truncated"] += 1
                else:
                    if data[1]:             # gso_type: a TSO super-frame; bulk: drain again
                        self.counters["rx_gso_frames"] += 1
                        self._rx_single = 0
                    try:
                        self.gw.receive_frame(memoryview(data)[VNET_HDR_LEN:], now,
                                              bool(data[0] & _CSUM_DONE))
                    except Exception:  # noqa: BLE001 - one bad frame must not stop the loop
                        self.counters["drop_stack_error"] += 1
                        log.debug("stack error on a frame", exc_info=True)
            self.flush()
            return
        gw = self.gw
        fd = self.fd
        now = self.loop.time()
        vnet = self.vnet_hdr
        impair = self.rx_impair
        c = self.counters
        read = self._read
        # One frame per wake-up while the traffic is request/response (see
        # RX_PROBE_EVERY): the read that would only answer EAGAIN is skipped.
        single = self._rx_single
        if single:
            self._rx_single = single - 1
            limit = 1
        else:
            limit = RX_BATCH
        n = 0
        for _ in range(limit):
            try:
                data = read(fd, RX_BUF)
            except BlockingIOError:
                if limit != 1:
                    # Drained: one frame in this wake-up means the next
                    # wake-ups read one each without a probe.
                    self._rx_single = RX_PROBE_EVERY if n == 1 else 0
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                # EBADFD/EIO: the namespace (and with it the TAP) is gone.
                log.info("TAP read failed (%s): the namespace is gone, stopping", e.strerror)
                self._stop()
                return
            if not data:
                self._stop()
                return
            if vnet:
                if len(data) < VNET_HDR_LEN:
                    c["drop_vnet_truncated"] += 1
                    continue
                csum_ok = bool(data[0] & _CSUM_DONE)
                if data[1]:             # gso_type: a TSO super-frame
                    c["rx_gso_frames"] += 1
                    # Bulk from the container: drain again.
                    self._rx_single = 0
                frame = memoryview(data)[VNET_HDR_LEN:]
            else:
                csum_ok = False
                frame = data
            n += 1
            try:
                if impair is None:
                    gw.receive_frame(frame, now, csum_ok)
                else:
                    for f, ok in impair.apply((frame, csum_ok)):
                        gw.receive_frame(f, now, ok)
            except Exception:  # noqa: BLE001 - one bad frame must not stop the loop
                # A bug, not bad input (the parsers raise only ParseError and
                # the gateway counts those): count it, keep serving.
                c["drop_stack_error"] += 1
                log.debug("stack error on a frame", exc_info=True)
        self.flush()

    def _on_readable_switched(self) -> None:
        """``_on_readable`` for a link on a network: each frame, with its
        virtio-net header (a peer's TAP may take it as it is), goes to the
        switch port; after the batch, the links the switch wrote to are
        flushed too. The read loop is a copy of ``_on_readable``'s on purpose:
        bound as the reader only for switched links, so links on no network
        pay no per-frame test for it."""
        port = self.port
        fd = self.fd
        now = self.loop.time()
        vnet = self.vnet_hdr
        c = self.counters
        read = self._read
        for _ in range(RX_BATCH):
            try:
                data = read(fd, RX_BUF)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                log.info("TAP read failed (%s): the namespace is gone, stopping", e.strerror)
                self._stop()
                return
            if not data:
                self._stop()
                return
            if vnet:
                if len(data) < VNET_HDR_LEN:
                    c["drop_vnet_truncated"] += 1
                    continue
                csum_ok = bool(data[0] & _CSUM_DONE)
                if data[1]:
                    c["rx_gso_frames"] += 1
                hdr = data[:VNET_HDR_LEN]
                frame = memoryview(data)[VNET_HDR_LEN:]
            else:
                csum_ok = False
                hdr = VNET_HDR_NONE
                frame = data
            try:
                port.receive(hdr, frame, now, csum_ok)
            except Exception:  # noqa: BLE001 - one bad frame must not stop the loop
                c["drop_stack_error"] += 1
                log.debug("stack error on a frame", exc_info=True)
        self.flush()
        for q in port.net.take_dirty():
            if q is not port and q.owner is not None:
                q.owner.flush()

    # ------------------------------------------------------------------- tx
    def _tap_write(self, entry) -> None:
        """One ``(vnet_hdr, frame)`` entry to the TAP (or ``(vnet_hdr, headers,
        payload)``, a TSO segment in two pieces: one ``writev`` all the same),
        the header dropped when the fd has none (then the stack never
        offloads, so every header is the all-zero one and every entry a
        pair). Raises BlockingIOError/OSError."""
        if self.vnet_hdr:
            os.writev(self.fd, entry)
        else:
            os.write(self.fd, entry[1] if len(entry) == 2 else b"".join(entry[1:]))
        self.counters["tx_frames"] += 1

    def _write(self, frame) -> None:
        if self._txq:
            if len(self._txq) >= TX_QUEUE_MAX:
                self.counters["drop_tx_queue_full"] += 1
            else:
                self._txq.append(frame)
            return
        try:
            self._tap_write(frame)
        except OSError as e:
            self._write_failed(frame, e)

    def _write_failed(self, frame, e: OSError) -> None:
        """A TAP write with nothing queued before it failed: EAGAIN queues
        the frame until the TAP is writable; any other error drops it."""
        if isinstance(e, BlockingIOError):
            self._txq.append(frame)
            if not self._writer_on:
                self._writer_on = True
                self.loop.add_writer(self.fd, self._on_writable)
        else:
            self.counters["drop_tx_error"] += 1
            log.debug("TAP write failed: %s", e)

    def _on_writable(self) -> None:
        q = self._txq
        while q:
            frame = q[0]
            try:
                self._tap_write(frame)
            except BlockingIOError:
                return
            except OSError:
                self.counters["drop_tx_error"] += 1
            q.popleft()
        self.loop.remove_writer(self.fd)
        self._writer_on = False

    # ---------------------------------------------------------------- flush
    def _build_handlers(self) -> dict:
        """The one event table: event type -> the host-side method that acts on it."""
        tcp, udp, icmp, dns = self.tcp, self.udp, self.icmp, self.dns
        table = {
            ev.TcpConnect: tcp.connect, ev.TcpConnectDns: tcp.connect_dns,
            ev.TcpCancel: tcp.cancel, ev.TcpData: tcp.data, ev.TcpShutdown: tcp.shutdown,
            ev.TcpAbort: tcp.abort, ev.TcpClose: tcp.close_flow, ev.TcpPause: tcp.pause,
            ev.TcpResume: tcp.resume, ev.TcpInboundConnected: tcp.inbound_connected,
            ev.TcpInboundRefused: tcp.inbound_refused,
            ev.UdpOpen: udp.open, ev.UdpSend: udp.send, ev.UdpClose: udp.close_flow,
            ev.IcmpOpen: icmp.open, ev.IcmpSend: icmp.send, ev.IcmpClose: icmp.close_flow,
        }
        if dns is not None:
            table[ev.DnsQuery] = dns.query
        return table

    def flush(self) -> None:
        """Write frames, act on events (which may produce more), report the
        TCP backlog once they are done, re-arm the timer.

        Events can feed the gateway again (a resumed flow offers its held
        bytes, a refused UDP send becomes ICMP), so this runs until both
        lists are empty; each round takes what is there and empties the
        lists in place (the stack holds them). The two commonest flushes,
        frames alone (a host socket's answer) and events alone (the
        container's data for a host socket), are the first round written
        out; any other goes through :meth:`_flush_rounds`."""
        frames = self._frames
        events = self._events
        tcp = self.tcp
        if self.tx_impair is not None:
            self._flush_rounds(frames, events, tcp, FLUSH_ROUNDS_MAX)
        elif frames and not events and not tcp.written and not self.udp.pending:
            # Frames and nothing else: what the first round comes to, which
            # then ends (nothing else to do). self._write, inline.
            batch = frames[:]
            frames.clear()
            txq = self._txq
            tap_write = self._tap_write
            for f in batch:
                if txq:
                    self._write(f)
                    continue
                try:
                    tap_write(f)
                except OSError as e:
                    self._write_failed(f, e)
        elif events and not frames:
            # Events alone: the first round (no frames to write) ...
            self._dispatch(events)
            # ... then the second: on to the rest of the rounds if the events
            # made frames, events or UDP datagrams, else the backlog report,
            # which ends the flush unless it made some.
            if frames or events or self.udp.pending:
                self._flush_rounds(frames, events, tcp, FLUSH_ROUNDS_MAX - 1)
            elif tcp.written and tcp.report_backlog(self.loop.time()) and (frames or events):
                self._flush_rounds(frames, events, tcp, FLUSH_ROUNDS_MAX - 2)
        else:
            self._flush_rounds(frames, events, tcp, FLUSH_ROUNDS_MAX)
        # self._arm_timer() when it can do anything: not when the stack's
        # heap had no push since it last looked (then the deadline can only
        # be later, or is still none: see _arm_timer). _on_timer resets
        # _pushes_seen, so once the armed timer has fired the next flush
        # looks again.
        tm = self._timer_watch
        if tm is None or tm.pushes != self._pushes_seen:
            self._arm_timer()

    def _dispatch(self, events: list) -> None:
        """Act on the events in hand (emptying the list in place first: the
        handlers may add more, for the next round)."""
        batch = events[:]
        events.clear()
        handlers = self._handlers
        for e in batch:
            h = handlers.get(type(e))
            if h is None:
                self.counters["host_event_unhandled"] += 1
                continue
            try:
                h(e)
            except Exception:  # noqa: BLE001 - the rest of the events must run
                self.counters["host_event_error_" + e.KIND] += 1
                log.debug("host event %s failed", e.KIND, exc_info=True)

    def _flush_rounds(self, frames: list, events: list, tcp, rounds: int) -> None:
        """flush's rounds (at most ``rounds`` of them): frames, then events,
        then UDP datagrams, then the TCP backlog report, until a round adds
        nothing."""
        for _ in range(rounds):
            if frames:
                batch = frames[:]
                frames.clear()
                write = self._write
                if self.tx_impair is None:
                    for f in batch:
                        write(f)
                else:
                    for f0 in batch:
                        for f in self.tx_impair.apply(f0):
                            write(f)
            if events:
                self._dispatch(events)
                continue
            if self.udp.pending:
                # The round's UDP datagrams, several per send (host/udp.py); a refused one
                # becomes ICMP for the next round.
                self.udp.flush_pending()
                continue
            # Only events add flows to report (TcpHost.data, pause_writing
            # inside a write): reports that made no frame and no event end it.
            if not tcp.written or not tcp.report_backlog(self.loop.time()) \
                    or not (frames or events):
                break
        else:
            # A cascade this deep is a bug; what is left waits for the next
            # flush (the next read, timer or socket callback) instead of
            # spinning here.
            self.counters["host_flush_rounds_exceeded"] += 1

    def _arm_timer(self) -> None:
        if self.rx_impair is not None and (self.rx_impair.held or self.tx_impair.held):
            if self._impair_tick is None:
                self._impair_tick = self.loop.call_later(0.005, self._release_impair)
        tm = self._stack_timers
        if tm is not None:
            # A timer is armed at or before the deadline last computed, and
            # nothing was pushed since: the deadline can only be later now,
            # which (below) would keep the armed timer anyway.
            p = tm.pushes
            if p == self._pushes_seen and self._timer_at is not None:
                return
            self._pushes_seen = p
        d = self.gw.get_timer()
        # Re-arm only for an earlier deadline. One that moved later (or went
        # away: the stack's heap drops entries of flows gone) keeps the armed
        # timer, which fires early, finds nothing due and re-arms at the real
        # deadline. A short connection moves the deadline four times (connect
        # timeout, retransmission, the push-ACK delay, none once closed):
        # re-arming each time cost a cancel and a new timer handle each.
        if d is None or (self._timer_at is not None and self._timer_at <= d):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = d
        self._timer = self.loop.call_at(d, self._on_timer)

    def _on_timer(self) -> None:
        # uvloop rounds call_at to whole milliseconds and caches loop.time(),
        # so the callback can run a hair before the deadline; run what was
        # due at the deadline we armed, or the same timer re-arms in a spin.
        d = self._timer_at
        self._timer = None
        self._timer_at = None
        self._pushes_seen = -1     # no timer armed: the next flush must re-arm (flush)
        now = self.loop.time()
        if d is not None and d > now:
            now = d
        try:
            self.gw.handle_timer(now)
        except Exception:  # noqa: BLE001
            self.counters["drop_stack_error"] += 1
            log.debug("stack error in a timer", exc_info=True)
        self.flush()

    def _release_impair(self) -> None:
        self._impair_tick = None
        now = self.loop.time()
        for f, ok in self.rx_impair.release():
            self.gw.receive_frame(f, now, ok)
        for f in self.tx_impair.release():
            self._write(f)
        self.flush()

    def _stop(self) -> None:
        # A dead TAP stays readable: stop watching it or the reader spins.
        if not self._closed and self.loop is not None:
            self.loop.remove_reader(self.fd)
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)
