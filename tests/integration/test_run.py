"""``usernet run`` and ``usernet attach`` end to end (issue 3 "Done when").

Real namespaces, real clients (ip, ping, nsenter); as root and as uid 65534.
No packet leaves the machine: the only target is the gateway 10.0.2.2.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import (wait_for, NOBODY, REPO, USERNET, need_root, need_tun, reopen_for_nobody, tool,
                      usernet_run)

pytestmark = [pytest.mark.integration, need_tun]

TIMEOUT = 30
ENV = dict(os.environ, PYTHONPATH=REPO)


def _user(request, user):
    if user == "nobody":
        request.getfixturevalue("unprivileged")
        reopen_for_nobody()
    return user




def _out(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def _ping_ok(text, count):
    seqs = [int(m) for m in re.findall(r"icmp_seq=(\d+)", text)]
    assert seqs == list(range(1, count + 1)), text
    assert "DUP" not in text and "wrong data" not in text, text
    assert f"{count} received" in text, text


def _procs_with_cmdline(argv):
    """PIDs whose cmdline is exactly ``argv``."""
    want = "\0".join(argv).encode() + b"\0"
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if f.read() == want:
                    out.append(int(d))
        except OSError:
            pass
    return out


def _netns_holders(ns_link):
    """PIDs holding network namespace ``ns_link`` ("net:[N]") as their own or as an open fd."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{d}/ns/net") == ns_link:
                out.add(int(d))
                continue
            for fd in os.listdir(f"/proc/{d}/fd"):
                if os.readlink(f"/proc/{d}/fd/{fd}") == ns_link:
                    out.add(int(d))
                    break
        except OSError:
            pass
    return out


_wait_for = wait_for


def _stop(p, sig=signal.SIGTERM, timeout=10):
    """Signal ``p`` and wait; returns (rc, stderr). Kills it if it will not go."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        _out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _out, err = p.communicate(timeout=10)
        raise AssertionError(f"usernet did not exit within {timeout}s of signal {sig}: {err}")
    return p.returncode, err


# ----------------------------------------------------------------------- run
@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_configures_tap_and_pings_gateway(request, user):
    """run: tap0 10.0.2.100/24 at the default MTU, default route via .2, lo up, ping .2 works."""
    tool("ping")
    user = _user(request, user)
    r = usernet_run([], ["sh", "-c", "ip -4 -o addr show; echo @@@; ip -4 route; echo @@@; "
                                     "ip -o link show; echo @@@; ping -c 3 -W 3 10.0.2.2"],
                    user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    addrs, routes, links, ping = r.stdout.split("@@@\n")
    assert re.search(r"\btap0\s+inet 10\.0\.2\.100/24\b", addrs), addrs
    assert re.search(r"\blo\s+inet 127\.0\.0\.1/8\b", addrs), addrs
    assert re.search(r"^default via 10\.0\.2\.2 dev tap0", routes, re.M), routes
    assert re.search(r"\d+: tap0: <[^>]*\bUP\b[^>]*> mtu 1500\b", links), links
    assert re.search(r"\d+: lo: <[^>]*\bUP\b[^>]*>", links), links
    _ping_ok(ping, 3)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_mtu_and_cidr(request, user):
    """run --mtu 9000 --cidr 10.9.0.0/24: tap0 10.9.0.100/24 mtu 9000, route via 10.9.0.2, ping it."""
    tool("ping")
    user = _user(request, user)
    r = usernet_run(["--mtu", "9000", "--cidr", "10.9.0.0/24"],
                    ["sh", "-c", "ip -4 -o addr show tap0; ip -4 route; ip -o link show tap0; "
                                 "ping -c 3 -W 3 -s 8000 10.9.0.2"],
                    user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    assert "inet 10.9.0.100/24" in r.stdout, r.stdout
    assert re.search(r"^default via 10\.9\.0\.2 dev tap0", r.stdout, re.M), r.stdout
    assert re.search(r"tap0: <[^>]*> mtu 9000\b", r.stdout), r.stdout
    _ping_ok(r.stdout, 3)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_resolv_conf_inside_only(request, user):
    """run: /etc/resolv.conf inside names only 10.0.2.3; the host's file is untouched."""
    user = _user(request, user)
    path = os.path.realpath("/etc/resolv.conf")
    with open(path, "rb") as f:
        before = f.read()
    st = os.stat(path)
    mounts_before = _resolv_mounts()
    r = usernet_run([], ["cat", "/etc/resolv.conf"], user=user, timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    servers = re.findall(r"^\s*nameserver\s+(\S+)", r.stdout, re.M)
    assert servers == ["10.0.2.3"], r.stdout
    with open(path, "rb") as f:
        assert f.read() == before
    st2 = os.stat(path)
    assert (st2.st_ino, st2.st_mtime_ns, st2.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)
    assert _resolv_mounts() == mounts_before


def _resolv_mounts():
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if "resolv.conf" in line]


def test_debug_logs_start_line_and_counter_moves():
    """One start line names the namespace, TAP, addresses and MTU; --debug
    adds periodic 'counters moved' lines naming what the stack did. Every
    line is key=value, ts, level and event first."""
    r = usernet_run(["--debug"], ["sh", "-c", "ping -c 2 -i 0.3 10.0.2.2 >/dev/null; sleep 2.5"],
                    timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    lines = r.stderr.splitlines()
    assert all(re.match(r"ts=\S+Z level=(debug|info|warn|error) event=\w+( |$)", ln)
               for ln in lines), r.stderr[-2000:]
    start = [ln for ln in lines if " event=attached " in ln]
    assert len(start) == 1 and "tap=tap0 addr=10.0.2.100/24" in start[0] and "mtu=1500" in start[0]
    moved = [ln for ln in lines if " event=counters_moved " in ln]
    assert moved and '"icmp_echo_local_reply":2' in moved[0], r.stderr[-2000:]


def test_run_is_quiet_unless_verbose():
    """Success prints nothing; -v adds the start line."""
    r = usernet_run([], ["true"], timeout=TIMEOUT)
    assert r.returncode == 0 and r.stderr == "", _out(r)
    r = usernet_run(["-v"], ["true"], timeout=TIMEOUT)
    assert r.returncode == 0, _out(r)
    (line,) = r.stderr.splitlines()
    assert " level=info event=attached " in line and "addr=10.0.2.100/24" in line


def test_run_exit_status_false():
    """run -- false: usernet's exit status is the command's (1)."""
    r = usernet_run([], ["false"], timeout=TIMEOUT)
    assert r.returncode == 1, _out(r)
    assert "Traceback" not in r.stderr


def test_run_exit_status_and_nothing_left():
    """run -- sh -c 'exit 7': status 7, and no process holds the namespace afterwards."""
    r = usernet_run([], ["sh", "-c", "readlink /proc/self/ns/net; exit 7"], timeout=TIMEOUT)
    assert r.returncode == 7, _out(r)
    ns = r.stdout.strip()
    assert re.fullmatch(r"net:\[\d+\]", ns), r.stdout
    assert ns != os.readlink("/proc/self/ns/net")
    _wait_for(lambda: not _netns_holders(ns), 5, f"namespace {ns} to be released")


def test_run_command_not_found():
    """run -- no-such-command: a non-zero status (127) and one line, no traceback."""
    r = usernet_run([], ["usernet-no-such-command-xyz"], timeout=TIMEOUT)
    assert r.returncode == 127, _out(r)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_sigterm_stops_command_and_exits(request, user):
    """SIGTERM to `usernet run -- sleep`: exits within seconds (143), the sleep and its netns gone."""
    user = _user(request, user)
    dur = f"31.{random.randrange(10000, 99999)}"
    argv = USERNET + ["run", "--", "sleep", dur]
    if user == "nobody":
        argv = NOBODY + argv
    p = subprocess.Popen(argv, env=ENV, cwd="/", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        pids = _wait_for(lambda: _procs_with_cmdline(["sleep", dur]), 20, "the sleep to start")
        ns = os.readlink(f"/proc/{pids[0]}/ns/net")
        assert ns != os.readlink("/proc/self/ns/net")
        t0 = time.monotonic()
        rc, err = _stop(p, timeout=5)
        assert time.monotonic() - t0 < 5
        assert rc == 143, err
        assert "Traceback" not in err
        _wait_for(lambda: not _procs_with_cmdline(["sleep", dur]), 5, "the sleep to be gone")
        _wait_for(lambda: not _netns_holders(ns), 5, f"namespace {ns} to be released")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        for pid in _procs_with_cmdline(["sleep", dur]):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_kills_what_the_command_left_behind(request, user):
    """run -- sh -c 'sleep N &': when sh exits, the background sleep dies with
    the command's PID namespace; the status stays the command's."""
    user = _user(request, user)
    dur = f"41.{random.randrange(10000, 99999)}"
    try:
        r = usernet_run([], ["sh", "-c", f"sleep {dur} & echo pid=$$; exit 5"], user=user,
                        timeout=TIMEOUT)
        assert r.returncode == 5, _out(r)
        assert "pid=2" in r.stdout, _out(r)     # sh is PID 2, under our init
        _wait_for(lambda: not _procs_with_cmdline(["sleep", dur]), 5, "the sleep to be gone")
    finally:
        for pid in _procs_with_cmdline(["sleep", dur]):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_run_sigterm_escalates_to_sigkill(request, user):
    """A command that ignores SIGTERM is killed (with everything in its
    namespace) once --kill-grace has passed: status 137."""
    user = _user(request, user)
    dur = f"42.{random.randrange(10000, 99999)}"
    argv = USERNET + ["run", "--kill-grace", "1", "--", "sh", "-c", f"trap '' TERM; sleep {dur}"]
    if user == "nobody":
        argv = NOBODY + argv
    p = subprocess.Popen(argv, env=ENV, cwd="/", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _procs_with_cmdline(["sleep", dur]), 20, "the sleep to start")
        rc, err = _stop(p, timeout=15)
        assert rc == 137, err
        assert "did not exit 1s after being told to stop" in err, err
        assert "Traceback" not in err
        _wait_for(lambda: not _procs_with_cmdline(["sleep", dur]), 5, "the sleep to be gone")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        for pid in _procs_with_cmdline(["sleep", dur]):
            os.kill(pid, signal.SIGKILL)


_STUCK_WRITER = """
import socket, sys
s = socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=5)
s.setblocking(False)
sent = 0
for _ in range(4000):
    try:
        sent += s.send(b"x" * 65536)
    except BlockingIOError:
        break
print("sent", sent, flush=True)
"""


def test_sigusr1_during_exit_drain(tmp_path):
    """The command exits with data its kernel is still sending to a host peer
    that never reads: usernet drains (bounded). SIGUSR1 then prints the
    counters and does not kill usernet: exit status 0 (the command's), the
    API socket removed."""
    import socket as _socket
    srv = _socket.socket()
    srv.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    api = tmp_path / "api" / "usernet.sock"
    api.parent.mkdir()
    argv = USERNET + ["run", "--api-socket", str(api), "--", sys.executable, "-c",
                      _STUCK_WRITER, str(port)]
    p = subprocess.Popen(argv, env=ENV, cwd="/", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("sent "), line
        assert int(line.split()[1]) > 0
        time.sleep(0.5)                         # the command is gone; usernet drains
        assert p.poll() is None, "usernet did not drain"
        for _ in range(3):
            p.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
        _out_, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "event=counters counters={" in err, err
        assert "Traceback" not in err
        assert not api.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        srv.close()


# -------------------------------------------------------------------- attach
def _unshare_target(user):
    argv = ["unshare", "--user", "--map-root-user", "--net", "sleep", "60"]
    if user == "nobody":
        argv = NOBODY + argv
    p = subprocess.Popen(argv, cwd="/")
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


def _in_target(pid, *argv, user=None, timeout=TIMEOUT):
    """Run argv in pid's user+net namespaces as their creator (uid 0 inside)."""
    pre = NOBODY if user == "nobody" else []
    return subprocess.run(pre + ["nsenter", f"--target={pid}", "--user", "--net",
                                 "--preserve-credentials", *argv],
                          capture_output=True, text=True, timeout=timeout)


def _start_attach(args, user=None):
    argv = USERNET + ["attach", *args]
    if user == "nobody":
        argv = NOBODY + argv
    return subprocess.Popen(argv, env=ENV, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_attach_pid_ping_and_sigterm(request, user):
    """attach PID (unshare --user --map-root-user --net): ping .2 from inside; SIGTERM -> exit 0."""
    tool("unshare")
    tool("nsenter")
    tool("ping")
    user = _user(request, user)
    target = _unshare_target(user)
    p = None
    try:
        p = _start_attach([str(target.pid)], user)

        def configured():
            assert p.poll() is None, p.stderr.read()
            r = _in_target(target.pid, "ip", "-4", "-o", "addr", "show", "dev", "tap0", user=user)
            return "inet 10.0.2.100/24" in r.stdout
        _wait_for(configured, 20, "tap0 to be configured")
        r = _in_target(target.pid, "ip", "-4", "route", user=user)
        assert re.search(r"^default via 10\.0\.2\.2 dev tap0", r.stdout, re.M), r.stdout
        r = _in_target(target.pid, "ping", "-c", "2", "-W", "3", "10.0.2.2", user=user)
        assert r.returncode == 0, _out(r)
        _ping_ok(r.stdout, 2)
        t0 = time.monotonic()
        rc, err = _stop(p, timeout=5)
        assert rc == 0, err
        assert time.monotonic() - t0 < 5
        assert "Traceback" not in err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        target.kill()
        target.wait(timeout=10)


def test_attach_pid_exits_when_target_exits():
    """attach PID: when the target process exits, usernet stops by itself (status 0)."""
    tool("unshare")
    tool("nsenter")
    target = _unshare_target(None)
    p = None
    try:
        p = _start_attach([str(target.pid)])
        _wait_for(lambda: "10.0.2.100" in _in_target(target.pid, "ip", "-4", "-o", "addr").stdout,
                  20, "tap0 to be configured")
        target.kill()
        target.wait(timeout=10)
        try:
            _, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError("usernet attach did not exit after its target died")
        assert p.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        if target.poll() is None:
            target.kill()
            target.wait(timeout=10)


@need_root
def test_attach_netns_path():
    """attach --netns-type=path /run/netns/NAME (ip netns add): ping .2 via ip netns exec; SIGTERM -> 0."""
    tool("ip")
    tool("ping")
    name = "usernet-t-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    p = None
    try:
        p = _start_attach(["--netns-type=path", f"/run/netns/{name}"])

        def configured():
            assert p.poll() is None, p.stderr.read()
            r = subprocess.run(["ip", "netns", "exec", name, "ip", "-4", "-o", "addr", "show"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            return "tap0    inet 10.0.2.100/24" in re.sub(r"\s+inet", "    inet", r.stdout)
        _wait_for(configured, 20, "tap0 to be configured")
        r = subprocess.run(["ip", "netns", "exec", name, "ping", "-c", "2", "-W", "3", "10.0.2.2"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, _out(r)
        _ping_ok(r.stdout, 2)
        t0 = time.monotonic()
        rc, err = _stop(p, timeout=5)
        assert rc == 0, err
        assert time.monotonic() - t0 < 5
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], timeout=TIMEOUT)


# ----------------------------------------------------------------- bad flags
BAD = [
    (["run", "--mtu", "10", "--", "true"], "--mtu"),
    (["run", "--mtu", "x", "--", "true"], "--mtu"),
    (["run", "--cidr", "10.0.2.1/24", "--", "true"], "--cidr"),
    (["run", "--cidr", "10.0.2.0/30", "--", "true"], "--cidr"),
    (["run", "--macaddress", "zz", "--", "true"], "--macaddress"),
    (["run", "-p", "99999:80", "--", "true"], "-p"),
    (["attach", "notapid"], "PID"),
    (["run"], "command"),
    (["run", "--"], "command"),
]


@pytest.mark.parametrize("argv,names", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_one_line(argv, names):
    """A bad flag: exit status 1, exactly one stderr line naming it, no traceback, nothing run."""
    r = subprocess.run(USERNET + argv, capture_output=True, text=True, timeout=TIMEOUT, env=ENV,
                       cwd="/")
    assert r.returncode == 1, _out(r)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert names in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
