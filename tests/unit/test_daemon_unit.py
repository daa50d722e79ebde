"""usernet daemon's pieces without namespaces: the socket's default place, the
pooled memory budget, the attach request's checks, port conflicts, the status
table, and the protocol against an in-process daemon (a socketpair for a TAP)."""

import argparse
import asyncio
import os
import socket

import pytest

from usernet import daemon as dm
from usernet.publish import Forward
from usernet.stack.budget import BudgetPool, PooledBudget
from usernet.stack.config import NetConfig


def test_default_socket_path(tmp_path):
    own = tmp_path / "xdg"
    own.mkdir()
    uid = os.geteuid()
    assert dm.default_socket_path({"XDG_RUNTIME_DIR": str(own)}, uid) == \
        str(own / "usernet" / "daemon.sock")
    # A runtime dir that is not the user's (setpriv keeps root's variable) is not used.
    assert dm.default_socket_path({"XDG_RUNTIME_DIR": str(own)}, uid + 1) == \
        f"/tmp/usernet-{uid + 1}/daemon.sock"
    assert dm.default_socket_path({}, 0) == "/run/usernet/daemon.sock"
    assert dm.default_socket_path({}, 1000) == "/tmp/usernet-1000/daemon.sock"
    assert dm.default_socket_path({"XDG_RUNTIME_DIR": "relative"}, 1000) == \
        "/tmp/usernet-1000/daemon.sock"
    assert dm.default_socket_path({dm.SOCKET_ENV: "/x/y.sock", "XDG_RUNTIME_DIR": str(own)},
                                  uid) == "/x/y.sock"


def test_pooled_budget_own_limit_and_pool():
    pool = BudgetPool(100)
    a, b = PooledBudget(60, pool), PooledBudget(60, pool)
    a.used += 50
    b.used += 40
    assert pool.used == 90 and not a.over() and not b.over()
    b.used += 20                       # b at its own limit, the pool past its own
    assert b.over() and a.over() and pool.used == 110
    b.used -= 20
    assert not a.over() and not b.over()
    a.detach()                         # a link goes: its charge leaves the pool
    assert pool.used == 40 and a.used == 0
    a.used += 1000                     # whatever it does later counts nowhere
    assert pool.used == 40


def test_gateway_takes_a_pooled_budget():
    from usernet.stack.gateway import Gateway
    pool = BudgetPool(1 << 30)
    b = PooledBudget(1 << 20, pool)
    gw = Gateway(NetConfig(), budget=b)
    assert gw.budget is b and gw.tcp.budget is b and gw.flows.budget is b
    assert gw.gauges()["memory_budget"] == 1 << 20


def _args(**kw):
    d = dict(publish=[[Forward("tcp", "0.0.0.0", 8080, 80)]], dns_upstream=[("127.0.0.1", 5353)],
             offload=True, impair=None, publish_from_gateway=False,
             publish_only_when_bound=False, api_socket=None, pcap=None, pcap_snaplen=None,
             pcap_max_size=None)
    d.update(kw)
    return argparse.Namespace(**d)


def test_link_request_round_trip():
    cfg = NetConfig(cidr="10.9.0.0/24", mtu=9000, guest_mac=bytes.fromhex("020000000001"),
                    enable_ipv6=True)
    req = dm.link_request(cfg, _args(), where="pid 1", pid=1, tap="tap0", network="net1",
                          name="web")
    spec = dm.LinkSpec(req)
    assert spec.config == cfg
    assert spec.publish == [Forward("tcp", "0.0.0.0", 8080, 80)]
    assert spec.dns_upstream == [("127.0.0.1", 5353)]
    assert (spec.network, spec.name, spec.pid, spec.where) == ("net1", "web", 1, "pid 1")


@pytest.mark.parametrize("change, words", [
    (lambda r: r.update(bogus=1), "unknown field 'bogus'"),
    (lambda r: r["config"].update(mtu="9000"), "config.mtu has the wrong type"),
    (lambda r: r["config"].update(mtu=True), "config.mtu has the wrong type"),
    (lambda r: r["config"].update(mtu=10), "MTU must be"),
    (lambda r: r["config"].update(cidr="10.0.0.0/30"), "prefix length"),
    (lambda r: r["options"].update(publish=[["tcp"]]), "malformed"),
    (lambda r: r["options"].update(api_socket="rel.sock"), "not an absolute path"),
    (lambda r: r["options"].update(impair="loss=2"), "bad impair"),
    (lambda r: r.update(name="not a label"), "not a DNS label"),
    (lambda r: r.update(version=99), "protocol version"),
])
def test_link_spec_refuses(change, words):
    req = dm.link_request(NetConfig(), _args(), where="w", pid=None, tap="tap0")
    change(req)
    with pytest.raises(dm.DaemonError, match=words):
        dm.LinkSpec(req)


def test_ports_overlap():
    o = dm._ports_overlap
    assert o(("tcp", "0.0.0.0", 80), ("tcp", "127.0.0.1", 80))
    assert o(("tcp", "127.0.0.1", 80), ("tcp", "127.0.0.1", 80))
    assert not o(("tcp", "127.0.0.1", 80), ("tcp", "127.0.0.2", 80))
    assert not o(("tcp", "0.0.0.0", 80), ("udp", "0.0.0.0", 80))
    assert not o(("tcp", "0.0.0.0", 80), ("tcp", "0.0.0.0", 81))
    assert not o(("tcp", "::", 80), ("tcp", "127.0.0.1", 80))      # IPV6_V6ONLY listeners
    assert o(("tcp", "::", 80), ("tcp", "::1", 80))


def test_status_table():
    st = {"daemon": {"pid": 7, "socket": "/s", "links": 1, "closing": 0, "max_links": 9,
                     "memory_budget": 1 << 30, "memory_used": 0, "rss": 30 << 20,
                     "rss_peak": 31 << 20, "uptime": 1.0},
          "links": [{"id": 3, "where": "pid 42", "pid": 42, "network": "", "name": "",
                     "addresses": ["10.0.2.100/24"], "flows": {"tcp": 2, "udp": 1, "icmp": 0},
                     "rx_bytes": 2048, "tx_bytes": 10, "memory_used": 0,
                     "forwards": ["tcp/0.0.0.0:8080"]}]}
    out = dm.format_status(st).splitlines()
    assert out[0].startswith("daemon pid 7 at /s: 1 link(s), rss 30.0M")
    assert out[1].split()[:3] == ["LINK", "NAMESPACE", "PID"]
    assert out[2].split() == ["3", "pid", "42", "42", "-", "-", "10.0.2.100/24", "2/1/0",
                              "2.0K", "10B", "0B", "tcp/0.0.0.0:8080"]


def test_protocol_in_process(tmp_path):
    """attach a socketpair as a TAP, see it in status and stats, end it by its
    exit fd, stop; bad requests are answered, never fatal."""
    path = str(tmp_path / "d.sock")
    d = dm.Daemon(path, memory_budget=64 << 20, max_links=1)
    d.listen(default_dir=False)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    async def main():
        loop = asyncio.get_running_loop()
        task = loop.create_task(d.run())
        await asyncio.sleep(0.05)
        tap, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        exit_r, exit_w = os.pipe()
        req = dm.link_request(NetConfig(memory_budget=128 << 20), _args(publish=[]),
                              where="test", pid=None, tap="tap0", fds=("tap", "exit"))

        def client(msg, fds=()):
            c = dm.DaemonClient(path)
            try:
                return c.request(msg, fds)
            finally:
                c.close()
        reply = await loop.run_in_executor(None, client, req, [tap.fileno(), exit_r])
        assert reply["ok"] is True and reply["link"] == 1, reply
        again = dm.link_request(NetConfig(), _args(publish=[]), where="t2", pid=None, tap="tap0",
                                fds=("tap",))
        t2, p2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reply = await loop.run_in_executor(None, client, again, [t2.fileno()])
        assert reply["ok"] is False and "link limit reached (1)" in reply["error"]["message"]
        st = await loop.run_in_executor(None, client, {"op": "status"})
        assert [ln["id"] for ln in st["links"]] == [1]
        # the link's share: its own budget, at most the daemon's
        assert st["links"][0]["memory_budget"] == 64 << 20
        stats = await loop.run_in_executor(None, client, {"op": "stats", "link": 1})
        assert "tcp_syn_connect" in stats["stats"]
        bad = await loop.run_in_executor(None, client, {"op": "status"}, [exit_w])
        assert bad["ok"] is False and "takes no fds" in bad["error"]["message"]
        import gc
        import weakref
        link = weakref.ref(d.links[1])
        gw = weakref.ref(d.links[1].gw)
        os.close(exit_w)              # the exit fd's other end: the link ends
        for _ in range(100):
            if not d.links and not d.closing:
                break
            await asyncio.sleep(0.02)
        assert not d.links and not d.closing and d.pool.used == 0
        await asyncio.sleep(0.05)
        gc.collect()
        assert link() is None and gw() is None, "a freed link is still referenced"
        # An exit fd that cannot be watched (a regular file): refused, nothing left behind.
        t3, p3 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        f = open(tmp_path / "plain", "w")
        req3 = dm.link_request(NetConfig(), _args(publish=[]), where="t3", pid=None, tap="tap0",
                               fds=("tap", "exit"))
        reply = await loop.run_in_executor(None, client, req3, [t3.fileno(), f.fileno()])
        assert reply["ok"] is False and "cannot be watched" in reply["error"]["message"], reply
        assert not d.links and not d.closing
        f.close()
        t3.close()
        p3.close()
        reply = await loop.run_in_executor(None, client, {"op": "stop"})
        assert reply["ok"] is True
        assert await task == 0
        for s in (tap, peer, t2, p2):
            s.close()
        os.close(exit_r)
    from usernet.serve import new_loop
    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        d.unlisten()
        loop.close()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")


def test_links_share_one_global_budget():
    """Two links' gateways in one pool: link A's unread flows spend the pool,
    so link B's new SYN is reset (counted in B's counters, not A's) although B
    holds nothing; once A's flows go, B's new flows are accepted again. And a
    link's own limit holds inside a roomy pool."""
    from test_limits import Flow, feed, ip
    from scapy.layers.inet import TCP
    from usernet.stack.gateway import Gateway
    from usernet.stack.tcp import SND_BUF
    pool = BudgetPool(1 << 20)
    ga = Gateway(NetConfig(), seed=1, budget=PooledBudget(256 << 20, pool))
    gb = Gateway(NetConfig(), seed=2, budget=PooledBudget(256 << 20, pool))
    a1, a2 = Flow(ga, 1001), Flow(ga, 1002)
    assert ga.tcp_host_data(a1.fid, b"x" * SND_BUF, 0.1) == SND_BUF
    assert ga.tcp_host_data(a2.fid, b"y" * SND_BUF, 0.1) == SND_BUF
    from usernet.stack.config import TCP_FLOW_COST      # each flow's own objects (issue 15)
    assert pool.used == 2 * (SND_BUF + TCP_FLOW_COST) and gb.budget.used == 0
    out = feed(gb, ip() / TCP(sport=2001, dport=80, flags="S", seq=5), 0.2)
    assert out[0][TCP].flags.R and gb.counters["tcp_syn_budget_rst"] == 1
    assert ga.counters["tcp_syn_budget_rst"] == 0
    ga.tcp_host_reset(a1.fid, 0.3)
    ga.tcp_host_reset(a2.fid, 0.3)
    assert pool.used == 0
    out = feed(gb, ip() / TCP(sport=2002, dport=80, flags="S", seq=5), 0.4)
    assert not out and gb.flows.tcp_connecting == 1
    # Own limit: 1 MiB for C in a 1 GiB pool.
    big = BudgetPool(1 << 30)
    gc = Gateway(NetConfig(), seed=3, budget=PooledBudget(1 << 20, big))
    c1, c2 = Flow(gc, 3001), Flow(gc, 3002)
    gc.tcp_host_data(c1.fid, b"x" * SND_BUF, 0.1)
    gc.tcp_host_data(c2.fid, b"y" * SND_BUF, 0.1)
    gc.frames_out.clear()
    out = feed(gc, ip() / TCP(sport=3003, dport=80, flags="S", seq=5), 0.2)
    assert out[0][TCP].flags.R and gc.counters["tcp_syn_budget_rst"] == 1
    assert not big.over()


def test_flow_tables_share_the_open_files(tmp_path, monkeypatch):
    """Each link's flow tables are capped at its share of the open files,
    shrinking as links come and growing back as they go; a link that would
    get less than MIN_FLOW_SHARE is refused."""
    monkeypatch.setattr(dm.Daemon, "_fd_limit", staticmethod(lambda: 400))
    path = str(tmp_path / "d.sock")
    d = dm.Daemon(path)
    d.listen(default_dir=False)
    pairs = []

    async def main():
        loop = asyncio.get_running_loop()
        task = loop.create_task(d.run())
        await asyncio.sleep(0.05)

        def client(msg, fds=()):
            c = dm.DaemonClient(path)
            try:
                return c.request(msg, fds)
            finally:
                c.close()

        def attach():
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pairs.extend((a, b))
            req = dm.link_request(NetConfig(), _args(publish=[]), where="t", pid=None,
                                  tap="tap0", fds=("tap",))
            return client(req, [a.fileno()])

        def limits():
            return [ln["flow_limits"] for ln in client({"op": "status"})["links"]]
        assert (await loop.run_in_executor(None, attach))["ok"]
        assert await loop.run_in_executor(None, limits) == [{"tcp": 240, "udp": 64, "icmp": 16}]
        assert (await loop.run_in_executor(None, attach))["ok"]
        assert await loop.run_in_executor(None, limits) == [{"tcp": 114, "udp": 30, "icmp": 7}] * 2
        assert (await loop.run_in_executor(None, attach))["ok"]      # (400-64)//3-16 = 96
        assert (await loop.run_in_executor(None, attach))["ok"]      # 68
        r = await loop.run_in_executor(None, attach)                 # 51
        assert r["ok"]
        r = await loop.run_in_executor(None, attach)                 # 40
        assert r["ok"]
        r = await loop.run_in_executor(None, attach)                 # 32
        assert r["ok"]
        r = await loop.run_in_executor(None, attach)                 # 26 < 32: refused
        assert r["ok"] is False and "too few open files" in r["error"]["message"], r
        for lid in (1, 2, 3, 4, 5, 6):
            assert (await loop.run_in_executor(None, client, {"op": "detach", "link": lid}))["ok"]
        assert await loop.run_in_executor(None, limits) == [{"tcp": 240, "udp": 64, "icmp": 16}]
        d.stop()
        assert await task == 0
    from usernet.serve import new_loop
    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        d.unlisten()
        loop.close()
        for s in pairs:
            s.close()


@pytest.mark.parametrize("argv", [["daemon", "status"], ["daemon", "stop"], ["daemon", "detach", "3"],
                                  ["network", "ls"]])
def test_daemon_commands_take_the_socket_under_both_spellings(argv):
    """attach/run spell it --daemon-socket, the daemon's own commands --socket: both work."""
    from usernet.cli import build_parser
    for flag in ("--socket", "--daemon-socket"):
        args = build_parser().parse_args(argv + [flag, "/tmp/x/d.sock"])
        assert args.socket == "/tmp/x/d.sock"
