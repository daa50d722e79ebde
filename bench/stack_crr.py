#!/usr/bin/env python3
"""The sans-IO stack's own cost per short connection (the crr load), without sockets or a TAP.

    .venv/bin/python bench/stack_crr.py [--n 20000] [--no-offload] [--profile]

Each connection goes through `Gateway` as Linux and a host echo server drive it in
bench/echo.py's crr load: the container's SYN (MSS, SACK, timestamps, window scale), the host
connect succeeding (`tcp_connected`), the handshake's ACK, a 1-byte request (PSH), a 1-byte
answer from the host (`tcp_host_data`, then `tcp_host_backlog` as the driver reports it), the
container's FIN acknowledging it, the host's EOF (`tcp_host_eof`), the container's last ACK; the
flow's `TcpClose` ends it. Timers run when due (the clock moves 100 µs per step). Prints the
process CPU time per connection (the stack plus building the container's frames, which is
measured alone and given too) and frames/events per connection. Nothing but Python runs, so the
figure is steady on a busy machine: the stack's share of what bench/cpu_split.py --tests crr
measures end to end. --profile prints cProfile's top functions instead.
"""
import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from usernet.stack.config import NetConfig  # noqa: E402
from usernet.stack.events import TcpClose, TcpConnect, TcpData, TcpShutdown  # noqa: E402
from usernet.stack.gateway import Gateway  # noqa: E402
from usernet.wire.frame import build_tcp  # noqa: E402
from usernet.wire.tcp import ACK, FIN, PSH, SYN, build_tcp_options  # noqa: E402

GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])
PORT = 7


def run(gw: Gateway, n: int, offload: bool, build_only: bool = False) -> tuple[int, int]:
    """``n`` connections; returns (frames to the container, events to the host)."""
    gmac = gw.mac
    fo, eo = gw.frames_out, gw.events_out
    now = 1.0
    frames = events = 0
    csum = not offload
    syn_opts = build_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(1, 0))
    ts = build_tcp_options(ts=(2, 1))

    def step(fr):
        nonlocal now, frames, events
        now += 0.0001
        if not build_only:
            gw.receive_frame(fr, now, offload)
            t = gw.get_timer()
            if t is not None and t <= now:
                gw.handle_timer(now)
        frames += len(fo)
        fo.clear()

    for k in range(n):
        sport = 10000 + k % 50000
        step(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, PORT, 1000, 0, SYN, 64240, syn_opts,
                       csum=csum))
        fid = 0
        for e in eo:
            if type(e) is TcpConnect:
                fid = e.fid
        events += len(eo)
        eo.clear()
        if not build_only:
            gw.tcp_connected(fid, now)
        our = (int.from_bytes(fo[-1][1][38:42], "big") + 1) if fo else 1
        frames += len(fo)
        fo.clear()
        step(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, PORT, 1001, our, ACK, 502, ts,
                       csum=csum))
        step(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, PORT, 1001, our, ACK | PSH, 502, ts,
                       b"x", csum=csum))
        if not build_only:
            for e in eo:
                if type(e) is TcpData:
                    gw.tcp_host_data(fid, b"y", now)
            gw.tcp_host_backlog(fid, 0, now)
        events += len(eo)
        eo.clear()
        frames += len(fo)
        fo.clear()
        step(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, PORT, 1002, our + 1, ACK | FIN, 502, ts,
                       csum=csum))
        shut = any(type(e) is TcpShutdown for e in eo)
        events += len(eo)
        eo.clear()
        if not build_only:
            assert shut, "no TcpShutdown for the container's FIN"
            gw.tcp_host_eof(fid, now)
        frames += len(fo)
        fo.clear()
        step(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, PORT, 1003, our + 2, ACK, 502, ts,
                       csum=csum))
        closed = any(type(e) is TcpClose for e in eo)
        events += len(eo)
        eo.clear()
        if not build_only:
            assert closed, "no TcpClose after the last ACK"
    return frames, events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="connections")
    ap.add_argument("--no-offload", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile's top 25 instead of the figure")
    a = ap.parse_args()
    offload = not a.no_offload
    gw = Gateway(NetConfig(), seed=1, offload=offload)
    # warm: the container's MAC learnt, caches filled
    run(gw, 200, offload)
    if a.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        run(gw, a.n, offload)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return 0
    t0 = time.process_time()
    run(gw, a.n, offload, build_only=True)
    build = time.process_time() - t0
    t0 = time.process_time()
    frames, events = run(gw, a.n, offload)
    dt = time.process_time() - t0
    n = a.n
    print(f"{(dt - build) / n * 1e6:.1f} us CPU per connection in the stack "
          f"({dt / n * 1e6:.1f} with building the container's frames), "
          f"{frames / n:.2f} frames to the container and {events / n:.2f} events to the host per "
          f"connection, {n} connections, offload {'on' if offload else 'off'}, "
          f"flows left {len(gw.flows.tcp)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
