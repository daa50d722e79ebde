#!/usr/bin/env python3
"""The floor of a Python relay: CPU per small-message transaction with no stack at all.

    .venv/bin/python bench/relay_floor.py                     # as root; ~1 min
    .venv/bin/python bench/relay_floor.py --runs 5 --duration 3

Issue 12 asks for 1-byte request/response at 0.8x slirp4netns's rate. This measures what the
interpreter and the event loop alone cost per transaction, so that the gap can be split into
"the stack's work" and "being a Python process at all". A 1-byte UDP request/response (the
container's client sends one byte to 10.0.2.2 and waits for the echo; a UDP echo server on this
namespace's loopback answers) runs through, one after the other:

    floor-uvloop   a relay that does the least a Python provider must: uvloop wakes it for the TAP
                   and for one connected UDP socket; TAP frame -> `send` of its payload; reply ->
                   a prebuilt Ethernet/IPv4/UDP header with the lengths and the IPv4 checksum
                   patched (UDP checksum 0, which IPv4 allows) -> one `write` to the TAP. No parsing
                   beyond a protocol byte, no ARP (the container gets a permanent neighbour entry),
                   no flow table, no counters, no timers.
    floor-epoll    the same relay on a bare `select.epoll` loop: what uvloop's callbacks add.
    usernet        `usernet attach` (the whole stack: parser, UDP NAT, counters, timers).
    slirp4netns    `slirp4netns --configure` (C, libslirp), when installed.

For each it reads the provider's utime and stime (/proc/PID/stat) around the run and prints CPU
µs per transaction (user, system) and the rate. The relays are not usernet and carry none of
its promises; they exist only to be measured. Nothing leaves the machine: the echo server binds
127.0.0.1 and the container's only target is 10.0.2.2. Every process is started here and killed
at the end; every wait has a timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
GUEST, GW = "10.0.2.100", "10.0.2.2"
GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")

# The container's client: 1-byte UDP request/response for --duration seconds; prints one JSON line.
CLIENT = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.connect((sys.argv[1], int(sys.argv[2])))
n = lost = 0; end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.send(b"x")
    try:
        s.recv(64); n += 1
    except socket.timeout:
        lost += 1
print(json.dumps({"tx": n, "lost": lost}))
"""

# The host's UDP echo server on loopback.
SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""


def ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def relay(mode: str, pid: int, port: int) -> None:
    """The floor relay, run as its own process (``--relay MODE PID PORT``)."""
    from usernet import netns
    cfg = netns.IfConfig(address=GUEST, prefixlen=24, gateway=GW, mtu=1500, mac=GUEST_MAC)
    tap = netns.attach(pid=pid, tap_name="tap0", vnet_hdr=False, configure=cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    peer = {"port": b"\0\0"}     # the container's UDP source port, from its last request
    eth = GUEST_MAC + GW_MAC + b"\x08\x00"
    gw_ip, guest_ip = socket.inet_aton(GW), socket.inet_aton(GUEST)
    read, write, send, recv = os.read, os.write, sock.send, sock.recv
    pack_ip = struct.Struct("!BBHHHBBH4s4s").pack
    pack_udp = struct.Struct("!2s2sHH").pack
    sport = struct.pack("!H", port)

    def on_tap() -> None:
        try:
            f = read(tap, 2048)
        except BlockingIOError:
            return
        # IPv4 (IHL 5, as the container's kernel sends it) carrying UDP to the echo port
        if f[12:14] == b"\x08\x00" and f[23] == 17:
            peer["port"] = f[34:36]
            send(f[42:])

    def on_sock() -> None:
        try:
            d = recv(2048)
        except BlockingIOError:
            return
        n = len(d)
        ip = pack_ip(0x45, 0, 28 + n, 0, 0x4000, 64, 17, 0, gw_ip, guest_ip)
        ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
        write(tap, eth + ip + pack_udp(sport, peer["port"], 8 + n, 0) + d)

    os.set_blocking(tap, False)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("ready", flush=True)
    if mode == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
        loop.add_reader(tap, on_tap)
        loop.add_reader(sock.fileno(), on_sock)
        loop.run_forever()
    else:
        import select
        ep = select.epoll()
        ep.register(tap, select.EPOLLIN)
        ep.register(sock.fileno(), select.EPOLLIN)
        handlers = {tap: on_tap, sock.fileno(): on_sock}
        while True:
            for fd, _ in ep.poll():
                handlers[fd]()


def ut_st(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def spawn(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Box:
    """A container namespace and one provider attached to it."""

    def __init__(self, kind: str, port: int):
        self.ns = spawn(["unshare", "--net", "--user", "--map-root-user", "--", "sh", "-c",
                         "echo ready; exec sleep 100000"], stdout=subprocess.PIPE, text=True)
        if self.ns.stdout.readline().strip() != "ready":
            raise RuntimeError("unshare failed")
        pid = self.ns.pid
        self.prefix = ["nsenter", "-t", str(pid), "-U", "-n", "--preserve-credentials", "--"]
        if kind.startswith("floor-"):
            self.prov = spawn([PY, __file__, "--relay", kind[6:], pid, port],
                              stdout=subprocess.PIPE, text=True)
            if self.prov.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind} failed")
            self.run(["ip", "neigh", "replace", GW, "lladdr", GW_MAC.hex(":"), "dev", "tap0",
                      "nud", "permanent"], 10)
        elif kind == "usernet":
            exe = os.path.join(os.path.dirname(PY), "usernet")
            self.prov = spawn([exe, "attach", "--mtu", "1500", pid, "tap0"], stderr=subprocess.DEVNULL)
        else:
            self.prov = spawn(["slirp4netns", "--configure", "--mtu", "1500", pid, "tap0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while GUEST not in self.run(["ip", "-4", "-o", "addr", "show", "dev", "tap0"], 10,
                                    check=False):
            if self.prov.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: tap0 never configured")
            time.sleep(0.05)

    def run(self, cmd, timeout, check=True) -> str:
        return subprocess.run(self.prefix + [str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, check=check).stdout

    def close(self) -> None:
        kill(self.prov)
        kill(self.ns)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--relay":
        relay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("relay_floor: run as root (it makes namespaces and TAPs)", file=sys.stderr)
        return 2
    kinds = ["floor-uvloop", "floor-epoll", "usernet"] + (["slirp4netns"] if shutil.which("slirp4netns") else [])
    port = free_port()
    srv = spawn([PY, "-c", SERVER, port], stdout=subprocess.PIPE, text=True)
    res: dict = {}
    boxes = {}
    try:
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError("echo server failed")
        boxes = {k: Box(k, port) for k in kinds}
        for run in range(a.runs):
            for k in (kinds[::-1] if run % 2 else kinds):
                b = boxes[k]
                u0, s0 = ut_st(b.prov.pid)
                r = json.loads(b.run([PY, "-c", CLIENT, GW, port, a.duration], a.duration + 30))
                u1, s1 = ut_st(b.prov.pid)
                if r["tx"] == 0:
                    raise RuntimeError(f"{k}: no transaction completed")
                res.setdefault(k, []).append(((u1 - u0) / r["tx"] * 1e6, (s1 - s0) / r["tx"] * 1e6,
                                              r["tx"] / a.duration))
                print(f"run {run + 1} {k:13} user {res[k][-1][0]:7.2f} sys {res[k][-1][1]:7.2f} "
                      f"tx/s {res[k][-1][2]:8.0f} lost {r['lost']}", file=sys.stderr, flush=True)
    finally:
        for b in boxes.values():
            b.close()
        kill(srv)
    print(f"\n1-byte UDP request/response through each provider, median of {a.runs} run(s) x "
          f"{a.duration:g} s; provider CPU us per transaction\n")
    print(f"| {'provider':13} | {'user':>7} | {'system':>7} | {'total':>7} | {'tx/s':>8} |")
    print(f"|{'-' * 15}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|")
    for k in kinds:
        u, s, r = (statistics.median(x[i] for x in res[k]) for i in range(3))
        print(f"| {k:13} | {u:7.1f} | {s:7.1f} | {u + s:7.1f} | {r:8,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
