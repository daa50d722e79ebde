"""The DHCP server end to end: a real DHCP client (busybox udhcpc) on an
unconfigured TAP.

``usernet run`` configures the TAP itself, so the client runs in a namespace
made by ``unshare --user --map-root-user --net`` that usernet joined with
``attach --no-configure``. No packet leaves the machine: the TAP is the
namespace's only link and its only peer is usernet.
"""

import os
import re
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import REPO, USERNET, need_tun, tool, wait_for

pytestmark = [pytest.mark.integration, need_tun]

TIMEOUT = 30
ENV = dict(os.environ, PYTHONPATH=REPO)

SCRIPT = """#!/bin/sh
# udhcpc calls this with deconfig, then bound (or leasefail).
echo "event=$1"
if [ "$1" = bound ]; then
    echo "ip=$ip"
    echo "subnet=$subnet"
    echo "router=$router"
    echo "dns=$dns"
    echo "mtu=$mtu"
    echo "lease=$lease"
    echo "serverid=$serverid"
    ip addr add "$ip/$mask" dev "$interface"
    ip route add default via "$router" dev "$interface"
fi
"""


def _in_target(pid, *argv, timeout=TIMEOUT):
    return subprocess.run(["nsenter", f"--target={pid}", "--user", "--net",
                           "--preserve-credentials", *argv],
                          capture_output=True, text=True, timeout=timeout)


_wait_for = wait_for


@pytest.mark.parametrize("args,net,mtu", [
    ([], "10.0.2", 1500),
    (["--cidr", "10.9.0.0/24", "--mtu", "9000"], "10.9.0", 9000),
], ids=["default", "cidr-mtu"])
def test_udhcpc_gets_lease(args, net, mtu):
    """udhcpc on an unconfigured tap0 is offered .100/24, router .2, DNS .3 (and the MTU); the
    lease it configures reaches the gateway (ping)."""
    for t in ("busybox", "unshare", "nsenter", "ip", "ping"):
        tool(t)
    own = os.stat("/proc/self/ns/net").st_ino
    target = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"],
                              cwd="/")
    p = None
    fd, script = tempfile.mkstemp(prefix="usernet-udhcpc-", suffix=".sh")
    try:
        os.write(fd, SCRIPT.encode())
        os.close(fd)
        os.chmod(script, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)

        def started():
            try:
                with open(f"/proc/{target.pid}/comm") as f:
                    return (f.read().strip() == "sleep"
                            and os.stat(f"/proc/{target.pid}/ns/net").st_ino != own)
            except OSError:
                return False
        _wait_for(started, 10, "unshare to start")
        p = subprocess.Popen(USERNET + ["attach", "--no-configure", *args, str(target.pid)],
                             env=ENV, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)

        def tap_exists():
            assert p.poll() is None, p.stderr.read()
            return _in_target(target.pid, "ip", "link", "show", "tap0").returncode == 0
        _wait_for(tap_exists, 20, "tap0 to appear")
        r = _in_target(target.pid, "ip", "-4", "-o", "addr", "show", "dev", "tap0")
        assert "inet " not in r.stdout, f"--no-configure left an address: {r.stdout}"

        r = _in_target(target.pid, "sh", "-c",
                       f"ip link set lo up && ip link set tap0 up && "
                       f"busybox udhcpc -i tap0 -n -q -f -t 3 -T 2 -O mtu -s {script} && "
                       f"echo @@@ && ip -4 -o addr show dev tap0 && ip -4 route && "
                       f"ping -c 2 -W 3 {net}.2")
        assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        lease, state = r.stdout.split("@@@\n")
        env = dict(re.findall(r"^(\w+)=(.*)$", lease, re.M))
        assert env.get("event") == "bound", lease
        assert env["ip"] == f"{net}.100", lease
        assert env["subnet"] == "255.255.255.0", lease
        assert env["router"].split() == [f"{net}.2"], lease
        assert env["dns"].split() == [f"{net}.3"], lease
        assert env["serverid"] == f"{net}.2", lease
        assert int(env["lease"]) > 0, lease
        assert env["mtu"] == str(mtu), lease
        assert f"inet {net}.100/24" in state, state
        assert re.search(rf"^default via {re.escape(net)}\.2 dev tap0", state, re.M), state
        assert "2 received" in state, state
    finally:
        os.unlink(script)
        if p is not None:
            if p.poll() is None:
                p.terminate()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=10)
        target.kill()
        target.wait(timeout=10)
