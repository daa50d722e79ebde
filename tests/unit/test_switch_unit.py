"""The virtual switch of a named network (usernet/stack/switch.py), sans-IO.

Real Gateways are plugged into a Network; frames built with scapy go in
through ``Port.receive`` and what each TAP and each gateway got is checked.
No sockets, no sleeps; time is an explicit float.
"""

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from usernet.stack import switch as sw
from usernet.stack.config import NetConfig
from usernet.stack.dhcp import DhcpConfig
from usernet.stack.events import DnsQuery
from usernet.stack.gateway import Gateway
from usernet.stack.switch import MAC_AGE, MAX_IP6_PER_PORT, MAX_MACS_PER_PORT, Network, \
    check_name, slaac
from usernet.wire.vnet import VNET_HDR, VNET_HDR_NONE

GW_MAC = "52:55:00:00:02:02"
BCAST = "ff:ff:ff:ff:ff:ff"
MACS = ["02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:00:00:00:00:0d"]
PREFIX6 = "fd89:0:0:1::/64"


def mac(i):
    return bytes.fromhex(MACS[i].replace(":", ""))


def make_net(n=2, names=("web", "client", "third", "fourth"), ipv6=False, name="alpha",
             cidr="10.89.0.0/24", vnet=True):
    net = Network(name, cidr, PREFIX6 if ipv6 else None)
    ports = []
    for i in range(n):
        ip = net.allocate()
        gw = Gateway(NetConfig(enable_ipv6=ipv6, **net.config_fields(ip)), seed=i)
        ports.append(net.add_port(gw, name=names[i] if names else None, vnet=vnet))
    return net, ports


def ip_of(port):
    return str(ipaddress.IPv4Address(port.ip4))


def send(port, pkt, now=0.0, hdr=VNET_HDR_NONE, csum_ok=False):
    port.receive(hdr, bytes(pkt), now, csum_ok)


def tap(port):
    """What the port's TAP got (switched frames and its gateway's own), emptied."""
    out = [bytes(f) for _h, f in port.tap_out]
    port.tap_out.clear()
    return out


def hello(port, i, now=0.0):
    """The container's first frame (a gratuitous ARP): pins its MAC."""
    send(port, Ether(src=MACS[i], dst=BCAST) / ARP(op=1, hwsrc=MACS[i], psrc=ip_of(port),
                                                   pdst=ip_of(port)), now)


def settle(net, ports):
    for i, p in enumerate(ports):
        hello(p, i)
    for p in ports:
        tap(p)
    net.take_dirty()


# ------------------------------------------------------------- forwarding

def test_arp_broadcast_reaches_own_gateway_and_other_taps_never_other_gateways():
    net, (web, client) = make_net()
    settle(net, [web, client])
    rx_web_gw = web.gw.counters["rx_frames"]
    who_has = Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc=ip_of(client),
                                                  pdst=ip_of(web))
    send(client, who_has)
    assert tap(web) == [bytes(who_has)]                     # flooded to web's TAP as it was
    assert web.gw.counters["rx_frames"] == rx_web_gw        # never to web's gateway
    assert client.gw.counters["arp_ignored_not_ours"] == 1  # the sender's own gateway saw it
    assert tap(client) == []
    assert client.counters["switch_flooded"] == 2 and web.counters["switch_delivered"] == 2
    assert net.take_dirty() == [web] and net.take_dirty() == []


def test_arp_for_the_gateway_is_answered_by_the_senders_gateway_only():
    net, (web, client) = make_net()
    settle(net, [web, client])
    send(client, Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc=ip_of(client),
                                                     pdst="10.89.0.2"))
    got = tap(client)
    assert len(got) == 1 and ARP(got[0][14:]).op == 2 and Ether(got[0]).src == GW_MAC
    assert [ARP(f[14:]).op for f in tap(web)] == [1]       # web hears the request, no answer
    assert web.gw.counters["arp_reply_tx"] == 0


def test_unicast_goes_to_the_learned_port_only():
    net, (web, client, third) = make_net(3)
    settle(net, [web, client, third])
    seg = Ether(src=MACS[1], dst=MACS[0]) / IP(src=ip_of(client), dst=ip_of(web)) / TCP(
        sport=40000, dport=8080, flags="S")
    send(client, seg)
    assert tap(web) == [bytes(seg)] and tap(third) == [] and tap(client) == []
    assert client.counters["switch_unicast"] == 1
    reply = Ether(src=MACS[0], dst=MACS[1]) / IP(src=ip_of(web), dst=ip_of(client)) / TCP(
        sport=8080, dport=40000, flags="SA")
    send(web, reply)
    assert tap(client) == [bytes(reply)] and tap(third) == []


def test_unknown_unicast_is_flooded_to_taps_not_gateways():
    net, (web, client, third) = make_net(3)
    settle(net, [web, client, third])
    rx = [p.gw.counters["rx_frames"] for p in (web, third)]
    f = Ether(src=MACS[1], dst="02:00:00:00:00:99") / IP(src=ip_of(client), dst="10.89.0.77") / \
        UDP(sport=1, dport=2)
    send(client, f)
    assert tap(web) == [bytes(f)] and tap(third) == [bytes(f)] and tap(client) == []
    assert [p.gw.counters["rx_frames"] for p in (web, third)] == rx
    assert client.counters["switch_unknown_unicast_flooded"] == 1


def test_nat_traffic_to_own_gateway_takes_the_fast_path_and_still_works():
    net, (web, client) = make_net()
    settle(net, [web, client])
    rx_web = web.gw.counters["rx_frames"]
    before = {k: v for k, v in client.counters.items() if k.startswith("switch_")}
    ping = Ether(src=MACS[1], dst=GW_MAC) / IP(src=ip_of(client), dst="10.89.0.2") / ICMP(
        id=1, seq=1) / Raw(b"x" * 8)
    send(client, ping)
    got = tap(client)
    assert len(got) == 1 and Ether(got[0])[ICMP].type == 0
    assert Ether(got[0])[IP].dst == ip_of(client)
    assert tap(web) == [] and web.gw.counters["rx_frames"] == rx_web
    # The fast path decided it: no switch counter moved on the way.
    assert {k: v for k, v in client.counters.items() if k.startswith("switch_")} == before


def test_vlan_tagged_frames_are_checked_and_switched():
    net, (web, client) = make_net()
    settle(net, [web, client])
    f = Ether(src=MACS[1], dst=MACS[0]) / Dot1Q(vlan=5) / IP(src=ip_of(client), dst=ip_of(web)) \
        / UDP(sport=1, dport=2)
    send(client, f)
    assert tap(web) == [bytes(f)]
    bad = Ether(src=MACS[1], dst=MACS[0]) / Dot1Q(vlan=5) / IP(src=ip_of(web), dst=ip_of(web)) \
        / UDP(sport=1, dport=2)
    send(client, bad)
    assert tap(web) == [] and client.counters["switch_drop_ip_spoof"] == 1


def test_runt_frames_are_dropped_and_counted():
    net, (web, client) = make_net()
    settle(net, [web, client])
    client.receive(VNET_HDR_NONE, b"\x01\x02\x03", 0.0)
    client.receive(VNET_HDR_NONE, mac(0) + mac(1) + b"\x08\x00" + b"\x45" * 5, 0.0)
    assert client.counters["switch_drop_runt"] == 2 and tap(web) == []


def test_a_frame_to_its_own_mac_is_not_handed_back():
    net, (web, client) = make_net()
    settle(net, [web, client])
    send(client, Ether(src=MACS[1], dst=MACS[1]) / IP(src=ip_of(client), dst=ip_of(client)))
    assert client.counters["switch_drop_hairpin"] == 1 and tap(client) == [] and tap(web) == []


# ------------------------------------------------------------------- DHCP

def _discover(i):
    return Ether(src=MACS[i], dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(
        sport=68, dport=67) / BOOTP(chaddr=mac(i) + bytes(10), xid=7 + i, flags=0x8000) / DHCP(
        options=[("message-type", "discover"), "end"])


def test_dhcp_discover_is_answered_by_the_senders_own_server_with_its_address():
    net, (web, client) = make_net()
    send(client, _discover(1))
    offers = [Ether(f) for f in tap(client)]
    assert len(offers) == 1 and offers[0][BOOTP].yiaddr == ip_of(client) == "10.89.0.101"
    assert web.gw.counters["dhcp_discover"] == 0            # never another link's server
    assert [Ether(f)[BOOTP].op for f in tap(web)] == [1]    # web's TAP hears the discover
    send(web, _discover(0))
    offers = [Ether(f) for f in tap(web)]
    assert len(offers) == 1 and offers[0][BOOTP].yiaddr == "10.89.0.100"
    opts = dict(o for o in offers[0][DHCP].options if isinstance(o, tuple))
    assert opts["router"] == "10.89.0.2" and opts["name_server"] == "10.89.0.3"


def test_dhcp_pool_of_a_network_link_is_its_one_address():
    net, (web,) = make_net(1)
    cfg = DhcpConfig.from_net(web.gw.config)
    assert cfg.pool_size == 1 and cfg.guest_ip == web.ip4 and cfg.dns_search == ("alpha",)
    assert web.gw.dhcp.pool == [int.from_bytes(web.ip4, "big")]


# ------------------------------------------------------------- anti-spoof

def test_a_port_cannot_use_another_ports_mac():
    net, (web, client) = make_net()
    settle(net, [web, client])
    f = Ether(src=MACS[0], dst=BCAST) / ARP(op=1, hwsrc=MACS[0], psrc=ip_of(client),
                                            pdst=ip_of(web))
    send(client, f)
    assert client.counters["switch_drop_mac_spoof"] == 1 and tap(web) == []
    assert net.macs[mac(0)][0] is web
    # And web's traffic still reaches web, not the impostor.
    send(client, Ether(src=MACS[1], dst=MACS[0]) / IP(src=ip_of(client), dst=ip_of(web)))
    assert len(tap(web)) == 1 and tap(client) == []


@pytest.mark.parametrize("bad_src", [BCAST, "01:00:5e:00:00:01", "00:00:00:00:00:00", GW_MAC])
def test_invalid_source_macs_are_refused(bad_src):
    net, (web, client) = make_net()
    send(client, Ether(src=bad_src, dst=BCAST) / ARP(op=1, hwsrc=bad_src, psrc=ip_of(client),
                                                     pdst=ip_of(web)))
    assert client.counters["switch_drop_mac_spoof"] == 1 and tap(web) == []
    assert client.mac is None


def test_a_port_cannot_use_another_ports_ip_or_the_gateways():
    net, (web, client) = make_net()
    settle(net, [web, client])
    for src in (ip_of(web), "10.89.0.2", "10.89.0.3", "10.89.0.200", "192.0.2.1"):
        send(client, Ether(src=MACS[1], dst=MACS[0]) / IP(src=src, dst=ip_of(web)) / UDP())
    assert client.counters["switch_drop_ip_spoof"] == 5 and tap(web) == []
    # Toward its own gateway too: the link's traffic carries its own address.
    send(client, Ether(src=MACS[1], dst=GW_MAC) / IP(src=ip_of(web), dst="10.89.0.2") / ICMP())
    assert client.counters["switch_drop_ip_spoof"] == 6 and tap(client) == []


def test_arp_cannot_claim_another_ports_address_or_mac_or_the_gateway():
    net, (web, client) = make_net()
    settle(net, [web, client])
    for psrc, hwsrc in ((ip_of(web), MACS[1]), ("10.89.0.2", MACS[1]), (ip_of(client), MACS[0])):
        send(client, Ether(src=MACS[1], dst=BCAST) / ARP(op=2, hwsrc=hwsrc, psrc=psrc,
                                                         pdst=ip_of(web)))
    assert client.counters["switch_drop_ip_spoof"] == 3 and tap(web) == []
    # An ARP probe (sender 0.0.0.0) is fine.
    send(client, Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc="0.0.0.0",
                                                     pdst=ip_of(client)))
    assert len(tap(web)) == 1


def test_extra_macs_are_bounded_per_port_and_age():
    net, (web, client) = make_net()
    settle(net, [web, client])
    extra = [bytes([2, 0, 0, 1, 0, i]) for i in range(MAX_MACS_PER_PORT + 2)]
    for i, m in enumerate(extra):
        send(client, Ether(src=m.hex(":"), dst=BCAST) / ARP(op=1, hwsrc=m.hex(":"),
                                                            psrc=ip_of(client), pdst="10.89.0.9"),
             now=float(i))
    assert len(client.macs) == MAX_MACS_PER_PORT
    assert client.counters["switch_drop_mac_limit"] == 3
    # The extra MACs age; the pinned one does not, and web cannot take it.
    late = 10 + MAC_AGE
    m = extra[0].hex(":")
    send(web, Ether(src=m, dst=BCAST) / ARP(op=1, hwsrc=m, psrc=ip_of(web), pdst="10.89.0.9"),
         now=late)
    assert net.macs[extra[0]][0] is web and extra[0] not in client.macs
    assert web.counters["switch_mac_aged"] == 1
    send(web, Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc=ip_of(web),
                                                  pdst="10.89.0.9"), now=late + 1e6)
    assert web.counters["switch_drop_mac_spoof"] == 1 and net.macs[mac(1)][0] is client
    # A full port sheds its aged entries before it refuses a new MAC.
    m2 = "02:00:00:02:00:00"
    send(client, Ether(src=m2, dst=BCAST) / ARP(op=1, hwsrc=m2, psrc=ip_of(client),
                                                pdst="10.89.0.9"), now=late)
    assert bytes.fromhex("020000020000") in client.macs and len(client.macs) <= MAX_MACS_PER_PORT


def test_unicast_to_an_aged_mac_is_flooded():
    net, (web, client, third) = make_net(3)
    settle(net, [web, client, third])
    m = "02:00:00:03:00:01"
    send(third, Ether(src=m, dst=BCAST) / ARP(op=1, hwsrc=m, psrc=ip_of(third), pdst="10.89.0.9"),
         now=1.0)
    tap(web), tap(client)
    f = Ether(src=MACS[1], dst=m) / IP(src=ip_of(client), dst=ip_of(third)) / UDP()
    send(client, f, now=2.0)
    assert tap(third) == [bytes(f)] and tap(web) == []
    send(client, f, now=2.0 + MAC_AGE)
    assert tap(third) == [bytes(f)] and tap(web) == [bytes(f)]
    assert client.counters["switch_mac_aged"] == 1
    assert client.counters["switch_unknown_unicast_flooded"] == 1


def test_ipv6_sources_are_learned_per_port_and_not_claimable():
    net, (web, client) = make_net(ipv6=True)
    settle(net, [web, client])
    web6 = slaac(net.prefix6, mac(0))
    assert net.ip6[web6][0] is web and web.ip6() == web6
    a6 = str(ipaddress.IPv6Address(web6))
    # client using web's address as a source, or advertising it, is dropped.
    send(client, Ether(src=MACS[1], dst=MACS[0]) / IPv6(src=a6, dst=a6) / UDP())
    na = Ether(src=MACS[1], dst="33:33:00:00:00:01") / IPv6(
        src=str(ipaddress.IPv6Address(slaac(net.prefix6, mac(1)))), dst="ff02::1", hlim=255) / \
        ICMPv6ND_NA(tgt=a6, R=0, S=0, O=1)
    send(client, na)
    for gw6 in ("fd89:0:0:1::2", "fd89:0:0:1::3", "fe80::2", "2001:db8::1"):
        send(client, Ether(src=MACS[1], dst=MACS[0]) / IPv6(src=gw6, dst=a6) / UDP())
    assert client.counters["switch_drop_ip_spoof"] == 6 and tap(web) == []
    # Its own link-local and a privacy address of its own are fine (learned, bounded).
    own = [f"fd89:0:0:1:aaaa::{i:x}" for i in range(MAX_IP6_PER_PORT + 1)]
    for a in own:
        send(client, Ether(src=MACS[1], dst=MACS[0]) / IPv6(src=a, dst=a6) / UDP())
    assert client.counters["switch_drop_ip6_limit"] >= 1
    assert len(client.ip6s) == MAX_IP6_PER_PORT
    # Neighbour solicitations from a tentative address (::) are flooded.
    ns = Ether(src=MACS[1], dst="33:33:ff:00:00:0a") / IPv6(src="::", dst="ff02::1:ff00:a") / \
        ICMPv6ND_NS(tgt=a6)
    tap(web)
    send(client, ns)
    assert tap(web) == [bytes(ns)]


# --------------------------------------------------------------- lifecycle

def test_allocation_order_exhaustion_and_release():
    net = Network("small", "10.89.7.0/25")
    got = []
    while True:
        try:
            got.append(net.allocate()[3])
        except ValueError as e:
            assert "no free address" in str(e)
            break
    assert got[:2] == [100, 101] and got[-1] == 99 and len(got) == len(set(got)) == 123
    assert not {0, 1, 2, 3, 127} & set(got)
    net.release(bytes([10, 89, 7, 42]))
    assert net.allocate() == bytes([10, 89, 7, 42])


def test_add_port_refuses_what_does_not_fit_and_changes_nothing():
    net, (web,) = make_net(1)
    ip = net.allocate()
    with pytest.raises(ValueError, match="taken"):
        net.add_port(Gateway(NetConfig(**net.config_fields(ip))), name="WEB")
    with pytest.raises(ValueError, match="already a link's"):
        net.add_port(Gateway(NetConfig(**net.config_fields(web.ip4))))
    with pytest.raises(ValueError, match="not network"):
        net.add_port(Gateway(NetConfig(cidr="10.89.9.0/24")))
    with pytest.raises(ValueError, match="IPv6"):
        net.add_port(Gateway(NetConfig(enable_ipv6=True, **net.config_fields(ip))))
    with pytest.raises(ValueError, match="one DNS label"):
        net.add_port(Gateway(NetConfig(**net.config_fields(ip))), name="bad_name")
    assert len(net.ports) == 1 and list(net.names) == ["web"] and ip in net.reserved4
    p = net.add_port(Gateway(NetConfig(**net.config_fields(ip))), name="Second")
    assert p.name == "second" and ip not in net.reserved4


def test_a_given_mac_is_pinned_at_once_and_unique():
    net = Network("m", "10.89.3.0/24")
    ip = net.allocate()
    a = net.add_port(Gateway(NetConfig(guest_mac=mac(0), **net.config_fields(ip))))
    assert a.mac == mac(0) and net.macs[mac(0)][2]
    with pytest.raises(ValueError, match="MAC"):
        net.add_port(Gateway(NetConfig(guest_mac=mac(0), **net.config_fields(net.allocate()))))


def test_removing_a_port_frees_it_and_leaves_the_others_running():
    net, (web, client, third) = make_net(3)
    settle(net, [web, client, third])
    f = Ether(src=MACS[0], dst=MACS[2]) / IP(src=ip_of(web), dst=ip_of(third)) / UDP()
    send(web, f)                                   # third's TAP gets a frame ...
    net.remove_port(third)                         # ... and third is gone before the flush
    assert net.take_dirty() == []
    assert third not in net.ports and "third" not in net.names and third.ip4 not in net.ip4
    assert mac(2) not in net.macs and third.gw.local_names.network is None
    # web and client keep talking; frames for the dead MAC are flooded (to
    # the live ports only), its name is gone, its address can be reused.
    g = Ether(src=MACS[0], dst=MACS[1]) / IP(src=ip_of(web), dst=ip_of(client)) / UDP()
    send(web, g)
    assert tap(client) == [bytes(g)]
    send(web, f)
    assert tap(client) == [bytes(f)]
    assert net.allocate() == third.ip4
    net.remove_port(third)                         # twice: nothing happens


def test_new_link_may_take_a_removed_links_mac_and_name():
    net, (web, client) = make_net()
    settle(net, [web, client])
    net.remove_port(web)
    ip = net.allocate()
    again = net.add_port(Gateway(NetConfig(**net.config_fields(ip))), name="web")
    hello(again, 0)
    assert again.mac == mac(0) and net.names["web"] is again


# --------------------------------------------------------------------- DNS

def _ask(port, name, qtype="A", now=0.0, i=1):
    q = Ether(src=MACS[i], dst=GW_MAC) / IP(src=ip_of(port), dst="10.89.0.3") / UDP(
        sport=5353, dport=53) / DNS(id=9, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    send(port, q, now)
    got = [Ether(f) for f in tap(port)]
    return got[0][DNS] if got else None


def test_dns_answers_link_names_on_the_network():
    net, (web, client) = make_net(ipv6=True)
    settle(net, [web, client])
    for name in ("web", "WEB", "web.alpha", "Web.Alpha."):
        r = _ask(client, name)
        assert r.rcode == 0 and r.aa == 1 and r.ancount == 1 and r.an[0].rdata == ip_of(web)
        assert r.an[0].ttl == sw.NAME_TTL
    r = _ask(client, "web", "AAAA")
    assert r.an[0].rdata == str(ipaddress.IPv6Address(slaac(net.prefix6, mac(0))))
    r = _ask(client, "client")                               # its own name too
    assert r.an[0].rdata == ip_of(client)
    r = _ask(client, "nobody.alpha")
    assert r.rcode == 3 and r.aa == 1 and r.ancount == 0     # NXDOMAIN inside the zone
    r = _ask(client, "alpha", "A")
    assert r.rcode == 0 and r.ancount == 0                   # the zone's apex: NODATA
    r = _ask(client, "web", "MX")
    assert r.rcode == 0 and r.ancount == 0
    rev = ".".join(reversed(ip_of(web).split("."))) + ".in-addr.arpa"
    r = _ask(client, rev, "PTR")
    assert r.an[0].rdata == b"web.alpha."
    r = _ask(client, "250.0.89.10.in-addr.arpa", "PTR")
    assert r.rcode == 3
    assert client.gw.counters["dns_local_answer"] == 11
    assert client.gw.counters["dns_query_forwarded"] == 0


def test_dns_aaaa_of_a_link_without_ipv6_is_nodata():
    net, (web, client) = make_net()
    settle(net, [web, client])
    r = _ask(client, "web", "AAAA")
    assert r.rcode == 0 and r.ancount == 0


def test_other_names_and_other_networks_links_go_upstream():
    net, (web, client) = make_net()
    other, (elsewhere,) = make_net(1, names=("lonely",), name="beta", cidr="10.89.1.0/24")
    settle(net, [web, client])
    for name in ("lonely", "lonely.beta", "example.com", "8.8.8.8.in-addr.arpa"):
        assert _ask(client, name) is None
    evs = [e for e in client.gw.events_out if isinstance(e, DnsQuery)]
    assert len(evs) == 4 and client.gw.counters["dns_query_forwarded"] == 4
    # And the other way round: beta's link does not see alpha's names.
    q = Ether(src=MACS[0], dst=GW_MAC) / IP(src=ip_of(elsewhere), dst="10.89.1.3") / UDP(
        sport=5353, dport=53) / DNS(id=9, rd=1, qd=DNSQR(qname="web"))
    send(elsewhere, q)
    assert tap(elsewhere) == [] and elsewhere.gw.counters["dns_query_forwarded"] == 1


def test_host_names_still_answered_and_removed_names_vanish():
    net, (web, client) = make_net()
    settle(net, [web, client])
    r = _ask(client, "host.containers.internal")
    assert r.an[0].rdata == "10.89.0.2"
    net.remove_port(web)
    assert _ask(client, "web.alpha").rcode == 3
    assert _ask(client, "web") is None                        # forwarded now


def test_resolve_is_total_over_names():
    net, _ = make_net(1)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", max_size=80),
           st.sampled_from([1, 12, 28, 15, 255]))
    def run(name, qtype):
        r = net.resolve(name, qtype)
        assert r is None or (r[0] in (0, 3) and isinstance(r[1], list))
    run()


# -------------------------------------------------------------- offloads

def test_partial_checksum_is_finished_for_a_tap_without_vnet_header():
    net, (web, client) = make_net(vnet=False)
    settle(net, [web, client])
    # A TCP segment whose checksum field holds only the pseudo-header sum,
    # as a container's kernel hands it to an offloading TAP.
    full = Ether(src=MACS[1], dst=MACS[0]) / IP(src=ip_of(client), dst=ip_of(web)) / TCP(
        sport=1, dport=2, flags="PA") / Raw(b"hello world")
    raw = bytearray(bytes(full))
    from usernet.wire.checksum import pseudo_sum_v4
    tcp_len = len(raw) - 34
    ps = pseudo_sum_v4(client.ip4, web.ip4, 6, tcp_len)
    raw[34 + 16:34 + 18] = ps.to_bytes(2, "big")
    hdr = VNET_HDR.pack(1, 0, 0, 0, 34, 16)
    client.receive(hdr, bytes(raw), 0.0, True)
    (hdr_out, out), = web.tap_out
    assert hdr_out == VNET_HDR_NONE and bytes(out) == bytes(full)
    web.tap_out.clear()
    gso = VNET_HDR.pack(1, 1, 54, 1448, 34, 16)
    client.receive(gso, bytes(raw), 0.0, True)
    assert web.tap_out == [] and client.counters["switch_drop_gso_to_plain"] == 1
    client.receive(VNET_HDR.pack(1, 0, 0, 0, 2000, 16), bytes(raw), 0.0, True)
    assert client.counters["switch_drop_bad_vnet_hdr"] == 1


def test_offloaded_frames_pass_between_offloading_taps_untouched():
    net, (web, client) = make_net()
    settle(net, [web, client])
    gso = VNET_HDR.pack(1, 1, 66, 1448, 34, 16)
    f = bytes(Ether(src=MACS[1], dst=MACS[0]) / IP(src=ip_of(client), dst=ip_of(web)) / TCP() /
              Raw(b"z" * 3000))
    client.receive(gso, f, 0.0, True)
    assert web.tap_out == [(gso, f)]


# --------------------------------------------------------------- properties

_FRAME_PARTS = st.tuples(
    st.integers(0, 2),                                   # sender
    st.sampled_from(MACS[:3] + [BCAST, GW_MAC, "02:00:00:00:00:99", "33:33:00:00:00:01"]),
    st.sampled_from(MACS[:3] + ["02:00:00:00:07:07", GW_MAC, BCAST]),
    st.sampled_from(["10.89.0.100", "10.89.0.101", "10.89.0.102", "10.89.0.2", "0.0.0.0",
                     "1.2.3.4"]),
    st.sampled_from(["ip", "arp", "ip6", "raw"]),
    st.floats(0, 1000),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FRAME_PARTS, max_size=40))
def test_switch_invariants_hold_under_any_traffic(frames):
    """Whatever the containers send: no frame reaches another port's gateway
    or its own TAP from the switch, a frame reaches another TAP only with a
    source MAC the sender owns and an IPv4 source that is its own or 0.0.0.0,
    and the tables stay consistent and bounded."""
    net, ports = make_net(3)
    now = 0.0
    for who, dst, src, ipsrc, kind, dt in frames:
        now += dt
        port = ports[who]
        if kind == "ip":
            pkt = Ether(src=src, dst=dst) / IP(src=ipsrc, dst="10.89.0.100") / UDP()
        elif kind == "arp":
            pkt = Ether(src=src, dst=dst) / ARP(op=1, hwsrc=src, psrc=ipsrc, pdst="10.89.0.100")
        elif kind == "ip6":
            pkt = Ether(src=src, dst=dst) / IPv6(src="fe80::1", dst="ff02::1") / UDP()
        else:
            pkt = Ether(src=src, dst=dst, type=0x88B5) / Raw(b"x" * 30)
        before = {id(p): len(p.tap_out) for p in ports}
        rx_before = {id(p): p.gw.counters["rx_frames"] for p in ports}
        port.receive(VNET_HDR_NONE, bytes(pkt), now, False)
        for p in ports:
            new = p.tap_out[before[id(p)]:]
            if p is port:
                # Only its own gateway's answers (from the gateway MAC).
                assert all(bytes(f[6:12]) == bytes.fromhex("525500000202") for _h, f in new)
                continue
            assert p.gw.counters["rx_frames"] == rx_before[id(p)]
            for _h, f in new:
                assert bytes(f[6:12]) in port.macs
                if kind == "ip":
                    assert ipsrc in (ip_of(port), "0.0.0.0")
        for p in ports:
            p.tap_out.clear()
    seen = set()
    for p in ports:
        assert len(p.macs) <= MAX_MACS_PER_PORT and len(p.ip6s) <= MAX_IP6_PER_PORT
        for m in p.macs:
            assert net.macs[m][0] is p and m not in seen
            seen.add(m)
    assert seen == set(net.macs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 1), st.booleans())
def test_any_bytes_into_a_port_never_raise(data, who, csum_ok):
    net, ports = make_net(2)
    settle(net, ports)
    ports[who].receive(VNET_HDR_NONE, data, 0.0, csum_ok)
    ports[who].receive(VNET_HDR_NONE, mac(1 - who) + mac(who) + data, 0.0, csum_ok)
    ports[who].receive(VNET_HDR_NONE, bytes.fromhex("525500000202") + mac(who) + data, 0.0,
                       csum_ok)


# ------------------------------------------------------------------- config

def test_check_name():
    assert check_name("Web-1") == "web-1"
    for bad in ("", "-a", "a-", "a.b", "a_b", "x" * 64, "localhost", "ARPA"):
        with pytest.raises(ValueError):
            check_name(bad)


def test_netconfig_guest_addr():
    cfg = NetConfig(cidr="10.89.0.0/24", guest_addr="10.89.0.7", dhcp_pool_size=1)
    assert cfg.guest_ip == bytes([10, 89, 0, 7])
    for bad in ("10.89.1.7", "10.89.0.2", "10.89.0.3", "10.89.0.0", "10.89.0.255", "nope"):
        with pytest.raises(ValueError):
            NetConfig(cidr="10.89.0.0/24", guest_addr=bad)
    with pytest.raises(ValueError, match="DHCP pool"):
        NetConfig(dhcp_pool_size=0)
    assert NetConfig().guest_ip == bytes([10, 0, 2, 100])


def test_network_refuses_bad_prefixes():
    with pytest.raises(ValueError):
        Network("x", "10.89.0.0/24", "fd89::/48")
    with pytest.raises(ValueError):
        Network("x", "10.89.0.0/26")
    info = Network("x", "10.89.0.0/24", PREFIX6).info()
    assert info == {"name": "x", "subnet": "10.89.0.0/24", "ipv6_prefix": "fd89:0:0:1::/64",
                    "links": 0, "macs": 0, "names": []}


def test_a_removed_port_reaches_only_its_own_gateway():
    net, (web, client) = make_net()
    settle(net, [web, client])
    net.remove_port(client)
    send(client, Ether(src=MACS[1], dst=MACS[0]) / IP(src=ip_of(client), dst=ip_of(web)))
    send(client, Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc=ip_of(client),
                                                     pdst=ip_of(web)))
    assert tap(web) == [] and client.counters["switch_drop_port_gone"] == 2
    send(client, Ether(src=MACS[1], dst=GW_MAC) / IP(src=ip_of(client), dst="10.89.0.2") / ICMP())
    assert len(tap(client)) == 1                           # its draining flows still work


def test_flooding_is_rate_limited_per_port_and_recovers():
    net, (web, client, third) = make_net(3)
    settle(net, [web, client, third])
    arp = Ether(src=MACS[1], dst=BCAST) / ARP(op=1, hwsrc=MACS[1], psrc=ip_of(client),
                                              pdst="10.89.0.9")
    burst = int(sw.FLOOD_BURST)
    for _ in range(burst + 50):
        send(client, arp, now=10.0)
    assert len(tap(web)) == burst and len(tap(third)) == burst
    assert client.counters["switch_drop_flood_limit"] == 50
    # The sender's own gateway still saw every one of them.
    assert client.gw.counters["arp_ignored_not_ours"] == burst + 50
    # Another port's budget is its own; and the bucket refills with time.
    send(web, Ether(src=MACS[0], dst=BCAST) / ARP(op=1, hwsrc=MACS[0], psrc=ip_of(web),
                                                  pdst="10.89.0.9"), now=10.0)
    assert len(tap(client)) == 1
    send(client, arp, now=10.0 + 2 / sw.FLOOD_RATE)
    assert len(tap(web)) == 1
    # Unknown unicast counts against the same bucket.
    for _ in range(burst + 5):
        send(client, Ether(src=MACS[1], dst="02:00:00:00:00:99") / IP(
            src=ip_of(client), dst="10.89.0.9") / UDP(), now=20.0)
    assert client.counters["switch_drop_flood_limit"] == 55


def test_ipv6_reverse_names():
    net, (web, client) = make_net(ipv6=True)
    settle(net, [web, client])
    rev = ipaddress.IPv6Address(slaac(net.prefix6, mac(0))).reverse_pointer
    r = _ask(client, rev, "PTR")
    assert r.an[0].rdata == b"web.alpha."
    other = ipaddress.IPv6Address(net.prefix6 + bytes(7) + b"\x55").reverse_pointer
    assert _ask(client, other, "PTR").rcode == 3
    assert _ask(client, ipaddress.IPv6Address("2001:db8::1").reverse_pointer, "PTR") is None
    assert net.resolve("1.2.ip6.arpa", 12) is None
