"""What the switch costs per frame, in process (sans-IO, no TAP): CPU time per
frame of (a) a link on no network (Gateway.receive_frame), (b) the same frame
from a link on a network (Port.receive: the NAT fast path to its own gateway),
(c) a frame switched to another link's TAP (Port.receive -> Network.forward).

    .venv/bin/python bench/switch_path.py [N]

Prints microseconds per frame and the ratios to (a). The frame is an ACK of
an established TCP flow toward the gateway for (a)/(b), a TCP segment between
two containers for (c). CPU time (process_time), best of 5 runs.
"""

import sys
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway
from usernet.stack.switch import Network
from usernet.wire.vnet import VNET_HDR_NONE

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def best(fn, n):
    out = []
    for _ in range(5):
        t = time.process_time()
        fn(n)
        out.append((time.process_time() - t) / n * 1e6)
    return min(out)


def main():
    net = Network("bench", "10.89.0.0/24")
    ports = []
    for i, mac in enumerate((A, B)):
        ip = net.allocate()
        gw = Gateway(NetConfig(**net.config_fields(ip)), seed=i)
        p = net.add_port(gw, name=f"l{i}")
        ports.append(p)
        ipt = f"10.89.0.{100 + i}"
        p.receive(VNET_HDR_NONE, bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=mac, psrc=ipt, pdst=ipt)), 0.0)
    a, b = ports
    plain = Gateway(NetConfig(), seed=3)
    # A segment of no flow: the gateway answers RST (the same work for (a) and (b)).
    to_gw = bytes(Ether(src=A, dst="52:55:00:00:02:02") / IP(src="10.89.0.100", dst="192.0.2.1") /
                  TCP(sport=1000, dport=80, flags="A"))
    to_gw_plain = bytes(Ether(src=A, dst="52:55:00:00:02:02") / IP(src="10.0.2.100",
                                                                  dst="192.0.2.1") /
                        TCP(sport=1000, dport=80, flags="A"))
    to_b = bytes(Ether(src=A, dst=B) / IP(src="10.89.0.100", dst="10.89.0.101") / TCP(flags="A"))

    def run_plain(n):
        rf, out = plain.receive_frame, plain.frames_out
        for _ in range(n):
            rf(to_gw_plain, 1.0, True)
            out.clear()

    def run_port(n):
        rf, out = a.receive, a.gw.frames_out
        for _ in range(n):
            rf(VNET_HDR_NONE, to_gw, 1.0, True)
            out.clear()

    def run_switched(n):
        rf, out = a.receive, b.tap_out
        for _ in range(n):
            rf(VNET_HDR_NONE, to_b, 1.0, True)
            out.clear()
            net.dirty.clear()
            b.dirty = False

    pa, pb, pc = best(run_plain, N), best(run_port, N), best(run_switched, N)
    print(f"{'path':44s} {'us/frame':>9s} {'ratio':>6s}")
    print(f"{'(a) no network: Gateway.receive_frame':44s} {pa:9.2f} {1:6.2f}")
    print(f"{'(b) on a network, to its own gateway':44s} {pb:9.2f} {pb / pa:6.2f}")
    print(f"{'(c) on a network, switched to another link':44s} {pc:9.2f} {pc / pa:6.2f}")
    assert a.counters["switch_unicast"] >= N and plain.counters["tcp_rst_no_flow"] >= N


if __name__ == "__main__":
    main()
