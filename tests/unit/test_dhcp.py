"""DHCP: the wire format (usernet.wire.dhcp) and the server (usernet.stack.dhcp).

Requests are built with scapy, replies are checked with scapy and dpkt, and
the server is driven with an explicit ``now`` like a packet trace.
"""

from usernet.stack.counters import Counters
from usernet.stack.config import NetConfig

import dpkt
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from usernet.wire import ParseError
from usernet.wire import dhcp as wd
from usernet.wire.dhcp import build_dhcp, encode_domain_search, parse_dhcp
from usernet.stack.dhcp import (
    DECLINE_HOLD, DEFAULT_LEASE_TIME, BROADCAST_IP, BROADCAST_MAC, DhcpConfig, DhcpServer,
    reply_destination,
)

GW = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
GUEST = bytes([10, 0, 2, 100])
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
MAC3 = bytes.fromhex("020000000003")


def ip(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


def req(mac, mtype, xid=0x1234, flags=0, ciaddr="0.0.0.0", extra=()) -> bytes:
    """A client message built by scapy (chaddr padded to 16 bytes as on the wire)."""
    return bytes(BOOTP(op=1, chaddr=mac + bytes(10), xid=xid, flags=flags, ciaddr=ciaddr)
                 / DHCP(options=[("message-type", mtype), *extra, "end"]))


def server(pool_size=16, lease_time=DEFAULT_LEASE_TIME, **kw):
    counters = Counters()
    cfg = DhcpConfig(GW, DNS, GUEST, 24, 1500, pool_size, lease_time, **kw)
    return DhcpServer(cfg, counters), counters


def dora(srv, mac, now=0.0, xid=1):
    """DISCOVER, OFFER, REQUEST, ACK; returns the ACK parsed by our parser."""
    offer = srv.handle_payload(req(mac, "discover", xid=xid), now)
    assert offer is not None
    yi = parse_dhcp(offer.payload).yiaddr
    ack = srv.handle_payload(req(mac, "request", xid=xid, extra=[
        ("server_id", "10.0.2.2"), ("requested_addr", ".".join(map(str, yi)))]), now)
    assert ack is not None
    m = parse_dhcp(ack.payload)
    assert m.msg_type == wd.DHCPACK
    return m


# --- wire: golden bytes ------------------------------------------------------

def test_parse_golden_discover():
    raw = (bytes([1, 1, 6, 0]) + bytes.fromhex("deadbeef") + b"\x00\x05" + b"\x80\x00"
           + bytes(16) + MAC1 + bytes(10) + bytes(192)
           + b"\x63\x82\x53\x63"
           + b"\x35\x01\x01"                    # 53: DISCOVER
           + b"\x00"                            # a pad byte
           + b"\x32\x04\x0a\x00\x02\x64"        # 50: 10.0.2.100
           + b"\x37\x03\x01\x03\x06"            # 55: 1, 3, 6
           + b"\x0c\x03box"                     # 12: "box"
           + b"\x3d\x07\x01" + MAC1             # 61: type 1 + MAC
           + b"\xff")
    m = parse_dhcp(raw)
    assert (m.op, m.xid, m.secs, m.flags) == (1, 0xDEADBEEF, 5, 0x8000)
    assert m.broadcast
    assert m.chaddr == MAC1
    assert m.msg_type == wd.DHCPDISCOVER
    assert m.requested_ip == GUEST
    assert m.server_id is None
    assert m.param_request == b"\x01\x03\x06"
    assert m.hostname == b"box"
    assert m.client_id == b"\x01" + MAC1


def test_build_golden_reply():
    out = build_dhcp(0x01020304, MAC1, [(53, b"\x02"), (54, GW)], yiaddr=GUEST, flags=0x8000)
    assert len(out) == wd.BOOTP_MIN_LEN                      # padded (RFC 1542)
    assert out[:4] == bytes([2, 1, 6, 0])
    assert out[4:8] == b"\x01\x02\x03\x04"
    assert out[10:12] == b"\x80\x00"
    assert out[16:20] == GUEST
    assert out[28:34] == MAC1 and out[34:44] == bytes(10)
    assert out[236:240] == wd.MAGIC_COOKIE
    assert out[240:250] == b"\x35\x01\x02\x36\x04\x0a\x00\x02\x02\xff"
    assert set(out[250:]) == {0}


def test_long_option_split_and_joined():
    """RFC 3396: a value over 255 bytes goes out as several options, read back as one."""
    value = bytes(range(256)) * 2
    out = build_dhcp(1, MAC1, [(53, b"\x05"), (119, value)])
    assert parse_dhcp(out).options[119] == value


def test_option_overload_reads_file_and_sname():
    raw = bytearray(build_dhcp(1, MAC1, [(53, b"\x01"), (52, b"\x03")], op=1))
    raw[wd.FILE_OFFSET:wd.FILE_OFFSET + 7] = b"\x0c\x03box\xff\x00"
    raw[wd.SNAME_OFFSET:wd.SNAME_OFFSET + 7] = b"\x32\x04" + GUEST + b"\xff"
    m = parse_dhcp(bytes(raw))
    assert m.hostname == b"box" and m.requested_ip == GUEST


def test_domain_search_encoding():
    assert encode_domain_search(["a.example", "b."]) == b"\x01a\x07example\x00\x01b\x00"


@pytest.mark.parametrize("raw, reason", [
    (b"", "dhcp_truncated"),
    (bytes(239), "dhcp_truncated"),
    (bytes([3, 1, 6, 0]) + bytes(236), "dhcp_bad_op"),
    (bytes([1, 6, 6, 0]) + bytes(236), "dhcp_unsupported_htype"),
    (bytes([1, 1, 6, 0]) + bytes(236), "dhcp_no_cookie"),
    (bytes([1, 1, 6, 0]) + bytes(232) + wd.MAGIC_COOKIE + b"\x35", "dhcp_bad_option"),
    (bytes([1, 1, 6, 0]) + bytes(232) + wd.MAGIC_COOKIE + b"\x35\x05\x01", "dhcp_bad_option"),
    (bytes([1, 1, 6, 0]) + bytes(232) + wd.MAGIC_COOKIE + b"\x35\x02\x01\x01", "dhcp_bad_option"),
    (bytes([1, 1, 6, 0]) + bytes(232) + wd.MAGIC_COOKIE + b"\x32\x03\x01\x01\x01", "dhcp_bad_option"),
])
def test_bad_messages(raw, reason):
    with pytest.raises(ParseError) as e:
        parse_dhcp(raw)
    assert e.value.reason == reason


# --- wire: scapy-built requests -----------------------------------------------

def test_parse_scapy_request():
    raw = req(MAC2, "request", xid=77, extra=[
        ("requested_addr", "10.0.2.101"), ("server_id", "10.0.2.2"), ("hostname", b"web"),
        ("client_id", b"\x01" + MAC2), ("param_req_list", [1, 3, 6, 15, 26, 119])])
    m = parse_dhcp(raw)
    assert m.msg_type == wd.DHCPREQUEST and m.xid == 77 and m.chaddr == MAC2
    assert m.requested_ip == ip("10.0.2.101") and m.server_id == GW
    assert m.hostname == b"web" and m.client_id == b"\x01" + MAC2
    assert list(m.param_request) == [1, 3, 6, 15, 26, 119]


# --- the server: replies checked by scapy and dpkt ------------------------------

def test_offer_fields_scapy_and_dpkt():
    srv, c = server(dns_search=("example.test",))
    r = srv.handle_payload(req(MAC1, "discover", xid=99, flags=0x8000), 0.0)
    assert (r.dst_ip, r.dst_mac) == (BROADCAST_IP, BROADCAST_MAC)

    s = BOOTP(r.payload)
    assert s.op == 2 and s.xid == 99 and s.yiaddr == "10.0.2.100" and s.flags == 0x8000
    assert s.chaddr[:6] == MAC1
    opts = {o[0]: o[1:] for o in s[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == (2,)
    assert opts["server_id"] == ("10.0.2.2",)
    assert opts["lease_time"] == (86400,)
    assert opts["renewal_time"] == (43200,)
    assert opts["rebinding_time"] == (75600,)
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["router"] == ("10.0.2.2",)
    assert opts["name_server"] == ("10.0.2.3",)
    assert opts["broadcast_address"] == ("10.0.2.255",)
    assert opts["interface-mtu"] == (1500,)
    assert opts["domain"] == (b"example.test",)

    d = dpkt.dhcp.DHCP(r.payload)
    assert d.op == dpkt.dhcp.DHCP_OP_REPLY and d.yiaddr == 0x0A000264 and d.xid == 99
    dopts = dict(d.opts)
    assert dopts[dpkt.dhcp.DHCP_OPT_MSGTYPE] == bytes([dpkt.dhcp.DHCPOFFER])
    assert dopts[dpkt.dhcp.DHCP_OPT_SERVER_ID] == GW
    assert dopts[dpkt.dhcp.DHCP_OPT_NETMASK] == ip("255.255.255.0")
    assert dopts[dpkt.dhcp.DHCP_OPT_ROUTER] == GW
    assert dopts[dpkt.dhcp.DHCP_OPT_DNS_SVRS] == DNS
    assert dopts[dpkt.dhcp.DHCP_OPT_LEASE_SEC] == (86400).to_bytes(4, "big")
    assert dopts[26] == (1500).to_bytes(2, "big")
    assert dopts[119] == b"\x07example\x04test\x00"
    assert c["dhcp_discover"] == 1 and c["dhcp_offer"] == 1


def test_dora_sequence():
    srv, c = server()
    offer = srv.handle_payload(req(MAC1, "discover", xid=5), 10.0)
    o = parse_dhcp(offer.payload)
    assert o.msg_type == wd.DHCPOFFER and o.yiaddr == GUEST and o.xid == 5
    # No BROADCAST flag: unicast to the offered address at the client's MAC.
    assert (offer.dst_ip, offer.dst_mac) == (GUEST, MAC1)

    ack = srv.handle_payload(req(MAC1, "request", xid=5, extra=[
        ("server_id", "10.0.2.2"), ("requested_addr", "10.0.2.100")]), 10.5)
    a = BOOTP(ack.payload)
    assert a.yiaddr == "10.0.2.100"
    assert ("message-type", 5) in a[DHCP].options
    assert (ack.dst_ip, ack.dst_mac) == (GUEST, MAC1)
    assert [(lz.ip, lz.mac, lz.state) for lz in srv.leases(11.0)] == [(GUEST, MAC1, "bound")]
    assert srv.leases(11.0)[0].expires == 10.5 + DEFAULT_LEASE_TIME
    assert c["dhcp_ack"] == 1 and c["dhcp_nak"] == 0

    # RENEWING at T1: unicast from the client with ciaddr, answered unicast.
    renew = srv.handle_payload(req(MAC1, "request", xid=6, ciaddr="10.0.2.100"), 43210.0)
    r = parse_dhcp(renew.payload)
    assert r.msg_type == wd.DHCPACK and r.yiaddr == GUEST and r.ciaddr == GUEST
    assert (renew.dst_ip, renew.dst_mac) == (GUEST, MAC1)
    assert srv.leases(43211.0)[0].expires == 43210.0 + DEFAULT_LEASE_TIME


def test_same_mac_same_address_and_pool_order():
    srv, _ = server()
    assert dora(srv, MAC1).yiaddr == GUEST
    assert dora(srv, MAC2).yiaddr == ip("10.0.2.101")
    # MAC1 again (a restarted client, expired lease, release): still .100.
    assert dora(srv, MAC1, now=1.0).yiaddr == GUEST
    assert dora(srv, MAC1, now=10 * DEFAULT_LEASE_TIME).yiaddr == GUEST
    srv.handle_payload(req(MAC1, "release", ciaddr="10.0.2.100",
                           extra=[("server_id", "10.0.2.2")]), 20 * DEFAULT_LEASE_TIME)
    assert srv.leases(20 * DEFAULT_LEASE_TIME) == []
    assert dora(srv, MAC1, now=20 * DEFAULT_LEASE_TIME + 1).yiaddr == GUEST
    assert srv.address_of(MAC1) == GUEST


def test_pool_exhausted_then_expired_lease_reclaimed():
    srv, c = server(pool_size=2, lease_time=100)
    assert dora(srv, MAC1, now=0.0).yiaddr == GUEST
    assert dora(srv, MAC2, now=10.0).yiaddr == ip("10.0.2.101")
    assert srv.handle_payload(req(MAC3, "discover"), 20.0) is None
    assert c["dhcp_pool_exhausted"] == 1
    # MAC1's lease runs out at 100, MAC2's at 110: the longest-expired goes first.
    offer = srv.handle_payload(req(MAC3, "discover"), 200.0)
    assert parse_dhcp(offer.payload).yiaddr == GUEST
    assert srv.address_of(MAC1) is None and srv.address_of(MAC2) == ip("10.0.2.101")


def test_lease_expiry_lets_another_client_request_it():
    srv, c = server(pool_size=1, lease_time=100)
    dora(srv, MAC1, now=0.0)
    init_reboot = req(MAC2, "request", extra=[("requested_addr", "10.0.2.100")])
    nak = srv.handle_payload(init_reboot, 50.0)
    assert parse_dhcp(nak.payload).msg_type == wd.DHCPNAK
    ack = srv.handle_payload(init_reboot, 100.0)              # expired exactly at 100
    assert parse_dhcp(ack.payload).msg_type == wd.DHCPACK
    assert [lz.mac for lz in srv.leases(100.0)] == [MAC2]
    assert c["dhcp_nak"] == 1


@pytest.mark.parametrize("extra, ciaddr", [
    ([("server_id", "10.0.2.2"), ("requested_addr", "10.0.2.50")], "0.0.0.0"),   # not in the pool
    ([("requested_addr", "192.168.1.7")], "0.0.0.0"),                           # wrong network
    ([], "10.0.2.200"),                                                         # renewing a stranger
])
def test_nak_for_wrong_requested_address(extra, ciaddr):
    srv, c = server()
    r = srv.handle_payload(req(MAC1, "request", ciaddr=ciaddr, extra=extra), 0.0)
    s = BOOTP(r.payload)
    assert ("message-type", 6) in s[DHCP].options and ("server_id", "10.0.2.2") in s[DHCP].options
    assert s.yiaddr == "0.0.0.0"
    assert dpkt.dhcp.DHCP(r.payload).opts[0] == (dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([6]))
    # RFC 2131 4.1: a NAK is always broadcast when giaddr is zero.
    assert (r.dst_ip, r.dst_mac) == (BROADCAST_IP, BROADCAST_MAC)
    assert c["dhcp_nak"] == 1 and srv.leases(0.0) == []


def test_nak_for_someone_elses_live_lease():
    srv, _ = server()
    dora(srv, MAC1)
    r = srv.handle_payload(req(MAC2, "request", extra=[
        ("server_id", "10.0.2.2"), ("requested_addr", "10.0.2.100")]), 1.0)
    assert parse_dhcp(r.payload).msg_type == wd.DHCPNAK


def test_request_for_other_server_releases_offer():
    srv, c = server(pool_size=1)
    srv.handle_payload(req(MAC1, "discover"), 0.0)
    assert srv.handle_payload(req(MAC2, "discover"), 1.0) is None      # .100 reserved
    assert srv.handle_payload(req(MAC1, "request", extra=[
        ("server_id", "10.0.2.9"), ("requested_addr", "10.0.2.100")]), 2.0) is None
    assert c["dhcp_request_other_server"] == 1
    assert parse_dhcp(srv.handle_payload(req(MAC2, "discover"), 3.0).payload).yiaddr == GUEST


def test_offer_reservation_lapses():
    srv, _ = server(pool_size=1)
    srv.handle_payload(req(MAC1, "discover"), 0.0)
    assert srv.handle_payload(req(MAC2, "discover"), 59.0) is None
    assert srv.handle_payload(req(MAC2, "discover"), 61.0) is not None


def test_decline_holds_address_out():
    srv, c = server(pool_size=2)
    dora(srv, MAC1)
    assert srv.handle_payload(req(MAC1, "decline", extra=[
        ("server_id", "10.0.2.2"), ("requested_addr", "10.0.2.100")]), 1.0) is None
    assert c["dhcp_decline"] == 1
    assert dora(srv, MAC1, now=2.0).yiaddr == ip("10.0.2.101")
    assert srv.handle_payload(req(MAC3, "discover"), 3.0) is None      # .100 held out
    # After the hold, the declined address can be handed out again.
    assert parse_dhcp(srv.handle_payload(req(MAC3, "discover"), 2.0 + DECLINE_HOLD).payload).yiaddr == GUEST


def test_inform_acks_without_lease():
    srv, c = server()
    r = srv.handle_payload(req(MAC1, "inform", ciaddr="10.0.2.50"), 0.0)
    m = parse_dhcp(r.payload)
    assert m.msg_type == wd.DHCPACK and m.yiaddr == wd.ZERO_IP and m.ciaddr == ip("10.0.2.50")
    assert wd.OPT_LEASE_TIME not in m.options and wd.OPT_T1 not in m.options
    assert m.options[wd.OPT_ROUTER] == GW and m.options[wd.OPT_DNS] == DNS
    assert (r.dst_ip, r.dst_mac) == (ip("10.0.2.50"), MAC1)
    assert c["dhcp_inform"] == 1 and srv.leases(0.0) == []


def test_drops_are_counted():
    srv, c = server()
    assert srv.handle_payload(b"garbage", 0.0) is None
    assert c["dhcp_drop_bad"] == 1 and c["drop_dhcp_truncated"] == 1
    reply = build_dhcp(1, MAC1, [(53, b"\x02")])                  # a BOOTREPLY from the guest
    assert srv.handle_payload(reply, 0.0) is None and c["dhcp_drop_not_request"] == 1
    bootp = build_dhcp(1, MAC1, [], op=1)                          # no option 53
    assert srv.handle_payload(bootp, 0.0) is None and c["dhcp_drop_no_type"] == 1
    relayed = build_dhcp(1, MAC1, [(53, b"\x01")], op=1, giaddr=ip("10.0.2.1"))
    assert srv.handle_payload(relayed, 0.0) is None and c["dhcp_drop_relayed"] == 1
    bad_mac = build_dhcp(1, b"\x01" * 6, [(53, b"\x01")], op=1)
    assert srv.handle_payload(bad_mac, 0.0) is None and c["dhcp_drop_bad_chaddr"] == 1
    offer_from_client = build_dhcp(1, MAC1, [(53, b"\x02")], op=1)
    assert srv.handle_payload(offer_from_client, 0.0) is None and c["dhcp_drop_bad_type"] == 1
    no_addr = build_dhcp(1, MAC1, [(53, b"\x03")], op=1)           # REQUEST naming nothing
    assert srv.handle_payload(no_addr, 0.0) is None and c["dhcp_drop_bad_request"] == 1


def test_config_from_the_stack_config_and_pool_clipping():
    net = NetConfig(cidr="192.168.7.0/25", mtu=65520)
    cfg = DhcpConfig.from_net(net)._replace(guest_ip=ip("192.168.7.124"), lease_time=3600)
    assert (cfg.gateway_ip, cfg.dns_ip, cfg.prefixlen, cfg.mtu) == (
        ip("192.168.7.2"), ip("192.168.7.3"), 25, 65520)
    srv = DhcpServer(cfg, Counters())
    # 192.168.7.0/25: the pool stops before the broadcast address .127.
    assert srv.pool == [0xC0A8077C, 0xC0A8077D, 0xC0A8077E]
    m = parse_dhcp(srv.handle_payload(req(MAC1, "discover"), 0.0).payload)
    assert m.yiaddr == ip("192.168.7.124")
    assert m.options[wd.OPT_MTU] == (65520).to_bytes(2, "big")
    assert m.options[wd.OPT_BROADCAST] == ip("192.168.7.127")
    assert m.options[wd.OPT_LEASE_TIME] == (3600).to_bytes(4, "big")


def test_reply_destination_rules():
    offer = build_dhcp(1, MAC1, [(53, b"\x02")], yiaddr=GUEST)
    bcast = parse_dhcp(req(MAC1, "discover", flags=0x8000))
    plain = parse_dhcp(req(MAC1, "discover"))
    renewing = parse_dhcp(req(MAC1, "request", ciaddr="10.0.2.100"))
    assert reply_destination(bcast, offer) == (BROADCAST_IP, BROADCAST_MAC)
    assert reply_destination(plain, offer) == (GUEST, MAC1)
    assert reply_destination(renewing, offer) == (GUEST, MAC1)


# --- fuzz: any bytes in, a message or ParseError out --------------------------

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parse_dhcp_arbitrary(data):
    try:
        parse_dhcp(data)
    except ParseError:
        pass


HEADER = bytes([1, 1, 6, 0]) + bytes(24) + MAC1 + bytes(202) + wd.MAGIC_COOKIE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.floats(min_value=0, max_value=1e7))
def test_fuzz_options_through_server(options, now):
    """Random option bytes after a valid header: the parser and server never crash."""
    srv, _ = server(pool_size=2)
    try:
        parse_dhcp(HEADER + options)
    except ParseError:
        pass
    srv.handle_payload(HEADER + options, now)       # must not raise at all


_option = st.tuples(
    st.sampled_from([0, 1, 12, 50, 52, 53, 54, 55, 61, 119, 255]),
    st.one_of(st.binary(max_size=6), st.sampled_from([bytes([t]) for t in range(10)]),
              st.sampled_from([GUEST, GW, ip("10.0.2.101"), ip("1.2.3.4")])),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([MAC1, MAC2, MAC3]), st.lists(_option, max_size=5),
                          st.sampled_from([wd.ZERO_IP, GUEST, ip("10.0.2.101")]),
                          st.floats(min_value=0, max_value=1e6)), max_size=8))
def test_fuzz_server_structured(messages):
    """Plausible option mixes from several MACs: no crash, invariants kept."""
    srv, _ = server(pool_size=2, lease_time=1000)
    for mac, options, ciaddr, now in messages:
        raw = bytearray(HEADER)
        raw[12:16] = ciaddr
        raw[28:34] = mac
        for code, value in options:
            raw += bytes((code,)) if code in (0, 255) else bytes((code, len(value))) + value
        r = srv.handle_payload(bytes(raw), now)
        if r is not None:
            m = parse_dhcp(r.payload)
            assert m.op == wd.BOOTREPLY and m.chaddr == mac
        # One address per MAC, one MAC per address, all inside the pool.
        live = srv.leases(now)
        assert len({lz.ip for lz in live}) == len(live) <= 2
        macs = [lz.mac for lz in live if lz.mac is not None]
        assert len(set(macs)) == len(macs)
