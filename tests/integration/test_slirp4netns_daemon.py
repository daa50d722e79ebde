"""The slirp4netns entry point handing its container to ``usernet daemon`` (issue 15).

Started exactly as Podman starts its network helper (``-c -e FD -r FD --api-socket PATH
--enable-sandbox --enable-seccomp --netns-type=path NETNS tap0``), with
``USERNET_DAEMON=PATH`` in its environment: it makes and configures the TAP, hands the TAP,
the exit fd and the API socket to the daemon, writes the ready byte and exits. The namespace is
an ``unshare`` child; the host side is loopback only (10.0.2.2 inside, forwards on 127.0.0.1).

What the tests prove:

* ``test_handover_leaves_no_process``: the ready byte is ``1``; the helper exits 0 (after
  ``API_HANDOVER_LINGER``, since an API socket was asked for) and its pid is gone from /proc
  while the container's network keeps working: a fetch from the host through 10.0.2.2, and a
  port published through the API socket (``add_hostfwd``, sent as Podman sends it) reaching a
  server inside. The daemon lists the link; closing the exit fd's other end (what conmon's exit
  does) ends it: the link leaves the status, the API socket file and the host port are gone.
  Both through the Python entry point and through the compiled front
  (``usernet/slirp4netns_front.c``), which sends the attach request itself: no Python runs.
* ``test_no_exit_fd_serves_in_process``: a path target without ``-e`` (Podman's rootless
  network namespace helper, which Podman stops with SIGTERM to the helper's pid) is served in
  the helper's own process even with ``USERNET_DAEMON`` set: it stays up, carries traffic, and
  SIGTERM ends it with status 0; the daemon never had a link.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, USERNET, free_port, http_server, need_tun, tool, wait_for

pytestmark = [pytest.mark.integration, need_tun]

ENV = dict(os.environ, PYTHONPATH=REPO)
for k in ("USERNET_DAEMON", "USERNET_DAEMON_SOCKET"):
    ENV.pop(k, None)
T = 30


_wait_for = wait_for


def _daemon_request(path, msg):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(json.dumps(msg).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            b = s.recv(65536)
            if not b:
                break
            buf += b
        return json.loads(buf)
    finally:
        s.close()


@contextlib.contextmanager
def _daemon():
    d = tempfile.mkdtemp(prefix="usernet-s18-flows10k-")
    path = os.path.join(d, "d.sock")
    p = subprocess.Popen(USERNET + ["daemon", "--socket", path], env=ENV, cwd="/",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def up():
            assert p.poll() is None, p.stderr.read()
            try:
                return _daemon_request(path, {"op": "ping"}).get("ok")
            except OSError:
                return False
        _wait_for(up, 20, "the daemon")
        yield path, d
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            _out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=10)
            raise
        shutil.rmtree(d, ignore_errors=True)
    assert p.returncode == 0 and "Traceback" not in err, err


@contextlib.contextmanager
def _namespace():
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "120"], cwd="/")
    own = os.stat("/proc/self/ns/net").st_ino
    try:
        def ready():
            try:
                with open(f"/proc/{p.pid}/comm") as f:
                    return f.read().strip() == "sleep" and \
                        os.stat(f"/proc/{p.pid}/ns/net").st_ino != own
            except OSError:
                return False
        _wait_for(ready, 10, "unshare")
        yield p.pid
    finally:
        p.kill()
        p.wait(10)


def _in(pid, *argv, **kw):
    return subprocess.Popen(["nsenter", f"--target={pid}", "--user", "--net",
                             "--preserve-credentials", *argv], cwd="/", **kw)


FRONT = os.path.join(REPO, ".venv", "bin", "usernet-slirp4netns")
ENTRIES = {"python": USERNET + ["slirp4netns"], "front": [FRONT]}


def _front_built():
    try:
        with open(FRONT, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _helper(pid, extra_env, *args, exit_fd=True, api=None, entry="python"):
    """The entry point (the Python one, or the compiled front) as Podman starts it; returns
    (process, ready read end, exit write end)."""
    rr, rw = os.pipe()
    er = ew = None
    fds = [rw]
    argv = ENTRIES[entry] + ["--mtu=65520", "--enable-sandbox", "--enable-seccomp", "-c"]
    if exit_fd:
        er, ew = os.pipe()
        fds.append(er)
        argv += ["-e", str(er)]
    argv += ["-r", str(rw)]
    if api:
        argv += ["--api-socket", api]
    argv += [*args, "--netns-type=path", f"--userns-path=/proc/{pid}/ns/user",
             f"/proc/{pid}/ns/net", "tap0"]
    p = subprocess.Popen(argv, pass_fds=fds, env=dict(ENV, **extra_env), cwd="/",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.close(rw)
    if er is not None:
        os.close(er)
    return p, rr, ew


def _read_ready(rr, timeout=T):
    import select
    r, _, _ = select.select([rr], [], [], timeout)
    assert r, "no ready byte"
    b = os.read(rr, 16)
    os.close(rr)
    return b


def _add_hostfwd(api, host_port, guest_port):
    """As Podman does: one connection per forward, JSON, newline, SHUT_WR, read the answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(api)
    s.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "127.0.0.1", "host_port": host_port,
        "guest_port": guest_port}}).encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        buf += b
    s.close()
    return json.loads(buf)


SERVE_ONCE = ("import socket,sys\n"
              "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(4); print('listening', flush=True)\n"
              "c,_=s.accept(); c.sendall(b'from inside the namespace\\n'); c.close()\n")


@pytest.mark.parametrize("entry", ["python", "front"])
def test_handover_leaves_no_process(tmp_path, entry):
    """Through the Python entry point, and through the compiled front, which hands the link
    over itself: no Python process is started at all (USERNET_PYTHON names a stand-in that
    would leave a mark)."""
    tool("curl")
    tool("nsenter")
    if entry == "front" and not _front_built():
        pytest.skip("usernet-slirp4netns is not the compiled front (no C compiler?)")
    www = tmp_path / "www"
    www.mkdir()
    (www / "page.txt").write_text("page of the host\n")
    os.chmod(tmp_path, 0o755)
    mark = tmp_path / "python-ran"
    stand_in = tmp_path / "python"
    stand_in.write_text(f'#!/bin/sh\ntouch {mark}\nexec {sys.executable} "$@"\n')
    stand_in.chmod(0o755)
    with _daemon() as (path, d), _namespace() as pid, http_server(www) as hport:
        api = os.path.join(d, "ctr.net")
        helper, rr, ew = _helper(pid, {"USERNET_DAEMON": path, "USERNET_PYTHON": str(stand_in)},
                                 api=api, entry=entry)
        try:
            assert _read_ready(rr) == b"1"
            rc = helper.wait(T)
            err = helper.stderr.read()
            assert rc == 0, err
            assert "daemon=" in err and "link=" in err, err     # the start line names the link
            assert not os.path.exists(f"/proc/{helper.pid}"), "the helper's process is still there"
            if entry == "front":
                assert not mark.exists(), "the front started Python to hand the link over"
            links = _daemon_request(path, {"op": "status"})["links"]
            assert [ln["state"] for ln in links] == ["up"], links
            # The container's network, served by the daemon.
            r = _in(pid, "curl", "-sS", "-m", "10", f"http://10.0.2.2:{hport}/page.txt",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, cerr = r.communicate(timeout=T)
            assert out == "page of the host\n", cerr
            # A port published through the API socket the daemon made for the link.
            guest, host = 8080, free_port()
            srv = _in(pid, "python3", "-c", SERVE_ONCE, str(guest), stdout=subprocess.PIPE, text=True)
            try:
                assert srv.stdout.readline().strip() == "listening"
                reply = _add_hostfwd(api, host, guest)
                assert "error" not in reply and reply["return"]["id"] >= 1, reply
                with socket.create_connection(("127.0.0.1", host), timeout=10) as c:
                    c.settimeout(10)
                    got = c.recv(100)
                assert got == b"from inside the namespace\n", got
            finally:
                srv.kill()
                srv.wait(10)
            # conmon's end of the exit pipe closes: the link ends and leaves nothing.
            os.close(ew)
            ew = None
            _wait_for(lambda: not _daemon_request(path, {"op": "status"})["links"], 15,
                      "the link to end")
            _wait_for(lambda: not os.path.exists(api), 15, "the API socket to go")
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", host), timeout=5).close()
        finally:
            if ew is not None:
                os.close(ew)
            if helper.poll() is None:
                helper.kill()
                helper.wait(10)


@pytest.mark.parametrize("entry", ["python", "front"])
def test_no_exit_fd_serves_in_process(tmp_path, entry):
    tool("curl")
    tool("nsenter")
    www = tmp_path / "www"
    www.mkdir()
    (www / "page.txt").write_text("served here\n")
    os.chmod(tmp_path, 0o755)
    if entry == "front" and not _front_built():
        pytest.skip("usernet-slirp4netns is not the compiled front (no C compiler?)")
    with _daemon() as (path, _d), _namespace() as pid, http_server(www) as hport:
        helper, rr, _ew = _helper(pid, {"USERNET_DAEMON": path}, exit_fd=False, entry=entry)
        try:
            assert _read_ready(rr) == b"1"
            time.sleep(0.5)
            assert helper.poll() is None, helper.stderr.read()
            r = _in(pid, "curl", "-sS", "-m", "10", f"http://10.0.2.2:{hport}/page.txt",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, cerr = r.communicate(timeout=T)
            assert out == "served here\n", cerr
            assert _daemon_request(path, {"op": "status"})["links"] == []
            helper.send_signal(signal.SIGTERM)
            assert helper.wait(T) == 0
            assert "serving here, not in the daemon" in helper.stderr.read()
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait(10)
