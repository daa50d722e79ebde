#!/usr/bin/env python3
"""Python bytecodes and calls per small-message transaction, exactly, by module.

    .venv/bin/python bench/bytecodes.py [--n 200] [--flows 1,50] [--funcs 15] [--no-offload]
    .venv/bin/python bench/bytecodes.py --cpu 5 --n 5000 [--flows 1,50]   # CPU time instead

What runs: the provider's own per-packet code, in process, over a stand-in TAP:
``HostDriver`` (usernet/host/driver.py) with ``TcpHost``/``FlowProtocol``
(usernet/host/tcp.py) in front of the real ``Gateway`` (stack and wire), on a
fake event loop. The TAP is one end of a ``SOCK_SEQPACKET`` socket pair (one
message per frame, with the virtio-net header, as a TAP with IFF_VNET_HDR
gives), so the driver's real ``os.read``/``os.writev`` run. Each host socket
is a fake transport whose ``write`` keeps the bytes and whose write buffer is
always empty. The handshake is done beforehand, outside the count.

One transaction, as in bench/whole_path.py's rr and redis loads: the
"container" (this script, not counted) writes a 1-byte request (ACK|PSH with
the timestamp option, acknowledging everything it got) to the TAP; the
driver's reader callback ``_on_readable`` runs (counted: read, gateway, the
TcpData event, ``transport.write``, the backlog report, the timer re-arm);
the "host server" answers 1 byte through ``FlowProtocol.get_buffer`` /
``buffer_updated`` as uvloop would call them (counted: the stack's send path,
framing, the TAP ``writev``, the flush); the response is read back from the
TAP (not counted). The clock moves 100 µs per round, and the driver's timer
callback ``_on_timer`` runs (counted) whenever its deadline has passed. With
``--flows 50``, each round has every flow send its request first (the reader
drains them in one wake-up), then every host socket answers in turn, as 50
redis clients do.

Not covered: uvloop's own C code and the kernel (no bytecodes), and anything
the real transports do in Python under plain asyncio (uvloop's are C).
Counting: ``sys.settrace`` with ``f_trace_opcodes`` while the provider's
callbacks run; "calls" are Python frames entered (C functions are not
counted; generator resumptions are). Warm-up rounds are not counted. The
figures are exact and repeatable, unlike CPU time on a shared machine: use
them before/after a change of the per-packet path.
"""
import argparse
import os
import socket
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from usernet.host import driver as driver_mod  # noqa: E402
from usernet.host.driver import HostDriver  # noqa: E402
from usernet.host.tcp import FlowProtocol  # noqa: E402
from usernet.stack.config import NetConfig  # noqa: E402
from usernet.stack.events import TcpConnect  # noqa: E402
from usernet.stack.gateway import Gateway  # noqa: E402
from usernet.wire.frame import build_tcp  # noqa: E402
from usernet.wire.tcp import ACK, PSH, SYN, build_tcp_options  # noqa: E402
from usernet.wire.vnet import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN  # noqa: E402

_cpu_ns = time.process_time_ns
GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])
STEP = 0.0001          # clock per round (s)


class _Handle:
    def __init__(self, loop, when, cb):
        self.loop, self.when, self.cb, self.cancelled = loop, when, cb, False

    def cancel(self):
        self.cancelled = True


class _Future:
    def __init__(self):
        self._done = False

    def done(self):
        return self._done

    def set_result(self, _):
        self._done = True


class FakeLoop:
    """What HostDriver asks of its loop on the per-packet path."""

    def __init__(self):
        self.t = 1.0
        self.timers: list[_Handle] = []

    def time(self):
        return self.t

    def call_at(self, when, cb):
        h = _Handle(self, when, cb)
        self.timers.append(h)
        return h

    def call_later(self, delay, cb):
        return self.call_at(self.t + delay, cb)

    def create_future(self):
        return _Future()

    def add_reader(self, fd, cb):
        pass

    def remove_reader(self, fd):
        pass

    def add_writer(self, fd, cb):
        raise RuntimeError("the TAP stand-in never fills")

    def remove_writer(self, fd):
        pass

    def due(self):
        out = [h for h in self.timers if not h.cancelled and h.when <= self.t]
        self.timers = [h for h in self.timers if not h.cancelled and h.when > self.t]
        return out


class FakeTransport:
    """A host socket whose writes always go out at once."""

    def __init__(self):
        self.got = bytearray()

    def write(self, data):
        self.got += data

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, high, low):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def can_write_eof(self):
        return True


class Tracer:
    """Counts opcodes and Python calls by file (and by function) while on."""

    def __init__(self):
        self.ops = Counter()
        self.calls = Counter()
        self.fops = Counter()
        self.fcalls = Counter()

    def _name(self, code):
        fn = code.co_filename
        if fn.startswith(ROOT + os.sep):
            fn = fn[len(ROOT) + 1:]
        else:
            fn = "(other) " + os.path.basename(fn)
        return fn

    def global_trace(self, frame, event, arg):
        code = frame.f_code
        fn = self._name(code)
        key = (fn, code.co_firstlineno, code.co_name)
        self.calls[fn] += 1
        self.fcalls[key] += 1
        frame.f_trace_opcodes = True
        ops, fops = self.ops, self.fops

        def local(frame, event, arg):
            if event == "opcode":
                ops[fn] += 1
                fops[key] += 1
            return local
        return local

    def run(self, fn, *args):
        sys.settrace(self.global_trace)
        try:
            return fn(*args)
        finally:
            sys.settrace(None)


class CpuTimer:
    """Instead of counting: the process CPU time spent inside the provider's
    callbacks (``--cpu``; no tracing, so the code runs at its own speed)."""

    def __init__(self):
        self.ns = 0

    def run(self, fn, *args):
        t0 = _cpu_ns()
        try:
            return fn(*args)
        finally:
            self.ns += _cpu_ns() - t0


def _req(gmac, sport, seq, ack, tsval, tsecr, payload=b"x"):
    f = build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, seq, ack, ACK | PSH if payload else ACK,
                  502, build_tcp_options(ts=(tsval, tsecr)), payload, csum=False)
    return f


def scenario(nflows: int, n: int, warm: int, offload: bool, tracer) -> dict:
    gw = Gateway(NetConfig(), seed=1, offload=offload)
    loop = FakeLoop()
    tap, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap.setblocking(False)
    drv = HostDriver(gw, tap.fileno(), vnet_hdr=True)
    drv.start(loop)
    gmac = gw.mac
    vh = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 0, 0)
    assert len(vh) == VNET_HDR_LEN

    def send(frame):
        peer.send(vh + bytes(frame))

    def recv_all():
        out = []
        peer.setblocking(False)
        while True:
            try:
                m = peer.recv(70000)
            except BlockingIOError:
                break
            out.append(m[VNET_HDR_LEN:])
        return out

    flows = []
    for i in range(nflows):
        sport = 40000 + i
        opts = build_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(1, 0))
        gw.receive_frame(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, 1000, 0, SYN, 64240,
                                   opts), loop.t, True)
        (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
        gw.events_out.clear()
        proto = FlowProtocol(drv.tcp, ev.fid)
        proto.connection_made(FakeTransport())
        drv.tcp.adopt(ev.fid, proto)
        gw.tcp_connected(ev.fid, loop.t)
        synack = gw.frames_out[-1][1]
        gw.frames_out.clear()
        our_seq = int.from_bytes(synack[38:42], "big") + 1
        gw.receive_frame(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, 1001, our_seq, ACK, 502,
                                   build_tcp_options(ts=(2, 0))), loop.t, True)
        flows.append({"fid": ev.fid, "sport": sport, "seq": 1001, "ack": our_seq, "proto": proto})
    recv_all()
    hb = drv.tcp.read_buf
    frames_to_guest = 0
    tsval = 10
    on = False

    def call(fn, *a):
        return tracer.run(fn, *a) if on else fn(*a)

    for k in range(warm + n):
        on = k >= warm
        loop.t += STEP
        tsval += 1
        for f in flows:
            send(_req(gmac, f["sport"], f["seq"], f["ack"], tsval, 0))
            f["seq"] += 1
        # The reader: one wake-up per frame while single-frame reads are on,
        # as a level-triggered loop calls it while the TAP holds frames.
        for _ in range(nflows + 1):
            call(drv._on_readable)
            if not _pending(tap):
                break
        for f in flows:
            hb[0:1] = b"y"
            proto = f["proto"]
            call(proto.get_buffer, 65536)
            call(proto.buffer_updated, 1)
        for h in loop.due():
            call(h.cb)
        got = recv_all()
        if on:
            frames_to_guest += len(got)
        for fr in got:
            # Data from the host: the next request acknowledges it.
            if len(fr) > 14 + 20 + 32:
                for f in flows:
                    if int.from_bytes(fr[36:38], "big") == f["sport"]:
                        plen = len(fr) - 14 - 20 - ((fr[14 + 20 + 12] >> 4) * 4)
                        f["ack"] += plen
    for f in flows:
        assert len(f["proto"].transport.got) == warm + n, "requests lost"
    tap.close()
    peer.close()
    return {"frames": frames_to_guest, "counters": gw.counters}


def _pending(sock) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True
    except BlockingIOError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="counted rounds per case")
    ap.add_argument("--warm", type=int, default=20, help="rounds run before counting")
    ap.add_argument("--flows", default="1,50", help="comma-separated flow counts, one case each")
    ap.add_argument("--funcs", type=int, default=0, help="also print the top N functions")
    ap.add_argument("--no-offload", action="store_true")
    ap.add_argument("--cpu", type=int, default=0, metavar="REPEATS",
                    help="do not count: print the CPU time inside the provider's callbacks per "
                         "transaction (median of REPEATS runs of --n rounds); noisy, unlike counts")
    a = ap.parse_args()
    if a.cpu:
        for nf in [int(x) for x in a.flows.split(",")]:
            per = []
            for _ in range(a.cpu):
                tm = CpuTimer()
                scenario(nf, a.n, a.warm, not a.no_offload, tm)
                per.append(tm.ns / 1000 / (a.n * nf))
            per.sort()
            print(f"== {nf} flow(s): {per[len(per) // 2]:.2f} us CPU per transaction in the "
                  f"provider's callbacks, median of {a.cpu} x {a.n * nf} "
                  f"[{per[0]:.2f}-{per[-1]:.2f}]")
        return 0
    for nf in [int(x) for x in a.flows.split(",")]:
        tr = Tracer()
        res = scenario(nf, a.n, a.warm, not a.no_offload, tr)
        tx = a.n * nf
        tot_ops = sum(tr.ops.values())
        tot_calls = sum(tr.calls.values())
        print(f"== {nf} flow(s), {tx} transactions counted, offload "
              f"{'off' if a.no_offload else 'on'}: {tot_ops / tx:.1f} bytecodes, "
              f"{tot_calls / tx:.1f} Python calls per transaction; "
              f"{res['frames'] / tx:.2f} frames to the container per transaction")
        c = res["counters"]
        fp = c.get("tcp_fast_path_rx", 0)
        print(f"   tcp_fast_path_rx {fp}  tcp_fast_path_tx {c.get('tcp_fast_path_tx', 0)}")
        print(f"   {'module':<28} {'bytecodes':>10} {'calls':>8}")
        for fn, v in tr.ops.most_common():
            print(f"   {fn:<28} {v / tx:>10.1f} {tr.calls[fn] / tx:>8.2f}")
        if a.funcs:
            print(f"   top {a.funcs} functions (bytecodes, calls per transaction):")
            for (fn, line, name), v in tr.fops.most_common(a.funcs):
                print(f"     {v / tx:>7.1f} {tr.fcalls[(fn, line, name)] / tx:>5.2f}  "
                      f"{fn}:{line} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
