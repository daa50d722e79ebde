"""list_flows' stack half (usernet.stack.flows.flow_info): a scripted TCP
exchange and a UDP flow with an explicit clock, counts checked exactly."""

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from usernet.api import ForwarderBackend, handle_request
from usernet.stack.config import NetConfig
from usernet.stack.flows import flow_info
from usernet.stack.gateway import Gateway

GUEST_MAC, GW_MAC, GUEST, GW = "02:00:00:00:00:64", "52:55:00:00:02:02", "10.0.2.100", "10.0.2.2"


def _tcp(flags, seq, ack=0, payload=b""):
    return bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst=GW) / TCP(
        sport=40000, dport=8080, flags=flags, seq=seq, ack=ack, window=65535,
        options=[("MSS", 1460)] if "S" in flags else []) / Raw(payload))


def _sent(gw):
    out = [Ether(bytes(f)) for _h, f in gw.frames_out]
    gw.frames_out.clear()
    return out


def test_tcp_flow_counts_bytes_packets_age_and_idle():
    gw = Gateway(NetConfig(), seed=1)
    gw.receive_frame(_tcp("S", 1000), 10.0)
    (ev,) = gw.events_out
    gw.events_out.clear()
    (f,) = flow_info(gw.flows, 10.5)
    assert f["state"] == "CONNECTING" and f["pkts_in"] == 1 and f["bytes_in"] == 0
    gw.tcp_connected(ev.fid, 11.0)
    (synack,) = _sent(gw)
    iss = synack[TCP].seq
    gw.receive_frame(_tcp("A", 1001, iss + 1), 11.1)
    gw.receive_frame(_tcp("PA", 1001, iss + 1, b"x" * 100), 11.2)
    gw.tcp_host_data(ev.fid, b"y" * 3000, 11.3)
    data = [p for p in _sent(gw) if len(p[TCP].payload)]
    assert sum(len(p[TCP].payload) for p in data) == 3000
    (f,) = flow_info(gw.flows, 12.0)
    assert f["bytes_in"] == 100 and f["pkts_in"] == 3
    assert f["bytes_out"] == 0                 # sent, not yet acknowledged
    gw.receive_frame(_tcp("A", 1101, iss + 1 + 3000), 12.5)
    gw.events_out.clear()
    _sent(gw)
    (f,) = flow_info(gw.flows, 13.0)
    assert f["bytes_out"] == 3000 and f["pkts_out"] >= 1 + len(data)
    assert f["state"] == "ESTABLISHED" and f["retransmits"] == 0
    assert f["age"] == 3.0 and f["idle"] == 0.5
    assert f["container"] == (bytes([10, 0, 2, 100]), 40000) and f["remote"][1] == 8080
    # The container closes: its FIN is not a byte.
    gw.receive_frame(_tcp("FA", 1101, iss + 1 + 3000), 13.1)
    (f,) = flow_info(gw.flows, 13.2)
    assert f["bytes_in"] == 100 and f["state"] == "CLOSE_WAIT"


def test_udp_flow_counts_and_the_api_reply():
    gw = Gateway(NetConfig(), seed=1)
    gw.receive_frame(bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src=GUEST, dst="192.0.2.1") /
                           UDP(sport=5000, dport=7000) / Raw(b"ping!")), 1.0)
    fid = gw.events_out[0].fid
    gw.udp_host_datagram(fid, b"pong", 2.0)
    gw.udp_host_datagram(fid, b"pong", 2.5)
    (f,) = flow_info(gw.flows, 4.0)
    assert (f["proto"], f["bytes_in"], f["pkts_in"], f["bytes_out"], f["pkts_out"]) == \
        ("udp", 5, 1, 8, 2)
    assert f["age"] == 3.0 and f["idle"] == 1.5

    class Fwd:
        def entries(self):
            return []
    rows = [{"id": i, "tx_bytes": i} for i in range(5)]
    b = ForwarderBackend(Fwd(), dict, lambda: rows)
    assert handle_request(b'{"execute":"list_flows","arguments":{"limit":2}}', b) == \
        b'{"return":{"flows":[{"id":0,"tx_bytes":0},{"id":1,"tx_bytes":1}],"total":5}}'
    assert b"bad arguments.limit" in handle_request(
        b'{"execute":"list_flows","arguments":{"limit":-1}}', b)
    assert b"unknown execute" in handle_request(b'{"execute":"list_flows"}',
                                                ForwarderBackend(Fwd(), dict))
