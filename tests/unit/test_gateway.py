"""The gateway (stack core) driven with scapy-built frames, replies checked byte by byte.

Sans-IO: no sockets, no sleeps; time is an explicit float.
"""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from usernet.stack.events import TcpCancel, TcpConnect, TcpData, UdpClose, UdpOpen, UdpSend
from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway
from usernet.wire.vnet import VNET_HDR_NONE

GUEST_MAC = "02:00:00:00:00:64"
GW_MAC = "52:55:00:00:02:02"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
DNS = "10.0.2.3"


def make_gw(**kw):
    return Gateway(NetConfig(**kw), seed=1)


def feed(gw, pkt, now=0.0):
    gw.receive_frame(bytes(pkt), now)
    out = [bytes(f) for _hdr, f in gw.frames_out]
    gw.frames_out.clear()
    return out


def test_arp_request_for_gateway_is_answered_byte_for_byte():
    """ARP who-has 10.0.2.2 gets exactly the reply a NIC would send (padded to 60)."""
    gw = make_gw()
    req = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, hwdst="00:00:00:00:00:00", pdst=GW)
    out = feed(gw, req)
    expected = bytes(Ether(src=GW_MAC, dst=GUEST_MAC) / ARP(
        op=2, hwsrc=GW_MAC, psrc=GW, hwdst=GUEST_MAC, pdst=GUEST))
    expected += b"\0" * (60 - len(expected))
    assert out == [expected]
    assert gw.counters["arp_reply_tx"] == 1
    assert gw.neigh.table[bytes([10, 0, 2, 100])] == bytes.fromhex("020000000064")


def test_arp_for_dns_answered_and_for_others_ignored():
    gw = make_gw()
    assert len(feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=DNS))) == 1
    assert feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst="10.0.2.77")) == []
    assert gw.counters["arp_ignored_not_ours"] == 1


def test_arp_for_dns_not_answered_when_dns_disabled():
    gw = make_gw(enable_dns=False)
    assert feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=DNS)) == []


def test_gratuitous_arp_learns_without_reply():
    gw = make_gw()
    out = feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GUEST))
    assert out == []
    assert gw.counters["arp_gratuitous"] == 1
    assert gw.neigh.table[bytes([10, 0, 2, 100])] == bytes.fromhex("020000000064")


def test_arp_with_vlan_tag_is_handled():
    gw = make_gw()
    out = feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=5) / ARP(
        op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW))
    assert len(out) == 1 and ARP(out[0][14:]).op == 2


def _echo(dst, ident=0x1234, seq=7, data=b"abcdefgh" * 7):
    return Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=dst, id=99) / ICMP(
        type=8, id=ident, seq=seq) / Raw(data)


def test_echo_to_gateway_answered_byte_for_byte():
    """The reply mirrors id, seq and data; IP and ICMP checksums are right."""
    gw = make_gw()
    out = feed(gw, _echo(GW))
    assert len(out) == 1
    rep = Ether(out[0])
    assert rep[Ether].dst == GUEST_MAC and rep[Ether].src == GW_MAC
    assert rep[IP].src == GW and rep[IP].dst == GUEST and rep[IP].ttl == 64
    assert rep[ICMP].type == 0 and rep[ICMP].id == 0x1234 and rep[ICMP].seq == 7
    assert rep[Raw].load == b"abcdefgh" * 7
    # Compare against scapy's own checksums for the same packet.
    ref = Ether(out[0])
    del ref[IP].chksum
    del ref[ICMP].chksum
    assert bytes(Ether(bytes(ref))) == out[0]
    assert gw.counters["icmp_echo_local_reply"] == 1


def test_echo_to_dns_address_answered():
    gw = make_gw()
    out = feed(gw, _echo(DNS))
    assert Ether(out[0])[IP].src == DNS


def test_bad_ip_checksum_dropped_and_counted():
    gw = make_gw()
    raw = bytearray(bytes(_echo(GW)))
    raw[24] ^= 0xFF  # the IPv4 header checksum
    gw.receive_frame(bytes(raw), 0.0)
    assert gw.frames_out == []
    assert gw.counters["drop_ipv4_bad_checksum"] == 1


def test_bad_icmp_checksum_dropped_and_counted():
    gw = make_gw()
    raw = bytearray(bytes(_echo(GW)))
    raw[-1] ^= 0xFF
    gw.receive_frame(bytes(raw), 0.0)
    assert gw.frames_out == []
    assert gw.counters["drop_l4_bad_checksum"] == 1


def test_garbage_and_truncated_frames_are_counted_not_raised():
    gw = make_gw()
    good = bytes(_echo(GW))
    for n in range(len(good)):
        gw.receive_frame(good[:n], 0.0)
    gw.receive_frame(b"\xff" * 3, 0.0)
    assert gw.counters["drop_eth_truncated"] >= 14
    assert gw.counters["drop_ipv4_truncated"] + gw.counters["drop_ipv4_bad_length"] > 0


def test_frame_for_another_mac_dropped():
    gw = make_gw()
    assert feed(gw, Ether(src=GUEST_MAC, dst="02:11:22:33:44:55") / IP(src=GUEST, dst=GW) /
                ICMP()) == []
    assert gw.counters["drop_eth_not_for_us"] == 1


def test_spoofed_source_dropped():
    gw = make_gw()
    assert feed(gw, _echo(GW).__class__(bytes(Ether(src=GUEST_MAC, dst=GW_MAC) /
                IP(src="192.168.1.5", dst=GW) / ICMP()))) == []
    assert gw.counters["drop_ipv4_bad_source"] == 1


def test_ttl_zero_dropped():
    gw = make_gw()
    assert feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW, ttl=0) / ICMP()) == []
    assert gw.counters["drop_ipv4_ttl_zero"] == 1


def test_echo_to_unowned_local_address_gets_host_unreachable():
    gw = make_gw()
    out = feed(gw, _echo("10.0.2.77"))
    rep = Ether(out[0])
    assert rep[ICMP].type == 3 and rep[ICMP].code == 1
    assert rep[IP].src == GW
    # The quote starts with the original IP header.
    assert bytes(rep[ICMP].payload)[:20] == bytes(_echo("10.0.2.77")[IP])[:20]


def test_ipv4_fragments_reassembled_and_bounded():
    """A fragmented echo to the gateway is reassembled and answered; a lone
    fragment times out and is counted."""
    gw = make_gw()
    from scapy.layers.inet import fragment
    big = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW, id=4242) / ICMP(
        type=8, id=1, seq=1) / Raw(bytes(range(256)) * 12)
    frags = fragment(big[IP], fragsize=1000)
    assert len(frags) > 1
    out = []
    for f in reversed(frags):
        out += feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / f, now=1.0)
    assert gw.counters["frag_reassembled"] == 1
    # The reply is bigger than the MTU; the gateway sends it whole here
    # (ICMP replies to the gateway are not fragmented; see the UDP path).
    assert out and Ether(out[0])[ICMP].type == 0
    # One lone fragment: held, then expired by the timer.
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frags[0], now=2.0)
    assert gw.get_timer() is not None
    gw.handle_timer(100.0)
    assert gw.counters["frag_drop_timeout"] == 1
    assert gw.reasm.bytes_held == 0


def test_unknown_ethertype_and_protocol_counted():
    gw = make_gw()
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC, type=0x88B5) / Raw(b"x" * 50))
    assert gw.counters["drop_eth_unknown_ethertype"] == 1
    out = feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW, proto=132) /
               Raw(b"x" * 20))
    assert gw.counters["ipv4_protocol_unreachable_tx"] == 1
    rep = Ether(out[0])
    assert rep[ICMP].type == 3 and rep[ICMP].code == 2


def _syn(dport, sport=40000, dst=GW, seq=1000):
    return Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=dst) / TCP(
        sport=sport, dport=dport, flags="S", seq=seq, options=[("MSS", 1460)])


def test_tcp_syn_asks_host_first_then_answers():
    """Connect first, answer second: a SYN produces a connect event and no
    frame; tcp_connected produces the SYN-ACK."""
    gw = make_gw()
    assert feed(gw, _syn(8080)) == []
    (ev,) = gw.events_out
    assert ev == TcpConnect(ev.fid, "127.0.0.1", 8080)
    gw.events_out.clear()
    assert feed(gw, _syn(8080)) == []  # duplicate SYN absorbed
    assert gw.events_out == []
    gw.tcp_connected(ev.fid, 0.1)
    (synack,) = [bytes(f) for _, f in gw.frames_out]
    t = Ether(synack)[TCP]
    assert t.flags == "SA" and t.ack == 1001 and t.sport == 8080 and t.dport == 40000


def test_tcp_syn_refused_gives_rst():
    gw = make_gw()
    feed(gw, _syn(9))
    (ev,) = gw.events_out
    gw.tcp_refused(ev.fid, 0.1, "refused")
    t = Ether(bytes(gw.frames_out[0][1]))[TCP]
    assert t.flags == "RA" and t.ack == 1001
    assert gw.counters["tcp_host_connect_failed_refused"] == 1
    assert gw.flows.tcp.by_id == {}


def test_tcp_connect_timeout_rsts_and_cancels():
    gw = make_gw()
    feed(gw, _syn(81))
    (ev,) = gw.events_out
    gw.events_out.clear()
    deadline = gw.get_timer()
    assert deadline is not None
    gw.handle_timer(gw.config.tcp_connect_timeout + 1)
    assert TcpCancel(ev.fid) in gw.events_out
    assert any(Ether(bytes(f))[TCP].flags.R for _, f in gw.frames_out)
    assert gw.flows.tcp.by_id == {} and gw.flows.tcp_connecting == 0


def test_tcp_to_gateway_refused_without_host_loopback():
    gw = make_gw(host_loopback=False)
    out = feed(gw, _syn(80))
    assert gw.events_out == []
    assert Ether(out[0])[TCP].flags == "RA"
    assert gw.counters["tcp_syn_refused_policy"] == 1


def test_tcp_stray_ack_gets_rst():
    gw = make_gw()
    out = feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / TCP(
        sport=1, dport=2, flags="A", seq=5, ack=777))
    t = Ether(out[0])[TCP]
    assert t.flags == "R" and t.seq == 777


def test_tcp_connect_limit_drops_syn():
    gw = make_gw(max_tcp_connects=2)
    for sport in (1, 2, 3):
        feed(gw, _syn(80, sport=sport))
    assert len(gw.events_out) == 2
    assert gw.counters["tcp_syn_connect_limit_drop"] == 1


def test_tcp_flow_limit_rsts():
    gw = make_gw(max_tcp_flows=1)
    feed(gw, _syn(80, sport=1))
    out = feed(gw, _syn(80, sport=2))
    assert Ether(out[0])[TCP].flags.R
    assert gw.counters["tcp_syn_flow_limit_rst"] == 1


def test_udp_flow_opens_sends_and_expires():
    gw = make_gw()
    pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / UDP(
        sport=5000, dport=7000) / Raw(b"ping")
    feed(gw, pkt, now=0.0)
    kinds = [type(e) for e in gw.events_out]
    assert kinds == [UdpOpen, UdpSend]
    fid = gw.events_out[0].fid
    assert gw.events_out[1] == UdpSend(fid, b"ping")
    gw.events_out.clear()
    gw.udp_host_datagram(fid, b"pong", 1.0)
    rep = Ether(bytes(gw.frames_out[0][1]))
    assert rep[IP].src == "192.0.2.1" and rep[UDP].sport == 7000 and rep[UDP].dport == 5000
    assert rep[Raw].load == b"pong"
    gw.handle_timer(1.0 + gw.config.udp_idle_timeout - 1)
    assert gw.flows.udp.by_id
    gw.handle_timer(1.0 + gw.config.udp_idle_timeout + 0.1)
    assert not gw.flows.udp.by_id
    assert UdpClose(fid) in gw.events_out


def test_frames_for_unknown_guest_mac_wait_for_arp_and_are_retried():
    """A frame toward a guest address with no known MAC triggers an ARP
    request, is held, is retried on a timer, and is released by the reply."""
    gw = make_gw()
    gw.udp_inbound(bytes([10, 0, 2, 2]), 5353, bytes([10, 0, 2, 100]), 53, b"q", 0.0)
    (req,) = [Ether(bytes(f)) for _, f in gw.frames_out]
    gw.frames_out.clear()
    assert req[ARP].op == 1 and req[ARP].pdst == GUEST and req[Ether].dst == "ff:ff:ff:ff:ff:ff"
    gw.handle_timer(gw.get_timer())
    assert [Ether(bytes(f))[ARP].op for _, f in gw.frames_out] == [1]
    assert gw.counters["arp_request_tx"] == 2
    gw.frames_out.clear()
    out = feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST,
                                                          hwdst=GW_MAC, pdst=GW), now=1.5)
    (f,) = out
    assert Ether(f)[Ether].dst == GUEST_MAC and Ether(f)[UDP].dport == 53


def test_unanswered_arp_drops_held_frames_after_bounded_tries():
    gw = make_gw()
    gw.udp_inbound(bytes([10, 0, 2, 2]), 5353, bytes([10, 0, 2, 100]), 53, b"q", 0.0)
    for _ in range(10):
        t = gw.get_timer()
        if t is None or not gw.neigh.held:
            break
        gw.handle_timer(t)
    assert gw.counters["arp_request_tx"] == 3
    assert gw.counters["drop_arp_unresolved"] == 1
    assert gw.neigh.held == {}


def test_df_packet_bigger_than_mtu_gets_fragmentation_needed():
    """RFC 1191: a DF datagram over the MTU is answered with type 3 code 4
    carrying the MTU; without DF it is accepted."""
    gw = make_gw(mtu=1280)
    big = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.9", flags="DF") / UDP(
        sport=1, dport=2) / Raw(b"x" * 1400)
    (f,) = feed(gw, big)
    rep = Ether(f)
    assert rep[ICMP].type == 3 and rep[ICMP].code == 4 and rep[ICMP].nexthopmtu == 1280
    assert gw.counters["icmp_frag_needed_tx"] == 1 and gw.events_out == []
    big[IP].flags = 0
    feed(gw, Ether(bytes(big)))
    assert [type(e) for e in gw.events_out] == [UdpOpen, UdpSend]


def test_fragments_tiling_65535_bytes_are_dropped_not_raised():
    """The ping of death: fragments whose payload adds up past what one
    IPv4 datagram can hold are counted and dropped (no struct.error)."""
    gw = make_gw()
    chunk = 8 * 1024
    for off in range(0, 65535, chunk):
        n = min(chunk, 65535 - off)
        more = off + n < 65535
        pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW, id=7, proto=17,
                                                    frag=off // 8, flags="MF" if more else 0)
        gw.receive_frame(bytes(pkt / Raw(b"\0" * n)), 0.0)
    assert gw.counters["drop_frag_too_big"] == 1


def test_udp_answer_too_big_for_ipv4_is_counted():
    gw = make_gw()
    gw.udp_send_to_guest(bytes([192, 0, 2, 1]), 53, bytes([10, 0, 2, 100]), 5000, b"x" * 65510, 0.0)
    assert gw.counters["drop_udp_too_big_for_ipv4"] == 1 and gw.frames_out == []


def test_timer_heap_does_not_grow_per_datagram():
    """A busy UDP flow re-arms lazily: the heap stays small however many
    datagrams pass, and the flow still expires on schedule."""
    gw = make_gw()
    pkt = bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / UDP(
        sport=5000, dport=7000) / Raw(b"x"))
    for i in range(2000):
        gw.receive_frame(pkt, i * 0.01)
    assert len(gw.timers) < 5
    last = 1999 * 0.01
    t = gw.get_timer()
    while t is not None and gw.flows.udp.by_id:
        gw.handle_timer(t)
        t = gw.get_timer()
    assert not gw.flows.udp.by_id
    assert t is None or t >= last + gw.config.udp_idle_timeout


def test_spoofed_sources_dropped():
    """Sources that cannot be the guest (our addresses, network/broadcast,
    0.0.0.0 outside DHCP) are dropped before any flow is opened."""
    gw = make_gw()
    for src in ("10.0.2.2", "10.0.2.3", "10.0.2.0", "10.0.2.255", "0.0.0.0"):
        feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=src, dst="192.0.2.1") / TCP(
            sport=1, dport=80, flags="S"))
    assert gw.counters["drop_ipv4_bad_source"] == 5
    assert gw.events_out == []


def test_no_icmp_errors_about_broadcast_or_multicast():
    """RFC 1122 3.2.2: IGMP to a multicast group or a ping to the subnet
    broadcast draws no ICMP error."""
    gw = make_gw()
    assert feed(gw, Ether(src=GUEST_MAC, dst="01:00:5e:00:00:16") / IP(
        src=GUEST, dst="224.0.0.22", proto=2) / Raw(b"\0" * 8)) == []
    assert feed(gw, Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(
        src=GUEST, dst="10.0.2.255") / ICMP()) == []
    assert gw.counters["icmp_error_suppressed_broadcast"] == 2


def test_udp_to_gateway_without_host_loopback_is_port_unreachable():
    gw = make_gw(host_loopback=False)
    out = feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / UDP(
        sport=5, dport=9999) / Raw(b"x"))
    rep = Ether(out[0])
    assert rep[ICMP].type == 3 and rep[ICMP].code == 3


def test_udp_port_67_elsewhere_is_nat_not_dhcp():
    gw = make_gw()
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / UDP(
        sport=68, dport=67) / Raw(b"x"))
    assert [type(e) for e in gw.events_out] == [UdpOpen, UdpSend]


def test_udp_and_icmp_full_tables_evict_the_oldest_idle_flow():
    """Past max_udp_flows / max_icmp_flows a new flow evicts the flow nearest
    its idle expiry (its host side gets the close) instead of being refused;
    a flow with recent traffic is kept; expiry frees the slots."""
    gw = make_gw(max_udp_flows=2, max_icmp_flows=1)

    def udp(sport, now):
        feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / UDP(
            sport=sport, dport=7) / Raw(b"x"), now=now)

    def echo(ident, now):
        feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") / ICMP(
            type=8, id=ident, seq=1) / Raw(b"x"), now=now)

    udp(1, 0.0)
    udp(2, 1.0)
    udp(1, 2.0)                 # flow 1 is the busier one now
    gw.events_out.clear()
    udp(3, 3.0)                 # full: flow 2 (idle longest) makes room
    ports = sorted(f.guest_port for f in gw.flows.udp.by_id.values())
    assert ports == [1, 3] and gw.counters["udp_flow_evicted"] == 1
    assert gw.counters["drop_udp_flow_limit"] == 0
    assert [type(e) for e in gw.events_out] == [UdpClose, UdpOpen, UdpSend]
    echo(10, 3.0)
    echo(11, 3.0)
    assert [f.guest_port for f in gw.flows.icmp.by_id.values()] == [11]
    assert gw.counters["icmp_flow_evicted"] == 1
    gw.events_out.clear()
    udp(1, 4.0)  # an existing flow still carries traffic
    assert [type(e) for e in gw.events_out] == [UdpSend]
    gw.handle_timer(4.0 + gw.config.udp_idle_timeout + 1)
    assert not gw.flows.udp.by_id and not gw.flows.icmp.by_id
    udp(3, 200.0)
    assert len(gw.flows.udp.by_id) == 1


# ---------------------------------------------------------------- TAP offloads
def _finish_csum(frame: bytes, hdr: bytes) -> bytes:
    """Do what the kernel does for a NEEDS_CSUM frame: checksum csum_start..end
    (the field already holds the pseudo-header sum) and store it."""
    from usernet.wire.checksum import checksum
    from usernet.wire.vnet import VNET_HDR
    flags, _gt, _hl, _gs, start, off = VNET_HDR.unpack(hdr)
    assert flags == 1
    out = bytearray(frame)
    out[start + off:start + off + 2] = checksum(out[start:]).to_bytes(2, "big")
    return bytes(out)


def _offload_flow(ts=True):
    """An offloading gateway with one established flow; returns (gw, fid, guest seq, our seq)."""
    from scapy.layers.inet import TCP as _TCP
    gw = Gateway(NetConfig(), seed=1, offload=True)
    opts = [("MSS", 1460), ("WScale", 7)] + ([("Timestamp", (1, 0))] if ts else [])
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / _TCP(
        sport=40000, dport=8080, flags="S", seq=1000, window=65535, options=opts))
    (ev,) = gw.events_out
    gw.events_out.clear()
    gw.tcp_connected(ev.fid, 0.0)
    ((hdr, synack),) = gw.frames_out
    gw.frames_out.clear()
    t = Ether(_finish_csum(synack, hdr))[_TCP]
    return gw, ev.fid, 1001, t.seq + 1


def _guest_ack(gw, ack, now, seq=1001, ts=True, window=65535):
    """A pure ACK from the container, as its kernel sends them with offloads
    on (NEEDS_CSUM: csum_ok). Leaves what it causes in gw.frames_out."""
    from scapy.layers.inet import TCP as _TCP
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (2, 1))] if ts else []
    gw.receive_frame(bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / _TCP(
        sport=40000, dport=8080, flags="A", seq=seq, ack=ack, window=window, options=opts)),
        now, True)


def test_offload_tcp_frames_carry_vnet_header_and_pseudo_checksum():
    """With offloads, every TCP frame toward the container is a (vnet header,
    frame) pair: NEEDS_CSUM at the L4 offset with the pseudo-header sum in the
    field; one carrying more than snd_mss is a TSO super-segment (gso_type
    TCPV4, gso_size = snd_mss = MSS - 12 for timestamps, hdr_len = L2+L3+L4).
    Finished as the kernel would, each equals scapy's own checksum."""
    from scapy.layers.inet import TCP as _TCP
    from usernet.wire.checksum import pseudo_sum_v4
    from usernet.wire.vnet import VNET_HDR
    gw, fid, gseq, ours = _offload_flow()
    _guest_ack(gw, ours, 0.01)                         # ESTABLISHED
    gw.events_out.clear()
    data = bytes(range(256)) * 4096                    # 1 MiB, more than the send buffer
    taken = gw.tcp_host_data(fid, data, 0.02)
    sent = b""
    sizes = []
    now = 0.02
    for _ in range(100):
        frames = gw.frames_out[:]
        gw.frames_out.clear()
        if not frames:
            break
        for item in frames:
            # A TSO segment is (header, headers, payload): the frame is both pieces.
            hdr, f = item[0], b"".join(bytes(x) for x in item[1:])
            flags, gso_type, hdr_len, gso_size, start, off = VNET_HDR.unpack(hdr)
            assert (flags, start, off, hdr_len) == (1, 34, 16, 14 + 20 + 32)
            p = Ether(bytes(f))
            plen = len(p[_TCP].payload)
            # The field holds the pseudo-header sum over the whole L4 length.
            assert p[_TCP].chksum == pseudo_sum_v4(bytes([10, 0, 2, 2]), bytes([10, 0, 2, 100]),
                                                   6, 32 + plen)
            if plen > 1448:
                assert (gso_type, gso_size) == (1, 1448)
            else:
                assert (gso_type, gso_size) == (0, 0)
            assert len(f) - 14 <= 65535 and plen <= 65160
            done = _finish_csum(bytes(f), hdr)
            ref = Ether(done)
            del ref[_TCP].chksum
            assert bytes(Ether(bytes(ref))) == done      # scapy computes the same checksum
            assert IP(done[14:]).chksum == Ether(bytes(ref))[IP].chksum
            sent += bytes(p[_TCP].payload)
            sizes.append(plen)
        now += 0.001
        _guest_ack(gw, ours + len(sent), now)         # window 65535 << 7
        if taken < len(data):
            taken += gw.tcp_host_data(fid, data[taken:], now)
    assert sent == data
    assert max(sizes) == 45 * 1448                      # whole wire segments
    assert gw.counters["tcp_tx_gso_segments"] == sum(1 for s in sizes if s > 1448) > 0


def test_no_offload_tcp_frames_are_plain_and_mss_sized():
    from scapy.layers.inet import TCP as _TCP
    gw = make_gw()
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / _TCP(
        sport=40000, dport=8080, flags="S", seq=1000, options=[("MSS", 1460)]))
    (ev,) = gw.events_out
    gw.events_out.clear()
    gw.tcp_connected(ev.fid, 0.0)
    ((_, synack),) = gw.frames_out
    gw.frames_out.clear()
    feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / _TCP(
        sport=40000, dport=8080, flags="A", seq=1001, ack=Ether(bytes(synack))[_TCP].seq + 1,
        window=65535))
    gw.tcp_host_data(ev.fid, b"z" * 10000, 0.01)
    assert gw.frames_out and all(h == VNET_HDR_NONE for h, _ in gw.frames_out)
    for _, f in gw.frames_out:
        p = Ether(bytes(f))
        assert len(p[_TCP].payload) <= 1460
        ref = Ether(bytes(f))
        del ref[_TCP].chksum
        assert bytes(Ether(bytes(ref))) == bytes(f)
    assert gw.counters["tcp_tx_gso_segments"] == 0


def test_offload_receives_guest_super_segment_with_pseudo_checksum():
    """A TSO super-frame from the container (64240 bytes, only the
    pseudo-header sum in its checksum, IPv4 total length = the whole frame) is
    taken whole when the vnet header said NEEDS_CSUM (csum_ok), even over the
    MTU with DF; without csum_ok it is what it looks like, a bad checksum."""
    from scapy.layers.inet import TCP as _TCP
    from usernet.wire.checksum import pseudo_sum_v4
    gw, fid, gseq, ours = _offload_flow(ts=False)
    _guest_ack(gw, ours, 0.01, ts=False)
    gw.frames_out.clear()
    gw.events_out.clear()
    payload = bytes(range(256)) * 250 + b"x" * 240      # 64240 = 44 x 1460
    pkt = Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW, flags="DF") / _TCP(
        sport=40000, dport=8080, flags="PA", seq=gseq, ack=ours, window=512) / Raw(payload)
    raw = bytearray(bytes(pkt))
    ps = pseudo_sum_v4(bytes([10, 0, 2, 100]), bytes([10, 0, 2, 2]), 6, 20 + len(payload))
    raw[14 + 20 + 16:14 + 20 + 18] = ps.to_bytes(2, "big")
    assert int.from_bytes(raw[16:18], "big") == len(raw) - 14
    # Without csum_ok it is what it looks like: a plain frame over the MTU
    # with DF (frag needed) or, without DF, a bad checksum.
    gw.receive_frame(bytes(raw), 0.02, False)
    assert gw.counters["icmp_frag_needed_tx"] == 1
    nodf = bytearray(raw)
    nodf[20] &= ~0x40                                   # clear DF ...
    ipc = int.from_bytes(nodf[24:26], "big") + 0x4000   # ... and patch the IP checksum
    nodf[24:26] = ((ipc & 0xFFFF) + (ipc >> 16)).to_bytes(2, "big")
    gw.receive_frame(bytes(nodf), 0.02, False)
    assert gw.counters["drop_l4_bad_checksum"] == 1
    gw.frames_out.clear()
    assert gw.events_out == []
    gw.receive_frame(memoryview(bytes(raw)), 0.02, True)
    data = b"".join(e.data for e in gw.events_out if type(e) is TcpData)
    assert data == payload
    assert gw.counters["icmp_frag_needed_tx"] == 1       # no new one
    ((hdr, ack),) = gw.frames_out                       # ACKed at once, offloaded too
    assert Ether(_finish_csum(bytes(ack), hdr))[_TCP].ack == gseq + len(payload)


def test_offload_frames_held_for_arp_keep_their_header():
    """A port forward toward a guest whose MAC is unknown: the offloaded SYN
    waits for ARP as a (header, frame) pair and leaves with the MAC filled in."""
    from usernet.wire.vnet import VNET_HDR
    gw = Gateway(NetConfig(), seed=1, offload=True)
    fid = gw.tcp_open_inbound(bytes([10, 0, 2, 100]), 80, bytes([10, 0, 2, 2]), 5555, 0.0)
    assert fid is not None
    ((hdr, req),) = gw.frames_out
    assert hdr == VNET_HDR_NONE and Ether(bytes(req))[ARP].op == 1
    gw.frames_out.clear()
    out = gw.frames_out
    gw.receive_frame(bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / ARP(
        op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW)), 0.1)
    ((hdr, syn),) = out
    assert VNET_HDR.unpack(hdr)[0] == 1 and Ether(bytes(syn)).dst == GUEST_MAC


def _ones_ok(data: bytes) -> bool:
    if len(data) & 1:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def test_echo_reply_to_a_reassembled_request_is_fragmented_to_the_mtu():
    """Regression (issue 13, found by tools/fuzz.py): ``ping -s 3000
    10.0.2.2`` arrives in fragments; the reply was sent as one 3042-byte
    frame on a 1500-byte link. Now it leaves in fragments of at most the
    MTU that reassemble into the whole, correctly checksummed reply."""
    from scapy.layers.inet import fragment
    gw = make_gw()
    data = bytes(range(256)) * 12
    req = IP(src=GUEST, dst=GW, id=77) / ICMP(type=8, id=5, seq=1) / Raw(data)
    out = []
    for frag in fragment(req, fragsize=1400):
        out += feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag)
    assert len(out) == 3 and all(len(f) <= 14 + 1500 for f in out)
    ips = sorted((Ether(f)[IP] for f in out), key=lambda ip: ip.frag)
    assert len({ip.id for ip in ips}) == 1 and [bool(ip.flags.MF) for ip in ips] == [1, 1, 0]
    l4 = b"".join(bytes(ip)[ip.ihl * 4:ip.len] for ip in ips)
    assert _ones_ok(l4)
    reply = ICMP(l4)
    assert reply.type == 0 and reply.id == 5 and reply.seq == 1 and bytes(reply.payload) == data
    assert gw.counters["icmp_tx_fragments"] == 3


def test_ipv4_identification_counts_up_by_one_from_a_seeded_start_and_wraps():
    """Every IPv4 datagram we build takes the next identification: one more
    each time, modulo 2**16, from a start drawn from the seeded generator
    (the same start for the same seed)."""
    import random
    gw = Gateway(NetConfig(), seed=5)
    first = gw._ident()
    assert first == (random.Random(5).randrange(65536) + 1) & 0xFFFF
    seen = [first] + [gw._ident() for _ in range(70000)]
    assert all(0 <= x <= 0xFFFF for x in seen)
    assert all(b == (a + 1) & 0xFFFF for a, b in zip(seen, seen[1:]))
    assert Gateway(NetConfig(), seed=5)._ident() == first
