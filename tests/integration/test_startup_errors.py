"""Every start-up failure is one line naming the thing and the fix, and exit status 1.

For ``usernet run/attach/fwd`` and the slirp4netns entry point. The machine's own settings are
never touched: each broken set-up is made where only the test sees it --

* no ``/dev/net/tun``: a private mount namespace with a tmpfs over ``/dev/net``;
* ``/dev/net/tun`` mode 0600: a private mount namespace with a 0600 node bind-mounted over it,
  and usernet run as uid 65534;
* user namespaces disabled: ``user.max_user_namespaces`` is per user namespace, so it is set to
  0 inside a user namespace made for the test (its children are then refused);
* ``ping_group_range`` closed: it is per network namespace, and a new one starts closed
  (``1 0``), so usernet runs as uid 65534 in a fresh network namespace;
* the rest (API socket paths, a busy port, a dead PID, a missing netns path, an API client
  pointed at nothing) need nothing special.

The sysctls that cannot be faked per namespace (``kernel.unprivileged_userns_clone``,
AppArmor's) are covered by tests/unit/test_diagnose.py with fake /proc/sys files.
"""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import NOBODY, REPO, USERNET, need_root, need_tun

ENTRY = os.path.join(REPO, ".venv", "bin", "usernet-slirp4netns")
S4 = [ENTRY] if os.path.exists(ENTRY) else [sys.executable, "-m", "usernet", "slirp4netns"]
ENV = dict(os.environ, PYTHONPATH=REPO)
TIMEOUT = 60

pytestmark = [pytest.mark.integration]


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=ENV,
                          cwd="/", stdin=subprocess.DEVNULL, **kw)


def the_line(r, *words, status=1):
    """The one line of stderr (the "attached" progress line aside), containing ``words`` and
    a fix; the exit status is ``status``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "attached to" not in ln]
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("usernet: "), line
    for w in words:
        assert w in line, (w, line)
    assert "; fix: " in line, line
    return line


@pytest.fixture
def target():
    """A process in a network namespace of its own (a PID to attach to)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a network namespace")
    p = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        for _ in range(500):
            if os.readlink(f"/proc/{p.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            subprocess.run(["sleep", "0.01"])
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _shell(script):
    """``script`` in a private mount namespace (mounts made there vanish with it)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def _q(argv):
    return " ".join(f"'{a}'" for a in argv)


@pytest.fixture(scope="module")
def nobody_can_run():
    if os.geteuid() != 0:
        pytest.skip("needs root to act as uid 65534")
    probe = run(NOBODY + [sys.executable, "-c", "import usernet.cli"])
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot import usernet from {REPO}: {probe.stderr[-200:]}")


# ---------------------------------------------------------------- /dev/net/tun
@need_root
@pytest.mark.parametrize("front", ["run", "slirp4netns"])
def test_no_dev_net_tun(front, target):
    cmd = USERNET + ["run", "--", "true"] if front == "run" else S4 + ["-c", str(target), "tap0"]
    r = run(_shell(f"mount -t tmpfs none /dev/net && exec {_q(cmd)}"))
    the_line(r, "/dev/net/tun does not exist", "modprobe tun")


@need_root
def test_dev_net_tun_mode_0600_for_an_unprivileged_user(nobody_can_run, tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    os.chmod(tmp_path, 0o755)
    r = run(_shell(f"mount -t tmpfs -o mode=0755 none {dev} && mknod -m 0600 {dev}/tun c 10 200 "
                   f"&& mount --bind {dev}/tun /dev/net/tun "
                   f"&& exec {_q(NOBODY + USERNET + ['run', '--', 'true'])}"))
    the_line(r, "/dev/net/tun: permission denied", "mode 0600", "chmod 0666 /dev/net/tun")


# ---------------------------------------------------------------- user namespaces
@need_root
@need_tun
def test_user_namespaces_disabled():
    script = ("echo 0 > /proc/sys/user/max_user_namespaces && "
              f"exec {_q(USERNET + ['run', '--', 'true'])}")
    r = run(["unshare", "--user", "--map-root-user", "sh", "-c", script])
    the_line(r, "cannot create a user namespace", "user.max_user_namespaces = 0",
             "sysctl -w user.max_user_namespaces=")


# ---------------------------------------------------------------- ping (a warning)
@need_root
def test_ping_group_range_closed_is_a_warning(nobody_can_run):
    # A new network namespace starts with ping_group_range "1 0"; /dev/net/tun must be usable
    # by uid 65534 without opening the machine's: a 0666 node bind-mounted in a mount namespace.
    script = ("d=$(mktemp -d) && mount -t tmpfs -o mode=0755 none $d && "
              "mknod -m 0666 $d/tun c 10 200 && mount --bind $d/tun /dev/net/tun && "
              "ip link set lo up && "
              f"exec {_q(NOBODY + USERNET + ['run', '--', 'true'])}")
    r = run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script])
    # A warning, not an error: one log line (key=value, usernet/log.py), status 0.
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert "level=warn" in line, line
    for w in ('ping from the container will answer \\"prohibited\\"',
              "net.ipv4.ping_group_range (1 0)", "gid 65534", "; fix: ",
              "sysctl -w net.ipv4.ping_group_range="):
        assert w in line, (w, line)


# ---------------------------------------------------------------- API socket
LONG = "/tmp/" + "x" * 110 + ".sock"


@need_tun
@pytest.mark.parametrize("path,words", [
    (LONG, ["API socket path too long (120 bytes; the limit is 107)"]),
    ("/nonexistent-ux/dir/api.sock", ["API socket directory /nonexistent-ux/dir does not exist",
                                      "mkdir -p"]),
], ids=["too-long", "no-directory"])
def test_api_socket_path_run(path, words):
    the_line(run(USERNET + ["run", "--api-socket", path, "--", "true"]), *words)


@need_root
@need_tun
def test_api_socket_directory_missing_attach_and_slirp4netns(target):
    words = ["API socket directory /nonexistent-ux does not exist"]
    the_line(run(USERNET + ["attach", "--api-socket", "/nonexistent-ux/a.sock", str(target)]),
             *words)
    the_line(run(S4 + ["-c", "-a", "/nonexistent-ux/a.sock", str(target), "tap0"]), *words)
    the_line(run(S4 + ["-c", "-a", LONG, str(target), "tap0"]), "API socket path too long")


def test_api_client_pointed_at_nothing(tmp_path):
    missing = str(tmp_path / "missing.sock")
    the_line(run(USERNET + ["fwd", "list", "--api-socket", missing]),
             f"API socket {missing} does not exist")
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))          # bound, never listening: what a killed usernet leaves
    the_line(run(USERNET + ["fwd", "add", "--api-socket", str(stale), "8080:80"]),
             f"nothing listens on API socket {stale}")


# ---------------------------------------------------------------- ports
@need_tun
def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        hp = busy.getsockname()[1]
        r = run(USERNET + ["run", "-p", f"127.0.0.1:{hp}:80", "--", "true"])
    the_line(r, f"cannot publish tcp port 127.0.0.1:{hp}: Address already in use",
             "choose another host port")


# ---------------------------------------------------------------- targets
def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid            # reaped: gone (reuse within the test is vanishingly unlikely)


@need_tun
def test_attach_to_a_dead_pid():
    pid = _dead_pid()
    the_line(run(USERNET + ["attach", str(pid)]), f"no such process: {pid}")
    if shutil.which("unshare"):
        the_line(run(S4 + ["-c", str(pid), "tap0"]), f"no such process: {pid}")


@need_tun
def test_attach_to_a_missing_netns_path():
    the_line(run(USERNET + ["attach", "--netns-type", "path", "/run/netns/usernet-ux2-none"]),
             "network namespace /run/netns/usernet-ux2-none does not exist")


@need_root
def test_attach_to_a_namespace_of_another_user(nobody_can_run):
    # uid 65534 may not open root's /proc/1/ns/net. /dev/net/tun is made usable for it in a
    # private mount namespace (a 0666 node), so the namespace is what fails, not the device.
    script = ("d=$(mktemp -d) && mount -t tmpfs -o mode=0755 none $d && "
              "mknod -m 0666 $d/tun c 10 200 && mount --bind $d/tun /dev/net/tun && "
              f"exec {_q(NOBODY + USERNET + ['attach', '1'])}")
    the_line(run(_shell(script)), "cannot open network namespace /proc/1/ns/net: permission denied",
             "run usernet as the user who owns the container")


@need_root
def test_attach_with_a_missing_userns_path(target):
    the_line(run(USERNET + ["attach", "--userns-path", "/run/usernet-ux2-no-userns", str(target)]),
             "user namespace /run/usernet-ux2-no-userns does not exist")
