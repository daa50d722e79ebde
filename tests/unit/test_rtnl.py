"""usernet/rtnl.py: the rtnetlink messages, byte for byte, and the kernel's answers.

A fake socket stands in for AF_NETLINK: it records what is sent and plays back replies, so
the layout (linux/netlink.h, linux/rtnetlink.h) is checked without a namespace. The real
kernel's acceptance of these messages is checked by tests/integration/test_netns.py (the
addresses, routes and MTU they leave behind).
"""

import errno
import socket
import struct

import pytest

from usernet import rtnl

HDR = struct.Struct("=IHHII")


class FakeSock:
    def __init__(self, replies):
        self.sent = []
        self.replies = list(replies)

    def send(self, data):
        self.sent.append(bytes(data))
        return len(data)

    def recv(self, _n):
        return self.replies.pop(0)

    def close(self):
        pass


def fake(replies_for):
    """An Rtnl whose kernel answers each request with ``replies_for(seq)`` (a list of datagrams)."""
    nl = rtnl.Rtnl.__new__(rtnl.Rtnl)
    nl.seq = 0
    sock = FakeSock([])
    orig_send = sock.send

    def send(data):
        n = orig_send(data)
        seq = HDR.unpack_from(data)[3]
        sock.replies.extend(replies_for(seq))
        return n
    sock.send = send
    nl.sock = sock
    return nl, sock


def msg(kind, seq, payload, flags=0):
    return HDR.pack(HDR.size + len(payload), kind, flags, seq, 0) + payload


def ack(seq, code=0):
    return msg(rtnl.NLMSG_ERROR, seq, struct.pack("=i", -code) + b"\0" * 16)


def test_link_set_layout():
    nl, sock = fake(lambda seq: [ack(seq)])
    nl.link_set(7, up=True, mtu=9000, mac=bytes.fromhex("020000000001"))
    (data,) = sock.sent
    length, kind, flags, seq, pid = HDR.unpack_from(data)
    assert (length, kind, flags, pid) == (len(data), rtnl.RTM_NEWLINK,
                                          rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, 0)
    family, typ, index, ifflags, change = struct.unpack_from("=BxHiII", data, 16)
    assert (family, index, ifflags, change) == (socket.AF_UNSPEC, 7, rtnl.IFF_UP, rtnl.IFF_UP)
    attrs = rtnl.parse_attrs(data, 32)
    assert attrs == {rtnl.IFLA_MTU: struct.pack("=I", 9000),
                     rtnl.IFLA_ADDRESS: bytes.fromhex("020000000001")}
    assert len(data) % 4 == 0


def test_addr_add_ipv4_sets_local_and_address_ipv6_only_address():
    nl, sock = fake(lambda seq: [ack(seq)])
    nl.addr_add(3, "10.0.2.100", 24)
    nl.addr_add(3, "fd00::1", 64)
    v4, v6 = sock.sent
    assert HDR.unpack_from(v4)[2] == (rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE
                                      | rtnl.NLM_F_EXCL)
    assert struct.unpack_from("=BBBBI", v4, 16) == (socket.AF_INET, 24, 0, 0, 3)
    assert rtnl.parse_attrs(v4, 24) == {rtnl.IFA_LOCAL: bytes([10, 0, 2, 100]),
                                        rtnl.IFA_ADDRESS: bytes([10, 0, 2, 100])}
    assert struct.unpack_from("=BBBBI", v6, 16) == (socket.AF_INET6, 64, 0, 0, 3)
    assert rtnl.parse_attrs(v6, 24) == {rtnl.IFA_ADDRESS: socket.inet_pton(socket.AF_INET6, "fd00::1")}


def test_default_route_layout():
    nl, sock = fake(lambda seq: [ack(seq)])
    nl.route_add_default("10.0.2.2", 3)
    (data,) = sock.sent
    assert struct.unpack_from("=BBBBBBBBI", data, 16) == (
        socket.AF_INET, 0, 0, 0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE,
        rtnl.RTN_UNICAST, 0)
    assert rtnl.parse_attrs(data, 28) == {rtnl.RTA_GATEWAY: bytes([10, 0, 2, 2]),
                                          rtnl.RTA_OIF: struct.pack("=I", 3)}


def test_a_refusal_is_an_oserror_with_its_errno():
    nl, _sock = fake(lambda seq: [ack(seq, errno.EEXIST)])
    with pytest.raises(rtnl.NetlinkError) as ei:
        nl.addr_add(3, "10.0.2.100", 24)
    assert ei.value.errno == errno.EEXIST and ei.value.strerror == "File exists"
    assert isinstance(ei.value, OSError)


def test_replies_to_other_requests_are_skipped():
    nl, _sock = fake(lambda seq: [ack(seq - 1, errno.EPERM) + ack(seq)])
    nl.link_set(1, up=True)         # the stale EPERM belongs to another sequence number


def test_dump_collects_every_part_until_done():
    def addr(seq, family, index, raw):
        body = struct.pack("=BBBBI", family, 24, 0, 0, index) + rtnl.attr(rtnl.IFA_ADDRESS, raw)
        return msg(rtnl.RTM_NEWADDR, seq, body, flags=2)

    def replies(seq):
        return [addr(seq, socket.AF_INET, 1, bytes([127, 0, 0, 1]))
                + addr(seq, socket.AF_INET, 2, bytes([192, 0, 2, 1])),
                addr(seq, socket.AF_INET, 2, bytes([192, 0, 2, 7]))
                + msg(rtnl.NLMSG_DONE, seq, struct.pack("=i", 0))]
    nl, sock = fake(replies)
    assert nl.addresses(socket.AF_INET, 2) == ["192.0.2.1", "192.0.2.7"]
    assert HDR.unpack_from(sock.sent[0])[2] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP


def test_attr_padding_round_trip():
    blob = rtnl.attr(1, b"abc") + rtnl.attr(2, b"") + rtnl.attr(3, b"12345")
    assert len(blob) == 8 + 4 + 12
    assert rtnl.parse_attrs(blob) == {1: b"abc", 2: b"", 3: b"12345"}
