"""The loopback policy tried address by address (issue 13), over TCP, UDP and ICMP.

The whole scene runs inside a network namespace the test makes (``unshare -n``): its
"host" has loopback, a veth holding 192.0.2.50 and 2001:db8::50 (the host's own
addresses) and 169.254.77.77 on lo (a link-local service, as a cloud's metadata
address), and no route anywhere else, so nothing can leave. For each case a TCP
and a UDP listener are bound to the matching host address; ``usernet run`` starts a
scanner in its namespace that sends hand-made frames straight onto tap0 (AF_PACKET,
so even 127.0.0.1 and 0.0.0.0, which the container's own kernel would keep to
itself, reach usernet) and records SYN-ACKs, UDP replies and echo replies. A case is
"reached" when the host listener saw the probe (TCP, UDP) or the host answered the
echo (ICMP); the test asserts the listener and the scanner agree, and that only what
the policy allows is reached.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, USERNET, need_root, need_tun, tool

pytestmark = [pytest.mark.integration, need_tun, need_root]

# name, address the container sends to, host address the listener binds, IPv6?
CASES = [
    ("gateway", "10.0.2.2", "127.0.0.1", False),
    ("loopback", "127.0.0.1", "127.0.0.1", False),
    ("loopback_other", "127.1.2.3", "127.1.2.3", False),
    ("any", "0.0.0.0", "0.0.0.0", False),
    ("dns_other_port", "10.0.2.3", "127.0.0.1", False),
    ("broadcast", "255.255.255.255", "0.0.0.0", False),
    ("net_broadcast", "10.0.2.255", "0.0.0.0", False),
    ("own", "192.0.2.50", "192.0.2.50", False),
    ("link_local", "169.254.77.77", "169.254.77.77", False),
    ("loopback6", "::1", "::1", True),
    ("v4_mapped", "::ffff:127.0.0.1", "127.0.0.1", True),
    ("gateway6", "fd00::2", "::1", True),
    ("own6", "2001:db8::50", "2001:db8::50", True),
    ("any6", "::", "::", True),
]
# Echo to these is answered by usernet itself (its own addresses), never by the host.
ECHO_LOCAL = {"gateway", "dns_other_port", "gateway6"}
REACHED = {
    "default": {"gateway", "own", "gateway6", "own6"},
    "disable-host-loopback": set(),
    "allow-link-local": {"gateway", "own", "gateway6", "own6", "link_local"},
}
FLAGS = {"default": [], "disable-host-loopback": ["--disable-host-loopback"],
         "allow-link-local": ["--allow-link-local"]}
BASE_PORT = 23000 + os.getpid() % 1000 * 20

SCANNER = textwrap.dedent(r'''
    import json, os, select, socket, sys, time
    from scapy.layers.inet import IP, TCP, UDP, ICMP
    from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest, ICMPv6EchoReply
    from scapy.layers.l2 import Ether
    cases = json.loads(sys.argv[1])
    src6 = None
    for _ in range(50):
        for line in open("/proc/net/if_inet6"):
            f = line.split()
            if f[5] == "tap0" and f[0].startswith("fd00"):
                src6 = ":".join(f[0][i:i + 4] for i in range(0, 32, 4))
        if src6:
            break
        time.sleep(0.1)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("tap0", 0))
    mac = s.getsockname()[4].hex(":")     # /sys shows the outer namespace's devices
    probes = []
    for i, (name, dst, port, v6) in enumerate(cases):
        dmac = "ff:ff:ff:ff:ff:ff" if name.endswith("broadcast") else "52:55:00:00:02:02"
        ip = IPv6(src=src6, dst=dst) if v6 else IP(src="10.0.2.100", dst=dst)
        sport = 40000 + i
        for proto, l4 in (("tcp", TCP(sport=sport, dport=port, flags="S", seq=1000,
                                      options=[("MSS", 1400)])),
                          ("udp", UDP(sport=sport, dport=port) / b"probe"),
                          ("icmp", (ICMPv6EchoRequest(id=sport, seq=1) if v6 else
                                    ICMP(type=8, id=sport, seq=1)) / b"probe")):
            s.send(bytes(Ether(src=mac, dst=dmac) / ip / l4))
    got = {name: {"tcp": "none", "udp": "none", "icmp": "none"} for name, *_ in cases}
    by_sport = {40000 + i: c[0] for i, c in enumerate(cases)}
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], 0.2)
        if not r:
            continue
        f = Ether(s.recv(70000))
        if TCP in f and f[TCP].dport in by_sport:
            flags = str(f[TCP].flags)
            got[by_sport[f[TCP].dport]]["tcp"] = "synack" if "S" in flags and "A" in flags else (
                "rst" if "R" in flags else got[by_sport[f[TCP].dport]]["tcp"])
        elif UDP in f and f[UDP].dport in by_sport:
            got[by_sport[f[UDP].dport]]["udp"] = "reply"
        elif ICMP in f and f[ICMP].type == 0 and f[ICMP].id in by_sport:
            got[by_sport[f[ICMP].id]]["icmp"] = "reply"
        elif ICMPv6EchoReply in f and f[ICMPv6EchoReply].id in by_sport:
            got[by_sport[f[ICMPv6EchoReply].id]]["icmp"] = "reply"
    print("SCAN " + json.dumps(got), flush=True)
''')

SCENE = textwrap.dedent(r'''
    import json, socket, subprocess, sys, threading, time
    cfg = json.loads(sys.argv[1])
    def ip(*a):
        subprocess.run(["ip", *a], check=True)
    ip("link", "set", "lo", "up")
    ip("link", "add", "uh0", "type", "veth", "peer", "name", "uh1")
    ip("link", "set", "uh0", "up")
    ip("link", "set", "uh1", "up")
    ip("addr", "add", "192.0.2.50/24", "dev", "uh0")
    ip("addr", "add", "2001:db8::50/64", "dev", "uh0", "nodad")
    ip("addr", "add", "169.254.77.77/32", "dev", "lo")
    hits = {name: {"tcp": 0, "udp": 0} for name, *_ in cfg["cases"]}
    socks = []
    def tcp_loop(name, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            hits[name]["tcp"] += 1
            c.close()
    def udp_loop(name, us):
        while True:
            try:
                data, peer = us.recvfrom(2048)
            except OSError:
                return
            hits[name]["udp"] += 1
            try:
                us.sendto(b"echo:" + data, peer)
            except OSError:
                pass
    for name, bind, port in cfg["listen"]:
        fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
        ls = socket.socket(fam, socket.SOCK_STREAM)
        us = socket.socket(fam, socket.SOCK_DGRAM)
        for x in (ls, us):
            x.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                x.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            x.bind((bind, port))
        ls.listen(16)
        socks += [ls, us]
        threading.Thread(target=tcp_loop, args=(name, ls), daemon=True).start()
        threading.Thread(target=udp_loop, args=(name, us), daemon=True).start()
    r = subprocess.run(cfg["argv"], capture_output=True, text=True, timeout=60)
    time.sleep(0.3)
    print("RESULT " + json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
                                  "hits": hits}), flush=True)
''')


def _scene(policy):
    cases = [(name, dst, BASE_PORT + i, v6) for i, (name, dst, _b, v6) in enumerate(CASES)]
    listen = [(name, bind, BASE_PORT + i) for i, (name, _d, bind, _v) in enumerate(CASES)]
    argv = USERNET + ["run", "-6", *FLAGS[policy], "--", sys.executable, "-c", SCANNER,
                      json.dumps(cases)]
    cfg = {"cases": cases, "listen": listen, "argv": argv}
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", SCENE, json.dumps(cfg)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["rc"] == 0, out
    scan = json.loads(out["stdout"].split("SCAN ", 1)[1])
    return scan, out["hits"], out["stderr"]


_RESULTS = {}


def _results(policy):
    if policy not in _RESULTS:
        tool("unshare")
        tool("ip")
        _RESULTS[policy] = _scene(policy)
    return _RESULTS[policy]


@pytest.mark.parametrize("policy", list(REACHED))
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_policy_address_by_address(policy, name):
    scan, hits, err = _results(policy)
    want = name in REACHED[policy]
    got, hit = scan[name], hits[name]
    ctx = f"{policy} {name}: scan={got} host={hit}\n{err[-2000:]}"
    # TCP: a SYN-ACK only from a host connect that succeeded; else RST (or nothing).
    assert (got["tcp"] == "synack") == want, ctx
    assert (hit["tcp"] > 0) == want, ctx
    # UDP: the host listener's echo comes back only if it got the datagram.
    assert (got["udp"] == "reply") == want, ctx
    assert (hit["udp"] > 0) == want, ctx
    # ICMP: the host's kernel answers the echo only if it was sent there.
    if name not in ECHO_LOCAL:
        assert (got["icmp"] == "reply") == (want and name not in ("broadcast", "net_broadcast")), ctx
