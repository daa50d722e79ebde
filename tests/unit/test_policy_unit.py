"""The loopback policy, address by address (issue 13): AddressPolicy in the
stack, the host side's own-address check, and the counters of each refusal."""

import ipaddress
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from usernet.host.outbound import is_host_local
from usernet.stack.config import NetConfig
from usernet.stack.gateway import Gateway
from usernet.stack.nat import REFUSAL_REASONS, AddressPolicy

GUEST_MAC = "02:00:00:00:00:64"
GW_MAC = "52:55:00:00:02:02"


def _pol(**kw):
    return AddressPolicy(NetConfig(enable_ipv6=True, **kw))


def _b(addr):
    return ipaddress.ip_address(addr).packed


# address, default target, target with --disable-host-loopback, reason when refused
CASES = [
    ("10.0.2.2", "127.0.0.1", None, "gateway"),
    ("127.0.0.1", None, None, "loopback"),
    ("127.1.2.3", None, None, "loopback"),
    ("127.255.255.254", None, None, "loopback"),
    ("0.0.0.0", None, None, "this_network"),
    ("0.1.2.3", None, None, "this_network"),
    ("255.255.255.255", None, None, "multicast"),
    ("10.0.2.255", None, None, "multicast"),
    ("224.0.0.1", None, None, "multicast"),
    ("240.0.0.1", None, None, "multicast"),
    ("169.254.169.254", None, None, "link_local"),
    ("10.0.2.77", None, None, "own_network"),
    ("fd00::2", "::1", None, "gateway"),
    ("::1", None, None, "loopback"),
    ("::", None, None, "this_network"),
    ("::ffff:127.0.0.1", None, None, "v4_mapped"),
    ("fe80::1", None, None, "link_local"),
    ("ff02::1", None, None, "multicast"),
    ("fd00::77", None, None, "own_network"),
    ("192.0.2.9", "192.0.2.9", "192.0.2.9", None),       # elsewhere: the host side decides
    ("2001:db8::9", "2001:db8::9", "2001:db8::9", None),
]


@pytest.mark.parametrize("addr, default, disabled, reason", CASES, ids=[c[0] for c in CASES])
def test_host_target_and_refusal(addr, default, disabled, reason):
    on, off = _pol(), _pol(host_loopback=False)
    assert on.host_target(_b(addr)) == default
    assert off.host_target(_b(addr)) == disabled
    if reason is not None:
        assert reason in REFUSAL_REASONS
        p = off if default is not None else on
        assert p.refusal(_b(addr)) == reason


def test_link_local_allowed_with_the_flag():
    p = _pol(allow_link_local=True)
    assert p.host_target(_b("169.254.169.254")) == "169.254.169.254"
    # IPv6 link-local needs an interface to mean anything on the host: never.
    assert p.host_target(_b("fe80::1")) is None


def test_is_host_local():
    assert is_host_local("127.0.0.1") and is_host_local("127.1.2.3") and is_host_local("0.0.0.0")
    assert is_host_local("::1")
    assert is_host_local("255.255.255.255")      # the kernel refuses to connect: refused
    assert not is_host_local("198.51.100.7")     # TEST-NET-2: routed (or not), never local
    # One of this machine's own addresses, whatever they are here.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("198.51.100.7", 9))
        own = s.getsockname()[0]
    except OSError:
        own = None
    finally:
        s.close()
    if own and own != "0.0.0.0":
        assert is_host_local(own)


def _frame(l4, dst, **ip):
    return bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src="10.0.2.100", dst=dst, **ip) / l4)


@pytest.mark.parametrize("dst, counter", [
    ("169.254.169.254", "policy_refused_link_local"), ("127.0.0.1", "policy_refused_loopback"),
    ("10.0.2.2", "policy_refused_gateway"), ("0.0.0.0", "policy_refused_this_network"),
    ("10.0.2.3", "policy_refused_dns_port"),
])
def test_each_refusal_counted_over_tcp_udp_icmp(dst, counter):
    gw = Gateway(NetConfig(guest_mac=bytes.fromhex("020000000064"), host_loopback=False), seed=1)
    gw.receive_frame(_frame(TCP(sport=1000, dport=8080, flags="S"), dst), 1.0)
    out = [Ether(bytes(f)) for _h, f in gw.frames_out]
    assert any(TCP in f and f[TCP].flags.R for f in out), out
    assert gw.counters[counter] == 1
    gw.receive_frame(_frame(UDP(sport=1000, dport=8080) / b"x", dst), 1.1)
    assert gw.counters[counter] == 2
    assert not gw.events_out or all(type(e).__name__ != "UdpOpen" for e in gw.events_out)
    gw.receive_frame(_frame(ICMP(type=8, id=1, seq=1) / b"x", dst), 1.2)
    if dst in ("10.0.2.2", "10.0.2.3"):
        assert gw.counters["icmp_echo_local_reply"] == 1     # usernet itself answers
    else:
        assert gw.counters[counter] == 3
    assert [type(e).__name__ for e in gw.events_out if "Open" in type(e).__name__
            or "Connect" in type(e).__name__] == []
