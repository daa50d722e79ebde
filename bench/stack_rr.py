#!/usr/bin/env python3
"""The sans-IO stack's own cost per small-message transaction, without sockets or a TAP.

    .venv/bin/python bench/stack_rr.py [--n 20000] [--flows 1] [--no-offload]

One (or --flows) TCP connection(s) from a simulated container through `Gateway`: each
transaction feeds the container's 1-byte request (PSH, with its timestamp option, as Linux sends
it), hands the data event to a fake host that answers 1 byte at once (`tcp_host_data`), reports
the backlog (`tcp_host_backlog`, as the driver does once per flush), and takes the frames out.
Prints the process CPU time per transaction and the frames toward the container per transaction.
Nothing but Python runs, so the figure is steady on a busy machine: it is the stack's share of
what bench/whole_path.py's "provider CPU us per request/response" measures end to end.
"""
import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from usernet.stack.config import NetConfig  # noqa: E402
from usernet.stack.events import TcpConnect, TcpData  # noqa: E402
from usernet.stack.gateway import Gateway  # noqa: E402
from usernet.wire.frame import build_tcp  # noqa: E402
from usernet.wire.tcp import ACK, PSH, SYN, build_tcp_options  # noqa: E402

GUEST_MAC = bytes.fromhex("02aabbccddee")
GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="transactions per flow")
    ap.add_argument("--flows", type=int, default=1)
    ap.add_argument("--no-offload", action="store_true")
    a = ap.parse_args()
    offload = not a.no_offload
    gw = Gateway(NetConfig(), seed=1, offload=offload)
    gmac = gw.mac
    now = 1.0
    flows = []
    for i in range(a.flows):
        sport = 40000 + i
        opts = build_tcp_options(mss=1460, wscale=7, sack_perm=True, ts=(1, 0))
        gw.receive_frame(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, 1000, 0, SYN, 64240,
                                   opts), now, True)
        (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
        gw.events_out.clear()
        gw.tcp_connected(ev.fid, now)
        synack = gw.frames_out[-1][1]
        gw.frames_out.clear()
        our_seq = int.from_bytes(synack[38:42], "big") + 1
        flows.append([ev.fid, sport, 1001, our_seq])
        gw.receive_frame(build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, 1001, our_seq, ACK, 502,
                                   build_tcp_options(ts=(2, 1))), now, True)
    frames = events = 0
    fo, eo = gw.frames_out, gw.events_out
    t0 = time.process_time()
    for k in range(a.n):
        for f in flows:
            fid, sport, seq, ack = f
            now += 0.0001
            req = build_tcp(gmac, GUEST_MAC, GUEST, GW, sport, 7, seq, ack, ACK | PSH, 502,
                            build_tcp_options(ts=(3 + k, 1)), b"x", csum=not offload)
            gw.receive_frame(req, now, offload)
            for e in eo:
                if type(e) is TcpData:
                    gw.tcp_host_data(fid, b"y", now)
            events += len(eo)
            eo.clear()
            gw.tcp_host_backlog(fid, 0, now)
            t = gw.get_timer()
            if t is not None and t <= now:
                gw.handle_timer(now)
            frames += len(fo)
            fo.clear()
            f[2] = seq + 1
            f[3] = ack + 1
    dt = time.process_time() - t0
    n = a.n * a.flows
    print(f"{dt / n * 1e6:.1f} us CPU per transaction (stack + building the request frames), "
          f"{frames / n:.2f} frames to the container per transaction, {n} transactions, "
          f"{a.flows} flow(s), offload {'on' if offload else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
