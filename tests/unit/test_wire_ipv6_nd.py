"""Neighbour discovery, router advertisements and DHCPv6: byte for byte against scapy.

Each builder's frame is compared with the same message built by scapy (which
computes its own ICMPv6 checksum), and scapy-built messages parse to the
fields they were built with. The parsers keep the wire layer's one-error
contract on any bytes (Hypothesis).
"""

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp6 import (DHCP6_InfoRequest, DHCP6_Reply, DHCP6OptClientId,
                                DHCP6OptDNSDomains, DHCP6OptDNSServers, DHCP6OptOptReq,
                                DHCP6OptServerId, DUID_LL)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo,
                                ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether

from usernet.wire import ParseError
from usernet.wire.dhcpv6 import (CLIENT_PORT, INFORMATION_REQUEST, OPT_CLIENTID, OPT_ORO,
                                 SERVER_PORT, build_reply, duid_ll, parse_dhcpv6)
from usernet.wire.frame import build_icmp, build_udp
from usernet.wire.icmp import (ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_ROUTER_ADVERT,
                               ND_ROUTER_SOLICIT)
from usernet.wire.ndp import ND_HOP_LIMIT, build_na, build_ns, build_ra, parse_nd

GW_MAC = b"\x52\x55\x0a\x00\x02\x02"
GUEST_MAC = b"\x02\x00\x00\x00\x00\x64"
GW_LL = bytes.fromhex("fe800000000000000000000000000002")
GUEST_LL = bytes.fromhex("fe80000000000000000000fffe000064")
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
PREFIX = bytes.fromhex("fd000000000000000000000000000000")
GW6 = bytes.fromhex("fd000000000000000000000000000002")
DNS6 = bytes.fromhex("fd000000000000000000000000000003")


def mac(b):
    return ":".join(f"{x:02x}" for x in b)


def ip6(b):
    import ipaddress
    return str(ipaddress.IPv6Address(b))


def icmp6_frame(dst_mac, src_mac, src, dst, itype, msg):
    rest_hi, rest_lo, data = msg
    return bytes(build_icmp(dst_mac, src_mac, src, dst, itype, 0, rest_hi, rest_lo, data,
                            ttl=ND_HOP_LIMIT))


def test_neighbor_advertisement_matches_scapy():
    ours = icmp6_frame(GUEST_MAC, GW_MAC, GW6, GUEST_LL, ND_NEIGHBOR_ADVERT,
                       build_na(GW6, GW_MAC, flags=0x80 | 0x40 | 0x20))
    theirs = bytes(Ether(dst=mac(GUEST_MAC), src=mac(GW_MAC))
                   / IPv6(src=ip6(GW6), dst=ip6(GUEST_LL), hlim=255)
                   / ICMPv6ND_NA(R=1, S=1, O=1, tgt=ip6(GW6))
                   / ICMPv6NDOptDstLLAddr(lladdr=mac(GW_MAC)))
    assert ours == theirs


def test_neighbor_solicitation_matches_scapy():
    ours = icmp6_frame(b"\x33\x33\xff\x00\x00\x64", GW_MAC, GW_LL,
                       bytes.fromhex("ff0200000000000000000001ff000064"), ND_NEIGHBOR_SOLICIT,
                       build_ns(GUEST_LL, GW_MAC))
    theirs = bytes(Ether(dst="33:33:ff:00:00:64", src=mac(GW_MAC))
                   / IPv6(src=ip6(GW_LL), dst="ff02::1:ff00:64", hlim=255)
                   / ICMPv6ND_NS(tgt=ip6(GUEST_LL))
                   / ICMPv6NDOptSrcLLAddr(lladdr=mac(GW_MAC)))
    assert ours == theirs


def test_router_advertisement_matches_scapy():
    # prf=0: a medium default-router preference (RFC 4191 2.2); scapy's default is High.
    ours = icmp6_frame(b"\x33\x33\x00\x00\x00\x01", GW_MAC, GW_LL, ALL_NODES, ND_ROUTER_ADVERT,
                       build_ra(GW_MAC, prefix=PREFIX, mtu=1500, dns=(DNS6,)))
    theirs = bytes(Ether(dst="33:33:00:00:00:01", src=mac(GW_MAC))
                   / IPv6(src=ip6(GW_LL), dst="ff02::1", hlim=255)
                   / ICMPv6ND_RA(chlim=64, M=0, O=1, prf=0, routerlifetime=1800, reachabletime=0,
                                 retranstimer=0)
                   / ICMPv6NDOptSrcLLAddr(lladdr=mac(GW_MAC))
                   / ICMPv6NDOptPrefixInfo(prefixlen=64, L=1, A=1, validlifetime=86400,
                                           preferredlifetime=14400, prefix="fd00::")
                   / ICMPv6NDOptMTU(mtu=1500)
                   / ICMPv6NDOptRDNSS(lifetime=1800, dns=[ip6(DNS6)]))
    assert ours == theirs


def test_router_advertisement_without_mtu_or_dns():
    ours = icmp6_frame(b"\x33\x33\x00\x00\x00\x01", GW_MAC, GW_LL, ALL_NODES, ND_ROUTER_ADVERT,
                       build_ra(GW_MAC, prefix=PREFIX, router_lifetime=0))
    theirs = bytes(Ether(dst="33:33:00:00:00:01", src=mac(GW_MAC))
                   / IPv6(src=ip6(GW_LL), dst="ff02::1", hlim=255)
                   / ICMPv6ND_RA(chlim=64, M=0, O=1, prf=0, routerlifetime=0)
                   / ICMPv6NDOptSrcLLAddr(lladdr=mac(GW_MAC))
                   / ICMPv6NDOptPrefixInfo(prefixlen=64, L=1, A=1, validlifetime=86400,
                                           preferredlifetime=14400, prefix="fd00::"))
    assert ours == theirs


def _body(pkt):
    """The ICMPv6 message after its 4-byte type/code/checksum word, as parse_nd takes it."""
    raw = bytes(pkt)
    return raw[0], raw[1], raw[4:]


@pytest.mark.parametrize("pkt, target, link", [
    (ICMPv6ND_NS(tgt=ip6(GW6)) / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)), GW6, GUEST_MAC),
    (ICMPv6ND_NS(tgt=ip6(GW6)), GW6, None),   # DAD probe: no source link-layer option
    (ICMPv6ND_NA(tgt=ip6(GUEST_LL)) / ICMPv6NDOptDstLLAddr(lladdr=mac(GUEST_MAC)), GUEST_LL,
     GUEST_MAC),
    (ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)), None, GUEST_MAC),
    (ICMPv6ND_RS(), None, None),
    # An unknown option before the one we want is skipped by its length.
    (ICMPv6ND_NS(tgt=ip6(GW6)) / ICMPv6NDOptMTU(mtu=9000)
     / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)), GW6, GUEST_MAC),
])
def test_parse_nd_from_scapy(pkt, target, link):
    itype, code, body = _body(pkt)
    assert parse_nd(itype, code, body) == (target, link)


def test_parse_nd_rejects_what_rfc4861_discards():
    _, _, body = _body(ICMPv6ND_NS(tgt=ip6(GW6)) / ICMPv6NDOptSrcLLAddr(lladdr=mac(GUEST_MAC)))
    with pytest.raises(ParseError) as e:
        parse_nd(ND_NEIGHBOR_SOLICIT, 1, body)            # code must be 0
    assert e.value.reason == "nd_bad_code"
    with pytest.raises(ParseError) as e:
        parse_nd(ND_NEIGHBOR_SOLICIT, 0, body[:19])       # no room for the target
    assert e.value.reason == "nd_truncated"
    zero_len = body[:20] + b"\x01\x00" + body[22:]        # option length 0: would never advance
    with pytest.raises(ParseError) as e:
        parse_nd(ND_NEIGHBOR_SOLICIT, 0, zero_len)
    assert e.value.reason == "nd_bad_option"
    with pytest.raises(ParseError) as e:
        parse_nd(ND_NEIGHBOR_SOLICIT, 0, body[:20] + b"\x01\x02" + body[22:])   # past the end
    assert e.value.reason == "nd_bad_option"
    with pytest.raises(ParseError):
        parse_nd(ND_ROUTER_ADVERT - 10, 0, body)          # not an ND type


@given(itype=st.sampled_from([ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT, ND_NEIGHBOR_SOLICIT,
                              ND_NEIGHBOR_ADVERT, 1, 128]),
       code=st.integers(0, 2), body=st.binary(max_size=120))
@settings(max_examples=400, deadline=None)
def test_parse_nd_any_bytes(itype, code, body):
    try:
        target, link = parse_nd(itype, code, body)
    except ParseError:
        return
    assert target is None or len(target) == 16
    assert link is None or len(link) == 6


# ------------------------------------------------------------------ DHCPv6
def test_dhcpv6_information_request_from_scapy():
    req = (DHCP6_InfoRequest(trid=0x123456) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac(GUEST_MAC)))
           / DHCP6OptOptReq(reqopts=[23, 24]))
    mtype, xid, opts = parse_dhcpv6(bytes(req))
    assert (mtype, xid) == (INFORMATION_REQUEST, 0x123456)
    assert opts[OPT_CLIENTID] == duid_ll(GUEST_MAC)
    assert opts[OPT_ORO] == b"\x00\x17\x00\x18"


def test_dhcpv6_reply_matches_scapy():
    client = duid_ll(GUEST_MAC)
    ours = bytes(build_udp(GUEST_MAC, GW_MAC, GW_LL, GUEST_LL, SERVER_PORT, CLIENT_PORT,
                           build_reply(0x123456, duid_ll(GW_MAC), client, dns=(DNS6,),
                                       domains=("usernet.internal",))))
    theirs = bytes(Ether(dst=mac(GUEST_MAC), src=mac(GW_MAC))
                   / IPv6(src=ip6(GW_LL), dst=ip6(GUEST_LL))
                   / UDP(sport=SERVER_PORT, dport=CLIENT_PORT)
                   / DHCP6_Reply(trid=0x123456)
                   / DHCP6OptServerId(duid=DUID_LL(lladdr=mac(GW_MAC)))
                   / DHCP6OptClientId(duid=DUID_LL(lladdr=mac(GUEST_MAC)))
                   / DHCP6OptDNSServers(dnsservers=[ip6(DNS6)])
                   / DHCP6OptDNSDomains(dnsdomains=["usernet.internal."]))
    assert ours == theirs


def test_dhcpv6_truncated_options_are_parse_errors():
    good = bytes(DHCP6_InfoRequest(trid=1) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac(GUEST_MAC))))
    for cut in range(len(good)):
        if cut == 4:
            continue   # a bare header is a valid (option-less) message
        with pytest.raises(ParseError):
            parse_dhcpv6(good[:cut])


@given(st.binary(max_size=200))
@settings(max_examples=400, deadline=None)
def test_parse_dhcpv6_any_bytes(data):
    try:
        mtype, xid, opts = parse_dhcpv6(data)
    except ParseError:
        return
    assert 0 <= mtype < 256 and 0 <= xid < 1 << 24 and isinstance(opts, dict)
