"""Shared fixtures for integration tests: real namespaces, real clients.

No packet leaves this machine: the container's only targets are host
loopback (reached via 10.0.2.2) and test hosts in namespaces a test made.
Every subprocess has a timeout.
"""

import contextlib
import fcntl
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

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


# --------------------------------------------------------------- machine state
# The unprivileged tests need /dev/net/tun mode 0666 and ping_group_range open
# to uid 65534: both machine-wide, and other pytest sessions (other checkouts)
# may run at the same time and need them open too, so no session may close
# them under another, and the last one out must put them back. Under a lock in
# STATE_DIR: the settings found before the first session opened them are kept
# in "original"; each session that opens them leaves "session-PID" (holding its
# start time, so a reused pid is not taken for it); at its end a session
# removes its file, and if no other live session remains restores the
# original settings and checks that they are back (a failure otherwise).
# The last one out also removes STATE_DIR.
# pytest_sessionfinish runs after failed tests and after Ctrl-C; a session
# killed outright leaves its file behind, and the next one to finish, finding
# its pid dead, restores for it.

PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"
STATE_DIR = "/run/usernet-tests"
_ORIGINAL = os.path.join(STATE_DIR, "original")
_session_file = None  # set once this session has opened the two settings
_state_note = []  # what pytest_sessionfinish did, for the terminal summary


def machine_state() -> dict:
    """The two settings the unprivileged tests change, as comparable strings."""
    with open(PING_GROUP_RANGE) as f:
        pgr = " ".join(f.read().split())
    return {"tun_mode": oct(stat.S_IMODE(os.stat(TUN).st_mode)), "ping_group_range": pgr}


def _set_machine_state(state: dict) -> None:
    os.chmod(TUN, int(state["tun_mode"], 8))
    with open(PING_GROUP_RANGE, "w") as f:
        f.write(state["ping_group_range"])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _state_lock():
    path = os.path.join(STATE_DIR, "lock")
    for _ in range(100):
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break       # still the lock file: the last one out did not remove it meanwhile
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise RuntimeError(f"cannot take the lock in {STATE_DIR}")
    try:
        yield
    finally:
        os.close(fd)


def _other_live_sessions() -> list:
    """Pids of other sessions that have the settings open; files of dead ones go."""
    live = []
    for name in os.listdir(STATE_DIR):
        if not name.startswith("session-"):
            continue
        path = os.path.join(STATE_DIR, name)
        with open(path) as f:
            started = f.read().strip()
        pid = int(name.removeprefix("session-"))
        if path == _session_file:
            continue
        if _start_time(pid) == started:
            live.append(pid)
        else:
            os.unlink(path)
    return live


def reopen_for_nobody():
    """Open /dev/net/tun (mode 0666) and ping_group_range to uid 65534 for this
    session. Tests call it again right before acting as uid 65534: a concurrent
    pytest session from an older checkout may have restored them meanwhile.
    Restored when the last session that opened them ends."""
    global _session_file
    with _state_lock():
        if not os.path.exists(_ORIGINAL):
            with open(_ORIGINAL, "w") as f:
                json.dump(machine_state(), f)
        if _session_file is None:
            path = os.path.join(STATE_DIR, f"session-{os.getpid()}")
            with open(path, "w") as f:
                f.write(_start_time(os.getpid()) or "")
            _session_file = path
        _set_machine_state({"tun_mode": "0o666", "ping_group_range": "0 2147483647"})


def pytest_sessionfinish(session, exitstatus):
    """The last session out restores the settings and fails loudly if they differ."""
    global _session_file
    if _session_file is None:
        return
    with _state_lock():
        os.unlink(_session_file)
        _session_file = None
        others = _other_live_sessions()
        if others:
            note = f"/dev/net/tun and ping_group_range left open for pytest pid(s) {others}"
            failed = None
        else:
            with open(_ORIGINAL) as f:
                original = json.load(f)
            _set_machine_state(original)
            now = machine_state()
            if now == original:
                os.unlink(_ORIGINAL)
                # Nobody else is in: take the lock file and the directory too.
                os.unlink(os.path.join(STATE_DIR, "lock"))
                os.rmdir(STATE_DIR)
                note, failed = f"restored {original}", None
            else:
                note = failed = f"NOT RESTORED: {now} != the original {original}"
    _state_note.append((note, failed))
    if failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    for note, failed in _state_note:
        terminalreporter.write_sep("=" if failed else "-", f"machine state: {note}",
                                   red=bool(failed), bold=bool(failed))


@pytest.fixture(scope="session")
def unprivileged():
    """Let uid 65534 use usernet: /dev/net/tun 0666, ping_group_range open
    (restored at the end of the session, see above), and the code readable.
    Skips when not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    tool("setpriv")
    probe = subprocess.run(NOBODY + [sys.executable, "-c", "import usernet.cli"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot import usernet from {REPO}: {probe.stderr.strip()[-200:]}")
    reopen_for_nobody()
    return "nobody"


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


def wait_for(pred, timeout, what, poll=0.05):
    """Poll ``pred()`` until it returns something true (returned), for at most
    ``timeout`` seconds; then fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)
