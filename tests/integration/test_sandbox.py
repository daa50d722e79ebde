"""--enable-sandbox and --enable-seccomp end to end (issue 13).

usernet runs with both flags; the test checks that traffic still flows (HTTP
to a host server on 127.0.0.1 via 10.0.2.2, DNS over UDP and TCP to a test
upstream on loopback, ping to the gateway and to a test host, a -p forward,
the API socket), and that usernet is shut in: ``/proc/PID/status``
(Seccomp 2, NoNewPrivs 1, no capability but CAP_NET_BIND_SERVICE), its
mounts (a read-only tmpfs root holding only what it keeps), and its own
probe (``USERNET_TEST_SANDBOX_PROBE``): it cannot open a file the test made
outside the sandbox, nor execve /bin/true.

Three ways of being usernet: root (a mount namespace alone), uid 65534 (a
user+mount namespace) and root without CAP_SYS_ADMIN (the same user
namespace path, for machines where uid 65534 cannot reach the interpreter).
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import (NOBODY, REPO, USERNET, free_port, http_server, need_root, need_tun,
                      reopen_for_nobody, tool)
from test_udp_dns_icmp import FakeDns, _test_host

from usernet.host.dns import RESOLV_CONF
from usernet.sandbox import make_plan

pytestmark = [pytest.mark.integration, need_tun, need_root]
TIMEOUT = 60
NO_SYS_ADMIN = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
CAP_NET_BIND_SERVICE = 1 << 10
PROBE_RE = re.compile(r"event=sandbox_probe open=(\S+) exec=(\S+) resolv=(\S+) path=(\S+)")


def _status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _sandboxed(pid):
    """True once usernet ``pid`` has loaded its seccomp filter."""
    try:
        return _status(pid).get("Seccomp") == "2"
    except OSError:
        return False


def _check_confined(pid, keep):
    """What /proc says about a sandboxed usernet."""
    st = _status(pid)
    assert st["Seccomp"] == "2", st
    assert st["NoNewPrivs"] == "1", st
    for k in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(st[k], 16) & ~CAP_NET_BIND_SERVICE == 0, (k, st[k])
    assert int(st["CapBnd"], 16) & ~CAP_NET_BIND_SERVICE == 0, st["CapBnd"]
    with open(f"/proc/{pid}/mountinfo") as f:
        mounts = [line.split() for line in f]
    root = [m for m in mounts if m[4] == "/"]
    assert len(root) == 1, mounts
    sep = root[0].index("-")
    assert root[0][sep + 1] == "tmpfs" and "ro" in root[0][5].split(","), root[0]
    points = sorted(m[4] for m in mounts if m[4] != "/")
    assert points == sorted(keep), points
    for m in mounts:
        assert {"nosuid", "nodev", "noexec"} <= set(m[5].split(",")), m


def _fetch(port, timeout=20):
    """Connect to 127.0.0.1:port until something answers; its first line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                data = s.recv(100)
                if data:
                    return data.decode(errors="replace").strip()
        except OSError:
            pass
        time.sleep(0.2)
    return None


@contextlib.contextmanager
def _popen(argv, **kw):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=TIMEOUT)


@pytest.fixture
def outside():
    """A file outside anything the sandbox keeps, readable by everyone (so
    only the sandbox can be what stops usernet), in a directory of its own."""
    d = tempfile.mkdtemp(prefix="usernet-sbx-outside-")
    try:
        os.chmod(d, 0o755)
        f = os.path.join(d, "secret.txt")
        with open(f, "w") as fh:
            fh.write("not for usernet\n")
        os.chmod(f, 0o644)
        yield f
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def apidir():
    """The API socket's directory, writable by uid 65534 too (pytest's own
    tmp directories are 0700 root)."""
    d = tempfile.mkdtemp(prefix="usernet-sbx-api-")
    try:
        os.chmod(d, 0o777)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def webroot():
    d = tempfile.mkdtemp(prefix="usernet-sbx-web-")
    try:
        os.chmod(d, 0o755)
        with open(os.path.join(d, "hello.txt"), "w") as fh:
            fh.write("hello through the sandbox\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("who", ["root", "nobody", "root-without-sys-admin"])
def test_run_sandboxed_traffic_flows_and_usernet_is_shut_in(request, who, outside, apidir,
                                                              webroot):
    tool("curl")
    tool("dig")
    tool("ping")
    tool("ncat")
    tool("ip")
    prefix = []
    if who == "nobody":
        prefix = NOBODY
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    elif who == "root-without-sys-admin":
        tool("setpriv")
        prefix = NO_SYS_ADMIN
    api = os.path.join(apidir, "api.sock")
    fwd_port = free_port()
    dns = FakeDns()
    try:
        with http_server(webroot) as http_port, _test_host() as th:
            inner = (
                "(timeout 30 ncat -l 8080 --send-only -c 'echo fwd-ok' &) ; "
                f"curl -sS -m 10 http://10.0.2.2:{http_port}/hello.txt; "
                "echo dns-udp=$(dig +short +tries=1 +time=5 web.usernet.test); "
                "echo dns-tcp=$(dig +tcp +short +tries=1 +time=5 db.usernet.test); "
                "ping -c 2 -W 3 10.0.2.2 | grep -c 'bytes from' | sed 's/^/ping-gw=/'; "
                f"ping -c 2 -W 3 {th} | grep -c 'bytes from' | sed 's/^/ping-host=/'; "
                "for i in $(seq 100); do pgrep -x ncat >/dev/null || break; sleep 0.2; done; "
                "echo done"
            )
            argv = prefix + USERNET + [
                "run", "--enable-sandbox", "--enable-seccomp",
                "--dns-upstream", f"127.0.0.1:{dns.port}", "-p", f"{fwd_port}:8080",
                "--api-socket", api, "--", "sh", "-c", inner]
            env = dict(os.environ, PYTHONPATH=REPO, USERNET_TEST_SANDBOX_PROBE=outside)
            with _popen(argv, env=env, cwd="/") as p:
                _wait_for(lambda: _sandboxed(p.pid) or p.poll() is not None, "the sandbox")
                assert p.poll() is None, p.communicate()
                _check_confined(p.pid, [apidir])
                # The API socket answers and the forward carries a connection.
                r = subprocess.run(USERNET + ["fwd", "list", "--api-socket", api],
                                   capture_output=True, text=True, timeout=TIMEOUT,
                                   env=dict(os.environ, PYTHONPATH=REPO))
                assert r.returncode == 0 and f'"host_port": {fwd_port}' in r.stdout, r
                assert _fetch(fwd_port) == "fwd-ok"
                out, err = p.communicate(timeout=TIMEOUT)
    finally:
        dns.close()
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "hello through the sandbox" in out, out
    assert "dns-udp=192.0.2.10" in out and "dns-tcp=192.0.2.11" in out, out
    assert "ping-gw=2" in out and "ping-host=2" in out, out
    assert 'msg="--enable-' not in err and "Traceback" not in err, err
    m = PROBE_RE.search(err)
    assert m, err
    opened, executed, _resolv, path = m.groups()
    assert path == outside and opened == "ENOENT", m.group(0)
    assert executed == "EPERM", m.group(0)
    assert not os.path.exists(api), "the API socket was not removed at exit"


def test_run_sandbox_only_and_seccomp_only(outside):
    """Each flag on its own does its own part: the sandbox hides the file and
    /bin/true (ENOENT) and keeps resolv.conf readable; seccomp alone leaves the
    file readable but refuses execve (EPERM)."""
    env = dict(os.environ, PYTHONPATH=REPO, USERNET_TEST_SANDBOX_PROBE=outside)
    res = {}
    for flag in ("--enable-sandbox", "--enable-seccomp"):
        r = subprocess.run(USERNET + ["run", flag, "--", "true"], capture_output=True, text=True,
                           timeout=TIMEOUT, env=env, cwd="/")
        assert r.returncode == 0, r.stderr
        assert "not applied" not in r.stderr, r.stderr
        m = PROBE_RE.search(r.stderr)
        assert m, r.stderr
        res[flag] = m.groups()[:3]
    assert res["--enable-sandbox"] == ("ENOENT", "ENOENT", "ok")
    assert res["--enable-seccomp"] == ("ok", "EPERM", "ok")


def test_run_sandboxed_sigterm_is_passed_on_and_api_socket_removed(apidir):
    """SIGTERM after the sandbox: passed to the command (pidfd_send_signal),
    usernet reaps it and removes its API socket from inside the sandbox."""
    api = os.path.join(apidir, "api.sock")
    argv = USERNET + ["run", "--enable-sandbox", "--enable-seccomp", "--api-socket", api,
                      "--", "sleep", "60"]
    with _popen(argv, env=dict(os.environ, PYTHONPATH=REPO), cwd="/") as p:
        _wait_for(lambda: _sandboxed(p.pid) or p.poll() is not None, "the sandbox")
        # The command runs under the run child and its PID namespace's init.
        _wait_for(lambda: any(_comm(c) == "sleep" for c in _descendants(p.pid)), "the command")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not os.path.exists(api)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _descendants(pid):
    out, todo = [], [pid]
    while todo and len(out) < 100:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_attach_sandboxed(outside, apidir):
    """attach PID with both flags and --publish-only-when-bound: /proc/PID/net
    is kept (the forward opens once the port is bound inside), traffic flows,
    and usernet stops cleanly when the process exits."""
    tool("curl")
    tool("ncat")
    tool("nsenter")
    tool("unshare")
    api = os.path.join(apidir, "api.sock")
    fwd_port = free_port()
    target = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        _wait_for(lambda: os.stat(f"/proc/{target.pid}/ns/net").st_ino != own
                  and _comm(target.pid) == "sleep", "the target namespace")
        argv = USERNET + ["attach", "--enable-sandbox", "--enable-seccomp",
                          "--publish-only-when-bound", "-p", f"{fwd_port}:8080",
                          "--api-socket", api, str(target.pid)]
        env = dict(os.environ, PYTHONPATH=REPO, USERNET_TEST_SANDBOX_PROBE=outside)
        with http_server(os.path.dirname(outside)) as http_port, \
                _popen(argv, env=env, cwd="/") as p:
            _wait_for(lambda: _sandboxed(p.pid) or p.poll() is not None, "the sandbox")
            assert p.poll() is None, p.communicate()
            rc_keep = [k.path for k in make_plan(resolv_conf=RESOLV_CONF).keep]
            _check_confined(p.pid, [apidir, f"/proc/{target.pid}/net", *rc_keep])
            nsenter = ["nsenter", f"--target={target.pid}", "--user", "--net",
                       "--preserve-credentials"]
            r = subprocess.run(nsenter + ["curl", "-sS", "-m", "10",
                                          f"http://10.0.2.2:{http_port}/secret.txt"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert r.stdout == "not for usernet\n", r
            # Not bound inside yet: refused, not listening.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", fwd_port), timeout=3).close()
            server = subprocess.Popen(nsenter + ["timeout", "30", "ncat", "-l", "8080",
                                                 "--send-only", "-c", "echo bound-ok"])
            try:
                assert _fetch(fwd_port) == "bound-ok"
            finally:
                server.kill()
                server.wait(timeout=TIMEOUT)
            target.kill()
            target.wait(timeout=TIMEOUT)
            out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
        assert 'msg="--enable-' not in err and "Traceback" not in err, err
        m = PROBE_RE.search(err)
        assert m and m.groups()[:3] == ("ENOENT", "EPERM", "ok"), err
        assert not os.path.exists(api)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait(timeout=TIMEOUT)


def test_sandbox_refused_is_one_warning_line():
    """Nothing can be applied when usernet has a second thread: one warning
    line naming the flag, no traceback, and usernet keeps serving."""
    code = (
        "import sys, threading, time, types, logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from usernet import sandbox\n"
        "t = threading.Thread(target=time.sleep, args=(5,), daemon=True); t.start()\n"
        "args = types.SimpleNamespace(enable_sandbox=True, enable_seccomp=False)\n"
        "print(sandbox.apply(args))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
    assert r.returncode == 0, r.stderr
    assert "{'sandbox': False, 'seccomp': False}" in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("usernet: --enable-sandbox not applied:") \
        and "2 threads" in lines[0], r.stderr
