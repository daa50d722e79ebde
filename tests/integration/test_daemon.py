"""``usernet daemon``: one process serving many namespaces (issue 15).

Real namespaces (``unshare`` children sleeping), real clients (curl, dig,
nsenter), attached with ``usernet attach --daemon``; as root and as uid 65534.
No packet leaves the machine: the targets are a host loopback HTTP server
(10.0.2.2 inside), a fake DNS upstream on loopback, and forwards on 127.0.0.1.
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import (NOBODY, REPO, USERNET, http_server, need_root, need_tun, reopen_for_nobody,
                      tool, wait_for)

pytestmark = [pytest.mark.integration, need_tun]

ENV = dict(os.environ, PYTHONPATH=REPO)
ENV.pop("USERNET_DAEMON_SOCKET", None)
TIMEOUT = 30


def _out(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


_wait_for = wait_for


def _user(request, user):
    if user == "nobody":
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    return user


def _pre(user):
    return NOBODY if user == "nobody" else []


@contextlib.contextmanager
def _sockdir(user):
    """A fresh directory for the daemon's socket, the user's own."""
    d = tempfile.mkdtemp(prefix="usernet-s18-daemon-")
    try:
        if user == "nobody":
            os.chown(d, 65534, 65534)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _usernet(args, user=None, timeout=TIMEOUT):
    return subprocess.run(_pre(user) + USERNET + args, capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd="/")


def _start_daemon(path, user=None, extra=()):
    p = subprocess.Popen(_pre(user) + USERNET + ["daemon", "--socket", path, *extra], env=ENV,
                         cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def up():
        assert p.poll() is None, p.stderr.read()
        if not os.path.exists(path):
            return False
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()
    _wait_for(up, 20, "the daemon to listen")
    return p


def _stop_daemon(p, timeout=20):
    """SIGTERM: exit 0, nothing on stderr but log lines."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _o, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=10)
        raise AssertionError("the daemon did not exit after SIGTERM")
    return p.returncode, err


@contextlib.contextmanager
def _daemon(user=None, extra=()):
    with _sockdir(user) as d:
        path = os.path.join(d, "d.sock")
        p = _start_daemon(path, user, extra)
        try:
            yield p, path
        finally:
            if p.poll() is None:
                rc, err = _stop_daemon(p)
                assert rc == 0, err
                assert "Traceback" not in err, err
                assert not os.path.exists(path), "the socket was left behind"


def _status(path, user=None):
    r = _usernet(["daemon", "status", "--json", "--socket", path], user)
    assert r.returncode == 0, _out(r)
    return json.loads(r.stdout)


def _request(path, msg):
    """One request on the daemon's socket, as a client program would (run as root)."""
    from usernet.daemon import DaemonClient
    c = DaemonClient(path)
    try:
        return c.request(msg)
    finally:
        c.close()


def _unshare_target(user, userns=True):
    argv = ["unshare", "--user", "--map-root-user", "--net", "sleep", "120"] if userns else \
        ["unshare", "--net", "sleep", "120"]
    p = subprocess.Popen(_pre(user) + argv, cwd="/")
    own = os.stat("/proc/self/ns/net").st_ino

    def ready():
        try:
            with open(f"/proc/{p.pid}/comm") as f:
                comm = f.read().strip()
            return comm == "sleep" and os.stat(f"/proc/{p.pid}/ns/net").st_ino != own
        except OSError:
            return False
    _wait_for(ready, 10, "unshare to start")
    return p


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _ns(pid, user=None, userns=True):
    if not userns:
        return ["nsenter", f"--net=/proc/{pid}/ns/net"]
    return _pre(user) + ["nsenter", f"--target={pid}", "--user", "--net", "--preserve-credentials"]


def _in(pid, *argv, user=None, userns=True, timeout=TIMEOUT):
    return subprocess.run(_ns(pid, user, userns) + list(argv), capture_output=True, text=True,
                          timeout=timeout)


def _fetch(pid, port, user=None, userns=True):
    return _in(pid, "curl", "-sS", "-m", "10", f"http://10.0.2.2:{port}/page.txt", user=user,
               userns=userns)


def _attach(path, pid, *args, user=None):
    return _usernet(["attach", "--daemon-socket", path, *args, str(pid)], user)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _page(tmp_path, text="page of the host\n"):
    d = tmp_path / "www"
    d.mkdir(exist_ok=True)
    (d / "page.txt").write_text(text)
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    return d


GUEST_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(8)
while True:
    c, _ = s.accept(); c.recv(100); c.sendall(sys.argv[1].encode()); c.close()
"""


def _ask_forward(port, timeout=10):
    """What the server behind host port ``port`` answers (retrying until it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"hi")
                data = c.recv(100)
                if data:
                    return data.decode()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on forward port {port}")
        time.sleep(0.1)


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize("user", [None, "nobody"])
def test_daemon_three_namespaces_one_killed(request, tmp_path, user):
    """Three namespaces on one daemon each fetch from host loopback; the third
    also has a -p forward. The first one's process is killed: its link is freed
    (status shows 2, its host sockets gone), the others keep working, forward
    included."""
    tool("curl")
    tool("nsenter")
    user = _user(request, user)
    www = _page(tmp_path)
    hp = _free_port()
    targets = []
    server = None
    with http_server(www) as port, _daemon(user) as (daemon, path):
        try:
            targets = [_unshare_target(user) for _ in range(3)]
            for i, t in enumerate(targets):
                extra = ["-p", f"127.0.0.1:{hp}:8000"] if i == 2 else []
                r = _attach(path, t.pid, *extra, user=user)
                assert r.returncode == 0, _out(r)
                assert "event=attached" in r.stderr and f"link={i + 1}" in r.stderr, r.stderr
            for t in targets:
                r = _fetch(t.pid, port, user)
                assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
            st = _status(path, user)
            assert st["daemon"]["links"] == 3
            by_pid = {ln["pid"]: ln for ln in st["links"]}
            assert set(by_pid) == {t.pid for t in targets}
            for ln in st["links"]:
                assert ln["addresses"] == ["10.0.2.100/24"] and ln["network"] == ""
                assert ln["rx_bytes"] > 0 and ln["tx_bytes"] > 0, ln
            assert by_pid[targets[2].pid]["forwards"] == [f"tcp/127.0.0.1:{hp}"]
            server = subprocess.Popen(_ns(targets[2].pid, user) + ["python3", "-c", GUEST_SERVER,
                                                                   "from-ns3"], cwd="/")
            assert _ask_forward(hp) == "from-ns3"

            targets[0].kill()
            targets[0].wait(timeout=10)
            _wait_for(lambda: _status(path, user)["daemon"]["links"] == 2, 15,
                      "the killed namespace's link to be freed")
            st = _status(path, user)
            assert {ln["pid"] for ln in st["links"]} == {targets[1].pid, targets[2].pid}
            _wait_for(lambda: _status(path, user)["daemon"]["closing"] == 0, 15,
                      "the link's release")
            for t in targets[1:]:
                r = _fetch(t.pid, port, user)
                assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
            assert _ask_forward(hp) == "from-ns3"
            assert daemon.poll() is None
        finally:
            _kill(([server] if server else []) + targets)


def test_daemon_isolation(tmp_path):
    """Two links: a host port published by one is refused to the other with a
    clear line (and its TAP is gone again); each link's DNS answers come from
    its own upstream; flows and counters are per link."""
    tool("curl")
    tool("nsenter")
    tool("dig")
    from test_udp_dns_icmp import FakeDns
    from usernet.wire.dns import TYPE_A, build_response, parse_query

    def answering(addr):
        def answer(query):
            q = parse_query(query)
            ans = [(TYPE_A, 30, socket.inet_aton(addr))] if q.qtype == TYPE_A else []
            return build_response(query, ans, aa=True)
        return answer

    www = _page(tmp_path)
    hp = _free_port()
    dns_a, dns_b = FakeDns(answer=answering("192.0.2.1")), FakeDns(answer=answering("192.0.2.2"))
    targets = []
    try:
        with http_server(www) as port, _daemon() as (_d, path):
            targets = [_unshare_target(None) for _ in range(2)]
            a, b = targets
            r = _attach(path, a.pid, "-p", f"{hp}:80", "--dns-upstream", f"127.0.0.1:{dns_a.port}")
            assert r.returncode == 0, _out(r)
            r = _attach(path, b.pid, "-p", f"127.0.0.1:{hp}:81")
            assert r.returncode == 1, _out(r)
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
            assert (f"usernet: daemon: host port tcp 127.0.0.1:{hp} is already published by "
                    f"link 1 (pid {a.pid}); fix: choose another host port") in r.stderr, r.stderr
            assert "tap0" not in _in(b.pid, "ip", "-o", "link").stdout
            assert _status(path)["daemon"]["links"] == 1
            r = _attach(path, b.pid, "--dns-upstream", f"127.0.0.1:{dns_b.port}")
            assert r.returncode == 0, _out(r)

            for t, want in ((a, "192.0.2.1"), (b, "192.0.2.2")):
                r = _in(t.pid, "dig", "+short", "+tries=1", "+time=5", "@10.0.2.3", "svc.test")
                assert r.stdout.strip() == want, _out(r)
            assert dns_a.queries >= 1 and dns_b.queries >= 1
            qa, qb = dns_a.queries, dns_b.queries
            r = _in(a.pid, "dig", "+short", "+tries=1", "+time=5", "@10.0.2.3", "other.test")
            assert r.stdout.strip() == "192.0.2.1"
            assert dns_a.queries > qa and dns_b.queries == qb

            for _ in range(3):
                assert _fetch(a.pid, port).returncode == 0
            sa = _request(path, {"op": "stats", "link": 1})["stats"]
            sb = _request(path, {"op": "stats", "link": 2})["stats"]
            assert sa["tcp_syn_connect"] == 3 and sb["tcp_syn_connect"] == 0, (sa, sb)
            assert sa["fwd_count"] == 1 and sb["fwd_count"] == 0
            assert _request(path, {"op": "flows", "link": 2})["flows"] == []
            fa = _request(path, {"op": "flows", "link": 1})["flows"]
            assert fa and all(f["remote"] == f"10.0.2.2:{port}" for f in fa), fa
            reply = _request(path, {"op": "stats", "link": 3})
            assert reply["ok"] is False and "no link 3" in reply["error"]["message"]
    finally:
        dns_a.close()
        dns_b.close()
        _kill(targets)


def test_daemon_not_running_is_one_line():
    """--daemon without a daemon: one line with the fix, status 1, no TAP made."""
    tool("nsenter")
    with _sockdir(None) as d:
        path = os.path.join(d, "none.sock")
        t = _unshare_target(None)
        try:
            r = _attach(path, t.pid)
            assert r.returncode == 1, _out(r)
            assert r.stderr == (f"usernet: daemon: not running at {path}; fix: start "
                                f"`usernet daemon --socket {path}`\n"), r.stderr
            assert "tap0" not in _in(t.pid, "ip", "-o", "link").stdout
            r = _usernet(["run", "--daemon-socket", path, "--", "true"])
            assert r.returncode == 1 and "daemon: not running at" in r.stderr, _out(r)
            r = _usernet(["daemon", "status", "--socket", path])
            assert r.returncode == 1 and "daemon: not running at" in r.stderr, _out(r)
        finally:
            _kill([t])


def test_daemon_single_instance_and_bad_requests():
    """A second daemon on the same socket is refused; bad requests get an
    error reply and the daemon keeps serving."""
    with _daemon() as (_d, path):
        r = _usernet(["daemon", "--socket", path])
        assert r.returncode == 1 and "daemon: already running at" in r.stderr, _out(r)
        assert _request(path, {"op": "nope"})["ok"] is False
        reply = _request(path, {"op": "attach", "fds": ["tap"], "config": {}})
        assert reply["ok"] is False and "fds" in reply["error"]["message"]
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"not json\n")
        assert b'"ok": false' in s.recv(1000)
        s.close()
        assert _request(path, {"op": "ping"})["ok"] is True


@pytest.mark.parametrize("user", [None, "nobody"])
def test_daemon_run_reports_status_and_frees_link(request, tmp_path, user):
    """run --daemon: CMD reaches the host; run's status is CMD's; the link is
    freed when CMD exits; run stays only as CMD's parent."""
    tool("curl")
    user = _user(request, user)
    www = _page(tmp_path)
    with http_server(www) as port, _daemon(user) as (_d, path):
        r = _usernet(["run", "--daemon-socket", path, "--", "sh", "-c",
                      f"curl -sS -m 10 http://10.0.2.2:{port}/page.txt; exit 7"], user)
        assert r.returncode == 7, _out(r)
        assert r.stdout == "page of the host\n"
        _wait_for(lambda: _status(path, user)["daemon"]["links"] == 0, 10, "the link to go")

        # While CMD runs, run is only its parent: the small waiter (no usernet
        # loaded), which passes SIGTERM on and reports CMD's status.
        p = subprocess.Popen(_pre(user) + USERNET + ["run", "--daemon-socket", path, "--",
                                                     "sleep", "60"],
                             env=ENV, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        try:
            _wait_for(lambda: _status(path, user)["daemon"]["links"] == 1, 15, "the link")
            if user is None:
                # (uid 65534 here may not reach the interpreter by its path, only through
                # setpriv's capabilities: it waits in its own process, tested the same way.)
                with open(f"/proc/{p.pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                assert any(a.endswith(b"usernet/runwait.py") for a in argv), argv
                with open(f"/proc/{p.pid}/status") as f:
                    rss = int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) * 1024
                assert rss < 16 << 20, f"the waiting run process holds {rss >> 20} MiB"
            p.send_signal(signal.SIGTERM)
            _o, err = p.communicate(timeout=15)
            assert p.returncode == 128 + signal.SIGTERM, err
            _wait_for(lambda: _status(path, user)["daemon"]["links"] == 0, 10, "the link to go")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_daemon_sigterm_closes_links(tmp_path):
    """SIGTERM with a live link holding a TCP connection to the host: the host
    side of the connection ends, the TAP leaves the namespace, the socket is
    removed, exit 0."""
    tool("nsenter")
    t = _unshare_target(None)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(15)
    port = srv.getsockname()[1]
    holder = None
    try:
        with _sockdir(None) as d:
            path = os.path.join(d, "d.sock")
            p = _start_daemon(path)
            r = _attach(path, t.pid, "-p", f"127.0.0.1:{_free_port()}:80")
            assert r.returncode == 0, _out(r)
            assert "tap0" in _in(t.pid, "ip", "-o", "link").stdout
            holder = subprocess.Popen(_ns(t.pid) + [
                "python3", "-c", "import socket, time; "
                f"s = socket.create_connection(('10.0.2.2', {port})); time.sleep(60)"])
            conn, _ = srv.accept()
            conn.settimeout(15)
            rc, err = _stop_daemon(p)
            assert rc == 0 and "Traceback" not in err, err
            assert "event=link_down" in err and 'reason="daemon stopping"' in err, err
            try:
                assert conn.recv(100) == b""
            except ConnectionResetError:
                pass                     # reset: the flow was cut, not finished
            conn.close()
            assert not os.path.exists(path) and not os.path.exists(path + ".lock")
            assert "tap0" not in _in(t.pid, "ip", "-o", "link").stdout
    finally:
        srv.close()
        _kill(([holder] if holder else []) + [t])


def test_daemon_exit_fd_and_stop_command():
    """attach --daemon --exit-fd FD: the link ends when FD's other end closes;
    `usernet daemon stop` stops the daemon (exit 0)."""
    tool("nsenter")
    t = _unshare_target(None)
    try:
        with _sockdir(None) as d:
            path = os.path.join(d, "d.sock")
            p = _start_daemon(path)
            r_fd, w_fd = os.pipe()
            try:
                r = subprocess.run(USERNET + ["attach", "--daemon-socket", path, "--exit-fd",
                                              str(r_fd), str(t.pid)],
                                   capture_output=True, text=True, timeout=TIMEOUT, env=ENV,
                                   cwd="/", pass_fds=(r_fd,))
                assert r.returncode == 0, _out(r)
                assert _status(path)["daemon"]["links"] == 1
            finally:
                os.close(r_fd)
                os.close(w_fd)
            _wait_for(lambda: _status(path)["daemon"]["links"] == 0, 10, "the exit fd to end it")
            assert "tap0" not in _in(t.pid, "ip", "-o", "link").stdout or \
                _wait_for(lambda: "tap0" not in _in(t.pid, "ip", "-o", "link").stdout, 10,
                          "the TAP to go")
            r = _usernet(["attach", "--exit-fd", "3", str(t.pid)])
            assert r.returncode == 1 and "--exit-fd needs --daemon" in r.stderr, _out(r)
            r = _usernet(["daemon", "stop", "--socket", path])
            assert r.returncode == 0, _out(r)
            assert p.wait(timeout=20) == 0
            assert not os.path.exists(path)
    finally:
        _kill([t])


def test_daemon_crash_and_restart(tmp_path):
    """kill -9 the daemon: each namespace's TAP disappears (traffic fails at
    once, the forward is refused); a new daemon on the same socket knows no
    links and serves a new attach of the same namespace."""
    tool("curl")
    tool("nsenter")
    www = _page(tmp_path)
    hp = _free_port()
    targets = []
    with http_server(www) as port, _sockdir(None) as d:
        path = os.path.join(d, "d.sock")
        p = _start_daemon(path)
        p2 = None
        try:
            targets = [_unshare_target(None) for _ in range(2)]
            for i, t in enumerate(targets):
                r = _attach(path, t.pid, *(["-p", f"127.0.0.1:{hp}:8000"] if i == 0 else []))
                assert r.returncode == 0, _out(r)
                assert _fetch(t.pid, port).returncode == 0
            run = subprocess.Popen(USERNET + ["run", "--daemon-socket", path, "--", "sleep", "60"],
                                   env=ENV, cwd="/", stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            _wait_for(lambda: _status(path)["daemon"]["links"] == 3, 15, "the run's link")
            p.kill()
            p.wait(timeout=10)
            # run --daemon says its network is gone; its command keeps running.
            time.sleep(0.5)
            assert run.poll() is None
            run.send_signal(signal.SIGTERM)
            _o, err = run.communicate(timeout=15)
            assert run.returncode == 128 + signal.SIGTERM, err
            assert (f"daemon: {path} closed (the daemon stopped or died): the command has no "
                    "network any more") in err, err
            for t in targets:
                _wait_for(lambda: "tap0" not in _in(t.pid, "ip", "-o", "link").stdout, 10,
                          "the TAP to vanish with the daemon")
                r = _fetch(t.pid, port)
                assert r.returncode != 0, _out(r)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", hp), timeout=5).close()
            r = _attach(path, targets[0].pid)
            assert r.returncode == 1 and "daemon: not running" in r.stderr, _out(r)

            p2 = _start_daemon(path)
            assert _status(path)["links"] == []
            r = _attach(path, targets[0].pid, "-p", f"127.0.0.1:{hp}:8000")
            assert r.returncode == 0, _out(r)
            r = _fetch(targets[0].pid, port)
            assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
            assert [ln["pid"] for ln in _status(path)["links"]] == [targets[0].pid]
        finally:
            _kill(targets)
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            if p2 is not None:
                rc, err = _stop_daemon(p2)
                assert rc == 0, err


def _vm(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


N_SCALE = 100


@need_root
def test_daemon_100_namespaces_rss(tmp_path):
    """100 namespaces (``unshare -n`` children sleeping) attached with --daemon,
    each fetching a page from the host through 10.0.2.2: one daemon holds them
    all in < 100 MiB (VmRSS and VmHWM). Then every namespace ends and every
    link is freed."""
    tool("curl")
    tool("nsenter")
    www = _page(tmp_path)
    targets = []
    with http_server(www) as port, _daemon() as (daemon, path):
        try:
            targets = [_unshare_target(None, userns=False) for _ in range(N_SCALE)]

            def attach(t):
                return _attach(path, t.pid)
            # A few attach clients at once: each is a Python start (~0.1 s of CPU) and a fork.
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                results = list(ex.map(attach, targets))
            for r in results:
                assert r.returncode == 0, _out(r)

            def fetch(t):
                return _fetch(t.pid, port, userns=False)
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                results = list(ex.map(fetch, targets))
            for r in results:
                assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
            st = _status(path)
            assert st["daemon"]["links"] == N_SCALE
            assert all(ln["rx_bytes"] > 0 for ln in st["links"])
            vm = _vm(daemon.pid)
            print(f"daemon with {N_SCALE} links: VmRSS {vm['VmRSS'] / 2**20:.1f} MiB, "
                  f"VmHWM {vm['VmHWM'] / 2**20:.1f} MiB")
            assert vm["VmRSS"] < 100 * 2**20 and vm["VmHWM"] < 100 * 2**20, vm
            assert st["daemon"]["rss"] == pytest.approx(vm["VmRSS"], rel=0.2)

            _kill(targets)
            def all_freed():
                d = _status(path)["daemon"]
                return d["links"] == 0 and d["closing"] == 0
            _wait_for(all_freed, 30, "every link to be freed")
            fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            assert fds < 30, f"{fds} fds left open in the daemon"
        finally:
            _kill(targets)


@need_root
def test_daemon_netns_path_lives_until_detach(tmp_path):
    """attach --daemon --netns-type=path: no process to watch, so the link
    lives until `usernet daemon detach ID`, which removes its TAP."""
    tool("ip")
    www = _page(tmp_path)
    name = f"s18-daemon-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    try:
        with http_server(www) as port, _daemon() as (_d, path):
            r = _usernet(["attach", "--daemon-socket", path, "--netns-type=path",
                          f"/run/netns/{name}"])
            assert r.returncode == 0, _out(r)
            (ln,) = _status(path)["links"]
            assert ln["pid"] is None and ln["where"] == f"/run/netns/{name}"
            r = subprocess.run(["ip", "netns", "exec", name, "curl", "-sS", "-m", "10",
                                f"http://10.0.2.2:{port}/page.txt"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
            r = _usernet(["daemon", "detach", str(ln["id"]), "--socket", path])
            assert r.returncode == 0, _out(r)
            assert _status(path)["links"] == []
            r = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert "tap0" not in r.stdout, r.stdout
            r = _usernet(["daemon", "detach", str(ln["id"]), "--socket", path])
            assert r.returncode == 1 and f"no link {ln['id']}" in r.stderr, _out(r)
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=TIMEOUT)


HOLD_CONNECTIONS = r"""
import socket, sys, time
held, refused = [], 0
for _ in range(int(sys.argv[2])):
    try:
        held.append(socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=5))
    except OSError:
        refused += 1
print(len(held), refused, flush=True)
time.sleep(30)
"""


@need_root
def test_daemon_one_link_cannot_take_the_open_files(tmp_path):
    """A daemon with few open files (prlimit 300) and two links: one link
    opening 300 connections (more than the daemon has files) gets its share
    (its TCP table's limit, RST past it), and the other link still connects
    while they are held."""
    tool("prlimit")
    tool("curl")
    www = _page(tmp_path)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    hold_port = srv.getsockname()[1]
    targets, holder = [], None
    with http_server(www) as port, _sockdir(None) as d:
        path = os.path.join(d, "d.sock")
        p = subprocess.Popen(["prlimit", "--nofile=300:300"] + USERNET +
                             ["daemon", "--socket", path], env=ENV, cwd="/",
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: os.path.exists(path), 20, "the daemon")
            targets = [_unshare_target(None, userns=False) for _ in range(2)]
            for t in targets:
                r = _attach(path, t.pid)
                assert r.returncode == 0, _out(r)
            limits = [ln["flow_limits"]["tcp"] for ln in _status(path)["links"]]
            assert limits == [((300 - 64) // 2 - 16) * 3 // 4] * 2, limits   # 76 each
            holder = subprocess.Popen(_ns(targets[0].pid, userns=False) + [
                "python3", "-c", HOLD_CONNECTIONS, str(hold_port), "300"],
                stdout=subprocess.PIPE, text=True, cwd="/")
            held, refused = map(int, holder.stdout.readline().split())
            assert held <= limits[0] and refused >= 300 - limits[0], (held, refused)
            assert held >= limits[0] - 8, (held, refused)
            r = _fetch(targets[1].pid, port, userns=False)
            assert r.returncode == 0 and r.stdout == "page of the host\n", _out(r)
        finally:
            _kill(([holder] if holder else []) + targets)
            srv.close()
            rc, err = _stop_daemon(p)
            assert rc == 0, err
