"""Seeing what the container's network does (issue 14): ``--pcap``.

A curl download from a host loopback server (10.0.2.2 from inside); the
capture is read back with scapy's reader and, when installed, ``tcpdump -r``.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO, USERNET, http_server, need_tun, usernet_run

pytestmark = [pytest.mark.integration, need_tun]

BLOB = 300_000


@pytest.fixture
def served(tmp_path):
    (tmp_path / "blob").write_bytes(os.urandom(BLOB))
    with http_server(tmp_path) as port:
        yield port


def _curl(port):
    return ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{size_download}",
            f"http://10.0.2.2:{port}/blob"]


def _tcp_of(pkts, port):
    from scapy.layers.inet import IP, TCP
    return [(p[IP].src, p[TCP].sport, p[TCP].dport, str(p[TCP].flags), len(p[TCP].payload))
            for p in pkts if TCP in p and port in (p[TCP].sport, p[TCP].dport)]


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_pcap_of_a_curl_download(tmp_path, served, offload):
    from scapy.layers.inet import TCP  # noqa: F401 - registers Ethernet, IPv4 and TCP
    from scapy.utils import rdpcap
    pcap = tmp_path / "c.pcap"
    args = ["--pcap", str(pcap)] + ([] if offload else ["--no-offload"])
    r = usernet_run(args, _curl(served), timeout=60, check=True)
    assert r.stdout == str(BLOB)
    seen = _tcp_of(rdpcap(str(pcap)), served)
    assert seen, (pcap.stat().st_size, r.stderr)
    c2h = [s for s in seen if s[2] == served]
    h2c = [s for s in seen if s[1] == served]
    assert c2h[0][3] == "S" and c2h[0][0] == "10.0.2.100"          # the handshake
    assert h2c[0][3] == "SA" and h2c[0][0] == "10.0.2.2"
    assert sum(s[4] for s in h2c) > BLOB                            # every byte of the body
    assert any("F" in s[3] for s in c2h) and any("F" in s[3] for s in h2c)   # the close
    if offload:
        assert max(s[4] for s in h2c) > 1500     # 64 KiB segments, written as they were
    else:
        assert max(s[4] for s in h2c) <= 1460
    if shutil.which("tcpdump"):
        t = subprocess.run(["tcpdump", "-nr", str(pcap), f"tcp port {served}"],
                           capture_output=True, text=True, timeout=30)
        assert t.returncode == 0, t.stderr
        assert "link-type EN10MB (Ethernet)" in t.stderr
        lines = t.stdout.splitlines()
        assert any("Flags [S]," in ln for ln in lines)
        assert any("Flags [S.]" in ln for ln in lines)
        assert sum("Flags [F" in ln for ln in lines) >= 2
        assert len(lines) == len(seen)


def test_pcap_snaplen_and_rotation(tmp_path, served):
    from scapy.layers.inet import TCP  # noqa: F401
    from scapy.utils import RawPcapReader
    pcap = tmp_path / "c.pcap"
    r = usernet_run(["--no-offload", "--pcap", str(pcap), "--pcap-snaplen", "96",
                     "--pcap-max-size", "4K"],
                    _curl(served), timeout=60, check=True)
    assert r.stdout == str(BLOB)
    assert pcap.stat().st_size <= 4096
    old = tmp_path / "c.pcap.1"
    assert old.exists() and old.stat().st_size <= 4096
    assert r.stderr.count("rotating") == 1, r.stderr               # logged once
    lens = []
    for path in (old, pcap):
        for _data, meta in RawPcapReader(str(path)):
            lens.append((meta.caplen, meta.wirelen))
    # Cut at 96, the original length kept. (Which frames the last two files
    # hold depends on timing: a burst of pure ACKs may fill them.)
    assert lens and all(cap == min(wire, 96) for cap, wire in lens), lens


def test_pcap_bad_values_are_one_line(tmp_path):
    for args, word in ((["--pcap-max-size", "lots"], "--pcap-max-size"),
                       (["--pcap-snaplen", "5"], "--pcap-snaplen")):
        r = usernet_run(["--pcap", str(tmp_path / "x"), *args], ["true"], timeout=30)
        assert r.returncode == 1 and word in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = usernet_run(["--pcap", str(tmp_path / "no" / "dir" / "x")], ["true"], timeout=30)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("usernet: --pcap "), r.stderr
    assert "Traceback" not in r.stderr


def test_debug_flow_events_go_to_the_log_file(tmp_path, served):
    """--debug logs each flow's open and close with its addresses (and what it
    carried); --log-file takes the lines off stderr."""
    logf = tmp_path / "usernet.log"
    r = usernet_run(["--debug", "--log-file", str(logf)], _curl(served), timeout=60, check=True)
    assert r.stdout == str(BLOB) and r.stderr == "", r.stderr
    lines = logf.read_text().splitlines()
    mine = [ln for ln in lines if f"remote=10.0.2.2:{served}" in ln]
    opens = [ln for ln in mine if " event=flow_open " in ln]
    closes = [ln for ln in mine if " event=flow_close " in ln]
    assert len(opens) == 1 and len(closes) == 1, "\n".join(lines[-20:])
    assert "proto=tcp" in opens[0] and "container=10.0.2.100:" in opens[0]
    assert f"host=127.0.0.1:{served}" in opens[0]
    rx = int(re.search(r" rx_bytes=(\d+)", closes[0]).group(1))
    assert rx > BLOB                                   # the body and the response headers
    assert any(" event=counters counters={" in ln for ln in lines)


def test_log_file_that_cannot_be_opened_is_one_line(tmp_path):
    r = usernet_run(["--log-file", str(tmp_path / "no" / "x.log")], ["true"], timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("usernet: --log-file ") and "No such file" in r.stderr


def test_slirp4netns_entry_point_pcap_and_stats_by_pid(tmp_path, served):
    """--pcap on the slirp4netns command line (usernet's own option there), and
    ``usernet stats --pid`` finding that helper by its -a socket."""
    from scapy.layers.inet import TCP  # noqa: F401
    from scapy.utils import rdpcap
    ns = str(tmp_path / "ns")
    open(ns, "w").close()
    subprocess.run(["unshare", f"--net={ns}", "true"], check=True, timeout=10)
    pcap, api = tmp_path / "s.pcap", str(tmp_path / "api.sock")
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen(USERNET + ["slirp4netns", "-c", "--netns-type=path", "-a", api,
                                    f"--pcap={pcap}", ns, "tap0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd="/")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(api):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        r = subprocess.run(["nsenter", f"--net={ns}", *_curl(served)], capture_output=True,
                           text=True, timeout=30)
        assert r.stdout == str(BLOB), r.stderr
        s = subprocess.run(USERNET + ["stats", "--pid", str(p.pid), "--json"], capture_output=True,
                           text=True, timeout=20, env=env, cwd="/")
        assert s.returncode == 0, s.stderr
        assert json.loads(s.stdout)["tcp_syn_connect"] == 1
    finally:
        p.terminate()
        out, err = p.communicate(timeout=20)
        subprocess.run(["umount", ns], capture_output=True, timeout=10)
        os.unlink(ns)
    assert p.returncode == 0, err
    seen = _tcp_of(rdpcap(str(pcap)), served)
    assert [s[3] for s in seen[:2]] == ["S", "SA"] and sum(s[4] for s in seen) > BLOB
