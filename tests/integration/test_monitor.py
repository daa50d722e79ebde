"""``usernet flows`` and ``usernet stats`` against a running usernet (issue 14).

A slow host loopback server (10.0.2.2 from inside) keeps one TCP flow busy
for a few seconds while the CLI asks the API socket about it.
"""

import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, USERNET, need_tun

pytestmark = [pytest.mark.integration, need_tun]

ENV = dict(os.environ, PYTHONPATH=REPO)
CHUNK = 64 * 1024
CHUNKS = 60          # 3.75 MiB over about 3 s
PAUSE = 0.05


class SlowServer:
    """Sends CHUNKS x CHUNK bytes to each client, PAUSE seconds apart."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._send, args=(c,), daemon=True).start()

    def _send(self, c):
        with c:
            try:
                for _ in range(CHUNKS):
                    if self.stop.is_set():
                        return
                    c.sendall(b"x" * CHUNK)
                    time.sleep(PAUSE)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


CLIENT = ("import socket,sys\n"
          "s=socket.create_connection(('10.0.2.2',int(sys.argv[1])),timeout=20)\n"
          "n=0\n"
          "while True:\n"
          "    d=s.recv(1<<20)\n"
          "    if not d: break\n"
          "    n+=len(d)\n"
          "print(n)\n")


@pytest.fixture
def busy(tmp_path):
    """A usernet run with an API socket and one slow download in flight:
    yields (api socket path, usernet Popen, server port)."""
    srv = SlowServer()
    api = str(tmp_path / "api.sock")
    p = subprocess.Popen(USERNET + ["run", "--api-socket", api, "--", sys.executable, "-c",
                                    CLIENT, str(srv.port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         cwd="/")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(api):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        yield api, p, srv.port
    finally:
        srv.close()
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        srv.close()


def cli(*args, timeout=20):
    r = subprocess.run(USERNET + list(args), capture_output=True, text=True, env=ENV,
                       timeout=timeout, cwd="/")
    return r


def _our_flow(ret, port):
    fl = [f for f in ret["flows"] if f["proto"] == "tcp" and f["remote"] == f"10.0.2.2:{port}"]
    return fl[0] if fl else None


def _wait_flow(api, port):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = cli("flows", "--api-socket", api, "--json")
        assert r.returncode == 0, r.stderr
        f = _our_flow(json.loads(r.stdout), port)
        if f is not None and f["rx_bytes"] > 0:
            return f
        time.sleep(0.1)
    raise AssertionError("the download's flow never showed bytes")


def test_flows_lists_the_transfer_with_growing_counts(busy):
    api, p, port = busy
    first = _wait_flow(api, port)
    time.sleep(0.5)
    r = cli("flows", "--api-socket", api, "--json")
    ret = json.loads(r.stdout)
    second = _our_flow(ret, port)
    assert second is not None and second["id"] == first["id"]
    assert second["rx_bytes"] > first["rx_bytes"]                 # growing
    assert second["rx_packets"] > first["rx_packets"]
    assert second["tx_packets"] > 0                                # the container's ACKs
    assert second["state"] == "ESTABLISHED" and second["direction"] == "out"
    assert second["container"].startswith("10.0.2.100:")
    assert second["host_peer"] == f"127.0.0.1:{port}"
    assert second["host_local"].startswith("127.0.0.1:")
    assert second["age"] >= 0.5 and 0 <= second["idle"] < second["age"]
    assert ret["total"] >= 1
    # The table: a header, the flow's row with its addresses, aligned columns.
    r = cli("flows", "--pid", str(p.pid))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:6] == ["PROTO", "DIR", "CONTAINER", "REMOTE", "HOST", "STATE"]
    row = [ln for ln in lines if f"10.0.2.2:{port}" in ln]
    assert len(row) == 1 and "ESTABLISHED" in row[0]
    assert lines[0].index("STATE") == row[0].index("ESTABLISHED")  # aligned
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and int(out) == CHUNK * CHUNKS


def test_stats_json_counters(busy):
    api, p, port = busy
    _wait_flow(api, port)
    r = cli("stats", "--api-socket", api, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["tcp_flows"] == 1 and s["tcp_syn_connect"] == 1 and s["tcp_host_connected"] == 1
    assert s["rx_frames"] > 0 and s["tx_frames"] > 0
    assert s["tcp_rst_tx"] == 0 and s["drop_stack_error"] == 0
    assert s["log_warnings_suppressed"] == 0
    r = cli("stats", "--api-socket", api)
    assert r.returncode == 0, r.stderr
    rows = dict(ln.split() for ln in r.stdout.splitlines()[1:])
    assert rows["tcp_flows"] == "1" and rows["tcp_syn_connect"] == "1"
    assert "drop_stack_error" not in rows                          # zeros only with --all
    r = cli("stats", "--api-socket", api, "--all")
    assert "drop_stack_error" in r.stdout


def _in_pty(argv, timeout=20):
    """Run ``argv`` with its stdout on a pseudo-terminal; (status, text it wrote)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=ENV, cwd="/")
    os.close(slave)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                d = os.read(master, 65536)
            except OSError:          # EIO: the other side closed
                break
            if not d:
                break
            buf += d
        elif p.poll() is not None:
            break
    os.close(master)
    p.wait(timeout=10)
    return p.returncode, buf.decode(errors="replace")


def test_watch_redraws_in_a_terminal(busy):
    api, p, port = busy
    _wait_flow(api, port)
    status, text = _in_pty(USERNET + ["flows", "--api-socket", api, "--watch", "0.2",
                                      "--count", "3"])
    assert status == 0, text
    assert text.count("\x1b[H\x1b[2J") == 3                        # three redraws in place
    frames = text.split("\x1b[H\x1b[2J")[1:]
    assert "TX/S" not in frames[0] and "new flows/s" not in frames[0]
    for fr in frames[1:]:                                           # rates from the 2nd on
        assert "TX/S" in fr and "RX/S" in fr and "new flows/s" in fr
        assert f"10.0.2.2:{port}" in fr
    status, text = _in_pty(USERNET + ["stats", "--api-socket", api, "--watch", "0.2",
                                      "--count", "2"])
    assert status == 0 and text.count("\x1b[H\x1b[2J") == 2 and "PER_S" in text, text


def test_monitor_errors_are_one_line(tmp_path):
    r = cli("flows", "--api-socket", str(tmp_path / "missing.sock"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    r = cli("stats", "--pid", "999999999")
    assert r.returncode == 1 and "no usernet with an API socket serves pid" in r.stderr
    r = cli("flows", "--count", "2", "--api-socket", "x")
    assert r.returncode == 1 and "--count needs --watch" in r.stderr
    r = cli("flows", "--watch", "0", "--api-socket", "x")
    assert r.returncode == 1 and "seconds must be" in r.stderr
