"""usernet.netns / usernet.tap against real namespaces.

One scenario per feature, slirp4netns-style: a target namespace made with
unshare(1) or ip-netns(8), usernet attaches, and ip(8) run inside through
nsenter(1) checks what the kernel now has. The same again as an
unprivileged user (setpriv) with /dev/net/tun opened to 0666 for the test.

No packet leaves the machine: every TAP lives in a namespace the test made,
and nothing routes it anywhere.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
from conftest import reopen_for_nobody

from usernet import netns, tap
from usernet.wire import arp, ether, vnet
from usernet.wire.frame import P_DST_MAC, P_ETHERTYPE, P_PAYLOAD, P_SRC_MAC, parse_frame

pytestmark = pytest.mark.integration

TUN = "/dev/net/tun"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 20


def _tun_usable() -> bool:
    return os.path.exists(TUN) and (os.geteuid() == 0 or os.access(TUN, os.R_OK | os.W_OK))


need_tun = pytest.mark.skipif(not _tun_usable(), reason="needs root or a usable /dev/net/tun (mode 0666)")
need_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns / setpriv)")
need_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")), reason="needs unshare, nsenter, ip"
)


def run(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(argv, timeout=TIMEOUT, **kw)


def in_target(pid, *argv):
    """Run argv inside pid's user+net namespaces (as its root), return stdout."""
    r = run(["nsenter", f"--target={pid}", "--user", "--net", "--preserve-credentials", *argv])
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def target():
    """A process in its own user+net namespace: the 'container'."""
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    try:
        # Wait until it is inside its namespaces (unshare execs sleep afterwards).
        deadline = time.monotonic() + TIMEOUT
        own = os.stat("/proc/self/ns/net").st_ino
        while os.stat(f"/proc/{p.pid}/ns/net").st_ino == own or _comm(p.pid) != "sleep":
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        yield p.pid
    finally:
        p.kill()
        p.wait(timeout=TIMEOUT)


def _comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


@pytest.fixture
def tun_0666():
    """/dev/net/tun opened to everyone (restored when the last pytest session
    that opened it ends: conftest.reopen_for_nobody)."""
    reopen_for_nobody()


def read_frames(fd, timeout):
    """Yield frames (vnet header + Ethernet) read from the TAP until timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                yield os.read(fd, 65536)
            except BlockingIOError:
                pass


# --------------------------------------------------------------------------- attach


@need_tun
@need_tools
def test_attach_pid_configures_and_passes_frames(target):
    fd = netns.attach(pid=target, configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 1500,
                                                           mac=bytes.fromhex("02000a000264")))
    try:
        assert fd >= 0 and os.get_blocking(fd) is False and os.get_inheritable(fd) is False
        tap.set_offload(fd)  # works from outside the namespace, on the passed fd

        addr = in_target(target, "ip", "-4", "addr", "show", "tap0")
        assert "inet 10.0.2.100/24" in addr
        link = in_target(target, "ip", "link", "show", "tap0")
        assert "mtu 1500" in link and ",UP" in link and "02:00:0a:00:02:64" in link
        assert "default via 10.0.2.2 dev tap0" in in_target(target, "ip", "-4", "route")
        assert ",UP" in in_target(target, "ip", "link", "show", "lo")

        # The container pings the gateway: its kernel must ARP for it on our fd.
        ping = subprocess.Popen(
            ["nsenter", f"--target={target}", "--user", "--net", "--preserve-credentials",
             "ping", "-c", "1", "-W", "2", "10.0.2.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            seen = []
            for frame in read_frames(fd, 5):
                flags, gso_type, *_ = vnet.VNET_HDR.unpack_from(frame, 0)
                eth = memoryview(frame)[vnet.VNET_HDR_LEN:]
                p = parse_frame(eth)
                dst, src, etype = p[P_DST_MAC], p[P_SRC_MAC], p[P_ETHERTYPE]
                seen.append(hex(etype))
                if etype == ether.ETH_P_ARP:
                    a = arp.parse_arp(p[P_PAYLOAD])
                    assert a.oper == arp.ARP_REQUEST
                    assert a.tpa == bytes([10, 0, 2, 2]) and a.spa == bytes([10, 0, 2, 100])
                    assert src == bytes.fromhex("02000a000264") and dst == ether.BROADCAST
                    assert gso_type == vnet.VIRTIO_NET_HDR_GSO_NONE
                    break
            else:
                pytest.fail(f"no ARP request for 10.0.2.2 on the TAP; saw ethertypes {seen}")
        finally:
            ping.kill()
            ping.wait(timeout=TIMEOUT)
    finally:
        os.close(fd)


@need_tun
@need_tools
def test_attach_errors_are_one_line(target):
    fd = netns.attach(pid=target)
    try:
        with pytest.raises(netns.NetnsError, match="busy") as ei:
            netns.attach(pid=target)  # tap0 is taken
        assert "\n" not in str(ei.value)
    finally:
        os.close(fd)
    with pytest.raises(netns.NetnsError, match="no such process"):
        netns.attach(pid=2**22 + 12345)
    with pytest.raises(ValueError):
        netns.attach()


@need_root
@need_tools
def test_attach_netns_path():
    name = f"usernet-test-{uuid.uuid4().hex[:8]}"
    assert run(["ip", "netns", "add", name]).returncode == 0
    fd = -1
    try:
        fd = netns.attach(netns_path=f"/run/netns/{name}", tap_name="utap7",
                          configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 9000))
        r = run(["ip", "-n", name, "-4", "addr", "show", "utap7"])
        assert "inet 10.0.2.100/24" in r.stdout and "mtu 9000" in r.stdout
        assert "default via 10.0.2.2" in run(["ip", "-n", name, "route"]).stdout
    finally:
        if fd >= 0:
            os.close(fd)
        run(["ip", "netns", "del", name])


@need_root
@need_tools
def test_attach_netns_path_owned_by_a_user_namespace(tmp_path, target):
    """A bind-mounted netns owned by a child userns and no userns_path:
    attach finds and joins the owner itself (NS_GET_USERNS)."""
    path = tmp_path / "net"
    path.touch()
    assert run(["mount", "--bind", f"/proc/{target}/ns/net", str(path)]).returncode == 0
    fd = -1
    try:
        fd = netns.attach(netns_path=str(path), configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 1500))
        assert "inet 10.0.2.100/24" in in_target(target, "ip", "-4", "addr", "show", "tap0")
    finally:
        if fd >= 0:
            os.close(fd)
        run(["umount", str(path)])


# --------------------------------------------------------------------------- run


def _spawn_and_run(argv, resolv="nameserver 10.0.2.3\n", configure=True):
    """spawn + attach + go + wait; returns (status, stdout+stderr text)."""
    r, w = os.pipe()
    h = netns.spawn_in_new_namespace(argv, resolv_conf_text=resolv, stdout=w, stderr=w)
    os.close(w)
    fd = -1
    try:
        with h:
            if configure:
                fd = netns.attach(pid=h.pid, configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 1500))
            h.go()
            status = h.wait()
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        assert not os.path.exists(f"/proc/{h.pid}"), "child not reaped"
        return status, out.decode()
    finally:
        os.close(r)
        if fd >= 0:
            os.close(fd)


@need_tun
def test_run_exit_status_and_resolv_conf():
    with open("/etc/resolv.conf", "rb") as f:
        host_resolv = f.read()
    status, out = _spawn_and_run(
        ["sh", "-c", "cat /etc/resolv.conf; id -u; ip -4 addr show tap0; ip -4 route; exit 7"],
        resolv="# usernet\nnameserver 10.0.2.3\n",
    )
    assert status == 7
    assert "nameserver 10.0.2.3" in out
    assert out.splitlines()[2] == "0"  # root inside
    assert "inet 10.0.2.100/24" in out and "default via 10.0.2.2" in out
    with open("/etc/resolv.conf", "rb") as f:
        assert f.read() == host_resolv
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("usernet-resolv-")]


@need_tun
@pytest.mark.parametrize(
    "argv,status,msg",
    [
        (["false"], 1, ""),
        (["usernet-no-such-command-xyz"], 127, "command not found"),
        (["/etc/passwd"], 126, "permission denied"),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM, ""),
    ],
)
def test_run_status_like_a_shell(argv, status, msg):
    got, out = _spawn_and_run(argv, configure=False)
    assert got == status
    assert msg in out


@need_tun
def test_run_kill_and_pidfd():
    h = netns.spawn_in_new_namespace(["sleep", "60"], resolv_conf_text=None)
    with h:
        h.go()
        assert h.poll() is None
        assert select.select([h.pidfd], [], [], 0)[0] == []
        h.kill(signal.SIGTERM)
        assert select.select([h.pidfd], [], [], TIMEOUT)[0] == [h.pidfd]
        assert h.wait() == 128 + signal.SIGTERM
        h.kill(signal.SIGKILL)  # after exit: a no-op, not an error


@need_tun
def test_run_child_dies_with_parent_before_go():
    """usernet gone before go(): the waiting child exits, CMD never runs."""
    h = netns.spawn_in_new_namespace(["sh", "-c", "echo ran"], resolv_conf_text=None)
    try:
        os.close(h._ctl_w)  # what the parent's death looks like to the child
        h._ctl_w = -1
        assert h.wait() == 1
    finally:
        h.close()


# --------------------------------------------------------------------------- unprivileged


UNPRIV_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from usernet import netns, tap
    out = {"uid": os.getuid()}

    # run: new namespaces, configured, resolv.conf replaced
    r, w = os.pipe()
    h = netns.spawn_in_new_namespace(
        ["sh", "-c", "cat /etc/resolv.conf; id -u; ip -4 addr show tap0; ip -4 route; exit 5"],
        resolv_conf_text="nameserver 10.0.2.3\\n", stdout=w, stderr=w)
    os.close(w)
    with h:
        fd = netns.attach(pid=h.pid, configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 1500))
        tap.set_offload(fd)
        h.go()
        out["run_status"] = h.wait()
        out["idmap"] = h.idmap
        os.close(fd)
    out["run_out"] = os.read(r, 65536).decode()

    # attach to someone else's namespace (made by unshare, owned by us)
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "30"])
    try:
        while os.readlink(f"/proc/{p.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            time.sleep(0.01)
        time.sleep(0.1)
        fd = netns.attach(pid=p.pid, configure=netns.IfConfig("10.0.2.100", 24, "10.0.2.2", 1500))
        out["attach_addr"] = subprocess.run(
            ["nsenter", f"--target={p.pid}", "--user", "--net", "--preserve-credentials",
             "ip", "-4", "addr", "show", "tap0"], capture_output=True, text=True, timeout=10).stdout
        os.close(fd)
    finally:
        p.kill(); p.wait()
    print(json.dumps(out))
    """
)


@need_root
@need_tools
def test_unprivileged_run_and_attach(tun_0666):
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    env = dict(os.environ, PYTHONPATH=REPO, PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    r = run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", UNPRIV_SCRIPT],
        cwd="/", env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    assert out["run_status"] == 5
    assert out["idmap"] in ("single", "subid")
    lines = out["run_out"].splitlines()
    assert "nameserver 10.0.2.3" in lines and lines[1] == "0"
    assert "inet 10.0.2.100/24" in out["run_out"] and "default via 10.0.2.2" in out["run_out"]
    assert "inet 10.0.2.100/24" in out["attach_addr"]


# --------------------------------------------------------------------------- small pieces


def test_subid_range_parsing(tmp_path):
    p = tmp_path / "subuid"
    p.write_text("alice:100000:65536\n1234:200000:1000\nbroken line\nbob:0:0\n")
    assert netns._subid_range(str(p), 1000, "alice") == (100000, 65536)
    assert netns._subid_range(str(p), 1234, "nobody") == (200000, 1000)
    assert netns._subid_range(str(p), 5, "bob") is None
    assert netns._subid_range(str(tmp_path / "missing"), 5, "bob") is None


def test_tap_constants():
    assert tap.TUNSETIFF == 0x400454CA
    assert tap.TUNSETOFFLOAD == 0x400454D0
    assert tap.TUNSETVNETHDRSZ == 0x400454D8
    assert vnet.VNET_HDR.size == vnet.VNET_HDR_LEN == 10
