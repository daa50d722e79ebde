"""DNS: the wire format (usernet.wire.dns) and local names + resolv.conf (usernet.stack.dns).

Queries are built with scapy; responses are checked with scapy and dpkt.
"""

import struct

import dpkt
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRROPT

from usernet.wire import ParseError
from usernet.wire import dns as wd
from usernet.wire.dns import (
    DnsTcpFramer, build_error, build_response, build_servfail, encode_name, frame_tcp,
    parse_name, parse_query, split_tcp_messages,
)
from usernet.stack.dns import LOCAL_TTL, LocalNames, parse_resolv_conf

GW = bytes([10, 0, 2, 2])
GW6 = bytes.fromhex("fd000000000000000000000000000002")


def query(name="example.com", qtype="A", id=0x4242, rd=1, qclass="IN", **kw) -> bytes:
    return bytes(DNS(id=id, rd=rd, qd=DNSQR(qname=name, qtype=qtype, qclass=qclass), **kw))


# --- wire: parsing -------------------------------------------------------------

def test_parse_golden_query():
    raw = (b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
           b"\x03www\x07ExAmPlE\x03com\x00\x00\x1c\x00\x01")
    q = parse_query(raw)
    assert q == (0xABCD, 0x0100, "www.example.com", wd.TYPE_AAAA, wd.CLASS_IN, len(raw))
    assert q.opcode == 0


@pytest.mark.parametrize("name, qtype, code", [
    ("example.com", "A", 1), ("Host.Containers.Internal.", "AAAA", 28), ("a.b.c.d.e", "MX", 15),
    (".", "NS", 2),
])
def test_parse_scapy_queries(name, qtype, code):
    q = parse_query(query(name, qtype, id=7))
    assert q.id == 7 and q.flags & wd.RD
    assert q.qname == name.rstrip(".").lower()
    assert (q.qtype, q.qclass) == (code, 1)


def test_parse_query_with_edns_ignores_additional():
    raw = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="x.test"), ar=DNSRROPT()))
    assert parse_query(raw).qname == "x.test"


def test_escaped_labels_do_not_collide():
    raw = b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03a.b\x02\\\xff\x00\x00\x01\x00\x01"
    assert parse_query(raw).qname == "a\\.b.\\\\\\255"


def test_parse_name_compression():
    buf = b"\x03foo\x00" + b"\x03bar\xc0\x00" + b"\x03baz\xc0\x05"
    assert parse_name(buf, 0) == ([b"foo"], 5)
    assert parse_name(buf, 5) == ([b"bar", b"foo"], 11)
    assert parse_name(buf, 11) == ([b"baz", b"bar", b"foo"], 17)


@pytest.mark.parametrize("buf, off", [
    (b"\xc0\x00", 0),                       # points at itself
    (b"\xc0\x02\xc0\x00", 0),               # forwards, then back: a loop
    (b"\x01a\xc0\x00", 0),                  # a label, then back to its start
])
def test_pointer_loops_rejected(buf, off):
    with pytest.raises(ParseError) as e:
        parse_name(buf, off)
    assert e.value.reason == "dns_name_bad_pointer"


def test_pointer_chain_bounded():
    # Each pointer points at the one before: no loop, but too many hops.
    buf = bytearray(b"\x00")
    for i in range(40):
        target = 0 if i == 0 else 1 + 2 * (i - 1)
        buf += bytes((0xC0 | target >> 8, target & 0xFF))
    assert parse_name(buf, 1 + 2 * 10)[0] == []
    with pytest.raises(ParseError):
        parse_name(buf, len(buf) - 2)


def test_pointer_loop_in_query():
    raw = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(ParseError):
        parse_query(raw)


@pytest.mark.parametrize("raw, reason", [
    (b"", "dns_truncated"),
    (b"\x00" * 11, "dns_truncated"),
    (b"\x00\x01\x81\x80\x00\x01" + bytes(6) + b"\x00\x00\x01\x00\x01", "dns_not_query"),
    (b"\x00\x01\x01\x00" + bytes(8), "dns_no_question"),
    (b"\x00\x01\x01\x00\x00\x01" + bytes(6), "dns_name_truncated"),
    (b"\x00\x01\x01\x00\x00\x01" + bytes(6) + b"\x05ab", "dns_name_truncated"),
    (b"\x00\x01\x01\x00\x00\x01" + bytes(6) + b"\x00\x00\x01", "dns_truncated"),
    (b"\x00\x01\x01\x00\x00\x01" + bytes(6) + b"\x41ab\x00\x00\x01\x00\x01", "dns_name_bad_label"),
    (b"\x00\x01\x01\x00\x00\x01" + bytes(6) + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
     + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01", "dns_name_too_long"),
])
def test_bad_queries(raw, reason):
    with pytest.raises(ParseError) as e:
        parse_query(raw)
    assert e.value.reason == reason


def test_encode_name():
    assert encode_name("a.example.") == b"\x01a\x07example\x00"
    assert encode_name("") == b"\x00"
    with pytest.raises(ValueError):
        encode_name("a..b")


# --- wire: building responses --------------------------------------------------

def test_build_response_golden():
    raw = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
    out = build_response(raw, [(wd.TYPE_A, 60, GW)])
    assert out == (b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
                   b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x02\x02")


def test_build_response_parsed_by_scapy_and_dpkt():
    raw = query("WwW.Example.COM", "A", id=999)
    out = build_response(raw, [(wd.TYPE_A, 300, GW), (wd.TYPE_A, 300, bytes([1, 2, 3, 4]))])
    s = DNS(out)
    assert s.id == 999 and s.qr == 1 and s.rd == 1 and s.ra == 1 and s.rcode == 0
    assert s.qdcount == 1 and s.ancount == 2
    assert s.qd[0].qname == b"WwW.Example.COM."        # case preserved (0x20 randomisation)
    assert [a.rdata for a in s.an] == ["10.0.2.2", "1.2.3.4"]
    assert [a.ttl for a in s.an] == [300, 300]

    d = dpkt.dns.DNS(out)
    assert d.id == 999 and d.qr == dpkt.dns.DNS_R and d.rcode == dpkt.dns.DNS_RCODE_NOERR
    assert d.qd[0].name == "WwW.Example.COM"
    assert [(a.type, a.ip, a.name) for a in d.an] == [
        (dpkt.dns.DNS_A, GW, "WwW.Example.COM"), (dpkt.dns.DNS_A, b"\x01\x02\x03\x04", "WwW.Example.COM")]


def test_build_response_rd_clear_and_aa():
    out = build_response(query(rd=0), [], aa=True)
    s = DNS(out)
    assert s.rd == 0 and s.aa == 1 and s.ancount == 0 and s.qdcount == 1


def test_build_servfail_full_and_header_only():
    s = DNS(build_servfail(query("x.test", "AAAA", id=5)))
    assert s.id == 5 and s.qr == 1 and s.rcode == 2 and s.qdcount == 1 and s.qd[0].qname == b"x.test."

    header_only = b"\x00\x09\x01\x00\x00\x01" + bytes(6) + b"\x05broken"
    out = build_servfail(header_only)
    assert out == b"\x00\x09\x81\x82" + bytes(8)
    d = dpkt.dns.DNS(out)
    assert d.id == 9 and d.rcode == dpkt.dns.DNS_RCODE_SERVFAIL and d.qd == []

    with pytest.raises(ParseError):
        build_servfail(b"\x00" * 11)


def test_build_error_refused():
    s = DNS(build_error(query(id=3), wd.RCODE_REFUSED))
    assert s.id == 3 and s.rcode == 5 and s.qdcount == 1 and s.ancount == 0


# --- wire: TCP framing ------------------------------------------------------------

def test_tcp_split_and_frame():
    a, b = query(id=1), query(id=2)
    stream = frame_tcp(a) + frame_tcp(b)
    assert split_tcp_messages(stream) == ([a, b], len(stream))
    assert split_tcp_messages(stream[:-1]) == ([a], len(frame_tcp(a)))
    assert split_tcp_messages(b"\x00") == ([], 0)


def test_tcp_framer_byte_at_a_time():
    msgs = [query(id=i) for i in range(3)]
    stream = b"".join(frame_tcp(m) for m in msgs)
    f = DnsTcpFramer()
    got = []
    for i in range(len(stream)):
        got += f.feed(stream[i:i + 1])
    assert got == msgs and f.pending == 0


def test_tcp_framer_bounded():
    f = DnsTcpFramer()
    big = bytes(65535)
    assert f.feed(b"\xff\xff" + big[:-1]) == []
    assert f.pending == 65536
    assert f.feed(big[-1:] + b"\x00") == [big]
    assert f.pending == 1


def test_tcp_zero_length_and_oversize():
    with pytest.raises(ParseError):
        split_tcp_messages(b"\x00\x00")
    with pytest.raises(ValueError):
        frame_tcp(bytes(65536))


# --- stack: local names ---------------------------------------------------------

@pytest.mark.parametrize("name", ["host.containers.internal", "HOST.usernet.Internal.",
                                  "host.usernet.internal"])
def test_local_a(name):
    out = LocalNames(GW, GW6).answer(query(name, "A", id=11))
    d = dpkt.dns.DNS(out)
    assert d.id == 11 and d.rcode == 0 and d.aa == 1
    assert [(a.type, a.ip, a.ttl) for a in d.an] == [(dpkt.dns.DNS_A, GW, LOCAL_TTL)]


def test_local_aaaa():
    out = LocalNames(GW, GW6).answer(query("host.containers.internal", "AAAA"))
    s = DNS(out)
    assert s.ancount == 1 and s.an[0].type == 28 and s.an[0].rdata == "fd00::2"
    d = dpkt.dns.DNS(out)
    assert d.an[0].ip6 == GW6


@pytest.mark.parametrize("gw6, qtype", [(None, "AAAA"), (GW6, "MX"), (GW6, "TXT")])
def test_local_nodata(gw6, qtype):
    s = DNS(LocalNames(GW, gw6).answer(query("host.containers.internal", qtype)))
    assert s.rcode == 0 and s.ancount == 0 and s.qdcount == 1


def test_local_any():
    d = dpkt.dns.DNS(LocalNames(GW, GW6).answer(query("host.containers.internal", "ALL")))
    assert sorted(a.type for a in d.an) == [dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA]


def test_not_local():
    ln = LocalNames(GW)
    assert ln.answer(query("example.com")) is None
    assert ln.answer(query("containers.internal")) is None
    assert ln.answer(query("x.host.containers.internal")) is None
    assert ln.answer(query("host.containers.internal", qclass="CH")) is None
    assert ln.answer(query("host.containers.internal", opcode=2)) is None
    assert ln.answer(b"garbage") is None
    # Host loopback disabled: the names go upstream like any other.
    assert LocalNames(None).answer(query("host.containers.internal")) is None


# --- stack: resolv.conf ---------------------------------------------------------

def test_parse_resolv_conf():
    text = """
# generated by something
search example.test
nameserver 10.1.2.3
nameserver 10.1.2.3   # again
nameserver 2001:DB8::1
nameserver fe80::1%eth0
; nameserver 9.9.9.9
nameserver not-an-ip
nameserver
options ndots:2
  nameserver 127.0.0.53
nameserver 1.1.1.1;comment
"""
    assert parse_resolv_conf(text) == [
        ("10.1.2.3", 53), ("2001:db8::1", 53), ("fe80::1%eth0", 53), ("127.0.0.53", 53),
        ("1.1.1.1", 53)]
    assert parse_resolv_conf("") == []


# --- fuzz: any bytes in, a result or ParseError out ------------------------------

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_query(data):
    try:
        q = parse_query(data)
    except ParseError:
        return
    assert 12 < q.question_end <= len(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=12, max_size=200))
def test_fuzz_builders_and_local_names(data):
    """A query with a random body: SERVFAIL always builds; answer() never raises."""
    out = build_servfail(data)
    assert out[:2] == data[:2] and out[3] & 0x0F == 2
    LocalNames(GW, GW6).answer(data)
    try:
        build_response(data, [(wd.TYPE_A, 1, GW)])
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=12, max_value=60))
def test_fuzz_question_with_pointers(tail, prefix):
    """Bodies rich in pointer bytes: the name parser terminates with a name or ParseError."""
    data = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + bytes(prefix - 12) + tail.replace(
        b"\x00", b"\xc0")
    try:
        parse_query(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=5), st.data())
def test_fuzz_tcp_any_split(messages, data):
    stream = b"".join(frame_tcp(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    f = DnsTcpFramer()
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += f.feed(stream[prev:cut])
        prev = cut
    assert got == messages and f.pending == 0
