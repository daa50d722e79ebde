"""Shared fixtures for integration tests: real namespaces, real clients.

No packet leaves this machine: the container's only targets are host
loopback (reached via 10.0.2.2) and test hosts in namespaces a test made.
Every subprocess has a timeout.
"""

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USERNET = [sys.executable, "-m", "usernet"]
TUN = "/dev/net/tun"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def tun_usable() -> bool:
    return os.path.exists(TUN) and (os.geteuid() == 0 or os.access(TUN, os.R_OK | os.W_OK))


need_tun = pytest.mark.skipif(not tun_usable(), reason="needs root or /dev/net/tun mode 0666")
need_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as another user)")


def tool(name):
    """Skip the test when a client program is missing (tools/setup.sh installs them)."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} not installed (run tools/setup.sh as root)")


def usernet_run(args, cmd, *, timeout=60, user=None, env=None, input=None, check=False):
    """``usernet run ARGS -- CMD`` as root, or as ``user="nobody"``; returns CompletedProcess."""
    argv = USERNET + ["run", *args, "--", *cmd]
    if user == "nobody":
        argv = NOBODY + argv
    e = dict(os.environ, PYTHONPATH=REPO)
    if env:
        e.update(env)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, input=input,
                       cwd="/")
    if check:
        assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def reopen_for_nobody():
    """The session fixture ``unprivileged`` opened /dev/net/tun and
    ping_group_range; a concurrent pytest session may have restored them
    since. Open them again (the fixture still restores them at the end)."""
    os.chmod(TUN, 0o666)
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")


@pytest.fixture(scope="session")
def unprivileged():
    """Let uid 65534 use usernet: /dev/net/tun 0666, ping_group_range open,
    and the code readable. Restored afterwards. Skips when not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    tool("setpriv")
    probe = subprocess.run(NOBODY + [sys.executable, "-c", "import usernet.cli"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot import usernet from {REPO}: {probe.stderr.strip()[-200:]}")
    old_mode = os.stat(TUN).st_mode & 0o777
    pgr = "/proc/sys/net/ipv4/ping_group_range"
    with open(pgr) as f:
        old_pgr = f.read().strip()
    os.chmod(TUN, 0o666)
    with open(pgr, "w") as f:
        f.write("0 2147483647")
    try:
        yield "nobody"
    finally:
        os.chmod(TUN, old_mode)
        with open(pgr, "w") as f:
            f.write(old_pgr)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_PUT(self):
        """Store an upload; answer with its sha256 (the container checks it)."""
        import hashlib
        n = int(self.headers.get("Content-Length", 0))
        h = hashlib.sha256()
        left = n
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        body = h.hexdigest().encode()
        self.send_response(200 if left == 0 else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(directory, host="127.0.0.1"):
    """A threaded HTTP server on ``host`` (127.0.0.1 or ::1; a free port)
    serving ``directory``; PUT answers the sha256 of the body. Yields the port."""
    class Srv(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    srv = Srv((host, 0), lambda *a: _Handler(*a, directory=str(directory)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
