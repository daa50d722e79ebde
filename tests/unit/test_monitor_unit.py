"""usernet/monitor.py without a running usernet: finding the API socket in a
command line, the tables and the rates."""

from usernet import monitor as m


def test_api_socket_in_each_command_line_form():
    arg = m._api_socket_arg
    assert arg(["python3", "-m", "usernet", "run", "--api-socket", "/s", "--", "x"]) == "/s"
    assert arg(["usernet-slirp4netns", "--api-socket=/s", "1", "tap0"]) == "/s"
    assert arg(["slirp4netns", "-c", "-a", "/s", "1", "tap0"]) == "/s"
    assert arg(["slirp4netns", "-a/s", "1", "tap0"]) == "/s"
    assert arg(["usernet", "run", "--", "sh", "--api-socket", "/not-ours"]) is None
    assert m._is_usernet(["/usr/bin/python3", "-m", "usernet", "attach", "12"])
    assert m._is_usernet(["/usr/bin/python3", "/usr/bin/usernet-slirp4netns", "-c", "1", "t"])
    assert not m._is_usernet(["/usr/bin/python3", "-m", "usernet", "flows", "--api-socket", "/s"])
    assert m._target_pid(["usernet", "attach", "--api-socket", "/s", "4242"]) == 4242


def test_flow_table_is_aligned_and_rates_sort_it():
    f = dict(proto="tcp", direction="out", container="10.0.2.100:40000", remote="10.0.2.2:80",
             host_local="127.0.0.1:5000", host_peer="127.0.0.1:80", state="ESTABLISHED",
             tx_bytes=100, rx_bytes=3 << 20, tx_packets=3, rx_packets=40, age=2.0, idle=0.1,
             retransmits=0, id=1)
    g = dict(f, id=2, proto="udp", state="OPEN", container="10.0.2.100:5353",
             host_local=None, tx_bytes=10, rx_bytes=10)
    text = m.render_flows({"flows": [f, g], "total": 2}, None, None)
    head, r1, r2, foot = text.splitlines()
    assert head.index("STATE") == r1.index("ESTABLISHED") == r2.index("OPEN")
    assert "3.0M" in r1 and foot == "2 flows"
    assert r2.split()[4] == "-"                   # no host socket: a dash
    # With a previous sample the busiest *now* comes first, with its rate.
    prev = {("tcp", 1): dict(f), ("udp", 2): dict(g, rx_bytes=0)}
    g2 = dict(g, rx_bytes=10 + 4096)
    text = m.render_flows({"flows": [f, g2], "total": 2}, prev, 1.0)
    rows = text.splitlines()
    assert "RX/S" in rows[0] and rows[1].startswith("udp") and rows[1].split()[-1] == "4.0K"


def test_stats_table_hides_zeros_but_not_gauges():
    s = {"tcp_flows": 0, "udp_flows": 2, "tcp_rst_tx": 0, "rx_frames": 7}
    rows = m.render_stats(s, None, None, False).splitlines()
    assert [r.split()[0] for r in rows] == ["COUNTER", "tcp_flows", "udp_flows", "rx_frames"]
    rows = m.render_stats(s, {"rx_frames": 2}, 0.5, True).splitlines()
    assert any(r.split() == ["tcp_rst_tx", "0", "0.0"] for r in rows)       # --all: zeros too
    assert [r for r in rows if r.startswith("rx_frames")][0].split() == ["rx_frames", "7", "10.0"]
