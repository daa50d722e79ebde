"""The IPv6 router's link services (usernet.stack.ndp), sans-IO, read like a packet trace.

Messages the container would send are built with scapy; what the router
answers is framed with usernet's builders and read back with scapy.
"""

from collections import Counter

from scapy.layers.dhcp6 import (DHCP6_InfoRequest, DHCP6_Reply, DHCP6_Solicit, DHCP6OptClientId,
                                DHCP6OptDNSServers, DHCP6OptServerId, DUID_LL)
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo,
                                ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether

from usernet.stack.ndp import (ALL_NODES, LINK_LOCAL_GW, RA_INITIAL_COUNT, RA_INITIAL_INTERVAL,
                               RA_INTERVAL, UNSPECIFIED, Ipv6Router)
from usernet.wire.frame import build_icmp
from usernet.wire.ndp import ND_HOP_LIMIT

# The link's addresses and the mac() helper are the wire tests' (one place for both).
from test_wire_ipv6_nd import DNS6, GUEST_LL, GUEST_MAC, GW6, GW_MAC, PREFIX, mac  # noqa: E402


def router(counters=None):
    return Ipv6Router(PREFIX, GW_MAC, gateway=GW6, dns=DNS6, mtu=1500,
                      counters=counters if counters is not None else Counter())


def send_nd(r, pkt, src=GUEST_LL, hop_limit=255):
    raw = bytes(pkt)
    return r.receive_nd(raw[0], raw[1], raw[4:], src, GUEST_MAC, hop_limit)


def frame(msg):
    """Frame a reply as the gateway will, and let scapy parse it."""
    itype, rest_hi, rest_lo, data, src, dst, dst_mac = msg
    return Ether(bytes(build_icmp(dst_mac, GW_MAC, src, dst, itype, 0, rest_hi, rest_lo, data,
                                  ttl=ND_HOP_LIMIT)))


def test_neighbor_solicitation_for_the_gateway_is_answered_and_the_sender_learned():
    c = Counter()
    r = router(c)
    reply, learned = send_nd(r, ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
    assert learned == (GUEST_LL, GUEST_MAC)
    f = frame(reply)
    assert f[Ether].dst == mac(GUEST_MAC)
    assert f[IPv6].src == "fd00::2" and f[IPv6].dst == "fe80::ff:fe00:64" and f[IPv6].hlim == 255
    na = f[ICMPv6ND_NA]
    assert (na.tgt, na.R, na.S, na.O) == ("fd00::2", 1, 1, 1)
    assert f[ICMPv6NDOptDstLLAddr].lladdr == mac(GW_MAC)
    # scapy recomputes the checksum of what it parsed: ours was right.
    assert f[ICMPv6ND_NA].cksum == ICMPv6ND_NA(bytes(Ether(bytes(f))[ICMPv6ND_NA]))[ICMPv6ND_NA].cksum
    assert c["ndp_na_sent"] == 1


def test_dns_and_link_local_addresses_are_ours_too_others_are_not():
    r = router()
    for tgt in ("fd00::3", "fe80::2"):
        reply, _ = send_nd(r, ICMPv6ND_NS(tgt=tgt) / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
        assert frame(reply)[ICMPv6ND_NA].tgt == tgt
    c = Counter()
    r = router(c)
    reply, learned = send_nd(r, ICMPv6ND_NS(tgt="fd00::99") / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
    assert reply is None and learned == (GUEST_LL, GUEST_MAC)
    assert c["ndp_ns_not_ours"] == 1


def test_duplicate_address_probe_for_our_address_is_defended_to_all_nodes():
    r = router()
    reply, learned = send_nd(r, ICMPv6ND_NS(tgt="fd00::2"), src=UNSPECIFIED)
    assert learned is None
    f = frame(reply)
    assert f[IPv6].dst == "ff02::1" and f[Ether].dst == "33:33:00:00:00:01"
    assert f[ICMPv6ND_NA].S == 0


def test_routed_nd_is_dropped():
    c = Counter()
    reply, learned = send_nd(router(c), ICMPv6ND_NS(tgt="fd00::2"), hop_limit=64)
    assert (reply, learned) == (None, None)
    assert c["drop_nd_hop_limit"] == 1


def test_malformed_nd_is_a_named_drop():
    c = Counter()
    r = router(c)
    raw = bytes(ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
    reply, _ = r.receive_nd(raw[0], 0, raw[4:24] + b"\x01\x00" + raw[26:], GUEST_LL, GUEST_MAC, 255)
    assert reply is None and c["drop_nd_bad_option"] == 1


def test_router_solicitation_gets_a_router_advertisement():
    c = Counter()
    reply, learned = send_nd(router(c), ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
    assert learned == (GUEST_LL, GUEST_MAC)
    f = frame(reply)
    assert f[IPv6].src == "fe80::2" and f[IPv6].dst == "fe80::ff:fe00:64"
    ra = f[ICMPv6ND_RA]
    assert (ra.M, ra.O, ra.routerlifetime, ra.chlim) == (0, 1, 1800, 64)
    pi = f[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("fd00::", 64, 1, 1)
    assert f[ICMPv6NDOptMTU].mtu == 1500
    assert f[ICMPv6NDOptRDNSS].dns == ["fd00::3"]
    assert f[ICMPv6NDOptSrcLLAddr].lladdr == mac(GW_MAC)
    assert c["ndp_ra_solicited"] == 1


def test_unsolicited_advertisements_fast_at_first_then_slow():
    c = Counter()
    r = Ipv6Router(PREFIX, GW_MAC, gateway=GW6, dns=DNS6, mtu=1500, counters=c, now=100.0)
    assert r.get_timer() == 100.0
    assert r.handle_timer(99.0) == []                 # not due: nothing
    sent = []
    now = 100.0
    for _ in range(RA_INITIAL_COUNT + 1):
        now = r.get_timer()
        msgs = r.handle_timer(now)
        assert len(msgs) == 1
        f = frame(msgs[0])
        assert f[IPv6].dst == "ff02::1" and f[IPv6].src == "fe80::2"
        sent.append(now)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps == [RA_INITIAL_INTERVAL] * (RA_INITIAL_COUNT - 1) + [RA_INTERVAL]
    assert c["ndp_ra_unsolicited"] == RA_INITIAL_COUNT + 1


def test_dhcpv6_information_request_is_answered_with_the_dns_server():
    c = Counter()
    r = router(c)
    req = DHCP6_InfoRequest(trid=0xABCDE) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac(GUEST_MAC)))
    reply = DHCP6_Reply(r.receive_dhcpv6(bytes(req)))
    assert reply.trid == 0xABCDE
    assert reply[DHCP6OptServerId].duid.lladdr == mac(GW_MAC)
    assert reply[DHCP6OptClientId].duid.lladdr == mac(GUEST_MAC)
    assert reply[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    assert c["dhcp6_information_request"] == 1


def test_dhcpv6_other_servers_and_stateful_messages_are_not_answered():
    c = Counter()
    r = router(c)
    other = (DHCP6_InfoRequest(trid=1) / DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:99")))
    assert r.receive_dhcpv6(bytes(other)) is None
    assert c["dhcp6_other_server"] == 1
    sol = DHCP6_Solicit(trid=2) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac(GUEST_MAC)))
    assert r.receive_dhcpv6(bytes(sol)) is None
    assert c["dhcp6_ignored"] == 1
    assert r.receive_dhcpv6(b"\x0b\x00") is None
    assert c["drop_dhcp6_truncated"] == 1


def test_constants_are_the_rfc_ones():
    assert ALL_NODES == bytes.fromhex("ff020000000000000000000000000001")
    assert LINK_LOCAL_GW[:2] == b"\xfe\x80" and LINK_LOCAL_GW[-1] == 2
