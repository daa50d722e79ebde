"""The gateway's IPv6 path (``enable_ipv6``) driven with scapy-built frames.

Sans-IO like tests/unit/test_gateway.py: no sockets, no sleeps; time is an
explicit float. Replies are parsed back with scapy (checksums recomputed by
scapy must equal ours) or compared byte for byte with what scapy builds.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import DHCP6_InfoRequest, DHCP6_Reply, DHCP6OptClientId, DHCP6OptDNSServers
from scapy.layers.dhcp6 import DUID_LL
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr,
                                ICMPv6PacketTooBig, ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                defragment6, fragment6)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from usernet.stack.config import NetConfig
from usernet.stack.events import (DnsQuery, IcmpOpen, IcmpSend, TcpConnect, TcpConnectDns,
                                  TcpData, UdpOpen, UdpSend)
from usernet.stack.gateway import Gateway

GUEST_MAC = "02:00:00:00:00:64"
GW_MAC = "52:55:00:00:02:02"
GUEST = "fd00::ff:fe00:64"          # the EUI-64 of GUEST_MAC in fd00::/64
GUEST_LL = "fe80::ff:fe00:64"
GW = "fd00::2"
DNS6 = "fd00::3"
LL_GW = "fe80::2"
OUTSIDE = "2001:db8::1"


def ip6(s):
    import ipaddress
    return ipaddress.IPv6Address(s).packed


def make_gw(**kw):
    kw.setdefault("enable_ipv6", True)
    return Gateway(NetConfig(**kw), seed=1)


def feed(gw, pkt, now=1.0, csum_ok=False):
    gw.receive_frame(bytes(pkt), now, csum_ok)
    out = [bytes(f) for _hdr, f in gw.frames_out]
    gw.frames_out.clear()
    return out


def events(gw):
    ev = list(gw.events_out)
    gw.events_out.clear()
    return ev


def to_gw(l3, dst_mac=GW_MAC):
    return Ether(src=GUEST_MAC, dst=dst_mac) / l3


def rechecked(frame):
    """scapy's own checksums for the same packet must equal ours."""
    ref = Ether(frame)
    for layer in (TCP, UDP):
        if layer in ref:
            del ref[layer].chksum
    for layer in (ICMPv6EchoReply, ICMPv6DestUnreach, ICMPv6TimeExceeded, ICMPv6PacketTooBig,
                  ICMPv6ParamProblem, ICMPv6ND_NA, ICMPv6ND_RA):
        if layer in ref:
            del ref[layer].cksum
    return bytes(Ether(bytes(ref))) == frame


# ------------------------------------------------------------------ off / on
def test_without_enable_ipv6_every_ipv6_frame_is_dropped():
    gw = Gateway(NetConfig(), seed=1)
    assert feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / ICMPv6EchoRequest())) == []
    assert gw.counters["drop_ipv6_disabled"] == 1
    assert gw.get_timer() is None           # no router advertisements either


# ------------------------------------------------------------------ ND, RA
def _ns(target, src=GUEST_LL, hlim=255):
    group = "ff02::1:ff" + target.split(":")[-1].zfill(6)[-6:-4] + ":" + \
        target.split(":")[-1].zfill(4)[-4:]
    return Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02") / IPv6(
        src=src, dst=group, hlim=hlim) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(
        lladdr=GUEST_MAC)


def test_neighbor_solicitation_for_our_addresses_answered_byte_for_byte():
    """NS for fe80::2, fd00::2, fd00::3: a solicited NA (R, S, O) with our MAC,
    exactly what scapy builds; the solicitor is learned."""
    for target in (LL_GW, GW, DNS6):
        gw = make_gw()
        out = feed(gw, _ns(target))
        expected = bytes(Ether(src=GW_MAC, dst=GUEST_MAC) / IPv6(
            src=target, dst=GUEST_LL, hlim=255) / ICMPv6ND_NA(R=1, S=1, O=1, tgt=target)
            / __import__("scapy.layers.inet6", fromlist=["x"]).ICMPv6NDOptDstLLAddr(
                lladdr=GW_MAC))
        assert out == [expected], target
        assert gw.counters["ndp_na_sent"] == 1
        assert gw.neigh6.table[ip6(GUEST_LL)] == bytes.fromhex("020000000064")


def test_neighbor_solicitation_for_other_address_or_routed_is_ignored():
    gw = make_gw()
    assert feed(gw, _ns("fd00::77")) == []
    assert gw.counters["ndp_ns_not_ours"] == 1
    assert feed(gw, _ns(GW, hlim=64)) == []
    assert gw.counters["drop_nd_hop_limit"] == 1


def test_router_solicitation_gets_advertisement_with_prefix_and_rdnss():
    gw = make_gw()
    out = feed(gw, Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / IPv6(
        src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(
        lladdr=GUEST_MAC))
    assert len(out) == 1 and rechecked(out[0])
    ra = Ether(out[0])
    assert ra[Ether].dst == GUEST_MAC and ra[IPv6].src == LL_GW and ra[IPv6].hlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime > 0 and ra[ICMPv6ND_RA].O == 1
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "fd00::" and ra[ICMPv6NDOptPrefixInfo].A == 1
    assert ra[ICMPv6NDOptRDNSS].dns == [DNS6]
    assert gw.counters["ndp_ra_solicited"] == 1


def test_unsolicited_router_advertisements_run_in_the_one_timer_heap():
    gw = make_gw(ipv6_prefix="fd12:3456::/64")
    t = gw.get_timer()
    assert t is not None
    gw.handle_timer(t)
    first = [bytes(f) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    assert len(first) == 1
    ra = Ether(first[0])
    assert ra[Ether].dst == "33:33:00:00:00:01" and ra[IPv6].dst == "ff02::1"
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "fd12:3456::"
    nxt = gw.get_timer()
    assert nxt > t
    gw.handle_timer(nxt - 0.001)
    assert gw.frames_out == []
    gw.handle_timer(nxt)
    assert len(gw.frames_out) == 1
    assert gw.counters["ndp_ra_unsolicited"] == 2


def test_dhcpv6_information_request_gets_dns_server():
    gw = make_gw()
    out = feed(gw, Ether(src=GUEST_MAC, dst="33:33:00:01:00:02") / IPv6(
        src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=77)
        / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC)))
    assert len(out) == 1 and rechecked(out[0])
    rep = Ether(out[0])
    assert rep[IPv6].src == LL_GW and rep[IPv6].dst == GUEST_LL
    assert rep[UDP].sport == 547 and rep[UDP].dport == 546
    assert rep[DHCP6_Reply].trid == 77 and rep[DHCP6OptDNSServers].dnsservers == [DNS6]
    assert gw.counters["dhcp6_information_request"] == 1


def test_frames_for_unresolved_guest_solicit_and_wait():
    """A datagram toward a guest address not yet known is held; a Neighbor
    Solicitation goes to its solicited-node group; the NA releases it."""
    gw = make_gw()
    gw.udp_send_to_guest(ip6(GW), 5000, ip6(GUEST), 6000, b"hello", 1.0)
    out = [bytes(f) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    assert len(out) == 1
    ns = Ether(out[0])
    assert ns[IPv6].dst == "ff02::1:ff00:64" and ns[Ether].dst == "33:33:ff:00:00:64"
    assert ns[ICMPv6ND_NS].tgt == GUEST and ns[IPv6].hlim == 255 and rechecked(out[0])
    assert gw.counters["ndp_ns_tx"] == 1
    from scapy.layers.inet6 import ICMPv6NDOptDstLLAddr
    out = feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / IPv6(src=GUEST, dst=LL_GW, hlim=255)
               / ICMPv6ND_NA(S=1, O=1, tgt=GUEST) / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC))
    assert len(out) == 1
    u = Ether(out[0])
    assert u[Ether].dst == GUEST_MAC and u[UDP].dport == 6000 and u[Raw].load == b"hello"
    assert rechecked(out[0])


# ------------------------------------------------------------------ echo
def test_echo_to_our_addresses_answered_locally_byte_for_byte():
    for dst in (GW, DNS6, LL_GW):
        gw = make_gw()
        src = GUEST_LL if dst == LL_GW else GUEST
        out = feed(gw, to_gw(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=9, seq=3,
                                                                         data=b"ping6!" * 9)))
        expected = bytes(Ether(src=GW_MAC, dst=GUEST_MAC) / IPv6(src=dst, dst=src, hlim=64)
                         / ICMPv6EchoReply(id=9, seq=3, data=b"ping6!" * 9))
        assert out == [expected], dst
        assert gw.counters["icmp6_echo_local_reply"] == 1


def test_echo_outside_is_natted_and_reply_keeps_guest_identifier():
    gw = make_gw()
    feed(gw, to_gw(IPv6(src=GUEST, dst=OUTSIDE) / ICMPv6EchoRequest(id=0x4242, seq=1,
                                                                    data=b"abc")))
    ev = events(gw)
    assert ev[0] == IcmpOpen(ev[0].fid, OUTSIDE, 0x4242)
    assert ev[1] == IcmpSend(ev[0].fid, 1, b"abc")
    gw.icmp_host_reply(ev[0].fid, 1, b"abc", 1.1)
    out = [bytes(f) for _h, f in gw.frames_out]
    rep = Ether(out[0])
    assert rep[IPv6].src == OUTSIDE and rep[IPv6].dst == GUEST
    assert rep[ICMPv6EchoReply].id == 0x4242 and rep[ICMPv6EchoReply].data == b"abc"
    assert rechecked(out[0])


def test_echo_to_gateway_host_loopback_policy():
    """fd00::2 is answered locally (like 10.0.2.2); an echo to host ::1 is
    never NATed (loopback is not a destination), nor a prefix address."""
    gw = make_gw()
    out = feed(gw, to_gw(IPv6(src=GUEST, dst="::1") / ICMPv6EchoRequest()))
    assert Ether(out[0])[ICMPv6DestUnreach].code == 3
    out = feed(gw, to_gw(IPv6(src=GUEST, dst="fd00::77") / ICMPv6EchoRequest()))
    assert Ether(out[0])[ICMPv6DestUnreach].code == 3
    assert events(gw) == []


# ------------------------------------------------------------------ TCP
def _syn(dst=GW, dport=80, sport=40000, seq=1000):
    return to_gw(IPv6(src=GUEST, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=seq,
                                                 window=64240, options=[("MSS", 1440)]))


def test_tcp_to_gateway_goes_to_host_loopback_then_carries_data_both_ways():
    gw = make_gw()
    assert feed(gw, _syn()) == []           # connect first, answer second
    (ev,) = events(gw)
    assert ev == TcpConnect(ev.fid, "::1", 80)
    gw.tcp_connected(ev.fid, 1.0)
    out = [bytes(f) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    sa = Ether(out[0])
    assert sa[TCP].flags == "SA" and sa[TCP].ack == 1001 and sa[IPv6].src == GW
    # IPv6's header is 20 bytes longer: the MSS offered is MTU - 60.
    assert dict(sa[TCP].options)["MSS"] == 1440
    assert rechecked(out[0])
    isn = sa[TCP].seq
    feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / TCP(sport=40000, dport=80, flags="A", seq=1001,
                                                  ack=isn + 1, window=64240)))
    feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / TCP(sport=40000, dport=80, flags="PA", seq=1001,
                                                  ack=isn + 1, window=64240) / Raw(b"GET /")))
    assert TcpData(ev.fid, b"GET /") in events(gw)
    gw.tcp_host_data(ev.fid, b"HTTP/1.0 200", 1.1)
    out = [bytes(f) for _h, f in gw.frames_out]
    data = [Ether(f) for f in out if Raw in Ether(f)]
    assert data and data[0][Raw].load == b"HTTP/1.0 200" and data[0][TCP].ack == 1006
    assert all(rechecked(f) for f in out)


def test_tcp_offload_frames_over_ipv6_use_tso6():
    from usernet.wire.vnet import VIRTIO_NET_HDR_GSO_TCPV6, VNET_HDR
    gw = Gateway(NetConfig(enable_ipv6=True), seed=1, offload=True)
    feed(gw, _syn())
    (ev,) = events(gw)
    gw.tcp_connected(ev.fid, 1.0)
    sa = Ether(bytes(gw.frames_out[0][1]))
    gw.frames_out.clear()
    isn = sa[TCP].seq
    feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / TCP(sport=40000, dport=80, flags="A", seq=1001,
                                                  ack=isn + 1, window=65535)))
    gw.tcp_host_data(ev.fid, b"x" * 20000, 1.1)
    hdrs = [VNET_HDR.unpack(item[0]) for item in gw.frames_out]
    assert any(h[1] == VIRTIO_NET_HDR_GSO_TCPV6 for h in hdrs), hdrs
    # csum_start is the L4 offset behind the 40-byte IPv6 header.
    assert all(h[4] == 14 + 40 for h in hdrs)


def test_tcp_refusals_over_ipv6():
    gw = make_gw(host_loopback=False)
    out = feed(gw, _syn())
    assert Ether(out[0])[TCP].flags == "RA"
    assert gw.counters["tcp_syn_refused_policy"] == 1
    out = feed(gw, _syn(dst="fd00::77"))
    assert Ether(out[0])[ICMPv6DestUnreach].code == 3       # address unreachable
    out = feed(gw, _syn(dst="::ffff:127.0.0.1"))            # IPv4-mapped: never NATed
    assert Ether(out[0])[TCP].flags == "RA"
    out = feed(gw, _syn(dst="fe80::9"))
    assert Ether(out[0])[TCP].flags == "RA"
    assert events(gw) == []


def test_host_refused_gives_rst():
    gw = make_gw()
    feed(gw, _syn(dst=OUTSIDE))
    (ev,) = events(gw)
    assert ev.host == OUTSIDE
    gw.tcp_refused(ev.fid, 1.0, "unreachable")
    rst = Ether(bytes(gw.frames_out[0][1]))
    assert rst[TCP].flags == "RA" and rst[IPv6].src == OUTSIDE
    assert gw.counters["tcp_host_connect_failed_unreachable"] == 1


# ------------------------------------------------------------------ UDP, DNS
def test_udp_flow_to_outside_and_back_and_port_unreachable():
    gw = make_gw()
    feed(gw, to_gw(IPv6(src=GUEST, dst=OUTSIDE) / UDP(sport=7000, dport=9) / Raw(b"one")))
    ev = events(gw)
    assert ev[0] == UdpOpen(ev[0].fid, OUTSIDE, 9) and ev[1] == UdpSend(ev[0].fid, b"one")
    gw.udp_host_datagram(ev[0].fid, b"back", 1.1)
    out = [bytes(f) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    u = Ether(out[0])
    assert (u[IPv6].src, u[UDP].sport, u[UDP].dport, u[Raw].load) == (OUTSIDE, 9, 7000, b"back")
    assert rechecked(out[0])
    gw.udp_host_error(ev[0].fid, b"one", 1.2)
    out = [bytes(f) for _h, f in gw.frames_out]
    err = Ether(out[0])
    assert err[ICMPv6DestUnreach].code == 4 and rechecked(out[0])


def test_udp_to_gateway_port_without_service_is_port_unreachable():
    gw = make_gw(host_loopback=False)
    out = feed(gw, to_gw(IPv6(src=GUEST, dst=DNS6) / UDP(sport=7000, dport=99) / Raw(b"x")))
    err = Ether(out[0])
    assert err[ICMPv6DestUnreach].code == 4 and err[IPv6].src == GW
    assert gw.counters["udp6_port_unreachable_local"] == 1


def test_dns_on_fd00_3_udp_and_tcp():
    gw = make_gw()
    q = DNS(id=7, qd=DNSQR(qname="host.example", qtype="AAAA"))
    feed(gw, to_gw(IPv6(src=GUEST, dst=DNS6) / UDP(sport=5353, dport=53) / q))
    (ev,) = events(gw)
    assert isinstance(ev, DnsQuery) and ev.query == bytes(q)
    gw.dns_reply(ev.qid, bytes(q), 1.2)
    out = [bytes(f) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    a = Ether(out[0])
    assert (a[IPv6].src, a[UDP].sport, a[IPv6].dst, a[UDP].dport) == (DNS6, 53, GUEST, 5353)
    assert rechecked(out[0])
    feed(gw, _syn(dst=DNS6, dport=53))
    (ev,) = events(gw)
    assert isinstance(ev, TcpConnectDns)


def test_udp_answer_bigger_than_mtu_is_fragmented_toward_guest():
    gw = make_gw()
    feed(gw, to_gw(IPv6(src=GUEST, dst=OUTSIDE) / UDP(sport=7000, dport=9) / Raw(b"q")))
    ev = events(gw)
    payload = bytes(range(256)) * 16
    gw.udp_host_datagram(ev[0].fid, payload, 1.1)
    out = [Ether(bytes(f)) for _h, f in gw.frames_out]
    assert len(out) == 3 and all(len(bytes(f)) - 14 <= 1500 for f in out)
    assert gw.counters["udp_tx_fragments"] == 3
    whole = defragment6([f[IPv6] for f in out])
    assert UDP(bytes(whole[IPv6].payload)).load == payload


# ------------------------------------------------------------------ errors
def test_hop_limit_one_toward_outside_gets_time_exceeded():
    gw = make_gw()
    pkt = to_gw(IPv6(src=GUEST, dst=OUTSIDE, hlim=1) / UDP(sport=1, dport=33434) / Raw(b"t"))
    out = feed(gw, pkt)
    te = Ether(out[0])
    assert te[ICMPv6TimeExceeded].code == 0 and te[IPv6].src == GW and rechecked(out[0])
    assert bytes(te[ICMPv6TimeExceeded].payload) == bytes(pkt[IPv6])
    assert gw.counters["icmp6_time_exceeded_tx"] == 1
    # To our own address a hop limit of 1 is fine (it is delivered, not routed).
    assert feed(gw, to_gw(IPv6(src=GUEST, dst=GW, hlim=1) / ICMPv6EchoRequest()))
    assert events(gw) == []


def test_packet_bigger_than_mtu_gets_packet_too_big_with_our_mtu():
    gw = make_gw(mtu=1400)
    pkt = to_gw(IPv6(src=GUEST, dst=OUTSIDE) / UDP(sport=1, dport=9) / Raw(b"z" * 1400))
    out = feed(gw, pkt)
    ptb = Ether(out[0])
    assert ptb[ICMPv6PacketTooBig].mtu == 1400 and rechecked(out[0])
    assert len(out[0]) - 14 <= 1280          # the quote is cut to fit the minimum MTU
    assert gw.counters["icmp6_packet_too_big_tx"] == 1
    # An offloaded super-frame (csum_ok) is big by design: not an error.
    feed(gw, pkt, csum_ok=True)
    assert gw.counters["icmp6_packet_too_big_tx"] == 1


def test_unknown_next_header_gets_parameter_problem_pointing_at_it():
    gw = make_gw()
    out = feed(gw, to_gw(IPv6(src=GUEST, dst=GW, nh=132) / Raw(b"s" * 16)))
    pp = Ether(out[0])
    assert pp[ICMPv6ParamProblem].code == 1 and pp[ICMPv6ParamProblem].ptr == 6
    assert rechecked(out[0])
    # Behind hop-by-hop and destination options: the pointer names the
    # destination options header's next-header byte (40 + 8).
    out = feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / IPv6ExtHdrHopByHop()
                         / IPv6ExtHdrDestOpt(nh=132) / Raw(b"s" * 16)))
    assert Ether(out[0])[ICMPv6ParamProblem].ptr == 48
    assert gw.counters["icmp6_param_problem_tx"] == 2
    # No next header (59): silently nothing.
    assert feed(gw, to_gw(IPv6(src=GUEST, dst=GW, nh=59))) == []
    assert gw.counters["drop_ipv6_no_next_header"] == 1


def test_no_icmpv6_errors_about_multicast_or_errors():
    gw = make_gw()
    assert feed(gw, to_gw(IPv6(src=GUEST, dst="ff02::1", nh=132) / Raw(b"s" * 8),
                          dst_mac="33:33:00:00:00:01")) == []
    assert feed(gw, to_gw(IPv6(src=GUEST, dst="ff05::9", hlim=1) / UDP(dport=9))) == []
    # An ICMPv6 error from the container is never answered with one.
    assert feed(gw, to_gw(IPv6(src=GUEST, dst=OUTSIDE, hlim=1) / ICMPv6DestUnreach()
                          / IPv6(src=OUTSIDE, dst=GUEST) / UDP())) == []
    assert gw.counters["icmp6_error_suppressed"] == 2
    assert gw.counters["drop_ipv6_bad_destination"] + gw.counters["drop_udp_broadcast"] >= 0


def test_sources_the_container_may_not_use_are_dropped():
    gw = make_gw()
    for src in ("2001:db8::5", GW, "ff02::1", "::1"):
        assert feed(gw, to_gw(IPv6(src=src, dst=GW) / ICMPv6EchoRequest())) == []
    assert gw.counters["drop_ipv6_bad_source"] == 4
    # The unspecified source: only neighbour discovery (a DAD probe).
    assert feed(gw, to_gw(IPv6(src="::", dst=GW) / ICMPv6EchoRequest())) == []
    assert gw.counters["drop_ipv6_bad_source"] == 5
    out = feed(gw, Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02") / IPv6(
        src="::", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=GW))
    assert Ether(out[0])[IPv6].dst == "ff02::1"      # "taken", to all nodes
    assert ip6("::") not in gw.neigh6.table


# ------------------------------------------------------------------ fragments
def test_fragmented_echo_is_reassembled_and_answered_and_lone_fragment_expires():
    gw = make_gw()
    big = IPv6(src=GUEST, dst=GW) / IPv6ExtHdrFragment(id=0x1234) / ICMPv6EchoRequest(
        id=1, seq=1, data=bytes(range(256)) * 10)
    frags = fragment6(big, 1000)
    assert len(frags) > 1
    out = []
    for f in reversed(frags):
        out += feed(gw, to_gw(f))
    assert gw.counters["frag_reassembled"] == 1 and gw.counters["frag6_received"] == len(frags)
    # The 2568-byte reply does not fit the 1500-byte link: it comes in fragments.
    assert len(out) == 2 and all(len(f) <= 14 + 1500 for f in out)
    whole = defragment6([Ether(f)[IPv6] for f in out])
    assert ICMPv6EchoReply(bytes(whole.payload)).data == bytes(range(256)) * 10
    feed(gw, to_gw(frags[0]), now=2.0)
    gw.handle_timer(100.0)
    assert gw.counters["frag_drop_timeout"] == 1 and gw.reasm.bytes_held == 0


def test_fragmented_udp_to_outside_reassembled_before_nat():
    gw = make_gw()
    big = IPv6(src=GUEST, dst=OUTSIDE) / IPv6ExtHdrFragment(id=99) / UDP(
        sport=7000, dport=9) / Raw(b"u" * 3000)
    for f in fragment6(big, 1280):
        feed(gw, to_gw(f))
    ev = events(gw)
    assert ev[1] == UdpSend(ev[0].fid, b"u" * 3000)


# ------------------------------------------------------------------ fuzz
_VALID = [
    bytes(_syn()),
    bytes(_ns(GW)),
    bytes(to_gw(IPv6(src=GUEST, dst=GW) / ICMPv6EchoRequest(data=b"x" * 20))),
    bytes(to_gw(IPv6(src=GUEST, dst=DNS6) / UDP(sport=1, dport=53) / DNS(qd=DNSQR()))),
    bytes(to_gw(IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
                / DHCP6_InfoRequest(trid=1))),
    bytes(to_gw(IPv6(src=GUEST, dst=OUTSIDE) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrFragment(m=1, id=3) / UDP() / Raw(b"f" * 16))),
    bytes(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / IPv6(src=GUEST_LL, dst="ff02::2",
                                                               hlim=255) / ICMPv6ND_RS()),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                         max_size=6), st.integers(0, 300), st.booleans())
def test_fuzz_ipv6_input_never_raises(frame, flips, cut, csum_ok):
    """Any mutation or truncation of valid IPv6 frames goes through
    receive_frame without an exception (counted drops or answers)."""
    gw = make_gw()
    buf = bytearray(frame)
    for at, val in flips:
        if at < len(buf):
            buf[at] = val
    if cut:
        buf = buf[:cut]
    gw.receive_frame(bytes(buf), 1.0, csum_ok)
    gw.handle_timer(50.0)
    for _hdr, f in gw.frames_out:
        assert len(f) >= 14


def test_udp_to_gateway_goes_to_host_loopback():
    gw = make_gw()
    feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / UDP(sport=7000, dport=9999) / Raw(b"x")))
    ev = events(gw)
    assert ev[0] == UdpOpen(ev[0].fid, "::1", 9999)
    gw = make_gw(host_loopback=False)
    out = feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / UDP(sport=7000, dport=9999) / Raw(b"x")))
    assert Ether(out[0])[ICMPv6DestUnreach].code == 4 and events(gw) == []
    assert gw.counters["udp_refused_policy"] == 1


# ------------------------------------------------------------------ port forwards
def test_guest_ip6_is_the_slaac_address_of_the_known_mac():
    gw = make_gw()
    assert gw.guest_ip6() is None                     # never heard from the container
    feed(gw, Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / IPv6(
        src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(
        lladdr=GUEST_MAC))
    assert gw.guest_ip6() == ip6(GUEST)
    gw = make_gw(guest_mac=bytes.fromhex("020000000064"))
    assert gw.guest_ip6() == ip6(GUEST)


def test_inbound_tcp_over_ipv6_shows_real_client_or_gateway():
    """A port forward's SYN toward the guest's IPv6 address: from the real
    client when the container can answer it, from fd00::2 for host loopback."""
    gw = make_gw()
    feed(gw, to_gw(IPv6(src=GUEST, dst=GW) / ICMPv6EchoRequest()))     # learn the guest
    fid = gw.tcp_open_inbound(ip6(GUEST), 8080, ip6("2001:db8::7"), 5555, 1.0)
    syn = Ether(bytes(gw.frames_out[-1][1]))
    gw.frames_out.clear()
    assert (syn[IPv6].src, syn[IPv6].dst, syn[TCP].sport, syn[TCP].dport, str(syn[TCP].flags)) \
        == ("2001:db8::7", GUEST, 5555, 8080, "S")
    assert dict(syn[TCP].options)["MSS"] == 1440
    gw.tcp_open_inbound(ip6(GUEST), 8080, ip6("::1"), 5556, 1.0)
    syn = Ether(bytes(gw.frames_out[-1][1]))
    assert syn[IPv6].src == GW and gw.counters["fwd_client_addr_as_gateway"] == 1
    assert fid is not None


def test_inbound_udp_over_ipv6_to_unresolved_guest_solicits():
    gw = make_gw()
    fid, shown = gw.udp_inbound(None, None, ip6(GUEST), 53, b"q", 1.0)
    assert shown[0] == ip6(GW)
    out = [Ether(bytes(f)) for _h, f in gw.frames_out]
    assert ICMPv6ND_NS in out[0] and gw.counters["ndp_ns_tx"] == 1


# ------------------------------------------------------------------ extension headers
def _echo_with(*ext):
    pkt = IPv6(src=GUEST, dst=GW)
    for h in ext:
        pkt = pkt / h
    return to_gw(pkt / ICMPv6EchoRequest(id=1, seq=1))


def test_extension_header_options_act_by_their_high_bits():
    """RFC 8200 4.2: an unknown option is skipped (00), drops the packet
    silently (01), or draws parameter problem code 2 pointing at it (10/11);
    Pad1/PadN and a skip-able option leave the packet alone."""
    from scapy.layers.inet6 import HBHOptUnknown, Pad1, PadN
    gw = make_gw()
    out = feed(gw, _echo_with(IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x1E, optdata=b"ab"),
                                                          Pad1(), PadN(optdata=b"\0")])))
    assert ICMPv6EchoReply in Ether(out[0])
    assert feed(gw, _echo_with(IPv6ExtHdrDestOpt(options=[
        HBHOptUnknown(otype=0x7F, optdata=b"abcd")]))) == []
    assert gw.counters["drop_ipv6_ext_header"] == 1
    for otype in (0x9E, 0xDE):
        out = feed(gw, _echo_with(IPv6ExtHdrDestOpt(options=[
            PadN(optdata=b""), HBHOptUnknown(otype=otype, optdata=b"ab")])))
        pp = Ether(out[0])
        # 40 (IPv6) + 2 (next header, length) + 2 (the PadN) = the option's offset.
        assert (pp[ICMPv6ParamProblem].code, pp[ICMPv6ParamProblem].ptr) == (2, 44)
        assert rechecked(out[0])


def test_routing_header_with_segments_left_is_refused_and_without_ignored():
    from scapy.layers.inet6 import IPv6ExtHdrRouting
    gw = make_gw()
    out = feed(gw, _echo_with(IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00::9"])))
    pp = Ether(out[0])
    assert (pp[ICMPv6ParamProblem].code, pp[ICMPv6ParamProblem].ptr) == (0, 42)
    out = feed(gw, _echo_with(IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00::9"])))
    assert ICMPv6EchoReply in Ether(out[0])


def test_hop_by_hop_not_first_is_an_unrecognized_next_header():
    gw = make_gw()
    out = feed(gw, _echo_with(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()))
    pp = Ether(out[0])
    assert (pp[ICMPv6ParamProblem].code, pp[ICMPv6ParamProblem].ptr) == (1, 40)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 43, 44, 51, 60, 6, 17, 58, 59, 200]),
                          st.integers(0, 3), st.binary(min_size=0, max_size=40)),
                min_size=1, max_size=9))
def test_ext_header_problem_never_raises_on_what_the_parser_accepts(chain):
    """Arbitrary chains of extension headers with arbitrary contents: where
    parse_ipv6 accepts the packet, ext_header_problem answers one of its
    three kinds of answer and nothing else."""
    from usernet.wire import ParseError
    from usernet.wire.ipv6 import DISCARD, ext_header_problem, parse_ipv6
    body = b""
    first = chain[0][0]
    for i, (_nh, hlen, data) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 59
        blob = bytes([nxt, hlen]) + data
        size = (hlen + 1) * 8
        body += (blob + bytes(size))[:size]
    hdr = bytes(IPv6(src=GUEST, dst=GW, nh=first, plen=len(body)))
    buf = hdr + body
    try:
        _s, _d, _p, _h, _f, l4, _e = parse_ipv6(buf, 0)
    except ParseError:
        return
    r = ext_header_problem(buf, 0, l4)
    assert r is None or r is DISCARD or (r[0] in (0, 1, 2) and 0 <= r[1] < len(buf))


def test_ipv6_needs_an_mtu_of_1280():
    import pytest
    with pytest.raises(ValueError, match="1280"):
        NetConfig(enable_ipv6=True, mtu=1279)
    NetConfig(enable_ipv6=False, mtu=576)
    NetConfig(enable_ipv6=True, mtu=1280)


def test_echo6_reply_to_a_reassembled_request_is_fragmented_to_the_mtu():
    """Regression (issue 13, found by tools/fuzz.py): a 3000-byte echo to
    fd00::2 arrives in fragments; the reply was one frame over the link MTU.
    Now we, its source, fragment it (RFC 8200 4.5)."""
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6
    gw = make_gw()
    data = bytes(range(256)) * 12
    req = IPv6(src=GUEST, dst=GW) / IPv6ExtHdrFragment(id=9) / ICMPv6EchoRequest(
        id=5, seq=1, data=data)
    out = []
    for frag in fragment6(req, 1280):
        out += feed(gw, Ether(src=GUEST_MAC, dst=GW_MAC) / frag)
    assert len(out) >= 3 and all(len(f) <= 14 + 1500 for f in out)
    frags = sorted((Ether(f)[IPv6ExtHdrFragment] for f in out), key=lambda h: h.offset)
    assert [h.m for h in frags] == [1] * (len(frags) - 1) + [0]
    l4 = b"".join(bytes(h.payload) for h in frags)
    reply = ICMPv6EchoReply(l4)
    assert reply.id == 5 and reply.seq == 1 and reply.data == data
    # The checksum over the pseudo-header and the whole message.
    pseudo = ip6(GW) + ip6(GUEST) + len(l4).to_bytes(4, "big") + bytes([0, 0, 0, 58])
    buf = pseudo + l4 + b"\0" * (len(l4) & 1)
    t = sum(int.from_bytes(buf[i:i + 2], "big") for i in range(0, len(buf), 2))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    assert t == 0xFFFF
    assert gw.counters["icmp_tx_fragments"] == len(out)
