"""Limits, the memory budget, liveness and eviction (issue 13), sans-IO.

Each test first builds the situation the issue describes (a hostile or
broken container) and then checks the named counter and that existing flows
keep working. Time is an explicit float; no sockets.
"""

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from usernet.stack.config import (BUDGET_FLOW_WINDOW, DNS_MAX_PENDING, FRAG_MAX_DATAGRAMS,
                                  MAX_TCP_FLOWS, TCP_FLOW_COST, TCP_MIN_PEER_MSS, NetConfig)
from usernet.stack.events import DnsQuery, TcpAbort, TcpConnect, TcpData, TcpShutdown
from usernet.stack.gateway import Gateway
from usernet.stack.tcp import SND_BUF
from usernet.stack.tcpnat import PUSH_ACK_DELAY

GUEST_MAC = "02:00:00:00:00:64"
EVIL_MAC = "02:00:00:00:0e:11"
GW_MAC = "52:55:00:00:02:02"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
DNS_IP = "10.0.2.3"


def make_gw(**kw):
    return Gateway(NetConfig(**kw), seed=1)


def feed(gw, pkt, now=0.0):
    gw.receive_frame(bytes(pkt), now)
    out = [Ether(bytes(f)) for _hdr, f in gw.frames_out]
    gw.frames_out.clear()
    return out


def ip(dst=GW, src=GUEST, mac=GUEST_MAC):
    return Ether(src=mac, dst=GW_MAC) / IP(src=src, dst=dst)


class Flow:
    """One TCP flow from the container to the host, opened through the gateway."""

    def __init__(self, gw, sport, now=0.0, mss=1460, dport=80):
        self.gw, self.sport, self.dport = gw, sport, dport
        gw.events_out.clear()
        feed(gw, ip() / TCP(sport=sport, dport=dport, flags="S", seq=1000,
                            options=[("MSS", mss)]), now)
        (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
        self.fid = ev.fid
        gw.events_out.clear()
        gw.tcp_connected(self.fid, now)
        (synack,) = [Ether(bytes(f)) for _h, f in gw.frames_out]
        gw.frames_out.clear()
        self.seq = 1001
        self.ack = synack[TCP].seq + 1
        self.send(b"", now)

    def send(self, data=b"", now=0.0, flags="A", seq=None, ack=None, window=65535):
        return feed(self.gw, ip() / TCP(sport=self.sport, dport=self.dport, flags=flags,
                                         seq=self.seq if seq is None else seq,
                                         ack=self.ack if ack is None else ack,
                                         window=window) / Raw(data), now)

    def push(self, data, now, **kw):
        """Data with PSH; our ACK waits for the host's answer (PUSH_ACK_DELAY)
        and, none coming, goes out when that timer fires. Returns the frames
        without payload (the ACKs; a tail-loss probe may go out too)."""
        out = self.send(data, now, flags="PA", **kw)
        out += run_timers(self.gw, now + PUSH_ACK_DELAY, now + PUSH_ACK_DELAY)
        return [f for f in out if not len(f[TCP].payload)]

    @property
    def flow(self):
        return self.gw.flows.tcp.by_id.get(self.fid)


def run_timers(gw, start, end, step=0.5):
    out = []
    t = start
    while t <= end:
        gw.handle_timer(t)
        out += [Ether(bytes(f)) for _h, f in gw.frames_out]
        gw.frames_out.clear()
        t += step
    return out


# ------------------------------------------------------------- memory budget
def test_budget_refuses_new_work_shrinks_windows_and_frees():
    """Flows whose host peers never read fill the budget: a new SYN is reset,
    a new UDP flow, fragment set and DNS query are refused, the windows shrink;
    an existing flow still moves; when the flows go, the budget is free."""
    gw = make_gw(memory_budget=1 << 20)
    a, b = Flow(gw, 1001), Flow(gw, 1002)
    # Host -> container: 512 KiB each, the container never ACKs them.
    assert gw.tcp_host_data(a.fid, b"x" * SND_BUF, 0.1) == SND_BUF
    assert gw.tcp_host_data(b.fid, b"y" * SND_BUF, 0.1) == SND_BUF
    gw.frames_out.clear()
    assert gw.budget.used == 2 * SND_BUF + 2 * TCP_FLOW_COST and gw.budget.over()
    # New work refused, the protocol's way.
    out = feed(gw, ip() / TCP(sport=1003, dport=80, flags="S", seq=5), 0.2)
    assert out[0][TCP].flags.R and gw.counters["tcp_syn_budget_rst"] == 1
    feed(gw, ip(dst="192.0.2.1") / UDP(sport=5, dport=7) / Raw(b"u"), 0.2)
    assert gw.counters["drop_udp_budget"] == 1 and not gw.flows.udp.by_id
    feed(gw, ip(dst="192.0.2.1") / ICMP(type=8, id=3) / Raw(b"p"), 0.2)
    assert gw.counters["drop_icmp_budget"] == 1
    frag = fragment(IP(src=GUEST, dst=GW, id=9) / UDP(sport=1, dport=2) / Raw(b"z" * 3000),
                    fragsize=1000)[0]
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag, 0.2)
    assert gw.counters["frag_drop_budget"] == 1 and not gw.reasm.partials
    q = ip(dst=DNS_IP) / UDP(sport=5353, dport=53) / DNS(rd=1, qd=DNSQR(qname="a.example"))
    (reply,) = feed(gw, q, 0.2)
    assert reply[DNS].rcode == 2 and gw.counters["dns_servfail_budget"] == 1
    # More host data for a full flow: the queue stays at the cap (host keeps it).
    assert gw.tcp_host_data(a.fid, b"x" * 1000, 0.3) == 0
    assert gw.counters["tcp_budget_send_capped"] == 1
    # Container -> host: the host side reports a backlog: the window closes
    # (its right edge stops moving: RFC 9293 never takes back what was offered).
    (ack1,) = a.push(b"d" * 100, 0.4)
    gw.tcp_host_backlog(a.fid, 100, 0.4)
    assert gw.counters["tcp_budget_window_squeezed"] >= 1
    (ack2,) = a.push(b"e" * 100, 0.5, seq=1101)
    assert ack2[TCP].ack == ack1[TCP].ack + 100
    assert ack2[TCP].ack + ack2[TCP].window == ack1[TCP].ack + ack1[TCP].window
    # A flow whose host peer keeps up keeps a small window (once what was
    # offered is used up).
    gw.tcp_host_backlog(b.fid, 0, 0.5)
    conn = b.flow.conn
    assert conn.rcv_buf - conn._backlog == BUDGET_FLOW_WINDOW
    # The existing flow still moves: the container ACKs what it got, the
    # queue drains, the budget has room, the window reopens on its next segment.
    sent = a.flow.conn.snd_max - a.flow.conn.snd_una
    assert sent > 0
    a.send(b"", 1.0, seq=1201, ack=(a.ack + sent) & 0xFFFFFFFF)
    gw.frames_out.clear()
    gw.tcp_host_backlog(a.fid, 0, 1.0)
    assert not gw.budget.over()
    ack3 = a.push(b"g" * 10, 1.1, seq=1201, ack=(a.ack + sent) & 0xFFFFFFFF)[-1]
    assert ack3[TCP].ack + ack3[TCP].window > ack2[TCP].ack + ack2[TCP].window
    out = feed(gw, ip() / TCP(sport=1004, dport=80, flags="S", seq=5), 1.2)
    assert not out and gw.flows.tcp_connecting == 1      # new work accepted again
    gw.tcp_host_reset(a.fid, 1.3)
    gw.tcp_host_reset(b.fid, 1.3)
    assert gw.budget.used == TCP_FLOW_COST              # the new flow's own cost


def test_budget_counts_dns_reassembly_and_holds_and_gives_back():
    gw = make_gw()
    q = ip(dst=DNS_IP) / UDP(sport=5353, dport=53) / DNS(rd=1, qd=DNSQR(qname="b.example"))
    feed(gw, q)
    (ev,) = [e for e in gw.events_out if isinstance(e, DnsQuery)]
    assert gw.budget.used == len(ev.query)
    gw.dns_reply(ev.qid, bytes(DNS(id=q[DNS].id, qr=1, qd=DNSQR(qname="b.example"))), 0.1)
    assert gw.budget.used == 0
    frag = fragment(IP(src=GUEST, dst=GW, id=9) / UDP(sport=1, dport=2) / Raw(b"z" * 3000),
                    fragsize=1000)[0]
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag, 0.2)
    assert gw.budget.used == gw.reasm.bytes_held > 0
    gw.handle_timer(100.0)
    assert gw.budget.used == 0
    # A frame held for an unresolved neighbour (the ping's source is learned
    # only from IP traffic: forget it first so the reply must wait for ARP).
    gw.neigh.table.clear()
    gw.receive_frame(bytes(ip(src="10.0.2.50", mac=GUEST_MAC) / ICMP(type=8)), 101.0)
    gw.neigh.table.clear()
    gw.frames_out.clear()
    gw.datagrams.send_to_guest(bytes([10, 0, 2, 2]), 7, bytes([10, 0, 2, 77]), 7, b"q" * 100,
                               101.0)
    assert gw.budget.used > 100
    run_timers(gw, 101.0, 110.0)
    assert gw.budget.used == 0 and gw.counters["drop_arp_unresolved"] == 1


# -------------------------------------------------------- half-closed flows
def test_half_closed_flow_whose_container_side_is_gone_is_torn_down():
    """The container FINs, the host peer stays open: after tcp_fin_timeout of
    silence a probe goes out; the container's RST (its socket is gone) tears
    the flow down, host socket included."""
    gw = make_gw(tcp_fin_timeout=5.0, tcp_keepalive_intvl=1.0, tcp_keepalive_probes=2)
    f = Flow(gw, 2001)
    f.send(b"", 1.0, flags="FA")
    assert TcpShutdown(f.fid) in gw.events_out and f.flow.conn.state == "CLOSE_WAIT"
    gw.events_out.clear()
    # The FIN's ACK waited for our own FIN (PUSH_ACK_DELAY) and goes alone.
    (fin_ack,) = run_timers(gw, 1.0 + PUSH_ACK_DELAY, 1.0 + PUSH_ACK_DELAY)
    assert fin_ack[TCP].ack == (f.seq + 1) & 0xFFFFFFFF
    probes = [p for p in run_timers(gw, 1.5, 6.5) if TCP in p]
    assert len(probes) == 1 and probes[0][TCP].seq == (f.ack - 1) & 0xFFFFFFFF
    assert gw.counters["tcp_keepalive_probe_tx"] == 1
    # The container's kernel has no socket for it: RST with seq = the probe's ACK.
    feed(gw, ip() / TCP(sport=2001, dport=80, flags="R", seq=probes[0][TCP].ack), 6.6)
    assert f.flow is None and TcpAbort(f.fid) in gw.events_out


def test_silent_half_closed_flow_is_torn_down_after_unanswered_probes():
    gw = make_gw(tcp_fin_timeout=5.0, tcp_keepalive_intvl=1.0, tcp_keepalive_probes=2)
    f = Flow(gw, 2002)
    f.send(b"", 1.0, flags="FA")
    gw.events_out.clear()
    out = run_timers(gw, 1.5, 12.0)
    assert f.flow is None and gw.counters["tcp_keepalive_timeout"] == 1
    assert TcpAbort(f.fid) in gw.events_out
    assert out[-1][TCP].flags.R           # the container hears of it too
    assert gw.counters["tcp_keepalive_probe_tx"] == 2


def test_half_closed_flow_with_a_live_container_stays():
    """A container that half-closed on purpose answers the probes: kept."""
    gw = make_gw(tcp_fin_timeout=5.0, tcp_keepalive_intvl=1.0, tcp_keepalive_probes=2)
    f = Flow(gw, 2003)
    f.send(b"", 1.0, flags="FA")
    f.seq += 1
    t = 1.5
    while t < 40.0:
        for p in run_timers(gw, t, t):
            if TCP in p and not p[TCP].flags.R:
                f.send(b"", t + 0.01)       # its kernel's answer to the probe
        t += 0.5
    assert f.flow is not None and gw.counters["tcp_keepalive_timeout"] == 0
    assert gw.counters["tcp_keepalive_probe_tx"] >= 5


def test_full_tcp_table_evicts_half_closed_before_refusing():
    gw = make_gw(max_tcp_flows=2)
    a, b = Flow(gw, 3001), Flow(gw, 3002)
    # Both busy: the table is full and nothing may be evicted.
    out = feed(gw, ip() / TCP(sport=3003, dport=80, flags="S", seq=5), 1.0)
    assert out[0][TCP].flags.R and gw.counters["tcp_syn_flow_limit_rst"] == 1
    # One half-closes (its host peer still open): it makes room.
    a.send(b"", 2.0, flags="FA")
    gw.events_out.clear()
    feed(gw, ip() / TCP(sport=3004, dport=80, flags="S", seq=5), 3.0)
    assert gw.counters["tcp_flow_evicted"] == 1 and a.flow is None and b.flow is not None
    assert TcpAbort(a.fid) in gw.events_out
    assert any(isinstance(e, TcpConnect) for e in gw.events_out)
    # The survivor still carries data.
    gw.events_out.clear()
    b.send(b"still here", 3.1, flags="PA")
    assert any(getattr(e, "data", None) == b"still here" for e in gw.events_out)


def test_full_tcp_table_evicts_long_silent_established_flow():
    gw = make_gw(max_tcp_flows=1)
    a = Flow(gw, 3101)
    gw.events_out.clear()
    feed(gw, ip() / TCP(sport=3102, dport=80, flags="S", seq=5), 500.0)
    assert a.flow is None and gw.counters["tcp_flow_evicted"] == 1


# ----------------------------------------------------------------- MSS floor
def test_tiny_mss_is_raised_to_the_floor():
    gw = make_gw(tcp_fin_timeout=600.0)
    f = Flow(gw, 4001, mss=1)
    assert gw.counters["tcp_peer_mss_clamped"] == 1
    assert f.flow.conn.snd_mss == TCP_MIN_PEER_MSS
    gw.tcp_host_data(f.fid, b"m" * 48000, 0.1)
    sent = 0
    frames = 0
    t = 0.2
    while sent < 48000 and frames < 1000:
        out = [p for p in run_timers(gw, t, t) if TCP in p]
        out += [Ether(bytes(fr)) for _h, fr in gw.frames_out]
        for p in out:
            n = len(p[TCP].payload)
            if n:
                frames += 1
                sent = max(sent, (p[TCP].seq - f.ack) + n)
        f.send(b"", t + 0.01, ack=(f.ack + sent) & 0xFFFFFFFF)
        t += 0.05
        out = [Ether(bytes(fr)) for _h, fr in gw.frames_out]
        gw.frames_out.clear()
        for p in out:
            n = len(p[TCP].payload) if TCP in p else 0
            if n:
                frames += 1
                sent = max(sent, (p[TCP].seq - f.ack) + n)
    assert sent == 48000 and frames <= 48000 // TCP_MIN_PEER_MSS + 10


def test_mss_floor_never_exceeds_our_own_link():
    gw = make_gw(mtu=300)
    f = Flow(gw, 4002, mss=20)
    assert f.flow.conn.snd_mss == 260


# ---------------------------------------------------------------- neighbours
def test_forged_gratuitous_arp_does_not_cut_the_container_off():
    gw = make_gw()
    f = Flow(gw, 5001)
    guest = bytes([10, 0, 2, 100])
    real = bytes.fromhex(GUEST_MAC.replace(":", ""))
    feed(gw, Ether(src=EVIL_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=EVIL_MAC, psrc=GUEST, pdst=GUEST))
    assert gw.neigh.table[guest] == real and gw.counters["arp_change_ignored"] == 1
    gw.tcp_host_data(f.fid, b"hello", 0.1)
    (seg,) = [Ether(bytes(fr)) for _h, fr in gw.frames_out]
    gw.frames_out.clear()
    assert seg.dst == GUEST_MAC and bytes(seg[TCP].payload) == b"hello"
    # Its IP traffic from a new MAC moves it at once (a real MAC change).
    feed(gw, Ether(src=EVIL_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / ICMP(type=8))
    assert gw.neigh.table[guest] == bytes.fromhex(EVIL_MAC.replace(":", ""))
    assert gw.counters["arp_relearned_ip"] == 1


def test_arp_cannot_claim_usernet_addresses():
    gw = make_gw()
    for addr in (GW, DNS_IP):
        feed(gw, Ether(src=EVIL_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=2, hwsrc=EVIL_MAC, psrc=addr, pdst=GUEST))
    assert bytes([10, 0, 2, 2]) not in gw.neigh.table
    assert bytes([10, 0, 2, 3]) not in gw.neigh.table


# ------------------------------------------------------ fragments and DNS
def test_incomplete_fragment_sets_do_not_lock_out_a_valid_datagram():
    gw = make_gw()
    for ident in range(FRAG_MAX_DATAGRAMS + 10):
        frag = fragment(IP(src=GUEST, dst=GW, id=ident) / UDP(sport=1, dport=2) /
                        Raw(b"j" * 3000), fragsize=1000)[0]
        feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag, 1.0)
    assert len(gw.reasm.partials) == FRAG_MAX_DATAGRAMS
    big = IP(src=GUEST, dst=GW, id=60000) / ICMP(type=8, id=1, seq=1) / Raw(b"v" * 2500)
    out = []
    for fr in fragment(big, fragsize=1000):
        out += feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / fr, 1.1)
    assert gw.counters["frag_reassembled"] == 1 and out and out[0][ICMP].type == 0
    assert gw.counters["frag_evicted_oldest"] >= 10


def test_reassembly_memory_bound_evicts_oldest_sets():
    gw = make_gw(frag_max_bytes=8000)
    for ident in range(6):
        frag = fragment(IP(src=GUEST, dst=GW, id=ident) / UDP(sport=1, dport=2) /
                        Raw(b"j" * 5000), fragsize=2000)[0]
        feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag, 1.0)
    assert gw.reasm.bytes_held <= 8000 and gw.counters["frag_evicted_oldest"] >= 2


def test_dns_pending_full_evicts_the_oldest_query():
    gw = make_gw(dns_max_pending=2)

    def ask(name, now, sport=5353):
        return feed(gw, ip(dst=DNS_IP) / UDP(sport=sport, dport=53) / DNS(
            rd=1, qd=DNSQR(qname=name)), now)

    ask("a.example", 0.0)
    ask("b.example", 0.0)
    (fail,) = ask("c.example", 0.5)            # the others are fresh: this one fails
    assert fail[DNS].rcode == 2 and gw.counters["dns_servfail_too_many_pending"] == 1
    gw.events_out.clear()
    (fail,) = ask("d.example", 2.0)            # a.example waited long enough: it goes
    assert fail[DNS].qd[0].qname == b"a.example." and fail[DNS].rcode == 2
    assert gw.counters["dns_pending_evicted"] == 1
    assert any(isinstance(e, DnsQuery) for e in gw.events_out)
    assert len(gw.dns_pending) == 2


def test_default_limits_are_named():
    cfg = NetConfig()
    assert cfg.dns_max_pending == DNS_MAX_PENDING
    assert cfg.memory_budget == 256 << 20
    assert cfg.max_tcp_flows == MAX_TCP_FLOWS


def test_idle_flows_are_charged_to_the_budget():
    """Every TCP flow costs TCP_FLOW_COST from its SYN to its end, data or
    not: a budget full of idle flows refuses the next SYN (RST) and takes new
    flows again once one has gone; the budget is empty when all are gone."""
    n = 8
    gw = make_gw(memory_budget=1 << 20)
    gw.budget.limit = n * TCP_FLOW_COST       # below the CLI's least, to stay small
    flows = [Flow(gw, 7000 + i) for i in range(n)]
    assert gw.budget.used == n * TCP_FLOW_COST and gw.budget.over()
    out = feed(gw, ip() / TCP(sport=7100, dport=80, flags="S", seq=5), 0.1)
    assert out[0][TCP].flags.R and gw.counters["tcp_syn_budget_rst"] == 1
    gw.tcp_host_reset(flows[0].fid, 0.2)
    gw.frames_out.clear()
    assert gw.budget.used == (n - 1) * TCP_FLOW_COST
    out = feed(gw, ip() / TCP(sport=7101, dport=80, flags="S", seq=5), 0.3)
    assert not out and gw.flows.tcp_connecting == 1      # accepted: connecting
    (fid,) = [e.fid for e in gw.events_out if isinstance(e, TcpConnect)]
    gw.tcp_refused(fid, 0.4, "refused")                  # the host said no: forgotten
    for f in flows[1:]:
        gw.tcp_host_reset(f.fid, 0.5)
    assert gw.budget.used == 0 and not gw.flows.tcp.by_id


# ------------------------------------------------ per-flow and in-flight limits
def test_bytes_per_flow_are_bounded_and_the_flow_keeps_moving():
    gw = make_gw()
    f = Flow(gw, 6001)
    assert gw.tcp_host_data(f.fid, b"b" * (SND_BUF + 1000), 0.1) == SND_BUF
    assert gw.flows.tcp.by_id[f.fid].host_held == 1000       # charged while the host holds it
    assert gw.budget.used == TCP_FLOW_COST + SND_BUF + 1000
    sent = f.flow.conn.snd_max - f.flow.conn.snd_una
    gw.frames_out.clear()
    f.send(b"", 0.2, ack=(f.ack + sent) & 0xFFFFFFFF)
    assert gw.tcp_host_data(f.fid, b"b" * 1000, 0.3) == 1000   # room again after the ACK
    assert gw.flows.tcp.by_id[f.fid].host_held == 0


def test_connects_in_flight_limit_leaves_existing_flows_working():
    gw = make_gw(max_tcp_connects=1)
    f = Flow(gw, 6101)
    feed(gw, ip() / TCP(sport=6102, dport=80, flags="S", seq=5), 0.1)   # in flight
    feed(gw, ip() / TCP(sport=6103, dport=80, flags="S", seq=5), 0.1)   # past the limit
    assert gw.counters["tcp_syn_connect_limit_drop"] == 1
    gw.events_out.clear()
    f.send(b"data", 0.2, flags="PA")
    assert any(getattr(e, "data", None) == b"data" for e in gw.events_out)


def test_forged_neighbor_advertisement_does_not_move_the_container():
    from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    gw = make_gw(enable_ipv6=True)
    me6 = "fd00::5055:ff:fe00:64"
    real = bytes.fromhex(GUEST_MAC.replace(":", ""))
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IPv6(src=me6, dst="fd00::2") /
         ICMPv6EchoRequest())
    key = ipaddress.IPv6Address(me6).packed
    assert gw.neigh6.table[key] == real
    feed(gw, Ether(src=EVIL_MAC, dst="33:33:00:00:00:01") / IPv6(
        src=me6, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=me6, O=1) /
        ICMPv6NDOptDstLLAddr(lladdr=EVIL_MAC))
    assert gw.neigh6.table[key] == real and gw.counters["ndp_change_ignored"] == 1


def test_full_tcp_table_evicts_half_open_handshakes():
    """SYNs whose SYN-ACK is never answered (a half-open flood) fill the
    table; a new SYN evicts the oldest of them, not a working flow."""
    gw = make_gw(max_tcp_flows=3)
    a = Flow(gw, 7001)
    half = []
    for sport in (7002, 7003):
        gw.events_out.clear()
        feed(gw, ip() / TCP(sport=sport, dport=80, flags="S", seq=5), 1.0)
        (ev,) = [e for e in gw.events_out if isinstance(e, TcpConnect)]
        gw.tcp_connected(ev.fid, 1.0)            # SYN-ACK sent, never answered
        half.append(ev.fid)
    gw.frames_out.clear()
    gw.events_out.clear()
    feed(gw, ip() / TCP(sport=7004, dport=80, flags="S", seq=5), 2.0)
    assert gw.counters["tcp_flow_evicted"] == 1 and TcpAbort(half[0]) in gw.events_out
    assert a.flow is not None and half[0] not in gw.flows.tcp.by_id
    assert any(isinstance(e, TcpConnect) for e in gw.events_out)


def test_squeezed_window_asks_the_host_for_a_fresh_backlog():
    """Past the budget a host backlog shuts the window; a small backlog
    drains without a report, so the container's next segment (a zero-window
    probe) asks for one (an empty TcpData), and the window reopens with it."""
    gw = make_gw(memory_budget=1 << 20)
    a, b = Flow(gw, 8001), Flow(gw, 8002)
    gw.tcp_host_data(a.fid, b"x" * SND_BUF, 0.1)
    gw.tcp_host_data(b.fid, b"y" * SND_BUF, 0.1)
    gw.frames_out.clear()
    gw.events_out.clear()
    gw.tcp_host_backlog(a.fid, BUDGET_FLOW_WINDOW, 0.2)        # window: 16K - 16K = none
    conn = a.flow.conn
    assert conn.rcv_buf - conn._backlog == 0
    a.send(b"", 0.3)                                           # its zero-window probe
    assert TcpData(a.fid, b"") in gw.events_out and gw.events_out[-1].data == b""
    gw.tcp_host_backlog(a.fid, 0, 0.3)                         # the host: drained
    assert conn.rcv_buf - conn._backlog == BUDGET_FLOW_WINDOW
