"""The compiled front of usernet-slirp4netns (usernet/slirp4netns_front.c).

It writes the ready byte once the TAP exists and is configured, then execs the Python stack,
which takes over the TAP and the API socket. What must hold:

* it is what tools/setup.sh installs as ``.venv/bin/usernet-slirp4netns`` (a C compiler is
  there: setup installs one);
* the namespace it configures is the one the Python entry point configures, field for field;
* nothing the container sends between the ready byte and the stack's start is lost: a ping and
  an HTTP fetch started the moment the byte arrives are answered, and so is an API request;
* whatever it does not handle, or any failure on its way, ends in the Python entry point with
  the untouched arguments: the same status and message as ``python -m usernet.slirp4netns``,
  no ready byte, nothing left behind;
* an unprivileged user gets the same.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import NOBODY, REPO, http_server, need_root, need_tun
from test_slirp4netns_compat import ENTRY, Helper, _api, _drop_netns, _inside, _ipv6_inside, _netns

PYTHON_ENTRY = [sys.executable, "-m", "usernet.slirp4netns"]

pytestmark = [
    pytest.mark.integration, need_root, need_tun,
    pytest.mark.skipif(not os.path.exists(ENTRY), reason="usernet-slirp4netns not installed (tools/setup.sh)"),
]


def _is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


@pytest.fixture
def front():
    if not _is_elf(ENTRY):
        if shutil.which("cc"):
            pytest.fail(f"{ENTRY} is not the compiled front though cc exists: tools/setup.sh "
                        "did not build usernet/slirp4netns_front.c")
        pytest.skip("no C compiler: usernet-slirp4netns is the Python entry point")
    return ENTRY


def _debug_env():
    return dict(os.environ, USERNET_DEBUG="1", PYTHONPATH=REPO)


def _start_front(front, netns, api, *options):
    """The front as Podman starts it (-r 3, -e 4) on ``netns``, --debug logging on."""
    return Helper([front], ["-c", "-r", "{r}", "-e", "{e}", *options, "--netns-type=path",
                            "{netns}", "tap0"], netns, 4, 3, api, env=_debug_env())


def _stop(h, *, via_front=True):
    """Close the exit fd: status 0, and the log says whether the front took the fast path."""
    h.close_exit_fd()
    assert h.wait() == 0
    assert ("event=front" in h.proc.stderr.read().decode()) == via_front


def _tcp_retransmissions(netns):
    """The namespace's TcpRetransSegs (/proc/net/snmp shows the reader's network namespace)."""
    r = subprocess.run(["nsenter", f"--net={netns}", "cat", "/proc/net/snmp"],
                       capture_output=True, text=True, timeout=10, check=True)
    head, values = [ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("Tcp:")]
    return int(values[head.index("RetransSegs")])


def test_setup_installs_the_front(front):
    assert _is_elf(front)
    r = subprocess.run([front, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("slirp4netns version 1.2."), r


FULL = ["--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
        "--enable-ipv6", "-c", "-r", "{r}", "-e", "{e}", "--macaddress", "02:00:00:aa:bb:cc",
        "--cidr=10.0.7.0/24", "--api-socket", "{api}", "--netns-type=path", "{netns}", "tap3"]


def test_front_configures_as_python_does(front, tmp_path):
    """Same argv to the front and to the Python entry point: same addresses, routes, MTU,
    flags and IPv6 set-up; the front's run says (in the debug log) that it took the fast path,
    the Python one does not."""
    seen = {}
    for name, prog in (("front", [front]), ("python", PYTHON_ENTRY)):
        netns = _netns(tmp_path, f"ns-{name}")
        h = Helper(prog, FULL, netns, 4, 3, str(tmp_path / f"{name}.sock"), env=_debug_env())
        try:
            assert h.ready() == b"1"
            seen[name] = (_inside(netns), _ipv6_inside(netns, "tap3"))
            h.close_exit_fd()
            assert h.wait() == 0
            err = h.proc.stderr.read().decode()
            assert ("event=front" in err) == (name == "front"), err[-2000:]
            assert "Traceback" not in err
        finally:
            h.cleanup()
            _drop_netns(netns)
    assert seen["front"] == seen["python"]
    (addrs, routes, links), (addrs6, gws6) = seen["front"]
    assert ("tap3", "10.0.7.100", 24) in addrs
    assert ("default", "10.0.7.2", "tap3", None) in routes      # proto boot: ip -j omits it
    assert ("tap3", 65520, True) in links and ("lo", 65536, True) in links
    assert addrs6 == [("fd00::/64", "eui64")] and gws6 == ["fe80::2"]


def test_traffic_sent_at_the_ready_byte_is_answered(front, tmp_path):
    """The moment the byte arrives (the Python stack is still starting): a ping, an HTTP
    fetch through 10.0.2.2 and an API request are all answered, none lost or refused."""
    netns = _netns(tmp_path, "ns")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f").write_bytes(b"front" * 1000)
    api = str(tmp_path / "api.sock")
    with http_server(tmp_path / "www") as port:
        h = _start_front(front, netns, api, "--api-socket", "{api}")
        try:
            assert h.ready() == b"1"
            ns = ["nsenter", f"--net={netns}"]
            ping = subprocess.Popen(ns + ["ping", "-c", "1", "-W", "10", "10.0.2.2"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            curl = subprocess.Popen(ns + ["curl", "-sS", "--max-time", "20",
                                          f"http://10.0.2.2:{port}/f"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            reply = _api(api, b'{"execute": "list_hostfwd"}')
            assert b'"entries"' in reply, reply
            out, _ = ping.communicate(timeout=30)
            body, cerr = curl.communicate(timeout=30)
            # ping -c 1 sends one echo request and never repeats it: it was queued, not lost.
            assert ping.returncode == 0 and "1 received" in out, out
            assert curl.returncode == 0 and body == b"front" * 1000, cerr
            # Nor was the SYN (or any segment) lost and sent again.
            assert _tcp_retransmissions(netns) == 0
            _stop(h)
            assert not os.path.exists(api)
        finally:
            h.cleanup()
            _drop_netns(netns)


def _prog_free(text):
    """Messages with the program's own name taken out (glibc-style "PROG: ...")."""
    return re.sub(r"^\S*(usernet-slirp4netns|slirp4netns\.py|python[0-9.]*)\b", "PROG", text,
                  flags=re.M)


def _start(prog, argv):
    """Run ``prog ARGV -r FD`` to its end; (status, stderr, what came on the ready fd)."""
    r, w = os.pipe()
    p = subprocess.run([*prog, "-r", str(w), *argv], pass_fds=(w,), capture_output=True,
                       text=True, timeout=60, cwd="/")
    os.close(w)
    got = os.read(r, 16)
    os.close(r)
    return p.returncode, _prog_free(p.stderr), got


def _cases(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    notsock = tmp_path / "plain-file"
    notsock.write_text("keep me")
    return {
        "gone pid": ["-c", str(dead.pid), "tap0"],
        "api dir missing": ["-c", "--api-socket", str(tmp_path / "no" / "api.sock"), "1", "tap0"],
        "api path a file": ["-c", "--api-socket", str(notsock), "1", "tap0"],
        "tap name too long": ["-c", "1", "t" * 20],
        "mtu below IPv6's": ["-6", "-c", "-m", "1200", "1", "tap0"],
    }


@pytest.mark.parametrize("case", ["gone pid", "api dir missing", "api path a file",
                                  "tap name too long", "mtu below IPv6's"])
def test_failures_are_python_s_own(front, tmp_path, case):
    """The front gives up on these (it cannot tell, or finds out on its way) and the Python
    entry point says what is wrong: same status and message as running it directly, no ready
    byte, nothing left behind."""
    argv = _cases(tmp_path)[case]
    if case == "api path a file":
        argv = argv[:-2] + [str(os.getpid()), "tap0"]    # a live target: the path is the fault
    f_status, f_err, f_ready = _start([front], argv)
    p_status, p_err, p_ready = _start(PYTHON_ENTRY, argv)
    assert f_status == p_status == 1, (f_err, p_err)
    assert f_err == p_err and f_err.strip(), (f_err, p_err)
    assert f_ready == p_ready == b""
    assert "Traceback" not in f_err
    if case == "api path a file":
        assert (tmp_path / "plain-file").read_text() == "keep me"
    if case == "api dir missing":
        assert not (tmp_path / "no").exists()


def test_options_it_does_not_handle_still_work(front, tmp_path):
    """--pcap is usernet's own and left to Python whole: the capture is written."""
    netns = _netns(tmp_path, "ns")
    pcap = tmp_path / "c.pcap"
    h = _start_front(front, netns, str(tmp_path / "unused.sock"), f"--pcap={pcap}")
    try:
        assert h.ready() == b"1"
        r = subprocess.run(["nsenter", f"--net={netns}", "ping", "-c", "1", "-W", "10",
                            "10.0.2.2"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout
        _stop(h, via_front=False)
        assert pcap.stat().st_size > 100
    finally:
        h.cleanup()
        _drop_netns(netns)


def test_unprivileged_user(front, unprivileged):
    """uid 65534, its own user and network namespace (as rootless Podman): ready, configured,
    and a ping answered."""
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="usernet-front-"))
    os.chmod(tmp_path, 0o777)       # pytest's own tmp_path is under a 0700 directory
    try:
        _unprivileged_run(front, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _python_for_nobody():
    """An interpreter uid 65534 can exec from a shell, and the environment that finds usernet
    and its packages: the venv's own when it can (its base may live under /root, which only a
    direct exec from setpriv gets through), else the system's python of the same version."""
    probe = subprocess.run(NOBODY + ["sh", "-c", f"exec {sys.executable} -c pass"],
                           capture_output=True, timeout=30, cwd="/")
    if probe.returncode == 0:
        return sys.executable, ""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(f"/usr/bin/{ver}", os.X_OK):
        pytest.skip(f"uid 65534 cannot run {sys.executable} and there is no /usr/bin/{ver}")
    site = os.path.join(REPO, ".venv", "lib", ver, "site-packages")
    return f"/usr/bin/{ver}", f"{REPO}:{site}"


def _unprivileged_run(front, tmp_path):
    py, path = _python_for_nobody()
    script = (
        "unshare --user --map-root-user --net sleep 60 & T=$!; "
        "while [ \"$(readlink /proc/$T/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ]; do "
        "sleep 0.01; done; "
        f"exec 3>{tmp_path}/ready; "
        f"USERNET_PYTHON={py} PYTHONPATH={path} {front} -c -r 3 $T tap0 2>{tmp_path}/err & H=$!; "
        f"for i in $(seq 200); do [ -s {tmp_path}/ready ] && break; sleep 0.05; done; "
        "nsenter --preserve-credentials -U -n -t $T ping -c 1 -W 10 10.0.2.2; rc=$?; "
        "kill $H $T; wait; exit $rc")
    r = subprocess.run(NOBODY + ["sh", "-c", script], capture_output=True, text=True,
                       timeout=90, cwd="/")
    err = (tmp_path / "err").read_text() if (tmp_path / "err").exists() else ""
    assert r.returncode == 0, (r.stdout, r.stderr, err)
    assert (tmp_path / "ready").read_text() == "1"
    assert "1 received" in r.stdout


def test_an_interpreter_it_cannot_run_is_said_before_any_ready_byte(front, tmp_path):
    """USERNET_PYTHON naming nothing runnable: one line naming it and the fix, status 1, and
    no ready byte (Podman must not start a container whose network nobody would serve)."""
    r, w = os.pipe()
    p = subprocess.run([front, "-c", "-r", str(w), str(os.getpid()), "tap0"], pass_fds=(w,),
                       capture_output=True, text=True, timeout=30, cwd="/",
                       env=dict(os.environ, USERNET_PYTHON=str(tmp_path / "no-python")))
    os.close(w)
    assert os.read(r, 16) == b""
    os.close(r)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "no-python" in p.stderr and "USERNET_PYTHON" in p.stderr


def test_sigterm_at_the_ready_byte_is_a_clean_exit(front, tmp_path):
    """Podman may stop the helper the moment it has read the byte, while Python is still
    starting: the signal waits for the stack's handler, so the exit is 0 and the API socket is
    removed, every time."""
    for i in range(3):
        netns = _netns(tmp_path, f"ns{i}")
        api = str(tmp_path / f"{i}.sock")
        h = _start_front(front, netns, api, "--api-socket", "{api}")
        try:
            assert h.ready() == b"1"
            h.proc.terminate()
            assert h.wait() == 0
            assert "event=front" in h.proc.stderr.read().decode()
            assert not os.path.exists(api)
        finally:
            h.cleanup()
            _drop_netns(netns)


def test_a_daemon_that_is_not_there_is_python_s_error(front, tmp_path):
    """--daemon-socket naming no daemon: the front leaves it to Python, which says so (same
    status and words as the Python entry point), and no ready byte."""
    argv = [f"--daemon-socket={tmp_path / 'none.sock'}", "-c", str(os.getpid()), "tap0"]
    f_status, f_err, f_ready = _start([front], argv)
    p_status, p_err, p_ready = _start(PYTHON_ENTRY, argv)
    assert f_status == p_status == 1 and f_err == p_err and "none.sock" in f_err, (f_err, p_err)
    assert f_ready == p_ready == b""
